//! Bandwidth policy (`[bandwidth]`, `PUT /v1/node/bandwidth`): a node's background
//! transfers, its own and those it helps with, share one limit; foreground jobs are
//! exempt; a schedule switch or an API change applies within a second. Measured
//! against nginx on loopback serving large sparse files, from each node's
//! `ferry_bandwidth_throttled_bytes_total` and nginx's access log. Skipped where nginx
//! is not installed.

use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use ferry_coordinator::bandwidth::{BandwidthPolicy, PolicySource, Weekday, WorkHours};
use ferry_protocol::{JobId, JobState, Priority, PropertyChanges};
use ferry_tests::nginx::{Nginx, NginxOptions};
use ferry_tests::{Node, NodeOptions, tokens};

use crate::support::{raw, start_download, wait_for};

const MB: f64 = 1_000_000.0;
const MIB: u64 = 1024 * 1024;

/// Sparse files of `len` bytes named `names` in a new directory, served by nginx.
async fn origin(names: &[&str], len: u64) -> anyhow::Result<(tempfile::TempDir, Nginx)> {
    let root = tempfile::tempdir()?;
    for name in names {
        let file = std::fs::File::create(root.path().join(name))?;
        file.set_len(len).context("a sparse file")?;
    }
    let nginx = Nginx::start(NginxOptions::new(root.path())).await?;
    Ok((root, nginx))
}

/// `[bandwidth]` with `rate` for background jobs.
fn capped(rate: &str) -> String {
    format!("[bandwidth]\nbackground_rate = \"{rate}\"\n")
}

const THROTTLED: &str = "ferry_bandwidth_throttled_bytes_total";
const WAITED: &str = "ferry_bandwidth_wait_seconds_total";

/// One scrape of a node's metrics, and when it was taken (halfway through the request,
/// which a busy node may take a while to answer).
struct Scrape {
    at: Instant,
    text: String,
}

impl Scrape {
    async fn of(node: &Node) -> anyhow::Result<Self> {
        let sent = Instant::now();
        let response =
            raw().get(format!("{}/metrics", node.url()?)).bearer_auth(tokens::ADMIN).send().await?;
        let text = response.text().await?;
        Ok(Self { at: sent + sent.elapsed() / 2, text })
    }

    /// The value of the unlabelled sample `name`.
    fn value(&self, name: &str) -> anyhow::Result<f64> {
        let text = &self.text;
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
            .with_context(|| format!("no {name} in the metrics:\n{text}"))
    }

    /// The rate of `name` per second from `earlier` to this scrape.
    fn rate_since(&self, earlier: &Self, name: &str) -> anyhow::Result<f64> {
        let seconds = self.at.duration_since(earlier.at).as_secs_f64();
        Ok((self.value(name)? - earlier.value(name)?) / seconds)
    }
}

/// One node's `ferry_bandwidth_throttled_bytes_total` now.
async fn throttled(node: &Node) -> anyhow::Result<f64> {
    Scrape::of(node).await?.value(THROTTLED)
}

/// Job properties: priority and helpers.
fn props(priority: Priority, helpers: u32) -> PropertyChanges {
    PropertyChanges {
        priority: Some(priority),
        max_helpers: Some(Some(helpers)),
        ..PropertyChanges::default()
    }
}

/// Waits until every node of `nodes` drew on its limit (its transfers are under way).
async fn until_all_draw(nodes: &[&Node], within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    let mut first = Vec::new();
    for node in nodes {
        first.push(throttled(node).await?);
    }
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut moving = true;
        for (node, before) in nodes.iter().zip(&first) {
            moving &= throttled(node).await? > *before;
        }
        if moving {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "not every node draws on its limit");
    }
}

