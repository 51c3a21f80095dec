//! [`Status`]: the cluster status the API shows (`GET /v1/cluster`): Raft's metrics here
//! and each member's own account of itself ([`Probe`], asked of all at once with a short
//! deadline). Serves [`Probe`] for other members.

use std::sync::Arc;
use std::time::Duration;

use ferry_coordinator::ClusterError;
use ferry_protocol::NodeId;
use ferry_protocol::api::{ClusterStatus, MemberInfo, MemberProbe};
use ferry_protocol::peer::Probe;

use crate::peer::rpc::{Peers, Router};
use crate::raft::{Raft, StateMachineStore, role_name};

/// How long the cluster status waits for each member to describe itself.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// What the status is made of.
pub(crate) struct Status {
    /// This node's Raft id.
    pub(super) node_id: NodeId,
    /// Raft handle, for its metrics.
    pub(super) raft: Raft,
    /// The applied state (queue counters and policy).
    pub(super) state: StateMachineStore,
    /// Probes go to the members through it.
    pub(super) peers: Peers,
}

impl Status {
    /// Serves [`Probe`] for other members.
    pub(super) fn register(self: &Arc<Self>, router: &Router) {
        let status = self.clone();
        router.add_handler::<Probe, _, _>(move |_, Probe| {
            let probe = status.probe();
            async move { Ok(probe) }
        });
    }

    /// What this node says of itself in a cluster status.
    fn probe(&self) -> MemberProbe {
        let metrics = self.raft.metrics().borrow().clone();
        MemberProbe {
            state: role_name(metrics.state).into(),
            term: metrics.current_term,
            applied_index: metrics.last_applied.map(|id| id.index),
        }
    }

    /// Asks every member for its probe at once (this node answers itself), each bounded
    /// by [`PROBE_TIMEOUT`]; `None` for a member that did not answer.
    async fn probe_members(&self, members: Vec<NodeId>) -> Vec<(NodeId, Option<MemberProbe>)> {
        let mut asked = tokio::task::JoinSet::new();
        for node in members {
            if node == self.node_id {
                asked.spawn(std::future::ready((node, Some(self.probe()))));
                continue;
            }
            let peers = self.peers.clone();
            asked.spawn(async move { (node, peers.call(node, &Probe, PROBE_TIMEOUT).await.ok()) });
        }
        let mut probes = Vec::new();
        while let Some(done) = asked.join_next().await {
            probes.extend(done.ok());
        }
        probes
    }

    /// The cluster status as this node sees it.
    pub(super) async fn status(&self) -> Result<ClusterStatus, ClusterError> {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let matched = |id: &NodeId| {
            let replication = metrics.replication.as_ref()?;
            replication.get(id).copied().flatten().map(|log_id| log_id.index)
        };
        let probes = self.probe_members(membership.nodes().map(|(id, _)| *id).collect()).await;
        let probe = |id: &NodeId| probes.iter().find(|(n, _)| n == id).and_then(|(_, p)| p.clone());
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let probe = probe(id);
                MemberInfo {
                    node_id: *id,
                    role: if voters.contains(id) { "voter" } else { "learner" }.into(),
                    api_addr: node.api_addr.clone(),
                    peer_addr: node.peer_addr.clone(),
                    matched_index: matched(id),
                    health: if probe.is_some() { "ok" } else { "unreachable" }.into(),
                    state: probe.as_ref().map(|p| p.state.clone()),
                    applied_index: probe.and_then(|p| p.applied_index),
                }
            })
            .collect();
        let machine = self.state.read();
        let meta = machine.queue.meta();
        Ok(ClusterStatus {
            node_id: self.node_id,
            leader: metrics.current_leader,
            role: role_name(metrics.state).into(),
            term: metrics.current_term,
            last_log_index: metrics.last_log_index,
            last_applied: metrics.last_applied.map(|id| id.index),
            snapshot_index: metrics.snapshot.map(|id| id.index),
            purged_index: metrics.purged.map(|id| id.index),
            members,
            policy: meta.policy,
            jobs: u64::from(machine.queue.unfinished_jobs()),
            commands_applied: meta.seq,
            command_batches: meta.batches,
            queue_scans: self.state.feed().scans(),
        })
    }
}
