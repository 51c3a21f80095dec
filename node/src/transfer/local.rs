//! Local files of a job, always through its owner's sandbox ([`crate::fs`]): the
//! hidden temporary file beside the destination (created exclusively, mode 0600,
//! tagged with its job file, written with positioned writes, fsynced before a chunk is
//! reported), what Complete and Cancel do to it (re-mode it through its descriptor and
//! rename it into place, or delete it; the ACL flags are `super::acl`'s), and reading
//! an upload's source, a reply or a client certificate.
//!
//! A temporary file is reused by a later run only if it is still the file this node
//! made: the same device and inode (remembered while the process lives), else — after
//! a restart — a regular file with one link, owned by the expected user and tagged with
//! this job file. Anything else (a symlink, a file swapped in) starts the file over.
//!
//! Blocking file system calls; callers run them on the blocking pool.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use ferry_protocol::file::JobFile;
use ferry_protocol::transfer::{ChunkRecord, content_digest, recorded_plan};
use ferry_protocol::{JobId, Principal};

use crate::fs::dir::{self, TEMP_XATTR};
use crate::fs::{FileId, Sandbox, Sandboxes, Stamp};

mod ending;

pub(crate) use self::ending::{FileProblem, Finished, Step, finish_job};

/// A temporary file being written by one run, shared by its connections.
#[derive(Clone)]
pub(crate) struct TempFile {
    file: Arc<File>,
    path: Arc<Path>,
    /// Bytes the run's writers received for this file (live progress).
    received: Arc<AtomicU64>,
}

/// The tag of a job file's temporary file (`<job>/<index>`).
pub(crate) fn temp_tag(job: JobId, index: u32) -> String {
    format!("{job}/{index}")
}

/// The name of `path` in its directory, which must be `place`'s.
fn name_beside<'a>(place_of: &Path, path: &'a Path) -> io::Result<&'a OsStr> {
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) if Some(dir) == place_of.parent() => Ok(name),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not beside {}", path.display(), place_of.display()),
        )),
    }
}

/// Why [`TempFile::create`] made no file.
#[derive(Debug)]
pub(crate) enum CreateError {
    /// The owner may not write the destination ([`check_destination`] refused it).
    Refused(io::Error),
    /// The destination may be written, but its temporary file could not be made.
    Failed(io::Error),
}

impl From<CreateError> for io::Error {
    fn from(error: CreateError) -> Self {
        match error {
            CreateError::Refused(e) | CreateError::Failed(e) => e,
        }
    }
}

impl TempFile {
    /// Starts the file over: checks that `dest` may be written by the owner (as
    /// [`check_destination`] does, in the same walk), removes what is at the temporary
    /// name `temp` and creates it exclusively (0600).
    pub(crate) fn create(
        sandboxes: &Arc<Sandboxes>,
        owner: &Principal,
        dest: &Path,
        temp: &Path,
        tag: String,
    ) -> Result<Self, CreateError> {
        let (dest, temp_path) = (dest.to_path_buf(), temp.to_path_buf());
        let made = sandboxes.of(owner).run(move |sandbox| {
            let checked = sandbox.place(&dest, false).and_then(|place| {
                sandbox.check_replaceable(&place.dir, &place.name, &dest)?;
                Ok(place)
            });
            let place = match checked {
                Ok(place) => place,
                Err(e) => return Ok(Err(CreateError::Refused(e))),
            };
            let name = name_beside(&dest, &temp_path)?;
            place.dir.remove(name)?;
            let file = place.dir.create_new(name, 0o600)?;
            dir::write_xattr(&file, TEMP_XATTR, &tag)?;
            let id = FileId::of(&file)?;
            Ok(Ok((file, id)))
        });
        let (file, id) = made.map_err(CreateError::Failed)??;
        sandboxes.remember_temp(temp, id);
        Ok(Self::opened(file, temp))
    }

