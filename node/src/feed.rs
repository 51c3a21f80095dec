//! The change feed: what each applied batch of Raft entries changed in the queue (each
//! changed job with its state before and after, and whether upload sessions changed),
//! published by the state machine's apply to every component of this node that keeps
//! a view of the queue (transfer supervisor, scheduler, notify runner, peer-cache
//! limits, upload piece sweeper). A component reads only the jobs a batch names, so no
//! change costs a walk over the whole queue.
//!
//! A component that falls behind (its channel overflowed) or a snapshot install (the
//! queue replaced wholesale) gets [`Feed::Reset`]: it rebuilds its view with one
//! [`ChangeFeed::scan`], the only full walk, counted in [`ChangeFeed::scans`] (the
//! cluster status shows the count, `ferry-bench submit` prints it per applied entry).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use ferry_protocol::{Job, JobId, JobState, Queue};
use tokio::sync::broadcast;

/// Batches a subscriber may fall behind before it gets a [`Feed::Reset`].
const BACKLOG: usize = 4096;

/// One job a batch changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct JobChange {
    /// The job.
    pub(crate) job: JobId,
    /// Its state before the batch (`None`: it did not exist).
    pub(crate) before: Option<JobState>,
    /// Its state after the batch (`None`: it was removed).
    pub(crate) after: Option<JobState>,
}

/// What one applied batch of entries changed.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// The jobs written or removed, in id order.
    pub(crate) jobs: Vec<JobChange>,
    /// True if upload sessions were written or removed.
    pub(crate) sessions: bool,
}

/// One delivery of the feed.
#[derive(Clone, Debug)]
pub(crate) enum Feed {
    /// A batch was applied.
    Changed(Arc<Batch>),
    /// Rebuild the view from the queue (see the module doc).
    Reset,
}

/// The publishing side, held by the state machine (cheap to clone).
#[derive(Clone)]
pub(crate) struct ChangeFeed {
    sender: broadcast::Sender<Feed>,
    /// Each job's state as last published (the "before" of its next change).
    states: Arc<Mutex<HashMap<JobId, JobState>>>,
    scans: Arc<AtomicU64>,
}

impl ChangeFeed {
    /// A feed for `queue` as loaded at start.
    pub(crate) fn new(queue: &Queue) -> Self {
        let (sender, _) = broadcast::channel(BACKLOG);
        let feed = Self { sender, states: Arc::default(), scans: Arc::default() };
        feed.remember(queue);
        feed
    }

    /// Publishes what changed: the jobs `changed` (by id) as `queue` now holds them.
    pub(crate) fn publish(
        &self,
        queue: &Queue,
        changed: impl IntoIterator<Item = JobId>,
        sessions: bool,
    ) {
        let mut states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        let jobs: Vec<JobChange> = changed
            .into_iter()
            .map(|job| {
                let after = queue.job(&job).map(|j| j.state());
                let before = match after {
                    Some(state) => states.insert(job, state),
                    None => states.remove(&job),
                };
                JobChange { job, before, after }
            })
            .collect();
        drop(states);
        if jobs.is_empty() && !sessions {
            return;
        }
        // No subscriber yet is not an error: they scan when they subscribe.
        let _ = self.sender.send(Feed::Changed(Arc::new(Batch { jobs, sessions })));
    }

    /// The queue was replaced (a snapshot installed): every subscriber rebuilds.
    pub(crate) fn reset(&self, queue: &Queue) {
        self.remember(queue);
        let _ = self.sender.send(Feed::Reset);
    }

    /// A subscription, starting with the batches applied after this call; the
    /// subscriber builds its view with one [`scan`](Self::scan) first.
    pub(crate) fn subscribe(&self) -> Subscription {
        Subscription { receiver: self.sender.subscribe() }
    }

    /// Every job of `queue`, counted as one full scan.
    pub(crate) fn scan<'q>(&self, queue: &'q Queue) -> impl Iterator<Item = &'q Job> + 'q {
        self.scans.fetch_add(1, Ordering::Relaxed);
        queue.jobs()
    }

    /// Full scans so far (see the module doc).
    pub(crate) fn scans(&self) -> u64 {
        self.scans.load(Ordering::Relaxed)
    }

    fn remember(&self, queue: &Queue) {
        let states: HashMap<JobId, JobState> =
            self.scan(queue).map(|job| (job.id(), job.state())).collect();
        *self.states.lock().unwrap_or_else(PoisonError::into_inner) = states;
    }
}

/// A component's subscription.
pub(crate) struct Subscription {
    receiver: broadcast::Receiver<Feed>,
}

impl Subscription {
    /// The next delivery; a subscriber that fell behind gets [`Feed::Reset`]. `None`
    /// once the state machine is gone.
    pub(crate) async fn next(&mut self) -> Option<Feed> {
        match self.receiver.recv().await {
            Ok(feed) => Some(feed),
            Err(broadcast::error::RecvError::Lagged(_)) => Some(Feed::Reset),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lagging_subscriber_is_told_to_rebuild() {
        let queue = Queue::default();
        let feed = ChangeFeed::new(&queue);
        assert_eq!(feed.scans(), 1, "the feed's own view of the queue at start");
        let mut sub = feed.subscribe();
        for _ in 0..=BACKLOG {
            feed.publish(&queue, [], true);
        }
        assert!(matches!(sub.next().await, Some(Feed::Reset)));
        let Some(Feed::Changed(batch)) = sub.next().await else { panic!("a batch") };
        assert!(batch.sessions);
    }

    #[test]
    fn nothing_changed_publishes_nothing() {
        let queue = Queue::default();
        let feed = ChangeFeed::new(&queue);
        let mut sub = feed.subscribe();
        feed.publish(&queue, [], false);
        assert!(sub.receiver.try_recv().is_err());
    }
}
