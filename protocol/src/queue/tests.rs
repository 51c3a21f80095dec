//! Behaviour of apply: ownership, BITS rules, limits, request ids, expiry, determinism.

mod listing;

use super::*;
use crate::command::{
    Batch, Command, FileChanges, JobAction, NewJob, PropertyChanges, Proposal, Reply,
};
use crate::file::{FileRange, NewFile};
use crate::ids::{Caller, Role};
use crate::job::{JobState, JobType, Priority};

fn caller(name: &str, role: Role) -> Caller {
    Caller { principal: Principal::new(name).expect("name"), role }
}

fn alice() -> Caller {
    caller("alice", Role::User)
}

fn bob() -> Caller {
    caller("bob", Role::User)
}

fn admin() -> Caller {
    caller("root", Role::Admin)
}

fn file(n: usize) -> NewFile {
    NewFile {
        remote_url: format!("https://origin.example/f{n}"),
        local_path: format!("/srv/out/f{n}"),
        ranges: vec![],
        sha256: None,
    }
}

fn new_job(job_type: JobType, files: usize) -> NewJob {
    NewJob {
        display_name: "job".into(),
        job_type,
        properties: PropertyChanges::default(),
        files: (0..files).map(file).collect(),
    }
}

struct Harness {
    queue: Queue,
    time: u64,
    next_id: u128,
}

impl Harness {
    fn new() -> Self {
        Self { queue: Queue::new(QueuePolicy::default()), time: 1_000, next_id: 1 }
    }

    fn run(&mut self, who: &Caller, request_id: Option<&str>, command: Command) -> CommandResult {
        self.time += 10;
        let batch = Batch {
            time: Timestamp(self.time),
            proposals: vec![Proposal {
                request_id: request_id.map(|r| RequestId::new(r).expect("id")),
                caller: who.clone(),
                command,
            }],
        };
        let mut reply = self.queue.apply_batch(&batch);
        reply.0.pop().expect("one result per proposal")
    }

    fn create(&mut self, who: &Caller, spec: NewJob) -> CommandResult {
        let id = JobId(uuid::Uuid::from_u128(self.next_id));
        self.next_id += 1;
        self.run(who, None, Command::CreateJob { id, home_node: 1, spec })
    }

    fn created(&mut self, who: &Caller, spec: NewJob) -> JobId {
        match self.create(who, spec) {
            Ok(Reply::Created(id)) => id,
            other => panic!("create failed: {other:?}"),
        }
    }

    fn act(&mut self, who: &Caller, job: JobId, action: JobAction) -> CommandResult {
        self.run(who, None, Command::Lifecycle { job, action })
    }

    fn state(&self, job: JobId) -> JobState {
        self.queue.job(&job).expect("job exists").state
    }
}

fn code(result: CommandResult) -> BitsCode {
    match result {
        Ok(Reply::Done(code)) => code,
        Ok(Reply::Created(_) | Reply::NodeId(_) | Reply::Fragment(_)) => BitsCode::S_OK,
        Err(e) => e.code,
    }
}

#[test]
fn new_jobs_start_suspended_with_bits_defaults() {
    let mut h = Harness::new();
    let id = h.created(&alice(), new_job(JobType::Download, 1));
    let job = h.queue.job(&id).expect("job");
    assert_eq!(job.state, JobState::Suspended);
    assert_eq!(job.props.priority, Priority::Normal);
    assert_eq!(job.props.notify_flags, 0x3);
    assert_eq!(job.props.minimum_retry_delay_secs, 600);
    assert_eq!(job.props.no_progress_timeout_secs, 1_209_600);
    assert_eq!(job.props.max_download_time_secs, 7_776_000);
    assert_eq!(job.owner.as_str(), "alice");
    assert_eq!(job.files[0].temporary_name.rsplit_once('/').map(|(d, _)| d), Some("/srv/out"));
}

#[test]
fn a_stored_job_keeps_no_room_for_files_it_does_not_have() {
    // A queue holds up to 100,000 jobs in memory: room for 3 more files (about 1 KiB)
    // in a job of one file was a third of its memory.
    let mut h = Harness::new();
    let id = h.created(&alice(), new_job(JobType::Download, 1));
    assert_eq!(h.queue.job(&id).expect("job").files.capacity(), 1);
    h.run(&alice(), None, Command::AddFiles { job: id, files: vec![file(2)] }).expect("add");
    assert_eq!(h.queue.job(&id).expect("job").files.capacity(), 2);
}

#[test]
fn resume_without_files_is_empty_then_lifecycle_runs() {
    let mut h = Harness::new();
    let id = h.created(&alice(), new_job(JobType::Download, 0));
    assert_eq!(code(h.act(&alice(), id, JobAction::Resume)), BitsCode::BG_E_EMPTY);
    assert_eq!(h.state(id), JobState::Suspended);
    h.run(&alice(), None, Command::AddFiles { job: id, files: vec![file(1)] }).expect("add");
    assert_eq!(code(h.act(&alice(), id, JobAction::Resume)), BitsCode::S_OK);
    assert_eq!(h.state(id), JobState::Queued);
    assert_eq!(code(h.act(&alice(), id, JobAction::Complete)), BitsCode::BG_S_PARTIAL_COMPLETE);
    assert_eq!(h.state(id), JobState::Acknowledged);
    assert_eq!(code(h.act(&alice(), id, JobAction::Cancel)), BitsCode::BG_E_INVALID_STATE);
}

#[test]
fn users_cannot_see_or_touch_other_users_jobs() {
    let mut h = Harness::new();
    let id = h.created(&alice(), new_job(JobType::Download, 1));
    let before = h.queue.job(&id).cloned();
    for action in JobAction::ALL {
        assert_eq!(code(h.act(&bob(), id, action)), BitsCode::BG_E_NOT_FOUND, "{action:?}");
    }
    let set = Command::SetProperties {
        job: id,
        changes: PropertyChanges { priority: Some(Priority::High), ..Default::default() },
    };
    assert_eq!(code(h.run(&bob(), None, set)), BitsCode::BG_E_NOT_FOUND);
    assert_eq!(h.queue.job(&id).cloned(), before, "nothing changed");
    assert!(h.queue.visible_job(&bob(), &id).is_err());
    assert_eq!(h.queue.list(&bob(), false).expect("list").len(), 0);
    assert_eq!(code_of(h.queue.list(&bob(), true)), BitsCode::E_ACCESSDENIED);
    assert_eq!(h.queue.list(&admin(), true).expect("list").len(), 1);
}

fn code_of<T>(r: Result<T, CommandError>) -> BitsCode {
    r.err().map(|e| e.code).unwrap_or(BitsCode::S_OK)
}

#[test]
fn take_ownership_is_for_admins_and_strips_owner_secrets() {
    let mut h = Harness::new();
    let mut spec = new_job(JobType::Download, 1);
    spec.properties.custom_headers = Some(Some(vec!["Authorization: secret".to_owned()].into()));
    spec.properties.notify_cmdline =
        Some(Some(crate::job::NotifyCmdLine { program: "/bin/true".into(), args: vec![] }));
    let id = h.created(&alice(), spec);
    assert_eq!(code(h.act(&alice(), id, JobAction::TakeOwnership)), BitsCode::E_ACCESSDENIED);
    assert_eq!(code(h.act(&admin(), id, JobAction::TakeOwnership)), BitsCode::S_OK);
    let job = h.queue.job(&id).expect("job");
    assert_eq!(job.owner.as_str(), "root");
    assert!(job.props.custom_headers.is_empty());
    assert!(job.props.notify_cmdline.is_none());
    assert_eq!(code(h.act(&alice(), id, JobAction::Cancel)), BitsCode::BG_E_NOT_FOUND);
    assert_eq!(h.queue.unfinished_jobs_of(&alice().principal), 0);
}

#[test]
fn policy_limits_apply_to_users_not_admins() {
    let mut h = Harness::new();
    h.queue.meta.policy = QueuePolicy {
        max_jobs_per_user: 2,
        max_jobs: 3,
        max_files_per_job: 2,
        max_ranges_per_file: 1,
        ..QueuePolicy::default()
    };
    h.created(&alice(), new_job(JobType::Download, 0));
    h.created(&alice(), new_job(JobType::Download, 0));
    assert_eq!(
        code(h.create(&alice(), new_job(JobType::Download, 0))),
        BitsCode::BG_E_TOO_MANY_JOBS_PER_USER
    );
    h.created(&bob(), new_job(JobType::Download, 0));
    assert_eq!(
        code(h.create(&bob(), new_job(JobType::Download, 0))),
        BitsCode::BG_E_TOO_MANY_JOBS_PER_MACHINE
    );
    h.created(&admin(), new_job(JobType::Download, 5));
    assert_eq!(code(h.create(&admin(), new_job(JobType::Download, 0))), BitsCode::S_OK);
    let id = h.created(&admin(), new_job(JobType::Download, 0));
    assert_eq!(code(h.act(&admin(), id, JobAction::Cancel)), BitsCode::S_OK);
    // Finished jobs no longer count toward the limits (the admin's count toward the
    // cluster's total while unfinished).
    assert_eq!(
        code(h.create(&bob(), new_job(JobType::Download, 0))),
        BitsCode::BG_E_TOO_MANY_JOBS_PER_MACHINE
    );
    let admins: Vec<JobId> =
        h.queue.list(&admin(), false).expect("list").iter().map(|j| j.id).collect();
    for id in admins {
        h.act(&admin(), id, JobAction::Cancel).expect("cancel");
    }
    let alices = h.queue.list(&alice(), false).expect("list")[0].id;
    h.act(&alice(), alices, JobAction::Cancel).expect("cancel");
    assert_eq!(code(h.create(&bob(), new_job(JobType::Download, 0))), BitsCode::S_OK);
    let mut h = Harness::new();
    h.queue.meta.policy.max_files_per_job = 2;
    let id = h.created(&alice(), new_job(JobType::Download, 2));
    let add = Command::AddFiles { job: id, files: vec![file(9)] };
    assert_eq!(code(h.run(&alice(), None, add)), BitsCode::BG_E_TOO_MANY_FILES_IN_JOB);
    assert_eq!(h.queue.job(&id).expect("job").files.len(), 2);
}

