//! Everything openraft: the type configuration, the redb log store and state machine,
//! the network, and starting a node. Nothing outside this folder names an openraft type
//! except through the aliases here, so a later openraft bump touches one folder.

// openraft's `StorageError` (224 bytes) is the error type its storage traits require;
// helpers here return it so that `?` works without conversions.
#![allow(clippy::result_large_err)]

mod errors;
mod log_store;
#[cfg(feature = "failpoints")]
mod lose_unsynced;
mod network;
mod snapshot_file;
mod state_machine;

use std::sync::Arc;

use ferry_protocol::{Batch, BatchReply};
use serde::Serialize;

pub use errors::{ReadError, WriteError, read_error, role_name, write_error};
pub use log_store::LogStore;
pub use network::Network;
pub(crate) use network::serve_raft;
pub use state_machine::{Machine, StateMachineStore};

/// How far the log may be purged: the last log id of the snapshot the state machine
/// holds on disk, or that storing one failed.
///
/// openraft 0.9 purges a follower's log as soon as it hands a received snapshot to the
/// state machine, which installs it on another task. A crash between the two left a log
/// purged past every stored snapshot, which openraft refuses at the next start, for good
/// (found by the `raft.snapshot.install` crash test). So the log store waits for this
/// floor to cover what it purges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PurgeFloor {
    snapshot: Option<LogId>,
    failed: bool,
}

/// Where a member can be reached (replicated in Raft membership entries; a peer
/// message too, so it lives with them).
pub use ferry_protocol::peer::NodeAddr;

openraft::declare_raft_types!(
    /// Ferry's openraft types: entries carry command batches, replies carry one result per
    /// command, snapshots are files (streamed to and from disk, never held whole).
    pub TypeConfig:
        D = Batch,
        R = BatchReply,
        NodeId = u64,
        Node = NodeAddr,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
);

/// The Raft handle of a Ferry node.
pub type Raft = openraft::Raft<TypeConfig>;
/// Raft metrics as the watch channel publishes them.
pub type RaftMetrics = openraft::RaftMetrics<u64, NodeAddr>;
/// A log id.
pub type LogId = openraft::LogId<u64>;
/// Storage errors as openraft wants them.
pub type StorageError = openraft::StorageError<u64>;
/// Membership as stored with the state.
pub type StoredMembership = openraft::StoredMembership<u64, NodeAddr>;

/// The timing and snapshot settings of a node.
#[derive(Clone, Debug)]
pub struct RaftSettings {
    /// Heartbeat interval, milliseconds.
    pub heartbeat_ms: u64,
    /// Election timeout range, milliseconds.
    pub election_timeout_ms: (u64, u64),
    /// Build a snapshot after this many applied entries since the last one.
    pub snapshot_after_entries: u64,
    /// Entries kept in the log behind a snapshot (for slow followers).
    pub keep_entries_after_snapshot: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        Self {
            heartbeat_ms: 250,
            election_timeout_ms: (750, 1_500),
            snapshot_after_entries: 5_000,
            keep_entries_after_snapshot: 1_000,
        }
    }
}

/// Builds openraft's validated configuration from Ferry's settings.
pub fn raft_config(
    settings: &RaftSettings,
) -> Result<Arc<openraft::Config>, openraft::ConfigError> {
    let config = openraft::Config {
        cluster_name: "ferry".into(),
        heartbeat_interval: settings.heartbeat_ms,
        election_timeout_min: settings.election_timeout_ms.0,
        election_timeout_max: settings.election_timeout_ms.1,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(settings.snapshot_after_entries),
        max_in_snapshot_log_to_keep: settings.keep_entries_after_snapshot,
        install_snapshot_timeout: 10_000,
        // Small enough that a lagging follower stores and acknowledges one batch within
        // the RPC deadline (a heartbeat interval), even on a loaded machine.
        max_payload_entries: 64,
        ..Default::default()
    };
    Ok(Arc::new(config.validate()?))
}

