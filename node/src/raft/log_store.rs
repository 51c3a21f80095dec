//! The Raft log on redb (`raft-log.redb`): entries keyed by index, and the vote, the
//! committed id and the last purged id in a meta table.
//!
//! Every write commits with `Durability::Immediate` (fsync) before openraft is told it is
//! done: the vote before `save_vote` returns, entries before the append callback fires.
//! Only the committed id is written lazily: losing it costs a re-apply, never data.

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;

use ferry_protocol::codec;
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogState, RaftLogReader, Vote};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::{
    LogId, META, PurgeFloor, StorageError, TypeConfig, blocking, io_error, open_database, put_meta,
};

type Entry = openraft::Entry<TypeConfig>;

const ENTRIES: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("entries");

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

fn read_err<E: std::error::Error + 'static>(e: E) -> StorageError {
    io_error(ErrorVerb::Read, ErrorSubject::Logs, &e)
}

fn write_err<E: std::error::Error + 'static>(e: E) -> StorageError {
    io_error(ErrorVerb::Write, ErrorSubject::Logs, &e)
}

/// The redb-backed Raft log. Cloning shares the database (the clone is the log reader).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    /// When set, a purge waits until a stored snapshot covers it.
    floor: Option<tokio::sync::watch::Receiver<PurgeFloor>>,
}

impl LogStore {
    /// Opens (or creates) the log database at `path`.
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        let db = open_database(path, super::LOG_CACHE_BYTES).map_err(write_err)?;
        let txn = db.begin_write().map_err(write_err)?;
        txn.open_table(ENTRIES).map_err(write_err)?;
        txn.open_table(META).map_err(write_err)?;
        txn.commit().map_err(write_err)?;
        Ok(Self { db: Arc::new(db), floor: None })
    }

    /// Purges only what a snapshot stored by the state machine covers (see
    /// [`PurgeFloor`]), waiting for it.
    pub fn purging_behind(mut self, floor: tokio::sync::watch::Receiver<PurgeFloor>) -> Self {
        self.floor = Some(floor);
        self
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        db: &Database,
        key: &str,
    ) -> Result<Option<T>, StorageError> {
        let txn = db.begin_read().map_err(read_err)?;
        let table = txn.open_table(META).map_err(read_err)?;
        let Some(value) = table.get(key).map_err(read_err)? else {
            return Ok(None);
        };
        codec::decode(value.value()).map(Some).map_err(read_err)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let db = self.db.clone();
        let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
        blocking(ErrorSubject::Logs, move || {
            let txn = db.begin_read().map_err(read_err)?;
            let table = txn.open_table(ENTRIES).map_err(read_err)?;
            let mut entries = Vec::new();
            for row in table.range::<u64>(bounds).map_err(read_err)? {
                let (_, value) = row.map_err(read_err)?;
                entries.push(codec::decode::<Entry>(value.value()).map_err(read_err)?);
            }
            Ok(entries)
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let db = self.db.clone();
        blocking(ErrorSubject::Logs, move || {
            let last_purged: Option<LogId> = Self::read_meta(&db, LAST_PURGED)?;
            let txn = db.begin_read().map_err(read_err)?;
            let table = txn.open_table(ENTRIES).map_err(read_err)?;
            let last = match table.last().map_err(read_err)? {
                Some((_, value)) => {
                    Some(codec::decode::<Entry>(value.value()).map_err(read_err)?.log_id)
                }
                None => last_purged,
            };
            Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        fail::fail_point!("raft.vote.save", |_| Err(write_err(crate::failpoint::error(
            "raft.vote.save"
        ))));
        put_meta(&self.db, ErrorSubject::Vote, VOTE, vote, Durability::Immediate).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        let db = self.db.clone();
        blocking(ErrorSubject::Vote, move || Self::read_meta(&db, VOTE)).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let index = committed.map_or(0, |id| id.index);
        crate::metrics::get().raft_commit_index.set(i64::try_from(index).unwrap_or(i64::MAX));
        put_meta(&self.db, ErrorSubject::Logs, COMMITTED, &committed, Durability::None).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let db = self.db.clone();
        blocking(ErrorSubject::Logs, move || {
            Ok(Self::read_meta::<Option<LogId>>(&db, COMMITTED)?.flatten())
        })
        .await
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut rows = Vec::new();
        for entry in entries {
            rows.push((entry.log_id.index, codec::encode(&entry).map_err(write_err)?));
        }
        let db = self.db.clone();
        let started = std::time::Instant::now();
        let written = blocking(ErrorSubject::Logs, move || {
            let txn = db.begin_write().map_err(write_err)?;
            {
                let mut table = txn.open_table(ENTRIES).map_err(write_err)?;
                for (index, bytes) in &rows {
                    table.insert(*index, bytes.as_slice()).map_err(write_err)?;
                }
            }
            txn.commit().map_err(write_err)
        })
        .await;
        crate::metrics::get().fsync("log", started.elapsed());
        // The entries are on disk (fsync'd by the Immediate commit) before openraft hears so.
        fail::fail_point!("raft.log.before_ack");
        match &written {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        written
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let db = self.db.clone();
        blocking(ErrorSubject::Logs, move || {
            let txn = db.begin_write().map_err(write_err)?;
            txn.open_table(ENTRIES)
                .map_err(write_err)?
                .retain_in(log_id.index.., |_, _| false)
                .map_err(write_err)?;
            txn.commit().map_err(write_err)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        if let Some(floor) = &mut self.floor {
            let covered = floor
                .wait_for(|f| f.failed || f.snapshot >= Some(log_id))
                .await
                .map(|f| !f.failed)
                .unwrap_or(false);
            if !covered {
                let why = std::io::Error::other("no stored snapshot covers the entries to purge");
                return Err(write_err(why));
            }
        }
        let bytes = codec::encode(&log_id).map_err(write_err)?;
        let db = self.db.clone();
        blocking(ErrorSubject::Logs, move || {
            let txn = db.begin_write().map_err(write_err)?;
            txn.open_table(META)
                .map_err(write_err)?
                .insert(LAST_PURGED, bytes.as_slice())
                .map_err(write_err)?;
            txn.open_table(ENTRIES)
                .map_err(write_err)?
                .retain_in(..=log_id.index, |_, _| false)
                .map_err(write_err)?;
            txn.commit().map_err(write_err)
        })
        .await
    }
}
