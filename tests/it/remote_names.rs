//! Remote names that change: `ReplaceRemotePrefix` moves every matching file of a job
//! to another server, and `SetRemoteName` on a transferring job never mixes bytes of
//! the old URL into the file (the old run's late reports are stale).

use std::time::Duration;

use ferry_coordinator::ClientError;
use ferry_protocol::command::JobAction;
use ferry_protocol::{BitsCode, JobState, JobType, NewFile, NewJob, PropertyChanges};
use ferry_tests::origin::{Content, Knobs, Origin, OriginConfig, file_matches_pattern};
use ferry_tests::tokens;

use crate::support::{start_download, transfer_node, wait_for};

const KIB: u64 = 1024;

#[tokio::test]
async fn replace_remote_prefix_moves_the_matching_files() -> anyhow::Result<()> {
    let origin = Origin::start(OriginConfig::default()).await?;
    for (i, path) in ["/new/a.bin", "/new/b.bin", "/other/c.bin"].iter().enumerate() {
        origin.add_file(path, Content::Pattern { seed: i as u64, len: 40 * KIB });
    }
    let node = transfer_node("").await?;
    let client = node.client(Some(tokens::ALICE))?;
    let out = tempfile::tempdir()?;
    let file = |url: String, name: &str| NewFile {
        remote_url: url,
        local_path: out.path().join(name).to_string_lossy().into_owned(),
        ranges: vec![],
        sha256: None,
    };
    let spec = NewJob {
        display_name: "moved".into(),
        job_type: JobType::Download,
        properties: PropertyChanges::default(),
        files: vec![
            file(origin.url("/old/a.bin"), "a"),
            file(origin.url("/old/b.bin"), "b"),
            file(origin.url("/other/c.bin"), "c"),
        ],
    };
    let id = client.create_job(&spec).await?.id;
    let (old, new) = (origin.url("/old/"), origin.url("/new/"));
    let replaced = client.replace_remote_prefix(id, &old, &new).await?;
    assert_eq!(replaced.code, BitsCode::S_OK);
    let urls: Vec<String> =
        client.files(id).await?.files.into_iter().map(|f| f.remote_url).collect();
    assert_eq!(
        urls,
        [origin.url("/new/a.bin"), origin.url("/new/b.bin"), origin.url("/other/c.bin")]
    );
    // Nothing starts with the old prefix any more.
    let again = client.replace_remote_prefix(id, &old, &new).await?;
    assert_eq!(again.code, BitsCode::S_FALSE);

    client.act(id, JobAction::Resume).await?;
    wait_for(&node, &client, id, &[JobState::Transferred], Duration::from_secs(30)).await?;
    client.act(id, JobAction::Complete).await?;
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        assert!(file_matches_pattern(&out.path().join(name), i as u64, 40 * KIB)?, "{name}");
    }
    assert!(
        origin.requests().iter().all(|r| !r.path.starts_with("/old/")),
        "nothing asked of /old/"
    );

    // Refused: a file: URL as the new prefix, an empty old prefix, an upload job.
    let bad = client.replace_remote_prefix(id, "http", "file:///etc/").await;
    assert_eq!(bad.err().and_then(|e| e.code()), Some(BitsCode::E_INVALIDARG));
    let empty = client.replace_remote_prefix(id, "", "http://x/").await;
    assert_eq!(empty.err().and_then(|e| e.code()), Some(BitsCode::E_INVALIDARG));
    let done = client.replace_remote_prefix(id, &new, &old).await;
    assert_eq!(
        done.err().and_then(|e| e.code()),
        Some(BitsCode::BG_E_INVALID_STATE),
        "acknowledged"
    );
    let upload = NewJob {
        display_name: "up".into(),
        job_type: JobType::Upload,
        properties: PropertyChanges::default(),
        files: vec![],
    };
    let up = client.create_job(&upload).await?.id;
    let refused = client.replace_remote_prefix(up, &old, &new).await;
    let Err(ClientError::Api(problem)) = refused else { panic!("{refused:?}") };
    assert_eq!(problem.code, BitsCode::E_NOTIMPL);
    Ok(())
}

/// `SetRemoteName` while the job transfers from a slow server: the file ends with the
/// new URL's bytes only (a run of the old URL is stopped and its reports refused).
#[tokio::test]
async fn set_remote_name_while_transferring_takes_only_the_new_urls_bytes() -> anyhow::Result<()> {
    let origin = Origin::start(OriginConfig::default()).await?;
    origin.add_file("/old.bin", Content::Pattern { seed: 1, len: 2048 * KIB });
    origin.add_file("/new.bin", Content::Pattern { seed: 2, len: 2048 * KIB });
    origin.set_knobs(Knobs { rate_limit_per_connection: Some(512 * KIB), ..Knobs::default() });
    let node = transfer_node("").await?;
    let client = node.client(Some(tokens::ALICE))?;
    let out = tempfile::tempdir()?;
    let path = out.path().join("f");
    let id = start_download(
        &client,
        &[(origin.url("/old.bin"), path.clone())],
        PropertyChanges::default(),
    )
    .await?;
    // Some bytes of the old URL are durable.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while client.job(id).await?.progress.bytes_transferred == 0 {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = client.job(id).await?;
    assert_eq!(before.state, JobState::Transferring);
    let changes =
        ferry_protocol::api::FileChanges { remote_url: Some(origin.url("/new.bin")), valid: None };
    let moved = client.set_file(id, 0, &changes).await?;
    assert_eq!(moved.remote_url, origin.url("/new.bin"));
    origin.set_knobs(Knobs::default());
    wait_for(&node, &client, id, &[JobState::Transferred], Duration::from_secs(30)).await?;
    client.act(id, JobAction::Complete).await?;
    assert!(file_matches_pattern(&path, 2, 2048 * KIB)?, "only the new URL's bytes");
    Ok(())
}
