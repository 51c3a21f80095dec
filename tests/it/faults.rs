//! Every fault knob of the test origin against a real `ferryd`: each test ends in the
//! BITS-correct state and error code, with a correct file wherever recovery is possible.
//! Retries wait for BITS's minimum retry delay, whose floor is 5 s.

use std::time::Duration;

use ferry_protocol::command::JobAction;
use ferry_protocol::{BitsCode, JobState, Priority, PropertyChanges};
use ferry_tests::origin::{Content, Knobs, Origin, OriginConfig, ProxyMode};
use ferry_tests::tokens;

use crate::download::same_as_origin;
use crate::support::{start_download, transfer_node, wait_for};

const KIB: u64 = 1024;
const SHORT: Duration = Duration::from_secs(30);

/// Retry after the 5 s floor of the minimum retry delay.
fn fast_retry() -> PropertyChanges {
    PropertyChanges { minimum_retry_delay_secs: Some(5), ..PropertyChanges::default() }
}

async fn origin_with(path: &str, len: u64, knobs: Knobs) -> anyhow::Result<Origin> {
    let origin = Origin::start(OriginConfig::default()).await?;
    origin.add_file(path, Content::Pattern { seed: len, len });
    origin.set_knobs(knobs);
    Ok(origin)
}

#[tokio::test]
async fn server_without_ranges_fails_background_jobs_and_streams_foreground_ones()
-> anyhow::Result<()> {
    let origin =
        origin_with("/f.bin", 1000 * KIB, Knobs { no_ranges: true, ..Knobs::default() }).await?;
    let node = transfer_node("").await?;
    let client = node.client(Some(tokens::ALICE))?;
    let out = tempfile::tempdir()?;

    let id = start_download(
        &client,
        &[(origin.url("/f.bin"), out.path().join("bg"))],
        PropertyChanges::default(),
    )
    .await?;
    let job = wait_for(&node, &client, id, &[JobState::Error], SHORT).await?;
    assert_eq!(job.error.map(|e| e.code), Some(BitsCode::BG_E_INSUFFICIENT_RANGE_SUPPORT));

    // BITS's documented recovery: foreground, one unranged GET (files up to 2 GB).
    let local = out.path().join("fg");
    let fg = PropertyChanges { priority: Some(Priority::Foreground), ..PropertyChanges::default() };
    let id = start_download(&client, &[(origin.url("/f.bin"), local.clone())], fg).await?;
    wait_for(&node, &client, id, &[JobState::Transferred], SHORT).await?;
    client.act(id, JobAction::Complete).await?;
    assert!(same_as_origin(&origin, "/f.bin", &local)?);
    Ok(())
}

#[tokio::test]
async fn missing_size_needs_dynamic_content() -> anyhow::Result<()> {
    let origin =
        origin_with("/d.bin", 700 * KIB, Knobs { no_content_length: true, ..Knobs::default() })
            .await?;
    let node = transfer_node("").await?;
    let client = node.client(Some(tokens::ALICE))?;
    let out = tempfile::tempdir()?;

    let id = start_download(
        &client,
        &[(origin.url("/d.bin"), out.path().join("x"))],
        PropertyChanges::default(),
    )
    .await?;
    let job = wait_for(&node, &client, id, &[JobState::Error], SHORT).await?;
    assert_eq!(job.error.map(|e| e.code), Some(BitsCode::BG_E_MISSING_FILE_SIZE));

    // Dynamic content: no HEAD, one stream, size learned at the end.
    let local = out.path().join("dyn");
    let dynamic = PropertyChanges { dynamic_content: Some(true), ..PropertyChanges::default() };
    let id =
        start_download(&client, &[(origin.url("/d.bin"), local.clone())], dynamic.clone()).await?;
    let job = wait_for(&node, &client, id, &[JobState::Transferred], SHORT).await?;
    assert_eq!(job.progress.bytes_total, Some(700 * KIB));
    client.act(id, JobAction::Complete).await?;
    assert!(same_as_origin(&origin, "/d.bin", &local)?);
    assert!(origin.requests().iter().filter(|r| r.path == "/d.bin").any(|r| r.method == "GET"));

    // The maximum download size is enforced on dynamic content: fatal.
    let capped = PropertyChanges { max_download_size: Some(Some(100 * KIB)), ..dynamic };
    let id =
        start_download(&client, &[(origin.url("/d.bin"), out.path().join("cap"))], capped).await?;
    let job = wait_for(&node, &client, id, &[JobState::Error], SHORT).await?;
    assert_eq!(job.error.map(|e| e.code), Some(BitsCode::BG_E_MAX_DOWNLOAD_SIZE_LIMIT_REACHED));
    Ok(())
}

