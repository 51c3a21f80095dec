//! The I/O shell around one file's [`PieceRouter`]: the download's workers ask it for
//! pieces and tell it what became of them; it gives the router the applied queue's
//! copies as a [`CopyView`] and the time, and holds it for the workers.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use ferry_protocol::peer_cache::{ContentKey, FleetMember, PeerCopy};
use ferry_protocol::transfer::Piece;
use ferry_protocol::{JobId, JobState, NodeId, Queue};

use crate::service::NodeCluster;
use crate::transfer::router::{CopyView, Holder, IDLE, MemberState, Next, PieceRouter, Worker};

/// What routes pieces to peers: the content, this job's place, the applied queue.
pub(super) struct Sources {
    /// The cluster whose applied queue lists the copies.
    pub(super) cluster: NodeCluster,
    /// The keys the file's content is known by (see [`ContentKey::all_of`]).
    pub(super) keys: Vec<ContentKey>,
    /// This job (its own copy is not a source).
    pub(super) job: JobId,
    /// The file's plan: only copies with the same chunk size fit it.
    pub(super) chunk_size: u64,
    /// The job's place in its fleet, if it is a member.
    pub(super) fleet: Option<FleetMember>,
}

/// The applied queue's copies of one file's content, as the router reads them.
struct QueueView<'q> {
    queue: Option<&'q Queue>,
    applied: u64,
    sources: Option<&'q Sources>,
}

impl QueueView<'_> {
    /// Other jobs' copies that fit this file's plan.
    fn copies(&self) -> Vec<PeerCopy<'_>> {
        let (Some(sources), Some(queue)) = (self.sources, self.queue) else { return Vec::new() };
        let mut copies = queue.peer_copies(&sources.keys);
        copies.retain(|copy| copy.job != sources.job && copy.chunk_size == sources.chunk_size);
        copies
    }
}

impl CopyView for QueueView<'_> {
    fn position(&self) -> u64 {
        self.applied
    }

    fn holders(&self, piece: &Piece) -> Vec<Holder> {
        self.copies()
            .into_iter()
            .filter_map(|copy| {
                let chunk = copy.chunk(piece.index).filter(|c| c.len == piece.len)?;
                Some(Holder {
                    node: copy.node,
                    job: copy.job,
                    file: copy.file,
                    digest: chunk.digest,
                })
            })
            .collect()
    }

    fn members(&self) -> Vec<MemberState> {
        let Some(fleet) = self.sources.and_then(|s| s.fleet) else { return Vec::new() };
        let Some(queue) = self.queue else { return Vec::new() };
        let copies = self.copies();
        queue
            .fleet_jobs(&fleet.fleet)
            .iter()
            .filter_map(|job| {
                let tag = job.fleet?;
                let held = copies.iter().filter(|c| c.job == job.id).map(|c| c.chunks.len()).sum();
                Some(MemberState {
                    member: tag.member,
                    node: job.home_node,
                    stopped: !job.state.is_active() && job.state != JobState::Transferred,
                    held,
                })
            })
            .collect()
    }
}

/// One file's router, shared by the file's workers.
pub(super) struct Desk {
    router: Mutex<PieceRouter>,
    sources: Option<Sources>,
    /// The cluster whose applied queue the view reads (absent without sources).
    cluster: Option<NodeCluster>,
}

impl Desk {
    /// The desk of `missing` pieces; without `sources` they all come from the origin.
    pub(super) fn new(missing: VecDeque<Piece>, sources: Option<Sources>) -> Self {
        let router = match &sources {
            None => PieceRouter::origin_only(missing),
            Some(s) => {
                let state = s.cluster.state.read();
                let view = QueueView { queue: Some(&state.queue), applied: 0, sources: Some(s) };
                PieceRouter::with_copies(missing, s.fleet, &view)
            }
        };
        let cluster = sources.as_ref().map(|s| s.cluster.clone());
        Self { router: Mutex::new(router), sources, cluster }
    }

    fn router(&self) -> MutexGuard<'_, PieceRouter> {
        self.router.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the router with the applied queue's view and the time.
    fn with_view<T>(&self, f: impl FnOnce(&mut PieceRouter, &QueueView<'_>, Instant) -> T) -> T {
        match &self.cluster {
            Some(cluster) => {
                let state = cluster.state.read();
                let applied = state.applied.map_or(0, |id| id.index);
                let view = QueueView {
                    queue: Some(&state.queue),
                    applied,
                    sources: self.sources.as_ref(),
                };
                f(&mut self.router(), &view, Instant::now())
            }
            None => {
                let view = QueueView { queue: None, applied: 0, sources: None };
                f(&mut self.router(), &view, Instant::now())
            }
        }
    }

    /// The next piece for `worker` (at most `max_len` bytes), waiting while pieces may
    /// still come its way; `None` once none will.
    pub(super) async fn next_origin(&self, worker: Worker, max_len: u64) -> Option<Piece> {
        loop {
            match self.with_view(|router, view, now| router.next_origin(worker, max_len, view, now))
            {
                Next::Piece(piece) => return Some(piece),
                Next::Done => return None,
                Next::Wait => tokio::time::sleep(IDLE).await,
            }
        }
    }

    /// The next piece for a peer worker with its holders, best first.
    pub(super) fn next_peer(&self) -> Next<(Piece, Vec<Holder>)> {
        self.with_view(|router, view, now| router.next_peer(view, now))
    }

    /// Pieces not yet handed out.
    pub(super) fn len(&self) -> usize {
        self.router().len()
    }

    /// Whether pieces are (or may become) for peer workers.
    pub(super) fn uses_peers(&self) -> bool {
        self.router().uses_peers()
    }

    /// Piece `index` is durable.
    pub(super) fn done(&self, index: u32) {
        self.router().done(index);
    }

    /// A piece not delivered by an origin worker or helper (a failed write).
    pub(super) fn give_back(&self, piece: Piece) {
        self.router().give_back(piece);
    }

    /// Helper `node` is lost while fetching `piece`.
    pub(super) fn helper_lost(&self, node: NodeId, piece: Piece) {
        self.router().helper_lost(node, piece);
    }

    /// Peer `node` did not deliver `piece`.
    pub(super) fn peer_failed(&self, piece: Piece, node: NodeId) {
        self.router().peer_failed(piece, node);
    }

    /// The nodes of fleet members that now miss pings.
    pub(super) fn set_unreachable(&self, nodes: BTreeSet<NodeId>) {
        self.router().set_unreachable(nodes);
    }

    /// A peer worker starts.
    pub(super) fn peer_worker_started(&self) {
        self.router().peer_worker_started();
    }

    /// A peer worker ended.
    pub(super) fn peer_worker_ended(&self) {
        self.router().peer_worker_ended();
    }
}
