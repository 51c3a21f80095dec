//! Property tests: every type that crosses the codec (Raft entries, replies, stored
//! jobs, request records, snapshots) decodes to what was encoded.

use crate::credentials::{AuthScheme, AuthTarget, SealedCredential};
use crate::transfer::{ChunkRecord, EngineReport, RemoteInfo, Severity};
use proptest::prelude::*;

use crate::codec;
use crate::codes::{BitsCode, ErrorContext};
use crate::command::*;
use crate::file::{FileProgress, FileRange, JobFile, NewFile};
use crate::ids::*;
use crate::job::*;
use crate::limits::QueuePolicy;
use crate::queue::{QueueImage, QueueMeta, RequestKey, RequestRecord};
use crate::time::Timestamp;

fn text() -> impl Strategy<Value = String> {
    "[ -~]{0,24}"
}

fn job_id() -> impl Strategy<Value = JobId> {
    any::<u128>().prop_map(|n| JobId(uuid::Uuid::from_u128(n)))
}

fn principal() -> impl Strategy<Value = Principal> {
    "[a-z]{1,12}".prop_map(|s| Principal::new(s).expect("valid"))
}

fn caller() -> impl Strategy<Value = Caller> {
    (principal(), prop_oneof![Just(Role::User), Just(Role::Admin)])
        .prop_map(|(principal, role)| Caller { principal, role })
}

fn code() -> impl Strategy<Value = BitsCode> {
    any::<u32>().prop_map(BitsCode)
}

fn range() -> impl Strategy<Value = FileRange> {
    (any::<u64>(), any::<u64>()).prop_map(|(offset, length)| FileRange { offset, length })
}

fn new_file() -> impl Strategy<Value = NewFile> {
    (text(), text(), proptest::collection::vec(range(), 0..4), proptest::option::of(text()))
        .prop_map(|(remote_url, local_path, ranges, sha256)| NewFile {
            remote_url,
            local_path,
            ranges,
            sha256,
        })
}

fn priority() -> impl Strategy<Value = Priority> {
    proptest::sample::select(Priority::ALL.to_vec())
}

fn job_type() -> impl Strategy<Value = JobType> {
    proptest::sample::select(JobType::ALL.to_vec())
}

fn proxy() -> impl Strategy<Value = ProxySettings> {
    (
        proptest::sample::select(vec![
            ProxyUsage::Preconfig,
            ProxyUsage::NoProxy,
            ProxyUsage::Override,
            ProxyUsage::Autodetect,
        ]),
        proptest::option::of(text()),
        proptest::option::of(text()),
    )
        .prop_map(|(usage, list, bypass)| ProxySettings { usage, list, bypass })
}

fn cmdline() -> impl Strategy<Value = NotifyCmdLine> {
    (text(), proptest::collection::vec(text(), 0..3))
        .prop_map(|(program, args)| NotifyCmdLine { program, args })
}

prop_compose! {
    fn changes()(
        display_name in proptest::option::of(text()),
        description in proptest::option::of(text()),
        priority in proptest::option::of(priority()),
        notify_flags in proptest::option::of(any::<u32>()),
        notify_cmdline in proptest::option::of(proptest::option::of(cmdline())),
        delays in (proptest::option::of(any::<u32>()), proptest::option::of(any::<u32>()), proptest::option::of(any::<u32>())),
        proxy in proptest::option::of(proxy()),
        reply_file_name in proptest::option::of(proptest::option::of(text())),
        custom_headers in proptest::option::of(proptest::option::of(proptest::collection::vec(text(), 0..3).prop_map(HeaderLines))),
        flags in (proptest::option::of(any::<bool>()), proptest::option::of(any::<bool>()), proptest::option::of(proptest::option::of(any::<u64>()))),
        bits in (proptest::option::of(any::<u32>()), proptest::option::of(any::<u32>()), proptest::option::of(any::<u32>())),
    ) -> PropertyChanges {
        PropertyChanges {
            display_name, description, priority, notify_flags, notify_cmdline,
            minimum_retry_delay_secs: delays.0, no_progress_timeout_secs: delays.1, max_download_time_secs: delays.2,
            proxy, reply_file_name: reply_file_name.clone(), custom_headers,
            custom_headers_write_only: flags.0, dynamic_content: flags.1, max_download_size: flags.2,
            peer_caching_flags: bits.0, acl_flags: bits.1, minimum_notification_interval_ms: bits.2,
            max_connections: flags.2.map(|o| o.map(|n| n as u32)),
            max_helpers: flags.2.map(|o| o.map(|n| (n % 17) as u32)),
            security_flags: bits.0,
            client_certificate: reply_file_name.clone(),
            http_method: reply_file_name.flatten(),
            max_bandwidth: flags.2,
        }
    }
}

