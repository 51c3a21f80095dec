//! What the node's components (the transfer engine, the upload server, the scheduler,
//! the notify runner, admission) need of the cluster, as narrow traits: [`Replica`]
//! (writes through the leader, read barriers, who leads, who is a member) and
//! [`Membership`] (adding members, announcing this node's addresses). They hold a
//! [`ClusterView`]: this node's id, the applied state, the replica behind its trait,
//! typed calls to other members and their liveness.
//!
//! The implementation is `cluster/`, which these components do not import: it sits
//! above them (it serves the API and reads reply files through the transfer engine).

use std::sync::Arc;
use std::time::Duration;

use ferry_coordinator::{BoxFuture, ClusterError, ReadAt, Written};
use ferry_protocol::peer::{NodeAddr, PeerRpc};
use ferry_protocol::{NodeId, Proposal, Queue};
use tokio::sync::watch;

use crate::error::Result;
use crate::peer::liveness::Liveness;
use crate::peer::rpc::Peers;
use crate::raft::{RaftMetrics, StateMachineStore};

/// This node's replica of the queue, as its components use it.
pub(crate) trait Replica: Send + Sync + 'static {
    /// Writes `proposal` through the leader (this node, or forwarded to it) and answers
    /// what apply returned and at which index.
    fn write(&self, proposal: Proposal) -> BoxFuture<'_, Result<Written, ClusterError>>;

    /// Waits until a read at `at` may be served from the applied state here.
    fn read_barrier(&self, at: ReadAt) -> BoxFuture<'_, Result<(), ClusterError>>;

    /// The leader this node knows of.
    fn leader(&self) -> Option<NodeId>;

    /// The members of the cluster, voters and learners, this node included.
    fn members(&self) -> Vec<NodeId>;

    /// Raft's metrics, published on every change (leader, applied index, membership).
    fn metrics(&self) -> watch::Receiver<RaftMetrics>;
}

/// Growing the cluster and keeping members' addresses current.
pub(crate) trait Membership: Send + Sync + 'static {
    /// Adds `node` as a learner (through the leader) and, once it caught up, promotes
    /// it to voter while there are fewer than `voters`.
    fn add_member(
        &self,
        node: NodeId,
        addr: NodeAddr,
        voters: u32,
    ) -> BoxFuture<'_, Result<(), ClusterError>>;

    /// After a restart on new addresses, tells the members until the leader recorded
    /// them (it cannot reach this node at the old ones).
    fn announce_address(&self, me: NodeAddr) -> BoxFuture<'_, ()>;

    /// On the leader: records `me` as this node's address if it changed (true if so).
    fn record_own_address(&self, me: NodeAddr) -> BoxFuture<'_, Result<bool, ClusterError>>;
}

/// The cluster as a component of this node reaches it (cheap to clone).
#[derive(Clone)]
pub(crate) struct ClusterView {
    /// This node's Raft id.
    pub(crate) node_id: NodeId,
    /// The applied state (read it under its lock, briefly).
    pub(crate) state: StateMachineStore,
    /// Typed calls to other members.
    pub(crate) peers: Peers,
    /// Which members answer pings.
    pub(crate) liveness: Liveness,
    /// Writes and read barriers.
    replica: Arc<dyn Replica>,
}

impl ClusterView {
    /// A handle on `replica`, whose applied state is `state`.
    pub(crate) fn new(
        node_id: NodeId,
        state: StateMachineStore,
        peers: Peers,
        liveness: Liveness,
        replica: Arc<dyn Replica>,
    ) -> Self {
        Self { node_id, state, peers, liveness, replica }
    }

    /// See [`Replica::write`].
    pub(crate) async fn write(&self, proposal: Proposal) -> Result<Written, ClusterError> {
        self.replica.write(proposal).await
    }

    /// See [`Replica::read_barrier`].
    pub(crate) async fn read_barrier(&self, at: ReadAt) -> Result<(), ClusterError> {
        self.replica.read_barrier(at).await
    }

    /// Runs `f` on the applied queue.
    pub(crate) fn with_queue(&self, f: &mut dyn FnMut(&Queue)) {
        f(&self.state.read().queue);
    }

    /// See [`Replica::members`].
    pub(crate) fn member_ids(&self) -> Vec<NodeId> {
        self.replica.members()
    }

    /// See [`Replica::metrics`].
    pub(crate) fn metrics(&self) -> watch::Receiver<RaftMetrics> {
        self.replica.metrics()
    }

    /// Sends `request` to member `node` (see [`Peers::call`]).
    pub(crate) async fn call<R: PeerRpc>(
        &self,
        node: NodeId,
        request: &R,
        timeout: Duration,
    ) -> Result<R::Answer> {
        self.peers.call(node, request, timeout).await
    }

    /// As [`call`](Self::call), telling `near` when the answer is a round trip from its
    /// end (see [`Peers::call_near`]).
    pub(crate) async fn call_near<R: PeerRpc>(
        &self,
        node: NodeId,
        request: &R,
        timeout: Duration,
        near: crate::peer::endpoint::NearEnd,
    ) -> Result<R::Answer> {
        self.peers.call_near(node, request, timeout, near).await
    }
}
