//! `[peer]`, `[raft]`, `[proposals]`, `[transfer]`, `[cluster]`, `[peer_cache]`,
//! `[bandwidth]` and `[events]`: the sections of the cluster and its transfers.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::raft::RaftSettings;

/// `[peer]`: the QUIC endpoint (peer transport and event bus, later releases).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeerConfig {
    /// UDP address for QUIC. Default `127.0.0.1:7071`.
    pub listen: SocketAddr,
    /// The peer address other members dial, `host:port` (a name is resolved at each
    /// start, and the address is announced again then, so a container whose address
    /// changed is found again); recorded in the Raft membership. Default: `listen`, or
    /// when that is a wildcard (`0.0.0.0`, `::`), the address this host's name
    /// resolves to, with `listen`'s port.
    pub advertise: Option<String>,
}

impl Default for PeerConfig {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([127, 0, 0, 1], 7071)), advertise: None }
    }
}

/// `[raft]`: timing and compaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftConfig {
    /// Leader heartbeat interval, milliseconds. Default 250.
    #[serde(deserialize_with = "super::duration::millis")]
    pub heartbeat_ms: u64,
    /// Lower bound of the randomized election timeout, milliseconds. Default 1000.
    #[serde(deserialize_with = "super::duration::millis")]
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomized election timeout, milliseconds. Default 2000.
    #[serde(deserialize_with = "super::duration::millis")]
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many entries since the last one. Default 5000.
    pub snapshot_after_entries: u64,
    /// Entries kept in the log behind a snapshot, for followers that lag. Default 1000.
    pub keep_entries_after_snapshot: u64,
    /// What the node does once Raft stopped on a storage failure (a full or failing
    /// disk), after answering every waiting write: `exit` (default: a supervisor
    /// restarts it) or `wait_for_space` (it keeps answering 503 and restarts itself once
    /// the data directory has room again).
    pub on_storage_failure: OnStorageFailure,
}

/// See [`RaftConfig::on_storage_failure`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStorageFailure {
    /// Exit with a failure status.
    #[default]
    Exit,
    /// Refuse writes until the data directory has room, then restart in place (the
    /// same process id, for supervisors that do not restart).
    WaitForSpace,
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
            on_storage_failure: OnStorageFailure::default(),
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
    /// split into more than 4,096 chunks; larger files get larger ones). Default 8 MiB.
    pub chunk_size_bytes: u64,
    /// Range connections per file for jobs that do not set `max_connections`: a count
    /// (1 to 16), or `"auto"` (the default): start with one, and open more while each
    /// step adds throughput (see `transfer::download::ramp`).
    pub connections: Connections,
    /// Background jobs transferring at once per home node, besides every foreground
    /// job (which all run at once, as in BITS); the BITS priority rules decide which.
    /// 0 pauses transfers, foreground ones too: jobs are queued but never started.
    /// Default 1, as BITS.
    pub max_active_jobs: usize,
    /// How long a background job keeps its slot while a job of the same priority
    /// waits (round robin), milliseconds. Default 60000.
    #[serde(deserialize_with = "super::duration::millis")]
    pub time_slice_ms: u64,
    /// Seconds to establish a connection. Default 30.
    #[serde(deserialize_with = "super::duration::secs")]
    pub connect_timeout_secs: u64,
    /// Seconds without a byte from the server before the request fails
    /// (`BG_E_TIMEOUT`, retried). Default 60.
    #[serde(deserialize_with = "super::duration::secs")]
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
            connections: Connections::Auto,
            max_active_jobs: 1,
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

/// `transfer.connections`: how many range connections a file's download opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connections {
    /// Exactly this many (while pieces are left for them).
    Fixed(u32),
    /// One at first, more while they add throughput, up to
    /// [`ferry_protocol::limits::MAX_CONNECTIONS_PER_FILE`].
    Auto,
}

