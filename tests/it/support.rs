//! Helpers shared by the end-to-end tests.

use ferry_coordinator::Client;
use ferry_protocol::api::{FileInfo, JobInfo};
use ferry_protocol::{JobId, JobType, NewFile, NewJob};
use ferry_tests::{Node, tokens};

/// A download file on the harness's fictional origin.
pub(crate) fn file(n: usize) -> NewFile {
    NewFile {
        remote_url: format!("https://origin.example/data/{n}.bin"),
        local_path: format!("/tmp/tmp/srv/ferry/{n}.bin"),
        ranges: vec![],
        sha256: None,
    }
}

/// A job of `job_type` with default properties and `files`.
pub(crate) fn new_job(name: &str, job_type: JobType, files: Vec<NewFile>) -> NewJob {
    NewJob { display_name: name.into(), job_type, properties: Default::default(), files }
}

/// Everything a node knows about its jobs, as the admin sees it: every job with its
/// files, including jobs in a final state (read one by one: they are not listed).
pub(crate) async fn everything(
    client: &Client,
    ids: &[JobId],
) -> anyhow::Result<Vec<(JobInfo, Vec<FileInfo>)>> {
    let mut all = Vec::new();
    for id in ids {
        let job = client.job(*id).await?;
        let files = client.files(*id).await?.files;
        all.push((job, files));
    }
    Ok(all)
}

/// The admin's view of the queue: every listed job with its files.
pub(crate) async fn queue_view(node: &Node) -> anyhow::Result<Vec<(JobInfo, Vec<FileInfo>)>> {
    let admin = node.client(Some(tokens::ADMIN))?;
    let ids: Vec<JobId> = admin.list_jobs(true).await?.into_iter().map(|j| j.id).collect();
    everything(&admin, &ids).await
}

/// A raw HTTP client for sending malformed requests.
pub(crate) fn raw() -> reqwest::Client {
    ferry_coordinator::client::ensure_crypto_provider();
    reqwest::Client::builder().no_proxy().build().expect("a plain HTTP client builds")
}

/// A download node for transfer tests: 256 KiB chunks unless `transfer` says
/// otherwise (later keys win in TOML? no: duplicates are errors, so give whole lines).
pub(crate) async fn transfer_node(transfer: &str) -> anyhow::Result<Node> {
    let mut lines = String::from(transfer);
    if !transfer.contains("chunk_size_bytes") {
        lines.push_str("\nchunk_size_bytes = 262144");
    }
    if !transfer.contains("read_timeout_secs") {
        lines.push_str("\nread_timeout_secs = 10");
    }
    Node::start(ferry_tests::NodeOptions { transfer: lines, ..ferry_tests::NodeOptions::default() })
        .await
}

/// Polls job `id` until its state is one of `states`; fails after `timeout` with the
/// job and the node's log.
pub(crate) async fn wait_for(
    node: &Node,
    client: &Client,
    id: JobId,
    states: &[ferry_protocol::JobState],
    timeout: std::time::Duration,
) -> anyhow::Result<JobInfo> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let job = client.job(id).await?;
        if states.contains(&job.state) {
            return Ok(job);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "job {id} is {:?} after {timeout:?}, wanted {states:?}; error {:?}\nnode log:\n{}",
                job.state,
                job.error,
                node.log_tail()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Creates a download job of `files` (URL, local path) with `properties`, resumes it.
pub(crate) async fn start_download(
    client: &Client,
    files: &[(String, std::path::PathBuf)],
    properties: ferry_protocol::PropertyChanges,
) -> anyhow::Result<JobId> {
    let files = files
        .iter()
        .map(|(url, path)| NewFile {
            remote_url: url.clone(),
            local_path: path.to_string_lossy().into_owned(),
            ranges: vec![],
            sha256: None,
        })
        .collect();
    let spec =
        NewJob { display_name: "download".into(), job_type: JobType::Download, properties, files };
    let job = client.create_job(&spec).await?;
    client.act(job.id, ferry_protocol::JobAction::Resume).await?;
    Ok(job.id)
}

/// Creates and resumes a download of `url` to `local` whose file must have SHA-256
/// `sha256` (hex).
pub(crate) async fn download_expecting(
    client: &Client,
    url: &str,
    local: &std::path::Path,
    sha256: &str,
) -> anyhow::Result<JobId> {
    let file = NewFile {
        remote_url: url.into(),
        local_path: local.to_string_lossy().into_owned(),
        ranges: vec![],
        sha256: Some(sha256.into()),
    };
    let spec = NewJob {
        display_name: "expecting a digest".into(),
        job_type: JobType::Download,
        properties: ferry_protocol::PropertyChanges::default(),
        files: vec![file],
    };
    let id = client.create_job(&spec).await?.id;
    client.act(id, ferry_protocol::JobAction::Resume).await?;
    Ok(id)
}

/// The bytes of job `id` that are durable on its home node: its files' peer statistics
/// count recorded chunks only, whereas a running job's `bytes_transferred` counts the
/// bytes received so far too.
pub(crate) async fn durable_bytes(client: &Client, id: JobId) -> anyhow::Result<u64> {
    let files = client.files(id).await?.files;
    Ok(files.iter().map(|f| f.peer_stats.from_origin + f.peer_stats.from_peers).sum())
}

/// Fails if `secret` appears in any file of `node`'s data directory or in its log.
pub(crate) fn assert_no_secret(node: &Node, secret: &str) -> anyhow::Result<()> {
    let mut places = files_under(&node.data_dir())?;
    places.push(node.log_path());
    for place in places {
        let bytes = std::fs::read(&place).unwrap_or_default();
        let found = bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
        anyhow::ensure!(!found, "{secret:?} is in {}", place.display());
    }
    Ok(())
}

/// Every file under `dir`, in subdirectories too (for "no secret at rest" checks).
pub(crate) fn files_under(dir: &std::path::Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(files_under(&path)?);
        } else {
            files.push(path);
        }
    }
    Ok(files)
}

/// Writes `len` bytes of a xorshift stream, 1 MiB at a time.
pub(crate) fn write_random(path: &std::path::Path, len: usize) -> anyhow::Result<blake3::Hash> {
    use std::io::Write;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut hasher = blake3::Hasher::new();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for word in buf.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let n = left.min(buf.len());
        file.write_all(&buf[..n])?;
        hasher.update(&buf[..n]);
        left -= n;
    }
    file.flush()?;
    Ok(hasher.finalize())
}

/// BLAKE3 of a file.
pub(crate) fn hash_file(path: &std::path::Path) -> anyhow::Result<blake3::Hash> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(std::fs::File::open(path)?)?;
    Ok(hasher.finalize())
}

pub(crate) use ferry_tests::Rng;

/// Rounds of the failpoint crash tests: 1 in CI, `FERRY_FAILPOINT_ROUNDS` by hand
/// (`scripts/failpoints.sh`).
pub(crate) fn failpoint_rounds() -> u64 {
    std::env::var("FERRY_FAILPOINT_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(1)
}

/// The temporary file of the first file of job `id`, as the files API names it.
pub(crate) async fn temporary_name(
    client: &Client,
    id: JobId,
) -> anyhow::Result<std::path::PathBuf> {
    Ok(std::path::PathBuf::from(&client.files(id).await?.files[0].temporary_name))
}
