//! [`Error`]: what can go wrong inside a node, typed so that callers decide by variant
//! (retry, report to the job, answer 503) and never by the text of a message.
//!
//! Library code below `main.rs` returns `Result<T, Error>`; the API sees a
//! [`ClusterError`] (through `From`), a job sees a BITS code (the transfer engine maps
//! each variant, see `transfer::failure`).

use std::time::Duration;

use ferry_coordinator::ClusterError;
use ferry_protocol::NodeId;
use ferry_protocol::codec::CodecError;
use ferry_protocol::peer::RemoteError;

/// A node's error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The egress policy refused a destination (an address class, a port, a host).
    #[error("refused by the egress policy: {0}")]
    EgressRefused(String),
    /// An operation did not finish in time.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// What timed out, e.g. "the forwarded write".
        what: &'static str,
        /// How long it was given.
        after: Duration,
    },
    /// Another member could not be asked or did not answer usefully.
    #[error("node {node}: {cause}")]
    Peer {
        /// The member asked.
        node: NodeId,
        /// Why it failed.
        cause: Box<Self>,
    },
    /// A connection could not be made or broke (peer link, origin, proxy).
    #[error("{what}: {cause}")]
    Transport {
        /// What was being done, e.g. "connecting to 127.0.0.2:7000".
        what: String,
        /// The transport's error, kept for its source chain.
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Something the node needs is not there yet or any more (a component still
    /// starting, a job moved on, a stopped actor).
    #[error("{0}")]
    Unavailable(String),
    /// The answer of a member was refused there (its own typed refusal).
    #[error(transparent)]
    Refused(#[from] ClusterError),
    /// A member could not serve a call at all: a kind it does not know, a request it
    /// could not decode, an answer it could not encode (its own refusals are
    /// [`Error::Refused`]).
    #[error(transparent)]
    Remote(RemoteError),
    /// Bytes from a peer or from disk could not be encoded or decoded.
    #[error("codec: {0}")]
    Codec(#[from] CodecError),
    /// Local storage (files, redb) failed.
    #[error("{what}: {cause}")]
    Storage {
        /// What was being done, e.g. "writing the snapshot".
        what: String,
        /// The I/O error.
        cause: std::io::Error,
    },
    /// The configuration or an identity file is not usable.
    #[error("{0}")]
    Config(String),
    /// A database file failed its integrity check: the node must not serve from it.
    #[error(
        "{} cannot be trusted: {cause}. Restore it from a backup, or remove this node from \
         the cluster and let it join again with an empty data directory",
        file.display()
    )]
    Untrusted {
        /// The file.
        file: std::path::PathBuf,
        /// What the check found.
        cause: String,
    },
}

impl Error {
    /// A storage error with what was being done.
    pub fn storage(what: impl Into<String>, cause: std::io::Error) -> Self {
        Self::Storage { what: what.into(), cause }
    }

    /// A transport error with what was being done.
    pub fn transport(
        what: impl Into<String>,
        cause: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Transport { what: what.into(), cause: cause.into() }
    }

    /// The same error, as met while asking member `node`.
    #[must_use]
    pub fn from_peer(self, node: NodeId) -> Self {
        match self {
            already @ Self::Peer { .. } => already,
            other => Self::Peer { node, cause: Box::new(other) },
        }
    }

    /// True if trying again later may succeed (no refusal, no bad bytes, no bad config).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Timeout { .. } | Self::Transport { .. } | Self::Unavailable(_) => true,
            Self::Storage { .. } => true,
            Self::Peer { cause, .. } => cause.is_transient(),
            Self::Refused(e) => matches!(
                e,
                ClusterError::NoLeader
                    | ClusterError::NotLeader { .. }
                    | ClusterError::Unavailable(_)
            ),
            // A member still starting has not registered every handler yet.
            Self::Remote(e) => matches!(e, RemoteError::UnknownKind(_)),
            Self::EgressRefused(_) | Self::Codec(_) | Self::Config(_) | Self::Untrusted { .. } => {
                false
            }
        }
    }
}

