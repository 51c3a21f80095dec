//! Tests of the piece router: unit tests of its rules and property tests that run it
//! through random interleavings of workers, losses and withdrawals.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use ferry_protocol::JobId;
use ferry_protocol::NodeId;
use ferry_protocol::peer_cache::FleetMember;
use ferry_protocol::transfer::Piece;
use proptest::prelude::*;

use super::*;

/// Members' copies as a map: node → pieces its copy holds; plus the fleet's members.
#[derive(Default)]
struct View {
    position: u64,
    copies: BTreeMap<NodeId, BTreeSet<u32>>,
    members: Vec<MemberState>,
}

impl CopyView for View {
    fn position(&self) -> u64 {
        self.position
    }

    fn holders(&self, piece: &Piece) -> Vec<Holder> {
        self.copies
            .iter()
            .filter(|(_, held)| held.contains(&piece.index))
            .map(|(node, _)| Holder {
                node: *node,
                job: JobId::generate(),
                file: 0,
                digest: [0; 32],
            })
            .collect()
    }

    fn members(&self) -> Vec<MemberState> {
        self.members.clone()
    }
}

fn pieces(indexes: impl IntoIterator<Item = u32>) -> VecDeque<Piece> {
    indexes
        .into_iter()
        .map(|index| Piece { index, local_offset: 0, remote_offset: 0, len: 1 })
        .collect()
}

fn index(next: Next) -> Option<u32> {
    match next {
        Next::Piece(p) => Some(p.index),
        _ => None,
    }
}

#[test]
fn pieces_for_peers_go_to_the_origin_when_no_peer_worker_is_left() {
    let (view, now) = (View::default(), Instant::now());
    let mut router = PieceRouter::origin_only(pieces([0, 1]));
    let Next::Piece(first) = router.next_origin(Worker::Origin, u64::MAX, &view, now) else {
        panic!("no piece")
    };
    // A peer could not deliver it, and no peer worker runs: the origin takes it.
    router.peer_failed(first, 2);
    assert_eq!(index(router.next_origin(Worker::Origin, u64::MAX, &view, now)), Some(0));
    // While a peer worker runs, it is left to the peers.
    router.peer_worker_started();
    router.peer_failed(first, 2);
    assert_eq!(index(router.next_origin(Worker::Origin, u64::MAX, &view, now)), Some(1));
    assert_eq!(router.next_origin(Worker::Origin, u64::MAX, &view, now), Next::Wait);
    router.peer_worker_ended();
    assert_eq!(index(router.next_origin(Worker::Origin, u64::MAX, &view, now)), Some(0));
    assert_eq!(router.next_origin(Worker::Origin, u64::MAX, &view, now), Next::Done);
}

#[test]
fn a_lost_members_share_is_divided_among_the_others() {
    // Member 2 of 3 is lost: its pieces 2, 5, 8, 11 go to members 0 and 1 in turn.
    let lost = BTreeSet::from([2]);
    let owners: Vec<_> = [2, 5, 8, 11].iter().map(|i| new_owner(3, &lost, *i)).collect();
    assert_eq!(owners, vec![Some(0), Some(1), Some(0), Some(1)]);
    // Then member 1 too: member 0 fetches everything.
    let lost = BTreeSet::from([1, 2]);
    assert!([2, 5, 8, 11].iter().all(|i| new_owner(3, &lost, *i) == Some(0)));
    assert_eq!(new_owner(3, &BTreeSet::from([0, 1, 2]), 4), None);
}

#[test]
fn only_a_dead_or_stopped_member_is_lost_soon() {
    let view = |secs, unreachable, stopped| MemberView {
        since_growth: Duration::from_secs(secs),
        unreachable,
        stopped,
    };
    // A slow origin: the node answers, the job runs; lost only after FLEET_SAFETY.
    assert!(!view(60, false, false).lost());
    assert!(view(FLEET_SAFETY.as_secs(), false, false).lost());
    // Dead or stopped: lost once its copy did not grow for FLEET_PATIENCE.
    assert!(!view(2, true, false).lost());
    assert!(view(FLEET_PATIENCE.as_secs(), true, false).lost());
    assert!(view(FLEET_PATIENCE.as_secs(), false, true).lost());
}

