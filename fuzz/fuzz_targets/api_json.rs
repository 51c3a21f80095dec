//! The HTTP API's JSON request bodies: arbitrary bytes read by serde_json into each
//! body type (the first input byte picks it), then turned into the command the route
//! proposes, checked with `validate::command_input` as the API does, and applied to a
//! queue holding one job, as every node would. Checks: a body that parses prints and
//! parses back equal; the command round-trips through the codec (it goes into the Raft
//! log); apply refuses whatever the input check refuses, and never panics.

#![no_main]

use ferry_fuzz::split;
use ferry_protocol::api::{AddFiles, NewFleet};
use ferry_protocol::codec;
use ferry_protocol::command::FileChanges;
use ferry_protocol::credentials::{NewCredentials, SealedCredential};
use ferry_protocol::peer_cache::{MAX_FLEET_CREDENTIALS, MAX_FLEET_MEMBERS};
use ferry_protocol::{
    Batch, Caller, Command, JobId, JobType, NewFile, NewJob, Principal, PropertyChanges, Proposal,
    Queue, Role, Timestamp, validate,
};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Reads `T` from the body; if it parses, printing and reading again gives it back.
fn parse<T>(body: &[u8]) -> Option<T>
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let value: T = serde_json::from_slice(body).ok()?;
    let text = serde_json::to_vec(&value).expect("a parsed body prints");
    let again: T = serde_json::from_slice(&text).expect("a printed body parses");
    assert_eq!(value, again, "JSON round trip of {}", String::from_utf8_lossy(&text));
    Some(value)
}

/// What the coordinator's sealing produces, in size (nonce + ciphertext + tag).
fn sealed(c: &NewCredentials) -> SealedCredential {
    SealedCredential {
        target: c.target,
        scheme: c.scheme,
        user_name: c.user_name.clone(),
        sealed: vec![0; c.password.expose().len() + 28],
    }
}

const JOB: JobId = JobId(uuid::Uuid::from_u128(1));

fn command_of(which: u8, body: &[u8]) -> Option<Command> {
    Some(match which % 6 {
        0 => {
            let spec: NewJob = parse(body)?;
            Command::CreateJob { id: JobId(uuid::Uuid::from_u128(2)), home_node: 1, spec }
        }
        1 => Command::AddFiles { job: JOB, files: parse::<AddFiles>(body)?.files },
        2 => Command::SetProperties { job: JOB, changes: parse::<PropertyChanges>(body)? },
        3 => Command::ChangeFile { job: JOB, index: 0, changes: parse::<FileChanges>(body)? },
        4 => {
            let body: NewCredentials = serde_json::from_slice(body).ok()?;
            if body.validate().is_err() {
                return None;
            }
            Command::SetCredentials { job: JOB, credential: sealed(&body) }
        }
        _ => {
            let fleet: NewFleet = serde_json::from_slice(body).ok()?;
            // The round trip leaves out the write-only credentials.
            let printed = NewFleet { credentials: Vec::new(), ..fleet.clone() };
            assert_eq!(parse::<NewFleet>(&serde_json::to_vec(&printed).ok()?), Some(printed));
            // The route's own checks, then the command it proposes.
            let nodes = if fleet.nodes.is_empty() { vec![1, 2, 3] } else { fleet.nodes };
            let distinct: std::collections::BTreeSet<_> = nodes.iter().collect();
            if distinct.len() != nodes.len()
                || nodes.len() > MAX_FLEET_MEMBERS
                || fleet.credentials.len() > MAX_FLEET_CREDENTIALS
                || fleet.credentials.iter().any(|c| c.validate().is_err())
            {
                return None;
            }
            let members: Vec<(JobId, u64)> = nodes
                .iter()
                .enumerate()
                .map(|(i, n)| (JobId(uuid::Uuid::from_u128(100 + i as u128)), *n))
                .collect();
            let credentials = if fleet.credentials.is_empty() {
                Vec::new()
            } else {
                members.iter().map(|_| fleet.credentials.iter().map(sealed).collect()).collect()
            };
            let spec = NewJob {
                display_name: fleet.display_name.unwrap_or_else(|| "fleet".into()),
                job_type: JobType::Download,
                properties: fleet.properties,
                files: vec![NewFile {
                    remote_url: fleet.remote_url,
                    local_path: fleet.local_path,
                    ranges: Vec::new(),
                }],
            };
            Command::CreateFleet {
                fleet: JobId(uuid::Uuid::from_u128(3)),
                members,
                spec,
                credentials,
            }
        }
    })
}

fn apply(queue: &mut Queue, caller: &Caller, command: Command) -> Result<(), String> {
    let batch = Batch {
        time: Timestamp(1_000),
        proposals: vec![Proposal { request_id: None, caller: caller.clone(), command }],
    };
    let reply = queue.apply_batch(&batch);
    assert_eq!(reply.0.len(), 1);
    reply.0.into_iter().next().map_or(Ok(()), |r| r.map(|_| ()).map_err(|e| e.to_string()))
}

fuzz_target!(|data: &[u8]| {
    let Some((which, body)) = split(data) else { return };
    let Some(command) = command_of(which, body) else { return };
    let checked = validate::command_input(&command);

    // Into the Raft log and back.
    let bytes = codec::encode(&command).expect("a command from a body encodes");
    assert_eq!(codec::decode::<Command>(&bytes).expect("decodes"), command);

    let alice = Caller { principal: Principal::new("alice").expect("valid"), role: Role::User };
    let mut queue = Queue::new(Default::default());
    let job = NewJob {
        display_name: "target".into(),
        job_type: JobType::Download,
        properties: PropertyChanges::default(),
        files: vec![NewFile {
            remote_url: "https://example.com/a".into(),
            local_path: "/tmp/ferry-fuzz/a".into(),
            ranges: Vec::new(),
        }],
    };
    apply(&mut queue, &alice, Command::CreateJob { id: JOB, home_node: 1, spec: job })
        .expect("the target job");
    let applied = apply(&mut queue, &alice, command);
    if let Err(why) = checked {
        assert!(applied.is_err(), "the input check refused ({why}) but apply accepted");
    }
});
