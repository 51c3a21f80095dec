//! Downloads end to end: a real `ferryd` fetching from the test origin, with resume
//! after `kill -9`, ranges, remote name and validation changes, Complete and Cancel.

use std::path::Path;
use std::time::Duration;

use ferry_protocol::command::JobAction;
use ferry_protocol::{
    BitsCode, FileRange, JobState, NewFile, PropertyChanges, file::LENGTH_TO_EOF,
};
use ferry_tests::origin::{
    Content, Knobs, Origin, OriginConfig, file_matches_pattern, pattern_bytes,
};
use ferry_tests::tokens;

use crate::support::{start_download, temporary_name, transfer_node, wait_for};

const MIB: u64 = 1024 * 1024;

/// True if `local` holds exactly what the origin serves at `path` now.
pub(crate) fn same_as_origin(origin: &Origin, path: &str, local: &Path) -> anyhow::Result<bool> {
    let info = origin.file(path).ok_or_else(|| anyhow::anyhow!("origin has no {path}"))?;
    match info.content {
        Content::Pattern { seed, len } => file_matches_pattern(local, seed, len),
        Content::Bytes(bytes) => Ok(std::fs::read(local)? == bytes.as_ref()),
    }
}

#[tokio::test]
async fn kill_9_mid_transfer_resumes_from_durable_chunks() -> anyhow::Result<()> {
    const SIZE: u64 = 1024 * MIB;
    const CHUNK: u64 = 8 * MIB;
    const CONNECTIONS: u64 = 4;
    let origin = Origin::start(OriginConfig::default()).await?;
    origin.add_file("/big.bin", Content::Pattern { seed: 11, len: SIZE });
    // Slow enough to be caught in the middle, fast enough for CI: ~2 s per run-through.
    origin.set_knobs(Knobs { rate_limit_per_connection: Some(128 * MIB), ..Knobs::default() });
    let mut node =
        transfer_node(&format!("chunk_size_bytes = {CHUNK}\nconnections = {CONNECTIONS}")).await?;
    let client = node.client(Some(tokens::ALICE))?;
    let out = tempfile::tempdir()?;
    let local = out.path().join("big.bin");
    let id = start_download(
        &client,
        &[(origin.url("/big.bin"), local.clone())],
        PropertyChanges::default(),
    )
    .await?;

    // Wait until a good part is durable, then kill without warning.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let durable = loop {
        let job = client.job(id).await?;
        let durable = crate::support::durable_bytes(&client, id).await?;
        if durable >= SIZE / 3 {
            break durable;
        }
        anyhow::ensure!(job.state != JobState::Transferred, "finished before the kill");
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no progress: {:?}\n{}",
            job,
            node.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    node.kill9().await?;
    let sent_before_kill = origin.stats().body_bytes;
    node.restart().await?;
    let client = node.client(Some(tokens::ALICE))?;
    let job =
        wait_for(&node, &client, id, &[JobState::Transferred], Duration::from_secs(180)).await?;
    assert_eq!(job.progress.bytes_transferred, SIZE);
    let total_sent = origin.stats().body_bytes;
    let refetched = total_sent.saturating_sub(SIZE);
    // What a kill may cost: per connection, the chunk being fetched and the one before
    // it, still being synced and reported (a worker fetches the next chunk meanwhile).
    // One chunk per connection was the bound before that overlap; under load it was
    // exceeded (42.5 MiB against 32).
    let bound = 2 * CHUNK * CONNECTIONS;
    println!(
        "kill -9 after {:.0} MiB sent, at least {:.0} MiB durable; re-fetched {:.1} MiB (bound: 2 chunks of {} MiB x {} connections = {} MiB)",
        sent_before_kill as f64 / MIB as f64,
        durable as f64 / MIB as f64,
        refetched as f64 / MIB as f64,
        CHUNK / MIB,
        CONNECTIONS,
        bound / MIB
    );
    assert!(durable > 0, "chunks reported before the kill survive it");
    assert!(refetched <= bound, "re-fetched {refetched} bytes");
    client.act(id, JobAction::Complete).await?;
    assert!(same_as_origin(&origin, "/big.bin", &local)?, "the result is byte-identical");
    Ok(())
}

/// Flips one byte at `offset` of `path`.
fn flip_byte(path: &Path, offset: u64) -> anyhow::Result<()> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset)?;
    file.write_all_at(&[byte[0] ^ 0x5A], offset)?;
    file.sync_all()?;
    Ok(())
}

