//! The node's event history and live fan-out, behind the notification bus and SSE.
//!
//! The state machine writes each applied entry's events to the `events` table of
//! `state.redb` in the same transaction as the rows they describe, prunes the oldest
//! beyond the configured count and age, and then hands them to a broadcast channel. A
//! [`Subscription`] replays the history from its cursor and then follows the channel;
//! when it falls behind the channel it goes back to the history, and when the history
//! no longer holds what it needs it says so with a [`Delivery::Gap`], never skipping
//! silently.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use ferry_coordinator::{BoxFuture, EventStream, SubscribeError};
use ferry_protocol::codec;
use ferry_protocol::event::{Cursor, Delivery, Event, EventFilter, StartAt};
use ferry_protocol::{Caller, Timestamp};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::broadcast;

/// The state database's table of named values (the state machine's `meta`): the floor
/// is one of them.
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");
/// Events by (log index, position in the entry).
pub(crate) const EVENTS: TableDefinition<'_, (u64, u32), &[u8]> = TableDefinition::new("events");
/// The meta row holding the oldest cursor from which the history is complete.
pub(crate) const FLOOR: &str = "events_floor";

/// What the live channel carries.
#[derive(Clone)]
enum Live {
    /// An applied entry's events.
    Events(Arc<[Event]>),
    /// The history was replaced (a snapshot was installed): the events a subscriber
    /// waiting here expects next may never come, so it reads the history again, where
    /// the new floor tells it what was skipped.
    Replaced,
}

/// How many entries' events the live channel buffers for slow subscribers before they
/// fall back to reading the history.
const LIVE_BUFFER: usize = 1024;
/// Events read from the history at a time.
const REPLAY_BATCH: usize = 512;
/// Most subscriptions one node serves at once (bus and SSE together).
const MAX_SUBSCRIPTIONS: usize = 10_000;

/// How much history a node keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Most events held.
    pub max_events: u64,
    /// Events older than this (batch time, against the newest event) are dropped.
    pub max_age: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self { max_events: 100_000, max_age: Duration::from_secs(7 * 24 * 3600) }
    }
}

/// Appends `events` to the history in `txn` and prunes it to `retention`.
pub(crate) fn append(
    txn: &redb::WriteTransaction,
    events: &[(Cursor, Vec<u8>)],
    newest: Option<Timestamp>,
    retention: Retention,
) -> Result<(), redb::Error> {
    let mut table = txn.open_table(EVENTS)?;
    for (cursor, bytes) in events {
        table.insert((cursor.index, cursor.sub), bytes.as_slice())?;
    }
    let mut pruned: Option<Cursor> = None;
    loop {
        let too_many = table.len()? > retention.max_events;
        let Some((key, value)) = table.first()? else { break };
        let (index, sub) = key.value();
        let too_old = !too_many
            && newest.is_some_and(|now| {
                codec::decode::<Event>(value.value())
                    .map_or(true, |e| now.since(e.event.time) > retention.max_age)
            });
        drop((key, value));
        if !(too_many || too_old) {
            break;
        }
        table.pop_first()?;
        pruned = Some(Cursor { index, sub });
    }
    if let Some(last) = pruned {
        set_floor(txn, last.next())?;
    }
    Ok(())
}

/// Records that the history is complete from `floor` on.
pub(crate) fn set_floor(txn: &redb::WriteTransaction, floor: Cursor) -> Result<(), redb::Error> {
    let bytes = codec::encode(&floor).map_err(|e| redb::Error::Corrupted(e.to_string()))?;
    txn.open_table(META)?.insert(FLOOR, bytes.as_slice())?;
    Ok(())
}

/// The node's event stream: history on disk and the live channel.
#[derive(Clone)]
pub struct EventLog {
    db: Arc<Database>,
    live: broadcast::Sender<Live>,
    /// One permit per open subscription.
    slots: Arc<tokio::sync::Semaphore>,
    /// How many permits there are.
    limit: usize,
    /// Where each subscription replaying the history is (see [`EventLog::furthest_behind`]).
    replaying: Arc<std::sync::Mutex<HashMap<u64, u64>>>,
    /// The id of the next subscription.
    next_id: Arc<std::sync::atomic::AtomicU64>,
}

impl EventLog {
    /// The history in `db` (the state database) with a fresh live channel.
    pub(crate) fn new(db: Arc<Database>) -> Self {
        Self::with_limit(db, MAX_SUBSCRIPTIONS)
    }

