//! `ferry-bench scale`: how a node's costs grow with its queue. For each level (1k,
//! 10k, 100k jobs by default) a fresh node is filled with that many jobs (one file
//! each, the `submit` bench's mix) by 64 clients, then measured: the submit rate and
//! p99 latency of more jobs on top, the node's resident memory (now and peak), the
//! latency of listing every job and of a 1,000-job page, the data directory's size,
//! the time a restart takes to serve again, and the time and size of a snapshot of the
//! whole queue. A level is capped so that the jobs measured on top still fit under the
//! cluster's hard limit (`HARD_MAX_JOBS`, 100,000): the table shows the jobs actually
//! queued.
//!
//! The snapshot: a node builds one on its own schedule (`raft.snapshot_after_entries`),
//! so the node is restarted once more with a snapshot due after every entry, one job is
//! created (a lone voter resumes its leadership without writing an entry), and the
//! node's metrics (`ferry_raft_snapshot_build_seconds`, `ferry_raft_snapshot_size_bytes`)
//! say how long the build took and how large the snapshot is. Nothing but the
//! configuration an operator sets is used.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ferry_tests::{Node, NodeOptions, tokens};

use crate::submit::submit_run;

/// Clients that fill the queue and submit on top.
const CLIENTS: usize = 64;
/// Jobs submitted on top of the queue for the rate, per round.
const MEASURED_JOBS: usize = 2_000;
/// Rounds of [`MEASURED_JOBS`]: a round lasts about 0.2 s, so one round's rate is at the
/// mercy of one durable commit or one scheduling hiccup; the table shows the median.
const ROUNDS: usize = 3;

/// One level's figures.
pub(crate) struct Level {
    queued: usize,
    fill: Duration,
    rate: f64,
    p99_ms: f64,
    rss: u64,
    peak_rss: u64,
    list_all: Duration,
    list_page: Duration,
    data_bytes: u64,
    restart: Duration,
    snapshot_build: Duration,
    snapshot_bytes: u64,
}

/// Measures each of `levels`.
pub(crate) async fn scale(levels: &[usize]) -> anyhow::Result<Vec<Level>> {
    let mut out = Vec::new();
    // Room for the jobs measured on top and the one that starts the snapshot.
    let most = ferry_protocol::limits::HARD_MAX_JOBS as usize - ROUNDS * MEASURED_JOBS - 1;
    for &level in levels {
        let queued = level.min(most);
        let mut node = Node::start(NodeOptions::queue_only()).await?;
        let client = node.client(Some(tokens::ADMIN))?;
        let targets = [client.clone()];
        let started = Instant::now();
        submit_run(&targets, queued, CLIENTS).await.context("filling the queue")?;
        let fill = started.elapsed();
        let mut rates = Vec::new();
        let mut latencies = Vec::new();
        for _ in 0..ROUNDS {
            let (elapsed, round) = submit_run(&targets, MEASURED_JOBS, CLIENTS).await?;
            rates.push(MEASURED_JOBS as f64 / elapsed.as_secs_f64());
            latencies.extend(round);
        }
        rates.sort_by(f64::total_cmp);
        let rate = rates[ROUNDS / 2];
        let p99_ms = crate::report::percentile_ms(&latencies, 0.99);
        let pid = node.pid()?;
        let (rss, peak_rss) = (memory(pid, "VmRSS:")?, memory(pid, "VmHWM:")?);
        let t = Instant::now();
        let all = client.list_jobs(true).await?;
        let list_all = t.elapsed();
        anyhow::ensure!(all.len() >= queued, "{} jobs listed of {queued}", all.len());
        let page_url = format!("{}/v1/jobs?all_users=true&limit=1000", node.url()?);
        let http = reqwest::Client::new();
        let t = Instant::now();
        let page = http.get(&page_url).bearer_auth(tokens::ADMIN).send().await?;
        anyhow::ensure!(page.status().is_success(), "page: {}", page.status());
        page.bytes().await?;
        let list_page = t.elapsed();
        let data_bytes = dir_size(&node.data_dir())?;
        node.stop().await?;
        let t = Instant::now();
        node.restart().await?;
        let back = node.client(Some(tokens::ADMIN))?;
        while back.health().await.map(|h| h.status != "ok").unwrap_or(true) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let restart = t.elapsed();
        let (snapshot_build, snapshot_bytes) = snapshot(&mut node).await?;
        eprintln!("  {queued} jobs: done");
        out.push(Level {
            queued,
            fill,
            rate,
            p99_ms,
            rss,
            peak_rss,
            list_all,
            list_page,
            data_bytes,
            restart,
            snapshot_build,
            snapshot_bytes,
        });
    }
    Ok(out)
}

