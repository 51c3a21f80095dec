//! The Raft network over the QUIC peer endpoint (DESIGN §3): each openraft RPC is one
//! request/answer on the caller's cached connection to the target, framed by
//! `protocol::codec` (versioned, size-limited), authenticated by the cluster
//! certificates. [`serve_raft`] is the serving side.
//!
//! Errors of the remote Raft travel as text and come back as "unreachable", which
//! openraft answers by backing off and retrying; only transport facts are reported.
//! Snapshots go in openraft's chunks (3 MiB by default), each its own request.

use std::net::SocketAddr;
use std::sync::Arc;

use ferry_protocol::codec;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use super::{NodeAddr, Raft, TypeConfig};
use crate::peer::endpoint::{PeerEndpoint, PeerError};
use crate::peer::requests::PeerRequest;

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

/// The members' current peer addresses, kept up to date from the membership: openraft
/// may keep a client for a member across a change of its address (a restart on another
/// port), so clients look the address up on every call.
#[derive(Default)]
pub(crate) struct AddressBook {
    addrs: std::sync::RwLock<std::collections::HashMap<u64, SocketAddr>>,
}

impl AddressBook {
    /// Records the addresses of `membership`'s nodes.
    pub(crate) fn update(&self, nodes: impl Iterator<Item = (u64, String)>) {
        let fresh: std::collections::HashMap<u64, SocketAddr> =
            nodes.filter_map(|(id, addr)| Some((id, addr.parse().ok()?))).collect();
        *self.addrs.write().unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
    }

    fn get(&self, node: u64) -> Option<SocketAddr> {
        self.addrs.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(&node).copied()
    }
}

/// Creates clients for other members.
#[derive(Clone)]
pub struct Network {
    endpoint: Arc<PeerEndpoint>,
    book: Arc<AddressBook>,
}

impl Network {
    /// Raft RPCs go out through `endpoint`, to the addresses in `book`.
    pub(crate) fn new(endpoint: Arc<PeerEndpoint>, book: Arc<AddressBook>) -> Self {
        Self { endpoint, book }
    }
}

/// A client for one member.
pub struct PeerClient {
    endpoint: Arc<PeerEndpoint>,
    book: Arc<AddressBook>,
    target: u64,
    addr: Result<SocketAddr, String>,
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
        let addr = match self.book.get(self.target) {
            Some(current) => current,
            None => self.addr.clone().map_err(unreachable)?,
        };
        let rpc = codec::encode(rpc).map_err(|e| unreachable(e.to_string()))?;
        let body = codec::encode(&PeerRequest::Raft(codec::ByteBuf::from(rpc)))
            .map_err(|e| unreachable(e.to_string()))?;
        let answer = self
            .endpoint
            .call(self.target, addr, body, timeout)
            .await
            .map_err(|e: PeerError| unreachable(e.to_string()))?;
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
        let addr = node
            .peer_addr
            .parse()
            .map_err(|_| format!("node {target} has no usable peer address {:?}", node.peer_addr));
        PeerClient { endpoint: self.endpoint.clone(), book: self.book.clone(), target, addr }
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

/// Serves one Raft RPC from member `from` with `raft`; returns the encoded answer.
pub(crate) async fn serve_raft(raft: &Raft, from: u64, body: &[u8]) -> Vec<u8> {
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
            RaftAnswer::Vote(Err(format!("unreadable RPC: {e}")))
        }
    };
    codec::encode(&answer).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::time::Duration;

    use ferry_protocol::command::{Batch, Command, NewJob, Proposal};
    use ferry_protocol::{Caller, JobId, Principal, Role, Timestamp};

    use super::*;
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
        let raft = Raft::new(
            id,
            raft_config(&settings)?,
            Network::new(endpoint.clone(), Arc::default()),
            log,
            state.clone(),
        )
        .await?;
        let served = raft.clone();
        endpoint.serve(
            Arc::new(move |from, body| {
                let raft = served.clone();
                Box::pin(async move {
                    let bytes = match codec::decode::<PeerRequest>(&body) {
                        Ok(PeerRequest::Raft(rpc)) => serve_raft(&raft, from, &rpc).await,
                        _ => Vec::new(),
                    };
                    crate::peer::endpoint::Served::from(bytes)
                })
            }),
            None,
            None,
        );
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