#[test]
fn upload_jobs_take_exactly_one_file_without_ranges() {
    let mut h = Harness::new();
    assert_eq!(
        code(h.create(&alice(), new_job(JobType::Upload, 2))),
        BitsCode::BG_E_TOO_MANY_FILES
    );
    let id = h.created(&alice(), new_job(JobType::Upload, 1));
    let add = Command::AddFiles { job: id, files: vec![file(2)] };
    assert_eq!(code(h.run(&alice(), None, add)), BitsCode::BG_E_TOO_MANY_FILES);
    let mut ranged = new_job(JobType::UploadReply, 0);
    ranged.files = vec![NewFile { ranges: vec![FileRange { offset: 0, length: 5 }], ..file(1) }];
    assert_eq!(code(h.create(&alice(), ranged)), BitsCode::E_NOTIMPL);
    assert_eq!(code(h.act(&alice(), id, JobAction::Complete)), BitsCode::BG_E_INVALID_STATE);
}

#[test]
fn property_rules() {
    let mut h = Harness::new();
    let id = h.created(&alice(), new_job(JobType::Download, 1));
    let set = |changes: PropertyChanges| Command::SetProperties { job: id, changes };
    let clamp = PropertyChanges { minimum_retry_delay_secs: Some(1), ..Default::default() };
    assert_eq!(code(h.run(&alice(), None, set(clamp))), BitsCode::S_OK);
    assert_eq!(h.queue.job(&id).expect("job").props.minimum_retry_delay_secs, 5);
    let reply =
        PropertyChanges { reply_file_name: Some(Some("/tmp/r".into())), ..Default::default() };
    assert_eq!(code(h.run(&alice(), None, set(reply))), BitsCode::E_NOTIMPL);
    let wo = PropertyChanges { custom_headers_write_only: Some(true), ..Default::default() };
    assert_eq!(code(h.run(&alice(), None, set(wo))), BitsCode::S_OK);
    let undo = PropertyChanges { custom_headers_write_only: Some(false), ..Default::default() };
    assert_eq!(code(h.run(&alice(), None, set(undo))), BitsCode::E_INVALIDARG);
    h.act(&alice(), id, JobAction::Resume).expect("resume");
    let dynamic = PropertyChanges { dynamic_content: Some(true), ..Default::default() };
    assert_eq!(
        code(h.run(&alice(), None, set(dynamic))),
        BitsCode::BG_E_READ_ONLY_PROPERTY_AFTER_RESUME
    );
    // A failed change changes nothing, even when other fields were valid.
    let mixed = PropertyChanges {
        priority: Some(Priority::Low),
        notify_flags: Some(0x80),
        ..Default::default()
    };
    assert_eq!(code(h.run(&alice(), None, set(mixed))), BitsCode::E_NOTIMPL);
    assert_eq!(h.queue.job(&id).expect("job").props.priority, Priority::Normal);
}

#[test]
fn set_http_method_makes_the_job_foreground_for_good() {
    let mut h = Harness::new();
    let id = h.created(&alice(), new_job(JobType::Download, 1));
    let set = |changes: PropertyChanges| Command::SetProperties { job: id, changes };
    let method = |m: &str| PropertyChanges { http_method: Some(m.into()), ..Default::default() };
    // The default verb is no change at all.
    assert_eq!(code(h.run(&alice(), None, set(method("GET")))), BitsCode::S_OK);
    let props = h.queue.job(&id).expect("job").props.clone();
    assert_eq!((props.http_method, props.priority), (None, Priority::Normal));
    assert_eq!(code(h.run(&alice(), None, set(method("GET /x")))), BitsCode::E_INVALIDARG);
    for refused in ["CONNECT", "trace"] {
        assert_eq!(code(h.run(&alice(), None, set(method(refused)))), BitsCode::E_INVALIDARG);
    }
    assert_eq!(code(h.run(&alice(), None, set(method("POST")))), BitsCode::S_OK);
    let props = h.queue.job(&id).expect("job").props.clone();
    assert_eq!((props.custom_method(), props.priority), (Some("POST"), Priority::Foreground));
    let low = PropertyChanges { priority: Some(Priority::Low), ..Default::default() };
    assert_eq!(code(h.run(&alice(), None, set(low))), BitsCode::BG_E_READ_ONLY_PROPERTY);
    let dynamic = PropertyChanges { dynamic_content: Some(true), ..Default::default() };
    assert_eq!(
        code(h.run(&alice(), None, set(dynamic))),
        BitsCode::BG_E_UNSUPPORTED_JOB_CONFIGURATION
    );
    let ranged = NewFile { ranges: vec![FileRange { offset: 0, length: 10 }], ..file(7) };
    let add = Command::AddFiles { job: id, files: vec![ranged] };
    assert_eq!(code(h.run(&alice(), None, add)), BitsCode::BG_E_UNSUPPORTED_JOB_CONFIGURATION);
    h.act(&alice(), id, JobAction::Resume).expect("resume");
    assert_eq!(
        code(h.run(&alice(), None, set(method("PUT")))),
        BitsCode::BG_E_READ_ONLY_PROPERTY_AFTER_RESUME
    );
    // Upload jobs keep BITS's own protocol.
    let upload = h.created(&alice(), new_job(JobType::Upload, 1));
    let changes = method("POST");
    assert_eq!(
        code(h.run(&alice(), None, Command::SetProperties { job: upload, changes })),
        BitsCode::BG_E_PROPERTY_SUPPORTED_FOR_DOWNLOAD_JOBS_ONLY
    );
}

#[test]
fn a_files_expected_sha256_is_checked_and_kept_in_lowercase() {
    let mut h = Harness::new();
    let hex = "AB".repeat(32);
    let mut spec = new_job(JobType::Download, 0);
    spec.files = vec![NewFile { sha256: Some(hex.clone()), ..file(1) }];
    let id = h.created(&alice(), spec);
    let kept = h.queue.job(&id).expect("job").files[0].expected_sha256.clone();
    assert_eq!(kept, Some("ab".repeat(32)));
    let short = NewFile { sha256: Some("ab".into()), ..file(2) };
    let add = Command::AddFiles { job: id, files: vec![short] };
    assert_eq!(code(h.run(&alice(), None, add)), BitsCode::E_INVALIDARG);
    let ranged = NewFile {
        sha256: Some(hex.clone()),
        ranges: vec![FileRange { offset: 0, length: 10 }],
        ..file(3)
    };
    let add = Command::AddFiles { job: id, files: vec![ranged] };
    assert_eq!(code(h.run(&alice(), None, add)), BitsCode::BG_E_UNSUPPORTED_JOB_CONFIGURATION);
    let mut upload = new_job(JobType::Upload, 0);
    upload.files = vec![NewFile { sha256: Some(hex), ..file(4) }];
    assert_eq!(code(h.create(&alice(), upload)), BitsCode::E_NOTIMPL);
}

#[test]
fn a_job_bandwidth_cap_is_set_and_removed() {
    let mut h = Harness::new();
    let id = h.created(&alice(), new_job(JobType::Download, 1));
    let cap = |rate| Command::SetProperties {
        job: id,
        changes: PropertyChanges { max_bandwidth: Some(rate), ..Default::default() },
    };
    assert_eq!(code(h.run(&alice(), None, cap(Some(10)))), BitsCode::E_INVALIDARG);
    assert_eq!(code(h.run(&alice(), None, cap(Some(1_000_000)))), BitsCode::S_OK);
    assert_eq!(h.queue.job(&id).expect("job").props.max_bandwidth, Some(1_000_000));
    assert_eq!(code(h.run(&alice(), None, cap(None))), BitsCode::S_OK);
    assert_eq!(h.queue.job(&id).expect("job").props.max_bandwidth, None);
}

#[test]
fn a_retried_request_is_applied_once() {
    let mut h = Harness::new();
    let spec = new_job(JobType::Download, 1);
    let first_id = JobId(uuid::Uuid::from_u128(77));
    let second_id = JobId(uuid::Uuid::from_u128(78));
    let first = h.run(
        &alice(),
        Some("req-1"),
        Command::CreateJob { id: first_id, home_node: 1, spec: spec.clone() },
    );
    // The retry reached another node, which picked another id: it still gets the first job.
    let retry = h.run(
        &alice(),
        Some("req-1"),
        Command::CreateJob { id: second_id, home_node: 2, spec: spec.clone() },
    );
    assert_eq!(first, Ok(Reply::Created(first_id)));
    assert_eq!(retry, first);
    assert_eq!(h.queue.jobs().count(), 1);
    // Same id from another principal is another request.
    let bobs =
        h.run(&bob(), Some("req-1"), Command::CreateJob { id: second_id, home_node: 1, spec });
    assert_eq!(bobs, Ok(Reply::Created(second_id)));
    // Same id with a different request is refused, and applies nothing.
    let other = h.run(
        &alice(),
        Some("req-1"),
        Command::Lifecycle { job: first_id, action: JobAction::Cancel },
    );
    assert_eq!(code(other), BitsCode::E_INVALIDARG);
    assert_eq!(h.state(first_id), JobState::Suspended);
}

#[test]
fn request_ids_and_final_jobs_expire_by_batch_time() {
    let mut h = Harness::new();
    let id = h.created(&alice(), new_job(JobType::Download, 1));
    h.run(&alice(), Some("r"), Command::Lifecycle { job: id, action: JobAction::Cancel })
        .expect("cancel");
    assert_eq!(h.queue.remembered_requests(), 1);
    h.time += REQUEST_ID_TTL.as_millis() as u64 + FINAL_JOB_RETENTION.as_millis() as u64;
    h.created(&alice(), new_job(JobType::Download, 0));
    assert_eq!(h.queue.remembered_requests(), 0);
    assert!(h.queue.job(&id).is_none(), "the cancelled job is gone after its retention");
    let changes = h.queue.take_changes();
    assert!(changes.jobs.contains(&id));
}

#[test]
fn image_round_trip_rebuilds_indexes() {
    let mut h = Harness::new();
    h.queue.meta.policy.max_jobs_per_user = 1;
    h.created(&alice(), new_job(JobType::Download, 1));
    let restored = Queue::from_image(h.queue.to_image());
    assert_eq!(restored.to_image(), h.queue.to_image());
    let mut h2 = Harness { queue: restored, time: h.time, next_id: 100 };
    assert_eq!(
        code(h2.create(&alice(), new_job(JobType::Download, 0))),
        BitsCode::BG_E_TOO_MANY_JOBS_PER_USER
    );
}

mod determinism {
    use super::*;
    use crate::transfer::{ChunkRecord, EngineReport, RemoteInfo};
    use proptest::prelude::*;

