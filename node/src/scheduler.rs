//! The leader's scheduler (DESIGN §4): decides which jobs hold transfer slots, following
//! BITS — higher priority pre-empts lower, equal priorities take turns in time slices,
//! foreground jobs are never sliced — with a cap of concurrent jobs per home node; and
//! runs the job timers: minimum retry delay, no-progress timeout, maximum download time
//! and inactivity.
//!
//! Decisions become [`EngineReport`]s proposed through Raft. Timers run on this node's
//! monotonic clock: the first time the scheduler sees a replicated timestamp (a state
//! entry, the start of a no-progress period), it anchors it to an `Instant`, so later
//! wall-clock jumps do not move the deadline. After a leader change the new leader
//! derives its anchors from the same replicated timestamps.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use ferry_protocol::command::Command;
use ferry_protocol::transfer::EngineReport;
use ferry_protocol::{Job, JobId, JobState, NodeId, Priority, Proposal, Timestamp};

use crate::replica::ClusterView;
use crate::transfer::system_caller;

/// Longest sleep between two looks at the queue.
const MAX_SLEEP: Duration = Duration::from_secs(5);

/// What the scheduler needs of a job (copied out, so that a job with many files is
/// never cloned on every look at the queue).
#[derive(Clone, Copy, Debug)]
struct JobView {
    id: JobId,
    run: u64,
    state: JobState,
    priority: Priority,
    home_node: NodeId,
    created: Timestamp,
    state_since: Timestamp,
    no_progress_since: Option<Timestamp>,
    active_since: Option<Timestamp>,
    active_ms: u64,
    last_activated: Option<Timestamp>,
    minimum_retry_delay_secs: u32,
    no_progress_timeout_secs: u32,
    max_download_time_secs: u32,
    /// In TRANSIENT_ERROR because its home node is gone.
    home_lost: bool,
}

impl JobView {
    fn of(job: &Job) -> Self {
        Self {
            id: job.id,
            run: job.run,
            state: job.state,
            priority: job.props.priority,
            home_node: job.home_node,
            created: job.times.created,
            state_since: job.state_since,
            no_progress_since: job.no_progress_since,
            active_since: job.active_since,
            active_ms: job.active_ms,
            last_activated: job.last_activated,
            minimum_retry_delay_secs: job.props.minimum_retry_delay_secs,
            no_progress_timeout_secs: job.props.no_progress_timeout_secs,
            max_download_time_secs: job.props.max_download_time_secs,
            home_lost: job.error.as_ref().is_some_and(ferry_protocol::transfer::is_home_node_lost),
        }
    }
}

/// Scheduling settings (from `[transfer]` in the configuration).
#[derive(Clone, Copy, Debug)]
pub(crate) struct SchedulerSettings {
    /// Jobs transferring at once per home node (0: none, transfers are paused).
    pub(crate) max_active_jobs: usize,
    /// How long a background job keeps its slot while an equal-priority job waits.
    pub(crate) time_slice: Duration,
}

/// The scheduler actor (active only while this node leads).
pub(crate) struct Scheduler {
    node_id: NodeId,
    cluster: ClusterView,
    settings: SchedulerSettings,
    /// Replicated timestamps anchored to this node's monotonic clock.
    anchors: HashMap<(JobId, Timestamp), Instant>,
    /// Jobs with a proposal in flight: not looked at until it is answered.
    in_flight: HashSet<JobId>,
    /// The pending wake-up.
    wake: Option<SpawnHandle>,
    /// When each member last answered a ping.
    liveness: Arc<Liveness>,
    /// The ping task.
    pinger: Option<tokio::task::AbortHandle>,
}

/// How long a home node may stay silent before its jobs wait for it.
const HOME_NODE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the leader pings the members.
const PING_EVERY: Duration = Duration::from_secs(1);

/// Last answers of the members to the leader's pings, since this node began to lead
/// (a node that just took over has heard from nobody yet: everyone gets the full timeout).
struct Liveness {
    since: std::sync::Mutex<Instant>,
    seen: std::sync::Mutex<HashMap<NodeId, Instant>>,
}

