//! [`NodeCluster`]: the node's implementation of the API's [`Cluster`] trait, made of
//! narrow parts, each serving its own peer requests: the replica (writes and read
//! barriers, `replica.rs`), membership (`membership.rs`, `removal.rs`), the cluster status
//! (`status.rs`) and reply reading (`reply.rs`). The node's other components reach the
//! cluster through [`ClusterView`] and the traits of `crate::replica`, never through
//! this module.

mod formats;
mod live;
mod membership;
mod metrics;
mod removal;
mod replica;
mod reply;
mod status;

pub(crate) use self::formats::check as check_formats;
pub(crate) use self::metrics::follow_errors;

use std::sync::Arc;

use actix::Addr;
use ferry_coordinator::bandwidth::{BandwidthPolicy, BandwidthStatus, InvalidPolicy};
use ferry_coordinator::{
    BoxFuture, Cluster, ClusterError, EventStream, ReadAt, SubscribeError, Written,
};
use ferry_protocol::api::ClusterStatus;
use ferry_protocol::event::{EventFilter, StartAt};
use ferry_protocol::peer::FilesOutcome;
use ferry_protocol::{JobId, NodeId, Proposal, Queue};

use self::membership::RaftMembership;
use self::replica::RaftReplica;
use self::reply::Replies;
use self::status::Status;
use crate::peer::liveness::Liveness;
use crate::peer::rpc::{Peers, Router};
use crate::proposer::Proposer;
use crate::raft::{Raft, StateMachineStore};
use crate::replica::{ClusterView, Membership, Replica};
use crate::transfer::Finisher;

/// What the parts are built from.
pub(crate) struct Parts {
    /// This node's Raft id.
    pub(crate) node_id: NodeId,
    /// The Raft handle.
    pub(crate) raft: Raft,
    /// The applied state.
    pub(crate) state: StateMachineStore,
    /// The group-commit actor all writes go through.
    pub(crate) proposer: Addr<Proposer>,
    /// Calls to other members.
    pub(crate) peers: Peers,
    /// Which members answer.
    pub(crate) liveness: Liveness,
    /// Cancelled once Raft stopped on a fatal error ([`crate::raft::stop_token`]).
    pub(crate) stopped: tokio_util::sync::CancellationToken,
    /// The cluster CA certificate, PEM.
    pub(crate) ca_pem: Arc<str>,
    /// Every principal's sandbox: replies are read through it.
    pub(crate) sandboxes: Arc<crate::fs::Sandboxes>,
    /// The node's bandwidth limit of background transfers (its policy is this node's
    /// own, read and changed through the API).
    pub(crate) bandwidth: Arc<crate::transfer::bandwidth::Bandwidth>,
    /// The live progress of the downloads running here (served to other members).
    pub(crate) live: Arc<crate::transfer::live::LiveProgress>,
}

/// The node as the API sees it.
#[derive(Clone)]
pub(crate) struct NodeCluster {
    handle: ClusterView,
    raft: Raft,
    membership: Arc<RaftMembership>,
    status: Arc<Status>,
    replies: Arc<Replies>,
    finisher: Arc<Finisher>,
    ca_pem: Arc<str>,
    bandwidth: Arc<crate::transfer::bandwidth::Bandwidth>,
    /// What the downloads running here received so far.
    live: Arc<crate::transfer::live::LiveProgress>,
    /// What members said of the formats they read.
    formats: Arc<formats::SeenFormats>,
}

impl NodeCluster {
    /// Builds the parts and registers their peer requests on `router`.
    pub(crate) fn new(parts: Parts, router: &Router) -> Self {
        let Parts {
            node_id,
            raft,
            state,
            proposer,
            peers,
            liveness,
            ca_pem,
            sandboxes,
            stopped,
            bandwidth,
            live,
        } = parts;
        let replica = Arc::new(RaftReplica {
            node_id,
            raft: raft.clone(),
            state: state.clone(),
            proposer,
            peers: peers.clone(),
            stopped,
        });
        replica.register(router);
        let membership =
            Arc::new(RaftMembership { node_id, raft: raft.clone(), peers: peers.clone() });
        membership.register(router);
        let status = Arc::new(Status {
            node_id,
            raft: raft.clone(),
            state: state.clone(),
            peers: peers.clone(),
        });
        status.register(router);
        let replies = Arc::new(Replies {
            node_id,
            state: state.clone(),
            sandboxes: sandboxes.clone(),
            peers: peers.clone(),
        });
        replies.register(router);
        formats::register(router);
        live::register(router, live.clone());
        let handle = ClusterView::new(node_id, state, peers, liveness, replica as Arc<dyn Replica>);
        let finisher = Finisher::start(handle.clone(), sandboxes, router);
        let formats = Arc::default();
        Self {
            handle,
            raft,
            membership,
            status,
            replies,
            finisher,
            ca_pem,
            bandwidth,
            live,
            formats,
        }
    }

