//! Network loss and return for the jobs homed here (bits-spec §3 and §6.5: a lost
//! network puts transferring jobs in TRANSIENT_ERROR with `BG_E_NETWORK_DISCONNECTED`,
//! and they are queued again as soon as it returns, without the retry delay).
//!
//! The [`Reachability`] actor keeps, from the change feed, the jobs homed here that are
//! queued, connecting or transferring, and those waiting in TRANSIENT_ERROR for a lost
//! network. On each change of the node's network ([`NetWatch`]), and when a job starts
//! waiting (at start-up too), a check task looks for a route to the endpoints each job
//! talks to (its current file's server, its upload's `BITS-Host-Id`, its proxies):
//! - a running job with a route to none of them fails at once, transient, with
//!   `BG_E_NETWORK_DISCONNECTED`; the queue change stops its run (the `Transfers` actor);
//! - a queued one goes to TRANSIENT_ERROR the same way: activated and failed in one
//!   command (no run starts; the scheduler's own activation of it, if first, wins);
//! - a waiting job with a route to one of them again is re-queued
//!   ([`EngineReport::RetryDelayElapsed`]); when one is (the network came back), so is
//!   every other job homed here in TRANSIENT_ERROR that has a route, as BITS re-queues
//!   every transient-error job on reconnect.
//!
//! A job whose endpoints resolve to no address is left alone, and the leader's minimum
//! retry delay stays the fallback (a node without netlink, a missed change). [`explain`]
//! applies the same test to a run's own transport failure: one that happened while no
//! route exists is `BG_E_NETWORK_DISCONNECTED` too.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use actix::prelude::*;
use ferry_protocol::job::{JobError, ProxyUsage};
use ferry_protocol::transfer::{EngineReport, Severity, is_home_node_lost};
use ferry_protocol::{BitsCode, ErrorContext, Job, JobId, JobState, JobType, NodeId};
use futures_util::StreamExt as _;
use url::{Host, Url};

use super::failure::{self, Failure};
use super::{EngineSettings, Reporter};
use crate::feed::Feed;
use crate::netwatch::{NetWatch, NoRoute, Route};
use crate::replica::ClusterView;

/// Transport failures that a lost network explains, when no route exists.
const NETWORK_SYMPTOMS: [BitsCode; 5] = [
    BitsCode::BG_E_CONNECT_FAILURE,
    BitsCode::BG_E_TIMEOUT,
    BitsCode::BG_E_CONNECTION_CLOSED,
    BitsCode::BG_E_SEND_FAILURE,
    BitsCode::BG_E_NAME_RESOLUTION_FAILURE,
];

/// Jobs checked at once (each holds a socket and may wait for the resolver).
const CHECKS_AT_ONCE: usize = 32;

/// The environment variables a PRECONFIG or AUTODETECT job's proxy comes from.
const PROXY_VARIABLES: [&str; 6] =
    ["http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"];

/// What a job homed here has at stake in the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stake {
    /// Queued: it goes to TRANSIENT_ERROR when its route goes (activated and failed in
    /// one command, so no run starts).
    Queued,
    /// Connecting or transferring: it fails when its route goes.
    Running,
    /// In TRANSIENT_ERROR for a lost network: it is queued again when a route returns.
    Waiting,
    /// In TRANSIENT_ERROR for another reason: queued again when the network returns
    /// (a waiting job got its route back in the same check), as BITS re-queues every
    /// transient-error job on reconnect; otherwise its retry delay stands.
    Retrying,
}

/// The stake of `job` for node `node`, if it has one.
fn stake(job: &Job, node: NodeId) -> Option<Stake> {
    if job.home_node() != node {
        return None;
    }
    match job.state() {
        JobState::Queued => Some(Stake::Queued),
        JobState::Connecting | JobState::Transferring => Some(Stake::Running),
        JobState::TransientError if job.error().is_some_and(lost_network) => Some(Stake::Waiting),
        JobState::TransientError if !job.error().is_some_and(is_home_node_lost) => {
            Some(Stake::Retrying)
        }
        _ => None,
    }
}

