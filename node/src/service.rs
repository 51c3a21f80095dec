//! [`NodeCluster`]: the node's implementation of the API's [`Cluster`] trait — writes
//! through the proposer (forwarded to the leader when another node leads), reads from
//! the applied state after the requested barrier (a follower asks the leader for its
//! read index), status from Raft metrics; and [`peer_handler`], which serves the same
//! for other members.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use ferry_coordinator::{
    BoxFuture, Cluster, ClusterError, EventStream, ReadAt, SubscribeError, Written,
};
use ferry_protocol::api::{ClusterStatus, MemberInfo, MemberProbe};
use ferry_protocol::codec::ByteBuf;
use ferry_protocol::event::{EventFilter, StartAt};
use ferry_protocol::job::MAX_REPLY_DATA;
use ferry_protocol::{JobId, JobState, NodeId, Proposal, Queue, codec};
use tokio::sync::oneshot;

use crate::peer::endpoint::{Handler, PeerEndpoint, Served};
use crate::peer::requests::PeerRequest;
use crate::proposer::{MAX_BATCH_BYTES, Propose, Proposer};
use crate::raft::{self, NodeAddr, Raft, StateMachineStore, read_error, role_name, serve_raft};

/// How long one forwarded write or read index may take before the leader is presumed
/// gone (a dead peer does not answer).
const FORWARD_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long a write with a request id keeps looking for a leader.
const FORWARD_DEADLINE: Duration = Duration::from_secs(10);
/// How long a write may wait to be committed.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the cluster status waits for each member to describe itself.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
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
    /// The peer endpoint: writes and read indexes go to the leader through it.
    pub(crate) peers: Arc<PeerEndpoint>,
    /// The cluster CA certificate, PEM.
    pub(crate) ca_pem: Arc<str>,
    /// Where this node keeps the upload pieces it received.
    pub(crate) upload_pieces: Arc<std::path::Path>,
    /// What this node needs to fetch pieces for other members (set once its transfer
    /// engine is configured; until then it refuses).
    pub(crate) helper: Arc<std::sync::OnceLock<crate::transfer::helper::HelperContext>>,
    /// Every principal's sandbox: replies are read through it.
    pub(crate) sandboxes: Arc<crate::fs::Sandboxes>,
    /// How this node serves its copies to peers (set with the transfer engine).
    pub(crate) peer_cache: Arc<std::sync::OnceLock<crate::transfer::peer_cache::Serving>>,
}