    /// An engine report on file `n % 2` of a 25-byte file in chunks of 10, in one of two
    /// versions (with or without a declared digest), as a run would send it.
    fn any_report(n: u64) -> EngineReport {
        let file = (n % 2) as u32;
        match (n / 2) % 6 {
            0 => EngineReport::Activate,
            1 => EngineReport::Probed {
                file,
                remote: RemoteInfo {
                    size: Some(25),
                    etag: Some(format!("\"v{}\"", n % 3)),
                    last_modified: None,
                    ranges: true,
                    sha256: n.is_multiple_of(5).then(|| "ab".repeat(32)),
                },
                chunk_size: 10,
            },
            2 => EngineReport::Chunks {
                file,
                chunks: vec![ChunkRecord {
                    index: (n % 3) as u32,
                    len: if n % 3 == 2 { 5 } else { 10 },
                    digest: [n as u8; 32],
                    from_peer: n.is_multiple_of(7),
                }],
            },
            3 => EngineReport::FileTransferred { file, size: 25, headers: vec![] },
            4 => EngineReport::RestartFile { file },
            _ => EngineReport::Connected,
        }
    }

    fn any_command(jobs: Vec<JobId>) -> impl Strategy<Value = (usize, Command)> {
        let job = proptest::sample::select(jobs);
        (0usize..3, job, 0u8..14, any::<u64>()).prop_map(|(who, job, kind, n)| {
            if kind >= 8 {
                // The run is filled in when the command is applied.
                return (3, Command::Engine { job, run: 0, reports: vec![any_report(n)] });
            }
            let command = match kind {
                0 => Command::CreateJob {
                    id: job,
                    home_node: 1,
                    spec: new_job(JobType::ALL[(n % 3) as usize], (n % 3) as usize),
                },
                1 => Command::AddFiles { job, files: vec![file(n as usize % 7)] },
                2 => Command::SetProperties {
                    job,
                    changes: PropertyChanges {
                        priority: Some(Priority::ALL[(n % 4) as usize]),
                        ..Default::default()
                    },
                },
                3 => Command::ChangeFile {
                    job,
                    index: (n % 2) as u32,
                    changes: FileChanges { remote_url: None, valid: Some(n % 2 == 0) },
                },
                4 => Command::ChangeFile {
                    job,
                    index: 0,
                    changes: FileChanges {
                        remote_url: Some(format!("http://o/{n}")),
                        valid: (n % 3 == 0).then_some(false),
                    },
                },
                _ => Command::Lifecycle { job, action: JobAction::ALL[(n % 5) as usize] },
            };
            (who, command)
        })
    }

    /// One step of a download's life: an engine report, a lifecycle action, a file
    /// validated or not, or the peer caching flags changed.
    fn any_step() -> impl Strategy<Value = (usize, Command)> {
        let job = JobId(uuid::Uuid::from_u128(1));
        (0u8..10, any::<u64>()).prop_map(move |(kind, n)| match kind {
            0..6 => (3, Command::Engine { job, run: 0, reports: vec![any_report(n)] }),
            6 => (0, Command::Lifecycle { job, action: JobAction::ALL[(n % 4) as usize] }),
            7 => (
                3,
                Command::Engine {
                    job,
                    run: 0,
                    reports: vec![EngineReport::FilesFinished { completed: vec![(n % 2) as u32] }],
                },
            ),
            8 => (
                0,
                Command::ChangeFile {
                    job,
                    index: (n % 2) as u32,
                    changes: FileChanges { remote_url: None, valid: Some(n % 3 != 0) },
                },
            ),
            _ => (
                0,
                Command::SetProperties {
                    job,
                    changes: PropertyChanges {
                        peer_caching_flags: Some(
                            [0x3, 0x1, 0x2, 0x3 | crate::job::peer_caching::SERVE_VALIDATED_ONLY]
                                [(n % 4) as usize],
                        ),
                        ..Default::default()
                    },
                },
            ),
        })
    }

    proptest! {
        // Some inputs (validated files under SERVE_VALIDATED_ONLY) matter only after a
        // few lucky steps: enough cases to reach them.
        #![proptest_config(ProptestConfig { cases: 2_048, max_global_rejects: 16_384, ..ProptestConfig::default() })]

        /// The peer cache indexes, kept up to date file by file as a download goes
        /// through its life, are at every step what an image rebuilds from scratch.
        #[test]
        fn peer_cache_indexes_follow_every_change(steps in proptest::collection::vec(any_step(), 1..80)) {
            let callers = [alice(), bob(), admin(), Caller { principal: Principal::system(), role: Role::Admin }];
            let job = JobId(uuid::Uuid::from_u128(1));
            let mut queue = Queue::new(QueuePolicy::default());
            let mut time = 1_000;
            let mut apply = |queue: &mut Queue, who: usize, command: Command| {
                time += 10;
                let proposal = Proposal { request_id: None, caller: callers[who].clone(), command };
                queue.apply_batch(&Batch { time: Timestamp(time), proposals: vec![proposal] });
            };
            let create = Command::CreateJob { id: job, home_node: 1, spec: new_job(JobType::Download, 2) };
            apply(&mut queue, 0, create);
            apply(&mut queue, 0, Command::Lifecycle { job, action: JobAction::Resume });
            // Running, both files probed (the steps may still restart or end it).
            for n in [0, 2, 3] {
                let run = queue.job(&job).map_or(0, |j| j.activity.run);
                apply(&mut queue, 3, Command::Engine { job, run, reports: vec![any_report(n)] });
            }
            let mut offered = 0;
            for (who, mut command) in steps {
                if let Command::Engine { run, .. } = &mut command {
                    *run = queue.job(&job).map_or(0, |j| j.activity.run);
                }
                apply(&mut queue, who, command);
                let rebuilt = Queue::from_image(queue.to_image());
                prop_assert_eq!(queue.peer_cache_indexes(), rebuilt.peer_cache_indexes());
                offered += queue.peer_cache_indexes().0.len();
            }
            // Not a vacuous run: copies were offered on the way (most runs).
            prop_assume!(offered > 0);
        }
    }

    proptest! {
        /// Two replicas applying the same batches end identical, also when one of them
        /// restarts from an image half-way (as a restarted node or a snapshot does).
        #[test]
        fn replicas_agree(commands in proptest::collection::vec(any_command((1..5u128).map(|n| JobId(uuid::Uuid::from_u128(n))).collect()), 1..60)) {
            let system = Caller { principal: Principal::system(), role: Role::Admin };
            let callers = [alice(), bob(), admin(), system];
            let mut a = Queue::new(QueuePolicy::default());
            let mut b = Queue::new(QueuePolicy::default());
            let half = commands.len() / 2;
            for (i, (who, mut command)) in commands.into_iter().enumerate() {
                if let Command::Engine { job, run, .. } = &mut command {
                    *run = a.job(job).map_or(0, |j| j.activity.run);
                }
                let batch = Batch {
                    time: Timestamp(1_000 + i as u64),
                    proposals: vec![Proposal { request_id: None, caller: callers[who].clone(), command }],
                };
                let ra = a.apply_batch(&batch);
                let rb = b.apply_batch(&batch);
                prop_assert_eq!(ra, rb);
                if i == half {
                    b = Queue::from_image(crate::codec::decode(&crate::codec::encode(&b.to_image()).expect("encode")).expect("decode"));
                }
            }
            prop_assert_eq!(a.to_image(), b.to_image());
            // The peer cache indexes, kept up to date file by file, are what an image
            // rebuilds from scratch.
            let rebuilt = Queue::from_image(a.to_image());
            prop_assert_eq!(a.peer_cache_indexes(), rebuilt.peer_cache_indexes());
        }
    }
}

#[test]
fn one_principal_cannot_push_out_anothers_request_ids() {
    let mut h = Harness::new();
    let bobs = h.created(&bob(), new_job(JobType::Download, 1));
    h.run(&bob(), Some("bob-1"), Command::Lifecycle { job: bobs, action: JobAction::Suspend })
        .expect("bob");
    let job = h.created(&alice(), new_job(JobType::Download, 1));
    let suspend = Command::Lifecycle { job, action: JobAction::Suspend };
    for n in 0..=MAX_REMEMBERED_REQUESTS_PER_PRINCIPAL {
        h.run(&alice(), Some(&format!("a-{n}")), suspend.clone()).expect("alice");
    }
    let key = |who: &Caller, id: &str| RequestKey {
        principal: who.principal.clone(),
        id: RequestId::new(id).expect("id"),
    };
    assert!(h.queue.request(&key(&alice(), "a-0")).is_none(), "alice's oldest id was forgotten");
    assert!(h.queue.request(&key(&alice(), "a-1")).is_some());
    assert!(h.queue.request(&key(&bob(), "bob-1")).is_some(), "bob's id survives alice's burst");
    assert_eq!(h.queue.remembered_requests(), MAX_REMEMBERED_REQUESTS_PER_PRINCIPAL + 1);
}

#[test]
fn a_create_retried_while_its_job_lives_never_makes_a_second_job() {
    let mut h = Harness::new();
    let spec = new_job(JobType::Download, 1);
    let create = |id| Command::CreateJob {
        id: JobId(uuid::Uuid::from_u128(id)),
        home_node: 1,
        spec: spec.clone(),
    };
    let first = h.run(&alice(), Some("create-1"), create(900)).expect("create");
    let Reply::Created(job) = first else { panic!("created {first:?}") };
    // More keyed requests than a principal's quota, and more than a day, later...
    let suspend = Command::Lifecycle { job, action: JobAction::Suspend };
    for n in 0..=MAX_REMEMBERED_REQUESTS_PER_PRINCIPAL {
        h.run(&alice(), Some(&format!("s-{n}")), suspend.clone()).expect("suspend");
    }
    h.time += REQUEST_ID_TTL.as_millis() as u64;
    // ...the create sent again (through another node: another id) finds its job.
    let retry = h.run(&alice(), Some("create-1"), create(901)).expect("retry");
    assert_eq!(retry, Reply::Created(job));
    assert_eq!(h.queue.jobs().count(), 1, "no second job");
    // The pin survives a snapshot.
    let restored = Queue::from_image(h.queue.to_image());
    let mut h2 = Harness { queue: restored, time: h.time, next_id: 100 };
    assert_eq!(h2.run(&alice(), Some("create-1"), create(902)), Ok(Reply::Created(job)));
    // Once the job ends, its key ages like any other.
    h.act(&alice(), job, JobAction::Cancel).expect("cancel");
    h.run(&alice(), Some("after"), suspend).expect_err("a cancelled job cannot be suspended");
    let key =
        RequestKey { principal: alice().principal, id: RequestId::new("create-1").expect("id") };
    assert!(h.queue.request(&key).is_none(), "forgotten once its job ended");
}

#[test]
fn retained_final_jobs_are_bounded() {
    let mut h = Harness::new();
    for _ in 0..MAX_RETAINED_FINAL_JOBS + 5 {
        let id = h.created(&admin(), new_job(JobType::Download, 0));
        h.act(&admin(), id, JobAction::Cancel).expect("cancel");
    }
    assert_eq!(h.queue.jobs().count(), MAX_RETAINED_FINAL_JOBS);
}

