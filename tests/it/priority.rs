//! BITS scheduling on a real node with one transfer slot: a foreground job pre-empts a
//! low one at once, and two normal jobs take turns in time slices.

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

#[tokio::test]
async fn foreground_preempts_low_at_once() -> anyhow::Result<()> {
    let origin = slow_origin(&["/low.bin", "/fg.bin"]).await?;
    let node = transfer_node("max_active_jobs = 1").await?;
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
    wait_for(
        &node,
        &client,
        fg,
        &[JobState::Connecting, JobState::Transferring],
        Duration::from_secs(5),
    )
    .await?;
    let took = started.elapsed();
    let low_job = client.job(low).await?;
    assert_eq!(low_job.state, JobState::Queued, "the low job gave up its slot");
    println!("foreground job got the slot {took:?} after it was resumed");
    // While the foreground job runs, the low one waits.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let fg_job = client.job(fg).await?;
        if fg_job.state == JobState::Transferred {
            break;
        }
        assert!(!holds_slot(&client.job(low).await?), "low ran beside the foreground job");
    }
    Ok(())
}

#[tokio::test]
async fn two_normal_jobs_take_turns() -> anyhow::Result<()> {
    let origin = slow_origin(&["/a.bin", "/b.bin"]).await?;
    let node = transfer_node("max_active_jobs = 1\ntime_slice_ms = 1500").await?;
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
