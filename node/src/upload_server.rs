//! The BITS upload server (bits-spec §5, issue 7): `BITS_POST /bits/<path>` (also `POST`
//! with `X-Http-Method-Override: BITS_POST`) on the API listener of every node.
//!
//! Sessions live in the replicated queue ([`UploadCommand`]); the bytes of a fragment
//! stay on the node that received it, one file per piece under
//! `<data-dir>/upload-pieces/<session>/<offset>`, made durable before the fragment is
//! recorded. Close-Session assembles the pieces into `<upload root>/<path>` (a temporary
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

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use ferry_coordinator::{Auth, ClusterError, ReadAt};
use ferry_protocol::codec::ByteBuf;
use ferry_protocol::command::{Command, Proposal, Reply};
use ferry_protocol::peer::UploadPiece;
use ferry_protocol::queue::{
    HeldReply, UploadCommand, UploadOutcome, UploadSession, check_upload_path,
};
use ferry_protocol::upload::{
    self, FragmentRange, FragmentRefusal, IDENTITY, METHOD, PacketType, header, notification,
    plan_fragment,
};
use ferry_protocol::{BitsCode, Caller, ErrorContext};

use crate::config::BackendMode;
use crate::fs::dir::{Dir, is_symlink_refusal};
use crate::peer::rpc::Router;
use crate::replica::ClusterView;

/// Most bytes of a piece fetched from another node in one call.
pub(crate) const GATHER_CHUNK: u32 = 4 * 1024 * 1024;
/// How long a member has to send [`GATHER_CHUNK`] bytes of a piece.
const GATHER_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(1500);

/// Serves [`UploadPiece`] for other members: bytes of the pieces this node received,
/// kept under `pieces`.
pub(crate) fn register(router: &Router, pieces: PathBuf) {
    let pieces = Arc::new(pieces);
    router.add_handler::<UploadPiece, _, _>(move |_, request| {
        let pieces = pieces.clone();
        async move {
            let UploadPiece { session, offset, from, len } = request;
            let read = tokio::task::spawn_blocking(move || {
                read_piece(&pieces, &session, offset, from, len)
            })
            .await;
            match read {
                Ok(Ok(bytes)) => Ok(ByteBuf::from(bytes)),
                Ok(Err(e)) => Err(ClusterError::Unavailable(format!("upload piece: {e}"))),
                Err(e) => Err(ClusterError::Unavailable(e.to_string())),
            }
        }
    });
}

/// Bytes `from..from + len` of the upload piece at `offset` of `session` that `node`
/// holds (see [`UploadPiece`]).
async fn fetch_piece(
    cluster: &ClusterView,
    node: ferry_protocol::NodeId,
    session: &str,
    offset: u64,
    from: u64,
    len: u32,
) -> crate::Result<Vec<u8>> {
    let request = UploadPiece { session: session.to_owned(), offset, from, len };
    cluster.call(node, &request, GATHER_TIMEOUT).await.map(ByteBuf::into_vec)
}

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

/// The routes, with their own body limit (`max_fragment` bytes).
pub(crate) fn router(server: UploadServer, max_fragment: usize) -> axum::Router {
    axum::Router::new()
        .route("/bits/{*path}", axum::routing::any(handle))
        .route("/bits-reply/{session}", axum::routing::get(serve_reply))
        .layer(axum::extract::DefaultBodyLimit::max(max_fragment))
        .with_state(server)
}

