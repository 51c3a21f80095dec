//! Helpers (issue 6, first part): a download on a three-node cluster whose nodes use
//! their own loopback addresses as source addresses; the other members fetch pieces
//! for the home node.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ferry_protocol::credentials::{AuthScheme, AuthTarget, Secret};
use ferry_protocol::{JobAction, JobState, PropertyChanges};
use ferry_tests::origin::{Auth, Content, Knobs, Origin, OriginConfig};
use ferry_tests::{Node, NodeOptions, tokens};

use crate::download::same_as_origin;
use crate::support::{assert_no_secret, wait_for};

const MIB: u64 = 1024 * 1024;

/// Three nodes on 127.0.0.1-3, each connecting to origins from its own address, with
/// 1 MiB chunks (and helpers, as by default).
async fn cluster() -> anyhow::Result<Vec<Node>> {
    cluster_with("").await
}

/// [`cluster`] with more `[transfer]` settings.
async fn cluster_with(more: &str) -> anyhow::Result<Vec<Node>> {
    ferry_tests::start_cluster_each(NodeOptions::default(), 3, |_, options| {
        let source = ferry_tests::source_addr(options.ip);
        options.transfer =
            format!("chunk_size_bytes = 1048576\nread_timeout_secs = 10\n{source}\n{more}");
    })
    .await
}

/// Creates a download of `url` to `local` with Basic credentials `u`:`password` and
/// `properties`, and resumes it.
async fn start_with_password(
    client: &ferry_coordinator::Client,
    url: &str,
    local: &std::path::Path,
    properties: PropertyChanges,
    password: &str,
) -> anyhow::Result<ferry_protocol::JobId> {
    let spec = ferry_protocol::NewJob {
        display_name: "sharded".into(),
        job_type: ferry_protocol::JobType::Download,
        properties,
        files: vec![ferry_protocol::NewFile {
            remote_url: url.into(),
            local_path: local.to_string_lossy().into_owned(),
            ranges: vec![],
            sha256: None,
        }],
    };
    let job = client.create_job(&spec).await?;
    let secret = Secret::new(password);
    client.set_credentials(job.id, AuthTarget::Server, AuthScheme::Basic, "u", &secret).await?;
    client.act(job.id, JobAction::Resume).await?;
    Ok(job.id)
}

/// Job properties asking for `n` helpers.
fn helpers(n: u32) -> PropertyChanges {
    PropertyChanges { max_helpers: Some(Some(n)), ..PropertyChanges::default() }
}

/// A download of the origin's `path` (pattern `seed`, `len` bytes) with `properties`,
/// started on node 1 of a fresh [`cluster`].
struct Sharded {
    nodes: Vec<Node>,
    client: ferry_coordinator::Client,
    dir: tempfile::TempDir,
    local: std::path::PathBuf,
    id: ferry_protocol::JobId,
}

async fn start_sharded(
    origin: &Origin,
    path: &str,
    seed: u64,
    len: u64,
    properties: PropertyChanges,
) -> anyhow::Result<Sharded> {
    origin.add_file(path, Content::Pattern { seed, len });
    let nodes = cluster().await?;
    let client = nodes[0].client(Some(tokens::ALICE))?;
    let dir = tempfile::tempdir()?;
    let local = dir.path().join(path.trim_start_matches('/'));
    let files = [(origin.url(path), local.clone())];
    let id = crate::support::start_download(&client, &files, properties).await?;
    Ok(Sharded { nodes, client, dir, local, id })
}

