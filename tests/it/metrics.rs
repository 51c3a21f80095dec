//! `GET /metrics`: the Prometheus text format, parsed line by line; every family is
//! there, and the ones a download, a failing job and an event subscriber touch move.

use std::collections::HashMap;
use std::time::Duration;

use ferry_protocol::{JobState, PropertyChanges};
use ferry_tests::origin::{Content, Knobs, Origin, OriginConfig};
use ferry_tests::{Node, tokens};

use crate::support::{raw, start_download, transfer_node, wait_for};

const MIB: u64 = 1024 * 1024;

/// Every family, by the name its `# TYPE` line gives, with its type.
const FAMILIES: [(&str, &str); 19] = [
    ("ferry_api_request_duration_seconds", "histogram"),
    ("ferry_jobs", "gauge"),
    ("ferry_upload_sessions", "gauge"),
    ("ferry_job_errors_total", "counter"),
    ("ferry_job_retries_total", "counter"),
    ("ferry_transfer_bytes_total", "counter"),
    ("ferry_helper_pieces_in_flight", "gauge"),
    ("ferry_fleet_transferred", "gauge"),
    ("ferry_fleet_size", "gauge"),
    ("ferry_raft_term", "gauge"),
    ("ferry_raft_leader", "gauge"),
    ("ferry_raft_last_log_index", "gauge"),
    ("ferry_raft_commit_index", "gauge"),
    ("ferry_raft_applied_index", "gauge"),
    ("ferry_raft_follower_lag_entries", "gauge"),
    ("ferry_raft_proposal_batch_commands", "histogram"),
    ("ferry_storage_fsync_seconds", "histogram"),
    ("ferry_bus_subscribers", "gauge"),
    ("ferry_bus_subscriber_lag_entries", "gauge"),
];

/// One scrape: the declared families and every sample.
struct Scrape {
    types: HashMap<String, String>,
    samples: Vec<(String, HashMap<String, String>, f64)>,
}

impl Scrape {
    /// Parses the text format strictly: `# HELP`/`# TYPE` lines, then samples of a
    /// declared family (`name`, or `name_bucket`/`_sum`/`_count` of a histogram).
    fn parse(text: &str) -> anyhow::Result<Self> {
        let mut types = HashMap::new();
        let mut samples = Vec::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) =
                    rest.split_once(' ').ok_or_else(|| anyhow::anyhow!("bad TYPE: {line}"))?;
                types.insert(name.to_string(), kind.to_string());
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            anyhow::ensure!(!line.starts_with('#'), "unknown comment line: {line}");
            let (series, value) =
                line.rsplit_once(' ').ok_or_else(|| anyhow::anyhow!("bad sample: {line}"))?;
            let value: f64 = value.parse().map_err(|_| anyhow::anyhow!("bad value: {line}"))?;
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => {
                    let labels = labels
                        .strip_suffix('}')
                        .ok_or_else(|| anyhow::anyhow!("bad labels: {line}"))?;
                    (name, parse_labels(labels)?)
                }
                None => (series, HashMap::new()),
            };
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s).filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
                })
                .unwrap_or(name);
            anyhow::ensure!(types.contains_key(family), "sample of an undeclared family: {line}");
            samples.push((name.to_string(), labels, value));
        }
        Ok(Self { types, samples })
    }

    /// The sum of the samples named `name` whose labels include `with`.
    fn value(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, labels, _)| {
                n == name && with.iter().all(|(k, v)| labels.get(*k).is_some_and(|l| l == v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }
}

fn parse_labels(text: &str) -> anyhow::Result<HashMap<String, String>> {
    let mut labels = HashMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (key, after) =
            rest.split_once("=\"").ok_or_else(|| anyhow::anyhow!("bad label in {text}"))?;
        let end = after.find('"').ok_or_else(|| anyhow::anyhow!("unterminated label in {text}"))?;
        labels.insert(key.to_string(), after[..end].to_string());
        rest = after[end + 1..].trim_start_matches(',');
    }
    Ok(labels)
}

async fn scrape(node: &Node, token: Option<&str>) -> anyhow::Result<(u16, String)> {
    let mut request = raw().get(format!("{}/metrics", node.url()?));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    if status == 200 {
        let kind = response.headers().get("content-type").and_then(|v| v.to_str().ok());
        anyhow::ensure!(
            kind.is_some_and(|k| k.starts_with("text/plain; version=0.0.4")),
            "content type {kind:?}"
        );
    }
    Ok((status, response.text().await?))
}