#[tokio::test]
async fn dropped_connections_are_transient_and_resume_from_durable_chunks() -> anyhow::Result<()> {
    // 256 KiB chunks arriving at about one a second; once some are durable, every
    // connection is cut mid-body.
    let slow = Knobs { rate_limit_per_connection: Some(256 * KIB), ..Knobs::default() };
    let origin = origin_with("/c.bin", 1024 * KIB, slow.clone()).await?;
    let node = transfer_node("").await?;
    let client = node.client(Some(tokens::ALICE))?;
    let out = tempfile::tempdir()?;
    let local = out.path().join("c.bin");
    let id =
        start_download(&client, &[(origin.url("/c.bin"), local.clone())], fast_retry()).await?;
    let deadline = tokio::time::Instant::now() + SHORT;
    while client.job(id).await?.progress.bytes_transferred == 0 {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "no progress\n{}", node.log_tail());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    origin.set_knobs(Knobs { drop_after_bytes: Some(1), ..slow });
    let job =
        wait_for(&node, &client, id, &[JobState::TransientError, JobState::Transferred], SHORT)
            .await?;
    if job.state == JobState::Transferred {
        for r in origin.requests() {
            println!("{r:?}");
        }
        println!("{}", std::fs::read_to_string(node.log_path())?);
    }
    let error = job.error.expect("an error");
    assert_eq!(error.code, BitsCode::BG_E_CONNECTION_CLOSED, "{error:?}");
    assert_eq!(job.error_count, 1);
    let durable = job.progress.bytes_transferred;
    assert!((256 * KIB..1024 * KIB).contains(&durable), "{durable}");

    origin.set_knobs(Knobs::default());
    let before = origin.requests().len();
    let job = wait_for(&node, &client, id, &[JobState::Transferred], SHORT).await?;
    assert_eq!(job.error_count, 1);
    // The retry asked only for chunks that were not durable.
    let retried: Vec<u64> = origin.requests()[before..]
        .iter()
        .filter_map(|r| r.range.as_deref()?.strip_prefix("bytes=")?.split('-').next()?.parse().ok())
        .collect();
    assert!(!retried.is_empty());
    assert!(
        retried.iter().all(|offset| *offset >= durable),
        "{retried:?} vs {durable}: {:#?}",
        &origin.requests()[before..]
    );
    client.act(id, JobAction::Complete).await?;
    assert!(same_as_origin(&origin, "/c.bin", &local)?);
    Ok(())
}

