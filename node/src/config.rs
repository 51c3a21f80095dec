//! `ferryd` configuration: one TOML document (every field optional, documented and
//! defaulted), overridden by command-line flags, validated at start into [`Settings`].
//!
//! `deploy/ferryd.toml` shows every field with its default; a test keeps it parseable
//! and equal to the defaults here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ferry_coordinator::TokenEntry;
use ferry_protocol::limits::QueuePolicy;
use serde::{Deserialize, Serialize};

use crate::raft::RaftSettings;

/// The whole configuration file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory for the Raft log (`raft-log.redb`), the state (`state.redb`), the node
    /// id and generated credentials. Created if missing. Default `./ferry-data`.
    pub data_dir: PathBuf,
    /// The HTTP API.
    pub api: ApiConfig,
    /// The QUIC endpoint for peers and the event bus.
    pub peer: PeerConfig,
    /// Raft timing and log compaction.
    pub raft: RaftConfig,
    /// Grouping of concurrent writes into one Raft entry.
    pub proposals: ProposalConfig,
    /// BITS group-policy limits, replicated to every node (the leader proposes the
    /// configured values when they differ from the cluster's).
    pub policy: QueuePolicy,
    /// The transfer engine and the scheduler.
    pub transfer: TransferConfig,
    /// Joining a cluster.
    pub cluster: ClusterConfig,
    /// The job event history behind the notification bus.
    pub events: EventsConfig,
    /// The notify command line (`SetNotifyCmdLine`).
    pub notify: NotifyConfig,
    /// The BITS upload server (`BITS_POST /bits/<path>`).
    pub upload: UploadConfig,
    /// What this node offers to other members' downloads (the peer cache).
    pub peer_cache: PeerCacheConfig,
    /// Logging.
    pub log: LogConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./ferry-data"),
            api: ApiConfig::default(),
            peer: PeerConfig::default(),
            raft: RaftConfig::default(),
            proposals: ProposalConfig::default(),
            policy: QueuePolicy::default(),
            transfer: TransferConfig::default(),
            cluster: ClusterConfig::default(),
            events: EventsConfig::default(),
            notify: NotifyConfig::default(),
            upload: UploadConfig::default(),
            peer_cache: PeerCacheConfig::default(),
            log: LogConfig::default(),
        }
    }
}

/// `[api]`: the HTTP API (and later the BITS upload endpoint).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address to listen on. Default `127.0.0.1:7070`. Port 0 picks a free port; the
    /// bound address is written to `<data_dir>/api.addr` either way.
    pub listen: SocketAddr,
    /// Bearer tokens and the principals they authenticate. With none configured,
    /// ferryd creates an admin token in `<data_dir>/admin.token` and refuses to listen
    /// on anything but loopback.
    pub tokens: Vec<TokenEntry>,
    /// Largest request body accepted, in bytes. Default 4 MiB.
    pub max_body_bytes: usize,
    /// Requests handled at once; further ones wait for a slot. Bounds the memory held
    /// by requests to about this times `max_body_bytes`. Default 256.
    pub max_concurrent_requests: usize,
    /// Requests one principal (one token's owner; callers without a valid token count
    /// as one) has in hand at once; its further requests wait. Less than
    /// `max_concurrent_requests`, so a single token never takes every slot: the rest
    /// stay for other principals, while one busy service still gets most of the
    /// server. `/healthz` and `/v1/openapi.json` need no slot. Default: seven eighths
    /// of `max_concurrent_requests` (224 of 256).
    pub max_requests_per_principal: Option<usize>,
    /// Open connections at most; further clients wait in the listen backlog. Default
    /// 1024.
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers (and to finish the TLS
    /// handshake); an idle keep-alive connection is closed after as long. Default 10.
    pub header_timeout_secs: u64,
    /// Seconds a request body may take, plus one second per `body_min_bytes_per_sec`
    /// bytes received: a body that falls behind gets `408` and the connection closes.
    /// Also the longest wait for a request slot (`503` after it). Default 30.
    pub body_timeout_secs: u64,
    /// The body rate that earns more time beyond `body_timeout_secs`, bytes per second
    /// (slow but steady uploads go on; a trickle does not). Default 4096.
    pub body_min_bytes_per_sec: u64,
    /// TLS on the API: `auto` is TLS when listening beyond loopback and plain HTTP on
    /// loopback; `on` is TLS everywhere; `off` is plain HTTP everywhere, which beyond
    /// loopback sends bearer tokens across the network in clear (only behind a TLS
    /// proxy on the same host). Default `auto`.
    pub tls: ApiTls,
    /// PEM certificate chain of the API (with `tls_key`). Unset: a certificate issued
    /// at each start by the cluster CA (`<data_dir>/ca.pem`, which clients trust with
    /// `--ca`), naming the listen address, `tls_names`, loopback and `localhost`.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert` (PKCS#8, PKCS#1 or SEC1).
    pub tls_key: Option<PathBuf>,
    /// Extra DNS names or IP addresses of the cluster-CA-issued API certificate (the
    /// names clients use in `https://NAME:PORT`). Default none.
    pub tls_names: Vec<String>,
}

