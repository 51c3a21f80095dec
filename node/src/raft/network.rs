//! The Raft network. A node started on its own is a complete one-member cluster and
//! never sends an RPC; the QUIC peer transport that carries Raft between nodes is the
//! next layer (DESIGN §3, issue "A real cluster"). Until then every RPC to another
//! member reports the member unreachable, which openraft handles as a network fault.

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use super::{NodeAddr, TypeConfig};

/// Why an RPC could not be sent.
#[derive(Debug, thiserror::Error)]
#[error("node {target} at {addr:?} is unreachable: this build has no peer transport yet")]
struct NoPeerTransport {
    target: u64,
    addr: String,
}

/// Creates clients for other members.
#[derive(Clone, Default)]
pub struct Network;

/// A client for one member.
pub struct PeerClient {
    target: u64,
    addr: NodeAddr,
}

impl PeerClient {
    fn unreachable<E: std::error::Error>(&self) -> RPCError<u64, NodeAddr, E> {
        RPCError::Unreachable(Unreachable::new(&NoPeerTransport {
            target: self.target,
            addr: self.addr.peer_addr.clone(),
        }))
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &NodeAddr) -> Self::Network {
        PeerClient { target, addr: node.clone() }
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, NodeAddr, RaftError<u64>>> {
        Err(self.unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, NodeAddr, RaftError<u64, InstallSnapshotError>>,
    > {
        Err(self.unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, NodeAddr, RaftError<u64>>> {
        Err(self.unreachable())
    }
}