    /// Opens the file an earlier run left; `None` if it is gone or is not the file
    /// this node made (the run starts the file over).
    pub(crate) fn reopen(
        sandboxes: &Arc<Sandboxes>,
        owner: &Principal,
        temp: &Path,
        tag: String,
    ) -> io::Result<Option<Self>> {
        let known = sandboxes.known_temp(temp);
        let path = temp.to_path_buf();
        let found = sandboxes.of(owner).run(move |sandbox| {
            let place = sandbox.place(&path, false)?;
            match place.dir.open_file(&place.name, true) {
                Ok(file) => {
                    let id = FileId::of(&file)?;
                    Ok(is_ours(sandbox, &file, id, known, &tag)?.then_some((file, id)))
                }
                // Gone, or a symlink or something else put in its place.
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Ok(None),
                Err(e) => Err(e),
            }
        })?;
        let Some((file, id)) = found else {
            tracing::info!(path = %temp.display(), "the temporary file is gone or was replaced; starting the file over");
            sandboxes.forget_temp(temp);
            return Ok(None);
        };
        sandboxes.remember_temp(temp, id);
        Ok(Some(Self::opened(file, temp)))
    }

    fn opened(file: File, path: &Path) -> Self {
        Self { file: Arc::new(file), path: path.into(), received: Arc::default() }
    }