impl From<Error> for ClusterError {
    fn from(e: Error) -> Self {
        match e {
            Error::Refused(refused) => refused,
            Error::Peer { node, cause } => match *cause {
                Error::Refused(refused) => refused,
                other => Self::Unavailable(format!("node {node}: {other}")),
            },
            other => Self::Unavailable(other.to_string()),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(cause: std::io::Error) -> Self {
        Self::storage("file I/O", cause)
    }
}

impl From<reqwest::Error> for Error {
    fn from(cause: reqwest::Error) -> Self {
        Self::transport("HTTP", cause)
    }
}

impl From<std::num::TryFromIntError> for Error {
    fn from(cause: std::num::TryFromIntError) -> Self {
        Self::Config(format!("a number out of range: {cause}"))
    }
}

/// A node's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A lower error as the node's, with what was being done: an I/O error is a
/// [`Error::Storage`], anything else (a bad PEM, a key rcgen refuses, a TLS setting) a
/// [`Error::Config`].
pub trait Cause {
    /// This error, met while doing `what`.
    fn doing(self, what: String) -> Error;
}

impl Cause for std::io::Error {
    fn doing(self, what: String) -> Error {
        Error::storage(what, self)
    }
}

impl Cause for Error {
    fn doing(self, what: String) -> Error {
        match self {
            Self::Storage { what: inner, cause } => {
                Self::storage(format!("{what}: {inner}"), cause)
            }
            other => Self::Config(format!("{what}: {other}")),
        }
    }
}

impl Cause for CodecError {
    fn doing(self, what: String) -> Error {
        Error::Config(format!("{what}: {self}"))
    }
}

impl Cause for reqwest::Error {
    fn doing(self, what: String) -> Error {
        Error::transport(what, self)
    }
}

/// Lower errors that become one variant of [`Error`] (with `?` or with a context).
macro_rules! causes {
    ($variant:ident: $($t:ty),* $(,)?) => {$(
        impl Cause for $t {
            fn doing(self, what: String) -> Error {
                Error::$variant(format!("{what}: {self}"))
            }
        }

        impl From<$t> for Error {
            fn from(cause: $t) -> Self {
                Self::$variant(cause.to_string())
            }
        }
    )*};
}

// Bad identity files, keys, certificates, settings.
causes!(
    Config: rcgen::Error,
    pem::PemError,
    rustls::Error,
    rustls::pki_types::pem::Error,
    rustls::server::VerifierBuilderError,
    quinn::crypto::rustls::NoInitialCipherSuite,
    quinn::VarIntBoundsExceeded,
    toml::de::Error,
    std::num::ParseIntError,
    std::net::AddrParseError,
    ferry_coordinator::secrets::SealError,
    ferry_coordinator::auth::AuthConfigError,
    openraft::ConfigError,
);

// Raft, tasks and peer connections that stopped or could not start.
causes!(
    Unavailable: tokio::task::JoinError,
    openraft::StorageError<NodeId>,
    openraft::error::Fatal<NodeId>,
    openraft::error::RaftError<NodeId, openraft::error::InitializeError<NodeId, ferry_protocol::peer::NodeAddr>>,
    quinn::ConnectError,
    quinn::ConnectionError,
    quinn::WriteError,
    quinn::ClosedStream,
    quinn::ReadToEndError,
);

/// `.context(...)` and `.with_context(...)` on results and options of lower errors: the
/// node's [`Error`] with what was being done.
pub trait Context<T> {
    /// On failure, the error met while doing `what`.
    fn context(self, what: impl Into<String>) -> Result<T>;
    /// On failure, the error met while doing what `what` says (built only then).
    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T>;
}

impl<T, E: Cause> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl Into<String>) -> Result<T> {
        self.map_err(|e| e.doing(what.into()))
    }

    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| e.doing(what().into()))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: impl Into<String>) -> Result<T> {
        self.ok_or_else(|| Error::Config(what.into()))
    }

    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.ok_or_else(|| Error::Config(what().into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_refusal_reaches_the_api_as_itself() {
        let e = Error::from(ClusterError::NoLeader).from_peer(2);
        assert!(matches!(ClusterError::from(e), ClusterError::NoLeader));
        let e = Error::Timeout { what: "the forwarded write", after: Duration::from_secs(1) };
        let e = e.from_peer(3);
        assert!(e.is_transient());
        let ClusterError::Unavailable(text) = ClusterError::from(e) else { panic!("unavailable") };
        assert!(text.starts_with("node 3: the forwarded write timed out"), "{text}");
    }
}