impl NodeCluster {
    /// Proposes through this node's proposer (it must lead).
    async fn write_here(&self, proposal: Proposal) -> Result<Written, ClusterError> {
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
                return Err(ClusterError::Unavailable(format!("cannot encode the command: {e}")));
            }
        };
        let (reply, answer) = oneshot::channel();
        self.proposer
            .send(Propose { proposal, bytes, reply })
            .await
            .map_err(|_| ClusterError::Unavailable("the proposer has stopped".into()))?;
        // A leader cut off from its quorum cannot commit: answer (503) rather than hang.
        match tokio::time::timeout(COMMIT_TIMEOUT, answer).await {
            Ok(answer) => {
                answer.map_err(|_| ClusterError::Unavailable("the write was dropped".into()))?
            }
            Err(_) => Err(ClusterError::Unavailable(format!(
                "the write was not committed within {COMMIT_TIMEOUT:?}; the cluster may have lost its quorum"
            ))),
        }
    }

    /// The leader this node knows of.
    fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// The peer address of member `node`.
    fn peer_addr(&self, node: NodeId) -> Result<SocketAddr, ClusterError> {
        let metrics = self.raft.metrics().borrow().clone();
        let addr =
            metrics.membership_config.membership().get_node(&node).map(|n| n.peer_addr.clone());
        addr.and_then(|a| a.parse().ok()).ok_or_else(|| {
            ClusterError::Unavailable(format!("node {node} has no usable peer address"))
        })
    }

    /// Asks `leader` over the peer link and decodes its answer.
    async fn ask<T: serde::de::DeserializeOwned>(
        &self,
        leader: NodeId,
        request: &PeerRequest,
    ) -> Result<T, ClusterError> {
        self.ask_within(leader, request, FORWARD_TIMEOUT).await
    }

    /// Sends `request` to member `node` and decodes its answer, waiting `timeout` at most.
    pub(crate) async fn ask_within<T: serde::de::DeserializeOwned>(
        &self,
        node: NodeId,
        request: &PeerRequest,
        timeout: Duration,
    ) -> Result<T, ClusterError> {
        let addr = self.peer_addr(node)?;
        let body = codec::encode(request).map_err(|e| ClusterError::Unavailable(e.to_string()))?;
        let answer = self
            .peers
            .call(node, addr, body, timeout)
            .await
            .map_err(|e| ClusterError::Unavailable(format!("cannot reach node {node}: {e}")))?;
        let decoded: Result<T, ClusterError> =
            codec::decode(&answer).map_err(|e| ClusterError::Unavailable(e.to_string()))?;
        decoded
    }

    /// Adds `node` as a learner (on the leader: here, or asked over the peer link) and,
    /// once it caught up, promotes it to voter while there are fewer than `voters`.
    pub(crate) async fn add_member(
        &self,
        node: NodeId,
        addr: NodeAddr,
        voters: usize,
    ) -> Result<(), ClusterError> {
        match self.leader() {
            Some(leader) if leader != self.node_id => {
                self.ask(leader, &PeerRequest::AddMember { node, addr, voters }).await
            }
            _ => self.add_member_here(node, addr, voters).await,
        }
    }

    /// [`add_member`](Self::add_member) on the leader.
    async fn add_member_here(
        &self,
        node: NodeId,
        addr: NodeAddr,
        voters: usize,
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
            // Promote once it has caught up, while the cluster wants more voters.
            if let Err(e) = raft.add_learner(node, addr, true).await {
                tracing::warn!(node, error = %e, "the new node did not catch up");
                return;
            }
            let (current, learners) = {
                let metrics = raft.metrics().borrow().clone();
                let membership = metrics.membership_config.membership();
                let current: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
                let learners: Vec<NodeId> =
                    membership.learner_ids().filter(|id| *id != node).collect();
                (current, learners)
            };
            let Some(next) = promotion(&current, node, &learners, voters) else { return };
            match raft.change_membership(next.clone(), true).await {
                Ok(_) => tracing::info!(?next, "promoted to voters"),
                Err(e) => tracing::warn!(node, error = %e, "cannot promote to voter"),
            }
        });
        Ok(())
    }

    /// Members of the cluster, voters and learners.
    pub(crate) fn member_ids(&self) -> Vec<NodeId> {
        let metrics = self.raft.metrics().borrow().clone();
        metrics.membership_config.membership().nodes().map(|(id, _)| *id).collect()
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

    /// Asks every other member for its probe at once, each bounded by [`PROBE_TIMEOUT`];
    /// `None` for a member that did not answer.
    async fn probe_members(&self, members: Vec<NodeId>) -> Vec<(NodeId, Option<MemberProbe>)> {
        let mut asked = tokio::task::JoinSet::new();
        for node in members {
            let cluster = self.clone();
            asked.spawn(async move {
                if node == cluster.node_id {
                    return (node, Some(cluster.probe()));
                }
                let answer = tokio::time::timeout(
                    PROBE_TIMEOUT,
                    cluster.ask::<MemberProbe>(node, &PeerRequest::Probe),
                )
                .await;
                (node, answer.ok().and_then(Result::ok))
            });
        }
        let mut probes = Vec::new();
        while let Some(done) = asked.join_next().await {
            probes.extend(done.ok());
        }
        probes
    }

    /// Bytes of an upload piece held by `node` (see [`PeerRequest::UploadPiece`]).
    pub(crate) async fn fetch_piece(
        &self,
        node: NodeId,
        session: &str,
        offset: u64,
        from: u64,
        len: u32,
    ) -> Result<Vec<u8>, ClusterError> {
        let request = PeerRequest::UploadPiece { session: session.to_owned(), offset, from, len };
        self.ask::<ByteBuf>(node, &request).await.map(ByteBuf::into_vec)
    }

    /// The first bytes of job `job`'s reply, read here (this is its home node).
    async fn local_reply_data(&self, job: JobId) -> Result<Vec<u8>, ClusterError> {
        let (owner, paths) = {
            let machine = self.state.read();
            let job = machine
                .queue
                .job(&job)
                .ok_or_else(|| ClusterError::Unavailable(format!("job {job} is not here")))?;
            if job.home_node != self.node_id {
                return Err(ClusterError::Unavailable(format!(
                    "job {} lives on node {}",
                    job.id, job.home_node
                )));
            }
            // Complete renames the temporary file: before it is recorded, either may hold it.
            let paths = [job.reply_temporary(), job.reply_path()];
            let paths = if job.state == JobState::Acknowledged {
                [paths[1].clone(), paths[0].clone()]
            } else {
                paths
            };
            (job.owner.clone(), paths)
        };
        let [Some(first), Some(second)] = paths else {
            return Err(ClusterError::Unavailable("the job has no reply".into()));
        };
        let sandboxes = self.sandboxes.clone();
        let read = tokio::task::spawn_blocking(move || {
            let paths = vec![first.into(), second.into()];
            crate::transfer::read_start(&sandboxes, &owner, paths, MAX_REPLY_DATA + 1)
        })
        .await;
        match read {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(e)) => Err(ClusterError::Unavailable(format!("the reply file: {e}"))),
            Err(e) => Err(ClusterError::Unavailable(e.to_string())),
        }
    }

    /// True if `node` answers a ping.
    pub(crate) async fn ping(&self, node: NodeId) -> bool {
        self.ask::<()>(node, &PeerRequest::Ping).await.is_ok()
    }

    /// After a restart on new addresses, tells the members until the leader has
    /// recorded them (it cannot reach this node at the old ones).
    pub(crate) async fn announce_address(&self, me: NodeAddr) {
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
                let asked: Result<bool, ClusterError> =
                    self.ask(node, &PeerRequest::UpdateAddress(me.clone())).await;
                match asked {
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

    /// Forwards a write to the leader.
    async fn forward_write(
        &self,
        leader: NodeId,
        proposal: Proposal,
    ) -> Result<Written, ClusterError> {
        self.ask(leader, &PeerRequest::Write(Box::new(proposal))).await
    }

    /// The index a linearizable read must wait for: the leader's read index (ReadIndex,
    /// asked over the peer link when another node leads).
    async fn read_index(&self) -> Result<u64, ClusterError> {
        match self.raft.ensure_linearizable().await {
            Ok(log_id) => Ok(log_id.map_or(0, |id| id.index)),
            Err(e) => match read_error(e) {
                ClusterError::NotLeader { leader } if leader != self.node_id => {
                    self.ask(leader, &PeerRequest::ReadIndex).await
                }
                other => Err(other),
            },
        }
    }
}

/// The voters after `node` caught up, or `None` to leave it a learner. The cluster grows
/// one voter at a time up to three, then two at a time (the new node and a waiting
/// learner) up to `max`: an even number of voters tolerates no more failures than one
/// fewer, so past three the count stays odd.
fn promotion(
    current: &std::collections::BTreeSet<NodeId>,
    node: NodeId,
    learners: &[NodeId],
    max: usize,
) -> Option<std::collections::BTreeSet<NodeId>> {
    let mut next = current.clone();
    if current.len() < 3.min(max) {
        next.insert(node);
    } else if current.len() + 2 <= max {
        next.insert(node);
        next.insert(*learners.first()?);
    }
    (next != *current).then_some(next)
}

/// Serves the requests of other members: Raft RPCs, forwarded writes, read indexes.
pub(crate) fn peer_handler(cluster: NodeCluster) -> Handler {
    Arc::new(move |from: NodeId, body: Vec<u8>| {
        let cluster = cluster.clone();
        Box::pin(async move {
            let bytes = match codec::decode::<PeerRequest>(&body) {
                Ok(PeerRequest::Raft(rpc)) => serve_raft(&cluster.raft, from, &rpc).await,
                Ok(PeerRequest::Write(proposal)) => {
                    let written = cluster.write_here(*proposal).await;
                    codec::encode(&written).unwrap_or_default()
                }
                Ok(PeerRequest::AddMember { node, addr, voters }) => {
                    let added = if cluster.leader() == Some(cluster.node_id) {
                        cluster.add_member_here(node, addr, voters).await
                    } else {
                        Err(ClusterError::NoLeader)
                    };
                    codec::encode(&added).unwrap_or_default()
                }
                Ok(PeerRequest::Ping) => {
                    codec::encode(&Ok::<(), ClusterError>(())).unwrap_or_default()
                }
                Ok(PeerRequest::UpdateAddress(addr)) => {
                    let leading = cluster.leader() == Some(cluster.node_id);
                    let answer = if leading {
                        raft::refresh_address(&cluster.raft, from, addr)
                            .await
                            .map_err(ClusterError::Unavailable)
                    } else {
                        Err(ClusterError::NoLeader)
                    };
                    codec::encode(&answer).unwrap_or_default()
                }
                Ok(PeerRequest::UploadPiece { session, offset, from, len }) => {
                    let pieces = cluster.upload_pieces.clone();
                    let read = tokio::task::spawn_blocking(move || {
                        crate::upload_server::read_piece(&pieces, &session, offset, from, len)
                    })
                    .await;
                    let answer = match read {
                        Ok(Ok(bytes)) => Ok(ByteBuf::from(bytes)),
                        Ok(Err(e)) => Err(ClusterError::Unavailable(format!("upload piece: {e}"))),
                        Err(e) => Err(ClusterError::Unavailable(e.to_string())),
                    };
                    codec::encode(&answer).unwrap_or_default()
                }
                Ok(PeerRequest::FetchChunk(request)) => {
                    let answer = match cluster.helper.get() {
                        Some(context) => {
                            Ok(crate::transfer::helper::serve(&cluster, context, *request).await)
                        }
                        None => Err(ClusterError::Unavailable("not ready to help yet".into())),
                    };
                    codec::encode(&answer).unwrap_or_default()
                }
                Ok(PeerRequest::PeerCopy(request)) => {
                    let Some(serving) = cluster.peer_cache.get() else {
                        let refused: Result<crate::transfer::peer_cache::CopyAnswer, _> =
                            Err(ClusterError::Unavailable("not serving copies yet".into()));
                        return codec::encode(&refused).unwrap_or_default().into();
                    };
                    // The serving permit is held until the answer is written.
                    let (answer, hold) =
                        crate::transfer::peer_cache::serve(&cluster, serving, &request).await;
                    let bytes = codec::encode(&Ok::<_, ClusterError>(answer)).unwrap_or_default();
                    return Served { bytes, hold };
                }
                Ok(PeerRequest::ReplyData { job }) => {
                    codec::encode(&cluster.local_reply_data(job).await.map(ByteBuf::from))
                        .unwrap_or_default()
                }
                Ok(PeerRequest::Probe) => {
                    codec::encode(&Ok::<_, ClusterError>(cluster.probe())).unwrap_or_default()
                }
                Ok(PeerRequest::ReadIndex) => {
                    let index = match cluster.raft.ensure_linearizable().await {
                        Ok(log_id) => Ok(log_id.map_or(0, |id| id.index)),
                        Err(e) => Err(read_error(e)),
                    };
                    codec::encode(&index).unwrap_or_default()
                }
                Err(e) => {
                    tracing::warn!(from, error = %e, "an unreadable peer request");
                    Vec::new()
                }
            };
            Served::from(bytes)
        })
    })
}

impl Cluster for NodeCluster {
    fn node_id(&self) -> NodeId {
        self.node_id
    }

    fn write(&self, proposal: Proposal) -> BoxFuture<'_, Result<Written, ClusterError>> {
        Box::pin(async move {
            // Writes go to the leader: here if this node leads, else over the peer link.
            // While leadership moves (the leader died, an election runs), a write with a
            // request id is tried again at whoever leads next: apply answers a repeat
            // from its request table, so nothing is applied twice. Without a request id
            // the first failure is the answer.
            let deadline = tokio::time::Instant::now() + FORWARD_DEADLINE;
            loop {
                let leader = self.leader();
                let attempt = match leader {
                    Some(leader) if leader != self.node_id => {
                        self.forward_write(leader, proposal.clone()).await
                    }
                    _ => self.write_here(proposal.clone()).await,
                };
                if matches!(attempt, Err(ClusterError::Unavailable(_)))
                    && let Some(silent) = leader.filter(|l| *l != self.node_id)
                {
                    // The leader did not answer: it is probably gone. Wait for the
                    // election rather than asking it again.
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
                    && tokio::time::Instant::now() < deadline;
                if !retry {
                    return attempt;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
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
                    match tokio::time::timeout(READ_BARRIER_TIMEOUT, self.read_index()).await {
                        Ok(Ok(index)) => self.read_barrier(ReadAt::Applied(index)).await,
                        Ok(Err(e)) => Err(e),
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
            let matched = |id: &NodeId| {
                let replication = metrics.replication.as_ref()?;
                replication.get(id).copied().flatten().map(|log_id| log_id.index)
            };
            let probes = self.probe_members(membership.nodes().map(|(id, _)| *id).collect()).await;
            let probe =
                |id: &NodeId| probes.iter().find(|(n, _)| n == id).and_then(|(_, p)| p.clone());
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
            })
        })
    }

    fn subscribe(
        &self,
        caller: ferry_protocol::Caller,
        filter: EventFilter,
        from: StartAt,
    ) -> BoxFuture<'_, Result<Box<dyn EventStream>, SubscribeError>> {
        Box::pin(async move {
            let subscription = self.state.events().subscribe(caller, filter, from).await?;
            Ok(Box::new(subscription) as Box<dyn EventStream>)
        })
    }

    fn cluster_ca(&self) -> String {
        self.ca_pem.to_string()
    }

    fn reply_data(&self, job: JobId) -> BoxFuture<'_, Result<Vec<u8>, ClusterError>> {
        Box::pin(async move {
            let home = self.state.read().queue.job(&job).map(|j| j.home_node);
            match home {
                Some(home) if home != self.node_id => self
                    .ask::<ByteBuf>(home, &PeerRequest::ReplyData { job })
                    .await
                    .map(ByteBuf::into_vec),
                _ => self.local_reply_data(job).await,
            }
        })
    }
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