/// Records `addr` as this node's address in the membership when it changed (the node
/// restarted on another port). Call on the leader.
pub async fn refresh_address(
    raft: &Raft,
    node_id: u64,
    addr: NodeAddr,
) -> Result<bool, ferry_coordinator::ClusterError> {
    let known = raft.metrics().borrow().membership_config.membership().get_node(&node_id).cloned();
    if known.as_ref() == Some(&addr) {
        return Ok(false);
    }
    let nodes = std::collections::BTreeMap::from([(node_id, addr)]);
    raft.change_membership(openraft::ChangeMembers::SetNodes(nodes), false)
        .await
        .map(|_| true)
        .map_err(write_error)
}

/// Removes `node` from the membership: a voter through joint consensus, then its address.
/// The last voter cannot leave.
pub async fn remove_member(raft: &Raft, node: u64) -> Result<(), ferry_coordinator::ClusterError> {
    use std::collections::BTreeSet;

    use ferry_coordinator::ClusterError;
    use openraft::ChangeMembers;

    let (known, voters) = {
        let metrics = raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        (membership.get_node(&node).is_some(), membership.voter_ids().collect::<BTreeSet<u64>>())
    };
    if !known {
        return Err(ClusterError::NotMember(node));
    }
    if voters.len() == 1 && voters.contains(&node) {
        return Err(ClusterError::MembershipRefused(format!(
            "node {node} is the last voter; a cluster keeps at least one"
        )));
    }
    if voters.contains(&node) {
        let change = ChangeMembers::RemoveVoters(BTreeSet::from([node]));
        raft.change_membership(change, false).await.map_err(write_error)?;
    }
    raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([node])), false)
        .await
        .map_err(write_error)?;
    Ok(())
}

/// Resolves when Raft has stopped on a fatal error (storage failure, panic), with the
/// error. A node in that state can serve nothing and should exit so that it restarts.
pub async fn stopped_on_error(raft: &Raft) -> String {
    let mut metrics = raft.metrics();
    loop {
        if let Err(fatal) = &metrics.borrow().running_state {
            return fatal.to_string();
        }
        if metrics.changed().await.is_err() {
            return "raft stopped".to_owned();
        }
    }
}

/// A token cancelled once `raft` stops on a fatal error (one task watches): what
/// everything that must not wait on a stopped Raft (waiting writes, the API's
/// keep-alive) looks at.
pub fn stop_token(raft: &Raft) -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let (raft, cancel) = (raft.clone(), token.clone());
    tokio::spawn(async move {
        stopped_on_error(&raft).await;
        cancel.cancel();
    });
    token
}

/// Maps any error into an openraft storage error about `subject`.
fn io_error<E: std::error::Error + 'static>(
    verb: openraft::ErrorVerb,
    subject: openraft::ErrorSubject<u64>,
    e: &E,
) -> StorageError {
    openraft::StorageIOError::new(subject, verb, openraft::AnyError::new(e)).into()
}

/// Checks the database at `path` before this node serves from it: no other process
/// has it open, and it passes redb's integrity check (every page against its checksum).
/// A file that does not exist yet passes. A file that fails (or that redb had to repair,
/// perhaps by rolling back its last commit) cannot be trusted: the node must not start
/// on it. A panic inside redb on a damaged file is caught and reported the same way.
pub fn vet_database(path: &std::path::Path) -> crate::error::Result<()> {
    use crate::error::Error;

    if !path.exists() {
        return Ok(());
    }
    let untrusted = |cause: String| Error::Untrusted { file: path.to_path_buf(), cause };
    // The default hook would print the panic as if the node had crashed.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let checked = std::panic::catch_unwind(|| {
        let mut db = open_database(path, LOG_CACHE_BYTES)?;
        db.check_integrity()
    });
    std::panic::set_hook(hook);
    match checked {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => Err(untrusted(
            "it failed redb's integrity check and had to be repaired, which may have lost its \
             last commit"
                .into(),
        )),
        Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => Err(Error::Config(format!(
            "{} is open in another process: is another ferryd using this data directory?",
            path.display()
        ))),
        Ok(Err(e)) => Err(untrusted(e.to_string())),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("no message");
            Err(untrusted(format!("redb failed while reading it ({what})")))
        }
    }
}

