//! One HTTP/1.1 connection of the test origin: hyper's `http1` server with a service
//! that answers each request from the shared state and the knobs.
//!
//! The order of checks for a request is: `CONNECT` refused, proxy authentication,
//! `force_status`, `fail_first`, authentication, method, path, then the file (HEAD or
//! GET, ranges). Accept/TLS handshakes are in the parent module; bodies in `body`.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use hyper::body::Incoming;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::auth::{self, Credentials, DigestVerdict, Target};
use super::body::{OriginBody, Shaping};
use super::content::{Content, FileInfo};
use super::knobs::{Auth, Knobs};
use super::range::{self, RangeDecision};
use super::record::RequestRecord;
use super::state::{ConnState, Shared, State};

/// Serves HTTP/1.1 (keep-alive) on `io` until the client closes, the connection fails
/// or a body cuts it.
pub(super) async fn serve_connection<I>(io: I, shared: Arc<Shared>, conn: ConnState)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Arc::new(Mutex::new(conn));
    let service = service_fn(move |request| {
        let response = respond(&shared, &conn, &request);
        async move { Ok::<_, Infallible>(response) }
    });
    // Errors are the client's or the fault knobs' doing: nothing to report.
    let _ =
        http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(io), service).await;
}

/// A response before its body is attached.
struct Reply {
    status: StatusCode,
    headers: Vec<(HeaderName, String)>,
    body: Plan,
}

/// The body a reply will carry.
enum Plan {
    Empty,
    Text(&'static str),
    Content { content: Content, start: u64, len: u64 },
}

impl Reply {
    fn text(status: StatusCode, text: &'static str) -> Self {
        let headers = vec![(header::CONTENT_TYPE, "text/plain".to_owned())];
        Self { status, headers, body: Plan::Text(text) }
    }

