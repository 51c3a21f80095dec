//! The test back end of the BITS upload server (upload-reply, issue 7): a real HTTP/1.1
//! application on 127.0.0.1 that a Ferry node notifies when an upload completes
//! (bits-spec §5.6), in either mode:
//!
//! - **by reference**: an empty POST naming the uploaded file
//!   (`BITS-Request-DataFile-Name`) and the file the reply goes to
//!   (`BITS-Response-DataFile-Name`);
//! - **by value**: a POST whose body is the uploaded file; the answer's body is the reply.
//!
//! The reply is derived from the content: [`expected_reply`] (SHA-256 and length),
//! computed while streaming, never holding the file. Knobs make it fail the next
//! requests with a status, answer slowly, ask for a copy at the upload path
//! (`BITS-Copy-File-To-Destination`) or name a static reply URL.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The reply for `bytes`: `sha256=<hex> length=<n>\n`.
pub fn expected_reply(bytes: &[u8]) -> String {
    reply_text(Sha256::digest(bytes).into(), bytes.len() as u64)
}

/// The reply for the content of the file at `path`, read in pieces.
pub fn expected_reply_of_file(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let (mut hasher, mut len, mut buffer) = (Sha256::new(), 0u64, vec![0u8; 1 << 20]);
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            return Ok(reply_text(hasher.finalize().into(), len));
        }
        hasher.update(&buffer[..n]);
        len += n as u64;
    }
}

fn reply_text(digest: [u8; 32], len: u64) -> String {
    format!("sha256={} length={len}\n", hex::encode(digest))
}

/// How a notification came.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Names the uploaded file.
    ByReference,
    /// Carries the uploaded file.
    ByValue,
}

/// A notification the back end received.
#[derive(Clone, Debug)]
pub struct Notification {
    /// Its mode.
    pub mode: Mode,
    /// `BITS-Original-Request-URL`.
    pub original_url: Option<String>,
    /// `BITS-Request-DataFile-Name`.
    pub request_file: Option<String>,
    /// `BITS-Response-DataFile-Name`.
    pub response_file: Option<String>,
    /// Bytes of the upload read (0 when the request was failed on purpose).
    pub bytes: u64,
    /// The status answered.
    pub status: u16,
}

#[derive(Default)]
struct Knobs {
    fail: Option<(u16, u32)>,
    delay: Duration,
    copy_to_destination: bool,
    static_response_url: Option<String>,
    seen: Vec<Notification>,
}

