//! A cluster from an identity made beforehand (`ferryd init-cluster`): one node founds
//! with that CA, the others join with the token from the same directory, clients trust
//! its `ca.pem` before any node ran; and a founder that lost its data directory joins
//! the running cluster instead of founding a second one.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, ensure};
use ferry_protocol::JobType;
use ferry_tests::{ApiCa, Node, NodeOptions, await_agreement, binary, tokens};

use crate::support::new_job;

fn init_cluster(out: &Path) -> anyhow::Result<std::process::Output> {
    Ok(Command::new(binary("ferryd")?).arg("init-cluster").arg("--out").arg(out).output()?)
}

/// Node `i` of three on 127.0.6.`i+1`, fixed peer port 7171, every node in `join`,
/// the first bootstrapping.
fn options(i: usize, identity: &Path) -> NodeOptions {
    let ip = Ipv4Addr::new(127, 0, 6, 1 + i as u8);
    let join: Vec<String> = (1..=3).map(|n| format!("\"127.0.6.{n}:7171\"")).collect();
    NodeOptions {
        ip,
        api_ca: Some(ApiCa::File(identity.join("ca.pem"))),
        extra_config: format!(
            "[api]\ntls = \"on\"\n[peer]\nlisten = \"{ip}:7171\"\n[cluster]\njoin = [{}]\n\
             identity_dir = {:?}\nbootstrap = {}\nbootstrap_wait_secs = 3\n",
            join.join(", "),
            identity.display().to_string(),
            i == 0,
        ),
        ..NodeOptions::queue_only()
    }
}

#[tokio::test]
async fn a_prepared_identity_founds_one_cluster_and_a_wiped_founder_rejoins_it()
-> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let identity = scratch.path().join("identity");
    let made = init_cluster(&identity)?;
    ensure!(made.status.success(), "init-cluster failed: {made:?}");
    for file in ["ca.pem", "ca.key", "join.token"] {
        ensure!(identity.join(file).is_file(), "init-cluster wrote no {file}");
    }
    let again = init_cluster(&identity)?;
    ensure!(
        !again.status.success()
            && String::from_utf8_lossy(&again.stderr).contains("does not replace"),
        "a second init-cluster must refuse to replace the identity: {again:?}"
    );

    // All three start at once; the joiners wait for the founder.
    let (a, b, c) = tokio::join!(
        Node::start(options(0, &identity)),
        Node::start(options(1, &identity)),
        Node::start(options(2, &identity)),
    );
    let mut nodes = vec![a?, b?, c?];
    let statuses = await_agreement(&nodes, 3, "the prepared cluster did not form").await?;
    let ca = std::fs::read_to_string(identity.join("ca.pem"))?;
    for (node, status) in nodes.iter().zip(&statuses) {
        // The harness reached each API over TLS trusting only the prepared CA.
        let held = std::fs::read_to_string(node.data_dir().join("ca.pem"))?;
        ensure!(held == ca, "node {} runs with another CA", status.node_id);
    }
    ensure!(statuses[0].node_id == 1, "the bootstrapping node founds as node 1");
    ensure!(
        nodes[0].log_tail().contains("founded a new cluster")
            && !nodes[1].log_tail().contains("founded a new cluster"),
        "exactly the bootstrapping node founds"
    );

    let admin = nodes[1].client(Some(tokens::ADMIN))?;
    let job = admin.create_job(&new_job("before the wipe", JobType::Download, vec![])).await?;

    // The founder loses its data directory and starts again with the same settings.
    nodes[0].stop().await?;
    std::fs::remove_dir_all(nodes[0].data_dir())?;
    nodes[0].restart().await?;
    let log = std::fs::read_to_string(nodes[0].log_path())?;
    ensure!(
        log.matches("founded a new cluster").count() == 1 && log.contains("joined the cluster"),
        "the wiped founder must join, not found again:\n{}",
        nodes[0].log_tail()
    );
    let rejoined = nodes[0].client(Some(tokens::ADMIN))?;
    let status = rejoined.cluster().await?;
    // Ids are never reused (an admission that did not finish may have taken one).
    ensure!(status.node_id > 3, "it joins as a new node (id {})", status.node_id);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match rejoined.job(job.id).await {
            Ok(seen) if seen.display_name == "before the wipe" => break,
            outcome if std::time::Instant::now() > deadline => {
                anyhow::bail!("the rejoined node does not see the cluster's job: {outcome:?}")
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    let listed = rejoined.list_jobs(true).await.context("list on the rejoined node")?;
    ensure!(listed.len() == 1, "one cluster, one job: {listed:?}");
    Ok(())
}
