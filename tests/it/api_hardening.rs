//! The API against a hostile user with a valid token (issue 15): slow bodies cannot hold
//! the API (health and other users keep answering), a stalled body gets 408, stalled
//! headers close the connection, framing and hop-by-hop custom headers and passwords in
//! URLs are refused, through the API and the CLI.

use std::time::{Duration, Instant};

use ferry_protocol::api::{FileChanges, NewFleet};
use ferry_protocol::{BitsCode, JobType, NewFile, PropertyChanges};
use ferry_tests::{Node, NodeOptions, ferry, tokens};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::support::{file, new_job, queue_view};

/// Connections of the attack.
const ATTACKERS: usize = 300;
/// Rounds of measured requests while it runs.
const ROUNDS: usize = 200;

/// The head of a `POST /v1/jobs` whose 1,000-byte body will never arrive in full.
fn stalled_head(token: &str) -> String {
    format!(
        "POST /v1/jobs HTTP/1.1\r\nHost: ferry\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{"
    )
}

/// One attacking connection: the head, then a byte per second for at most `seconds`.
async fn trickle(addr: std::net::SocketAddr, seconds: u32) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(stalled_head(tokens::ALICE).as_bytes()).await?;
    for _ in 0..seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if stream.write_all(b" ").await.is_err() {
            break;
        }
    }
    Ok(())
}

/// The `q` quantile of `samples` (sorted in place), in milliseconds.
fn quantile(samples: &mut [Duration], q: f64) -> f64 {
    samples.sort();
    let at = ((samples.len() as f64 - 1.0) * q).round() as usize;
    samples.get(at).map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_of_one_user_do_not_stall_health_or_other_users() -> anyhow::Result<()> {
    let node = Node::start(NodeOptions::queue_only()).await?;
    let addr = node.addr()?;
    let bob = node.client(Some(tokens::BOB))?;
    bob.list_jobs(false).await?;

    let attack: Vec<_> = (0..ATTACKERS).map(|_| tokio::spawn(trickle(addr, 25))).collect();
    // Let every connection send its head and take (or wait for) a slot.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let connected = attack.iter().filter(|task| !task.is_finished()).count();
    anyhow::ensure!(connected == ATTACKERS, "only {connected} attacking connections stayed open");

    let health_url = format!("{}/healthz", node.url()?);
    let http = crate::support::raw();
    let (mut health, mut other_user) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let answer = http.get(&health_url).send().await?;
        anyhow::ensure!(answer.status() == 200, "/healthz answered {}", answer.status());
        health.push(start.elapsed());
        let start = Instant::now();
        bob.list_jobs(false).await?;
        other_user.push(start.elapsed());
    }
    let still_attacking = attack.iter().filter(|task| !task.is_finished()).count();
    for task in &attack {
        task.abort();
    }
    let (h50, h99, hmax) =
        (quantile(&mut health, 0.5), quantile(&mut health, 0.99), quantile(&mut health, 1.0));
    let (u50, u99, umax) = (
        quantile(&mut other_user, 0.5),
        quantile(&mut other_user, 0.99),
        quantile(&mut other_user, 1.0),
    );
    println!(
        "{ATTACKERS} slow-body connections with a user token ({still_attacking} still open at \
         the end): /healthz p50 {h50:.1} ms p99 {h99:.1} ms max {hmax:.1} ms; another user's \
         GET /v1/jobs p50 {u50:.1} ms p99 {u99:.1} ms max {umax:.1} ms ({ROUNDS} rounds)"
    );
    anyhow::ensure!(still_attacking == ATTACKERS, "the attack ended before the measurement");
    anyhow::ensure!(h99 < 200.0, "/healthz p99 {h99:.1} ms under attack");
    anyhow::ensure!(u99 < 200.0, "another user's p99 {u99:.1} ms under attack");
    // One request stuck behind the attack is a failure too, not an outlier.
    anyhow::ensure!(hmax < 1000.0 && umax < 1000.0, "a request waited {hmax:.1}/{umax:.1} ms");
    Ok(())
}

