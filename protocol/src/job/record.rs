//! The replicated record of one job: the BITS job, where it runs, the scheduler's and
//! notify runner's bookkeeping, and an upload's session. Only the state machine in this
//! crate changes it; other crates read it through the accessors.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{
    JobError, JobProgress, JobProperties, JobState, JobTimes, JobType, Priority, ReplyProgress,
};
use crate::command::NewJob;
use crate::credentials::SealedCredential;
use crate::file::JobFile;
use crate::ids::{JobId, NodeId, Principal};
use crate::peer_cache::FleetMember;
use crate::time::Timestamp;

/// A job as the replicated queue holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Identity.
    pub(crate) id: JobId,
    /// The principal that owns the job.
    pub(crate) owner: Principal,
    /// Download, upload or upload-reply.
    pub(crate) job_type: JobType,
    /// One of the nine BITS states.
    pub(crate) state: JobState,
    /// Settable properties.
    pub(crate) props: JobProperties,
    /// Files in order; transferred one after another.
    pub(crate) files: Vec<Arc<JobFile>>,
    /// Creation, modification and completion times.
    pub(crate) times: JobTimes,
    /// The last error; kept while the job is in ERROR or TRANSIENT_ERROR.
    pub(crate) error: Option<JobError>,
    /// Number of errors so far (`GetErrorCount`).
    pub(crate) error_count: u32,
    /// True once the job has been resumed: some properties are read-only afterwards.
    pub(crate) ever_resumed: bool,
    /// Server and proxy credentials, passwords sealed.
    pub(crate) credentials: Vec<SealedCredential>,
    /// Upload jobs: the BITS upload session with the server and the reply.
    pub(crate) upload: UploadState,
    /// Which node runs the job, and its place in a fleet.
    pub(crate) placement: Placement,
    /// The scheduler's bookkeeping of the job's activations.
    pub(crate) activity: Activity,
    /// The notify runner's bookkeeping: coalesced events and owed command-line runs.
    pub(crate) notify: NotifyBook,
}

/// Where a job runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The node whose disk holds the job's local files.
    pub home_node: NodeId,
    /// The job's place in a fleet (`ferry fleet distribute`), if it belongs to one.
    pub fleet: Option<FleetMember>,
}

/// A job's activations, as the scheduler and the transfer engine see them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activity {
    /// Transfer runs so far: each activation starts a new one, and engine reports name
    /// the run they belong to, so a report from a stopped run is recognised and dropped.
    pub run: u64,
    /// When the job entered its current state (the retry delay counts from here).
    pub state_since: Timestamp,
    /// Start of the no-progress period: the first transient error since the last
    /// progress. `None` while the job makes progress.
    pub no_progress_since: Option<Timestamp>,
    /// Milliseconds spent in CONNECTING or TRANSFERRING before the current activation
    /// (for the maximum download time).
    pub active_ms: u64,
    /// Start of the current activation, while the job is active.
    pub active_since: Option<Timestamp>,
    /// The last activation's time: equal-priority jobs take turns oldest first.
    pub last_activated: Option<Timestamp>,
    /// After Complete or Cancel: the home node has renamed or deleted the files.
    pub files_finished: bool,
}

/// What the notify runner owes a job.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyBook {
    /// When the last `JobModification` event was published (they are coalesced by the
    /// minimum notification interval).
    pub modification_notified: Option<Timestamp>,
    /// How many times the job entered TRANSFERRED or ERROR with a notify command line
    /// (numbers the runs, so each entry runs the program once).
    pub entries: u64,
    /// The notify command line run owed to the job's home node, if any.
    pub run: Option<NotifyRun>,
}

/// An upload job's side of its BITS upload session, recorded through Raft by the home
/// node's upload client, so that a restarted run continues the same session from what
/// the server acknowledged. The acknowledged bytes are the file's progress.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadState {
    /// `BITS-Session-Id` of the open session.
    pub session: Option<String>,
    /// `BITS-Host-Id`: the host every later packet of the session goes to.
    pub host_id: Option<String>,
    /// `BITS-Host-Id-Fallback-Timeout`, seconds: how long the host id is tried after
    /// its first connection failure before the original host (`None`: for ever).
    pub host_fallback_secs: Option<u64>,
    /// Size and modification time of the local file when the session began.
    pub local: Option<LocalStamp>,
    /// `BITS-Reply-URL` from the final Ack (upload-reply jobs).
    pub reply_url: Option<String>,
    /// `BG_JOB_REPLY_PROGRESS`.
    pub reply: ReplyProgress,
    /// Every byte of the reply is durable in its temporary file.
    pub reply_done: bool,
}

/// What identifies the version of an upload's local file: a change during the upload is
/// `BG_E_LOCAL_FILE_CHANGED`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalStamp {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub modified_ns: u64,
}

/// A run of the notify command line that the job's home node owes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyRun {
    /// Which entry into TRANSFERRED or ERROR (see [`NotifyBook::entries`]).
    pub entry: u64,
    /// Attempts so far (a non-zero exit is retried after the retry delay, as BITS does).
    pub attempt: u32,
    /// Not before this time.
    pub not_before: Timestamp,
}