#[tokio::test]
async fn server_errors_are_retried_and_client_errors_are_fatal() -> anyhow::Result<()> {
    let origin =
        origin_with("/s.bin", 300 * KIB, Knobs { fail_first: Some((1, 503)), ..Knobs::default() })
            .await?;
    let node = transfer_node("").await?;
    let client = node.client(Some(tokens::ALICE))?;
    let out = tempfile::tempdir()?;

    let local = out.path().join("s.bin");
    let id =
        start_download(&client, &[(origin.url("/s.bin"), local.clone())], fast_retry()).await?;
    let job = wait_for(&node, &client, id, &[JobState::TransientError], SHORT).await?;
    assert_eq!(job.error.map(|e| e.code), Some(BitsCode::http(503)));
    wait_for(&node, &client, id, &[JobState::Transferred], SHORT).await?;
    client.act(id, JobAction::Complete).await?;
    assert!(same_as_origin(&origin, "/s.bin", &local)?);

    // 403 is fatal: ERROR at once, no retry; Resume after the fix retries at once.
    origin.set_knobs(Knobs { force_status: Some(403), ..Knobs::default() });
    let local = out.path().join("f.bin");
    let id = start_download(
        &client,
        &[(origin.url("/s.bin"), local.clone())],
        PropertyChanges::default(),
    )
    .await?;
    let job = wait_for(&node, &client, id, &[JobState::Error], SHORT).await?;
    assert_eq!(job.error.map(|e| e.code), Some(BitsCode::http(403)));
    origin.set_knobs(Knobs::default());
    client.act(id, JobAction::Resume).await?;
    wait_for(&node, &client, id, &[JobState::Transferred], Duration::from_secs(4)).await?;

    // No-progress timeout 0: every error is fatal, even a 503.
    origin.set_knobs(Knobs { force_status: Some(503), ..Knobs::default() });
    let no_retry =
        PropertyChanges { no_progress_timeout_secs: Some(0), ..PropertyChanges::default() };
    let id =
        start_download(&client, &[(origin.url("/s.bin"), out.path().join("n"))], no_retry).await?;
    let job = wait_for(&node, &client, id, &[JobState::Error], SHORT).await?;
    assert_eq!(job.error.map(|e| e.code), Some(BitsCode::http(503)));
    Ok(())
}

#[tokio::test]
async fn slow_trickle_completes_and_the_max_download_time_stops_it() -> anyhow::Result<()> {
    let origin = origin_with(
        "/t.bin",
        64 * KIB,
        Knobs { trickle: Some((4096, Duration::from_millis(20))), ..Knobs::default() },
    )
    .await?;
    let node = transfer_node("").await?;
    let client = node.client(Some(tokens::ALICE))?;
    let out = tempfile::tempdir()?;
    let local = out.path().join("t.bin");
    let id = start_download(
        &client,
        &[(origin.url("/t.bin"), local.clone())],
        PropertyChanges::default(),
    )
    .await?;
    wait_for(&node, &client, id, &[JobState::Transferred], SHORT).await?;
    client.act(id, JobAction::Complete).await?;
    assert!(same_as_origin(&origin, "/t.bin", &local)?);

    // A 1 s maximum download time against a ~10 s trickle: ERROR, BG_E_MAXDOWNLOAD_TIMEOUT.
    origin.add_file("/long.bin", Content::Pattern { seed: 9, len: 2048 * KIB });
    origin
        .set_knobs(Knobs { trickle: Some((4096, Duration::from_millis(20))), ..Knobs::default() });
    let limited = PropertyChanges { max_download_time_secs: Some(1), ..PropertyChanges::default() };
    let id = start_download(&client, &[(origin.url("/long.bin"), out.path().join("l"))], limited)
        .await?;
    let job = wait_for(&node, &client, id, &[JobState::Error], SHORT).await?;
    assert_eq!(job.error.map(|e| e.code), Some(BitsCode::BG_E_MAXDOWNLOAD_TIMEOUT));
    Ok(())
}

#[tokio::test]
async fn content_changed_mid_download_restarts_the_file_never_mixing_versions() -> anyhow::Result<()>
{
    // The content changes once 1 MiB has been served: If-Range then gets 200s.
    let origin = origin_with(
        "/v.bin",
        4096 * KIB,
        Knobs { change_content_after_bytes: Some(1024 * KIB), ..Knobs::default() },
    )
    .await?;
    let first = origin.file("/v.bin").map(|f| f.etag).unwrap_or_default();
    let node = transfer_node("connections = 2").await?;
    let client = node.client(Some(tokens::ALICE))?;
    let out = tempfile::tempdir()?;
    let local = out.path().join("v.bin");
    let id = start_download(
        &client,
        &[(origin.url("/v.bin"), local.clone())],
        PropertyChanges::default(),
    )
    .await?;
    wait_for(&node, &client, id, &[JobState::Transferred], SHORT).await?;
    client.act(id, JobAction::Complete).await?;
    let now = origin.file("/v.bin").map(|f| f.etag).unwrap_or_default();
    assert_ne!(first, now, "the content did change during the download");
    assert!(same_as_origin(&origin, "/v.bin", &local)?, "the file is entirely the new version");
    let files = client.files(id).await?.files;
    assert_eq!(files[0].remote.as_ref().and_then(|r| r.etag.clone()), Some(now));
    Ok(())
}

