//! Upgrades: a data directory written by an earlier format (a fixture per format in
//! `tests/fixtures/format-N`, made by `scripts/make-format-fixture.sh` with the build of
//! that format) opens with this build, every job it held is there, and the node goes
//! on writing into it, across restarts.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, ensure};
use ferry_protocol::api::{JobInfo, JobList};
use ferry_protocol::{JobType, Role};
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

        // A node whose data directory is a copy of the fixture.
        let mut node = Node::start(NodeOptions::queue_only()).await?;
        node.stop().await?;
        std::fs::remove_dir_all(node.data_dir())?;
        std::fs::create_dir(node.data_dir())?;
        copy_dir(&fixture, &node.data_dir())?;
        std::fs::remove_file(node.data_dir().join("jobs.json"))?;
        node.restart().await.with_context(|| format!("{} does not open", fixture.display()))?;

        let admin = node.client(Some(tokens::ADMIN))?;
        let found = admin.list_jobs(true).await?;
        ensure!(
            essences(&found) == essences(&expected.jobs),
            "{}: the jobs differ after the upgrade:\nexpected {:#?}\nfound {:#?}",
            fixture.display(),
            essences(&expected.jobs),
            essences(&found)
        );

        // It goes on: new jobs and principals (format 9) are written beside the old
        // rows, and everything opens again.
        let job =
            admin.create_job(&new_job("after the upgrade", JobType::Download, vec![])).await?;
        let carol = admin.create_token("carol", Role::User, None).await?;
        node.restart().await?;
        let admin = node.client(Some(tokens::ADMIN))?;
        let after = admin.list_jobs(true).await?;
        ensure!(after.len() == expected.jobs.len() + 1, "{} jobs after a restart", after.len());
        ensure!(admin.job(job.id).await.is_ok());
        ensure!(node.client(Some(&carol.token))?.list_jobs(false).await.is_ok());
        println!("{}: {} jobs opened and kept", fixture.display(), expected.jobs.len());
    }
    Ok(())
}
