//! Writes seed inputs for the fuzz targets into `<corpus dir>/<target>/`: valid frames
//! and bodies built from real values (a queue that created a job, took properties, an
//! upload session and engine reports), so that fuzzing starts from inputs the decoders
//! accept rather than from nothing. Seeds follow the format version of this build.
//!
//! Usage: `cargo run --manifest-path fuzz/Cargo.toml -p ferry-fuzz-seeds -- fuzz/corpus`.

#[path = "../../src/peer.rs"]
#[allow(dead_code)]
mod peer;

use std::path::{Path, PathBuf};

use ferry_protocol::codec::{self, ByteBuf};
use ferry_protocol::command::FileChanges;
use ferry_protocol::credentials::{AuthScheme, AuthTarget, SealedCredential};
use ferry_protocol::event::{Cursor, Delivery, Event, EventFilter, StartAt, Subscribe};
use ferry_protocol::peer_cache::ContentKey;
use ferry_protocol::queue::UploadCommand;
use ferry_protocol::transfer::{ChunkRecord, EngineReport, RemoteInfo};
use ferry_protocol::*;
use serde::Serialize;

struct Seeds {
    dir: PathBuf,
    count: usize,
}

impl Seeds {
    fn new(root: &Path, target: &str) -> Self {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("corpus directory");
        Self { dir, count: 0 }
    }

    fn raw(&mut self, selector: u8, bytes: &[u8]) {
        let mut input = vec![selector];
        input.extend_from_slice(bytes);
        let name = format!("seed-{selector:02}-{:03}", self.count);
        std::fs::write(self.dir.join(name), input).expect("write seed");
        self.count += 1;
    }

    fn frame<T: Serialize>(&mut self, selector: u8, value: &T) {
        self.raw(selector, &codec::encode(value).expect("encode"));
    }
}

fn id(n: u128) -> JobId {
    JobId(uuid::Uuid::from_u128(n))
}

fn remote() -> RemoteInfo {
    RemoteInfo {
        size: Some(1 << 20),
        etag: Some("\"v1\"".into()),
        last_modified: Some("Sat, 01 Aug 2026 10:00:00 GMT".into()),
        ranges: true,
        sha256: Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".into()),
    }
}

const NEW_JOB: &str = r#"{"display_name":"nightly","type":"download","properties":{"priority":"high","description":"d","notify_cmdline":null,"custom_headers":["X-A: 1"],"max_download_size":1048576,"proxy":{"usage":"override","list":"http://proxy:3128","bypass":null}},"files":[{"remote_url":"https://example.com/a.iso","local_path":"/srv/a.iso","ranges":[{"offset":0,"length":100},{"offset":200,"length":"eof"}]}]}"#;
const ADD_FILES: &str = r#"{"files":[{"remote_url":"https://example.com/b","local_path":"/srv/b"},{"remote_url":"file:///etc/hosts","local_path":"/srv/c","ranges":[]}]}"#;
const PROPERTIES: &str = r#"{"display_name":"x","notify_flags":3,"notify_cmdline":{"program":"/bin/true","args":["a"]},"reply_file_name":null,"max_connections":4,"max_helpers":null,"security_flags":0,"client_certificate":null,"minimum_retry_delay_secs":10}"#;
const FILE_CHANGES: &str = r#"{"remote_url":"https://example.com/moved","valid":false}"#;
const CREDENTIALS: &str =
    r#"{"target":"server","scheme":"basic","user_name":"alice","password":"s3cret"}"#;
const FLEET: &str = r#"{"remote_url":"https://example.com/big","local_path":"/srv/{node}/big","nodes":[1,2],"display_name":"fleet","properties":{"priority":"low"},"credentials":[{"target":"server","scheme":"digest","user_name":"u","password":"p"}]}"#;

