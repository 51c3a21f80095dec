//! A short nemesis run (the CI size; `FERRY_NEMESIS_FAULTS=N` for longer ones, see
//! `scripts/nemesis.sh`): three nodes on loopback, clients creating, cancelling and
//! reading jobs through random nodes with Idempotency-Keys and recording every
//! operation (invoke, result, time), while faults are scheduled at random: kill -9 of
//! the leader or of a follower, SIGSTOP of the leader, symmetric and one-way partitions
//! of the leader. Then the checkers run on the whole history:
//! - every acknowledged create is there, each key's job exactly once (the writes whose
//!   outcome a client did not learn are retried with their key, as a client does);
//! - every acknowledged cancel left its job cancelled;
//! - per job, the reads are linearizable with the cancels (a job's state is a register
//!   that moves once, SUSPENDED to CANCELLED): no read that began after a cancel was
//!   acknowledged sees it uncancelled, none that ended before the cancel began sees it
//!   cancelled, and none sees it uncancelled after an earlier read saw it cancelled.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_protocol::api::JobInfo;
use ferry_protocol::{JobId, JobState, JobType};
use ferry_tests::{Node, NodeOptions, Partition, tokens};

use crate::support::{Rng, new_job};
use tokio::time::Instant;

/// What an operation was.
#[derive(Clone, Debug)]
enum Call {
    Create { key: String },
    Cancel { job: JobId, key: String },
    Read { job: JobId },
}

/// How it ended, as its client saw it.
#[derive(Clone, Debug, PartialEq)]
enum Seen {
    /// Created with this id / cancelled / read in this state.
    Created(JobId),
    Cancelled,
    Read(JobState),
    /// Refused with a reason, or the connection broke: the outcome is unknown.
    Unknown,
    /// Never sent (the node was down): no effect.
    NotSent,
}

#[derive(Clone, Debug)]
struct Op {
    call: Call,
    invoked: Instant,
    completed: Instant,
    seen: Seen,
}

/// Every operation of every client.
#[derive(Default)]
struct History {
    ops: Mutex<Vec<Op>>,
}

impl History {
    fn record(&self, op: Op) {
        self.ops.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(op);
    }

    fn all(&self) -> Vec<Op> {
        self.ops.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn acknowledged_creates(&self) -> usize {
        self.all().iter().filter(|op| matches!(op.seen, Seen::Created(_))).count()
    }
}

/// The API base URL of each node (fixed: a restart keeps its ports).
type Urls = Arc<Vec<String>>;

async fn classify(
    sent: Result<reqwest::Response, reqwest::Error>,
) -> (Option<u16>, Option<JobInfo>) {
    match sent {
        Err(e) if e.is_connect() => (None, None),
        Err(_) => (Some(0), None),
        Ok(answer) => {
            let status = answer.status().as_u16();
            let info = if answer.status().is_success() {
                answer.json::<JobInfo>().await.ok()
            } else {
                None
            };
            (Some(status), info)
        }
    }
}

/// Creates alice's job named `key` at the node at `url`, with `key` as its
/// Idempotency-Key.
async fn create(
    http: &reqwest::Client,
    url: &str,
    key: &str,
) -> Result<reqwest::Response, reqwest::Error> {
    http.post(format!("{url}/v1/jobs"))
        .bearer_auth(tokens::ALICE)
        .header("Idempotency-Key", key)
        .json(&new_job(key, JobType::Download, vec![]))
        .send()
        .await
}

/// Cancels `job` at the node at `url`, with `key` as the Idempotency-Key.
async fn cancel(
    http: &reqwest::Client,
    url: &str,
    job: JobId,
    key: &str,
) -> Result<reqwest::Response, reqwest::Error> {
    http.post(format!("{url}/v1/jobs/{job}/cancel"))
        .bearer_auth(tokens::ALICE)
        .header("Idempotency-Key", key)
        .send()
        .await
}

/// One client: creates, cancels and reads its own jobs through random nodes until
/// `stop`.
async fn client(
    me: usize,
    urls: Urls,
    history: Arc<History>,
    stop: Arc<AtomicBool>,
    mut rng: Rng,
) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(15))
        .pool_max_idle_per_host(0)
        .build()?;
    let mut mine: Vec<(JobId, bool)> = Vec::new();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let url = &urls[rng.below(urls.len() as u64) as usize];
        let choice = rng.below(4);
        let invoked = Instant::now();
        let (call, seen) = if choice < 2 || mine.is_empty() {
            let key = format!("c{me}-{n}");
            let seen = match classify(create(&http, url, &key).await).await {
                (None, _) => Seen::NotSent,
                (Some(201), Some(info)) => {
                    mine.push((info.id, false));
                    Seen::Created(info.id)
                }
                _ => Seen::Unknown,
            };
            (Call::Create { key }, seen)
        } else if choice == 2 {
            let pick = rng.below(mine.len() as u64) as usize;
            let (job, asked) = mine[pick];
            if asked {
                continue;
            }
            mine[pick].1 = true;
            let key = format!("x{me}-{n}");
            let seen = match cancel(&http, url, job, &key).await {
                Err(e) if e.is_connect() => {
                    mine[pick].1 = false;
                    Seen::NotSent
                }
                Ok(answer) if answer.status().is_success() => Seen::Cancelled,
                _ => Seen::Unknown,
            };
            (Call::Cancel { job, key }, seen)
        } else {
            let job = mine[rng.below(mine.len() as u64) as usize].0;
            let sent =
                http.get(format!("{url}/v1/jobs/{job}")).bearer_auth(tokens::ALICE).send().await;
            let seen = match classify(sent).await {
                (Some(200), Some(info)) => Seen::Read(info.state),
                (None, _) => Seen::NotSent,
                _ => Seen::Unknown,
            };
            (Call::Read { job }, seen)
        };
        history.record(Op { call, invoked, completed: Instant::now(), seen });
        if n % 20 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(())
}

