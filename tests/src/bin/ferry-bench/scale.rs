//! `ferry-bench scale`: how a node's costs grow with its queue. For each level (1k,
//! 10k, 100k jobs by default) a fresh node is filled with that many jobs (one file
//! each, the `submit` bench's mix) by 64 clients, then measured: the submit rate and
//! p99 latency of more jobs on top, the node's resident memory (now and peak), the
//! latency of listing every job and of a 1,000-job page, the data directory's size,
//! and the time a restart takes to serve again. A level is capped so that the jobs
//! measured on top still fit under the cluster's hard limit (`HARD_MAX_JOBS`, 100,000):
//! the table shows the jobs actually queued.
//!
//! Not measured yet: a snapshot's build time (it happens inside the node, on its own
//! schedule; its size shows in the data directory).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ferry_tests::{Node, NodeOptions, tokens};

use crate::submit::submit_run;

/// Clients that fill the queue and submit on top.
const CLIENTS: usize = 64;
/// Jobs submitted on top of the queue for the rate.
const MEASURED_JOBS: usize = 2_000;

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
}

/// Measures each of `levels`.
pub(crate) async fn scale(levels: &[usize]) -> anyhow::Result<Vec<Level>> {
    let mut out = Vec::new();
    let most = ferry_protocol::limits::HARD_MAX_JOBS as usize - MEASURED_JOBS;
    for &level in levels {
        let queued = level.min(most);
        let mut node = Node::start(NodeOptions::queue_only()).await?;
        let client = node.client(Some(tokens::ADMIN))?;
        let targets = [client.clone()];
        let started = Instant::now();
        submit_run(&targets, queued, CLIENTS).await.context("filling the queue")?;
        let fill = started.elapsed();
        let (elapsed, latencies) = submit_run(&targets, MEASURED_JOBS, CLIENTS).await?;
        let rate = MEASURED_JOBS as f64 / elapsed.as_secs_f64();
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
        });
    }
    Ok(out)
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
        "\nferry-bench scale — one node, {CLIENTS} clients, {MEASURED_JOBS} jobs measured on top of the queue"
    );
    println!(
        "{:>8}  {:>8}  {:>9}  {:>8}  {:>8}  {:>9}  {:>9}  {:>10}  {:>9}  {:>8}",
        "queued",
        "fill s",
        "jobs/s",
        "p99 ms",
        "RSS MiB",
        "peak MiB",
        "list all",
        "list 1000",
        "data MiB",
        "restart"
    );
    for l in levels {
        println!(
            "{:>8}  {:>8.1}  {:>9.0}  {:>8.1}  {:>8.0}  {:>9.0}  {:>8.0}ms  {:>8.0}ms  {:>9.1}  {:>7.2}s",
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
