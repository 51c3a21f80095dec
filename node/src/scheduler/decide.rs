//! The scheduler's decision, pure: from the jobs it tracks, which home nodes answer, the
//! settings, this node's monotonic `now` and the wall clock `wall` (both given, never
//! read here), the reports to propose and when to look again. BITS's rules: every
//! foreground job transfers at once, never sliced; beside them at most
//! `max_active_jobs` background jobs per home node, higher priority pre-empting lower,
//! equal priorities taking turns in time slices; plus the job timers (minimum retry delay, no-progress timeout, maximum download time) and the
//! wait for a lost home node.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use ferry_protocol::transfer::EngineReport;
use ferry_protocol::{Job, JobId, JobState, NodeId, Priority, Timestamp};

/// Longest sleep between two looks at the queue.
pub(super) const MAX_SLEEP: Duration = Duration::from_secs(5);

/// Scheduling settings (from `[transfer]` in the configuration).
#[derive(Clone, Copy, Debug)]
pub(crate) struct SchedulerSettings {
    /// Background jobs transferring at once per home node, beside every foreground
    /// job (0: none, and no foreground job either: transfers are paused).
    pub(crate) max_active_jobs: usize,
    /// How long a background job keeps its slot while an equal-priority job waits.
    pub(crate) time_slice: Duration,
}

/// What the scheduler needs of a job (copied out, so that a job with many files is
/// never cloned on every look).
#[derive(Clone, Copy, Debug)]
pub(super) struct JobView {
    pub(super) id: JobId,
    pub(super) run: u64,
    pub(super) state: JobState,
    pub(super) priority: Priority,
    pub(super) home_node: NodeId,
    pub(super) created: Timestamp,
    pub(super) state_since: Timestamp,
    pub(super) no_progress_since: Option<Timestamp>,
    pub(super) active_since: Option<Timestamp>,
    pub(super) active_ms: u64,
    pub(super) last_activated: Option<Timestamp>,
    pub(super) minimum_retry_delay_secs: u32,
    pub(super) no_progress_timeout_secs: u32,
    pub(super) max_download_time_secs: u32,
    /// In TRANSIENT_ERROR because its home node is gone.
    pub(super) home_lost: bool,
}

impl JobView {
    /// The view of `job`.
    pub(super) fn of(job: &Job) -> Self {
        Self {
            id: job.id(),
            run: job.run(),
            state: job.state(),
            priority: job.props().priority,
            home_node: job.home_node(),
            created: job.times().created,
            state_since: job.activity().state_since,
            no_progress_since: job.activity().no_progress_since,
            active_since: job.activity().active_since,
            active_ms: job.activity().active_ms,
            last_activated: job.activity().last_activated,
            minimum_retry_delay_secs: job.props().minimum_retry_delay_secs,
            no_progress_timeout_secs: job.props().no_progress_timeout_secs,
            max_download_time_secs: job.props().max_download_time_secs,
            home_lost: job.error().is_some_and(ferry_protocol::transfer::is_home_node_lost),
        }
    }
}

/// Replicated timestamps anchored to this node's monotonic clock: the first time the
/// scheduler sees one (a state entry, the start of a no-progress period) it becomes an
/// `Instant`, so later wall-clock jumps do not move a deadline.
#[derive(Debug, Default)]
pub(super) struct Anchors(HashMap<(JobId, Timestamp), Instant>);

impl Anchors {
    /// The instant that corresponds to replicated time `at` for `job`.
    fn at(&mut self, job: JobId, at: Timestamp, now: Instant, wall: Timestamp) -> Instant {
        *self.0.entry((job, at)).or_insert_with(|| now.checked_sub(wall.since(at)).unwrap_or(now))
    }

    /// Forgets every anchor (this node stopped leading).
    pub(super) fn clear(&mut self) {
        self.0.clear();
    }
}

/// A report to propose: job, run, what to report.
pub(super) type Report = (JobId, u64, EngineReport);

/// What to propose now, and when to look again at the latest.
#[derive(Debug)]
pub(super) struct Plan {
    /// Reports for the jobs.
    pub(super) reports: Vec<Report>,
    /// When to look again (a timer or a time slice ends).
    pub(super) next: Instant,
}

