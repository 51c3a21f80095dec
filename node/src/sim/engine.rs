//! The event loop: nodes' workers asking their routers, requests reaching origin and
//! holders, flows ending, pieces written and announced, nodes dying.

use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use ferry_protocol::JobId;
use ferry_protocol::NodeId;
use ferry_protocol::peer_cache::FleetMember;
use ferry_protocol::transfer::{Piece, plan};

use super::event::{At, Event, Kind, Phase, Req};
use super::net::{Ends, FlowId, Net, Src};
use super::view::{Copies, View, node_id, node_index};
use super::{Held, Outcome, Swarm};
use crate::transfer::router::{Next, PieceRouter, Worker, mix};

/// One simulated node: its router and the shell around it.
struct Node {
    router: PieceRouter,
    alive: bool,
    /// Each worker's kind and whether it runs.
    workers: Vec<(Kind, bool)>,
    /// Each worker's wake counter, and whether it waits after a [`Next::Wait`] (the
    /// shell's desk wakes such workers as soon as pieces come free).
    parked: Vec<(u32, bool)>,
    /// Each worker's phase and since when (ns).
    phase: Vec<(Phase, u64)>,
    /// When each worker's last write ends (ns): it writes one piece at a time.
    written: Vec<u64>,
    /// Each worker's requests on their way (asked, not yet delivered or refused; two
    /// at most, as the shell's), and whether it owes an ask: its last one found
    /// nothing while a request was on its way, or a request neared its end while two
    /// were. Either way it asks once one lands.
    flying: Vec<(u8, bool)>,
    /// Pieces received and not yet written.
    writing: usize,
    /// Pieces done.
    done: usize,
    /// Their bytes.
    done_bytes: u64,
    /// When it held the whole file (ns).
    finished: Option<u64>,
    /// Requests waiting for one of its serving slots.
    queue: VecDeque<Req>,
    /// Pieces it serves now.
    serving: usize,
    /// Nodes it served.
    served: BTreeSet<u32>,
}

struct Engine<'s> {
    swarm: &'s Swarm,
    pieces: Vec<Piece>,
    nodes: Vec<Node>,
    copies: Copies,
    net: Net,
    by_flow: Vec<Option<Req>>,
    events: BinaryHeap<Reverse<At>>,
    seq: u64,
    now: u64,
    start: Instant,
    rng: u64,
    unreachable: BTreeSet<NodeId>,
    outcome: Outcome,
}

fn ns(d: Duration) -> u64 {
    d.as_nanos() as u64
}

/// Runs `swarm` to the end (every surviving node holds the file, or the horizon).
pub fn run(swarm: &Swarm) -> Outcome {
    let pieces = plan(&[], swarm.file_bytes, swarm.chunk_size).unwrap_or_default();
    let copies = Copies::new(swarm.nodes, pieces.len());
    let fleet = JobId::generate();
    let members = swarm.nodes as u32;
    let mut nodes = Vec::with_capacity(swarm.nodes);
    for n in 0..swarm.nodes {
        let view = View { copies: &copies, me: n, sample: swarm.sample, draw: Cell::new(0) };
        let tag = FleetMember { fleet, member: n as u32, members };
        let router = PieceRouter::with_copies(pieces.iter().copied().collect(), Some(tag), &view)
            .spread(mix(swarm.seed ^ node_id(n)))
            .origin_window(swarm.window)
            .busy_for(swarm.busy);
        let mut workers = vec![(Kind::Origin, false); swarm.connections];
        workers.extend(vec![(Kind::Peer, false); swarm.peer_workers]);
        nodes.push(Node {
            router,
            alive: true,
            written: vec![0; workers.len()],
            parked: vec![(0, false); workers.len()],
            phase: vec![(Phase::Off, 0); workers.len()],
            flying: vec![(0, false); workers.len()],
            workers,
            writing: 0,
            done: 0,
            done_bytes: 0,
            finished: None,
            queue: VecDeque::new(),
            serving: 0,
            served: BTreeSet::new(),
        });
    }
    let mut engine = Engine {
        swarm,
        pieces,
        nodes,
        copies,
        net: Net::new(swarm.nodes, swarm.link, swarm.origin, swarm.sharing),
        by_flow: Vec::new(),
        events: BinaryHeap::new(),
        seq: 0,
        now: 0,
        start: Instant::now(),
        rng: mix(swarm.seed),
        unreachable: BTreeSet::new(),
        outcome: Outcome::default(),
    };
    for n in 0..swarm.nodes {
        engine.start_round(n);
    }
    for (node, at) in &swarm.failures {
        if *node < swarm.nodes {
            engine.at(ns(*at), Event::Die { node: *node as u32 });
        }
    }
    engine.run();
    engine.finish()
}