fn policy() -> impl Strategy<Value = QueuePolicy> {
    any::<(u32, u32, u32, u32, u64)>().prop_map(|(a, b, c, d, e)| QueuePolicy {
        max_jobs_per_user: a,
        max_jobs: b,
        max_files_per_job: c,
        max_ranges_per_file: d,
        job_inactivity_timeout_secs: e,
    })
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        (
            job_id(),
            any::<u64>(),
            text(),
            job_type(),
            changes(),
            proptest::collection::vec(new_file(), 0..3)
        )
            .prop_map(|(id, home_node, display_name, job_type, properties, files)| {
                Command::CreateJob {
                    id,
                    home_node,
                    spec: NewJob { display_name, job_type, properties, files },
                }
            }),
        (job_id(), proptest::collection::vec(new_file(), 0..3))
            .prop_map(|(job, files)| Command::AddFiles { job, files }),
        (job_id(), changes()).prop_map(|(job, changes)| Command::SetProperties { job, changes }),
        (job_id(), any::<u32>(), proptest::option::of(text()), proptest::option::of(any::<bool>()))
            .prop_map(|(job, index, remote_url, valid)| Command::ChangeFile {
                job,
                index,
                changes: FileChanges { remote_url, valid }
            }),
        (job_id(), proptest::sample::select(JobAction::ALL.to_vec()))
            .prop_map(|(job, action)| Command::Lifecycle { job, action }),
        policy().prop_map(Command::SetPolicy),
        (job_id(), any::<u64>(), proptest::collection::vec(report(), 0..3))
            .prop_map(|(job, run, reports)| Command::Engine { job, run, reports }),
        (job_id(), text(), proptest::collection::vec(any::<u8>(), 0..40)).prop_map(
            |(job, user_name, sealed)| {
                Command::SetCredentials {
                    job,
                    credential: SealedCredential {
                        target: AuthTarget::Proxy,
                        scheme: AuthScheme::Digest,
                        user_name,
                        sealed,
                    },
                }
            }
        ),
    ]
}

fn remote() -> impl Strategy<Value = RemoteInfo> {
    (
        proptest::option::of(any::<u64>()),
        proptest::option::of(text()),
        proptest::option::of(text()),
        any::<bool>(),
        proptest::option::of(text()),
    )
        .prop_map(|(size, etag, last_modified, ranges, sha256)| RemoteInfo {
            size,
            etag,
            last_modified,
            ranges,
            sha256,
        })
}

fn report() -> impl Strategy<Value = EngineReport> {
    prop_oneof![
        Just(EngineReport::Activate),
        Just(EngineReport::RetryDelayElapsed),
        (any::<u32>(), remote(), any::<u64>()).prop_map(|(file, remote, chunk_size)| {
            EngineReport::Probed { file, remote, chunk_size }
        }),
        (
            any::<u32>(),
            proptest::collection::vec((any::<u32>(), any::<u64>(), any::<[u8; 32]>()), 0..4)
        )
            .prop_map(|(file, chunks)| EngineReport::Chunks {
                file,
                chunks: chunks
                    .into_iter()
                    .map(|(index, len, digest)| ChunkRecord {
                        index,
                        len,
                        digest,
                        from_peer: index % 2 == 0
                    })
                    .collect(),
            }),
        (any::<u32>(), proptest::collection::vec(any::<u32>(), 0..4))
            .prop_map(|(file, chunks)| EngineReport::ChunksLost { file, chunks }),
        (any::<u32>(), any::<u64>(), proptest::collection::vec(text(), 0..3)).prop_map(
            |(file, size, headers)| EngineReport::FileTransferred { file, size, headers }
        ),
        (code(), text(), any::<bool>()).prop_map(|(code, detail, fatal)| EngineReport::Failed {
            error: JobError {
                context: ErrorContext::GeneralTransport,
                code,
                detail,
                file_index: None,
                protocol: None
            },
            severity: if fatal { Severity::Fatal } else { Severity::Transient },
        }),
        proptest::collection::vec(any::<u32>(), 0..4)
            .prop_map(|completed| EngineReport::FilesFinished { completed }),
    ]
}

fn result() -> impl Strategy<Value = CommandResult> {
    prop_oneof![
        job_id().prop_map(|id| Ok(Reply::Created(id))),
        code().prop_map(|c| Ok(Reply::Done(c))),
        (code(), text()).prop_map(|(code, detail)| Err(CommandError { code, detail })),
    ]
}

fn batch() -> impl Strategy<Value = Batch> {
    let proposal = (proptest::option::of("[a-z0-9]{1,20}"), caller(), command()).prop_map(
        |(id, caller, command)| Proposal {
            request_id: id.map(|i| RequestId::new(i).expect("valid")),
            caller,
            command,
        },
    );
    (any::<u64>(), proptest::collection::vec(proposal, 0..4))
        .prop_map(|(t, proposals)| Batch { time: Timestamp(t), proposals })
}