/// Clients the origin saw fetching ranges of `path`.
fn range_clients(origin: &Origin, path: &str) -> BTreeSet<IpAddr> {
    origin
        .requests()
        .iter()
        .filter(|r| r.path == path && r.range.is_some() && r.status == 206)
        .filter_map(|r| r.client)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helpers_fetch_pieces_from_their_own_addresses_and_never_keep_secrets() -> anyhow::Result<()>
{
    let password = "helper-secret-pa55word";
    let origin = Origin::start(OriginConfig {
        knobs: Knobs {
            auth: Some(Auth::Basic { user: "u".into(), password: password.into() }),
            ..Knobs::default()
        },
        ..OriginConfig::default()
    })
    .await?;
    origin.add_file("/s.bin", Content::Pattern { seed: 61, len: 24 * MIB + 5 });
    let nodes = cluster().await?;
    let client = nodes[0].client(Some(tokens::ALICE))?;
    let dir = tempfile::tempdir()?;
    let local = dir.path().join("s.bin");
    let id =
        start_with_password(&client, &origin.url("/s.bin"), &local, helpers(2), password).await?;
    wait_for(&nodes[0], &client, id, &[JobState::Transferred], Duration::from_secs(60)).await?;
    client.act(id, JobAction::Complete).await?;
    assert!(same_as_origin(&origin, "/s.bin", &local)?, "the sharded file differs");
    let clients = range_clients(&origin, "/s.bin");
    assert!(clients.len() >= 2, "pieces came from {clients:?} only");
    println!("24 MiB in 1 MiB chunks fetched from {clients:?}");
    // A job that asks for no helpers stays on its home node.
    origin.add_file("/alone.bin", Content::Pattern { seed: 63, len: 8 * MIB });
    let alone = dir.path().join("alone.bin");
    let url = origin.url("/alone.bin");
    let id = start_with_password(&client, &url, &alone, helpers(0), password).await?;
    wait_for(&nodes[0], &client, id, &[JobState::Transferred], Duration::from_secs(60)).await?;
    let clients = range_clients(&origin, "/alone.bin");
    assert_eq!(clients, BTreeSet::from(["127.0.0.1".parse::<IpAddr>()?]), "no helpers asked");
    // The helpers opened the password in memory only: not in their data or logs.
    for helper in &nodes[1..] {
        assert_no_secret(helper, password)?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_helper_gives_its_pieces_back() -> anyhow::Result<()> {
    let origin = Origin::start(OriginConfig {
        // 2 MiB/s per connection: the transfer takes long enough to lose a helper.
        knobs: Knobs { rate_limit_per_connection: Some(2 * MIB), ..Knobs::default() },
        ..OriginConfig::default()
    })
    .await?;
    let len = 32 * MIB;
    let Sharded { mut nodes, client, local, id, dir: _dir } =
        start_sharded(&origin, "/k.bin", 62, len, helpers(2)).await?;
    // Once a helper delivered, kill it (node 3) mid-transfer.
    let helper_ip: IpAddr = "127.0.0.3".parse()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !range_clients(&origin, "/k.bin").contains(&helper_ip) {
        anyhow::ensure!(Instant::now() < deadline, "node 3 never helped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed = Instant::now();
    nodes[2].kill9().await?;
    let job = client.job(id).await?;
    anyhow::ensure!(job.state != JobState::Transferred, "finished before the kill");
    // The home node gives the dead helper's piece back to its queue once the helper
    // missed two pings (one a second, 0.5 s each).
    let given_back = |node: &Node| {
        std::fs::read_to_string(node.log_path())
            .unwrap_or_default()
            .contains("a helper gave its piece back")
    };
    while !given_back(&nodes[0]) {
        anyhow::ensure!(killed.elapsed() < Duration::from_secs(30), "no piece given back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reassigned = killed.elapsed();
    wait_for(&nodes[0], &client, id, &[JobState::Transferred], Duration::from_secs(120)).await?;
    let done = killed.elapsed();
    client.act(id, JobAction::Complete).await?;
    assert!(same_as_origin(&origin, "/k.bin", &local)?, "the file differs after a helper died");
    println!(
        "helper killed: its piece reassigned after {:.1} s; the file complete {:.1} s after the kill",
        reassigned.as_secs_f64(),
        done.as_secs_f64()
    );
    Ok(())
}

/// The home node fetches every piece but the ones its helper holds (its path to the
/// origin crawls), and its own workers end; then the helper dies. The pieces it held
/// come back once the home node sees it gone, and are fetched: the file is never
/// reported whole while one is missing (the round's last worker tells of the loss just
/// before it ends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pieces_of_a_helper_lost_after_the_home_node_finished_are_fetched_again()
-> anyhow::Result<()> {
    let others: Vec<IpAddr> = vec!["127.0.0.2".parse()?, "127.0.0.3".parse()?];
    let origin = Origin::start(OriginConfig {
        knobs: Knobs {
            trickle: Some((1024, Duration::from_millis(500))),
            trickle_clients: others.clone(),
            ..Knobs::default()
        },
        ..OriginConfig::default()
    })
    .await?;
    let len = 24 * MIB;
    let Sharded { mut nodes, client, local, id, dir: _dir } =
        start_sharded(&origin, "/h.bin", 63, len, helpers(1)).await?;
    // The helper holds pieces, and the home node has every other piece.
    let deadline = Instant::now() + Duration::from_secs(60);
    let helper = loop {
        let held = origin
            .requests()
            .iter()
            .filter(|r| r.path == "/h.bin" && r.client.is_some_and(|c| others.contains(&c)))
            .map(|r| r.client)
            .collect::<Vec<_>>();
        let durable = crate::support::durable_bytes(&client, id).await?;
        if let Some(Some(helper)) = held.first()
            && durable + held.len() as u64 * MIB >= len
        {
            break *helper;
        }
        anyhow::ensure!(Instant::now() < deadline, "the home node never had all other pieces");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let index = others.iter().position(|ip| *ip == helper).map_or(2, |i| i + 1);
    nodes[index].kill9().await?;
    let job =
        wait_for(&nodes[0], &client, id, &[JobState::Transferred], Duration::from_secs(60)).await?;
    assert_eq!(job.progress.bytes_transferred, len);
    client.act(id, JobAction::Complete).await?;
    assert!(same_as_origin(&origin, "/h.bin", &local)?, "the file differs after its helper died");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_node_and_helpers_keep_to_their_connection_caps() -> anyhow::Result<()> {
    let origin = Origin::start(OriginConfig {
        // 4 MiB/s per connection: requests overlap, so the caps are what limits them.
        knobs: Knobs { rate_limit_per_connection: Some(4 * MIB), ..Knobs::default() },
        ..OriginConfig::default()
    })
    .await?;
    origin.add_file("/capped.bin", Content::Pattern { seed: 64, len: 16 * MIB });
    // Every node: at most 2 requests to one origin, whatever the job asks for.
    let nodes = cluster_with("max_connections_per_origin = 2").await?;
    let client = nodes[0].client(Some(tokens::ALICE))?;
    let dir = tempfile::tempdir()?;
    let local = dir.path().join("capped.bin");
    let files = [(origin.url("/capped.bin"), local.clone())];
    let properties = PropertyChanges { max_connections: Some(Some(6)), ..helpers(2) };
    let id = crate::support::start_download(&client, &files, properties).await?;
    wait_for(&nodes[0], &client, id, &[JobState::Transferred], Duration::from_secs(90)).await?;
    client.act(id, JobAction::Complete).await?;
    assert!(same_as_origin(&origin, "/capped.bin", &local)?);
    let stats = origin.stats();
    println!(
        "6 connections asked, cap 2 per origin per node: at most {} bodies at once per address, {} in all",
        stats.max_bodies_in_flight_per_client, stats.max_bodies_in_flight
    );
    assert!(stats.max_bodies_in_flight_per_client <= 2, "a node exceeded its cap: {stats:?}");
    assert!(stats.max_bodies_in_flight >= 3, "the helpers did not fetch alongside: {stats:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_home_node_keeps_what_its_helpers_delivered() -> anyhow::Result<()> {
    const CHUNK: u64 = MIB;
    let origin = Origin::start(OriginConfig {
        // 2 MiB/s per connection: a piece takes half a second.
        knobs: Knobs { rate_limit_per_connection: Some(2 * MIB), ..Knobs::default() },
        ..OriginConfig::default()
    })
    .await?;
    let len = 48 * MIB;
    // One origin connection at home: the bound of what is re-fetched counts it.
    let props = PropertyChanges { max_connections: Some(Some(1)), ..helpers(2) };
    let Sharded { mut nodes, client, local, id, dir: _dir } =
        start_sharded(&origin, "/h.bin", 63, len, props).await?;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let job = client.job(id).await?;
        if crate::support::durable_bytes(&client, id).await? >= len / 3 {
            break;
        }
        anyhow::ensure!(job.state != JobState::Transferred, "finished before the kill");
        anyhow::ensure!(Instant::now() < deadline, "no progress: {job:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The home node dies without warning; its helpers are mid-piece.
    nodes[0].kill9().await?;
    let killed = Instant::now();
    let at_kill = origin.stats().body_bytes;
    // Helpers give up the dead run's pieces within a second of knowing it ended: the
    // origin stops sending to them.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after_kill = origin.stats().body_bytes.saturating_sub(at_kill);
    nodes[0].restart().await?;
    let client = nodes[0].client(Some(tokens::ALICE))?;
    wait_for(&nodes[0], &client, id, &[JobState::Transferred], Duration::from_secs(180)).await?;
    let refetched = origin.stats().body_bytes.saturating_sub(len);
    // In flight at the kill: the home node's one origin connection, and two piece
    // requests to each of the two helpers (one fetching, one asked ahead).
    let in_flight = 1 + 2 * 2;
    println!(
        "home node killed: {:.1} MiB re-fetched ({:.1} chunks; {in_flight} pieces were in flight), {:.1} MiB sent to helpers in the 3 s after the kill, complete {:.1} s after it",
        refetched as f64 / MIB as f64,
        refetched as f64 / CHUNK as f64,
        after_kill as f64 / MIB as f64,
        killed.elapsed().as_secs_f64()
    );
    assert!(refetched <= in_flight * CHUNK, "re-fetched {refetched} bytes");
    client.act(id, JobAction::Complete).await?;
    assert!(same_as_origin(&origin, "/h.bin", &local)?, "the file differs after the home died");
    Ok(())
}
