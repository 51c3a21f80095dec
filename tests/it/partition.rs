//! A minority partition made of real dropped packets (iptables on the nodes' loopback
//! addresses, QUIC only): the isolated leader stops accepting writes, the majority elects
//! a new leader and goes on, and after healing every node converges to the same state.
//! Skipped with a notice where iptables cannot be used.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ferry_protocol::{JobType, NewJob};
use ferry_tests::{NodeOptions, Partition, start_cluster, tokens};

use crate::cluster::{agree, statuses};

fn job(name: &str) -> NewJob {
    NewJob {
        display_name: name.into(),
        job_type: JobType::Download,
        properties: Default::default(),
        files: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minority_leader_stops_majority_goes_on_and_all_converge() -> anyhow::Result<()> {
    if !Partition::available() {
        eprintln!("skipped: iptables is not usable here");
        return Ok(());
    }
    // Addresses of their own, so that no other test's cluster is cut.
    let options = NodeOptions { ip: Ipv4Addr::new(127, 0, 3, 1), ..NodeOptions::queue_only() };
    let nodes = start_cluster(options, 3).await?;
    let before = statuses(&nodes.iter().collect::<Vec<_>>()).await?;
    let leader = before
        .iter()
        .position(|s| s.role == "leader")
        .ok_or_else(|| anyhow::anyhow!("no leader"))?;
    let ips: Vec<Ipv4Addr> = (1..=3).map(|i| Ipv4Addr::new(127, 0, 3, i)).collect();
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    nodes[leader].client(Some(tokens::ADMIN))?.create_job(&job("before")).await?;

    let cut = Partition::isolate(ips[leader], &[ips[others[0]], ips[others[1]]])?;
    let cut_at = Instant::now();

    // The majority elects a new leader and accepts writes.
    let majority = nodes[others[0]].client(Some(tokens::ADMIN))?.with_attempts(1);
    let written = loop {
        if let Ok(created) = majority.create_job(&job("during")).await {
            break created;
        }
        anyhow::ensure!(cut_at.elapsed() < Duration::from_secs(30), "the majority found no leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("the majority accepted writes {:?} after the cut", cut_at.elapsed());
    let status = nodes[others[1]].client(Some(tokens::ADMIN))?.cluster().await?;
    assert_ne!(status.leader, Some(before[leader].node_id), "a new leader");

    // The isolated old leader cannot commit anything.
    let isolated = nodes[leader].client(Some(tokens::ADMIN))?.with_attempts(1);
    let refused = isolated.create_job(&job("isolated")).await;
    assert!(refused.is_err(), "the isolated leader accepted a write: {refused:?}");

    drop(cut);
    let after = ferry_tests::await_agreement(&nodes, 3, "no convergence after healing").await?;
    assert_eq!(after[leader].role, "follower", "the old leader follows");
    let mut views = Vec::new();
    for node in &nodes {
        let mut names: Vec<String> = node
            .client(Some(tokens::ADMIN))?
            .list_jobs(true)
            .await?
            .into_iter()
            .map(|j| j.display_name)
            .collect();
        names.sort();
        views.push(names);
    }
    assert!(views.windows(2).all(|w| w[0] == w[1]), "{views:?}");
    assert!(views[0].contains(&"before".to_owned()) && views[0].contains(&"during".to_owned()));
    assert!(!views[0].contains(&"isolated".to_owned()), "a write refused by the minority appeared");
    let _ = written;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_through_the_ca_node_while_another_node_leads() -> anyhow::Result<()> {
    if !Partition::available() {
        eprintln!("skipped: iptables is not usable here");
        return Ok(());
    }
    let ip = |i: u8| Ipv4Addr::new(127, 0, 4, i);
    let options = NodeOptions { ip: ip(1), ..NodeOptions::queue_only() };
    let nodes = start_cluster(options, 3).await?;
    // Make sure the founder (the CA holder) does not lead: cut it off until another
    // node leads, then heal.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let all = statuses(&nodes.iter().collect::<Vec<_>>()).await?;
        if agree(&all) && all[0].leader != Some(all[0].node_id) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the founder kept leading: {all:#?}");
        if all[0].leader == Some(all[0].node_id) {
            let cut = Partition::isolate(ip(1), &[ip(2), ip(3)])?;
            let others = [&nodes[1], &nodes[2]];
            while statuses(&others).await?.iter().all(|s| s.leader.is_none_or(|l| l == 1)) {
                anyhow::ensure!(Instant::now() < deadline, "no other leader");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            drop(cut);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let token = nodes[0].join_token()?;
    let fourth = ferry_tests::Node::start(nodes[0].joiner(ip(4), &token)?).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = fourth.client(Some(tokens::ADMIN))?.cluster().await?;
        let roles: Vec<(u64, &str)> =
            status.members.iter().map(|m| (m.node_id, m.role.as_str())).collect();
        if status.node_id == 4 && roles.contains(&(4, "learner")) && status.last_applied.is_some() {
            let voters = roles.iter().filter(|(_, r)| *r == "voter").count();
            assert_eq!(voters, 3, "the fourth node stays a learner: {roles:?}");
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the fourth node did not join: {status:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}
