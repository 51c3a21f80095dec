//! The piece router of one file's download: which missing piece goes to the origin
//! (this node's connections and its helpers on other members), which to a member
//! holding a copy, and which waits for the fleet member that fetches it; what happens
//! when a helper or a peer is lost, a copy is withdrawn, or a fleet member stalls.
//!
//! Peer pieces spread as a swarm, not a star: a peer worker draws a few holders at
//! random among those holding pieces it needs (weighted by how many), least loaded by
//! this node's own fetches first, keeps the one holding the fewest of those pieces (the
//! one other nodes crowd least), then takes the rarest of its pieces; a fleet keeps at
//! fewer than [`ORIGIN_WINDOW`] pieces missing from every copy ahead of the one a member
//! fetches from the origin, so the origin sends pieces nearly in order, each once.
//!
//! A pure state machine: no lock, no clock, no I/O. Workers' requests and outcomes are
//! method calls; the members' copies come in through a [`CopyView`] and time as a `now`
//! argument. The I/O shell ([`super::download`]) owns the router and drives it.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use ferry_protocol::peer_cache::FleetMember;
use ferry_protocol::transfer::Piece;
use ferry_protocol::{JobId, NodeId};

mod fleet;
#[cfg(test)]
mod tests;

use self::fleet::FleetWatch;
#[cfg(test)]
use self::fleet::MemberView;

/// How long a fleet member's copy may go without growing, while its node misses pings
/// or its job stopped, before the others take it for lost and divide its pieces.
pub(crate) const FLEET_PATIENCE: Duration = Duration::from_secs(5);

/// How long a fleet member's copy may go without growing at all (its node answers,
/// its job runs, but nothing arrives) before the others take it for lost anyway.
pub(crate) const FLEET_SAFETY: Duration = Duration::from_secs(120);

/// A holder of a piece: member `node`'s copy in file `file` of job `job`, with the
/// digest it recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Holder {
    /// The member holding the copy.
    pub(crate) node: NodeId,
    /// The job whose file holds it.
    pub(crate) job: JobId,
    /// The file's index in that job.
    pub(crate) file: u32,
    /// The digest the holder recorded for the piece.
    pub(crate) digest: [u8; 32],
}

/// A fleet member as the applied queue shows it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MemberState {
    /// Its place in the fleet.
    pub(crate) member: u32,
    /// Its job's home node.
    pub(crate) node: NodeId,
    /// Its job does not run (error, transient error, suspended, cancelled).
    pub(crate) stopped: bool,
    /// Chunks its copy holds that fit this file's plan.
    pub(crate) held: usize,
}

/// What the router reads of members' copies: the shell implements it over the applied
/// queue, tests over a map.
pub(crate) trait CopyView {
    /// The view's position (the applied index): waiting pieces are checked again when
    /// it moves.
    fn position(&self) -> u64;
    /// Copies of other jobs that fit this file's plan and hold `piece` whole, in queue
    /// order.
    fn holders(&self, piece: &Piece) -> Vec<Holder>;
    /// The jobs of this file's fleet (fleet members only).
    fn members(&self) -> Vec<MemberState>;
    /// How many copies hold `piece` (rarest first); a view with many copies answers
    /// without listing them.
    fn holder_count(&self, piece: &Piece) -> usize {
        self.holders(piece).len()
    }
    /// Whether member `node`'s copy holds `piece`.
    fn holds(&self, node: NodeId, piece: &Piece) -> bool {
        self.holders(piece).iter().any(|h| h.node == node)
    }
    /// How many of `pieces` member `node`'s copy holds (a view over many copies finds
    /// that copy once for all of them).
    fn count_held<'p>(&self, node: NodeId, pieces: impl IntoIterator<Item = &'p Piece>) -> usize {
        pieces.into_iter().filter(|piece| self.holds(node, piece)).count()
    }
    /// The jobs of this file's fleet that are members `wanted` (a view of a large
    /// fleet answers without listing all of them).
    fn members_of(&self, wanted: &BTreeSet<u32>) -> Vec<MemberState> {
        let mut members = self.members();
        members.retain(|m| wanted.contains(&m.member));
        members
    }
}

