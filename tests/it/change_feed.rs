//! The change feed: a node's components (transfer supervisor, scheduler, notify runner,
//! peer-cache limits, upload sweeper) follow what apply changed instead of walking the
//! whole queue, so the count of full-queue scans in the cluster status does not grow
//! with the jobs created, run, completed and cancelled.

use std::time::Duration;

use ferry_protocol::{JobAction, JobState, JobType};
use ferry_tests::origin::{Content, Origin, OriginConfig};
use ferry_tests::tokens;

use crate::support::{file, new_job, start_download, transfer_node, wait_for};

#[tokio::test]
async fn applied_changes_cost_no_full_queue_scan() -> anyhow::Result<()> {
    let origin = Origin::start(OriginConfig::default()).await?;
    for n in 0..4 {
        origin.add_file(&format!("/{n}.bin"), Content::Pattern { seed: n, len: 300_000 });
    }
    let node = transfer_node("").await?;
    let admin = node.client(Some(tokens::ADMIN))?;
    let alice = node.client(Some(tokens::ALICE))?;
    let started = admin.cluster().await?;
    // Each component built its view once at start.
    assert!(started.queue_scans >= 5, "{started:#?}");

    // Queue work: created, and some cancelled (their files finished by the transfer
    // supervisor).
    let mut queued = Vec::new();
    for n in 0..200 {
        queued.push(admin.create_job(&new_job("q", JobType::Download, vec![file(n)])).await?.id);
    }
    for (i, id) in queued.iter().enumerate() {
        if i % 4 == 0 {
            admin.act(*id, JobAction::Cancel).await?;
        }
    }
    // Real transfers: run, transferred, completed.
    let out = tempfile::tempdir()?;
    for n in 0..4 {
        let files = [(origin.url(&format!("/{n}.bin")), out.path().join(format!("{n}.bin")))];
        let id = start_download(&alice, &files, Default::default()).await?;
        wait_for(&node, &alice, id, &[JobState::Transferred], Duration::from_secs(30)).await?;
        alice.act(id, JobAction::Complete).await?;
    }
    let after = admin.cluster().await?;
    let applied = after.commands_applied - started.commands_applied;
    assert!(applied >= 220, "{applied} commands applied");
    assert_eq!(
        after.queue_scans, started.queue_scans,
        "{applied} commands applied cost full-queue scans"
    );
    Ok(())
}
