//! The Raft state machine on redb (`state.redb`): the job queue held in memory for
//! reads, every job and request record also stored as a row, written in the same
//! transaction as the applied log id; plus snapshot build and install.
//!
//! Apply is the pure [`Queue::apply_batch`] from `ferry-protocol`; this file only
//! persists what it touched and keeps the applied id and membership beside it.
//!
//! Durability: an applied entry is already durable in the Raft log (fsync'd before it
//! was acknowledged, and on a quorum before it was committed), and openraft applies the
//! committed entries past the stored applied id again at start. So the rows an apply
//! writes need no fsync of their own: they are committed without one
//! ([`redb::Durability::None`]), and every [`DURABLE_EVERY`]-th commit, each snapshot
//! build and each install is durable (and makes the commits before it durable too). A
//! crash loses at most the rows of the entries since the last durable commit, which the
//! log still holds: the log is purged only behind a stored snapshot, and storing one
//! is a durable commit made after the snapshot's state was read.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use ferry_protocol::codec;
use ferry_protocol::event::{Cursor as EventCursor, Event};
use ferry_protocol::queue::{Changes, Queue, QueueImage, QueueMeta, RequestKey, RequestRecord};
use ferry_protocol::{BatchReply, Job, Timestamp};
use openraft::storage::RaftStateMachine;
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
};
use redb::{Database, ReadableDatabase, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::events::{self, EventLog, Retention};
use crate::feed::ChangeFeed;

use super::snapshot_file::{self, SnapshotDir};
use super::{
    JOBS, LogId, META, NodeAddr, PRINCIPALS, PurgeFloor, REQUESTS, StorageError, StoredMembership,
    TypeConfig, UPLOADS, blocking, io_error, open_database,
};

const APPLIED: &str = "applied";
const MEMBERSHIP: &str = "membership";
const QUEUE_META: &str = "queue";
const SNAPSHOT: &str = "snapshot";

/// Every this many applies, the state commit is durable (fsync'd); the others are not
/// (see the module doc). It bounds what a restart after a crash applies again from the
/// log, and the pages redb keeps in memory for commits not yet on disk.
const DURABLE_EVERY: u32 = 32;

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

/// The durable scalars as of `txn`: queue scalars, applied id and membership.
fn read_scalars(
    txn: &redb::ReadTransaction,
) -> Result<(QueueMeta, Option<LogId>, StoredMembership), StorageError> {
    let meta = txn.open_table(META).map_err(read_err)?;
    let applied: Option<Option<LogId>> = meta_row(&meta, APPLIED)?;
    let membership: Option<StoredMembership> = meta_row(&meta, MEMBERSHIP)?;
    let queue_meta: Option<QueueMeta> = meta_row(&meta, QUEUE_META)?;
    Ok((queue_meta.unwrap_or_default(), applied.flatten(), membership.unwrap_or_default()))
}

/// The durable state as of `txn`: the queue image, the applied id and membership.
fn read_state(
    txn: &redb::ReadTransaction,
) -> Result<(QueueImage, Option<LogId>, StoredMembership), StorageError> {
    let (queue_meta, applied, membership) = read_scalars(txn)?;
    let mut image = QueueImage { meta: queue_meta, ..QueueImage::default() };
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
    for row in txn.open_table(UPLOADS).map_err(read_err)?.iter().map_err(read_err)? {
        let (_, value) = row.map_err(read_err)?;
        image.uploads.push(codec::decode(value.value()).map_err(read_err)?);
    }
    for row in txn.open_table(PRINCIPALS).map_err(read_err)?.iter().map_err(read_err)? {
        let (_, value) = row.map_err(read_err)?;
        image.principals.push(codec::decode(value.value()).map_err(read_err)?);
    }
    Ok((image, applied, membership))
}

/// Stores `snapshot` as the current one unless a newer one is already stored (a build
/// that started before an install may finish after it).
fn store_snapshot(txn: &WriteTransaction, snapshot: &StoredSnapshot) -> Result<bool, StorageError> {
    let mut meta = txn.open_table(META).map_err(write_err)?;
    let current: Option<StoredSnapshot> = match meta.get(SNAPSHOT).map_err(write_err)? {
        Some(value) => Some(codec::decode(value.value()).map_err(read_err)?),
        None => None,
    };
    if current.is_some_and(|c| c.meta.last_log_id > snapshot.meta.last_log_id) {
        return Ok(false);
    }
    let bytes = codec::encode(snapshot).map_err(write_err)?;
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

/// The last snapshot built or installed: its meta, and its file in the snapshot
/// directory.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<u64, NodeAddr>,
    file: String,
}

/// The file name of snapshot `id` (ids come from members; only safe characters stay).
fn snapshot_file_name(id: &str) -> String {
    let safe: String =
        id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    format!("{}.snap", &safe[..safe.len().min(100)])
}

/// Rows to write after an apply.
#[derive(Default)]
struct Rows {
    jobs: Vec<(u128, Option<Vec<u8>>)>,
    requests: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    uploads: Vec<(String, Option<Vec<u8>>)>,
    principals: Vec<(String, Vec<u8>)>,
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
        for id in changes.uploads {
            let value = machine
                .queue
                .session_by_id(&id)
                .map(codec::encode)
                .transpose()
                .map_err(write_err)?;
            rows.uploads.push((id, value));
        }
        for name in changes.principals {
            if let Some(record) = machine.queue.principals().get(&name) {
                let value = codec::encode(record).map_err(write_err)?;
                rows.principals.push((name.as_str().to_owned(), value));
            }
        }
        rows.meta.push((APPLIED, codec::encode(&machine.applied).map_err(write_err)?));
        rows.meta.push((MEMBERSHIP, codec::encode(&machine.membership).map_err(write_err)?));
        rows.meta.push((QUEUE_META, codec::encode(machine.queue.meta()).map_err(write_err)?));
        Ok(rows)
    }

    /// Writes the rows in one transaction, fsync'd only if `durable` (see the module
    /// doc: the log already holds what they record).
    fn write(self, db: &Database, retention: Retention, durable: bool) -> Result<(), StorageError> {
        let mut txn = db.begin_write().map_err(write_err)?;
        if !durable {
            txn.set_durability(redb::Durability::None).map_err(write_err)?;
        }
        self.write_in(&txn)?;
        events::append(&txn, &self.events, self.newest, retention).map_err(write_err)?;
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
            let mut uploads = txn.open_table(UPLOADS).map_err(write_err)?;
            for (key, value) in &self.uploads {
                match value {
                    Some(bytes) => uploads.insert(key.as_str(), bytes.as_slice()).map(drop),
                    None => uploads.remove(key.as_str()).map(drop),
                }
                .map_err(write_err)?;
            }
            let mut principals = txn.open_table(PRINCIPALS).map_err(write_err)?;
            for (key, bytes) in &self.principals {
                principals.insert(key.as_str(), bytes.as_slice()).map_err(write_err)?;
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
    snapshots: SnapshotDir,
    /// The file a snapshot is being received into (openraft hands back only its handle).
    receiving: Arc<std::sync::Mutex<Option<PathBuf>>>,
    /// What each apply changed, for this node's components.
    feed: ChangeFeed,
    /// The snapshot on disk, for the log store's purges.
    floor: Arc<tokio::sync::watch::Sender<PurgeFloor>>,
    /// Applies committed without an fsync since the last durable one (see
    /// [`DURABLE_EVERY`]).
    unsynced: u32,
}

impl StateMachineStore {
    /// Opens (or creates) the state database at `path` and loads the queue from it; the
    /// event history keeps what `retention` allows.
    pub fn open(path: &Path, retention: Retention) -> Result<Self, StorageError> {
        let db = open_database(path, super::STATE_CACHE_BYTES).map_err(write_err)?;
        let txn = db.begin_write().map_err(write_err)?;
        txn.open_table(JOBS).map_err(write_err)?;
        txn.open_table(REQUESTS).map_err(write_err)?;
        txn.open_table(UPLOADS).map_err(write_err)?;
        // Absent from data directories of format 8: created empty on their first start.
        txn.open_table(PRINCIPALS).map_err(write_err)?;
        txn.open_table(META).map_err(write_err)?;
        txn.open_table(events::EVENTS).map_err(write_err)?;
        txn.commit().map_err(write_err)?;
        let machine = Self::load(&db)?;
        let stored: Option<StoredSnapshot> = {
            let txn = db.begin_read().map_err(read_err)?;
            meta_row(&txn.open_table(META).map_err(read_err)?, SNAPSHOT)?
        };
        let floor = PurgeFloor { snapshot: stored.and_then(|s| s.meta.last_log_id), failed: false };
        let db = Arc::new(db);
        Ok(Self {
            feed: ChangeFeed::new(&machine.queue),
            events: EventLog::new(db.clone()),
            db,
            machine: Arc::new(RwLock::new(machine)),
            retention,
            snapshots: SnapshotDir::open(path).map_err(write_err)?,
            receiving: Arc::default(),
            floor: Arc::new(tokio::sync::watch::Sender::new(floor)),
            unsynced: 0,
        })
    }

    /// The snapshot on disk, as it changes (see [`PurgeFloor`]).
    pub fn purge_floor(&self) -> tokio::sync::watch::Receiver<PurgeFloor> {
        self.floor.subscribe()
    }

    /// Records that a snapshot up to `stored` is on disk, or that storing one failed.
    fn snapshot_stored(&self, stored: Result<Option<LogId>, ()>) {
        self.floor.send_modify(|floor| match stored {
            Ok(id) => floor.snapshot = floor.snapshot.max(id),
            Err(()) => floor.failed = true,
        });
    }

    /// The job event stream this state machine produces.
    pub fn events(&self) -> &EventLog {
        &self.events
    }

    /// What each apply changes in the queue (see [`crate::feed`]).
    pub(crate) fn feed(&self) -> &ChangeFeed {
        &self.feed
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

    /// Installs a received snapshot: stores its file, then replaces the tables.
    async fn install(
        &mut self,
        meta: &SnapshotMeta<u64, NodeAddr>,
        mut snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        use tokio::io::AsyncWriteExt;
        fail::fail_point!("raft.snapshot.install", |_| {
            Err(write_err(crate::failpoint::error("raft.snapshot.install")))
        });
        snapshot.flush().await.map_err(write_err)?;
        let received = snapshot.into_std().await;
        let part = self.receiving.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        let (db, dir, meta_owned) = (self.db.clone(), self.snapshots.clone(), meta.clone());
        let floor = EventCursor { index: meta.last_log_id.map_or(0, |id| id.index + 1), sub: 0 };
        let image = blocking(ErrorSubject::StateMachine, move || {
            let file = snapshot_file_name(&meta_owned.snapshot_id);
            let path = dir.path(&file);
            // Is the handle the file openraft received into (not some other snapshot)?
            let same_file = |part: &PathBuf| {
                use std::os::unix::fs::MetadataExt;
                match (received.metadata(), std::fs::metadata(part)) {
                    (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
                    _ => false,
                }
            };
            match part {
                // Already in place (a snapshot this store built).
                _ if same_file(&path) => {}
                // The file openraft wrote into: keep it as the stored snapshot.
                Some(part) if same_file(&part) => {
                    std::fs::rename(&part, &path).map_err(write_err)?;
                }
                // A snapshot handed over some other way: copy it, streaming.
                other => {
                    if let Some(unused) = other {
                        let _ = std::fs::remove_file(unused);
                    }
                    let mut received = received;
                    std::io::Seek::rewind(&mut received).map_err(read_err)?;
                    let copy_path = dir.part("copy");
                    let mut copy = std::fs::File::create(&copy_path).map_err(write_err)?;
                    std::io::copy(&mut received, &mut copy).map_err(write_err)?;
                    copy.sync_all().map_err(write_err)?;
                    std::fs::rename(&copy_path, &path).map_err(write_err)?;
                }
            }
            dir.sync().map_err(write_err)?;
            // Replace the tables wholesale, in one transaction with the new rows, so a
            // crash leaves either the old state or the new one.
            let txn = db.begin_write().map_err(write_err)?;
            txn.delete_table(JOBS).map_err(write_err)?;
            txn.delete_table(REQUESTS).map_err(write_err)?;
            txn.delete_table(UPLOADS).map_err(write_err)?;
            txn.delete_table(PRINCIPALS).map_err(write_err)?;
            // The events the snapshot skips over were never seen here: the history
            // starts again after it, and older cursors get a gap.
            txn.delete_table(events::EVENTS).map_err(write_err)?;
            events::set_floor(&txn, floor).map_err(write_err)?;
            let image = snapshot_file::load(std::fs::File::open(&path).map_err(read_err)?, &txn)
                .map_err(read_err)?;
            let mut rows = Rows::default();
            rows.meta.push((APPLIED, codec::encode(&meta_owned.last_log_id).map_err(write_err)?));
            rows.meta
                .push((MEMBERSHIP, codec::encode(&meta_owned.last_membership).map_err(write_err)?));
            rows.meta.push((QUEUE_META, codec::encode(&image.meta).map_err(write_err)?));
            rows.write_in(&txn)?;
            store_snapshot(&txn, &StoredSnapshot { meta: meta_owned, file: file.clone() })?;
            txn.commit().map_err(write_err)?;
            dir.remove_others(&file);
            Ok(image)
        })
        .await?;
        *self.write() = Machine {
            queue: Queue::from_image(image),
            applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        self.feed.reset(&self.read().queue);
        // Subscribers waiting for the next entry's events would otherwise go on after
        // the hole the snapshot left, as if nothing were missing.
        self.events.history_replaced();
        tracing::info!(last_log_id = ?meta.last_log_id, "installed snapshot");
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    /// Builds the snapshot from the stored state (a redb read transaction: one consistent
    /// view of the rows), never from memory, which may be ahead of the rows while an
    /// apply commits. The commit that stores the snapshot is durable, so the state it
    /// was read from is on disk before the log may be purged up to it.
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        fail::fail_point!("raft.snapshot.build", |_| {
            Err(write_err(crate::failpoint::error("raft.snapshot.build")))
        });
        let (db, dir) = (self.db.clone(), self.snapshots.clone());
        let started = std::time::Instant::now();
        let (meta, path, bytes) = blocking(ErrorSubject::StateMachine, move || {
            let txn = db.begin_read().map_err(read_err)?;
            let (queue, applied, membership) = read_scalars(&txn)?;
            let snapshot_id = match applied {
                Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, queue.seq),
                None => "empty".to_owned(),
            };
            let part = dir.part("building");
            let bytes = snapshot_file::write(&txn, &queue, &part).map_err(write_err)?;
            drop(txn);
            let file = snapshot_file_name(&snapshot_id);
            let path = dir.path(&file);
            std::fs::rename(&part, &path).map_err(write_err)?;
            dir.sync().map_err(write_err)?;
            let meta =
                SnapshotMeta { last_log_id: applied, last_membership: membership, snapshot_id };
            let stored = StoredSnapshot { meta: meta.clone(), file: file.clone() };
            let txn = db.begin_write().map_err(write_err)?;
            let replaced = store_snapshot(&txn, &stored)?;
            // Durable (redb's default), as are the applies committed before it without an
            // fsync: the state this snapshot was read from is on disk before the log is
            // purged behind it.
            txn.commit().map_err(write_err)?;
            if replaced {
                dir.remove_others(&file);
            }
            Ok((meta, path, bytes))
        })
        .await?;
        self.snapshot_stored(Ok(meta.last_log_id));
        let took = started.elapsed();
        crate::metrics::get().snapshot_built(took, bytes);
        tracing::info!(last_log_id = ?meta.last_log_id, bytes, ?took, "built snapshot");
        // Opened even if a newer snapshot replaced this one meanwhile (the open file
        // outlives its removal).
        let file = tokio::fs::File::open(&path).await.map_err(read_err)?;
        Ok(Snapshot { meta, snapshot: Box::new(file) })
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
        let (replies, rows, published, (jobs, sessions)) = {
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
            let changed = (changes.jobs.clone(), !changes.uploads.is_empty());
            let mut rows = Rows::collect(&machine, changes)?;
            for event in &published {
                rows.events.push((event.cursor, codec::encode(event).map_err(write_err)?));
            }
            rows.newest = published.last().map(|e| e.event.time);
            (replies, rows, published, changed)
        };
        fail::fail_point!("raft.apply", |_| Err(write_err(crate::failpoint::error("raft.apply"))));
        let db = self.db.clone();
        let retention = self.retention;
        self.unsynced += 1;
        let durable = self.unsynced >= DURABLE_EVERY;
        if durable {
            self.unsynced = 0;
        }
        let started = std::time::Instant::now();
        blocking(ErrorSubject::StateMachine, move || rows.write(&db, retention, durable)).await?;
        if durable {
            crate::metrics::get().fsync("state", started.elapsed());
        }
        if !published.is_empty() {
            self.events.publish(published.into());
        }
        self.feed.publish(&self.read().queue, jobs, sessions);
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let path = self.snapshots.part("receiving");
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(write_err)?;
        let old =
            self.receiving.lock().unwrap_or_else(std::sync::PoisonError::into_inner).replace(path);
        if let Some(old) = old {
            let _ = std::fs::remove_file(old);
        }
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, NodeAddr>,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let installed = self.install(meta, snapshot).await;
        self.snapshot_stored(installed.as_ref().map(|()| meta.last_log_id).map_err(drop));
        installed
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let db = self.db.clone();
        let stored: Option<StoredSnapshot> = blocking(ErrorSubject::StateMachine, move || {
            let txn = db.begin_read().map_err(read_err)?;
            let meta = txn.open_table(META).map_err(read_err)?;
            meta_row(&meta, SNAPSHOT)
        })
        .await?;
        let Some(stored) = stored else { return Ok(None) };
        let file =
            tokio::fs::File::open(self.snapshots.path(&stored.file)).await.map_err(read_err)?;
        Ok(Some(Snapshot { meta: stored.meta, snapshot: Box::new(file) }))
    }
}
