//! The Raft network over the QUIC peer endpoint (DESIGN §3): each openraft RPC is one
//! request/answer on the caller's cached connection to the target, framed by
//! `protocol::codec` (versioned, size-limited), authenticated by the cluster
//! certificates, sent as [`peer::RaftRpc`] requests. [`serve_raft`] registers the serving
//! side on the node's request router.
//!
//! Errors of the remote Raft travel as text and come back as "unreachable", which
//! openraft answers by backing off and retrying; only transport facts are reported.
//! Snapshots go in openraft's chunks (3 MiB by default), each its own request.

use std::net::SocketAddr;

use ferry_coordinator::ClusterError;
use ferry_protocol::codec;
use ferry_protocol::peer;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use super::{NodeAddr, Raft, TypeConfig};
use crate::peer::rpc::{Peers, Router};

/// A Raft RPC as it travels.
#[derive(Serialize, Deserialize)]
enum RaftRpc {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    Vote(VoteRequest<u64>),
}

/// Its answer; a refusal of the remote Raft as text.
#[derive(Serialize, Deserialize)]
enum RaftAnswer {
    AppendEntries(Result<AppendEntriesResponse<u64>, String>),
    InstallSnapshot(Result<InstallSnapshotResponse<u64>, String>),
    Vote(Result<VoteResponse<u64>, String>),
}

/// Creates clients for other members.
#[derive(Clone)]
pub struct Network {
    peers: Peers,
}

impl Network {
    /// Raft RPCs go out through `peers` (to the members' current addresses).
    pub(crate) fn new(peers: Peers) -> Self {
        Self { peers }
    }
}

/// A client for one member.
pub struct PeerClient {
    peers: Peers,
    target: u64,
    /// The address openraft knows, used while the address book has none.
    addr: Option<SocketAddr>,
}

/// Why an RPC did not reach the remote Raft.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct PeerFault(String);

impl PeerClient {
    async fn call(
        &self,
        rpc: &RaftRpc,
        timeout: std::time::Duration,
    ) -> Result<RaftAnswer, Unreachable> {
        let unreachable = |text: String| Unreachable::new(&PeerFault(text));
        let rpc = codec::encode(rpc).map_err(|e| unreachable(e.to_string()))?;
        let request = peer::RaftRpc(codec::ByteBuf::from(rpc));
        let answer = self
            .peers
            .call_to(self.target, self.addr, &request, timeout)
            .await
            .map_err(|e| unreachable(format!("node {}: {e}", self.target)))?;
        codec::decode(&answer)
            .map_err(|e| unreachable(format!("bad answer from node {}: {e}", self.target)))
    }
}

fn remote<E: std::error::Error>(target: u64, text: String) -> RPCError<u64, NodeAddr, E> {
    RPCError::Unreachable(Unreachable::new(&PeerFault(format!("node {target}: {text}"))))
}

