//! A node's bandwidth limit for background transfers (BITS's `MaxInternetBandwidth`
//! and `MaxTransferRateOnSchedule`): one token bucket per node that every byte of a
//! background transfer draws on — the bytes received from origins for the node's own
//! jobs, the pieces it fetches as a helper for other members' jobs, and the upload
//! fragments it sends — so all its connections and helpers share the one rate.
//! Foreground jobs are exempt unless the policy says `limit_foreground`. Bytes that
//! travel between members (a helper's piece to its home node, a peer's copy) are not
//! origin traffic and do not draw.
//!
//! [`Bandwidth`] holds the policy in force (the `[bandwidth]` configuration, or one
//! put through the API until the node restarts), its [`Schedule`] and the bucket;
//! [`keep_schedule`] re-evaluates the schedule at every boundary and at least every
//! second. A [`Throttle`] is one run's handle (or one helped run's): its transfers
//! call [`Throttle::take`] for the bytes they read or send. Which rate applies when is
//! the checked configuration's business (`crate::config::bandwidth`), the arithmetic
//! of the bucket `bucket`'s.

mod bucket;

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime};

use ferry_coordinator::bandwidth::{BandwidthPolicy, BandwidthStatus, InvalidPolicy, PolicySource};
use ferry_protocol::{NodeId, Priority};
use tokio::sync::Notify;
use tokio::time::Instant;

use self::bucket::TokenBucket;
use crate::config::bandwidth::{Decision, Schedule};

/// Longest time between two evaluations of the schedule: a clock that jumps (or a
/// boundary computed a hair early) is caught up with within this.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Added to the wait for a boundary, so that the evaluation lands past it.
const PAST_BOUNDARY: Duration = Duration::from_millis(2);
/// Most bytes one draw takes: a larger read (an HTTP client reads up to hundreds of
/// KiB at once from a full socket buffer) is let through in steps of this, so that
/// the bytes go on (and are counted) at the rate rather than in lumps.
const MAX_DRAW: usize = 64 * 1024;

/// The node's bandwidth policy and the bucket enforcing it.
pub(crate) struct Bandwidth {
    inner: Mutex<Inner>,
    /// Wakes [`keep_schedule`] when the policy changed, to recompute its next wake-up.
    changed: Arc<Notify>,
}

/// What the lock guards.
struct Inner {
    /// The policy in force, as given.
    policy: BandwidthPolicy,
    /// Whether it is the configured one or one put through the API.
    source: PolicySource,
    /// `policy`, checked.
    schedule: Schedule,
    /// What the schedule said at the last evaluation.
    decision: Decision,
    /// Paces the draws at `decision.rate`.
    bucket: TokenBucket,
    /// Bytes drawn since start (for the API; the metric counts the same).
    throttled_bytes: u64,
}

impl Bandwidth {
    /// The node's bandwidth with the configured `policy` in force.
    pub(crate) fn new(policy: BandwidthPolicy) -> Result<Arc<Self>, InvalidPolicy> {
        let schedule = Schedule::new(&policy)?;
        let decision = schedule.at(SystemTime::now());
        crate::metrics::get().bandwidth_limit(decision.rate);
        let inner = Inner {
            policy,
            source: PolicySource::Config,
            schedule,
            decision,
            bucket: TokenBucket::new(decision.rate, Instant::now().into_std()),
            throttled_bytes: 0,
        };
        Ok(Arc::new(Self { inner: Mutex::new(inner), changed: Arc::new(Notify::new()) }))
    }

    /// The handle of a run of a job of `priority`, with the job's own cap (bytes per
    /// second) if it has one.
    pub(crate) fn throttle(self: &Arc<Self>, priority: Priority, job_cap: Option<u64>) -> Throttle {
        let job = job_cap
            .map(|rate| Arc::new(Mutex::new(TokenBucket::new(rate, Instant::now().into_std()))));
        Throttle { bandwidth: self.clone(), foreground: priority == Priority::Foreground, job }
    }

    /// Puts `policy` in force at once (until the node restarts).
    pub(crate) fn set_policy(&self, policy: BandwidthPolicy) -> Result<(), InvalidPolicy> {
        let schedule = Schedule::new(&policy)?;
        {
            let mut inner = self.lock();
            inner.policy = policy;
            inner.schedule = schedule;
            inner.source = PolicySource::Api;
        }
        self.evaluate(SystemTime::now(), Instant::now());
        self.changed.notify_one();
        Ok(())
    }

