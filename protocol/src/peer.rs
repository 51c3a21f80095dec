//! What members of a cluster ask each other over the peer link: one struct per request,
//! each tied to its answer type by [`PeerRpc`], the [`Call`] envelope that carries one
//! (its kind and its encoded body), and the [`RemoteError`] a member answers instead of
//! an answer it cannot give.
//!
//! On the wire a call is `codec(Call { kind, body: codec(request) })`, and its answer
//! `codec(Result<R::Answer, RemoteError>)`. A refusal encodes the same whatever the
//! answer type (the `Err` variant and its [`RemoteError`]), so a member can refuse a call
//! whose kind it does not know. Everything is decoded with [`crate::codec`] and its
//! size limit.
//!
//! Also here: [`ClusterError`] and [`Written`], which the API's `Cluster` trait uses too
//! (a forwarded write answers what a local one would).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::api::MemberProbe;
use crate::codec::ByteBuf;
use crate::command::{CommandError, CommandResult, Proposal};
use crate::job::JobError;
use crate::transfer::{RemoteInfo, Severity};
use crate::{JobId, NodeId};

/// A request between members, tied to the type of its answer.
pub trait PeerRpc: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The kind, as the envelope names it: unique among requests.
    const NAME: &'static str;
    /// What the member answers.
    type Answer: Serialize + DeserializeOwned + Send + 'static;
}

/// A request as it travels: its kind and its encoded body.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Call {
    /// [`PeerRpc::NAME`] of the request.
    pub kind: String,
    /// The request, encoded with [`crate::codec`].
    pub body: ByteBuf,
}

/// Why a member did not answer a call with its answer type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum RemoteError {
    /// The member serves no request of this kind (another version, or still starting).
    #[error("the member serves no request of kind {0:?}")]
    UnknownKind(String),
    /// The request could not be decoded there.
    #[error("the member could not decode the request: {0}")]
    Undecodable(String),
    /// The member's answer could not be encoded (too large for a frame, say).
    #[error("the member could not encode its answer: {0}")]
    Unencodable(String),
    /// The member's handler refused.
    #[error(transparent)]
    Refused(#[from] ClusterError),
}

/// Why the cluster could not serve a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ClusterError {
    /// No leader is known right now (election in progress, or no quorum).
    #[error("the cluster has no leader right now; retry shortly")]
    NoLeader,
    /// This node is not the leader and cannot forward yet.
    #[error("node {leader} is the leader; send writes there")]
    NotLeader {
        /// The leader this node knows of.
        leader: NodeId,
    },
    /// The node is shutting down or its Raft stopped.
    #[error("the node is unavailable: {0}")]
    Unavailable(String),
    /// The node is not a member of the cluster.
    #[error("node {0} is not a member of the cluster")]
    NotMember(NodeId),
    /// The membership change is not allowed.
    #[error("{0}")]
    MembershipRefused(String),
    /// The command is too large to be written as one log entry.
    #[error("the request takes {bytes} bytes as a command; at most {limit} fit in one log entry")]
    TooLarge {
        /// Its encoded size.
        bytes: usize,
        /// The largest accepted.
        limit: usize,
    },
}

/// The result of a write and the log index at which it was applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Written {
    /// What apply returned for the command.
    pub result: CommandResult,
    /// The index of the Raft entry that carried it.
    pub index: u64,
}

/// Where a member can be reached. Replicated in Raft membership entries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddr {
    /// The HTTP API address (`host:port`).
    pub api_addr: String,
    /// The QUIC peer address (`host:port`).
    pub peer_addr: String,
}

/// An openraft RPC, encoded by the node's Raft network (openraft's types stay there):
/// answered with its encoded answer.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct RaftRpc(pub ByteBuf);

impl PeerRpc for RaftRpc {
    const NAME: &'static str = "raft";
    type Answer = ByteBuf;
}

/// A client's write, forwarded to the leader.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Write(pub Proposal);

