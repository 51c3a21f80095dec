//! The scrape-time side of the node's metrics ([`crate::metrics`]): the gauges read
//! from the applied state and Raft when `GET /metrics` is served ([`render`]), and the
//! job errors counted from the change feed ([`follow_errors`]).

use ferry_protocol::job::{JobState, Priority};

use crate::metrics::{self, FleetLabels, Follower, JobLabels};
use crate::raft::Raft;
use crate::replica::ClusterView;

/// Every metric as of now, in the Prometheus text format: the gauges are read from
/// `view`'s applied state and from `raft` first.
pub(super) fn render(view: &ClusterView, raft: &Raft) -> String {
    let m = metrics::get();
    let to_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    {
        let machine = view.state.read();
        let mut counts = [[0i64; Priority::ALL.len()]; JobState::ALL.len()];
        let mut fleets: std::collections::BTreeMap<String, (u64, Option<u64>)> =
            std::collections::BTreeMap::new();
        // One counted walk of the queue per scrape.
        for job in view.state.feed().scan(&machine.queue) {
            let state = JobState::ALL.iter().position(|s| *s == job.state()).unwrap_or(0);
            let priority =
                Priority::ALL.iter().position(|p| *p == job.props().priority).unwrap_or(0);
            counts[state][priority] += 1;
            if let Some(member) = job.fleet() {
                let progress = job.progress();
                let entry = fleets.entry(member.fleet.to_string()).or_insert((0, Some(0)));
                entry.0 += progress.bytes_transferred;
                entry.1 = entry.1.zip(progress.bytes_total).map(|(a, b)| a + b);
            }
        }
        for (s, state) in JobState::ALL.iter().enumerate() {
            for (p, priority) in Priority::ALL.iter().enumerate() {
                let labels = JobLabels { state: state.bits_name(), priority: priority.bits_name() };
                m.jobs.get_or_create(&labels).set(counts[s][p]);
            }
        }
        m.fleet_bytes_transferred.clear();
        m.fleet_bytes_total.clear();
        for (fleet, (transferred, total)) in fleets {
            let labels = FleetLabels { fleet };
            m.fleet_bytes_transferred.get_or_create(&labels).set(to_i64(transferred));
            if let Some(total) = total {
                m.fleet_bytes_total.get_or_create(&labels).set(to_i64(total));
            }
        }
        m.upload_sessions.set(to_i64(machine.queue.upload_sessions().count() as u64));
    }
    let raft_metrics = raft.metrics().borrow().clone();
    m.raft_term.set(to_i64(raft_metrics.current_term));
    m.raft_leader.set(to_i64(raft_metrics.current_leader.unwrap_or(0)));
    let last_log = raft_metrics.last_log_index.unwrap_or(0);
    m.raft_last_log_index.set(to_i64(last_log));
    m.raft_applied_index.set(to_i64(raft_metrics.last_applied.map_or(0, |id| id.index)));
    m.raft_follower_lag.clear();
    for (follower, matched) in raft_metrics.replication.iter().flatten() {
        let lag = last_log.saturating_sub(matched.map_or(0, |id| id.index));
        m.raft_follower_lag.get_or_create(&Follower { follower: *follower }).set(to_i64(lag));
    }
    m.bus_subscribers.set(to_i64(view.state.events().subscribers() as u64));
    let applied = raft_metrics.last_applied.map_or(0, |id| id.index);
    let behind = view.state.events().furthest_behind().map_or(0, |at| applied.saturating_sub(at));
    m.bus_lag.set(to_i64(behind));
    metrics::encode()
}

/// Counts the errors of this node's jobs as the change feed shows them entering ERROR
/// or TRANSIENT_ERROR, until the state machine is gone.
pub(crate) async fn follow_errors(view: ClusterView) {
    let mut feed = view.state.feed().subscribe();
    while let Some(delivery) = feed.next().await {
        let crate::feed::Feed::Changed(batch) = delivery else { continue };
        let machine = view.state.read();
        for change in &batch.jobs {
            let Some(after @ (JobState::Error | JobState::TransientError)) = change.after else {
                continue;
            };
            if change.before == Some(after) {
                continue;
            }
            let Some(job) = machine.queue.job(&change.job) else { continue };
            if let Some(error) = job.error().filter(|_| job.home_node() == view.node_id) {
                metrics::get().job_error(error.code, after == JobState::TransientError);
            }
        }
    }
}