fn state() -> impl Strategy<Value = JobState> {
    proptest::sample::select(JobState::ALL.to_vec())
}

fn job() -> impl Strategy<Value = Job> {
    (
        (job_id(), principal(), job_type(), state(), text(), priority()),
        proptest::collection::vec(
            (
                new_file(),
                any::<(bool, bool, bool)>(),
                proptest::option::of(any::<u64>()),
                any::<u64>(),
            ),
            0..3,
        ),
        (any::<u64>(), any::<u64>(), proptest::option::of(any::<u64>())),
        proptest::option::of((code(), text(), proptest::option::of(any::<u32>()))),
        (any::<u32>(), any::<bool>(), any::<u64>()),
    )
        .prop_map(
            |(
                (id, owner, job_type, state, name, priority),
                files,
                times,
                error,
                (error_count, ever_resumed, home_node),
            )| Job {
                id,
                owner,
                job_type,
                state,
                props: JobProperties {
                    // Fields of format 11 in some jobs, not in others.
                    http_method: ever_resumed.then(|| "POST".into()),
                    max_bandwidth: (home_node % 2 == 0).then_some(home_node),
                    ..JobProperties::new(name, priority)
                },
                files: files
                    .into_iter()
                    .enumerate()
                    .map(|(i, (spec, (transferred, validated, completed), total, done))| {
                        let mut f = JobFile::new(id, i, spec);
                        f.transferred = transferred;
                        f.chunk_size = done;
                        f.chunks = vec![ChunkRecord {
                            index: 1,
                            len: done,
                            digest: [7; 32],
                            from_peer: true,
                        }];
                        f.bytes_from_peers = done;
                        f.withdrawn = validated;
                        f.remote = Some(RemoteInfo {
                            size: total,
                            etag: Some("\"e\"".into()),
                            last_modified: None,
                            ranges: true,
                            sha256: None,
                        });
                        f.validated = validated;
                        f.progress =
                            FileProgress { bytes_total: total, bytes_transferred: done, completed };
                        std::sync::Arc::new(f)
                    })
                    .collect(),
                times: JobTimes {
                    created: Timestamp(times.0),
                    modified: Timestamp(times.1),
                    transfer_completed: times.2.map(Timestamp),
                },
                error: error.map(|(code, detail, file_index)| JobError {
                    context: ErrorContext::RemoteFile,
                    code,
                    detail,
                    file_index,
                    protocol: Some("http".into()),
                }),
                error_count,
                ever_resumed,
                credentials: Vec::new(),
                upload: Default::default(),
                placement: Placement {
                    home_node,
                    fleet: ever_resumed.then_some(crate::peer_cache::FleetMember {
                        fleet: id,
                        member: error_count % 5,
                        members: 5,
                    }),
                },
                activity: Activity {
                    run: times.0 / 3,
                    state_since: Timestamp(times.1),
                    no_progress_since: times.2.map(Timestamp),
                    active_ms: times.0 / 7,
                    active_since: times.2.map(Timestamp),
                    last_activated: Some(Timestamp(times.0)),
                    files_finished: ever_resumed,
                },
                notify: NotifyBook {
                    modification_notified: times.2.map(Timestamp),
                    entries: times.0 / 11,
                    run: None,
                },
            },
        )
}

fn round_trip<T>(value: &T) -> Result<(), TestCaseError>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let bytes = codec::encode(value).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let back: T = codec::decode(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&back, value);
    Ok(())
}

proptest! {
    #[test]
    fn batches_round_trip(b in batch()) { round_trip(&b)?; }

    #[test]
    fn replies_round_trip(r in proptest::collection::vec(result(), 0..5)) { round_trip(&BatchReply(r))?; }

    #[test]
    fn jobs_round_trip(j in job()) { round_trip(&j)?; }

    #[test]
    fn request_records_round_trip(p in principal(), id in "[a-z0-9]{1,30}", r in result(), seq in any::<u64>(), t in any::<u64>(), fp in any::<[u8; 16]>()) {
        round_trip(&(RequestKey { principal: p, id: RequestId::new(id).expect("valid") }, RequestRecord { seq, time: Timestamp(t), fingerprint: fp, result: r }))?;
    }

    #[test]
    fn images_round_trip(jobs in proptest::collection::vec(job(), 0..4), policy in policy(), clock in any::<u64>(), seq in any::<u64>()) {
        round_trip(&QueueImage { meta: QueueMeta { policy, clock: Timestamp(clock), seq, batches: seq / 2, last_node_id: seq }, jobs, requests: vec![], uploads: vec![], principals: vec![] })?;
    }

    /// Arbitrary bytes never panic the decoder.
    #[test]
    fn garbage_is_an_error_not_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = codec::decode::<Batch>(&bytes);
        let _ = codec::decode::<Job>(&bytes);
    }
}
