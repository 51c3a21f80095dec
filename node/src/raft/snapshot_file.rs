//! Snapshot files: the state machine's rows streamed to disk and back, frame by frame,
//! so that a snapshot is never held whole in memory (openraft sends and receives it in
//! chunks read from and written to these files).
//!
//! A file is a header frame ([`Header`]: queue scalars and row counts), then one frame per
//! job row, then two per request row (key, record), then one per upload session, then
//! (format 9, only when there are any) a frame with the number of principals and one
//! frame per principal: a file of format 8 ends after the uploads. A frame is a 4-byte big-endian length
//! and a `ferry_protocol::codec` value; rows are copied as stored, and checked by
//! decoding when loaded.

use std::io::{BufRead as _, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use ferry_protocol::Job;
use ferry_protocol::codec;
use ferry_protocol::principals::PrincipalRecord;
use ferry_protocol::queue::{QueueImage, QueueMeta, RequestKey, RequestRecord, UploadSession};
use redb::{ReadableTable, ReadableTableMetadata};
use serde::{Deserialize, Serialize};

/// Largest frame accepted from a snapshot file.
const MAX_FRAME: usize = codec::FRAME_LIMIT + 64;

/// The first frame of a snapshot file.
#[derive(Serialize, Deserialize)]
struct Header {
    queue: QueueMeta,
    jobs: u64,
    requests: u64,
    uploads: u64,
}

/// Why a snapshot file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SnapshotFileError {
    /// Disk.
    #[error("snapshot file: {0}")]
    Io(#[from] std::io::Error),
    /// The state database.
    #[error("snapshot rows: {0}")]
    Db(#[from] redb::Error),
    /// A frame that does not decode.
    #[error("snapshot frame: {0}")]
    Codec(#[from] codec::CodecError),
    /// A file that ends early or says something impossible.
    #[error("snapshot file is damaged: {0}")]
    Damaged(String),
}

/// The directory holding a state database's snapshot files: `<state>.snapshots`.
#[derive(Clone, Debug)]
pub(crate) struct SnapshotDir {
    dir: PathBuf,
}

impl SnapshotDir {
    /// The directory beside `state` (created 0700), cleared of files left by a crash
    /// while building or receiving.
    pub(crate) fn open(state: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = state.with_extension("snapshots");
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name.ends_with(".part") {
                let _ = std::fs::remove_file(&path);
            }
        }
        Ok(Self { dir })
    }

    /// The stored snapshot file named `name`.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A fresh file name for a snapshot being built or received.
    pub(crate) fn part(&self, what: &str) -> PathBuf {
        let mut random = [0u8; 8];
        let _ = getrandom::fill(&mut random);
        self.dir.join(format!("{what}-{}.part", hex::encode(random)))
    }

    /// Makes renames and removals in the directory durable.
    pub(crate) fn sync(&self) -> std::io::Result<()> {
        std::fs::File::open(&self.dir)?.sync_all()
    }

    /// Removes every stored snapshot but `keep`.
    pub(crate) fn remove_others(&self, keep: &str) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name.ends_with(".snap") && name != keep {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

fn write_frame(out: &mut impl Write, bytes: &[u8]) -> Result<(), SnapshotFileError> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| SnapshotFileError::Damaged("a row too large for a frame".into()))?;
    out.write_all(&len.to_be_bytes())?;
    out.write_all(bytes)?;
    Ok(())
}

fn read_frame(input: &mut impl Read, buf: &mut Vec<u8>) -> Result<(), SnapshotFileError> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(SnapshotFileError::Damaged(format!("a frame of {len} bytes")));
    }
    buf.resize(len, 0);
    input.read_exact(buf)?;
    Ok(())
}

