//! The BITS upload protocol's wire format (bits-spec.md §5, [MC-BUP]): the method, the
//! packet types, every header name, the protocol GUID, and the pure rules both ends
//! apply — fragment ranges, where the next fragment starts, what the server does with
//! an overlapping or early fragment, error headers, and when a client retries.
//!
//! Ferry talks to Windows BITS clients and IIS BITS servers that nobody here can run,
//! so the spec is the test: the strings below are pinned by a test, letter for letter.

use std::fmt;
use std::str::FromStr;

use crate::codes::{BitsCode, ErrorContext};

/// The HTTP method of every packet.
pub const METHOD: &str = "BITS_POST";
/// The one protocol there is: "BITS 1.5 Upload Protocol".
pub const PROTOCOL_GUID: &str = "{7df0354d-249b-430f-820d-3d2a9bef4931}";
/// The only content encoding BITS servers accept (sent as `Accept-Encoding`).
pub const IDENTITY: &str = "Identity";
/// Longest session id a server may choose (any HTTP-legal string up to this).
pub const MAX_SESSION_ID_LEN: usize = 100;

/// Header names (case-insensitive on the wire; sent as written here).
pub mod header {
    /// The packet type: a request's [`super::PacketType`], `Ack` on every response.
    pub const PACKET_TYPE: &str = "BITS-Packet-Type";
    /// Create-Session: the client's protocol GUIDs, space-separated, preferred first.
    pub const SUPPORTED_PROTOCOLS: &str = "BITS-Supported-Protocols";
    /// Ack of Create-Session: the GUID the server chose (200/201 only).
    pub const PROTOCOL: &str = "BITS-Protocol";
    /// The session, chosen by the server, echoed on every later packet and Ack.
    pub const SESSION_ID: &str = "BITS-Session-Id";
    /// Ack of Create-Session, optional: the host to use for the rest of the session.
    pub const HOST_ID: &str = "BITS-Host-Id";
    /// With `BITS-Host-Id`: seconds to keep trying that host before the original one.
    pub const HOST_ID_FALLBACK_TIMEOUT: &str = "BITS-Host-Id-Fallback-Timeout";
    /// Ack of Create-Session: `Identity`.
    pub const ACCEPT_ENCODING: &str = "Accept-Encoding";
    /// First Fragment, optional: the local file name.
    pub const CONTENT_NAME: &str = "Content-Name";
    /// Fragments and every response.
    pub const CONTENT_LENGTH: &str = "Content-Length";
    /// Fragment: `bytes start-end/total`.
    pub const CONTENT_RANGE: &str = "Content-Range";
    /// Fragment, only if not identity (which servers refuse).
    pub const CONTENT_ENCODING: &str = "Content-Encoding";
    /// Ack of Fragment: the offset of the next byte the server expects.
    pub const RECEIVED_CONTENT_RANGE: &str = "BITS-Received-Content-Range";
    /// Final Ack of Fragment of an upload-reply: where the reply is.
    pub const REPLY_URL: &str = "BITS-Reply-URL";
    /// Any Ack whose status is not 200/201: the HRESULT, hex.
    pub const ERROR_CODE: &str = "BITS-Error-Code";
    /// With `BITS-Error-Code`: the `BG_ERROR_CONTEXT`, hex (5 or 7).
    pub const ERROR_CONTEXT: &str = "BITS-Error-Context";
    /// Not Microsoft's: `POST` with this header set to `BITS_POST` (OneDrive clients).
    pub const METHOD_OVERRIDE: &str = "X-Http-Method-Override";
    /// Not Microsoft's: on the Acks of a Ferry server, how many fragments of a session
    /// a client may send (on other connections) beyond the one not yet acknowledged;
    /// the server writes them at once and records them in order.
    pub const FRAGMENTS_AHEAD: &str = "Ferry-Fragments-Ahead";
}

/// Headers between the upload server and its back end (bits-spec §5.6).
pub mod notification {
    /// Request: the job's remote name, as the client sent it.
    pub const ORIGINAL_REQUEST_URL: &str = "BITS-Original-Request-URL";
    /// By reference: the uploaded file's full path.
    pub const REQUEST_DATA_FILE: &str = "BITS-Request-DataFile-Name";
    /// By reference: where the application writes its reply.
    pub const RESPONSE_DATA_FILE: &str = "BITS-Response-DataFile-Name";
    /// Answer: a reply URL to use instead of a reply file.
    pub const STATIC_RESPONSE_URL: &str = "BITS-Static-Response-URL";
    /// Answer (any value): also place the upload at its upload path.
    pub const COPY_FILE_TO_DESTINATION: &str = "BITS-Copy-File-To-Destination";
}

