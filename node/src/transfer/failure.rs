//! How a failed transfer is reported: the BITS code, context and severity of HTTP
//! statuses, transport errors and local file errors.

use std::error::Error as _;

use ferry_protocol::job::JobError;
pub(crate) use ferry_protocol::transfer::transport_error as transport;
use ferry_protocol::transfer::{Severity, code_severity, http_status_severity};
use ferry_protocol::{BitsCode, ErrorContext};

use crate::egress::{NotResolved, Refused};

/// Why a run stopped.
#[derive(Debug)]
pub(crate) enum Stop {
    /// The queue no longer wants this run (suspended, pre-empted, cancelled): quietly end.
    Stale,
    /// The transfer failed; the failure is reported.
    Failed(Failure),
    /// The remote file changed (or the temporary file was lost): start the file over.
    RestartFile(String),
    /// The finished file does not match the SHA-256 its origin declared: start it over
    /// from the origin alone, and fail if it still does not.
    DigestMismatch(String),
}

impl From<Failure> for Stop {
    fn from(failure: Failure) -> Self {
        Self::Failed(failure)
    }
}

/// A failure with its BITS error and whether BITS would retry it.
#[derive(Debug)]
pub(crate) struct Failure {
    /// What the job's error will say.
    pub(crate) error: JobError,
    /// Retry or not.
    pub(crate) severity: Severity,
}

impl Failure {
    /// A failure whose severity follows its code.
    pub(crate) fn new(error: JobError) -> Self {
        let severity = code_severity(error.code);
        Self { error, severity }
    }

    /// A failure that is never retried.
    pub(crate) fn fatal(error: JobError) -> Self {
        Self { error, severity: Severity::Fatal }
    }

    /// An HTTP status that is an error: `BG_E_HTTP_ERROR_<status>`, severity by class.
    pub(crate) fn status(status: u16, url: &str, file: u32) -> Self {
        Self {
            error: JobError {
                context: ErrorContext::RemoteFile,
                code: BitsCode::http(status),
                detail: format!("the server answered {status} for {url}"),
                file_index: Some(file),
                protocol: Some("http".into()),
            },
            severity: http_status_severity(status),
        }
    }

    /// A server answer that breaks the protocol (bad Content-Range, wrong length...).
    pub(crate) fn protocol(code: BitsCode, detail: String, file: u32) -> Self {
        Self::new(JobError {
            context: ErrorContext::RemoteFile,
            code,
            detail,
            file_index: Some(file),
            protocol: Some("http".into()),
        })
    }

    /// A request that failed: a transport error of reqwest (connect, timeout,
    /// reset...) or a refusal of the send path.
    pub(crate) fn request(error: &impl RequestError, url: &str, file: u32) -> Self {
        error.failure(url, file)
    }

    /// A connection the egress policy refuses (G10): fatal, nothing was sent.
    pub(crate) fn blocked(detail: String, file: u32) -> Self {
        Self::fatal(transport(BitsCode::BG_E_BLOCKED_BY_POLICY, detail, Some(file)))
    }

    /// A local file error (the temporary file or the destination).
    pub(crate) fn local(error: &std::io::Error, what: &str, file: Option<u32>) -> Self {
        use std::io::ErrorKind::*;
        let code = match error.kind() {
            NotFound => BitsCode::ERROR_PATH_NOT_FOUND,
            PermissionDenied | ReadOnlyFilesystem => BitsCode::E_ACCESSDENIED,
            StorageFull | QuotaExceeded => BitsCode::ERROR_DISK_FULL,
            AlreadyExists => BitsCode::ERROR_FILE_EXISTS,
            _ => BitsCode::ERROR_WRITE_FAULT,
        };
        Self::fatal(JobError {
            context: ErrorContext::LocalFile,
            code,
            detail: format!("{what}: {error}"),
            file_index: file,
            protocol: None,
        })
    }
}

/// An error of a request, as the job error it becomes.
pub(crate) trait RequestError {
    /// The failure of the request to `url` (file index `file`).
    fn failure(&self, url: &str, file: u32) -> Failure;
}

