//! Timers on the monotonic clock: a wall clock that jumps forward (an NTP step, a
//! wrong RTC corrected) does not cancel jobs for inactivity, as BITS's timers ignore
//! clock changes. The node's wall clock is moved at run time with libfaketime (Debian
//! package `faketime`); skipped where it is missing.

use std::path::Path;
use std::time::Duration;

use ferry_protocol::limits::QueuePolicy;
use ferry_protocol::{JobState, JobType};
use ferry_tests::{Node, NodeOptions, tokens};

use crate::support::new_job;

const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

#[tokio::test]
async fn a_wall_clock_jump_does_not_cancel_jobs_for_inactivity() -> anyhow::Result<()> {
    if !Path::new(FAKETIME).exists() {
        println!("SKIPPED: {FAKETIME} is missing (Debian package faketime)");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let offset = dir.path().join("offset");
    std::fs::write(&offset, "+0s")?;
    let options = NodeOptions {
        policy: QueuePolicy { job_inactivity_timeout_secs: 3600, ..QueuePolicy::default() },
        env: vec![
            ("LD_PRELOAD".into(), FAKETIME.into()),
            ("FAKETIME_TIMESTAMP_FILE".into(), offset.display().to_string()),
            ("FAKETIME_NO_CACHE".into(), "1".into()),
            ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
        ],
        ..NodeOptions::queue_only()
    };
    let node = Node::start(options).await?;
    let client = node.client(Some(tokens::ALICE))?;
    let idle = client.create_job(&new_job("idle", JobType::Download, vec![])).await?;

    // Two hours forward: twice the inactivity timeout, on the wall clock only.
    std::fs::write(&offset, "+7200s")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A change makes the scheduler look at once; it also looks every 5 s.
    let after = client.create_job(&new_job("after the jump", JobType::Download, vec![])).await?;
    anyhow::ensure!(
        after.times.created.0 > idle.times.created.0 + 3_600_000,
        "the node's wall clock did not move (libfaketime not in effect?)"
    );
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let job = client.job(idle.id).await?;
        assert_eq!(job.state, JobState::Suspended, "cancelled for inactivity after a clock jump");
    }
    Ok(())
}