#[tokio::test]
async fn per_connection_rate_cap_is_beaten_by_several_connections() -> anyhow::Result<()> {
    let origin = origin_with(
        "/r.bin",
        2048 * KIB,
        Knobs { rate_limit_per_connection: Some(1024 * KIB), ..Knobs::default() },
    )
    .await?;
    let node = transfer_node("").await?;
    let client = node.client(Some(tokens::ALICE))?;
    let out = tempfile::tempdir()?;
    let local = out.path().join("r.bin");
    let four = PropertyChanges { max_connections: Some(Some(4)), ..PropertyChanges::default() };
    let started = std::time::Instant::now();
    let id = start_download(&client, &[(origin.url("/r.bin"), local.clone())], four).await?;
    wait_for(&node, &client, id, &[JobState::Transferred], SHORT).await?;
    let took = started.elapsed();
    client.act(id, JobAction::Complete).await?;
    assert!(same_as_origin(&origin, "/r.bin", &local)?);
    // One connection would need 2 s; the origin saw parallel connections.
    assert!(origin.stats().connections >= 4, "{:?}", origin.stats());
    println!("2 MiB at 1 MiB/s per connection with 4 connections: {took:?}");
    Ok(())
}

/// A job for `url` (a host only `proxy` reaches) through `proxy` (usage override), to
/// `local`, created suspended.
fn through_proxy(proxy: &Origin, url: &str, local: &std::path::Path) -> ferry_protocol::NewJob {
    let settings = ferry_protocol::job::ProxySettings {
        usage: ferry_protocol::job::ProxyUsage::Override,
        list: Some(proxy.addr().to_string()),
        bypass: None,
    };
    ferry_protocol::NewJob {
        display_name: "via proxy".into(),
        job_type: ferry_protocol::JobType::Download,
        properties: PropertyChanges { proxy: Some(settings), ..PropertyChanges::default() },
        files: vec![ferry_protocol::NewFile {
            remote_url: url.into(),
            local_path: local.to_string_lossy().into(),
            ranges: vec![],
            sha256: None,
        }],
    }
}

#[tokio::test]
async fn proxy_override_with_and_without_proxy_credentials() -> anyhow::Result<()> {
    let proxy = origin_with(
        "/p.bin",
        300 * KIB,
        Knobs {
            proxy: Some(ProxyMode {
                require_auth: Some(("pu".into(), "proxy-pw-77".into())),
                ..ProxyMode::default()
            }),
            ..Knobs::default()
        },
    )
    .await?;
    let node = transfer_node("").await?;
    let client = node.client(Some(tokens::ALICE))?;
    let out = tempfile::tempdir()?;
    // A host only the proxy can reach.
    let url = "http://files.invalid/p.bin";

    let id = client.create_job(&through_proxy(&proxy, url, &out.path().join("no"))).await?.id;
    client.act(id, JobAction::Resume).await?;
    let job = wait_for(&node, &client, id, &[JobState::Error], SHORT).await?;
    assert_eq!(job.error.map(|e| e.code), Some(BitsCode::http(407)));

    let local = out.path().join("yes");
    let id = client.create_job(&through_proxy(&proxy, url, &local)).await?.id;
    let password = ferry_protocol::credentials::Secret::new("proxy-pw-77");
    use ferry_protocol::credentials::{AuthScheme, AuthTarget};
    client.set_credentials(id, AuthTarget::Proxy, AuthScheme::Basic, "pu", &password).await?;
    client.act(id, JobAction::Resume).await?;
    wait_for(&node, &client, id, &[JobState::Transferred], SHORT).await?;
    client.act(id, JobAction::Complete).await?;
    assert!(same_as_origin(&proxy, "/p.bin", &local)?);
    assert!(proxy.requests().iter().any(|r| r.via_proxy && r.status == 206));
    Ok(())
}

