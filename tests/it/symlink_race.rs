//! The symlink-swap race (issue 15): while downloads run, are suspended, resumed and
//! completed, a local attacker swaps the temporary files, the destinations and their
//! directory for symlinks into a sentinel tree, over a thousand times. Nothing outside
//! the root may be created, grown, truncated or re-moded, and every file that appears
//! at a destination name is the origin's, byte for byte (G4, G11).

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use ferry_protocol::{JobAction, JobId, JobState, PropertyChanges};
use ferry_tests::origin::{Content, Knobs, Origin, OriginConfig, file_matches_pattern};
use ferry_tests::tokens;

use crate::hostile::{Tree, node};
use crate::support::start_download;

const MIB: u64 = 1024 * 1024;
/// Swaps the attacker makes at least.
const SWAPS: u32 = 1_000;
const FILES: u64 = 4;
const SIZE: u64 = 3 * MIB;

/// What the attacker swaps: a file name (temporary or destination) or the directory.
#[derive(Clone)]
struct Targets {
    dir: PathBuf,
    names: Vec<PathBuf>,
    bait_file: PathBuf,
    bait_dir: PathBuf,
}

/// One swap of `target` for a symlink, held briefly, then undone.
fn swap(target: &Path, bait: &Path) {
    let aside = target.with_extension("aside");
    let had = std::fs::rename(target, &aside).is_ok();
    let linked = symlink(bait, target).is_ok();
    std::thread::sleep(Duration::from_micros(300));
    if linked && std::fs::symlink_metadata(target).is_ok_and(|m| m.file_type().is_symlink()) {
        let _ = std::fs::remove_file(target);
    }
    if had && std::fs::symlink_metadata(target).is_err() {
        let _ = std::fs::rename(&aside, target);
    } else if had {
        let _ = std::fs::remove_file(&aside);
        let _ = std::fs::remove_dir_all(&aside);
    }
}

/// Swaps until `stop` is set (bounded in time too).
fn attacker(targets: Targets, stop: Arc<AtomicBool>, count: Arc<AtomicU32>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut turn = 0usize;
    while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
        turn += 1;
        if turn.is_multiple_of(7) {
            swap(&targets.dir, &targets.bait_dir);
        } else {
            let name = &targets.names[turn % targets.names.len()];
            swap(name, &targets.bait_file);
        }
        count.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_micros(500));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_symlink_swaps_during_downloads_escape_nothing() -> anyhow::Result<()> {
    let tree = Tree::new()?;
    let origin = Origin::start(OriginConfig::default()).await?;
    for i in 0..FILES {
        origin.add_file(&format!("/f{i}.bin"), Content::Pattern { seed: 40 + i, len: SIZE });
    }
    // Slow enough that every download outlasts the swaps.
    origin.set_knobs(Knobs { rate_limit_per_connection: Some(MIB), ..Knobs::default() });
    let node = node(&tree, "").await?;
    let alice = node.client(Some(tokens::ALICE))?;
    let dir = tree.shared.join("downloads");
    std::fs::create_dir_all(&dir)?;

    let mut jobs: Vec<(JobId, PathBuf, u64)> = Vec::new();
    for i in 0..FILES {
        let local = dir.join(format!("f{i}.bin"));
        let id = start_download(
            &alice,
            &[(origin.url(&format!("/f{i}.bin")), local.clone())],
            PropertyChanges::default(),
        )
        .await?;
        jobs.push((id, local, 40 + i));
    }
    let mut names = Vec::new();
    for (id, local, _) in &jobs {
        names.push(PathBuf::from(&alice.files(*id).await?.files[0].temporary_name));
        names.push(local.clone());
    }
    let targets = Targets {
        dir: dir.clone(),
        names,
        bait_file: tree.outside.join("victim"),
        bait_dir: tree.outside.join("etc/d"),
    };
    let (stop, count) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU32::new(0)));
    let swapper = {
        let (stop, count) = (stop.clone(), count.clone());
        std::thread::spawn(move || attacker(targets, stop, count))
    };

    // Meanwhile: suspend and resume, resume what the swaps made fail, and complete
    // what is transferred, all while the swaps go on.
    let mut resumes = 0u32;
    let mut suspends = 0u32;
    let mut completes = 0u32;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(150);
    let mut round = 0usize;
    let mut done = vec![false; jobs.len()];
    while done.iter().any(|d| !d) {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "jobs did not finish\n{}",
            node.log_tail()
        );
        round += 1;
        for (k, (id, _, _)) in jobs.iter().enumerate() {
            if done[k] {
                continue;
            }
            let job = alice.job(*id).await?;
            match job.state {
                JobState::Error | JobState::TransientError | JobState::Suspended => {
                    alice.act(*id, JobAction::Resume).await?;
                    resumes += 1;
                }
                JobState::Transferring if round % 8 == k % 8 => {
                    alice.act(*id, JobAction::Suspend).await?;
                    suspends += 1;
                }
                JobState::Transferred => {
                    // A swap of its temporary file makes Complete fail (409, the job
                    // stays TRANSFERRED): the download is lost to the attack; cancel it.
                    match alice.act(*id, JobAction::Complete).await {
                        Ok(_) => completes += 1,
                        Err(ferry_coordinator::ClientError::Api(p)) if p.status == 409 => {
                            alice.act(*id, JobAction::Cancel).await?;
                        }
                        Err(e) => return Err(e.into()),
                    }
                    done[k] = true;
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let swaps_while_active = count.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    swapper.join().map_err(|_| anyhow::anyhow!("the attacker thread panicked"))?;
    let swaps = count.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;

    tree.assert_untouched()?;
    // Every file at a destination name is the origin's file.
    let mut in_place = 0;
    for (_, local, seed) in &jobs {
        if local.exists() {
            anyhow::ensure!(
                file_matches_pattern(local, *seed, SIZE)?,
                "{} is not the origin's file",
                local.display()
            );
            in_place += 1;
        }
    }
    println!(
        "{swaps_while_active} symlink swaps while {FILES} downloads ran ({swaps} in all): \
         {suspends} suspends, {resumes} resumes, {completes} of {FILES} completes accepted, \
         {in_place} files in place and correct; 0 changes outside the root"
    );
    anyhow::ensure!(
        swaps_while_active >= SWAPS,
        "only {swaps_while_active} swaps during the downloads"
    );
    Ok(())
}
