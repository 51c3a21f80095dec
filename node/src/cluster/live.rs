//! Live progress across the cluster: the API asks each running job's home node for the
//! bytes its run has received so far (`live-progress`, one request per home node for
//! all its jobs), and serves that request for the jobs running here. No Raft write is
//! involved; a home node that does not answer in time leaves its jobs at their durable
//! progress.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::peer::{LiveFiles, LiveProgressOf, MAX_LIVE_JOBS};
use ferry_protocol::{JobId, NodeId};

use crate::peer::rpc::Router;
use crate::replica::ClusterView;
use crate::transfer::live::LiveProgress;

/// How long a home node has to answer: the read it serves waits for it.
const ASK_TIMEOUT: Duration = Duration::from_millis(500);

/// Serves `live-progress` from this node's running downloads.
pub(crate) fn register(router: &Router, live: Arc<LiveProgress>) {
    router.add_handler::<LiveProgressOf, _, _>(move |_, LiveProgressOf { jobs }| {
        let live = live.clone();
        async move { Ok(jobs.iter().take(MAX_LIVE_JOBS).filter_map(|job| live.of(*job)).collect()) }
    });
}

/// The live progress of `jobs` (each with its home node): read here for this node's,
/// asked of the other home nodes at once.
pub(crate) async fn gather(
    cluster: &ClusterView,
    live: &LiveProgress,
    jobs: Vec<(JobId, NodeId)>,
) -> Vec<LiveFiles> {
    let mut by_home: BTreeMap<NodeId, Vec<JobId>> = BTreeMap::new();
    for (job, home) in jobs {
        by_home.entry(home).or_default().push(job);
    }
    let mut found = Vec::new();
    let mut asks = Vec::new();
    for (home, jobs) in by_home {
        if home == cluster.node_id {
            found.extend(jobs.iter().filter_map(|job| live.of(*job)));
        } else {
            for chunk in jobs.chunks(MAX_LIVE_JOBS) {
                let request = LiveProgressOf { jobs: chunk.to_vec() };
                asks.push(async move { cluster.call(home, &request, ASK_TIMEOUT).await });
            }
        }
    }
    for answer in futures_util::future::join_all(asks).await {
        match answer {
            Ok(files) => found.extend(files),
            Err(e) => tracing::debug!(error = %e, "no live progress from a home node"),
        }
    }
    found
}