/// An Ack: the status, `BITS-Packet-Type: Ack`, `Content-Length: 0`, and `headers`.
fn ack(status: StatusCode, headers: &[(&'static str, String)]) -> Response {
    let mut response = status.into_response();
    let map = response.headers_mut();
    map.insert(header::PACKET_TYPE, HeaderValue::from_static("Ack"));
    map.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
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
    auth.caller_of(headers).cloned()
}

async fn handle(
    State(server): State<UploadServer>,
    method: Method,
    UrlPath(path): UrlPath<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // The request's path and query: the remote name a back end is told.
    let target = uri.path_and_query().map_or_else(|| uri.path().to_owned(), |p| p.to_string());
    let overridden = method == Method::POST
        && text(&headers, header::METHOD_OVERRIDE).is_some_and(|m| m.eq_ignore_ascii_case(METHOD));
    if method.as_str() != METHOD && !overridden {
        let mut response = ack(StatusCode::METHOD_NOT_ALLOWED, &[]);
        response.headers_mut().insert("allow", HeaderValue::from_static(METHOD));
        return response;
    }
    let Some(caller) = caller(&server.auth, &headers) else {
        let mut response = refuse(StatusCode::UNAUTHORIZED, BitsCode::E_ACCESSDENIED, &[]);
        response
            .headers_mut()
            .insert("www-authenticate", HeaderValue::from_static("Basic realm=\"ferry\""));
        return response;
    };
    let packet = text(&headers, header::PACKET_TYPE).and_then(|p| p.parse::<PacketType>().ok());
    match packet {
        Some(PacketType::Ping) => ack(StatusCode::OK, &[]),
        Some(PacketType::CreateSession) => server.create(&caller, &path, &headers).await,
        Some(PacketType::Fragment) => server.fragment(&caller, &target, &headers, &body).await,
        Some(PacketType::CloseSession) => server.end(&caller, &target, &headers, true).await,
        Some(PacketType::CancelSession) => server.end(&caller, &target, &headers, false).await,
        Some(PacketType::Ack) | None => {
            refuse(StatusCode::BAD_REQUEST, BitsCode::E_INVALIDARG, &[])
        }
    }
}

impl UploadServer {
    async fn propose(&self, caller: &Caller, command: UploadCommand) -> Result<Reply, Response> {
        let proposal = Proposal {
            request_id: None,
            caller: caller.clone(),
            command: Command::Upload(command),
        };
        match self.cluster.write(proposal).await {
            Ok(written) => written.result.map_err(|e| {
                let status = match e.code {
                    BitsCode::BG_E_SESSION_NOT_FOUND => StatusCode::BAD_REQUEST,
                    BitsCode::BG_E_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
                    BitsCode::BG_E_INVALID_RANGE => StatusCode::RANGE_NOT_SATISFIABLE,
                    BitsCode::BG_E_TOO_MANY_JOBS_PER_USER => StatusCode::FORBIDDEN,
                    _ => StatusCode::BAD_REQUEST,
                };
                refuse(status, e.code, &[])
            }),
            Err(e) => {
                tracing::warn!(error = %e, "an upload command cannot be written");
                Err(refuse(StatusCode::SERVICE_UNAVAILABLE, BitsCode::E_UNEXPECTED, &[]))
            }
        }
    }

    /// The caller's session named by `BITS-Session-Id`, as applied after a linearizable
    /// barrier.
    async fn session(
        &self,
        caller: &Caller,
        headers: &HeaderMap,
    ) -> Result<UploadSession, Response> {
        let Some(id) = text(headers, header::SESSION_ID) else {
            return Err(refuse(StatusCode::BAD_REQUEST, BitsCode::E_INVALIDARG, &[]));
        };
        self.session_named(caller, id).await
    }

    /// The caller's session `id`, as applied after a linearizable barrier.
    async fn session_named(&self, caller: &Caller, id: &str) -> Result<UploadSession, Response> {
        if let Err(e) = self.cluster.read_barrier(ReadAt::Linearizable).await {
            tracing::warn!(error = %e, "an upload session cannot be read");
            return Err(refuse(StatusCode::SERVICE_UNAVAILABLE, BitsCode::E_UNEXPECTED, &[]));
        }
        let mut found = None;
        self.cluster.with_queue(&mut |queue| found = queue.upload_session(caller, id).cloned());
        found.ok_or_else(|| {
            let echo = [(header::SESSION_ID, id.to_owned())];
            refuse(StatusCode::BAD_REQUEST, BitsCode::BG_E_SESSION_NOT_FOUND, &echo)
        })
    }

    async fn create(&self, caller: &Caller, path: &str, headers: &HeaderMap) -> Response {
        let offered = text(headers, header::SUPPORTED_PROTOCOLS).unwrap_or_default();
        let Some(protocol) = upload::choose_protocol(offered) else {
            return refuse(StatusCode::BAD_REQUEST, BitsCode::E_INVALIDARG, &[]);
        };
        if check_upload_path(path).is_err() {
            return refuse(StatusCode::BAD_REQUEST, BitsCode::E_INVALIDARG, &[]);
        }
        let exists = {
            let (root, path) = (self.root.clone(), path.to_owned());
            tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
                match place(&root, &path, false) {
                    Ok((dir, name)) => Ok(dir.stat(&name)?.is_some()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                    Err(e) => Err(e),
                }
            })
            .await
        };
        match exists {
            Ok(Ok(false)) => {}
            Ok(Ok(true)) if self.allow_overwrite => {}
            Ok(Ok(true)) => return refuse(StatusCode::CONFLICT, BitsCode::E_ACCESSDENIED, &[]),
            Ok(Err(e)) if is_symlink_refusal(&e) => {
                return refuse(StatusCode::FORBIDDEN, BitsCode::E_ACCESSDENIED, &[]);
            }
            _ => return refuse(StatusCode::INTERNAL_SERVER_ERROR, BitsCode::E_UNEXPECTED, &[]),
        }
        let session = format!("{{{}}}", uuid::Uuid::new_v4());
        let command = UploadCommand::Create { session: session.clone(), path: path.to_owned() };
        if let Err(refused) = self.propose(caller, command).await {
            return refused;
        }
        let mut answer = vec![
            (header::PROTOCOL, protocol.to_owned()),
            (header::SESSION_ID, session),
            (header::ACCEPT_ENCODING, IDENTITY.to_owned()),
        ];
        if let Some((host, fallback)) = &self.host_id {
            answer.push((header::HOST_ID, host.clone()));
            answer.push((header::HOST_ID_FALLBACK_TIMEOUT, fallback.to_string()));
        }
        ack(StatusCode::OK, &answer)
    }

    async fn fragment(
        &self,
        caller: &Caller,
        target: &str,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Response {
        let session = match self.session(caller, headers).await {
            Ok(session) => session,
            Err(refused) => return refused,
        };
        let echo = (header::SESSION_ID, session.id.clone());
        let range =
            text(headers, header::CONTENT_RANGE).and_then(|r| r.parse::<FragmentRange>().ok());
        let Some(range) = range.filter(|r| r.len() == body.len() as u64) else {
            return refuse(StatusCode::BAD_REQUEST, BitsCode::E_INVALIDARG, &[echo]);
        };
        if text(headers, header::CONTENT_ENCODING)
            .is_some_and(|e| !e.eq_ignore_ascii_case("identity"))
        {
            return refuse(StatusCode::BAD_REQUEST, BitsCode::E_INVALIDARG, &[echo]);
        }
        let plan = match plan_fragment(session.next, session.total, range, self.max_size) {
            Ok(plan) => plan,
            Err(FragmentRefusal::Gap { next }) => {
                let next = (header::RECEIVED_CONTENT_RANGE, next.to_string());
                return refuse(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    BitsCode::BG_E_INVALID_RANGE,
                    &[echo, next],
                );
            }
            Err(FragmentRefusal::TooLarge { .. }) => {
                return refuse(StatusCode::PAYLOAD_TOO_LARGE, BitsCode::BG_E_TOO_LARGE, &[echo]);
            }
            Err(FragmentRefusal::TotalChanged { .. }) => {
                return refuse(StatusCode::BAD_REQUEST, BitsCode::E_INVALIDARG, &[echo]);
            }
        };
        if plan.write > 0 {
            let start = usize::try_from(plan.skip).unwrap_or(usize::MAX);
            let end = start.saturating_add(usize::try_from(plan.write).unwrap_or(usize::MAX));
            let bytes = body.slice(start.min(body.len())..end.min(body.len()));
            let file = piece_path(&self.pieces, &session.id, plan.offset);
            let stored = tokio::task::spawn_blocking(move || durable_write(&file, &bytes)).await;
            if !matches!(stored, Ok(Ok(()))) {
                return refuse(StatusCode::INTERNAL_SERVER_ERROR, BitsCode::E_UNEXPECTED, &[echo]);
            }
        }
        let command = UploadCommand::Fragment {
            session: session.id.clone(),
            start: range.start,
            end: range.end,
            total: range.total,
            node: self.cluster.node_id,
            offset: plan.offset,
            max_size: self.max_size,
        };
        match self.propose(caller, command).await {
            Ok(Reply::Fragment(done)) => {
                let next = (header::RECEIVED_CONTENT_RANGE, done.next.to_string());
                if !done.complete {
                    return ack(StatusCode::OK, &[echo, next]);
                }
                match self.hand_over(caller, &session.id, target, headers).await {
                    Ok(Some(url)) => ack(StatusCode::OK, &[echo, next, (header::REPLY_URL, url)]),
                    Ok(None) => ack(StatusCode::OK, &[echo, next]),
                    Err(refused) => refused,
                }
            }
            Ok(_) => refuse(StatusCode::INTERNAL_SERVER_ERROR, BitsCode::E_UNEXPECTED, &[echo]),
            // Another fragment moved the session on meanwhile: say where it stands now.
            Err(mut refused) if refused.status() == StatusCode::RANGE_NOT_SATISFIABLE => {
                if let Ok(now) = self.session(caller, headers).await
                    && let Ok(next) = HeaderValue::from_str(&now.next.to_string())
                {
                    refused.headers_mut().insert(header::RECEIVED_CONTENT_RANGE, next);
                }
                refused
            }
            Err(refused) => refused,
        }
    }

    /// Close-Session (`close`) or Cancel-Session.
    async fn end(
        &self,
        caller: &Caller,
        target: &str,
        headers: &HeaderMap,
        close: bool,
    ) -> Response {
        let session = match self.session(caller, headers).await {
            Ok(session) => session,
            Err(refused) => return refused,
        };
        let echo = (header::SESSION_ID, session.id.clone());
        if close
            && session.complete()
            && session.outcome.is_none()
            && let Err(refused) = self.hand_over(caller, &session.id, target, headers).await
        {
            // Transient for the client (5xx) unless the back end refused for good.
            return refused;
        }
        if let Err(refused) =
            self.propose(caller, UploadCommand::End { session: session.id.clone() }).await
        {
            return refused;
        }
        let _ = std::fs::remove_dir_all(self.pieces.join(dir_name(&session.id)));
        ack(StatusCode::OK, &[echo])
    }
}

/// A session's piece directory name (ids are printable; keep only safe characters).
fn dir_name(session: &str) -> String {
    session.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
}

fn piece_path(pieces: &Path, session: &str, offset: u64) -> PathBuf {
    pieces.join(dir_name(session)).join(offset.to_string())
}

/// Writes `bytes` to `path` (creating its directory) and makes it durable.
fn durable_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().ok_or_else(|| std::io::Error::other("no parent"))?;
    std::fs::create_dir_all(dir)?;
    let mut file = std::fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::File::open(dir)?.sync_all()
}

/// Reads `len` bytes from `from` of the piece at `offset` of `session` (for a member
/// gathering a session; the caller is authenticated by the peer transport).
pub(crate) fn read_piece(
    pieces: &Path,
    session: &str,
    offset: u64,
    from: u64,
    len: u32,
) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let len = len.min(GATHER_CHUNK);
    let mut file = std::fs::File::open(piece_path(pieces, session, offset))?;
    file.seek(SeekFrom::Start(from))?;
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(u64::from(len)).read_to_end(&mut bytes)?;
    Ok(bytes)
}

