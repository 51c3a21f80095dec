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
        properties.custom_headers = Some(Some(vec![format!("X-Job: {i}")]));
    }
    if i.is_multiple_of(7) {
        properties.proxy = Some(ProxySettings {
            usage: ProxyUsage::Override,
            list: Some("http://proxy.example:3128".into()),
            bypass: Some("*.internal".into()),
        });
    }
    if job_type == JobType::UploadReply {
        properties.reply_file_name = Some(Some(format!("/srv/ferry/reply-{i}")));
    }
    NewJob { display_name: format!("job-{i}"), job_type, properties, files }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_jobs_survive_kill_9() -> anyhow::Result<()> {
    // A small snapshot interval, so that recovery also goes through snapshot + log tail.
    let options = NodeOptions {
        snapshot_after_entries: 100,
        policy: QueuePolicy { max_jobs_per_user: 1_000, max_jobs: 2_000, ..QueuePolicy::default() },
        ..NodeOptions::default()
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
                &format!("/srv/cli/{i}"),
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
    let mut node = Node::start(NodeOptions::default()).await?;
    let alice = node.client(Some(tokens::ALICE))?;
    let job = alice.create_job(&spec(3)).await?;
    let status = node.stop().await?;
    assert!(status.success(), "SIGTERM ends ferryd with success: {status}\n{}", node.log_tail());
    assert!(!node.data_dir().join("api.addr").exists(), "a stopped node withdraws its address");
    node.restart().await?;
    let alice = node.client(Some(tokens::ALICE))?;
    assert_eq!(alice.job(job.id).await?.display_name, job.display_name);
    Ok(())
}
