//! Killing the leader of a 3-node cluster with -9 while 2,000 jobs are submitted through
//! all nodes: every create that returned success exists afterwards exactly once, a new
//! leader serves writes within 5 s, and the old leader rejoins as a follower.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ferry_protocol::{JobType, NewJob};
use ferry_tests::{NodeOptions, tokens};
use tokio::sync::Mutex;

use crate::cluster::{form_cluster, statuses};

const JOBS: usize = 2_000;
const CLIENTS_PER_NODE: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_during_submissions_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    let (mut nodes, agreed) = form_cluster(NodeOptions::queue_only()).await?;
    let leader_index = leader_position(&agreed)?;
    let old_leader = agreed[leader_index].node_id;

    let next = Arc::new(AtomicUsize::new(0));
    let succeeded = Arc::new(Mutex::new(Vec::<(usize, ferry_protocol::JobId)>::new()));
    let mut tasks = Vec::new();
    for node in &nodes {
        let url = node.url()?;
        for _ in 0..CLIENTS_PER_NODE {
            let (next, succeeded, url) = (next.clone(), succeeded.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                let client = ferry_coordinator::Client::new(&url, Some(tokens::ADMIN.into()))?
                    .with_attempts(3);
                loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    if n >= JOBS {
                        return anyhow::Ok(());
                    }
                    let spec = empty_job(format!("job-{n}"));
                    // A failed create (its node died, or no leader yet) is simply not
                    // counted: the claim is about the ones that returned success.
                    if let Ok(job) = client.create_job(&spec).await {
                        succeeded.lock().await.push((n, job.id));
                    }
                }
            }));
        }
    }

    // Kill the leader once a quarter of the jobs were created.
    while succeeded.lock().await.len() < JOBS / 4 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    nodes[leader_index].kill9().await?;
    let killed_at = Instant::now();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != leader_index).collect();
    let probe = nodes[survivors[0]].client(Some(tokens::ADMIN))?.with_attempts(1);
    let failover = loop {
        let spec = empty_job("probe");
        if probe.create_job(&spec).await.is_ok() {
            break killed_at.elapsed();
        }
        if killed_at.elapsed() >= Duration::from_secs(30) {
            let alive: Vec<&ferry_tests::Node> = survivors.iter().map(|i| &nodes[*i]).collect();
            let all = statuses(&alive).await;
            anyhow::bail!(
                "no new leader after 30 s: {all:#?}\n{}",
                alive.iter().map(|n| n.log_tail()).collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("a new leader served writes {failover:?} after the leader was killed");
    assert!(failover < Duration::from_secs(5), "failover took {failover:?}");
    let seen = nodes[survivors[0]].client(Some(tokens::ADMIN))?.cluster().await?;
    let dead = seen.members.iter().find(|m| m.node_id == old_leader);
    assert_eq!(dead.map(|m| m.health.as_str()), Some("unreachable"), "{seen:#?}");

    for task in tasks {
        task.await??;
    }
    let succeeded = succeeded.lock().await.clone();

    // The old leader comes back (on its ports, as a deployed node does) as a follower
    // and catches up.
    nodes[leader_index].restart().await?;
    let all = ferry_tests::await_agreement(&nodes, 3, "no agreement after the restart").await?;
    let rejoined = &all[leader_index];
    assert_eq!(rejoined.node_id, old_leader);
    assert_eq!(rejoined.role, "follower", "{rejoined:#?}");

    // Every acknowledged create exists exactly once, on every node.
    for node in &nodes {
        let listed = node.client(Some(tokens::ADMIN))?.list_jobs(true).await?;
        let mut by_name: HashMap<String, usize> = HashMap::new();
        for job in &listed {
            *by_name.entry(job.display_name.clone()).or_default() += 1;
        }
        let ids: std::collections::HashSet<_> = listed.iter().map(|j| j.id).collect();
        for (n, id) in &succeeded {
            assert!(ids.contains(id), "job-{n} ({id}) was acknowledged but is missing");
            assert_eq!(by_name.get(&format!("job-{n}")), Some(&1), "job-{n} exists more than once");
        }
    }
    println!(
        "{} of {JOBS} creates succeeded through three nodes; all present once on every node",
        succeeded.len()
    );
    Ok(())
}

/// The position of the leader among `statuses`.
fn leader_position(statuses: &[ferry_protocol::api::ClusterStatus]) -> anyhow::Result<usize> {
    statuses.iter().position(|s| s.role == "leader").ok_or_else(|| anyhow::anyhow!("no leader"))
}

/// A download job without files, named `name` (it never transfers).
fn empty_job(name: impl Into<String>) -> NewJob {
    NewJob {
        display_name: name.into(),
        job_type: JobType::Download,
        properties: Default::default(),
        files: vec![],
    }
}

/// A killed leader that comes back on other ports first believes it still leads and
/// records its new address in its own log; the entry is never committed. It must still
/// tell the real leader, or nobody can reach it and it campaigns forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_restarted_on_new_ports_rejoins_as_a_follower() -> anyhow::Result<()> {
    let (mut nodes, agreed) = form_cluster(NodeOptions::queue_only()).await?;
    let leader = leader_position(&agreed)?;
    let client = nodes[leader].client(Some(tokens::ADMIN))?;
    for n in 0..20 {
        let spec = empty_job(format!("before-{n}"));
        client.create_job(&spec).await?;
    }
    let old_peer = nodes[leader].peer_addr()?;
    nodes[leader].kill9().await?;
    let survivor = (leader + 1) % nodes.len();
    let probe = nodes[survivor].client(Some(tokens::ADMIN))?.with_attempts(1);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let spec = empty_job("after");
        if probe.create_job(&spec).await.is_ok() {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "no new leader within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    nodes[leader].restart_on_new_ports().await?;
    let new_peer = nodes[leader].peer_addr()?;
    assert_ne!(old_peer, new_peer, "the restart should have moved the peer port");
    let all = ferry_tests::await_agreement(&nodes, 3, "no agreement after the restart").await?;
    assert_eq!(all[leader].role, "follower", "{:#?}", all[leader]);
    for status in &all {
        let me = status.members.iter().find(|m| m.node_id == agreed[leader].node_id);
        assert_eq!(
            me.map(|m| m.peer_addr.as_str()),
            Some(new_peer.to_string().as_str()),
            "node {} does not know the new address",
            status.node_id
        );
    }
    let jobs = nodes[leader].client(Some(tokens::ADMIN))?.list_jobs(true).await?;
    let before = jobs.iter().filter(|j| j.display_name.starts_with("before-")).count();
    let after = jobs.iter().filter(|j| j.display_name == "after").count();
    assert_eq!((before, after >= 1), (20, true), "every job reached the restarted node");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_follower_catches_up_without_duplicates() -> anyhow::Result<()> {
    // Snapshots every 50 entries: the leader purges its log past the paused follower,
    // which must then catch up by installing a snapshot over QUIC.
    let options = NodeOptions { snapshot_after_entries: 50, ..NodeOptions::queue_only() };
    let (nodes, agreed) = form_cluster(options).await?;
    let follower = agreed
        .iter()
        .position(|s| s.role == "follower")
        .ok_or_else(|| anyhow::anyhow!("no follower"))?;
    let leader = leader_position(&agreed)?;
    nodes[follower].signal("STOP")?;
    let paused_at = Instant::now();
    let client = nodes[leader].client(Some(tokens::ADMIN))?;
    for n in 0..200 {
        let spec = empty_job(format!("while-paused-{n}"));
        client.create_job(&spec).await?;
    }
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(paused_at.elapsed())).await;
    nodes[follower].signal("CONT")?;
    let resumed_at = Instant::now();
    ferry_tests::await_agreement(&nodes, 3, "the follower did not catch up").await?;
    println!("caught up {:?} after a 20 s pause", resumed_at.elapsed());
    let caught_up = nodes[follower].client(Some(tokens::ADMIN))?.cluster().await?;
    assert!(caught_up.snapshot_index.is_some(), "the follower installed or built a snapshot");
    let local = nodes[follower].client(Some(tokens::ADMIN))?;
    let jobs = local.list_jobs(true).await?;
    let mut names: Vec<&str> = jobs.iter().map(|j| j.display_name.as_str()).collect();
    names.sort_unstable();
    let before = names.len();
    names.dedup();
    assert_eq!(before, names.len(), "a job is duplicated");
    assert_eq!(names.iter().filter(|n| n.starts_with("while-paused-")).count(), 200);
    Ok(())
}

/// A download running on a follower of a fresh 3-node cluster, already under way.
struct FollowerDownload {
    origin: ferry_tests::origin::Origin,
    nodes: Vec<ferry_tests::Node>,
    agreed: Vec<ferry_protocol::api::ClusterStatus>,
    home: usize,
    leader: usize,
    id: ferry_protocol::JobId,
    local: std::path::PathBuf,
    _out: tempfile::TempDir,
}

/// Serves `size` bytes (pattern `seed`) at `rate` per connection, forms a cluster with
/// `transfer` settings, downloads on a follower (its home node) and returns once
/// `at_least` bytes are durable.
async fn download_on_follower(
    size: u64,
    seed: u64,
    rate: u64,
    transfer: &str,
    at_least: u64,
) -> anyhow::Result<FollowerDownload> {
    use ferry_tests::origin::{Content, Knobs, Origin, OriginConfig};
    let origin = Origin::start(OriginConfig::default()).await?;
    origin.add_file("/f.bin", Content::Pattern { seed, len: size });
    origin.set_knobs(Knobs { rate_limit_per_connection: Some(rate), ..Knobs::default() });
    let options = NodeOptions { transfer: transfer.into(), ..NodeOptions::default() };
    let (nodes, agreed) = form_cluster(options).await?;
    let role = |name: &str| {
        agreed.iter().position(|s| s.role == name).ok_or_else(|| anyhow::anyhow!("no {name}"))
    };
    let (home, leader) = (role("follower")?, role("leader")?);
    let client = nodes[home].client(Some(tokens::ALICE))?;
    let out = tempfile::tempdir()?;
    let local = out.path().join("f.bin");
    let props = ferry_protocol::PropertyChanges::default();
    let id =
        crate::support::start_download(&client, &[(origin.url("/f.bin"), local.clone())], props)
            .await?;
    assert_eq!(
        client.job(id).await?.home_node,
        agreed[home].node_id,
        "the job lives on the follower"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.job(id).await?.progress.bytes_transferred < at_least.max(1) {
        anyhow::ensure!(Instant::now() < deadline, "no progress\n{}", nodes[home].log_tail());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(FollowerDownload { origin, nodes, agreed, home, leader, id, local, _out: out })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_on_a_follower_survives_a_leader_kill() -> anyhow::Result<()> {
    use ferry_protocol::JobState;
    use ferry_protocol::command::JobAction;

    const MIB: u64 = 1024 * 1024;
    const SIZE: u64 = 512 * MIB;
    let transfer = "chunk_size_bytes = 8388608\nconnections = 4\nread_timeout_secs = 10";
    let mut run = download_on_follower(SIZE, 77, 48 * MIB, transfer, SIZE / 5).await?;
    run.nodes[run.leader].kill9().await?;
    let client = run.nodes[run.home].client(Some(tokens::ALICE))?;
    let job = crate::support::wait_for(
        &run.nodes[run.home],
        &client,
        run.id,
        &[JobState::Transferred],
        Duration::from_secs(120),
    )
    .await?;
    assert_eq!(job.progress.bytes_transferred, SIZE);
    client.act(run.id, JobAction::Complete).await?;
    assert!(ferry_tests::origin::file_matches_pattern(&run.local, 77, SIZE)?, "byte-identical");
    println!(
        "{} MiB downloaded on node {} through the loss of leader {}",
        SIZE / MIB,
        run.agreed[run.home].node_id,
        run.agreed[run.leader].node_id
    );
    drop(run.origin);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_waits_for_its_killed_home_node_and_completes_after_it_returns() -> anyhow::Result<()>
{
    use ferry_protocol::JobState;
    use ferry_protocol::command::JobAction;

    const MIB: u64 = 1024 * 1024;
    const SIZE: u64 = 64 * MIB;
    let transfer = "chunk_size_bytes = 4194304\nconnections = 2\nread_timeout_secs = 10";
    let mut run = download_on_follower(SIZE, 5, 8 * MIB, transfer, 1).await?;
    let (home, leader, id) = (run.home, run.leader, run.id);
    run.nodes[home].kill9().await?;

    let on_leader = run.nodes[leader].client(Some(tokens::ALICE))?;
    let job = crate::support::wait_for(
        &run.nodes[leader],
        &on_leader,
        id,
        &[JobState::TransientError],
        Duration::from_secs(30),
    )
    .await?;
    let error = job.error.ok_or_else(|| anyhow::anyhow!("no error"))?;
    assert_eq!(error.code, ferry_protocol::BitsCode::BG_E_NETWORK_DISCONNECTED);
    assert!(error.detail.contains("home node"), "{}", error.detail);
    // It waits: still waiting a few seconds later, with no retry in between.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(on_leader.job(id).await?.state, JobState::TransientError);

    run.nodes[home].restart().await?;
    let on_home = run.nodes[home].client(Some(tokens::ALICE))?;
    crate::support::wait_for(
        &run.nodes[home],
        &on_home,
        id,
        &[JobState::Transferred],
        Duration::from_secs(90),
    )
    .await?;
    on_home.act(id, JobAction::Complete).await?;
    assert!(ferry_tests::origin::file_matches_pattern(&run.local, 5, SIZE)?, "byte-identical");
    Ok(())
}