#[tokio::test]
async fn damaged_durable_chunks_are_fetched_again_after_a_crash() -> anyhow::Result<()> {
    const SIZE: u64 = 64 * MIB;
    const CHUNK: u64 = MIB;
    // Chunks 2 and 9 are damaged while the node is down.
    const DAMAGED: [u64; 2] = [2, 9];
    let origin = Origin::start(OriginConfig::default()).await?;
    origin.add_file("/d.bin", Content::Pattern { seed: 21, len: SIZE });
    origin.set_knobs(Knobs { rate_limit_per_connection: Some(16 * MIB), ..Knobs::default() });
    // One connection: chunks become durable strictly in order.
    let mut node = transfer_node(&format!("chunk_size_bytes = {CHUNK}\nconnections = 1")).await?;
    let client = node.client(Some(tokens::ALICE))?;
    let out = tempfile::tempdir()?;
    let local = out.path().join("d.bin");
    let id = start_download(
        &client,
        &[(origin.url("/d.bin"), local.clone())],
        PropertyChanges::default(),
    )
    .await?;
    let temp = temporary_name(&client, id).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let job = client.job(id).await?;
        if crate::support::durable_bytes(&client, id).await? >= 16 * MIB {
            break;
        }
        anyhow::ensure!(job.state != JobState::Transferred, "finished before the kill");
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "no progress: {job:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.kill9().await?;
    for chunk in DAMAGED {
        flip_byte(&temp, chunk * CHUNK + 12_345)?;
    }
    let before = origin.requests().len();
    node.restart().await?;
    let client = node.client(Some(tokens::ALICE))?;
    let job =
        wait_for(&node, &client, id, &[JobState::Transferred], Duration::from_secs(120)).await?;
    assert_eq!(job.progress.bytes_transferred, SIZE, "counted once");
    // After the restart the origin was asked again for the damaged chunks, and for no
    // intact recorded one.
    let asked: Vec<String> =
        origin.requests()[before..].iter().filter_map(|r| r.range.clone()).collect();
    for chunk in DAMAGED {
        let range = format!("bytes={}-{}", chunk * CHUNK, (chunk + 1) * CHUNK - 1);
        assert!(asked.contains(&range), "chunk {chunk} was not fetched again: {asked:?}");
    }
    for clean in [0, 1, 3, 8, 10] {
        let range = format!("bytes={}-{}", clean * CHUNK, (clean + 1) * CHUNK - 1);
        assert!(!asked.contains(&range), "intact chunk {clean} was fetched again: {asked:?}");
    }
    client.act(id, JobAction::Complete).await?;
    assert!(same_as_origin(&origin, "/d.bin", &local)?, "the result is byte-identical");
    Ok(())
}

#[tokio::test]
async fn a_file_damaged_after_its_transfer_is_not_renamed_into_place() -> anyhow::Result<()> {
    let origin = Origin::start(OriginConfig::default()).await?;
    origin.add_file("/t.bin", Content::Pattern { seed: 22, len: 3 * MIB });
    let node = transfer_node(&format!("chunk_size_bytes = {MIB}")).await?;
    let client = node.client(Some(tokens::ALICE))?;
    let out = tempfile::tempdir()?;
    let local = out.path().join("t.bin");
    let id = start_download(
        &client,
        &[(origin.url("/t.bin"), local.clone())],
        PropertyChanges::default(),
    )
    .await?;
    wait_for(&node, &client, id, &[JobState::Transferred], Duration::from_secs(60)).await?;
    let temp = temporary_name(&client, id).await?;
    flip_byte(&temp, MIB + 7)?;
    // Complete fails, saying why; the damaged bytes are deleted, never named (G4).
    let refused = client.act(id, JobAction::Complete).await;
    let Err(ferry_coordinator::ClientError::Api(problem)) = refused else {
        panic!("Complete of a damaged file answered {refused:?}");
    };
    assert_eq!(problem.status, 409);
    assert!(problem.detail.contains("no longer holds the content"), "{}", problem.detail);
    assert_eq!(client.job(id).await?.state, JobState::Transferred, "the job stays");
    assert!(!Path::new(&temp).exists(), "the damaged temporary file is deleted");
    assert!(!local.exists(), "a damaged file reached its final name");
    Ok(())
}

