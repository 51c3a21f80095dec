//! The notify command line: run on the home node once per entry into TRANSFERRED, also
//! when the node crashed between the commit and the run, and never twice.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use ferry_protocol::job::NotifyCmdLine;
use ferry_protocol::{JobAction, JobId, JobState, JobType, NewFile, PropertyChanges};
use ferry_tests::origin::{Content, Origin, OriginConfig};
use ferry_tests::{Node, NodeOptions, tokens};

use crate::support::{new_job, wait_for};

/// A program that appends its arguments, one line per run, to `calls` beside it.
fn recorder(dir: &Path) -> anyhow::Result<NotifyCmdLine> {
    let script = dir.join("notify.sh");
    std::fs::write(&script, "#!/bin/sh\necho \"$@\" >> \"$(dirname \"$0\")/calls\"\n")?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    Ok(NotifyCmdLine { program: script.to_string_lossy().into_owned(), args: vec![] })
}

/// The lines `recorder` wrote for `job`.
fn calls(dir: &Path, job: JobId) -> usize {
    let text = std::fs::read_to_string(dir.join("calls")).unwrap_or_default();
    text.lines().filter(|l| l.contains(&job.to_string())).count()
}

async fn wait_calls(dir: &Path, job: JobId, n: usize, node: &Node) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while calls(dir, job) < n {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the notify program did not run for {job}:\n{}",
            node.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Starts a download whose notify program records the job id and "transferred".
async fn job_with_recorder(node: &Node, origin: &Origin, dir: &Path) -> anyhow::Result<JobId> {
    let client = node.client(Some(tokens::ALICE))?;
    let file = NewFile {
        remote_url: origin.url("/f.bin"),
        local_path: dir.join(format!("out-{}", JobId::new_random())).to_string_lossy().into(),
        ranges: vec![],
    };
    let id = client.create_job(&new_job("notified", JobType::Download, vec![file])).await?.id;
    // The arguments name the job: set once its id is known, before it runs.
    let mut cmdline = recorder(dir)?;
    cmdline.args = vec![id.to_string(), "transferred".into()];
    let changes = PropertyChanges { notify_cmdline: Some(Some(cmdline)), ..Default::default() };
    client.set_properties(id, &changes).await?;
    client.act(id, JobAction::Resume).await?;
    Ok(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notify_program_runs_once_even_across_a_crash_between_commit_and_run()
-> anyhow::Result<()> {
    let origin = Origin::start(OriginConfig::default()).await?;
    origin.add_file("/f.bin", Content::Pattern { seed: 5, len: 100_000 });
    let dir = tempfile::tempdir()?;
    // The node waits 2 s before starting a notify program: room to crash it in between.
    let options = NodeOptions {
        extra_config: "[notify]\nstart_delay_ms = 2000\n".into(),
        ..NodeOptions::default()
    };
    let mut node = Node::start(options).await?;
    let client = node.client(Some(tokens::ALICE))?;

    // Normal case: TRANSFERRED → the program runs once, and not again after a restart.
    let first = job_with_recorder(&node, &origin, dir.path()).await?;
    wait_for(&node, &client, first, &[JobState::Transferred], Duration::from_secs(30)).await?;
    wait_calls(dir.path(), first, 1, &node).await?;

    // Crash case: kill -9 once TRANSFERRED is committed, before the program starts.
    let second = job_with_recorder(&node, &origin, dir.path()).await?;
    wait_for(&node, &client, second, &[JobState::Transferred], Duration::from_secs(30)).await?;
    node.kill9().await?;
    assert_eq!(calls(dir.path(), second), 0, "the program ran before the kill");
    node.restart().await?;
    wait_calls(dir.path(), second, 1, &node).await?;

    // Nothing runs twice: not the first job's program after the restart, not the
    // second's once recorded.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!((calls(dir.path(), first), calls(dir.path(), second)), (1, 1));
    node.restart().await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!((calls(dir.path(), first), calls(dir.path(), second)), (1, 1));
    Ok(())
}