/// Who asks for a piece to fetch from the origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Worker {
    /// One of this node's connections to the origin.
    Origin,
    /// A helper: another member fetching from the origin for this node.
    Helper(NodeId),
}

/// Where a piece handed out is being fetched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    /// By this node from the origin.
    Origin,
    /// By helper `NodeId` from the origin.
    Helper(NodeId),
    /// From member `NodeId`'s copy.
    Peer(NodeId),
}

/// The next piece for a worker.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next<T = Piece> {
    /// Fetch this one.
    Piece(T),
    /// Nothing now, but pieces may come: ask again shortly.
    Wait,
    /// Nothing is left for this kind of worker.
    Done,
}

/// Holders a peer ask draws at most: it keeps the one holding the fewest pieces this
/// node needs, and waits when every one drawn is busy.
const DRAWS: usize = 4;

/// How long a worker with nothing to do waits before asking again.
pub(crate) const IDLE: Duration = Duration::from_millis(10);

/// How long this node passes over a holder that answered busy (all its serving slots
/// taken), at least: long enough for one of its pieces to go, short enough to come back
/// soon. An answer that took longer (a congested link) passes the holder over for twice
/// its round trip, up to [`BUSY_MAX`].
pub(crate) const BUSY: Duration = Duration::from_millis(20);

/// The longest a busy holder is passed over.
pub(crate) const BUSY_MAX: Duration = Duration::from_secs(2);

/// Pieces of a fleet's file that may be missing from every copy (not yet fetched by
/// any member) ahead of a piece a member fetches from the origin: members fetch their
/// origin pieces nearly in order, a few at a time for the whole fleet (32 MiB of
/// 1 MiB pieces), so that each reaches the swarm early instead of all arriving
/// together at the end of an origin shared by every member at once. Enough of them
/// to fill the origin while each shares its member's link with ten peer flows.
/// Counted in pieces, not bytes: a huge file's larger pieces keep as many on their way.
pub(crate) const ORIGIN_WINDOW: usize = 32;

/// Round trips before its piece's last byte a peer worker asks for its next (the
/// near-end signal): more than one leave time to ask elsewhere after a busy answer.
/// Four, not one: real 10-node fleets at 5 MB/s (`ferry-bench calibrate`) took
/// 27.5-28.5 s against 31.1-31.7 s; simulated 1,000 nodes 10.63 s against 10.68 s
/// (but 5 and 10 nodes 11.47 and 10.73 s against 10.62 and 10.48 s).
pub(crate) const PIPELINE_ROUND_TRIPS: u32 = 4;

/// Bytes of pieces a file's peer workers fetch at once (each may also have its next
/// one starting, and one being written): twenty workers for a fleet's 1 MiB pieces,
/// never fewer than four.
const PEER_FETCH_BYTES: u64 = 20 * 1024 * 1024;

/// Peer fetches at once for a file of `chunk_size` pieces: as many as
/// [`PEER_FETCH_BYTES`] hold, from 4 (8 MiB pieces and larger) to 20 (1 MiB and
/// smaller). Small pieces need more at once, matched by the holders' serving slots:
/// the simulator's 3 GB to 1,000 nodes took p50 11.37 s with four workers and serves
/// of 2 MiB pieces, 10.88 s with ten; with 1 MiB pieces, pipelined, 10.65 s with
/// sixteen and 10.63 s with twenty (ten: 10.91 s at 100 nodes, twenty 10.46 s).
pub(crate) fn peer_workers(chunk_size: u64) -> usize {
    let fit = PEER_FETCH_BYTES / chunk_size.max(1);
    usize::try_from(fit).unwrap_or(usize::MAX).clamp(4, 20)
}