fn fleet_view() -> View {
    let member = |member, node| MemberState { member, node, stopped: false, held: 0 };
    View {
        position: 1,
        copies: BTreeMap::new(),
        members: vec![member(0, 1), member(1, 2), member(2, 3)],
    }
}

/// Every piece the origin hands out now, in order.
fn drain_origin(router: &mut PieceRouter, view: &View, now: Instant) -> Vec<u32> {
    std::iter::from_fn(|| index(router.next_origin(Worker::Origin, u64::MAX, view, now))).collect()
}

#[test]
fn a_dead_fleet_members_share_comes_from_the_others_after_patience() {
    let fleet = FleetMember { fleet: JobId::generate(), member: 0, members: 3 };
    let view = fleet_view();
    let start = Instant::now();
    let mut router = PieceRouter::with_copies(pieces(0..10), Some(fleet), &view);
    assert_eq!(drain_origin(&mut router, &view, start), vec![0, 3, 6, 9]);
    // Member 1's node misses pings; member 2 is only slow.
    router.set_unreachable(BTreeSet::from([2]));
    let soon = start + FLEET_PATIENCE - Duration::from_secs(1);
    assert_eq!(router.next_origin(Worker::Origin, u64::MAX, &view, soon), Next::Wait);
    let later = start + FLEET_PATIENCE;
    // Member 1's pieces 1, 4, 7: this member takes 1 and 7, member 2 piece 4.
    assert_eq!(drain_origin(&mut router, &view, later), vec![1, 7]);
    // A slow origin at member 2: not lost after a minute, lost after FLEET_SAFETY.
    let minute = start + Duration::from_secs(60);
    assert_eq!(router.next_origin(Worker::Origin, u64::MAX, &view, minute), Next::Wait);
    let safety = start + FLEET_SAFETY;
    assert_eq!(drain_origin(&mut router, &view, safety), vec![2, 4, 5, 8]);
    assert_eq!(router.next_origin(Worker::Origin, u64::MAX, &view, safety), Next::Done);
}

#[test]
fn a_fleet_members_growing_copy_feeds_the_peers_and_keeps_it_alive() {
    let fleet = FleetMember { fleet: JobId::generate(), member: 0, members: 2 };
    let member = |member, node, held| MemberState { member, node, stopped: false, held };
    let mut view = View {
        position: 1,
        copies: BTreeMap::new(),
        members: vec![member(0, 1, 0), member(1, 2, 0)],
    };
    let start = Instant::now();
    let mut router = PieceRouter::with_copies(pieces(0..4), Some(fleet), &view);
    router.peer_worker_started();
    assert_eq!(drain_origin(&mut router, &view, start), vec![0, 2]);
    router.set_unreachable(BTreeSet::from([2]));
    // Member 1's copy grows (piece 1) just before patience runs out.
    view.position = 2;
    view.copies.insert(2, BTreeSet::from([1]));
    view.members[1].held = 1;
    let almost = start + FLEET_PATIENCE - Duration::from_secs(1);
    let Next::Piece((piece, holders)) = router.next_peer(&view, almost) else { panic!("no piece") };
    assert_eq!((piece.index, holders[0].node), (1, 2));
    // It grew: patience counts from then.
    let later = start + FLEET_PATIENCE + Duration::from_secs(1);
    assert_eq!(router.next_origin(Worker::Origin, u64::MAX, &view, later), Next::Wait);
    let lost = almost + FLEET_PATIENCE;
    assert_eq!(drain_origin(&mut router, &view, lost), vec![3]);
}

