//! [`RaftReplica`]: the [`Replica`] of this node on openraft. Writes go through the
//! group-commit proposer when this node leads, else are forwarded to the leader
//! ([`Write`]); a linearizable read on a follower asks the leader for its read index
//! ([`ReadIndex`]) and waits until it applied that far. Serves both requests for other
//! members.

use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use ferry_coordinator::{BoxFuture, ClusterError, ReadAt, Written};
use ferry_protocol::peer::{ReadIndex, Write};
use ferry_protocol::{NodeId, Proposal, codec};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::peer::rpc::{Peers, Router};
use crate::proposer::{MAX_BATCH_BYTES, Propose, Proposer};
use crate::raft::{Raft, RaftMetrics, StateMachineStore, read_error};
use crate::replica::Replica;

/// How long one forwarded write or read index may take before the leader is presumed
/// gone (a dead peer does not answer).
pub(super) const FORWARD_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long a write with a request id keeps looking for a leader.
const FORWARD_DEADLINE: Duration = Duration::from_secs(10);
/// How long a write may wait to be committed.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a read waits for its barrier before giving up.
const READ_BARRIER_TIMEOUT: Duration = Duration::from_secs(10);

/// This node's replica: Raft, the applied state and the proposer.
pub(crate) struct RaftReplica {
    /// This node's Raft id.
    pub(super) node_id: NodeId,
    /// Raft handle, for read barriers and metrics.
    pub(super) raft: Raft,
    /// The applied state.
    pub(super) state: StateMachineStore,
    /// The group-commit actor all writes go through.
    pub(super) proposer: Addr<Proposer>,
    /// Writes and read indexes go to the leader through it.
    pub(super) peers: Peers,
    /// Cancelled once Raft stopped on a fatal error (a failed disk): waiting writes
    /// are answered at once.
    pub(super) stopped: CancellationToken,
}

impl RaftReplica {
    /// Serves [`Write`] and [`ReadIndex`] for other members.
    pub(super) fn register(self: &Arc<Self>, router: &Router) {
        let replica = self.clone();
        router.add_handler::<Write, _, _>(move |_, Write(proposal)| {
            let replica = replica.clone();
            async move { replica.write_here(proposal).await }
        });
        let replica = self.clone();
        router.add_handler::<ReadIndex, _, _>(move |_, ReadIndex| {
            let replica = replica.clone();
            async move { replica.local_read_index().await }
        });
    }

    /// Proposes through this node's proposer (it must lead).
    async fn write_here(&self, proposal: Proposal) -> Result<Written, ClusterError> {
        // Measured, not encoded: the log store encodes the batch once.
        let bytes = match codec::encoded_len(&proposal) {
            Ok(len) if len <= MAX_BATCH_BYTES => len,
            Ok(len) => return Err(ClusterError::TooLarge { bytes: len, limit: MAX_BATCH_BYTES }),
            Err(e) => {
                return Err(ClusterError::Unavailable(format!("cannot encode the command: {e}")));
            }
        };
        let (reply, answer) = oneshot::channel();
        self.proposer
            .send(Propose { proposal, bytes, reply })
            .await
            .map_err(|_| ClusterError::Unavailable("the proposer has stopped".into()))?;
        // A leader cut off from its quorum cannot commit, and one whose storage failed
        // (a full disk) never will: answer (503) rather than hang.
        tokio::select! {
            answered = tokio::time::timeout(COMMIT_TIMEOUT, answer) => match answered {
                Ok(answer) => {
                    answer.map_err(|_| ClusterError::Unavailable("the write was dropped".into()))?
                }
                Err(_) => Err(ClusterError::Unavailable(format!(
                    "the write was not committed within {COMMIT_TIMEOUT:?}; the cluster may have lost its quorum"
                ))),
            },
            () = self.stopped.cancelled() => Err(ClusterError::Unavailable(
                "this node stopped on a storage or Raft failure; whether the write was recorded is \
                 unknown: send it again (with the same Idempotency-Key) to another node"
                    .into(),
            )),
        }
    }

