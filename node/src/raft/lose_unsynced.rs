//! A redb storage backend for fault tests (feature `failpoints`, turned on with the
//! failpoint `storage.lose_unsynced=return`): what redb writes stays in this process's
//! memory until redb syncs it, so a `kill -9` loses every write made after the last
//! fsync, as a power cut loses the page cache. Acknowledged work must survive anyway:
//! it was synced before it was acknowledged, or it lives on the quorum.

use std::io;
use std::ops::Bound;
use std::sync::{Mutex, PoisonError};

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

/// Writes and length changes since the last sync, in order.
#[derive(Debug, Default)]
struct Unsynced {
    writes: Vec<(u64, Vec<u8>)>,
    len: Option<u64>,
}

/// A [`FileBackend`] whose writes reach the file only when redb syncs.
#[derive(Debug)]
pub(super) struct LoseUnsynced {
    file: FileBackend,
    unsynced: Mutex<Unsynced>,
}

impl LoseUnsynced {
    pub(super) fn new(file: FileBackend) -> Self {
        Self { file, unsynced: Mutex::default() }
    }

    fn unsynced(&self) -> std::sync::MutexGuard<'_, Unsynced> {
        self.unsynced.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl StorageBackend for LoseUnsynced {
    fn len(&self) -> io::Result<u64> {
        match self.unsynced().len {
            Some(len) => Ok(len),
            None => self.file.len(),
        }
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let unsynced = self.unsynced();
        // What the file holds (zeros past its end, as a grown file reads), then the
        // unsynced writes over it, oldest first.
        let on_disk = self.file.len()?;
        let from_file = usize::try_from(on_disk.saturating_sub(offset)).unwrap_or(usize::MAX);
        let from_file = from_file.min(out.len());
        self.file.read(offset, &mut out[..from_file])?;
        out[from_file..].fill(0);
        let end = offset + out.len() as u64;
        for (at, data) in &unsynced.writes {
            let (start, stop) = ((*at).max(offset), (*at + data.len() as u64).min(end));
            if start < stop {
                let (src, dst) = ((start - at) as usize, (start - offset) as usize);
                let n = (stop - start) as usize;
                out[dst..dst + n].copy_from_slice(&data[src..src + n]);
            }
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut unsynced = self.unsynced();
        unsynced.len = Some(len);
        // A shrink drops what was written past the new end.
        for (at, data) in &mut unsynced.writes {
            data.truncate(usize::try_from(len.saturating_sub(*at)).unwrap_or(usize::MAX));
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut unsynced = self.unsynced();
        if let Some(len) = unsynced.len.take() {
            self.file.set_len(len)?;
        }
        for (at, data) in unsynced.writes.drain(..) {
            self.file.write(at, &data)?;
        }
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.unsynced().writes.push((offset, data.to_vec()));
        Ok(())
    }

    fn close(&self) -> io::Result<()> {
        // A clean close syncs what is left, as the kernel would write it back.
        self.sync_data()?;
        self.file.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.file.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_shared_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.query_lock_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.unlock_range(start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> (tempfile::TempDir, std::path::PathBuf, LoseUnsynced) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("db");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .expect("a file");
        let backend = LoseUnsynced::new(FileBackend::new(file).expect("a backend"));
        (dir, path, backend)
    }

    #[test]
    fn writes_read_back_before_the_sync_and_reach_the_file_only_at_it() {
        let (_dir, path, backend) = backend();
        backend.set_len(8).expect("set_len");
        backend.write(2, b"abcd").expect("write");
        backend.write(4, b"XY").expect("write");
        let mut out = [9u8; 8];
        backend.read(0, &mut out).expect("read");
        assert_eq!(&out, b"\0\0abXY\0\0");
        assert_eq!(std::fs::read(&path).expect("file"), b"");
        backend.sync_data().expect("sync");
        assert_eq!(std::fs::read(&path).expect("file"), b"\0\0abXY\0\0");
    }

    #[test]
    fn a_database_on_it_loses_the_unsynced_commit_only() {
        use redb::{Durability, ReadableDatabase, TableDefinition};
        const T: TableDefinition<'_, u64, u64> = TableDefinition::new("t");
        let (_dir, path, backend) = backend();
        let db = redb::Database::builder().create_with_backend(backend).expect("a database");
        for (key, durability) in [(1, Durability::Immediate), (2, Durability::None)] {
            let mut txn = db.begin_write().expect("txn");
            txn.set_durability(durability).expect("durability");
            txn.open_table(T).expect("table").insert(key, key).expect("insert");
            txn.commit().expect("commit");
        }
        // Both read back in this process...
        let read = db.begin_read().expect("read");
        assert!(read.open_table(T).expect("table").get(2).expect("get").is_some());
        drop(read);
        // ...but the file (what survives a crash) has the synced commit only.
        let copy = path.with_extension("copy");
        std::fs::copy(&path, &copy).expect("copy");
        std::mem::forget(db);
        let reopened = redb::Database::create(&copy).expect("reopen");
        let table = reopened.begin_read().expect("read");
        let table = table.open_table(T).expect("table");
        assert_eq!(table.get(1).expect("get").map(|v| v.value()), Some(1));
        assert!(table.get(2).expect("get").is_none());
    }
}
