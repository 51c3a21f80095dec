//! Downloads under the nemesis (bob's jobs; the queue clients are alice): one client
//! after another downloads a file from an
//! in-test origin whose content changes every few seconds, through random nodes (so
//! every node is some job's home, with helpers), completing each job once it is
//! transferred. The checks: no file at its final name before its job is completed;
//! every completed file byte-identical to exactly one version the origin served; no
//! file at the final name of a job that was cancelled.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ferry_protocol::api::JobInfo;
use ferry_protocol::{JobId, JobState, JobType, NewFile, NewJob};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Urls;
use crate::origin::{Content, Origin, OriginConfig};
use crate::{Rng, tokens};

/// Size of the file: several 1 MiB chunks, so that helpers take part.
const SIZE: u64 = 12 * 1024 * 1024 + 7;
/// The file's path at the origin.
const PATH: &str = "/versions.bin";
/// Longest one job may take before the client cancels it.
const PATIENCE: Duration = Duration::from_secs(120);

/// The `[transfer]` lines of the nodes under this workload: 1 MiB chunks.
pub(super) const TRANSFER: &str = "chunk_size_bytes = 1048576\nread_timeout_secs = 10";

/// What the client did.
#[derive(Default)]
struct Log {
    /// Completed jobs, their final names and their home nodes.
    completed: Vec<(JobId, PathBuf, u64)>,
    /// Cancelled jobs (they took too long, or failed) and their final names.
    cancelled: Vec<(JobId, PathBuf)>,
    /// Violations seen while it ran.
    violations: Vec<String>,
}

/// The downloads at work.
pub struct Downloads {
    origin: Arc<Origin>,
    /// The job being downloaded now, for the faults that aim at its home or helpers.
    pub active: Arc<Mutex<Option<JobId>>>,
    /// Every seed the origin's file had.
    seeds: Arc<Mutex<Vec<u64>>>,
    stop: Arc<AtomicBool>,
    client: JoinHandle<anyhow::Result<Log>>,
    mutator: JoinHandle<()>,
    dir: tempfile::TempDir,
}

/// What the checks found (they fail on a violation).
#[derive(Debug)]
pub struct DownloadVerdict {
    /// Jobs completed, each file equal to one origin version.
    pub completed: usize,
    /// Jobs completed whose home node was removed from the cluster (a replaced member)
    /// before it placed the file: the file went with the node, as documented.
    pub lost_with_home: usize,
    /// Jobs cancelled, none with a file at its final name.
    pub cancelled: usize,
    /// Versions the origin served.
    pub versions: usize,
}

impl Downloads {
    /// Starts the origin, its changes and the client on the nodes at `urls`.
    pub async fn start(urls: Urls, rng: &mut Rng) -> anyhow::Result<Self> {
        let origin = Arc::new(Origin::start(OriginConfig::default()).await?);
        let seeds = Arc::new(Mutex::new(vec![1]));
        origin.add_file(PATH, Content::Pattern { seed: 1, len: SIZE });
        let stop = Arc::new(AtomicBool::new(false));
        let mutator = {
            let (origin, seeds, stop) = (origin.clone(), seeds.clone(), stop.clone());
            let mut rng = Rng(rng.next() | 1);
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(rng.millis(4_000, 12_000)).await;
                    let seed = {
                        let mut seeds = seeds.lock().unwrap_or_else(PoisonError::into_inner);
                        let seed = seeds.len() as u64 + 1;
                        seeds.push(seed);
                        seed
                    };
                    origin.add_file(PATH, Content::Pattern { seed, len: SIZE });
                }
            })
        };
        let dir = tempfile::Builder::new().prefix("ferry-nemesis-downloads-").tempdir()?;
        let active = Arc::new(Mutex::new(None));
        let client = Client {
            urls,
            url: origin.url(PATH),
            dir: dir.path().to_path_buf(),
            active: active.clone(),
            stop: stop.clone(),
            rng: Rng(rng.next() | 1),
            http: reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build()?,
        };
        let client = tokio::spawn(client.run());
        Ok(Self { origin, active, seeds, stop, client, mutator, dir })
    }

    /// Stops the client and the changes, then checks every job's file; call once the
    /// cluster is healed, with its `members`.
    pub async fn check(self, members: &[u64]) -> anyhow::Result<DownloadVerdict> {
        self.stop.store(true, Ordering::Relaxed);
        self.mutator.abort();
        let log = self.client.await??;
        if let Some(first) = log.violations.first() {
            anyhow::bail!("downloads: {first} ({} violations)", log.violations.len());
        }
        let seeds = self.seeds.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let versions: Vec<blake3::Hash> = seeds
            .iter()
            .map(|seed| {
                let content = Content::Pattern { seed: *seed, len: SIZE };
                blake3::hash(&content.slice(0, SIZE))
            })
            .collect();
        let mut lost_with_home = 0;
        for (job, path, home) in &log.completed {
            if !members.contains(home) && !path.exists() {
                lost_with_home += 1;
                continue;
            }
            let deadline = Instant::now() + Duration::from_secs(60);
            while !path.exists() {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "job {job}: completed, no file (home node {home}, members {members:?})"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let mut hasher = blake3::Hasher::new();
            hasher.update_reader(std::fs::File::open(path)?)?;
            let hash = hasher.finalize();
            anyhow::ensure!(
                versions.contains(&hash),
                "job {job}: the completed file is none of the {} versions the origin served",
                versions.len()
            );
        }
        for (job, path) in &log.cancelled {
            anyhow::ensure!(!path.exists(), "job {job}: cancelled, yet a file at its name");
        }
        drop((self.origin, self.dir));
        Ok(DownloadVerdict {
            completed: log.completed.len(),
            lost_with_home,
            cancelled: log.cancelled.len(),
            versions: versions.len(),
        })
    }
}