    fn with(mut self, name: HeaderName, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

/// Answers one request, logging it.
fn respond(
    shared: &Arc<Shared>,
    conn: &Arc<Mutex<ConnState>>,
    request: &Request<Incoming>,
) -> Response<OriginBody> {
    let (connection, client) = {
        let conn = super::state::lock(conn);
        (conn.id, conn.peer)
    };
    let mut state = shared.lock();
    let uri = request.uri();
    let absolute = uri.scheme().is_some();
    let header = |name: HeaderName| request.headers().get(name).and_then(|v| v.to_str().ok());
    let mut record = RequestRecord {
        connection,
        client,
        method: request.method().to_string(),
        path: uri.path().to_owned(),
        proxied_host: if absolute { uri.authority().map(ToString::to_string) } else { None },
        via_proxy: absolute && state.knobs.proxy.is_some(),
        range: header(header::RANGE).map(str::to_owned),
        if_range: header(header::IF_RANGE).map(str::to_owned),
        authorization: header(header::AUTHORIZATION).map(auth::scheme),
        proxy_authorization: header(header::PROXY_AUTHORIZATION).map(auth::scheme),
        user_agent: header(header::USER_AGENT).map(str::to_owned),
        x_headers: request
            .headers()
            .iter()
            .filter(|(name, _)| name.as_str().starts_with("x-"))
            .map(|(name, value)| format!("{name}: {}", String::from_utf8_lossy(value.as_bytes())))
            .collect(),
        status: 0,
        body_bytes: 0,
    };
    let reply = decide(&mut state, request, record.via_proxy);
    let knobs = state.knobs.clone();
    record.status = reply.status.as_u16();
    let index = state.log(record);
    drop(state);

    let body = match reply.body {
        Plan::Empty => OriginBody::empty(),
        Plan::Text(text) => OriginBody::text(text),
        Plan::Content { content, start, len } => {
            let shaping = Shaping {
                trickle: knobs.trickle.filter(|_| {
                    knobs.trickle_clients.is_empty()
                        || client.is_some_and(|c| knobs.trickle_clients.contains(&c))
                }),
                rate: knobs.rate_limit_per_connection,
                drop_after: knobs.drop_after_bytes,
            };
            OriginBody::content(
                content,
                start,
                len,
                shaping,
                Arc::clone(shared),
                Arc::clone(conn),
                index,
            )
        }
    };
    let mut response = Response::new(body);
    *response.status_mut() = reply.status;
    for (name, value) in reply.headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

/// Decides the status, headers and body of a request.
fn decide(state: &mut State, request: &Request<Incoming>, via_proxy: bool) -> Reply {
    let method = request.method();
    let header = |name: HeaderName| request.headers().get(name).and_then(|v| v.to_str().ok());
    if method == Method::CONNECT {
        return Reply::text(StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not supported\n")
            .with(header::ALLOW, "GET, HEAD");
    }
    if via_proxy
        && let Some(proxy) = &state.knobs.proxy
        && let Some((user, password)) = &proxy.require_auth
        && !auth::basic_matches(header(header::PROXY_AUTHORIZATION), user, password)
    {
        return Reply::text(StatusCode::PROXY_AUTHENTICATION_REQUIRED, "proxy credentials\n")
            .with(header::PROXY_AUTHENTICATE, "Basic realm=\"ferry-proxy\"");
    }
    if via_proxy
        && let Some((user, password)) =
            state.knobs.proxy.as_ref().and_then(|p| p.require_digest.clone())
    {
        let value = header(header::PROXY_AUTHORIZATION);
        let uri = request.uri();
        let full = uri.to_string();
        let path_and_query = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
        let target = Target { full: &full, path_and_query };
        let realm = "ferry-proxy";
        let expected = Credentials { user: &user, password: &password, realm };
        let stale = match state.nonces.verify(value, request.method().as_str(), &target, &expected)
        {
            DigestVerdict::Allowed => None,
            DigestVerdict::Stale => Some(true),
            DigestVerdict::Denied => Some(false),
        };
        if let Some(stale) = stale {
            let challenge = state.nonces.challenge(realm, stale);
            return Reply::text(StatusCode::PROXY_AUTHENTICATION_REQUIRED, "proxy credentials\n")
                .with(header::PROXY_AUTHENTICATE, challenge);
        }
    }
    if let Some(status) = state.knobs.force_status {
        return Reply::text(status_code(status), "forced status\n");
    }
    if let Some((count, status)) = state.knobs.fail_first
        && state.failed < count
    {
        state.failed += 1;
        return Reply::text(status_code(status), "failing on purpose\n");
    }
    if let Some(refusal) = check_auth(state, request) {
        return refusal;
    }
    if let Some((_, to)) =
        state.knobs.redirects.iter().find(|(from, _)| from == request.uri().path())
    {
        return Reply::text(StatusCode::FOUND, "moved\n").with(header::LOCATION, to);
    }
    let head = method == Method::HEAD;
    let served = head || method == Method::GET || state.knobs.any_method;
    if !served || (head && state.knobs.no_head) {
        let allow = if state.knobs.no_head { "GET" } else { "GET, HEAD" };
        return Reply::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            .with(header::ALLOW, allow);
    }
    let Some(file) = state.files.get(request.uri().path()) else {
        return Reply::text(StatusCode::NOT_FOUND, "no such file\n");
    };
    serve_file(&state.knobs, file.info(), head, header(header::RANGE), header(header::IF_RANGE))
}

/// The reply for HEAD or GET of an existing file.
fn serve_file(
    knobs: &Knobs,
    file: FileInfo,
    head: bool,
    range_header: Option<&str>,
    if_range: Option<&str>,
) -> Reply {
    let total = file.content.len();
    let ranges = !knobs.no_ranges && !knobs.no_content_length;
    let mut headers = vec![
        (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
        (header::ETAG, file.etag.clone()),
        (header::LAST_MODIFIED, file.last_modified.clone()),
    ];
    if ranges {
        headers.push((header::ACCEPT_RANGES, "bytes".to_owned()));
    }
    if let Some(digest) = &file.repr_digest {
        headers.push((HeaderName::from_static("repr-digest"), digest.clone()));
    }
    let decision = if ranges && !head {
        range::decide(range_header, if_range, total, &file.etag, &file.last_modified)
    } else {
        RangeDecision::Whole
    };
    let (status, start, len) = match decision {
        RangeDecision::Whole => (StatusCode::OK, 0, total),
        RangeDecision::Partial { start, end } => {
            headers.push((header::CONTENT_RANGE, format!("bytes {start}-{end}/{total}")));
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        RangeDecision::Unsatisfiable => {
            headers.push((header::CONTENT_RANGE, format!("bytes */{total}")));
            return Reply { status: StatusCode::RANGE_NOT_SATISFIABLE, headers, body: Plan::Empty };
        }
    };
    if !knobs.no_content_length {
        headers.push((header::CONTENT_LENGTH, len.to_string()));
    }
    let body = if head { Plan::Empty } else { Plan::Content { content: file.content, start, len } };
    Reply { status, headers, body }
}

/// `None` if the request may proceed, else the `401` to send.
fn check_auth(state: &mut State, request: &Request<Incoming>) -> Option<Reply> {
    let value = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let refusal = |challenge: String| {
        Reply::text(StatusCode::UNAUTHORIZED, "credentials required\n")
            .with(header::WWW_AUTHENTICATE, challenge)
    };
    match state.knobs.auth.clone()? {
        Auth::Basic { user, password } => (!auth::basic_matches(value, &user, &password))
            .then(|| refusal("Basic realm=\"ferry-test\"".to_owned())),
        Auth::Digest { user, password, realm } => {
            let uri = request.uri();
            let full = uri.to_string();
            let path_and_query = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
            let target = Target { full: &full, path_and_query };
            let expected = Credentials { user: &user, password: &password, realm: &realm };
            match state.nonces.verify(value, request.method().as_str(), &target, &expected) {
                DigestVerdict::Allowed => None,
                DigestVerdict::Stale => Some(refusal(state.nonces.challenge(&realm, true))),
                DigestVerdict::Denied => Some(refusal(state.nonces.challenge(&realm, false))),
            }
        }
    }
}

/// A status code from a knob; out-of-range numbers become 500.
fn status_code(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}
