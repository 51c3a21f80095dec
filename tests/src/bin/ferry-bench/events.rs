//! `ferry-bench events`: how long a committed job event takes to reach subscribers of
//! the QUIC bus (`ferry-events/1`), with S subscribers spread round-robin over the
//! nodes of one cluster, for each S given.
//!
//! Each run opens a fresh set of S subscribers (admin token, all users, `JobCreated`
//! only, from now), waits until every one is connected, then creates N jobs with a few
//! concurrent clients spread over the nodes. For every (subscriber, job) pair the
//! latency is the [`Instant`] the subscriber received the job's `JobCreated` event
//! minus the [`Instant`] `create_job` returned, which is after the entry was committed
//! and applied on the node that took the request.
//!
//! Caveats:
//! - Both instants come from this one process's monotonic clock, so no clock skew, but
//!   the reference point is the HTTP reply's arrival, not the commit itself: a
//!   subscriber may receive the event before the creating client has read its reply.
//!   Such receipts count as 0 ms and are counted in the "before reply" column; the
//!   figures are thus a little low, by at most the reply's trip.
//! - Every subscriber, creator and node shares the machine: with many subscribers, the
//!   figures include this process's own work of decoding every delivery. The event's
//!   `time` (the leader's millisecond batch timestamp) is not used.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use ferry_coordinator::Client;
use ferry_coordinator::bus::{Transport, Watched, Watcher};
use ferry_protocol::JobId;
use ferry_protocol::NewFile;
use ferry_protocol::command::{NewJob, PropertyChanges};
use ferry_protocol::event::{Delivery, EventFilter, EventKind, StartAt};
use ferry_protocol::job::JobType;
use ferry_tests::{NodeOptions, tokens};
use reqwest::Url;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::report::percentile_ms as percentile;

/// Concurrent clients creating the jobs.
const CREATORS: usize = 4;
/// The longest one run may take, from the first subscriber to the last receipt.
const RUN_LIMIT: Duration = Duration::from_secs(120);
/// How long subscribers may take to connect.
const CONNECT_LIMIT: Duration = Duration::from_secs(60);
/// How long subscribers may still receive once every job is created.
const DRAIN_LIMIT: Duration = Duration::from_secs(15);

/// One run: its subscriber count and its figures, or why it failed.
pub(crate) struct Run {
    subscribers: usize,
    outcome: anyhow::Result<Figures>,
}

/// What one run measured.
struct Figures {
    /// Jobs created (and awaited by each subscriber).
    jobs: usize,
    /// Time taken to create them.
    creating: Duration,
    /// One per delivered (subscriber, job) pair, sorted: receipt − reply.
    latencies: Vec<Duration>,
    /// The same pairs, sorted: receipt − the create request's start (an upper bound:
    /// it includes the HTTP request, forwarding and the Raft commit).
    from_send: Vec<Duration>,
    /// Receipts before the creator's reply (counted as 0).
    before_reply: usize,
    /// (subscriber, job) pairs never delivered.
    missing: usize,
    /// Gaps announced to subscribers.
    gaps: u64,
    /// Reconnections after the first connection.
    reconnects: u64,
    /// Events delivered twice to the same subscriber (the first is kept).
    duplicates: u64,
    /// Subscribers that ended with an error.
    errors: Vec<String>,
}

/// What one subscriber received.
#[derive(Default)]
struct Received {
    /// When each of the run's jobs' `JobCreated` arrived (first time).
    times: HashMap<JobId, Instant>,
    gaps: u64,
    reconnects: u64,
    duplicates: u64,
    error: Option<String>,
}

fn job_spec(prefix: &str, i: usize) -> NewJob {
    NewJob {
        display_name: format!("{prefix}{i}"),
        job_type: JobType::Download,
        properties: PropertyChanges::default(),
        files: vec![NewFile {
            remote_url: format!("https://origin.example/events/{i}.bin"),
            local_path: format!("/tmp/tmp/srv/ferry/bench/events/{i}.bin"),
            ranges: vec![],
            sha256: None,
        }],
    }
}