impl UploadServer {
    /// Hands a complete session's file over, once: places it, or gives it to the back
    /// end and keeps the reply. Returns the reply URL, if there is one.
    async fn hand_over(
        &self,
        caller: &Caller,
        id: &str,
        target: &str,
        headers: &HeaderMap,
    ) -> Result<Option<String>, Response> {
        let session = self.session_named(caller, id).await?;
        let echo = (header::SESSION_ID, session.id.clone());
        let outcome = match session.outcome.clone() {
            Some(outcome) => outcome,
            None => {
                let outcome = self.deliver(&session, target, headers).await.map_err(|failure| {
                    tracing::warn!(session = %session.id, error = %failure.detail, "cannot hand an upload over");
                    let mut headers: Vec<(&'static str, String)> =
                        upload::error_headers(failure.code, failure.context).into();
                    headers.push(echo.clone());
                    ack(failure.status, &headers)
                })?;
                let command =
                    UploadCommand::Finish { session: session.id.clone(), outcome: outcome.clone() };
                self.propose(caller, command).await?;
                // Another node may have finished first: its outcome is the one.
                self.session_named(caller, id).await?.outcome.unwrap_or(outcome)
            }
        };
        if let Some(url) = outcome.static_url {
            return Ok(Some(url));
        }
        Ok(outcome.reply.map(|_| {
            let host = text(headers, "host").map_or_else(|| self.public.clone(), str::to_owned);
            format!("{}://{host}/bits-reply/{}", self.scheme, url_encode(&session.id))
        }))
    }

    /// Places the file, or notifies the back end; what came of it.
    async fn deliver(
        &self,
        session: &UploadSession,
        target: &str,
        headers: &HeaderMap,
    ) -> Result<UploadOutcome, HandOverError> {
        let local = HandOverError::local;
        if self.backend.mode == BackendMode::None {
            let (root, path) = (self.root.clone(), session.path.clone());
            let (dir, name) =
                blocking(move || Ok(place(&root, &path, true)?)).await.map_err(local)?;
            self.assemble(session, dir, name).await.map_err(local)?;
            return Ok(UploadOutcome { reply: None, static_url: None });
        }
        let dir = self.pieces.join(dir_name(&session.id));
        let data = dir.join(DATA_FILE);
        let have = tokio::fs::metadata(&data).await.map(|m| m.len()).ok();
        if have != session.total {
            // Gathered again after a crash or a failed attempt of the back end.
            let opened = {
                let dir = dir.clone();
                blocking(move || {
                    std::fs::create_dir_all(&dir)?;
                    Ok(Dir::open_root(&dir)?)
                })
                .await
                .map_err(local)?
            };
            self.assemble(session, opened, DATA_FILE.into()).await.map_err(local)?;
        }
        let reply = piece_path(&self.pieces, &session.id, REPLY_PIECE);
        let _ = tokio::fs::remove_file(&reply).await;
        let host = text(headers, "host").map_or_else(|| self.public.clone(), str::to_owned);
        let original = format!("{}://{host}{target}", self.scheme);
        let query = target.split_once('?').map(|(_, query)| query);
        let answer = self.notify_backend(&original, &data, &reply, query).await?;
        let answer_headers = answer.headers().clone();
        let static_url = answer_headers
            .get(notification::STATIC_RESPONSE_URL)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned);
        if self.backend.mode == BackendMode::ByValue && static_url.is_none() {
            write_body(answer, &reply).await.map_err(local)?;
        } else {
            drop(answer);
        }
        if answer_headers.contains_key(notification::COPY_FILE_TO_DESTINATION) {
            let (root, path) = (self.root.clone(), session.path.clone());
            blocking(move || {
                let (to, name) = place(&root, &path, true)?;
                Dir::open_root(&dir)?.rename_into(DATA_FILE.as_ref(), &to, &name)?;
                Ok(to.sync()?)
            })
            .await
            .map_err(local)?;
        } else {
            // BITS deletes the upload once the application answered.
            let _ = tokio::fs::remove_file(&data).await;
        }
        let reply = match static_url {
            Some(_) => None,
            None => {
                // An application may write no reply: an empty one.
                let len = match tokio::fs::metadata(&reply).await {
                    Ok(meta) => meta.len(),
                    Err(_) => {
                        durable_write_async(&reply, Vec::new()).await.map_err(local)?;
                        0
                    }
                };
                Some(HeldReply { node: self.cluster.node_id, len })
            }
        };
        Ok(UploadOutcome { reply, static_url })
    }

