//! The I/O shell around one file's [`PieceRouter`]: the file's download task owns it
//! ([`Routing`]) and gives it the applied queue's copies as a [`CopyView`] and the
//! time; the workers ask it for pieces and tell it what became of them by message
//! ([`Desk`], [`Ask`]).

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_protocol::peer_cache::{ContentKey, FleetMember, PeerCopy};
use ferry_protocol::transfer::Piece;
use ferry_protocol::{JobId, JobState, NodeId, Queue};

use tokio::sync::{Notify, mpsc, oneshot};

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
    /// Copies held here whose files are gone (job, file): not sources.
    pub(super) gone: Vec<(JobId, u32)>,
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
        copies.retain(|copy| {
            copy.job != sources.job
                && copy.chunk_size == sources.chunk_size
                && !sources.gone.contains(&(copy.job, copy.file))
        });
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

    fn count_held<'p>(&self, node: NodeId, pieces: impl IntoIterator<Item = &'p Piece>) -> usize {
        let mut copies = self.copies();
        copies.retain(|copy| copy.node == node);
        (pieces.into_iter())
            .filter(|piece| {
                copies
                    .iter()
                    .any(|copy| copy.chunk(piece.index).is_some_and(|c| c.len == piece.len))
            })
            .count()
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
    /// Peer `NodeId` answered busy (every serving slot taken) for the piece, this
    /// long after it was asked.
    PeerBusy(Piece, NodeId, Duration),
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
    /// Wakes the workers told to wait once a piece may have come free (see [`Desk`]).
    freed: Arc<Notify>,
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
        let freed = Arc::new(Notify::new());
        (Self { router, sources, freed: freed.clone() }, Desk { tx, freed }, rx)
    }

    /// The router itself (to count pieces and workers, mark pieces done).
    pub(super) fn router(&mut self) -> &mut PieceRouter {
        &mut self.router
    }

    /// Answers one ask, with the applied queue's view and the time.
    pub(super) fn answer(&mut self, ask: Ask) {
        let before = self.router.ready();
        self.route(ask);
        let after = self.router.ready();
        // Only when pieces came free: waking on every ask made the waiting workers
        // wake each other in turn (the fleets' origin egress rose from 1.04-1.12 to
        // 1.16-1.33 x the file with a member killed).
        if after.0 > before.0 || after.1 > before.1 {
            self.freed.notify_waiters();
        }
    }

    fn route(&mut self, ask: Ask) {
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
        Ask::PeerBusy(piece, node, took) => router.peer_busy(piece, node, now, took),
        Ask::Unreachable(nodes) => router.set_unreachable(nodes),
    }
}

/// A worker's line to the owner of its file's router. A worker told to wait
/// ([`Next::Wait`]) asks again as soon as an ask or news freed a piece (a piece given
/// back, one a peer failed, a peer's piece moved to the origin once no holder is left:
/// [`PieceRouter::ready`] grew), or after [`IDLE`] at the latest (the router's patience
/// runs on time). So a piece a peer could not deliver goes to the origin at once, not
/// one poll later, which cost every small file whose offered copy was gone 10 ms.
#[derive(Clone)]
pub(super) struct Desk {
    tx: mpsc::Sender<Ask>,
    freed: Arc<Notify>,
}

impl Desk {
    /// The next piece for `worker` (at most `max_len` bytes), waiting while pieces may
    /// still come its way; `None` once none will (or the download stopped).
    pub(super) async fn next_origin(&self, worker: Worker, max_len: u64) -> Option<Piece> {
        self.next(|reply| Ask::NextOrigin { worker, max_len, reply }).await
    }

    /// The next piece for a peer worker with its holders, best first, waiting like
    /// [`next_origin`](Self::next_origin); `None` once none will come (or the download
    /// stopped).
    pub(super) async fn next_peer(&self) -> Option<(Piece, Vec<Holder>)> {
        self.next(|reply| Ask::NextPeer { reply }).await
    }

    /// Asks `ask` until the answer is not [`Next::Wait`], waiting between asks (see the
    /// type's doc).
    async fn next<T>(&self, ask: impl Fn(oneshot::Sender<Next<T>>) -> Ask) -> Option<T> {
        loop {
            // Registered before asking: a piece freed after the answer still wakes it.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let (reply, answer) = oneshot::channel();
            self.tx.send(ask(reply)).await.ok()?;
            match answer.await.ok()? {
                Next::Piece(next) => return Some(next),
                Next::Done => return None,
                Next::Wait => {
                    let _ = tokio::time::timeout(IDLE, freed).await;
                }
            }
        }
    }

    /// Tells the owner what became of a piece, or of the fleet.
    pub(super) async fn tell(&self, ask: Ask) {
        // The owner gone, the download stopped: nothing is left to tell.
        let _ = self.tx.send(ask).await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Holds every piece on one node (7).
    struct AllHeld;

    impl CopyView for AllHeld {
        fn position(&self) -> u64 {
            0
        }

        fn holders(&self, _: &Piece) -> Vec<Holder> {
            vec![Holder { node: 7, job: JobId::generate(), file: 0, digest: [0; 32] }]
        }

        fn members(&self) -> Vec<MemberState> {
            Vec::new()
        }
    }

    /// An origin worker told to wait gets a piece the peers gave up on at once, not
    /// one [`IDLE`] later: a small file whose offered copy was gone took 13 ms.
    #[tokio::test(start_paused = true)]
    async fn a_waiting_origin_worker_takes_a_piece_the_peers_gave_up_at_once() {
        let piece = Piece { index: 0, local_offset: 0, remote_offset: 0, len: 1 };
        let mut router = PieceRouter::with_copies(VecDeque::from([piece]), None, &AllHeld);
        router.peer_worker_started();
        let (tx, mut asks) = mpsc::channel(ASKS);
        let freed = Arc::new(Notify::new());
        let desk = Desk { tx, freed: freed.clone() };
        // No sources: the owner's view holds no copy, so the peers give the piece up.
        let mut routing = Routing { router, sources: None, freed };
        tokio::spawn(async move {
            while let Some(ask) = asks.recv().await {
                routing.answer(ask);
            }
        });
        let start = tokio::time::Instant::now();
        let origin = tokio::spawn({
            let desk = desk.clone();
            async move {
                let piece = desk.next_origin(Worker::Origin, u64::MAX).await;
                (piece, start.elapsed())
            }
        });
        // The origin worker has been told to wait (the piece is the peers').
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(!origin.is_finished(), "the piece went to the origin before the peers");
        assert!(desk.next_peer().await.is_none(), "no holder left: nothing for the peers");
        let (taken, after) = origin.await.expect("origin worker");
        assert_eq!(taken.map(|p| p.index), Some(0));
        assert!(after < IDLE, "taken {after:?} after the start, one poll late");
    }
}