impl PeerRpc for Write {
    const NAME: &'static str = "write";
    type Answer = Written;
}

/// Add a node admitted by a member (sent to the leader).
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct AddMember {
    /// The new node's id.
    pub node: NodeId,
    /// Its addresses.
    pub addr: NodeAddr,
    /// Voters the cluster grows to.
    pub voters: u32,
}

impl PeerRpc for AddMember {
    const NAME: &'static str = "add-member";
    type Answer = ();
}

/// Are you there?
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Ping;

impl PeerRpc for Ping {
    const NAME: &'static str = "ping";
    type Answer = ();
}

/// Which formats do you read? The answer is the newest (`codec::FORMAT_VERSION`); a
/// member of format 8 serves no request of this kind, which says as much.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Formats;

impl PeerRpc for Formats {
    const NAME: &'static str = "formats";
    type Answer = u8;
}

/// The leader's read index (ReadIndex), for a linearizable read on a follower.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct ReadIndex;

impl PeerRpc for ReadIndex {
    const NAME: &'static str = "read-index";
    type Answer = u64;
}

/// The sender restarted on other addresses: the leader records them in the membership.
/// Answered with true if they changed.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct UpdateAddress(pub NodeAddr);

impl PeerRpc for UpdateAddress {
    const NAME: &'static str = "update-address";
    type Answer = bool;
}

/// Your state, term and applied index, for the cluster status.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Probe;

impl PeerRpc for Probe {
    const NAME: &'static str = "probe";
    type Answer = MemberProbe;
}

/// Bytes `from..from + len` of the upload piece at `offset` of `session` that the member
/// received (the node closing the session gathers them).
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct UploadPiece {
    /// The upload session.
    pub session: String,
    /// The piece's offset in the file.
    pub offset: u64,
    /// Where to start in the piece.
    pub from: u64,
    /// How many bytes.
    pub len: u32,
}

impl PeerRpc for UploadPiece {
    const NAME: &'static str = "upload-piece";
    type Answer = ByteBuf;
}

/// A piece of a job's file, fetched from its origin by a helper for the job's home node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChunkRequest {
    /// The job.
    pub job: JobId,
    /// Its run: a helper refuses pieces of another run.
    pub run: u64,
    /// The home node's applied index when it asked: the helper waits for it.
    pub applied: u64,
    /// File index.
    pub file: u32,
    /// Where to fetch (the job's URL, or where its redirects led).
    pub url: String,
    /// The probed version.
    pub remote: RemoteInfo,
    /// The piece: offset in the remote file (`remote_offset`) and length.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
}

/// A helper's answer to a [`ChunkRequest`].
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub enum ChunkAnswer {
    /// The piece's bytes and their BLAKE3 digest.
    Bytes {
        /// The bytes.
        bytes: ByteBuf,
        /// BLAKE3 of `bytes`.
        digest: [u8; 32],
    },
    /// The run is over (or not known here yet).
    Stale,
    /// The remote file changed.
    Restart(String),
    /// The origin failed.
    Failed {
        /// As the job would record it.
        error: JobError,
        /// Retried or not.
        severity: Severity,
    },
}

impl PeerRpc for ChunkRequest {
    const NAME: &'static str = "fetch-chunk";
    type Answer = ChunkAnswer;
}

/// A chunk of a member's copy (the peer cache): chunk `index` of file `file` of job
/// `job`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CopyRequest {
    /// The job whose file holds the copy.
    pub job: JobId,
    /// The file.
    pub file: u32,
    /// The chunk, by plan index.
    pub index: u32,
}

/// A holder's answer to a [`CopyRequest`].
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub enum CopyAnswer {
    /// The chunk's bytes (the receiver checks them against the recorded digest).
    Bytes(ByteBuf),
    /// The holder no longer has them (or never had), and why.
    Missing(String),
    /// Every serving slot of the holder is taken (`[peer_cache] max_serving`): ask
    /// another holder, or this one a little later. A holder answers so at once instead
    /// of keeping the request waiting: a new piece's first holder would otherwise
    /// collect nearly every node's request and serve them in turn.
    Busy,
}