    fn with_limit(db: Arc<Database>, subscriptions: usize) -> Self {
        Self {
            db,
            live: broadcast::channel(LIVE_BUFFER).0,
            slots: Arc::new(tokio::sync::Semaphore::new(subscriptions)),
            limit: subscriptions,
            replaying: Arc::default(),
            next_id: Arc::default(),
        }
    }

    /// Hands an applied entry's events, already durable, to live subscribers.
    pub(crate) fn publish(&self, events: Arc<[Event]>) {
        // No receiver is not an error: nobody is watching.
        let _ = self.live.send(Live::Events(events));
    }

    /// Tells live subscribers that the history was replaced (a snapshot installed, its
    /// floor committed): each goes back to the history, and one whose next event the
    /// snapshot skipped over is told so with a [`Delivery::Gap`] instead of going on
    /// after the hole.
    pub(crate) fn history_replaced(&self) {
        let _ = self.live.send(Live::Replaced);
    }

    /// Subscriptions open now.
    pub(crate) fn subscribers(&self) -> usize {
        self.limit.saturating_sub(self.slots.available_permits())
    }

    /// The log index the furthest-behind subscription is reading the history at, if any
    /// is: subscriptions that caught up wait on the live channel and are not behind
    /// (one too slow for it falls back to the history and shows here).
    pub(crate) fn furthest_behind(&self) -> Option<u64> {
        lock(&self.replaying).values().min().copied()
    }

    /// Opens a subscription for `caller`: replay from `from`, then live events.
    pub async fn subscribe(
        &self,
        caller: Caller,
        filter: EventFilter,
        from: StartAt,
    ) -> Result<Subscription, SubscribeError> {
        filter.authorize(&caller).map_err(SubscribeError::Refused)?;
        let slot =
            self.slots.clone().try_acquire_owned().map_err(|_| SubscribeError::Busy(self.limit))?;
        // Subscribe before looking at the history: whatever commits after this point
        // arrives live, whatever committed before is in the history (duplicates of the
        // overlap are dropped by cursor).
        let live = self.live.subscribe();
        let next = match from {
            StartAt::Cursor(cursor) => cursor,
            StartAt::Now => self.end().await?,
        };
        Ok(Subscription {
            log: self.clone(),
            caller,
            filter,
            next,
            live,
            ready: VecDeque::new(),
            caught_up: false,
            _slot: slot,
            id: self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// The cursor after the newest event held (where "now" starts).
    async fn end(&self) -> Result<Cursor, SubscribeError> {
        let db = self.db.clone();
        blocking(move || {
            let txn = db.begin_read()?;
            let floor = read_floor(&txn)?;
            let last = match txn.open_table(EVENTS) {
                Ok(table) => table.last()?.map(|(k, _)| k.value()),
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(e.into()),
            };
            Ok(last.map_or(floor, |(index, sub)| Cursor { index, sub }.next().max(floor)))
        })
        .await
    }

    /// Up to [`REPLAY_BATCH`] events from `from` on, and the history's floor.
    async fn read(&self, from: Cursor) -> Result<(Vec<Event>, Cursor), SubscribeError> {
        let db = self.db.clone();
        blocking(move || {
            let txn = db.begin_read()?;
            let floor = read_floor(&txn)?;
            let table = match txn.open_table(EVENTS) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok((Vec::new(), floor)),
                Err(e) => return Err(e.into()),
            };
            let mut events = Vec::new();
            for row in table.range((from.index, from.sub)..)?.take(REPLAY_BATCH) {
                let (_, value) = row?;
                let event: Event = codec::decode(value.value())
                    .map_err(|e| redb::Error::Corrupted(format!("event history: {e}")))?;
                events.push(event);
            }
            Ok((events, floor))
        })
        .await
    }
}

fn read_floor(txn: &redb::ReadTransaction) -> Result<Cursor, redb::Error> {
    let meta = match txn.open_table(META) {
        Ok(meta) => meta,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Cursor::START),
        Err(e) => return Err(e.into()),
    };
    let floor = match meta.get(FLOOR)? {
        Some(value) => codec::decode(value.value())
            .map_err(|e| redb::Error::Corrupted(format!("event floor: {e}")))?,
        None => Cursor::START,
    };
    Ok(floor)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, redb::Error> + Send + 'static,
) -> Result<T, SubscribeError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(|e| SubscribeError::Storage(e.to_string())),
        Err(e) => Err(SubscribeError::Storage(e.to_string())),
    }
}

