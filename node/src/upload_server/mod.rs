//! The BITS upload server (bits-spec §5): `BITS_POST /bits/<path>` (also `POST`
//! with `X-Http-Method-Override: BITS_POST`) on the API listener of every node.
//!
//! Sessions live in the replicated queue ([`UploadCommand`]); the bytes of a fragment
//! stay on the node that received it, written at their offset as they arrive into
//! `<data-dir>/upload-pieces/<session>/received` and made durable before the fragment
//! is recorded; fragments sent ahead of their turn wait here for the one before
//! (`ahead`). Close-Session assembles the pieces into `<upload root>/<path>` (a temporary
//! name, then a rename) when the file is complete, and discards them otherwise.
//!
//! A session may go on at any node (server farm): the node that receives the final
//! fragment gathers the pieces other nodes hold over the peer link ([`GATHER_CHUNK`]
//! bytes per call) and hands the file over (bits-spec §5.5 step 2): with no back end it
//! is placed at `<upload root>/<path>`; otherwise it is POSTed to the back end by
//! reference or by value (§5.6) and the back end's reply is kept on this node, served
//! by every node at `GET /bits-reply/<session>` (the `BITS-Reply-URL`). What came of it
//! is recorded in the session, so a repeated final fragment gets the same Ack. A back
//! end failure is answered with its status and context `REMOTE_APPLICATION` (the client
//! retries or gives up by that status). Close-Session releases everything.

mod ahead;
mod handover;
mod pieces;
mod reply;
mod session;

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use ferry_coordinator::Auth;
use ferry_protocol::upload::{self, METHOD, PacketType, header};
use ferry_protocol::{BitsCode, Caller, ErrorContext};

use crate::config::BackendMode;
use crate::fs::dir::Dir;
use crate::replica::ClusterView;

pub(crate) use self::ahead::InFlight;
pub(crate) use self::pieces::{register, sweep_pieces};
use self::reply::serve_reply;

/// What the upload server needs.
#[derive(Clone)]
pub(crate) struct UploadServer {
    pub(crate) cluster: ClusterView,
    pub(crate) auth: Arc<Auth>,
    /// Where completed uploads go: `<root>/<path>`, reached without following any
    /// symlink below the root.
    pub(crate) root: Arc<Dir>,
    /// Where received pieces wait.
    pub(crate) pieces: PathBuf,
    /// Largest file accepted.
    pub(crate) max_size: u64,
    /// Whether an upload may replace an existing file.
    pub(crate) allow_overwrite: bool,
    /// Who receives completed uploads.
    pub(crate) backend: Backend,
    /// `BITS-Host-Id` and its fallback timeout (seconds), if configured.
    pub(crate) host_id: Option<(String, u64)>,
    /// This node's API address, for reply URLs when a request names no `Host`.
    pub(crate) public: String,
    /// `https` when the API listener speaks TLS, else `http`: the scheme of reply URLs.
    pub(crate) scheme: &'static str,
    /// Fragments in flight on this node, for those that arrive ahead of their turn.
    pub(crate) in_flight: InFlight,
}

/// The back end of completed uploads (bits-spec §5.6).
#[derive(Clone)]
pub(crate) struct Backend {
    /// How it is notified.
    pub(crate) mode: BackendMode,
    /// Its URL.
    pub(crate) url: String,
    /// Client with the back end's deadline.
    pub(crate) client: reqwest::Client,
}

/// The piece "offset" under which a session's reply is kept (after every real piece,
/// so the peer call that gathers pieces also fetches replies).
const REPLY_PIECE: u64 = u64::MAX;
/// The name of the assembled file handed to a back end, beside the pieces.
const DATA_FILE: &str = "upload.data";

/// The routes; a request body beyond `max_fragment` bytes is refused.
pub(crate) fn router(server: UploadServer, max_fragment: usize) -> axum::Router {
    let state = Served { server, max_fragment };
    axum::Router::new()
        .route("/bits/{*path}", axum::routing::any(handle))
        .route("/bits-reply/{session}", axum::routing::get(serve_reply))
        .with_state(state)
}

/// The routes' state: the server and its body limit.
#[derive(Clone)]
struct Served {
    server: UploadServer,
    max_fragment: usize,
}

impl axum::extract::FromRef<Served> for UploadServer {
    fn from_ref(served: &Served) -> Self {
        served.server.clone()
    }
}