impl PeerRpc for CopyRequest {
    const NAME: &'static str = "peer-copy";
    type Answer = CopyAnswer;
}

/// The first bytes of the reply of an upload-reply job, asked of its home node.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplyData {
    /// The job.
    pub job: JobId,
}

impl PeerRpc for ReplyData {
    const NAME: &'static str = "reply-data";
    type Answer = ByteBuf;
}

/// Complete's renames, asked of the job's home node before the job is acknowledged:
/// every transferred file of the job is renamed into place (a reply too), so that the
/// job becomes ACKNOWLEDGED only once they all are.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct PlaceFiles {
    /// The job (the home node reads it linearizably).
    pub job: JobId,
}

impl PeerRpc for PlaceFiles {
    const NAME: &'static str = "place-files";
    type Answer = FilesOutcome;
}

/// The live progress of jobs running on the asked member (their home node): bytes
/// received so far per file, durable or not. Jobs not running there are left out; a
/// member of an older build serves no request of this kind (the durable progress is
/// shown then).
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct LiveProgressOf {
    /// The jobs (at most [`MAX_LIVE_JOBS`]).
    pub jobs: Vec<JobId>,
}

/// Most jobs one [`LiveProgressOf`] asks about.
pub const MAX_LIVE_JOBS: usize = 1_000;

/// One running job's received bytes, by file index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveFiles {
    /// The job.
    pub job: JobId,
    /// `(file index, bytes received so far)` of the files its run has opened.
    pub files: Vec<(u32, u64)>,
}

impl PeerRpc for LiveProgressOf {
    const NAME: &'static str = "live-progress";
    type Answer = Vec<LiveFiles>;
}

/// The end of Complete or Cancel on the home node, asked for once the job is final:
/// answered when the job's files are renamed or deleted, saying whether all were.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct FinishFiles {
    /// The job.
    pub job: JobId,
    /// The log index at which the job became final.
    pub applied: u64,
}

impl PeerRpc for FinishFiles {
    const NAME: &'static str = "finish-files";
    type Answer = FilesOutcome;
}

/// What the home node did with a job's files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum FilesOutcome {
    /// Every file was renamed into place or deleted, as asked.
    Done,
    /// Not every one: the BITS code and why (a file that could not be renamed leaves
    /// the job where it was; one that could not be deleted leaves it cancelled).
    Failed(CommandError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    #[test]
    fn a_refusal_decodes_as_the_answer_of_any_request() {
        let refused: Result<(), RemoteError> = Err(RemoteError::UnknownKind("nope".into()));
        let bytes = codec::encode(&refused).expect("encode");
        let as_probe: Result<MemberProbe, RemoteError> = codec::decode(&bytes).expect("decode");
        assert_eq!(as_probe, Err(RemoteError::UnknownKind("nope".into())));
        let as_copy: Result<CopyAnswer, RemoteError> = codec::decode(&bytes).expect("decode");
        assert!(matches!(as_copy, Err(RemoteError::UnknownKind(_))));
    }

    #[test]
    fn kinds_are_distinct() {
        let names = [
            RaftRpc::NAME,
            Write::NAME,
            AddMember::NAME,
            Ping::NAME,
            ReadIndex::NAME,
            UpdateAddress::NAME,
            Probe::NAME,
            UploadPiece::NAME,
            ChunkRequest::NAME,
            CopyRequest::NAME,
            ReplyData::NAME,
            PlaceFiles::NAME,
            FinishFiles::NAME,
            LiveProgressOf::NAME,
        ];
        let unique: std::collections::BTreeSet<&str> = names.into_iter().collect();
        assert_eq!(unique.len(), names.len());
    }
}
