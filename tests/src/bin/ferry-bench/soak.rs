//! `ferry-bench soak`: a cluster under steady traffic for N minutes, with a random
//! fault every 60-120 s, printing per interval the memory and open files of each node,
//! the jobs created per second and the checkers' verdict on that interval's history.
//!
//! The clients keep a bounded number of live jobs (they cancel their oldest), so the
//! queue is in a steady state once the retention caps are full (10,000 finished jobs
//! and 10,000 remembered request ids per principal). A warm-up fills them before the
//! clock starts (at the soak's pace they would fill only after minute 10): memory that
//! still grows after that is a leak. Node 1 is never restarted (faults that would
//! restart it hit another node), so its figures cover the whole run; the growth line
//! compares its minute 10 with the end.

use std::time::Duration;

use ferry_tests::Rng;
use ferry_tests::nemesis::{
    Cluster, EventStream, Ledger, Nemesis, Seen, Setup, Traffic, TrafficConfig, cancel, check,
    create,
};
use tokio::time::Instant;

/// What to run.
pub(crate) struct Options {
    pub(crate) minutes: u64,
    pub(crate) nodes: usize,
    pub(crate) interval: Duration,
    pub(crate) seed: Option<u64>,
    pub(crate) first_ip: u8,
}

/// One interval's figures.
struct Row {
    minute: f64,
    rss_kib: Vec<u64>,
    fds: Vec<usize>,
    jobs_per_sec: f64,
    ops: usize,
    faults: usize,
    verdict: String,
}

/// Resident memory (KiB) and open files of process `pid`, from /proc.
fn usage(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
    (rss, fds)
}

