//! [`RaftMembership`]: growing the cluster and keeping members' addresses current, on
//! openraft. A node admitted by any member is added as a learner by the leader
//! ([`AddMember`], forwarded there) and promoted to voter once it caught up
//! ([`promotion`]); a member that restarted on new addresses announces them until the
//! leader recorded them ([`UpdateAddress`]). Serves both requests for other members.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use ferry_coordinator::{BoxFuture, ClusterError};
use ferry_protocol::NodeId;
use ferry_protocol::peer::{AddMember, NodeAddr, UpdateAddress};

use super::replica::FORWARD_TIMEOUT;
use crate::peer::rpc::{Peers, Router};
use crate::raft::{self, Raft};
use crate::replica::Membership;

/// This node's side of membership changes.
pub(crate) struct RaftMembership {
    /// This node's Raft id.
    pub(super) node_id: NodeId,
    /// Raft handle: membership changes and the current membership.
    pub(super) raft: Raft,
    /// Requests go to the leader (and announcements to every member) through it.
    pub(super) peers: Peers,
}

impl RaftMembership {
    /// Serves [`AddMember`] and [`UpdateAddress`] (on the leader; others refuse with
    /// [`ClusterError::NoLeader`]).
    pub(super) fn register(self: &Arc<Self>, router: &Router) {
        let membership = self.clone();
        router.add_handler::<AddMember, _, _>(move |_, request| {
            let membership = membership.clone();
            async move {
                if !membership.leading() {
                    return Err(ClusterError::NoLeader);
                }
                membership.add_member_here(request.node, request.addr, request.voters).await
            }
        });
        let membership = self.clone();
        router.add_handler::<UpdateAddress, _, _>(move |from, UpdateAddress(addr)| {
            let membership = membership.clone();
            async move {
                if !membership.leading() {
                    return Err(ClusterError::NoLeader);
                }
                raft::refresh_address(&membership.raft, from, addr).await
            }
        });
    }

    fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    fn leading(&self) -> bool {
        self.leader() == Some(self.node_id)
    }

