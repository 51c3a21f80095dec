//! [`Finisher`]: Complete and Cancel as BITS makes them, transactional on the job's
//! home node. Complete renames the job's files into place *before* the job is
//! acknowledged ([`PlaceFiles`]): a rename that fails leaves the job where it was and
//! the API answers the failure. Once a job is final, the [`super::Transfers`] actor
//! renames or deletes what is left and records the outcome here, where the API waits
//! for it ([`FinishFiles`]) to answer `BG_S_UNABLE_TO_DELETE_FILES` when a temporary
//! file could not be deleted. Work on one job's files is serialized by a lock per job.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_coordinator::{ClusterError, ReadAt};
use ferry_protocol::file::JobFile;
use ferry_protocol::peer::{FilesOutcome, FinishFiles, PlaceFiles, RemoteError};
use ferry_protocol::{BitsCode, CommandError, Job, JobId, JobState};

use super::local::{self, FileProblem, Finished, Step};
use crate::error::Error;
use crate::peer::rpc::Router;
use crate::replica::ClusterView;

/// How long the home node has to rename a job's files.
const PLACE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a caller waits for the end of Complete or Cancel on the home node.
const FINISH_TIMEOUT: Duration = Duration::from_secs(20);
/// How long an outcome is kept for a caller that asks late.
const OUTCOME_KEPT: Duration = Duration::from_secs(600);

/// The end of Complete and Cancel on this node (see the module's documentation).
pub(crate) struct Finisher {
    cluster: ClusterView,
    sandboxes: Arc<crate::fs::Sandboxes>,
    /// One lock per job whose files are being renamed or deleted.
    locks: Mutex<HashMap<JobId, Arc<tokio::sync::Mutex<()>>>>,
    /// Outcomes of finished jobs, for callers waiting on them.
    outcomes: Mutex<HashMap<JobId, (Instant, FilesOutcome)>>,
    /// Wakes callers when an outcome is recorded.
    recorded: tokio::sync::Notify,
    /// Download jobs whose every file Complete's renames placed, with the files as
    /// they were placed: the pass after the job is final has nothing left to do.
    placed: Mutex<HashMap<JobId, (Instant, Files)>>,
}

/// A job's files as a pass saw them.
type Files = Vec<Arc<JobFile>>;

impl Finisher {
    /// The finisher of the node that `cluster` is a view of; serves [`PlaceFiles`] and
    /// [`FinishFiles`] for other members.
    pub(crate) fn start(
        cluster: ClusterView,
        sandboxes: Arc<crate::fs::Sandboxes>,
        router: &Router,
    ) -> Arc<Self> {
        let finisher = Arc::new(Self {
            cluster,
            sandboxes,
            locks: Mutex::default(),
            outcomes: Mutex::default(),
            recorded: tokio::sync::Notify::new(),
            placed: Mutex::default(),
        });
        let me = finisher.clone();
        router.add_handler::<PlaceFiles, _, _>(move |_, PlaceFiles { job }| {
            let me = me.clone();
            async move { me.place_here(job).await }
        });
        let me = finisher.clone();
        router.add_handler::<FinishFiles, _, _>(move |_, FinishFiles { job, applied }| {
            let me = me.clone();
            async move { me.finished_here(job, applied).await }
        });
        finisher
    }

    /// Complete's renames for job `job`, on its home node. A home node that is no
    /// longer a member took the job's files with it: Complete cannot be done.
    pub(crate) async fn place(&self, job: JobId) -> Result<FilesOutcome, ClusterError> {
        match self.home_of(job) {
            Some(home) if !self.is_member(home) => Ok(FilesOutcome::Failed(CommandError::new(
                BitsCode::BG_E_INVALID_STATE,
                format!(
                    "the job's home node {home} was removed from the cluster, and the job's \
                     files with it: Complete cannot place them; cancel the job and submit it again"
                ),
            ))),
            Some(home) if home != self.cluster.node_id => {
                let asked = PlaceFiles { job };
                older_home(self.cluster.peers.call(home, &asked, PLACE_TIMEOUT).await)
            }
            _ => self.place_here(job).await,
        }
    }

    /// Waits for the end of Complete or Cancel of job `job` (final at log index
    /// `applied`) on its home node.
    pub(crate) async fn finished(
        &self,
        job: JobId,
        applied: u64,
    ) -> Result<FilesOutcome, ClusterError> {
        match self.home_of(job) {
            Some(home) if home != self.cluster.node_id => {
                let asked = FinishFiles { job, applied };
                let timeout = FINISH_TIMEOUT + Duration::from_secs(2);
                older_home(self.cluster.peers.call(home, &asked, timeout).await)
            }
            _ => self.finished_here(job, applied).await,
        }
    }

