//! The seam between the API and the replicated queue: what the routes need from a node.

use std::future::Future;
use std::pin::Pin;

use ferry_protocol::api::ClusterStatus;
use ferry_protocol::command::{CommandError, Proposal};
use ferry_protocol::event::{Delivery, EventFilter, StartAt};

use ferry_protocol::{Caller, JobId, NodeId, Queue};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::bandwidth::{BandwidthPolicy, BandwidthStatus, InvalidPolicy};

/// A boxed, sendable future (the trait is used as `dyn Cluster`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// Reflects every write acknowledged before the read started (Raft read index).
    #[default]
    Linearizable,
    /// Whatever this node has applied; may be stale on a follower.
    Local,
}

/// Where a read must start from: the API's [`Consistency`], or after a write this node
/// just made (read-your-writes without another Raft round).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadAt {
    /// Linearizable: confirm leadership and wait for the read index to be applied.
    Linearizable,
    /// Whatever is applied locally.
    Local,
    /// Once this log index is applied locally.
    Applied(u64),
}

impl From<Consistency> for ReadAt {
    fn from(c: Consistency) -> Self {
        match c {
            Consistency::Linearizable => Self::Linearizable,
            Consistency::Local => Self::Local,
        }
    }
}

// The answers of a write and the refusals of the cluster travel between members too:
// they are defined with the peer messages.
pub use ferry_protocol::peer::{ClusterError, FilesOutcome, Written};

/// An open subscription to the job event stream (see `ferry_protocol::event`).
pub trait EventStream: Send {
    /// The next delivery, waiting for one; `Ok(None)` when the node shuts down.
    fn next(&mut self) -> BoxFuture<'_, Result<Option<Delivery>, SubscribeError>>;

    /// The cursor delivery resumes at: after the last event considered, or where the
    /// subscription starts.
    fn position(&self) -> ferry_protocol::event::Cursor;
}

/// Why a subscription cannot be opened or go on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SubscribeError {
    /// The filter is not allowed for this caller.
    #[error("{0}")]
    Refused(CommandError),
    /// The history could not be read.
    #[error("the event history cannot be read: {0}")]
    Storage(String),
    /// The node serves as many subscriptions as it may; another node may take it.
    #[error("this node already serves {0} subscriptions; try another node or later")]
    Busy(usize),
}

impl SubscribeError {
    /// The HTTP status it answers with (SSE, and the bus's refusal frame).
    pub fn status(&self) -> u16 {
        match self {
            Self::Refused(refused) => crate::problem::status_for(refused.code),
            Self::Storage(_) | Self::Busy(_) => 503,
        }
    }
}

/// What the API needs from a node.
pub trait Cluster: Send + Sync + 'static {
    /// This node's id: the home node of jobs created through it.
    fn node_id(&self) -> NodeId;

    /// Proposes a command through Raft and returns its result once it is applied, which
    /// means durable on a quorum.
    fn write(&self, proposal: Proposal) -> BoxFuture<'_, Result<Written, ClusterError>>;

    /// Waits until a read at `at` may start (a no-op for [`ReadAt::Local`]).
    fn read_barrier(&self, at: ReadAt) -> BoxFuture<'_, Result<(), ClusterError>>;

    /// Runs `f` on the applied queue. Call [`Cluster::read_barrier`] first.
    fn with_queue(&self, f: &mut dyn FnMut(&Queue));

    /// Removes a member (joint consensus; refused for the last voter).
    fn remove_member(&self, node: NodeId) -> BoxFuture<'_, Result<(), ClusterError>>;

    /// Leader, term, members, indexes.
    fn status(&self) -> BoxFuture<'_, Result<ClusterStatus, ClusterError>>;

    /// Opens a subscription to the job events `caller` may see: replay from `from`, then
    /// live events.
    fn subscribe(
        &self,
        caller: Caller,
        filter: EventFilter,
        from: StartAt,
    ) -> BoxFuture<'_, Result<Box<dyn EventStream>, SubscribeError>>;

    /// The bytes each of `jobs` (with their home nodes) has received so far on its home
    /// node, durable or not, for the jobs running there; no Raft write. Best effort: a
    /// home node that does not answer soon leaves its jobs out.
    fn live_progress(
        &self,
        jobs: Vec<(JobId, NodeId)>,
    ) -> BoxFuture<'_, Vec<ferry_protocol::peer::LiveFiles>>;

    /// Succeeds if every member reads format `version`: what a command of a newer
    /// format waits for during a rolling upgrade (a member that cannot read an entry
    /// would stop). Fails naming the first member that does not, or does not answer.
    fn check_format(&self, version: u8) -> BoxFuture<'_, Result<(), ClusterError>>;

    /// Complete's renames on the home node of job `job`, before the job is
    /// acknowledged: [`FilesOutcome::Failed`] means a file could not be renamed into
    /// place, and Complete must not be written.
    fn place_files(&self, job: JobId) -> BoxFuture<'_, Result<FilesOutcome, ClusterError>>;

    /// Waits for the end of Complete or Cancel of job `job` (final at log index
    /// `applied`) on its home node: [`FilesOutcome::Failed`] names the temporary files
    /// that could not be deleted.
    fn finished_files(
        &self,
        job: JobId,
        applied: u64,
    ) -> BoxFuture<'_, Result<FilesOutcome, ClusterError>>;

    /// Every metric of this node, in the Prometheus text format (`GET /metrics`).
    fn metrics(&self) -> String;

    /// The cluster CA certificate (PEM): event bus clients verify nodes against it.
    fn cluster_ca(&self) -> String;

    /// The first bytes (at most [`ferry_protocol::job::MAX_REPLY_DATA`] + 1) of the reply
    /// of upload-reply job `job`, read by its home node (from the reply file after
    /// Complete, from its temporary file before).
    fn reply_data(&self, job: JobId) -> BoxFuture<'_, Result<Vec<u8>, ClusterError>>;

    /// This node's bandwidth policy for background transfers and the rate it allows
    /// now (`GET /v1/node/bandwidth`). Each node has its own.
    fn bandwidth(&self) -> BandwidthStatus;

    /// Puts `policy` in force on this node at once, until it restarts (the
    /// configuration is the durable source; nothing is replicated or written).
    fn set_bandwidth(&self, policy: BandwidthPolicy) -> Result<BandwidthStatus, InvalidPolicy>;
}
