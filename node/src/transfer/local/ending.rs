//! What Complete and Cancel do to a job's files ([`finish_job`]): rename each kept
//! temporary file into place, through its owner's sandbox and after checking it is
//! still the file this node wrote, or delete it. A job of many files is finished by a
//! few threads at once, each with its own walk to the files' directories.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_protocol::file::JobFile;
use ferry_protocol::{Job, JobState};

use super::{holds_recorded_content, is_ours, name_beside, temp_tag};
use crate::fs::dir::{self, OWNER_XATTR};
use crate::fs::{Dir, FileId, Place, Sandbox, Sandboxes, Stamp};

/// Files each thread of [`finish_job`] takes at least: below twice this, one thread.
const FILES_PER_THREAD: usize = 128;
/// Most threads [`finish_job`] uses.
const MAX_THREADS: usize = 4;

/// Which step of Complete or Cancel [`finish_job`] takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Before Complete is recorded: rename every transferred file (and a reply) into
    /// place, as if the job were acknowledged, and touch nothing else. A file that
    /// cannot be renamed keeps its temporary file, so a later Complete can retry.
    Place,
    /// The job is final: rename what Complete keeps (again: a file already in place
    /// counts) and delete every other temporary file.
    Finish,
}

/// One file that could not be renamed or deleted, and why.
pub(crate) struct FileProblem {
    /// The job file (1 for the reply of an upload-reply job).
    pub(crate) file: u32,
    /// What failed.
    pub(crate) error: io::Error,
}

impl std::fmt::Display for FileProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "file {}: {}", self.file, self.error)
    }
}

/// What finishing a job did.
pub(crate) struct Finished {
    /// Files renamed into place.
    pub(crate) completed: Vec<u32>,
    /// Files whose rename or removal failed.
    pub(crate) problems: Vec<FileProblem>,
}

/// One file to finish: its temporary file, and its destination if it is kept.
struct Ending {
    index: u32,
    temp: PathBuf,
    tag: String,
    keep: Option<PathBuf>,
    /// Renaming it counts as completing file `index` (not so for a reply).
    counts: bool,
    /// The file as recorded (a kept download): its content is checked before the rename.
    recorded: Option<Arc<JobFile>>,
    /// A kept file of a local (`file://`) source and the job's ACL flags: what of the
    /// source's owner, group, mode and attributes the file takes (`SetFileACLFlags`).
    acl: Option<(PathBuf, u32)>,
}

/// What a thread of [`finish_job`] works through: each file with what the engine knows
/// of its temporary file (device and inode, and its stamp when this process sealed it).
type Work = Vec<(Ending, Option<(u64, u64)>, Option<Stamp>)>;

