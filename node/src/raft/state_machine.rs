//! The Raft state machine on redb (`state.redb`): the job queue held in memory for
//! reads, every job and request record also stored as a row, written in the same
//! transaction as the applied log id; plus snapshot build and install.
//!
//! Apply is the pure [`Queue::apply_batch`] from `ferry-protocol`; this file only
//! persists what it touched and keeps the applied id and membership beside it.

use std::io::Cursor;
use std::path::Path;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use ferry_protocol::codec;
use ferry_protocol::event::{Cursor as EventCursor, Event};
use ferry_protocol::queue::{Changes, Queue, QueueImage, QueueMeta, RequestKey, RequestRecord};
use ferry_protocol::{BatchReply, Job, Timestamp};
use openraft::storage::RaftStateMachine;
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::events::{self, EventLog, Retention};

use super::{
    LogId, META, NodeAddr, StorageError, StoredMembership, TypeConfig, blocking, io_error,
    open_database,
};

const JOBS: TableDefinition<'_, u128, &[u8]> = TableDefinition::new("jobs");
const REQUESTS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("requests");

const APPLIED: &str = "applied";
const MEMBERSHIP: &str = "membership";
const QUEUE_META: &str = "queue";
const SNAPSHOT: &str = "snapshot";

fn read_err<E: std::error::Error + 'static>(e: E) -> StorageError {
    io_error(ErrorVerb::Read, ErrorSubject::StateMachine, &e)
}

fn write_err<E: std::error::Error + 'static>(e: E) -> StorageError {
    io_error(ErrorVerb::Write, ErrorSubject::StateMachine, &e)
}

/// Reads and decodes one row of the meta table.
fn meta_row<T: serde::de::DeserializeOwned>(
    meta: &redb::ReadOnlyTable<&str, &[u8]>,
    key: &str,
) -> Result<Option<T>, StorageError> {
    match meta.get(key).map_err(read_err)? {
        Some(value) => codec::decode(value.value()).map(Some).map_err(read_err),
        None => Ok(None),
    }
}

/// The durable state as of `txn`: the queue image, the applied id and membership.
fn read_state(
    txn: &redb::ReadTransaction,
) -> Result<(QueueImage, Option<LogId>, StoredMembership), StorageError> {
    let meta = txn.open_table(META).map_err(read_err)?;
    let applied: Option<Option<LogId>> = meta_row(&meta, APPLIED)?;
    let membership: Option<StoredMembership> = meta_row(&meta, MEMBERSHIP)?;
    let queue_meta: Option<QueueMeta> = meta_row(&meta, QUEUE_META)?;
    let mut image = QueueImage { meta: queue_meta.unwrap_or_default(), ..QueueImage::default() };
    for row in txn.open_table(JOBS).map_err(read_err)?.iter().map_err(read_err)? {
        let (_, value) = row.map_err(read_err)?;
        image.jobs.push(codec::decode::<Job>(value.value()).map_err(read_err)?);
    }
    for row in txn.open_table(REQUESTS).map_err(read_err)?.iter().map_err(read_err)? {
        let (key, value) = row.map_err(read_err)?;
        let key: RequestKey = codec::decode(key.value()).map_err(read_err)?;
        let record: RequestRecord = codec::decode(value.value()).map_err(read_err)?;
        image.requests.push((key, record));
    }
    Ok((image, applied.flatten(), membership.unwrap_or_default()))
}

/// Stores `snapshot` as the current one unless a newer one is already stored (a build
/// that started before an install may finish after it).
fn store_snapshot(txn: &WriteTransaction, snapshot: &StoredSnapshot) -> Result<bool, StorageError> {
    let mut meta = txn.open_table(META).map_err(write_err)?;
    let current: Option<StoredSnapshot> = match meta.get(SNAPSHOT).map_err(write_err)? {
        Some(value) => Some(codec::decode_snapshot(value.value()).map_err(read_err)?),
        None => None,
    };
    if current.is_some_and(|c| c.meta.last_log_id > snapshot.meta.last_log_id) {
        return Ok(false);
    }
    let bytes = codec::encode_snapshot(snapshot).map_err(write_err)?;
    meta.insert(SNAPSHOT, bytes.as_slice()).map_err(write_err)?;
    Ok(true)
}

/// The applied state: the queue plus the Raft position it reflects. One lock guards all
/// three so that a snapshot or a read never sees a queue and an applied id that disagree.
#[derive(Debug, Default)]
pub struct Machine {
    /// The job queue.
    pub queue: Queue,
    /// The last applied log id.
    pub applied: Option<LogId>,
    /// The last applied membership.
    pub membership: StoredMembership,
}

/// The last snapshot built or installed, as stored.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<u64, NodeAddr>,
    data: Vec<u8>,
}

