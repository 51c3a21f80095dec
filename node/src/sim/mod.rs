//! A discrete-event simulator of a fleet distributing one file over a modelled
//! network, driving Ferry's own [`PieceRouter`](crate::transfer::router::PieceRouter)
//! on every simulated node: what `ferry-bench swarm` runs, at 10 to 2,600 nodes.
//!
//! The model: every node has an upload and a download link, shared fairly by its
//! flows (a flow runs at the smaller of its sender's and its receiver's share); the
//! origin has an egress limit shared the same way; every message takes one latency.
//! Each node is a fleet member with the shell's workers (`connections` origin workers,
//! [`peer_workers`] peer workers, idle workers asking again after the router's `IDLE` or, as the
//! shell's desk wakes them, at once when an ask frees pieces, every
//! origin worker asking for its next piece once the last one's bytes are in, every
//! peer worker [`Swarm::pipeline`] round trips before, while that one is written); a
//! holder serves at most
//! `max_serving` pieces at once and answers others busy; a piece is written
//! (`write`), then reported, and other nodes' views list it `announce` later
//! (the Raft commit). A node may die at a given time: its transfers stop, requests to
//! it fail after `dead_answer`, and the others find it unreachable after `silence`.
//!
//! Not modelled: CPU, disks beyond a fixed write time, TCP/QUIC slow start, packet
//! loss. Deterministic: the same [`Swarm`] gives the same [`Outcome`] (simulated time,
//! a seeded generator; no clock is read and nothing sleeps).
//!
//! Not part of Ferry's API: a tool for benchmarks and tests.

mod engine;
mod event;
mod net;
mod view;

#[cfg(test)]
mod tests;

use std::time::Duration;

pub use engine::run;

/// Bytes per megabyte in the simulator's rates and sizes (10^6, as link rates are
/// quoted).
pub const MB: u64 = 1_000_000;

/// One simulated distribution: the fleet, the file, the network and its failures.
#[derive(Clone, Debug)]
pub struct Swarm {
    /// Fleet members (nodes), each fetching the whole file.
    pub nodes: usize,
    /// The file's size in bytes.
    pub file_bytes: u64,
    /// The chunk size (a fleet's for the file: `ferry_protocol::peer_cache::FLEET_CHUNK_SIZE`,
    /// grown as `ferry_protocol::transfer::chunk_size_for` grows it).
    pub chunk_size: u64,
    /// Each node's upload and download rate, in bytes per second.
    pub link: f64,
    /// The origin's egress limit, in bytes per second.
    pub origin: f64,
    /// How a link's rate is divided among its flows.
    pub sharing: Sharing,
    /// One message's way between any two parties (origin included).
    pub latency: Duration,
    /// From a piece durable at a node to other nodes' views listing it (report and
    /// Raft commit): pieces are applied in batches, one every `announce`, each at
    /// least `announce` after it was durable.
    pub announce: Duration,
    /// Writing and syncing a received piece.
    pub write: Duration,
    /// Origin workers per node (`[transfer] connections`).
    pub connections: usize,
    /// Peer workers per node (the shell's `PEER_WORKERS`).
    pub peer_workers: usize,
    /// Peer workers pipeline: each asks for its next piece when its current one is
    /// this many round trips from its last byte (the shell's near-end signal, the
    /// router's `PIPELINE_ROUND_TRIPS`; at one,
    /// the next request reaches the holder as the current piece leaves it). 0: a
    /// worker asks once its piece is in.
    pub pipeline: u32,
    /// Pieces a holder serves at once (as many as `[peer_cache] max_serving`'s slots
    /// hold: [`served_at_once`]).
    pub max_serving: usize,
    /// Requests a holder keeps waiting beyond those; more are answered busy (the
    /// router's `peer_busy`). Ferry's holder keeps none: it answers busy at once (0).
    pub queue: usize,
    /// Holders a node's view lists for a piece: at most this many, drawn at random
    /// per question (listing 2,600 copies per question would be the simulator's cost,
    /// not Ferry's: a real fleet has at most 64 members).
    pub sample: usize,
    /// Nodes that die, and when (index, time after the start).
    pub failures: Vec<(usize, Duration)>,
    /// How long a dead node's pings go unanswered before others call it unreachable
    /// (the shell's `helper::SILENCE`).
    pub silence: Duration,
    /// How long a request to a dead node takes to fail.
    pub dead_answer: Duration,
    /// How long a worker with nothing to do waits before asking again (the router's
    /// `IDLE`, which the shell uses).
    pub idle: Duration,
    /// A fleet's origin window in pieces (the router's `ORIGIN_WINDOW`).
    pub window: usize,
    /// How long a node passes over a holder that answered busy (the router's `BUSY`).
    pub busy: Duration,
    /// The generator's seed.
    pub seed: u64,
    /// Simulated time after which the run stops, finished or not.
    pub horizon: Duration,
    /// Times at which the run notes how many bytes the nodes hold ([`Outcome::held`]).
    pub marks: Vec<Duration>,
}