#[test]
fn a_member_inheriting_a_share_is_not_lost_for_being_quiet_while_nobody_waited() {
    // Member 2 of 3 (node 3); member 0 (node 1) fetched its pieces 0 and 3 early and
    // stayed quiet since; member 1 (node 2) dies.
    let fleet = FleetMember { fleet: JobId::generate(), member: 2, members: 3 };
    let mut view = fleet_view();
    let start = Instant::now();
    let mut router = PieceRouter::with_copies(pieces(0..6), Some(fleet), &view);
    router.peer_worker_started();
    assert_eq!(drain_origin(&mut router, &view, start), vec![2, 5]);
    view.position = 2;
    view.copies.insert(1, BTreeSet::from([0, 3]));
    view.members[0].held = 2;
    let early = start + Duration::from_secs(1);
    assert_eq!(router.next_origin(Worker::Origin, u64::MAX, &view, early), Next::Wait);
    router.set_unreachable(BTreeSet::from([2]));
    // Member 1 is lost: piece 1 goes to member 0, piece 4 to this member.
    let lost = start + FLEET_PATIENCE + Duration::from_secs(2);
    assert_eq!(drain_origin(&mut router, &view, lost), vec![4]);
    // Member 0 has not grown for 6 s, but nobody waited for it then: not lost.
    let after = lost + Duration::from_secs(1);
    assert_eq!(router.next_origin(Worker::Origin, u64::MAX, &view, after), Next::Wait);
}

#[test]
fn a_lost_helper_is_not_asked_again() {
    let (view, now) = (View::default(), Instant::now());
    let mut router = PieceRouter::origin_only(pieces(0..3));
    let Next::Piece(piece) = router.next_origin(Worker::Helper(5), 10, &view, now) else {
        panic!("no piece")
    };
    router.helper_lost(5, piece);
    assert_eq!(router.next_origin(Worker::Helper(5), 10, &view, now), Next::Done);
    assert_eq!(router.next_origin(Worker::Helper(6), 10, &view, now), Next::Piece(piece));
}

#[test]
fn a_helper_takes_no_piece_too_large_for_it() {
    let (view, now) = (View::default(), Instant::now());
    let big = Piece { index: 0, local_offset: 0, remote_offset: 0, len: 100 };
    let mut router = PieceRouter::origin_only(VecDeque::from([big]));
    assert_eq!(router.next_origin(Worker::Helper(5), 10, &view, now), Next::Done);
    assert_eq!(router.next_origin(Worker::Origin, u64::MAX, &view, now), Next::Piece(big));
}

fn peer(next: Next<(Piece, Vec<Holder>)>) -> Option<(u32, NodeId)> {
    match next {
        Next::Piece((piece, holders)) => Some((piece.index, holders[0].node)),
        _ => None,
    }
}

/// A view where `copies` hold pieces: node → indexes.
fn copies(held: &[(NodeId, &[u32])]) -> View {
    let mut view = View { position: 1, ..View::default() };
    for (node, pieces) in held {
        view.copies.insert(*node, pieces.iter().copied().collect());
    }
    view
}

#[test]
fn nodes_seeing_the_same_copies_draw_different_holders() {
    let holders: Vec<(NodeId, &[u32])> = (10..30).map(|n| (n, &[0u32][..])).collect();
    let view = copies(&holders);
    let now = Instant::now();
    let firsts: BTreeSet<NodeId> = (0..20)
        .filter_map(|seed| {
            let mut router = PieceRouter::with_copies(pieces([0]), None, &view).spread(seed);
            peer(router.next_peer(&view, now)).map(|(_, node)| node)
        })
        .collect();
    // A star would give one holder to every node.
    assert!(firsts.len() >= 8, "20 nodes drew only {firsts:?}");
}

#[test]
fn a_nodes_own_fetches_spread_over_the_holders() {
    let view = copies(&[(10, &[0, 1, 2, 3]), (11, &[0, 1, 2, 3])]);
    let now = Instant::now();
    let mut router = PieceRouter::with_copies(pieces(0..4), None, &view).spread(7);
    let mut at = BTreeMap::<NodeId, usize>::new();
    for _ in 0..4 {
        let (_, node) = peer(router.next_peer(&view, now)).expect("a piece");
        *at.entry(node).or_default() += 1;
    }
    assert_eq!(at.into_values().collect::<Vec<_>>(), vec![2, 2]);
}

#[test]
fn the_drawn_holders_rarest_piece_comes_first() {
    // Piece 2 is held by two copies, pieces 0 and 1 by three.
    let view = copies(&[(10, &[0, 1, 2]), (11, &[0, 1, 2]), (12, &[0, 1])]);
    let now = Instant::now();
    for seed in 0..32 {
        let mut router = PieceRouter::with_copies(pieces(0..3), None, &view).spread(seed);
        let (index, node) = peer(router.next_peer(&view, now)).expect("a piece");
        if node != 12 {
            assert_eq!(index, 2, "holder {node} has piece 2, the rarest");
        }
    }
}