/// True for the error of a job that lost its network on its home node (not the
/// scheduler's "home node unavailable", which waits for the node instead).
fn lost_network(error: &JobError) -> bool {
    error.code == BitsCode::BG_E_NETWORK_DISCONNECTED && !is_home_node_lost(error)
}

/// A host and port a job connects to.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Endpoint {
    /// A name or an IP address.
    host: Host<String>,
    /// The port (the scheme's when the URL names none).
    port: u16,
}

impl Endpoint {
    /// The server of `url`; `None` for URLs without a network host (`file://`).
    fn of_url(url: &Url) -> Option<Self> {
        Some(Self { host: url.host()?.to_owned(), port: url.port_or_known_default()? })
    }

    /// A proxy as jobs and the environment name it: a URL, or `host:port` (http).
    fn of_proxy(proxy: &str) -> Option<Self> {
        let url = if proxy.contains("://") {
            Url::parse(proxy)
        } else {
            Url::parse(&format!("http://{proxy}"))
        };
        Self::of_url(&url.ok()?)
    }
}

/// Where a job with current URL `url` connects: that server, the host its upload
/// session moved to (`host_id`, a URL or a host), and each of `proxies`.
fn endpoints_of(url: &str, host_id: Option<&str>, proxies: &[String]) -> Vec<Endpoint> {
    let Ok(url) = Url::parse(url) else { return Vec::new() };
    let Some(server) = Endpoint::of_url(&url) else { return Vec::new() };
    let mut all = vec![server];
    let moved = host_id.and_then(|id| {
        Url::parse(id).or_else(|_| Url::parse(&format!("{}://{id}/", url.scheme()))).ok()
    });
    all.extend(moved.as_ref().and_then(Endpoint::of_url));
    all.extend(proxies.iter().filter_map(|p| Endpoint::of_proxy(p)));
    all
}

/// The file `job` works on now and the endpoints it connects to for it (an upload's
/// reply included).
fn endpoints(job: &Job, environment: &[String]) -> (Option<u32>, Vec<Endpoint>) {
    let files = job.files();
    let (file, url) = match job.job_type() {
        JobType::Download => match files.iter().position(|f| !f.transferred) {
            Some(i) => (u32::try_from(i).ok(), files[i].remote_url.as_str()),
            None => return (None, Vec::new()),
        },
        JobType::Upload | JobType::UploadReply => match files.first() {
            Some(f) => (Some(0), f.remote_url.as_str()),
            None => return (None, Vec::new()),
        },
    };
    let proxy = &job.props().proxy;
    let proxies = match proxy.usage {
        ProxyUsage::NoProxy => Vec::new(),
        ProxyUsage::Override => {
            let list = proxy.list.as_deref().unwrap_or_default();
            list.split_whitespace().take(1).map(str::to_owned).collect()
        }
        ProxyUsage::Preconfig | ProxyUsage::Autodetect => environment.to_vec(),
    };
    let upload = job.upload();
    let host_id = upload.session.as_ref().and(upload.host_id.as_deref());
    let mut all = endpoints_of(url, host_id, &proxies);
    // An upload-reply job downloads its reply from wherever the server said.
    if let Some(reply) = upload.reply_url.as_deref() {
        all.extend(endpoints_of(reply, None, &[]));
    }
    (file, all)
}

/// The proxies of the node's environment.
fn environment_proxies() -> Vec<String> {
    PROXY_VARIABLES
        .iter()
        .filter_map(|name| std::env::var(name).ok())
        .filter(|value| !value.trim().is_empty())
        .collect()
}

