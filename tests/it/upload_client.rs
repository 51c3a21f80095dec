//! Upload and upload-reply jobs (issue 7): a Ferry node's upload client against another
//! Ferry node's BITS upload server, with the test back end (`ferry_tests::backend`)
//! answering uploads by reference or by value.
//!
//! Two single-node clusters: the server (127.0.0.1) and the uploading client
//! (127.0.0.2), so the client can be killed while the server keeps its session.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_coordinator::Client;
use ferry_protocol::api::JobInfo;
use ferry_protocol::credentials::{AuthScheme, AuthTarget, Secret};
use ferry_protocol::upload::header::FRAGMENTS_AHEAD;
use ferry_protocol::{
    BitsCode, ErrorContext, JobAction, JobId, JobState, JobType, NewFile, NewJob, PropertyChanges,
};
use ferry_tests::backend::{Backend, expected_reply_of_file};
use ferry_tests::{Node, NodeOptions, ferry_with_input, tokens};

use crate::support::{hash_file, wait_for, write_random};

const MIB: usize = 1024 * 1024;

/// A BITS upload server node; `backend` is `(mode, url)` for `[upload]`.
async fn server(backend: Option<(&str, &str)>) -> anyhow::Result<Node> {
    let extra = match backend {
        Some((mode, url)) => format!("[upload]\nbackend = \"{mode}\"\nbackend_url = \"{url}\"\n"),
        None => String::new(),
    };
    Node::start(NodeOptions { extra_config: extra, ..NodeOptions::default() }).await
}

/// A server, the uploading node (127.0.0.2) with alice's client, and a directory for
/// the files to upload.
struct Setup {
    server: Node,
    node: Node,
    client: Client,
    dir: tempfile::TempDir,
}

/// An upload started by [`Setup::upload`].
struct Upload {
    id: JobId,
    local: PathBuf,
    /// BLAKE3 of the file.
    sent: blake3::Hash,
    remote: String,
}

impl Setup {
    async fn start(backend: Option<(&str, &str)>) -> anyhow::Result<Self> {
        let server = server(backend).await?;
        let node =
            Node::start(NodeOptions { ip: "127.0.0.2".parse()?, ..NodeOptions::default() }).await?;
        let client = node.client(Some(tokens::ALICE))?;
        Ok(Self { server, node, client, dir: tempfile::tempdir()? })
    }

    /// Writes `len` random bytes to `name` and uploads them to `/bits/in/<name>`.
    async fn upload(
        &self,
        name: &str,
        len: usize,
        job_type: JobType,
        properties: PropertyChanges,
    ) -> anyhow::Result<Upload> {
        let local = self.dir.path().join(name);
        let sent = write_random(&local, len)?;
        let remote = format!("{}/bits/in/{name}", self.server.url()?);
        let id = start_upload(&self.client, job_type, &remote, &local, properties).await?;
        Ok(Upload { id, local, sent, remote })
    }

    /// The server's upload root.
    fn uploaded(&self, name: &str) -> PathBuf {
        upload_root(&self.server).join("in").join(name)
    }
}

/// Creates an upload job of `local` to `remote` as alice, with her token as the Basic
/// password for the server, and resumes it.
async fn start_upload(
    client: &Client,
    job_type: JobType,
    remote: &str,
    local: &Path,
    properties: PropertyChanges,
) -> anyhow::Result<JobId> {
    let spec = NewJob {
        display_name: "upload".into(),
        job_type,
        properties,
        files: vec![NewFile {
            remote_url: remote.into(),
            local_path: local.to_string_lossy().into_owned(),
            ranges: vec![],
            sha256: None,
        }],
    };
    let job = client.create_job(&spec).await?;
    client
        .set_credentials(
            job.id,
            AuthTarget::Server,
            AuthScheme::Basic,
            "alice",
            &Secret::new(tokens::ALICE),
        )
        .await?;
    client.act(job.id, JobAction::Resume).await?;
    Ok(job.id)
}

fn upload_root(server: &Node) -> PathBuf {
    server.data_dir().join("uploads")
}

