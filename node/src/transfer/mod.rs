//! The transfer engine of a home node. The [`Transfers`] actor owns which runs are
//! going: on every change of the replicated queue it starts a run task for each active
//! job whose files live here (a new run number means a new task), stops tasks whose
//! job is no longer active, and after Complete or Cancel renames or deletes the job's
//! files. The tasks own the I/O ([`download`]) and report through Raft ([`Reporter`]).

mod acl;
pub(crate) mod bandwidth;
mod caps;
mod download;
pub(crate) mod failure;
mod fetch;
mod finish;
pub(crate) mod helper;
mod http;
pub(crate) mod live;
mod local;
pub(crate) mod peer_cache;
mod reachability;
pub(crate) mod router;
mod scope;
mod upload;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use ferry_coordinator::{ClusterError, ReadAt, SecretKey};
use ferry_protocol::command::Command;
use ferry_protocol::credentials::SealedCredential;
use ferry_protocol::transfer::{EngineReport, Severity};
use ferry_protocol::{BitsCode, Caller, Job, JobId, JobState, NodeId, Principal, Proposal, Role};
use tokio::task::JoinHandle;

pub(crate) use self::caps::ConnectionCaps;
use self::failure::{Failure, Stop};
pub(crate) use self::finish::Finisher;
pub(crate) use self::http::HttpTimeouts;
use self::http::{HttpSession, OpenCredential, SessionParts};
pub(crate) use self::local::read_start;
pub(crate) use self::reachability::Reachability;
use self::scope::RunScope;
use crate::egress::EgressPolicy;
use crate::feed::Feed;
use crate::replica::ClusterView;

/// How long a run whose task ended without moving its job waits before a new task.
const ORPHAN_RESTART_DELAY: Duration = Duration::from_secs(2);
/// How often a failed write of a report is retried before the run gives up.
const REPORT_ATTEMPTS: u32 = 5;

/// The engine's settings (from `[transfer]` in the configuration).
#[derive(Clone)]
pub(crate) struct EngineSettings {
    /// Authorities trusted besides the system's.
    pub(crate) extra_roots: Arc<Vec<reqwest::Certificate>>,
    /// Default chunk size, bytes.
    pub(crate) chunk_size: u64,
    /// Range connections per file for jobs that do not set theirs.
    pub(crate) connections: crate::config::Connections,
    /// HTTP client timeouts.
    pub(crate) timeouts: HttpTimeouts,
    /// Whether `file://` sources may be read.
    pub(crate) allow_file_urls: bool,
    /// Addresses transfers may not connect to.
    pub(crate) egress: EgressPolicy,
    /// Every principal's sandbox: all local files of jobs go through it.
    pub(crate) sandboxes: Arc<crate::fs::Sandboxes>,
    /// Hosts (and their subdomains) an upload may follow `BITS-Host-Id` to besides
    /// those on the job URL's site (the policy still applies).
    pub(crate) trusted_host_ids: Arc<Vec<String>>,
    /// Send Basic credentials over plain http before the server asks.
    pub(crate) preemptive_basic_over_http: bool,
    /// Source address of connections to origins.
    pub(crate) source_addr: Option<std::net::IpAddr>,
    /// Most helpers per file (0: none).
    pub(crate) max_helpers: u32,
    /// Range requests in flight toward origins, in all and per origin.
    pub(crate) caps: Arc<ConnectionCaps>,
    /// The node's bandwidth limit of background transfers: every run and every helped
    /// run draws on it.
    pub(crate) bandwidth: Arc<bandwidth::Bandwidth>,
    /// The node's network: routes to origins, and when they change ([`Reachability`]).
    pub(crate) network: crate::netwatch::NetWatch,
    /// Bytes the running downloads received so far, for the API between durable chunks.
    pub(crate) live: Arc<live::LiveProgress>,
}

/// The node itself as a caller: engine reports are only accepted from it.
pub(crate) fn system_caller() -> Caller {
    Caller { principal: Principal::system(), role: Role::Admin }
}

/// Sends engine reports through Raft and reads the job back after them.
#[derive(Clone)]
pub(crate) struct Reporter {
    cluster: ClusterView,
}