/// `[api] tls`: when the API speaks TLS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiTls {
    /// TLS beyond loopback, plain HTTP on loopback.
    #[default]
    Auto,
    /// TLS on every address.
    On,
    /// Plain HTTP on every address (an explicit opt-out beyond loopback).
    Off,
}

impl ApiConfig {
    /// True if the API is served with TLS.
    pub fn uses_tls(&self) -> bool {
        match self.tls {
            ApiTls::On => true,
            ApiTls::Off => false,
            ApiTls::Auto => self.tls_cert.is_some() || !self.listen.ip().is_loopback(),
        }
    }
}

impl ApiConfig {
    /// Requests one principal may have in hand at once (see
    /// `max_requests_per_principal`).
    pub fn requests_per_principal(&self) -> usize {
        self.max_requests_per_principal
            .unwrap_or_else(|| (self.max_concurrent_requests * 7 / 8).max(1))
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            tokens: Vec::new(),
            max_body_bytes: 4 * 1024 * 1024,
            max_concurrent_requests: 256,
            max_requests_per_principal: None,
            max_connections: 1024,
            header_timeout_secs: 10,
            body_timeout_secs: 30,
            body_min_bytes_per_sec: 4096,
            tls: ApiTls::Auto,
            tls_cert: None,
            tls_key: None,
            tls_names: Vec::new(),
        }
    }
}

/// `[peer]`: the QUIC endpoint (peer transport and event bus, later releases).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeerConfig {
    /// UDP address for QUIC. Default `127.0.0.1:7071`. Recorded in the Raft membership.
    pub listen: SocketAddr,
}

impl Default for PeerConfig {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([127, 0, 0, 1], 7071)) }
    }
}

/// `[raft]`: timing and compaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftConfig {
    /// Leader heartbeat interval, milliseconds. Default 250.
    pub heartbeat_ms: u64,
    /// Lower bound of the randomized election timeout, milliseconds. Default 1000.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomized election timeout, milliseconds. Default 2000.
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many entries since the last one. Default 5000.
    pub snapshot_after_entries: u64,
    /// Entries kept in the log behind a snapshot, for followers that lag. Default 1000.
    pub keep_entries_after_snapshot: u64,
}

impl Default for RaftConfig {
    fn default() -> Self {
        let d = RaftSettings::default();
        Self {
            heartbeat_ms: d.heartbeat_ms,
            election_timeout_min_ms: d.election_timeout_ms.0,
            election_timeout_max_ms: d.election_timeout_ms.1,
            snapshot_after_entries: d.snapshot_after_entries,
            keep_entries_after_snapshot: d.keep_entries_after_snapshot,
        }
    }
}

/// `[proposals]`: group commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProposalConfig {
    /// Most commands in one Raft entry. While one entry is being written, new commands
    /// wait and go out together in the next. Default 512.
    pub max_batch: usize,
}

impl Default for ProposalConfig {
    fn default() -> Self {
        Self { max_batch: 512 }
    }
}

