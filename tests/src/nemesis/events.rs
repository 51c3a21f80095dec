//! The event stream under faults: one subscriber follows every job's events through
//! reconnects (`Watcher`, as `ferry watch` does); afterwards what it received must be
//! exactly what a fresh subscription replays over the same cursors, in order, with no
//! gap, and must hold the creation of every acknowledged job.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ferry_coordinator::bus::{Watched, Watcher};
use ferry_protocol::JobId;
use ferry_protocol::event::{Cursor, Delivery, Event, EventFilter, EventKind, StartAt};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Cluster;
use crate::tokens;

/// What the subscriber received.
#[derive(Default)]
struct Received {
    /// Events since the last [`EventStream::take`].
    events: Vec<(Cursor, EventKind, JobId)>,
    /// The last cursor received.
    last: Option<Cursor>,
    /// Jobs whose creation was received.
    created: HashSet<JobId>,
    /// Reconnections (a node lost, the subscription resumed at another).
    reconnects: usize,
    /// Where the subscription was last (re)opened: the node and the cursor.
    connected: Option<(u64, Cursor)>,
    /// The first thing that was wrong, as it was received.
    violation: Option<String>,
}

/// A subscriber to every job's events, following the cluster through its faults.
pub struct EventStream {
    received: Arc<Mutex<Received>>,
    task: JoinHandle<()>,
}

fn every_job() -> EventFilter {
    EventFilter { all_users: true, ..Default::default() }
}

impl EventStream {
    /// Subscribes at the first node from the start of the history.
    pub fn start(cluster: &Cluster) -> anyhow::Result<Self> {
        let received = Arc::new(Mutex::new(Received::default()));
        let from = StartAt::Cursor(Cursor { index: 0, sub: 0 });
        let mut watcher =
            Watcher::new(cluster.urls.get(0).parse()?, tokens::ADMIN.into(), every_job(), from);
        let shared = received.clone();
        let task = tokio::spawn(async move {
            let mut connections = 0;
            loop {
                let next = watcher.next().await;
                let mut received = shared.lock().unwrap_or_else(PoisonError::into_inner);
                match next {
                    Ok(Watched::Delivery(Delivery::Event(event))) => received.push(&event),
                    Ok(Watched::Delivery(gap)) => {
                        received.violation.get_or_insert(format!("a gap: {gap:?}"));
                    }
                    Ok(Watched::Connected { node, position }) => {
                        received.connected = Some((node, position));
                        connections += 1;
                        received.reconnects = connections - 1;
                    }
                    Err(e) => {
                        received.violation.get_or_insert(format!("the subscription ended: {e}"));
                        return;
                    }
                }
            }
        });
        Ok(Self { received, task })
    }

    fn received(&self) -> std::sync::MutexGuard<'_, Received> {
        self.received.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reconnections so far.
    pub fn reconnects(&self) -> usize {
        self.received().reconnects
    }