    /// [`Membership::add_member`] on the leader.
    async fn add_member_here(
        &self,
        node: NodeId,
        addr: NodeAddr,
        voters: u32,
    ) -> Result<(), ClusterError> {
        self.raft.add_learner(node, addr.clone(), false).await.map_err(|e| match e {
            openraft::error::RaftError::APIError(
                openraft::error::ClientWriteError::ForwardToLeader(f),
            ) => f
                .leader_id
                .map_or(ClusterError::NoLeader, |leader| ClusterError::NotLeader { leader }),
            other => ClusterError::MembershipRefused(other.to_string()),
        })?;
        let raft = self.raft.clone();
        tokio::spawn(async move {
            // Promote once it has caught up, while the cluster wants more voters. Nodes
            // that join together race: a promotion refused while another membership
            // change is under way is tried again (it was given up, and the node stayed
            // a learner for good).
            let mut delay = Duration::from_millis(250);
            for _ in 0..PROMOTE_ATTEMPTS {
                match promote(&raft, node, &addr, voters).await {
                    Ok(()) => return,
                    Err(e) => tracing::info!(node, error = %e, "cannot promote the new node yet"),
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            tracing::warn!(node, "gave up promoting the new node to voter");
        });
        Ok(())
    }

    /// See [`Membership::announce_address`].
    async fn announce(&self, me: NodeAddr) {
        for _ in 0..120 {
            let (member, known, others) = {
                let metrics = self.raft.metrics().borrow().clone();
                let membership = metrics.membership_config.membership();
                // Only an applied membership counts: a restarted leader may append its
                // new address to its own log, an entry the real leader then truncates.
                let applied = metrics.membership_config.log_id() <= &metrics.last_applied;
                let known = membership.get_node(&self.node_id).cloned();
                let member = known.is_some();
                let known = known.filter(|_| applied);
                let others: Vec<NodeId> = membership
                    .nodes()
                    .map(|(id, _)| *id)
                    .filter(|id| *id != self.node_id)
                    .collect();
                (member, known, others)
            };
            if known.as_ref() == Some(&me) {
                return;
            }
            if !member || others.is_empty() {
                // Raft has not loaded the membership yet (or this node is alone).
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            for node in others {
                match self.peers.call(node, &UpdateAddress(me.clone()), FORWARD_TIMEOUT).await {
                    Ok(_) => {
                        tracing::info!(
                            leader = node,
                            "the leader recorded this node's new address"
                        );
                        return;
                    }
                    Err(e) => tracing::debug!(node, error = %e, "could not announce the address"),
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl Membership for RaftMembership {
    fn add_member(
        &self,
        node: NodeId,
        addr: NodeAddr,
        voters: u32,
    ) -> BoxFuture<'_, Result<(), ClusterError>> {
        Box::pin(async move {
            match self.leader() {
                Some(leader) if leader != self.node_id => Ok(self
                    .peers
                    .call(leader, &AddMember { node, addr, voters }, FORWARD_TIMEOUT)
                    .await?),
                _ => self.add_member_here(node, addr, voters).await,
            }
        })
    }

    fn announce_address(&self, me: NodeAddr) -> BoxFuture<'_, ()> {
        Box::pin(self.announce(me))
    }

    fn record_own_address(&self, me: NodeAddr) -> BoxFuture<'_, Result<bool, ClusterError>> {
        Box::pin(raft::refresh_address(&self.raft, self.node_id, me))
    }
}

/// Times a new node's promotion is tried (the last ones 5 s apart: about 2 minutes).
const PROMOTE_ATTEMPTS: u32 = 28;

/// The membership as this node's Raft sees it now.
pub(super) struct Members {
    /// This node leads.
    pub(super) leading: bool,
    /// The voters.
    pub(super) voters: BTreeSet<NodeId>,
    /// The learners.
    pub(super) learners: Vec<NodeId>,
}

impl Members {
    /// The membership in `raft`'s latest metrics.
    pub(super) fn now(raft: &Raft) -> Self {
        let metrics = raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        Self {
            leading: metrics.state.is_leader(),
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
        }
    }

    /// This node leads and `node` is a learner: its promotion is still this node's to do.
    fn promotes(&self, node: NodeId) -> bool {
        self.leading && self.learners.contains(&node)
    }
}

/// Waits for `node` to catch up, then makes it a voter if the cluster wants more
/// voters. Done (nothing to do) once this node no longer leads, or `node` is no
/// longer a learner; an error if a step was refused (another membership change under
/// way, say).
async fn promote(raft: &Raft, node: NodeId, addr: &NodeAddr, voters: u32) -> Result<(), String> {
    if !Members::now(raft).promotes(node) {
        return Ok(());
    }
    raft.add_learner(node, addr.clone(), true).await.map_err(|e| e.to_string())?;
    let members = Members::now(raft);
    if !members.promotes(node) {
        return Ok(());
    }
    let others: Vec<NodeId> = members.learners.into_iter().filter(|id| *id != node).collect();
    let Some(next) = promotion(&members.voters, node, &others, voters as usize) else {
        return Ok(());
    };
    raft.change_membership(next.clone(), true).await.map_err(|e| e.to_string())?;
    tracing::info!(?next, "promoted to voters");
    Ok(())
}

/// The voters after `node` caught up, or `None` to leave it a learner. The cluster grows
/// one voter at a time up to three, then two at a time (the new node and a waiting
/// learner) up to `max`: an even number of voters tolerates no more failures than one
/// fewer, so past three the count stays odd.
fn promotion(
    current: &BTreeSet<NodeId>,
    node: NodeId,
    learners: &[NodeId],
    max: usize,
) -> Option<BTreeSet<NodeId>> {
    let mut next = current.clone();
    if current.len() < 3.min(max) {
        next.insert(node);
    } else if current.len() + 2 <= max {
        next.insert(node);
        next.insert(*learners.first()?);
    }
    (next != *current).then_some(next)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::promotion;

    #[test]
    fn voters_grow_to_three_then_in_pairs_to_the_maximum() {
        let set = |ids: &[u64]| ids.iter().copied().collect::<BTreeSet<u64>>();
        assert_eq!(promotion(&set(&[1]), 2, &[], 5), Some(set(&[1, 2])));
        assert_eq!(promotion(&set(&[1, 2]), 3, &[], 5), Some(set(&[1, 2, 3])));
        assert_eq!(promotion(&set(&[1, 2, 3]), 4, &[], 5), None, "a fourth waits");
        assert_eq!(promotion(&set(&[1, 2, 3]), 5, &[4], 5), Some(set(&[1, 2, 3, 4, 5])));
        assert_eq!(promotion(&set(&[1, 2, 3, 4, 5]), 7, &[6], 5), None, "at the maximum");
        assert_eq!(promotion(&set(&[1, 2, 3]), 5, &[4], 3), None, "max 3");
        assert_eq!(promotion(&set(&[1]), 2, &[], 1), None, "max 1");
    }
}
