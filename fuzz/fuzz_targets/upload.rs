//! The BITS upload protocol as a server and a client read it: the packet type,
//! protocol negotiation, error headers, the upload path, and each fragment's
//! `Content-Range` taken through the server's fragment rule and the replicated upload
//! session. Checks: parsers and printers agree, a parsed range lies inside its file,
//! the fragment rule never writes twice or leaves a gap, and the session's pieces tile
//! exactly the bytes received.

#![no_main]

use arbitrary::Arbitrary;
use ferry_protocol::codes::{BitsCode, ErrorContext};
use ferry_protocol::queue::{UploadCommand, UploadSession, check_upload_path};
use ferry_protocol::upload::{self, FragmentRange, FragmentRefusal, PacketType};
use ferry_protocol::{Batch, Caller, Command, Principal, Proposal, Queue, Reply, Role, Timestamp};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    packet_type: &'a str,
    supported_protocols: &'a str,
    status: u16,
    error_code: Option<&'a str>,
    error_context: Option<&'a str>,
    any_code: u32,
    path: &'a str,
    max_size: u64,
    fragments: Vec<Fragment<'a>>,
}

#[derive(Arbitrary, Debug)]
enum Fragment<'a> {
    /// A `Content-Range` header as a client sent it.
    Header(&'a str),
    /// A fragment command with any numbers (a proposal the applier must refuse cleanly).
    Numbers { start: u64, end: u64, total: u64, offset: u64 },
}

const SESSION: &str = "{fuzz-session}";

fn apply(queue: &mut Queue, caller: &Caller, command: UploadCommand) -> Result<Reply, String> {
    let batch = Batch {
        time: Timestamp(1),
        proposals: vec![Proposal {
            request_id: None,
            caller: caller.clone(),
            command: Command::Upload(command),
        }],
    };
    let mut reply = queue.apply_batch(&batch).0;
    assert_eq!(reply.len(), 1);
    reply.remove(0).map_err(|e| e.to_string())
}

/// The session's pieces are in file order, back to back from byte 0, and end at `next`;
/// `next` never passes the total.
fn check_session(s: &UploadSession) {
    let mut at = 0u64;
    for piece in &s.pieces {
        assert_eq!(piece.offset, at, "pieces leave a gap or overlap: {s:?}");
        assert!(piece.len > 0, "an empty piece: {s:?}");
        at = at.checked_add(piece.len).expect("pieces overflow");
    }
    assert_eq!(at, s.next, "pieces do not end at next: {s:?}");
    if let Some(total) = s.total {
        assert!(s.next <= total, "next past the total: {s:?}");
    }
    assert_eq!(s.complete(), s.total == Some(s.next));
}

fn check_headers(input: &Input<'_>) {
    if let Ok(p) = input.packet_type.parse::<PacketType>() {
        assert!(p.as_str().eq_ignore_ascii_case(input.packet_type.trim()));
        assert_eq!(p.as_str().parse::<PacketType>(), Ok(p));
        assert_eq!(p.to_string(), p.as_str());
    }
    if let Some(chosen) = upload::choose_protocol(input.supported_protocols) {
        assert_eq!(chosen, upload::PROTOCOL_GUID);
        assert!(input.supported_protocols.to_ascii_lowercase().contains(upload::PROTOCOL_GUID));
    }
    for text in [input.error_code, input.error_context].into_iter().flatten() {
        if let Some(value) = upload::parse_hex(text) {
            assert_eq!(upload::parse_hex(&format!("0x{value:08X}")), Some(value));
        }
    }
    let (code, _) = upload::server_error(input.status, input.error_code, input.error_context);
    if input.error_code.and_then(upload::parse_hex).is_none() {
        assert_eq!(code, BitsCode::http(input.status));
    }
    let _ = upload::retry_session_end(input.status, input.error_code.and_then(upload::parse_hex));
    // What a server writes, a client reads back.
    for context in [ErrorContext::RemoteFile, ErrorContext::RemoteApplication] {
        let [(_, code_text), (_, context_text)] =
            upload::error_headers(BitsCode(input.any_code), context);
        let (read, read_context) = upload::server_error(500, Some(&code_text), Some(&context_text));
        assert_eq!(read, BitsCode(input.any_code));
        assert_eq!(read_context, context);
    }
    if check_upload_path(input.path).is_ok() {
        assert!(!input.path.starts_with('/') && !input.path.ends_with('/'));
        assert!(input.path.split('/').all(|n| !n.is_empty() && n != "." && n != ".."));
    }
}