struct Client {
    urls: Urls,
    url: String,
    dir: PathBuf,
    active: Arc<Mutex<Option<JobId>>>,
    stop: Arc<AtomicBool>,
    rng: Rng,
    http: reqwest::Client,
}

impl Client {
    fn node(&mut self) -> String {
        self.urls.pick(&mut self.rng)
    }

    /// Sends a keyed request to random nodes until one answers it with success (or the
    /// client is stopped, unless `always`: then for up to a minute); the answer's job.
    async fn send(
        &mut self,
        key: &str,
        always: bool,
        request: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Option<JobInfo> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while (always && Instant::now() < deadline) || !self.stop.load(Ordering::Relaxed) {
            let url = self.node();
            let sent = request(&self.http, &url)
                .bearer_auth(tokens::BOB)
                .header("Idempotency-Key", key)
                .send()
                .await;
            if let Ok(answer) = sent
                && answer.status().is_success()
            {
                let body: serde_json::Value = answer.json().await.ok()?;
                // Actions answer {action, code, job}; a create answers the job.
                let job = body.get("job").cloned().unwrap_or(body);
                return serde_json::from_value(job).ok();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        None
    }

    /// Whether Complete of job `id` is refused (409) rather than unanswered.
    async fn refused(&mut self, id: JobId) -> bool {
        let url = self.node();
        let sent = self
            .http
            .post(format!("{url}/v1/jobs/{id}/complete"))
            .bearer_auth(tokens::BOB)
            .send()
            .await;
        sent.is_ok_and(|answer| answer.status() == reqwest::StatusCode::CONFLICT)
    }

    async fn job(&mut self, id: JobId) -> Option<JobInfo> {
        let url = self.node();
        let sent =
            self.http.get(format!("{url}/v1/jobs/{id}")).bearer_auth(tokens::BOB).send().await;
        match sent {
            Ok(answer) if answer.status().is_success() => answer.json().await.ok(),
            _ => None,
        }
    }

    async fn run(mut self) -> anyhow::Result<Log> {
        let mut log = Log::default();
        let mut n = 0;
        while !self.stop.load(Ordering::Relaxed) {
            n += 1;
            let local = self.dir.join(format!("d{n}.bin"));
            let spec = NewJob {
                display_name: format!("download {n}"),
                job_type: JobType::Download,
                properties: Default::default(),
                files: vec![NewFile {
                    remote_url: self.url.clone(),
                    local_path: local.to_string_lossy().into_owned(),
                    ranges: vec![],
                    sha256: None,
                }],
            };
            let create =
                |http: &reqwest::Client, url: &str| http.post(format!("{url}/v1/jobs")).json(&spec);
            let Some(job) = self.send(&format!("d{n}"), false, create).await else { break };
            let id = job.id;
            let act = |action: &'static str| {
                move |http: &reqwest::Client, url: &str| {
                    http.post(format!("{url}/v1/jobs/{id}/{action}"))
                }
            };
            if self.send(&format!("d{n}-resume"), false, act("resume")).await.is_none() {
                // Stopped: the job is cancelled below like one that took too long.
                log.cancelled.push((id, local));
                let cancelled = self.send(&format!("d{n}-cancel"), true, act("cancel")).await;
                anyhow::ensure!(cancelled.is_some(), "job {id}: cancel never answered");
                break;
            }
            *self.active.lock().unwrap_or_else(PoisonError::into_inner) = Some(id);
            let deadline = Instant::now() + PATIENCE;
            let mut transferred = None;
            while Instant::now() < deadline && !self.stop.load(Ordering::Relaxed) {
                if local.exists() {
                    log.violations.push(format!("job {id}: a file at its name before Complete"));
                }
                match self.job(id).await.map(|j| (j.state, j.home_node)) {
                    Some((JobState::Transferred, home)) => {
                        transferred = Some(home);
                        break;
                    }
                    Some((JobState::Error, _)) => break,
                    _ => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
            *self.active.lock().unwrap_or_else(PoisonError::into_inner) = None;
            let action = match transferred {
                Some(home) => {
                    log.completed.push((id, local, home));
                    "complete"
                }
                None => {
                    log.cancelled.push((id, local));
                    "cancel"
                }
            };
            // Sent even when stopping: every job ends completed or cancelled.
            let ended = self.send(&format!("d{n}-{action}"), true, act(action)).await;
            if ended.is_none() && action == "complete" && self.refused(id).await {
                // Complete is refused when the home node was removed with the files
                // (the check below counts such a job as lost with its home): cancel it.
                let cancelled = self.send(&format!("d{n}-cancel"), true, act("cancel")).await;
                anyhow::ensure!(cancelled.is_some(), "job {id}: cancel never answered");
                continue;
            }
            anyhow::ensure!(ended.is_some(), "job {id}: {action} never answered");
        }
        Ok(log)
    }
}
