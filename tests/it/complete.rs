//! Complete and Cancel are transactional on the home node, as in BITS: a Complete
//! whose rename fails leaves the job TRANSFERRED and answers the failure (and a later
//! Complete succeeds once the cause is gone); a Cancel that cannot delete a temporary
//! file cancels all the same and answers `BG_S_UNABLE_TO_DELETE_FILES`.

use std::os::unix::fs::{PermissionsExt, chown};
use std::path::PathBuf;
use std::time::Duration;

use ferry_coordinator::{Client, ClientError, TokenEntry};
use ferry_protocol::limits::QueuePolicy;
use ferry_protocol::{BitsCode, JobAction, JobId, JobState, PropertyChanges, Role};
use ferry_tests::origin::{Content, Origin, OriginConfig, file_matches_pattern};
use ferry_tests::{Node, NodeOptions, tokens};

use crate::hostile::is_root;
use crate::support::{start_download, wait_for};

const KIB: u64 = 1024;
/// The user a principal acts as when the test runs as root (root ignores modes).
const NOBODY: u32 = 65534;

/// A node whose principal `alice` writes beneath a fresh directory `dest`, as
/// `nobody` when ferryd runs as root, so that a read-only directory stops it.
struct Setup {
    _base: tempfile::TempDir,
    dest: PathBuf,
    node: Node,
    client: Client,
    origin: Origin,
}

impl Setup {
    async fn new() -> anyhow::Result<Self> {
        Self::with_files_per_job(QueuePolicy::default().max_files_per_job).await
    }

    /// As [`Setup::new`], with jobs of up to `max_files` files.
    async fn with_files_per_job(max_files: u32) -> anyhow::Result<Self> {
        let base = tempfile::Builder::new().prefix("ferry-complete-").tempdir()?;
        std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755))?;
        let dest = base.path().join("dest");
        std::fs::create_dir(&dest)?;
        let mut alice = TokenEntry::new(tokens::ALICE, "alice", Role::User);
        if is_root() {
            chown(&dest, Some(NOBODY), Some(NOBODY))?;
            alice.uid = Some(NOBODY);
            alice.gid = Some(NOBODY);
        }
        let mut options = NodeOptions {
            tokens: vec![alice],
            transfer: format!(
                "destination_roots = [{:?}]\nread_timeout_secs = 10",
                base.path().display().to_string()
            ),
            ..NodeOptions::default()
        };
        options.policy.max_files_per_job = max_files;
        let node = Node::start(options).await?;
        let client = node.client(Some(tokens::ALICE))?;
        let origin = Origin::start(OriginConfig::default()).await?;
        origin.add_file("/f.bin", Content::Pattern { seed: 4, len: 48 * KIB });
        Ok(Self { _base: base, dest, node, client, origin })
    }

    /// A download to `dest/name`, TRANSFERRED.
    async fn transferred(&self, name: &str) -> anyhow::Result<(JobId, PathBuf)> {
        let path = self.dest.join(name);
        let files = [(self.origin.url("/f.bin"), path.clone())];
        let id = start_download(&self.client, &files, PropertyChanges::default()).await?;
        wait_for(&self.node, &self.client, id, &[JobState::Transferred], Duration::from_secs(30))
            .await?;
        Ok((id, path))
    }

    fn set_mode(&self, mode: u32) -> anyhow::Result<()> {
        Ok(std::fs::set_permissions(&self.dest, std::fs::Permissions::from_mode(mode))?)
    }

    /// The names in `dest` (the temporary files are hidden names beside the files).
    fn names(&self) -> anyhow::Result<Vec<String>> {
        let mut names: Vec<String> = std::fs::read_dir(&self.dest)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        names.sort();
        Ok(names)
    }
}

#[tokio::test]
async fn a_complete_whose_rename_fails_leaves_the_job_transferred() -> anyhow::Result<()> {
    let setup = Setup::new().await?;
    let (id, path) = setup.transferred("f.bin").await?;
    let temps = setup.names()?;
    assert_eq!(temps.len(), 1, "one temporary file: {temps:?}");

    setup.set_mode(0o555)?;
    let refused = setup.client.act(id, JobAction::Complete).await;
    let Err(ClientError::Api(problem)) = refused else {
        panic!("Complete answered {refused:?} though the rename cannot be done");
    };
    println!("Complete refused: {} {}: {}", problem.status, problem.code, problem.detail);
    assert_eq!(problem.status, 409);
    assert_eq!(problem.code, BitsCode::E_ACCESSDENIED);
    assert!(problem.detail.contains("stays as it was"), "{}", problem.detail);
    let job = setup.client.job(id).await?;
    assert_eq!(job.state, JobState::Transferred, "the job stays TRANSFERRED");
    assert!(!path.exists(), "nothing was placed");
    assert_eq!(setup.names()?, temps, "the temporary file is kept for the next Complete");

    // The cause gone, Complete again: the file is in place and the job acknowledged.
    setup.set_mode(0o755)?;
    let done = setup.client.act(id, JobAction::Complete).await?;
    assert_eq!(done.code, BitsCode::S_OK);
    assert_eq!(done.job.state, JobState::Acknowledged);
    assert!(file_matches_pattern(&path, 4, 48 * KIB)?, "the file is in place and whole");
    assert_eq!(setup.names()?, vec!["f.bin".to_owned()], "no temporary file is left");
    Ok(())
}