/// `BITS-Packet-Type` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PacketType {
    /// Is there a BITS server here?
    Ping,
    /// Open a session.
    CreateSession,
    /// Bytes of the file.
    Fragment,
    /// Done (after the reply was fetched, for upload-reply).
    CloseSession,
    /// Abort.
    CancelSession,
    /// Every response.
    Ack,
}

impl PacketType {
    /// Every packet type.
    pub const ALL: [Self; 6] = [
        Self::Ping,
        Self::CreateSession,
        Self::Fragment,
        Self::CloseSession,
        Self::CancelSession,
        Self::Ack,
    ];

    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ping => "Ping",
            Self::CreateSession => "Create-Session",
            Self::Fragment => "Fragment",
            Self::CloseSession => "Close-Session",
            Self::CancelSession => "Cancel-Session",
            Self::Ack => "Ack",
        }
    }
}

impl fmt::Display for PacketType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PacketType {
    type Err = String;

    /// Case-insensitive, as header values are compared by servers in the wild.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("unknown BITS packet type {s:?}"))
    }
}

/// A fragment's `Content-Range`: bytes `start..=end` of a file of `total` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragmentRange {
    /// First byte, zero-based.
    pub start: u64,
    /// Last byte, inclusive.
    pub end: u64,
    /// The file's size.
    pub total: u64,
}

impl FragmentRange {
    /// The range of `len` bytes (at least 1) from `start` of a `total`-byte file.
    pub fn new(start: u64, len: u64, total: u64) -> Option<Self> {
        let end = start.checked_add(len.checked_sub(1)?)?;
        (end < total).then_some(Self { start, end, total })
    }

    /// Bytes in the fragment.
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    /// Always false: a fragment holds at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// True if this is the file's last fragment.
    pub fn is_last(&self) -> bool {
        self.end + 1 == self.total
    }
}

impl fmt::Display for FragmentRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bytes {}-{}/{}", self.start, self.end, self.total)
    }
}

impl FromStr for FragmentRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("bad Content-Range {s:?}: expected \"bytes START-END/TOTAL\"");
        let rest = s.trim();
        let unit = rest.get(..5).filter(|u| u.eq_ignore_ascii_case("bytes")).ok_or_else(bad)?;
        let rest = rest[unit.len()..].trim_start();
        let (range, total) = rest.split_once('/').ok_or_else(bad)?;
        let (start, end) = range.split_once('-').ok_or_else(bad)?;
        let number = |t: &str| t.trim().parse::<u64>().map_err(|_| bad());
        let (start, end, total) = (number(start)?, number(end)?, number(total)?);
        if start > end || end >= total {
            return Err(format!("Content-Range {s:?} is not inside the file"));
        }
        Ok(Self { start, end, total })
    }
}

/// What a server does with a fragment (bits-spec §5.5 step 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragmentPlan {
    /// Bytes of the body to skip: they overlap data already received (never overwritten).
    pub skip: u64,
    /// Where the remaining bytes go in the file.
    pub offset: u64,
    /// How many bytes to write (0 when the fragment holds nothing new).
    pub write: u64,
    /// The next byte expected afterwards (`BITS-Received-Content-Range`).
    pub next: u64,
    /// The file is complete afterwards.
    pub complete: bool,
}

/// Why a server refuses a fragment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FragmentRefusal {
    /// It starts after the next expected byte: 416, with `BITS-Received-Content-Range`.
    Gap {
        /// The next byte expected.
        next: u64,
    },
    /// Its total differs from the session's: 400 `E_INVALIDARG`.
    TotalChanged {
        /// The session's total.
        total: u64,
    },
    /// The file exceeds the server's maximum upload size: `BG_E_TOO_LARGE`.
    TooLarge {
        /// The maximum.
        max: u64,
    },
}

