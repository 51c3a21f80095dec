//! The test origin: a real HTTP/1.1 server on `127.0.0.1` (never any other address,
//! but for a listener a test bound inside a network namespace of its own) that serves
//! deterministic files and misbehaves on request, for testing Ferry's download engine
//! end to end.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use ferry_tests::origin::{Content, Knobs, Origin, OriginConfig};
//! let origin = Origin::start(OriginConfig::default()).await?;
//! origin.add_file("/big.bin", Content::Pattern { seed: 1, len: 300 << 20 });
//! origin.set_knobs(Knobs { drop_after_bytes: Some(1 << 20), ..Knobs::default() });
//! let url = origin.url("/big.bin");
//! // ... download `url`, then compare the file with `file_matches_pattern`.
//! # Ok(()) }
//! ```
//!
//! Without knobs it answers `GET` and `HEAD` with `Content-Length`, `Accept-Ranges:
//! bytes`, a strong `ETag` and a `Last-Modified`; honours single `Range`s (`206`,
//! `416`) and `If-Range`; keeps connections alive. Multi-range requests get `200` with
//! the whole body; conditional requests other than `If-Range` (`If-None-Match`, ...) are
//! ignored. Files are looked up by path, query ignored, without percent-decoding; a
//! request in absolute form is looked up by its URL's path too (RFC 9112 §3.2.2), and
//! counts as proxied only when `Knobs::proxy` is set.
//!
//! Here: start, stop and the test-facing API. Elsewhere: what is served (`content`),
//! faults (`knobs`), request handling (`serve`), bodies (`body`), ranges (`range`),
//! authentication (`auth`), TLS (`tls`).

mod auth;
mod body;
mod content;
mod knobs;
mod range;
mod record;
mod serve;
mod state;
#[cfg(test)]
mod tests;
mod tls;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

pub use content::{Content, FileInfo, file_matches_pattern, pattern_bytes};
pub use knobs::{Auth, Knobs, ProxyMode};
pub use record::{RequestRecord, Stats};

use state::Shared;

/// How to start an origin.
#[derive(Clone, Debug, Default)]
pub struct OriginConfig {
    /// Serve HTTPS with a certificate for `127.0.0.1` and `localhost` signed by a CA
    /// generated at start (see [`Origin::ca_pem`]).
    pub tls: bool,
    /// Faults from the first request on.
    pub knobs: Knobs,
}

/// A running origin server; it stops (listener and every connection) when dropped.
pub struct Origin {
    /// Files, knobs, log: shared with the server tasks.
    shared: Arc<Shared>,
    /// Where it listens.
    addr: SocketAddr,
    /// The CA certificate clients must trust, when serving HTTPS.
    ca_pem: Option<String>,
    /// The accept loop, which owns every connection task.
    accept: JoinHandle<()>,
}

impl Origin {
    /// Binds `127.0.0.1:0` and starts serving.
    pub async fn start(config: OriginConfig) -> anyhow::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("cannot bind the test origin to 127.0.0.1")?;
        Self::serve(listener, config)
    }

    /// Starts serving on `listener`, bound by the caller (on an address of a network
    /// namespace the test made itself, never one outside this machine).
    pub async fn start_on(
        listener: std::net::TcpListener,
        config: OriginConfig,
    ) -> anyhow::Result<Self> {
        listener.set_nonblocking(true).context("cannot make the origin's listener non-blocking")?;
        Self::serve(TcpListener::from_std(listener)?, config)
    }

    fn serve(listener: TcpListener, config: OriginConfig) -> anyhow::Result<Self> {
        let addr = listener.local_addr().context("cannot read the origin's address")?;
        let tls = if config.tls { Some(tls::generate()?) } else { None };
        let shared = Arc::new(Shared::new(config.knobs));
        let acceptor = tls.as_ref().map(|t| t.acceptor.clone());
        let accept = tokio::spawn(accept_loop(listener, acceptor, Arc::clone(&shared)));
        Ok(Self { shared, addr, ca_pem: tls.map(|t| t.ca_pem), accept })
    }

    /// The URL of `path` at this origin: `http://127.0.0.1:PORT/path` (`https` with TLS).
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.ca_pem.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{}", self.addr, normalize(path))
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The CA certificate (PEM) that signed the server certificate, when serving HTTPS.
    pub fn ca_pem(&self) -> Option<String> {
        self.ca_pem.clone()
    }

    /// Replaces the knobs; the `fail_first` and `change_content_after_bytes` counters
    /// start again from zero. Bodies already being sent keep their old shaping.
    pub fn set_knobs(&self, knobs: Knobs) {
        self.shared.lock().set_knobs(knobs);
    }

    /// The current knobs.
    pub fn knobs(&self) -> Knobs {
        self.shared.lock().knobs.clone()
    }

    /// Registers `content` at `path` (a leading `/` is added if missing), replacing any
    /// file there; it starts at version 0 with a new Last-Modified.
    pub fn add_file(&self, path: &str, content: Content) {
        self.shared.lock().add_file(normalize(path), content);
    }

    /// Makes the file at `path` declare `sha256` (`Repr-Digest: sha-256=:…:`), true or
    /// not, until its content changes; `None` stops declaring. Unknown paths are ignored.
    pub fn declare_sha256(&self, path: &str, sha256: Option<[u8; 32]>) {
        if let Some(file) = self.shared.lock().files.get_mut(&normalize(path)) {
            file.declare_sha256(sha256);
        }
    }

    /// The current version of the file at `path`.
    pub fn file(&self, path: &str) -> Option<FileInfo> {
        self.shared.lock().files.get(&normalize(path)).map(|f| f.info())
    }

    /// Changes every file now (new bytes, ETag and Last-Modified), as
    /// `change_content_after_bytes` does when its threshold is reached.
    pub fn change_content_now(&self) {
        self.shared.lock().change_all();
    }

    /// The request log, oldest first (the first 100 000 requests).
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.lock().log.clone()
    }

    /// Totals since start.
    pub fn stats(&self) -> Stats {
        self.shared.lock().stats
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Origin")
            .field("addr", &self.addr)
            .field("tls", &self.ca_pem.is_some())
            .finish()
    }
}

/// `path` with a leading `/`.
fn normalize(path: &str) -> String {
    if path.starts_with('/') { path.to_owned() } else { format!("/{path}") }
}

/// Accepts connections until aborted; aborting it drops the set, which aborts every
/// connection task.
async fn accept_loop(listener: TcpListener, acceptor: Option<TlsAcceptor>, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else {
                    // Out of file descriptors or similar: do not spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let conn = shared.open_connection(Some(peer.ip()));
                let shared = Arc::clone(&shared);
                let acceptor = acceptor.clone();
                connections.spawn(async move {
                    match acceptor {
                        None => serve::serve_connection(stream, shared, conn).await,
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                serve::serve_connection(stream, shared, conn).await;
                            }
                        }
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}