/// Rows to write after an apply.
#[derive(Default)]
struct Rows {
    jobs: Vec<(u128, Option<Vec<u8>>)>,
    requests: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    meta: Vec<(&'static str, Vec<u8>)>,
    /// The applied entries' events, encoded, in cursor order.
    events: Vec<(EventCursor, Vec<u8>)>,
    /// Batch time of the newest event (the history's age limit counts back from it).
    newest: Option<Timestamp>,
}

impl Rows {
    fn collect(machine: &Machine, changes: Changes) -> Result<Self, StorageError> {
        let mut rows = Self::default();
        for id in changes.jobs {
            let value = machine.queue.job(&id).map(codec::encode).transpose().map_err(write_err)?;
            rows.jobs.push((id.0.as_u128(), value));
        }
        for key in changes.requests {
            let value =
                machine.queue.request(&key).map(codec::encode).transpose().map_err(write_err)?;
            rows.requests.push((codec::encode(&key).map_err(write_err)?, value));
        }
        rows.meta.push((APPLIED, codec::encode(&machine.applied).map_err(write_err)?));
        rows.meta.push((MEMBERSHIP, codec::encode(&machine.membership).map_err(write_err)?));
        rows.meta.push((QUEUE_META, codec::encode(machine.queue.meta()).map_err(write_err)?));
        Ok(rows)
    }

    fn write(self, db: &Database, retention: Retention) -> Result<(), StorageError> {
        let txn = db.begin_write().map_err(write_err)?;
        self.write_in(&txn)?;
        events::append(&txn, &self.events, self.newest, retention).map_err(write_err)?;
        // Durability::Immediate (redb's default): on disk before the reply leaves.
        txn.commit().map_err(write_err)
    }

    fn write_in(&self, txn: &WriteTransaction) -> Result<(), StorageError> {
        {
            let mut jobs = txn.open_table(JOBS).map_err(write_err)?;
            for (key, value) in &self.jobs {
                match value {
                    Some(bytes) => jobs.insert(*key, bytes.as_slice()).map(drop),
                    None => jobs.remove(*key).map(drop),
                }
                .map_err(write_err)?;
            }
            let mut requests = txn.open_table(REQUESTS).map_err(write_err)?;
            for (key, value) in &self.requests {
                match value {
                    Some(bytes) => requests.insert(key.as_slice(), bytes.as_slice()).map(drop),
                    None => requests.remove(key.as_slice()).map(drop),
                }
                .map_err(write_err)?;
            }
            let mut meta = txn.open_table(META).map_err(write_err)?;
            for (key, bytes) in &self.meta {
                meta.insert(*key, bytes.as_slice()).map_err(write_err)?;
            }
        }
        Ok(())
    }
}

/// The redb-backed state machine. Clones share the database and the in-memory machine.
#[derive(Clone)]
pub struct StateMachineStore {
    db: Arc<Database>,
    machine: Arc<RwLock<Machine>>,
    events: EventLog,
    retention: Retention,
}

impl StateMachineStore {
    /// Opens (or creates) the state database at `path` and loads the queue from it; the
    /// event history keeps what `retention` allows.
    pub fn open(path: &Path, retention: Retention) -> Result<Self, StorageError> {
        let db = open_database(path).map_err(write_err)?;
        let txn = db.begin_write().map_err(write_err)?;
        txn.open_table(JOBS).map_err(write_err)?;
        txn.open_table(REQUESTS).map_err(write_err)?;
        txn.open_table(META).map_err(write_err)?;
        txn.open_table(events::EVENTS).map_err(write_err)?;
        txn.commit().map_err(write_err)?;
        let machine = Self::load(&db)?;
        let db = Arc::new(db);
        Ok(Self {
            events: EventLog::new(db.clone()),
            db,
            machine: Arc::new(RwLock::new(machine)),
            retention,
        })
    }

    /// The job event stream this state machine produces.
    pub fn events(&self) -> &EventLog {
        &self.events
    }

    fn load(db: &Database) -> Result<Machine, StorageError> {
        let txn = db.begin_read().map_err(read_err)?;
        let (image, applied, membership) = read_state(&txn)?;
        Ok(Machine { queue: Queue::from_image(image), applied, membership })
    }

