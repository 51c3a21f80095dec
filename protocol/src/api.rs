//! The JSON types of the HTTP API (`/v1/...`), shared by the server and the typed client.
//!
//! Responses are views built from the replicated model: they never carry secrets
//! (write-only custom headers are redacted) and add the texts a human needs (state and
//! code names, error descriptions).

use serde::{Deserialize, Serialize};
#[cfg(feature = "openapi")]
use utoipa::ToSchema;

use crate::codes::{BitsCode, ErrorContext};
pub use crate::command::FileChanges;
use crate::command::JobAction;
use crate::credentials::CredentialInfo;
use crate::file::{FileProgress, FileRange, JobFile, NewFile};
use crate::ids::{JobId, NodeId, Principal};
use crate::job::{
    Job, JobError, JobProgress, JobProperties, JobState, JobTimes, JobType, Priority, ReplyProgress,
};
use crate::limits::QueuePolicy;
use crate::peer_cache::FleetMember;
use crate::transfer::RemoteInfo;

/// A job as the API shows it (`GET /v1/jobs/{id}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct JobInfo {
    /// Job id.
    pub id: JobId,
    /// Display name.
    pub display_name: String,
    /// Download, upload or upload-reply.
    #[serde(rename = "type")]
    pub job_type: JobType,
    /// Priority.
    pub priority: Priority,
    /// State.
    pub state: JobState,
    /// Owner principal.
    pub owner: Principal,
    /// Bytes and files so far.
    pub progress: JobProgress,
    /// Creation, modification, completion.
    pub times: JobTimes,
    /// Number of errors so far.
    pub error_count: u32,
    /// The error, while the job is in ERROR or TRANSIENT_ERROR.
    pub error: Option<ErrorInfo>,
    /// The node that holds the job's files.
    pub home_node: NodeId,
    /// Every property (write-only custom headers are redacted).
    pub properties: JobProperties,
    /// Credentials set (targets and schemes only; never names or passwords).
    pub credentials: Vec<CredentialInfo>,
    /// Upload-reply jobs: the reply file and `GetReplyProgress`.
    pub reply: Option<ReplyInfo>,
    /// The job's place in a fleet (`ferry fleet distribute`), if any.
    pub fleet: Option<FleetMember>,
}

/// The reply of an upload-reply job (`GetReplyFileName`, `GetReplyProgress`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ReplyInfo {
    /// Where the reply is (readable there after Complete).
    pub file_name: String,
    /// Bytes of the reply so far; the total is `null` until the server named the reply.
    pub progress: ReplyProgress,
}

/// One job in an `event: progress` of `GET /v1/events?progress=`: its state and bytes
/// so far (received bytes not yet durable included).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobProgressReport {
    /// The job.
    pub job: JobId,
    /// Its state.
    pub state: JobState,
    /// Bytes so far.
    pub bytes_transferred: u64,
    /// Total bytes, once known.
    pub bytes_total: Option<u64>,
}

/// The `data` of an `event: progress`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressReports {
    /// The named jobs the caller may see.
    pub jobs: Vec<JobProgressReport>,
}

impl From<&JobInfo> for JobProgressReport {
    fn from(info: &JobInfo) -> Self {
        Self {
            job: info.id,
            state: info.state,
            bytes_transferred: info.progress.bytes_transferred,
            bytes_total: info.progress.bytes_total,
        }
    }
}

/// What a view needs to show a running job's live progress: its home node and each
/// file's durable progress ([`Liveness::of`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Liveness {
    /// The job.
    pub job: JobId,
    /// Its home node, which knows the bytes received so far.
    pub home_node: NodeId,
    /// Each file's durable progress, in order.
    pub files: Vec<FileProgress>,
}

impl Liveness {
    /// For a job whose home node is receiving bytes (CONNECTING or TRANSFERRING).
    pub fn of(job: &Job) -> Option<Self> {
        if !matches!(job.state, JobState::Connecting | JobState::Transferring) {
            return None;
        }
        let files = job.files.iter().map(|f| f.progress).collect();
        Some(Self { job: job.id, home_node: job.placement.home_node, files })
    }

    /// File `index`'s progress with `received` bytes so far: never less than the
    /// durable bytes, never more than the size.
    pub fn file_progress(&self, index: u32, received: u64) -> Option<FileProgress> {
        let mut progress = *self.files.get(index as usize)?;
        let received = progress.bytes_total.map_or(received, |total| received.min(total));
        progress.bytes_transferred = progress.bytes_transferred.max(received);
        Some(progress)
    }