/// An Ack: the status, `BITS-Packet-Type: Ack`, `Content-Length: 0`, and `headers`.
fn ack(status: StatusCode, headers: &[(&'static str, String)]) -> Response {
    let mut response = status.into_response();
    let map = response.headers_mut();
    map.insert(header::PACKET_TYPE, HeaderValue::from_static("Ack"));
    map.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    map.insert(header::FRAGMENTS_AHEAD, HeaderValue::from(ahead::FRAGMENTS_AHEAD));
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::from_str(value) {
            map.insert(*name, value);
        }
    }
    response
}

/// An error Ack with `BITS-Error-Code` and `BITS-Error-Context` (the remote file).
fn refuse(status: StatusCode, code: BitsCode, extra: &[(&'static str, String)]) -> Response {
    let mut headers: Vec<(&'static str, String)> =
        upload::error_headers(code, ErrorContext::RemoteFile).into();
    headers.extend_from_slice(extra);
    ack(status, &headers)
}

fn text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The caller, from `Authorization: Bearer TOKEN` or Basic with the token as password
/// (what BITS clients send).
fn caller(auth: &Auth, headers: &HeaderMap) -> Option<Caller> {
    auth.caller_of(headers)
}

async fn handle(
    State(Served { server, max_fragment }): State<Served>,
    method: Method,
    UrlPath(path): UrlPath<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // The request's path and query: the remote name a back end is told.
    let target = uri.path_and_query().map_or_else(|| uri.path().to_owned(), |p| p.to_string());
    let overridden = method == Method::POST
        && text(&headers, header::METHOD_OVERRIDE).is_some_and(|m| m.eq_ignore_ascii_case(METHOD));
    if method.as_str() != METHOD && !overridden {
        drain(body, max_fragment).await;
        let mut response = ack(StatusCode::METHOD_NOT_ALLOWED, &[]);
        response.headers_mut().insert("allow", HeaderValue::from_static(METHOD));
        return response;
    }
    let Some(caller) = caller(&server.auth, &headers) else {
        // A client sends a fragment without credentials until challenged: it reads
        // this answer once it has sent the body.
        drain(body, max_fragment).await;
        let mut response = refuse(StatusCode::UNAUTHORIZED, BitsCode::E_ACCESSDENIED, &[]);
        response
            .headers_mut()
            .insert("www-authenticate", HeaderValue::from_static("Basic realm=\"ferry\""));
        return response;
    };
    let packet = text(&headers, header::PACKET_TYPE).and_then(|p| p.parse::<PacketType>().ok());
    if packet != Some(PacketType::Fragment) {
        // Only fragments carry bytes (streamed to disk as they come); anything sent with
        // another packet is read, so that the connection is kept, and ignored.
        if !drain(body, max_fragment).await {
            return refuse(StatusCode::PAYLOAD_TOO_LARGE, BitsCode::E_INVALIDARG, &[]);
        }
        return other_packet(&server, &caller, packet, &path, &target, &headers).await;
    }
    let answer = server.fragment(&caller, &target, &headers, body, max_fragment).await;
    // Stored, not yet acknowledged.
    fail::fail_point!("upload.fragment.before_ack", |_| {
        refuse(StatusCode::INTERNAL_SERVER_ERROR, BitsCode::E_FAIL, &[])
    });
    answer
}

/// Reads `body` to its end and drops it, so that a client still sending it reads the
/// answer on a kept connection; false if it is longer than `limit` (or broken), where
/// reading stops.
async fn drain(body: Body, limit: usize) -> bool {
    use futures_util::StreamExt as _;
    let mut stream = body.into_data_stream();
    let mut seen = 0usize;
    while let Some(frame) = stream.next().await {
        let Ok(frame) = frame else { return false };
        seen = seen.saturating_add(frame.len());
        if seen > limit {
            return false;
        }
    }
    true
}

/// The answer to a packet other than a fragment.
async fn other_packet(
    server: &UploadServer,
    caller: &Caller,
    packet: Option<PacketType>,
    path: &str,
    target: &str,
    headers: &HeaderMap,
) -> Response {
    match packet {
        Some(PacketType::Ping) => ack(StatusCode::OK, &[]),
        Some(PacketType::CreateSession) => server.create(caller, path, headers).await,
        Some(PacketType::CloseSession) => server.end(caller, target, headers, true).await,
        Some(PacketType::CancelSession) => server.end(caller, target, headers, false).await,
        Some(PacketType::Ack | PacketType::Fragment) | None => {
            refuse(StatusCode::BAD_REQUEST, BitsCode::E_INVALIDARG, &[])
        }
    }
}