#[test]
fn no_job_outgrows_a_stored_row_even_for_admins() {
    let mut h = Harness::new();
    let id = h.created(&admin(), new_job(JobType::Download, 0));
    let long = |n: usize| NewFile {
        remote_url: format!("https://origin.example/{}/{n}", "p".repeat(200)),
        local_path: format!("/srv/{}/{n}", "d/".repeat(1_000)),
        ranges: vec![],
        sha256: None,
    };
    let mut refused = None;
    for round in 0..20 {
        let files = (0..200).map(|i| long(round * 200 + i)).collect();
        if let Err(e) = h.run(&admin(), None, Command::AddFiles { job: id, files }) {
            refused = Some(e);
            break;
        }
    }
    let e = refused.expect("an admin cannot grow a job without bound");
    assert_eq!(e.code, BitsCode::E_INVALIDARG, "{e}");
    let job = h.queue.job(&id).expect("job");
    assert!(crate::codec::encode(job).expect("encodes").len() <= crate::limits::MAX_JOB_BYTES);
}

#[test]
fn custom_headers_are_the_owners_alone() {
    let mut h = Harness::new();
    let id = h.created(&alice(), new_job(JobType::Download, 1));
    let headers = PropertyChanges {
        custom_headers: Some(Some(vec!["X-A: 1".to_owned()].into())),
        ..Default::default()
    };
    let by_admin =
        h.run(&admin(), None, Command::SetProperties { job: id, changes: headers.clone() });
    assert_eq!(code(by_admin), BitsCode::E_ACCESSDENIED);
    assert_eq!(
        code(h.run(&alice(), None, Command::SetProperties { job: id, changes: headers })),
        BitsCode::S_OK
    );
    // The notify command line may be set by the owner or an administrator.
    let notify = PropertyChanges {
        notify_cmdline: Some(Some(crate::job::NotifyCmdLine {
            program: "/bin/true".into(),
            args: vec![],
        })),
        ..Default::default()
    };
    assert_eq!(
        code(h.run(&admin(), None, Command::SetProperties { job: id, changes: notify })),
        BitsCode::S_OK
    );
}

#[test]
fn complete_leaves_the_completed_flag_to_the_home_node() {
    let mut h = Harness::new();
    let id = h.created(&alice(), new_job(JobType::Download, 1));
    h.act(&alice(), id, JobAction::Complete).expect("complete");
    let job = h.queue.job(&id).expect("job");
    assert_eq!(job.state, JobState::Acknowledged);
    assert!(!job.files[0].progress.completed, "nothing was renamed into place");
}

#[test]
fn replace_remote_prefix_never_makes_a_local_file_url() {
    let mut h = Harness::new();
    let mut spec = new_job(JobType::Download, 1);
    spec.files[0].remote_url = "http://a.example/xle:///etc/shadow".into();
    let id = h.created(&alice(), spec);
    let change = crate::command::PrefixChange {
        old_prefix: "http://a.example/x".into(),
        new_prefix: "fi".into(),
    };
    let replace = Command::ReplaceRemotePrefix(crate::command::ReplacePrefix { job: id, change });
    assert_eq!(code(h.run(&alice(), None, replace)), BitsCode::E_INVALIDARG);
    assert_eq!(
        h.queue.job(&id).expect("job").files[0].remote_url,
        "http://a.example/xle:///etc/shadow"
    );
}

#[test]
fn a_file_change_is_all_or_nothing() {
    let mut h = Harness::new();
    let id = h.created(&alice(), new_job(JobType::Download, 1));
    let both =
        FileChanges { remote_url: Some("https://mirror.example/f1".into()), valid: Some(false) };
    let result =
        h.run(&alice(), Some("one-key"), Command::ChangeFile { job: id, index: 0, changes: both });
    assert_eq!(code(result), BitsCode::E_PENDING, "the file is not transferred yet");
    assert_eq!(h.queue.job(&id).expect("job").files[0].remote_url, "https://origin.example/f0");
    let rename = FileChanges { remote_url: Some("https://mirror.example/f1".into()), valid: None };
    assert_eq!(
        code(h.run(&alice(), None, Command::ChangeFile { job: id, index: 0, changes: rename })),
        BitsCode::S_OK
    );
    assert_eq!(h.queue.job(&id).expect("job").files[0].remote_url, "https://mirror.example/f1");
    let nothing = Command::ChangeFile { job: id, index: 0, changes: FileChanges::default() };
    assert_eq!(code(h.run(&alice(), None, nothing)), BitsCode::E_INVALIDARG);
}

mod engine_reports {
    use super::*;
    use crate::codes::ErrorContext;
    use crate::job::JobError;
    use crate::peer_cache::ContentKey;
    use crate::transfer::{ChunkRecord, EngineReport, RemoteInfo, Severity};

    fn node() -> Caller {
        Caller { principal: Principal::system(), role: Role::Admin }
    }

    fn report(h: &mut Harness, job: JobId, report: EngineReport) -> CommandResult {
        let run = h.queue.job(&job).map_or(0, |j| j.activity.run);
        h.run(&node(), None, Command::Engine { job, run, reports: vec![report] })
    }

    fn queued_job(h: &mut Harness) -> JobId {
        let id = h.created(&alice(), new_job(JobType::Download, 1));
        h.run(&alice(), None, Command::Lifecycle { job: id, action: JobAction::Resume })
            .expect("resume");
        id
    }

    fn probed(h: &mut Harness, id: JobId, size: u64) {
        report(h, id, EngineReport::Activate).expect("activate");
        report(h, id, EngineReport::Connected).expect("connected");
        let remote = RemoteInfo {
            size: Some(size),
            etag: Some("\"v1\"".into()),
            last_modified: None,
            ranges: true,
            sha256: None,
        };
        report(h, id, EngineReport::Probed { file: 0, remote, chunk_size: 10 }).expect("probed");
    }

    fn chunk(index: u32, len: u64) -> ChunkRecord {
        ChunkRecord { index, len, digest: [index as u8; 32], from_peer: false }
    }

    #[test]
    fn an_upload_reply_run_records_session_acks_reply_and_close() {
        use crate::job::LocalStamp;
        let mut h = Harness::new();
        let id = h.created(&alice(), new_job(JobType::UploadReply, 1));
        h.run(&alice(), None, Command::Lifecycle { job: id, action: JobAction::Resume })
            .expect("resume");
        report(&mut h, id, EngineReport::Activate).expect("activate");
        // Acks before a session, and sessions of download jobs, are refused.
        let early = report(&mut h, id, EngineReport::UploadAcked { next: 1, reply_url: None });
        assert_eq!(code(early), BitsCode::BG_E_INVALID_STATE);
        let local = LocalStamp { size: 100, modified_ns: 7 };
        let session = EngineReport::UploadSession {
            session: "{s1}".into(),
            host_id: None,
            host_fallback_secs: None,
            local,
        };
        report(&mut h, id, EngineReport::Connected).expect("connected");
        report(&mut h, id, session.clone()).expect("session");
        let job = h.queue.job(&id).expect("job").clone();
        assert_eq!(job.files[0].progress.bytes_total, Some(100));
        assert_eq!(job.upload.session.as_deref(), Some("{s1}"));
        report(&mut h, id, EngineReport::UploadAcked { next: 60, reply_url: None }).expect("ack");
        let beyond = report(&mut h, id, EngineReport::UploadAcked { next: 101, reply_url: None });
        assert_eq!(code(beyond), BitsCode::BG_E_INVALID_SERVER_RESPONSE);
        // No close before every byte is acknowledged and the reply is in.
        assert_eq!(code(report(&mut h, id, EngineReport::UploadClosed)), BitsCode::E_UNEXPECTED);
        let url = Some("http://server.example/bits-reply/s1".to_owned());
        report(&mut h, id, EngineReport::UploadAcked { next: 100, reply_url: url.clone() })
            .expect("final ack");
        assert_eq!(code(report(&mut h, id, EngineReport::UploadClosed)), BitsCode::E_UNEXPECTED);
        let reply = EngineReport::ReplyReceived { total: Some(9), received: 9, done: true };
        report(&mut h, id, reply).expect("reply");
        report(&mut h, id, EngineReport::UploadClosed).expect("closed");
        let job = h.queue.job(&id).expect("job");
        assert_eq!(job.state, JobState::Transferred);
        assert_eq!(job.upload.reply_url, url);
        assert_eq!(
            (job.upload.reply.bytes_total, job.upload.reply.bytes_transferred),
            (Some(9), 9)
        );
        assert_eq!(job.progress().bytes_transferred, 100);
        assert!(job.reply_path().is_some_and(|p| p.ends_with(".reply")));

        // A download job takes no upload reports; a restart forgets the session.
        let download = queued_job(&mut h);
        report(&mut h, download, EngineReport::Activate).expect("activate");
        assert_eq!(code(report(&mut h, download, session)), BitsCode::BG_E_INVALID_STATE);
    }

    #[test]
    fn only_the_node_may_report() {
        let mut h = Harness::new();
        let id = queued_job(&mut h);
        let refused = h.run(
            &admin(),
            None,
            Command::Engine { job: id, run: 0, reports: vec![EngineReport::Activate] },
        );
        assert_eq!(refused.map_err(|e| e.code), Err(BitsCode::E_ACCESSDENIED));
    }

    #[test]
    fn a_run_moves_the_job_and_counts_durable_bytes() {
        let mut h = Harness::new();
        let id = queued_job(&mut h);
        probed(&mut h, id, 25);
        let job = h.queue.job(&id).expect("job");
        assert_eq!(
            (job.state, job.activity.run, job.files[0].progress.bytes_total),
            (JobState::Transferring, 1, Some(25))
        );
        report(
            &mut h,
            id,
            EngineReport::Chunks { file: 0, chunks: vec![chunk(2, 5), chunk(0, 10)] },
        )
        .expect("chunks");
        // A duplicate report counts once.
        report(&mut h, id, EngineReport::Chunks { file: 0, chunks: vec![chunk(0, 10)] })
            .expect("again");
        assert_eq!(h.queue.job(&id).expect("job").progress().bytes_transferred, 15);
        // A file cannot be declared whole with a chunk missing (G4).
        let early = report(
            &mut h,
            id,
            EngineReport::FileTransferred { file: 0, size: 25, headers: vec![] },
        );
        assert_eq!(early.map_err(|e| e.code), Err(BitsCode::E_UNEXPECTED));
        report(&mut h, id, EngineReport::Chunks { file: 0, chunks: vec![chunk(1, 10)] })
            .expect("chunks");
        report(
            &mut h,
            id,
            EngineReport::FileTransferred {
                file: 0,
                size: 25,
                headers: vec!["ETag: \"v1\"".into()],
            },
        )
        .expect("transferred");
        let job = h.queue.job(&id).expect("job");
        assert_eq!(job.state, JobState::Transferred);
        assert!(job.times.transfer_completed.is_some() && job.files[0].content_digest.is_some());
        // Offered to peers (Ferry's default flags): the chunk digests stay for receivers.
        assert_eq!(job.files[0].chunks.len(), 3);
    }

