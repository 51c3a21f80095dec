//! The simulator's events, in time order, and the requests they carry.

use super::net::{FlowId, Src};

/// A worker's kind.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Origin,
    Peer,
}

/// What a worker does (see [`PeerTime`](super::PeerTime)).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Asking,
    Busy,
    Flowing,
    Landing,
    Waiting,
    /// Not running, or its node finished: not counted.
    Off,
}

/// A piece requested by worker `worker` of node `node` from `src`.
#[derive(Clone, Copy)]
pub(super) struct Req {
    pub(super) node: u32,
    pub(super) worker: u16,
    pub(super) piece: u32,
    pub(super) src: Src,
    /// Its worker has asked for its next piece already (pipelined, see
    /// [`Swarm::pipeline`](super::Swarm::pipeline)).
    pub(super) next_asked: bool,
}

#[derive(Clone, Copy)]
pub(super) enum Event {
    /// A worker asks its router for work (ignored if the worker was woken since: its
    /// wake counter is no longer `wake`).
    Ask { node: u32, worker: u16, wake: u32 },
    /// A request reaches its source.
    Arrive(Req),
    /// A flow may have ended (if its version is still current).
    FlowEnd { flow: FlowId, version: u64 },
    /// A flow from a holder is one latency from its end (if its version is still
    /// current): a pipelining worker asks for its next piece.
    NearEnd { flow: FlowId, version: u64 },
    /// A piece's last byte reached its node.
    Delivered(Req),
    /// A piece is written and synced.
    Durable(Req),
    /// Others' views list node `node`'s piece `index`.
    Announce { node: u32, index: u32 },
    /// A request to a dead node failed.
    Failed(Req),
    /// A holder answered busy.
    Busy(Req),
    /// Node `node` dies.
    Die { node: u32 },
    /// Node `node` has missed pings long enough to be unreachable.
    Unreachable { node: u32 },
}

/// An event at a time; the sequence number keeps equal times in order.
pub(super) struct At(pub(super) u64, pub(super) u64, pub(super) Event);

impl PartialEq for At {
    fn eq(&self, other: &Self) -> bool {
        (self.0, self.1) == (other.0, other.1)
    }
}
impl Eq for At {}
impl PartialOrd for At {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for At {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.0, self.1).cmp(&(other.0, other.1))
    }
}
