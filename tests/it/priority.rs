//! BITS scheduling on a real node with its default single background slot: a
//! foreground job transfers beside a low one, a high job pre-empts a normal one at
//! once, and two normal jobs take turns in time slices.

use std::time::Duration;

use ferry_protocol::api::JobInfo;
use ferry_protocol::{JobId, JobState, Priority, PropertyChanges};
use ferry_tests::origin::{Content, Knobs, Origin, OriginConfig};
use ferry_tests::tokens;

use crate::support::{start_download, transfer_node, wait_for};

const MIB: u64 = 1024 * 1024;

fn at(priority: Priority) -> PropertyChanges {
    PropertyChanges { priority: Some(priority), ..PropertyChanges::default() }
}

fn holds_slot(job: &JobInfo) -> bool {
    matches!(job.state, JobState::Connecting | JobState::Transferring)
}

/// An origin whose files take a while: 512 KiB/s per connection.
async fn slow_origin(files: &[&str]) -> anyhow::Result<Origin> {
    let origin = Origin::start(OriginConfig::default()).await?;
    for (i, path) in files.iter().enumerate() {
        origin.add_file(path, Content::Pattern { seed: i as u64, len: 8 * MIB });
    }
    origin.set_knobs(Knobs { rate_limit_per_connection: Some(MIB / 2), ..Knobs::default() });
    Ok(origin)
}

/// Both jobs hold a transfer state, `samples` times 100 ms apart; fails if either
/// does not (or finished first).
async fn both_transfer(
    client: &ferry_coordinator::Client,
    a: JobId,
    b: JobId,
    samples: u32,
) -> anyhow::Result<()> {
    for _ in 0..samples {
        let (ja, jb) = (client.job(a).await?, client.job(b).await?);
        anyhow::ensure!(
            holds_slot(&ja) && holds_slot(&jb),
            "both should transfer: {:?} is {:?}, {:?} is {:?}",
            a,
            ja.state,
            b,
            jb.state
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// With the default of one background slot, a LOW job keeps transferring while a
/// FOREGROUND job resumed beside it starts at once: BITS runs every foreground job
/// together with one background job.
#[tokio::test]
async fn foreground_runs_beside_low_at_once() -> anyhow::Result<()> {
    let origin = slow_origin(&["/low.bin", "/fg.bin"]).await?;
    let node = transfer_node("").await?;
    let client = node.client(Some(tokens::ALICE))?;
    let out = tempfile::tempdir()?;
    let low = start_download(
        &client,
        &[(origin.url("/low.bin"), out.path().join("low"))],
        at(Priority::Low),
    )
    .await?;
    wait_for(&node, &client, low, &[JobState::Transferring], Duration::from_secs(20)).await?;

    let fg = start_download(
        &client,
        &[(origin.url("/fg.bin"), out.path().join("fg"))],
        at(Priority::Foreground),
    )
    .await?;
    let started = std::time::Instant::now();
    wait_for(&node, &client, fg, &[JobState::Transferring], Duration::from_secs(5)).await?;
    println!("foreground job transferring {:?} after it was resumed", started.elapsed());
    both_transfer(&client, low, fg, 10).await?;
    let (before_low, before_fg) = (client.job(low).await?.progress, client.job(fg).await?.progress);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (after_low, after_fg) = (client.job(low).await?.progress, client.job(fg).await?.progress);
    assert!(after_low.bytes_transferred > before_low.bytes_transferred, "low moved bytes");
    assert!(after_fg.bytes_transferred > before_fg.bytes_transferred, "foreground moved bytes");
    Ok(())
}

/// With one background slot, a HIGH job takes the slot of a running NORMAL one at
/// once, and the NORMAL job waits until the HIGH one is done.
#[tokio::test]
async fn high_preempts_normal() -> anyhow::Result<()> {
    let origin = slow_origin(&["/normal.bin", "/high.bin"]).await?;
    let node = transfer_node("").await?;
    let client = node.client(Some(tokens::ALICE))?;
    let out = tempfile::tempdir()?;
    let normal = start_download(
        &client,
        &[(origin.url("/normal.bin"), out.path().join("normal"))],
        at(Priority::Normal),
    )
    .await?;
    wait_for(&node, &client, normal, &[JobState::Transferring], Duration::from_secs(20)).await?;
    let high = start_download(
        &client,
        &[(origin.url("/high.bin"), out.path().join("high"))],
        at(Priority::High),
    )
    .await?;
    let started = std::time::Instant::now();
    wait_for(
        &node,
        &client,
        high,
        &[JobState::Connecting, JobState::Transferring],
        Duration::from_secs(5),
    )
    .await?;
    println!("high job got the slot {:?} after it was resumed", started.elapsed());
    assert_eq!(client.job(normal).await?.state, JobState::Queued, "normal gave up its slot");
    // While the high job runs, the normal one waits.
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if client.job(high).await?.state == JobState::Transferred {
            break;
        }
        assert!(!holds_slot(&client.job(normal).await?), "normal ran beside the high job");
    }
    Ok(())
}

#[tokio::test]
async fn two_normal_jobs_take_turns() -> anyhow::Result<()> {
    let origin = slow_origin(&["/a.bin", "/b.bin"]).await?;
    let node = transfer_node("time_slice_ms = 1500").await?;
    let client = node.client(Some(tokens::ALICE))?;
    let out = tempfile::tempdir()?;
    let a = start_download(
        &client,
        &[(origin.url("/a.bin"), out.path().join("a"))],
        at(Priority::Normal),
    )
    .await?;
    let b = start_download(
        &client,
        &[(origin.url("/b.bin"), out.path().join("b"))],
        at(Priority::Normal),
    )
    .await?;

    // Record who holds the slot, 20 times a second, for up to 15 s.
    let mut turns: Vec<JobId> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while tokio::time::Instant::now() < deadline && turns.len() < 4 {
        let (ja, jb) = (client.job(a).await?, client.job(b).await?);
        assert!(!(holds_slot(&ja) && holds_slot(&jb)), "both jobs hold the single slot");
        for job in [&ja, &jb] {
            if holds_slot(job) && turns.last() != Some(&job.id) {
                turns.push(job.id);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("turns: {turns:?}");
    assert!(
        turns.len() >= 4,
        "the jobs alternated fewer than 4 times: {turns:?}\n{}",
        node.log_tail()
    );
    assert!(turns.windows(2).all(|w| w[0] != w[1]));
    let (ja, jb) = (client.job(a).await?, client.job(b).await?);
    assert!(ja.progress.bytes_transferred > 0 && jb.progress.bytes_transferred > 0);
    Ok(())
}
