//! The SSRF corpus (issue 15, G10): URL spellings of refused addresses — IP literals in
//! every form the URL parser accepts, IPv6 forms carrying a refused IPv4, names that
//! resolve to refused addresses — tried on every outbound path of a transfer: the
//! download's first GET, its HEAD probe (a file with ranges), a dynamic download's one
//! GET, a redirect, an override proxy, upload packets, an upload-reply's
//! `BITS-Reply-URL` and a `BITS-Host-Id`. Listeners on the refused
//! addresses must record 0 connections. A second check: custom headers and
//! credentials do not follow a redirect to another host.
//!
//! The refused addresses must exist to be listened on, so the test runs itself again
//! inside a new network and mount namespace (`unshare --net --mount`, root only; it is
//! skipped with a notice otherwise): the inner run puts the addresses on its own `lo`,
//! bind-mounts its own `/etc/hosts` (names for the corpus), starts the listeners, the
//! hostile servers on 203.0.113.10/11 (public addresses for the policy) and a ferryd
//! with `refuse_private_addresses = true`. Nothing leaves the namespace.

mod hostile;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use ferry_coordinator::{Client, ClientError};
use ferry_protocol::credentials::{AuthScheme, AuthTarget, Secret};
use ferry_protocol::job::{HeaderLines, ProxySettings, ProxyUsage};
use ferry_protocol::{
    BitsCode, FileRange, JobAction, JobId, JobState, JobType, NewFile, NewJob, Priority,
    PropertyChanges,
};
use ferry_tests::{Node, NodeOptions, tokens};

use self::hostile::{Hostile, Tarpit, hex};

/// Marks the run inside the namespace.
const INNER: &str = "FERRY_SSRF_INNER";
/// This test, as libtest names it.
const TEST: &str = "ssrf::every_outbound_path_refuses_the_corpus";
/// The hostile BITS server and origin (`bits.evil.test`).
const HOSTILE: &str = "203.0.113.10";
/// Another host the hostile one redirects to (`other.evil.test`).
const OTHER: &str = "203.0.113.11";
/// Addresses refused by a node with `refuse_private_addresses`, listened on.
const REFUSED: [&str; 8] = [
    "169.254.169.254",
    "10.0.0.1",
    "100.64.0.1",
    "192.168.0.1",
    "127.0.0.2",
    "::1",
    "fd00::1",
    "fd00:ec2::254",
];
/// Jobs created at once (an owner's job quota is smaller than the corpus).
const BATCH: usize = 40;
/// Ports listened on at each refused address.
const PORTS: [u16; 3] = [80, 443, 8080];
/// The namespace's `/etc/hosts`.
const HOSTS: &str = "\
127.0.0.1 localhost
203.0.113.10 bits.evil.test
203.0.113.11 other.evil.test
169.254.169.254 metadata.evil.test metadata.evil.test. node7.evil.test
10.0.0.1 private.evil.test
100.64.0.1 cgnat.evil.test
192.168.0.1 home.evil.test
127.0.0.2 loop.evil.test
fd00:ec2::254 v6meta.evil.test
fd00::1 ula.evil.test
::ffff:169.254.169.254 mapped.evil.test
";