/// How often a fleet member looks at the others' copies for growth: often enough
/// beside [`FLEET_PATIENCE`], rarely enough that a view moving every few milliseconds
/// (a large fleet's chunk reports) does not make every ask scan every member.
const WATCH_EVERY: Duration = Duration::from_millis(250);

/// Where a download's missing pieces come from: the origin (this node and its
/// helpers), members' copies, or (fleet members) later, from the member that fetches
/// them from the origin. Tracks every piece from wanted to done.
pub(crate) struct PieceRouter {
    origin: VecDeque<Piece>,
    peers: VecDeque<Piece>,
    waiting: Vec<Piece>,
    /// Whether members' copies are a source at all.
    uses_copies: bool,
    /// The job's place in its fleet, if it is a member.
    fleet: Option<FleetMember>,
    /// Peer workers alive: without one, origin workers take what is for peers.
    peer_workers: usize,
    /// Peers that failed a piece, by piece index: not asked for it again.
    failed: HashMap<u32, Vec<NodeId>>,
    /// The view position the waiting pieces were last checked at.
    seen: Option<u64>,
    /// What this fleet member knows of the others.
    watch: FleetWatch,
    /// Pieces handed out and not yet done or given back, by index.
    in_flight: HashMap<u32, (Piece, Place)>,
    /// Pieces done.
    done: BTreeSet<u32>,
    /// Helpers lost for this file: not asked again.
    lost_helpers: BTreeSet<NodeId>,
    /// Spreads this node's choices of holders and pieces from other nodes' (its job's
    /// id, say): nodes that see the same copies choose differently.
    seed: u64,
    /// Peer asks so far: each draws its holder afresh.
    turn: u64,
    /// A fleet's origin window in pieces ([`ORIGIN_WINDOW`] unless set).
    window: usize,
    /// Holders that answered busy, until when they are passed over.
    busy: HashMap<NodeId, Instant>,
    /// How long a busy holder is passed over ([`BUSY`] unless set).
    busy_for: Duration,
}

impl PieceRouter {
    /// A router of `missing` pieces that all come from the origin.
    pub(crate) fn origin_only(missing: VecDeque<Piece>) -> Self {
        Self {
            origin: missing,
            peers: VecDeque::new(),
            waiting: Vec::new(),
            uses_copies: false,
            fleet: None,
            peer_workers: 0,
            failed: HashMap::new(),
            seen: None,
            watch: FleetWatch::default(),
            in_flight: HashMap::new(),
            done: BTreeSet::new(),
            lost_helpers: BTreeSet::new(),
            seed: 0,
            turn: 0,
            window: ORIGIN_WINDOW,
            busy: HashMap::new(),
            busy_for: BUSY,
        }
    }

