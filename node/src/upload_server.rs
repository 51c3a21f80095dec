//! The BITS upload server (bits-spec §5, issue 7): `BITS_POST /bits/<path>` (also `POST`
//! with `X-Http-Method-Override: BITS_POST`) on the API listener of every node.
//!
//! Sessions live in the replicated queue ([`UploadCommand`]); the bytes of a fragment
//! stay on the node that received it, one file per piece under
//! `<data-dir>/upload-pieces/<session>/<offset>`, made durable before the fragment is
//! recorded. Close-Session assembles the pieces into `<upload root>/<path>` (a temporary
//! name, then a rename) when the file is complete, and discards them otherwise.
//!
//! A session may go on at any node (server farm): Close-Session gathers the pieces other
//! nodes hold over the peer link ([`GATHER_CHUNK`] bytes per call). Not yet: the back
//! end (upload-reply).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use ferry_coordinator::{Auth, Cluster, ReadAt};
use ferry_protocol::command::{Command, Proposal, Reply};
use ferry_protocol::queue::{UploadCommand, UploadSession, check_upload_path};
use ferry_protocol::upload::{
    self, FragmentRange, FragmentRefusal, IDENTITY, METHOD, PacketType, header, plan_fragment,
};
use ferry_protocol::{BitsCode, Caller, ErrorContext};

use crate::service::NodeCluster;

/// Most bytes of a piece fetched from another node in one call.
pub(crate) const GATHER_CHUNK: u32 = 4 * 1024 * 1024;

/// What the upload server needs.
#[derive(Clone)]
pub(crate) struct UploadServer {
    pub(crate) cluster: NodeCluster,
    pub(crate) auth: Arc<Auth>,
    /// Where completed uploads go.
    pub(crate) root: PathBuf,
    /// Where received pieces wait.
    pub(crate) pieces: PathBuf,
    /// Largest file accepted.
    pub(crate) max_size: u64,
    /// Whether an upload may replace an existing file.
    pub(crate) allow_overwrite: bool,
}

/// The routes, with their own body limit (`max_fragment` bytes).
pub(crate) fn router(server: UploadServer, max_fragment: usize) -> axum::Router {
    axum::Router::new()
        .route("/bits/{*path}", axum::routing::any(handle))
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
    let value = text(headers, "authorization")?;
    let (scheme, rest) = value.split_once(' ')?;
    let token = if scheme.eq_ignore_ascii_case("bearer") {
        rest.trim().to_owned()
    } else if scheme.eq_ignore_ascii_case("basic") {
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        decoded.split_once(':')?.1.to_owned()
    } else {
        return None;
    };
    auth.caller(&token).cloned()
}

async fn handle(
    State(server): State<UploadServer>,
    method: Method,
    UrlPath(path): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
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
        Some(PacketType::Fragment) => server.fragment(&caller, &headers, &body).await,
        Some(PacketType::CloseSession) => server.end(&caller, &headers, true).await,
        Some(PacketType::CancelSession) => server.end(&caller, &headers, false).await,
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
            Err(_) => Err(refuse(StatusCode::SERVICE_UNAVAILABLE, BitsCode::E_UNEXPECTED, &[])),
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
        if self.cluster.read_barrier(ReadAt::Linearizable).await.is_err() {
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
        if !self.allow_overwrite && self.root.join(path).exists() {
            return refuse(StatusCode::CONFLICT, BitsCode::E_ACCESSDENIED, &[]);
        }
        let session = format!("{{{}}}", uuid::Uuid::new_v4());
        let command = UploadCommand::Create { session: session.clone(), path: path.to_owned() };
        if let Err(refused) = self.propose(caller, command).await {
            return refused;
        }
        ack(
            StatusCode::OK,
            &[
                (header::PROTOCOL, protocol.to_owned()),
                (header::SESSION_ID, session),
                (header::ACCEPT_ENCODING, IDENTITY.to_owned()),
            ],
        )
    }

    async fn fragment(&self, caller: &Caller, headers: &HeaderMap, body: &Bytes) -> Response {
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
            Ok(Reply::Fragment(done)) => ack(
                StatusCode::OK,
                &[echo, (header::RECEIVED_CONTENT_RANGE, done.next.to_string())],
            ),
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
    async fn end(&self, caller: &Caller, headers: &HeaderMap, close: bool) -> Response {
        let session = match self.session(caller, headers).await {
            Ok(session) => session,
            Err(refused) => return refused,
        };
        let echo = (header::SESSION_ID, session.id.clone());
        if close
            && session.complete()
            && let Err(e) = self.assemble(&session).await
        {
            tracing::warn!(session = %session.id, error = %e, "cannot assemble an upload");
            // Transient for the client (5xx): it sends Close-Session again.
            return refuse(StatusCode::SERVICE_UNAVAILABLE, BitsCode::E_UNEXPECTED, &[echo]);
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
    /// Joins a complete session's pieces, local or held by other members, into its
    /// destination under the upload root (a temporary name, then a rename).
    async fn assemble(&self, session: &UploadSession) -> anyhow::Result<()> {
        use tokio::io::AsyncWriteExt;
        let destination = self.root.join(&session.path);
        let dir = destination.parent().ok_or_else(|| anyhow::anyhow!("no parent"))?.to_owned();
        tokio::fs::create_dir_all(&dir).await?;
        let temporary = dir.join(format!(".{}.ferry-upload", dir_name(&session.id)));
        let mut out = tokio::fs::File::create(&temporary).await?;
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
                let bytes = self
                    .cluster
                    .fetch_piece(piece.node, &session.id, piece.offset, from, want)
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
        tokio::fs::rename(&temporary, &destination).await?;
        tokio::fs::File::open(&dir).await?.sync_all().await?;
        Ok(())
    }
}

/// Removes, every minute, the pieces of sessions that ended (closed, cancelled or timed
/// out on any node): each node holds pieces only while their session lives.
pub(crate) async fn sweep_pieces(cluster: NodeCluster, pieces: PathBuf) {
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