fn main() {
    let root = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "fuzz/corpus".into()));
    let alice = Caller { principal: Principal::new("alice").expect("valid"), role: Role::User };

    // A queue that did real work: its job, events, records and session are the seeds.
    let spec: NewJob = serde_json::from_str(NEW_JOB).expect("the NewJob seed parses");
    let changes: PropertyChanges = serde_json::from_str(PROPERTIES).expect("properties");
    let commands = vec![
        Command::CreateJob { id: id(1), home_node: 1, spec: spec.clone() },
        Command::SetProperties { job: id(1), changes: changes.clone() },
        Command::Lifecycle { job: id(1), action: JobAction::Resume },
        Command::Engine {
            job: id(1),
            run: 1,
            reports: vec![EngineReport::Activate, EngineReport::Connected],
        },
        Command::Upload(UploadCommand::Create { session: "{s1}".into(), path: "in/a".into() }),
        Command::Upload(UploadCommand::Fragment {
            session: "{s1}".into(),
            start: 0,
            end: 99,
            total: 200,
            node: 1,
            offset: 0,
            max_size: 1_000,
        }),
    ];
    let proposals: Vec<Proposal> = commands
        .iter()
        .enumerate()
        .map(|(i, command)| Proposal {
            request_id: Some(RequestId::new(format!("req-{i}")).expect("id")),
            caller: alice.clone(),
            command: command.clone(),
        })
        .collect();
    let batch = Batch { time: Timestamp(1_000), proposals: proposals.clone() };
    let mut queue = Queue::new(Default::default());
    let reply = queue.apply_batch(&batch);
    let image = queue.to_image();
    let job = queue.job(&id(1)).expect("the job was created").clone();
    let events = queue.take_events();
    let session = queue.upload_session(&alice, "{s1}").expect("session").clone();
    let (key, record) = image.requests.first().expect("a request record").clone();
    let credential = SealedCredential {
        target: AuthTarget::Server,
        scheme: AuthScheme::Basic,
        user_name: "alice".into(),
        sealed: vec![7; 40],
    };
    let chunk = ChunkRecord { index: 0, len: 65_536, digest: [3; 32], from_peer: false };
    let event = Event { cursor: Cursor { index: 7, sub: 1 }, event: events[0].clone() };

    let mut s = Seeds::new(&root, "codec");
    s.frame(0, &batch);
    s.frame(0, &Batch { time: Timestamp(2), proposals: vec![] });
    s.frame(1, &proposals[0]);
    for command in &commands {
        s.frame(2, command);
    }
    s.frame(3, &reply);
    s.frame(4, &reply.0[0]);
    s.frame(5, &job);
    s.frame(6, &image.meta);
    s.frame(7, &key);
    s.frame(8, &record);
    s.frame(9, &session);
    let header =
        peer::SnapshotHeader { queue: image.meta.clone(), jobs: 1, requests: 6, uploads: 1 };
    s.frame(10, &header);
    s.frame(11, &image);
    s.frame(12, &event);
    for e in &events {
        s.frame(13, e);
    }
    s.frame(14, &Cursor { index: 42, sub: 3 });
    s.frame(15, &EngineReport::Probed { file: 0, remote: remote(), chunk_size: 65_536 });
    s.frame(15, &EngineReport::Chunks { file: 0, chunks: vec![chunk] });
    s.frame(16, &UploadCommand::End { session: "{s1}".into() });
    s.frame(17, &changes);
    s.frame(18, &job.files[0]);
    let key = ContentKey::Version {
        url: "https://example.com/a".into(),
        size: 9,
        validator: "\"v\"".into(),
    };
    s.frame(19, &(credential.clone(), key, remote(), chunk));
    s.frame(
        20,
        &(spec.clone(), FileChanges { remote_url: Some("https://x/y".into()), valid: None }),
    );

    let mut s = Seeds::new(&root, "peer");
    // Each request as a call (kind and encoded body), alone and in its envelope.
    fn call<R: ferry_protocol::peer::PeerRpc>(request: &R) -> peer::Call {
        let body = codec::encode(request).expect("encode");
        peer::Call { kind: R::NAME.to_owned(), body: ByteBuf::from(body) }
    }
    let addr =
        peer::NodeAddr { api_addr: "10.0.0.4:8080".into(), peer_addr: "10.0.0.4:7000".into() };
    let calls = vec![
        call(&peer::RaftRpc(ByteBuf::from(vec![1, 2, 3]))),
        call(&peer::Write(proposals[0].clone())),
        call(&peer::AddMember { node: 4, addr: addr.clone(), voters: 3 }),
        call(&peer::Ping),
        call(&peer::ReadIndex),
        call(&peer::Probe),
        call(&peer::UpdateAddress(addr)),
        call(&peer::UploadPiece { session: "{s1}".into(), offset: 0, from: 10, len: 100 }),
        call(&peer::ChunkRequest {
            job: id(1),
            run: 1,
            applied: 10,
            file: 0,
            url: "https://example.com/a".into(),
            remote: remote(),
            offset: 0,
            len: 65_536,
        }),
        call(&peer::CopyRequest { job: id(1), file: 0, index: 2 }),
        call(&peer::ReplyData { job: id(1) }),
    ];
    for call in &calls {
        let body = codec::encode(call).expect("encode");
        s.frame(0, &peer::Envelope { from: 2, body: ByteBuf::from(body) });
        s.frame(2, call);
    }
    s.frame(1, &peer::Answer::Ok(ByteBuf::from(vec![0; 8])));
    s.frame(1, &peer::Answer::Refused("bad request frame".into()));
    let written: Result<peer::Written, peer::RemoteError> =
        Ok(peer::Written { result: reply.0[0].clone(), index: 9 });
    s.frame(3, &written);
    let not_leader = peer::RemoteError::Refused(peer::ClusterError::NotLeader { leader: 2 });
    s.frame(3, &Err::<peer::Written, _>(not_leader));
    let too_large = peer::RemoteError::Refused(peer::ClusterError::TooLarge { bytes: 9, limit: 8 });
    s.frame(4, &Err::<(), _>(too_large));
    s.frame(4, &Err::<(), _>(peer::RemoteError::UnknownKind("ping".into())));
    s.frame(5, &Ok::<u64, peer::RemoteError>(17));
    s.frame(6, &Ok::<bool, peer::RemoteError>(true));
    let probe = api::MemberProbe { state: "Leader".into(), term: 3, applied_index: Some(17) };
    s.frame(7, &Ok::<_, peer::RemoteError>(probe));
    s.frame(8, &Ok::<ByteBuf, peer::RemoteError>(ByteBuf::from(vec![1, 2, 3])));
    let chunk_answer =
        peer::ChunkAnswer::Bytes { bytes: ByteBuf::from(vec![9; 16]), digest: [1; 32] };
    s.frame(9, &Ok::<_, peer::RemoteError>(chunk_answer));
    s.frame(10, &Ok::<_, peer::RemoteError>(peer::CopyAnswer::Missing("gone".into())));
    s.frame(13, &peer::NodeAddr { api_addr: "[::1]:8080".into(), peer_addr: "[::1]:7000".into() });
    let join = peer::JoinRequest {
        secret: "token".into(),
        public_key: vec![4; 65],
        peer_addr: "10.0.0.5:7000".into(),
        api_addr: "10.0.0.5:8080".into(),
    };
    s.frame(14, &join);
    let answer = peer::JoinAnswer {
        node_id: 5,
        cert: vec![0x30; 32],
        ca: vec![0x30; 32],
        secret_key: vec![1; 32],
        ca_key_pem: "-----BEGIN PRIVATE KEY-----".into(),
        token: "t".into(),
    };
    s.frame(15, &Ok::<_, String>(answer));
    let subscribe = Subscribe {
        token: "secret".into(),
        filter: EventFilter { jobs: vec![id(1)], ..Default::default() },
        from: StartAt::Cursor(Cursor { index: 3, sub: 0 }),
    };
    s.frame(16, &subscribe);
    s.frame(18, &Delivery::Event(event));
    s.frame(
        18,
        &Delivery::Gap { from: Cursor { index: 1, sub: 0 }, oldest: Cursor { index: 5, sub: 2 } },
    );
    s.frame(19, &ByteBuf::from(vec![5; 10]));

    let mut s = Seeds::new(&root, "api_json");
    for (selector, body) in [
        (0, NEW_JOB),
        (0, r#"{"display_name":"u","type":"upload_reply"}"#),
        (1, ADD_FILES),
        (2, PROPERTIES),
        (2, "{}"),
        (3, FILE_CHANGES),
        (4, CREDENTIALS),
        (5, FLEET),
    ] {
        s.raw(selector, body.as_bytes());
    }

    println!("seeds written under {}", root.display());
}
