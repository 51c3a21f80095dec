//! A job's own bandwidth cap (`max_bandwidth`): it holds whatever the job's priority,
//! the job is not helped by other members while capped, and a change applies to the
//! running transfer at once.

use std::time::{Duration, Instant};

use ferry_protocol::{JobState, Priority, PropertyChanges};
use ferry_tests::origin::{Content, Origin, OriginConfig};
use ferry_tests::tokens;

use crate::download::same_as_origin;
use crate::peer_cache::{cluster, no_cache_settings};
use crate::support::{start_download, wait_for};

const MIB: u64 = 1024 * 1024;
const CAP: u64 = 1_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_job_keeps_to_its_cap_until_it_is_lifted() -> anyhow::Result<()> {
    let origin = Origin::start(OriginConfig::default()).await?;
    let len = 16 * MIB;
    origin.add_file("/capped.bin", Content::Pattern { seed: 41, len });
    let nodes = cluster(2, no_cache_settings).await?;
    let client = nodes[0].client(Some(tokens::ALICE))?;
    let dir = tempfile::tempdir()?;
    let local = dir.path().join("capped.bin");
    // Foreground: exempt from the node's limit, not from its own cap.
    let capped = PropertyChanges {
        priority: Some(Priority::Foreground),
        max_bandwidth: Some(Some(CAP)),
        ..PropertyChanges::default()
    };
    let id = start_download(&client, &[(origin.url("/capped.bin"), local.clone())], capped).await?;
    // Progress moves by durable 1 MiB chunks: measured from the first one, over 4 s.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (start, first) = loop {
        let done = client.job(id).await?.progress.bytes_transferred;
        if done > 0 {
            break (Instant::now(), done);
        }
        anyhow::ensure!(Instant::now() < deadline, "no progress within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_secs(4)).await;
    let job = client.job(id).await?;
    let moved = job.progress.bytes_transferred - first;
    let rate = moved as f64 / start.elapsed().as_secs_f64();
    println!("capped at {CAP} B/s: {moved} bytes in {:?} ({rate:.0} B/s)", start.elapsed());
    assert_eq!(job.state, JobState::Transferring);
    assert!(moved <= 4 * CAP * 11 / 10 + MIB, "{moved} bytes in 4 s under a cap of {CAP} B/s");
    assert!(moved >= CAP, "only {moved} bytes in 4 s");
    let home = std::net::IpAddr::from([127, 0, 0, 1]);
    let helpers: Vec<_> =
        origin.requests().iter().filter_map(|r| r.client).filter(|ip| *ip != home).collect();
    assert!(helpers.is_empty(), "a capped job was helped from {helpers:?}");

    // Lifted: the transfer goes on at once at full speed (the rest would take 11 s more
    // under the cap).
    let lifted = Instant::now();
    let lift = PropertyChanges { max_bandwidth: Some(None), ..PropertyChanges::default() };
    client.set_properties(id, &lift).await?;
    wait_for(&nodes[0], &client, id, &[JobState::Transferred], Duration::from_secs(30)).await?;
    let took = lifted.elapsed();
    println!("cap lifted: the remaining bytes took {took:?}");
    assert!(took < Duration::from_secs(6), "the lifted job took {took:?}");
    client.act(id, ferry_protocol::JobAction::Complete).await?;
    assert!(same_as_origin(&origin, "/capped.bin", &local)?);
    Ok(())
}
