//! [`NodeCluster`]: the node's implementation of the API's [`Cluster`] trait — writes
//! through the proposer, reads from the applied state after the requested barrier,
//! status from Raft metrics.

use std::time::Duration;

use actix::Addr;
use ferry_coordinator::{BoxFuture, Cluster, ClusterError, ReadAt, Written};
use ferry_protocol::api::{ClusterStatus, MemberInfo};
use ferry_protocol::{NodeId, Proposal, Queue, codec};
use tokio::sync::oneshot;

use crate::proposer::{MAX_BATCH_BYTES, Propose, Proposer};
use crate::raft::{self, Raft, StateMachineStore, read_error, role_name};

/// How long a read waits for its barrier before giving up.
const READ_BARRIER_TIMEOUT: Duration = Duration::from_secs(10);

/// The node as the API sees it.
#[derive(Clone)]
pub(crate) struct NodeCluster {
    /// This node's Raft id.
    pub(crate) node_id: NodeId,
    /// Raft handle, for read barriers and metrics.
    pub(crate) raft: Raft,
    /// The applied state.
    pub(crate) state: StateMachineStore,
    /// The group-commit actor all writes go through.
    pub(crate) proposer: Addr<Proposer>,
}

impl Cluster for NodeCluster {
    fn node_id(&self) -> NodeId {
        self.node_id
    }

    fn write(&self, proposal: Proposal) -> BoxFuture<'_, Result<Written, ClusterError>> {
        Box::pin(async move {
            let bytes = match codec::encode(&proposal) {
                Ok(encoded) if encoded.len() <= MAX_BATCH_BYTES => encoded.len(),
                Ok(encoded) => {
                    return Err(ClusterError::TooLarge {
                        bytes: encoded.len(),
                        limit: MAX_BATCH_BYTES,
                    });
                }
                Err(codec::CodecError::TooLarge { len, .. }) => {
                    return Err(ClusterError::TooLarge { bytes: len, limit: MAX_BATCH_BYTES });
                }
                Err(e) => {
                    return Err(ClusterError::Unavailable(format!(
                        "cannot encode the command: {e}"
                    )));
                }
            };
            let (reply, answer) = oneshot::channel();
            self.proposer
                .send(Propose { proposal, bytes, reply })
                .await
                .map_err(|_| ClusterError::Unavailable("the proposer has stopped".into()))?;
            answer.await.map_err(|_| ClusterError::Unavailable("the write was dropped".into()))?
        })
    }

    fn read_barrier(&self, at: ReadAt) -> BoxFuture<'_, Result<(), ClusterError>> {
        Box::pin(async move {
            match at {
                ReadAt::Local => Ok(()),
                ReadAt::Applied(index) => {
                    if self.state.read().applied.is_some_and(|id| id.index >= index) {
                        return Ok(());
                    }
                    self.raft
                        .wait(Some(READ_BARRIER_TIMEOUT))
                        .applied_index_at_least(Some(index), "read after write")
                        .await
                        .map(drop)
                        .map_err(|e| ClusterError::Unavailable(e.to_string()))
                }
                ReadAt::Linearizable => {
                    match tokio::time::timeout(
                        READ_BARRIER_TIMEOUT,
                        self.raft.ensure_linearizable(),
                    )
                    .await
                    {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e)) => Err(read_error(e)),
                        Err(_) => Err(ClusterError::NoLeader),
                    }
                }
            }
        })
    }

    fn with_queue(&self, f: &mut dyn FnMut(&Queue)) {
        f(&self.state.read().queue);
    }

    fn remove_member(&self, node: NodeId) -> BoxFuture<'_, Result<(), ClusterError>> {
        Box::pin(raft::remove_member(&self.raft, node))
    }

    fn status(&self) -> BoxFuture<'_, Result<ClusterStatus, ClusterError>> {
        Box::pin(async move {
            let metrics = self.raft.metrics().borrow().clone();
            let membership = metrics.membership_config.membership();
            let voters: Vec<NodeId> = membership.voter_ids().collect();
            let members = membership
                .nodes()
                .map(|(id, node)| MemberInfo {
                    node_id: *id,
                    role: if voters.contains(id) { "voter" } else { "learner" }.into(),
                    api_addr: node.api_addr.clone(),
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
            })
        })
    }
}
