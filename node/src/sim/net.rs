//! The simulated network: flows between the origin and nodes, each running at the
//! smaller of its sender's and its receiver's share of their links (as [`Sharing`]
//! divides a link), and the times they end.

use super::Sharing;

/// One end of a flow's sending side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Src {
    /// The origin.
    Origin,
    /// Node index.
    Node(usize),
}

/// A piece on its way.
#[derive(Debug)]
pub(super) struct Flow {
    pub(super) src: Src,
    pub(super) dst: usize,
    /// Bytes still to send as of `since`.
    remaining: f64,
    /// Bytes per second since `since`.
    rate: f64,
    /// Its share of its sender's upload (or the origin's egress), and of its
    /// receiver's download, as last divided: it runs at the smaller.
    up: f64,
    down: f64,
    /// Simulated nanoseconds.
    since: u64,
    /// Set anew (from the net's counter) at each change of rate: an end scheduled
    /// before it is stale, even once the flow's id is reused.
    pub(super) version: u64,
    /// Bytes sent in all (for origin egress).
    pub(super) sent: f64,
}

/// A flow's id in the [`Net`].
pub(super) type FlowId = usize;

/// Flows whose end changed: id, version, new end (ns).
pub(super) type Ends = Vec<(FlowId, u64, u64)>;

/// Every link and the flows on them.
pub(super) struct Net {
    sharing: Sharing,
    link: f64,
    origin: f64,
    flows: Vec<Option<Flow>>,
    free: Vec<FlowId>,
    /// Per node, flows it sends.
    up: Vec<Vec<FlowId>>,
    /// Per node, flows it receives.
    down: Vec<Vec<FlowId>>,
    /// Flows the origin sends.
    origin_up: Vec<FlowId>,
    /// Versions handed out so far.
    versions: u64,
}

impl Net {
    /// `nodes` nodes with links of `link` bytes/s each way, an origin of `origin`,
    /// each divided among its flows by `sharing`.
    pub(super) fn new(nodes: usize, link: f64, origin: f64, sharing: Sharing) -> Self {
        Self {
            sharing,
            link,
            origin,
            flows: Vec::new(),
            free: Vec::new(),
            up: vec![Vec::new(); nodes],
            down: vec![Vec::new(); nodes],
            origin_up: Vec::new(),
            versions: 0,
        }
    }

    /// Starts a flow of `bytes` at `now`; returns its id and the flows whose end
    /// changed (to schedule: id, version, end time).
    pub(super) fn start(&mut self, src: Src, dst: usize, bytes: u64, now: u64) -> (FlowId, Ends) {
        let flow = Flow {
            src,
            dst,
            remaining: bytes as f64,
            rate: 0.0,
            up: f64::INFINITY,
            down: f64::INFINITY,
            since: now,
            version: 0,
            sent: 0.0,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.flows[id] = Some(flow);
                id
            }
            None => {
                self.flows.push(Some(flow));
                self.flows.len() - 1
            }
        };
        self.senders(src).push(id);
        self.down[dst].push(id);
        (id, self.rebalance(src, dst, now))
    }

    /// Ends flow `id` (done or cut off) at `now`; returns it and the flows whose end
    /// changed.
    pub(super) fn end(&mut self, id: FlowId, now: u64) -> Option<(Flow, Ends)> {
        let mut flow = self.flows.get_mut(id)?.take()?;
        settle(&mut flow, now);
        self.free.push(id);
        self.senders(flow.src).retain(|f| *f != id);
        self.down[flow.dst].retain(|f| *f != id);
        let changed = self.rebalance(flow.src, flow.dst, now);
        Some((flow, changed))
    }

    /// The flow `id`, if it runs and `version` is its current one.
    pub(super) fn current(&self, id: FlowId, version: u64) -> bool {
        matches!(self.flows.get(id), Some(Some(f)) if f.version == version)
    }

    /// Flows node `node` sends or receives.
    pub(super) fn flows_of(&self, node: usize) -> Vec<FlowId> {
        let mut all = self.up[node].clone();
        all.extend(&self.down[node]);
        all
    }

    fn senders(&mut self, src: Src) -> &mut Vec<FlowId> {
        match src {
            Src::Origin => &mut self.origin_up,
            Src::Node(n) => &mut self.up[n],
        }
    }

    /// Divides `src`'s upload and `dst`'s download anew; new rates for their flows.
    /// Each link's shares add up to the link, and a flow runs at the smaller of its
    /// two: every link stays within its rate, whatever shares were divided at other
    /// links before.
    fn rebalance(&mut self, src: Src, dst: usize, now: u64) -> Ends {
        let sent = self.senders(src).clone();
        let capacity = match src {
            Src::Origin => self.origin,
            Src::Node(_) => self.link,
        };
        self.divide(&sent, capacity, Side::Up);
        let received = self.down[dst].clone();
        self.divide(&received, self.link, Side::Down);
        let mut touched = sent;
        touched.extend(received);
        touched.sort_unstable();
        touched.dedup();
        let mut changed = Vec::with_capacity(touched.len());
        for id in touched {
            let fresh = self.versions + 1;
            let Some(flow) = self.flows[id].as_mut() else { continue };
            let rate = flow.up.min(flow.down);
            settle(flow, now);
            if (flow.rate - rate).abs() > f64::EPSILON || flow.version == 0 {
                self.versions = fresh;
                flow.rate = rate;
                flow.version = fresh;
                let left = (flow.remaining / rate * 1e9).ceil() as u64;
                changed.push((id, flow.version, now + left));
            }
        }
        changed
    }

    /// Divides `capacity` among the flows `ids` (running, as a link's lists hold) on
    /// one side of theirs.
    fn divide(&mut self, ids: &[FlowId], capacity: f64, side: Side) {
        let shares = match self.sharing {
            Sharing::Equal => vec![capacity / ids.len().max(1) as f64; ids.len()],
            Sharing::Fill => {
                let other = |id: &FlowId| self.flows[*id].as_ref().map_or(0.0, |f| side.other(f));
                fill(capacity, &ids.iter().map(other).collect::<Vec<_>>())
            }
        };
        for (id, share) in ids.iter().zip(shares) {
            let Some(flow) = self.flows[*id].as_mut() else { continue };
            match side {
                Side::Up => flow.up = share,
                Side::Down => flow.down = share,
            }
        }
    }
}

