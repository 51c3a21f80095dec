//! Live progress: the bytes each download running on this node has received so far,
//! durable or not. The replicated progress moves by durable chunks (up to 8 MiB at a
//! time, one Raft write each); this is what the API shows between them, read from the
//! job's home node without any write ([`LiveProgress::of`], served to other members
//! by the `live-progress` peer request).
//!
//! A run registers each file as it opens its temporary file, with the durable bytes
//! it starts from and the counter its writers add every received byte to; the run's
//! end takes its entries away. Figures are estimates for display: bytes fetched again
//! after a failed piece count twice, so readers clamp them to the file's size and
//! never show less than the durable progress.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use ferry_protocol::JobId;
use ferry_protocol::peer::LiveFiles;

/// The live progress of the downloads running on this node.
#[derive(Default)]
pub(crate) struct LiveProgress {
    jobs: Mutex<HashMap<JobId, LiveJob>>,
}

/// One running job's files.
struct LiveJob {
    /// The run that registered them: a later run's entries replace them.
    run: u64,
    files: BTreeMap<u32, LiveFile>,
}

/// One file of a running job.
struct LiveFile {
    /// Durable bytes when its temporary file was opened.
    base: u64,
    /// Bytes the run's writers received since.
    received: Arc<AtomicU64>,
}

impl LiveProgress {
    /// Run `run` of `job` writes file `file`, starting from `base` durable bytes, and
    /// adds what it receives to `received`.
    pub(crate) fn track(
        &self,
        job: JobId,
        run: u64,
        file: u32,
        base: u64,
        received: Arc<AtomicU64>,
    ) {
        let mut jobs = self.lock();
        let entry = jobs.entry(job).or_insert_with(|| LiveJob { run, files: BTreeMap::new() });
        if entry.run != run {
            *entry = LiveJob { run, files: BTreeMap::new() };
        }
        entry.files.insert(file, LiveFile { base, received });
    }

    /// Run `run` of `job` ended.
    pub(crate) fn end(&self, job: JobId, run: u64) {
        let mut jobs = self.lock();
        if jobs.get(&job).is_some_and(|j| j.run == run) {
            jobs.remove(&job);
        }
    }

    /// The bytes each file of `job` has received so far, if a run of it is under way
    /// here.
    pub(crate) fn of(&self, job: JobId) -> Option<LiveFiles> {
        let jobs = self.lock();
        let live = jobs.get(&job)?;
        let files = live
            .files
            .iter()
            .map(|(index, f)| (*index, f.base.saturating_add(f.received.load(Ordering::Relaxed))))
            .collect();
        Some(LiveFiles { job, files })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<JobId, LiveJob>> {
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runs_files_are_read_until_the_run_ends_and_a_new_run_replaces_them() {
        let live = LiveProgress::default();
        let job = JobId(uuid::Uuid::from_u128(7));
        assert!(live.of(job).is_none());
        let counter = Arc::new(AtomicU64::new(0));
        live.track(job, 1, 0, 1_000, counter.clone());
        counter.fetch_add(500, Ordering::Relaxed);
        assert_eq!(live.of(job).map(|l| l.files), Some(vec![(0, 1_500)]));
        // A new run starts over; the old run's end does not remove it.
        live.track(job, 2, 1, 0, Arc::new(AtomicU64::new(42)));
        live.end(job, 1);
        assert_eq!(live.of(job).map(|l| l.files), Some(vec![(1, 42)]));
        live.end(job, 2);
        assert!(live.of(job).is_none());
    }
}
