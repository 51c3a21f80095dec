//! Damaged storage: a node whose database files were corrupted while it was down either
//! refuses to start with a message naming the file (never a panic), or starts and serves
//! exactly the leader's state.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ferry_protocol::api::{JobInfo, Problem};
use ferry_protocol::{JobState, JobType, NewJob};
use ferry_tests::{NodeOptions, tokens};

use crate::support::{Rng, failpoint_rounds, new_job, wait_for};

/// Corruptions of a stopped follower's files (alternating between the two databases).
const ROUNDS: u64 = 50;

/// Flips 1-16 random bytes of `bytes`: in a run of one region, or scattered.
fn corrupt(rng: &mut Rng, bytes: &mut [u8]) -> Vec<usize> {
    let len = bytes.len() as u64;
    let count = 1 + rng.below(16);
    let scattered = rng.below(2) == 0;
    let start = rng.below(len);
    (0..count)
        .map(|i| {
            let at = if scattered { rng.below(len) } else { (start + i).min(len - 1) };
            let at = usize::try_from(at).unwrap_or(0);
            bytes[at] ^= u8::try_from(1 + rng.below(255)).unwrap_or(1);
            at
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_databases_are_refused_or_serve_the_leaders_state() -> anyhow::Result<()> {
    let mut nodes = ferry_tests::start_cluster(NodeOptions::queue_only(), 3).await?;
    let admin = nodes[0].client(Some(tokens::ADMIN))?;
    let leader = admin.cluster().await?.leader.ok_or_else(|| anyhow::anyhow!("no leader"))?;
    let alice = nodes[0].client(Some(tokens::ALICE))?;
    for i in 0..40 {
        alice.create_job(&new_job(&format!("job {i}"), JobType::Download, vec![])).await?;
    }
    let expected = admin.list_jobs(true).await?;
    // The victim: a follower, so the cluster keeps its leader and quorum throughout.
    let victim = (0..3).find(|i| *i as u64 + 1 != leader).unwrap_or(2);
    let seed = std::env::var("FERRY_CORRUPTION_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_f00d_u64);
    println!("seed {seed:#x} (FERRY_CORRUPTION_SEED replays it)");
    let mut rng = Rng(seed);
    let (mut refused, mut served) = (0, 0);
    nodes[victim].stop().await?;
    for round in 0..ROUNDS {
        let name = if round % 2 == 0 { "state.redb" } else { "raft-log.redb" };
        let path = nodes[victim].data_dir().join(name);
        let intact = std::fs::read(&path)?;
        let mut bytes = intact.clone();
        let flipped = corrupt(&mut rng, &mut bytes);
        std::fs::write(&path, &bytes)?;
        let started = nodes[victim].restart().await;
        let log = std::fs::read_to_string(nodes[victim].log_path())?;
        anyhow::ensure!(
            !log.contains("panicked"),
            "round {round} ({name} {flipped:?}): a panic\n{log}"
        );
        match started {
            Err(e) => {
                let said = format!("{e:#}");
                anyhow::ensure!(
                    said.contains(&format!("{name} cannot be trusted")),
                    "round {round} ({name} {flipped:?}): an unclear refusal: {said}"
                );
                refused += 1;
                // The operator restores the file (here: the copy from before the damage).
                std::fs::write(&path, &intact)?;
            }
            Ok(()) => {
                // It serves: exactly the leader's jobs (a read through its own state).
                let client = nodes[victim].client(Some(tokens::ADMIN))?;
                let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
                loop {
                    match client.list_jobs(true).await {
                        Ok(jobs) if jobs == expected => break,
                        other => anyhow::ensure!(
                            tokio::time::Instant::now() < deadline,
                            "round {round} ({name} {flipped:?}): serves other state: {:?}",
                            other.map(|j| j.len())
                        ),
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                served += 1;
                nodes[victim].stop().await?;
            }
        }
        // The log of each round is its own.
        std::fs::write(nodes[victim].log_path(), b"")?;
    }
    println!(
        "{ROUNDS} corruptions: {refused} refused with a clear message, {served} served the leader's state, 0 panics"
    );
    Ok(())
}

/// One write's outcome as its client saw it.
enum Outcome {
    Acknowledged(ferry_protocol::JobId),
    /// Refused with a reason; whether it was recorded is not known: retried later.
    Refused503,
    /// The connection broke without an answer (a connection the stopping node never
    /// read from, or a crash): unknown, retried later with the same key.
    Unanswered,
    /// Never reached the node (it had exited): not in flight.
    NotConnected,
}

/// What keyed writers saw until their node went away.
#[derive(Default)]
struct History {
    acked: Vec<ferry_protocol::JobId>,
    /// (writer, sequence) of writes whose outcome is unknown.
    unknown: Vec<(usize, usize)>,
    refused: usize,
    unanswered: usize,
    slowest: Duration,
}

/// Write `i` of writer `w`: a job with a name of its own.
fn keyed_job(w: usize, i: usize) -> NewJob {
    new_job(&format!("writer {w} job {i} {}", "x".repeat(200)), JobType::Download, vec![])
}

/// Sends write `i` of writer `w` to `url` as plain HTTP (no client retries) with its
/// own Idempotency-Key.
async fn keyed_write(
    http: &reqwest::Client,
    url: &str,
    w: usize,
    i: usize,
) -> Result<reqwest::Response, reqwest::Error> {
    http.post(url)
        .bearer_auth(tokens::ALICE)
        .header("Idempotency-Key", format!("w{w}-{i}"))
        .json(&keyed_job(w, i))
        .send()
        .await
}

/// One write: (writer, sequence, how long it took, how it ended).
type Attempt = (usize, usize, Duration, Outcome);

/// Keyed writers at work (see [`Writers::start`]).
struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<Vec<Attempt>>>>,
}

impl Writers {
    /// `writers` writers create jobs at `node` (at most `most` each) until it stops
    /// accepting connections or [`Writers::finish`]; every answer is judged.
    fn start(node: &ferry_tests::Node, writers: usize, most: usize) -> anyhow::Result<Self> {
        let url = format!("{}/v1/jobs", node.url()?);
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for w in 0..writers {
            let (http, url) = (crate::support::raw(), url.clone());
            let (stop, acked) = (stop.clone(), acked.clone());
            tasks.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                for i in 0..most {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let started = tokio::time::Instant::now();
                    let outcome = match keyed_write(&http, &url, w, i).await {
                        Ok(answer) if answer.status() == 201 => {
                            acked.fetch_add(1, Ordering::Relaxed);
                            Outcome::Acknowledged(answer.json::<JobInfo>().await?.id)
                        }
                        Ok(answer) if answer.status() == 503 => {
                            let problem: Problem = answer.json().await?;
                            anyhow::ensure!(!problem.detail.is_empty(), "a 503 without a reason");
                            Outcome::Refused503
                        }
                        Ok(answer) => anyhow::bail!("writer {w}: answered {}", answer.status()),
                        Err(e) if e.is_connect() => Outcome::NotConnected,
                        Err(_) => Outcome::Unanswered,
                    };
                    let down = matches!(outcome, Outcome::NotConnected);
                    seen.push((w, i, started.elapsed(), outcome));
                    if down {
                        break;
                    }
                }
                Ok(seen)
            }));
        }
        Ok(Self { stop, acked, tasks })
    }

    /// Writes acknowledged so far.
    fn acked(&self) -> usize {
        self.acked.load(Ordering::Relaxed)
    }

    /// Waits until `more` writes beyond those acknowledged now are (up to 60 s).
    async fn wait_for_more(&self, more: usize) -> anyhow::Result<()> {
        let (target, deadline) = (self.acked() + more, Instant::now() + Duration::from_secs(60));
        while self.acked() < target {
            anyhow::ensure!(Instant::now() < deadline, "writes stalled at {}", self.acked());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Stops the writers; what they saw.
    async fn finish(self) -> anyhow::Result<History> {
        self.stop.store(true, Ordering::Relaxed);
        self.join().await
    }

    /// Waits until the writers end by themselves; what they saw.
    async fn join(self) -> anyhow::Result<History> {
        let mut history = History::default();
        for task in self.tasks {
            for (w, i, took, outcome) in task.await?? {
                match outcome {
                    Outcome::Acknowledged(id) => history.acked.push(id),
                    Outcome::Refused503 => {
                        history.refused += 1;
                        history.unknown.push((w, i));
                    }
                    Outcome::Unanswered => {
                        history.unanswered += 1;
                        history.unknown.push((w, i));
                    }
                    Outcome::NotConnected => continue,
                }
                history.slowest = history.slowest.max(took);
            }
        }
        Ok(history)
    }
}

/// `writers` writers create jobs at `node` (at most `most` each) until it stops
/// accepting connections; every answer is judged.
async fn write_until_down(
    node: &ferry_tests::Node,
    writers: usize,
    most: usize,
) -> anyhow::Result<History> {
    Writers::start(node, writers, most)?.join().await
}

/// On the restarted `node`: the clients retry every write they do not know the outcome
/// of with the same key; then every acknowledged job is there, and each write landed
/// exactly once. Returns how many jobs there are.
async fn settle(node: &ferry_tests::Node, mut history: History) -> anyhow::Result<usize> {
    let http = crate::support::raw();
    let url = format!("{}/v1/jobs", node.url()?);
    for (w, i) in &history.unknown {
        let answer = keyed_write(&http, &url, *w, *i).await?;
        anyhow::ensure!(answer.status().is_success(), "a retry was answered {}", answer.status());
        history.acked.push(answer.json::<JobInfo>().await?.id);
    }
    let jobs = node.client(Some(tokens::ADMIN))?.list_jobs(true).await?;
    let held: std::collections::HashSet<_> = jobs.iter().map(|j| j.id).collect();
    let lost = history.acked.iter().filter(|id| !held.contains(id)).count();
    anyhow::ensure!(lost == 0, "{lost} of {} acknowledged jobs were lost", history.acked.len());
    let names: std::collections::HashSet<_> = jobs.iter().map(|j| &j.display_name).collect();
    anyhow::ensure!(names.len() == jobs.len(), "a retried write was applied twice");
    anyhow::ensure!(
        jobs.len() == history.acked.len(),
        "{} jobs for {} writes",
        jobs.len(),
        history.acked.len()
    );
    Ok(jobs.len())
}

/// A queue policy that lets writers go on until something else stops them.
fn roomy() -> ferry_protocol::limits::QueuePolicy {
    ferry_protocol::limits::QueuePolicy {
        max_jobs_per_user: 100_000,
        max_jobs: 100_000,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_every_write_within_2_s_and_loses_none() -> anyhow::Result<()> {
    let options = NodeOptions { policy: roomy(), ..NodeOptions::queue_only() };
    let mut node = ferry_tests::Node::start(options).await?;
    node.stop().await?;
    let data = node.data_dir();
    let Some(disk) = ferry_tests::SmallDisk::mount(&data, 24)? else {
        println!("SKIPPED: cannot mount a tmpfs here (needs root)");
        return Ok(());
    };
    node.restart().await?;
    // Leave the databases about 2 MiB to grow into.
    let filler = disk.fill(2 << 20)?;

    let history = write_until_down(&node, 4, 5000).await?;
    let log = std::fs::read_to_string(node.log_path())?;
    anyhow::ensure!(history.acked.len() >= 20, "too little traffic before the disk filled");
    anyhow::ensure!(!log.contains("panicked"), "a panic:\n{log}");
    anyhow::ensure!(
        history.slowest <= Duration::from_secs(2),
        "a write waited {:?} for its answer",
        history.slowest
    );
    anyhow::ensure!(log.contains("No space left on device"), "the disk never filled");
    println!(
        "disk full after {} acknowledged writes: {} answered 503, {} cut off unread, slowest answer {:?}",
        history.acked.len(),
        history.refused,
        history.unanswered,
        history.slowest
    );
    // Space returns; the node starts again and has every acknowledged job.
    std::fs::remove_file(&filler)?;
    node.restart().await?;
    settle(&node, history).await?;
    node.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_waiting_for_space_refuses_writes_then_serves_again_in_the_same_process()
-> anyhow::Result<()> {
    // raft.on_storage_failure = "wait_for_space": the full disk stops Raft, every write
    // is answered (503 at once), /healthz says degraded, the process stays; once there
    // is room the node restarts itself in place and has every acknowledged write.
    let options = NodeOptions {
        policy: roomy(),
        extra_config: "[raft]\non_storage_failure = \"wait_for_space\"\n".into(),
        ..NodeOptions::queue_only()
    };
    let mut node = ferry_tests::Node::start(options).await?;
    node.stop().await?;
    let Some(disk) = ferry_tests::SmallDisk::mount(&node.data_dir(), 96)? else {
        println!("SKIPPED: cannot mount a tmpfs here (needs root)");
        return Ok(());
    };
    node.restart().await?;
    let pid = node.pid()?;
    let filler = disk.fill(2 << 20)?;
    let writers = Writers::start(&node, 4, 100_000)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !std::fs::read_to_string(node.log_path())?.contains("raft stopped on a fatal error") {
        anyhow::ensure!(Instant::now() < deadline, "the disk never filled:\n{}", node.log_tail());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let health = node.client(None)?.health().await?;
    let history = writers.finish().await?;
    anyhow::ensure!(health.status == "degraded", "/healthz said {health:?} while waiting");
    anyhow::ensure!(!node.exited(), "the node exited:\n{}", node.log_tail());
    anyhow::ensure!(
        history.slowest <= Duration::from_secs(2),
        "a write waited {:?} for its answer",
        history.slowest
    );
    let refused = history.refused;
    std::fs::remove_file(&filler)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match node.client(None)?.health().await {
            Ok(health) if health.status == "ok" => break,
            _ => {}
        }
        anyhow::ensure!(Instant::now() < deadline, "never served again:\n{}", node.log_tail());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::ensure!(node.pid()? == pid && !node.exited(), "not the same process");
    let log = std::fs::read_to_string(node.log_path())?;
    anyhow::ensure!(log.contains("has room again; restarting"), "no restart in the log");
    anyhow::ensure!(!log.contains("panicked"), "a panic:\n{log}");
    let acked = history.acked.len();
    let jobs = settle(&node, history).await?;
    println!(
        "disk full after {acked} acknowledged writes; {refused} answered 503 while waiting; room back: the same process serves again with {jobs} jobs, none lost or doubled"
    );
    node.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_raft_failpoint_loses_no_acknowledged_write() -> anyhow::Result<()> {
    // Each failpoint panics (the node aborts) after some passes, under three writers.
    // FERRY_FAILPOINT_ROUNDS=50 crosses each one with a crash 50 times, at varied passes
    // (scripts/failpoints.sh).
    let rounds = failpoint_rounds();
    let names = ["raft.log.before_ack", "raft.apply", "raft.snapshot.build"];
    let mut crashes = 0;
    for round in 0..rounds {
        for name in names {
            let passes = match name {
                // Snapshots come every 50 entries: the first few builds.
                "raft.snapshot.build" => round % 3,
                _ => 5 + (round * 37) % 90,
            };
            let options = NodeOptions {
                policy: roomy(),
                snapshot_after_entries: 50,
                failpoints: Some(format!("{name}={passes}*off->panic")),
                ..NodeOptions::queue_only()
            };
            let mut node = ferry_tests::Node::start(options).await?;
            let history = write_until_down(&node, 3, 3000).await?;
            let log = std::fs::read_to_string(node.log_path())?;
            anyhow::ensure!(
                log.contains(&format!("failpoint {name} panic")),
                "round {round}: {name} never fired"
            );
            let acked = history.acked.len();
            node.options.failpoints = None;
            node.restart().await?;
            let jobs = settle(&node, history)
                .await
                .map_err(|e| anyhow::anyhow!("round {round}, {name} after {passes} passes: {e}"))?;
            crashes += 1;
            if rounds == 1 {
                println!(
                    "{name}: crashed after {acked} acknowledged writes; {jobs} jobs after retries, none lost or doubled"
                );
            }
            node.stop().await?;
        }
    }
    println!(
        "{crashes} crashes at {} failpoints: 0 acknowledged writes lost, 0 doubled",
        names.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_a_transfer_failpoint_leaves_the_right_file() -> anyhow::Result<()> {
    use ferry_protocol::{JobAction, PropertyChanges};
    use ferry_tests::origin::{Content, Origin, OriginConfig};

    const MIB: u64 = 1024 * 1024;
    const SHORT: Duration = Duration::from_secs(60);
    let origin = Origin::start(OriginConfig::default()).await?;
    origin.add_file("/f.bin", Content::Pattern { seed: 31, len: 12 * MIB + 5 });
    // Each round crashes once at each failpoint; the chunk write at a varied chunk.
    let rounds = failpoint_rounds();
    let plan = (0..rounds).flat_map(|round| {
        let chunk = format!("{}*off->panic", 1 + (round * 5) % 11);
        [("chunk.before_fsync", chunk), ("complete.before_rename", "panic".to_string())]
    });
    for (name, action) in plan {
        let options = NodeOptions {
            transfer: "chunk_size_bytes = 1048576\nread_timeout_secs = 10".into(),
            failpoints: Some(format!("{name}={action}")),
            ..NodeOptions::default()
        };
        let mut node = ferry_tests::Node::start(options).await?;
        let client = node.client(Some(tokens::ALICE))?;
        let out = tempfile::tempdir()?;
        let local = out.path().join("f.bin");
        let files = [(origin.url("/f.bin"), local.clone())];
        let id =
            crate::support::start_download(&client, &files, PropertyChanges::default()).await?;
        if name == "complete.before_rename" {
            wait_for(&node, &client, id, &[JobState::Transferred], SHORT).await?;
            // The node dies inside Complete, renaming the file before the job is
            // acknowledged.
            let _ = client.act(id, JobAction::Complete).await;
        }
        // Wait for the crash.
        let deadline = Instant::now() + Duration::from_secs(60);
        while client.health().await.is_ok() {
            anyhow::ensure!(Instant::now() < deadline, "{name} never fired");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = std::fs::read_to_string(node.log_path())?;
        anyhow::ensure!(
            log.contains(&format!("failpoint {name} panic")),
            "{name}: another crash\n{log}"
        );
        node.options.failpoints = None;
        node.restart().await?;
        let client = node.client(Some(tokens::ALICE))?;
        // After a crash inside Complete the job is still TRANSFERRED (Complete is
        // transactional): Complete again places the file.
        wait_for(&node, &client, id, &[JobState::Transferred], SHORT).await?;
        client.act(id, JobAction::Complete).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !local.exists() {
            anyhow::ensure!(Instant::now() < deadline, "{name}: the file never reached its name");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::ensure!(
            crate::download::same_as_origin(&origin, "/f.bin", &local)?,
            "{name}: the file differs from the origin"
        );
        if rounds == 1 {
            println!("{name}: crashed, restarted, the file is byte-identical at its name");
        }
        node.stop().await?;
    }
    if rounds > 1 {
        println!(
            "{} crashes at chunk.before_fsync and complete.before_rename: every file byte-identical at its name",
            rounds * 2
        );
    }
    Ok(())
}

/// Waits (up to 20 s) until `node` has exited; fails unless failpoint `name` is what
/// stopped it.
async fn crashed_at(node: &mut ferry_tests::Node, name: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !node.exited() {
        anyhow::ensure!(Instant::now() < deadline, "{name} never fired:\n{}", node.log_tail());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = std::fs::read_to_string(node.log_path())?;
    anyhow::ensure!(
        log.contains(&format!("failpoint {name} panic")),
        "stopped, not at {name}:\n{}",
        node.log_tail()
    );
    Ok(())
}

/// Restarts `node` with failpoint `name` panicking at its first pass; a start the
/// failpoint already ended counts as started.
async fn restart_armed(node: &mut ferry_tests::Node, name: &str) -> anyhow::Result<()> {
    node.options.failpoints = Some(format!("{name}=panic"));
    let started = node.restart().await;
    node.options.failpoints = None;
    match started {
        Err(_) if node.exited() => Ok(()),
        other => other,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_saving_a_vote_or_installing_a_snapshot_loses_no_acknowledged_write()
-> anyhow::Result<()> {
    // Three nodes under writers sending to one member `g`. raft.vote.save: follower `f`
    // is armed, the leader killed; `f` crashes saving its vote in the election that
    // follows. raft.snapshot.install: `f` is down while the others snapshot and purge
    // their logs past it, then restarts armed and crashes installing the leader's
    // snapshot. Afterwards all agree, no acknowledged write is lost, none is doubled,
    // and `f` holds the same jobs as `g`.
    let rounds = failpoint_rounds();
    let mut crashes = 0;
    for round in 0..rounds {
        for name in ["raft.vote.save", "raft.snapshot.install"] {
            let options = NodeOptions {
                policy: roomy(),
                snapshot_after_entries: 50,
                ..NodeOptions::queue_only()
            };
            let mut nodes = ferry_tests::start_cluster(options, 3).await?;
            let status = nodes[0].client(Some(tokens::ADMIN))?.cluster().await?;
            let lead = usize::try_from(status.leader.unwrap_or(1))? - 1;
            let (f, g) = ((lead + 1) % 3, (lead + 2) % 3);
            let writers = Writers::start(&nodes[g], 3, 100_000)?;
            writers.wait_for_more(20).await?;
            if name == "raft.vote.save" {
                restart_armed(&mut nodes[f], name).await?;
                writers.wait_for_more(10).await?;
                nodes[lead].kill9().await?;
                crashed_at(&mut nodes[f], name).await?;
                nodes[lead].restart().await?;
            } else {
                let behind = nodes[f].client(Some(tokens::ADMIN))?.cluster().await?.last_log_index;
                nodes[f].kill9().await?;
                writers.wait_for_more(150).await?;
                // Only a snapshot can bring `f` back once the others purged past it.
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    let purged =
                        nodes[lead].client(Some(tokens::ADMIN))?.cluster().await?.purged_index;
                    if purged > behind {
                        break;
                    }
                    anyhow::ensure!(Instant::now() < deadline, "never purged past {behind:?}");
                    writers.wait_for_more(20).await?;
                }
                restart_armed(&mut nodes[f], name).await?;
                crashed_at(&mut nodes[f], name).await?;
            }
            crashes += 1;
            nodes[f].restart().await?;
            writers.wait_for_more(10).await?;
            let history = writers.finish().await?;
            ferry_tests::await_agreement(&nodes, 3, "the members did not agree again").await?;
            let acked = history.acked.len();
            let jobs = settle(&nodes[g], history)
                .await
                .map_err(|e| anyhow::anyhow!("round {round}, {name}: {e}"))?;
            ferry_tests::await_agreement(&nodes, 3, "the members did not agree again").await?;
            let ids = |jobs: Vec<JobInfo>| {
                jobs.into_iter().map(|j| j.id).collect::<std::collections::BTreeSet<_>>()
            };
            let at_f = ids(nodes[f].client(Some(tokens::ADMIN))?.list_jobs(true).await?);
            let at_g = ids(nodes[g].client(Some(tokens::ADMIN))?.list_jobs(true).await?);
            anyhow::ensure!(at_f == at_g, "round {round}, {name}: the crashed node differs");
            if rounds == 1 {
                println!(
                    "{name}: node {} crashed at it after {acked} acknowledged writes; {jobs} jobs after retries on every node, none lost or doubled",
                    f + 1
                );
            }
            for node in &mut nodes {
                node.stop().await?;
            }
        }
    }
    println!(
        "{crashes} crashes at raft.vote.save and raft.snapshot.install: 0 acknowledged writes lost, 0 doubled"
    );
    Ok(())
}