    /// POSTs the notification; a non-2xx answer or no answer is a [`HandOverError`].
    async fn notify_backend(
        &self,
        original: &str,
        data: &Path,
        reply: &Path,
        query: Option<&str>,
    ) -> Result<reqwest::Response, HandOverError> {
        let mut url = self.backend.url.clone();
        // The remote name's query string is appended to the notification URL.
        if let Some(query) = query {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(query);
        }
        let request =
            self.backend.client.post(&url).header(notification::ORIGINAL_REQUEST_URL, original);
        let request = match self.backend.mode {
            BackendMode::ByValue => {
                let file = tokio::fs::File::open(data)
                    .await
                    .map_err(|e| HandOverError::local(e.into()))?;
                let len = file.metadata().await.map_err(|e| HandOverError::local(e.into()))?.len();
                request.header(reqwest::header::CONTENT_LENGTH, len).body(reqwest::Body::from(file))
            }
            _ => request
                .header(notification::REQUEST_DATA_FILE, data.display().to_string())
                .header(notification::RESPONSE_DATA_FILE, reply.display().to_string())
                .header(reqwest::header::CONTENT_LENGTH, 0)
                .body(Vec::new()),
        };
        let answer = request.send().await.map_err(|e| {
            // Unreachable or too slow: the client tries again later.
            let status = if e.is_timeout() { 504 } else { 502 };
            HandOverError::application(status, format!("the back end at {url}: {e}"))
        })?;
        let status = answer.status();
        if !status.is_success() {
            return Err(HandOverError::application(
                status.as_u16(),
                format!("the back end at {url} answered {status}"),
            ));
        }
        Ok(answer)
    }