#[test]
fn of_the_holders_drawn_the_one_holding_the_fewest_needed_pieces_serves() {
    // Holder 10 has ten of the pieces this node needs, holder 11 one: every node draws
    // 10 ten times as often, so 10 is the one crowded with requests.
    let view = copies(&[(10, &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]), (11, &[10])]);
    let now = Instant::now();
    let from_11 = (0..200)
        .filter(|seed| {
            let mut router = PieceRouter::with_copies(pieces(0..11), None, &view).spread(*seed);
            peer(router.next_peer(&view, now)) == Some((10, 11))
        })
        .count();
    // Taking the first holder drawn gives 11 a piece in 1 ask of 11 (18 of 200); keeping
    // the least needed of four draws, in 1 - (10/11)^4 of them (63 of 200).
    assert!(from_11 >= 45, "holder 11 served {from_11} of 200 first asks");
}

#[test]
fn a_busy_holder_is_passed_over_for_a_while_and_its_piece_kept_for_peers() {
    let view = copies(&[(10, &[0]), (11, &[0, 1])]);
    let now = Instant::now();
    let mut router = PieceRouter::with_copies(pieces(0..2), None, &view).spread(3);
    router.peer_worker_started();
    let Next::Piece((piece, holders)) = router.next_peer(&view, now) else { panic!("no piece") };
    let busy = holders[0].node;
    router.peer_busy(piece, busy, now, Duration::from_millis(1));
    // The other holder serves next; the busy one is not asked while BUSY lasts.
    for _ in 0..2 {
        if let Some((_, node)) = peer(router.next_peer(&view, now)) {
            assert_ne!(node, busy);
        }
    }
    // A busy answer sends nothing to the origin.
    assert_eq!(router.next_origin(Worker::Origin, u64::MAX, &view, now), Next::Wait);
    let census = router.census();
    assert_eq!(census, vec![0, 1]);
}

#[test]
fn a_busy_holder_is_asked_again_once_busy_is_over() {
    let view = copies(&[(10, &[0])]);
    let now = Instant::now();
    let mut router = PieceRouter::with_copies(pieces([0]), None, &view);
    let Next::Piece((piece, _)) = router.next_peer(&view, now) else { panic!("no piece") };
    router.peer_busy(piece, 10, now, Duration::from_millis(1));
    assert_eq!(router.next_peer(&view, now + BUSY / 2), Next::Wait);
    assert_eq!(peer(router.next_peer(&view, now + BUSY)), Some((0, 10)));
}

#[test]
fn a_holder_whose_busy_answer_was_slow_is_passed_over_for_twice_its_round_trip() {
    let view = copies(&[(10, &[0])]);
    let now = Instant::now();
    let mut router = PieceRouter::with_copies(pieces([0]), None, &view);
    let Next::Piece((piece, _)) = router.next_peer(&view, now) else { panic!("no piece") };
    let took = Duration::from_millis(300);
    router.peer_busy(piece, 10, now, took);
    assert_eq!(router.next_peer(&view, now + BUSY * 2), Next::Wait);
    assert_eq!(router.next_peer(&view, now + took * 2 - BUSY), Next::Wait);
    let Next::Piece((piece, holders)) = router.next_peer(&view, now + took * 2) else {
        panic!("the holder is not asked again after twice the round trip")
    };
    assert_eq!(holders[0].node, 10);
    // However slow the answer, the holder comes back after `BUSY_MAX`.
    router.peer_busy(piece, 10, now, Duration::from_secs(60));
    assert_eq!(router.next_peer(&view, now + BUSY_MAX - BUSY), Next::Wait);
    assert_eq!(peer(router.next_peer(&view, now + BUSY_MAX)), Some((0, 10)));
}