/// The corpus: `scheme://authority` of refused addresses, spelled every way.
fn corpus() -> Vec<String> {
    let http = [
        // 169.254.169.254
        "169.254.169.254",
        "169.254.169.254.",
        "2852039166",
        "0xa9fea9fe",
        "0xA9FEA9FE",
        "0251.0376.0251.0376",
        "0xa9.0xfe.0xa9.0xfe",
        "169.254.43518",
        "169.16689662",
        "0251.0xfe.43518",
        "0x00a9.254.169.254",
        "0000251.254.169.254",
        "%31%36%39.254.169.254",
        "169.254.169.254%2e",
        "169.254.169.254:80",
        "169.254.169.254:8080",
        "0xa9fea9fe:8080",
        "[::ffff:169.254.169.254]",
        "[::ffff:a9fe:a9fe]",
        "[0:0:0:0:0:ffff:a9fe:a9fe]",
        "[::ffff:a9fe:a9fe]:8080",
        "[::169.254.169.254]",
        "[::ffff:0:a9fe:a9fe]",
        "[64:ff9b::a9fe:a9fe]",
        "[64:ff9b::169.254.169.254]",
        "[64:ff9b:1::a9fe:a9fe]",
        "[2002:a9fe:a9fe::1]",
        "[fd00:ec2::254]",
        "[FD00:EC2:0:0:0:0:0:254]",
        "[fd00:ec2::254]:8080",
        // 10.0.0.1
        "10.0.0.1",
        "10.1",
        "167772161",
        "0xa000001",
        "012.0.0.1",
        "0x0a.0.0.1",
        "[::ffff:10.0.0.1]",
        "[64:ff9b::a00:1]",
        // 100.64.0.1
        "100.64.0.1",
        "100.64.1",
        "0x64400001",
        "1681915905",
        // 192.168.0.1
        "192.168.0.1",
        "192.168.1",
        "3232235521",
        "0300.0250.0.1",
        "[::ffff:c0a8:1]",
        // 127.0.0.2, ::1
        "127.0.0.2",
        "127.2",
        "2130706434",
        "0x7f000002",
        "0177.0.0.2",
        "[::ffff:127.0.0.2]",
        "[::1]",
        "[0:0:0:0:0:0:0:1]",
        "[::1]:8080",
        "[fd00::1]",
        "[fd00:0::1]",
        // unspecified, broadcast, multicast
        "0.0.0.0",
        "0",
        "[::]",
        "255.255.255.255",
        "224.0.0.1",
        // names (the namespace's /etc/hosts)
        "metadata.evil.test",
        "METADATA.Evil.Test",
        "metadata.evil.test.",
        "metadata.evil.test:8080",
        "private.evil.test",
        "cgnat.evil.test",
        "home.evil.test",
        "loop.evil.test",
        "v6meta.evil.test",
        "ula.evil.test",
        "mapped.evil.test",
        "node7.evil.test",
        "localhost",
    ];
    let https = ["169.254.169.254", "0xa9fea9fe", "[::ffff:a9fe:a9fe]", "metadata.evil.test"];
    http.iter()
        .map(|a| format!("http://{a}"))
        .chain(https.iter().map(|a| format!("https://{a}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_outbound_path_refuses_the_corpus() -> anyhow::Result<()> {
    if std::env::var_os(INNER).is_some() {
        return inner().await;
    }
    let probe = std::process::Command::new("unshare")
        .args(["--net", "--mount", "--", "true"])
        .stderr(std::process::Stdio::null())
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        println!("SKIPPED {TEST}: needs root and `unshare --net --mount`");
        return Ok(());
    }
    let status = tokio::process::Command::new("unshare")
        .args(["--net", "--mount", "--"])
        .arg(std::env::current_exe()?)
        .args([TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(INNER, "1")
        .status()
        .await?;
    anyhow::ensure!(status.success(), "the run inside the namespace failed: {status}");
    Ok(())
}

/// Runs a command of the namespace set-up.
fn sh(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let status = std::process::Command::new(program).args(args).status()?;
    anyhow::ensure!(status.success(), "{program} {args:?}: {status}");
    Ok(())
}

/// How the jobs of one path ended.
#[derive(Debug, Default)]
struct Tally {
    /// Refused when created by the API's own check (`E_INVALIDARG`), and why.
    refused_at_create: Vec<String>,
    /// Ended in ERROR with `BG_E_BLOCKED_BY_POLICY`.
    blocked: usize,
    /// Transferred (a host id ignored).
    transferred: usize,
    /// Anything else: a failure of the test.
    unexpected: Vec<String>,
}

async fn inner() -> anyhow::Result<()> {
    sh("ip", &["link", "set", "lo", "up"])?;
    for addr in REFUSED.iter().filter(|a| **a != "::1").chain(&[HOSTILE, OTHER]) {
        let prefix = if addr.contains(':') { "128" } else { "32" };
        sh("ip", &["addr", "add", &format!("{addr}/{prefix}"), "dev", "lo"])?;
    }
    let dir = tempfile::tempdir()?;
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, format!("{HOSTS}203.0.113.10 rebind.evil.test\n"))?;
    sh("mount", &["--bind", &hosts.to_string_lossy(), "/etc/hosts"])?;
    // Addresses added to `lo` need a moment before IPv6 ones can be bound (DAD).
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut tarpits = Vec::new();
    for addr in REFUSED {
        for port in PORTS {
            let ip: std::net::IpAddr = addr.parse()?;
            tarpits.push(Tarpit::start(SocketAddr::new(ip, port)).await?);
        }
    }
    let rebound = format!("{HOSTS}169.254.169.254 rebind.evil.test\n");
    let rebind = Some((hosts.clone(), rebound));
    let bits = Hostile::start(format!("{HOSTILE}:80").parse()?, false, rebind).await?;
    let other = Hostile::start(format!("{OTHER}:80").parse()?, true, None).await?;
    let node = Node::start(NodeOptions {
        transfer: "refuse_private_addresses = true\nmax_active_jobs = 64\npreemptive_basic_over_http = true\nconnect_timeout_secs = 5".into(),
        ..NodeOptions::default()
    })
    .await?;
    let client = node.client(Some(tokens::ALICE))?;
    let source = dir.path().join("source.bin");
    std::fs::write(&source, vec![7u8; 100_000])?;

    let corpus = corpus();
    println!("SSRF corpus: {} URL spellings of refused addresses", corpus.len());
    anyhow::ensure!(corpus.len() >= 60);
    let bits_url = "http://bits.evil.test";
    let spec = |job_type, remote: String| Spec { job_type, remote, ..Spec::default() };
    type Make = Box<dyn Fn(&str) -> Spec>;
    let paths: Vec<(&str, Make)> = vec![
        ("download GET", Box::new(move |s| spec(JobType::Download, format!("{s}/file")))),
        (
            "HEAD probe",
            Box::new(move |s| Spec {
                ranges: true,
                ..spec(JobType::Download, format!("{s}/file"))
            }),
        ),
        (
            "dynamic GET",
            Box::new(move |s| Spec {
                dynamic: true,
                ..spec(JobType::Download, format!("{s}/file"))
            }),
        ),
        (
            "redirect",
            Box::new(move |s| {
                spec(
                    JobType::Download,
                    format!("{bits_url}/redirect/{}", hex(&format!("{s}/file"))),
                )
            }),
        ),
        (
            "proxy",
            Box::new(move |s| Spec {
                proxy: Some(s.to_owned()),
                ..spec(JobType::Download, format!("{bits_url}/file"))
            }),
        ),
        ("upload packets", Box::new(move |s| spec(JobType::Upload, format!("{s}/bits/plain/x")))),
        (
            "reply URL",
            Box::new(move |s| {
                let reply = hex(&format!("{s}/reply"));
                spec(JobType::UploadReply, format!("{bits_url}/bits/reply/{reply}"))
            }),
        ),
        (
            "BITS-Host-Id",
            Box::new(move |s| {
                let authority = s.split_once("://").map_or(s, |(_, a)| a);
                spec(JobType::Upload, format!("{bits_url}/bits/hostid/{}", hex(authority)))
            }),
        ),
    ];
    let started = Instant::now();
    let mut failures = Vec::new();
    for (name, make) in &paths {
        let mut tally = Tally::default();
        let want_transferred = *name == "BITS-Host-Id";
        let numbered: Vec<(usize, &String)> = corpus.iter().enumerate().collect();
        // In batches: an owner's job quota is smaller than the corpus.
        for batch in numbered.chunks(BATCH) {
            let mut jobs = Vec::new();
            for (i, spelling) in batch {
                let spec = make(spelling);
                let local = match spec.job_type {
                    JobType::Download => {
                        dir.path().join(format!("dl-{}-{i}", name.replace(' ', "_")))
                    }
                    _ => source.clone(),
                };
                match create(&client, &spec, &local).await {
                    Ok(id) => jobs.push((id, (*spelling).clone())),
                    Err(ClientError::Api(problem))
                        if problem.status == 400 && problem.code == BitsCode::E_INVALIDARG =>
                    {
                        tally.refused_at_create.push(format!("{spelling}: {}", problem.detail));
                    }
                    Err(e) => tally.unexpected.push(format!("{spelling}: create: {e}")),
                }
            }
            for (id, spelling) in jobs {
                let job = wait_final(&client, id, Duration::from_secs(120)).await?;
                let code = job.error.as_ref().map(|e| e.code);
                match (job.state, code) {
                    (JobState::Error, Some(BitsCode::BG_E_BLOCKED_BY_POLICY))
                        if !want_transferred =>
                    {
                        tally.blocked += 1
                    }
                    (JobState::Transferred, _) if want_transferred => tally.transferred += 1,
                    (state, _) => tally
                        .unexpected
                        .push(format!("{spelling}: {state:?} {:?}", job.error.map(|e| e.detail))),
                }
                let _ = client.act(id, JobAction::Cancel).await;
            }
        }
        println!(
            "  {name:<15} {} spellings: {} blocked, {} refused at creation, {} transferred (host id ignored), {} unexpected",
            corpus.len(),
            tally.blocked,
            tally.refused_at_create.len(),
            tally.transferred,
            tally.unexpected.len()
        );
        for r in &tally.refused_at_create {
            println!("    refused at creation: {r}");
        }
        for u in &tally.unexpected {
            println!("    UNEXPECTED {u}");
        }
        failures.extend(tally.unexpected.into_iter().map(|u| format!("{name}: {u}")));
    }
    println!("{} jobs in {:?}", corpus.len() * paths.len(), started.elapsed());

    // Custom headers and credentials go to the job's origin, not where it redirects.
    let leak = leak_check(&client, &dir.path().join("leak"), &bits, &other).await?;
    failures.extend(leak);
    failures.extend(rebinding(&client, &dir.path().join("rebind"), &bits).await?);
    failures.extend(helpers(&dir.path().join("helped"), &bits).await?);

    let mut total = 0;
    println!("connections recorded by the listeners on refused addresses:");
    for tarpit in &tarpits {
        println!("  {:<22} {}", tarpit.addr, tarpit.connections());
        total += tarpit.connections();
    }
    println!("  total {total}; the hostile server accepted {} connections", bits.connections());
    anyhow::ensure!(total == 0, "{total} connections reached refused addresses");
    // The listeners do count: one connection of the test's own to each.
    for tarpit in &tarpits {
        drop(tokio::net::TcpStream::connect(tarpit.addr).await?);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let counted = tarpits.iter().filter(|t| t.connections() == 1).count();
    println!("control: {counted} of {} listeners counted the test's own connection", tarpits.len());
    anyhow::ensure!(counted == tarpits.len(), "a listener does not count connections");
    anyhow::ensure!(
        failures.is_empty(),
        "unexpected outcomes:\n{}\n{}",
        failures.join("\n"),
        node.log_tail()
    );
    Ok(())
}

/// What a job of the corpus is.
#[derive(Debug, Default)]
struct Spec {
    /// Download, upload or upload-reply.
    job_type: JobType,
    /// Its URL.
    remote: String,
    /// Its override proxy.
    proxy: Option<String>,
    /// A byte range (a download then probes with HEAD).
    ranges: bool,
    /// Dynamic content (a download then streams with one GET).
    dynamic: bool,
}

/// The job `spec` for `local`, foreground, with a Basic server credential and a custom
/// header; resumed.
async fn create(client: &Client, spec: &Spec, local: &Path) -> Result<JobId, ClientError> {
    let properties = PropertyChanges {
        priority: Some(Priority::Foreground),
        proxy: spec.proxy.clone().map(|list| ProxySettings {
            usage: ProxyUsage::Override,
            list: Some(list),
            bypass: None,
        }),
        dynamic_content: spec.dynamic.then_some(true),
        custom_headers: Some(Some(HeaderLines(vec!["X-Ferry-Secret: s3cret".into()]))),
        ..PropertyChanges::default()
    };
    let ranges = if spec.ranges { vec![FileRange { offset: 0, length: 100 }] } else { vec![] };
    let new = NewJob {
        display_name: "ssrf".into(),
        job_type: spec.job_type,
        properties,
        files: vec![NewFile {
            remote_url: spec.remote.clone(),
            local_path: local.to_string_lossy().into_owned(),
            ranges,
            sha256: None,
        }],
    };
    let job = client.create_job(&new).await?;
    client
        .set_credentials(job.id, AuthTarget::Server, AuthScheme::Basic, "alice", &Secret::new("pw"))
        .await?;
    client.act(job.id, JobAction::Resume).await?;
    Ok(job.id)
}

/// The job once it is TRANSFERRED, ERROR or TRANSIENT_ERROR (a try failed: nothing
/// here should be retried), or its state after `timeout`.
async fn wait_final(
    client: &Client,
    id: JobId,
    timeout: Duration,
) -> anyhow::Result<ferry_protocol::api::JobInfo> {
    let deadline = Instant::now() + timeout;
    loop {
        let job = client.job(id).await?;
        let end = [JobState::Transferred, JobState::Error, JobState::TransientError];
        if end.contains(&job.state) || Instant::now() > deadline {
            return Ok(job);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// DNS rebinding: `rebind.evil.test` names the hostile server until it has served the
/// download's first chunk, then 169.254.169.254; the second chunk's connection must be
/// refused. Returns what went wrong.
async fn rebinding(client: &Client, local: &Path, bits: &Hostile) -> anyhow::Result<Vec<String>> {
    let remote = "http://rebind.evil.test/rebind".to_owned();
    let spec = Spec { job_type: JobType::Download, remote, ..Spec::default() };
    let id = create(client, &spec, local).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let job = wait_final(client, id, Duration::from_secs(60)).await?;
    let served = bits.seen().iter().filter(|s| s.path == "/rebind").count();
    let code = job.error.as_ref().map(|e| e.code);
    println!(
        "DNS rebinding: the name was served {served} request(s) before it moved; job {:?} {:?}",
        job.state,
        job.error.as_ref().map(|e| &e.detail)
    );
    let _ = client.act(id, JobAction::Cancel).await;
    if served == 0 || job.state != JobState::Error || code != Some(BitsCode::BG_E_BLOCKED_BY_POLICY)
    {
        return Ok(vec![format!("rebinding: served {served}, job {:?} {code:?}", job.state)]);
    }
    Ok(Vec::new())
}

/// Helpers: a 3-node cluster (127.0.0.11-13) downloads from an origin that serves the
/// home node and redirects every helper to a refused address. Returns what went
/// wrong; the listeners' count is checked by the caller.
async fn helpers(dir: &Path, bits: &Hostile) -> anyhow::Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    let nodes = ferry_tests::start_cluster_each(
        NodeOptions { ip: hostile::HOME.parse()?, ..NodeOptions::default() },
        3,
        |_, options| {
            let source = ferry_tests::source_addr(options.ip);
            options.transfer = format!(
                "refuse_private_addresses = true\nchunk_size_bytes = 1048576\nmax_helpers = 2\n{source}"
            );
        },
    )
    .await?;
    let client = nodes[0].client(Some(tokens::ALICE))?;
    let targets = [
        "http://169.254.169.254/x",
        "http://0xa9fea9fe/x",
        "http://[::ffff:a9fe:a9fe]/x",
        "http://10.1/x",
        "http://[fd00:ec2::254]:8080/x",
        "http://metadata.evil.test/x",
        "http://loop.evil.test:8080/x",
        "https://private.evil.test/x",
    ];
    let mut problems = Vec::new();
    let mut outcomes = Vec::new();
    for (i, target) in targets.iter().enumerate() {
        let remote = format!("http://bits.evil.test/helped/{}", hex(target));
        let spec = Spec { job_type: JobType::Download, remote, ..Spec::default() };
        let id = create(&client, &spec, &dir.join(format!("h{i}")))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let job = wait_final(&client, id, Duration::from_secs(90)).await?;
        outcomes.push(format!("{:?}/{:?}", job.state, job.error.map(|e| e.code)));
        let _ = client.act(id, JobAction::Cancel).await;
    }
    let redirected: std::collections::BTreeSet<String> = bits
        .seen()
        .iter()
        .filter(|s| s.path.starts_with("/helped/") && s.from.to_string() != hostile::HOME)
        .map(|s| s.from.to_string())
        .collect();
    println!(
        "helpers: {} jobs whose helpers were redirected to refused addresses; helpers asked from {redirected:?}; jobs ended {outcomes:?}",
        targets.len()
    );
    if redirected.is_empty() {
        problems.push("no helper fetched a piece: the helper path was not tried".into());
    }
    Ok(problems)
}

/// A download redirected from `bits` to `other`: the custom header and the Basic
/// credential reach `bits` and never `other`. Returns what went wrong.
async fn leak_check(
    client: &Client,
    local: &Path,
    bits: &Hostile,
    other: &Hostile,
) -> anyhow::Result<Vec<String>> {
    let remote = format!("http://bits.evil.test/redirect/{}", hex("http://other.evil.test/file"));
    let spec = Spec { job_type: JobType::Download, remote, ..Spec::default() };
    let id = create(client, &spec, local).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let job = wait_final(client, id, Duration::from_secs(60)).await?;
    let mut problems = Vec::new();
    let origin = bits.seen().into_iter().find(|s| s.path.starts_with("/redirect/"));
    let sent_to_origin = origin
        .as_ref()
        .map(|s| (s.header("x-ferry-secret").is_some(), s.header("authorization").is_some()));
    if sent_to_origin != Some((true, true)) {
        problems
            .push(format!("the origin did not get the header and credential: {sent_to_origin:?}"));
    }
    let leaked: Vec<_> = other
        .seen()
        .into_iter()
        .filter(|s| s.header("x-ferry-secret").is_some() || s.header("authorization").is_some())
        .collect();
    println!(
        "header/credential check: origin got both {:?}; the redirect target saw {} requests, {} with them (job ended {:?} {:?})",
        sent_to_origin,
        other.seen().len(),
        leaked.len(),
        job.state,
        job.error.map(|e| e.code)
    );
    if !leaked.is_empty() || other.seen().is_empty() {
        problems.push(format!("the redirect target saw {leaked:?} of {:?}", other.seen()));
    }
    Ok(problems)
}
