//! The simulated network: flows between the origin and nodes, each running at the
//! smaller of its sender's and its receiver's fair share of their links, and the
//! times they end.

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
    /// `nodes` nodes with links of `link` bytes/s each way, an origin of `origin`.
    pub(super) fn new(nodes: usize, link: f64, origin: f64) -> Self {
        Self {
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

    /// New rates for the flows of `src` and of `dst`.
    fn rebalance(&mut self, src: Src, dst: usize, now: u64) -> Ends {
        let mut touched = self.senders(src).clone();
        touched.extend(&self.down[dst]);
        touched.sort_unstable();
        touched.dedup();
        let mut changed = Vec::with_capacity(touched.len());
        for id in touched {
            let (src, dst) = match &self.flows[id] {
                Some(f) => (f.src, f.dst),
                None => continue,
            };
            let up = match src {
                Src::Origin => self.origin / self.origin_up.len() as f64,
                Src::Node(n) => self.link / self.up[n].len() as f64,
            };
            let rate = up.min(self.link / self.down[dst].len() as f64);
            let fresh = self.versions + 1;
            let Some(flow) = self.flows[id].as_mut() else { continue };
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
}

/// Counts the bytes sent since the flow's last change.
fn settle(flow: &mut Flow, now: u64) {
    let sent = (flow.rate * (now - flow.since) as f64 / 1e9).min(flow.remaining);
    flow.remaining -= sent;
    flow.sent += sent;
    flow.since = now;
}