impl Swarm {
    /// `nodes` nodes fetching `file_bytes` over links of `link` bytes/s from an origin
    /// limited to `origin` bytes/s, with Ferry's defaults for the rest: a fleet's chunk
    /// size, one origin connection, the peer workers of that size (twenty for 1 MiB,
    /// pipelined), the pieces a holder serves at once with the default `[peer_cache]
    /// max_serving` (twenty of 1 MiB), 0.5 ms latency, 5 ms to announce a piece, 2 ms
    /// to write one.
    pub fn new(nodes: usize, file_bytes: u64, link: f64, origin: f64) -> Self {
        let chunk_size = ferry_protocol::transfer::chunk_size_for(
            file_bytes,
            ferry_protocol::peer_cache::FLEET_CHUNK_SIZE,
        );
        Self {
            nodes,
            file_bytes,
            chunk_size,
            link,
            origin,
            sharing: Sharing::Equal,
            latency: Duration::from_micros(500),
            announce: Duration::from_millis(5),
            write: Duration::from_millis(2),
            connections: 1,
            peer_workers: peer_workers(chunk_size),
            pipeline: crate::transfer::router::PIPELINE_ROUND_TRIPS,
            max_serving: served_at_once(chunk_size),
            queue: 0,
            sample: 8,
            failures: Vec::new(),
            silence: Duration::from_millis(2_500),
            dead_answer: Duration::from_secs(1),
            idle: crate::transfer::router::IDLE,
            window: crate::transfer::router::ORIGIN_WINDOW,
            busy: crate::transfer::router::BUSY,
            seed: 1,
            horizon: Duration::from_secs(600),
            marks: [1, 2, 5, 10].map(Duration::from_secs).to_vec(),
        }
    }
}

/// How a link (a node's upload or download, the origin's egress) divides its rate
/// among the flows on it. Either way a flow runs at the smaller of its two shares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Sharing {
    /// Equal shares: a share its flow cannot use (held back at its other end) is lost.
    Equal,
    /// Water-filling: a flow held back at its other end leaves the rest of its share
    /// to the others (max-min fairness at each link, as TCP's and QUIC's congestion
    /// control tend to; each link is divided anew whenever a flow starts or ends on
    /// it, from its flows' shares at their other ends).
    Fill,
}

/// Pieces of `chunk_size` a holder with the default `[peer_cache] max_serving` serves
/// at once (each takes `peer_cache::slots_for` its slots).
pub fn served_at_once(chunk_size: u64) -> usize {
    let slots = crate::config::PeerCacheConfig::default().max_serving;
    slots / crate::transfer::peer_cache::slots_for(chunk_size, slots)
}

/// Ferry's peer workers for a file of `chunk_size` pieces (the router's rule).
pub fn peer_workers(chunk_size: u64) -> usize {
    crate::transfer::router::peer_workers(chunk_size)
}

/// What a simulated distribution gave.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// When each surviving node held the whole file, sorted (time from the start).
    pub finished: Vec<Duration>,
    /// Surviving nodes that never held the whole file.
    pub unfinished: usize,
    /// Bytes the origin sent (pieces cut off by a death count as far as they went).
    pub origin_bytes: u64,
    /// When the origin sent its last byte.
    pub origin_last: Duration,
    /// Bytes nodes sent each other.
    pub peer_bytes: u64,
    /// Most pieces any node served at once.
    pub max_serving: usize,
    /// Most distinct nodes any one node served.
    pub max_served_peers: usize,
    /// Mean distinct nodes a node served.
    pub mean_served_peers: f64,
    /// Nodes that served nobody.
    pub idle_servers: usize,
    /// Requests answered busy.
    pub busy_answers: u64,
    /// Pieces requested from a node that had died.
    pub failed_requests: u64,
    /// Where the peer workers' time went, summed over every surviving node until it
    /// held the file.
    pub peer_time: PeerTime,
    /// Events processed (the simulator's own cost).
    pub events: u64,
    /// At each of the swarm's marks (that the run reached), the bytes the live nodes
    /// held durably: where a fleet falls behind its link, early or late.
    pub held: Vec<Held>,
}

/// The bytes live nodes held at one time.
#[derive(Clone, Copy, Debug, Default)]
pub struct Held {
    /// Time from the start.
    pub at: Duration,
    /// The least any node held.
    pub min: u64,
    /// The median node's.
    pub p50: u64,
    /// The most any node held.
    pub max: u64,
}

impl Held {
    /// What nodes holding `bytes` each hold at `at` (`None` without nodes).
    fn of(at: Duration, bytes: impl Iterator<Item = u64>) -> Option<Self> {
        let mut held: Vec<u64> = bytes.collect();
        held.sort_unstable();
        let (min, max) = (*held.first()?, *held.last()?);
        Some(Self { at, min, p50: held[held.len() / 2], max })
    }
}

/// Seconds of peer-worker time in each phase of fetching a piece, summed over workers.
#[derive(Clone, Copy, Debug, Default)]
pub struct PeerTime {
    /// From the ask that handed a piece out until its bytes start (the request's way,
    /// or a dead holder's silence).
    pub asking: f64,
    /// From a holder's busy answer until the worker asks again (the answer's way back).
    pub busy: f64,
    /// Bytes on their way.
    pub flowing: f64,
    /// From the last byte until the next ask (its way in, and a write still running).
    pub landing: f64,
    /// Told to wait, until the next ask.
    pub waiting: f64,
}

impl PeerTime {
    /// Each phase's share of the whole, in the order of the fields.
    pub fn shares(&self) -> [f64; 5] {
        let all = [self.asking, self.busy, self.flowing, self.landing, self.waiting];
        let total: f64 = all.iter().sum();
        all.map(|t| if total > 0.0 { t / total } else { 0.0 })
    }
}

impl Outcome {
    /// The `p`-th percentile (0-100) of the finishing times (nearest rank).
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        if self.finished.is_empty() {
            return None;
        }
        let rank = ((p / 100.0) * self.finished.len() as f64).ceil() as usize;
        Some(self.finished[rank.clamp(1, self.finished.len()) - 1])
    }

    /// Origin egress over the file's size.
    pub fn egress_ratio(&self, file_bytes: u64) -> f64 {
        self.origin_bytes as f64 / file_bytes as f64
    }
}