/// `[transfer]`: how this node downloads, and how the scheduler (when this node leads)
/// shares transfer time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransferConfig {
    /// Bytes per chunk: the unit of progress, integrity and resume (a file is never
    /// split into more than 2,048 chunks; larger files get larger ones). Default 8 MiB.
    pub chunk_size_bytes: u64,
    /// Range connections per file for jobs that do not set `max_connections`. Several
    /// help only against a per-connection limit. Default 1.
    pub connections: u32,
    /// Jobs transferring at once per home node (BITS priority rules decide which).
    /// 0 pauses transfers: jobs are queued but never started. Default 4.
    pub max_active_jobs: usize,
    /// How long a background job keeps its slot while a job of the same priority
    /// waits (round robin), milliseconds. Default 60000.
    pub time_slice_ms: u64,
    /// Seconds to establish a connection. Default 30.
    pub connect_timeout_secs: u64,
    /// Seconds without a byte from the server before the request fails
    /// (`BG_E_TIMEOUT`, retried). Default 60.
    pub read_timeout_secs: u64,
    /// Allow `file://` sources (read with this daemon's permissions). Default false.
    pub allow_file_urls: bool,
    /// Send Basic credentials over plain http before the server asks (they are
    /// always sent first over https). Default false: wait for the challenge.
    pub preemptive_basic_over_http: bool,
    /// PEM bundle of certificate authorities trusted for https origins besides the
    /// system's. Default none.
    pub trusted_ca_file: Option<PathBuf>,
    /// Refuse origins (and proxies) at loopback, private (RFC 1918, CGNAT) and
    /// unique-local addresses, besides the always-refused link-local (cloud metadata),
    /// multicast and unspecified ones. Applies to DNS answers and redirects too.
    /// Default false.
    pub refuse_private_addresses: bool,
    /// Hosts (each with its subdomains) an upload server may send a session's later
    /// packets to with `BITS-Host-Id`, besides hosts of the same scheme and registrable
    /// domain as the job's URL. Another host named there is ignored: the packets stay
    /// on the job's server. The egress policy applies either way. Default none.
    pub trusted_host_ids: Vec<String>,
    /// Roots of principals without `roots` of their own (`[[api.tokens]]`): their jobs'
    /// local files (destinations, upload sources, reply files, client certificates)
    /// must lie beneath one, reached without following any symlink below it. Empty:
    /// such principals may name no local file. Default none.
    pub destination_roots: Vec<PathBuf>,
    /// Source address of connections to origins (`--source-addr`): nodes on one host
    /// then appear as distinct clients to an origin. Default: the system's choice.
    pub source_addr: Option<std::net::IpAddr>,
    /// Most other members fetching chunks of one file for its home node (helpers), for
    /// jobs that do not set `max_helpers`; 0 keeps downloads on their home node.
    /// Default 4.
    pub max_helpers: u32,
    /// Range requests this node has in flight toward origins at once, for its own
    /// jobs and for the members it helps together. Default 64.
    pub max_origin_connections: usize,
    /// Range requests this node has in flight toward one origin (scheme, host and
    /// port) at once. Default 16.
    pub max_connections_per_origin: usize,
}

impl Default for TransferConfig {
    fn default() -> Self {
        Self {
            chunk_size_bytes: ferry_protocol::transfer::DEFAULT_CHUNK_SIZE,
            connections: 1,
            max_active_jobs: 4,
            time_slice_ms: 60_000,
            connect_timeout_secs: 30,
            read_timeout_secs: 60,
            allow_file_urls: false,
            preemptive_basic_over_http: false,
            trusted_ca_file: None,
            refuse_private_addresses: false,
            trusted_host_ids: Vec::new(),
            destination_roots: Vec::new(),
            source_addr: None,
            max_helpers: 4,
            max_origin_connections: 64,
            max_connections_per_origin: 16,
        }
    }
}

/// `[cluster]`: joining. A node with no identity in its data directory founds a new
/// cluster unless `join` is set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Peer (QUIC) addresses of members to join through, `host:port`; a name may
    /// resolve to several. Used only on the first start. Default none.
    pub join: Vec<String>,
    /// The join token printed by the first node (its `join.token`). Default none.
    pub join_token: Option<String>,
    /// Most voters: the cluster grows one voter at a time to 3, then two at a time (odd
    /// sizes only) up to this; later nodes stay learners (they still run transfers).
    /// Default 5.
    pub voters: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self { join: Vec::new(), join_token: None, voters: 5 }
    }
}