    /// The job's bytes so far with `live` (received bytes by file index).
    pub fn bytes_transferred(&self, live: &crate::peer::LiveFiles) -> u64 {
        let mut total = 0u64;
        for (index, durable) in self.files.iter().enumerate() {
            let received = live.files.iter().find(|(i, _)| *i as usize == index).map(|f| f.1);
            let bytes = received
                .and_then(|r| self.file_progress(index as u32, r))
                .map_or(durable.bytes_transferred, |p| p.bytes_transferred);
            total = total.saturating_add(bytes);
        }
        total
    }
}

impl From<&Job> for JobInfo {
    fn from(job: &Job) -> Self {
        let mut properties = job.props.clone();
        if properties.custom_headers_write_only {
            properties.custom_headers.clear();
        }
        Self {
            id: job.id,
            display_name: job.props.display_name.clone(),
            job_type: job.job_type,
            priority: job.props.priority,
            state: job.state,
            owner: job.owner.clone(),
            progress: job.progress(),
            times: job.times,
            error_count: job.error_count,
            error: job.error.as_ref().map(ErrorInfo::from),
            home_node: job.placement.home_node,
            properties,
            credentials: job
                .credentials
                .iter()
                .map(|c| CredentialInfo { target: c.target, scheme: c.scheme })
                .collect(),
            reply: job
                .reply_path()
                .map(|file_name| ReplyInfo { file_name, progress: job.upload.reply }),
            fleet: job.placement.fleet,
        }
    }
}

/// `GET /v1/jobs` answer: a page of jobs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct JobList {
    /// The jobs, in id order.
    pub jobs: Vec<JobInfo>,
    /// More jobs match: send this as `cursor` (with the same filters) for the next
    /// page. Absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(format = Uuid))]
    pub next_cursor: Option<String>,
}

/// A file as the API shows it (`GET /v1/jobs/{id}/files`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct FileInfo {
    /// Position in the job.
    pub index: u32,
    /// Remote URL.
    pub remote_url: String,
    /// Local path on the home node.
    pub local_path: String,
    /// Requested ranges (empty: whole file).
    pub ranges: Vec<FileRange>,
    /// Hidden temporary file that receives the bytes.
    pub temporary_name: String,
    /// Bytes so far and availability.
    pub progress: FileProgress,
    /// All bytes transferred.
    pub transferred: bool,
    /// Validation state.
    pub validated: bool,
    /// What the server said about the remote file (size, ETag, Last-Modified, ranges).
    pub remote: Option<RemoteInfo>,
    /// Headers of the last response for this file (`Name: value` lines).
    pub response_headers: Vec<String>,
    /// Where the bytes so far came from (`GetPeerDownloadStats`).
    pub peer_stats: PeerStats,
    /// `IsDownloadedFromPeer`: some of the file's bytes came from peers' copies.
    pub downloaded_from_peer: bool,
    /// The SHA-256 the owner gave for the file (checked before it counts as
    /// transferred), if any.
    #[serde(default, with = "crate::codec::since_11")]
    pub expected_sha256: Option<String>,
}

/// `IBackgroundCopyFile4::GetPeerDownloadStats`: bytes from the origin (the job's home
/// node or its helpers) and from peers' copies (the peer cache).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct PeerStats {
    /// Bytes fetched from the origin server.
    pub from_origin: u64,
    /// Bytes taken from peers' copies.
    pub from_peers: u64,
}

impl FileInfo {
    /// The view of file `index`.
    pub fn new(index: usize, file: &JobFile) -> Self {
        Self {
            index: u32::try_from(index).unwrap_or(u32::MAX),
            // A password stored before URLs with userinfo were refused is not shown.
            remote_url: crate::validate::without_password(&file.remote_url),
            local_path: file.local_path.clone(),
            ranges: file.ranges.clone(),
            temporary_name: file.temporary_name.clone(),
            progress: file.progress,
            transferred: file.transferred,
            validated: file.validated,
            remote: file.remote.clone(),
            response_headers: file.response_headers.clone(),
            peer_stats: PeerStats {
                from_origin: file.progress.bytes_transferred.saturating_sub(file.bytes_from_peers),
                from_peers: file.bytes_from_peers,
            },
            downloaded_from_peer: file.bytes_from_peers > 0,
            expected_sha256: file.expected_sha256.clone(),
        }
    }
}