#[test]
fn a_fleet_member_fetches_its_origin_piece_once_the_window_reaches_it() {
    let chunk = 1 << 20;
    // The last of `members` members fetches pieces `last` and `last + members`.
    let members = ORIGIN_WINDOW as u32 + 4;
    let last = members - 1;
    let pieces = |len| -> VecDeque<Piece> {
        (0..2 * members)
            .map(|index| Piece { index, local_offset: 0, remote_offset: 0, len })
            .collect()
    };
    let fleet = FleetMember { fleet: JobId::generate(), member: last, members };
    let member =
        |member| MemberState { member, node: u64::from(member) + 100, stopped: false, held: 0 };
    let mut view =
        View { position: 1, members: (0..members).map(member).collect(), ..View::default() };
    let now = Instant::now();
    let mut router = PieceRouter::with_copies(pieces(chunk), Some(fleet), &view);
    router.peer_worker_started();
    // Every piece ahead of its first is missing everywhere, more than the window: it
    // waits.
    assert_eq!(router.next_origin(Worker::Origin, u64::MAX, &view, now), Next::Wait);
    // Pieces 0-3 reach copies: one fewer than the window ahead of it.
    for held in 0..4 {
        view.copies.insert(100 + u64::from(held), BTreeSet::from([held]));
    }
    view.position = 2;
    assert_eq!(index(router.next_origin(Worker::Origin, u64::MAX, &view, now)), Some(last));
    // Its second has far more missing ahead of it (its first among them): it waits.
    assert_eq!(router.next_origin(Worker::Origin, u64::MAX, &view, now), Next::Wait);
    // The window counts pieces, not bytes: pieces four times larger go as soon.
    let mut router = PieceRouter::with_copies(pieces(4 * chunk), Some(fleet), &view);
    router.peer_worker_started();
    assert_eq!(index(router.next_origin(Worker::Origin, u64::MAX, &view, now)), Some(last));
}

/// One event of a random run.
#[derive(Clone, Debug)]
enum Op {
    /// An origin connection asks for work.
    AskOrigin,
    /// Helper `n` (node 1 or 2) asks for work.
    AskHelper(u64),
    /// A peer worker asks for work.
    AskPeer,
    /// The `k`-th piece in flight is done.
    Finish(usize),
    /// The `k`-th piece in flight fails: an origin piece is given back, a helper is
    /// lost, a peer fails it.
    Fail(usize),
    /// Member `n` (node 10, 11 or 12) withdraws its copy: its pieces in flight fail.
    Withdraw(u64),
    /// A peer worker ends.
    PeerWorkerEnds,
    /// The `k`-th piece in flight from a peer is answered busy.
    Busy(usize),
}

fn op(slow_origin: bool) -> impl Strategy<Value = Op> {
    let fail = if slow_origin { 0u32 } else { 1 };
    prop_oneof![
        2 => Just(Op::AskOrigin),
        2 => (1u64..3).prop_map(Op::AskHelper),
        3 => Just(Op::AskPeer),
        4 => (0usize..8).prop_map(Op::Finish),
        (1 + fail) => (0usize..8).prop_map(Op::Fail),
        1 => (10u64..13).prop_map(Op::Withdraw),
        fail => Just(Op::PeerWorkerEnds),
        1 => (0usize..8).prop_map(Op::Busy),
    ]
}

/// A random run: the router, the simulated workers, and what they saw.
struct Sim {
    router: PieceRouter,
    view: View,
    now: Instant,
    total: u32,
    flying: Vec<(Piece, Place)>,
    done: BTreeSet<u32>,
    lost_helpers: BTreeSet<NodeId>,
    withdrawn: BTreeSet<NodeId>,
    peer_workers: usize,
    /// The origin never delivers (a slow origin).
    slow_origin: bool,
}

impl Sim {
    fn new(total: u32, held: Vec<BTreeSet<NodeId>>, slow_origin: bool) -> Self {
        let mut view = View::default();
        for (index, nodes) in held.iter().enumerate() {
            for node in nodes {
                view.copies.entry(*node).or_default().insert(index as u32);
            }
        }
        let mut router = PieceRouter::with_copies(pieces(0..total), None, &view);
        let peer_workers = if router.uses_peers() { 2 } else { 0 };
        for _ in 0..peer_workers {
            router.peer_worker_started();
        }
        Self {
            router,
            view,
            now: Instant::now(),
            total,
            flying: Vec::new(),
            done: BTreeSet::new(),
            lost_helpers: BTreeSet::new(),
            withdrawn: BTreeSet::new(),
            peer_workers,
            slow_origin,
        }
    }