/// A link's side of its flows.
#[derive(Clone, Copy)]
enum Side {
    /// The sender's upload (or the origin's egress).
    Up,
    /// The receiver's download.
    Down,
}

impl Side {
    /// What `flow` may get at its other end.
    fn other(self, flow: &Flow) -> f64 {
        match self {
            Self::Up => flow.down,
            Self::Down => flow.up,
        }
    }
}

/// Water-filling: `capacity` divided among flows that may use at most `wants` each
/// (their shares at their other ends): a flow wanting less than an equal share of
/// what is left gets what it wants, the others divide the rest equally. What nobody
/// wants is spread equally on top, so that a flow held back elsewhere can grow when
/// that end is divided again.
fn fill(capacity: f64, wants: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..wants.len()).collect();
    order.sort_unstable_by(|a, b| wants[*a].total_cmp(&wants[*b]));
    let mut shares = vec![0.0; wants.len()];
    let mut left = capacity;
    for (placed, &i) in order.iter().enumerate() {
        let equal = left / (wants.len() - placed) as f64;
        shares[i] = wants[i].min(equal);
        left -= shares[i];
    }
    let spare = left.max(0.0) / wants.len().max(1) as f64;
    shares.iter().map(|share| share + spare).collect()
}

/// Counts the bytes sent since the flow's last change.
fn settle(flow: &mut Flow, now: u64) {
    let sent = (flow.rate * (now - flow.since) as f64 / 1e9).min(flow.remaining);
    flow.remaining -= sent;
    flow.sent += sent;
    flow.since = now;
}

#[cfg(test)]
mod tests {
    use super::{FlowId, Net, Sharing, Src, fill};
    use crate::transfer::router::mix;

    const LINK: f64 = 300.0;

    fn rate(net: &Net, id: FlowId) -> f64 {
        net.flows[id].as_ref().map_or(0.0, |flow| flow.rate)
    }

    #[test]
    fn water_filling_leaves_what_a_flow_cannot_use_to_the_others() {
        assert_eq!(fill(300.0, &[10.0, f64::INFINITY, f64::INFINITY]), [10.0, 145.0, 145.0]);
        assert_eq!(fill(300.0, &[200.0, 40.0, f64::INFINITY]), [130.0, 40.0, 130.0]);
        // Nobody can use it all: the spare goes on top, for when the other ends grow.
        assert_eq!(fill(300.0, &[50.0, 70.0]), [140.0, 160.0]);
    }

    #[test]
    fn a_flow_held_back_at_its_receiver_leaves_the_senders_upload_to_the_other() {
        // Node 0 sends to nodes 1 and 2; node 2 also receives from nodes 3, 4 and 5.
        for (sharing, to_one) in [(Sharing::Equal, 150.0), (Sharing::Fill, 225.0)] {
            let mut net = Net::new(6, LINK, LINK, sharing);
            for src in 3..6 {
                net.start(Src::Node(src), 2, 1 << 30, 0);
            }
            let (crowded, _) = net.start(Src::Node(0), 2, 1 << 30, 0);
            let (free, _) = net.start(Src::Node(0), 1, 1 << 30, 0);
            assert_eq!((rate(&net, crowded), rate(&net, free)), (75.0, to_one), "{sharing:?}");
        }
    }

    #[test]
    fn no_link_ever_carries_more_than_its_rate() {
        for sharing in [Sharing::Equal, Sharing::Fill] {
            let (nodes, mut draw) = (12, 7);
            let mut net = Net::new(nodes, LINK, 2.0 * LINK, sharing);
            let mut running: Vec<FlowId> = Vec::new();
            for step in 0..5_000u64 {
                draw = mix(draw);
                if running.len() > 40 || (draw % 3 == 0 && !running.is_empty()) {
                    let id = running.swap_remove((draw >> 8) as usize % running.len());
                    assert!(net.end(id, step).is_some());
                } else {
                    let dst = (draw >> 8) as usize % nodes;
                    let src = match (draw >> 16) as usize % (nodes + 1) {
                        n if n == nodes || n == dst => Src::Origin,
                        n => Src::Node(n),
                    };
                    running.push(net.start(src, dst, 1 << 30, step).0);
                }
                let mut up = vec![0.0; nodes + 1];
                let mut down = vec![0.0; nodes];
                for &id in &running {
                    let flow = net.flows[id].as_ref().expect("a running flow");
                    up[match flow.src {
                        Src::Node(n) => n,
                        Src::Origin => nodes,
                    }] += flow.rate;
                    down[flow.dst] += flow.rate;
                }
                let over = |used: f64, cap: f64| used > cap * (1.0 + 1e-9);
                assert!(!over(up[nodes], 2.0 * LINK), "{sharing:?} step {step}: origin {up:?}");
                let links = up[..nodes].iter().chain(&down);
                assert!(!links.clone().any(|used| over(*used, LINK)), "{sharing:?} step {step}");
            }
        }
    }
}