/// Whether one of `endpoints` can be reached now (`Ok`), or none (`Err`, with the
/// first reason); `None` when that cannot be told: no endpoint, one that resolves to no
/// address, or a check that failed.
async fn reach(
    net: &NetWatch,
    source: Option<IpAddr>,
    endpoints: &[Endpoint],
) -> Option<Result<(), NoRoute>> {
    let (mut first, mut unknown) = (None, endpoints.is_empty());
    for endpoint in endpoints {
        let addresses = net.resolve(&endpoint.host).await;
        unknown |= addresses.is_empty();
        for ip in addresses {
            match net.route_to(SocketAddr::new(ip, endpoint.port), source).await {
                Route::Exists => return Some(Ok(())),
                Route::Missing(no_route) => {
                    first.get_or_insert(no_route);
                }
                Route::Unknown => unknown = true,
            }
        }
    }
    if unknown { None } else { first.map(Err) }
}

/// The job error of a lost network (`file`: the file being transferred).
fn disconnected(no_route: &NoRoute, file: Option<u32>) -> JobError {
    failure::transport(
        BitsCode::BG_E_NETWORK_DISCONNECTED,
        format!(
            "the network is lost: no route to {no_route}; the job is queued again as soon as a route returns"
        ),
        file,
    )
}

/// What to report for a job with `stake` whose endpoints can (`Ok`) or cannot be
/// reached; `file` is the file it works on.
fn verdict(stake: Stake, route: Result<(), NoRoute>, file: Option<u32>) -> Option<EngineReport> {
    match (stake, route) {
        (Stake::Running | Stake::Queued, Err(no_route)) => Some(EngineReport::Failed {
            error: disconnected(&no_route, file),
            severity: Severity::Transient,
        }),
        (Stake::Waiting, Ok(())) => Some(EngineReport::RetryDelayElapsed),
        (Stake::Running | Stake::Queued, Ok(())) | (Stake::Waiting, Err(_)) => None,
        // Decided once the check knows whether the network returned (see `settle`).
        (Stake::Retrying, _) => None,
    }
}

/// `failure`, a run's own, as `BG_E_NETWORK_DISCONNECTED` when it is a transport
/// failure and job `job` has no route to any of its endpoints now.
pub(super) async fn explain(
    failure: Failure,
    job: JobId,
    reporter: &Reporter,
    settings: &EngineSettings,
) -> Failure {
    let symptom = failure.severity == Severity::Transient
        && failure.error.context == ErrorContext::GeneralTransport
        && NETWORK_SYMPTOMS.contains(&failure.error.code);
    if !symptom {
        return failure;
    }
    let found = {
        let machine = reporter.cluster.state.read();
        machine.queue.job(&job).map(|job| endpoints(job, &environment_proxies()))
    };
    let Some((file, endpoints)) = found else { return failure };
    match reach(&settings.network, settings.source_addr, &endpoints).await {
        Some(Err(no_route)) => {
            let mut error = disconnected(&no_route, failure.error.file_index.or(file));
            error.detail =
                format!("{} (the transfer failed: {})", error.detail, failure.error.detail);
            Failure { error, severity: Severity::Transient }
        }
        Some(Ok(())) | None => failure,
    }
}

/// One job to look at in a check, as it was when the check began.
struct Candidate {
    /// The job.
    id: JobId,
    /// Its run: a report is made only while it is still the job's run.
    run: u64,
    /// What it has at stake.
    stake: Stake,
    /// The file it works on (the error names it).
    file: Option<u32>,
    /// Where it connects.
    endpoints: Vec<Endpoint>,
}

/// The network side of the jobs homed here (see the module doc).
pub(crate) struct Reachability {
    /// This node: only its jobs are looked at.
    node_id: NodeId,
    /// The queue, and reports to it.
    cluster: ClusterView,
    /// The node's network.
    net: NetWatch,
    /// `transfer.source_addr`: routes are looked up from it.
    source: Option<IpAddr>,
    /// The jobs homed here with a stake in the network, kept from the change feed.
    watched: HashMap<JobId, Stake>,
    /// A check task is running.
    checking: bool,
    /// Another check is wanted once it ended (the network or the jobs changed since).
    again: bool,
}