    /// Joins a complete session's pieces, local or held by other members, into `name`
    /// in `dir` (a temporary name beside it, then a rename).
    async fn assemble(
        &self,
        session: &UploadSession,
        dir: Dir,
        name: OsString,
    ) -> anyhow::Result<()> {
        use tokio::io::AsyncWriteExt;
        let dir = Arc::new(dir);
        let temporary: OsString = format!(".{}.ferry-upload", dir_name(&session.id)).into();
        let out = {
            let (dir, temporary) = (dir.clone(), temporary.clone());
            blocking(move || {
                dir.remove(&temporary)?;
                Ok(dir.create_new(&temporary, 0o644)?)
            })
            .await?
        };
        let mut out = tokio::fs::File::from_std(out);
        for piece in &session.pieces {
            if piece.node == self.cluster.node_id {
                let mut input =
                    tokio::fs::File::open(piece_path(&self.pieces, &session.id, piece.offset))
                        .await?;
                let copied = tokio::io::copy(&mut input, &mut out).await?;
                anyhow::ensure!(
                    copied == piece.len,
                    "piece at {} has the wrong length",
                    piece.offset
                );
                continue;
            }
            let mut from = 0u64;
            while from < piece.len {
                let want = u32::try_from((piece.len - from).min(u64::from(GATHER_CHUNK)))?;
                let bytes =
                    fetch_piece(&self.cluster, piece.node, &session.id, piece.offset, from, want)
                        .await?;
                anyhow::ensure!(
                    bytes.len() == want as usize,
                    "node {} sent {} of {want} bytes of the piece at {}",
                    piece.node,
                    bytes.len(),
                    piece.offset
                );
                out.write_all(&bytes).await?;
                from += u64::from(want);
            }
        }
        out.sync_all().await?;
        drop(out);
        blocking(move || {
            dir.rename(&temporary, &name)?;
            Ok(dir.sync()?)
        })
        .await
    }
}