/// Restarts `node` with a snapshot due after every entry and waits for the first build:
/// its time and size, as the node's metrics report them.
async fn snapshot(node: &mut Node) -> anyhow::Result<(Duration, u64)> {
    node.options.snapshot_after_entries = 1;
    node.restart().await?;
    let client = node.client(Some(tokens::ADMIN))?;
    client.create_job(&crate::submit::job_spec(usize::MAX)).await?;
    let url = format!("{}/metrics", node.url()?);
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = http.get(&url).bearer_auth(tokens::ADMIN).send().await?.text().await?;
        let count = sample(&text, "ferry_raft_snapshot_build_seconds_count").unwrap_or(0.0);
        if count >= 1.0 {
            let sum = sample(&text, "ferry_raft_snapshot_build_seconds_sum")
                .context("no ferry_raft_snapshot_build_seconds_sum in /metrics")?;
            let bytes = sample(&text, "ferry_raft_snapshot_size_bytes")
                .context("no ferry_raft_snapshot_size_bytes in /metrics")?;
            // Later entries may have built more: the mean of those built so far.
            return Ok((Duration::from_secs_f64(sum / count), bytes as u64));
        }
        anyhow::ensure!(Instant::now() < deadline, "no snapshot was built within 120 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of the unlabelled sample `name` in a Prometheus text exposition.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|value| value.trim().parse().ok())
}

/// A `Vm...:` line of `/proc/<pid>/status`, in bytes.
fn memory(pid: u32, field: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = text
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    Ok(kib * 1024)
}

/// Bytes of the files under `dir`.
fn dir_size(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() { dir_size(&entry.path())? } else { meta.len() };
    }
    Ok(total)
}

/// Prints the levels as a table, and the targets of issue 20 that they decide.
pub(crate) fn print_scale(levels: &[Level]) {
    const MIB: f64 = 1024.0 * 1024.0;
    println!(
        "\nferry-bench scale — one node, {CLIENTS} clients; jobs/s: the median of {ROUNDS} rounds of {MEASURED_JOBS} jobs on top of the queue"
    );
    println!(
        "{:>8}  {:>8}  {:>9}  {:>8}  {:>8}  {:>9}  {:>9}  {:>10}  {:>9}  {:>8}  {:>9}  {:>9}",
        "queued",
        "fill s",
        "jobs/s",
        "p99 ms",
        "RSS MiB",
        "peak MiB",
        "list all",
        "list 1000",
        "data MiB",
        "restart",
        "snap s",
        "snap MiB"
    );
    for l in levels {
        println!(
            "{:>8}  {:>8.1}  {:>9.0}  {:>8.1}  {:>8.0}  {:>9.0}  {:>8.0}ms  {:>8.0}ms  {:>9.1}  {:>7.2}s  {:>8.2}s  {:>9.1}",
            l.queued,
            l.fill.as_secs_f64(),
            l.rate,
            l.p99_ms,
            l.rss as f64 / MIB,
            l.peak_rss as f64 / MIB,
            l.list_all.as_secs_f64() * 1e3,
            l.list_page.as_secs_f64() * 1e3,
            l.data_bytes as f64 / MIB,
            l.restart.as_secs_f64(),
            l.snapshot_build.as_secs_f64(),
            l.snapshot_bytes as f64 / MIB,
        );
    }
    if let (Some(first), Some(last)) = (levels.first(), levels.last()) {
        let ratio = last.rate / first.rate;
        let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
        println!("\ntargets");
        println!(
            "  {}  submit rate at {} queued ≥ 0.8 × at {}      {ratio:.2} ×",
            verdict(ratio >= 0.8),
            last.queued,
            first.queued
        );
        println!(
            "  {}  restart with {} jobs ≤ 5 s                   {:.2} s",
            verdict(last.restart <= Duration::from_secs(5)),
            last.queued,
            last.restart.as_secs_f64()
        );
    }
}