    /// This node's read index, if it leads.
    async fn local_read_index(&self) -> Result<u64, ClusterError> {
        match self.raft.ensure_linearizable().await {
            Ok(log_id) => Ok(log_id.map_or(0, |id| id.index)),
            Err(e) => Err(read_error(e)),
        }
    }

    /// The index a linearizable read must wait for: the leader's read index (asked over
    /// the peer link when another node leads).
    async fn read_index(&self) -> Result<u64, ClusterError> {
        match self.local_read_index().await {
            Err(ClusterError::NotLeader { leader }) if leader != self.node_id => {
                Ok(self.peers.call(leader, &ReadIndex, FORWARD_TIMEOUT).await?)
            }
            other => other,
        }
    }

    /// Waits until index `index` is applied here.
    async fn applied_at_least(&self, index: u64) -> Result<(), ClusterError> {
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

    /// Writes `proposal` at the leader, trying again while leadership moves (see
    /// [`Replica::write`]).
    async fn write_anywhere(&self, proposal: Proposal) -> Result<Written, ClusterError> {
        // Writes go to the leader: here if this node leads, else over the peer link.
        // While leadership moves (the leader died, an election runs), a write with a
        // request id is tried again at whoever leads next: apply answers a repeat from
        // its request table, so nothing is applied twice. Without a request id the
        // first failure is the answer.
        let deadline = tokio::time::Instant::now() + FORWARD_DEADLINE;
        loop {
            let leader = self.leader();
            let attempt = match leader {
                Some(leader) if leader != self.node_id => self
                    .peers
                    .call(leader, &Write(proposal.clone()), FORWARD_TIMEOUT)
                    .await
                    .map_err(ClusterError::from),
                _ => self.write_here(proposal.clone()).await,
            };
            if matches!(attempt, Err(ClusterError::Unavailable(_)))
                && let Some(silent) = leader.filter(|l| *l != self.node_id)
            {
                // The leader did not answer: it is probably gone. Wait for the election
                // rather than asking it again.
                let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
                let _ = self
                    .raft
                    .wait(Some(wait.min(Duration::from_secs(3))))
                    .metrics(|m| m.current_leader != Some(silent), "a new leader")
                    .await;
            }
            let retry = matches!(
                attempt,
                Err(ClusterError::NotLeader { .. }
                    | ClusterError::NoLeader
                    | ClusterError::Unavailable(_))
            ) && proposal.request_id.is_some()
                && tokio::time::Instant::now() < deadline
                // A node whose own Raft stopped (a failed disk) serves nothing any more.
                && !self.stopped.is_cancelled();
            if !retry {
                return attempt;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Replica for RaftReplica {
    fn write(&self, proposal: Proposal) -> BoxFuture<'_, Result<Written, ClusterError>> {
        Box::pin(self.write_anywhere(proposal))
    }

    fn read_barrier(&self, at: ReadAt) -> BoxFuture<'_, Result<(), ClusterError>> {
        Box::pin(async move {
            match at {
                ReadAt::Local => Ok(()),
                ReadAt::Applied(index) => self.applied_at_least(index).await,
                ReadAt::Linearizable => {
                    match tokio::time::timeout(READ_BARRIER_TIMEOUT, self.read_index()).await {
                        Ok(Ok(index)) => self.applied_at_least(index).await,
                        Ok(Err(e)) => Err(e),
                        Err(_) => Err(ClusterError::NoLeader),
                    }
                }
            }
        })
    }

    fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    fn members(&self) -> Vec<NodeId> {
        let metrics = self.raft.metrics().borrow().clone();
        metrics.membership_config.membership().nodes().map(|(id, _)| *id).collect()
    }

    fn metrics(&self) -> watch::Receiver<RaftMetrics> {
        self.raft.metrics()
    }
}