/// The server's rule for a fragment, given the next byte it expects, the total the
/// session started with (if a fragment set it already) and its maximum upload size.
pub fn plan_fragment(
    next: u64,
    known_total: Option<u64>,
    range: FragmentRange,
    max_size: u64,
) -> Result<FragmentPlan, FragmentRefusal> {
    if let Some(total) = known_total.filter(|t| *t != range.total) {
        return Err(FragmentRefusal::TotalChanged { total });
    }
    if range.total > max_size {
        return Err(FragmentRefusal::TooLarge { max: max_size });
    }
    if range.start > next {
        return Err(FragmentRefusal::Gap { next });
    }
    let offset = next.max(range.start);
    let write = (range.end + 1).saturating_sub(offset);
    let next = next.max(range.end + 1);
    Ok(FragmentPlan {
        skip: offset - range.start,
        offset,
        write,
        next,
        complete: next == range.total,
    })
}

/// The two error headers of an Ack whose status is not 200/201.
pub fn error_headers(code: BitsCode, context: ErrorContext) -> [(&'static str, String); 2] {
    [
        (header::ERROR_CODE, format!("0x{:08X}", code.0)),
        (header::ERROR_CONTEXT, format!("0x{:X}", context.value())),
    ]
}

/// Reads a hex header value (`0x8020001F`, or without the prefix).
pub fn parse_hex(value: &str) -> Option<u32> {
    let value = value.trim();
    let digits = value.strip_prefix("0x").or_else(|| value.strip_prefix("0X")).unwrap_or(value);
    u32::from_str_radix(digits, 16).ok()
}

/// The error a client reports for a server's `BITS-Error-Code`/`BITS-Error-Context`
/// (either may be missing or unreadable: then the HTTP status and the remote file).
pub fn server_error(
    status: u16,
    code: Option<&str>,
    context: Option<&str>,
) -> (BitsCode, ErrorContext) {
    let code = code.and_then(parse_hex).map_or_else(|| BitsCode::http(status), BitsCode);
    let context = match context.and_then(parse_hex) {
        Some(7) => ErrorContext::RemoteApplication,
        _ => ErrorContext::RemoteFile,
    };
    (code, context)
}

/// The protocol a server picks from a client's `BITS-Supported-Protocols`: the only one
/// it speaks, if the client offers it.
pub fn choose_protocol(supported: &str) -> Option<&'static str> {
    supported
        .split_whitespace()
        .any(|guid| guid.eq_ignore_ascii_case(PROTOCOL_GUID))
        .then_some(PROTOCOL_GUID)
}

