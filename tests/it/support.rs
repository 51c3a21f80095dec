//! Helpers shared by the end-to-end tests.

use ferry_coordinator::Client;
use ferry_protocol::api::{FileInfo, JobInfo};
use ferry_protocol::{JobId, JobType, NewFile, NewJob};
use ferry_tests::{Node, tokens};

/// A download file on the harness's fictional origin.
pub(crate) fn file(n: usize) -> NewFile {
    NewFile {
        remote_url: format!("https://origin.example/data/{n}.bin"),
        local_path: format!("/srv/ferry/{n}.bin"),
        ranges: vec![],
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
