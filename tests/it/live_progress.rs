//! Live progress (issue 19): a running job's bytes received so far on its home node,
//! durable or not, are what `ferry job info` and the API show, from any member, and a
//! stream of `/v1/events` with `progress` carries them; nothing is written for them.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use ferry_protocol::{JobState, Priority, PropertyChanges};
use ferry_tests::nginx::{Nginx, NginxOptions};
use ferry_tests::{NodeOptions, tokens};

use crate::support::{raw, start_download};

const RATE: u64 = 500_000;

/// `bytes_transferred` of the job in `ferry --json job info` output, wherever the
/// document puts the job.
fn bytes_in(json: &serde_json::Value) -> Option<u64> {
    if let Some(bytes) = json.pointer("/progress/bytes_transferred").and_then(|v| v.as_u64()) {
        return Some(bytes);
    }
    match json {
        serde_json::Value::Object(map) => map.values().find_map(bytes_in),
        serde_json::Value::Array(list) => list.iter().find_map(bytes_in),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_info_and_events_show_bytes_before_they_are_durable() -> anyhow::Result<()> {
    if !Nginx::available() {
        eprintln!("skipped: nginx is not installed");
        return Ok(());
    }
    let root = tempfile::tempdir()?;
    // One 8 MiB chunk at 500 KB/s: 16 s before anything is durable.
    std::fs::File::create(root.path().join("slow.bin"))?.set_len(8 * 1024 * 1024)?;
    let options = NginxOptions { limit_rate: Some(RATE), ..NginxOptions::new(root.path()) };
    let nginx = Nginx::start(options).await?;
    let nodes = ferry_tests::start_cluster(NodeOptions::default(), 2).await?;
    let client = nodes[0].client(Some(tokens::ALICE))?;
    let dir = tempfile::tempdir()?;
    let foreground =
        PropertyChanges { priority: Some(Priority::Foreground), ..PropertyChanges::default() };
    let files = [(nginx.url("/slow.bin"), dir.path().join("slow.bin"))];
    let resumed = Instant::now();
    let id = start_download(&client, &files, foreground).await?;

    // Asked of the other member: it reads the home node's live figure.
    let deadline = resumed + Duration::from_secs(10);
    let first = loop {
        let (code, out, err) = ferry_tests::ferry(
            &nodes[1],
            tokens::ALICE,
            &["--json", "job", "info", &id.to_string()],
        )
        .await?;
        anyhow::ensure!(code == 0, "ferry job info failed: {err}");
        let json: serde_json::Value = serde_json::from_str(&out).context("job info JSON")?;
        let bytes = bytes_in(&json).context("no bytes_transferred in the job info")?;
        if bytes > 0 {
            break resumed.elapsed();
        }
        anyhow::ensure!(Instant::now() < deadline, "still 0 bytes after 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("non-zero bytes in `ferry job info` on the other member {first:?} after resume");
    assert!(first <= Duration::from_secs(2), "bytes showed {first:?} after resume");

    // The event stream's progress: the rate it shows is the origin's limit.
    let url = format!("{}/v1/events?job={id}&progress=500", nodes[1].url()?);
    let mut response = raw().get(url).bearer_auth(tokens::ALICE).send().await?;
    anyhow::ensure!(response.status() == 200, "events: {}", response.status());
    let mut samples: Vec<(Instant, u64)> = Vec::new();
    let mut text = String::new();
    let until = Instant::now() + Duration::from_secs(20);
    while samples.len() < 10 && Instant::now() < until {
        let Some(chunk) = tokio::time::timeout(Duration::from_secs(5), response.chunk()).await??
        else {
            break;
        };
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find("\n\n") {
            let event: String = text.drain(..end + 2).collect();
            let field = |name: &str| {
                event.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).map(str::to_owned)
            };
            if field("event:").as_deref() != Some("progress") {
                continue;
            }
            let data = field("data:").unwrap_or_default();
            let json: serde_json::Value = serde_json::from_str(&data)?;
            let bytes = json.pointer("/jobs/0/bytes_transferred").and_then(|v| v.as_u64());
            let state = json.pointer("/jobs/0/state").and_then(|v| v.as_str());
            if let (Some(bytes), Some("transferring")) = (bytes, state) {
                samples.push((Instant::now(), bytes));
            }
        }
    }
    anyhow::ensure!(samples.len() >= 8, "{} progress events; left: {text:?}", samples.len());
    let ((t0, b0), (t1, b1)) = (samples[0], samples[samples.len() - 1]);
    let rate = (b1 - b0) as f64 / t1.duration_since(t0).as_secs_f64();
    println!(
        "progress events: {} samples, {rate:.0} B/s against a {RATE} B/s origin",
        samples.len()
    );
    assert!((rate - RATE as f64).abs() <= 0.25 * RATE as f64, "shown rate {rate:.0} B/s");
    let job = client.job(id).await?;
    assert_eq!(job.state, JobState::Transferring);
    client.act(id, ferry_protocol::JobAction::Cancel).await?;
    Ok(())
}

/// Bytes per second from the CLI's `1.2 MiB/s`.
fn rate_of(text: &str) -> Option<f64> {
    let (number, unit) = text.strip_suffix("/s")?.trim().split_once(' ')?;
    let scale = match unit {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some(number.parse::<f64>().ok()? * scale)
}

/// The progress line `ferry transfer` prints when stderr is not a terminal shows the
/// real rate (once 5 s have passed: its second line comes at 10 s), against nginx
/// paced by the node's bandwidth limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transfer_lines_show_the_real_rate() -> anyhow::Result<()> {
    use tokio::io::AsyncBufReadExt as _;
    if !Nginx::available() {
        eprintln!("skipped: nginx is not installed");
        return Ok(());
    }
    const LIMIT: u64 = 1_000_000;
    let root = tempfile::tempdir()?;
    std::fs::File::create(root.path().join("paced.bin"))?.set_len(30_000_000)?;
    // nginx paces each connection, the node's limit all of them together: the real
    // rate is the node's, whatever the connections.
    let options = NginxOptions { limit_rate: Some(2 * LIMIT), ..NginxOptions::new(root.path()) };
    let nginx = Nginx::start(options).await?;
    let limited = format!("[bandwidth]\nbackground_rate = \"{LIMIT}\"\n");
    let node =
        ferry_tests::Node::start(NodeOptions { extra_config: limited, ..NodeOptions::default() })
            .await?;
    let dir = tempfile::tempdir()?;
    let mut child = tokio::process::Command::new(ferry_tests::binary("ferry")?)
        .args(["transfer", "--connections", "1", &nginx.url("/paced.bin")])
        .arg(dir.path().join("paced.bin"))
        .env("FERRY_NODE", node.url()?)
        .env("FERRY_TOKEN", tokens::ALICE)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stderr = child.stderr.take().context("stderr")?;
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let mut printed = Vec::new();
    let shown = tokio::time::timeout(Duration::from_secs(40), async {
        while let Some(line) = lines.next_line().await? {
            printed.push(line.clone());
            let parts: Vec<&str> = line.split("  ").map(str::trim).collect();
            let elapsed = parts
                .iter()
                .rev()
                .find_map(|p| p.strip_suffix(" s").filter(|_| !p.starts_with("ETA")))
                .and_then(|s| s.parse::<f64>().ok());
            let rate = parts.iter().find_map(|p| rate_of(p));
            if let (Some(elapsed), Some(rate)) = (elapsed, rate)
                && elapsed >= 5.0
            {
                return Ok::<_, anyhow::Error>(Some(rate));
            }
        }
        Ok(None)
    })
    .await
    .context("no progress line within 40 s")??
    .with_context(|| format!("no rate after 5 s in {printed:?}"))?;
    println!("ferry transfer showed {shown:.0} B/s against nginx at {LIMIT} B/s: {printed:?}");
    // SIGTERM cancels the job (and ends the test sooner).
    if let Some(pid) = child.id() {
        std::process::Command::new("kill").arg(pid.to_string()).status()?;
    }
    let _ = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
    let limit = LIMIT as f64;
    assert!((shown - limit).abs() <= 0.25 * limit, "shown {shown:.0} B/s");
    Ok(())
}
