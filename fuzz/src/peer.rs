//! Copies of `ferry-node`'s peer messages, field for field and variant for variant.
//!
//! They are `pub(crate)` in `ferry-node` (and that crate is too heavy to build with
//! coverage instrumentation here), so the fuzz targets decode these copies instead.
//! bincode is positional: a copy with the same shape and the same field types runs
//! exactly the decoding code of the original. Keep them in step with:
//! `node/src/peer/endpoint.rs` (`Envelope`, `Answer`), `node/src/peer/requests.rs`
//! (`PeerRequest`), `node/src/peer/join.rs` (`JoinRequest`, `JoinAnswer`),
//! `node/src/transfer/helper.rs` (`ChunkRequest`, `ChunkAnswer`),
//! `node/src/transfer/peer_cache.rs` (`CopyRequest`, `CopyAnswer`),
//! `node/src/raft/mod.rs` (`NodeAddr`), `node/src/raft/snapshot_file.rs` (`Header`) and
//! `coordinator/src/cluster.rs` (`Written`, `ClusterError`).

use ferry_protocol::codec::ByteBuf;
use ferry_protocol::command::CommandResult;
use ferry_protocol::job::JobError;
use ferry_protocol::queue::QueueMeta;
use ferry_protocol::transfer::{RemoteInfo, Severity};
use ferry_protocol::{JobId, NodeId, Proposal};
use serde::{Deserialize, Serialize};

/// `endpoint::Envelope`: a request as it travels.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Sender's node id.
    pub from: u64,
    /// The encoded request.
    pub body: ByteBuf,
}

/// `endpoint::Answer`.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub enum Answer {
    /// The handler's encoded answer.
    Ok(ByteBuf),
    /// Refused before the handler ran.
    Refused(String),
}

/// `raft::NodeAddr`.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeAddr {
    /// HTTP API address.
    pub api_addr: String,
    /// QUIC peer address.
    pub peer_addr: String,
}

/// `helper::ChunkRequest`.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct ChunkRequest {
    /// The job.
    pub job: JobId,
    /// Its run.
    pub run: u64,
    /// Home node's applied index.
    pub applied: u64,
    /// File index.
    pub file: u32,
    /// Where to fetch.
    pub url: String,
    /// The probed version.
    pub remote: RemoteInfo,
    /// Offset in the remote file.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
}

/// `helper::ChunkAnswer`.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub enum ChunkAnswer {
    /// The piece and its BLAKE3.
    Bytes {
        /// The bytes.
        bytes: ByteBuf,
        /// BLAKE3 of `bytes`.
        digest: [u8; 32],
    },
    /// The run is over.
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

/// `peer_cache::CopyRequest`.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct CopyRequest {
    /// The job whose file holds the copy.
    pub job: JobId,
    /// The file.
    pub file: u32,
    /// The chunk.
    pub index: u32,
}

/// `peer_cache::CopyAnswer`.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub enum CopyAnswer {
    /// The chunk's bytes.
    Bytes(ByteBuf),
    /// Not held, and why.
    Missing(String),
}

/// `requests::PeerRequest`.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub enum PeerRequest {
    /// An openraft RPC, encoded apart (see the fuzz README: not decoded here).
    Raft(ByteBuf),
    /// A forwarded write.
    Write(Box<Proposal>),
    /// Add a member.
    AddMember {
        /// Its id.
        node: u64,
        /// Its addresses.
        addr: NodeAddr,
        /// Voters the cluster grows to.
        voters: usize,
    },
    /// Liveness.
    Ping,
    /// The leader's read index.
    ReadIndex,
    /// New addresses of the sender.
    UpdateAddress(NodeAddr),
    /// State, term, applied index.
    Probe,
    /// Bytes of an upload piece.
    UploadPiece {
        /// The session.
        session: String,
        /// The piece's offset.
        offset: u64,
        /// Where to start in it.
        from: u64,
        /// How many bytes.
        len: u32,
    },
    /// A helper's piece.
    FetchChunk(Box<ChunkRequest>),
    /// A peer-cache chunk.
    PeerCopy(CopyRequest),
    /// An upload-reply job's reply.
    ReplyData {
        /// The job.
        job: JobId,
    },
}

/// `join::JoinRequest`.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The token's secret.
    pub secret: String,
    /// Raw P-256 public key.
    pub public_key: Vec<u8>,
    /// QUIC address.
    pub peer_addr: String,
    /// HTTP API address.
    pub api_addr: String,
}

/// `join::JoinAnswer`.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct JoinAnswer {
    /// Its node id.
    pub node_id: u64,
    /// Its certificate (DER).
    pub cert: Vec<u8>,
    /// The CA certificate (DER).
    pub ca: Vec<u8>,
    /// The cluster's secret key.
    pub secret_key: Vec<u8>,
    /// The CA key (PEM).
    pub ca_key_pem: String,
    /// The join token.
    pub token: String,
}

/// `snapshot_file::Header`: the first frame of a snapshot file.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    /// Queue metadata.
    pub queue: QueueMeta,
    /// Job frames that follow.
    pub jobs: u64,
    /// Request frames that follow.
    pub requests: u64,
    /// Upload frames that follow.
    pub uploads: u64,
}

/// `cluster::Written`.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Written {
    /// What apply returned.
    pub result: CommandResult,
    /// The entry's index.
    pub index: u64,
}

/// `cluster::ClusterError`.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub enum ClusterError {
    /// No leader.
    NoLeader,
    /// Another node leads.
    NotLeader {
        /// That node.
        leader: NodeId,
    },
    /// Stopping.
    Unavailable(String),
    /// Not a member.
    NotMember(NodeId),
    /// Membership change refused.
    MembershipRefused(String),
    /// Too large for one entry.
    TooLarge {
        /// Encoded size.
        bytes: usize,
        /// Largest accepted.
        limit: usize,
    },
}