type Shared = Arc<Mutex<Knobs>>;

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Knobs> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running back end; stopped when dropped.
pub struct Backend {
    addr: SocketAddr,
    knobs: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    /// Starts it on 127.0.0.1, a free port.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let knobs = Shared::default();
        let shared = knobs.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| handle(shared.clone(), request));
                    let _ =
                        http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Ok(Self { addr, knobs, task })
    }

    /// The notification URL.
    pub fn url(&self) -> String {
        format!("http://{}/notify", self.addr)
    }

    /// The next `count` requests are answered with `status`, unread.
    pub fn fail_next(&self, status: u16, count: u32) {
        lock(&self.knobs).fail = Some((status, count));
    }

    /// Every answer waits this long first.
    pub fn set_delay(&self, delay: Duration) {
        lock(&self.knobs).delay = delay;
    }

    /// Ask the server to also place the upload at its path.
    pub fn set_copy_to_destination(&self, on: bool) {
        lock(&self.knobs).copy_to_destination = on;
    }

    /// Answer with this reply URL instead of a reply.
    pub fn set_static_response_url(&self, url: Option<String>) {
        lock(&self.knobs).static_response_url = url;
    }

    /// Every notification so far.
    pub fn notifications(&self) -> Vec<Notification> {
        lock(&self.knobs).seen.clone()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Answer = Response<Full<Bytes>>;

fn header(request: &Request<Incoming>, name: &str) -> Option<String> {
    request.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

fn answer(status: StatusCode, body: impl Into<Bytes>) -> Answer {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
}

async fn handle(
    shared: Shared,
    request: Request<Incoming>,
) -> Result<Answer, std::convert::Infallible> {
    let request_file = header(&request, "BITS-Request-DataFile-Name");
    let mut note = Notification {
        mode: if request_file.is_some() { Mode::ByReference } else { Mode::ByValue },
        original_url: header(&request, "BITS-Original-Request-URL"),
        request_file,
        response_file: header(&request, "BITS-Response-DataFile-Name"),
        bytes: 0,
        status: 200,
    };
    let (fail, delay, copy, static_url) = {
        let mut knobs = lock(&shared);
        let fail = match knobs.fail {
            Some((status, count)) if count > 0 => {
                knobs.fail = (count > 1).then_some((status, count - 1));
                Some(status)
            }
            _ => None,
        };
        (fail, knobs.delay, knobs.copy_to_destination, knobs.static_response_url.clone())
    };
    tokio::time::sleep(delay).await;
    let response = match fail {
        Some(status) => {
            // Read and drop the body, so the connection stays usable.
            let _ = request.into_body().collect().await;
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            answer(status, "failing on purpose")
        }
        None => match reply(&mut note, request, static_url.is_some()).await {
            Ok(body) => {
                let mut response = answer(StatusCode::OK, body);
                let headers = response.headers_mut();
                if copy {
                    headers.insert("BITS-Copy-File-To-Destination", "1".parse().expect("value"));
                }
                if let Some(url) = static_url.and_then(|u| u.parse().ok()) {
                    headers.insert("BITS-Static-Response-URL", url);
                }
                response
            }
            Err(e) => answer(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
        },
    };
    note.status = response.status().as_u16();
    lock(&shared).seen.push(note);
    Ok(response)
}

/// Reads the upload (from its file or the body), hashing it, and produces the reply:
/// the body to answer (by value) or written to the response file (by reference).
async fn reply(
    note: &mut Notification,
    request: Request<Incoming>,
    no_reply: bool,
) -> anyhow::Result<Bytes> {
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    match note.mode {
        Mode::ByReference => {
            let path = note.request_file.clone().unwrap_or_default();
            let mut file = tokio::fs::File::open(&path).await?;
            let mut buffer = vec![0u8; 1 << 20];
            loop {
                let n = file.read(&mut buffer).await?;
                if n == 0 {
                    break;
                }
                hasher.update(&buffer[..n]);
                len += n as u64;
            }
        }
        Mode::ByValue => {
            let mut body = request.into_body();
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame?.into_data() {
                    hasher.update(&data);
                    len += data.len() as u64;
                }
            }
        }
    }
    note.bytes = len;
    if no_reply {
        return Ok(Bytes::new());
    }
    let text = reply_text(hasher.finalize().into(), len);
    match (note.mode, &note.response_file) {
        (Mode::ByReference, Some(path)) => {
            let mut file = tokio::fs::File::create(path).await?;
            file.write_all(text.as_bytes()).await?;
            file.sync_all().await?;
            Ok(Bytes::new())
        }
        (Mode::ByReference, None) => anyhow::bail!("no BITS-Response-DataFile-Name"),
        (Mode::ByValue, _) => Ok(Bytes::from(text)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> reqwest::Client {
        ferry_coordinator::client::ensure_crypto_provider();
        reqwest::Client::builder().no_proxy().build().expect("client")
    }

    #[tokio::test]
    async fn by_value_answers_the_digest_and_fails_on_purpose() -> anyhow::Result<()> {
        let backend = Backend::start().await?;
        let data: Vec<u8> = (0..1_500_000u32).map(|i| (i % 253) as u8).collect();
        backend.fail_next(503, 1);
        let post = || client().post(backend.url()).body(data.clone()).send();
        assert_eq!(post().await?.status(), 503);
        let ok = post().await?;
        assert_eq!(ok.status(), 200);
        assert!(ok.headers().get("BITS-Copy-File-To-Destination").is_none());
        assert_eq!(ok.text().await?, expected_reply(&data));
        backend.set_copy_to_destination(true);
        let copied = post().await?;
        assert!(copied.headers().get("BITS-Copy-File-To-Destination").is_some());
        let seen = backend.notifications();
        assert_eq!(seen.iter().map(|n| n.status).collect::<Vec<_>>(), [503, 200, 200]);
        assert_eq!(seen[1].bytes, data.len() as u64);
        Ok(())
    }

    #[tokio::test]
    async fn by_reference_writes_the_reply_file() -> anyhow::Result<()> {
        let backend = Backend::start().await?;
        let dir = tempfile::tempdir()?;
        let (upload, reply) = (dir.path().join("up"), dir.path().join("reply"));
        std::fs::write(&upload, b"hello bits")?;
        let answer = client()
            .post(backend.url())
            .header("BITS-Original-Request-URL", "http://x/bits/a")
            .header("BITS-Request-DataFile-Name", upload.to_string_lossy().as_ref())
            .header("BITS-Response-DataFile-Name", reply.to_string_lossy().as_ref())
            .send()
            .await?;
        assert_eq!(answer.status(), 200);
        assert_eq!(std::fs::read_to_string(&reply)?, expected_reply(b"hello bits"));
        let seen = backend.notifications();
        assert_eq!(
            (seen[0].mode, seen[0].original_url.as_deref()),
            (Mode::ByReference, Some("http://x/bits/a"))
        );
        Ok(())
    }
}