impl Serialize for Connections {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Fixed(n) => serializer.serialize_u32(*n),
            Self::Auto => serializer.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for Connections {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Connections;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number of connections or \"auto\"")
            }

            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Connections, E> {
                u32::try_from(n)
                    .map(Connections::Fixed)
                    .map_err(|_| E::custom(format!("{n} connections is too many")))
            }

            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Connections, E> {
                u64::try_from(n)
                    .map_err(|_| E::custom("a number of connections is not negative"))
                    .and_then(|n| self.visit_u64(n))
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Connections, E> {
                match text {
                    "auto" => Ok(Connections::Auto),
                    other => Err(E::custom(format!(
                        "connections is a number or \"auto\", not {other:?}"
                    ))),
                }
            }
        }
        deserializer.deserialize_any(Visitor)
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
    /// A file holding the join token instead (a mounted secret), read at start.
    pub join_token_file: Option<PathBuf>,
    /// A cluster identity made beforehand with `ferryd init-cluster --out DIR`: its
    /// `ca.pem`, `ca.key` and `join.token`. The node that founds the cluster takes
    /// that CA and token instead of generating them (so clients can trust `ca.pem`
    /// and other nodes can hold the token before the cluster exists); a joining node
    /// reads its join token there when `join_token` is not set. Default none.
    pub identity_dir: Option<PathBuf>,
    /// With `join` set: on its first start this node may found the cluster, after
    /// trying to join through `join` for `bootstrap_wait_secs` without being admitted
    /// (so a founder that lost its data directory joins the running cluster rather
    /// than founding a second one). Set it on exactly one node. Without `join`, a
    /// node founds a cluster on its first start whatever this says. Default false.
    pub bootstrap: bool,
    /// How long a bootstrapping node tries to join before it founds, seconds.
    /// Default 10.
    #[serde(deserialize_with = "super::duration::secs")]
    pub bootstrap_wait_secs: u64,
    /// Most voters: the cluster grows one voter at a time to 3, then two at a time (odd
    /// sizes only) up to this; later nodes stay learners (they still run transfers).
    /// Default 5.
    pub voters: usize,
    /// How long a first start keeps trying to join, seconds: unreachable members and
    /// transient refusals (no leader, a membership change in progress) are retried
    /// with backoff; a wrong token is not. Default 120.
    #[serde(deserialize_with = "super::duration::secs")]
    pub join_patience_secs: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            join: Vec::new(),
            join_token: None,
            join_token_file: None,
            identity_dir: None,
            bootstrap: false,
            bootstrap_wait_secs: 10,
            voters: 5,
            join_patience_secs: 120,
        }
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
    #[serde(deserialize_with = "super::duration::secs")]
    pub max_age_secs: u64,
    /// Serving slots: chunks read for peers at once, each slot holding up to 2 MiB of
    /// one (a fleet's 1 MiB piece takes one slot, an 8 MiB chunk four); a request
    /// beyond them is answered busy at once (the asker takes another holder, or this
    /// one a little later). Default 20: as many as a fleet member's peer workers
    /// fetch at once, so that a fleet's links run full; at most 40 MiB in memory.
    pub max_serving: usize,
    /// How often the limits are checked, seconds. Default 60.
    #[serde(deserialize_with = "super::duration::secs")]
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
            max_serving: 20,
            check_every_secs: 60,
            #[cfg(feature = "fault-injection")]
            fault_serve_wrong_bytes: false,
        }
    }
}

/// `[bandwidth]`: this node's limit on background transfers (BITS's
/// `MaxInternetBandwidth` and `MaxTransferRateOnSchedule`), a rate with an optional
/// weekly work-hours window of another rate. The API's `PUT /v1/node/bandwidth` takes
/// the same fields and replaces the policy until the node restarts: this section is
/// the durable source. Each field is documented on the type; all default to no limit.
pub type BandwidthConfig = ferry_coordinator::bandwidth::BandwidthPolicy;

/// `[events]`: the event history each node keeps for subscribers to replay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Most events kept; a subscriber asking for older ones is told of the gap.
    /// Default 100000.
    pub history_max_events: u64,
    /// Events older than this are dropped, seconds. Default 604800 (7 days).
    #[serde(deserialize_with = "super::duration::secs")]
    pub history_max_age_secs: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        let d = crate::events::Retention::default();
        Self { history_max_events: d.max_events, history_max_age_secs: d.max_age.as_secs() }
    }
}
