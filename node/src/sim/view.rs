//! The simulated replicated state as a node's router reads it: which node's copy
//! holds which piece (once announced), as a [`CopyView`].

use std::cell::Cell;
use std::collections::BTreeSet;

use ferry_protocol::transfer::Piece;
use ferry_protocol::{JobId, NodeId};

use crate::transfer::router::{CopyView, Holder, MemberState, mix};

/// Every node's announced pieces: what the applied queue's chunk records say.
pub(super) struct Copies {
    /// Per piece, the nodes (indexes) whose copy holds it, in announcement order.
    holders: Vec<Vec<u32>>,
    /// Per node, a bit per piece its copy holds.
    has: Vec<Vec<u64>>,
    /// Per node, how many pieces its copy holds.
    held: Vec<usize>,
    /// Batches of announcements applied so far: the view's position.
    position: u64,
    /// When the last batch was applied (ns).
    applied_at: Option<u64>,
    /// The job every simulated copy is named by (the router does not look at it).
    job: JobId,
}

impl Copies {
    /// No copy holds anything yet.
    pub(super) fn new(nodes: usize, pieces: usize) -> Self {
        Self {
            holders: vec![Vec::new(); pieces],
            has: vec![vec![0; pieces.div_ceil(64)]; nodes],
            held: vec![0; nodes],
            position: 0,
            applied_at: None,
            job: JobId::generate(),
        }
    }

    /// Node `node`'s copy now holds piece `index` (in others' views), applied at `now`:
    /// announcements applied at the same time are one batch (one position).
    pub(super) fn announce(&mut self, node: usize, index: u32, now: u64) {
        let (word, bit) = (index as usize / 64, index % 64);
        if self.has[node][word] & (1 << bit) != 0 {
            return;
        }
        self.has[node][word] |= 1 << bit;
        self.holders[index as usize].push(node as u32);
        self.held[node] += 1;
        if self.applied_at != Some(now) {
            self.applied_at = Some(now);
            self.position += 1;
        }
    }

    fn holds(&self, node: usize, index: u32) -> bool {
        self.has.get(node).is_some_and(|bits| bits[index as usize / 64] & (1 << (index % 64)) != 0)
    }
}

/// The node id of node index `node` (ids start at 1).
pub(super) fn node_id(node: usize) -> NodeId {
    node as NodeId + 1
}

/// The node index of node id `id`.
pub(super) fn node_index(id: NodeId) -> usize {
    (id - 1) as usize
}

/// What node `me` reads: the others' copies, at most `sample` holders per piece drawn
/// afresh at each question.
pub(super) struct View<'c> {
    pub(super) copies: &'c Copies,
    pub(super) me: usize,
    pub(super) sample: usize,
    /// The generator of the draws.
    pub(super) draw: Cell<u64>,
}

impl View<'_> {
    fn next(&self) -> u64 {
        let value = mix(self.draw.get());
        self.draw.set(value);
        value
    }

    fn holder(&self, node: u32) -> Holder {
        Holder { node: node_id(node as usize), job: self.copies.job, file: 0, digest: [0; 32] }
    }
}

impl CopyView for View<'_> {
    fn position(&self) -> u64 {
        self.copies.position
    }

    fn holders(&self, piece: &Piece) -> Vec<Holder> {
        let all = &self.copies.holders[piece.index as usize];
        let others = |n: &&u32| **n as usize != self.me;
        if all.len() <= self.sample {
            return all.iter().filter(others).map(|n| self.holder(*n)).collect();
        }
        let mut chosen: Vec<u32> = Vec::with_capacity(self.sample);
        for _ in 0..self.sample * 2 {
            if chosen.len() == self.sample {
                break;
            }
            let node = all[(self.next() % all.len() as u64) as usize];
            if node as usize != self.me && !chosen.contains(&node) {
                chosen.push(node);
            }
        }
        chosen.into_iter().map(|n| self.holder(n)).collect()
    }

    fn members(&self) -> Vec<MemberState> {
        let all: BTreeSet<u32> = (0..self.copies.held.len() as u32).collect();
        self.members_of(&all)
    }

    fn holder_count(&self, piece: &Piece) -> usize {
        let all = self.copies.holders[piece.index as usize].len();
        all - usize::from(self.copies.holds(self.me, piece.index))
    }

    fn holds(&self, node: NodeId, piece: &Piece) -> bool {
        let node = node_index(node);
        node != self.me && self.copies.holds(node, piece.index)
    }

    fn members_of(&self, wanted: &BTreeSet<u32>) -> Vec<MemberState> {
        (wanted.iter())
            .filter(|m| (**m as usize) < self.copies.held.len())
            .map(|m| MemberState {
                member: *m,
                node: node_id(*m as usize),
                stopped: false,
                held: self.copies.held[*m as usize],
            })
            .collect()
    }
}