    /// The policy in force and what it does now, as node `node_id` answers it.
    pub(crate) fn status(&self, node_id: NodeId) -> BandwidthStatus {
        let inner = self.lock();
        let now = inner.schedule.at(SystemTime::now());
        BandwidthStatus {
            node_id,
            policy: inner.policy.clone(),
            source: inner.source,
            current_rate: inner.bucket.rate(),
            in_work_hours: inner.decision.in_work_hours,
            next_change_secs: now.next_boundary.map(|d| d.as_secs_f64().ceil() as u64),
            throttled_bytes: inner.throttled_bytes,
        }
    }

    /// Applies what the schedule says at `wall` (the bucket's clock reads `now`);
    /// returns how long until it may say something else.
    fn evaluate(&self, wall: SystemTime, now: Instant) -> Option<Duration> {
        let mut inner = self.lock();
        let decision = inner.schedule.at(wall);
        if decision.rate != inner.bucket.rate()
            || decision.in_work_hours != inner.decision.in_work_hours
        {
            inner.bucket.set_rate(now.into_std(), decision.rate);
            crate::metrics::get().bandwidth_limit(decision.rate);
            tracing::info!(
                rate = decision.rate,
                in_work_hours = decision.in_work_hours,
                source = ?inner.source,
                "bandwidth limit of background transfers (bytes/s, 0: unlimited)"
            );
        }
        inner.decision = decision;
        decision.next_boundary
    }

    /// Draws `bytes` of a transfer (of a foreground job if `foreground`) at `now`: how
    /// long it waits, or `None` if it is exempt.
    fn draw(&self, foreground: bool, bytes: u64, now: Instant) -> Option<Duration> {
        let mut inner = self.lock();
        if foreground && !inner.policy.limit_foreground {
            return None;
        }
        inner.throttled_bytes += bytes;
        Some(inner.bucket.draw(now.into_std(), bytes))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Keeps the rate equal to what the schedule says: evaluates it at each boundary, at
/// least every second, and when the policy changes. Ends once the node dropped its
/// [`Bandwidth`].
pub(crate) async fn keep_schedule(bandwidth: Weak<Bandwidth>) {
    loop {
        let Some(current) = bandwidth.upgrade() else { return };
        let next = current.evaluate(SystemTime::now(), Instant::now());
        let changed = current.changed.clone();
        drop(current);
        let wait = next.map_or(CHECK_EVERY, |boundary| (boundary + PAST_BOUNDARY).min(CHECK_EVERY));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = changed.notified() => {}
        }
    }
}

/// One run's share of the node's bandwidth: every transfer of the run draws through
/// it. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Throttle {
    bandwidth: Arc<Bandwidth>,
    /// A foreground job's: exempt unless the policy limits foreground jobs too (read at
    /// each draw, so a policy change applies at once).
    foreground: bool,
    /// The job's own cap (`max_bandwidth`), shared by the run's connections, whatever
    /// the job's priority.
    job: Option<Arc<Mutex<TokenBucket>>>,
}

