//! Fragments of a session that arrive ahead of their turn: a client that pipelines (a
//! Ferry client told by [`header::FRAGMENTS_AHEAD`] on this server's Acks) sends the
//! next fragments on other connections before the last one is acknowledged. BITS takes
//! a session's fragments in order, so such a fragment, one that starts where another
//! fragment of the session in flight on this node ends, is written (durably) at its
//! offset at once and then waits for that one to be recorded before it is recorded
//! itself. A fragment ahead with no such predecessor here is a gap, refused as before
//! (another server of a farm took the one before, or none was sent).
//!
//! [`header::FRAGMENTS_AHEAD`]: ferry_protocol::upload::header::FRAGMENTS_AHEAD

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

/// Fragments a client may send beyond the one not yet acknowledged (advertised on every
/// Ack), and the most that wait at once per session on this node.
pub(crate) const FRAGMENTS_AHEAD: usize = 4;
/// Longest a fragment ahead waits for the one before it to arrive.
const GRACE: Duration = Duration::from_millis(250);
/// Longest a fragment ahead waits for the one before it (which is being written and
/// recorded on this node, each step with its own deadline).
pub(crate) const WAIT: Duration = Duration::from_secs(60);

/// Per session, the `start..end` of its fragments in flight here.
type Ranges = HashMap<String, Vec<(u64, u64)>>;

/// The fragments of each session in flight on this node: their `start..end` (end
/// exclusive), and a counter bumped whenever one enters or leaves.
#[derive(Clone)]
pub(crate) struct InFlight {
    ranges: Arc<Mutex<Ranges>>,
    changed: Arc<watch::Sender<u64>>,
}

impl Default for InFlight {
    fn default() -> Self {
        Self { ranges: Arc::default(), changed: Arc::new(watch::Sender::new(0)) }
    }
}

impl InFlight {
    /// Registers bytes `start..end` of `session` until the returned guard drops.
    pub(crate) fn enter(&self, session: &str, start: u64, end: u64) -> Entered {
        self.lock().entry(session.to_owned()).or_default().push((start, end));
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
        Entered { in_flight: self.clone(), session: session.to_owned(), range: (start, end) }
    }

    /// [`Self::may_wait`], once the fragment before it arrived: a client's fragments
    /// travel on several connections, so the one before may be a moment behind. False
    /// after [`GRACE`] without it (a gap).
    pub(crate) async fn wait_for_predecessor(&self, session: &str, next: u64, start: u64) -> bool {
        let deadline = tokio::time::Instant::now() + GRACE;
        loop {
            let mut changed = self.watch();
            if self.may_wait(session, next, start) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed.changed()).await.is_err() {
                return false;
            }
        }
    }

    /// Whether a fragment at `start`, ahead of the session's `next` byte, may wait
    /// here: another fragment of the session in flight on this node ends at `start`,
    /// and at most [`FRAGMENTS_AHEAD`] fragments in flight here (this one, entered
    /// before it asks, included) start after `next`.
    pub(crate) fn may_wait(&self, session: &str, next: u64, start: u64) -> bool {
        let ranges = self.lock();
        let Some(ranges) = ranges.get(session) else { return false };
        let predecessor = ranges.iter().any(|(_, end)| *end == start);
        let ahead = ranges.iter().filter(|(s, _)| *s > next).count();
        predecessor && ahead <= FRAGMENTS_AHEAD
    }

    /// A receiver that sees the next time a fragment enters or leaves (subscribe before
    /// looking, so that no change between the look and the wait is missed).
    pub(crate) fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ranges> {
        self.ranges.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A fragment in flight; dropping it (recorded, refused or its request gone) lets the
/// fragments waiting behind it look again.
pub(crate) struct Entered {
    in_flight: InFlight,
    session: String,
    range: (u64, u64),
}

impl Drop for Entered {
    fn drop(&mut self) {
        {
            let mut ranges = self.in_flight.lock();
            if let Some(list) = ranges.get_mut(&self.session) {
                if let Some(at) = list.iter().position(|r| *r == self.range) {
                    list.swap_remove(at);
                }
                if list.is_empty() {
                    ranges.remove(&self.session);
                }
            }
        }
        self.in_flight.changed.send_modify(|n| *n = n.wrapping_add(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fragment_may_wait_only_behind_its_predecessor_in_flight_here() {
        let in_flight = InFlight::default();
        let first = in_flight.enter("s", 0, 10);
        assert!(!in_flight.may_wait("s", 0, 20), "nothing in flight ends at 20: a gap");
        let _second = in_flight.enter("s", 10, 20);
        assert!(in_flight.may_wait("s", 0, 10));
        assert!(!in_flight.may_wait("t", 0, 10), "another session's fragment is no predecessor");
        drop(first);
        assert!(!in_flight.may_wait("s", 0, 10), "the predecessor left");
    }

    #[test]
    fn at_most_fragments_ahead_wait_per_session() {
        let in_flight = InFlight::default();
        let _first = in_flight.enter("s", 0, 10);
        let mut entered = Vec::new();
        for k in 1..=FRAGMENTS_AHEAD as u64 {
            entered.push(in_flight.enter("s", 10 * k, 10 * (k + 1)));
            assert!(in_flight.may_wait("s", 0, 10 * k), "{k} ahead");
        }
        let k = FRAGMENTS_AHEAD as u64 + 1;
        let _one_more = in_flight.enter("s", 10 * k, 10 * (k + 1));
        assert!(!in_flight.may_wait("s", 0, 10 * k), "one more than allowed");
        assert!(in_flight.may_wait("s", 10, 10 * k), "allowed once the first is recorded");
    }

    #[tokio::test]
    async fn a_fragment_waits_a_moment_for_its_predecessor_to_arrive() {
        let in_flight = InFlight::default();
        let _second = in_flight.enter("s", 10, 20);
        let late = in_flight.clone();
        let first = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let first = late.enter("s", 0, 10);
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(first);
        });
        assert!(in_flight.wait_for_predecessor("s", 0, 10).await);
        assert!(!in_flight.wait_for_predecessor("s", 0, 30).await, "no fragment ends at 30");
        let _ = first.await;
    }

    #[tokio::test]
    async fn a_departure_wakes_the_waiters() {
        let in_flight = InFlight::default();
        let first = in_flight.enter("s", 0, 10);
        let mut watch = in_flight.watch();
        let waiter = tokio::spawn(async move { watch.changed().await.is_ok() });
        drop(first);
        assert!(waiter.await.unwrap_or(false));
    }
}