/// One subscriber's position in the stream.
pub struct Subscription {
    log: EventLog,
    caller: Caller,
    filter: EventFilter,
    /// The next cursor to deliver.
    next: Cursor,
    live: broadcast::Receiver<Live>,
    /// Deliveries read but not yet handed out.
    ready: VecDeque<Delivery>,
    /// The history has nothing at or after `next`: wait on the live channel.
    caught_up: bool,
    /// Its place among the node's subscriptions, freed when it is dropped.
    _slot: tokio::sync::OwnedSemaphorePermit,
    /// Its id in [`EventLog`]'s record of replaying subscriptions.
    id: u64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        lock(&self.log.replaying).remove(&self.id);
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Subscription {
    /// The next delivery, waiting for one; `None` when the node shuts down.
    pub async fn next(&mut self) -> Result<Option<Delivery>, SubscribeError> {
        loop {
            if let Some(delivery) = self.ready.pop_front() {
                return Ok(Some(delivery));
            }
            if self.caught_up {
                match self.live.recv().await {
                    Ok(Live::Events(events)) => self.take(events.iter().cloned()),
                    // Fell behind the channel, or the history was replaced: read what
                    // was missed (or where it now starts) from the history.
                    Ok(Live::Replaced) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        self.caught_up = false;
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(None),
                }
                continue;
            }
            lock(&self.log.replaying).insert(self.id, self.next.index);
            let (events, floor) = self.log.read(self.next).await?;
            if self.next < floor {
                // The oldest event held (the floor itself may fall between events).
                let oldest = events.first().map_or(floor, |e| e.cursor.max(floor));
                self.ready.push_back(Delivery::Gap { from: self.next, oldest });
                self.next = oldest;
                continue;
            }
            self.caught_up = events.is_empty();
            if self.caught_up {
                lock(&self.log.replaying).remove(&self.id);
            }
            self.take(events.into_iter());
        }
    }

    /// The cursor after the last event considered (where a reconnect resumes).
    pub fn position(&self) -> Cursor {
        self.next
    }

    fn take(&mut self, events: impl Iterator<Item = Event>) {
        for event in events {
            if event.cursor < self.next {
                continue;
            }
            self.next = event.cursor.next();
            if self.filter.admits(&self.caller, &event.event) {
                self.ready.push_back(Delivery::Event(event));
            }
        }
    }
}

impl EventStream for Subscription {
    fn next(&mut self) -> BoxFuture<'_, Result<Option<Delivery>, SubscribeError>> {
        Box::pin(Self::next(self))
    }

    fn position(&self) -> Cursor {
        Self::position(self)
    }
}

#[cfg(test)]
mod tests {
    use ferry_protocol::event::{EventKind, JobEvent};
    use ferry_protocol::job::{JobProgress, JobState};
    use ferry_protocol::{JobId, Principal, Role};

    use super::*;

    fn admin() -> Caller {
        Caller { principal: Principal::new("root").expect("name"), role: Role::Admin }
    }

    fn everything() -> EventFilter {
        EventFilter { all_users: true, ..EventFilter::default() }
    }

    fn event(index: u64) -> Event {
        let event = JobEvent {
            kind: EventKind::JobCreated,
            job: JobId::generate(),
            owner: Principal::new("alice").expect("name"),
            display_name: format!("job-{index}"),
            state: JobState::Suspended,
            progress: JobProgress {
                bytes_total: Some(0),
                bytes_transferred: 0,
                files_total: 0,
                files_transferred: 0,
            },
            error: None,
            file_index: None,
            time: Timestamp(1_000 + index),
        };
        Event { cursor: Cursor { index, sub: 0 }, event }
    }

    fn database() -> (tempfile::TempDir, Arc<Database>) {
        let dir = tempfile::tempdir().expect("dir");
        let db = Database::create(dir.path().join("state.redb")).expect("db");
        (dir, Arc::new(db))
    }