impl Reachability {
    /// The actor of node `node_id`, with the engine's network and source address.
    pub(crate) fn new(node_id: NodeId, cluster: ClusterView, settings: &EngineSettings) -> Self {
        Self {
            node_id,
            cluster,
            net: settings.network.clone(),
            source: settings.source_addr,
            watched: HashMap::new(),
            checking: false,
            again: false,
        }
    }

    /// Brings [`Reachability::watched`] up to date with one delivery of the feed;
    /// true if a job started waiting for the network.
    fn follow(&mut self, feed: &Feed) -> bool {
        let machine = self.cluster.state.read();
        let mut started_waiting = false;
        match feed {
            Feed::Reset => {
                let node = self.node_id;
                self.watched = (self.cluster.state.feed().scan(&machine.queue))
                    .filter_map(|job| stake(job, node).map(|s| (job.id(), s)))
                    .collect();
                started_waiting = self.watched.values().any(|s| *s == Stake::Waiting);
            }
            Feed::Changed(batch) => {
                for change in &batch.jobs {
                    let now = machine.queue.job(&change.job).and_then(|j| stake(j, self.node_id));
                    let before = match now {
                        Some(now) => self.watched.insert(change.job, now),
                        None => self.watched.remove(&change.job),
                    };
                    started_waiting |= now == Some(Stake::Waiting) && before != now;
                }
            }
        }
        started_waiting
    }

    /// Checks every watched job in a task of its own (one at a time).
    fn check(&mut self, ctx: &mut Context<Self>) {
        if self.checking {
            self.again = true;
            return;
        }
        let candidates: Vec<Candidate> = {
            let machine = self.cluster.state.read();
            let environment = environment_proxies();
            self.watched
                .iter()
                .filter_map(|(id, stake)| {
                    let job = machine.queue.job(id)?;
                    let (file, endpoints) = endpoints(job, &environment);
                    Some(Candidate { id: *id, run: job.run(), stake: *stake, file, endpoints })
                })
                .collect()
        };
        if candidates.is_empty() {
            return;
        }
        self.checking = true;
        let (net, source) = (self.net.clone(), self.source);
        let reporter = Reporter::new(self.cluster.clone());
        let (me, node) = (ctx.address(), self.node_id);
        tokio::spawn(async move {
            let (retrying, others): (Vec<Candidate>, Vec<Candidate>) =
                candidates.into_iter().partition(|c| c.stake == Stake::Retrying);
            let checks = others.into_iter().map(|candidate| {
                let (net, reporter) = (&net, &reporter);
                async move { settle(net, source, reporter, node, candidate).await }
            });
            let returned = futures_util::stream::iter(checks)
                .buffer_unordered(CHECKS_AT_ONCE)
                .collect::<Vec<bool>>()
                .await
                .contains(&true);
            if returned {
                // The network came back: every transient error is retried now.
                let retries = retrying.into_iter().map(|candidate| {
                    let (net, reporter) = (&net, &reporter);
                    async move { retry(net, source, reporter, node, candidate).await }
                });
                futures_util::stream::iter(retries)
                    .buffer_unordered(CHECKS_AT_ONCE)
                    .collect::<Vec<()>>()
                    .await;
            }
            me.do_send(CheckEnded);
        });
    }
}