    /// The router passing over a busy holder for `wait` instead of [`BUSY`] (the
    /// simulator's knob).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn busy_for(mut self, wait: Duration) -> Self {
        self.busy_for = wait;
        self
    }

    /// The router with a fleet origin window of `pieces` instead of [`ORIGIN_WINDOW`]
    /// (the simulator's knob).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn origin_window(mut self, pieces: usize) -> Self {
        self.window = pieces;
        self
    }

    /// The router, its choices spread by `seed` (different on each node).
    pub(crate) fn spread(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// A router of `missing` pieces that may also come from members' copies (and, for
    /// a member of `fleet`, from the member that fetches them): a piece a copy holds
    /// goes to the peers, one another fleet member fetches waits, the rest go to the
    /// origin.
    pub(crate) fn with_copies(
        missing: VecDeque<Piece>,
        fleet: Option<FleetMember>,
        view: &impl CopyView,
    ) -> Self {
        let mut router = Self::origin_only(VecDeque::new());
        router.uses_copies = true;
        router.fleet = fleet;
        for piece in missing {
            if view.holder_count(&piece) > 0 {
                router.peers.push_back(piece);
            } else if fleet.is_some_and(|f| !f.fetches(piece.index)) {
                router.waiting.push(piece);
            } else {
                router.origin.push_back(piece);
            }
        }
        router
    }

    /// Pieces not yet handed out, wherever they are to come from.
    pub(crate) fn len(&self) -> usize {
        self.origin.len() + self.peers.len() + self.waiting.len()
    }

    /// Pieces ready to hand out: to origin workers, and to peer workers.
    pub(crate) fn ready(&self) -> (usize, usize) {
        (self.origin.len(), self.peers.len())
    }

    /// Pieces handed out and neither done nor given back.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether every piece is done.
    #[cfg(test)]
    pub(crate) fn is_complete(&self) -> bool {
        self.len() == 0 && self.in_flight.is_empty()
    }

    /// Whether pieces are (or may become) for peer workers.
    pub(crate) fn uses_peers(&self) -> bool {
        !self.peers.is_empty() || !self.waiting.is_empty()
    }

    /// A peer worker starts: pieces for peers wait for it.
    pub(crate) fn peer_worker_started(&mut self) {
        self.peer_workers += 1;
    }

    /// A peer worker ended.
    pub(crate) fn peer_worker_ended(&mut self) {
        self.peer_workers = self.peer_workers.saturating_sub(1);
    }

    /// The next piece for `worker` to fetch from the origin, at most `max_len` bytes
    /// long. A lost helper gets none. A piece a member's copy came to hold meanwhile (a
    /// member taken for lost was only slow) goes to the peers instead, while a peer
    /// worker is there to take it; without one, pieces left for peers come from the
    /// origin.
    pub(crate) fn next_origin(
        &mut self,
        worker: Worker,
        max_len: u64,
        view: &impl CopyView,
        now: Instant,
    ) -> Next {
        if let Worker::Helper(node) = worker
            && self.lost_helpers.contains(&node)
        {
            return Next::Done;
        }
        let place = match worker {
            Worker::Origin => Place::Origin,
            Worker::Helper(node) => Place::Helper(node),
        };
        self.route(view, now);
        if self.peer_workers == 0
            && let Some(piece) = self.peers.front().copied()
            && piece.len <= max_len
        {
            self.peers.pop_front();
            return self.hand_out(piece, place);
        }
        while let Some(piece) = self.origin.front().copied() {
            if piece.len > max_len {
                return Next::Done;
            }
            let held = self.peer_workers > 0 && self.fleet.is_some() && self.held(view, &piece);
            if held {
                self.origin.pop_front();
                self.peers.push_back(piece);
                continue;
            }
            if !self.in_origin_window(&piece) {
                return Next::Wait;
            }
            self.origin.pop_front();
            return self.hand_out(piece, place);
        }
        if self.uses_peers() { Next::Wait } else { Next::Done }
    }

    /// The next piece to take from a peer, with its holders (best first; the piece is
    /// counted as being fetched from the first). Holders are drawn at random among
    /// those holding pieces this node needs (a holder of many is drawn more often),
    /// the least busy with this node's own fetches first, up to [`DRAWS`] of them; the
    /// one holding the fewest pieces this node needs is taken, and the piece is the
    /// rarest of those it holds. Every node drawing its own holder spreads the serving
    /// over the swarm instead of lining up at the first holder of the rarest piece.
    pub(crate) fn next_peer(
        &mut self,
        view: &impl CopyView,
        now: Instant,
    ) -> Next<(Piece, Vec<Holder>)> {
        self.route(view, now);
        if !self.uses_copies {
            return Next::Done;
        }
        if self.peers.is_empty() {
            return if self.waiting.is_empty() { Next::Done } else { Next::Wait };
        }
        self.busy.retain(|_, until| *until > now);
        // A few draws, each giving a holder: the one holding the fewest pieces this node
        // needs wins (ties: the first). A holder of many pieces others lack is the one
        // every node draws most often, and the likeliest to answer busy; a busy answer
        // costs the worker a round trip. A drawn piece whose holders are all busy gives
        // way to another.
        let mut chosen = None;
        let mut fewest = usize::MAX;
        for _ in 0..DRAWS {
            self.turn += 1;
            let draw = mix(self.seed ^ mix(self.turn));
            let at = (draw % self.peers.len() as u64) as usize;
            let drawn = self.peers[at];
            let holders = self.holders(view, &drawn, draw);
            let Some(first) = holders.first().copied() else {
                // No holder left for it (all failed it): the origin fetches it.
                self.peers.remove(at);
                self.origin.push_back(drawn);
                return Next::Wait;
            };
            if self.busy.contains_key(&first.node) {
                continue;
            }
            let needed = view.count_held(first.node, &self.peers);
            if needed < fewest {
                fewest = needed;
                chosen = Some((draw, at, drawn, holders, first));
            }
            if fewest <= 1 {
                break;
            }
        }
        let Some((draw, at, drawn, holders, first)) = chosen else { return Next::Wait };
        let rarest = (0..self.peers.len())
            .filter(|i| *i == at || self.can_serve(view, first.node, &self.peers[*i]))
            .min_by_key(|i| {
                let piece = &self.peers[*i];
                (view.holder_count(piece), mix(draw ^ u64::from(piece.index)))
            })
            .unwrap_or(at);
        let Some(piece) = self.peers.remove(rarest) else { return Next::Wait };
        let holders = if piece.index == drawn.index {
            holders
        } else {
            let mut others = self.holders(view, &piece, draw);
            others.retain(|h| h.node != first.node);
            let mut chosen = view.holders(&piece);
            chosen.retain(|h| h.node == first.node);
            chosen.truncate(1);
            chosen.extend(others);
            chosen
        };
        let Some(first) = holders.first() else {
            self.peers.push_back(piece);
            return Next::Wait;
        };
        self.in_flight.insert(piece.index, (piece, Place::Peer(first.node)));
        Next::Piece((piece, holders))
    }

    /// Piece `index` is durable: returns whether it was being fetched (a piece done
    /// twice, or never handed out, counts once and returns `false`).
    pub(crate) fn done(&mut self, index: u32) -> bool {
        if self.in_flight.remove(&index).is_none() {
            return false;
        }
        self.done.insert(index)
    }

    /// A piece an origin worker or helper could not deliver (a failed write, a
    /// failed request): fetched again, first.
    pub(crate) fn give_back(&mut self, piece: Piece) {
        if self.in_flight.remove(&piece.index).is_some() {
            self.origin.push_front(piece);
        }
    }

    /// Helper `node` is lost (it failed, stalled or missed pings) while fetching
    /// `piece`: the piece is fetched again, and the helper is not asked again for
    /// this file.
    pub(crate) fn helper_lost(&mut self, node: NodeId, piece: Piece) {
        self.lost_helpers.insert(node);
        self.give_back(piece);
    }

    /// A piece `node` could not deliver (unreachable, copy gone or withdrawn, wrong
    /// bytes): another holder or the origin gets it; `node` is not asked for it again.
    pub(crate) fn peer_failed(&mut self, piece: Piece, node: NodeId) {
        if self.in_flight.remove(&piece.index).is_none() {
            return;
        }
        if self.uses_copies {
            self.failed.entry(piece.index).or_default().push(node);
        }
        self.peers.push_back(piece);
    }

    /// Holder `node` answered busy (every serving slot taken) for `piece`, `took` after
    /// it was asked: the piece goes back to the peers, and the holder is passed over for
    /// [`BUSY`], or twice `took` if longer (up to [`BUSY_MAX`]). Over slow, crowded
    /// links a busy answer takes a tenth of a second and more, as does a slot coming
    /// free: a holder asked again a mere [`BUSY`] after such an answer was busy again,
    /// while others holding the piece sat idle (10 nodes on 5 MB/s links, 1,828 busy
    /// answers for 449 pieces).
    pub(crate) fn peer_busy(&mut self, piece: Piece, node: NodeId, now: Instant, took: Duration) {
        if self.in_flight.remove(&piece.index).is_none() {
            return;
        }
        let pass = took.saturating_mul(2).clamp(self.busy_for, BUSY_MAX.max(self.busy_for));
        self.busy.insert(node, now + pass);
        self.peers.push_back(piece);
    }

    /// The nodes of fleet members that now miss pings.
    pub(crate) fn set_unreachable(&mut self, nodes: BTreeSet<NodeId>) {
        if self.uses_copies {
            self.watch.unreachable = nodes;
        }
    }

    /// Pieces in each place: to the origin, to peers, waiting, in flight, done (for
    /// checks that no piece is lost or counted twice).
    #[cfg(test)]
    pub(crate) fn census(&self) -> Vec<u32> {
        let mut all: Vec<u32> = self.origin.iter().map(|p| p.index).collect();
        all.extend(self.peers.iter().map(|p| p.index));
        all.extend(self.waiting.iter().map(|p| p.index));
        all.extend(self.in_flight.keys());
        all.extend(self.done.iter());
        all.sort_unstable();
        all
    }

    /// The holders of `piece` not yet failed for it, best first: those not busy, then
    /// those serving fewer of this node's fetches, then in an order drawn from `draw`.
    fn holders(&self, view: &impl CopyView, piece: &Piece, draw: u64) -> Vec<Holder> {
        let failed = self.failed.get(&piece.index);
        let mut holders = view.holders(piece);
        holders.retain(|h| failed.is_none_or(|nodes| !nodes.contains(&h.node)));
        holders.sort_by_cached_key(|h| {
            let busy = self.busy.contains_key(&h.node);
            (busy, self.fetching_from(h.node), mix(draw ^ mix(h.node)))
        });
        holders
    }

    /// Whether a copy not failed for `piece` holds it.
    fn held(&self, view: &impl CopyView, piece: &Piece) -> bool {
        match self.failed.get(&piece.index) {
            None => view.holder_count(piece) > 0,
            Some(_) => !self.holders(view, piece, 0).is_empty(),
        }
    }

    /// Whether `node`'s copy holds `piece` and has not failed it.
    fn can_serve(&self, view: &impl CopyView, node: NodeId, piece: &Piece) -> bool {
        let failed = self.failed.get(&piece.index).is_some_and(|nodes| nodes.contains(&node));
        !failed && view.holds(node, piece)
    }

    /// Pieces this node fetches from `node`'s copy now.
    fn fetching_from(&self, node: NodeId) -> usize {
        self.in_flight.values().filter(|(_, place)| *place == Place::Peer(node)).count()
    }

    /// Whether a fleet member may fetch `piece` from the origin now: fewer than
    /// [`ORIGIN_WINDOW`] pieces before it are missing from every copy (waiting for
    /// their member, or on their way from the origin here). Not a fleet member's
    /// piece, or a fleet of one: always.
    fn in_origin_window(&self, piece: &Piece) -> bool {
        if self.fleet.is_none_or(|f| f.members <= 1) {
            return true;
        }
        let waiting = self.waiting.iter().filter(|p| p.index < piece.index).count();
        let fetching = (self.in_flight.values())
            .filter(|(p, place)| p.index < piece.index && !matches!(place, Place::Peer(_)))
            .count();
        waiting + fetching < self.window
    }

    fn hand_out(&mut self, piece: Piece, place: Place) -> Next {
        self.in_flight.insert(piece.index, (piece, place));
        Next::Piece(piece)
    }
}

/// The member that fetches piece `index` once the members in `lost` are gone: the
/// `(index / members)`-th of the others in turn (`None` if none is left).
pub(crate) fn new_owner(members: u32, lost: &BTreeSet<u32>, index: u32) -> Option<u32> {
    let alive: Vec<u32> = (0..members).filter(|m| !lost.contains(m)).collect();
    if alive.is_empty() {
        return None;
    }
    Some(alive[(index / members) as usize % alive.len()])
}

/// SplitMix64's finalizer: a well-spread 64-bit hash of `x` (the router's draws).
pub(crate) fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