/// Complete: renames every transferred file into place and deletes the other temporary
/// files. Cancel: deletes every temporary file. Safe to repeat after a crash: a file
/// already renamed (temporary gone, destination present) counts as completed. An
/// upload job's file is the owner's and stays as it is; the reply of an upload-reply
/// job is renamed into place by Complete and deleted by Cancel. [`Step::Place`] does
/// only the renames, before the job is acknowledged.
pub(crate) fn finish_job(sandboxes: &Arc<Sandboxes>, job: &Job, step: Step) -> Finished {
    let keep = step == Step::Place || job.state() == JobState::Acknowledged;
    let mut endings = Vec::new();
    let mut completed = Vec::new();
    if job.job_type().is_upload() {
        if keep && job.files().first().is_some_and(|f| f.transferred) {
            completed.push(0);
        }
        if let (Some(temp), Some(reply)) = (job.reply_temporary(), job.reply_path()) {
            endings.push(Ending {
                index: 1,
                temp: temp.into(),
                tag: temp_tag(job.id(), 1),
                keep: (keep && job.upload().reply_done).then(|| reply.into()),
                counts: false,
                recorded: None,
                acl: None,
            });
        }
    } else {
        for (index, file) in job.files().iter().enumerate() {
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            endings.push(Ending {
                index,
                temp: file.temporary_name.clone().into(),
                tag: temp_tag(job.id(), index),
                keep: (keep && file.transferred).then(|| file.local_path.clone().into()),
                counts: true,
                recorded: (keep && file.transferred).then(|| file.clone()),
                acl: super::super::acl::acl_source(job, file).filter(|_| keep && file.transferred),
            });
        }
    }
    if step == Step::Place {
        endings.retain(|e| e.keep.is_some());
    }
    let temps: Vec<(u32, PathBuf)> = endings.iter().map(|e| (e.index, e.temp.clone())).collect();
    let work: Work = endings
        .into_iter()
        .map(|e| {
            let (known, sealed) = (sandboxes.known_temp(&e.temp), sandboxes.sealed_temp(&e.temp));
            (e, known, sealed)
        })
        .collect();
    let sandbox = sandboxes.of(job.owner());
    let mut done = Finished { completed, problems: Vec::new() };
    let mut dirs: HashMap<PathBuf, Dir> = HashMap::new();
    for ran in
        in_threads(work, |work| sandbox.run(move |sandbox| Ok(finish_files(sandbox, work, step))))
    {
        match ran {
            Ok((finished, opened)) => {
                done.completed.extend(finished.completed);
                done.problems.extend(finished.problems);
                dirs.extend(opened);
            }
            Err(error) => done.problems.push(FileProblem { file: u32::MAX, error }),
        }
    }
    done.completed.sort_unstable();
    done.problems.sort_by_key(|p| p.file);
    // The renames are durable once their directories are.
    for (path, dir) in &dirs {
        if let Err(e) = dir.sync() {
            let error = io::Error::new(e.kind(), format!("cannot sync {}: {e}", path.display()));
            done.problems.push(FileProblem { file: u32::MAX, error });
        }
    }
    // A temporary file that stays (a failed rename) keeps what is known of it.
    for (index, temp) in &temps {
        if step == Step::Finish || !done.problems.iter().any(|p| p.file == *index) {
            sandboxes.forget_temp(temp);
        }
    }
    done
}

/// Runs `f` on `work`: on this thread, or split in order among a few threads when it
/// is long (the threads' results in the order of their shares).
fn in_threads<T: Send>(work: Work, f: impl Fn(Work) -> T + Sync) -> Vec<T> {
    let wanted = (work.len() / FILES_PER_THREAD).min(MAX_THREADS);
    // Asked only for a long job: it reads the process's CPU quota from /proc.
    let threads = if wanted < 2 {
        1
    } else {
        wanted.min(std::thread::available_parallelism().map_or(1, usize::from))
    };
    if threads == 1 {
        return vec![f(work)];
    }
    let share = work.len().div_ceil(threads);
    let mut shares = Vec::with_capacity(threads);
    let mut work = work.into_iter();
    loop {
        let next: Work = work.by_ref().take(share).collect();
        if next.is_empty() {
            break;
        }
        shares.push(next);
    }
    std::thread::scope(|scope| {
        let f = &f;
        let running: Vec<_> =
            shares.into_iter().map(|share| scope.spawn(move || f(share))).collect();
        running
            .into_iter()
            .map(|thread| thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect()
    })
}

/// Finishes `work` as `sandbox`'s principal; returns what it did and the directories it
/// opened (to be synced once, by the caller).
fn finish_files(sandbox: &Sandbox, work: Work, step: Step) -> (Finished, HashMap<PathBuf, Dir>) {
    let mut done = Finished { completed: Vec::new(), problems: Vec::new() };
    // Each directory is walked to once: the files of a job mostly share one.
    let mut dirs: HashMap<PathBuf, Dir> = HashMap::new();
    for (ending, known, sealed) in work {
        let shown = ending.keep.as_ref().unwrap_or(&ending.temp);
        let (dir, name) = match place_in(sandbox, &mut dirs, shown) {
            Ok(place) => place,
            // No directory, so no temporary file to delete.
            Err(error) if ending.keep.is_none() && error.kind() == io::ErrorKind::NotFound => {
                continue;
            }
            Err(error) => {
                done.problems.push(FileProblem { file: ending.index, error });
                continue;
            }
        };
        match finish_one(sandbox, dir, &name, &ending, (known, sealed), step) {
            Ok(true) if ending.counts => done.completed.push(ending.index),
            Ok(_) => {}
            Err(error) => done.problems.push(FileProblem { file: ending.index, error }),
        }
    }
    (done, dirs)
}

/// The directory of `path` and its name there, the directory opened once per thread of
/// [`finish_job`].
fn place_in<'d>(
    sandbox: &Sandbox,
    dirs: &'d mut HashMap<PathBuf, Dir>,
    path: &Path,
) -> io::Result<(&'d Dir, OsString)> {
    let parent = path.parent().unwrap_or(Path::new("/")).to_path_buf();
    if let Some(name) = path.file_name()
        && dirs.contains_key(&parent)
    {
        return Ok((&dirs[&parent], name.to_owned()));
    }
    let Place { dir, name } = sandbox.place(path, false)?;
    Ok((dirs.entry(parent).or_insert(dir), name))
}