/// Checks one job and reports what its route calls for; true if it was waiting for
/// the network and is queued again (the network returned).
async fn settle(
    net: &NetWatch,
    source: Option<IpAddr>,
    reporter: &Reporter,
    node: NodeId,
    candidate: Candidate,
) -> bool {
    let Candidate { id, run, stake: was, file, endpoints } = candidate;
    let Some(route) = reach(net, source, &endpoints).await else { return false };
    let Some(report) = verdict(was, route, file) else { return false };
    // Still the same run with the same stake: a job re-queued and failed otherwise
    // meanwhile keeps its own retry delay.
    if !unchanged(reporter, node, id, run, was) {
        return false;
    }
    let returned = report == EngineReport::RetryDelayElapsed;
    match &report {
        EngineReport::Failed { error, .. } => {
            tracing::info!(job = %id, run, detail = %error.detail, "network lost: the transfer stops")
        }
        _ => tracing::info!(job = %id, run, "network back: the job is queued again"),
    }
    // A queued job has no run to fail: it is activated and failed in one command (the
    // failure then belongs to the run the activation starts), as BITS moves QUEUED jobs
    // to TRANSIENT_ERROR when the network goes.
    let (run, reports) = match was {
        Stake::Queued => (run + 1, vec![EngineReport::Activate, report]),
        Stake::Running | Stake::Waiting | Stake::Retrying => (run, vec![report]),
    };
    match reporter.report(id, run, reports).await {
        Ok(()) => returned,
        Err(e) => {
            tracing::debug!(job = %id, run, outcome = ?e, "network report not applied");
            false
        }
    }
}

/// Whether job `id` is still at run `run` with stake `was` on node `node`.
fn unchanged(reporter: &Reporter, node: NodeId, id: JobId, run: u64, was: Stake) -> bool {
    let machine = reporter.cluster.state.read();
    machine.queue.job(&id).is_some_and(|job| job.run() == run && stake(job, node) == Some(was))
}

/// Queues a job in TRANSIENT_ERROR for another reason again once the network returned,
/// if it has a route and is still as it was.
async fn retry(
    net: &NetWatch,
    source: Option<IpAddr>,
    reporter: &Reporter,
    node: NodeId,
    candidate: Candidate,
) {
    let Candidate { id, run, stake: was, endpoints, .. } = candidate;
    if reach(net, source, &endpoints).await != Some(Ok(())) {
        return;
    }
    if !unchanged(reporter, node, id, run, was) {
        return;
    }
    tracing::info!(job = %id, run, "network back: a job in a transient error is retried now");
    if let Err(e) = reporter.report(id, run, vec![EngineReport::RetryDelayElapsed]).await {
        tracing::debug!(job = %id, run, outcome = ?e, "network report not applied");
    }
}

impl Actor for Reachability {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Subscribed before the first look, so no change falls between the two.
        let mut feed = self.cluster.state.feed().subscribe();
        // Jobs that waited for the network before a restart are looked at once now.
        if self.follow(&Feed::Reset) {
            self.check(ctx);
        }
        let me = ctx.address();
        ctx.spawn(fut::wrap_future(async move {
            while let Some(delivery) = feed.next().await {
                if me.send(Changed(delivery)).await.is_err() {
                    return;
                }
            }
        }));
        let mut changes = self.net.changes();
        let me = ctx.address();
        ctx.spawn(fut::wrap_future(async move {
            // Ends at once where the network is not followed.
            while changes.changed().await.is_ok() {
                if me.send(NetworkChanged).await.is_err() {
                    return;
                }
            }
        }));
    }
}

/// A delivery of the change feed.
#[derive(Message)]
#[rtype(result = "()")]
struct Changed(Feed);

/// The node's links, addresses or routes changed.
#[derive(Message)]
#[rtype(result = "()")]
struct NetworkChanged;

/// A check task ended.
#[derive(Message)]
#[rtype(result = "()")]
struct CheckEnded;

impl Handler<Changed> for Reachability {
    type Result = ();

    fn handle(&mut self, Changed(feed): Changed, ctx: &mut Context<Self>) {
        if self.follow(&feed) {
            self.check(ctx);
        }
    }
}

impl Handler<NetworkChanged> for Reachability {
    type Result = ();

    fn handle(&mut self, _: NetworkChanged, ctx: &mut Context<Self>) {
        self.check(ctx);
    }
}