#[tokio::test]
async fn ranges_are_concatenated_in_order_and_eof_reads_to_the_end() -> anyhow::Result<()> {
    let origin = Origin::start(OriginConfig::default()).await?;
    origin.add_file("/r.bin", Content::Pattern { seed: 3, len: 1000 });
    let node = transfer_node("").await?;
    let client = node.client(Some(tokens::ALICE))?;
    let out = tempfile::tempdir()?;
    let local = out.path().join("r.bin");
    let ranges = vec![
        FileRange { offset: 100, length: 100 },
        FileRange { offset: 900, length: LENGTH_TO_EOF },
        FileRange { offset: 400, length: 100 },
    ];
    let spec = crate::support::new_job(
        "ranges",
        ferry_protocol::JobType::Download,
        vec![NewFile {
            remote_url: origin.url("/r.bin"),
            local_path: local.to_string_lossy().into(),
            ranges,
            sha256: None,
        }],
    );
    let id = client.create_job(&spec).await?.id;
    client.act(id, JobAction::Resume).await?;
    wait_for(&node, &client, id, &[JobState::Transferred], Duration::from_secs(30)).await?;
    let done = client.act(id, JobAction::Complete).await?;
    assert_eq!(done.code, BitsCode::S_OK);
    let mut want = pattern_bytes(3, 100, 100);
    want.extend(pattern_bytes(3, 900, 100));
    want.extend(pattern_bytes(3, 400, 100));
    assert_eq!(std::fs::read(&local)?, want);

    // A range outside the remote file is BG_E_INVALID_RANGE, fatal.
    let bad = crate::support::new_job(
        "bad range",
        ferry_protocol::JobType::Download,
        vec![NewFile {
            remote_url: origin.url("/r.bin"),
            local_path: out.path().join("bad.bin").to_string_lossy().into(),
            ranges: vec![FileRange { offset: 990, length: 20 }],
            sha256: None,
        }],
    );
    let id = client.create_job(&bad).await?.id;
    client.act(id, JobAction::Resume).await?;
    let job = wait_for(&node, &client, id, &[JobState::Error], Duration::from_secs(30)).await?;
    assert_eq!(job.error.map(|e| e.code), Some(BitsCode::BG_E_INVALID_RANGE));
    Ok(())
}

