//! The test back end of the BITS upload server (upload-reply, issue 7): a real HTTP/1.1
//! application on `127.0.0.1` (never any other address) that a Ferry node notifies
//! with a `POST` when an upload completes (bits-spec §5.6), in either mode:
//!
//! - **by reference**: an empty `POST` (`Content-Length: 0`) with
//!   `BITS-Original-Request-URL`, `BITS-Request-DataFile-Name` (the uploaded file on
//!   disk) and `BITS-Response-DataFile-Name` (where the reply must be written); the
//!   answer is `200` with an empty body;
//! - **by value**: a `POST` (no `BITS-Request-DataFile-Name`) whose body is the uploaded
//!   file; the answer is `200` with the reply as its body.
//!
//! The reply for content `bytes` is `sha256=<hex of SHA-256> length=<len>\n`
//! ([`expected_reply`]), computed while streaming the upload in pieces, never holding
//! it whole (uploads may be hundreds of MiB).
//!
//! Knobs, settable while it runs: [`Backend::fail_next`] answers the next requests with
//! a status without reading the upload, [`Backend::set_delay`] answers slowly,
//! [`Backend::set_copy_to_destination`] adds `BITS-Copy-File-To-Destination: 1`, and
//! [`Backend::set_static_response_url`] adds `BITS-Static-Response-URL` instead of a
//! reply. Every request is recorded ([`Backend::notifications`]). Errors of the app
//! itself (an unreadable upload, an unwritable reply file) answer `500` saying why.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

const ORIGINAL_URL: &str = "BITS-Original-Request-URL";
const REQUEST_FILE: &str = "BITS-Request-DataFile-Name";
const RESPONSE_FILE: &str = "BITS-Response-DataFile-Name";
const COPY_TO_DESTINATION: &str = "BITS-Copy-File-To-Destination";
const STATIC_RESPONSE_URL: &str = "BITS-Static-Response-URL";

/// The reply for `bytes`: `sha256=<hex> length=<n>\n`.
pub fn expected_reply(bytes: &[u8]) -> String {
    let mut tally = Tally::default();
    tally.update(bytes);
    tally.reply()
}

/// The reply for the content of the file at `path`, read in pieces (blocking).
pub fn expected_reply_of_file(path: &Path) -> std::io::Result<String> {
    tally_file(path).map(Tally::reply)
}

/// SHA-256 and length of content seen piece by piece.
#[derive(Default)]
struct Tally {
    hasher: Sha256,
    len: u64,
}

impl Tally {
    fn update(&mut self, piece: &[u8]) {
        self.hasher.update(piece);
        self.len += piece.len() as u64;
    }

    /// The one formatting of a reply.
    fn reply(self) -> String {
        format!("sha256={} length={}\n", hex::encode(self.hasher.finalize()), self.len)
    }
}

/// Reads the file at `path` in 1 MiB pieces (blocking).
fn tally_file(path: &Path) -> std::io::Result<Tally> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    let (mut tally, mut buffer) = (Tally::default(), vec![0u8; 1 << 20]);
    loop {
        match file.read(&mut buffer)? {
            0 => return Ok(tally),
            n => tally.update(&buffer[..n]),
        }
    }
}

/// How a notification came.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Names the uploaded file (`BITS-Request-DataFile-Name`).
    ByReference,
    /// Carries the uploaded file as its body.
    ByValue,
}

/// A request the back end received.
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

/// Knobs and records, shared by the handle and the server tasks.
#[derive(Default)]
struct State {
    knobs: Knobs,
    seen: Vec<Notification>,
}

/// How to answer (see the setters of [`Backend`]).
#[derive(Clone, Default)]
struct Knobs {
    /// Status and how many more requests get it.
    fail: Option<(u16, u32)>,
    delay: Duration,
    copy_to_destination: bool,
    static_response_url: Option<String>,
}

type Shared = Arc<Mutex<State>>;

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running back end; it stops (listener and every connection) when dropped.
pub struct Backend {
    addr: SocketAddr,
    shared: Shared,
    /// The accept loop, which owns every connection task.
    accept: JoinHandle<()>,
}