/// Renames one kept temporary file into place (re-moded through its descriptor, its
/// owner recorded) or deletes one that is not kept; true if it is in place.
fn finish_one(
    sandbox: &Sandbox,
    dir: &Dir,
    name: &OsStr,
    ending: &Ending,
    (known, sealed): (Option<(u64, u64)>, Option<Stamp>),
    step: Step,
) -> io::Result<bool> {
    let Some(dest) = &ending.keep else {
        dir.remove(name)?;
        return Ok(false);
    };
    let temp = name_beside(dest, &ending.temp)?;
    let file = match dir.open_file(temp, false) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // Renamed before a crash, or never made.
            return match dir.stat(name)? {
                Some(_) => Ok(true),
                None => Err(io::Error::new(e.kind(), "the temporary file is gone")),
            };
        }
        Err(e) => {
            dir.remove(temp)?;
            return Err(refused(format!("the temporary file was replaced ({e}); not renamed")));
        }
    };
    let (id, stamp) = FileId::with_stamp(&file)?;
    if !is_ours(sandbox, &file, id, known, &ending.tag)? {
        dir.remove(temp)?;
        return Err(refused("the temporary file was replaced; not renamed".into()));
    }
    if let Err(e) = sandbox.check_replaceable(dir, name, dest) {
        // Before Complete is recorded the file stays, so that Complete can be retried
        // once the owner moved what is in the way; after, nothing will rename it.
        if step == Step::Finish {
            dir.remove(temp)?;
        }
        return Err(e);
    }
    // A file whose bytes changed since they were recorded never reaches its name (G4).
    // One this process finished and nothing wrote since is not read again.
    let untouched = sealed == Some(stamp);
    if let Some(recorded) = &ending.recorded
        && !untouched
        && !holds_recorded_content(&file, recorded)?
    {
        dir.remove(temp)?;
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the temporary file no longer holds the content recorded for it: it was deleted, \
             not renamed (G4); cancel the job and download the file again",
        ));
    }
    // The temporary file was private while incomplete; the result is an ordinary file.
    rustix::fs::fchmod(&file, rustix::fs::Mode::from_raw_mode(0o644))?;
    if let Some((source, flags)) = &ending.acl {
        super::super::acl::copy_acl(sandbox, &file, source, *flags)?;
    }
    if sandbox.marks_owner() {
        dir::write_xattr(&file, OWNER_XATTR, sandbox.principal())?;
    }
    fail::fail_point!("complete.before_rename", |_| {
        Err(crate::failpoint::error("complete.before_rename"))
    });
    dir.rename(temp, name)?;
    // The rename went by name: if the name was swapped after the checks above, what
    // moved into place is not the checked file. It is taken out again (G4, G11).
    if dir.identity(name)? != Some((id.dev, id.ino)) {
        dir.remove(name)?;
        return Err(refused(
            "the temporary file was replaced during the rename; not renamed".into(),
        ));
    }
    Ok(true)
}

fn refused(detail: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, detail)
}
