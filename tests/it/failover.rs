//! Killing the leader of a 3-node cluster with -9 while 2,000 jobs are submitted through
//! all nodes: every create that returned success exists afterwards exactly once, a new
//! leader serves writes within 5 s, and the old leader rejoins as a follower.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ferry_protocol::{JobType, NewJob};
use ferry_tests::{NodeOptions, tokens};
use tokio::sync::Mutex;

use crate::cluster::{agree, form_cluster, statuses};

const JOBS: usize = 2_000;
const CLIENTS_PER_NODE: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_during_submissions_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    let (mut nodes, agreed) = form_cluster(NodeOptions::queue_only()).await?;
    let leader_index = agreed
        .iter()
        .position(|s| s.role == "leader")
        .ok_or_else(|| anyhow::anyhow!("no leader"))?;
    let old_leader = agreed[leader_index].node_id;

    let next = Arc::new(AtomicUsize::new(0));
    let succeeded = Arc::new(Mutex::new(Vec::<(usize, ferry_protocol::JobId)>::new()));
    let mut tasks = Vec::new();
    for node in &nodes {
        let url = node.url()?;
        for _ in 0..CLIENTS_PER_NODE {
            let (next, succeeded, url) = (next.clone(), succeeded.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                let client = ferry_coordinator::Client::new(&url, Some(tokens::ADMIN.into()))?
                    .with_attempts(3);
                loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    if n >= JOBS {
                        return anyhow::Ok(());
                    }
                    let spec = NewJob {
                        display_name: format!("job-{n}"),
                        job_type: JobType::Download,
                        properties: Default::default(),
                        files: vec![],
                    };
                    // A failed create (its node died, or no leader yet) is simply not
                    // counted: the claim is about the ones that returned success.
                    if let Ok(job) = client.create_job(&spec).await {
                        succeeded.lock().await.push((n, job.id));
                    }
                }
            }));
        }
    }

    // Kill the leader once a quarter of the jobs were created.
    while succeeded.lock().await.len() < JOBS / 4 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    nodes[leader_index].kill9().await?;
    let killed_at = Instant::now();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != leader_index).collect();
    let probe = nodes[survivors[0]].client(Some(tokens::ADMIN))?.with_attempts(1);
    let failover = loop {
        let spec = NewJob {
            display_name: "probe".into(),
            job_type: JobType::Download,
            properties: Default::default(),
            files: vec![],
        };
        if probe.create_job(&spec).await.is_ok() {
            break killed_at.elapsed();
        }
        if killed_at.elapsed() >= Duration::from_secs(30) {
            let alive: Vec<&ferry_tests::Node> = survivors.iter().map(|i| &nodes[*i]).collect();
            let all = statuses(&alive).await;
            anyhow::bail!(
                "no new leader after 30 s: {all:#?}\n{}",
                alive.iter().map(|n| n.log_tail()).collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("a new leader served writes {failover:?} after the leader was killed");
    assert!(failover < Duration::from_secs(5), "failover took {failover:?}");

    for task in tasks {
        task.await??;
    }
    let succeeded = succeeded.lock().await.clone();

    // The old leader comes back as a follower and catches up.
    nodes[leader_index].restart().await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let all = loop {
        let all = statuses(&nodes.iter().collect::<Vec<_>>()).await?;
        if agree(&all) {
            break all;
        }
        anyhow::ensure!(Instant::now() < deadline, "no agreement after the restart: {all:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let rejoined = &all[leader_index];
    assert_eq!(rejoined.node_id, old_leader);
    assert_eq!(rejoined.role, "follower", "{rejoined:#?}");

    // Every acknowledged create exists exactly once, on every node.
    for node in &nodes {
        let listed = node.client(Some(tokens::ADMIN))?.list_jobs(true).await?;
        let mut by_name: HashMap<String, usize> = HashMap::new();
        for job in &listed {
            *by_name.entry(job.display_name.clone()).or_default() += 1;
        }
        let ids: std::collections::HashSet<_> = listed.iter().map(|j| j.id).collect();
        for (n, id) in &succeeded {
            assert!(ids.contains(id), "job-{n} ({id}) was acknowledged but is missing");
            assert_eq!(by_name.get(&format!("job-{n}")), Some(&1), "job-{n} exists more than once");
        }
    }
    println!(
        "{} of {JOBS} creates succeeded through three nodes; all present once on every node",
        succeeded.len()
    );
    Ok(())
}