#[tokio::test]
async fn complete_renames_cancel_deletes_and_partial_complete_keeps_finished_files()
-> anyhow::Result<()> {
    let origin = Origin::start(OriginConfig::default()).await?;
    origin.add_file("/a.bin", Content::Pattern { seed: 1, len: 300_000 });
    origin.add_file("/b.bin", Content::Pattern { seed: 2, len: 200_000 });
    let node = transfer_node("").await?;
    let client = node.client(Some(tokens::ALICE))?;
    let out = tempfile::tempdir()?;
    let (a, b) = (out.path().join("a.bin"), out.path().join("b.bin"));
    // b is missing on the origin at first: the job fails on it with a's bytes kept.
    let id = start_download(
        &client,
        &[(origin.url("/a.bin"), a.clone()), (origin.url("/missing.bin"), b.clone())],
        PropertyChanges::default(),
    )
    .await?;
    let job = wait_for(&node, &client, id, &[JobState::Error], Duration::from_secs(30)).await?;
    let error = job.error.expect("an error");
    assert_eq!(error.code, BitsCode::http(404));
    assert_eq!(error.file_index, Some(1));
    assert!(!a.exists(), "nothing is visible before Complete");
    let files = client.files(id).await?.files;
    assert!(files[0].transferred && !files[1].transferred);
    assert_eq!(files[0].remote.as_ref().and_then(|r| r.size), Some(300_000));
    assert!(files[0].response_headers.iter().any(|h| h.to_ascii_lowercase().starts_with("etag:")));
    assert!(Path::new(&files[0].temporary_name).exists());

    // SetRemoteName fixes the broken file; Resume from ERROR retries at once.
    client
        .set_file(
            id,
            1,
            &ferry_protocol::api::FileChanges {
                remote_url: Some(origin.url("/b.bin")),
                valid: None,
            },
        )
        .await?;
    client.act(id, JobAction::Resume).await?;
    wait_for(&node, &client, id, &[JobState::Transferred], Duration::from_secs(30)).await?;

    // SetValidationState(false): ERROR with BG_E_VALIDATION_FAILED; Resume re-downloads.
    client
        .set_file(id, 0, &ferry_protocol::api::FileChanges { remote_url: None, valid: Some(false) })
        .await?;
    let job = client.job(id).await?;
    assert_eq!(job.state, JobState::Error);
    assert_eq!(job.error.map(|e| e.code), Some(BitsCode::BG_E_VALIDATION_FAILED));
    assert_eq!(client.files(id).await?.files[0].progress.bytes_transferred, 0);
    client.act(id, JobAction::Resume).await?;
    wait_for(&node, &client, id, &[JobState::Transferred], Duration::from_secs(30)).await?;
    let done = client.act(id, JobAction::Complete).await?;
    assert_eq!(done.code, BitsCode::S_OK);
    assert!(same_as_origin(&origin, "/a.bin", &a)? && same_as_origin(&origin, "/b.bin", &b)?);
    let files = client.files(id).await?.files;
    assert!(files.iter().all(|f| f.progress.completed));
    assert!(files.iter().all(|f| !Path::new(&f.temporary_name).exists()));
    // mtime is the server's Last-Modified.
    let modified = std::fs::metadata(&a)?.modified()?;
    let last_modified = origin.file("/a.bin").map(|f| f.last_modified).unwrap_or_default();
    assert_eq!(Some(modified), httpdate_parse(&last_modified));

    // Partial Complete: the finished file is kept, the unfinished one deleted.
    let (c, d) = (out.path().join("c.bin"), out.path().join("d.bin"));
    let id = start_download(
        &client,
        &[(origin.url("/a.bin"), c.clone()), (origin.url("/missing.bin"), d.clone())],
        PropertyChanges::default(),
    )
    .await?;
    wait_for(&node, &client, id, &[JobState::Error], Duration::from_secs(30)).await?;
    let done = client.act(id, JobAction::Complete).await?;
    assert_eq!(done.code, BitsCode::BG_S_PARTIAL_COMPLETE);
    assert!(same_as_origin(&origin, "/a.bin", &c)? && !d.exists());

    // Cancel deletes the temporary files and makes nothing visible.
    let e = out.path().join("e.bin");
    let id = start_download(
        &client,
        &[(origin.url("/missing.bin"), e.clone())],
        PropertyChanges::default(),
    )
    .await?;
    wait_for(&node, &client, id, &[JobState::Error], Duration::from_secs(30)).await?;
    let temp = client.files(id).await?.files[0].temporary_name.clone();
    client.act(id, JobAction::Cancel).await?;
    assert!(!e.exists() && !Path::new(&temp).exists());
    let leftovers: Vec<_> = std::fs::read_dir(out.path())?
        .filter_map(Result::ok)
        .filter(|f| f.file_name().to_string_lossy().starts_with(".ferry-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    Ok(())
}

fn httpdate_parse(text: &str) -> Option<std::time::SystemTime> {
    httpdate::parse_http_date(text).ok()
}

#[tokio::test]
async fn file_urls_only_where_the_node_allows_them() -> anyhow::Result<()> {
    let src = tempfile::tempdir()?;
    let source = src.path().join("src.bin");
    std::fs::write(&source, pattern_bytes(5, 0, 700_000))?;
    let url = format!("file://{}", source.display());
    let out = tempfile::tempdir()?;

    let closed = transfer_node("").await?;
    let client = closed.client(Some(tokens::ALICE))?;
    let id =
        start_download(&client, &[(url.clone(), out.path().join("x"))], PropertyChanges::default())
            .await?;
    let job = wait_for(&closed, &client, id, &[JobState::Error], Duration::from_secs(30)).await?;
    assert_eq!(job.error.map(|e| e.code), Some(BitsCode::E_ACCESSDENIED));

    let open = transfer_node("allow_file_urls = true").await?;
    let client = open.client(Some(tokens::ALICE))?;
    let local = out.path().join("copy.bin");
    let id = start_download(&client, &[(url, local.clone())], PropertyChanges::default()).await?;
    wait_for(&open, &client, id, &[JobState::Transferred], Duration::from_secs(30)).await?;
    client.act(id, JobAction::Complete).await?;
    assert_eq!(std::fs::read(&local)?, std::fs::read(&source)?);
    Ok(())
}

#[tokio::test]
async fn destinations_are_confined_to_the_configured_roots() -> anyhow::Result<()> {
    let origin = Origin::start(OriginConfig::default()).await?;
    origin.add_file("/c.bin", Content::Pattern { seed: 6, len: 10_000 });
    let inside = tempfile::tempdir()?;
    let outside = tempfile::tempdir()?;
    std::os::unix::fs::symlink(outside.path(), inside.path().join("escape"))?;
    let node =
        transfer_node(&format!("destination_roots = [{:?}]", inside.path().display().to_string()))
            .await?;
    let client = node.client(Some(tokens::ALICE))?;

    let ok = inside.path().join("ok.bin");
    let id =
        start_download(&client, &[(origin.url("/c.bin"), ok.clone())], PropertyChanges::default())
            .await?;
    wait_for(&node, &client, id, &[JobState::Transferred], Duration::from_secs(30)).await?;

    // Outside the roots: refused by the API before anything is proposed.
    let refused = start_download(
        &client,
        &[(origin.url("/c.bin"), outside.path().join("x.bin"))],
        PropertyChanges::default(),
    )
    .await
    .expect_err("outside the roots");
    assert_eq!(
        refused.downcast_ref::<ferry_coordinator::ClientError>().and_then(|e| e.code()),
        Some(BitsCode::E_ACCESSDENIED)
    );
    assert!(refused.to_string().contains("destination_roots"), "{refused}");
    // Through a symlink below the root: refused by the home node, which follows none.
    let escape = inside.path().join("escape").join("x.bin");
    let id = start_download(
        &client,
        &[(origin.url("/c.bin"), escape.clone())],
        PropertyChanges::default(),
    )
    .await?;
    let job = wait_for(&node, &client, id, &[JobState::Error], Duration::from_secs(30)).await?;
    let error = job.error.expect("an error");
    assert_eq!(error.code, BitsCode::E_ACCESSDENIED, "{}: {error:?}", escape.display());
    assert!(error.detail.contains("symbolic link"), "{}", error.detail);
    assert_eq!(std::fs::read_dir(outside.path())?.count(), 0, "nothing was written outside");

    // A destination that is not a regular file is refused everywhere.
    std::fs::create_dir(inside.path().join("a-dir"))?;
    let id = start_download(
        &client,
        &[(origin.url("/c.bin"), inside.path().join("a-dir"))],
        PropertyChanges::default(),
    )
    .await?;
    let job = wait_for(&node, &client, id, &[JobState::Error], Duration::from_secs(30)).await?;
    assert_eq!(job.error.map(|e| e.code), Some(BitsCode::E_ACCESSDENIED));
    Ok(())
}

#[tokio::test]
async fn cancel_during_a_transfer_leaves_nothing_behind() -> anyhow::Result<()> {
    let origin = Origin::start(OriginConfig::default()).await?;
    origin.add_file("/slow.bin", Content::Pattern { seed: 12, len: 8 * MIB });
    origin.set_knobs(Knobs { rate_limit_per_connection: Some(MIB), ..Knobs::default() });
    let node = transfer_node("connections = 4").await?;
    let client = node.client(Some(tokens::ALICE))?;
    let out = tempfile::tempdir()?;
    let id = start_download(
        &client,
        &[(origin.url("/slow.bin"), out.path().join("s"))],
        PropertyChanges::default(),
    )
    .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while client.job(id).await?.progress.bytes_transferred == 0 {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "no progress\n{}", node.log_tail());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cancelled = client.act(id, JobAction::Cancel).await?;
    assert_eq!(cancelled.job.state, JobState::Cancelled);
    // Cancel returns once the home node deleted the files; check again a moment later.
    for _ in 0..2 {
        let left: Vec<_> =
            std::fs::read_dir(out.path())?.filter_map(Result::ok).map(|e| e.file_name()).collect();
        assert!(left.is_empty(), "left behind: {left:?}");
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    Ok(())
}

/// Connections the origin opened for ranges of `path`.
fn range_connections(origin: &Origin, path: &str) -> std::collections::BTreeSet<u64> {
    origin
        .requests()
        .iter()
        .filter(|r| r.path == path && r.range.is_some())
        .map(|r| r.connection)
        .collect()
}

/// By default the node picks each file's connections: against a server that limits
/// each connection, it opens more while they add throughput; a job whose own cap one
/// connection fills keeps one or two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_a_file_gets_connections_while_they_add_throughput() -> anyhow::Result<()> {
    let origin = Origin::start(OriginConfig::default()).await?;
    origin.add_file("/wide.bin", Content::Pattern { seed: 13, len: 16 * MIB });
    origin.add_file("/capped.bin", Content::Pattern { seed: 14, len: 4 * MIB });
    origin.set_knobs(Knobs { rate_limit_per_connection: Some(MIB), ..Knobs::default() });
    let node = transfer_node("").await?;
    let client = node.client(Some(tokens::ALICE))?;
    let out = tempfile::tempdir()?;

    let wide = out.path().join("wide.bin");
    let files = [(origin.url("/wide.bin"), wide.clone())];
    let id = start_download(&client, &files, PropertyChanges::default()).await?;
    wait_for(&node, &client, id, &[JobState::Transferred], Duration::from_secs(60)).await?;
    client.act(id, JobAction::Complete).await?;
    assert!(same_as_origin(&origin, "/wide.bin", &wide)?);
    let opened = range_connections(&origin, "/wide.bin").len();
    // One at 1 MiB/s, then 2, 4, 8 and 16 while each step doubles the throughput.
    assert!(opened >= 8, "{opened} connections against a per-connection limit");

    let capped = out.path().join("capped.bin");
    let files = [(origin.url("/capped.bin"), capped.clone())];
    let props =
        PropertyChanges { max_bandwidth: Some(Some(MIB / 2)), ..PropertyChanges::default() };
    let id = start_download(&client, &files, props).await?;
    wait_for(&node, &client, id, &[JobState::Transferred], Duration::from_secs(60)).await?;
    client.act(id, JobAction::Complete).await?;
    assert!(same_as_origin(&origin, "/capped.bin", &capped)?);
    let opened = range_connections(&origin, "/capped.bin").len();
    // The step to two adds nothing under the job's cap: no step after it.
    assert!(opened <= 2, "{opened} connections for a job its cap limits to one's worth");
    println!(
        "connections opened: {} against 1 MiB/s each, {opened} under a 512 KiB/s cap",
        range_connections(&origin, "/wide.bin").len()
    );
    Ok(())
}

/// A job's small files (each whole in its probe's answer) are fetched several at once;
/// a file of several chunks runs with no file after it started until it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_files_overlap_and_a_large_file_keeps_the_order() -> anyhow::Result<()> {
    const SMALL: u64 = 64 * 1024;
    let origin = Origin::start(OriginConfig::default()).await?;
    let paths: Vec<String> = (0..12)
        .map(|i| if i == 6 { "/large.bin".to_owned() } else { format!("/small-{i}.bin") })
        .collect();
    for (i, path) in paths.iter().enumerate() {
        let len = if i == 6 { 2 * MIB } else { SMALL };
        origin.add_file(path, Content::Pattern { seed: 30 + i as u64, len });
    }
    // 64 KiB bodies take about 100 ms each.
    let trickle = Some((16 * 1024, Duration::from_millis(25)));
    origin.set_knobs(Knobs { trickle, ..Knobs::default() });
    let node = transfer_node(&format!("chunk_size_bytes = {MIB}")).await?;
    let client = node.client(Some(tokens::ALICE))?;
    let out = tempfile::tempdir()?;
    let files: Vec<_> = paths.iter().map(|p| (origin.url(p), out.path().join(&p[1..]))).collect();
    // One connection per file: bodies in flight beyond one are files side by side.
    let one = PropertyChanges { max_connections: Some(Some(1)), ..PropertyChanges::default() };
    let id = start_download(&client, &files, one).await?;
    wait_for(&node, &client, id, &[JobState::Transferred], Duration::from_secs(60)).await?;
    client.act(id, JobAction::Complete).await?;
    for (path, (_, local)) in paths.iter().zip(&files) {
        assert!(same_as_origin(&origin, path, local)?, "{path} differs");
    }
    let stats = origin.stats();
    assert!(stats.max_bodies_in_flight >= 3, "the small files came one by one: {stats:?}");
    let requests = origin.requests();
    let shown = || requests.iter().map(|r| (&r.path, &r.range)).collect::<Vec<_>>();
    let last_large = requests.iter().rposition(|r| r.path == "/large.bin").expect("fetched");
    // Files after the large one may have sent their probe while the large one's was on
    // its way (at most 3 files wait for their probe with it); none starts once it is
    // known large, and none asks for more until it ended.
    let early: Vec<&str> = requests[..last_large]
        .iter()
        .filter(|r| paths[7..].contains(&r.path))
        .map(|r| r.path.as_str())
        .collect();
    let distinct: std::collections::BTreeSet<&str> = early.iter().copied().collect();
    assert!(
        early.len() <= 3 && distinct.len() == early.len(),
        "files after the large one went on before it ended: {:?}",
        shown()
    );
    println!("{} bodies at most in flight", stats.max_bodies_in_flight);
    Ok(())
}