async fn scraped(node: &Node) -> anyhow::Result<Scrape> {
    let (status, text) = scrape(node, Some(tokens::ADMIN)).await?;
    anyhow::ensure!(status == 200, "GET /metrics answered {status}: {text}");
    Scrape::parse(&text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_name_every_family_and_move_with_a_download() -> anyhow::Result<()> {
    const SIZE: u64 = 48 * MIB;
    let origin = Origin::start(OriginConfig::default()).await?;
    origin.add_file("/big.bin", Content::Pattern { seed: 5, len: SIZE });
    origin.set_knobs(Knobs { rate_limit_per_connection: Some(16 * MIB), ..Knobs::default() });
    let node = transfer_node("chunk_size_bytes = 1048576").await?;
    let client = node.client(Some(tokens::ALICE))?;

    // Administrators only.
    assert_eq!(scrape(&node, None).await?.0, 401);
    assert_eq!(scrape(&node, Some(tokens::ALICE)).await?.0, 403);
    let before = scraped(&node).await?;
    // A one-node cluster: it leads, in term 1 or later.
    assert_eq!(before.value("ferry_raft_leader", &[]), 1.0);
    assert!(before.value("ferry_raft_term", &[]) >= 1.0);

    // An event subscriber, held open.
    let events =
        raw().get(format!("{}/v1/events", node.url()?)).bearer_auth(tokens::ALICE).send().await?;
    assert_eq!(events.status(), 200);

    let out = tempfile::tempdir()?;
    let id = start_download(
        &client,
        &[(origin.url("/big.bin"), out.path().join("big.bin"))],
        PropertyChanges::default(),
    )
    .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let during = loop {
        let job = client.job(id).await?;
        if job.state == JobState::Transferring && job.progress.bytes_transferred >= 4 * MIB {
            break scraped(&node).await?;
        }
        anyhow::ensure!(job.state != JobState::Transferred, "finished before the scrape");
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "no progress: {job:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let from_origin = during.value("ferry_transfer_bytes_total", &[("source", "origin")]);
    assert!(from_origin > 0.0 && from_origin < SIZE as f64, "mid-download bytes {from_origin}");
    assert_eq!(during.value("ferry_jobs", &[("state", "TRANSFERRING")]), 1.0);
    assert_eq!(during.value("ferry_bus_subscribers", &[]), 1.0);
    assert_eq!(during.value("ferry_bus_subscriber_lag_entries", &[]), 0.0, "served live");
    let created = [("route", "/v1/jobs"), ("method", "POST"), ("status", "201")];
    assert_eq!(during.value("ferry_api_request_duration_seconds_count", &created), 1.0);
    for moved in [
        "ferry_raft_last_log_index",
        "ferry_raft_commit_index",
        "ferry_raft_applied_index",
        "ferry_raft_proposal_batch_commands_count",
        "ferry_storage_fsync_seconds_count",
    ] {
        assert!(during.value(moved, &[]) > before.value(moved, &[]), "{moved} did not move");
    }
    let scrapes = [("route", "/metrics"), ("method", "GET"), ("status", "200")];
    assert!(during.value("ferry_api_request_duration_seconds_count", &scrapes) >= 1.0);

    wait_for(&node, &client, id, &[JobState::Transferred], Duration::from_secs(60)).await?;
    // A job that fails: the origin has no such file (HTTP 404 is BG_E_HTTP_ERROR_404).
    let missing = start_download(
        &client,
        &[(origin.url("/missing.bin"), out.path().join("missing.bin"))],
        PropertyChanges::default(),
    )
    .await?;
    wait_for(&node, &client, missing, &[JobState::Error], Duration::from_secs(30)).await?;
    // A fleet (of this one node): its progress by fleet.
    origin.add_file("/small.bin", Content::Pattern { seed: 6, len: MIB });
    let fleet = client
        .create_fleet(&ferry_protocol::api::NewFleet {
            remote_url: origin.url("/small.bin"),
            local_path: out.path().join("small.bin").display().to_string(),
            nodes: vec![],
            display_name: None,
            properties: PropertyChanges::default(),
            credentials: vec![],
            sha256: None,
        })
        .await?;
    let member =
        fleet.members.first().map(|m| m.job).ok_or_else(|| anyhow::anyhow!("no member"))?;
    client.act(member, ferry_protocol::JobAction::Resume).await.ok();
    wait_for(&node, &client, member, &[JobState::Transferred], Duration::from_secs(30)).await?;

    let after = scraped(&node).await?;
    for (family, kind) in FAMILIES {
        assert_eq!(after.types.get(family).map(String::as_str), Some(kind), "family {family}");
    }
    // Every metric the shipped Grafana dashboard charts is one the node serves.
    let dashboard = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana-dashboard.json"),
    )?;
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard)?;
    let mut charted = 0;
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            for name in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if !name.starts_with("ferry_") {
                    continue;
                }
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .filter(|f| after.types.get(*f).is_some_and(|t| t == "histogram"))
                    .unwrap_or(name);
                assert!(after.types.contains_key(family), "the dashboard charts unknown {name}");
                charted += 1;
            }
        }
    }
    assert!(charted >= FAMILIES.len(), "the dashboard charts {charted} series");
    let of_fleet = [("fleet", fleet.id.to_string())];
    let of_fleet: Vec<(&str, &str)> = of_fleet.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(after.value("ferry_fleet_transferred", &of_fleet), MIB as f64);
    assert_eq!(after.value("ferry_fleet_size", &of_fleet), MIB as f64);
    assert_eq!(
        after.value("ferry_transfer_bytes_total", &[("source", "origin")]),
        (SIZE + MIB) as f64
    );
    assert_eq!(after.value("ferry_jobs", &[("state", "TRANSFERRED")]), 2.0);
    assert_eq!(after.value("ferry_jobs", &[("state", "ERROR")]), 1.0);
    assert_eq!(after.value("ferry_job_errors_total", &[("code", "0x80190194")]), 1.0);
    drop(events);
    Ok(())
}