pub(crate) async fn soak(options: &Options) -> anyhow::Result<()> {
    let seed = options.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1
    });
    println!("soak: {} minutes, {} nodes, seed {seed}", options.minutes, options.nodes);
    let mut rng = Rng(seed);
    // On 127.0.0.121 up by default, so that a nemesis run (127.0.0.101 up) can go on
    // beside it.
    let setup = Setup {
        nodes: options.nodes,
        disk_mib: Some(512),
        lose_unsynced: false,
        transfers: false,
        first_ip: options.first_ip,
    };
    let mut cluster = Cluster::start(&setup).await?;
    let (jobs, took) = warm_up(&cluster).await?;
    println!(
        "warm-up: {jobs} jobs created and cancelled with Idempotency-Keys in {:.0} s (the \
         retention caps are full)",
        took.as_secs_f64()
    );
    let events = EventStream::start(&cluster)?;
    let config = TrafficConfig { live: 200, pace: Duration::from_millis(40), ..Default::default() };
    let traffic = Traffic::start(cluster.urls.clone(), &config, &mut rng);
    let mut nemesis = Nemesis::new(Rng(rng.next() | 1), &cluster).sparing(0);
    let mut ledger = Ledger::default();
    let started = Instant::now();
    let end = started + Duration::from_secs(options.minutes * 60);
    let mut next_fault = started + rng.millis(60_000, 120_000);
    let mut next_row = started + options.interval;
    let mut rows: Vec<Row> = Vec::new();
    print_header(options.nodes);
    while Instant::now() < end {
        if Instant::now() >= next_fault {
            let fault = nemesis.strike(&mut cluster).await?;
            println!("  {:>6.1} min: {fault:?}", started.elapsed().as_secs_f64() / 60.0);
            next_fault = Instant::now() + rng.millis(60_000, 120_000);
        }
        if Instant::now() >= next_row {
            let window = traffic.history.take();
            let created: Vec<_> = window
                .iter()
                .filter_map(|o| if let Seen::Created(id) = o.seen { Some(id) } else { None })
                .collect();
            let verdict = match check(&cluster, &window, &mut ledger).await {
                Ok(verdict) => match events.check(&cluster, &created).await {
                    Ok(n) => {
                        format!("ok: {} keys, {} reads, {n} events", verdict.keys, verdict.reads)
                    }
                    Err(e) => format!("VIOLATION: {e}"),
                },
                Err(e) => format!("VIOLATION: {e}"),
            };
            let (rss_kib, fds) =
                cluster.nodes.iter().map(|n| n.pid().map_or((0, 0), usage)).unzip();
            let row = Row {
                minute: started.elapsed().as_secs_f64() / 60.0,
                rss_kib,
                fds,
                jobs_per_sec: created.len() as f64 / options.interval.as_secs_f64(),
                ops: window.len(),
                faults: nemesis.injected.values().sum(),
                verdict,
            };
            print_row(&row);
            rows.push(row);
            next_row += options.interval;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let history = traffic.stop().await?;
    drop(history);
    print_summary(&rows, &nemesis);
    anyhow::ensure!(
        rows.iter().all(|r| r.verdict.starts_with("ok")),
        "a checker found a violation (see the table)"
    );
    Ok(())
}

/// Fills the retention caps before the clock starts: as many jobs as the queue keeps
/// finished, each created and cancelled with keys (twice as many remembered requests as
/// a principal keeps), by 16 writers spread over the nodes. The number of jobs and how
/// long it took.
async fn warm_up(cluster: &Cluster) -> anyhow::Result<(usize, Duration)> {
    const WRITERS: usize = 16;
    let jobs = ferry_protocol::queue::MAX_RETAINED_FINAL_JOBS;
    let http = reqwest::Client::builder().no_proxy().build()?;
    let started = Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..WRITERS {
        let (http, urls) = (http.clone(), cluster.urls.all());
        writers.spawn(async move {
            for i in (writer..jobs).step_by(WRITERS) {
                let url = &urls[i % urls.len()];
                let made = create(&http, url, &format!("w{i}")).send().await?;
                let job: ferry_protocol::api::JobInfo = made.error_for_status()?.json().await?;
                cancel(&http, url, job.id, &format!("wx{i}")).send().await?.error_for_status()?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = writers.join_next().await {
        done??;
    }
    Ok((jobs, started.elapsed()))
}

fn print_header(nodes: usize) {
    let rss: Vec<String> = (1..=nodes).map(|i| format!("rss{i} MiB")).collect();
    let fds: Vec<String> = (1..=nodes).map(|i| format!("fds{i}")).collect();
    println!(
        "{:>7} | {} | {} | {:>7} | {:>6} | {:>6} | verdict",
        "minute",
        rss.join(" "),
        fds.join(" "),
        "jobs/s",
        "ops",
        "faults"
    );
}

fn print_row(row: &Row) {
    let rss: Vec<String> =
        row.rss_kib.iter().map(|k| format!("{:>8.1}", *k as f64 / 1024.0)).collect();
    let fds: Vec<String> = row.fds.iter().map(|f| format!("{f:>4}")).collect();
    println!(
        "{:>7.1} | {} | {} | {:>7.1} | {:>6} | {:>6} | {}",
        row.minute,
        rss.join(" "),
        fds.join(" "),
        row.jobs_per_sec,
        row.ops,
        row.faults,
        row.verdict
    );
}

/// Node 1's growth from the row nearest minute 10 to the last row.
fn print_summary(rows: &[Row], nemesis: &Nemesis) {
    println!("faults: {:?}; {:?}", nemesis.injected, nemesis.outcomes);
    let Some(last) = rows.last() else { return };
    let Some(base) =
        rows.iter().min_by(|a, b| (a.minute - 10.0).abs().total_cmp(&(b.minute - 10.0).abs()))
    else {
        return;
    };
    let growth = |from: f64, to: f64| if from > 0.0 { (to - from) / from * 100.0 } else { 0.0 };
    println!(
        "node 1 (never restarted) from minute {:.1} to {:.1}: RSS {:.1} -> {:.1} MiB ({:+.1} %), open files {} -> {} ({:+.1} %)",
        base.minute,
        last.minute,
        base.rss_kib[0] as f64 / 1024.0,
        last.rss_kib[0] as f64 / 1024.0,
        growth(base.rss_kib[0] as f64, last.rss_kib[0] as f64),
        base.fds[0],
        last.fds[0],
        growth(base.fds[0] as f64, last.fds[0] as f64),
    );
}