impl Job {
    /// A new job in SUSPENDED with no files, created `now`; its properties are the
    /// defaults (the caller applies the requested ones, which need checks).
    pub(crate) fn new(
        id: JobId,
        owner: Principal,
        spec: &NewJob,
        placement: Placement,
        now: Timestamp,
    ) -> Self {
        Self {
            id,
            owner,
            job_type: spec.job_type,
            state: JobState::Suspended,
            props: JobProperties::new(spec.display_name.clone(), Priority::default()),
            files: Vec::new(),
            times: JobTimes { created: now, modified: now, transfer_completed: None },
            error: None,
            error_count: 0,
            ever_resumed: false,
            credentials: Vec::new(),
            upload: UploadState::default(),
            placement,
            activity: Activity {
                run: 0,
                state_since: now,
                no_progress_since: None,
                active_ms: 0,
                active_since: None,
                last_activated: None,
                files_finished: false,
            },
            notify: NotifyBook::default(),
        }
    }

    /// Identity.
    pub fn id(&self) -> JobId {
        self.id
    }

    /// The principal that owns the job.
    pub fn owner(&self) -> &Principal {
        &self.owner
    }

    /// Download, upload or upload-reply.
    pub fn job_type(&self) -> JobType {
        self.job_type
    }

    /// One of the nine BITS states.
    pub fn state(&self) -> JobState {
        self.state
    }

    /// Settable properties.
    pub fn props(&self) -> &JobProperties {
        &self.props
    }

    /// Files in order.
    pub fn files(&self) -> &[Arc<JobFile>] {
        &self.files
    }

    /// Creation, modification and completion times.
    pub fn times(&self) -> &JobTimes {
        &self.times
    }

    /// The last error, while the job is in ERROR or TRANSIENT_ERROR.
    pub fn error(&self) -> Option<&JobError> {
        self.error.as_ref()
    }

    /// Number of errors so far (`GetErrorCount`).
    pub fn error_count(&self) -> u32 {
        self.error_count
    }

    /// Server and proxy credentials, passwords sealed.
    pub fn credentials(&self) -> &[SealedCredential] {
        &self.credentials
    }

    /// Upload jobs: the BITS upload session and the reply.
    pub fn upload(&self) -> &UploadState {
        &self.upload
    }

    /// The node whose disk holds the job's local files.
    pub fn home_node(&self) -> NodeId {
        self.placement.home_node
    }

    /// The job's place in a fleet, if it belongs to one.
    pub fn fleet(&self) -> Option<FleetMember> {
        self.placement.fleet
    }

    /// The current transfer run (see [`Activity::run`]).
    pub fn run(&self) -> u64 {
        self.activity.run
    }

    /// The scheduler's bookkeeping of the job's activations.
    pub fn activity(&self) -> &Activity {
        &self.activity
    }

    /// The notify command line run owed to the home node, if any.
    pub fn notify_run(&self) -> Option<NotifyRun> {
        self.notify.run
    }

    /// `BG_JOB_PROGRESS` computed from the files.
    pub fn progress(&self) -> JobProgress {
        let mut bytes_total = Some(0u64);
        let mut bytes_transferred = 0u64;
        let mut files_transferred = 0u32;
        for file in &self.files {
            bytes_total = match (bytes_total, file.progress.bytes_total) {
                (Some(sum), Some(size)) => Some(sum.saturating_add(size)),
                _ => None,
            };
            bytes_transferred = bytes_transferred.saturating_add(file.progress.bytes_transferred);
            if file.transferred {
                files_transferred += 1;
            }
        }
        JobProgress {
            bytes_total,
            bytes_transferred,
            files_total: u32::try_from(self.files.len()).unwrap_or(u32::MAX),
            files_transferred,
        }
    }

    /// Where an upload-reply job's reply goes: the reply file name if set, else beside
    /// the uploaded file, `<name>.<job id>.reply` (BITS, too, picks a name itself).
    pub fn reply_path(&self) -> Option<String> {
        if self.job_type != JobType::UploadReply {
            return None;
        }
        if let Some(name) = &self.props.reply_file_name {
            return Some(name.clone());
        }
        let file = self.files.first()?;
        Some(format!("{}.{}.reply", file.local_path, self.id.0.simple()))
    }

    /// The hidden file that receives the reply until Complete.
    pub fn reply_temporary(&self) -> Option<String> {
        self.reply_path().map(|path| crate::file::temporary_name(&path, self.id, 1))
    }

    /// Number of files not yet completely transferred.
    pub fn pending_files(&self) -> usize {
        self.files.iter().filter(|f| !f.transferred).count()
    }

    /// Active time in milliseconds up to `now`, the current activation included.
    pub fn active_ms_at(&self, now: Timestamp) -> u64 {
        let current = self
            .activity
            .active_since
            .map_or(0, |since| u64::try_from(now.since(since).as_millis()).unwrap_or(u64::MAX));
        self.activity.active_ms.saturating_add(current)
    }
}