    fn ask(&mut self, worker: Worker) {
        if let Next::Piece(piece) = self.router.next_origin(worker, u64::MAX, &self.view, self.now)
        {
            if let Worker::Helper(node) = worker {
                assert!(!self.lost_helpers.contains(&node), "a lost helper was asked again");
            }
            let place = match worker {
                Worker::Origin => Place::Origin,
                Worker::Helper(node) => Place::Helper(node),
            };
            self.flying.push((piece, place));
        }
    }

    fn ask_peer(&mut self) {
        if self.peer_workers == 0 {
            return;
        }
        if let Next::Piece((piece, holders)) = self.router.next_peer(&self.view, self.now) {
            assert!(!self.withdrawn.contains(&holders[0].node), "a withdrawn copy was asked");
            self.flying.push((piece, Place::Peer(holders[0].node)));
        }
    }

    fn finish(&mut self, k: usize) {
        let Some(at) = self.pick(k, true) else { return };
        let (piece, _) = self.flying.remove(at);
        assert!(self.router.done(piece.index), "piece {} was not in flight", piece.index);
        assert!(self.done.insert(piece.index), "piece {} done twice", piece.index);
    }

    fn fail(&mut self, k: usize) {
        let Some(at) = self.pick(k, true) else { return };
        let (piece, place) = self.flying.remove(at);
        match place {
            Place::Origin => self.router.give_back(piece),
            Place::Helper(node) => {
                self.lost_helpers.insert(node);
                // Every piece the helper holds fails with it.
                self.router.helper_lost(node, piece);
                while let Some(at) = self.flying.iter().position(|(_, p)| *p == Place::Helper(node))
                {
                    let (piece, _) = self.flying.remove(at);
                    self.router.helper_lost(node, piece);
                }
            }
            Place::Peer(node) => self.router.peer_failed(piece, node),
        }
    }

    fn withdraw(&mut self, node: NodeId) {
        self.withdrawn.insert(node);
        self.view.copies.remove(&node);
        self.view.position += 1;
        while let Some(at) = self.flying.iter().position(|(_, p)| *p == Place::Peer(node)) {
            let (piece, _) = self.flying.remove(at);
            self.router.peer_failed(piece, node);
        }
    }

    /// The `k`-th piece in flight (modulo), skipping the origin's when it is slow.
    fn pick(&self, k: usize, delivering: bool) -> Option<usize> {
        let eligible: Vec<usize> = (0..self.flying.len())
            .filter(|i| !(delivering && self.slow_origin && self.flying[*i].1 == Place::Origin))
            .collect();
        (!eligible.is_empty()).then(|| eligible[k % eligible.len()])
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::AskOrigin => self.ask(Worker::Origin),
            Op::AskHelper(n) => self.ask(Worker::Helper(*n)),
            Op::AskPeer => self.ask_peer(),
            Op::Finish(k) => self.finish(*k),
            Op::Fail(k) => self.fail(*k),
            Op::Withdraw(n) => self.withdraw(*n),
            Op::Busy(k) => {
                let peers: Vec<usize> = (0..self.flying.len())
                    .filter(|i| matches!(self.flying[*i].1, Place::Peer(_)))
                    .collect();
                if !peers.is_empty() {
                    let (piece, place) = self.flying.remove(peers[k % peers.len()]);
                    if let Place::Peer(node) = place {
                        self.router.peer_busy(piece, node, self.now, Duration::ZERO);
                    }
                }
            }
            Op::PeerWorkerEnds => {
                if self.peer_workers > 0 {
                    self.peer_workers -= 1;
                    self.router.peer_worker_ended();
                    // Its piece in flight fails with it.
                    if let Some(at) =
                        self.flying.iter().position(|(_, p)| matches!(p, Place::Peer(_)))
                    {
                        let (piece, place) = self.flying.remove(at);
                        if let Place::Peer(node) = place {
                            self.router.peer_failed(piece, node);
                        }
                    }
                }
            }
        }
        self.now += Duration::from_millis(100);
        self.check();
    }

    /// No piece lost or counted twice; complete iff every piece is done.
    fn check(&self) {
        let census = self.router.census();
        assert_eq!(census, (0..self.total).collect::<Vec<_>>(), "a piece was lost or doubled");
        assert_eq!(self.router.is_complete(), self.done.len() == self.total as usize);
    }

    /// Every worker but a slow origin asks and delivers until nothing is left.
    fn drain(&mut self) {
        for _ in 0..(10 * self.total + 100) {
            if self.router.is_complete() {
                return;
            }
            self.ask_peer();
            for helper in 1..3 {
                if !self.lost_helpers.contains(&helper) {
                    self.ask(Worker::Helper(helper));
                }
            }
            if !self.slow_origin {
                self.ask(Worker::Origin);
            }
            while let Some(at) = self.pick(0, true) {
                self.finish(at);
            }
            self.now += Duration::from_millis(100);
            self.check();
        }
    }
}