#[tokio::test]
async fn no_progress_for_the_timeout_turns_retries_into_error() -> anyhow::Result<()> {
    let origin =
        origin_with("/np.bin", 100 * KIB, Knobs { force_status: Some(503), ..Knobs::default() })
            .await?;
    let node = transfer_node("").await?;
    let client = node.client(Some(tokens::ALICE))?;
    let out = tempfile::tempdir()?;
    // Retry every 5 s, give up after 6 s without progress: one retry, then ERROR.
    let props = PropertyChanges {
        minimum_retry_delay_secs: Some(5),
        no_progress_timeout_secs: Some(6),
        ..PropertyChanges::default()
    };
    let started = std::time::Instant::now();
    let id =
        start_download(&client, &[(origin.url("/np.bin"), out.path().join("np"))], props).await?;
    let job = wait_for(&node, &client, id, &[JobState::TransientError], SHORT).await?;
    assert_eq!(job.error.map(|e| e.code), Some(BitsCode::http(503)));
    let job = wait_for(&node, &client, id, &[JobState::Error], SHORT).await?;
    let took = started.elapsed();
    // BG_E_NO_PROGRESS, naming the last error.
    let error = job.error.ok_or_else(|| anyhow::anyhow!("ERROR without an error"))?;
    assert_eq!(error.code, BitsCode::BG_E_NO_PROGRESS);
    assert!(error.detail.contains("503"), "the last error is named: {}", error.detail);
    assert!(job.error_count >= 2, "retried once before giving up: {}", job.error_count);
    assert!(took >= Duration::from_secs(6), "gave up after {took:?}, before the timeout");
    println!("ERROR after {took:?} and {} errors", job.error_count);
    Ok(())
}

#[tokio::test]
async fn servers_refusing_head_are_probed_with_a_one_byte_range() -> anyhow::Result<()> {
    // Ranges of the file make the engine probe (HEAD) rather than fetch a first chunk.
    let origin =
        origin_with("/h.bin", 300 * KIB, Knobs { no_head: true, ..Knobs::default() }).await?;
    let node = transfer_node("").await?;
    let client = node.client(Some(tokens::ALICE))?;
    let out = tempfile::tempdir()?;
    let local = out.path().join("h.bin");
    let spec = ferry_protocol::NewJob {
        display_name: "no head".into(),
        job_type: ferry_protocol::JobType::Download,
        properties: PropertyChanges::default(),
        files: vec![ferry_protocol::NewFile {
            remote_url: origin.url("/h.bin"),
            local_path: local.to_string_lossy().into(),
            ranges: vec![ferry_protocol::FileRange {
                offset: 1000,
                length: ferry_protocol::file::LENGTH_TO_EOF,
            }],
            sha256: None,
        }],
    };
    let id = client.create_job(&spec).await?.id;
    client.act(id, JobAction::Resume).await?;
    wait_for(&node, &client, id, &[JobState::Transferred], SHORT).await?;
    client.act(id, JobAction::Complete).await?;
    assert_eq!(
        std::fs::read(&local)?,
        ferry_tests::origin::pattern_bytes(300 * KIB, 1000, 300 * KIB - 1000)
    );
    let requests = origin.requests();
    assert!(requests.iter().any(|r| r.method == "HEAD" && r.status == 405));
    assert!(requests.iter().any(|r| r.range.as_deref() == Some("bytes=0-0") && r.status == 206));
    Ok(())
}

