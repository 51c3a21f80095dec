//! [`Liveness`]: which members answer, for every component of the node that must tell
//! a dead member from a slow one (the scheduler's home nodes, a download's helpers, a
//! fleet's members). One loop pings every member over the peer link each
//! [`PING_EVERY`] and keeps the time of each one's last answer ([`Answers`], pure, no
//! clock inside); this module also serves the [`Ping`] request.
//!
//! "Alive within `d`" counts from the last answer, or from when the asking component
//! began to look (the `since` it passes: a download's start, a leadership gain) if that
//! is later: a member is never judged on answers nobody waited for.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use ferry_protocol::NodeId;
use ferry_protocol::peer::Ping;
use tokio::time::Instant;

use super::rpc::{Peers, Router};

/// How often each member is pinged.
pub(crate) const PING_EVERY: Duration = Duration::from_secs(1);
/// How long one ping may take.
pub(crate) const PING_TIMEOUT: Duration = Duration::from_millis(900);

/// The last answer of each member, and since when this node has been looking.
#[derive(Debug)]
pub(crate) struct Answers {
    /// When this node began to look (the component's start).
    since: Instant,
    /// The last answer of each member that answered.
    last: HashMap<NodeId, Instant>,
}

impl Answers {
    /// Looking from `now`, no answers yet.
    pub(crate) fn new(now: Instant) -> Self {
        Self { since: now, last: HashMap::new() }
    }

    /// Member `node` answered at `at`.
    pub(crate) fn record(&mut self, node: NodeId, at: Instant) {
        let last = self.last.entry(node).or_insert(at);
        *last = (*last).max(at);
    }

    /// When `node` last answered.
    pub(crate) fn last_answer(&self, node: NodeId) -> Option<Instant> {
        self.last.get(&node).copied()
    }

    /// True if `node` answered within `within` before `now`, counting from when the
    /// asker began to look (`since`), or this node, if that is later.
    pub(crate) fn alive(
        &self,
        node: NodeId,
        within: Duration,
        since: Instant,
        now: Instant,
    ) -> bool {
        let since = since.max(self.since);
        let seen = self.last_answer(node).map_or(since, |at| at.max(since));
        now.saturating_duration_since(seen) <= within
    }
}

/// The node's view of which members answer (cheap to clone; the ping loop stops when
/// the last clone is dropped).
#[derive(Clone)]
pub(crate) struct Liveness {
    me: NodeId,
    answers: Arc<Mutex<Answers>>,
}

impl Liveness {
    /// Starts pinging every member of `peers`' address book each [`PING_EVERY`].
    pub(crate) fn start(me: NodeId, peers: Peers) -> Self {
        let answers = Arc::new(Mutex::new(Answers::new(Instant::now())));
        tokio::spawn(ping_loop(me, peers, Arc::downgrade(&answers)));
        Self { me, answers }
    }

    /// Serves the [`Ping`] request on `router`.
    pub(crate) fn register(router: &Router) {
        router.add_handler::<Ping, _, _>(|_, Ping| async { Ok(()) });
    }

    /// True if member `node` answered a ping within `within`, counting from `since`
    /// (when the asker began to look) if that is later. This node is always alive to
    /// itself.
    pub(crate) fn alive(&self, node: NodeId, within: Duration, since: Instant) -> bool {
        node == self.me || self.lock().alive(node, within, since, Instant::now())
    }

    /// When member `node` last answered a ping.
    #[cfg(test)]
    pub(crate) fn last_answer(&self, node: NodeId) -> Option<Instant> {
        self.lock().last_answer(node)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Answers> {
        self.answers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Pings every other member each [`PING_EVERY`] (one ping in flight per member at most)
/// and records the answers, until the [`Liveness`] is gone.
async fn ping_loop(me: NodeId, peers: Peers, answers: Weak<Mutex<Answers>>) {
    let mut tick = tokio::time::interval(PING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pings = tokio::task::JoinSet::new();
    let mut in_flight: HashSet<NodeId> = HashSet::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if answers.strong_count() == 0 {
                    return;
                }
                for node in peers.book().members().into_iter().filter(|n| *n != me) {
                    if in_flight.insert(node) {
                        let peers = peers.clone();
                        pings.spawn(async move {
                            (node, peers.call(node, &Ping, PING_TIMEOUT).await.is_ok())
                        });
                    }
                }
            }
            Some(done) = pings.join_next() => {
                let Ok((node, answered)) = done else { continue };
                in_flight.remove(&node);
                let Some(answers) = answers.upgrade() else { return };
                if answered {
                    answers.lock().unwrap_or_else(PoisonError::into_inner).record(node, Instant::now());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
