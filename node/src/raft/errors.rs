//! openraft's errors and server states, translated into what the API reports.

use ferry_coordinator::ClusterError;
use openraft::ServerState;
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};

use super::NodeAddr;

/// The error of `Raft::client_write`.
pub type WriteError = RaftError<u64, ClientWriteError<u64, NodeAddr>>;
/// The error of `Raft::ensure_linearizable`.
pub type ReadError = RaftError<u64, CheckIsLeaderError<u64, NodeAddr>>;

/// Maps a failed write.
pub fn write_error(e: WriteError) -> ClusterError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => not_leader(f.leader_id),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ClusterError::Unavailable(e.to_string())
        }
        RaftError::Fatal(e) => ClusterError::Unavailable(e.to_string()),
    }
}

/// Maps a failed linearizable-read barrier.
pub fn read_error(e: ReadError) -> ClusterError {
    match e {
        RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)) => not_leader(f.leader_id),
        RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)) => ClusterError::NoLeader,
        RaftError::Fatal(e) => ClusterError::Unavailable(e.to_string()),
    }
}

fn not_leader(leader: Option<u64>) -> ClusterError {
    match leader {
        Some(leader) => ClusterError::NotLeader { leader },
        None => ClusterError::NoLeader,
    }
}

/// The name of a node's Raft role, as the API shows it.
pub fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}
