//! The peer messages the fuzz targets decode. The requests, their answers and the
//! envelope of a call are `ferry_protocol::peer`'s own types (re-exported here); the
//! rest are copies of `ferry-node`-private types, field for field and variant for
//! variant (that crate is too heavy to build with coverage instrumentation here).
//! bincode is positional: a copy with the same shape and the same field types runs
//! exactly the decoding code of the original. Keep them in step with:
//! `node/src/peer/endpoint.rs` (`Envelope`, `Answer`), `node/src/peer/join.rs`
//! (`JoinRequest`, `JoinAnswer`) and `node/src/raft/snapshot_file.rs` (`Header`).

use ferry_protocol::codec::ByteBuf;
pub use ferry_protocol::peer::{
    AddMember, Call, ChunkAnswer, ChunkRequest, ClusterError, CopyAnswer, CopyRequest, NodeAddr,
    Ping, Probe, RaftRpc, ReadIndex, RemoteError, ReplyData, UpdateAddress, UploadPiece, Write,
    Written,
};
use ferry_protocol::queue::QueueMeta;
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