/// A parsed `Content-Range`: inside its file, printed as it parses.
fn check_range(text: &str) -> Option<FragmentRange> {
    let r = text.parse::<FragmentRange>().ok()?;
    assert!(r.start <= r.end && r.end < r.total, "{r:?} from {text:?}");
    assert!(r.len() >= 1 && r.len() <= r.total);
    assert_eq!(r.is_last(), r.end + 1 == r.total);
    assert_eq!(r.to_string().parse::<FragmentRange>(), Ok(r));
    assert_eq!(FragmentRange::new(r.start, r.len(), r.total), Some(r));
    Some(r)
}

fuzz_target!(|input: Input<'_>| {
    check_headers(&input);

    let alice = Caller { principal: Principal::new("alice").expect("valid"), role: Role::User };
    let mut queue = Queue::new(Default::default());
    // The fuzzed path in a session of its own: refused exactly when the check refuses it.
    let other = UploadCommand::Create { session: "{other}".into(), path: input.path.into() };
    assert_eq!(apply(&mut queue, &alice, other).is_ok(), check_upload_path(input.path).is_ok());
    let create = UploadCommand::Create { session: SESSION.into(), path: "in/file.bin".into() };
    apply(&mut queue, &alice, create).expect("a fresh session");

    for fragment in input.fragments.iter().take(64) {
        let before = queue.upload_session(&alice, SESSION).expect("session").clone();
        match *fragment {
            Fragment::Header(text) => {
                let Some(r) = check_range(text) else { continue };
                // The server's rule, as the serving node runs it before writing.
                let plan = upload::plan_fragment(before.next, before.total, r, input.max_size);
                match plan {
                    Ok(p) => {
                        assert!(r.start <= before.next);
                        assert!(p.next >= before.next && p.next <= r.total);
                        assert_eq!(p.next, before.next + p.write, "{p:?}");
                        if p.write > 0 {
                            assert_eq!(p.offset, before.next, "writes only at the next byte");
                            assert_eq!(p.skip + p.write, r.len(), "{p:?} {r:?}");
                        }
                        assert_eq!(p.complete, p.next == r.total);
                    }
                    Err(FragmentRefusal::Gap { next }) => assert!(r.start > next),
                    Err(FragmentRefusal::TotalChanged { total }) => assert_ne!(total, r.total),
                    Err(FragmentRefusal::TooLarge { max }) => assert!(r.total > max),
                }
                let offset = plan.map_or(before.next, |p| p.offset);
                let command = UploadCommand::Fragment {
                    session: SESSION.into(),
                    start: r.start,
                    end: r.end,
                    total: r.total,
                    node: 1,
                    offset,
                    max_size: input.max_size,
                };
                let result = apply(&mut queue, &alice, command);
                match (plan, &result) {
                    (Ok(p), Ok(Reply::Fragment(ack))) => {
                        assert_eq!((ack.next, ack.complete), (p.next, p.complete));
                    }
                    (Ok(p), other) => panic!("planned {p:?}, applied {other:?}"),
                    (Err(_), Ok(reply)) => panic!("refused by the rule, applied: {reply:?}"),
                    (Err(_), Err(_)) => {}
                }
            }
            Fragment::Numbers { start, end, total, offset } => {
                let command = UploadCommand::Fragment {
                    session: SESSION.into(),
                    start,
                    end,
                    total,
                    node: 2,
                    offset,
                    max_size: input.max_size,
                };
                let _ = apply(&mut queue, &alice, command);
            }
        }
        let after = queue.upload_session(&alice, SESSION).expect("session");
        check_session(after);
        assert!(after.next >= before.next, "a fragment moved the session back");
    }
    if let Some(s) = queue.upload_session(&alice, SESSION) {
        check_session(s);
    }
});