/// Writes the rows of `txn` (the stored state) to a new file at `path`, fsynced.
pub(crate) fn write(
    txn: &redb::ReadTransaction,
    queue: &QueueMeta,
    path: &Path,
) -> Result<u64, SnapshotFileError> {
    let jobs = txn.open_table(super::JOBS).map_err(redb::Error::from)?;
    let requests = txn.open_table(super::REQUESTS).map_err(redb::Error::from)?;
    let uploads = txn.open_table(super::UPLOADS).map_err(redb::Error::from)?;
    let header = Header {
        queue: queue.clone(),
        jobs: jobs.len().map_err(redb::Error::from)?,
        requests: requests.len().map_err(redb::Error::from)?,
        uploads: uploads.len().map_err(redb::Error::from)?,
    };
    let file = std::fs::OpenOptions::new().write(true).create_new(true).open(path)?;
    let mut out = BufWriter::new(file);
    write_frame(&mut out, &codec::encode(&header)?)?;
    for row in jobs.iter().map_err(redb::Error::from)? {
        let (_, value) = row.map_err(redb::Error::from)?;
        write_frame(&mut out, value.value())?;
    }
    for row in requests.iter().map_err(redb::Error::from)? {
        let (key, value) = row.map_err(redb::Error::from)?;
        write_frame(&mut out, key.value())?;
        write_frame(&mut out, value.value())?;
    }
    for row in uploads.iter().map_err(redb::Error::from)? {
        let (_, value) = row.map_err(redb::Error::from)?;
        write_frame(&mut out, value.value())?;
    }
    // Written only when there are principals, so that members still on format 8 (which
    // expect the file to end here) install snapshots until the feature is used.
    let principals = txn.open_table(super::PRINCIPALS).map_err(redb::Error::from)?;
    let count = principals.len().map_err(redb::Error::from)?;
    if count > 0 {
        write_frame(&mut out, &codec::encode(&count)?)?;
        for row in principals.iter().map_err(redb::Error::from)? {
            let (_, value) = row.map_err(redb::Error::from)?;
            write_frame(&mut out, value.value())?;
        }
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(file.metadata()?.len())
}

/// Reads the snapshot in `file`, writing its rows into `txn` (whose tables the caller
/// emptied) and returning the queue it describes.
pub(crate) fn load(
    file: std::fs::File,
    txn: &redb::WriteTransaction,
) -> Result<QueueImage, SnapshotFileError> {
    let mut input = BufReader::new(file);
    let mut buf = Vec::new();
    read_frame(&mut input, &mut buf)?;
    let header: Header = codec::decode(&buf)?;
    let mut image = QueueImage { meta: header.queue, ..QueueImage::default() };
    let mut jobs = txn.open_table(super::JOBS).map_err(redb::Error::from)?;
    for _ in 0..header.jobs {
        read_frame(&mut input, &mut buf)?;
        let job: Job = codec::decode(&buf)?;
        jobs.insert(job.id().0.as_u128(), buf.as_slice()).map_err(redb::Error::from)?;
        image.jobs.push(job);
    }
    let mut requests = txn.open_table(super::REQUESTS).map_err(redb::Error::from)?;
    let mut key_bytes = Vec::new();
    for _ in 0..header.requests {
        read_frame(&mut input, &mut key_bytes)?;
        read_frame(&mut input, &mut buf)?;
        let key: RequestKey = codec::decode(&key_bytes)?;
        let record: RequestRecord = codec::decode(&buf)?;
        requests.insert(key_bytes.as_slice(), buf.as_slice()).map_err(redb::Error::from)?;
        image.requests.push((key, record));
    }
    drop(requests);
    let mut uploads = txn.open_table(super::UPLOADS).map_err(redb::Error::from)?;
    for _ in 0..header.uploads {
        read_frame(&mut input, &mut buf)?;
        let session: UploadSession = codec::decode(&buf)?;
        uploads.insert(session.id.as_str(), buf.as_slice()).map_err(redb::Error::from)?;
        image.uploads.push(session);
    }
    drop(uploads);
    if !input.fill_buf()?.is_empty() {
        read_frame(&mut input, &mut buf)?;
        let count: u64 = codec::decode(&buf)?;
        let mut principals = txn.open_table(super::PRINCIPALS).map_err(redb::Error::from)?;
        for _ in 0..count {
            read_frame(&mut input, &mut buf)?;
            let record: PrincipalRecord = codec::decode(&buf)?;
            principals.insert(record.name.as_str(), buf.as_slice()).map_err(redb::Error::from)?;
            image.principals.push(record);
        }
    }
    if input.read(&mut [0u8; 1])? != 0 {
        return Err(SnapshotFileError::Damaged("bytes after the last row".into()));
    }
    Ok(image)
}