/// The faults a run draws from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillLeader,
    KillFollower,
    PauseLeader,
    PartitionLeader,
    OneWayFromLeader,
}

/// The index of the leader among `nodes`, asked of any that answers.
async fn leader(nodes: &[Node]) -> Option<usize> {
    for node in nodes {
        let Ok(client) = node.client(Some(tokens::ADMIN)) else { continue };
        if let Ok(status) = client.cluster().await
            && let Some(leader) = status.leader
        {
            return usize::try_from(leader).ok().map(|l| l - 1);
        }
    }
    None
}

fn ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, u8::try_from(i + 1).unwrap_or(1))
}

/// Injects `fault` and heals it.
async fn inject(nodes: &mut [Node], fault: Fault, rng: &mut Rng) -> anyhow::Result<()> {
    let Some(lead) = leader(nodes).await else {
        tokio::time::sleep(Duration::from_secs(1)).await;
        return Ok(());
    };
    let others: Vec<Ipv4Addr> = (0..nodes.len()).filter(|i| *i != lead).map(ip).collect();
    match fault {
        Fault::KillLeader => {
            nodes[lead].kill9().await?;
            tokio::time::sleep(Duration::from_millis(500 + rng.below(1500))).await;
            nodes[lead].restart().await?;
        }
        Fault::KillFollower => {
            let follower = (lead + 1 + rng.below(2) as usize) % nodes.len();
            nodes[follower].kill9().await?;
            tokio::time::sleep(Duration::from_millis(500 + rng.below(1500))).await;
            nodes[follower].restart().await?;
        }
        Fault::PauseLeader => {
            nodes[lead].signal("STOP")?;
            tokio::time::sleep(Duration::from_millis(1000 + rng.below(2000))).await;
            nodes[lead].signal("CONT")?;
        }
        Fault::PartitionLeader => {
            let cut = Partition::isolate(ip(lead), &others)?;
            tokio::time::sleep(Duration::from_millis(1500 + rng.below(2000))).await;
            drop(cut);
        }
        Fault::OneWayFromLeader => {
            let cut = Partition::one_way(ip(lead), &others)?;
            tokio::time::sleep(Duration::from_millis(1500 + rng.below(2000))).await;
            drop(cut);
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_nemesis_run_keeps_every_guarantee() -> anyhow::Result<()> {
    let faults: usize =
        std::env::var("FERRY_NEMESIS_FAULTS").ok().and_then(|f| f.parse().ok()).unwrap_or(8);
    let seed = std::env::var("FERRY_NEMESIS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    println!("nemesis seed {seed} (FERRY_NEMESIS_SEED replays the schedule)");
    let mut rng = Rng(seed);
    let partitions = Partition::available();
    let policy = ferry_protocol::limits::QueuePolicy {
        max_jobs_per_user: 100_000,
        max_jobs: 100_000,
        ..Default::default()
    };
    let mut nodes =
        ferry_tests::start_cluster(NodeOptions { policy, ..NodeOptions::queue_only() }, 3).await?;
    let urls: Urls = Arc::new(nodes.iter().map(Node::url).collect::<anyhow::Result<_>>()?);
    let history = Arc::new(History::default());
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..3)
        .map(|me| {
            let client_rng = Rng(rng.next() | 1);
            tokio::spawn(client(me, urls.clone(), history.clone(), stop.clone(), client_rng))
        })
        .collect();
    // Enough traffic before the first fault, or the run proves nothing.
    let warmup = Instant::now();
    while history.acknowledged_creates() < 30 {
        anyhow::ensure!(
            warmup.elapsed() < Duration::from_secs(30),
            "too little traffic before the first fault"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut kinds = vec![Fault::KillLeader, Fault::KillFollower, Fault::PauseLeader];
    if partitions {
        kinds.extend([Fault::PartitionLeader, Fault::OneWayFromLeader]);
    } else {
        println!("partitions skipped: iptables is not usable here");
    }
    let mut injected: BTreeMap<Fault, usize> = BTreeMap::new();
    for _ in 0..faults {
        let fault = kinds[rng.below(kinds.len() as u64) as usize];
        inject(&mut nodes, fault, &mut rng).await?;
        *injected.entry(fault).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(500 + rng.below(1000))).await;
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await??;
    }
    // Healed: wait until the members agree, then settle what clients did not learn.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut all = Vec::new();
        for node in &nodes {
            if let Ok(status) = node.client(Some(tokens::ADMIN))?.cluster().await {
                all.push(status);
            }
        }
        if all.len() == nodes.len() && ferry_tests::agree(&all, 3) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the members never agreed again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ops = history.all();
    let verdict = check(&nodes, &ops).await?;
    println!(
        "nemesis: {} operations ({} acknowledged creates, {} acknowledged cancels, {} reads, {} unknown outcomes retried) under {injected:?}; {verdict}",
        ops.len(),
        ops.iter().filter(|o| matches!(o.seen, Seen::Created(_))).count(),
        ops.iter().filter(|o| matches!(o.seen, Seen::Cancelled)).count(),
        ops.iter().filter(|o| matches!(o.seen, Seen::Read(_))).count(),
        ops.iter()
            .filter(|o| o.seen == Seen::Unknown && !matches!(o.call, Call::Read { .. }))
            .count(),
    );
    Ok(())
}

/// Runs the checkers; returns a one-line verdict or the first violation.
async fn check(nodes: &[Node], ops: &[Op]) -> anyhow::Result<String> {
    let http = crate::support::raw();
    let url = nodes[0].url()?;
    // Creates and cancels whose outcome is unknown: retried with their keys.
    let mut created: HashMap<String, JobId> = HashMap::new();
    for op in ops {
        match (&op.call, &op.seen) {
            (Call::Create { key }, Seen::Created(id)) => {
                created.insert(key.clone(), *id);
            }
            (Call::Create { key }, Seen::Unknown) => {
                let answer = create(&http, &url, key).await?;
                anyhow::ensure!(
                    answer.status().is_success(),
                    "retrying {key}: {}",
                    answer.status()
                );
                created.insert(key.clone(), answer.json::<JobInfo>().await?.id);
            }
            (Call::Cancel { job, key }, Seen::Unknown) => {
                let answer = cancel(&http, &url, *job, key).await?;
                anyhow::ensure!(
                    answer.status().is_success(),
                    "retrying {key}: {}",
                    answer.status()
                );
            }
            _ => {}
        }
    }
    // No acknowledged create lost (each read back by id: cancelled jobs are final and
    // leave the listing), and no job beyond one per key among the unfinished ones.
    let admin = nodes[0].client(Some(tokens::ADMIN))?;
    let mut by_id: HashMap<JobId, JobInfo> = HashMap::new();
    for (key, id) in &created {
        let job = admin.job(*id).await.map_err(|e| anyhow::anyhow!("the job of {key}: {e}"))?;
        anyhow::ensure!(&job.display_name == key, "job {id} is not {key}'s");
        by_id.insert(*id, job);
    }
    let unfinished = admin.list_jobs(true).await?;
    if let Some(extra) = unfinished.iter().find(|j| !by_id.contains_key(&j.id)) {
        anyhow::bail!("job {} ({}) was made by no acknowledged key", extra.id, extra.display_name);
    }
    let jobs: Vec<&JobInfo> = by_id.values().collect();
    // Every acknowledged cancel took effect.
    for op in ops {
        if let (Call::Cancel { job, .. }, Seen::Cancelled) = (&op.call, &op.seen) {
            let state = by_id.get(job).map(|j| j.state);
            anyhow::ensure!(
                state == Some(JobState::Cancelled),
                "job {job} cancelled, now {state:?}"
            );
        }
    }
    // Per job: reads linearizable with the (one) cancel.
    let by_id: HashMap<JobId, &JobInfo> = by_id.iter().map(|(id, job)| (*id, job)).collect();
    let mut reads = 0;
    let mut per_job: HashMap<JobId, Vec<&Op>> = HashMap::new();
    for op in ops {
        let job = match &op.call {
            Call::Cancel { job, .. } | Call::Read { job } => *job,
            Call::Create { .. } => continue,
        };
        per_job.entry(job).or_default().push(op);
    }
    for (job, ops) in &per_job {
        let cancel =
            ops.iter().find(|o| matches!(o.call, Call::Cancel { .. }) && o.seen != Seen::NotSent);
        let final_cancelled = by_id.get(job).is_some_and(|j| j.state == JobState::Cancelled);
        for read in ops.iter().filter(|o| matches!(o.seen, Seen::Read(_))) {
            reads += 1;
            let Seen::Read(state) = read.seen else { continue };
            let saw_cancelled = state == JobState::Cancelled;
            match cancel {
                None => {
                    anyhow::ensure!(!saw_cancelled, "job {job} read cancelled, never cancelled")
                }
                Some(cancel) => {
                    if cancel.seen == Seen::Cancelled && read.invoked > cancel.completed {
                        anyhow::ensure!(
                            saw_cancelled,
                            "job {job}: a read after the acknowledged cancel saw {state:?}"
                        );
                    }
                    if read.completed < cancel.invoked {
                        anyhow::ensure!(
                            !saw_cancelled,
                            "job {job}: a read before the cancel saw it cancelled"
                        );
                    }
                    if saw_cancelled {
                        anyhow::ensure!(
                            final_cancelled,
                            "job {job}: read cancelled, not cancelled in the end"
                        );
                    }
                }
            }
        }
        // Monotonic: once a read saw it cancelled, no later read sees it uncancelled.
        let first_cancelled_end = ops
            .iter()
            .filter(|o| o.seen == Seen::Read(JobState::Cancelled))
            .map(|o| o.completed)
            .min();
        if let Some(seen_at) = first_cancelled_end {
            for read in ops.iter().filter(|o| matches!(o.seen, Seen::Read(_))) {
                if read.invoked > seen_at {
                    anyhow::ensure!(
                        read.seen == Seen::Read(JobState::Cancelled),
                        "job {job}: uncancelled again after a read saw it cancelled"
                    );
                }
            }
        }
    }
    Ok(format!("0 violations ({} keys, {} jobs, {reads} reads checked)", created.len(), jobs.len()))
}