    /// Counts `bytes` just received for the file (written now or soon).
    pub(crate) fn count_received(&self, bytes: usize) {
        self.received.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// The counter of bytes received for the file, for the live progress.
    pub(crate) fn received(&self) -> Arc<AtomicU64> {
        self.received.clone()
    }

    /// Writes `bytes` at `offset`.
    pub(crate) fn write_at(&self, bytes: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(bytes, offset)
    }

    /// Makes written bytes durable.
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Sets the final length (dynamic content, or a plan smaller than what is there).
    pub(crate) fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    /// The SHA-256 of the whole file, in lowercase hex.
    pub(crate) fn sha256(&self) -> io::Result<String> {
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buffer = vec![0; 1024 * 1024];
        let mut offset = 0;
        loop {
            let read = self.file.read_at(&mut buffer, offset)?;
            if read == 0 {
                return Ok(hex::encode(context.finish()));
            }
            context.update(&buffer[..read]);
            offset += read as u64;
        }
    }

    /// The chunks of `spans` (local offset, record) whose bytes in this file no longer
    /// match their recorded digests.
    pub(crate) fn damaged_chunks(&self, spans: &[(u64, ChunkRecord)]) -> io::Result<Vec<u32>> {
        damaged_chunks(&self.file, spans)
    }

    /// Sets the modification time (from the server's Last-Modified), if any.
    pub(crate) fn set_modified(&self, modified: Option<SystemTime>) -> io::Result<()> {
        match modified {
            Some(time) => self.file.set_modified(time),
            None => Ok(()),
        }
    }

    /// Sets the modification time (from the server's Last-Modified) and syncs.
    pub(crate) fn finish(&self, modified: Option<SystemTime>) -> io::Result<()> {
        self.set_modified(modified)?;
        self.file.sync_all()
    }

    /// Seals the finished file in `sandboxes`: while its stamp stays the same, Complete
    /// need not read it again (every byte was hashed on its way in).
    pub(crate) fn seal(&self, sandboxes: &Sandboxes) -> io::Result<()> {
        sandboxes.seal_temp(&self.path, Stamp::of(&self.file)?);
        Ok(())
    }
}

/// The chunks of `spans` (local offset, record) whose bytes in `file` do not match
/// their digests (a chunk cut short by the file's end counts as damaged), in order.
fn damaged_chunks(file: &File, spans: &[(u64, ChunkRecord)]) -> io::Result<Vec<u32>> {
    let mut buffer = vec![0; HASH_BLOCK];
    let mut damaged = Vec::new();
    for (offset, chunk) in spans {
        if chunk_digest(file, *offset, chunk.len, &mut buffer)? != Some(chunk.digest) {
            damaged.push(chunk.index);
        }
    }
    damaged.sort_unstable();
    Ok(damaged)
}

/// Whether `file` holds the content a transferred file was recorded with: the digests
/// of its planned chunks make `file.content_digest`. True when nothing was recorded.
fn holds_recorded_content(file: &File, recorded: &JobFile) -> io::Result<bool> {
    let (Some(expected), Some(pieces)) = (recorded.content_digest, recorded_plan(recorded)) else {
        return Ok(true);
    };
    let mut buffer = vec![0; HASH_BLOCK];
    let mut chunks = Vec::with_capacity(pieces.len());
    for piece in pieces {
        let Some(digest) = chunk_digest(file, piece.local_offset, piece.len, &mut buffer)? else {
            return Ok(false);
        };
        chunks.push(ChunkRecord { index: piece.index, len: piece.len, digest, from_peer: false });
    }
    Ok(content_digest(recorded.chunk_size, &chunks) == expected)
}

/// How much of a file is hashed per read.
const HASH_BLOCK: usize = 1024 * 1024;

/// BLAKE3 of `len` bytes of `file` at `offset`; `None` if the file ends first.
fn chunk_digest(
    file: &File,
    offset: u64,
    len: u64,
    buffer: &mut [u8],
) -> io::Result<Option<[u8; 32]>> {
    let mut hasher = blake3::Hasher::new();
    let mut done = 0;
    while done < len {
        let want = usize::try_from(len - done).unwrap_or(usize::MAX).min(buffer.len());
        let read = file.read_at(&mut buffer[..want], offset + done)?;
        if read == 0 {
            return Ok(None);
        }
        hasher.update(&buffer[..read]);
        done += read as u64;
    }
    Ok(Some(*hasher.finalize().as_bytes()))
}

/// True if `file` is the temporary file this node made for `tag`.
/// Whether `file` (of identity `id`) is the temporary file this node made for the
/// job file tagged `tag`.
fn is_ours(
    sandbox: &Sandbox,
    file: &File,
    id: FileId,
    known: Option<(u64, u64)>,
    tag: &str,
) -> io::Result<bool> {
    if id.nlink != 1 || id.uid != sandbox.file_owner() {
        return Ok(false);
    }
    Ok(match known {
        Some(known) => known == (id.dev, id.ino),
        None => dir::read_xattr(file, TEMP_XATTR).is_some_and(|t| t == tag),
    })
}

/// Filesystem confinement (G11), checked before a run writes anything: `dest` lies
/// beneath one of the owner's roots with no symlink on the way, and whatever is
/// there is a regular file the owner may replace.
pub(crate) fn check_destination(
    sandboxes: &Sandboxes,
    owner: &Principal,
    dest: &Path,
) -> io::Result<()> {
    let dest = dest.to_path_buf();
    sandboxes.of(owner).run(move |sandbox| {
        let place = sandbox.place(&dest, false)?;
        sandbox.check_replaceable(&place.dir, &place.name, &dest)
    })
}

/// Opens a file the owner names for reading (an upload's source): beneath its roots,
/// a regular file, read with its rights.
pub(crate) fn open_source(
    sandboxes: &Sandboxes,
    owner: &Principal,
    path: &Path,
) -> io::Result<File> {
    let path = path.to_path_buf();
    sandboxes.of(owner).run(move |sandbox| {
        let place = sandbox.place(&path, false)?;
        place.dir.open_file(&place.name, false)
    })
}

/// The first `max` bytes of the first of `paths` that exists, read as `owner` (a
/// reply, a client certificate).
pub(crate) fn read_start(
    sandboxes: &Sandboxes,
    owner: &Principal,
    paths: Vec<PathBuf>,
    max: u64,
) -> io::Result<Vec<u8>> {
    sandboxes.of(owner).run(move |sandbox| {
        let mut last = io::Error::from(io::ErrorKind::NotFound);
        for path in &paths {
            let opened = sandbox.place(path, false).and_then(|p| p.dir.open_file(&p.name, false));
            match opened {
                Ok(file) => {
                    let mut bytes = Vec::new();
                    file.take(max).read_to_end(&mut bytes)?;
                    return Ok(bytes);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    })
}

/// `len` bytes at `offset` of the regular file `path`, read as `owner` (a chunk of a
/// copy served to a peer: after Complete the destination is its owner's, who may have
/// replaced it or a directory on the way).
pub(crate) fn read_range(
    sandboxes: &Sandboxes,
    owner: &Principal,
    path: PathBuf,
    offset: u64,
    len: u64,
) -> io::Result<Vec<u8>> {
    let len = usize::try_from(len).map_err(io::Error::other)?;
    sandboxes.of(owner).run(move |sandbox| {
        let place = sandbox.place(&path, false)?;
        let file = place.dir.open_file(&place.name, false)?;
        let mut bytes = vec![0; len];
        file.read_exact_at(&mut bytes, offset)?;
        Ok(bytes)
    })
}