#[tokio::test]
async fn custom_headers_go_with_every_request() -> anyhow::Result<()> {
    let origin = origin_with("/x.bin", 600 * KIB, Knobs::default()).await?;
    let node = transfer_node("").await?;
    let client = node.client(Some(tokens::ALICE))?;
    let out = tempfile::tempdir()?;
    let props = PropertyChanges {
        custom_headers: Some(Some(vec!["X-Ferry-Tenant: blue-0f7c9e".to_owned()].into())),
        custom_headers_write_only: Some(true),
        ..PropertyChanges::default()
    };
    let id =
        start_download(&client, &[(origin.url("/x.bin"), out.path().join("x"))], props).await?;
    wait_for(&node, &client, id, &[JobState::Transferred], SHORT).await?;
    let requests = origin.requests();
    assert!(requests.len() >= 3, "several chunk requests: {}", requests.len());
    assert!(
        requests.iter().all(|r| r.x_headers == ["x-ferry-tenant: blue-0f7c9e"]),
        "{requests:#?}"
    );
    assert!(
        requests.iter().all(|r| r.user_agent.as_deref().is_some_and(|ua| ua.starts_with("Ferry/")))
    );
    // Write-only: never read back.
    assert!(client.job(id).await?.properties.custom_headers.is_empty());
    // Readable headers read back as set; either way they are sealed at rest.
    let readable = PropertyChanges {
        custom_headers: Some(Some(vec!["X-Team: red-51aa".to_owned()].into())),
        ..PropertyChanges::default()
    };
    let other = client
        .create_job(&ferry_protocol::NewJob {
            display_name: "readable".into(),
            job_type: ferry_protocol::JobType::Download,
            properties: readable,
            files: vec![],
        })
        .await?;
    assert_eq!(other.properties.custom_headers.0, vec!["X-Team: red-51aa".to_owned()]);
    for secret in ["blue-0f7c9e", "red-51aa"] {
        crate::support::assert_no_secret(&node, secret)?;
    }
    Ok(())
}

#[tokio::test]
async fn the_egress_policy_refuses_addresses_before_connecting() -> anyhow::Result<()> {
    let origin = origin_with("/e.bin", 100 * KIB, Knobs::default()).await?;
    let node = transfer_node("refuse_private_addresses = true").await?;
    let client = node.client(Some(tokens::ALICE))?;
    let out = tempfile::tempdir()?;
    let port = origin.addr().port();
    // An IP literal (checked before any request) and a name that resolves to loopback
    // (checked on the DNS answer).
    for url in [origin.url("/e.bin"), format!("http://localhost:{port}/e.bin")] {
        let id = start_download(
            &client,
            &[(url.clone(), out.path().join("x"))],
            PropertyChanges::default(),
        )
        .await?;
        let job = wait_for(&node, &client, id, &[JobState::Error], SHORT).await?;
        let error = job.error.expect("an error");
        assert_eq!(error.code, BitsCode::BG_E_BLOCKED_BY_POLICY, "{url}: {error:?}");
        assert!(error.detail.contains("egress policy"), "{}", error.detail);
    }
    assert_eq!(origin.stats().connections, 0, "nothing reached the refused origin");
    Ok(())
}

/// Python's `http.server` (as users meet it): HTTP/1.0, no range support.
struct PythonServer {
    child: std::process::Child,
    port: u16,
}