    /// Commits entries `range` (one event each) and publishes them, as apply does.
    fn commit(db: &Database, log: &EventLog, range: std::ops::Range<u64>, retention: Retention) {
        for index in range {
            let event = event(index);
            let txn = db.begin_write().expect("txn");
            let bytes = codec::encode(&event).expect("encode");
            append(&txn, &[(event.cursor, bytes)], Some(event.event.time), retention)
                .expect("append");
            txn.commit().expect("commit");
            log.publish(vec![event].into());
        }
    }

    async fn take(sub: &mut Subscription, n: usize) -> Vec<Delivery> {
        let mut out = Vec::new();
        while out.len() < n {
            let next = tokio::time::timeout(Duration::from_secs(10), sub.next()).await;
            out.push(next.expect("in time").expect("readable").expect("open"));
        }
        out
    }

    #[tokio::test]
    async fn a_subscriber_far_behind_the_live_channel_catches_up_from_the_history() {
        let (_dir, db) = database();
        let log = EventLog::new(db.clone());
        let mut sub = log.subscribe(admin(), everything(), StartAt::Now).await.expect("sub");
        // Three times what the live channel buffers, while the subscriber reads nothing.
        let entries = 3 * LIVE_BUFFER as u64;
        commit(&db, &log, 1..entries + 1, Retention::default());
        assert_eq!(log.furthest_behind(), None, "nobody replays yet");
        let mut got = take(&mut sub, 1).await;
        // It replays the history now, from its start (the lag metric shows it).
        assert!(log.furthest_behind().is_some_and(|at| at <= 1), "{:?}", log.furthest_behind());
        got.extend(take(&mut sub, entries as usize - 1).await);
        for (n, delivery) in got.iter().enumerate() {
            match delivery {
                Delivery::Event(e) => assert_eq!(e.cursor, Cursor { index: n as u64 + 1, sub: 0 }),
                Delivery::Gap { .. } => panic!("a gap although the history holds everything"),
            }
        }
        // And it goes on live.
        commit(&db, &log, entries + 1..entries + 2, Retention::default());
        let live = take(&mut sub, 1).await;
        assert!(matches!(&live[0], Delivery::Event(e) if e.cursor.index == entries + 1));
        // At the head: nothing left to replay (lag 0 against the newest entry).
        assert!(
            log.furthest_behind().is_none_or(|at| at >= entries),
            "{:?}",
            log.furthest_behind()
        );
        drop(sub);
        assert_eq!(log.furthest_behind(), None, "a closed subscription is forgotten");
    }

    #[tokio::test]
    async fn subscriptions_are_bounded_and_a_closed_one_frees_its_place() {
        let (_dir, db) = database();
        let log = EventLog::with_limit(db, 2);
        let first = log.subscribe(admin(), everything(), StartAt::Now).await.expect("first");
        let _second = log.subscribe(admin(), everything(), StartAt::Now).await.expect("second");
        let third = log.subscribe(admin(), everything(), StartAt::Now).await;
        assert!(matches!(third, Err(SubscribeError::Busy(_))), "a third was taken");
        drop(first);
        log.subscribe(admin(), everything(), StartAt::Now).await.expect("a place again");
    }

    #[tokio::test]
    async fn history_pruned_past_the_cursor_is_reported_as_a_gap() {
        let (_dir, db) = database();
        let log = EventLog::new(db.clone());
        let retention = Retention { max_events: 100, max_age: Duration::from_secs(3600) };
        commit(&db, &log, 1..301, retention);
        let mut sub = log
            .subscribe(admin(), everything(), StartAt::Cursor(Cursor::START))
            .await
            .expect("sub");
        let got = take(&mut sub, 101).await;
        assert_eq!(
            got[0],
            Delivery::Gap { from: Cursor::START, oldest: Cursor { index: 201, sub: 0 } }
        );
        assert!(matches!(&got[1], Delivery::Event(e) if e.cursor.index == 201));
        assert!(matches!(&got[100], Delivery::Event(e) if e.cursor.index == 300));

        // Age: events older than the limit (against the newest) go too.
        let young = Retention { max_events: 1_000, max_age: Duration::from_millis(10) };
        commit(&db, &log, 301..302, young);
        let mut late = log
            .subscribe(admin(), everything(), StartAt::Cursor(Cursor::START))
            .await
            .expect("sub");
        let got = take(&mut late, 1).await;
        assert!(
            matches!(got[0], Delivery::Gap { oldest, .. } if oldest.index >= 291),
            "{:?}",
            got[0]
        );
    }
}