/// `GET /v1/jobs/{id}/files` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct FileList {
    /// Files in job order.
    pub files: Vec<FileInfo>,
}

/// `POST /v1/jobs/{id}/files` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AddFiles {
    /// Files to append, in order.
    #[cfg_attr(feature = "openapi", schema(min_items = 1, max_items = 10_000))]
    pub files: Vec<NewFile>,
}

/// The answer to a lifecycle call (`POST /v1/jobs/{id}/{action}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ActionResult {
    /// What was done.
    pub action: JobAction,
    /// Success code: `S_OK`, or e.g. `BG_S_PARTIAL_COMPLETE`.
    pub code: BitsCode,
    /// The code's name.
    pub code_name: String,
    /// The job after the call.
    pub job: JobInfo,
}

/// The answer to `POST /v1/jobs/{id}/replace-remote-prefix`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct PrefixReplaced {
    /// `S_OK` when some file changed, `S_FALSE` when none matched.
    pub code: BitsCode,
    /// The code's name.
    pub code_name: String,
    /// The job after the call.
    pub job: JobInfo,
}

/// A job's error as `IBackgroundCopyError` describes it (`GET /v1/jobs/{id}/error`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ErrorInfo {
    /// Where it happened.
    pub context: ErrorContext,
    /// `GetErrorContextDescription`.
    pub context_description: String,
    /// The BITS code.
    pub code: BitsCode,
    /// The code's symbolic name.
    pub name: String,
    /// `GetErrorDescription`.
    pub description: String,
    /// What Ferry observed.
    pub detail: String,
    /// The file concerned, if any.
    pub file_index: Option<u32>,
    /// The protocol in use, if any.
    pub protocol: Option<String>,
}

impl From<&JobError> for ErrorInfo {
    fn from(e: &JobError) -> Self {
        Self {
            context: e.context,
            context_description: e.context.description().into_owned(),
            code: e.code,
            name: e.code.name().unwrap_or_default().into_owned(),
            description: e.code.description().unwrap_or_default().into_owned(),
            detail: e.detail.clone(),
            file_index: e.file_index,
            protocol: e.protocol.clone(),
        }
    }
}

/// `GET /v1/errors/{code}` answer (`GetErrorDescription`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ErrorDescription {
    /// The code.
    pub code: BitsCode,
    /// Its symbolic name.
    pub name: String,
    /// Its English description.
    pub description: String,
}

impl ErrorDescription {
    /// The description of `code`, if it is known.
    pub fn of(code: BitsCode) -> Option<Self> {
        Some(Self {
            code,
            name: code.name()?.into_owned(),
            description: code.description()?.into_owned(),
        })
    }
}

/// An RFC 9457 problem (`application/problem+json`) carrying the BITS code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Problem {
    /// `urn:ferry:error:<NAME>`.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// Short summary: the code's name.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// What went wrong and what to do.
    pub detail: String,
    /// The BITS code.
    pub code: BitsCode,
    /// The BITS description of the code.
    pub description: String,
}

impl Problem {
    /// A problem for `code` with HTTP `status` and `detail`.
    pub fn new(status: u16, code: BitsCode, detail: impl Into<String>) -> Self {
        let name = code.name().map(|n| n.into_owned()).unwrap_or_else(|| code.to_string());
        Self {
            problem_type: format!("urn:ferry:error:{name}"),
            title: name,
            status,
            detail: detail.into(),
            code,
            description: code.description().unwrap_or_default().into_owned(),
        }
    }
}

/// A member of the cluster as `GET /v1/cluster` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct MemberInfo {
    /// Raft node id.
    pub node_id: NodeId,
    /// `voter` or `learner`.
    pub role: String,
    /// API address.
    pub api_addr: String,
    /// Peer (QUIC) address.
    pub peer_addr: String,
    /// The last log index known to be replicated to it, as the leader sees it (`null`
    /// when the answering node does not lead, or before the first acknowledgement).
    pub matched_index: Option<u64>,
    /// `ok` if the member answered the answering node just now (or is that node),
    /// `unreachable` if it did not answer within half a second.
    pub health: String,
    /// Its Raft state as it reports it (`leader`, `follower`, `candidate`, `learner`);
    /// `null` when unreachable.
    pub state: Option<String>,
    /// Its last applied log index as it reports it; `null` when unreachable.
    pub applied_index: Option<u64>,
}