/// One subscriber: connects at `url`, says so on `ready`, then records the arrival of
/// every `JobCreated` event of a job named `prefix…` until it has `want` of them or
/// `stop` is raised.
async fn subscriber(
    url: Url,
    prefix: String,
    want: usize,
    ready: mpsc::Sender<()>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Received> {
    let filter = EventFilter { jobs: vec![], kinds: vec![EventKind::JobCreated], all_users: true };
    let mut watcher = Watcher::new(url.clone(), tokens::ADMIN.into(), filter, StartAt::Now)
        .with_transport(Transport::Quic);
    match watcher.next().await.with_context(|| format!("subscribing at {url}"))? {
        Watched::Connected { .. } => {}
        Watched::Delivery(d) => bail!("{url}: a delivery before the connection: {d:?}"),
    }
    // The run waits for every subscriber; it cannot have gone away.
    let _ = ready.send(()).await;
    drop(ready);
    let mut got = Received::default();
    while got.times.len() < want {
        let next = tokio::select! {
            biased;
            next = watcher.next() => next,
            _ = stop.changed() => break,
        };
        let now = Instant::now();
        match next {
            Ok(Watched::Delivery(Delivery::Event(event))) => {
                let event = event.event;
                if event.kind == EventKind::JobCreated && event.display_name.starts_with(&prefix) {
                    match got.times.entry(event.job) {
                        Entry::Vacant(slot) => {
                            slot.insert(now);
                        }
                        Entry::Occupied(_) => got.duplicates += 1,
                    }
                }
            }
            Ok(Watched::Delivery(Delivery::Gap { .. })) => got.gaps += 1,
            Ok(Watched::Connected { .. }) => got.reconnects += 1,
            Err(e) => {
                got.error = Some(format!("{url}: {e}"));
                break;
            }
        }
    }
    Ok(got)
}

/// Creates `jobs` jobs named `prefix…` with [`CREATORS`] clients spread over `targets`,
/// `rate` per second in all (job `i` is sent no earlier than `i / rate` after the
/// start); returns when each create was sent and when it returned, by job.
async fn create(
    targets: &[Client],
    prefix: &str,
    jobs: usize,
    rate: f64,
) -> anyhow::Result<HashMap<JobId, (Instant, Instant)>> {
    let next = Arc::new(AtomicUsize::new(0));
    let start = tokio::time::Instant::now();
    let mut creators = JoinSet::new();
    for c in 0..CREATORS.min(jobs) {
        let (client, next, prefix) =
            (targets[c % targets.len()].clone(), next.clone(), prefix.to_owned());
        creators.spawn(async move {
            let mut acks = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= jobs {
                    return Ok::<_, anyhow::Error>(acks);
                }
                tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
                let sent = Instant::now();
                let info = client
                    .create_job(&job_spec(&prefix, i))
                    .await
                    .with_context(|| format!("creating job {i}"))?;
                acks.push((info.id, (sent, Instant::now())));
            }
        });
    }
    let mut commits = HashMap::with_capacity(jobs);
    while let Some(acks) = creators.join_next().await {
        commits.extend(acks??);
    }
    Ok(commits)
}

/// One run with `count` subscribers (run number `run`, which names its jobs).
async fn run(
    urls: &[Url],
    targets: &[Client],
    jobs: usize,
    rate: f64,
    count: usize,
    run: usize,
) -> anyhow::Result<Figures> {
    let prefix = format!("events-{run}-");
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::channel(count);
    // Dropping the set (on an error or the run's timeout) aborts every subscriber.
    let mut subscribers = JoinSet::new();
    for i in 0..count {
        subscribers.spawn(subscriber(
            urls[i % urls.len()].clone(),
            prefix.clone(),
            jobs,
            ready_tx.clone(),
            stop_rx.clone(),
        ));
    }
    drop(ready_tx);
    let connecting = async {
        for _ in 0..count {
            tokio::select! {
                ready = ready_rx.recv() => {
                    if ready.is_none() {
                        bail!("a subscriber ended before connecting");
                    }
                }
                Some(ended) = subscribers.join_next() => {
                    ended??;
                    bail!("a subscriber ended before connecting");
                }
            }
        }
        Ok(())
    };
    tokio::time::timeout(CONNECT_LIMIT, connecting).await.with_context(|| {
        format!("{count} subscribers did not connect within {CONNECT_LIMIT:?}")
    })??;

    // Warm up the creators' connections and the bus (subscribers skip these); not measured.
    create(targets, &format!("events-warm-{run}-"), (jobs / 20).clamp(CREATORS, 200), rate).await?;

    let started = Instant::now();
    let commits = create(targets, &prefix, jobs, rate).await?;
    let creating = started.elapsed();

    let mut received = Vec::with_capacity(count);
    let drained = tokio::time::timeout(DRAIN_LIMIT, async {
        while let Some(ended) = subscribers.join_next().await {
            received.push(ended);
        }
    })
    .await;
    if drained.is_err() {
        // Take what the laggards have.
        let _ = stop_tx.send(true);
        while let Some(ended) = subscribers.join_next().await {
            received.push(ended);
        }
    }

    let mut figures = Figures {
        jobs,
        creating,
        latencies: Vec::with_capacity(count * jobs),
        from_send: Vec::with_capacity(count * jobs),
        before_reply: 0,
        missing: 0,
        gaps: 0,
        reconnects: 0,
        duplicates: 0,
        errors: Vec::new(),
    };
    for ended in received {
        let got = ended??;
        figures.gaps += got.gaps;
        figures.reconnects += got.reconnects;
        figures.duplicates += got.duplicates;
        figures.errors.extend(got.error);
        let mut matched = 0;
        for (job, at) in &got.times {
            let Some(&(sent, acked)) = commits.get(job) else { continue };
            matched += 1;
            figures.from_send.push(at.saturating_duration_since(sent));
            figures.latencies.push(at.checked_duration_since(acked).unwrap_or_else(|| {
                figures.before_reply += 1;
                Duration::ZERO
            }));
        }
        figures.missing += jobs - matched;
    }
    figures.latencies.sort_unstable();
    figures.from_send.sort_unstable();
    Ok(figures)
}