    #[test]
    fn damaged_chunks_are_forgotten_and_counted_again_when_fetched_again() {
        let mut h = Harness::new();
        let id = queued_job(&mut h);
        probed(&mut h, id, 25);
        let all = vec![chunk(0, 10), chunk(1, 10), chunk(2, 5)];
        report(&mut h, id, EngineReport::Chunks { file: 0, chunks: all }).expect("chunks");
        // Unsorted and repeated indexes, and one never recorded, are all fine.
        let lost = EngineReport::ChunksLost { file: 0, chunks: vec![2, 0, 2, 9] };
        report(&mut h, id, lost).expect("lost");
        let job = h.queue.job(&id).expect("job");
        assert_eq!(job.files[0].chunks.iter().map(|c| c.index).collect::<Vec<_>>(), vec![1]);
        assert_eq!(job.progress().bytes_transferred, 10);
        let whole = EngineReport::FileTransferred { file: 0, size: 25, headers: vec![] };
        let early = report(&mut h, id, whole.clone());
        assert_eq!(early.map_err(|e| e.code), Err(BitsCode::E_UNEXPECTED), "G4");
        let again = EngineReport::Chunks { file: 0, chunks: vec![chunk(0, 10), chunk(2, 5)] };
        report(&mut h, id, again).expect("again");
        report(&mut h, id, whole).expect("transferred");
        // A transferred file has nothing left to lose.
        let late = report(&mut h, id, EngineReport::ChunksLost { file: 0, chunks: vec![1] });
        assert!(late.is_err());
        assert_eq!(h.queue.job(&id).expect("job").progress().bytes_transferred, 25);
    }

    fn key(size: u64) -> [ContentKey; 1] {
        [ContentKey::Version { url: file(0).remote_url, size, validator: "\"v1\"".into() }]
    }

    /// Probes, then records chunks 0 and 1 (of 25 bytes), chunk 1 from a peer.
    fn half_done(h: &mut Harness, id: JobId) {
        probed(h, id, 25);
        two_chunks(h, id);
    }

    fn two_chunks(h: &mut Harness, id: JobId) {
        let mut from_peer = chunk(1, 10);
        from_peer.from_peer = true;
        report(h, id, EngineReport::Chunks { file: 0, chunks: vec![chunk(0, 10), from_peer] })
            .expect("chunks");
    }

    /// Runs the job's one file of 25 bytes to TRANSFERRED, chunk 1 from a peer if
    /// `peer`.
    fn transferred(h: &mut Harness, id: JobId, peer: bool) {
        probed(h, id, 25);
        let mut second = chunk(1, 10);
        second.from_peer = peer;
        let chunks = vec![chunk(0, 10), second, chunk(2, 5)];
        report(h, id, EngineReport::Chunks { file: 0, chunks }).expect("chunks");
        report(h, id, EngineReport::FileTransferred { file: 0, size: 25, headers: vec![] })
            .expect("transferred");
    }

    fn set_valid(h: &mut Harness, id: JobId, valid: bool) -> CommandResult {
        let changes = FileChanges { remote_url: None, valid: Some(valid) };
        h.run(&alice(), None, Command::ChangeFile { job: id, index: 0, changes })
    }

    #[test]
    fn set_remote_name_while_transferring_refuses_the_old_runs_late_reports() {
        let mut h = Harness::new();
        let id = queued_job(&mut h);
        probed(&mut h, id, 25);
        let old_run = h.queue.job(&id).expect("job").activity.run;
        let moved =
            FileChanges { remote_url: Some("https://mirror.example/f0".into()), valid: None };
        h.run(&alice(), None, Command::ChangeFile { job: id, index: 0, changes: moved })
            .expect("set remote name");
        let job = h.queue.job(&id).expect("job");
        assert_eq!(job.state, JobState::Transferring, "still transferring");
        assert_eq!(job.activity.run, old_run + 1, "with a new run");
        assert_eq!(job.files[0].remote, None, "the file starts over");
        // The old run's late probe and chunks (of the old URL) are refused as stale.
        let remote = RemoteInfo {
            size: Some(25),
            etag: Some("\"v1\"".into()),
            last_modified: None,
            ranges: true,
            sha256: None,
        };
        let late = vec![
            EngineReport::Probed { file: 0, remote, chunk_size: 10 },
            EngineReport::Chunks { file: 0, chunks: vec![chunk(0, 10)] },
        ];
        let stale = h.run(&node(), None, Command::Engine { job: id, run: old_run, reports: late });
        assert_eq!(code(stale), BitsCode::BG_E_INVALID_STATE);
        let job = h.queue.job(&id).expect("job");
        assert_eq!((job.files[0].remote.as_ref(), job.progress().bytes_transferred), (None, 0));
    }

    #[test]
    fn invalid_peer_bytes_are_evicted_and_fetched_again_from_the_origin() {
        let mut h = Harness::new();
        let id = queued_job(&mut h);
        transferred(&mut h, id, true);
        set_valid(&mut h, id, false).expect("invalidate");
        let job = h.queue.job(&id).expect("job");
        assert_eq!(job.state, JobState::Queued, "re-fetched, no error");
        assert!(job.error.is_none());
        let file = &job.files[0];
        assert!(file.withdrawn && !file.transferred && file.progress.bytes_transferred == 0);
        assert!(h.queue.peer_copies(&key(25)).is_empty(), "not offered");

        // Bytes from the origin alone: ERROR, as BITS.
        let origin = queued_job(&mut h);
        transferred(&mut h, origin, false);
        set_valid(&mut h, origin, false).expect("invalidate");
        let job = h.queue.job(&origin).expect("job");
        assert_eq!(job.state, JobState::Error);
        assert_eq!(job.error.as_ref().map(|e| e.code), Some(BitsCode::BG_E_VALIDATION_FAILED));
    }

    #[test]
    fn serve_validated_only_offers_a_file_once_its_owner_validated_it() {
        let mut h = Harness::new();
        let id = queued_job(&mut h);
        let flags = crate::job::peer_caching::CLIENT
            | crate::job::peer_caching::SERVER
            | crate::job::peer_caching::SERVE_VALIDATED_ONLY;
        let changes = PropertyChanges { peer_caching_flags: Some(flags), ..Default::default() };
        h.run(&alice(), None, Command::SetProperties { job: id, changes }).expect("flags");
        half_done(&mut h, id);
        assert!(h.queue.peer_copies(&key(25)).is_empty(), "not while unvalidated");
        report(&mut h, id, EngineReport::Chunks { file: 0, chunks: vec![chunk(2, 5)] })
            .expect("chunk");
        report(&mut h, id, EngineReport::FileTransferred { file: 0, size: 25, headers: vec![] })
            .expect("transferred");
        assert!(h.queue.peer_copies(&key(25)).is_empty(), "not before validation");
        set_valid(&mut h, id, true).expect("validate");
        assert_eq!(h.queue.peer_copies(&key(25)).len(), 1, "offered once validated");
    }

    #[test]
    fn durable_chunks_are_offered_to_peers_until_withdrawn_or_cancelled() {
        let mut h = Harness::new();
        let id = queued_job(&mut h);
        assert!(h.queue.peer_copies(&key(25)).is_empty());
        half_done(&mut h, id);
        let entry = &h.queue.job(&id).expect("job").files[0];
        assert_eq!((entry.progress.bytes_transferred, entry.bytes_from_peers), (20, 10));
        let copies = h.queue.peer_copies(&key(25));
        assert_eq!(copies.len(), 1);
        assert_eq!((copies[0].node, copies[0].job, copies[0].file), (1, id, 0));
        assert!(copies[0].chunk(1).is_some() && copies[0].chunk(2).is_none());
        assert_eq!(h.queue.url_copies(&file(0).remote_url), vec![(1, id, 0)]);
        assert!(h.queue.url_copies("https://x/").is_empty());
        assert!(h.queue.peer_copies(&key(26)).is_empty(), "another size is other content");
        // Only the node withdraws a copy.
        let withdraw = |mismatch| Command::WithdrawPeerCopy { job: id, file: 0, mismatch };
        let judged = Some((1, chunk(1, 10).digest));
        assert_eq!(code(h.run(&alice(), None, withdraw(judged))), BitsCode::E_ACCESSDENIED);
        // A judgement of records the copy no longer has (it started over) changes nothing.
        let stale = Some((1, [9; 32]));
        assert_eq!(h.run(&node(), None, withdraw(stale)), Ok(Reply::Done(BitsCode::S_FALSE)));
        assert_eq!(h.queue.peer_copies(&key(25)).len(), 1);
        h.run(&node(), None, withdraw(judged)).expect("withdrawn");
        assert!(h.queue.peer_copies(&key(25)).is_empty());
        // A restarted file is offered again; a cancelled job is not.
        report(&mut h, id, EngineReport::RestartFile { file: 0 }).expect("restart");
        let remote = RemoteInfo {
            size: Some(25),
            etag: Some("\"v1\"".into()),
            last_modified: None,
            ranges: true,
            sha256: None,
        };
        report(&mut h, id, EngineReport::Probed { file: 0, remote, chunk_size: 10 })
            .expect("probed");
        two_chunks(&mut h, id);
        assert_eq!(h.queue.peer_copies(&key(25)).len(), 1);
        h.act(&alice(), id, JobAction::Cancel).expect("cancel");
        assert!(h.queue.peer_copies(&key(25)).is_empty());
        // The index is derived: an image rebuilds it.
        let other = queued_job(&mut h);
        half_done(&mut h, other);
        let rebuilt = Queue::from_image(h.queue.to_image());
        assert_eq!(rebuilt.peer_copies(&key(25)).len(), 1);
    }

