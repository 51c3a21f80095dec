//! Why a client call failed: the node's problem document, or what stood between the
//! client and the node (transport, an untrusted certificate, an unreadable answer).

use ferry_protocol::BitsCode;
use ferry_protocol::api::Problem;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with a problem document.
    #[error("{}: {} ({})", .0.title, .0.detail, .0.code)]
    Api(Problem),
    /// The request did not complete (connection, TLS, timeout).
    #[error("cannot reach {url}: {source}")]
    Transport {
        /// Where the request went.
        url: String,
        /// What failed.
        #[source]
        source: reqwest::Error,
    },
    /// The answer was not what the API promises.
    #[error("unexpected answer from the server (HTTP {status}): {body}")]
    Unexpected {
        /// HTTP status.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// The node's TLS certificate is not one the client trusts (a wrong `--ca`, or a
    /// node that is not the one meant): nothing was sent, the token included.
    #[error(
        "the node at {url} presented a TLS certificate that the trusted CA did not issue \
         (or one for another name); check --ca / FERRY_CA (the cluster CA is \
         <data-dir>/ca.pem on any member) and the node URL: {detail}"
    )]
    UntrustedCertificate {
        /// Where the request went.
        url: String,
        /// What the TLS library said.
        detail: String,
    },
    /// The base URL is not usable.
    #[error("invalid node URL {0:?}: {1}")]
    BadUrl(String, String),
    /// The request could not be encoded.
    #[error("cannot encode the request: {0}")]
    Encode(String),
}

impl ClientError {
    /// The BITS code of an API error.
    pub fn code(&self) -> Option<BitsCode> {
        match self {
            Self::Api(problem) => Some(problem.code),
            _ => None,
        }
    }
}

/// What rustls said, if `error` is a refused server certificate.
pub(super) fn certificate_failure(error: &reqwest::Error) -> Option<String> {
    let tls = rustls_error(error, 0)?;
    matches!(tls, rustls::Error::InvalidCertificate(_)).then(|| tls.to_string())
}

/// The rustls error inside `error`: along its sources, and inside the I/O errors that
/// wrap it (an `io::Error`'s `source` skips the error it wraps).
fn rustls_error<'a>(
    error: &'a (dyn std::error::Error + 'static),
    depth: usize,
) -> Option<&'a rustls::Error> {
    if depth > 16 {
        return None;
    }
    if let Some(tls) = error.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    if let Some(inner) = error.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref)
        && let Some(tls) = rustls_error(inner, depth + 1)
    {
        return Some(tls);
    }
    rustls_error(error.source()?, depth + 1)
}
