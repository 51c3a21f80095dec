//! `ferry-bench submit`: creates N jobs through the HTTP API with C concurrent clients
//! against a fresh node (durable: fsync on every commit) and prints jobs/s and latency
//! percentiles for each C.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ferry_coordinator::Client;
use ferry_protocol::command::{NewJob, PropertyChanges};
use ferry_protocol::job::{JobType, Priority};
use ferry_protocol::{FileRange, NewFile};
use ferry_tests::{NodeOptions, tokens};

/// One run's figures.
pub(crate) struct Run {
    clients: usize,
    jobs: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    commands_per_entry: f64,
    /// Full-queue scans on all nodes per Raft entry applied (the change feed makes it 0).
    scans_per_entry: f64,
}

impl Run {
    fn percentile(&self, p: f64) -> f64 {
        crate::report::percentile_ms(&self.latencies, p)
    }
}

pub(crate) fn job_spec(i: usize) -> NewJob {
    let job_type = JobType::ALL[i % 3];
    let ranges = if job_type == JobType::Download && i.is_multiple_of(2) {
        vec![FileRange { offset: 0, length: 4096 }, FileRange { offset: 65_536, length: u64::MAX }]
    } else {
        vec![]
    };
    NewJob {
        display_name: format!("bench-{i}"),
        job_type,
        properties: PropertyChanges {
            priority: Some(Priority::ALL[i % 4]),
            ..PropertyChanges::default()
        },
        files: vec![NewFile {
            remote_url: format!("https://origin.example/files/{i}.bin"),
            local_path: format!("/tmp/tmp/srv/ferry/bench/{i}.bin"),
            ranges,
            sha256: None,
        }],
    }
}

/// Creates `jobs` jobs with `clients` concurrent clients, spread over `targets` (one
/// client per node in turn).
pub(crate) async fn submit_run(
    targets: &[Client],
    jobs: usize,
    clients: usize,
) -> anyhow::Result<(Duration, Vec<Duration>)> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (client, next) = (targets[c % targets.len()].clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= jobs {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let t = Instant::now();
                client
                    .create_job(&job_spec(i))
                    .await
                    .with_context(|| format!("creating job {i}"))?;
                latencies.push(t.elapsed());
            }
        }));
    }
    let mut latencies = Vec::with_capacity(jobs);
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    Ok((elapsed, latencies))
}

/// One run per entry of `clients`, each on a fresh cluster of `nodes` nodes, creating
/// `jobs` jobs.
pub(crate) async fn submit(
    jobs: usize,
    clients: &[usize],
    nodes: usize,
) -> anyhow::Result<Vec<Run>> {
    let mut runs = Vec::new();
    for &c in clients {
        let cluster = ferry_tests::start_cluster(NodeOptions::queue_only(), nodes).await?;
        let targets = cluster
            .iter()
            .map(|node| node.client(Some(tokens::ADMIN)))
            .collect::<anyhow::Result<Vec<Client>>>()?;
        let client = targets[0].clone();
        // Warm up connections and the nodes' caches; not measured.
        submit_run(&targets, (jobs / 20).max(c), c).await?;
        let before = client.cluster().await?;
        let scans_before = queue_scans(&targets).await?;
        let (elapsed, latencies) = submit_run(&targets, jobs, c).await?;
        let after = client.cluster().await?;
        let scans = queue_scans(&targets).await?.saturating_sub(scans_before);
        let commands = after.commands_applied - before.commands_applied;
        let batches = (after.command_batches - before.command_batches).max(1);
        runs.push(Run {
            clients: c,
            jobs,
            elapsed,
            latencies,
            commands_per_entry: commands as f64 / batches as f64,
            scans_per_entry: scans as f64 / (batches as f64 * targets.len() as f64),
        });
        eprintln!("  {c} clients: done");
    }
    Ok(runs)
}

/// Full-queue scans made so far by the components of every node, summed.
async fn queue_scans(nodes: &[Client]) -> anyhow::Result<u64> {
    let mut total = 0;
    for node in nodes {
        total += node.cluster().await?.queue_scans;
    }
    Ok(total)
}

/// Prints the runs as a table.
pub(crate) fn print_submit(runs: &[Run], nodes: usize) {
    println!();
    let shape = if nodes == 1 {
        "one fresh node per run".to_owned()
    } else {
        format!("a fresh {nodes}-node cluster per run, clients spread over all nodes")
    };
    println!("ferry-bench submit — {shape}, durable (fsync before every acknowledgement)");
    println!(
        "{:>8} {:>8} {:>10} {:>9} {:>9} {:>9} {:>15} {:>16}",
        "clients",
        "jobs",
        "jobs/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "commands/entry",
        "scans/entry/node"
    );
    for r in runs {
        println!(
            "{:>8} {:>8} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>15.1} {:>16.3}",
            r.clients,
            r.jobs,
            r.jobs as f64 / r.elapsed.as_secs_f64(),
            r.percentile(0.50),
            r.percentile(0.99),
            r.percentile(1.0),
            r.commands_per_entry,
            r.scans_per_entry,
        );
    }
    let Some(target) = target_rate(nodes) else { return };
    let measured = runs.iter().find(|r| r.clients == TARGET_CLIENTS);
    println!("\ntargets");
    match measured {
        Some(r) => {
            let rate = r.jobs as f64 / r.elapsed.as_secs_f64();
            let verdict = if rate >= target { "PASS" } else { "FAIL" };
            println!(
                "  {verdict:<4}  {nodes} node(s), {TARGET_CLIENTS} clients ≥ {target:.0} jobs/s   {rate:.0} jobs/s"
            );
        }
        None => println!("  n/a   {nodes} node(s): no run with {TARGET_CLIENTS} clients"),
    }
}

/// The client count issue 20's submit targets are stated at.
const TARGET_CLIENTS: usize = 64;

/// Issue 20's submit target for a cluster of `nodes`, in jobs/s: 10,000 on one node,
/// 6,000 on three; none for other sizes.
fn target_rate(nodes: usize) -> Option<f64> {
    match nodes {
        1 => Some(10_000.0),
        3 => Some(6_000.0),
        _ => None,
    }
}
