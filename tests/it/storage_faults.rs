//! Damaged storage: a node whose database files were corrupted while it was down either
//! refuses to start with a message naming the file (never a panic), or starts and serves
//! exactly the leader's state.

use std::time::Duration;

use ferry_protocol::api::{JobInfo, Problem};
use ferry_protocol::{JobType, NewJob};
use ferry_tests::{NodeOptions, tokens};

/// Corruptions of a stopped follower's files (alternating between the two databases).
const ROUNDS: u64 = 50;

/// A small deterministic generator (xorshift64*), so a failing round can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

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
        let spec = NewJob {
            display_name: format!("job {i}"),
            job_type: JobType::Download,
            properties: Default::default(),
            files: vec![],
        };
        alice.create_job(&spec).await?;
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
    /// read from): unknown, retried later with the same key.
    Unanswered,
    /// Never reached the node (it had exited): not in flight.
    NotConnected,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_every_write_within_2_s_and_loses_none() -> anyhow::Result<()> {
    const WRITERS: usize = 4;
    let policy = ferry_protocol::limits::QueuePolicy {
        max_jobs_per_user: 100_000,
        max_jobs: 100_000,
        ..Default::default()
    };
    let mut node =
        ferry_tests::Node::start(NodeOptions { policy, ..NodeOptions::queue_only() }).await?;
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

    // Plain HTTP, no client retries: each request's own answer is what is judged.
    let url = format!("{}/v1/jobs", node.url()?);
    let spec = |w: usize, i: usize| NewJob {
        display_name: format!("writer {w} job {i} {}", "x".repeat(200)),
        job_type: JobType::Download,
        properties: Default::default(),
        files: vec![],
    };
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (http, url) = (crate::support::raw(), url.clone());
        writers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for i in 0..5000 {
                let started = tokio::time::Instant::now();
                let sent = http
                    .post(&url)
                    .bearer_auth(tokens::ALICE)
                    .header("Idempotency-Key", format!("w{w}-{i}"))
                    .json(&spec(w, i))
                    .send()
                    .await;
                let outcome = match sent {
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
    let mut acked = Vec::new();
    let mut unknown = Vec::new();
    let (mut refused, mut unanswered, mut slowest) = (0, 0, Duration::ZERO);
    for writer in writers {
        for (w, i, took, outcome) in writer.await?? {
            match outcome {
                Outcome::Acknowledged(id) => acked.push(id),
                Outcome::Refused503 => {
                    refused += 1;
                    unknown.push((w, i));
                }
                Outcome::Unanswered => {
                    unanswered += 1;
                    unknown.push((w, i));
                }
                Outcome::NotConnected => continue,
            }
            slowest = slowest.max(took);
        }
    }
    let log = std::fs::read_to_string(node.log_path())?;
    anyhow::ensure!(
        acked.len() >= 20,
        "too little traffic before the disk filled: {}",
        acked.len()
    );
    anyhow::ensure!(!log.contains("panicked"), "a panic:\n{log}");
    anyhow::ensure!(slowest <= Duration::from_secs(2), "a write waited {slowest:?} for its answer");
    anyhow::ensure!(log.contains("No space left on device"), "the disk never filled");
    println!(
        "disk full after {} acknowledged writes: {refused} answered 503, {unanswered} cut off unread, slowest answer {slowest:?}",
        acked.len()
    );
    // Space returns; the node starts again and has every acknowledged job.
    std::fs::remove_file(&filler)?;
    node.restart().await?;
    // The clients retry what they do not know with the same key: each lands once.
    let http = crate::support::raw();
    for (w, i) in &unknown {
        let answer = http
            .post(format!("{}/v1/jobs", node.url()?))
            .bearer_auth(tokens::ALICE)
            .header("Idempotency-Key", format!("w{w}-{i}"))
            .json(&spec(*w, *i))
            .send()
            .await?;
        anyhow::ensure!(answer.status().is_success(), "a retry was answered {}", answer.status());
        acked.push(answer.json::<JobInfo>().await?.id);
    }
    let admin = node.client(Some(tokens::ADMIN))?;
    let jobs = admin.list_jobs(true).await?;
    let held: std::collections::HashSet<_> = jobs.iter().map(|j| j.id).collect();
    let lost = acked.iter().filter(|id| !held.contains(id)).count();
    anyhow::ensure!(lost == 0, "{lost} of {} acknowledged jobs were lost", acked.len());
    let names: std::collections::HashSet<_> = jobs.iter().map(|j| &j.display_name).collect();
    anyhow::ensure!(names.len() == jobs.len(), "a retried write was applied twice");
    anyhow::ensure!(jobs.len() == acked.len(), "{} jobs for {} writes", jobs.len(), acked.len());
    node.stop().await?;
    Ok(())
}