    #[test]
    fn a_declared_digest_is_offered_only_once_the_file_is_transferred() {
        let mut h = Harness::new();
        let id = queued_job(&mut h);
        report(&mut h, id, EngineReport::Activate).expect("activate");
        let sha256 = sha256_of_test();
        let remote = RemoteInfo {
            size: Some(25),
            etag: Some("\"v1\"".into()),
            sha256: Some(sha256.clone()),
            ..RemoteInfo::default()
        };
        report(&mut h, id, EngineReport::Probed { file: 0, remote, chunk_size: 10 })
            .expect("probed");
        let digest = [ContentKey::Digest { size: 25, sha256 }];
        two_chunks(&mut h, id);
        assert!(h.queue.peer_copies(&digest).is_empty(), "not yet checked against the digest");
        assert!(!h.queue.offers_digests());
        assert_eq!(h.queue.peer_copies(&key(25)).len(), 1, "offered under its URL at once");
        report(&mut h, id, EngineReport::Chunks { file: 0, chunks: vec![chunk(2, 5)] })
            .expect("chunks");
        let done = EngineReport::FileTransferred { file: 0, size: 25, headers: vec![] };
        report(&mut h, id, done).expect("transferred");
        let copies = h.queue.peer_copies(&digest);
        assert_eq!((copies.len(), copies[0].chunks.len()), (1, 3), "kept for receivers");
        assert!(h.queue.offers_digests());
        // Asked under both keys of a mirror's probe, the copy is listed once.
        let both = [digest[0].clone(), key(25)[0].clone()];
        assert_eq!(h.queue.peer_copies(&both).len(), 1);
        // Content fetched with custom headers (perhaps a token) is not offered under
        // its digest: knowing a digest must not be enough to get protected bytes.
        let protected = queued_job(&mut h);
        let token = PropertyChanges {
            custom_headers: Some(Some(crate::job::HeaderLines(vec!["X-Token: t0k3n".into()]))),
            ..PropertyChanges::default()
        };
        h.run(&alice(), None, Command::SetProperties { job: protected, changes: token })
            .expect("headers");
        report(&mut h, protected, EngineReport::Activate).expect("activate");
        let remote = RemoteInfo {
            size: Some(25),
            etag: Some("\"v1\"".into()),
            sha256: Some(sha256_of_test()),
            ..RemoteInfo::default()
        };
        report(&mut h, protected, EngineReport::Probed { file: 0, remote, chunk_size: 10 })
            .expect("probed");
        let chunks = vec![chunk(0, 10), chunk(1, 10), chunk(2, 5)];
        report(&mut h, protected, EngineReport::Chunks { file: 0, chunks }).expect("chunks");
        let done = EngineReport::FileTransferred { file: 0, size: 25, headers: vec![] };
        report(&mut h, protected, done).expect("transferred");
        assert_eq!(h.queue.peer_copies(&digest).len(), 1, "the protected copy is offered");
        assert_eq!(h.queue.peer_copies(&key(25)).len(), 2, "under its URL it is");
    }

    fn sha256_of_test() -> String {
        "ab".repeat(32)
    }

    /// A resumed, active job of `files` files.
    fn active_job(h: &mut Harness, files: usize) -> JobId {
        let id = h.created(&alice(), new_job(JobType::Download, files));
        h.run(&alice(), None, Command::Lifecycle { job: id, action: JobAction::Resume })
            .expect("resume");
        report(h, id, EngineReport::Activate).expect("activate");
        id
    }

    /// Transfers file `index` of `id` in `chunks` one-byte chunks with `headers`.
    fn transfer_file(h: &mut Harness, id: JobId, index: u32, chunks: u32, headers: Vec<String>) {
        let size = u64::from(chunks);
        let remote =
            RemoteInfo { size: Some(size), etag: Some("\"v1\"".into()), ..RemoteInfo::default() };
        report(h, id, EngineReport::Probed { file: index, remote, chunk_size: 1 }).expect("probed");
        let records = (0..chunks).map(|i| chunk(i, 1)).collect();
        report(h, id, EngineReport::Chunks { file: index, chunks: records }).expect("chunks");
        report(h, id, EngineReport::FileTransferred { file: index, size, headers })
            .expect("transferred");
    }

    #[test]
    fn a_job_keeps_a_bounded_number_of_chunk_records_for_peers() {
        use crate::peer_cache::MAX_KEPT_CHUNK_RECORDS;
        let per_file = 2_048;
        let files = MAX_KEPT_CHUNK_RECORDS / per_file as usize + 1;
        let mut h = Harness::new();
        let id = active_job(&mut h, files);
        for index in 0..files as u32 {
            transfer_file(&mut h, id, index, per_file, Vec::new());
        }
        let job = h.queue.job(&id).expect("job");
        let kept: Vec<usize> = job.files.iter().map(|f| f.chunks.len()).collect();
        assert_eq!(kept.iter().sum::<usize>(), MAX_KEPT_CHUNK_RECORDS);
        assert_eq!(kept.last(), Some(&0), "the file past the bound is not offered");
        assert!(crate::codec::encode(job).expect("encodes").len() <= 2 * 1024 * 1024);
    }

    #[test]
    fn a_job_keeps_a_bounded_number_of_response_header_bytes() {
        use crate::transfer::{MAX_JOB_RESPONSE_HEADER_BYTES, header_bytes};
        let line = format!("X-Big: {}", "h".repeat(8_000));
        let files = MAX_JOB_RESPONSE_HEADER_BYTES / header_bytes(std::slice::from_ref(&line)) + 2;
        let mut h = Harness::new();
        let id = active_job(&mut h, files);
        for index in 0..files as u32 {
            transfer_file(&mut h, id, index, 1, vec![line.clone()]);
        }
        let job = h.queue.job(&id).expect("job");
        let kept: usize = job.files.iter().map(|f| header_bytes(&f.response_headers)).sum();
        assert!(kept <= MAX_JOB_RESPONSE_HEADER_BYTES && kept > MAX_JOB_RESPONSE_HEADER_BYTES / 2);
        assert_eq!(job.files[0].response_headers, vec![line]);
        assert!(job.files[files - 1].response_headers.is_empty(), "past the job's bound");
    }

    #[test]
    fn a_job_that_does_not_serve_keeps_no_chunk_records_when_done() {
        let mut h = Harness::new();
        let id = queued_job(&mut h);
        let flags = PropertyChanges {
            peer_caching_flags: Some(crate::job::peer_caching::CLIENT),
            ..PropertyChanges::default()
        };
        h.run(&alice(), None, Command::SetProperties { job: id, changes: flags }).expect("set");
        half_done(&mut h, id);
        assert!(h.queue.peer_copies(&key(25)).is_empty());
        report(&mut h, id, EngineReport::Chunks { file: 0, chunks: vec![chunk(2, 5)] })
            .expect("chunks");
        let done = EngineReport::FileTransferred { file: 0, size: 25, headers: vec![] };
        report(&mut h, id, done).expect("transferred");
        assert!(h.queue.job(&id).expect("job").files[0].chunks.is_empty());
    }

    #[test]
    fn a_fleet_creates_and_resumes_one_job_per_node_or_none() {
        let mut h = Harness::new();
        let fleet = JobId(uuid::Uuid::from_u128(900));
        let members: Vec<(JobId, u64)> =
            (1..=3).map(|n| (JobId(uuid::Uuid::from_u128(900 + n as u128)), n)).collect();
        let mut spec = new_job(JobType::Download, 1);
        spec.files[0].local_path = "/srv/out/{node}/f".into();
        let create = |members: Vec<(JobId, u64)>, spec: NewJob| Command::CreateFleet {
            fleet,
            members,
            spec,
            credentials: Vec::new(),
        };
        // Two files, a repeated node, no node: refused before anything is created.
        assert_eq!(
            code(h.run(&alice(), None, create(members.clone(), new_job(JobType::Download, 2)))),
            BitsCode::E_INVALIDARG
        );
        let twice = vec![members[0], (members[1].0, members[0].1)];
        assert_eq!(
            code(h.run(&alice(), None, create(twice, spec.clone()))),
            BitsCode::E_INVALIDARG
        );
        assert_eq!(
            code(h.run(&alice(), None, create(vec![], spec.clone()))),
            BitsCode::E_INVALIDARG
        );
        assert_eq!(h.queue.jobs().count(), 0);
        assert_eq!(
            h.run(&alice(), None, create(members.clone(), spec.clone())),
            Ok(Reply::Created(fleet))
        );
        let jobs = h.queue.fleet_jobs(&fleet);
        let placed: Vec<(u64, u32, u32, JobState)> = jobs
            .iter()
            .map(|j| {
                let tag = j.placement.fleet.expect("member");
                (j.placement.home_node, tag.member, tag.members, j.state)
            })
            .collect();
        assert_eq!(
            placed,
            vec![
                (1, 0, 3, JobState::Queued),
                (2, 1, 3, JobState::Queued),
                (3, 2, 3, JobState::Queued)
            ]
        );
        let paths: Vec<&str> = jobs.iter().map(|j| j.files[0].local_path.as_str()).collect();
        assert_eq!(paths, vec!["/srv/out/1/f", "/srv/out/2/f", "/srv/out/3/f"]);
        // The fleet index is derived: an image rebuilds it.
        let rebuilt = Queue::from_image(h.queue.to_image());
        let ids = |jobs: Vec<&Job>| jobs.iter().map(|j| j.id).collect::<Vec<_>>();
        assert_eq!(ids(rebuilt.fleet_jobs(&fleet)), ids(h.queue.fleet_jobs(&fleet)));
        // The same fleet id again is refused.
        let again: Vec<(JobId, u64)> =
            (1..=3).map(|n| (JobId(uuid::Uuid::from_u128(950 + n as u128)), n)).collect();
        assert_eq!(
            code(h.run(&alice(), None, create(again.clone(), spec.clone()))),
            BitsCode::E_INVALIDARG
        );
        // A retried request (same request id) through another node, which chose other
        // ids, gets the first fleet back; other nodes under that request id are refused.
        let ids = |base: u128, nodes: &[u64]| -> Vec<(JobId, u64)> {
            nodes.iter().map(|n| (JobId(uuid::Uuid::from_u128(base + *n as u128)), *n)).collect()
        };
        let fleet_of = |id: u128, members, spec: &NewJob| Command::CreateFleet {
            fleet: JobId(uuid::Uuid::from_u128(id)),
            members,
            spec: spec.clone(),
            credentials: Vec::new(),
        };
        let first = fleet_of(960, ids(960, &[1, 2, 3]), &spec);
        let created = h.run(&alice(), Some("fleet-1"), first).expect("created");
        assert_eq!(created, Reply::Created(JobId(uuid::Uuid::from_u128(960))));
        let retry = fleet_of(970, ids(970, &[1, 2, 3]), &spec);
        assert_eq!(h.run(&alice(), Some("fleet-1"), retry), Ok(created));
        let fewer = fleet_of(980, ids(980, &[1, 2]), &spec);
        assert_eq!(code(h.run(&alice(), Some("fleet-1"), fewer)), BitsCode::E_INVALIDARG);
        assert_eq!(h.queue.jobs().count(), 6, "one more fleet of 3");
        // Members stay what fleets need: serving each other, one whole file.
        let member = jobs_of_fleet(&h, fleet)[0];
        let no_serving = PropertyChanges {
            peer_caching_flags: Some(crate::job::peer_caching::CLIENT),
            ..PropertyChanges::default()
        };
        let change = Command::SetProperties { job: member, changes: no_serving.clone() };
        assert_eq!(code(h.run(&alice(), None, change)), BitsCode::E_INVALIDARG);
        let more = Command::AddFiles { job: member, files: vec![file(1)] };
        assert_eq!(code(h.run(&alice(), None, more)), BitsCode::E_INVALIDARG);
        let mut dynamic = spec.clone();
        dynamic.properties.dynamic_content = Some(true);
        let refused = fleet_of(1000, ids(1000, &[1, 2]), &dynamic);
        assert_eq!(code(h.run(&alice(), None, refused)), BitsCode::E_INVALIDARG);
        let mut lonely = spec;
        lonely.properties = no_serving;
        let refused = fleet_of(1010, ids(1010, &[1, 2]), &lonely);
        assert_eq!(code(h.run(&alice(), None, refused)), BitsCode::E_INVALIDARG);
        assert_eq!(h.queue.jobs().count(), 6, "refused fleets create nothing");
        // Credentials, one list per member, each job its own (sealed for it).
        use crate::credentials::{AuthScheme, AuthTarget, SealedCredential};
        let sealed = |byte| SealedCredential {
            target: AuthTarget::Server,
            scheme: AuthScheme::Basic,
            user_name: "u".into(),
            sealed: vec![byte; 40],
        };
        let mut with_credentials =
            fleet_of(1020, ids(1020, &[1, 2]), &new_job(JobType::Download, 1));
        if let Command::CreateFleet { credentials, .. } = &mut with_credentials {
            *credentials = vec![vec![sealed(1)]];
        }
        assert_eq!(code(h.run(&alice(), None, with_credentials.clone())), BitsCode::E_INVALIDARG);
        if let Command::CreateFleet { credentials, .. } = &mut with_credentials {
            *credentials = vec![vec![sealed(1)], vec![sealed(2)]];
        }
        h.run(&alice(), None, with_credentials).expect("created");
        let jobs = h.queue.fleet_jobs(&JobId(uuid::Uuid::from_u128(1020)));
        let own: Vec<u8> = jobs.iter().map(|j| j.credentials[0].sealed[0]).collect();
        assert_eq!(own, vec![1, 2]);
    }