/// Removes, every minute, the pieces of sessions that ended (closed, cancelled or timed
/// out on any node): each node holds pieces only while their session lives.
pub(crate) async fn sweep_pieces(cluster: ClusterView, pieces: PathBuf) {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        let mut open = std::collections::HashSet::new();
        cluster.with_queue(&mut |queue| {
            open = queue.upload_sessions().map(|s| dir_name(&s.id)).collect();
        });
        let Ok(entries) = std::fs::read_dir(&pieces) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !open.contains(&name) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// Why a complete upload could not be handed over, as the client is told.
struct HandOverError {
    status: StatusCode,
    code: BitsCode,
    context: ErrorContext,
    detail: String,
}

impl HandOverError {
    /// This node failed (disk, peers): 503, the client tries again.
    fn local(e: anyhow::Error) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: BitsCode::E_UNEXPECTED,
            context: ErrorContext::RemoteFile,
            detail: format!("{e:#}"),
        }
    }

    /// The back end failed with `status` (the client retries or not by it).
    fn application(status: u16, detail: String) -> Self {
        let answered = StatusCode::from_u16(status)
            .ok()
            .filter(|s| s.is_client_error() || s.is_server_error())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Self {
            status: answered,
            code: BitsCode::http(status),
            context: ErrorContext::RemoteApplication,
            detail,
        }
    }
}

