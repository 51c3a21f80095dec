//! The I/O shell around one file's [`PieceRouter`]: the file's download task owns it
//! ([`Routing`]) and gives it the applied queue's copies as a [`CopyView`] and the
//! time; the workers ask it for pieces and tell it what became of them by message
//! ([`Desk`], [`Ask`]).

use std::collections::{BTreeSet, VecDeque};
use std::time::Instant;

use ferry_protocol::peer_cache::{ContentKey, FleetMember, PeerCopy};
use ferry_protocol::transfer::Piece;
use ferry_protocol::{JobId, JobState, NodeId, Queue};

use tokio::sync::{mpsc, oneshot};

use crate::replica::ClusterView;
use crate::transfer::router::{CopyView, Holder, IDLE, MemberState, Next, PieceRouter, Worker};

/// What routes pieces to peers: the content, this job's place, the applied queue.
pub(super) struct Sources {
    /// The cluster whose applied queue lists the copies.
    pub(super) cluster: ClusterView,
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
                let tag = job.fleet()?;
                let held =
                    copies.iter().filter(|c| c.job == job.id()).map(|c| c.chunks.len()).sum();
                Some(MemberState {
                    member: tag.member,
                    node: job.home_node(),
                    stopped: !job.state().is_active() && job.state() != JobState::Transferred,
                    held,
                })
            })
            .collect()
    }
}

/// What a worker asks of, or tells, the owner of a file's router.
pub(super) enum Ask {
    /// The next piece for `worker`, at most `max_len` bytes long.
    NextOrigin {
        /// Who asks.
        worker: Worker,
        /// The longest piece it takes.
        max_len: u64,
        /// Where the answer goes.
        reply: oneshot::Sender<Next>,
    },
    /// The next piece for a peer worker, with its holders.
    NextPeer {
        /// Where the answer goes.
        reply: oneshot::Sender<Next<(Piece, Vec<Holder>)>>,
    },
    /// A piece not delivered by an origin worker or helper (a failed write).
    GiveBack(Piece),
    /// Helper `NodeId` is lost while fetching the piece.
    HelperLost(NodeId, Piece),
    /// Peer `NodeId` did not deliver the piece.
    PeerFailed(Piece, NodeId),
    /// The nodes of fleet members that now miss pings.
    Unreachable(BTreeSet<NodeId>),
}

/// Most asks waiting for the router's owner.
const ASKS: usize = 256;

/// A file's router and what its view reads: owned by the file's download (one task),
/// which answers the workers' [`Ask`]s between its other duties.
pub(super) struct Routing {
    router: PieceRouter,
    sources: Option<Sources>,
}

impl Routing {
    /// The routing of `missing` pieces (without `sources` they all come from the
    /// origin), and the channel its workers ask through.
    pub(super) fn new(
        missing: VecDeque<Piece>,
        sources: Option<Sources>,
    ) -> (Self, Desk, mpsc::Receiver<Ask>) {
        let router = match &sources {
            None => PieceRouter::origin_only(missing),
            Some(s) => {
                let state = s.cluster.state.read();
                let view = QueueView { queue: Some(&state.queue), applied: 0, sources: Some(s) };
                // Each node draws its own holders: the swarm spreads.
                PieceRouter::with_copies(missing, s.fleet, &view).spread(s.cluster.node_id)
            }
        };
        let (tx, rx) = mpsc::channel(ASKS);
        (Self { router, sources }, Desk { tx }, rx)
    }

    /// The router itself (to count pieces and workers, mark pieces done).
    pub(super) fn router(&mut self) -> &mut PieceRouter {
        &mut self.router
    }

    /// Answers one ask, with the applied queue's view and the time.
    pub(super) fn answer(&mut self, ask: Ask) {
        let now = Instant::now();
        let Some(sources) = &self.sources else {
            let view = QueueView { queue: None, applied: 0, sources: None };
            return answer(&mut self.router, &view, now, ask);
        };
        let state = sources.cluster.state.read();
        let applied = state.applied.map_or(0, |id| id.index);
        let view = QueueView { queue: Some(&state.queue), applied, sources: Some(sources) };
        answer(&mut self.router, &view, now, ask);
    }
}

fn answer(router: &mut PieceRouter, view: &QueueView<'_>, now: Instant, ask: Ask) {
    match ask {
        Ask::NextOrigin { worker, max_len, reply } => {
            let next = router.next_origin(worker, max_len, view, now);
            if let Err(Next::Piece(piece)) = reply.send(next) {
                // The worker is gone (its task was stopped): the piece is fetched again.
                router.give_back(piece);
            }
        }
        Ask::NextPeer { reply } => {
            if let Err(Next::Piece((piece, holders))) = reply.send(router.next_peer(view, now))
                && let Some(holder) = holders.first()
            {
                router.peer_failed(piece, holder.node);
            }
        }
        Ask::GiveBack(piece) => router.give_back(piece),
        Ask::HelperLost(node, piece) => router.helper_lost(node, piece),
        Ask::PeerFailed(piece, node) => router.peer_failed(piece, node),
        Ask::Unreachable(nodes) => router.set_unreachable(nodes),
    }
}

/// A worker's line to the owner of its file's router.
#[derive(Clone)]
pub(super) struct Desk {
    tx: mpsc::Sender<Ask>,
}

impl Desk {
    /// The next piece for `worker` (at most `max_len` bytes), waiting while pieces may
    /// still come its way; `None` once none will (or the download stopped).
    pub(super) async fn next_origin(&self, worker: Worker, max_len: u64) -> Option<Piece> {
        loop {
            let (reply, answer) = oneshot::channel();
            self.tx.send(Ask::NextOrigin { worker, max_len, reply }).await.ok()?;
            match answer.await.ok()? {
                Next::Piece(piece) => return Some(piece),
                Next::Done => return None,
                Next::Wait => tokio::time::sleep(IDLE).await,
            }
        }
    }

    /// The next piece for a peer worker with its holders, best first (`Done` once the
    /// download stopped).
    pub(super) async fn next_peer(&self) -> Next<(Piece, Vec<Holder>)> {
        let (reply, answer) = oneshot::channel();
        if self.tx.send(Ask::NextPeer { reply }).await.is_err() {
            return Next::Done;
        }
        answer.await.unwrap_or(Next::Done)
    }

    /// Tells the owner what became of a piece, or of the fleet.
    pub(super) async fn tell(&self, ask: Ask) {
        // The owner gone, the download stopped: nothing is left to tell.
        let _ = self.tx.send(ask).await;
    }
}