    fn jobs_of_fleet(h: &Harness, fleet: JobId) -> Vec<JobId> {
        h.queue.fleet_jobs(&fleet).iter().map(|j| j.id).collect()
    }

    #[test]
    fn a_changed_remote_restarts_the_file() {
        let mut h = Harness::new();
        let id = queued_job(&mut h);
        probed(&mut h, id, 25);
        report(&mut h, id, EngineReport::Chunks { file: 0, chunks: vec![chunk(0, 10)] })
            .expect("chunks");
        let remote = RemoteInfo {
            size: Some(25),
            etag: Some("\"v2\"".into()),
            last_modified: None,
            ranges: true,
            sha256: None,
        };
        report(&mut h, id, EngineReport::Probed { file: 0, remote, chunk_size: 10 })
            .expect("probed");
        let file = &h.queue.job(&id).expect("job").files[0];
        assert!(file.chunks.is_empty() && file.progress.bytes_transferred == 0);
    }

    #[test]
    fn reports_of_a_stopped_run_are_refused() {
        let mut h = Harness::new();
        let id = queued_job(&mut h);
        probed(&mut h, id, 25);
        h.run(&alice(), None, Command::Lifecycle { job: id, action: JobAction::Suspend })
            .expect("suspend");
        let late = h.run(
            &node(),
            None,
            Command::Engine {
                job: id,
                run: 1,
                reports: vec![EngineReport::Chunks { file: 0, chunks: vec![chunk(0, 10)] }],
            },
        );
        assert_eq!(late.map_err(|e| e.code), Err(BitsCode::BG_E_INVALID_STATE));
        h.run(&alice(), None, Command::Lifecycle { job: id, action: JobAction::Resume })
            .expect("resume");
        report(&mut h, id, EngineReport::Activate).expect("activate");
        let old_run = h.run(
            &node(),
            None,
            Command::Engine { job: id, run: 1, reports: vec![EngineReport::Connected] },
        );
        assert_eq!(old_run.map_err(|e| e.code), Err(BitsCode::BG_E_INVALID_STATE));
    }

    #[test]
    fn transient_failures_count_and_start_the_no_progress_period() {
        let mut h = Harness::new();
        let id = queued_job(&mut h);
        probed(&mut h, id, 25);
        let error = JobError {
            context: ErrorContext::GeneralTransport,
            code: BitsCode::BG_E_CONNECTION_CLOSED,
            detail: "cut".into(),
            file_index: Some(0),
            protocol: Some("http".into()),
        };
        report(
            &mut h,
            id,
            EngineReport::Failed { error: error.clone(), severity: Severity::Transient },
        )
        .expect("failed");
        let job = h.queue.job(&id).expect("job").clone();
        assert_eq!((job.state, job.error_count), (JobState::TransientError, 1));
        assert!(
            job.activity.no_progress_since.is_some()
                && job.activity.active_since.is_none()
                && job.activity.active_ms > 0
        );
        report(&mut h, id, EngineReport::RetryDelayElapsed).expect("retry");
        report(&mut h, id, EngineReport::Activate).expect("activate");
        report(&mut h, id, EngineReport::Failed { error, severity: Severity::Fatal })
            .expect("fatal");
        let job = h.queue.job(&id).expect("job");
        assert_eq!((job.state, job.error_count), (JobState::Error, 2));
        // Resume from ERROR clears the no-progress period.
        h.run(&alice(), None, Command::Lifecycle { job: id, action: JobAction::Resume })
            .expect("resume");
        assert!(h.queue.job(&id).expect("job").activity.no_progress_since.is_none());
    }

    #[test]
    fn complete_is_finished_by_the_home_node_once() {
        let mut h = Harness::new();
        let id = queued_job(&mut h);
        h.run(&alice(), None, Command::Lifecycle { job: id, action: JobAction::Cancel })
            .expect("cancel");
        report(&mut h, id, EngineReport::FilesFinished { completed: vec![] }).expect("finished");
        assert!(h.queue.job(&id).expect("job").activity.files_finished);
        let again = report(&mut h, id, EngineReport::FilesFinished { completed: vec![] });
        assert_eq!(again.map_err(|e| e.code), Err(BitsCode::BG_E_INVALID_STATE));
    }

    mod events {
        use super::*;
        use crate::event::EventKind;
        use crate::job::{NotifyCmdLine, notify};

        fn kinds(h: &mut Harness) -> Vec<(EventKind, Option<u32>)> {
            h.queue.take_events().iter().map(|e| (e.kind, e.file_index)).collect()
        }

        fn set_flags(h: &mut Harness, id: JobId, flags: u32, interval_ms: u32) {
            let changes = PropertyChanges {
                notify_flags: Some(flags),
                minimum_notification_interval_ms: Some(interval_ms),
                ..Default::default()
            };
            h.run(&alice(), None, Command::SetProperties { job: id, changes }).expect("flags");
        }

        /// Runs a job to TRANSFERRED; the events of every step, in order.
        fn transfer(h: &mut Harness, id: JobId) -> Vec<(EventKind, Option<u32>)> {
            h.run(&alice(), None, Command::Lifecycle { job: id, action: JobAction::Resume })
                .expect("resume");
            probed(h, id, 20);
            let chunks = vec![chunk(0, 10), chunk(1, 10)];
            report(h, id, EngineReport::Chunks { file: 0, chunks }).expect("chunks");
            report(h, id, EngineReport::FileTransferred { file: 0, size: 20, headers: vec![] })
                .expect("transferred");
            kinds(h)
        }

        #[test]
        fn default_flags_publish_creation_and_the_outcome_only() {
            let mut h = Harness::new();
            let id = h.created(&alice(), new_job(JobType::Download, 1));
            assert_eq!(kinds(&mut h), vec![(EventKind::JobCreated, None)]);
            assert_eq!(transfer(&mut h, id), vec![(EventKind::JobTransferred, None)]);
            h.act(&alice(), id, JobAction::Complete).expect("complete");
            assert_eq!(kinds(&mut h), vec![(EventKind::JobAcknowledged, None)]);
            let event = h.queue.take_events();
            assert!(event.is_empty());
        }

        #[test]
        fn all_flags_publish_files_then_the_job_and_disable_silences_everything() {
            let mut h = Harness::new();
            let id = h.created(&alice(), new_job(JobType::Download, 1));
            set_flags(&mut h, id, notify::VALID & !notify::DISABLE, 0);
            h.queue.take_events();
            let seen = transfer(&mut h, id);
            assert_eq!(seen.first(), Some(&(EventKind::JobModification, None)), "{seen:?}");
            assert_eq!(
                &seen[seen.len() - 2..],
                [(EventKind::FileTransferred, Some(0)), (EventKind::JobTransferred, None)],
                "no modification for the entry into TRANSFERRED: {seen:?}"
            );

            let quiet = h.created(&alice(), new_job(JobType::Download, 1));
            set_flags(&mut h, quiet, notify::VALID, 0);
            h.queue.take_events();
            assert_eq!(transfer(&mut h, quiet), vec![]);
            h.act(&alice(), quiet, JobAction::Cancel).expect("cancel");
            assert_eq!(kinds(&mut h), vec![]);
        }

        #[test]
        fn modifications_are_coalesced_by_the_minimum_interval() {
            let mut h = Harness::new();
            let id = queued_job(&mut h);
            set_flags(&mut h, id, notify::DEFAULT | notify::JOB_MODIFICATION, 500);
            probed(&mut h, id, 100_000);
            h.queue.take_events();
            // 1,000 progress steps 2 ms apart (batch time) over 2 s.
            for step in 0..1_000u32 {
                h.time -= 8; // `run` adds 10 ms: 2 ms steps
                report(&mut h, id, EngineReport::Chunks { file: 0, chunks: vec![chunk(step, 10)] })
                    .expect("chunks");
            }
            let modifications =
                kinds(&mut h).into_iter().filter(|(k, _)| *k == EventKind::JobModification).count();
            assert!((4..=5).contains(&modifications), "{modifications} modification events");
        }