    /// The handle the node's components use.
    pub(crate) fn handle(&self) -> &ClusterView {
        &self.handle
    }

    /// Complete's and Cancel's work on this node's files, shared with the transfer
    /// engine.
    pub(crate) fn finisher(&self) -> Arc<Finisher> {
        self.finisher.clone()
    }

    /// Growing the cluster and announcing addresses.
    pub(crate) fn membership(&self) -> Arc<dyn Membership> {
        self.membership.clone()
    }
}

impl Cluster for NodeCluster {
    fn node_id(&self) -> NodeId {
        self.handle.node_id
    }

    fn write(&self, proposal: Proposal) -> BoxFuture<'_, Result<Written, ClusterError>> {
        Box::pin(self.handle.write(proposal))
    }

    fn read_barrier(&self, at: ReadAt) -> BoxFuture<'_, Result<(), ClusterError>> {
        Box::pin(self.handle.read_barrier(at))
    }

    fn with_queue(&self, f: &mut dyn FnMut(&Queue)) {
        self.handle.with_queue(f);
    }

    fn remove_member(&self, node: NodeId) -> BoxFuture<'_, Result<(), ClusterError>> {
        let membership = &self.membership;
        Box::pin(removal::remove_member(&self.raft, &membership.peers, membership.node_id, node))
    }

    fn status(&self) -> BoxFuture<'_, Result<ClusterStatus, ClusterError>> {
        Box::pin(self.status.status())
    }

    fn subscribe(
        &self,
        caller: ferry_protocol::Caller,
        filter: EventFilter,
        from: StartAt,
    ) -> BoxFuture<'_, Result<Box<dyn EventStream>, SubscribeError>> {
        Box::pin(async move {
            let subscription = self.handle.state.events().subscribe(caller, filter, from).await?;
            Ok(Box::new(subscription) as Box<dyn EventStream>)
        })
    }

    fn metrics(&self) -> String {
        metrics::render(&self.handle, &self.raft)
    }

    fn cluster_ca(&self) -> String {
        self.ca_pem.to_string()
    }

    fn reply_data(&self, job: JobId) -> BoxFuture<'_, Result<Vec<u8>, ClusterError>> {
        Box::pin(self.replies.reply_data(job))
    }

    fn place_files(&self, job: JobId) -> BoxFuture<'_, Result<FilesOutcome, ClusterError>> {
        Box::pin(self.finisher.place(job))
    }

    fn finished_files(
        &self,
        job: JobId,
        applied: u64,
    ) -> BoxFuture<'_, Result<FilesOutcome, ClusterError>> {
        Box::pin(self.finisher.finished(job, applied))
    }

    fn live_progress(
        &self,
        jobs: Vec<(JobId, NodeId)>,
    ) -> BoxFuture<'_, Vec<ferry_protocol::peer::LiveFiles>> {
        Box::pin(async move { live::gather(&self.handle, &self.live, jobs).await })
    }

    fn check_format(&self, version: u8) -> BoxFuture<'_, Result<(), ClusterError>> {
        Box::pin(formats::check(self.handle.clone(), self.formats.clone(), version))
    }

    fn bandwidth(&self) -> BandwidthStatus {
        self.bandwidth.status(self.handle.node_id)
    }

    fn set_bandwidth(&self, policy: BandwidthPolicy) -> Result<BandwidthStatus, InvalidPolicy> {
        self.bandwidth.set_policy(policy)?;
        Ok(self.bandwidth())
    }
}