fn within(rate: f64, target: f64, tolerance: f64) -> bool {
    (rate - target).abs() <= target * tolerance
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_and_its_helpers_each_keep_to_their_limit() -> anyhow::Result<()> {
    if !Nginx::available() {
        eprintln!("skipped: nginx is not installed");
        return Ok(());
    }
    let names = ["a.bin", "b.bin", "c.bin", "d.bin"];
    let (_root, nginx) = origin(&names, 768 * MIB).await?;
    // Three nodes capped at 20 MB/s each; node 1 runs three background jobs at once,
    // nodes 2 and 3 fetch pieces of them as its helpers; node 2 runs a job of its own
    // too, which nodes 1 and 3 help: on nodes 1 and 2, own jobs and helper work share
    // one limit.
    let options = NodeOptions { extra_config: capped("20MB"), ..NodeOptions::default() };
    let nodes = ferry_tests::start_cluster_each(options, 3, |_, options| {
        let source = ferry_tests::source_addr(options.ip);
        options.transfer = format!(
            "chunk_size_bytes = 4194304\nread_timeout_secs = 10\nmax_active_jobs = 3\n{source}"
        );
    })
    .await?;
    let client = nodes[0].client(Some(tokens::ALICE))?;
    let out = tempfile::tempdir()?;
    let mut jobs = Vec::new();
    let second = nodes[1].client(Some(tokens::ALICE))?;
    for (i, name) in names.iter().enumerate() {
        let client = if i < 3 { &client } else { &second };
        let files = [(nginx.url(name), out.path().join(name))];
        // Two connections per file: on each helper, two pieces of each job on their way
        // at once (four asked), so that a slow moment of the home node starves no helper.
        let properties =
            PropertyChanges { max_connections: Some(Some(2)), ..props(Priority::Normal, 2) };
        jobs.push((client.clone(), start_download(client, &files, properties).await?));
    }
    let all: Vec<&Node> = nodes.iter().collect();
    until_all_draw(&all, Duration::from_secs(30)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let window = Duration::from_secs(20);
    let served_by =
        || -> u64 { names.iter().map(|n| nginx.body_bytes_sent(&format!("/{n}"))).sum() };
    let mut before = Vec::new();
    for node in &nodes {
        before.push(Scrape::of(node).await?);
    }
    let (started, origin_before) = (Instant::now(), served_by());
    tokio::time::sleep(window).await;
    let (seconds, origin_after) = (started.elapsed().as_secs_f64(), served_by());
    let (mut rates, mut held) = (Vec::new(), Vec::new());
    for (node, before) in nodes.iter().zip(&before) {
        let after = Scrape::of(node).await?;
        rates.push(after.rate_since(before, THROTTLED)?);
        held.push(after.rate_since(before, WAITED)?);
    }
    let served = (origin_after - origin_before) as f64 / seconds;
    let progress: u64 = {
        let mut sum = 0;
        for (client, id) in &jobs {
            sum += client.job(*id).await?.progress.bytes_transferred;
        }
        sum
    };
    println!(
        "cap 20 MB/s per node, over {seconds:.1} s: node 1 (3 background jobs, helping node 2) \
         {:.2} MB/s, node 2 (1 job, helping node 1) {:.2} MB/s, node 3 (helping both) {:.2} MB/s; \
         nginx served {:.2} MB/s in all; \
         {:.0} MB of the jobs transferred so far; transfers waited for the limit {:.1}, {:.1} and \
         {:.1} s per second",
        rates[0] / MB,
        rates[1] / MB,
        rates[2] / MB,
        served / MB,
        progress as f64 / MB,
        held[0],
        held[1],
        held[2]
    );
    for (i, rate) in rates.iter().enumerate() {
        assert!(within(*rate, 20.0 * MB, 0.10), "node {} moved {:.2} MB/s", i + 1, rate / MB);
    }
    // The origin's own count agrees: nothing reached the nodes around their limits.
    let drawn: f64 = rates.iter().sum();
    assert!(within(served, drawn, 0.10), "nginx served {served} B/s, the nodes drew {drawn} B/s");
    for (client, id) in jobs {
        client.act(id, ferry_protocol::JobAction::Cancel).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreground_jobs_are_not_limited_unless_configured() -> anyhow::Result<()> {
    if !Nginx::available() {
        eprintln!("skipped: nginx is not installed");
        return Ok(());
    }
    let (root, nginx) = origin(&["bg.bin", "fg2.bin"], 768 * MIB).await?;
    let size = 256 * MIB;
    std::fs::File::create(root.path().join("fg.bin"))?.set_len(size)?;
    let node = Node::start(NodeOptions {
        transfer: "chunk_size_bytes = 4194304\nread_timeout_secs = 10".into(),
        extra_config: capped("20MB"),
        ..NodeOptions::default()
    })
    .await?;
    let client = node.client(Some(tokens::ALICE))?;
    let out = tempfile::tempdir()?;
    let background = start_download(
        &client,
        &[(nginx.url("bg.bin"), out.path().join("bg.bin"))],
        props(Priority::Normal, 0),
    )
    .await?;
    until_all_draw(&[&node], Duration::from_secs(20)).await?;

    // A foreground job beside it: not held to the limit.
    let fg = out.path().join("fg.bin");
    let drawn_before = throttled(&node).await?;
    let started = Instant::now();
    let foreground =
        start_download(&client, &[(nginx.url("fg.bin"), fg)], props(Priority::Foreground, 0))
            .await?;
    wait_for(&node, &client, foreground, &[JobState::Transferred], Duration::from_secs(60)).await?;
    let seconds = started.elapsed().as_secs_f64();
    let foreground_rate = size as f64 / seconds;
    let background_rate = (throttled(&node).await? - drawn_before) / seconds;
    println!(
        "cap 20 MB/s: a foreground job of {} MiB took {seconds:.2} s ({:.1} MB/s) beside a \
         background job held to {:.2} MB/s",
        size / MIB,
        foreground_rate / MB,
        background_rate / MB
    );
    assert!(foreground_rate > 2.0 * 20.0 * MB, "foreground at {:.1} MB/s", foreground_rate / MB);
    assert!(background_rate <= 22.0 * MB, "background at {:.1} MB/s", background_rate / MB);
    assert_eq!(client.job(background).await?.state, JobState::Transferring);

    // With limit_foreground, a foreground job shares the limit with the background one.
    let admin = node.client(Some(tokens::ADMIN))?;
    let policy = BandwidthPolicy {
        background_rate: 20_000_000,
        limit_foreground: true,
        ..BandwidthPolicy::default()
    };
    admin.set_bandwidth(&policy).await?;
    let limited = start_download(
        &client,
        &[(nginx.url("fg2.bin"), out.path().join("fg2.bin"))],
        props(Priority::Foreground, 0),
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.job(limited).await?.progress.bytes_transferred == 0 {
        anyhow::ensure!(Instant::now() < deadline, "the limited foreground job never moved");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (drawn, moved) = (Scrape::of(&node).await?, client.job(limited).await?.progress);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let seconds = started.elapsed().as_secs_f64();
    let all = Scrape::of(&node).await?.rate_since(&drawn, THROTTLED)?;
    let limited_rate = (client.job(limited).await?.progress.bytes_transferred
        - moved.bytes_transferred) as f64
        / seconds;
    println!(
        "with limit_foreground: both jobs drew {:.2} MB/s together, the foreground one {:.2} MB/s",
        all / MB,
        limited_rate / MB
    );
    assert!(within(all, 20.0 * MB, 0.10), "together {:.2} MB/s", all / MB);
    assert!(limited_rate < 20.0 * MB * 1.1, "foreground at {:.2} MB/s", limited_rate / MB);
    for id in [background, limited] {
        client.act(id, ferry_protocol::JobAction::Cancel).await?;
    }
    Ok(())
}

/// Rates over consecutive windows of `window` from now: `count` of them.
async fn rates(node: &Node, window: Duration, count: usize) -> anyhow::Result<Vec<f64>> {
    let mut last = Scrape::of(node).await?;
    let mut out = Vec::new();
    for _ in 0..count {
        tokio::time::sleep_until((last.at + window).into()).await;
        let now = Scrape::of(node).await?;
        out.push(now.rate_since(&last, THROTTLED)?);
        last = now;
    }
    Ok(out)
}

/// The wall-clock time `at` as `HH:MM:SS` of its UTC day.
fn utc_clock(at: SystemTime) -> String {
    let secs = at.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) % 86_400;
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_and_api_switches_change_the_rate_within_a_second() -> anyhow::Result<()> {
    if !Nginx::available() {
        eprintln!("skipped: nginx is not installed");
        return Ok(());
    }
    let (_root, nginx) = origin(&["s.bin"], 768 * MIB).await?;
    let node = Node::start(NodeOptions {
        transfer: "chunk_size_bytes = 1048576\nread_timeout_secs = 10\nconnections = 2".into(),
        extra_config: capped("20MB"),
        ..NodeOptions::default()
    })
    .await?;
    let client = node.client(Some(tokens::ALICE))?;
    let admin = node.client(Some(tokens::ADMIN))?;
    let out = tempfile::tempdir()?;
    let id: JobId = start_download(
        &client,
        &[(nginx.url("s.bin"), out.path().join("s.bin"))],
        props(Priority::Low, 0),
    )
    .await?;
    until_all_draw(&[&node], Duration::from_secs(20)).await?;
    let status = admin.bandwidth().await?;
    assert_eq!((status.current_rate, status.source), (20_000_000, PolicySource::Config));
    let doc: serde_json::Value =
        raw().get(format!("{}/v1/openapi.json", node.url()?)).send().await?.json().await?;
    for method in ["get", "put"] {
        assert!(doc["paths"]["/v1/node/bandwidth"][method].is_object(), "{method} is documented");
    }

    // Work hours at 5 MB/s, opening on a whole second about 4 s from now (all week,
    // for an hour, UTC).
    let opens = SystemTime::now() + Duration::from_millis(4500);
    let opens = SystemTime::UNIX_EPOCH
        + Duration::from_secs(opens.duration_since(SystemTime::UNIX_EPOCH)?.as_secs());
    let policy = BandwidthPolicy {
        background_rate: 20_000_000,
        work_hours: Some(WorkHours {
            days: Weekday::ALL.to_vec(),
            from: utc_clock(opens),
            to: utc_clock(opens + Duration::from_secs(3600)),
            utc_offset: "+00:00".into(),
        }),
        work_hours_rate: Some(5_000_000),
        limit_foreground: false,
    };
    // Users may read the policy, not change it.
    assert!(client.bandwidth().await.is_ok());
    let refused = client.set_bandwidth(&policy).await.expect_err("a user changed the policy");
    assert_eq!(refused.code(), Some(ferry_protocol::BitsCode::E_ACCESSDENIED));
    let mut bad = policy.clone();
    bad.work_hours_rate = None;
    let refused = admin.set_bandwidth(&bad).await.expect_err("a policy without its rate");
    assert_eq!(refused.code(), Some(ferry_protocol::BitsCode::E_INVALIDARG));
    let status = admin.set_bandwidth(&policy).await?;
    assert_eq!((status.current_rate, status.in_work_hours), (20_000_000, false));
    assert_eq!(status.source, PolicySource::Api);
    let before = rates(&node, Duration::from_secs(1), 2).await?;
    // From the opening on, one-second windows.
    let wait = opens.duration_since(SystemTime::now()).unwrap_or_default();
    tokio::time::sleep(wait).await;
    let after_opening = rates(&node, Duration::from_secs(1), 3).await?;
    let status = admin.bandwidth().await?;
    assert!(status.in_work_hours && status.current_rate == 5_000_000, "{status:?}");

    // Back to 20 MB/s through the CLI, no work hours.
    let (code, _, stderr) = ferry_tests::ferry(
        &node,
        tokens::ADMIN,
        &["--json", "node", "set-bandwidth", "20MB", "--no-work-hours"],
    )
    .await?;
    anyhow::ensure!(code == 0, "ferry node set-bandwidth failed: {stderr}");
    let after_api = rates(&node, Duration::from_secs(1), 3).await?;
    let (code, stdout, stderr) =
        ferry_tests::ferry(&node, tokens::ADMIN, &["--json", "node", "bandwidth"]).await?;
    anyhow::ensure!(code == 0, "ferry node bandwidth failed: {stderr}");
    let shown: serde_json::Value = serde_json::from_str(&stdout)?;
    assert_eq!(shown["current_rate"], 20_000_000);
    assert!(shown["policy"]["work_hours"].is_null(), "{shown}");

    let mb = |rates: &[f64]| rates.iter().map(|r| format!("{:.2}", r / MB)).collect::<Vec<_>>();
    println!(
        "1 s windows, MB/s: before the work-hours opening {:?}; from the opening (5 MB/s) {:?}; \
         from the CLI change back to 20 MB/s {:?}",
        mb(&before),
        mb(&after_opening),
        mb(&after_api)
    );
    for rate in &before {
        assert!(within(*rate, 20.0 * MB, 0.10), "before: {:.2} MB/s", rate / MB);
    }
    // The first second after the switch already moves at the new rate (a few draws
    // made just before it count at the old one).
    assert!(within(after_opening[0], 5.0 * MB, 0.15), "first second: {:.2}", after_opening[0] / MB);
    for rate in &after_opening[1..] {
        assert!(within(*rate, 5.0 * MB, 0.10), "after the opening: {:.2} MB/s", rate / MB);
    }
    assert!(within(after_api[0], 20.0 * MB, 0.15), "first second: {:.2}", after_api[0] / MB);
    for rate in &after_api[1..] {
        assert!(within(*rate, 20.0 * MB, 0.10), "after the API change: {:.2} MB/s", rate / MB);
    }
    client.act(id, ferry_protocol::JobAction::Cancel).await?;
    Ok(())
}
