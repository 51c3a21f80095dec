//! The leader's scheduler (DESIGN §4): an actor shell around the pure decision in
//! [`decide`]. It keeps the jobs the decision looks at (active and waiting jobs; every
//! unfinished job's last modification for the inactivity timeout) from the change
//! feed, asks the node's `Liveness` whether home nodes answer, anchors replicated
//! timestamps to this node's monotonic clock, and proposes the reports through Raft.
//! It decides only while this node leads; after a leader change the new leader derives
//! its anchors from the same replicated timestamps.

mod decide;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use actix::prelude::*;
use ferry_protocol::command::Command;
use ferry_protocol::transfer::EngineReport;
use ferry_protocol::{Job, JobId, JobState, NodeId, Proposal, Timestamp};

pub(crate) use self::decide::SchedulerSettings;
use self::decide::{Anchors, JobView, MAX_SLEEP, Report};
use crate::feed::Feed;
use crate::replica::ClusterView;
use crate::transfer::system_caller;

/// How long a home node may leave pings unanswered before its jobs wait for it.
const HOME_NODE_TIMEOUT: Duration = Duration::from_secs(5);

/// The scheduler actor (decides only while this node leads).
pub(crate) struct Scheduler {
    node_id: NodeId,
    cluster: ClusterView,
    settings: SchedulerSettings,
    anchors: Anchors,
    /// Jobs with a proposal in flight: not looked at until it is answered.
    in_flight: HashSet<JobId>,
    /// The pending wake-up.
    wake: Option<SpawnHandle>,
    /// Since when this node leads (home nodes are judged from then on).
    leading_since: Option<Instant>,
    /// Jobs the decision looks at: queued, active or in a transient error.
    tracked: HashSet<JobId>,
    /// Every unfinished job by its last modification (the inactivity timeout).
    idle: BTreeSet<(Timestamp, JobId)>,
    /// The key of each job in `idle`, and the instant on this node's monotonic clock
    /// that corresponds to it (taken when first seen), so that a wall-clock jump does
    /// not move the inactivity deadline (BITS's timers ignore clock changes).
    modified: HashMap<JobId, (Timestamp, Instant)>,
    /// When to look again for jobs whose home node left the cluster.
    next_orphan_scan: Instant,
    /// Finished jobs whose files the home node has not finished yet (with the tracked
    /// ones, the jobs a removed home node would leave stuck).
    files_pending: HashSet<JobId>,
}

/// A proposal of the scheduler was answered.
#[derive(Message)]
#[rtype(result = "()")]
struct Answered {
    jobs: Vec<JobId>,
}

/// A delivery of the change feed.
#[derive(Message)]
#[rtype(result = "()")]
struct Changed(Feed);

impl Scheduler {
    /// The scheduler of node `node_id`.
    pub(crate) fn new(node_id: NodeId, cluster: ClusterView, settings: SchedulerSettings) -> Self {
        Self {
            node_id,
            cluster,
            settings,
            anchors: Anchors::default(),
            in_flight: HashSet::new(),
            wake: None,
            leading_since: None,
            tracked: HashSet::new(),
            idle: BTreeSet::new(),
            modified: HashMap::new(),
            next_orphan_scan: Instant::now(),
            files_pending: HashSet::new(),
        }
    }

    fn is_member(&self, node: NodeId) -> bool {
        self.cluster.metrics().borrow().membership_config.membership().get_node(&node).is_some()
    }

    /// Jobs whose home node is no longer a member (it was removed, with the job's
    /// files): tracked unfinished jobs, and finished ones whose files were never
    /// finished (Complete and Cancel would wait for them). Looked for every
    /// [`MAX_SLEEP`] at most.
    fn orphans(&mut self, now: Instant) -> Vec<Report> {
        if now < self.next_orphan_scan {
            return Vec::new();
        }
        self.next_orphan_scan = now + MAX_SLEEP;
        let members: HashSet<NodeId> = {
            let metrics = self.cluster.metrics();
            let metrics = metrics.borrow();
            metrics.membership_config.membership().nodes().map(|(id, _)| *id).collect()
        };
        let machine = self.cluster.state.read();
        (self.tracked.iter().chain(&self.files_pending))
            .filter(|id| !self.in_flight.contains(id))
            .filter_map(|id| machine.queue.job(id))
            .filter(|job| !members.contains(&job.home_node()))
            .map(|job| (job.id(), job.run(), EngineReport::HomeNodeRemoved))
            .collect()
    }

    fn leading(&self) -> bool {
        self.cluster.metrics().borrow().current_leader == Some(self.node_id)
    }