async fn wait_transferred(
    node: &Node,
    client: &Client,
    id: JobId,
    secs: u64,
) -> anyhow::Result<JobInfo> {
    let job = wait_for(
        node,
        client,
        id,
        &[JobState::Transferred, JobState::Error],
        Duration::from_secs(secs),
    )
    .await?;
    anyhow::ensure!(
        job.state == JobState::Transferred,
        "job ended {:?}: {:?}\n{}",
        job.state,
        job.error,
        node.log_tail()
    );
    Ok(job)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_job_places_the_file_on_a_ferry_server() -> anyhow::Result<()> {
    let s = Setup::start(None).await?;
    let len = 20 * MIB + 123;
    let up = s.upload("report.bin", len, JobType::Upload, PropertyChanges::default()).await?;
    let job = wait_transferred(&s.node, &s.client, up.id, 60).await?;
    assert_eq!(job.progress.bytes_transferred, len as u64);
    assert_eq!(job.progress.bytes_total, Some(len as u64));
    assert_eq!(job.reply, None, "an upload job has no reply");
    assert_eq!(hash_file(&s.uploaded("report.bin"))?, up.sent);
    s.client.act(up.id, JobAction::Complete).await?;
    assert_eq!(hash_file(&up.local)?, up.sent, "the uploaded file stays as it was");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_reply_job_of_300_mib_gets_the_back_ends_reply() -> anyhow::Result<()> {
    let backend = Backend::start().await?;
    backend.set_copy_to_destination(true);
    let s = Setup::start(Some(("by_reference", &backend.url()))).await?;
    let started = Instant::now();
    let up = s.upload("big.bin", 300 * MIB, JobType::UploadReply, Default::default()).await?;
    let job = wait_transferred(&s.node, &s.client, up.id, 200).await?;
    let took = started.elapsed();
    println!(
        "300 MiB upload-reply, Ferry client to Ferry server ({} build): {took:?}, {:.0} MiB/s",
        if cfg!(debug_assertions) { "debug" } else { "release" },
        300.0 / took.as_secs_f64()
    );
    // The back end computed the reply from the bytes it was given.
    let expected = expected_reply_of_file(&up.local)?;
    assert_eq!(String::from_utf8(s.client.reply(up.id).await?)?, expected);
    let progress = job.reply.as_ref().map(|r| r.progress);
    assert_eq!(
        progress.map(|p| (p.bytes_total, p.bytes_transferred)),
        Some((Some(expected.len() as u64), expected.len() as u64))
    );
    let notes = backend.notifications();
    assert_eq!(notes.len(), 1, "one notification: {notes:?}");
    assert_eq!(notes[0].original_url.as_deref(), Some(up.remote.as_str()));
    // Copied to its upload path on request, byte-identical.
    assert_eq!(hash_file(&s.uploaded("big.bin"))?, up.sent);
    // Complete renames the reply into place.
    let done = s.client.act(up.id, JobAction::Complete).await?;
    let reply_file = done.job.reply.map(|r| r.file_name).unwrap_or_default();
    assert_eq!(std::fs::read_to_string(&reply_file)?, expected);
    let again = s.client.reply(up.id).await?;
    assert_eq!(String::from_utf8(again)?, expected, "readable after Complete");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_uploading_node_resumes_from_the_servers_offset() -> anyhow::Result<()> {
    let mut s = Setup::start(None).await?;
    let len = 160 * MIB;
    let up = s.upload("resume.bin", len, JobType::Upload, PropertyChanges::default()).await?;
    let (client, id) = (&s.client, up.id);
    let deadline = Instant::now() + Duration::from_secs(60);
    let acked = loop {
        let job = client.job(id).await?;
        if job.progress.bytes_transferred >= 16 * MIB as u64 {
            break job.progress.bytes_transferred;
        }
        anyhow::ensure!(job.state != JobState::Transferred, "finished before the kill");
        anyhow::ensure!(Instant::now() < deadline, "no progress: {job:?}\n{}", s.node.log_tail());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    s.node.kill9().await?;
    anyhow::ensure!((acked as usize) < len, "the upload ended before the kill");
    s.node.restart().await?;
    let job = wait_transferred(&s.node, &s.client, id, 120).await?;
    assert_eq!(job.progress.bytes_transferred, len as u64);
    assert_eq!(hash_file(&s.uploaded("resume.bin"))?, up.sent);
    // The resumed run asked the server where it was with one byte.
    let log = std::fs::read_to_string(s.node.log_path())?;
    let line = log
        .lines()
        .find(|l| l.contains("upload resumed"))
        .ok_or_else(|| anyhow::anyhow!("no 'upload resumed' line:\n{}", s.node.log_tail()))?;
    let field = |name: &str| -> Option<u64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
    };
    let (recorded, at_server, resent) = (field("recorded"), field("server"), field("resent"));
    println!(
        "kill -9 after {} MiB acknowledged: resumed with {recorded:?} recorded, the server at {at_server:?}; bytes re-sent: {resent:?}",
        acked / MIB as u64
    );
    assert!(recorded.is_some_and(|r| r >= acked), "{line}");
    assert!(at_server >= recorded, "the server never has less than was recorded: {line}");
    assert!(resent.is_some_and(|r| r <= 1), "at most the one-byte question: {line}");
    assert_eq!(
        at_server.zip(recorded).map(|(s, r)| s - r > 0),
        resent.map(|r| r == 1),
        "a byte is sent again only when the server was beyond the record: {line}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_end_failures_are_fatal_for_4xx_and_retried_for_5xx() -> anyhow::Result<()> {
    let backend = Backend::start().await?;
    let s = Setup::start(Some(("by_value", &backend.url()))).await?;
    let fast_retry = PropertyChanges { minimum_retry_delay_secs: Some(5), ..Default::default() };
    let failed = |job: JobInfo| job.error.map(|e| (e.context, e.code));

    // 503: a transient error, retried after the delay; the retry gets the reply.
    backend.fail_next(503, 1);
    let up = s.upload("a.bin", MIB + 7, JobType::UploadReply, fast_retry.clone()).await?;
    let states = [JobState::TransientError];
    let job = wait_for(&s.node, &s.client, up.id, &states, Duration::from_secs(30)).await?;
    assert_eq!(failed(job), Some((ErrorContext::RemoteApplication, BitsCode::http(503))));
    wait_transferred(&s.node, &s.client, up.id, 60).await?;
    let expected = expected_reply_of_file(&up.local)?;
    assert_eq!(String::from_utf8(s.client.reply(up.id).await?)?, expected);

    // 403: fatal.
    backend.fail_next(403, 1);
    let up = s.upload("b.bin", 1000, JobType::UploadReply, fast_retry).await?;
    let job =
        wait_for(&s.node, &s.client, up.id, &[JobState::Error], Duration::from_secs(30)).await?;
    assert_eq!(failed(job), Some((ErrorContext::RemoteApplication, BitsCode::http(403))));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_file_changed_during_the_upload_fails_the_job() -> anyhow::Result<()> {
    let s = Setup::start(None).await?;
    let up = s.upload("moving.bin", 64 * MIB, JobType::Upload, Default::default()).await?;
    let (node, client, id, local) = (&s.node, &s.client, up.id, &up.local);
    // Once the session is recorded, pause the job and change the file.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let job = client.job(id).await?;
        if job.progress.bytes_total.is_some() {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "no session: {job:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    client.act(id, JobAction::Suspend).await?;
    {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new().append(true).open(local)?;
        file.write_all(b"one more line")?;
    }
    client.act(id, JobAction::Resume).await?;
    let job = wait_for(node, client, id, &[JobState::Error], Duration::from_secs(30)).await?;
    let error = job.error.expect("an error");
    assert_eq!(
        (error.context, error.code),
        (ErrorContext::LocalFile, BitsCode::BG_E_LOCAL_FILE_CHANGED)
    );
    Ok(())
}

/// Runs the CLI against `node` as alice with `stdin` as its input: (success, stdout, stderr).
async fn ferry(node: &Node, args: &[&str], stdin: &str) -> anyhow::Result<(bool, String, String)> {
    let (code, stdout, stderr) = ferry_with_input(node, tokens::ALICE, args, stdin).await?;
    Ok((code == 0, stdout, stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_transfer_upload_reply_prints_the_reply() -> anyhow::Result<()> {
    let backend = Backend::start().await?;
    let s = Setup::start(Some(("by_value", &backend.url()))).await?;
    let (server, node, dir) = (&s.server, &s.node, s.dir.path());
    let local = dir.join("cli.bin");
    write_random(&local, 3 * MIB)?;
    let expected = expected_reply_of_file(&local)?;
    let remote = format!("{}/bits/in/cli.bin", server.url()?);
    let local_arg = local.to_string_lossy().into_owned();
    let args = ["transfer", "--no-progress", "--upload-reply", "--server-user", "alice"];
    let (ok, stdout, stderr) =
        ferry(node, &[&args[..], &[&remote, &local_arg]].concat(), tokens::ALICE).await?;
    assert!(ok, "ferry transfer failed: {stdout}\n{stderr}");
    assert!(stdout.contains(&expected), "the reply is printed: {stdout}");

    // An upload without reply, and `ferry job reply` on the job above.
    let plain = dir.join("plain.bin");
    write_random(&plain, MIB)?;
    let plain_arg = plain.to_string_lossy().into_owned();
    let remote = format!("{}/bits/in/plain.bin", server.url()?);
    let args = ["transfer", "--no-progress", "--upload", "--server-user", "alice"];
    let (ok, stdout, stderr) =
        ferry(node, &[&args[..], &[&remote, &plain_arg]].concat(), tokens::ALICE).await?;
    assert!(ok, "ferry transfer --upload failed: {stdout}\n{stderr}");
    assert!(stdout.contains("Transfer complete"), "{stdout}");
    // By value without copy: the back end has the upload, the server keeps nothing.
    assert!(!s.uploaded("plain.bin").exists());
    let notes = backend.notifications();
    assert_eq!(notes.last().map(|n| n.bytes), Some(MIB as u64), "{notes:?}");

    // `ferry job reply` of an upload-reply job made through the API.
    let up = s.upload("again.bin", 1234, JobType::UploadReply, Default::default()).await?;
    wait_transferred(node, &s.client, up.id, 60).await?;
    let expected = expected_reply_of_file(&up.local)?;
    let id = up.id;
    let out = dir.join("reply.txt");
    let out_arg = out.to_string_lossy().into_owned();
    let id_arg = id.to_string();
    let (ok, stdout, stderr) =
        ferry(node, &["job", "reply", &id_arg, "--output", &out_arg], "").await?;
    assert!(ok, "{stdout}\n{stderr}");
    assert_eq!(std::fs::read_to_string(&out)?, expected);
    let (ok, stdout, stderr) = ferry(node, &["job", "info", &id_arg], "").await?;
    assert!(ok, "{stdout}\n{stderr}");
    let reply_file = format!("{}.{}.reply", up.local.display(), id.0.simple());
    assert!(stdout.contains("reply file") && stdout.contains(&reply_file), "{stdout}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_id_sends_the_session_to_that_node_until_it_fails_for_its_timeout()
-> anyhow::Result<()> {
    let mut nodes = ferry_tests::start_cluster(NodeOptions::default(), 3).await?;
    // Node A names node B as the host of its sessions, with a 1 s fallback timeout.
    let b = nodes[1].addr()?;
    nodes[0].options.extra_config =
        format!("[upload]\nhost_id = \"{b}\"\nhost_id_fallback_timeout_secs = 1\n");
    nodes[0].restart().await?;
    ferry_tests::await_agreement(&nodes, 3, "A restarted").await?;
    // B's address is not on A's site (an IP literal is a site of its own): the
    // uploading node follows the host id because it is configured to.
    let client_node = Node::start(NodeOptions {
        ip: "127.0.0.4".parse()?,
        transfer: format!("trusted_host_ids = [\"{}\"]", b.ip()),
        ..NodeOptions::default()
    })
    .await?;
    let client = client_node.client(Some(tokens::ALICE))?;
    let dir = tempfile::tempdir()?;
    let a = nodes[0].url()?;
    let remote = |name: &str| -> anyhow::Result<String> { Ok(format!("{a}/bits/in/{name}")) };

    // Every packet after Create-Session goes to B: B takes the final fragment and
    // places the file in its upload root.
    let local = dir.path().join("farm.bin");
    let sent = write_random(&local, 5 * MIB)?;
    let id = start_upload(
        &client,
        JobType::Upload,
        &remote("farm.bin")?,
        &local,
        PropertyChanges::default(),
    )
    .await?;
    if let Err(e) = wait_transferred(&client_node, &client, id, 60).await {
        anyhow::bail!("{e}\nnode B:\n{}", nodes[1].log_tail());
    }
    assert_eq!(hash_file(&upload_root(&nodes[1]).join("in/farm.bin"))?, sent);
    assert!(!upload_root(&nodes[0]).join("in/farm.bin").exists(), "A only created the session");

    // B is gone: the first run fails to reach it (a transient error); once B has been
    // failing for the 1 s timeout, the next run goes back to A.
    nodes[1].kill9().await?;
    let local = dir.path().join("fallback.bin");
    let sent = write_random(&local, MIB)?;
    let fast_retry = PropertyChanges { minimum_retry_delay_secs: Some(5), ..Default::default() };
    let id = start_upload(&client, JobType::Upload, &remote("fallback.bin")?, &local, fast_retry)
        .await?;
    let job = wait_for(
        &client_node,
        &client,
        id,
        &[JobState::TransientError, JobState::Transferred],
        Duration::from_secs(60),
    )
    .await?;
    assert_eq!(job.state, JobState::TransientError, "B cannot be reached at first");
    wait_transferred(&client_node, &client, id, 60).await?;
    assert_eq!(hash_file(&upload_root(&nodes[0]).join("in/fallback.bin"))?, sent);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_an_upload_cancels_its_session_on_the_server() -> anyhow::Result<()> {
    let s = Setup::start(None).await?;
    let up = s.upload("dropped.bin", 96 * MIB, JobType::Upload, Default::default()).await?;
    let (server, node, client, id) = (&s.server, &s.node, &s.client, up.id);
    let pieces = server.data_dir().join("upload-pieces");
    let sessions = || std::fs::read_dir(&pieces).map(|d| d.count()).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.job(id).await?.progress.bytes_transferred == 0 || sessions() == 0 {
        anyhow::ensure!(Instant::now() < deadline, "no progress:\n{}", node.log_tail());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cancelled = client.act(id, JobAction::Cancel).await?;
    anyhow::ensure!(
        cancelled.job.progress.bytes_transferred < (96 * MIB) as u64,
        "the upload ended before the cancel"
    );
    // Cancel-Session ends the session: its pieces go at once, not after 14 days.
    let deadline = Instant::now() + Duration::from_secs(15);
    while sessions() > 0 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the session is still open:\n{}",
            node.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!s.uploaded("dropped.bin").exists());
    assert!(up.local.exists(), "the local file is the owner's");
    Ok(())
}

/// A TCP relay on 127.0.0.1 to `to` that counts the connections it accepts.
async fn counting_relay(
    to: std::net::SocketAddr,
) -> anyhow::Result<(std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>)> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    Ok((addr, accepted))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_keeps_its_http_connections() -> anyhow::Result<()> {
    let s = Setup::start(None).await?;
    let (relay, accepted) = counting_relay(s.server.addr()?).await?;
    let local = s.dir.path().join("one.bin");
    let sent = write_random(&local, 40 * MIB)?;
    let remote = format!("http://{relay}/bits/in/one.bin");
    let id = start_upload(&s.client, JobType::Upload, &remote, &local, Default::default()).await?;
    wait_transferred(&s.node, &s.client, id, 60).await?;
    assert_eq!(hash_file(&s.uploaded("one.bin"))?, sent);
    // Ping, Create-Session, 5 fragments and Close-Session on kept-alive connections:
    // one, and one more per fragment the server lets travel ahead (four).
    let connections = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(connections <= 5, "the session's 8 requests used {connections} connections");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragments_travel_ahead_of_their_acks_where_the_server_allows_it() -> anyhow::Result<()> {
    let s = Setup::start(None).await?;
    for (name, strip) in [("ahead.bin", false), ("in-turn.bin", true)] {
        let rules = ProxyRules { strip_ahead: strip, ..ProxyRules::default() };
        let (proxy, stats) = bits_proxy(s.server.addr()?, rules).await?;
        let local = s.dir.path().join(name);
        let sent = write_random(&local, 48 * MIB)?;
        let remote = format!("http://{proxy}/bits/in/{name}");
        let id =
            start_upload(&s.client, JobType::Upload, &remote, &local, Default::default()).await?;
        wait_transferred(&s.node, &s.client, id, 60).await?;
        assert_eq!(hash_file(&s.uploaded(name))?, sent);
        let most = stats.most_in_flight.load(std::sync::atomic::Ordering::SeqCst);
        if strip {
            assert_eq!(most, 1, "{name}: a server that does not say so gets one at a time");
        } else {
            assert!(most >= 2, "{name}: at most {most} fragment in flight at once");
            assert!(most <= 5, "{name}: {most} fragments in flight at once, beyond 1 + 4 ahead");
        }
    }
    Ok(())
}

/// What [`bits_proxy`] does to what it passes on.
#[derive(Default)]
struct ProxyRules {
    /// The first this many Fragments are answered with a bare 500 (no BITS headers), as
    /// a server whose own machinery failed does.
    bare_500: usize,
    /// `Ferry-Fragments-Ahead` is removed from the server's Acks (a server that does
    /// not take fragments ahead of their turn).
    strip_ahead: bool,
}

/// What [`bits_proxy`] saw.
#[derive(Default)]
struct ProxyStats {
    in_flight: std::sync::atomic::AtomicUsize,
    /// Most Fragments that were sent and not yet answered at once.
    most_in_flight: std::sync::atomic::AtomicUsize,
}

/// An HTTP proxy on 127.0.0.1 in front of the BITS server at `to`, applying `rules`.
async fn bits_proxy(
    to: std::net::SocketAddr,
    rules: ProxyRules,
) -> anyhow::Result<(std::net::SocketAddr, std::sync::Arc<ProxyStats>)> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let failed = Arc::new(AtomicUsize::new(0));
    let stats = Arc::new(ProxyStats::default());
    let rules = Arc::new(rules);
    let upstream = reqwest::Client::new();
    let seen = stats.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (failed, upstream, stats, rules) =
                (failed.clone(), upstream.clone(), seen.clone(), rules.clone());
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    let (failed, upstream, stats, rules) =
                        (failed.clone(), upstream.clone(), stats.clone(), rules.clone());
                    async move {
                        let fragment = request
                            .headers()
                            .get("BITS-Packet-Type")
                            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"fragment"));
                        if fragment {
                            let now = stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                            stats.most_in_flight.fetch_max(now, Ordering::SeqCst);
                        }
                        let answered =
                            forward(request, fragment, &failed, &rules, &upstream, to).await;
                        if fragment {
                            stats.in_flight.fetch_sub(1, Ordering::SeqCst);
                        }
                        answered
                    }
                },
            );
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });

    /// One request through the proxy.
    async fn forward(
        request: hyper::Request<hyper::body::Incoming>,
        fragment: bool,
        failed: &AtomicUsize,
        rules: &ProxyRules,
        upstream: &reqwest::Client,
        to: std::net::SocketAddr,
    ) -> anyhow::Result<hyper::Response<Full<Bytes>>> {
        if fragment && failed.fetch_add(1, Ordering::SeqCst) < rules.bare_500 {
            // Read to the end first: the client sees the answer, not a reset.
            request.into_body().collect().await?;
            let mut answer = hyper::Response::new(Full::new(Bytes::new()));
            *answer.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
            return Ok(answer);
        }
        let (parts, body) = request.into_parts();
        let body = body.collect().await?.to_bytes();
        let mut forward =
            upstream.request(parts.method, format!("http://{to}{}", parts.uri)).body(body);
        for (name, value) in &parts.headers {
            if name != hyper::header::HOST {
                forward = forward.header(name, value);
            }
        }
        let answer = forward.send().await?;
        let mut reply = hyper::Response::builder().status(answer.status());
        for (name, value) in answer.headers() {
            let ahead = name.as_str().eq_ignore_ascii_case(FRAGMENTS_AHEAD);
            if !(ahead && rules.strip_ahead) {
                reply = reply.header(name, value);
            }
        }
        Ok(reply.body(Full::new(answer.bytes().await?))?)
    }

    Ok((addr, stats))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_500_to_a_fragment_is_reported_as_http_error_500() -> anyhow::Result<()> {
    let s = Setup::start(None).await?;
    let rules = ProxyRules { bare_500: 1, ..ProxyRules::default() };
    let (proxy, _) = bits_proxy(s.server.addr()?, rules).await?;
    let local = s.dir.path().join("five.bin");
    let sent = write_random(&local, 5 * MIB)?;
    let remote = format!("http://{proxy}/bits/in/five.bin");
    let quick = PropertyChanges { minimum_retry_delay_secs: Some(1), ..PropertyChanges::default() };
    let id = start_upload(&s.client, JobType::Upload, &remote, &local, quick).await?;
    let job =
        wait_for(&s.node, &s.client, id, &[JobState::TransientError], Duration::from_secs(30))
            .await?;
    let error = job.error.expect("an error");
    assert_eq!(error.code, BitsCode::http(500), "{error:?}");
    assert_eq!(error.name, "BG_E_HTTP_ERROR_500");
    assert_eq!(error.context, ErrorContext::RemoteFile);
    // Retried: the same session goes on.
    wait_transferred(&s.node, &s.client, id, 60).await?;
    assert_eq!(hash_file(&s.uploaded("five.bin"))?, sent);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_crash_before_a_fragments_answer_loses_no_byte() -> anyhow::Result<()> {
    // The server crashes after taking a fragment, before answering it
    // (upload.fragment.before_ack). The uploading node asks the restarted server where
    // the session is, sends the rest, and the file arrives whole. Crossed once per
    // round, at varied fragments (`FERRY_FAILPOINT_ROUNDS`, scripts/failpoints.sh).
    const NAME: &str = "upload.fragment.before_ack";
    let rounds = crate::support::failpoint_rounds();
    let retry = PropertyChanges { minimum_retry_delay_secs: Some(5), ..Default::default() };
    for round in 0..rounds {
        let mut s = Setup::start(None).await?;
        s.server.options.failpoints = Some(format!("{NAME}={}*off->panic", round % 4));
        s.server.restart().await?;
        let name = format!("crash{round}.bin");
        let up = s.upload(&name, 40 * MIB + 3, JobType::Upload, retry.clone()).await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !s.server.exited() {
            anyhow::ensure!(Instant::now() < deadline, "{NAME} never fired");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let log = std::fs::read_to_string(s.server.log_path())?;
        anyhow::ensure!(log.contains(&format!("failpoint {NAME} panic")), "another crash:\n{log}");
        s.server.options.failpoints = None;
        s.server.restart().await?;
        let job = wait_transferred(&s.node, &s.client, up.id, 120).await?;
        anyhow::ensure!(
            hash_file(&s.uploaded(&name))? == up.sent,
            "round {round}: the uploaded file differs"
        );
        if rounds == 1 {
            println!(
                "the server crashed before answering fragment {}; the job resumed and delivered all {} bytes",
                round % 4 + 1,
                job.progress.bytes_transferred
            );
        }
    }
    Ok(())
}