/// `path` (an upload's path, checked to have plain components) below `root`: its
/// directory (made when `create`) and its name, no symlink followed on the way.
fn place(root: &Dir, path: &str, create: bool) -> std::io::Result<(Dir, OsString)> {
    let path = Path::new(path);
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "the upload path names no file")
    })?;
    let dir = root.open_beneath(path.parent().unwrap_or(Path::new("")), create)?;
    Ok((dir, name.to_owned()))
}

/// Runs blocking file work off the runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f).await?
}

/// Streams a by-value answer's body into `path`, durably.
async fn write_body(mut answer: reqwest::Response, path: &Path) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    let mut out = tokio::fs::File::create(path).await?;
    while let Some(bytes) = answer.chunk().await? {
        out.write_all(&bytes).await?;
    }
    out.sync_all().await?;
    Ok(())
}

async fn durable_write_async(path: &Path, bytes: Vec<u8>) -> anyhow::Result<()> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || durable_write(&path, &bytes)).await??;
    Ok(())
}

/// A session id as one URL path segment.
fn url_encode(id: &str) -> String {
    id.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `GET /bits-reply/<session>`: the reply of a session, to its owner, from whichever
/// node holds it; `Range: bytes=N-` or `bytes=N-M` answered with 206.
async fn serve_reply(
    State(server): State<UploadServer>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let Some(caller) = caller(&server.auth, &headers) else {
        let mut response = StatusCode::UNAUTHORIZED.into_response();
        response
            .headers_mut()
            .insert("www-authenticate", HeaderValue::from_static("Basic realm=\"ferry\""));
        return response;
    };
    let held = match server.session_named(&caller, &id).await {
        Ok(session) => session.outcome.and_then(|o| o.reply),
        Err(_) => None,
    };
    let Some(held) = held else {
        return (StatusCode::NOT_FOUND, "no reply for this session").into_response();
    };
    let (start, end) = match text(&headers, "range").map(|r| reply_range(r, held.len)) {
        None => (0, held.len),
        Some(Some(range)) => range,
        Some(None) => {
            let mut response = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            if let Ok(value) = HeaderValue::from_str(&format!("bytes */{}", held.len)) {
                response.headers_mut().insert("content-range", value);
            }
            return response;
        }
    };
    let partial = text(&headers, "range").is_some();
    let stream = futures_util::stream::unfold(start, move |at| {
        let server = server.clone();
        let id = id.clone();
        async move {
            if at >= end {
                return None;
            }
            let want =
                u32::try_from((end - at).min(u64::from(GATHER_CHUNK))).unwrap_or(GATHER_CHUNK);
            let read = if held.node == server.cluster.node_id {
                let pieces = server.pieces.clone();
                let id = id.clone();
                tokio::task::spawn_blocking(move || read_piece(&pieces, &id, REPLY_PIECE, at, want))
                    .await
                    .map_err(std::io::Error::other)
                    .and_then(|r| r)
            } else {
                fetch_piece(&server.cluster, held.node, &id, REPLY_PIECE, at, want)
                    .await
                    .map_err(std::io::Error::other)
            };
            let read = read.and_then(|bytes| {
                if bytes.is_empty() {
                    Err(std::io::Error::other("the reply is shorter than recorded"))
                } else {
                    Ok(bytes)
                }
            });
            match read {
                Ok(bytes) => {
                    let next = at + bytes.len() as u64;
                    Some((Ok::<_, std::io::Error>(Bytes::from(bytes)), next))
                }
                // The error ends the body; the client sees a short reply and resumes.
                Err(e) => Some((Err(e), end)),
            }
        }
    });
    let mut response = axum::body::Body::from_stream(stream).into_response();
    *response.status_mut() = if partial { StatusCode::PARTIAL_CONTENT } else { StatusCode::OK };
    let map = response.headers_mut();
    map.insert("content-type", HeaderValue::from_static("application/octet-stream"));
    map.insert("accept-ranges", HeaderValue::from_static("bytes"));
    if let Ok(value) = HeaderValue::from_str(&(end - start).to_string()) {
        map.insert("content-length", value);
    }
    if partial
        && let Ok(value) =
            HeaderValue::from_str(&format!("bytes {start}-{}/{}", end.saturating_sub(1), held.len))
    {
        map.insert("content-range", value);
    }
    response
}

/// `[start, end)` of a `Range: bytes=N-` or `bytes=N-M` header over `len` bytes.
fn reply_range(header: &str, len: u64) -> Option<(u64, u64)> {
    let spec = header.trim().strip_prefix("bytes=")?;
    let (first, last) = spec.split_once('-')?;
    let first: u64 = first.trim().parse().ok()?;
    let end = match last.trim() {
        "" => len,
        last => last.parse::<u64>().ok()?.saturating_add(1).min(len),
    };
    (first < end).then_some((first, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_ranges_are_read_as_http_says() {
        assert_eq!(reply_range("bytes=0-", 10), Some((0, 10)));
        assert_eq!(reply_range("bytes=4-", 10), Some((4, 10)));
        assert_eq!(reply_range("bytes=2-5", 10), Some((2, 6)));
        assert_eq!(reply_range("bytes=2-50", 10), Some((2, 10)));
        assert_eq!(reply_range("bytes=10-", 10), None, "nothing left");
        assert_eq!(reply_range("bytes=-5", 10), None, "suffix ranges are not served");
        assert_eq!(reply_range("items=0-", 10), None);
    }

    #[test]
    fn session_ids_become_one_path_segment() {
        assert_eq!(url_encode("{ab-1}"), "%7Bab-1%7D");
        assert_eq!(url_encode("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn back_end_statuses_reach_the_client_as_application_errors() {
        let e = HandOverError::application(403, String::new());
        assert_eq!(
            (e.status, e.code, e.context),
            (StatusCode::FORBIDDEN, BitsCode::http(403), ErrorContext::RemoteApplication)
        );
        // A redirect or a 2xx that is no answer is a server error for the client.
        let e = HandOverError::application(302, String::new());
        assert_eq!((e.status, e.code), (StatusCode::INTERNAL_SERVER_ERROR, BitsCode::http(302)));
    }
}
