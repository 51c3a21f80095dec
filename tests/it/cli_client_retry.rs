//! The Rust client (the CLI's) across an election: 200 calls to a follower of a
//! 3-node cluster while its leader is killed with -9, with the client's default
//! retries (503 + Retry-After, jittered backoff, a 15 s budget) and no retry loop of
//! the test's own: not one call fails.

use std::time::{Duration, Instant};

use ferry_protocol::{JobType, NewJob};
use ferry_tests::{NodeOptions, tokens};

use crate::cluster::form_cluster;

const CALLS: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_calls_survive_a_killed_leader() -> anyhow::Result<()> {
    let (mut nodes, agreed) = form_cluster(NodeOptions::queue_only()).await?;
    let leader = agreed
        .iter()
        .position(|s| s.role == "leader")
        .ok_or_else(|| anyhow::anyhow!("no leader"))?;
    let follower = (leader + 1) % nodes.len();
    let client = nodes[follower].client(Some(tokens::ADMIN))?;

    let mut failures = Vec::new();
    let mut slowest = Duration::ZERO;
    let mut killed_at = None;
    let mut created = Vec::new();
    for n in 0..CALLS {
        if n == CALLS / 4 {
            nodes[leader].kill9().await?;
            killed_at = Some(Instant::now());
        }
        let started = Instant::now();
        // Writes (forwarded to the leader, with an Idempotency-Key) and reads in turn.
        let outcome = if n % 2 == 0 {
            let spec = NewJob {
                display_name: format!("call-{n}"),
                job_type: JobType::Download,
                properties: Default::default(),
                files: vec![],
            };
            client.create_job(&spec).await.map(|job| created.push(job.id))
        } else {
            client.list_jobs(false).await.map(drop)
        };
        slowest = slowest.max(started.elapsed());
        if let Err(e) = outcome {
            failures.push(format!("call {n}: {e}"));
        }
    }
    let total = killed_at.map(|t| t.elapsed()).unwrap_or_default();
    println!(
        "{CALLS} calls to a follower, leader killed at call {}: {} failed; slowest call {slowest:?}; \
         {total:?} from the kill to the last call",
        CALLS / 4,
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:#?}");
    // Every create that returned exists exactly once.
    let listed = client.list_jobs(false).await?;
    for id in &created {
        assert_eq!(listed.iter().filter(|j| j.id == *id).count(), 1, "{id}");
    }
    assert_eq!(listed.len(), created.len(), "no duplicates from the retries");
    Ok(())
}