fn mismatch<E: std::error::Error>(target: u64) -> RPCError<u64, NodeAddr, E> {
    RPCError::Network(NetworkError::new(&PeerFault(format!("node {target} answered another RPC"))))
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &NodeAddr) -> Self::Network {
        let addr = node.peer_addr.parse().ok();
        PeerClient { peers: self.peers.clone(), target, addr }
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, NodeAddr, RaftError<u64>>> {
        match self
            .call(&RaftRpc::AppendEntries(rpc), option.hard_ttl())
            .await
            .map_err(RPCError::Unreachable)?
        {
            RaftAnswer::AppendEntries(answer) => answer.map_err(|e| remote(self.target, e)),
            _ => Err(mismatch(self.target)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, NodeAddr, RaftError<u64, InstallSnapshotError>>,
    > {
        match self
            .call(&RaftRpc::InstallSnapshot(rpc), option.hard_ttl())
            .await
            .map_err(RPCError::Unreachable)?
        {
            RaftAnswer::InstallSnapshot(answer) => answer.map_err(|e| remote(self.target, e)),
            _ => Err(mismatch(self.target)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, NodeAddr, RaftError<u64>>> {
        match self
            .call(&RaftRpc::Vote(rpc), option.hard_ttl())
            .await
            .map_err(RPCError::Unreachable)?
        {
            RaftAnswer::Vote(answer) => answer.map_err(|e| remote(self.target, e)),
            _ => Err(mismatch(self.target)),
        }
    }
}

/// Serves Raft's RPCs from other members with `raft`.
pub(crate) fn serve_raft(raft: &Raft, router: &Router) {
    let raft = raft.clone();
    router.add_handler::<peer::RaftRpc, _, _>(move |from, peer::RaftRpc(rpc)| {
        let raft = raft.clone();
        async move { answer(&raft, from, &rpc).await }
    });
}

/// Runs one Raft RPC from member `from`: the encoded answer. An RPC that cannot be
/// decoded, or an answer that cannot be encoded, is refused (openraft's client takes
/// any failure as "unreachable" and retries).
async fn answer(raft: &Raft, from: u64, body: &[u8]) -> Result<codec::ByteBuf, ClusterError> {
    let answer = match codec::decode::<RaftRpc>(body) {
        Ok(RaftRpc::AppendEntries(rpc)) => {
            RaftAnswer::AppendEntries(raft.append_entries(rpc).await.map_err(|e| e.to_string()))
        }
        Ok(RaftRpc::InstallSnapshot(rpc)) => {
            RaftAnswer::InstallSnapshot(raft.install_snapshot(rpc).await.map_err(|e| e.to_string()))
        }
        Ok(RaftRpc::Vote(rpc)) => RaftAnswer::Vote(raft.vote(rpc).await.map_err(|e| e.to_string())),
        Err(e) => {
            tracing::warn!(from, error = %e, "an unreadable Raft RPC");
            return Err(ClusterError::Unavailable(format!("unreadable Raft RPC: {e}")));
        }
    };
    codec::encode(&answer)
        .map(codec::ByteBuf::from)
        .map_err(|e| ClusterError::Unavailable(format!("cannot encode the Raft answer: {e}")))
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::time::Duration;

    use ferry_protocol::command::{Batch, Command, NewJob, Proposal};
    use ferry_protocol::{Caller, JobId, Principal, Role, Timestamp};

    use std::sync::Arc;

    use super::*;
    use crate::peer::endpoint::PeerEndpoint;
    use crate::peer::identity::{ClusterCa, NodeIdentity};
    use crate::raft::{LogStore, RaftSettings, StateMachineStore, raft_config};

    struct Member {
        raft: Raft,
        state: StateMachineStore,
        endpoint: Arc<PeerEndpoint>,
        addr: NodeAddr,
        _dir: tempfile::TempDir,
    }

    async fn member(ca: &ClusterCa, id: u64) -> anyhow::Result<Member> {
        let dir = tempfile::tempdir()?;
        let key = NodeIdentity::new_key()?;
        let identity =
            NodeIdentity::new(id, &key, ca.issue(id, key.public_key_raw())?, ca.cert().clone());
        let endpoint = PeerEndpoint::bind(SocketAddr::from(([127, 0, 0, 1], 0)), &identity)?;
        let log = LogStore::open(&dir.path().join("log.redb"))?;
        let state = StateMachineStore::open(&dir.path().join("state.redb"), Default::default())?;
        let settings = RaftSettings {
            heartbeat_ms: 50,
            election_timeout_ms: (300, 600),
            ..RaftSettings::default()
        };
        let router = Arc::new(Router::default());
        let peers = Peers::new(id, endpoint.clone(), Arc::default(), router.clone());
        let raft =
            Raft::new(id, raft_config(&settings)?, Network::new(peers), log, state.clone()).await?;
        serve_raft(&raft, &router);
        endpoint.serve(router.handler(), None, None);
        let addr =
            NodeAddr { api_addr: String::new(), peer_addr: endpoint.local_addr()?.to_string() };
        Ok(Member { raft, state, endpoint, addr, _dir: dir })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn raft_replicates_over_quic_with_cluster_certificates() -> anyhow::Result<()> {
        let ca = ClusterCa::generate()?;
        let one = member(&ca, 1).await?;
        let two = member(&ca, 2).await?;
        one.raft.initialize(BTreeMap::from([(1, one.addr.clone())])).await?;
        one.raft.wait(Some(Duration::from_secs(10))).current_leader(1, "leader").await?;
        one.raft.add_learner(2, two.addr.clone(), true).await?;
        one.raft.change_membership(BTreeSet::from([1, 2]), false).await?;

        let id = JobId(uuid::Uuid::from_u128(42));
        let caller = Caller { principal: Principal::new("alice")?, role: Role::User };
        let spec = NewJob {
            display_name: "over quic".into(),
            job_type: Default::default(),
            properties: Default::default(),
            files: vec![],
        };
        let command = Command::CreateJob { id, home_node: 1, spec };
        let batch = Batch {
            time: Timestamp(1),
            proposals: vec![Proposal { request_id: None, caller, command }],
        };
        let written = one.raft.client_write(batch).await?;
        two.raft
            .wait(Some(Duration::from_secs(10)))
            .applied_index_at_least(Some(written.log_id.index), "replicated")
            .await?;
        assert!(two.state.read().queue.job(&id).is_some(), "the follower applied the job");
        let voters: Vec<u64> =
            two.raft.metrics().borrow().membership_config.membership().voter_ids().collect();
        assert_eq!(voters, vec![1, 2]);

        // A node of another cluster cannot take part.
        let other = ClusterCa::generate()?;
        let stranger = member(&other, 3).await?;
        one.raft.add_learner(3, stranger.addr.clone(), false).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            stranger.state.read().applied,
            None,
            "a node of another cluster received the log"
        );
        for m in [&one, &two, &stranger] {
            m.raft.shutdown().await?;
            m.endpoint.close().await;
        }
        Ok(())
    }
}