/// What a member says of itself when asked for the cluster status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberProbe {
    /// Its Raft state.
    pub state: String,
    /// Its current term.
    pub term: u64,
    /// Its last applied log index.
    pub applied_index: Option<u64>,
}

/// `GET /v1/cluster` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ClusterStatus {
    /// The node that answered.
    pub node_id: NodeId,
    /// The current leader, if one is known.
    pub leader: Option<NodeId>,
    /// The answering node's Raft role: `leader`, `follower`, `candidate`, `learner`.
    pub role: String,
    /// Current Raft term.
    pub term: u64,
    /// Index of the last log entry.
    pub last_log_index: Option<u64>,
    /// Index of the last applied entry.
    pub last_applied: Option<u64>,
    /// Last index covered by the newest snapshot.
    pub snapshot_index: Option<u64>,
    /// Last index removed from the log (covered by a snapshot).
    pub purged_index: Option<u64>,
    /// Members.
    pub members: Vec<MemberInfo>,
    /// The queue policy in force.
    pub policy: QueuePolicy,
    /// Unfinished jobs in the queue.
    pub jobs: u64,
    /// Commands applied since the cluster started.
    pub commands_applied: u64,
    /// Raft entries written that carried commands: commands per entry shows batching.
    pub command_batches: u64,
    /// Walks over every job of the queue this node's components made since it started
    /// (each rebuilds its view once at start, after a snapshot install or when it fell
    /// behind the change feed; applied changes cost none).
    #[serde(default)]
    pub queue_scans: u64,
}

/// `GET /healthz` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Health {
    /// `ok` when the node has a leader and applies commands, else `degraded`.
    pub status: String,
    /// The answering node.
    pub node_id: NodeId,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
}

/// `POST /v1/fleets`: bring one file to several nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewFleet {
    /// The URL to download.
    pub remote_url: String,
    /// The absolute path it gets on every node; `{node}` in it is replaced by each
    /// node's id (for nodes that share a file system).
    pub local_path: String,
    /// The SHA-256 the file must have (64 hex digits), checked on every node.
    #[serde(default)]
    pub sha256: Option<String>,
    /// The member nodes; absent or empty: every member of the cluster.
    #[serde(default)]
    pub nodes: Vec<NodeId>,
    /// Display name of the jobs (default `fleet`).
    #[serde(default)]
    pub display_name: Option<String>,
    /// Properties every job gets.
    #[serde(default)]
    pub properties: crate::command::PropertyChanges,
    /// Credentials every job gets (`SetCredentials`, sealed for each job); write-only:
    /// the client sends them apart (see `Client::create_fleet`).
    #[serde(default, skip_serializing)]
    pub credentials: Vec<crate::credentials::NewCredentials>,
}

/// `GET /v1/fleets/{id}`: a fleet and each member's progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct FleetInfo {
    /// The fleet's id.
    pub id: JobId,
    /// One entry per member, in member order.
    pub members: Vec<FleetMemberInfo>,
}

/// One node of a fleet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct FleetMemberInfo {
    /// The node the file goes to.
    pub node: NodeId,
    /// Its download job.
    pub job: JobId,
    /// The job's state.
    pub state: JobState,
    /// The file's progress.
    pub progress: FileProgress,
    /// Where its bytes came from.
    pub peer_stats: PeerStats,
    /// The job's error, if it has one.
    pub error: Option<ErrorInfo>,
}

impl FleetInfo {
    /// The view of fleet `id` from its jobs (in member order).
    pub fn new(id: JobId, jobs: &[&Job]) -> Self {
        let members = jobs
            .iter()
            .map(|job| {
                let file = job.files.first().map(|f| FileInfo::new(0, f));
                FleetMemberInfo {
                    node: job.placement.home_node,
                    job: job.id,
                    state: job.state,
                    progress: file.as_ref().map(|f| f.progress).unwrap_or_default(),
                    peer_stats: file.map(|f| f.peer_stats).unwrap_or_default(),
                    error: job.error.as_ref().map(ErrorInfo::from),
                }
            })
            .collect();
        Self { id, members }
    }
}