impl Engine<'_> {
    fn at(&mut self, time: u64, event: Event) {
        self.seq += 1;
        self.events.push(Reverse(At(time, self.seq, event)));
    }

    fn after(&mut self, delay: Duration, event: Event) {
        self.at(self.now + ns(delay), event);
    }

    fn run(&mut self) {
        let horizon = ns(self.swarm.horizon);
        let mut marks: Vec<u64> = self.swarm.marks.iter().map(|m| ns(*m)).collect();
        marks.sort_unstable_by(|a, b| b.cmp(a));
        while let Some(Reverse(At(time, _, event))) = self.events.pop() {
            if time > horizon {
                break;
            }
            while let Some(&mark) = marks.last()
                && mark <= time
            {
                marks.pop();
                let held = self.nodes.iter().filter(|n| n.alive).map(|n| n.done_bytes);
                self.outcome.held.extend(Held::of(Duration::from_nanos(mark), held));
            }
            self.now = time;
            self.outcome.events += 1;
            self.handle(event);
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Ask { node, worker, wake } => {
                let (n, w) = (node as usize, worker as usize);
                if self.nodes[n].parked[w].0 == wake {
                    self.nodes[n].parked[w].1 = false;
                    self.asked(n, |engine| engine.ask(n, w));
                }
            }
            Event::Arrive(req) => self.arrive(req),
            Event::FlowEnd { flow, version } => self.flow_end(flow, version),
            Event::NearEnd { flow, version } => self.near_end(flow, version),
            Event::Delivered(req) => self.delivered(req),
            Event::Durable(req) => self.durable(req),
            Event::Announce { node, index } => {
                if self.nodes[node as usize].alive {
                    self.copies.announce(node as usize, index, self.now);
                }
            }
            Event::Failed(req) => self.asked(req.node as usize, |engine| engine.failed(req)),
            Event::Busy(req) => self.asked(req.node as usize, |engine| engine.busy(req)),
            Event::Die { node } => self.die(node as usize),
            Event::Unreachable { node } => {
                self.unreachable.insert(node_id(node as usize));
                for n in 0..self.nodes.len() {
                    if self.nodes[n].alive {
                        self.nodes[n].router.set_unreachable(self.unreachable.clone());
                    }
                }
            }
        }
    }

    /// The shell's round: peer workers (if pieces may come from peers) and origin
    /// workers start and ask.
    fn start_round(&mut self, n: usize) {
        let left = self.nodes[n].router.len();
        if left == 0 {
            return;
        }
        let peers = self.nodes[n].router.uses_peers();
        let mut origin = self.swarm.connections.min(left);
        for w in 0..self.nodes[n].workers.len() {
            let run = match self.nodes[n].workers[w].0 {
                Kind::Peer => peers,
                Kind::Origin if origin > 0 => {
                    origin -= 1;
                    true
                }
                Kind::Origin => false,
            };
            if run {
                if self.nodes[n].workers[w].0 == Kind::Peer {
                    self.nodes[n].router.peer_worker_started();
                }
                self.nodes[n].workers[w].1 = true;
                self.ask_now(n, w);
            }
        }
    }

    /// Worker `w` of node `n` asks now.
    fn ask_now(&mut self, n: usize, w: usize) {
        let wake = self.nodes[n].parked[w].0;
        self.at(self.now, Event::Ask { node: n as u32, worker: w as u16, wake });
    }

    /// Runs `step` (an ask of node `n`'s router, or news told to it) as the shell's
    /// desk answers it: if pieces came free, the node's waiting workers ask again at
    /// once instead of after `idle`.
    fn asked(&mut self, n: usize, step: impl FnOnce(&mut Self)) {
        let before = self.nodes[n].router.ready();
        step(self);
        let node = &mut self.nodes[n];
        let after = node.router.ready();
        if !node.alive || (after.0 <= before.0 && after.1 <= before.1) {
            return;
        }
        let mut woken = Vec::new();
        for (w, parked) in node.parked.iter_mut().enumerate() {
            if parked.1 {
                *parked = (parked.0.wrapping_add(1), false);
                woken.push((w as u16, parked.0));
            }
        }
        for (worker, wake) in woken {
            self.at(self.now, Event::Ask { node: n as u32, worker, wake });
        }
    }

    fn ask(&mut self, n: usize, w: usize) {
        let node = &mut self.nodes[n];
        if !node.alive || !node.workers[w].1 {
            return;
        }
        self.rng = mix(self.rng);
        let view = View {
            copies: &self.copies,
            me: n,
            sample: self.swarm.sample,
            draw: Cell::new(self.rng),
        };
        let now = self.start + Duration::from_nanos(self.now);
        let (worker, kind) = (w as u16, node.workers[w].0);
        let asked = match kind {
            Kind::Origin => match node.router.next_origin(Worker::Origin, u64::MAX, &view, now) {
                Next::Piece(p) => Next::Piece((p, Src::Origin)),
                Next::Wait => Next::Wait,
                Next::Done => Next::Done,
            },
            Kind::Peer => match node.router.next_peer(&view, now) {
                Next::Piece((p, holders)) => match holders.first() {
                    Some(h) => Next::Piece((p, Src::Node(node_index(h.node)))),
                    None => Next::Wait,
                },
                Next::Wait => Next::Wait,
                Next::Done => Next::Done,
            },
        };
        let phase = match asked {
            Next::Piece(_) => Phase::Asking,
            Next::Wait => Phase::Waiting,
            Next::Done => Phase::Off,
        };
        self.enter(n, w, phase);
        match asked {
            Next::Piece((piece, src)) => {
                self.nodes[n].flying[w].0 += 1;
                let req =
                    Req { node: n as u32, worker, piece: piece.index, src, next_asked: false };
                self.after(self.swarm.latency, Event::Arrive(req));
            }
            Next::Wait => {
                let parked = &mut self.nodes[n].parked[w];
                parked.1 = true;
                let wake = parked.0;
                self.after(self.swarm.idle, Event::Ask { node: n as u32, worker, wake });
            }
            Next::Done if self.nodes[n].flying[w].0 > 0 => self.nodes[n].flying[w].1 = true,
            Next::Done => {
                let node = &mut self.nodes[n];
                node.workers[w].1 = false;
                if kind == Kind::Peer {
                    node.router.peer_worker_ended();
                }
                self.end_of_round(n);
            }
        }
    }

    /// Every worker ended and every piece is written: another round if pieces are
    /// left (given back after the workers found nothing to do).
    fn end_of_round(&mut self, n: usize) {
        let node = &self.nodes[n];
        if node.alive && node.writing == 0 && node.workers.iter().all(|(_, run)| !run) {
            self.start_round(n);
        }
    }

    fn arrive(&mut self, req: Req) {
        if !self.nodes[req.node as usize].alive {
            return;
        }
        match req.src {
            Src::Origin => self.send(req),
            Src::Node(h) if !self.nodes[h].alive => {
                self.after(self.swarm.dead_answer, Event::Failed(req));
            }
            Src::Node(h) => {
                if self.nodes[h].serving < self.swarm.max_serving {
                    self.send(req);
                } else if self.nodes[h].queue.len() < self.swarm.queue {
                    self.nodes[h].queue.push_back(req);
                } else {
                    self.outcome.busy_answers += 1;
                    self.enter(req.node as usize, req.worker as usize, Phase::Busy);
                    self.after(self.swarm.latency, Event::Busy(req));
                }
            }
        }
    }

    /// Starts the flow of `req`'s piece from its source.
    fn send(&mut self, req: Req) {
        self.enter(req.node as usize, req.worker as usize, Phase::Flowing);
        if let Src::Node(h) = req.src {
            let holder = &mut self.nodes[h];
            holder.serving += 1;
            holder.served.insert(req.node);
            self.outcome.max_serving = self.outcome.max_serving.max(holder.serving);
        }
        let len = self.pieces[req.piece as usize].len;
        let (id, changed) = self.net.start(req.src, req.node as usize, len, self.now);
        if self.by_flow.len() <= id {
            self.by_flow.resize(id + 1, None);
        }
        self.by_flow[id] = Some(req);
        self.schedule(changed);
    }

    fn schedule(&mut self, changed: Ends) {
        // k round trips before the last byte reaches its node: 2k - 1 latencies before
        // it leaves the holder.
        let lead = ns(self.swarm.latency) * (2 * u64::from(self.swarm.pipeline)).saturating_sub(1);
        for (flow, version, end) in changed {
            self.at(end, Event::FlowEnd { flow, version });
            let from_node = self.by_flow.get(flow).and_then(Option::as_ref);
            if self.swarm.pipeline > 0 && from_node.is_some_and(|r| matches!(r.src, Src::Node(_))) {
                let near = end.saturating_sub(lead).max(self.now);
                self.at(near, Event::NearEnd { flow, version });
            }
        }
    }

    /// A pipelining worker's flow is a latency from its end at the holder: the worker
    /// asks for its next piece, whose request reaches the holder as this one ends.
    fn near_end(&mut self, flow: FlowId, version: u64) {
        if !self.net.current(flow, version) {
            return;
        }
        let Some(req) = self.by_flow.get_mut(flow).and_then(Option::as_mut) else { return };
        if req.next_asked || !self.nodes[req.node as usize].alive {
            return;
        }
        req.next_asked = true;
        let (n, w) = (req.node as usize, req.worker as usize);
        let flying = &mut self.nodes[n].flying[w];
        if flying.0 >= 2 {
            flying.1 = true;
            return;
        }
        self.ask_now(n, w);
    }

    fn flow_end(&mut self, flow: FlowId, version: u64) {
        if !self.net.current(flow, version) {
            return;
        }
        let Some(req) = self.close(flow) else { return };
        if !req.next_asked {
            self.enter(req.node as usize, req.worker as usize, Phase::Landing);
        }
        self.after(self.swarm.latency, Event::Delivered(req));
    }

    /// Ends flow `flow` (done or cut off): counts its bytes, frees its sender's slot.
    fn close(&mut self, flow: FlowId) -> Option<Req> {
        let (ended, changed) = self.net.end(flow, self.now)?;
        self.schedule(changed);
        let req = self.by_flow.get_mut(flow)?.take()?;
        match ended.src {
            Src::Origin => {
                self.outcome.origin_bytes += ended.sent.round() as u64;
                self.outcome.origin_last = Duration::from_nanos(self.now);
            }
            Src::Node(h) => {
                self.outcome.peer_bytes += ended.sent.round() as u64;
                self.nodes[h].serving -= 1;
                self.serve_next(h);
            }
        }
        Some(req)
    }

    /// Holder `h` has a free slot: the next waiting request of a live node.
    fn serve_next(&mut self, h: usize) {
        if !self.nodes[h].alive {
            return;
        }
        while self.nodes[h].serving < self.swarm.max_serving {
            let Some(req) = self.nodes[h].queue.pop_front() else { return };
            if self.nodes[req.node as usize].alive {
                self.send(req);
            }
        }
    }

    fn delivered(&mut self, req: Req) {
        let n = req.node as usize;
        if !self.nodes[n].alive {
            return;
        }
        // Origin and peer workers fetch their next piece while this one is written, one
        // write at a time: a piece in before the last one's write ended waits for it.
        let node = &mut self.nodes[n];
        node.writing += 1;
        let start = self.now.max(node.written[req.worker as usize]);
        node.written[req.worker as usize] = start + ns(self.swarm.write);
        let wake = node.parked[req.worker as usize].0;
        self.at(start + ns(self.swarm.write), Event::Durable(req));
        if self.landed(req) {
            self.at(start, Event::Ask { node: req.node, worker: req.worker, wake });
        }
    }

    /// `req` is no longer on its way (delivered, or refused): whether its worker asks
    /// again (it has not asked already, or owes an ask).
    fn landed(&mut self, req: Req) -> bool {
        let flying = &mut self.nodes[req.node as usize].flying[req.worker as usize];
        flying.0 = flying.0.saturating_sub(1);
        let owed = std::mem::take(&mut flying.1);
        !req.next_asked || owed
    }

    fn durable(&mut self, req: Req) {
        let n = req.node as usize;
        if !self.nodes[n].alive {
            return;
        }
        let node = &mut self.nodes[n];
        node.writing -= 1;
        if node.router.done(req.piece) {
            node.done += 1;
            node.done_bytes += self.pieces[req.piece as usize].len;
            if node.done == self.pieces.len() {
                for w in 0..node.workers.len() {
                    self.enter(n, w, Phase::Off);
                }
                self.nodes[n].finished = Some(self.now);
            }
        }
        // Applied in batches, one per `announce` interval (Raft's apply).
        let tick = ns(self.swarm.announce).max(1);
        let applied = (self.now + tick).div_ceil(tick) * tick;
        self.at(applied, Event::Announce { node: req.node, index: req.piece });
        self.end_of_round(n);
    }

    fn failed(&mut self, req: Req) {
        let n = req.node as usize;
        if !self.nodes[n].alive {
            return;
        }
        self.outcome.failed_requests += 1;
        if let Src::Node(h) = req.src {
            let piece = self.pieces[req.piece as usize];
            self.nodes[n].router.peer_failed(piece, node_id(h));
        }
        if self.landed(req) {
            self.ask_now(req.node as usize, req.worker as usize);
        }
    }

    fn busy(&mut self, req: Req) {
        let n = req.node as usize;
        if !self.nodes[n].alive {
            return;
        }
        if let Src::Node(h) = req.src {
            let piece = self.pieces[req.piece as usize];
            let now = self.start + Duration::from_nanos(self.now);
            let took = 2 * self.swarm.latency;
            self.nodes[n].router.peer_busy(piece, node_id(h), now, took);
        }
        if self.landed(req) {
            self.ask_now(req.node as usize, req.worker as usize);
        }
    }

    /// Worker `w` of node `n` enters `phase` now: the time in its last phase is
    /// counted (a peer worker's, while its node does not hold the whole file yet).
    fn enter(&mut self, n: usize, w: usize, phase: Phase) {
        let node = &mut self.nodes[n];
        let (last, since) = std::mem::replace(&mut node.phase[w], (phase, self.now));
        if node.workers[w].0 != Kind::Peer || node.finished.is_some() || !node.alive {
            return;
        }
        let spent = (self.now - since) as f64 / 1e9;
        let time = &mut self.outcome.peer_time;
        match last {
            Phase::Asking => time.asking += spent,
            Phase::Busy => time.busy += spent,
            Phase::Flowing => time.flowing += spent,
            Phase::Landing => time.landing += spent,
            Phase::Waiting => time.waiting += spent,
            Phase::Off => {}
        }
    }

    /// Node `n` dies: its transfers stop; those it served fail at their receivers.
    fn die(&mut self, n: usize) {
        if !self.nodes[n].alive {
            return;
        }
        self.nodes[n].alive = false;
        for flow in self.net.flows_of(n) {
            if let Some(req) = self.close(flow)
                && req.node as usize != n
            {
                self.after(self.swarm.dead_answer, Event::Failed(req));
            }
        }
        for req in std::mem::take(&mut self.nodes[n].queue) {
            self.after(self.swarm.dead_answer, Event::Failed(req));
        }
        self.after(self.swarm.silence, Event::Unreachable { node: n as u32 });
    }

    fn finish(mut self) -> Outcome {
        let mut finished = Vec::new();
        let mut served = Vec::new();
        for node in self.nodes.iter().filter(|n| n.alive) {
            match node.finished {
                Some(at) => finished.push(Duration::from_nanos(at)),
                None => self.outcome.unfinished += 1,
            }
            served.push(node.served.len());
        }
        finished.sort_unstable();
        self.outcome.finished = finished;
        self.outcome.max_served_peers = served.iter().copied().max().unwrap_or(0);
        self.outcome.mean_served_peers =
            served.iter().sum::<usize>() as f64 / served.len().max(1) as f64;
        self.outcome.idle_servers = served.iter().filter(|s| **s == 0).count();
        self.outcome
    }
}