/// Decides for `jobs` (the active and waiting jobs; none with a proposal in flight).
pub(super) fn plan(
    jobs: &[JobView],
    settings: &SchedulerSettings,
    alive: impl Fn(NodeId) -> bool,
    anchors: &mut Anchors,
    now: Instant,
    wall: Timestamp,
) -> Plan {
    let mut next = now + MAX_SLEEP;
    let mut out = Vec::new();
    let known: HashSet<JobId> = jobs.iter().map(|j| j.id).collect();
    anchors.0.retain(|(id, _), _| known.contains(id));

    for job in jobs {
        match job.state {
            // Waits for its home node, not for a retry delay.
            JobState::TransientError if job.home_lost && alive(job.home_node) => {
                out.push((job.id, job.run, EngineReport::HomeNodeBack));
            }
            JobState::TransientError if job.home_lost => {}
            JobState::Queued | JobState::Connecting | JobState::Transferring
                if !alive(job.home_node) =>
            {
                out.push((job.id, job.run, EngineReport::HomeNodeLost));
            }
            JobState::TransientError => {
                let entered = anchors.at(job.id, job.state_since, now, wall);
                let retry_at = entered + Duration::from_secs(job.minimum_retry_delay_secs.into());
                let give_up_at = job.no_progress_since.map(|since| {
                    anchors.at(job.id, since, now, wall)
                        + Duration::from_secs(job.no_progress_timeout_secs.into())
                });
                if give_up_at.is_some_and(|at| now >= at) {
                    out.push((job.id, job.run, EngineReport::NoProgressTimeout));
                } else if now >= retry_at {
                    out.push((job.id, job.run, EngineReport::RetryDelayElapsed));
                } else {
                    next = next.min(retry_at);
                    if let Some(at) = give_up_at {
                        next = next.min(at);
                    }
                }
            }
            JobState::Connecting | JobState::Transferring => {
                let Some(since) = job.active_since else { continue };
                let started = anchors.at(job.id, since, now, wall);
                let limit = Duration::from_secs(job.max_download_time_secs.into())
                    .saturating_sub(Duration::from_millis(job.active_ms));
                if now >= started + limit {
                    out.push((job.id, job.run, EngineReport::MaxDownloadTimeExceeded));
                } else {
                    next = next.min(started + limit);
                }
            }
            _ => {}
        }
    }
    let decided: HashSet<JobId> = out.iter().map(|(id, _, _)| *id).collect();
    let mut by_node: HashMap<NodeId, Vec<&JobView>> = HashMap::new();
    for job in jobs.iter().filter(|j| j.state.is_active() && !decided.contains(&j.id)) {
        by_node.entry(job.home_node).or_default().push(job);
    }
    for (_, candidates) in by_node {
        let (reports, wake) = assign_slots(candidates, settings, anchors, now, wall);
        out.extend(reports);
        if let Some(wake) = wake {
            next = next.min(wake);
        }
    }
    Plan { reports: out, next }
}

/// BITS's priority rules for the jobs of one home node: every foreground job runs
/// (BITS lets them all transfer together); the background jobs share
/// `max_active_jobs` slots, higher priority first, equal priorities in turns.
fn assign_slots(
    candidates: Vec<&JobView>,
    settings: &SchedulerSettings,
    anchors: &mut Anchors,
    now: Instant,
    wall: Timestamp,
) -> (Vec<Report>, Option<Instant>) {
    let (foreground, mut background): (Vec<&JobView>, Vec<&JobView>) =
        candidates.into_iter().partition(|job| job.priority == Priority::Foreground);
    // Foreground jobs are never queued (a cap of 0 pauses every transfer).
    let paused = settings.max_active_jobs == 0;
    let mut reports: Vec<Report> = foreground
        .iter()
        .filter_map(|job| match (job.state == JobState::Queued, paused) {
            (true, false) => Some((job.id, job.run, EngineReport::Activate)),
            (false, true) => Some((job.id, job.run, EngineReport::Preempt)),
            _ => None,
        })
        .collect();

    let slice = settings.time_slice;
    let mut slice_ends = HashMap::new();
    for job in &background {
        if job.state != JobState::Queued
            && let Some(at) = job.last_activated
        {
            slice_ends.insert(job.id, anchors.at(job.id, at, now, wall) + slice);
        }
    }
    // Running jobs keep their slot while their slice lasts; then the job that waited
    // longest since its last turn goes first.
    let holds = |job: &JobView| {
        job.state != JobState::Queued && slice_ends.get(&job.id).is_none_or(|end| now < *end)
    };
    background
        .sort_by_key(|job| (job.priority, !holds(job), job.last_activated, job.created, job.id));
    let cap = settings.max_active_jobs;
    for (rank, job) in background.iter().enumerate() {
        let running = job.state != JobState::Queued;
        if rank < cap && !running {
            reports.push((job.id, job.run, EngineReport::Activate));
        } else if rank >= cap && running {
            reports.push((job.id, job.run, EngineReport::Preempt));
        }
    }
    // Wake when a running job's slice ends while someone of its priority waits.
    let mut wake = None;
    for job in background.iter().take(cap) {
        let waiting = background.iter().skip(cap).any(|other| other.priority == job.priority);
        if let Some(end) = slice_ends.get(&job.id).filter(|_| waiting) {
            wake = Some(wake.map_or(*end, |w: Instant| w.min(*end)));
        }
    }
    (reports, wake)
}

#[cfg(test)]
mod tests;
