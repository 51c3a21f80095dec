//! Local files of a download: the hidden temporary file beside the destination
//! (created exclusively, mode 0600, written with positioned writes, fsynced before a
//! chunk is reported), and what Complete and Cancel do to it (rename into place with
//! the server's modification time, or delete).
//!
//! Blocking file system calls; callers run them on the blocking pool.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use ferry_protocol::{Job, JobState};

/// A temporary file being written by one run, shared by its connections.
#[derive(Clone)]
pub(crate) struct TempFile {
    file: Arc<File>,
}

impl TempFile {
    /// Starts the file over: removes what is there and creates it exclusively (0600).
    pub(crate) fn create(path: &Path) -> io::Result<Self> {
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let file =
            OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(path)?;
        Ok(Self { file: Arc::new(file) })
    }

    /// Opens the file an earlier run left; `None` if it is gone (the run starts over).
    pub(crate) fn reopen(path: &Path) -> io::Result<Option<Self>> {
        match OpenOptions::new().read(true).write(true).open(path) {
            Ok(file) if file.metadata()?.is_file() => Ok(Some(Self { file: Arc::new(file) })),
            Ok(_) => Err(io::Error::other("the temporary name is not a regular file")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
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

    /// Sets the modification time (from the server's Last-Modified) and syncs.
    pub(crate) fn finish(&self, modified: Option<SystemTime>) -> io::Result<()> {
        if let Some(time) = modified {
            self.file.set_modified(time)?;
        }
        self.file.sync_all()
    }
}

/// Filesystem confinement (G11): the destination's directory, with every symlink
/// resolved, must lie under one of `roots` (none: anywhere), and an existing
/// destination must be a regular file. The temporary file lives in the same directory.
pub(crate) fn check_destination(path: &Path, roots: &[std::path::PathBuf]) -> Result<(), String> {
    let name = path.file_name().ok_or_else(|| format!("{} names no file", path.display()))?;
    if name == ".." || name == "." {
        return Err(format!("{} names no file", path.display()));
    }
    let dir = path.parent().ok_or_else(|| format!("{} has no directory", path.display()))?;
    let real = dir
        .canonicalize()
        .map_err(|e| format!("the directory {} cannot be used: {e}", dir.display()))?;
    if !roots.is_empty() && !roots.iter().any(|root| real.starts_with(root)) {
        return Err(format!(
            "{} is outside the directories this node writes to (transfer.destination_roots)",
            real.display()
        ));
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_file() => {
            Err(format!("{} exists and is not a regular file", path.display()))
        }
        _ => Ok(()),
    }
}

/// What finishing a final job did.
pub(crate) struct Finished {
    /// Files renamed into place.
    pub(crate) completed: Vec<u32>,
    /// Files whose rename or removal failed (the reason, for the log).
    pub(crate) problems: Vec<String>,
}

/// Complete: renames every transferred file into place and deletes the other temporary
/// files. Cancel: deletes every temporary file. Safe to repeat after a crash: a file
/// already renamed (temporary gone, destination present) counts as completed.
pub(crate) fn finish_job(job: &Job, roots: &[std::path::PathBuf]) -> Finished {
    if job.job_type.is_upload() {
        return finish_upload(job, roots);
    }
    let mut done = Finished { completed: Vec::new(), problems: Vec::new() };
    let keep = job.state == JobState::Acknowledged;
    let mut dirs = Vec::new();
    for (index, file) in job.files.iter().enumerate() {
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        let temp = Path::new(&file.temporary_name);
        let dest = Path::new(&file.local_path);
        if keep
            && file.transferred
            && let Err(why) = check_destination(dest, roots)
        {
            // The directory changed since the download (a symlink swapped in): keep
            // nothing there.
            done.problems.push(format!("file {index}: not renamed into place: {why}"));
            let _ = fs::remove_file(temp);
        } else if keep && file.transferred {
            // The temporary file was private while incomplete; the result is an ordinary file.
            let _ = fs::set_permissions(temp, fs::Permissions::from_mode(0o644));
            match fs::rename(temp, dest) {
                Ok(()) => done.completed.push(index),
                Err(e) if e.kind() == io::ErrorKind::NotFound && dest.exists() => {
                    done.completed.push(index);
                }
                Err(e) => {
                    done.problems.push(format!("file {index}: cannot rename into place: {e}"))
                }
            }
        } else {
            match fs::remove_file(temp) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => done
                    .problems
                    .push(format!("file {index}: cannot delete {}: {e}", temp.display())),
            }
        }
        if let Some(dir) = dest.parent()
            && !dirs.contains(&dir)
        {
            dirs.push(dir);
        }
    }
    // The renames are durable once their directories are.
    for dir in dirs {
        if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
            done.problems.push(format!("cannot sync {}: {e}", dir.display()));
        }
    }
    done
}

/// An upload job's file is the owner's and stays as it is; the reply of an upload-reply
/// job is renamed into place by Complete and deleted by Cancel.
fn finish_upload(job: &Job, roots: &[std::path::PathBuf]) -> Finished {
    let keep = job.state == JobState::Acknowledged;
    let uploaded = job.files.first().is_some_and(|f| f.transferred);
    let mut done = Finished {
        completed: if keep && uploaded { vec![0] } else { Vec::new() },
        problems: Vec::new(),
    };
    let (Some(temp), Some(reply)) = (job.reply_temporary(), job.reply_path()) else {
        return done;
    };
    let (temp, reply) = (Path::new(&temp), Path::new(&reply));
    if keep && job.upload.reply_done {
        if let Err(why) = check_destination(reply, roots) {
            done.problems.push(format!("the reply is not renamed into place: {why}"));
            let _ = fs::remove_file(temp);
            return done;
        }
        let _ = fs::set_permissions(temp, fs::Permissions::from_mode(0o644));
        match fs::rename(temp, reply) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound && reply.exists() => {}
            Err(e) => done.problems.push(format!("cannot rename the reply into place: {e}")),
        }
    } else if let Err(e) = fs::remove_file(temp)
        && e.kind() != io::ErrorKind::NotFound
    {
        done.problems.push(format!("cannot delete {}: {e}", temp.display()));
    }
    if let Some(dir) = reply.parent()
        && let Err(e) = File::open(dir).and_then(|d| d.sync_all())
    {
        done.problems.push(format!("cannot sync {}: {e}", dir.display()));
    }
    done
}
