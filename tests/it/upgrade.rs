//! Upgrades: a data directory written by an earlier format (a fixture per format in
//! `tests/fixtures/format-N`, made by `scripts/make-format-fixture.sh` with the build of
//! that format) opens with this build, every job it held is there, and the node goes
//! on writing into it, across restarts.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, ensure};
use ferry_protocol::api::{JobInfo, JobList};
use ferry_protocol::command::JobAction;
use ferry_protocol::{JobId, JobType, NewFile, NewJob, Role};
use ferry_tests::{Node, NodeOptions, copy_dir, tokens};

use crate::support::new_job;

/// The fixture directories, oldest format first.
fn fixtures() -> anyhow::Result<Vec<PathBuf>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir(&root)
        .with_context(|| format!("cannot list {}", root.display()))?
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let version = path.file_name()?.to_str()?.strip_prefix("format-")?.parse().ok()?;
            Some((version, path))
        })
        .collect();
    dirs.sort();
    Ok(dirs.into_iter().map(|(_, path)| path).collect())
}

/// The format of a fixture directory (`format-N`).
fn fixture_format(dir: &Path) -> u32 {
    (dir.file_name().and_then(|n| n.to_str()))
        .and_then(|n| n.strip_prefix("format-"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// What must survive of a job.
fn essence(job: &JobInfo) -> String {
    format!(
        "{} {:?} {:?} {:?} {:?} {} files {}",
        job.id,
        job.display_name,
        job.job_type,
        job.priority,
        job.state,
        job.owner,
        job.progress.files_total
    )
}

fn essences(jobs: &[JobInfo]) -> Vec<String> {
    let mut all: Vec<String> = jobs.iter().map(essence).collect();
    all.sort();
    all
}

#[tokio::test]
async fn every_earlier_formats_data_directory_opens_with_all_its_jobs() -> anyhow::Result<()> {
    let fixtures = fixtures()?;
    ensure!(!fixtures.is_empty(), "no fixture data directory in tests/fixtures");
    for fixture in fixtures {
        let expected: JobList = serde_json::from_slice(&std::fs::read(fixture.join("jobs.json"))?)
            .with_context(|| format!("{}/jobs.json", fixture.display()))?;
        ensure!(!expected.jobs.is_empty(), "{} holds no jobs", fixture.display());

        // A node whose data directory is a copy of the fixture, with no tokens
        // configured: the fixture's generated admin.token is the node's.
        let options = NodeOptions { tokens: Vec::new(), ..NodeOptions::queue_only() };
        let mut node = Node::start(options).await?;
        node.stop().await?;
        std::fs::remove_dir_all(node.data_dir())?;
        std::fs::create_dir(node.data_dir())?;
        copy_dir(&fixture, &node.data_dir())?;
        std::fs::remove_file(node.data_dir().join("jobs.json"))?;
        node.restart().await.with_context(|| format!("{} does not open", fixture.display()))?;

        let token = std::fs::read_to_string(node.data_dir().join("admin.token"))?;
        let token = token.trim().to_owned();
        let admin = node.client(Some(&token))?;
        let found = admin.list_jobs(true).await?;
        ensure!(
            essences(&found) == essences(&expected.jobs),
            "{}: the jobs differ after the upgrade:\nexpected {:#?}\nfound {:#?}",
            fixture.display(),
            essences(&expected.jobs),
            essences(&found)
        );

        // The first node's generated token becomes the cluster's first principal once
        // every member reads format 9 (here, at once).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !admin.tokens().await?.tokens.iter().any(|t| t.name == "admin") {
            ensure!(std::time::Instant::now() < deadline, "the admin token was not seeded");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }

        // A principal the previous format made still holds.
        let names: Vec<String> =
            admin.tokens().await?.tokens.into_iter().map(|t| t.name.to_string()).collect();
        let had_tokens = fixture_format(&fixture) >= 9;
        ensure!(
            !had_tokens || names.iter().any(|n| n == "fixture-user"),
            "{}: the fixture's principal is gone: {names:?}",
            fixture.display()
        );

        // It goes on: new jobs, principals (format 9), a replaced prefix (format 10) and
        // the fields of format 11 are written beside the old rows, and everything opens
        // again.
        let job =
            admin.create_job(&new_job("after the upgrade", JobType::Download, vec![])).await?;
        let carol = admin.create_token("carol", Role::User, None).await?;
        let moved = admin.replace_remote_prefix(job.id, "http", "https").await?;
        ensure!(moved.code == ferry_protocol::BitsCode::S_FALSE, "{moved:?}");
        let newer = admin.create_job(&format_11_job()).await?;
        node.restart().await?;
        let admin = node.client(Some(&token))?;
        let after = admin.list_jobs(true).await?;
        ensure!(after.len() == expected.jobs.len() + 2, "{} jobs after a restart", after.len());
        ensure!(admin.job(job.id).await.is_ok());
        has_format_11_fields(&admin, newer.id).await?;
        ensure!(node.client(Some(&carol.token))?.list_jobs(false).await.is_ok());
        println!("{}: {} jobs opened and kept", fixture.display(), expected.jobs.len());
    }
    Ok(())
}

/// A rolling upgrade from the previous build: three nodes of the previous build (the
/// `ferryd` in `FERRY_PREVIOUS_FERRYD`; `scripts/rolling-upgrade.sh` builds it from the
/// commit named in the newest fixture) are stopped and started on this build one at a
/// time while a writer creates jobs, retrying with its request id only on 503 and
/// connection errors. A job using the fields of format 11 is refused until every member
/// is upgraded. After each upgrade the writer pauses until all three members,
/// of both builds, have applied the same entries. Nothing acknowledged is lost and
/// nothing else fails.
/// Skipped (passing, with a notice) without that binary.
#[tokio::test]
async fn a_rolling_upgrade_from_the_previous_build_loses_no_acknowledged_job() -> anyhow::Result<()>
{
    let Some(previous) = std::env::var_os("FERRY_PREVIOUS_FERRYD").map(PathBuf::from) else {
        println!("SKIPPED: set FERRY_PREVIOUS_FERRYD (scripts/rolling-upgrade.sh does)");
        return Ok(());
    };
    let options = NodeOptions { ip: "127.0.8.1".parse()?, ..NodeOptions::queue_only() };
    let mut nodes = ferry_tests::start_cluster_each(options, 3, |_, o| {
        o.ferryd = Some(previous.clone());
    })
    .await?;
    let urls: Vec<String> = nodes.iter().map(Node::url).collect::<anyhow::Result<_>>()?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let paused = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = tokio::spawn(write_until(urls, stop.clone(), paused.clone()));

    let started = std::time::Instant::now();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    for i in 0..nodes.len() {
        nodes[i].stop().await?;
        nodes[i].options.ferryd = None;
        nodes[i].restart().await?;
        settled(&nodes).await.with_context(|| format!("after upgrading node {}", i + 1))?;
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        // Members of both builds replicate to each other: with the writer paused, all
        // three reach the same applied index (a member that could not read the others'
        // messages would stay behind).
        paused.store(true, std::sync::atomic::Ordering::Relaxed);
        let what = format!("the mixed cluster did not converge after upgrading node {}", i + 1);
        ferry_tests::await_agreement(&nodes, 3, &what).await?;
        paused.store(false, std::sync::atomic::Ordering::Relaxed);
        if i + 1 < nodes.len() {
            // The new fields wait for every member: refused, saying why.
            let early = crate::support::raw()
                .post(format!("{}/v1/jobs", nodes[i].url()?))
                .bearer_auth(tokens::ADMIN)
                .json(&format_11_job())
                .send()
                .await?;
            let status = early.status();
            let said = early.text().await?;
            ensure!(
                status == 503 && said.contains("needs format 11"),
                "a job of format 11 mid-upgrade: {status} {said}"
            );
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.await??;
    ensure!(written.errors.is_empty(), "errors besides retried 503s: {:?}", written.errors);
    for node in &nodes {
        let listed: std::collections::HashSet<String> = node
            .client(Some(tokens::ADMIN))?
            .list_jobs(true)
            .await?
            .iter()
            .map(|j| j.id.to_string())
            .collect();
        let lost: Vec<&String> = written.acked.iter().filter(|id| !listed.contains(*id)).collect();
        ensure!(lost.is_empty(), "{} acknowledged jobs lost: {lost:?}", lost.len());
        ensure!(
            listed.len() == written.acked.len(),
            "{} jobs listed for {} acknowledged creates",
            listed.len(),
            written.acked.len()
        );
    }
    println!(
        "rolling upgrade in {:?}: {} jobs acknowledged, {} retried answers (503 or no connection), \
         {} other errors",
        started.elapsed(),
        written.acked.len(),
        written.retried,
        written.errors.len()
    );
    // Every member reads format 11 now: the new fields work, read on every member.
    let admin = nodes[2].client(Some(tokens::ADMIN))?;
    let job = admin.create_job(&format_11_job()).await?;
    for node in &nodes {
        has_format_11_fields(&node.client(Some(tokens::ADMIN))?, job.id).await?;
    }
    admin.act(job.id, JobAction::Cancel).await?;
    let made = admin.create_token("late", Role::User, None).await?;
    ensure!(nodes[0].client(Some(&made.token))?.list_jobs(false).await.is_ok());
    ensure!(written.acked.len() > 50, "only {} writes went through", written.acked.len());
    Ok(())
}

/// Waits (30 s at most) until every node answers with the same leader and three voters
/// (writes go on meanwhile, so applied indexes differ by a little).
async fn settled(nodes: &[Node]) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let mut leaders = Vec::new();
        for node in nodes {
            let status = node.client(Some(tokens::ADMIN))?.cluster().await.ok();
            let voters = status
                .as_ref()
                .map_or(0, |s| s.members.iter().filter(|m| m.role == "voter").count());
            leaders.push(status.and_then(|s| s.leader).filter(|_| voters == 3));
        }
        if leaders[0].is_some() && leaders.iter().all(|l| *l == leaders[0]) {
            return Ok(());
        }
        ensure!(std::time::Instant::now() < deadline, "no common leader within 30 s: {leaders:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// What the writer saw.
struct Written {
    acked: Vec<String>,
    retried: u64,
    errors: Vec<String>,
}

/// Creates jobs through the nodes in turn until `stop`, each with its request id,
/// retrying on another node on 503 and connection errors.
async fn write_until(
    urls: Vec<String>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    paused: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<Written> {
    let http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(5)).build()?;
    let mut written = Written { acked: Vec::new(), retried: 0, errors: Vec::new() };
    let mut turn = 0usize;
    for n in 0..100_000u32 {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        while paused.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let key = format!("upgrade-{n}");
        let spec = new_job(&format!("during the upgrade {n}"), JobType::Download, vec![]);
        let mut attempts = 0;
        loop {
            attempts += 1;
            turn += 1;
            let url = &urls[turn % urls.len()];
            let sent = http
                .post(format!("{url}/v1/jobs"))
                .bearer_auth(tokens::ADMIN)
                .header("Idempotency-Key", &key)
                .json(&spec)
                .send()
                .await;
            let retry = match sent {
                Ok(response) if response.status() == 201 => {
                    let job: JobInfo = response.json().await?;
                    written.acked.push(job.id.to_string());
                    break;
                }
                Ok(response) if response.status() == 503 => true,
                Ok(response) => {
                    let status = response.status();
                    written.errors.push(format!("{status}: {}", response.text().await?));
                    break;
                }
                Err(e) if e.is_connect() || e.is_timeout() || e.is_request() => true,
                Err(e) => return Err(e.into()),
            };
            if retry {
                written.retried += 1;
                ensure!(attempts < 200, "request {key} never succeeded");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    Ok(written)
}

/// A job using every field of format 11: an HTTP method, a bandwidth cap, a file's
/// expected SHA-256.
fn format_11_job() -> NewJob {
    let file = NewFile {
        remote_url: "http://127.0.0.1:9/made.bin".into(),
        local_path: "/tmp/ferry-upgrade/made.bin".into(),
        ranges: vec![],
        sha256: Some("5a".repeat(32)),
    };
    let properties = ferry_protocol::PropertyChanges {
        http_method: Some("POST".into()),
        max_bandwidth: Some(Some(123_456)),
        ..Default::default()
    };
    NewJob {
        display_name: "format 11".into(),
        job_type: JobType::Download,
        properties,
        files: vec![file],
    }
}

/// Fails unless job `id` holds what [`format_11_job`] gave it.
async fn has_format_11_fields(client: &ferry_coordinator::Client, id: JobId) -> anyhow::Result<()> {
    let job = client.job(id).await?;
    let props = &job.properties;
    ensure!(props.http_method.as_deref() == Some("POST"), "{props:?}");
    ensure!(props.max_bandwidth == Some(123_456), "{props:?}");
    let file = client.file(id, 0).await?;
    ensure!(file.expected_sha256 == Some("5a".repeat(32)), "{file:?}");
    Ok(())
}
