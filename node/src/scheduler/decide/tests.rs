//! Properties of the scheduler's decision: pre-emption by priority within the cap of a
//! home node, foreground never sliced, equal priorities taking turns, lost and returning
//! home nodes, and the job timers firing at their deadlines, not before.

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;

const WALL: Timestamp = Timestamp(1_800_000_000_000);
const SLICE: Duration = Duration::from_secs(60);

fn id(n: u8) -> JobId {
    JobId(uuid::Uuid::from_u128(u128::from(n) + 1))
}

fn ago(d: Duration) -> Timestamp {
    Timestamp(WALL.0 - u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A job on `home` in `state`, nothing timed yet.
fn job(n: u8, home: NodeId, state: JobState, priority: Priority) -> JobView {
    JobView {
        id: id(n),
        run: 1,
        state,
        priority,
        home_node: home,
        created: ago(Duration::from_secs(3600 - u64::from(n))),
        state_since: ago(Duration::from_secs(1)),
        no_progress_since: None,
        active_since: None,
        active_ms: 0,
        last_activated: (state != JobState::Queued).then(|| ago(Duration::from_secs(1))),
        minimum_retry_delay_secs: 600,
        no_progress_timeout_secs: 1_209_600,
        max_download_time_secs: 7_776_000,
        home_lost: false,
    }
}

fn decide(jobs: &[JobView], cap: usize, alive: impl Fn(NodeId) -> bool, now: Instant) -> Plan {
    let settings = SchedulerSettings { max_active_jobs: cap, time_slice: SLICE };
    plan(jobs, &settings, alive, &mut Anchors::default(), now, WALL)
}

fn reports_of(plan: &Plan) -> HashMap<JobId, EngineReport> {
    plan.reports.iter().map(|(id, _, report)| (*id, report.clone())).collect()
}

fn arb_priority() -> impl Strategy<Value = Priority> {
    prop::sample::select(Priority::ALL.to_vec())
}

fn arb_active_state() -> impl Strategy<Value = JobState> {
    prop::sample::select(vec![JobState::Queued, JobState::Connecting, JobState::Transferring])
}

proptest! {
    /// Whatever holds the slots now, after the decision each home node runs every
    /// foreground job and at most `cap` background jobs, as many as it has candidates
    /// up to `cap`, and no waiting background job has a higher priority than a running
    /// one of the same node.
    #[test]
    fn higher_priority_pre_empts_lower_within_the_cap(
        specs in prop::collection::vec((1u64..=3, arb_active_state(), arb_priority()), 1..24),
        cap in 0usize..5,
    ) {
        let jobs: Vec<JobView> = specs.iter().enumerate()
            .map(|(n, (home, state, priority))| job(n as u8, *home, *state, *priority))
            .collect();
        let plan = decide(&jobs, cap, |_| true, Instant::now());
        let reports = reports_of(&plan);
        let runs = |job: &JobView| match reports.get(&job.id) {
            Some(EngineReport::Activate) => true,
            Some(EngineReport::Preempt) => false,
            Some(other) => panic!("unexpected report {other:?}"),
            None => job.state != JobState::Queued,
        };
        for home in 1..=3 {
            let mine: Vec<&JobView> = jobs.iter().filter(|j| j.home_node == home).collect();
            let (foreground, background): (Vec<&JobView>, Vec<&JobView>) =
                mine.iter().partition(|j| j.priority == Priority::Foreground);
            for job in &foreground {
                prop_assert_eq!(runs(job), cap > 0, "foreground runs unless paused");
            }
            let running: Vec<&&JobView> = background.iter().filter(|j| runs(j)).collect();
            prop_assert_eq!(running.len(), background.len().min(cap), "node {} uses its slots", home);
            for waiting in background.iter().filter(|j| !runs(j)) {
                for run in &running {
                    prop_assert!(run.priority <= waiting.priority,
                        "{:?} waits while {:?} runs", waiting.priority, run.priority);
                }
            }
        }
    }

    /// A running foreground job keeps running however long it has, and a waiting one
    /// starts beside it; an equal-priority background job gives its slot up once its
    /// slice ended.
    #[test]
    fn foreground_is_never_sliced_and_background_takes_turns(
        held_secs in 0u64..600,
        priority in arb_priority(),
    ) {
        let mut running = job(1, 1, JobState::Transferring, priority);
        running.last_activated = Some(ago(Duration::from_secs(held_secs)));
        let mut waiting = job(2, 1, JobState::Queued, priority);
        waiting.last_activated = Some(ago(Duration::from_secs(held_secs + 1)));
        let now = Instant::now();
        let plan = decide(&[running, waiting], 1, |_| true, now);
        let reports = reports_of(&plan);
        let slice_over = Duration::from_secs(held_secs) >= SLICE;
        if priority == Priority::Foreground {
            // Both run: foreground jobs take no background slot.
            prop_assert_eq!(reports.get(&running.id), None);
            prop_assert_eq!(reports.get(&waiting.id), Some(&EngineReport::Activate));
        } else if !slice_over {
            prop_assert!(reports.is_empty(), "{:?}", reports);
        } else {
            prop_assert_eq!(reports.get(&running.id), Some(&EngineReport::Preempt));
            prop_assert_eq!(reports.get(&waiting.id), Some(&EngineReport::Activate));
        }
        if priority != Priority::Foreground && !slice_over {
            let end = now + (SLICE - Duration::from_secs(held_secs));
            prop_assert!(plan.next <= end, "wakes when the slice ends");
        }
    }

    /// Jobs of a home node that stopped answering wait for it (HomeNodeLost), and
    /// resume when it answers again (HomeNodeBack); other nodes' jobs are untouched.
    #[test]
    fn a_lost_home_node_parks_its_jobs_until_it_returns(
        state in arb_active_state(),
        priority in arb_priority(),
        lost in 1u64..=3,
    ) {
        let parked = job(1, lost, state, priority);
        let other = job(2, if lost == 3 { 1 } else { 3 }, JobState::Transferring, priority);
        let plan = decide(&[parked, other], 4, |node| node != lost, Instant::now());
        let reports = reports_of(&plan);
        prop_assert_eq!(reports.get(&parked.id), Some(&EngineReport::HomeNodeLost));
        prop_assert_eq!(reports.get(&other.id), None);

        let mut waiting = job(1, lost, JobState::TransientError, priority);
        waiting.home_lost = true;
        let still_gone = decide(&[waiting], 4, |node| node != lost, Instant::now());
        prop_assert!(still_gone.reports.is_empty(), "no retry delay while the node is gone");
        let back = decide(&[waiting], 4, |_| true, Instant::now());
        prop_assert_eq!(reports_of(&back).remove(&waiting.id), Some(EngineReport::HomeNodeBack));
    }

    /// The retry delay, the no-progress timeout and the maximum download time fire once
    /// their time has come, and otherwise set the next look to their deadline.
    #[test]
    fn timers_fire_at_their_deadlines_and_not_before(
        in_state_secs in 0u64..1_000,
        retry_secs in 5u32..900,
        no_progress_secs in 5u32..900,
        no_progress_for in 0u64..1_000,
        max_secs in 1u32..900,
        active_for in 0u64..1_000,
        active_before_ms in 0u64..300_000,
    ) {
        let now = Instant::now();
        let mut waiting = job(1, 1, JobState::TransientError, Priority::Normal);
        waiting.state_since = ago(Duration::from_secs(in_state_secs));
        waiting.minimum_retry_delay_secs = retry_secs;
        waiting.no_progress_since = Some(ago(Duration::from_secs(no_progress_for)));
        waiting.no_progress_timeout_secs = no_progress_secs;
        let plan = decide(&[waiting], 4, |_| true, now);
        let report = reports_of(&plan).remove(&waiting.id);
        if no_progress_for >= u64::from(no_progress_secs) {
            prop_assert_eq!(report, Some(EngineReport::NoProgressTimeout));
        } else if in_state_secs >= u64::from(retry_secs) {
            prop_assert_eq!(report, Some(EngineReport::RetryDelayElapsed));
        } else {
            prop_assert_eq!(report, None);
            let retry = now + Duration::from_secs(u64::from(retry_secs) - in_state_secs);
            let give_up = now + Duration::from_secs(u64::from(no_progress_secs) - no_progress_for);
            prop_assert_eq!(plan.next, retry.min(give_up).min(now + MAX_SLEEP));
        }

        let mut active = job(2, 1, JobState::Transferring, Priority::Foreground);
        active.active_since = Some(ago(Duration::from_secs(active_for)));
        active.active_ms = active_before_ms;
        active.max_download_time_secs = max_secs;
        let plan = decide(&[active], 4, |_| true, now);
        let used = Duration::from_secs(active_for) + Duration::from_millis(active_before_ms);
        let exceeded = used >= Duration::from_secs(max_secs.into());
        prop_assert_eq!(
            reports_of(&plan).remove(&active.id),
            exceeded.then_some(EngineReport::MaxDownloadTimeExceeded)
        );
    }
}
