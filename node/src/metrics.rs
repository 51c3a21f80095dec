//! The node's metrics, served by `GET /metrics` in the Prometheus text format: one
//! registry per process ([`get`]), with counters and histograms the components update
//! as they work, and gauges the cluster module sets from the applied state and Raft at
//! each scrape (`cluster/metrics.rs`). A leaf: it imports no other module of the node.
//! `docs/operations.md` lists the families.

use std::sync::LazyLock;

use ferry_coordinator::metrics::ApiMetrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Upper bounds of the fsync buckets, in seconds.
const FSYNC_BUCKETS: [f64; 12] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];
/// Upper bounds of the snapshot build buckets, in seconds.
const SNAPSHOT_BUCKETS: [f64; 10] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Upper bounds of the proposal batch buckets, in commands per entry.
const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct JobLabels {
    pub(crate) state: &'static str,
    pub(crate) priority: &'static str,
}

/// Which database a durable commit went to.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Database {
    /// `log` (raft-log.redb) or `state` (state.redb).
    pub(crate) db: &'static str,
}

/// Where the bytes of this node's downloads came from.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Source {
    /// `origin` (fetched here), `helper` (fetched by another member for this node) or
    /// `peer` (copied from a member's finished copy).
    pub(crate) source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Code {
    /// The BITS code in hex (`0x80190194`).
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Follower {
    pub(crate) follower: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct FleetLabels {
    pub(crate) fleet: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric of the node.
pub(crate) struct Metrics {
    registry: Registry,
    /// The API's requests and latency.
    pub(crate) api: ApiMetrics,
    /// Commands per Raft entry the proposer wrote.
    pub(crate) proposal_batch: Histogram,
    /// Durable (fsync'd) commits of the databases, by database.
    pub(crate) fsync: Histograms<Database>,
    /// Snapshots built here and how long each took (reading the state, writing and
    /// syncing the file, storing it): what a growing queue costs in the background.
    snapshot_build: Histogram,
    /// Size of the last snapshot built here, bytes.
    snapshot_bytes: Gauge,
    /// Bytes of this node's downloads, by where they came from.
    pub(crate) transfer_bytes: Family<Source, Counter>,
    /// Errors of this node's jobs (ERROR or TRANSIENT_ERROR), by BITS code.
    job_errors: Family<Code, Counter>,
    /// Transient errors of this node's jobs: each is retried after the retry delay.
    retries: Counter,
    /// Pieces this node is fetching for other members' jobs right now ([`Helping`]).
    helping: Gauge,
    /// The bandwidth limit of background transfers in force, bytes/s (0: unlimited).
    bandwidth_limit: Gauge,
    /// Bytes that drew on the bandwidth limit.
    bandwidth_throttled: Counter,
    /// Chunk requests to members' copies that this node's downloads saw answered busy.
    peer_busy: Counter,
    /// Seconds transfers waited for the bandwidth limit, added up over transfers.
    bandwidth_wait: Counter<f64, std::sync::atomic::AtomicU64>,
    pub(crate) jobs: Family<JobLabels, Gauge>,
    pub(crate) upload_sessions: Gauge,
    pub(crate) raft_term: Gauge,
    pub(crate) raft_leader: Gauge,
    pub(crate) raft_last_log_index: Gauge,
    /// Set by the log store each time it saves the commit index.
    pub(crate) raft_commit_index: Gauge,
    pub(crate) raft_applied_index: Gauge,
    pub(crate) raft_follower_lag: Family<Follower, Gauge>,
    pub(crate) bus_subscribers: Gauge,
    pub(crate) bus_lag: Gauge,
    pub(crate) fleet_bytes_transferred: Family<FleetLabels, Gauge>,
    pub(crate) fleet_bytes_total: Family<FleetLabels, Gauge>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub(crate) fn get() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Self {
        let mut m = Self {
            registry: Registry::default(),
            api: ApiMetrics::default(),
            proposal_batch: Histogram::new(BATCH_BUCKETS),
            fsync: Family::new_with_constructor(|| Histogram::new(FSYNC_BUCKETS)),
            snapshot_build: Histogram::new(SNAPSHOT_BUCKETS),
            snapshot_bytes: Gauge::default(),
            transfer_bytes: Family::default(),
            job_errors: Family::default(),
            retries: Counter::default(),
            helping: Gauge::default(),
            bandwidth_limit: Gauge::default(),
            bandwidth_throttled: Counter::default(),
            peer_busy: Counter::default(),
            bandwidth_wait: Counter::default(),
            jobs: Family::default(),
            upload_sessions: Gauge::default(),
            raft_term: Gauge::default(),
            raft_leader: Gauge::default(),
            raft_last_log_index: Gauge::default(),
            raft_commit_index: Gauge::default(),
            raft_applied_index: Gauge::default(),
            raft_follower_lag: Family::default(),
            bus_subscribers: Gauge::default(),
            bus_lag: Gauge::default(),
            fleet_bytes_transferred: Family::default(),
            fleet_bytes_total: Family::default(),
        };
        // Every source from the start, so that rates begin at zero.
        for source in ["origin", "helper", "peer"] {
            drop(m.transfer_bytes.get_or_create(&Source { source }));
        }
        let r = &mut m.registry;
        m.api.register(r);
        r.register("ferry_jobs", "Jobs in the cluster, by BITS state and priority", m.jobs.clone());
        r.register("ferry_upload_sessions", "Open BITS upload sessions", m.upload_sessions.clone());
        r.register(
            "ferry_job_errors",
            "Errors of this node's jobs (ERROR and TRANSIENT_ERROR), by BITS code",
            m.job_errors.clone(),
        );
        r.register(
            "ferry_job_retries",
            "Transient errors of this node's jobs, each retried after the retry delay",
            m.retries.clone(),
        );
        r.register_with_unit(
            "ferry_transfer",
            "Bytes of this node's downloads, by source: origin, helper (another member \
             fetching for this node) or peer (a member's finished copy)",
            Unit::Bytes,
            m.transfer_bytes.clone(),
        );
        r.register(
            "ferry_helper_pieces_in_flight",
            "Pieces this node is fetching for other members' jobs",
            m.helping.clone(),
        );
        r.register(
            "ferry_bandwidth_limit_bytes_per_second",
            "Bandwidth limit of background transfers in force on this node (0: unlimited)",
            m.bandwidth_limit.clone(),
        );
        r.register_with_unit(
            "ferry_bandwidth_throttled",
            "Bytes that drew on this node's bandwidth limit: background transfers (and \
             foreground ones with limit_foreground) received from origins for this node's \
             jobs and as a helper, and upload fragments sent",
            Unit::Bytes,
            m.bandwidth_throttled.clone(),
        );
        r.register(
            "ferry_peer_busy",
            "Chunk requests of this node's downloads to members' copies answered busy (every \
             serving slot of the holder taken: `[peer_cache] max_serving`)",
            m.peer_busy.clone(),
        );
        r.register_with_unit(
            "ferry_bandwidth_wait",
            "Time transfers waited for this node's bandwidth limit, added up over transfers",
            Unit::Seconds,
            m.bandwidth_wait.clone(),
        );
        r.register(
            "ferry_fleet_transferred",
            "Bytes transferred by the members of each fleet",
            m.fleet_bytes_transferred.clone(),
        );
        r.register(
            "ferry_fleet_size",
            "Bytes each fleet transfers in all (once every size is known)",
            m.fleet_bytes_total.clone(),
        );
        r.register("ferry_raft_term", "Raft term", m.raft_term.clone());
        r.register(
            "ferry_raft_leader",
            "Node id of the leader (0: none known)",
            m.raft_leader.clone(),
        );
        r.register(
            "ferry_raft_last_log_index",
            "Last index in this node's log",
            m.raft_last_log_index.clone(),
        );
        r.register(
            "ferry_raft_commit_index",
            "Last committed index this node knows",
            m.raft_commit_index.clone(),
        );
        r.register(
            "ferry_raft_applied_index",
            "Last index applied here",
            m.raft_applied_index.clone(),
        );
        r.register(
            "ferry_raft_follower_lag_entries",
            "Entries each follower is behind the leader's log (on the leader only)",
            m.raft_follower_lag.clone(),
        );
        r.register(
            "ferry_raft_proposal_batch_commands",
            "Commands in each Raft entry this node proposed",
            m.proposal_batch.clone(),
        );
        r.register_with_unit(
            "ferry_storage_fsync",
            "Durable commits of the Raft log and the state database, and how long they took",
            Unit::Seconds,
            m.fsync.clone(),
        );
        r.register_with_unit(
            "ferry_raft_snapshot_build",
            "Snapshots built by this node, and how long each took",
            Unit::Seconds,
            m.snapshot_build.clone(),
        );
        r.register_with_unit(
            "ferry_raft_snapshot_size",
            "Size of the last snapshot this node built",
            Unit::Bytes,
            m.snapshot_bytes.clone(),
        );
        r.register(
            "ferry_bus_subscribers",
            "Event subscriptions this node serves (HTTP and QUIC)",
            m.bus_subscribers.clone(),
        );
        r.register(
            "ferry_bus_subscriber_lag_entries",
            "Log entries the furthest-behind event subscription still has to replay (0 when \
             every subscription is caught up and served live)",
            m.bus_lag.clone(),
        );
        m
    }

    /// Counts a job of this node entering ERROR or TRANSIENT_ERROR with `code`.
    pub(crate) fn job_error(&self, code: ferry_protocol::BitsCode, transient: bool) {
        self.job_errors.get_or_create(&Code { code: code.to_string() }).inc();
        if transient {
            self.retries.inc();
        }
    }

    /// Adds `bytes` of this node's downloads from `source`.
    pub(crate) fn received(&self, source: &'static str, bytes: u64) {
        self.transfer_bytes.get_or_create(&Source { source }).inc_by(bytes);
    }

    /// Counts a chunk request to a member's copy answered busy.
    pub(crate) fn peer_busy(&self) {
        self.peer_busy.inc();
    }

    /// Sets the bandwidth limit in force, bytes per second (0: unlimited).
    pub(crate) fn bandwidth_limit(&self, rate: u64) {
        self.bandwidth_limit.set(i64::try_from(rate).unwrap_or(i64::MAX));
    }

    /// Counts `bytes` that drew on the bandwidth limit and then waited `waited`.
    pub(crate) fn bandwidth_drawn(&self, bytes: u64, waited: std::time::Duration) {
        self.bandwidth_throttled.inc_by(bytes);
        if !waited.is_zero() {
            self.bandwidth_wait.inc_by(waited.as_secs_f64());
        }
    }

    /// Times a durable commit of `db`.
    pub(crate) fn fsync(&self, db: &'static str, took: std::time::Duration) {
        self.fsync.get_or_create(&Database { db }).observe(took.as_secs_f64());
    }

    /// Records a snapshot built in `took`, of `bytes`.
    pub(crate) fn snapshot_built(&self, took: std::time::Duration, bytes: u64) {
        self.snapshot_build.observe(took.as_secs_f64());
        self.snapshot_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
}

/// One piece fetched for another member's job, counted in
/// `ferry_helper_pieces_in_flight` while it lives.
pub(crate) struct Helping(());

impl Helping {
    /// Counts a piece until the value is dropped.
    pub(crate) fn start() -> Self {
        get().helping.inc();
        Self(())
    }
}

impl Drop for Helping {
    fn drop(&mut self) {
        get().helping.dec();
    }
}

/// The registry's text, in the Prometheus text format (0.0.4).
pub(crate) fn encode() -> String {
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut text, &get().registry)
    {
        tracing::warn!(error = %e, "cannot encode the metrics");
    }
    text
}