fn holdings() -> impl Strategy<Value = (u32, Vec<BTreeSet<NodeId>>)> {
    (1u32..24).prop_flat_map(|total| {
        let held =
            prop::collection::vec(prop::collection::btree_set(10u64..13, 0..3), total as usize);
        (Just(total), held)
    })
}

proptest! {
    /// Whatever the interleaving of asks, deliveries, failures, lost helpers, lost
    /// peers and withdrawn copies, no piece is lost or done twice, a lost helper is
    /// never asked again, a withdrawn copy is never asked, and the file completes
    /// (only) once every piece is done.
    #[test]
    fn no_piece_is_lost_or_done_twice(
        (total, held) in holdings(),
        ops in prop::collection::vec(op(false), 0..120),
    ) {
        let mut sim = Sim::new(total, held, false);
        for op in &ops {
            sim.apply(op);
        }
        // Helpers 1 and 2 are lost: the origin and peers fetch what they did not.
        while let Some(at) = sim.flying.iter().position(|(_, p)| matches!(p, Place::Helper(_))) {
            let (piece, place) = sim.flying.remove(at);
            if let Place::Helper(node) = place {
                sim.lost_helpers.insert(node);
                sim.router.helper_lost(node, piece);
            }
        }
        for node in sim.lost_helpers.clone() {
            let next = sim.router.next_origin(Worker::Helper(node), u64::MAX, &sim.view, sim.now);
            prop_assert_eq!(next, Next::Done);
        }
        sim.lost_helpers.extend([1, 2]);
        sim.drain();
        prop_assert!(sim.router.is_complete());
        prop_assert_eq!(sim.done.len(), total as usize);
    }

    /// An origin that never delivers does not stop peers and helpers: everything
    /// not in the origin's hands gets done.
    #[test]
    fn a_slow_origin_does_not_stop_peers_and_helpers(
        (total, held) in holdings(),
        ops in prop::collection::vec(op(true), 0..120),
    ) {
        let mut sim = Sim::new(total, held, true);
        for op in &ops {
            sim.apply(op);
        }
        // Helpers come back as new members (nodes 1 and 2 may be lost): node 3 helps.
        for _ in 0..(10 * total + 100) {
            sim.ask_peer();
            sim.ask(Worker::Helper(3));
            while let Some(at) = sim.pick(0, true) {
                sim.finish(at);
            }
            sim.check();
        }
        let at_origin = sim.flying.iter().filter(|(_, p)| *p == Place::Origin).count();
        prop_assert_eq!(sim.done.len() + at_origin, total as usize);
    }

    /// A copy withdrawn while its pieces are fetched: they are fetched again, from
    /// another holder or the origin, and the file completes.
    #[test]
    fn pieces_of_a_withdrawn_copy_are_fetched_again(
        (total, held) in holdings(),
        asks in 0usize..30,
        node in 10u64..13,
    ) {
        let mut sim = Sim::new(total, held, false);
        for _ in 0..asks {
            sim.ask_peer();
        }
        sim.withdraw(node);
        sim.check();
        sim.drain();
        prop_assert!(sim.router.is_complete());
        prop_assert_eq!(sim.done.len(), total as usize);
    }
}