impl Backend {
    /// Binds `127.0.0.1:0` and starts serving.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("cannot bind the test back end to 127.0.0.1")?;
        let addr = listener.local_addr().context("cannot read the back end's address")?;
        let shared = Shared::default();
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(Self { addr, shared, accept })
    }

    /// The notification URL: `http://127.0.0.1:PORT/notify` (any path is served).
    pub fn url(&self) -> String {
        format!("http://{}/notify", self.addr)
    }

    /// Answers the next `count` requests with `status` and a short text, unread.
    pub fn fail_next(&self, status: u16, count: u32) {
        lock(&self.shared).knobs.fail = Some((status, count));
    }

    /// Waits `delay` before answering each request.
    pub fn set_delay(&self, delay: Duration) {
        lock(&self.shared).knobs.delay = delay;
    }

    /// Asks the server to also place the upload at its destination
    /// (`BITS-Copy-File-To-Destination: 1`).
    pub fn set_copy_to_destination(&self, on: bool) {
        lock(&self.shared).knobs.copy_to_destination = on;
    }

    /// Answers `BITS-Static-Response-URL: <url>` and no reply (`None`: replies again).
    pub fn set_static_response_url(&self, url: Option<String>) {
        lock(&self.shared).knobs.static_response_url = url;
    }

    /// Every request so far, oldest first.
    pub fn notifications(&self) -> Vec<Notification> {
        lock(&self.shared).seen.clone()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Accepts connections until aborted; aborting it drops the set, which aborts every
/// connection task.
async fn accept_loop(listener: TcpListener, shared: Shared) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // Out of file descriptors or similar: do not spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let shared = Arc::clone(&shared);
                let service = service_fn(move |request| handle(Arc::clone(&shared), request));
                connections.spawn(async move {
                    // Errors are the client's doing: nothing to report.
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

type Answer = Response<Full<Bytes>>;

/// The knobs for a request arriving now, and the status to fail it with (counting
/// down `fail_next`).
fn take_knobs(shared: &Shared) -> (Option<StatusCode>, Knobs) {
    let knobs = &mut lock(shared).knobs;
    let fail = match knobs.fail {
        Some((status, count)) if count > 0 => {
            knobs.fail = (count > 1).then_some((status, count - 1));
            Some(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        }
        _ => None,
    };
    (fail, knobs.clone())
}

/// Answers one request and records it.
async fn handle(shared: Shared, request: Request<Incoming>) -> Result<Answer, Infallible> {
    let text = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok());
    let request_file = text(REQUEST_FILE).map(str::to_owned);
    let mut note = Notification {
        mode: if request_file.is_some() { Mode::ByReference } else { Mode::ByValue },
        original_url: text(ORIGINAL_URL).map(str::to_owned),
        request_file,
        response_file: text(RESPONSE_FILE).map(str::to_owned),
        bytes: 0,
        status: 0,
    };
    let (fail, knobs) = take_knobs(&shared);
    if !knobs.delay.is_zero() {
        tokio::time::sleep(knobs.delay).await;
    }
    let response = match fail {
        Some(status) => {
            // Read and drop the body, so the connection stays usable.
            drain(request.into_body()).await;
            answer(status, "failing on purpose\n")
        }
        None => match serve(&mut note, request.into_body(), &knobs).await {
            Ok(response) => response,
            Err(e) => answer(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n")),
        },
    };
    note.status = response.status().as_u16();
    lock(&shared).seen.push(note);
    Ok(response)
}

/// Reads the upload (from its file or the body), hashing it, and answers the reply:
/// as the body (by value) or written to the response file (by reference).
async fn serve(note: &mut Notification, body: Incoming, knobs: &Knobs) -> anyhow::Result<Answer> {
    let static_url = knobs.static_response_url.as_deref().map(HeaderValue::from_str);
    let static_url =
        static_url.transpose().context("the static response URL is no header value")?;
    let tally = match &note.request_file {
        Some(path) => {
            drain(body).await;
            hash_file(path).await?
        }
        None => hash_body(body).await?,
    };
    note.bytes = tally.len;
    // A static reply URL replaces the reply: none is answered or written.
    let body = match (&static_url, note.mode, &note.response_file) {
        (Some(_), ..) => String::new(),
        (None, Mode::ByValue, _) => tally.reply(),
        (None, Mode::ByReference, Some(path)) => {
            tokio::fs::write(path, tally.reply())
                .await
                .with_context(|| format!("cannot write the response file {path}"))?;
            String::new()
        }
        (None, Mode::ByReference, None) => anyhow::bail!("no {RESPONSE_FILE} header"),
    };
    let mut response = answer(StatusCode::OK, body);
    if knobs.copy_to_destination {
        response.headers_mut().insert(COPY_TO_DESTINATION, HeaderValue::from_static("1"));
    }
    if let Some(url) = static_url {
        response.headers_mut().insert(STATIC_RESPONSE_URL, url);
    }
    Ok(response)
}

/// Hashes the file at `path` on a blocking thread.
async fn hash_file(path: &str) -> anyhow::Result<Tally> {
    let owned = path.to_owned();
    tokio::task::spawn_blocking(move || tally_file(Path::new(&owned)))
        .await
        .context("the hashing task failed")?
        .with_context(|| format!("cannot read the request file {path}"))
}

/// Hashes a request body frame by frame.
async fn hash_body(mut body: Incoming) -> anyhow::Result<Tally> {
    let mut tally = Tally::default();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.context("cannot read the request body")?.into_data() {
            tally.update(&data);
        }
    }
    Ok(tally)
}

/// Reads a request body to its end, keeping nothing.
async fn drain(mut body: Incoming) {
    while let Some(Ok(_)) = body.frame().await {}
}

/// A response with `body` (as `text/plain` unless empty).
fn answer(status: StatusCode, body: impl Into<Bytes>) -> Answer {
    let body = body.into();
    let typed = !body.is_empty();
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    if typed {
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> reqwest::Client {
        ferry_coordinator::client::ensure_crypto_provider();
        reqwest::Client::builder().no_proxy().build().expect("client")
    }

    fn data() -> Vec<u8> {
        (0..1_500_000u32).map(|i| (i % 253) as u8).collect()
    }

    /// A by-reference notification of `upload`, the reply going to `reply`.
    async fn by_reference(
        backend: &Backend,
        upload: &Path,
        reply: &Path,
    ) -> reqwest::Result<reqwest::Response> {
        client()
            .post(backend.url())
            .header(ORIGINAL_URL, "http://x/bits/a")
            .header(REQUEST_FILE, upload.to_string_lossy().as_ref())
            .header(RESPONSE_FILE, reply.to_string_lossy().as_ref())
            .send()
            .await
    }

    #[tokio::test]
    async fn by_value_answers_the_reply() -> anyhow::Result<()> {
        let backend = Backend::start().await?;
        let data = data();
        let answer = client().post(backend.url()).body(data.clone()).send().await?;
        assert_eq!(answer.status(), 200);
        assert!(answer.headers().get(COPY_TO_DESTINATION).is_none());
        assert_eq!(answer.text().await?, expected_reply(&data));
        let seen = backend.notifications();
        assert_eq!((seen[0].mode, seen[0].bytes, seen[0].status), (Mode::ByValue, 1_500_000, 200));
        Ok(())
    }

    #[tokio::test]
    async fn by_reference_writes_the_reply_file() -> anyhow::Result<()> {
        let backend = Backend::start().await?;
        let dir = tempfile::tempdir()?;
        let (upload, reply) = (dir.path().join("up"), dir.path().join("reply"));
        std::fs::write(&upload, data())?;
        let answer = by_reference(&backend, &upload, &reply).await?;
        assert_eq!(answer.status(), 200);
        assert_eq!(answer.text().await?, "");
        assert_eq!(std::fs::read_to_string(&reply)?, expected_reply(&data()));
        assert_eq!(expected_reply_of_file(&upload)?, expected_reply(&data()));
        let seen = &backend.notifications()[0];
        assert_eq!(
            (seen.mode, seen.original_url.as_deref()),
            (Mode::ByReference, Some("http://x/bits/a"))
        );
        // An upload that is not there: 500, saying which.
        let answer = by_reference(&backend, &dir.path().join("gone"), &reply).await?;
        assert_eq!(answer.status(), 500);
        assert!(answer.text().await?.contains("gone"));
        Ok(())
    }

    #[tokio::test]
    async fn fail_next_fails_then_recovers() -> anyhow::Result<()> {
        let backend = Backend::start().await?;
        let (data, client) = (data(), client());
        backend.fail_next(503, 1);
        let post = || client.post(backend.url()).body(data.clone()).send();
        let failed = post().await?;
        assert_eq!(failed.status(), 503);
        assert_eq!(failed.text().await?, "failing on purpose\n");
        assert_eq!(post().await?.text().await?, expected_reply(&data));
        let seen = backend.notifications();
        let outcomes: Vec<_> = seen.iter().map(|n| (n.status, n.bytes)).collect();
        assert_eq!(outcomes, [(503, 0), (200, 1_500_000)]);
        Ok(())
    }

    #[tokio::test]
    async fn knobs_add_headers_and_delay() -> anyhow::Result<()> {
        let backend = Backend::start().await?;
        backend.set_copy_to_destination(true);
        backend.set_delay(Duration::from_millis(100));
        let started = std::time::Instant::now();
        let copied = client().post(backend.url()).body("x").send().await?;
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert_eq!(
            copied.headers().get(COPY_TO_DESTINATION).map(HeaderValue::as_bytes),
            Some(&b"1"[..])
        );
        backend.set_delay(Duration::ZERO);
        backend.set_static_response_url(Some("http://static/reply".into()));
        let dir = tempfile::tempdir()?;
        let (upload, reply) = (dir.path().join("up"), dir.path().join("reply"));
        std::fs::write(&upload, b"hello bits")?;
        let answer = by_reference(&backend, &upload, &reply).await?;
        assert_eq!(
            answer.headers().get(STATIC_RESPONSE_URL).map(HeaderValue::as_bytes),
            Some(&b"http://static/reply"[..])
        );
        assert!(!reply.exists(), "a static reply URL writes no reply file");
        let by_value = client().post(backend.url()).body("x").send().await?;
        assert!(by_value.headers().contains_key(STATIC_RESPONSE_URL));
        assert_eq!(by_value.text().await?, "");
        Ok(())
    }
}