/// `[peer_cache]`: this node's copies offered to other members' downloads. A copy is a
/// download job's file on this node (no second copy is kept); jobs decide with their
/// peer caching flags whether they offer and use copies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeerCacheConfig {
    /// Most bytes of copies offered; the oldest beyond it are withdrawn. Default none.
    pub max_size_bytes: Option<u64>,
    /// Copies older than this (since their file was transferred) are withdrawn,
    /// seconds. Default 7776000 (90 days, BITS's `MaximumContentAge`).
    pub max_age_secs: u64,
    /// Chunks read for peers at once. Default 4.
    pub max_serving: usize,
    /// How often the limits are checked, seconds. Default 60.
    pub check_every_secs: u64,
    /// Test builds only (cargo feature `fault-injection`): serve wrong bytes, so that
    /// tests can show receivers catch them. Default false.
    #[cfg(feature = "fault-injection")]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub fault_serve_wrong_bytes: bool,
}

impl Default for PeerCacheConfig {
    fn default() -> Self {
        Self {
            max_size_bytes: None,
            max_age_secs: 7_776_000,
            max_serving: 4,
            check_every_secs: 60,
            #[cfg(feature = "fault-injection")]
            fault_serve_wrong_bytes: false,
        }
    }
}

/// `[events]`: the event history each node keeps for subscribers to replay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Most events kept; a subscriber asking for older ones is told of the gap.
    /// Default 100000.
    pub history_max_events: u64,
    /// Events older than this are dropped, seconds. Default 604800 (7 days).
    pub history_max_age_secs: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        let d = crate::events::Retention::default();
        Self { history_max_events: d.max_events, history_max_age_secs: d.max_age.as_secs() }
    }
}

/// `[notify]`: running a job's notify command line on its home node.
///
/// The command line is a way to run code on the node, so users may name only the
/// programs listed here, and no program runs as root: it runs as the job owner's OS
/// identity (`uid`/`gid` of its `[[api.tokens]]` entry), else as `run_as`, else (when
/// ferryd is not root) as ferryd's own user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// A program still running after this is killed (and the run counts as failed),
    /// seconds. Default 300.
    pub timeout_secs: u64,
    /// Wait before starting a program, milliseconds. Tests use it to crash a node
    /// between the commit of TRANSFERRED and the run. Default 0.
    pub start_delay_ms: u64,
    /// Absolute paths of the programs users may name in a notify command line (as
    /// spelled here: no other spelling of the path matches). Administrators may name
    /// any program. List no shell, interpreter or program that runs others (`env`,
    /// `xargs`, `find`): its arguments come from the user. Default none: users may set
    /// no notify command line.
    pub allowed_programs: Vec<PathBuf>,
    /// The unprivileged OS identity programs run as when the job's owner has no `uid`
    /// of its own. Unset, and ferryd runs as root: programs of owners without a `uid`
    /// do not run (the run counts as failed). Default unset.
    pub run_as: Option<RunAs>,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self { timeout_secs: 300, start_delay_ms: 0, allowed_programs: Vec::new(), run_as: None }
    }
}

/// `[notify] run_as = { uid = N, gid = N }`: an OS identity, never root's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunAs {
    /// User id; not 0.
    pub uid: u32,
    /// Group id (the only group: supplementary groups are dropped); not 0.
    pub gid: u32,
}

impl NotifyConfig {
    /// Checks the values: a timeout, absolute allowed programs without `..`, an
    /// identity that is not root's.
    pub fn check(&self) -> Result<(), String> {
        if self.timeout_secs == 0 {
            return Err("notify.timeout_secs must be at least 1".into());
        }
        for program in &self.allowed_programs {
            let parent = program.components().any(|c| c == std::path::Component::ParentDir);
            if !program.is_absolute() || parent {
                return Err(format!(
                    "notify.allowed_programs: {} must be an absolute path without '..'",
                    program.display()
                ));
            }
        }
        if let Some(RunAs { uid, gid }) = self.run_as
            && (uid == 0 || gid == 0)
        {
            return Err(format!(
                "notify.run_as must be an unprivileged identity, not uid {uid} gid {gid} (0 is root's)"
            ));
        }
        Ok(())
    }