impl Throttle {
    /// Counts `bytes` just read from (or about to be sent to) a server against the
    /// node's limit and waits until the limit allows them.
    pub(crate) async fn take(&self, bytes: usize) {
        let mut left = bytes;
        while left > 0 {
            let step = left.min(MAX_DRAW);
            left -= step;
            let step = step as u64;
            let now = Instant::now();
            let node = self.bandwidth.draw(self.foreground, step, now);
            if let Some(wait) = node {
                crate::metrics::get().bandwidth_drawn(step, wait);
            }
            let job = self.job.as_ref().map(|bucket| {
                bucket
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .draw(now.into_std(), step)
            });
            if node.is_none() && job.is_none() {
                return;
            }
            // Both limits hold once the longer of the two waits is over.
            let wait = node.unwrap_or_default().max(job.unwrap_or_default());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use ferry_coordinator::bandwidth::{Weekday, WorkHours};

    use super::*;

    const MB: u64 = 1_000_000;

    fn limited(rate: u64) -> Arc<Bandwidth> {
        Bandwidth::new(BandwidthPolicy { background_rate: rate, ..Default::default() })
            .expect("valid")
    }

    /// Takes `bytes` in pieces of `piece` through `throttle`: the (paused) time it took.
    async fn take_all(throttle: &Throttle, bytes: usize, piece: usize) -> Duration {
        let started = Instant::now();
        let mut left = bytes;
        while left > 0 {
            let n = left.min(piece);
            throttle.take(n).await;
            left -= n;
        }
        started.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn background_runs_share_the_rate_and_foreground_ones_are_exempt() {
        let bandwidth = limited(MB);
        let (a, b) =
            (bandwidth.throttle(Priority::Normal, None), bandwidth.throttle(Priority::Low, None));
        // Two runs of 1 MB each at 1 MB/s between them: 2 s.
        let (ta, tb) =
            tokio::join!(take_all(&a, 1_000_000, 16_384), take_all(&b, 1_000_000, 65_536));
        let slowest = ta.max(tb).as_secs_f64();
        assert!((1.9..=2.1).contains(&slowest), "took {slowest} s");
        let foreground = bandwidth.throttle(Priority::Foreground, None);
        assert_eq!(take_all(&foreground, 10_000_000, 65_536).await, Duration::ZERO);
        assert_eq!(bandwidth.status(1).throttled_bytes, 2_000_000, "foreground bytes not counted");
        // Unless the policy says so.
        bandwidth
            .set_policy(BandwidthPolicy {
                background_rate: MB,
                limit_foreground: true,
                ..Default::default()
            })
            .expect("valid");
        let took = take_all(&foreground, 1_000_000, 65_536).await.as_secs_f64();
        assert!((0.9..=1.1).contains(&took), "took {took} s");
        assert_eq!(bandwidth.status(1).source, PolicySource::Api);
    }

    #[tokio::test(start_paused = true)]
    async fn a_jobs_own_cap_holds_whatever_its_priority_and_beside_the_nodes() {
        let bandwidth = limited(4 * MB);
        // A foreground job is exempt from the node's limit, not from its own cap.
        let capped = bandwidth.throttle(Priority::Foreground, Some(MB));
        let took = take_all(&capped, 2_000_000, 65_536).await.as_secs_f64();
        assert!((1.9..=2.1).contains(&took), "2 MB at 1 MB/s took {took} s");
        // A background job under a tighter node limit keeps to the node's.
        let background = limited(MB / 2).throttle(Priority::Normal, Some(MB));
        let took = take_all(&background, 1_000_000, 65_536).await.as_secs_f64();
        assert!((1.9..=2.1).contains(&took), "1 MB at 0.5 MB/s took {took} s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_policy_applies_to_transfers_in_progress() {
        let bandwidth = limited(4 * MB);
        let throttle = bandwidth.throttle(Priority::High, None);
        let took = take_all(&throttle, 4_000_000, 65_536).await.as_secs_f64();
        assert!((0.9..=1.1).contains(&took), "4 MB at 4 MB/s took {took} s");
        bandwidth
            .set_policy(BandwidthPolicy { background_rate: MB, ..Default::default() })
            .expect("valid");
        let took = take_all(&throttle, 1_000_000, 65_536).await.as_secs_f64();
        assert!((0.9..=1.1).contains(&took), "1 MB at 1 MB/s took {took} s");
        bandwidth.set_policy(BandwidthPolicy::default()).expect("valid");
        assert_eq!(take_all(&throttle, 100_000_000, 65_536).await, Duration::ZERO);
        let status = bandwidth.status(7);
        assert_eq!((status.node_id, status.current_rate, status.next_change_secs), (7, 0, None));
    }

    #[tokio::test(start_paused = true)]
    async fn the_schedule_keeper_follows_policy_changes_and_ends_with_the_node() {
        let bandwidth = limited(MB);
        let keeper = tokio::spawn(keep_schedule(Arc::downgrade(&bandwidth)));
        // Work hours all week, all day: the work-hours rate applies at once.
        let all_day = BandwidthPolicy {
            background_rate: MB,
            work_hours: Some(WorkHours {
                days: Weekday::ALL.to_vec(),
                from: "00:00".into(),
                to: "24:00".into(),
                utc_offset: "+00:00".into(),
            }),
            work_hours_rate: Some(2 * MB),
            limit_foreground: false,
        };
        bandwidth.set_policy(all_day).expect("valid");
        let status = bandwidth.status(1);
        assert!(status.in_work_hours);
        assert_eq!(status.current_rate, 2 * MB);
        assert!(status.next_change_secs.is_some_and(|s| s <= 86_400));
        assert!(
            bandwidth
                .set_policy(BandwidthPolicy { background_rate: 10, ..Default::default() })
                .is_err()
        );
        assert_eq!(bandwidth.status(1).current_rate, 2 * MB, "a refused policy changes nothing");
        drop(bandwidth);
        tokio::time::sleep(CHECK_EVERY * 2).await;
        assert!(keeper.is_finished(), "the keeper outlived its bandwidth");
    }
}