/// One run per entry of `subscribers`, all on one fresh cluster of `nodes` nodes, each
/// awaiting `jobs` job creations.
pub(crate) async fn events(
    jobs: usize,
    rate: f64,
    subscribers: &[usize],
    nodes: usize,
) -> anyhow::Result<Vec<Run>> {
    let cluster = ferry_tests::start_cluster(NodeOptions::queue_only(), nodes).await?;
    // Creates go to the leader: its reply leaves right after the entry is committed and
    // applied there, so receipt − reply is close to commit → receipt (slightly under, by
    // the leader's apply and the reply's trip), also for subscribers on followers.
    let status = cluster[0].client(Some(tokens::ADMIN))?.cluster().await?;
    let leader_api = status
        .members
        .iter()
        .find(|m| Some(m.node_id) == status.leader)
        .map(|m| m.api_addr.clone())
        .context("no leader")?;
    let leader = cluster
        .iter()
        .find(|node| node.addr().is_ok_and(|a| a.to_string() == leader_api))
        .context("the leader is not one of the bench's nodes")?;
    let leader = leader.client(Some(tokens::ADMIN))?;
    let targets = vec![leader];
    let urls = cluster
        .iter()
        .map(|node| Ok(Url::parse(&node.url()?)?))
        .collect::<anyhow::Result<Vec<Url>>>()?;
    let mut runs = Vec::new();
    for (i, &count) in subscribers.iter().enumerate() {
        let outcome = tokio::time::timeout(RUN_LIMIT, run(&urls, &targets, jobs, rate, count, i))
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the run took longer than {RUN_LIMIT:?}")));
        match &outcome {
            Ok(_) => eprintln!("  {count} subscribers: done"),
            Err(e) => eprintln!("  {count} subscribers: FAILED: {e:#}"),
        }
        runs.push(Run { subscribers: count, outcome });
    }
    Ok(runs)
}

/// Prints the runs as a table, then anything unusual.
pub(crate) fn print_events(runs: &[Run], nodes: usize, rate: f64) {
    println!();
    println!(
        "ferry-bench events — one {nodes}-node cluster, subscribers spread over all nodes \
         (QUIC bus); {CREATORS} creators sending to the leader, {rate:.0} creates/s in all. \
         Per (subscriber, job): \"reply\" = receipt − the leader's HTTP reply (sent right \
         after commit and apply; 0 when the event came first) ≈ commit → receipt; \"send\" = \
         receipt − the create request's start (an upper bound: adds HTTP and the Raft commit)."
    );
    println!(
        "{:>11} {:>10} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>14}",
        "subscribers",
        "delivered",
        "jobs/s",
        "reply p50",
        "reply p99",
        "send p50",
        "send p99",
        "send p999",
        "send max",
        "before reply"
    );
    let mut notes = Vec::new();
    for r in runs {
        let f = match &r.outcome {
            Ok(f) => f,
            Err(e) => {
                println!("{:>11} FAILED: {e:#}", r.subscribers);
                continue;
            }
        };
        println!(
            "{:>11} {:>10} {:>8.0} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>14}",
            r.subscribers,
            f.latencies.len(),
            f.jobs as f64 / f.creating.as_secs_f64(),
            percentile(&f.latencies, 0.50),
            percentile(&f.latencies, 0.99),
            percentile(&f.from_send, 0.50),
            percentile(&f.from_send, 0.99),
            percentile(&f.from_send, 0.999),
            percentile(&f.from_send, 1.0),
            format!(
                "{} ({:.0}%)",
                f.before_reply,
                100.0 * f.before_reply as f64 / f.latencies.len().max(1) as f64
            ),
        );
        let mut odd = Vec::new();
        if f.missing > 0 {
            odd.push(format!("{} of {} deliveries missing", f.missing, r.subscribers * f.jobs));
        }
        if f.gaps > 0 {
            odd.push(format!("{} gaps", f.gaps));
        }
        if f.reconnects > 0 {
            odd.push(format!("{} reconnections", f.reconnects));
        }
        if f.duplicates > 0 {
            odd.push(format!("{} duplicate deliveries", f.duplicates));
        }
        if let Some(first) = f.errors.first() {
            odd.push(format!("{} subscriber errors, first: {first}", f.errors.len()));
        }
        if !odd.is_empty() {
            notes.push(format!("{} subscribers: {}", r.subscribers, odd.join("; ")));
        }
    }
    for note in notes {
        println!("  note — {note}");
    }
}
