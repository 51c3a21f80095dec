//! Removing a member ([`remove_member`]), with the check that the change can commit:
//! the leader asks the voters whether they are up before it proposes the removal of a
//! voter, and refuses at once when too few are ([`removal_blocked`], pure). What does
//! not live here: the Raft steps themselves ([`crate::raft::remove_member`]) and adding
//! members (`membership.rs`).
//!
//! Why: a voter leaves through joint consensus, and from the moment the leader appends
//! the joint configuration every entry (the removal and every write after it) needs a
//! majority of the voters now *and* of those that stay. Removing node 3 from {1, 2, 3}
//! while node 2 is down leaves {1, 2} with one voter up: the joint entry can never
//! commit, the request waits until node 2 returns, and so does every write, although
//! two of three voters were up and the cluster served writes before the request. etcd
//! refuses such a change for the same reason (`--strict-reconfig-check`).

use std::collections::BTreeSet;
use std::time::Duration;

use ferry_coordinator::ClusterError;
use ferry_protocol::NodeId;
use ferry_protocol::peer::Probe;

use super::membership::Members;
use crate::peer::rpc::Peers;
use crate::raft::{self, Raft};

/// How long each voter has to say it is up.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Removes `node` from the membership. On the leader, the removal of a voter is refused
/// with [`ClusterError::MembershipRefused`] (retry once the voters are back) when the
/// voters that answer could not commit it.
pub(super) async fn remove_member(
    raft: &Raft,
    peers: &Peers,
    me: NodeId,
    node: NodeId,
) -> Result<(), ClusterError> {
    let Members { leading, voters, .. } = Members::now(raft);
    // The last voter is refused by the Raft step, saying so.
    if leading && voters.contains(&node) && voters.len() > 1 {
        let up = voters_up(peers, me, &voters).await;
        if let Some(why) = removal_blocked(&voters, node, &up) {
            return Err(ClusterError::MembershipRefused(why));
        }
    }
    raft::remove_member(raft, node).await
}

/// The voters that answer a [`Probe`] within [`PROBE_TIMEOUT`] with a running Raft
/// (a member whose Raft stopped answers "shutdown"; a candidate does not hear the
/// leader). This node counts as up.
async fn voters_up(peers: &Peers, me: NodeId, voters: &BTreeSet<NodeId>) -> BTreeSet<NodeId> {
    let asks = voters.iter().copied().filter(|v| *v != me).map(|voter| async move {
        let probe = peers.call(voter, &Probe, PROBE_TIMEOUT).await;
        let up = probe.is_ok_and(|p| matches!(p.state.as_str(), "leader" | "follower" | "learner"));
        up.then_some(voter)
    });
    let mut up: BTreeSet<NodeId> =
        futures_util::future::join_all(asks).await.into_iter().flatten().collect();
    up.insert(me);
    up
}

/// Why removing voter `node` from `voters` cannot commit while only the voters in `up`
/// are up, or `None` if it can: the joint configuration needs a majority of `voters`
/// and a majority of the voters that stay.
pub(crate) fn removal_blocked(
    voters: &BTreeSet<NodeId>,
    node: NodeId,
    up: &BTreeSet<NodeId>,
) -> Option<String> {
    let staying: BTreeSet<NodeId> = voters.iter().copied().filter(|v| *v != node).collect();
    let majority = |set: &BTreeSet<NodeId>| set.len() / 2 + 1;
    let up_in = |set: &BTreeSet<NodeId>| set.intersection(up).count();
    if up_in(&staying) >= majority(&staying) && up_in(voters) >= majority(voters) {
        return None;
    }
    let down: Vec<NodeId> = voters.difference(up).copied().collect();
    Some(format!(
        "removing node {node} now would stall the cluster: voters {down:?} are down or \
         unreachable, and the change needs {} of the voters {staying:?} that stay and {} of \
         all {voters:?} up to commit (every write would wait with it); bring them back, then \
         retry",
        majority(&staying),
        majority(voters),
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::removal_blocked;

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    #[test]
    fn a_voter_leaves_only_if_a_majority_of_the_old_and_the_new_voters_are_up() {
        let three = set(&[1, 2, 3]);
        assert_eq!(removal_blocked(&three, 3, &three), None, "all up");
        assert_eq!(removal_blocked(&three, 3, &set(&[1, 2])), None, "the leaving one down");
        let blocked = removal_blocked(&three, 3, &set(&[1, 3])).expect("2 of {1, 2} down");
        assert!(blocked.contains("[2]"), "{blocked}");
        assert!(removal_blocked(&three, 3, &set(&[1])).is_some());
        let five = set(&[1, 2, 3, 4, 5]);
        assert_eq!(removal_blocked(&five, 5, &set(&[1, 2, 3])), None);
        assert!(removal_blocked(&five, 5, &set(&[1, 2, 5])).is_some(), "2 of 4 staying");
        // Four voters, the leaving one down: 3 staying up is a majority of them and of 4.
        let four = set(&[1, 2, 3, 4]);
        assert_eq!(removal_blocked(&four, 4, &set(&[1, 2, 3])), None);
        assert!(removal_blocked(&four, 4, &set(&[1, 2])).is_some(), "2 of 4 in the old");
    }
}