    /// Read access to the applied state (held briefly: writers wait).
    pub fn read(&self) -> RwLockReadGuard<'_, Machine> {
        self.machine.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Machine> {
        self.machine.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    /// Builds the snapshot from the *durable* state (a redb read transaction: one
    /// consistent view of what is on disk), never from memory, which may be ahead of the
    /// disk while an apply commits. The log may then be purged up to it safely.
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let db = self.db.clone();
        let snapshot = blocking(ErrorSubject::StateMachine, move || {
            let (image, applied, membership) = read_state(&db.begin_read().map_err(read_err)?)?;
            let snapshot_id = match applied {
                Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, image.meta.seq),
                None => "empty".to_owned(),
            };
            let meta =
                SnapshotMeta { last_log_id: applied, last_membership: membership, snapshot_id };
            let data = codec::encode_snapshot(&image).map_err(write_err)?;
            let snapshot = StoredSnapshot { meta, data };
            let txn = db.begin_write().map_err(write_err)?;
            if store_snapshot(&txn, &snapshot)? {
                txn.commit().map_err(write_err)?;
            }
            Ok(snapshot)
        })
        .await?;
        tracing::info!(last_log_id = ?snapshot.meta.last_log_id, bytes = snapshot.data.len(), "built snapshot");
        Ok(Snapshot { meta: snapshot.meta, snapshot: Box::new(Cursor::new(snapshot.data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let machine = self.read();
        Ok((machine.applied, machine.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<BatchReply>, StorageError>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let (replies, rows, published) = {
            let mut machine = self.write();
            let mut replies = Vec::new();
            let mut published = Vec::new();
            for entry in entries {
                machine.applied = Some(entry.log_id);
                let reply = match entry.payload {
                    EntryPayload::Blank => BatchReply::default(),
                    EntryPayload::Normal(batch) => machine.queue.apply_batch(&batch),
                    EntryPayload::Membership(membership) => {
                        machine.membership = StoredMembership::new(Some(entry.log_id), membership);
                        BatchReply::default()
                    }
                };
                replies.push(reply);
                // The entry's events, numbered: the cursor is (log index, position).
                for (sub, event) in machine.queue.take_events().into_iter().enumerate() {
                    let sub = u32::try_from(sub).unwrap_or(u32::MAX);
                    let cursor = EventCursor { index: entry.log_id.index, sub };
                    published.push(Event { cursor, event });
                }
            }
            let changes = machine.queue.take_changes();
            let mut rows = Rows::collect(&machine, changes)?;
            for event in &published {
                rows.events.push((event.cursor, codec::encode(event).map_err(write_err)?));
            }
            rows.newest = published.last().map(|e| e.event.time);
            (replies, rows, published)
        };
        let db = self.db.clone();
        let retention = self.retention;
        blocking(ErrorSubject::StateMachine, move || rows.write(&db, retention)).await?;
        if !published.is_empty() {
            self.events.publish(published.into());
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, NodeAddr>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let image: QueueImage = codec::decode_snapshot(&data).map_err(read_err)?;
        let machine = Machine {
            queue: Queue::from_image(image.clone()),
            applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        let mut rows = Rows::default();
        for job in &image.jobs {
            rows.jobs.push((job.id.0.as_u128(), Some(codec::encode(job).map_err(write_err)?)));
        }
        for (key, record) in &image.requests {
            rows.requests.push((
                codec::encode(key).map_err(write_err)?,
                Some(codec::encode(record).map_err(write_err)?),
            ));
        }
        rows.meta.push((APPLIED, codec::encode(&machine.applied).map_err(write_err)?));
        rows.meta.push((MEMBERSHIP, codec::encode(&machine.membership).map_err(write_err)?));
        rows.meta.push((QUEUE_META, codec::encode(&image.meta).map_err(write_err)?));
        let snapshot = StoredSnapshot { meta: meta.clone(), data };
        let floor = EventCursor { index: meta.last_log_id.map_or(0, |id| id.index + 1), sub: 0 };
        let db = self.db.clone();
        blocking(ErrorSubject::StateMachine, move || {
            // Replace the tables wholesale, in the same transaction as the new rows, so a
            // crash leaves either the old state or the new one.
            let txn = db.begin_write().map_err(write_err)?;
            txn.delete_table(JOBS).map_err(write_err)?;
            txn.delete_table(REQUESTS).map_err(write_err)?;
            // The events the snapshot skips over were never seen here: the history
            // starts again after it, and older cursors get a gap.
            txn.delete_table(events::EVENTS).map_err(write_err)?;
            events::set_floor(&txn, floor).map_err(write_err)?;
            rows.write_in(&txn)?;
            store_snapshot(&txn, &snapshot)?;
            txn.commit().map_err(write_err)
        })
        .await?;
        *self.write() = machine;
        tracing::info!(last_log_id = ?meta.last_log_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let db = self.db.clone();
        let stored: Option<StoredSnapshot> = blocking(ErrorSubject::StateMachine, move || {
            let txn = db.begin_read().map_err(read_err)?;
            let meta = txn.open_table(META).map_err(read_err)?;
            let Some(value) = meta.get(SNAPSHOT).map_err(read_err)? else {
                return Ok(None);
            };
            codec::decode_snapshot(value.value()).map(Some).map_err(read_err)
        })
        .await?;
        Ok(stored.map(|s| Snapshot { meta: s.meta, snapshot: Box::new(Cursor::new(s.data)) }))
    }
}
