//! The notify command line (`SetNotifyCmdLine`), run on the job's home node once per
//! entry into TRANSFERRED or ERROR.
//!
//! Apply records the run a job owes ([`NotifyRun`]); this task, on the home node, runs
//! the program (no shell: the program itself, with its arguments as given, under a
//! timeout, its output to the node log) and records that it ran through Raft (an engine
//! report, written like the transfer engine's), so a
//! restart or a leader change does not run it again. Between the two, a marker file
//! (`<data-dir>/notify/<job>-<entry>-<attempt>`, made durable before the program
//! starts) tells a restarted node whether the program had been started: without it the
//! program runs after the restart; with it, the run is recorded without running again.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_protocol::job::{NotifyCmdLine, NotifyRun};
use ferry_protocol::transfer::EngineReport;
use ferry_protocol::{JobId, Timestamp};

use crate::config::NotifyConfig;
use crate::service::NodeCluster;
use crate::transfer::Reporter;
use crate::transfer::failure::Stop;

/// Most output bytes of a program kept for the log.
const MAX_LOGGED_OUTPUT: usize = 4096;
/// Shortest time between two looks at the queue.
const RESCAN_PAUSE: Duration = Duration::from_millis(100);

/// One owed run.
struct Owed {
    job: JobId,
    run: NotifyRun,
    cmdline: Option<NotifyCmdLine>,
}

/// Watches the applied queue and runs what this node owes, until the node stops.
pub(crate) async fn run(cluster: NodeCluster, config: NotifyConfig, root: PathBuf) {
    let dir = root.join("notify");
    if let Err(e) = std::fs::create_dir_all(&dir) {
        tracing::error!(dir = %dir.display(), error = %e, "cannot create the notify directory; notify command lines will not run");
        return;
    }
    let busy: Arc<Mutex<HashSet<(JobId, u64, u32)>>> = Arc::default();
    let mut metrics = cluster.raft.metrics();
    loop {
        for owed in owed_here(&cluster) {
            let key = (owed.job, owed.run.entry, owed.run.attempt);
            if !lock(&busy).insert(key) {
                continue;
            }
            let (cluster, config, dir, busy) =
                (cluster.clone(), config.clone(), dir.clone(), busy.clone());
            tokio::spawn(async move {
                run_one(&cluster, &config, &dir, &owed).await;
                lock(&busy).remove(&key);
            });
        }
        // Look again when something is applied, or every second (retry times pass); at
        // most every 100 ms, since each look reads the whole queue.
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        tokio::time::sleep(RESCAN_PAUSE).await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The runs this node owes now.
fn owed_here(cluster: &NodeCluster) -> Vec<Owed> {
    let now = Timestamp::now();
    let machine = cluster.state.read();
    machine
        .queue
        .jobs()
        .filter(|job| job.home_node == cluster.node_id)
        .filter_map(|job| {
            let run = job.notify_run.filter(|r| r.not_before <= now)?;
            Some(Owed { job: job.id, run, cmdline: job.props.notify_cmdline.clone() })
        })
        .collect()
}

/// Runs one owed run (unless its marker says it was started before) and records it.
async fn run_one(cluster: &NodeCluster, config: &NotifyConfig, dir: &Path, owed: &Owed) {
    let marker = dir.join(format!("{}-{}-{}", owed.job, owed.run.entry, owed.run.attempt));
    let success = if marker.exists() {
        tracing::warn!(job = %owed.job, entry = owed.run.entry, "the notify program was started before this node stopped; not running it again");
        true
    } else if let Some(cmdline) = &owed.cmdline {
        tokio::time::sleep(Duration::from_millis(config.start_delay_ms)).await;
        if let Err(e) = durable_marker(&marker) {
            tracing::error!(job = %owed.job, error = %e, "cannot record the notify run locally; not running it");
            return;
        }
        let timeout = Duration::from_secs(config.timeout_secs);
        execute(owed.job, cmdline, timeout).await
    } else {
        // The command line was removed since: nothing to run.
        true
    };
    if record(cluster, owed, success).await {
        let _ = std::fs::remove_file(&marker);
    }
}

/// Creates `path` and makes it durable (file and directory entry).
fn durable_marker(path: &PathBuf) -> std::io::Result<()> {
    std::fs::File::create(path)?.sync_all()?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// Runs the program without a shell; true if it exited with status 0 in time.
async fn execute(job: JobId, cmdline: &NotifyCmdLine, timeout: Duration) -> bool {
    let child = tokio::process::Command::new(&cmdline.program)
        .args(&cmdline.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let child = match child {
        Ok(child) => child,
        Err(e) => {
            tracing::warn!(%job, program = %cmdline.program, error = %e, "cannot start the notify program");
            return false;
        }
    };
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(output)) => {
            let text = |bytes: &[u8]| {
                let end = bytes.len().min(MAX_LOGGED_OUTPUT);
                String::from_utf8_lossy(&bytes[..end]).trim_end().to_owned()
            };
            tracing::info!(
                %job,
                program = %cmdline.program,
                status = %output.status,
                stdout = %text(&output.stdout),
                stderr = %text(&output.stderr),
                "ran the notify program"
            );
            output.status.success()
        }
        Ok(Err(e)) => {
            tracing::warn!(%job, program = %cmdline.program, error = %e, "the notify program failed");
            false
        }
        Err(_) => {
            // Dropping the child kills it.
            tracing::warn!(%job, program = %cmdline.program, ?timeout, "the notify program timed out and was killed");
            false
        }
    }
}

/// Records the run through Raft (as an engine report); true once the applied queue no
/// longer owes it. A refusal as stale may also mean "no leader within the attempts", so
/// the queue decides: while the run is still owed the marker stays, and the next look
/// records it without running the program again.
async fn record(cluster: &NodeCluster, owed: &Owed, success: bool) -> bool {
    let NotifyRun { entry, attempt, .. } = owed.run;
    let reports = vec![EngineReport::NotifyRan { entry, attempt, success }];
    if let Err(Stop::Failed(e)) = Reporter::new(cluster.clone()).report(owed.job, 0, reports).await
    {
        tracing::warn!(job = %owed.job, error = ?e, "the notify run was refused");
    }
    let machine = cluster.state.read();
    let still_owed = machine
        .queue
        .job(&owed.job)
        .and_then(|job| job.notify_run)
        .is_some_and(|run| (run.entry, run.attempt) == (entry, attempt));
    !still_owed
}