/// Reads what the server sends until it closes the connection (at most `limit`).
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> anyhow::Result<String> {
    let mut text = Vec::new();
    tokio::time::timeout(limit, stream.read_to_end(&mut text))
        .await
        .map_err(|_| anyhow::anyhow!("the server kept the connection open for {limit:?}"))??;
    Ok(String::from_utf8_lossy(&text).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_get_408_and_stalled_headers_are_cut() -> anyhow::Result<()> {
    let options = NodeOptions {
        extra_config: "[api]\nbody_timeout_secs = 2\nheader_timeout_secs = 2\n".into(),
        ..NodeOptions::queue_only()
    };
    let node = Node::start(options).await?;
    let addr = node.addr()?;

    // A body trickling a byte every half second (far below the minimum rate).
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(stalled_head(tokens::ALICE).as_bytes()).await?;
    let start = Instant::now();
    let trickled = async {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if stream.write_all(b" ").await.is_err() {
                break;
            }
        }
    };
    trickled.await;
    let answer = read_until_closed(&mut stream, Duration::from_secs(10)).await?;
    let took = start.elapsed();
    anyhow::ensure!(answer.starts_with("HTTP/1.1 408"), "a stalled body got: {answer}");
    anyhow::ensure!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
    anyhow::ensure!(answer.contains("BG_E_TIMEOUT"), "{answer}");
    println!("a trickled body got 408 and its connection closed after {took:?}");

    // Headers that never end: the connection closes after the header timeout.
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: ferry\r\n").await?;
    let start = Instant::now();
    read_until_closed(&mut stream, Duration::from_secs(10)).await?;
    anyhow::ensure!(start.elapsed() < Duration::from_secs(6), "closed after {:?}", start.elapsed());

    // The node still serves, and nothing was created.
    anyhow::ensure!(node.client(None)?.health().await?.status == "ok");
    anyhow::ensure!(queue_view(&node).await?.is_empty(), "a stalled request created a job");
    Ok(())
}

fn headers(lines: &[&str]) -> PropertyChanges {
    PropertyChanges {
        custom_headers: Some(Some(ferry_protocol::job::HeaderLines(
            lines.iter().map(|l| (*l).to_owned()).collect(),
        ))),
        ..PropertyChanges::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_and_hop_by_hop_custom_headers_are_refused() -> anyhow::Result<()> {
    let node = Node::start(NodeOptions::queue_only()).await?;
    let alice = node.client(Some(tokens::ALICE))?;
    let job = alice.create_job(&new_job("h", JobType::Download, vec![file(1)])).await?;
    for line in [
        "Content-Length: 5",
        "content-length: 5",
        "Transfer-Encoding: chunked",
        "Host: elsewhere.example",
        "Connection: keep-alive, X-A",
        "Keep-Alive: timeout=5",
        "TE: trailers",
        "Trailer: X-A",
        "Upgrade: h2c",
        "Proxy-Authorization: Basic Zm9vOmJhcg==",
        "Range: bytes=0-1",
        "If-Range: \"v1\"",
        "Expect: 100-continue",
    ] {
        let refused = alice.set_properties(job.id, &headers(&["X-Fine: 1", line])).await;
        let error = refused.err().ok_or_else(|| anyhow::anyhow!("{line:?} was accepted"))?;
        anyhow::ensure!(error.code() == Some(BitsCode::E_INVALIDARG), "{line:?}: {error}");
        let name = line.split(':').next().unwrap_or_default();
        anyhow::ensure!(error.to_string().contains(name), "{line:?}: {error}");
    }
    // At creation too.
    let mut spec = new_job("c", JobType::Download, vec![file(2)]);
    spec.properties = headers(&["Content-Length: 5"]);
    let error = alice.create_job(&spec).await.err().map(|e| e.code());
    anyhow::ensure!(error == Some(Some(BitsCode::E_INVALIDARG)), "{error:?}");
    // Ordinary headers still pass, and nothing refused was stored.
    alice.set_properties(job.id, &headers(&["X-Trace: 1", "Accept: */*"])).await?;
    let stored = alice.job(job.id).await?;
    let text = serde_json::to_string(&stored)?;
    anyhow::ensure!(!text.to_ascii_lowercase().contains("content-length"), "{text}");

    // The CLI says why.
    let id = job.id.to_string();
    let (code, _, stderr) =
        ferry(&node, tokens::ALICE, &["job", "set", &id, "--custom-header", "Content-Length: 5"])
            .await?;
    anyhow::ensure!(code != 0 && stderr.contains("E_INVALIDARG"), "exit {code}: {stderr}");
    anyhow::ensure!(stderr.contains("Content-Length"), "{stderr}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_in_urls_are_refused_and_never_stored() -> anyhow::Result<()> {
    let node = Node::start(NodeOptions::queue_only()).await?;
    let alice = node.client(Some(tokens::ALICE))?;
    let secret = "hunter2-in-the-url";
    let bad = format!("https://u:{secret}@origin.example/data/1.bin");
    let user_only = "https://someone@origin.example/data/1.bin".to_owned();
    let with = |url: &str| NewFile {
        remote_url: url.to_owned(),
        local_path: "/srv/ferry/u.bin".into(),
        ranges: vec![],
        sha256: None,
    };
    let refused = |r: Result<(), ferry_coordinator::ClientError>| -> anyhow::Result<()> {
        let error = r.err().ok_or_else(|| anyhow::anyhow!("a URL with userinfo was accepted"))?;
        anyhow::ensure!(error.code() == Some(BitsCode::E_INVALIDARG), "{error}");
        let text = error.to_string();
        anyhow::ensure!(text.contains("/credentials") && !text.contains(secret), "{text}");
        Ok(())
    };

    for url in [&bad, &user_only] {
        for job_type in [JobType::Download, JobType::Upload] {
            let spec = new_job("u", job_type, vec![with(url)]);
            refused(alice.create_job(&spec).await.map(drop))?;
        }
    }
    let job = alice.create_job(&new_job("u", JobType::Download, vec![file(1)])).await?;
    refused(alice.add_files(job.id, vec![with(&bad)]).await.map(drop))?;
    let rename = FileChanges { remote_url: Some(bad.clone()), valid: None };
    refused(alice.set_file(job.id, 0, &rename).await.map(drop))?;
    let fleet = NewFleet {
        remote_url: bad.clone(),
        local_path: "/srv/ferry/fleet.bin".into(),
        nodes: vec![],
        display_name: None,
        properties: PropertyChanges::default(),
        credentials: vec![],
        sha256: None,
    };
    refused(alice.create_fleet(&fleet).await.map(drop))?;

    // The CLI: add-file and transfer.
    let id = job.id.to_string();
    for args in [
        vec!["job", "add-file", &id, &bad, "/srv/ferry/v.bin"],
        vec!["transfer", &bad, "/srv/ferry/w.bin"],
    ] {
        let (code, stdout, stderr) = ferry(&node, tokens::ALICE, &args).await?;
        anyhow::ensure!(code != 0, "{args:?} succeeded: {stdout}");
        anyhow::ensure!(stderr.contains("credentials") && !stderr.contains(secret), "{stderr}");
    }

    // Nothing with the secret was stored anywhere the API shows.
    let view = serde_json::to_string(&queue_view(&node).await?)?;
    anyhow::ensure!(!view.contains(secret) && !view.contains("someone@"), "{view}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_and_idle_ones_are_closed() -> anyhow::Result<()> {
    let options = NodeOptions {
        extra_config: "[api]\nmax_connections = 4\nheader_timeout_secs = 2\n".into(),
        ..NodeOptions::queue_only()
    };
    let node = Node::start(options).await?;
    let addr = node.addr()?;
    // Four connections that never send a request take every connection slot.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(addr).await?);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let health = format!("{}/healthz", node.url()?);
    let http = crate::support::raw();
    let start = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(10), http.get(&health).send()).await??;
    let waited = start.elapsed();
    println!("with 4 of 4 connections idle, /healthz answered after {waited:?}");
    anyhow::ensure!(answer.status() == 200, "{}", answer.status());
    // It waited for the header timeout to close an idle connection, not longer.
    anyhow::ensure!(
        waited >= Duration::from_millis(1000) && waited < Duration::from_secs(6),
        "waited {waited:?}"
    );
    for mut stream in idle {
        read_until_closed(&mut stream, Duration::from_secs(5)).await?;
    }
    Ok(())
}