impl Reporter {
    /// A reporter writing through `cluster`.
    pub(crate) fn new(cluster: ClusterView) -> Self {
        Self { cluster }
    }

    /// Reads job `id` as applied here, if run `run` is still its current, active run.
    pub(crate) fn read<T>(
        &self,
        id: JobId,
        run: u64,
        f: impl FnOnce(&Job) -> T,
    ) -> Result<T, Stop> {
        let machine = self.cluster.state.read();
        match machine.queue.job(&id) {
            Some(job) if job.run() == run && job.state().is_active() => Ok(f(job)),
            _ => Err(Stop::Stale),
        }
    }

    /// Proposes `reports` (applied in order, all or nothing) for run `run` of job `id`
    /// and waits until they are applied here. A refusal because the run is over is
    /// [`Stop::Stale`].
    pub(crate) async fn report(
        &self,
        id: JobId,
        run: u64,
        reports: Vec<EngineReport>,
    ) -> Result<(), Stop> {
        let command = Command::Engine { job: id, run, reports };
        // One request id for all attempts: a retry of a report that was applied after
        // all (its answer was lost) is answered from the request table, not re-applied.
        let request_id = Some(ferry_protocol::RequestId::generate());
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=REPORT_ATTEMPTS {
            let proposal = Proposal {
                request_id: request_id.clone(),
                caller: system_caller(),
                command: command.clone(),
            };
            match self.cluster.write(proposal).await {
                Ok(written) => {
                    match written.result {
                        Ok(_) => {}
                        Err(e) if e.code == BitsCode::BG_E_INVALID_STATE => {
                            return Err(Stop::Stale);
                        }
                        // Any other refusal means the report itself is wrong: fail the run
                        // (a fatal error the owner sees) rather than retry it forever.
                        Err(e) => {
                            tracing::warn!(job = %id, run, error = %e, "engine report refused");
                            return Err(Stop::Failed(Failure::fatal(failure::transport(
                                e.code, e.detail, None,
                            ))));
                        }
                    }
                    self.cluster
                        .read_barrier(ReadAt::Applied(written.index))
                        .await
                        .map_err(|_| Stop::Stale)?;
                    return Ok(());
                }
                Err(e @ ClusterError::TooLarge { .. }) => {
                    return Err(Stop::Failed(Failure::fatal(failure::transport(
                        BitsCode::E_UNEXPECTED,
                        format!("a transfer report cannot be written: {e}"),
                        None,
                    ))));
                }
                Err(e) => {
                    tracing::warn!(job = %id, run, attempt, error = %e, "cannot write an engine report; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
        Err(Stop::Stale)
    }
}

/// Everything a transfer run needs: [`download`] and [`upload`] implement its two kinds.
pub(crate) struct Run {
    /// The job, as it was when the run started (its properties are used throughout).
    pub(crate) job: Job,
    /// Which run this is.
    pub(crate) run: u64,
    /// Reports to the queue and fresh reads of it.
    pub(crate) reporter: Reporter,
    /// Node settings.
    pub(crate) settings: EngineSettings,
    /// HTTP client and credentials of the run.
    pub(crate) http: Arc<HttpSession>,
    /// Files that come from the origin alone (no peers, no helpers): their first try
    /// did not match the SHA-256 their origin declared, or their owner withdrew them.
    pub(crate) origin_only: Mutex<BTreeSet<u32>>,
}

impl Run {
    fn new(
        job: Job,
        run: u64,
        reporter: Reporter,
        settings: EngineSettings,
        http: Arc<HttpSession>,
    ) -> Self {
        Self { job, run, reporter, settings, http, origin_only: Default::default() }
    }
}

/// Opens the job's sealed credentials for a run.
fn open_credentials(job: &Job, key: &SecretKey) -> Result<Vec<OpenCredential>, Failure> {
    job.credentials()
        .iter()
        .map(|c| {
            let associated =
                SealedCredential::associated_data(job.id(), c.target, c.scheme, &c.user_name);
            let plain = key.open(&c.sealed, &associated).map_err(|e| {
                Failure::fatal(failure::transport(
                    BitsCode::BG_E_INVALID_CREDENTIALS,
                    format!("the stored {:?} {:?} password cannot be opened ({e}); set the credentials again", c.target, c.scheme),
                    None,
                ))
            })?;
            let password = String::from_utf8(plain).map_err(|_| {
                Failure::fatal(failure::transport(
                    BitsCode::BG_E_INVALID_CREDENTIALS,
                    "a stored password is not UTF-8; set the credentials again".into(),
                    None,
                ))
            })?;
            Ok(OpenCredential { target: c.target, scheme: c.scheme, user: c.user_name.clone(), password })
        })
        .collect()
}

/// The HTTP session of `job` on this node: its credentials opened, its client
/// certificate loaded, its proxy and headers applied.
pub(crate) async fn job_http(
    job: &Job,
    settings: &EngineSettings,
    secrets: &SecretKey,
) -> Result<Arc<HttpSession>, Failure> {
    let parts = SessionParts {
        credentials: open_credentials(job, secrets)?,
        identity: http::load_identity(job, &settings.sandboxes).await?,
        secrets,
        settings,
    };
    HttpSession::new(job, parts)
}

/// One run of a job: set up HTTP, transfer, report how it ended.
async fn run_job(job: Job, reporter: Reporter, settings: EngineSettings, secrets: Arc<SecretKey>) {
    let id = job.id();
    let run = job.run();
    let custom_method = job.props().custom_method().is_some();
    let outcome = async {
        let http = job_http(&job, &settings, &secrets).await?;
        if job.job_type().is_upload() {
            Run::new(job, run, reporter.clone(), settings.clone(), http).upload().await
        } else {
            Run::new(job, run, reporter.clone(), settings.clone(), http).download().await
        }
    }
    .await;
    settings.live.end(id, run);
    let failure = match outcome {
        Ok(()) | Err(Stop::Stale) => return,
        Err(Stop::Failed(failure)) => failure,
        Err(Stop::RestartFile(why)) => {
            Failure::new(failure::transport(BitsCode::BG_E_REMOTE_FILE_CHANGED, why, None))
        }
        Err(Stop::DigestMismatch(why)) => {
            Failure::fatal(failure::transport(BitsCode::BG_E_INVALID_SERVER_RESPONSE, why, None))
        }
    };
    // A connect error with no route to the origin is the network's loss, not the server's.
    let mut failure = reachability::explain(failure, id, &reporter, &settings).await;
    if custom_method {
        // BITS: a job with its own HTTP method is not retried; Resume starts it over.
        failure.severity = Severity::Fatal;
    }
    tracing::info!(job = %id, run, code = %failure.error.code, severity = ?failure.severity, detail = %failure.error.detail, "transfer failed");
    let report = EngineReport::Failed { error: failure.error, severity: failure.severity };
    let _ = reporter.report(id, run, vec![report]).await;
}

/// Cancel-Session for a cancelled upload job's open session.
async fn cancel_upload(job: &Job, settings: &EngineSettings, secrets: &SecretKey) {
    match job_http(job, settings, secrets).await {
        Ok(http) => upload::cancel_session(job, http, upload::HostIdRule::of(settings)).await,
        Err(e) => {
            tracing::warn!(job = %job.id(), error = ?e.error, "cannot cancel the upload session")
        }
    }
}

/// Check the queue again (it changed, or time passed).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Tick;

/// A run's task ended.
#[derive(Message)]
#[rtype(result = "()")]
struct RunEnded {
    job: JobId,
    run: u64,
}

/// A final job's files were renamed or deleted (or that failed and may be retried).
#[derive(Message)]
#[rtype(result = "()")]
struct FinishEnded {
    job: JobId,
}

/// A run in progress.
struct RunningTask {
    run: u64,
    /// Stops the run; its task ends once the run's work ended.
    scope: RunScope,
    /// The run's task.
    handle: JoinHandle<()>,
    /// When the task ended, if it did while its job still holds the same run.
    ended: Option<Instant>,
}

/// The home node's transfer actor.
pub(crate) struct Transfers {
    node_id: NodeId,
    cluster: ClusterView,
    settings: EngineSettings,
    secrets: Arc<SecretKey>,
    running: HashMap<JobId, RunningTask>,
    /// Runs told to stop whose work may not have ended yet: the next run of the job
    /// and the finishing of its files wait for it.
    stopping: HashMap<JobId, JoinHandle<()>>,
    /// Final jobs whose files are being finished (`None`) or whose last attempt ended
    /// at that time without being recorded (retried after a pause).
    finishing: HashMap<JobId, Option<Instant>>,
    /// The jobs homed here that need this actor: active, or final with files not yet
    /// finished. Kept from the change feed; [`Tick`] looks at these only.
    watched: HashSet<JobId>,
    /// Serializes work on a job's files with Complete's renames, and tells the API
    /// how finishing ended.
    finisher: Arc<Finisher>,
}

impl Transfers {
    /// The engine of node `node_id`.
    pub(crate) fn new(
        node_id: NodeId,
        cluster: ClusterView,
        settings: EngineSettings,
        secrets: Arc<SecretKey>,
        finisher: Arc<Finisher>,
    ) -> Self {
        Self {
            node_id,
            cluster,
            settings,
            secrets,
            running: HashMap::new(),
            stopping: HashMap::new(),
            finishing: HashMap::new(),
            watched: HashSet::new(),
            finisher,
        }
    }

    /// Whether `job` needs this actor (see [`Transfers::watched`]).
    fn watches(&self, job: &Job) -> bool {
        job.home_node() == self.node_id
            && (matches!(job.state(), JobState::Connecting | JobState::Transferring)
                || (job.state().is_final() && !job.activity().files_finished))
    }

    /// Brings [`Transfers::watched`] up to date with one delivery of the feed.
    fn follow(&mut self, feed: &Feed) {
        let machine = self.cluster.state.read();
        match feed {
            Feed::Reset => {
                let watched: HashSet<JobId> = (self.cluster.state.feed().scan(&machine.queue))
                    .filter(|job| self.watches(job))
                    .map(|job| job.id())
                    .collect();
                self.watched = watched;
            }
            Feed::Changed(batch) => {
                for change in &batch.jobs {
                    if machine.queue.job(&change.job).is_some_and(|job| self.watches(job)) {
                        self.watched.insert(change.job);
                    } else {
                        self.watched.remove(&change.job);
                    }
                }
            }
        }
    }

    fn start_run(&mut self, job: Job, ctx: &mut Context<Self>) {
        let (id, run) = (job.id(), job.run());
        if let Some(old) = self.running.remove(&id) {
            self.stop_run(id, old);
        }
        let previous = self.stopping.remove(&id);
        let reporter = Reporter::new(self.cluster.clone());
        let me = ctx.address();
        let scope = RunScope::default();
        let handle = tokio::spawn({
            let settings = self.settings.clone();
            let secrets = self.secrets.clone();
            let scope = scope.clone();
            async move {
                // The job's previous run touches its files until its work ended.
                if let Some(previous) = previous {
                    let _ = previous.await;
                }
                if scope.run(run_job(job, reporter, settings, secrets)).await.is_some() {
                    me.do_send(RunEnded { job: id, run });
                }
            }
        });
        tracing::debug!(job = %id, run, "transfer run started");
        self.running.insert(id, RunningTask { run, scope, handle, ended: None });
    }

    /// Tells a run to stop; its task is kept until the next run or the finishing of
    /// the job's files has waited for it.
    fn stop_run(&mut self, id: JobId, task: RunningTask) {
        task.scope.stop();
        let handle = match self.stopping.remove(&id) {
            // A run stopped before is awaited too.
            Some(earlier) => tokio::spawn(async move {
                let _ = earlier.await;
                let _ = task.handle.await;
            }),
            None => task.handle,
        };
        self.stopping.insert(id, handle);
    }

    fn start_finish(&mut self, job: Job, ctx: &mut Context<Self>) {
        let id = job.id();
        // A run stopped just now may still be finishing a file operation: the files
        // are renamed or deleted once its work ended.
        let stopped = self.stopping.remove(&id);
        self.finishing.insert(id, None);
        let reporter = Reporter::new(self.cluster.clone());
        let me = ctx.address();
        let (settings, secrets) = (self.settings.clone(), self.secrets.clone());
        let finisher = self.finisher.clone();
        tokio::spawn(async move {
            if let Some(run) = stopped {
                let _ = run.await;
            }
            if job.state() == JobState::Cancelled && job.upload().session.is_some() {
                cancel_upload(&job, &settings, &secrets).await;
            }
            let _held = finisher.lock(id).await;
            let finished = finisher.finish_files(job).await;
            match finished {
                Ok(done) => {
                    for problem in &done.problems {
                        tracing::warn!(job = %id, %problem, "finishing the job's files");
                    }
                    let report = EngineReport::FilesFinished { completed: done.completed.clone() };
                    let command = Command::Engine { job: id, run: 0, reports: vec![report] };
                    let proposal = Proposal { request_id: None, caller: system_caller(), command };
                    match reporter.cluster.write(proposal).await {
                        Ok(_) => finisher.record(id, &done),
                        Err(e) => {
                            tracing::warn!(job = %id, error = %e, "cannot record the finished files")
                        }
                    }
                }
                Err(e) => tracing::warn!(job = %id, error = %e, "finishing the job's files failed"),
            }
            me.do_send(FinishEnded { job: id });
        });
    }
}

impl Actor for Transfers {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Subscribed before the first look, so no change falls between the two.
        let mut feed = self.cluster.state.feed().subscribe();
        self.follow(&Feed::Reset);
        let me = ctx.address();
        ctx.spawn(fut::wrap_future(async move {
            while let Some(delivery) = feed.next().await {
                if me.send(Changed(delivery)).await.is_err() {
                    return;
                }
            }
        }));
        // Orphaned runs (a report could not be written) are retried on this beat.
        ctx.run_interval(Duration::from_secs(1), |_, ctx| ctx.notify(Tick));
    }
}

impl Handler<Tick> for Transfers {
    type Result = ();

    fn handle(&mut self, _: Tick, ctx: &mut Context<Self>) {
        let mut to_start = Vec::new();
        let mut to_finish = Vec::new();
        let mut wanted = HashSet::new();
        {
            let machine = self.cluster.state.read();
            for job in self.watched.iter().filter_map(|id| machine.queue.job(id)) {
                if matches!(job.state(), JobState::Connecting | JobState::Transferring) {
                    wanted.insert(job.id());
                    let start = match self.running.get(&job.id()) {
                        Some(task) if task.run == job.run() => {
                            task.ended.is_some_and(|ended| ended.elapsed() >= ORPHAN_RESTART_DELAY)
                        }
                        _ => true,
                    };
                    if start {
                        to_start.push(job.clone());
                    }
                } else if job.state().is_final() && !job.activity().files_finished {
                    let due = match self.finishing.get(&job.id()) {
                        None => true,
                        Some(None) => false,
                        Some(Some(ended)) => ended.elapsed() >= ORPHAN_RESTART_DELAY,
                    };
                    if due {
                        to_finish.push(job.clone());
                    }
                }
            }
        }
        let unwanted: Vec<JobId> =
            self.running.keys().filter(|id| !wanted.contains(id)).copied().collect();
        for id in unwanted {
            if let Some(task) = self.running.remove(&id) {
                self.stop_run(id, task);
            }
        }
        self.stopping.retain(|_, run| !run.is_finished());
        for job in to_start {
            self.start_run(job, ctx);
        }
        for job in to_finish {
            self.start_finish(job, ctx);
        }
    }
}

/// A delivery of the change feed.
#[derive(Message)]
#[rtype(result = "()")]
struct Changed(Feed);

impl Handler<Changed> for Transfers {
    type Result = ();

    fn handle(&mut self, Changed(feed): Changed, ctx: &mut Context<Self>) {
        self.follow(&feed);
        ctx.notify(Tick);
    }
}

impl Handler<RunEnded> for Transfers {
    type Result = ();

    fn handle(&mut self, msg: RunEnded, _: &mut Context<Self>) {
        if let Some(task) = self.running.get_mut(&msg.job).filter(|t| t.run == msg.run) {
            task.ended = Some(Instant::now());
        }
    }
}

impl Handler<FinishEnded> for Transfers {
    type Result = ();

    fn handle(&mut self, msg: FinishEnded, _: &mut Context<Self>) {
        let finished = self
            .cluster
            .state
            .read()
            .queue
            .job(&msg.job)
            .is_none_or(|job| job.activity().files_finished);
        if finished {
            self.finishing.remove(&msg.job);
        } else {
            self.finishing.insert(msg.job, Some(Instant::now()));
        }
    }
}