    /// Brings the tracked jobs up to date with one delivery of the feed.
    fn follow(&mut self, feed: &Feed) {
        let state = self.cluster.state.clone();
        let machine = state.read();
        match feed {
            Feed::Reset => {
                self.tracked.clear();
                self.files_pending.clear();
                self.idle.clear();
                self.modified.clear();
                for job in state.feed().scan(&machine.queue) {
                    self.track(job.id(), Some(job));
                }
            }
            Feed::Changed(batch) => {
                for change in &batch.jobs {
                    self.track(change.job, machine.queue.job(&change.job));
                }
            }
        }
    }

    /// Tracks job `id` as it now is (`None`: removed).
    fn track(&mut self, id: JobId, job: Option<&Job>) {
        if let Some((old, _)) = self.modified.remove(&id) {
            self.idle.remove(&(old, id));
        }
        let waiting = |state: JobState| state.is_active() || state == JobState::TransientError;
        match job {
            // A cancel or complete of a job whose home node left: look now (the call
            // waits for its files).
            Some(job) if job.state().is_final() => {
                self.tracked.remove(&id);
                if job.activity().files_finished {
                    self.files_pending.remove(&id);
                } else {
                    self.files_pending.insert(id);
                    if !self.is_member(job.home_node()) {
                        self.next_orphan_scan = Instant::now();
                    }
                }
            }
            Some(job) => {
                let modified = job.times().modified;
                let now = Instant::now();
                let anchored = now.checked_sub(Timestamp::now().since(modified)).unwrap_or(now);
                self.modified.insert(id, (modified, anchored));
                self.idle.insert((modified, id));
                if waiting(job.state()) {
                    self.tracked.insert(id);
                } else {
                    self.tracked.remove(&id);
                }
            }
            _ => {
                self.tracked.remove(&id);
                self.files_pending.remove(&id);
            }
        }
    }

    /// Looks at the tracked jobs: the reports to propose and when to look again.
    fn decide(&mut self, leading_since: Instant) -> (Vec<Report>, Instant) {
        let now = Instant::now();
        let wall = Timestamp::now();
        let mut reports = self.orphans(now);
        let orphans: HashSet<JobId> = reports.iter().map(|(id, _, _)| *id).collect();
        let mut next = now + MAX_SLEEP;
        let jobs: Vec<JobView> = {
            let machine = self.cluster.state.read();
            let inactivity =
                Duration::from_secs(machine.queue.policy().job_inactivity_timeout_secs);
            let mut timed_out = HashSet::new();
            for (_, id) in &self.idle {
                let since = self.modified.get(id).map_or(now, |(_, since)| *since);
                let Some(deadline) = since.checked_add(inactivity) else { break };
                if now < deadline {
                    next = next.min(deadline);
                    break;
                }
                let free = !self.in_flight.contains(id) && !orphans.contains(id);
                if let Some(job) = machine.queue.job(id).filter(|_| free) {
                    reports.push((job.id(), job.run(), EngineReport::InactivityTimeout));
                    timed_out.insert(*id);
                }
            }
            (self.tracked.iter())
                .filter(|id| !self.in_flight.contains(id) && !timed_out.contains(id))
                .filter(|id| !orphans.contains(id))
                .filter_map(|id| machine.queue.job(id))
                .map(JobView::of)
                .collect()
        };
        let (me, liveness) = (self.node_id, &self.cluster.liveness);
        let since = tokio::time::Instant::from_std(leading_since);
        let alive = |node| node == me || liveness.alive(node, HOME_NODE_TIMEOUT, since);
        let plan = decide::plan(&jobs, &self.settings, alive, &mut self.anchors, now, wall);
        reports.extend(plan.reports);
        (reports, next.min(plan.next))
    }
}

impl Actor for Scheduler {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(64);
        // Subscribed before the first look, so no change falls between the two.
        let mut feed = self.cluster.state.feed().subscribe();
        self.follow(&Feed::Reset);
        let me = ctx.address();
        ctx.spawn(fut::wrap_future(async move {
            while let Some(delivery) = feed.next().await {
                if me.send(Changed(delivery)).await.is_err() {
                    return;
                }
            }
        }));
        ctx.notify(Schedule);
    }
}

impl Handler<Changed> for Scheduler {
    type Result = ();

    fn handle(&mut self, Changed(feed): Changed, ctx: &mut Context<Self>) {
        self.follow(&feed);
        if self.leading() {
            ctx.notify(Schedule);
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
            self.leading_since = None;
            self.wake = Some(ctx.run_later(MAX_SLEEP, |_, ctx| ctx.notify(Schedule)));
            return;
        }
        let leading_since = *self.leading_since.get_or_insert_with(Instant::now);
        let (reports, next) = self.decide(leading_since);
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
