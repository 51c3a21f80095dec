//! Damaged storage: a node whose database files were corrupted while it was down either
//! refuses to start with a message naming the file (never a panic), or starts and serves
//! exactly the leader's state.

use std::time::Duration;

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