impl RequestError for reqwest::Error {
    fn failure(&self, url: &str, file: u32) -> Failure {
        let error = self;
        let text = chain(error);
        if find::<Refused>(error).is_some() {
            return Failure::blocked(format!("{url}: {text}"), file);
        }
        let code = if error.is_timeout() {
            BitsCode::BG_E_TIMEOUT
        } else if error.is_connect() {
            connect_code(error, url.starts_with("https:"))
        } else if error.is_redirect() {
            // Refused by the redirect policy: the owner must change the job or URL.
            return Failure::fatal(transport(
                BitsCode::BG_E_PROTOCOL_ERROR,
                format!("{url}: {text}"),
                Some(file),
            ));
        } else if error.is_body() || error.is_decode() {
            BitsCode::BG_E_CONNECTION_CLOSED
        } else if error.is_builder() {
            BitsCode::E_INVALIDARG
        } else {
            BitsCode::BG_E_SEND_FAILURE
        };
        Failure::new(transport(code, format!("{url}: {text}"), Some(file)))
    }
}

/// Connect errors, by the types in the error's chain: a name not resolved, a
/// certificate not trusted, another TLS failure, or the connection refused or
/// unreachable. On `https`, a connection that broke after TCP connected is a TLS
/// failure (a server that is no TLS server, or that hung up during the handshake).
fn connect_code(error: &(dyn std::error::Error + 'static), https: bool) -> BitsCode {
    use std::io::ErrorKind::{
        AddrNotAvailable, ConnectionRefused, HostUnreachable, NetworkUnreachable, TimedOut,
    };
    if find::<NotResolved>(error).is_some() {
        return BitsCode::BG_E_NAME_RESOLUTION_FAILURE;
    }
    match find::<rustls::Error>(error) {
        Some(
            rustls::Error::InvalidCertificate(_)
            | rustls::Error::NoCertificatesPresented
            | rustls::Error::InvalidCertRevocationList(_),
        ) => return BitsCode::BG_E_TRUST_FAILURE,
        Some(_) => return BitsCode::BG_E_SECURE_CHANNEL_FAILURE,
        None => {}
    }
    let tcp = find::<std::io::Error>(error).is_some_and(|io| {
        matches!(
            io.kind(),
            ConnectionRefused | HostUnreachable | NetworkUnreachable | AddrNotAvailable | TimedOut
        )
    });
    if https && !tcp {
        BitsCode::BG_E_SECURE_CHANNEL_FAILURE
    } else {
        BitsCode::BG_E_CONNECT_FAILURE
    }
}

/// The first error of type `T` in `error`'s source chain, looking inside `io::Error`s
/// too (their `source()` skips the error they wrap).
pub(crate) fn find<'a, T: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut next = Some(error);
    while let Some(current) = next {
        if let Some(found) = current.downcast_ref::<T>() {
            return Some(found);
        }
        if let Some(inner) = current.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref())
            && let Some(found) = find::<T>(inner)
        {
            return Some(found);
        }
        next = current.source();
    }
    None
}

/// The error and its sources in one line (reqwest hides the cause in the chain).
pub(crate) fn chain(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    /// The connect failure of a real request to `url`.
    async fn connect_failure(url: &str) -> BitsCode {
        ferry_coordinator::client::ensure_crypto_provider();
        let client = reqwest::Client::builder().no_proxy().build().expect("a client builds");
        let error = client.get(url).send().await.expect_err("the request fails");
        assert!(error.is_connect(), "{}", chain(&error));
        connect_code(&error, url.starts_with("https:"))
    }

    #[tokio::test]
    async fn connect_failures_are_told_apart_by_type_not_text() -> std::io::Result<()> {
        // Nothing listens: refused.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let url = format!("http://{closed}/");
        assert_eq!(connect_failure(&url).await, BitsCode::BG_E_CONNECT_FAILURE);

        // A server that is no TLS server: it answers the handshake with plain bytes.
        let plain = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = plain.local_addr()?;
        std::thread::spawn(move || {
            if let Ok((mut stream, _)) = plain.accept() {
                let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
            }
        });
        let url = format!("https://{addr}/");
        assert_eq!(connect_failure(&url).await, BitsCode::BG_E_SECURE_CHANNEL_FAILURE);

        // A name that did not resolve, and a policy refusal, found inside io::Errors.
        let unresolved = NotResolved {
            host: "nowhere.invalid".into(),
            cause: std::io::Error::other("no such name"),
        };
        let wrapped = std::io::Error::other(unresolved);
        assert_eq!(connect_code(&wrapped, true), BitsCode::BG_E_NAME_RESOLUTION_FAILURE);
        let refused = Refused { target: "10.0.0.1".into(), why: "a private address".into() };
        let wrapped = std::io::Error::other(refused);
        assert!(find::<Refused>(&wrapped).is_some());
        assert!(find::<NotResolved>(&wrapped).is_none());
        Ok(())
    }
}
