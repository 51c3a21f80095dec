//! The node's event history and live fan-out, behind the notification bus and SSE.
//!
//! The state machine writes each applied entry's events to the `events` table of
//! `state.redb` in the same transaction as the rows they describe, prunes the oldest
//! beyond the configured count and age, and then hands them to a broadcast channel. A
//! [`Subscription`] replays the history from its cursor and then follows the channel;
//! when it falls behind the channel it goes back to the history, and when the history
//! no longer holds what it needs it says so with a [`Delivery::Gap`], never skipping
//! silently.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use ferry_coordinator::{BoxFuture, EventStream, SubscribeError};
use ferry_protocol::codec;
use ferry_protocol::event::{Cursor, Delivery, Event, EventFilter, StartAt};
use ferry_protocol::{Caller, Timestamp};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::broadcast;

/// Events by (log index, position in the entry).
pub(crate) const EVENTS: TableDefinition<'_, (u64, u32), &[u8]> = TableDefinition::new("events");
/// The meta row holding the oldest cursor from which the history is complete.
pub(crate) const FLOOR: &str = "events_floor";

/// How many entries' events the live channel buffers for slow subscribers before they
/// fall back to reading the history.
const LIVE_BUFFER: usize = 1024;
/// Events read from the history at a time.
const REPLAY_BATCH: usize = 512;

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
    txn.open_table(crate::raft::META)?.insert(FLOOR, bytes.as_slice())?;
    Ok(())
}

/// The node's event stream: history on disk and the live channel.
#[derive(Clone)]
pub struct EventLog {
    db: Arc<Database>,
    live: broadcast::Sender<Arc<[Event]>>,
}

impl EventLog {
    /// The history in `db` (the state database) with a fresh live channel.
    pub(crate) fn new(db: Arc<Database>) -> Self {
        Self { db, live: broadcast::channel(LIVE_BUFFER).0 }
    }

    /// Hands an applied entry's events, already durable, to live subscribers.
    pub(crate) fn publish(&self, events: Arc<[Event]>) {
        // No receiver is not an error: nobody is watching.
        let _ = self.live.send(events);
    }

    /// Opens a subscription for `caller`: replay from `from`, then live events.
    pub async fn subscribe(
        &self,
        caller: Caller,
        filter: EventFilter,
        from: StartAt,
    ) -> Result<Subscription, SubscribeError> {
        filter.authorize(&caller).map_err(SubscribeError::Refused)?;
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
    let meta = match txn.open_table(crate::raft::META) {
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
    live: broadcast::Receiver<Arc<[Event]>>,
    /// Deliveries read but not yet handed out.
    ready: VecDeque<Delivery>,
    /// The history has nothing at or after `next`: wait on the live channel.
    caught_up: bool,
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
                    Ok(events) => self.take(events.iter().cloned()),
                    // Fell behind the channel: read what was missed from the history.
                    Err(broadcast::error::RecvError::Lagged(_)) => self.caught_up = false,
                    Err(broadcast::error::RecvError::Closed) => return Ok(None),
                }
                continue;
            }
            let (events, floor) = self.log.read(self.next).await?;
            if self.next < floor {
                self.ready.push_back(Delivery::Gap { from: self.next, oldest: floor });
                self.next = floor;
                continue;
            }
            self.caught_up = events.is_empty();
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
}
