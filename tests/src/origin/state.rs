//! The origin's shared state: files, knobs, fault counters, the request log and stats,
//! behind one mutex that is only ever held for short, non-blocking sections.
//!
//! Per-connection state (body bytes sent, rate-limit schedule) is in [`ConnState`],
//! owned by the connection's task and its bodies.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::time::Instant;

use super::auth::DigestNonces;
use super::content::{Content, FileEntry};
use super::knobs::Knobs;
use super::record::{RequestRecord, Stats};

/// Requests kept in the log; later ones are counted in [`Stats`] but not logged, so a
/// long benchmark cannot exhaust memory.
const MAX_LOG: usize = 100_000;

/// Locks `mutex`, going on with the data if a panicking test thread poisoned it (the
/// state stays consistent: every section is a few plain assignments).
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// State shared by the accept loop, every connection and the test's [`super::Origin`].
#[derive(Debug)]
pub(super) struct Shared {
    /// Everything mutable.
    pub(super) state: Mutex<State>,
}

/// Everything mutable about the origin.
#[derive(Debug)]
pub(super) struct State {
    /// Current faults.
    pub(super) knobs: Knobs,
    /// Files by path (always starting with `/`).
    pub(super) files: HashMap<String, FileEntry>,
    /// Bumped by each `add_file` and each content change; sets Last-Modified.
    pub(super) generation: u64,
    /// Requests, oldest first (at most [`MAX_LOG`]).
    pub(super) log: Vec<RequestRecord>,
    /// Totals.
    pub(super) stats: Stats,
    /// Requests failed by `Knobs::fail_first` since the knobs were set.
    pub(super) failed: u32,
    /// Body bytes sent since the knobs were set (for `change_content_after_bytes`).
    pub(super) bytes_since_knobs: u64,
    /// Whether `change_content_after_bytes` has fired since the knobs were set.
    pub(super) changed: bool,
    /// Digest nonces issued and their nonce counts.
    pub(super) nonces: DigestNonces,
    /// File bodies being sent, per client address.
    pub(super) in_flight: HashMap<Option<std::net::IpAddr>, u64>,
}

impl Shared {
    /// A fresh origin state with these knobs and no files.
    pub(super) fn new(knobs: Knobs) -> Self {
        Self {
            state: Mutex::new(State {
                knobs,
                files: HashMap::new(),
                generation: 0,
                log: Vec::new(),
                stats: Stats::default(),
                failed: 0,
                bytes_since_knobs: 0,
                changed: false,
                nonces: DigestNonces::new(),
                in_flight: HashMap::new(),
            }),
        }
    }

    /// Locks the state.
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Counts a newly accepted connection and returns its state.
    pub(super) fn open_connection(&self, peer: Option<std::net::IpAddr>) -> ConnState {
        let mut state = self.lock();
        state.stats.connections += 1;
        ConnState { id: state.stats.connections, peer, body_bytes: 0, next_free: None }
    }
}

impl State {
    /// Replaces the knobs and restarts the counters that are defined "since the knobs
    /// were set".
    pub(super) fn set_knobs(&mut self, knobs: Knobs) {
        self.knobs = knobs;
        self.failed = 0;
        self.bytes_since_knobs = 0;
        self.changed = false;
    }

    /// Registers or replaces a file.
    pub(super) fn add_file(&mut self, path: String, content: Content) {
        self.generation += 1;
        self.files.insert(path, FileEntry::new(content, self.generation));
    }

    /// Moves every file to its next version.
    pub(super) fn change_all(&mut self) {
        self.generation += 1;
        let generation = self.generation;
        self.files.values_mut().for_each(|f| f.bump(generation));
    }

    /// A file body to `client` starts: counted in the in-flight maxima.
    pub(super) fn body_started(&mut self, client: Option<std::net::IpAddr>) {
        let of_client = self.in_flight.entry(client).or_default();
        *of_client += 1;
        let of_client = *of_client;
        let total: u64 = self.in_flight.values().sum();
        let stats = &mut self.stats;
        stats.max_bodies_in_flight_per_client =
            stats.max_bodies_in_flight_per_client.max(of_client);
        stats.max_bodies_in_flight = stats.max_bodies_in_flight.max(total);
    }

    /// A file body to `client` ended (sent, cut or abandoned).
    pub(super) fn body_ended(&mut self, client: Option<std::net::IpAddr>) {
        if let Some(n) = self.in_flight.get_mut(&client) {
            *n = n.saturating_sub(1);
        }
    }

    /// Logs a request (if the log has room) and returns its index.
    pub(super) fn log(&mut self, record: RequestRecord) -> Option<usize> {
        self.stats.requests += 1;
        if self.log.len() >= MAX_LOG {
            return None;
        }
        self.log.push(record);
        Some(self.log.len() - 1)
    }

    /// Accounts `n` body bytes of request `record`, and changes the content once the
    /// `change_content_after_bytes` threshold is reached.
    pub(super) fn count_body_bytes(&mut self, record: Option<usize>, n: u64) {
        self.stats.body_bytes += n;
        self.bytes_since_knobs += n;
        if let Some(entry) = record.and_then(|i| self.log.get_mut(i)) {
            entry.body_bytes += n;
        }
        if let Some(limit) = self.knobs.change_content_after_bytes
            && !self.changed
            && self.bytes_since_knobs >= limit
        {
            self.changed = true;
            self.change_all();
        }
    }
}

/// What one connection remembers across the responses it carries.
#[derive(Debug)]
pub(super) struct ConnState {
    /// 1-based connection number, as in [`RequestRecord::connection`].
    pub(super) id: u64,
    /// The client's address.
    pub(super) peer: Option<std::net::IpAddr>,
    /// Body bytes sent on this connection (for `drop_after_bytes`).
    pub(super) body_bytes: u64,
    /// When the rate limit lets the next piece go (`None`: at once).
    pub(super) next_free: Option<Instant>,
}