    /// Checks what was received since the last check against a fresh replay of the same
    /// cursors, and that every job of `acknowledged` was seen created (waiting up to
    /// 30 s for the stream to catch up); how many events were checked.
    pub async fn check(&self, cluster: &Cluster, acknowledged: &[JobId]) -> anyhow::Result<usize> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut never_created = None;
        loop {
            let missing = {
                let received = self.received();
                if let Some(violation) = &received.violation {
                    anyhow::bail!("event stream: {violation}");
                }
                acknowledged.iter().find(|id| !received.created.contains(id)).copied()
            };
            match missing {
                None => break,
                Some(id) if Instant::now() >= deadline => {
                    // Compared with a replay below, which tells a stream that skipped
                    // events from one that stopped.
                    let received = self.received();
                    never_created = Some(format!(
                        "event stream: job {id} was acknowledged, never seen created (the last \
                         event received: {:?}; subscribed last at node {:?}; {} reconnects)",
                        received.last.map(|c| c.to_string()),
                        received.connected.map(|(node, at)| format!("{node} from {at}")),
                        received.reconnects,
                    ));
                    break;
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let mut events = std::mem::take(&mut self.received().events);
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            return never_created.map_or(Ok(0), |e| Err(anyhow::anyhow!(e)));
        };
        let (mut from, last) = (first.0, last.0);
        // A replay from a member that holds the history from the first cursor: one that
        // joined later (ReplaceMember) started its history after the snapshot it
        // installed, and answers with a gap, as documented. When every member of the
        // start was replaced, the part some member still holds is compared.
        let mut replayed = None;
        let mut gaps = Vec::new();
        while replayed.is_none() {
            let mut held_from: Option<Cursor> = None;
            for i in 0..cluster.nodes.len() {
                match replay(&cluster.urls.get(i), from, last).await? {
                    Ok(events) => {
                        replayed = Some(events);
                        break;
                    }
                    Err(gap) => {
                        if let Delivery::Gap { oldest, .. } = &gap {
                            held_from = Some(held_from.map_or(*oldest, |h| h.min(*oldest)));
                        }
                        gaps.push(format!("node at {}: {gap:?}", cluster.urls.get(i)));
                    }
                }
            }
            if replayed.is_some() {
                break;
            }
            match held_from {
                Some(oldest) if oldest > from && oldest <= last => {
                    println!(
                        "events before {oldest} are held by no member any more (every member \
                         of the start was replaced): compared from {oldest} on"
                    );
                    from = oldest;
                    events.retain(|(cursor, _, _)| *cursor >= oldest);
                }
                _ => anyhow::bail!("the replay: no member holds the history from {from}: {gaps:?}"),
            }
        }
        let Some(replayed) = replayed else { anyhow::bail!("the replay: nothing replayed") };
        // Whatever else is wrong, a job never seen created is said first.
        let context = never_created.as_deref().map_or_else(String::new, |e| format!("{e}; "));
        if let Some(at) = events.iter().zip(&replayed).position(|(a, b)| a != b) {
            anyhow::bail!(
                "{context}event stream: received {:?} where a replay has {:?}",
                events[at],
                replayed[at]
            );
        }
        anyhow::ensure!(
            events.len() == replayed.len(),
            "{context}event stream: {} events received, {} replayed over the same cursors",
            events.len(),
            replayed.len()
        );
        if let Some(e) = never_created {
            anyhow::bail!("{e}; what it received up to then matches a replay");
        }
        Ok(events.len())
    }
}

/// The events from `first` to `last` as replayed through the node at `url` (a watcher
/// follows the cluster if that node is lost), or the gap it answered with.
async fn replay(
    url: &str,
    first: Cursor,
    last: Cursor,
) -> anyhow::Result<Result<Vec<(Cursor, EventKind, JobId)>, Delivery>> {
    let mut watcher =
        Watcher::new(url.parse()?, tokens::ADMIN.into(), every_job(), StartAt::Cursor(first));
    let mut replayed: Vec<(Cursor, EventKind, JobId)> = Vec::new();
    while replayed.last().is_none_or(|(cursor, _, _)| cursor < &last) {
        match tokio::time::timeout(Duration::from_secs(30), watcher.next()).await {
            Ok(Ok(Watched::Delivery(Delivery::Event(event)))) => {
                replayed.push((event.cursor, event.event.kind, event.event.job));
            }
            Ok(Ok(Watched::Connected { .. })) => {}
            Ok(Ok(Watched::Delivery(gap))) => return Ok(Err(gap)),
            Ok(Err(e)) => anyhow::bail!("the replay: {e}"),
            Err(_) => anyhow::bail!("the replay stopped short of {last}"),
        }
    }
    Ok(Ok(replayed))
}

impl Received {
    fn push(&mut self, event: &Event) {
        if self.last.is_some_and(|last| event.cursor <= last) {
            self.violation.get_or_insert(format!(
                "cursor {} after {}: out of order or repeated",
                event.cursor,
                self.last.map_or_else(String::new, |c| c.to_string())
            ));
        }
        self.last = Some(event.cursor);
        if event.event.kind == EventKind::JobCreated {
            self.created.insert(event.event.job);
        }
        self.events.push((event.cursor, event.event.kind, event.event.job));
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}