    /// The programs users may name, for the API's check.
    pub fn policy(&self) -> ferry_coordinator::notify_policy::NotifyPolicy {
        ferry_coordinator::notify_policy::NotifyPolicy::new(self.allowed_programs.clone())
    }
}

/// `[upload]`: the BITS upload server on the API listener (`BITS_POST /bits/<path>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadConfig {
    /// Where completed uploads go (`<root>/<path>`). Default `<data-dir>/uploads`.
    pub root: Option<PathBuf>,
    /// Largest file accepted, bytes (`BG_E_TOO_LARGE` beyond). Default 4 GiB.
    pub max_size_bytes: u64,
    /// Largest fragment (request body), bytes. Default 32 MiB.
    pub max_fragment_bytes: usize,
    /// Whether an upload may replace an existing file (else Create-Session gets 409).
    /// Default false.
    pub allow_overwrite: bool,
    /// What receives a completed upload (IIS `BITSServerNotificationType`): `none` (the
    /// file stays at `<root>/<path>`), `by_reference` or `by_value` (POSTed to
    /// `backend_url`, whose answer becomes the reply). Default `none`.
    pub backend: BackendMode,
    /// The back end's URL (`BITSServerNotificationURL`, plain http); the upload URL's
    /// query string is appended.
    pub backend_url: Option<String>,
    /// Seconds the back end has to answer (then the client retries). Default 300.
    pub backend_timeout_secs: u64,
    /// `BITS-Host-Id` sent on Create-Session: the host (and port) every later packet of
    /// the session goes to. Default none.
    pub host_id: Option<String>,
    /// `BITS-Host-Id-Fallback-Timeout`, seconds. Default 86,400 (IIS's).
    pub host_id_fallback_timeout_secs: u64,
}

/// How a completed upload is handed to the back end (bits-spec §5.6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendMode {
    /// No notification: the file is placed at its upload path.
    #[default]
    None,
    /// POST naming the uploaded file and the file the reply goes to.
    ByReference,
    /// POST carrying the uploaded file; the response body is the reply.
    ByValue,
}