impl Liveness {
    fn new() -> Self {
        Self {
            since: std::sync::Mutex::new(Instant::now()),
            seen: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// This node (again) leads: answers from an earlier term no longer count.
    fn restart(&self) {
        *self.since.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
        self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
    }

    fn alive(&self, node: NodeId, now: Instant) -> bool {
        let since = *self.since.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let last = seen.get(&node).copied().unwrap_or(since).max(since);
        now.saturating_duration_since(last) < HOME_NODE_TIMEOUT
    }

    fn saw(&self, node: NodeId) {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(node, Instant::now());
    }
}

/// A proposal of the scheduler was answered.
#[derive(Message)]
#[rtype(result = "()")]
struct Answered {
    jobs: Vec<JobId>,
}

impl Scheduler {
    /// The scheduler of node `node_id`.
    pub(crate) fn new(node_id: NodeId, cluster: ClusterView, settings: SchedulerSettings) -> Self {
        Self {
            node_id,
            cluster,
            settings,
            anchors: HashMap::new(),
            in_flight: HashSet::new(),
            wake: None,
            liveness: Arc::new(Liveness::new()),
            pinger: None,
        }
    }

    /// True if `node` answered a ping lately (this node always counts as alive; every
    /// node gets the grace period after this scheduler started).
    fn alive(&self, node: NodeId, now: Instant) -> bool {
        node == self.node_id || self.liveness.alive(node, now)
    }

    fn leading(&self) -> bool {
        self.cluster.metrics().borrow().current_leader == Some(self.node_id)
    }

    /// The instant that corresponds to replicated time `at` for `job`.
    fn anchor(&mut self, job: JobId, at: Timestamp, now: Instant, wall: Timestamp) -> Instant {
        *self
            .anchors
            .entry((job, at))
            .or_insert_with(|| now.checked_sub(wall.since(at)).unwrap_or(now))
    }

    /// Looks at the queue: returns the reports to propose and when to look again.
    fn decide(&mut self) -> (Vec<(JobId, u64, EngineReport)>, Instant) {
        let now = Instant::now();
        let wall = Timestamp::now();
        let mut next = now + MAX_SLEEP;
        let mut out = Vec::new();
        let jobs: Vec<JobView> = {
            let machine = self.cluster.state.read();
            let inactivity =
                Duration::from_secs(machine.queue.policy().job_inactivity_timeout_secs);
            machine
                .queue
                .jobs()
                .filter(|j| !j.state.is_final() && !self.in_flight.contains(&j.id))
                .filter(|j| {
                    if wall.since(j.times.modified) >= inactivity {
                        out.push((j.id, j.run, EngineReport::InactivityTimeout));
                        false
                    } else {
                        true
                    }
                })
                .map(JobView::of)
                .collect()
        };
        let known: HashSet<JobId> = jobs.iter().map(|j| j.id).collect();
        self.anchors.retain(|(id, _), _| known.contains(id));

        for job in &jobs {
            match job.state {
                // Waits for its home node, not for a retry delay.
                JobState::TransientError if job.home_lost && self.alive(job.home_node, now) => {
                    out.push((job.id, job.run, EngineReport::HomeNodeBack));
                }
                JobState::TransientError if job.home_lost => {}
                JobState::Queued | JobState::Connecting | JobState::Transferring
                    if !self.alive(job.home_node, now) =>
                {
                    out.push((job.id, job.run, EngineReport::HomeNodeLost));
                }
                JobState::TransientError => {
                    let entered = self.anchor(job.id, job.state_since, now, wall);
                    let retry_at =
                        entered + Duration::from_secs(job.minimum_retry_delay_secs.into());
                    let give_up_at = job.no_progress_since.map(|since| {
                        self.anchor(job.id, since, now, wall)
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
                    let started = self.anchor(job.id, since, now, wall);
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
            let (reports, wake) = self.assign_slots(candidates, now, wall);
            out.extend(reports);
            if let Some(wake) = wake {
                next = next.min(wake);
            }
        }
        (out, next)
    }

    /// BITS's priority rules for the jobs of one home node.
    fn assign_slots(
        &mut self,
        mut candidates: Vec<&JobView>,
        now: Instant,
        wall: Timestamp,
    ) -> (Vec<(JobId, u64, EngineReport)>, Option<Instant>) {
        let slice = self.settings.time_slice;
        let mut slice_ends = HashMap::new();
        for job in &candidates {
            if job.state != JobState::Queued
                && job.priority != Priority::Foreground
                && let Some(at) = job.last_activated
            {
                slice_ends.insert(job.id, self.anchor(job.id, at, now, wall) + slice);
            }
        }
        // Running jobs keep their slot while their slice lasts (foreground: always);
        // then the job that waited longest since its last turn goes first.
        let holds = |job: &JobView| {
            job.state != JobState::Queued
                && (job.priority == Priority::Foreground
                    || slice_ends.get(&job.id).is_none_or(|end| now < *end))
        };
        candidates.sort_by_key(|job| {
            (job.priority, !holds(job), job.last_activated, job.created, job.id)
        });
        let cap = self.settings.max_active_jobs;
        let mut reports = Vec::new();
        let mut wake = None;
        for (rank, job) in candidates.iter().enumerate() {
            let running = job.state != JobState::Queued;
            if rank < cap && !running {
                reports.push((job.id, job.run, EngineReport::Activate));
            } else if rank >= cap && running {
                reports.push((job.id, job.run, EngineReport::Preempt));
            }
        }
        // Wake when a running job's slice ends while someone of its priority waits.
        for job in candidates.iter().take(cap) {
            let waiting = candidates.iter().skip(cap).any(|other| other.priority == job.priority);
            if let Some(end) = slice_ends.get(&job.id).filter(|_| waiting) {
                wake = Some(wake.map_or(*end, |w: Instant| w.min(*end)));
            }
        }
        (reports, wake)
    }
}

impl Actor for Scheduler {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(64);
        // While leading, ping the members so that jobs of a lost home node can wait
        // for it (and go on when it answers again).
        let (cluster, liveness, me) = (self.cluster.clone(), self.liveness.clone(), self.node_id);
        let pinger = tokio::spawn(async move {
            let mut leading = false;
            loop {
                tokio::time::sleep(PING_EVERY).await;
                if cluster.metrics().borrow().current_leader != Some(me) {
                    leading = false;
                    continue;
                }
                if !leading {
                    liveness.restart();
                    leading = true;
                }
                // All at once: a dead member's silence must not delay the others'.
                let mut pings = tokio::task::JoinSet::new();
                for node in cluster.member_ids().into_iter().filter(|n| *n != me) {
                    let cluster = cluster.clone();
                    pings.spawn(async move { (node, cluster.ping(node).await) });
                }
                while let Some(Ok((node, answered))) = pings.join_next().await {
                    if answered {
                        liveness.saw(node);
                    }
                }
            }
        });
        self.pinger = Some(pinger.abort_handle());
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        if let Some(pinger) = self.pinger.take() {
            pinger.abort();
        }
    }
}

/// Look at the queue now.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Schedule;

impl Handler<Schedule> for Scheduler {
    type Result = ();

    fn handle(&mut self, _: Schedule, ctx: &mut Context<Self>) {
        if let Some(handle) = self.wake.take() {
            ctx.cancel_future(handle);
        }
        if !self.leading() {
            self.anchors.clear();
            self.wake = Some(ctx.run_later(MAX_SLEEP, |_, ctx| ctx.notify(Schedule)));
            return;
        }
        let (reports, next) = self.decide();
        if !reports.is_empty() {
            let jobs: Vec<JobId> = reports.iter().map(|(id, _, _)| *id).collect();
            self.in_flight.extend(jobs.iter().copied());
            let cluster = self.cluster.clone();
            let me = ctx.address();
            tokio::spawn(async move {
                // Pre-emptions first, so that a freed slot is free when the activation lands.
                let mut reports = reports;
                reports.sort_by_key(|(_, _, r)| !matches!(r, EngineReport::Preempt));
                for (job, run, report) in reports {
                    tracing::debug!(%job, run, ?report, "scheduler");
                    let command = Command::Engine { job, run, reports: vec![report] };
                    let proposal = Proposal { request_id: None, caller: system_caller(), command };
                    match cluster.write(proposal).await {
                        Ok(written) => {
                            if let Err(e) = written.result {
                                tracing::debug!(%job, error = %e, "scheduler decision refused");
                            }
                        }
                        Err(e) => {
                            tracing::warn!(%job, error = %e, "cannot write a scheduler decision")
                        }
                    }
                }
                me.do_send(Answered { jobs });
            });
        }
        let delay = next.saturating_duration_since(Instant::now()).max(Duration::from_millis(10));
        self.wake = Some(ctx.run_later(delay, |_, ctx| ctx.notify(Schedule)));
    }
}

impl Handler<Answered> for Scheduler {
    type Result = ();

    fn handle(&mut self, msg: Answered, ctx: &mut Context<Self>) {
        for job in msg.jobs {
            self.in_flight.remove(&job);
        }
        ctx.notify(Schedule);
    }
}