impl PythonServer {
    fn start(dir: &std::path::Path) -> anyhow::Result<Option<Self>> {
        use std::io::BufRead;
        let python = std::path::Path::new("/usr/bin/python3");
        if !python.exists() {
            return Ok(None);
        }
        let mut child = std::process::Command::new(python)
            .args(["-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory"])
            .arg(dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        // "Serving HTTP on 127.0.0.1 port 40123 (http://127.0.0.1:40123/) ..."
        let port = line
            .split_whitespace()
            .skip_while(|w| *w != "port")
            .nth(1)
            .and_then(|p| p.parse().ok());
        let Some(port) = port else {
            let _ = child.kill();
            anyhow::bail!("cannot read the port from {line:?}");
        };
        Ok(Some(Self { child, port }))
    }
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP/1.0 server that ignores ranges: a background job fails with
/// `BG_E_INSUFFICIENT_HTTP_SUPPORT` (BITS needs HTTP/1.1), naming the way out; a
/// foreground job fetches the file in one stream.
#[tokio::test]
async fn an_http_1_0_server_needs_foreground_priority() -> anyhow::Result<()> {
    let served = tempfile::tempdir()?;
    let bytes = ferry_tests::origin::pattern_bytes(8, 0, 1024 * KIB);
    std::fs::write(served.path().join("f.bin"), &bytes)?;
    let Some(server) = PythonServer::start(served.path())? else {
        println!("SKIPPED: /usr/bin/python3 is missing");
        return Ok(());
    };
    let url = format!("http://127.0.0.1:{}/f.bin", server.port);
    let node = transfer_node("").await?;
    let client = node.client(Some(tokens::ALICE))?;
    let out = tempfile::tempdir()?;

    let background = start_download(
        &client,
        &[(url.clone(), out.path().join("bg"))],
        PropertyChanges::default(),
    )
    .await?;
    let job = wait_for(&node, &client, background, &[JobState::Error], SHORT).await?;
    let error = job.error.ok_or_else(|| anyhow::anyhow!("ERROR without an error"))?;
    assert_eq!(error.code, BitsCode::BG_E_INSUFFICIENT_HTTP_SUPPORT, "{}", error.detail);
    assert!(error.detail.contains("foreground"), "names the way out: {}", error.detail);

    let props =
        PropertyChanges { priority: Some(Priority::Foreground), ..PropertyChanges::default() };
    let local = out.path().join("fg");
    let foreground = start_download(&client, &[(url, local.clone())], props).await?;
    wait_for(&node, &client, foreground, &[JobState::Transferred], SHORT).await?;
    client.act(foreground, JobAction::Complete).await?;
    assert_eq!(std::fs::read(&local)?, bytes);
    drop(server);
    Ok(())
}

/// Digest to a proxy: the job's proxy credential answers the proxy's `407` Digest
/// challenge (`Proxy-Authenticate`), and the download goes through it.
#[tokio::test]
async fn digest_credentials_answer_a_proxys_challenge() -> anyhow::Result<()> {
    use ferry_protocol::credentials::{AuthScheme, AuthTarget, Secret};
    let proxy = origin_with(
        "/d.bin",
        300 * KIB,
        Knobs {
            proxy: Some(ProxyMode {
                require_digest: Some(("du".into(), "digest-pw-42".into())),
                ..ProxyMode::default()
            }),
            ..Knobs::default()
        },
    )
    .await?;
    let node = transfer_node("").await?;
    let client = node.client(Some(tokens::ALICE))?;
    let out = tempfile::tempdir()?;
    let local = out.path().join("d");
    let spec = through_proxy(&proxy, "http://files.invalid/d.bin", &local);
    let id = client.create_job(&spec).await?.id;
    let password = Secret::new("digest-pw-42");
    client.set_credentials(id, AuthTarget::Proxy, AuthScheme::Digest, "du", &password).await?;
    client.act(id, JobAction::Resume).await?;
    wait_for(&node, &client, id, &[JobState::Transferred], SHORT).await?;
    client.act(id, JobAction::Complete).await?;
    assert!(same_as_origin(&proxy, "/d.bin", &local)?);
    let schemes: Vec<String> =
        proxy.requests().iter().filter_map(|r| r.proxy_authorization.clone()).collect();
    assert!(schemes.iter().any(|s| s.eq_ignore_ascii_case("digest")), "{schemes:?}");
    assert!(proxy.requests().iter().any(|r| r.via_proxy && r.status == 407), "challenged first");
    Ok(())
}