/// redb's page cache for `state.redb`. redb keeps every page it writes or reads in its
/// cache, up to 1 GiB by default, so a node's memory would grow with its event history;
/// the operating system's page cache already holds the file, and the hot pages (the
/// upper levels of the trees, the newest events) fit in this.
pub(crate) const STATE_CACHE_BYTES: usize = 8 * 1024 * 1024;
/// redb's page cache for `raft-log.redb`: the unpurged tail of the log, which a leader
/// reads back to replicate.
pub(crate) const LOG_CACHE_BYTES: usize = 4 * 1024 * 1024;

/// Opens (or creates) a redb database file readable by its owner only (0600), with a
/// page cache of `cache_bytes`.
fn open_database(
    path: &std::path::Path,
    cache_bytes: usize,
) -> Result<redb::Database, redb::DatabaseError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    let backend = redb::backends::FileBackend::new(file)?;
    #[cfg(feature = "failpoints")]
    if fail::eval(crate::failpoint::LOSE_UNSYNCED, |_| ()).is_some() {
        return redb::Database::builder()
            .set_cache_size(cache_bytes)
            .create_with_backend(lose_unsynced::LoseUnsynced::new(backend));
    }
    redb::Database::builder().set_cache_size(cache_bytes).create_with_backend(backend)
}

/// The small named values both databases keep (vote, applied id, snapshot...).
pub(crate) const META: redb::TableDefinition<'_, &str, &[u8]> = redb::TableDefinition::new("meta");
/// The state database's jobs (job id -> encoded job).
const JOBS: redb::TableDefinition<'_, u128, &[u8]> = redb::TableDefinition::new("jobs");
/// The state database's request records (request key -> encoded outcome).
const REQUESTS: redb::TableDefinition<'_, &[u8], &[u8]> = redb::TableDefinition::new("requests");
/// The state database's upload sessions (session id -> encoded session).
const UPLOADS: redb::TableDefinition<'_, &str, &[u8]> = redb::TableDefinition::new("uploads");
/// The state database's principals (name -> encoded record; format 9, absent before).
const PRINCIPALS: redb::TableDefinition<'_, &str, &[u8]> = redb::TableDefinition::new("principals");

/// Encodes `value` and stores it under `key` in `db`'s meta table, in a transaction of
/// its own with `durability`.
async fn put_meta<T: Serialize + ?Sized>(
    db: &Arc<redb::Database>,
    subject: openraft::ErrorSubject<u64>,
    key: &'static str,
    value: &T,
    durability: redb::Durability,
) -> Result<(), StorageError> {
    let err = move |e: &dyn std::fmt::Display| {
        io_error(openraft::ErrorVerb::Write, subject.clone(), &TaskFailed(e.to_string()))
    };
    let bytes = ferry_protocol::codec::encode(value).map_err(|e| err(&e))?;
    let db = db.clone();
    blocking(openraft::ErrorSubject::Store, move || {
        let mut txn = db.begin_write().map_err(|e| err(&e))?;
        txn.set_durability(durability).map_err(|e| err(&e))?;
        txn.open_table(META)
            .map_err(|e| err(&e))?
            .insert(key, bytes.as_slice())
            .map_err(|e| err(&e))?;
        txn.commit().map_err(|e| err(&e))
    })
    .await
}

/// A storage operation failed; the text says which and why.
#[derive(Debug, thiserror::Error)]
#[error("storage operation failed: {0}")]
struct TaskFailed(String);

/// Runs blocking redb work off the async workers.
async fn blocking<T, F>(subject: openraft::ErrorSubject<u64>, f: F) -> Result<T, StorageError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StorageError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) => Err(io_error(openraft::ErrorVerb::Write, subject, &TaskFailed(e.to_string()))),
    }
}
