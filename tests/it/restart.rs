//! G1: every acknowledged job survives `kill -9` and comes back identical.

use ferry_protocol::command::{JobAction, NewJob, PropertyChanges};
use ferry_protocol::job::{JobType, NotifyCmdLine, Priority, ProxySettings, ProxyUsage};
use ferry_protocol::limits::QueuePolicy;
use ferry_protocol::{FileRange, JobId, NewFile};
use ferry_tests::{Node, NodeOptions, ferry, tokens};

use crate::support::{everything, file};

fn spec(i: usize) -> NewJob {
    let job_type = JobType::ALL[i % 3];
    let mut files = vec![file(i)];
    if job_type == JobType::Download {
        files.push(NewFile {
            ranges: vec![
                FileRange { offset: 100, length: 100 },
                FileRange { offset: 900, length: u64::MAX },
                FileRange { offset: 400, length: 100 },
            ],
            ..file(i + 10_000)
        });
    }
    let mut properties = PropertyChanges {
        priority: Some(Priority::ALL[i % 4]),
        description: Some(format!("job number {i}")),
        minimum_retry_delay_secs: Some(30 + i as u32),
        notify_flags: Some(0x1 | 0x2 | 0x10),
        ..PropertyChanges::default()
    };
    if i.is_multiple_of(5) {
        properties.notify_cmdline = Some(Some(NotifyCmdLine {
            program: "/usr/bin/logger".into(),
            args: vec!["-t".into(), format!("job-{i}")],
        }));
        properties.custom_headers = Some(Some(vec![format!("X-Job: {i}")].into()));
    }
    if i.is_multiple_of(7) {
        properties.proxy = Some(ProxySettings {
            usage: ProxyUsage::Override,
            list: Some("http://proxy.example:3128".into()),
            bypass: Some("*.internal".into()),
        });
    }
    if job_type == JobType::UploadReply {
        properties.reply_file_name = Some(Some(format!("/tmp/tmp/srv/ferry/reply-{i}")));
    }
    NewJob { display_name: format!("job-{i}"), job_type, properties, files }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_jobs_survive_kill_9() -> anyhow::Result<()> {
    // A small snapshot interval, so that recovery also goes through snapshot + log tail.
    let options = NodeOptions {
        snapshot_after_entries: 100,
        // Users' jobs name this notify program.
        extra_config: "[notify]\nallowed_programs = [\"/usr/bin/logger\"]\n".into(),
        policy: QueuePolicy { max_jobs_per_user: 1_000, max_jobs: 2_000, ..QueuePolicy::default() },
        ..NodeOptions::queue_only()
    };
    let mut node = Node::start(options).await?;
    let owners = [tokens::ALICE, tokens::BOB, tokens::ADMIN];

    // 480 jobs through the API, concurrently, from three owners...
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let clients: Vec<_> =
            owners.iter().map(|t| node.client(Some(t))).collect::<Result<_, _>>()?;
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in (worker..480).step_by(8) {
                let client = &clients[i % 3];
                let job = client.create_job(&spec(i)).await?;
                // ...in a spread of states.
                match i % 6 {
                    0 => drop(client.act(job.id, JobAction::Resume).await?),
                    1 => {
                        client.act(job.id, JobAction::Resume).await?;
                        client.act(job.id, JobAction::Suspend).await?;
                    }
                    2 => drop(client.act(job.id, JobAction::Cancel).await?),
                    3 if job.job_type == JobType::Download => {
                        drop(client.act(job.id, JobAction::Complete).await?)
                    }
                    _ => {}
                }
                ids.push(job.id);
            }
            Ok::<_, anyhow::Error>(ids)
        }));
    }
    let mut ids: Vec<JobId> = Vec::new();
    for task in tasks {
        ids.extend(task.await??);
    }
    // ...and 20 through the CLI.
    for i in 480..500 {
        let token = owners[i % 3];
        let (code, out, err) = ferry(
            &node,
            token,
            &["--json", "job", "create", &format!("cli-job-{i}"), "--priority", "low"],
        )
        .await?;
        anyhow::ensure!(code == 0, "ferry job create failed: {err}");
        let created: ferry_protocol::api::JobInfo = serde_json::from_str(&out)?;
        let (code, _, err) = ferry(
            &node,
            token,
            &[
                "job",
                "add-file",
                &created.id.to_string(),
                "https://origin.example/cli",
                &format!("/tmp/srv/cli/{i}"),
                "--range",
                "0:10,20:eof",
            ],
        )
        .await?;
        anyhow::ensure!(code == 0, "ferry job add-file failed: {err}");
        ids.push(created.id);
    }
    assert_eq!(ids.len(), 500);

    let admin = node.client(Some(tokens::ADMIN))?;
    let before = everything(&admin, &ids).await?;
    let status = admin.cluster().await?;
    assert!(
        status.snapshot_index.is_some() && status.purged_index.is_some(),
        "a snapshot was taken and the log purged: {status:?}"
    );
    assert!(
        status.command_batches < status.commands_applied,
        "concurrent submissions shared log entries: {} commands in {} entries",
        status.commands_applied,
        status.command_batches
    );

    node.kill9().await?;
    node.restart().await?;

    let admin = node.client(Some(tokens::ADMIN))?;
    let after = everything(&admin, &ids).await?;
    assert_eq!(after.len(), 500);
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(b, a, "job {} changed across kill -9 and restart", b.0.id);
    }
    // Owners too: each user still sees exactly their own jobs.
    for token in [tokens::ALICE, tokens::BOB] {
        let mine = node.client(Some(token))?.list_jobs(false).await?;
        let expected = before
            .iter()
            .filter(|(j, _)| {
                j.owner.as_str() == if token == tokens::ALICE { "alice" } else { "bob" }
                    && !j.state.is_final()
            })
            .count();
        assert_eq!(mine.len(), expected);
    }
    // And the restarted node keeps working.
    let job = admin.create_job(&spec(501)).await?;
    assert_eq!(admin.job(job.id).await?.display_name, "job-501");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly_and_restart_resumes() -> anyhow::Result<()> {
    let mut node = Node::start(NodeOptions::queue_only()).await?;
    let alice = node.client(Some(tokens::ALICE))?;
    let job = alice.create_job(&spec(3)).await?;
    let status = node.stop().await?;
    assert!(status.success(), "SIGTERM ends ferryd with success: {status}\n{}", node.log_tail());
    assert!(!node.data_dir().join("api.addr").exists(), "a stopped node withdraws its address");
    node.restart().await?;
    let alice = node.client(Some(tokens::ALICE))?;
    assert_eq!(alice.job(job.id).await?.display_name, job.display_name);
    // It came back on another port: the membership learns the new address.
    let addr = node.addr()?.to_string();
    let admin = node.client(Some(tokens::ADMIN))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while admin.cluster().await?.members[0].api_addr != addr {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "membership still shows the old address"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Ok(())
}

/// One writer's outcome: acknowledged (key, job id) pairs and the key in flight when the
/// node died, if any.
struct Written {
    acknowledged: Vec<(String, JobId)>,
    in_flight: Option<String>,
}

async fn create_with_key(
    http: &reqwest::Client,
    url: &str,
    key: &str,
) -> anyhow::Result<reqwest::Response> {
    let body = serde_json::json!({"display_name": key, "files": [{"remote_url": "https://o.example/x", "local_path": "/tmp/srv/x"}]});
    Ok(http
        .post(url)
        .bearer_auth(tokens::ALICE)
        .header("idempotency-key", key)
        .timeout(std::time::Duration::from_secs(10))
        .json(&body)
        .send()
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_writes_loses_no_acknowledged_job_and_duplicates_none() -> anyhow::Result<()>
{
    let policy =
        QueuePolicy { max_jobs_per_user: 100_000, max_jobs: 100_000, ..QueuePolicy::default() };
    let mut node = Node::start(NodeOptions { policy, ..NodeOptions::queue_only() }).await?;
    let url = format!("{}/v1/jobs", node.url()?);
    let mut writers = Vec::new();
    for w in 0..8 {
        let url = url.clone();
        writers.push(tokio::spawn(async move {
            let http = crate::support::raw();
            let mut written = Written { acknowledged: Vec::new(), in_flight: None };
            for n in 0..100_000 {
                let key = format!("w{w}-{n}");
                match create_with_key(&http, &url, &key).await {
                    Ok(response) if response.status().as_u16() == 201 => {
                        let job: ferry_protocol::api::JobInfo = response.json().await?;
                        written.acknowledged.push((key, job.id));
                    }
                    _ => {
                        written.in_flight = Some(key);
                        break;
                    }
                }
            }
            Ok::<_, anyhow::Error>(written)
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    node.kill9().await?;
    let mut acknowledged = Vec::new();
    let mut in_flight = Vec::new();
    for writer in writers {
        let written = writer.await??;
        acknowledged.extend(written.acknowledged);
        in_flight.extend(written.in_flight);
    }
    assert!(
        acknowledged.len() > 50,
        "the writers made progress before the kill: {}",
        acknowledged.len()
    );

    node.restart().await?;
    let alice = node.client(Some(tokens::ALICE))?;
    let jobs = alice.list_jobs(false).await?;
    let mut by_name: std::collections::HashMap<String, Vec<JobId>> =
        std::collections::HashMap::new();
    for job in &jobs {
        by_name.entry(job.display_name.clone()).or_default().push(job.id);
    }
    // Every acknowledged create is there, exactly once, with the id it was given.
    for (key, id) in &acknowledged {
        assert_eq!(by_name.get(key), Some(&vec![*id]), "acknowledged job {key} after kill -9");
    }
    // Requests in flight at the kill may or may not have been applied; retrying them
    // with their keys yields exactly one job each.
    let http = crate::support::raw();
    let url = format!("{}/v1/jobs", node.url()?);
    for key in &in_flight {
        let first: ferry_protocol::api::JobInfo =
            create_with_key(&http, &url, key).await?.json().await?;
        let again: ferry_protocol::api::JobInfo =
            create_with_key(&http, &url, key).await?.json().await?;
        assert_eq!(first.id, again.id);
        if let Some(ids) = by_name.get(key) {
            assert_eq!(ids, &vec![first.id], "the retry found the job applied before the kill");
        }
    }
    let jobs = alice.list_jobs(false).await?;
    let names: std::collections::HashSet<&str> =
        jobs.iter().map(|j| j.display_name.as_str()).collect();
    assert_eq!(names.len(), jobs.len(), "no request produced two jobs");
    assert_eq!(jobs.len(), acknowledged.len() + in_flight.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_concurrent_commands_never_make_the_log_unreadable() -> anyhow::Result<()> {
    // 30 users' jobs of 200 files with the longest names BITS allows: about 1.3 MB each as
    // a command, 40 MB in all if one log entry took them together.
    let mut node = Node::start(NodeOptions::queue_only()).await?;
    let big_file = |n: usize| NewFile {
        remote_url: format!("https://origin.example/{}{n:06}", "segment-0123456789/".repeat(113)),
        local_path: format!("/tmp/srv/{}/{n:06}", "d/".repeat(2_030)),
        ranges: vec![],
        sha256: None,
    };
    let mut tasks = Vec::new();
    for j in 0..30 {
        let alice = node.client(Some(tokens::ALICE))?;
        tasks.push(tokio::spawn(async move {
            let files = (0..200).map(|i| big_file(j * 1_000 + i)).collect();
            let spec = NewJob {
                display_name: format!("big-{j}"),
                job_type: JobType::Download,
                properties: Default::default(),
                files,
            };
            alice.create_job(&spec).await.map(|job| job.id)
        }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await??);
    }
    node.kill9().await?;
    node.restart().await?;
    let alice = node.client(Some(tokens::ALICE))?;
    for id in ids {
        assert_eq!(alice.files(id).await?.files.len(), 200);
    }
    Ok(())
}