impl Handler<CheckEnded> for Reachability {
    type Result = ();

    fn handle(&mut self, _: CheckEnded, ctx: &mut Context<Self>) {
        self.checking = false;
        if std::mem::take(&mut self.again) {
            self.check(ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(text: &str) -> Host<String> {
        Host::parse(text).expect("a host")
    }

    #[test]
    fn a_job_connects_to_its_server_its_host_id_and_its_proxies() {
        let proxies = vec!["proxy.example:3128".to_owned(), "http://[2001:db8::7]:8080".into()];
        let all = endpoints_of("https://origin.example/f.bin", Some("10.1.2.3:8443"), &proxies);
        let expected = [
            ("origin.example", 443),
            ("10.1.2.3", 8443),
            ("proxy.example", 3128),
            ("[2001:db8::7]", 8080),
        ];
        let expected: Vec<Endpoint> =
            expected.iter().map(|(h, port)| Endpoint { host: host(h), port: *port }).collect();
        assert_eq!(all, expected);

        let moved = endpoints_of("http://a.example/up", Some("https://b.example/"), &[]);
        assert_eq!(moved[1], Endpoint { host: host("b.example"), port: 443 });
    }

    #[test]
    fn local_and_broken_urls_have_no_endpoint() {
        assert!(endpoints_of("file:///srv/data/f.bin", None, &[]).is_empty());
        assert!(endpoints_of("not a url", None, &[]).is_empty());
        let bad_proxy = endpoints_of("http://127.0.0.1:81/x", None, &[" ".into()]);
        assert_eq!(bad_proxy, vec![Endpoint { host: host("127.0.0.1"), port: 81 }]);
    }

    #[test]
    fn a_running_job_fails_without_a_route_and_a_waiting_one_returns_with_one() {
        let no_route = NoRoute { target: "10.201.0.2".parse().expect("an ip"), why: "gone".into() };
        let report = verdict(Stake::Running, Err(no_route.clone()), Some(3));
        let Some(EngineReport::Failed { error, severity }) = report else {
            panic!("a failure: {report:?}")
        };
        assert_eq!(severity, Severity::Transient);
        assert_eq!(error.code, BitsCode::BG_E_NETWORK_DISCONNECTED);
        assert_eq!(error.file_index, Some(3));
        assert!(lost_network(&error), "it waits for the network, not for its home node");
        assert!(error.detail.contains("10.201.0.2"), "{}", error.detail);

        assert_eq!(verdict(Stake::Waiting, Ok(()), None), Some(EngineReport::RetryDelayElapsed));
        assert_eq!(verdict(Stake::Running, Ok(()), Some(0)), None);
        assert_eq!(verdict(Stake::Waiting, Err(no_route), None), None);
    }

    #[test]
    fn the_home_node_lost_error_waits_for_the_node_not_the_network() {
        let home_lost = JobError {
            context: ErrorContext::GeneralQueueManager,
            code: BitsCode::BG_E_NETWORK_DISCONNECTED,
            detail: "home node".into(),
            file_index: None,
            protocol: None,
        };
        assert!(!lost_network(&home_lost));
        let other = failure::transport(BitsCode::BG_E_CONNECT_FAILURE, "refused".into(), None);
        assert!(!lost_network(&other));
    }

    #[tokio::test]
    async fn an_endpoint_with_a_route_is_reached_and_one_without_an_address_tells_nothing() {
        let net = NetWatch::unwatched();
        let lo = [Endpoint { host: host("127.0.0.1"), port: 80 }];
        assert_eq!(reach(&net, None, &lo).await, Some(Ok(())));
        assert_eq!(reach(&net, None, &[]).await, None);
        let unknown = [Endpoint { host: host("no-such-host.invalid"), port: 80 }];
        assert_eq!(reach(&net, None, &unknown).await, None);
    }
}