impl Default for UploadConfig {
    fn default() -> Self {
        Self {
            root: None,
            max_size_bytes: 4 * 1024 * 1024 * 1024,
            max_fragment_bytes: 32 * 1024 * 1024,
            allow_overwrite: false,
            backend: BackendMode::None,
            backend_url: None,
            backend_timeout_secs: 300,
            host_id: None,
            host_id_fallback_timeout_secs: 86_400,
        }
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`. Default `text`.
    pub format: LogFormat,
    /// A tracing filter (`RUST_LOG` syntax); `RUST_LOG` overrides it. Default
    /// `info,openraft=warn`.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Text, filter: "info,openraft=warn".into() }
    }
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this structure.
    #[error("config file {path} is not valid: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A value is out of range or inconsistent with another.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.into(), source })?;
        toml::from_str(&text)
            .map_err(|source| ConfigError::Parse { path: path.into(), source: Box::new(source) })
    }

    /// Checks the values and turns them into [`Settings`].
    pub fn validate(self) -> Result<Settings, ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.api.tokens.is_empty() && !self.api.listen.ip().is_loopback() {
            return invalid(format!(
                "no API tokens are configured, so ferryd only listens on loopback, not {}; \
                 add [[api.tokens]] entries to listen there",
                self.api.listen
            ));
        }
        let auth = ferry_coordinator::Auth::new(&self.api.tokens)
            .map_err(|e| ConfigError::Invalid(format!("api.tokens: {e}")))?;
        if self.api.max_body_bytes < 1024 {
            return invalid("api.max_body_bytes must be at least 1024".into());
        }
        if self.api.max_concurrent_requests == 0 {
            return invalid("api.max_concurrent_requests must be at least 1".into());
        }
        let a = &self.api;
        if a.max_requests_per_principal == Some(0) || a.max_connections == 0 {
            return invalid(
                "api.max_requests_per_principal and api.max_connections must be at least 1".into(),
            );
        }
        if a.requests_per_principal() >= a.max_concurrent_requests && a.max_concurrent_requests > 1
        {
            return invalid(
                "api.max_requests_per_principal must be below api.max_concurrent_requests, \
                 so that one token cannot take every request slot"
                    .into(),
            );
        }
        if a.header_timeout_secs == 0 || a.body_timeout_secs == 0 || a.body_min_bytes_per_sec == 0 {
            return invalid(
                "api.header_timeout_secs, body_timeout_secs and body_min_bytes_per_sec must be \
                 at least 1"
                    .into(),
            );
        }
        if a.tls_cert.is_some() != a.tls_key.is_some() {
            return invalid("api.tls_cert and api.tls_key are given together or not at all".into());
        }
        if a.tls == ApiTls::Off && a.tls_cert.is_some() {
            return invalid("api.tls = \"off\" contradicts api.tls_cert: drop one of them".into());
        }
        let r = &self.raft;
        if r.heartbeat_ms == 0 || r.election_timeout_min_ms <= r.heartbeat_ms {
            return invalid("raft: the election timeout must exceed a non-zero heartbeat".into());
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            return invalid(
                "raft.election_timeout_max_ms must exceed election_timeout_min_ms".into(),
            );
        }
        if self.proposals.max_batch == 0 {
            return invalid("proposals.max_batch must be at least 1".into());
        }
        let p = &self.policy;
        if p.max_jobs_per_user == 0
            || p.max_jobs == 0
            || p.max_files_per_job == 0
            || p.max_ranges_per_file == 0
        {
            return invalid("policy limits must be at least 1".into());
        }
        let t = &self.transfer;
        if t.chunk_size_bytes < ferry_protocol::transfer::MIN_CHUNK_SIZE {
            return invalid(format!(
                "transfer.chunk_size_bytes must be at least {}",
                ferry_protocol::transfer::MIN_CHUNK_SIZE
            ));
        }
        if !(1..=ferry_protocol::limits::MAX_CONNECTIONS_PER_FILE).contains(&t.connections) {
            return invalid("transfer.connections must be 1 to 16".into());
        }
        if t.time_slice_ms == 0 {
            return invalid("transfer.time_slice_ms must be at least 1".into());
        }
        if t.connect_timeout_secs == 0 || t.read_timeout_secs == 0 {
            return invalid("transfer timeouts must be at least 1 second".into());
        }
        if self.events.history_max_events == 0 || self.events.history_max_age_secs == 0 {
            return invalid("events: the history must keep at least 1 event for 1 second".into());
        }
        self.notify.check().map_err(ConfigError::Invalid)?;
        let u = &self.upload;
        match (&u.backend, u.backend_url.as_deref()) {
            (BackendMode::None, _) => {}
            (_, Some(url)) if url.starts_with("http://") && url::Url::parse(url).is_ok() => {}
            (mode, url) => {
                return invalid(format!(
                    "upload.backend = {mode:?} needs upload.backend_url, a plain http URL (got {url:?})"
                ));
            }
        }
        if u.backend_timeout_secs == 0 {
            return invalid("upload.backend_timeout_secs must be at least 1".into());
        }
        if u.host_id
            .as_deref()
            .is_some_and(|h| h.is_empty() || h.len() > 300 || h.contains(['/', ' ']))
        {
            return invalid("upload.host_id is a host name or address (with an optional port), at most 300 characters".into());
        }
        let raft = RaftSettings {
            heartbeat_ms: r.heartbeat_ms,
            election_timeout_ms: (r.election_timeout_min_ms, r.election_timeout_max_ms),
            snapshot_after_entries: r.snapshot_after_entries.max(1),
            keep_entries_after_snapshot: r.keep_entries_after_snapshot,
        };
        Ok(Settings { auth, raft, config: self })
    }
}

/// A checked configuration.
#[derive(Clone)]
pub struct Settings {
    /// The configuration as given.
    pub config: Config,
    /// The token table (empty: a generated admin token will be added at start).
    pub auth: ferry_coordinator::Auth,
    /// Raft settings.
    pub raft: RaftSettings,
}

impl Settings {
    /// How much event history the node keeps.
    pub fn retention(&self) -> crate::events::Retention {
        crate::events::Retention {
            max_events: self.config.events.history_max_events,
            max_age: std::time::Duration::from_secs(self.config.events.history_max_age_secs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_sample_is_the_default() {
        let sample = include_str!("../../deploy/ferryd.toml");
        let parsed: Config = toml::from_str(sample).expect("deploy/ferryd.toml parses");
        assert_eq!(parsed, Config::default(), "deploy/ferryd.toml must show the defaults");
    }

    #[test]
    fn an_empty_file_is_the_default() {
        let parsed: Config = toml::from_str("").expect("empty parses");
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn unknown_fields_are_errors() {
        assert!(toml::from_str::<Config>("[api]\nlisten_on = \"x\"").is_err());
    }

    #[test]
    fn notify_programs_are_absolute_and_never_run_as_root() {
        let parse = |text: &str| toml::from_str::<Config>(text).map(|c| c.notify.check());
        let ok = "[notify]\nallowed_programs = [\"/usr/bin/logger\"]\nrun_as = { uid = 65534, gid = 65534 }";
        assert_eq!(parse(ok).expect("parses"), Ok(()));
        for bad in [
            "[notify]\nallowed_programs = [\"logger\"]",
            "[notify]\nallowed_programs = [\"/usr/bin/../bin/sh\"]",
            "[notify]\nrun_as = { uid = 0, gid = 65534 }",
            "[notify]\nrun_as = { uid = 65534, gid = 0 }",
            "[notify]\ntimeout_secs = 0",
        ] {
            assert!(parse(bad).expect("parses").is_err(), "{bad}");
        }
        assert!(parse("[notify]\nrun_as = { uid = 65534 }").is_err(), "gid is required");
    }

    #[test]
    fn the_api_speaks_tls_beyond_loopback_unless_told_otherwise() {
        let mut api = ApiConfig::default();
        assert!(!api.uses_tls(), "ferryd with no arguments: plain HTTP on loopback");
        api.listen = "0.0.0.0:7070".parse().expect("addr");
        assert!(api.uses_tls());
        api.listen = "10.1.2.3:7070".parse().expect("addr");
        assert!(api.uses_tls());
        api.tls = ApiTls::Off;
        assert!(!api.uses_tls(), "the explicit opt-out");
        api.listen = "127.0.0.1:7070".parse().expect("addr");
        api.tls = ApiTls::On;
        assert!(api.uses_tls());
        api.tls = ApiTls::Auto;
        api.tls_cert = Some("/etc/ferry/api.pem".into());
        assert!(api.uses_tls(), "a configured certificate is served on loopback too");
    }

    #[test]
    fn tls_settings_must_agree() {
        let mut config = Config::default();
        config.api.tls_cert = Some("/etc/ferry/api.pem".into());
        assert!(matches!(config.clone().validate(), Err(ConfigError::Invalid(_))));
        config.api.tls_key = Some("/etc/ferry/api.key".into());
        assert!(config.clone().validate().is_ok());
        config.api.tls = ApiTls::Off;
        assert!(matches!(config.validate(), Err(ConfigError::Invalid(_))));
    }

    #[test]
    fn one_principal_never_takes_every_request_slot() {
        let mut config = Config::default();
        assert_eq!(config.api.requests_per_principal(), 224);
        config.api.max_concurrent_requests = 16;
        assert_eq!(config.api.requests_per_principal(), 14, "the default follows the total");
        config.api.max_requests_per_principal = Some(16);
        assert!(matches!(config.clone().validate(), Err(ConfigError::Invalid(_))));
        config.api.max_requests_per_principal = Some(15);
        assert!(config.validate().is_ok());
    }

    #[test]
    fn no_tokens_means_loopback_only() {
        let mut config = Config::default();
        config.api.listen = "0.0.0.0:7070".parse().expect("addr");
        assert!(matches!(config.clone().validate(), Err(ConfigError::Invalid(_))));
        config.api.tokens.push(TokenEntry::new(
            "0123456789abcdef0123",
            "ops",
            ferry_protocol::Role::Admin,
        ));
        assert!(config.validate().is_ok());
    }
}