#[tokio::test]
async fn a_cancel_that_cannot_delete_answers_unable_to_delete_files() -> anyhow::Result<()> {
    let setup = Setup::new().await?;
    let (id, _) = setup.transferred("f.bin").await?;
    setup.set_mode(0o555)?;
    let cancelled = setup.client.act(id, JobAction::Cancel).await?;
    setup.set_mode(0o755)?;
    assert_eq!(cancelled.code, BitsCode::BG_S_UNABLE_TO_DELETE_FILES, "{cancelled:?}");
    assert_eq!(cancelled.job.state, JobState::Cancelled, "cancelled all the same");
    Ok(())
}

/// A Complete with every rename possible answers only once the files are in place.
/// (And one file of a job reads on its own: `GET /v1/jobs/{id}/files/{index}`.)
#[tokio::test]
async fn complete_answers_once_the_files_are_in_place() -> anyhow::Result<()> {
    let setup = Setup::new().await?;
    let (id, path) = setup.transferred("g.bin").await?;
    let file = setup.client.file(id, 0).await?;
    assert_eq!(file, setup.client.files(id).await?.files[0]);
    assert_eq!(file.progress.bytes_transferred, 48 * KIB);
    let missing = setup.client.file(id, 1).await;
    let Err(ClientError::Api(problem)) = missing else { panic!("file 1: {missing:?}") };
    assert_eq!((problem.status, problem.code), (404, BitsCode::BG_E_NOT_FOUND));
    let done = setup.client.act(id, JobAction::Complete).await?;
    assert_eq!(done.code, BitsCode::S_OK);
    assert!(file_matches_pattern(&path, 4, 48 * KIB)?);
    assert_eq!(setup.names()?, vec!["g.bin".to_owned()]);
    Ok(())
}

/// A job of many files is completed by several threads at once: what each of them
/// could not rename is answered together (files in both halves of the job), every
/// other file is in place, and a later Complete places the rest.
#[tokio::test]
async fn a_complete_of_many_files_answers_every_file_it_could_not_place() -> anyhow::Result<()> {
    const FILES: usize = 300;
    let setup = Setup::with_files_per_job(FILES as u32).await?;
    let files: Vec<(String, PathBuf)> = (0..FILES)
        .map(|i| (setup.origin.url("/f.bin"), setup.dest.join(format!("f{i:03}.bin"))))
        .collect();
    let id = start_download(&setup.client, &files, PropertyChanges::default()).await?;
    wait_for(&setup.node, &setup.client, id, &[JobState::Transferred], Duration::from_secs(60))
        .await?;
    // A directory where a file goes cannot be replaced: one in each half of the job.
    let blocked = [7, 290];
    for i in blocked {
        std::fs::create_dir(&files[i].1)?;
    }
    let refused = setup.client.act(id, JobAction::Complete).await;
    let Err(ClientError::Api(problem)) = refused else {
        panic!("Complete answered {refused:?} though two files cannot be placed");
    };
    assert_eq!((problem.status, problem.code), (409, BitsCode::E_ACCESSDENIED));
    for i in blocked {
        assert!(problem.detail.contains(&format!("file {i}:")), "file {i}: {}", problem.detail);
    }
    assert_eq!(setup.client.job(id).await?.state, JobState::Transferred);
    for (i, (_, path)) in files.iter().enumerate().filter(|(i, _)| !blocked.contains(i)) {
        assert!(file_matches_pattern(path, 4, 48 * KIB)?, "file {i} is not in place");
    }
    assert_eq!(setup.names()?.len(), FILES + blocked.len(), "the two temporary files are kept");

    for i in blocked {
        std::fs::remove_dir(&files[i].1)?;
    }
    let done = setup.client.act(id, JobAction::Complete).await?;
    assert_eq!((done.code, done.job.state), (BitsCode::S_OK, JobState::Acknowledged));
    assert_eq!(done.job.progress.files_transferred, FILES as u32);
    for (i, (_, path)) in files.iter().enumerate() {
        assert!(file_matches_pattern(path, 4, 48 * KIB)?, "file {i} is not in place");
    }
    assert_eq!(setup.names()?.len(), FILES, "no temporary file is left");
    Ok(())
}