/// Whether a client sends Close-Session or Cancel-Session again after this answer:
/// on 5xx, unless the session is gone (bits-spec §5.4).
pub fn retry_session_end(status: u16, error_code: Option<u32>) -> bool {
    (500..600).contains(&status) && error_code != Some(BitsCode::BG_E_SESSION_NOT_FOUND.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every string of bits-spec.md §5, letter for letter.
    #[test]
    fn names_match_the_spec_exactly() {
        assert_eq!(METHOD, "BITS_POST");
        assert_eq!(PROTOCOL_GUID, "{7df0354d-249b-430f-820d-3d2a9bef4931}");
        let headers = [
            header::PACKET_TYPE,
            header::SUPPORTED_PROTOCOLS,
            header::PROTOCOL,
            header::SESSION_ID,
            header::HOST_ID,
            header::HOST_ID_FALLBACK_TIMEOUT,
            header::ACCEPT_ENCODING,
            header::CONTENT_NAME,
            header::CONTENT_LENGTH,
            header::CONTENT_RANGE,
            header::CONTENT_ENCODING,
            header::RECEIVED_CONTENT_RANGE,
            header::REPLY_URL,
            header::ERROR_CODE,
            header::ERROR_CONTEXT,
            header::METHOD_OVERRIDE,
        ];
        assert_eq!(
            headers,
            [
                "BITS-Packet-Type",
                "BITS-Supported-Protocols",
                "BITS-Protocol",
                "BITS-Session-Id",
                "BITS-Host-Id",
                "BITS-Host-Id-Fallback-Timeout",
                "Accept-Encoding",
                "Content-Name",
                "Content-Length",
                "Content-Range",
                "Content-Encoding",
                "BITS-Received-Content-Range",
                "BITS-Reply-URL",
                "BITS-Error-Code",
                "BITS-Error-Context",
                "X-Http-Method-Override",
            ]
        );
        assert_eq!(
            [
                notification::ORIGINAL_REQUEST_URL,
                notification::REQUEST_DATA_FILE,
                notification::RESPONSE_DATA_FILE,
                notification::STATIC_RESPONSE_URL,
                notification::COPY_FILE_TO_DESTINATION,
            ],
            [
                "BITS-Original-Request-URL",
                "BITS-Request-DataFile-Name",
                "BITS-Response-DataFile-Name",
                "BITS-Static-Response-URL",
                "BITS-Copy-File-To-Destination",
            ]
        );
        let packets: Vec<&str> = PacketType::ALL.iter().map(|p| p.as_str()).collect();
        assert_eq!(
            packets,
            ["Ping", "Create-Session", "Fragment", "Close-Session", "Cancel-Session", "Ack"]
        );
        for packet in PacketType::ALL {
            assert_eq!(packet.as_str().to_lowercase().parse(), Ok(packet));
        }
        assert!("Package".parse::<PacketType>().is_err());
    }

    #[test]
    fn content_ranges_parse_print_and_refuse_nonsense() {
        let r: FragmentRange = "bytes 128-212/1000".parse().expect("range");
        assert_eq!(r, FragmentRange { start: 128, end: 212, total: 1000 });
        assert_eq!(r.to_string(), "bytes 128-212/1000");
        assert_eq!(r.len(), 85);
        assert_eq!("Bytes 0-9/10".parse::<FragmentRange>().map(|r| r.is_last()), Ok(true));
        for bad in ["bytes 5-4/10", "bytes 0-10/10", "bytes 0-/10", "0-1/2", "bytes 1-2", ""] {
            assert!(bad.parse::<FragmentRange>().is_err(), "{bad}");
        }
        assert_eq!(
            FragmentRange::new(10, 5, 20),
            Some(FragmentRange { start: 10, end: 14, total: 20 })
        );
        assert_eq!(FragmentRange::new(10, 0, 20), None);
        assert_eq!(FragmentRange::new(10, 11, 20), None);
    }

    #[test]
    fn fragments_follow_the_server_rules() {
        let max = 1 << 30;
        let range = |s: &str| s.parse::<FragmentRange>().expect("range");
        // In order: written whole.
        let first = plan_fragment(0, None, range("bytes 0-100/300"), max).expect("first");
        assert_eq!((first.skip, first.offset, first.write, first.next), (0, 0, 101, 101));
        // Overlap (the spec's example, 0-100 then 50-150): only 101-150 is written.
        let overlap = plan_fragment(101, Some(300), range("bytes 50-150/300"), max).expect("o");
        assert_eq!((overlap.skip, overlap.offset, overlap.write, overlap.next), (51, 101, 50, 151));
        // Nothing new: acknowledged with the same next byte.
        let old = plan_fragment(151, Some(300), range("bytes 0-99/300"), max).expect("old");
        assert_eq!((old.write, old.next, old.complete), (0, 151, false));
        // A gap: 416 telling the next byte expected.
        assert_eq!(
            plan_fragment(151, Some(300), range("bytes 200-299/300"), max),
            Err(FragmentRefusal::Gap { next: 151 })
        );
        // The last byte completes the file.
        let last = plan_fragment(151, Some(300), range("bytes 151-299/300"), max).expect("last");
        assert!(last.complete && last.next == 300);
        // Another total, or too large.
        assert_eq!(
            plan_fragment(0, Some(300), range("bytes 0-9/301"), max),
            Err(FragmentRefusal::TotalChanged { total: 300 })
        );
        assert_eq!(
            plan_fragment(0, None, range("bytes 0-9/2000"), 1000),
            Err(FragmentRefusal::TooLarge { max: 1000 })
        );
    }

    #[test]
    fn errors_and_retries() {
        let [code, context] =
            error_headers(BitsCode::BG_E_SESSION_NOT_FOUND, ErrorContext::RemoteFile);
        assert_eq!(code, ("BITS-Error-Code", "0x8020001F".to_owned()));
        assert_eq!(context, ("BITS-Error-Context", "0x5".to_owned()));
        assert_eq!(
            server_error(404, Some("0x8020001F"), Some("0x5")),
            (BitsCode::BG_E_SESSION_NOT_FOUND, ErrorContext::RemoteFile)
        );
        assert_eq!(
            server_error(500, None, Some("7")),
            (BitsCode::http(500), ErrorContext::RemoteApplication)
        );
        assert!(retry_session_end(503, None));
        assert!(!retry_session_end(503, Some(BitsCode::BG_E_SESSION_NOT_FOUND.0)));
        assert!(!retry_session_end(404, None));
        assert_eq!(
            choose_protocol("{AAA} {7DF0354D-249B-430F-820D-3D2A9BEF4931}"),
            Some(PROTOCOL_GUID)
        );
        assert_eq!(choose_protocol("{00000000-0000-0000-0000-000000000000}"), None);
    }
}
