//! Damaged storage: a node whose database files were corrupted while it was down either
//! refuses to start with a message naming the file (never a panic), or starts and serves
//! exactly the leader's state.

use std::time::{Duration, Instant};

use ferry_protocol::api::{JobInfo, Problem};
use ferry_protocol::{JobState, JobType, NewJob};
use ferry_tests::{NodeOptions, tokens};

use crate::support::{Rng, new_job, wait_for};

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

/// A tmpfs of `mib` MiB mounted on `dir` (root only); unmounted when dropped.
struct SmallDisk {
    dir: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(dir: &std::path::Path, mib: u64) -> Option<Self> {
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m,mode=0700"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        mounted.then(|| Self { dir: dir.to_path_buf() })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Copies the files of `from` into `to` (a data directory has no subdirectories yet
/// on a queue-only node, except empty ones).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            std::fs::create_dir_all(&target)?;
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
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

/// `writers` writers create jobs at `node` (at most `most` each) until it stops
/// accepting connections; every answer is judged.
async fn write_until_down(
    node: &ferry_tests::Node,
    writers: usize,
    most: usize,
) -> anyhow::Result<History> {
    let url = format!("{}/v1/jobs", node.url()?);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (http, url) = (crate::support::raw(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for i in 0..most {
                let started = tokio::time::Instant::now();
                let outcome = match keyed_write(&http, &url, w, i).await {
                    Ok(answer) if answer.status() == 201 => {
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
                let stop = matches!(outcome, Outcome::NotConnected);
                seen.push((w, i, started.elapsed(), outcome));
                if stop {
                    break;
                }
            }
            Ok(seen)
        }));
    }
    let mut history = History::default();
    for task in tasks {
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
    let saved = tempfile::tempdir()?;
    copy_dir(&data, saved.path())?;
    let Some(_disk) = SmallDisk::mount(&data, 24) else {
        println!("SKIPPED: cannot mount a tmpfs here (needs root)");
        return Ok(());
    };
    copy_dir(saved.path(), &data)?;
    node.restart().await?;
    // Leave the databases about 2 MiB to grow into.
    let filler = data.join("filler");
    let free = {
        let out =
            std::process::Command::new("df").args(["-B1", "--output=avail"]).arg(&data).output()?;
        String::from_utf8_lossy(&out.stdout).lines().nth(1).unwrap_or("0").trim().parse::<u64>()?
    };
    std::fs::write(&filler, vec![0u8; usize::try_from(free.saturating_sub(2 << 20))?])?;

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
async fn a_crash_at_any_raft_failpoint_loses_no_acknowledged_write() -> anyhow::Result<()> {
    // Each failpoint panics (the node aborts) after some passes, under three writers.
    // FERRY_FAILPOINT_ROUNDS=50 crosses each one with a crash 50 times, at varied passes
    // (scripts/failpoints.sh).
    let rounds: u64 =
        std::env::var("FERRY_FAILPOINT_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(1);
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
    for (name, action) in
        [("chunk.before_fsync", "6*off->panic"), ("complete.before_rename", "panic")]
    {
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
            // The node dies inside Complete, after the job was acknowledged.
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
        if name == "chunk.before_fsync" {
            wait_for(&node, &client, id, &[JobState::Transferred], SHORT).await?;
            client.act(id, JobAction::Complete).await?;
        }
        // After a crash inside Complete the restarted node finishes the rename.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !local.exists() {
            anyhow::ensure!(Instant::now() < deadline, "{name}: the file never reached its name");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::ensure!(
            crate::download::same_as_origin(&origin, "/f.bin", &local)?,
            "{name}: the file differs from the origin"
        );
        println!("{name}: crashed, restarted, the file is byte-identical at its name");
        node.stop().await?;
    }
    Ok(())
}