    fn is_member(&self, node: ferry_protocol::NodeId) -> bool {
        self.cluster.metrics().borrow().membership_config.membership().get_node(&node).is_some()
    }

    fn home_of(&self, job: JobId) -> Option<ferry_protocol::NodeId> {
        self.cluster.state.read().queue.job(&job).map(Job::home_node)
    }

    /// The job as applied here once a read at `at` may start; it must live here.
    async fn job_here(&self, id: JobId, at: ReadAt) -> Result<Job, ClusterError> {
        self.cluster.read_barrier(at).await?;
        let machine = self.cluster.state.read();
        match machine.queue.job(&id) {
            Some(job) if job.home_node() == self.cluster.node_id => Ok(job.clone()),
            Some(job) => Err(ClusterError::Unavailable(format!(
                "job {id} lives on node {}",
                job.home_node()
            ))),
            None => Err(ClusterError::Unavailable(format!("job {id} is not here"))),
        }
    }

    async fn place_here(&self, id: JobId) -> Result<FilesOutcome, ClusterError> {
        let job = self.job_here(id, ReadAt::Linearizable).await?;
        if job.state().is_final() {
            // Completed or cancelled meanwhile: the write that follows says so.
            return Ok(FilesOutcome::Done);
        }
        let _held = self.lock(id).await;
        let sandboxes = self.sandboxes.clone();
        let files = places_every_file(&job).then(|| job.files().to_vec());
        let placed =
            tokio::task::spawn_blocking(move || local::finish_job(&sandboxes, &job, Step::Place))
                .await
                .map_err(|e| ClusterError::Unavailable(format!("renaming the files: {e}")))?;
        for problem in &placed.problems {
            tracing::warn!(job = %id, %problem, "Complete: cannot rename a file into place");
        }
        let mut all = self.placed.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|other, (at, _)| *other != id && at.elapsed() < OUTCOME_KEPT);
        if let Some(files) = files.filter(|_| placed.problems.is_empty()) {
            all.insert(id, (Instant::now(), files));
        }
        drop(all);
        Ok(outcome(&placed, Step::Place))
    }

    /// Renames or deletes what is left of the final job `job`'s files (the caller holds
    /// its [`lock`](Self::lock)). No pass is made over the files when Complete's renames
    /// placed every one of them, as they still are: each counts as completed, and no
    /// temporary file is left to delete (a file its owner moved away since counts all
    /// the same: Complete placed it). After a restart, a rename that failed, or files
    /// that changed since, the pass is made.
    pub(crate) async fn finish_files(&self, job: Job) -> Result<Finished, tokio::task::JoinError> {
        if let Some(done) = self.placed_before(&job) {
            return Ok(done);
        }
        let sandboxes = self.sandboxes.clone();
        tokio::task::spawn_blocking(move || local::finish_job(&sandboxes, &job, Step::Finish)).await
    }

    /// What finishing `job` does when Complete's renames placed all its files (see
    /// [`Self::finish_files`]); `None` when a pass is needed.
    fn placed_before(&self, job: &Job) -> Option<Finished> {
        let (_, files) = self.placed.lock().unwrap_or_else(|e| e.into_inner()).remove(&job.id())?;
        let unchanged = job.state() == JobState::Acknowledged
            && places_every_file(job)
            && same_files(&files, job.files());
        let completed = (0..job.files().len()).map(|i| u32::try_from(i).unwrap_or(u32::MAX));
        unchanged.then(|| Finished { completed: completed.collect(), problems: Vec::new() })
    }

    async fn finished_here(&self, id: JobId, applied: u64) -> Result<FilesOutcome, ClusterError> {
        self.job_here(id, ReadAt::Applied(applied)).await?;
        let deadline = tokio::time::Instant::now() + FINISH_TIMEOUT;
        loop {
            // Registered before looking, so a recording in between is not missed.
            let recorded = self.recorded.notified();
            if let Some((_, outcome)) = self.lock_outcomes().get(&id) {
                return Ok(outcome.clone());
            }
            let finished_before = self
                .cluster
                .state
                .read()
                .queue
                .job(&id)
                .is_none_or(|job| job.activity().files_finished);
            if finished_before {
                // Finished by an earlier process of this node: nothing is left to do.
                return Ok(FilesOutcome::Done);
            }
            if tokio::time::timeout_at(deadline, recorded).await.is_err() {
                return Err(ClusterError::Unavailable(format!(
                    "the files of job {id} are not finished after {FINISH_TIMEOUT:?}"
                )));
            }
        }
    }

    /// Holds the lock of job `id`'s files.
    pub(crate) async fn lock(&self, id: JobId) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.retain(|_, lock| Arc::strong_count(lock) > 1);
            locks.entry(id).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// Records what finishing the final job `id` did (its report is applied).
    pub(crate) fn record(&self, id: JobId, finished: &Finished) {
        let mut outcomes = self.lock_outcomes();
        outcomes.retain(|_, (at, _)| at.elapsed() < OUTCOME_KEPT);
        outcomes.insert(id, (Instant::now(), outcome(finished, Step::Finish)));
        drop(outcomes);
        self.recorded.notify_waiters();
    }

    fn lock_outcomes(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, (Instant, FilesOutcome)>> {
        self.outcomes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether Complete's renames place every file of `job`: a download job whose files
/// are all transferred (then no temporary file is left for the final pass to delete).
fn places_every_file(job: &Job) -> bool {
    !job.job_type().is_upload() && job.files().iter().all(|file| file.transferred)
}

/// Whether `now` are the files `placed` were: the same temporary files at the same
/// destinations, each transferred.
fn same_files(placed: &[Arc<JobFile>], now: &[Arc<JobFile>]) -> bool {
    let same = |placed: &Arc<JobFile>, now: &Arc<JobFile>| {
        now.transferred
            && (Arc::ptr_eq(placed, now)
                || (placed.local_path == now.local_path
                    && placed.temporary_name == now.temporary_name))
    };
    placed.len() == now.len() && placed.iter().zip(now).all(|(placed, now)| same(placed, now))
}

/// A home node of an older build serves neither call: its files are finished after
/// the job is final, as that build did.
fn older_home(answer: Result<FilesOutcome, Error>) -> Result<FilesOutcome, ClusterError> {
    match answer {
        Err(Error::Remote(RemoteError::UnknownKind(kind))) => {
            tracing::info!(%kind, "the home node finishes files after the job is final (older build)");
            Ok(FilesOutcome::Done)
        }
        other => other.map_err(Into::into),
    }
}

/// The outcome of one step: the first problem names the code and every file.
fn outcome(finished: &Finished, step: Step) -> FilesOutcome {
    let Some(first) = finished.problems.first() else {
        return FilesOutcome::Done;
    };
    let files: Vec<String> = finished.problems.iter().map(FileProblem::to_string).collect();
    let (code, detail) = match step {
        Step::Place => (
            code_of(&first.error),
            format!(
                "Complete could not rename every file into place, so the job stays as it \
                 was; fix the cause and Complete again, or Cancel: {}",
                files.join("; ")
            ),
        ),
        Step::Finish => (
            BitsCode::BG_S_UNABLE_TO_DELETE_FILES,
            format!("temporary files could not be deleted: {}", files.join("; ")),
        ),
    };
    FilesOutcome::Failed(CommandError::new(code, detail))
}

/// The Windows code BITS answers for a failed rename.
fn code_of(error: &io::Error) -> BitsCode {
    match error.kind() {
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            BitsCode::E_ACCESSDENIED
        }
        io::ErrorKind::NotFound => BitsCode::ERROR_PATH_NOT_FOUND,
        io::ErrorKind::AlreadyExists | io::ErrorKind::IsADirectory => BitsCode::ERROR_FILE_EXISTS,
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => BitsCode::ERROR_DISK_FULL,
        _ => BitsCode::E_FAIL,
    }
}

#[cfg(test)]
mod tests {
    use ferry_protocol::{JobId, NewFile};

    use super::*;

    fn file(job: JobId, index: usize, path: &str) -> Arc<JobFile> {
        let spec = NewFile {
            remote_url: format!("http://127.0.0.1/{index}"),
            local_path: path.to_owned(),
            ranges: Vec::new(),
            sha256: None,
        };
        let mut file = JobFile::new(job, index, spec);
        file.transferred = true;
        Arc::new(file)
    }

    #[test]
    fn only_the_files_complete_placed_skip_the_final_pass() {
        let job = JobId::generate();
        let placed = vec![file(job, 0, "/d/a"), file(job, 1, "/d/b")];
        // The same files, shared or equal (a command rewrote one's record).
        assert!(same_files(&placed, &placed));
        let rewritten = vec![placed[0].clone(), Arc::new((*placed[1]).clone())];
        assert!(same_files(&placed, &rewritten));
        // A file more, another destination, another temporary file, or one no longer
        // transferred: the pass is needed.
        let more = vec![placed[0].clone(), placed[1].clone(), file(job, 2, "/d/c")];
        assert!(!same_files(&placed, &more));
        assert!(!same_files(&placed, &[placed[0].clone(), file(job, 1, "/d/elsewhere")]));
        let mut renamed = (*placed[1]).clone();
        renamed.temporary_name.push('x');
        assert!(!same_files(&placed, &[placed[0].clone(), Arc::new(renamed)]));
        let mut undone = (*placed[1]).clone();
        undone.transferred = false;
        assert!(!same_files(&placed, &[placed[0].clone(), Arc::new(undone)]));
    }
}
