//! What nodes ask each other over the peer endpoint: Raft's RPCs, writes forwarded to
//! the leader by a node that received them through its API, and the leader's read index
//! for linearizable reads served by followers.

use ferry_protocol::Proposal;

use crate::raft::NodeAddr;
use serde::{Deserialize, Serialize};

/// A request between members.
#[derive(Serialize, Deserialize)]
pub(crate) enum PeerRequest {
    /// An openraft RPC (encoded by `raft::network`).
    Raft(ferry_protocol::codec::ByteBuf),
    /// A client's write, forwarded to the leader. Answered with
    /// `Result<Written, ClusterError>`.
    Write(Box<Proposal>),
    /// Add a node admitted by the CA holder (sent to the leader). Answered with
    /// `Result<(), ClusterError>`.
    AddMember {
        /// The new node's id.
        node: u64,
        /// Its addresses.
        addr: NodeAddr,
        /// Voters the cluster grows to.
        voters: usize,
    },
    /// Are you there? Answered with `Result<(), ClusterError>`.
    Ping,
    /// The leader's read index (ReadIndex): answered with `Result<u64, ClusterError>`.
    ReadIndex,
    /// The sender restarted on other addresses: the leader records them in the
    /// membership. Answered with `Result<bool, ClusterError>` (true: changed).
    UpdateAddress(NodeAddr),
    /// Your state, term and applied index, for the cluster status: answered with
    /// `Result<MemberProbe, ClusterError>`.
    Probe,
    /// Bytes `from..from + len` of the upload piece at `offset` of `session` that this
    /// node received (a Close-Session on another node gathers them): answered with
    /// `Result<Vec<u8>, ClusterError>`.
    UploadPiece {
        /// The upload session.
        session: String,
        /// The piece's offset in the file.
        offset: u64,
        /// Where to start in the piece.
        from: u64,
        /// How many bytes (at most [`crate::upload_server::GATHER_CHUNK`]).
        len: u32,
    },
    /// Fetch a piece of a job's file from its origin for its home node (a helper):
    /// answered with `Result<ChunkAnswer, ClusterError>`.
    FetchChunk(Box<crate::transfer::helper::ChunkRequest>),
    /// A chunk of a copy this node holds (the peer cache): answered with
    /// `Result<CopyAnswer, ClusterError>`.
    PeerCopy(crate::transfer::peer_cache::CopyRequest),
    /// The first bytes of the reply of an upload-reply job whose home node this is
    /// (`GetReplyData` through another node): answered with `Result<Vec<u8>, ClusterError>`.
    ReplyData {
        /// The job.
        job: ferry_protocol::JobId,
    },
}