        #[test]
        fn an_entry_into_transferred_owes_one_notify_run_and_failures_retry() {
            let mut h = Harness::new();
            let id = h.created(&alice(), new_job(JobType::Download, 1));
            let cmd = NotifyCmdLine { program: "/bin/true".into(), args: vec![] };
            let changes = PropertyChanges { notify_cmdline: Some(Some(cmd)), ..Default::default() };
            h.run(&alice(), None, Command::SetProperties { job: id, changes }).expect("cmd");
            assert_eq!(h.queue.job(&id).expect("job").notify.run, None);
            transfer(&mut h, id);
            let owed = h.queue.job(&id).expect("job").notify.run.expect("owed");
            assert_eq!((owed.entry, owed.attempt), (1, 0));

            let ran = |h: &mut Harness, attempt, success| {
                let reports = vec![EngineReport::NotifyRan { entry: 1, attempt, success }];
                h.run(&node(), None, Command::Engine { job: id, run: 0, reports })
            };
            ran(&mut h, 0, false).expect("failed run recorded");
            let again = h.queue.job(&id).expect("job").notify.run.expect("retry owed");
            assert_eq!(again.attempt, 1);
            assert!(again.not_before > Timestamp(h.time));
            assert_eq!(code_of(ran(&mut h, 0, true)), BitsCode::BG_E_INVALID_STATE, "stale");
            ran(&mut h, 1, true).expect("success recorded");
            assert_eq!(h.queue.job(&id).expect("job").notify.run, None);
            assert_eq!(code_of(ran(&mut h, 1, true)), BitsCode::BG_E_INVALID_STATE, "once");
            assert!(h.queue.take_events().iter().all(|e| e.kind != EventKind::JobModification));
        }

        #[test]
        fn take_ownership_drops_the_command_line_and_the_run_it_is_owed() {
            let mut h = Harness::new();
            let id = h.created(&alice(), new_job(JobType::Download, 1));
            let cmd = NotifyCmdLine { program: "/bin/true".into(), args: vec![] };
            let changes = PropertyChanges { notify_cmdline: Some(Some(cmd)), ..Default::default() };
            h.run(&alice(), None, Command::SetProperties { job: id, changes }).expect("cmd");
            transfer(&mut h, id);
            assert!(h.queue.job(&id).expect("job").notify.run.is_some(), "owed");

            h.act(&admin(), id, JobAction::TakeOwnership).expect("take ownership");
            let job = h.queue.job(&id).expect("job");
            assert_eq!((job.props.notify_cmdline.as_ref(), job.notify.run), (None, None));
            // The home node's report of a run started before is refused as not owed.
            let reports = vec![EngineReport::NotifyRan { entry: 1, attempt: 0, success: true }];
            let late = h.run(&node(), None, Command::Engine { job: id, run: 0, reports });
            assert_eq!(code_of(late), BitsCode::BG_E_INVALID_STATE);
        }
    }
}

#[test]
fn node_ids_are_handed_out_once_by_the_nodes_only() {
    let mut h = Harness::new();
    let system = Caller { principal: Principal::system(), role: Role::Admin };
    let allocate = |h: &mut Harness, who: &Caller, at_least| {
        h.run(who, None, Command::AllocateNodeId { at_least })
    };
    assert_eq!(
        allocate(&mut h, &system, 0),
        Ok(Reply::NodeId(2)),
        "never the founder's id, even from a node that knows no member yet"
    );
    assert_eq!(allocate(&mut h, &system, 3), Ok(Reply::NodeId(4)));
    assert_eq!(allocate(&mut h, &system, 3), Ok(Reply::NodeId(5)), "never twice");
    assert_eq!(allocate(&mut h, &system, 9), Ok(Reply::NodeId(10)));
    assert_eq!(code(allocate(&mut h, &admin(), 0)), BitsCode::E_ACCESSDENIED);
    assert_eq!(h.queue.meta().last_node_id, 10);
}

mod uploads {
    use super::*;
    use crate::queue::{FragmentAck, MAX_SESSIONS_PER_USER, SESSION_TIMEOUT, UploadCommand};

    fn create(h: &mut Harness, who: &Caller, session: &str) -> CommandResult {
        let command = UploadCommand::Create { session: session.into(), path: "in/a.bin".into() };
        h.run(who, None, Command::Upload(command))
    }

    fn fragment(h: &mut Harness, who: &Caller, start: u64, end: u64, node: u64) -> CommandResult {
        // The node writes at the next byte it saw expected.
        let next = h.queue.upload_session(who, "{s1}").map_or(0, |s| s.next);
        let command = UploadCommand::Fragment {
            session: "{s1}".into(),
            start,
            end,
            total: 300,
            node,
            offset: next.max(start),
            max_size: 1_000,
        };
        h.run(who, None, Command::Upload(command))
    }

    fn ack(next: u64, complete: bool) -> CommandResult {
        Ok(Reply::Fragment(FragmentAck { next, complete }))
    }

    /// Found by the `upload` fuzz target: a fragment ending at byte `u64::MAX` overflowed
    /// computing its length (a panic in apply with overflow checks on).
    #[test]
    fn fragments_with_extreme_bounds_are_refused_not_overflowed() {
        let mut h = Harness::new();
        create(&mut h, &alice(), "{s1}").expect("create");
        for (start, end, total) in
            [(0, u64::MAX, u64::MAX), (u64::MAX, u64::MAX, u64::MAX), (5, 4, 10), (0, 10, 10)]
        {
            let command = UploadCommand::Fragment {
                session: "{s1}".into(),
                start,
                end,
                total,
                node: 1,
                offset: 0,
                max_size: u64::MAX,
            };
            assert_eq!(
                code(h.run(&alice(), None, Command::Upload(command))),
                BitsCode::E_INVALIDARG,
                "{start}-{end}/{total}"
            );
        }
        let s = h.queue.upload_session(&alice(), "{s1}").expect("session");
        assert_eq!((s.next, s.total, s.pieces.len()), (0, None, 0));
    }

    #[test]
    fn a_session_takes_fragments_by_the_protocol_rules_on_any_node() {
        let mut h = Harness::new();
        create(&mut h, &alice(), "{s1}").expect("create");
        assert_eq!(fragment(&mut h, &alice(), 0, 100, 1), ack(101, false));
        // Overlap: only 101-150 is new; sent to another node (server farm).
        assert_eq!(fragment(&mut h, &alice(), 50, 150, 2), ack(151, false));
        // A gap is refused and changes nothing.
        assert_eq!(code(fragment(&mut h, &alice(), 200, 299, 3)), BitsCode::BG_E_INVALID_RANGE);
        // A fragment planned before another moved the session on is not recorded.
        let stale = UploadCommand::Fragment {
            session: "{s1}".into(),
            start: 100,
            end: 250,
            total: 300,
            node: 2,
            offset: 101,
            max_size: 1_000,
        };
        assert_eq!(
            code(h.run(&alice(), None, Command::Upload(stale))),
            BitsCode::BG_E_INVALID_RANGE
        );
        // Another user cannot see the session.
        assert_eq!(code(fragment(&mut h, &bob(), 151, 299, 3)), BitsCode::BG_E_SESSION_NOT_FOUND);
        assert_eq!(fragment(&mut h, &alice(), 151, 299, 3), ack(300, true));
        let session = h.queue.upload_session(&alice(), "{s1}").expect("session");
        let pieces: Vec<(u64, u64, u64)> =
            session.pieces.iter().map(|p| (p.offset, p.len, p.node)).collect();
        assert_eq!(pieces, [(0, 101, 1), (101, 50, 2), (151, 149, 3)]);
        assert!(session.complete());
        // A resent final fragment gets the same answer and records nothing new.
        assert_eq!(fragment(&mut h, &alice(), 151, 299, 1), ack(300, true));
        assert_eq!(h.queue.upload_session(&alice(), "{s1}").expect("s").pieces.len(), 3);

        // Another total, or too large, is refused.
        let other = UploadCommand::Fragment {
            session: "{s1}".into(),
            start: 0,
            end: 9,
            total: 301,
            node: 1,
            offset: 0,
            max_size: 1_000,
        };
        assert_eq!(code(h.run(&alice(), None, Command::Upload(other))), BitsCode::E_INVALIDARG);
        create(&mut h, &alice(), "{s2}").expect("create");
        let big = UploadCommand::Fragment {
            session: "{s2}".into(),
            start: 0,
            end: 9,
            total: 5_000,
            node: 1,
            offset: 0,
            max_size: 1_000,
        };
        assert_eq!(code(h.run(&alice(), None, Command::Upload(big))), BitsCode::BG_E_TOO_LARGE);

        // End removes it; a second End finds nothing.
        let end = || Command::Upload(UploadCommand::End { session: "{s1}".into() });
        assert_eq!(code(h.run(&bob(), None, end())), BitsCode::BG_E_SESSION_NOT_FOUND);
        h.run(&alice(), None, end()).expect("end");
        assert_eq!(code(h.run(&alice(), None, end())), BitsCode::BG_E_SESSION_NOT_FOUND);
        assert!(h.queue.take_changes().uploads.contains("{s1}"));
    }

    #[test]
    fn sessions_are_capped_per_user_checked_and_expire() {
        let mut h = Harness::new();
        for n in 0..MAX_SESSIONS_PER_USER {
            create(&mut h, &alice(), &format!("{{a{n}}}")).expect("create");
        }
        assert_eq!(
            code(create(&mut h, &alice(), "{one-more}")),
            BitsCode::BG_E_TOO_MANY_JOBS_PER_USER
        );
        create(&mut h, &bob(), "{b}").expect("bob has his own quota");
        assert_eq!(code(create(&mut h, &bob(), "{b}")), BitsCode::E_INVALIDARG, "ids are unique");
        for bad in ["", "/abs", "a/../b", "a//b", "a/", "a\\b"] {
            let command = UploadCommand::Create { session: "{x}".into(), path: bad.into() };
            assert_eq!(
                code(h.run(&bob(), None, Command::Upload(command))),
                BitsCode::E_INVALIDARG,
                "{bad}"
            );
        }
        let image = h.queue.to_image();
        assert_eq!(Queue::from_image(image).upload_sessions().count(), MAX_SESSIONS_PER_USER + 1);
        // Two weeks without progress: gone.
        h.time += SESSION_TIMEOUT.as_millis() as u64 + 1_000;
        h.run(
            &bob(),
            None,
            Command::Lifecycle { job: JobId(uuid::Uuid::nil()), action: JobAction::Cancel },
        )
        .ok();
        assert_eq!(h.queue.upload_sessions().count(), 0);
    }
}
