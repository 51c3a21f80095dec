//! Handing a complete session's file over: placed below the upload root, or given to
//! the back end (by reference or by value) with its reply kept on this node.

use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use ferry_protocol::queue::{HeldReply, UploadCommand, UploadOutcome, UploadSession};
use ferry_protocol::upload::{self, header, notification};
use ferry_protocol::{BitsCode, Caller, ErrorContext};

use super::pieces::{
    GATHER_CHUNK, dir_name, durable_write_async, fetch_piece, piece_path, received_path,
};
use super::{DATA_FILE, REPLY_PIECE, UploadServer, ack, text};
use crate::config::BackendMode;
use crate::fs::dir::Dir;

impl UploadServer {
    /// Hands a complete session's file over, once: places it, or gives it to the back
    /// end and keeps the reply. Returns the reply URL, if there is one.
    pub(super) async fn hand_over(
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
    /// in `dir` (a temporary name beside it, then a rename). When every piece came to
    /// this node, its received file is the upload, durable already: it is linked into
    /// place (copied where `dir` is on another file system).
    async fn assemble(
        &self,
        session: &UploadSession,
        dir: Dir,
        name: OsString,
    ) -> crate::error::Result<()> {
        use std::io::Write as _;
        let dir = Arc::new(dir);
        let temporary: OsString = format!(".{}.ferry-upload", dir_name(&session.id)).into();
        let received = received_path(&self.pieces, &session.id);
        let all_here = !session.pieces.is_empty()
            && session.pieces.iter().all(|p| p.node == self.cluster.node_id);
        if all_here {
            let (dir, temporary, name, received) =
                (dir.clone(), temporary.clone(), name.clone(), received.clone());
            let linked = blocking(move || {
                dir.remove(&temporary)?;
                if !dir.link_from(&received, &temporary)? {
                    return Ok(false);
                }
                dir.rename(&temporary, &name)?;
                dir.sync()?;
                Ok(true)
            })
            .await?;
            if linked {
                return Ok(());
            }
        }
        let mut out = {
            let (dir, temporary) = (dir.clone(), temporary.clone());
            blocking(move || {
                dir.remove(&temporary)?;
                Ok(dir.create_new(&temporary, 0o644)?)
            })
            .await?
        };
        for piece in session.pieces.clone() {
            if piece.node == self.cluster.node_id {
                let received = received.clone();
                out = blocking(move || {
                    copy_range(&received, piece.offset, piece.len, &mut out)?;
                    Ok(out)
                })
                .await?;
                continue;
            }
            let mut from = 0u64;
            while from < piece.len {
                let want = u32::try_from((piece.len - from).min(u64::from(GATHER_CHUNK)))?;
                let bytes =
                    fetch_piece(&self.cluster, piece.node, &session.id, piece.offset, from, want)
                        .await?;
                if bytes.len() != want as usize {
                    return Err(crate::Error::Unavailable(format!(
                        "node {} sent {} of {want} bytes of the piece at {}",
                        piece.node,
                        bytes.len(),
                        piece.offset
                    )));
                }
                out = blocking(move || {
                    out.write_all(&bytes)?;
                    Ok(out)
                })
                .await?;
                from += u64::from(want);
            }
        }
        blocking(move || {
            out.sync_all()?;
            drop(out);
            dir.rename(&temporary, &name)?;
            Ok(dir.sync()?)
        })
        .await
    }
}

/// Appends bytes `offset..offset + len` of `from` to `out` (in the kernel where it can).
fn copy_range(
    from: &Path,
    offset: u64,
    len: u64,
    out: &mut std::fs::File,
) -> crate::error::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut input = std::fs::File::open(from)?;
    input.seek(SeekFrom::Start(offset))?;
    let copied = std::io::copy(&mut input.take(len), out)?;
    if copied != len {
        return Err(crate::Error::Unavailable(format!(
            "the piece at {offset} is {copied} bytes, not {len}"
        )));
    }
    Ok(())
}

/// Why a complete upload could not be handed over, as the client is told.
pub(super) struct HandOverError {
    status: StatusCode,
    code: BitsCode,
    context: ErrorContext,
    detail: String,
}

impl HandOverError {
    /// This node failed (disk, peers): 503, the client tries again.
    fn local(e: crate::error::Error) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: BitsCode::E_UNEXPECTED,
            context: ErrorContext::RemoteFile,
            detail: format!("{e:#}"),
        }
    }

    /// The back end failed with `status` (the client retries or not by it).
    pub(super) fn application(status: u16, detail: String) -> Self {
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
pub(super) fn place(root: &Dir, path: &str, create: bool) -> std::io::Result<(Dir, OsString)> {
    let path = Path::new(path);
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "the upload path names no file")
    })?;
    let dir = root.open_beneath(path.parent().unwrap_or(Path::new("")), create)?;
    Ok((dir, name.to_owned()))
}

/// Runs blocking file work off the runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> crate::error::Result<T> + Send + 'static,
) -> crate::error::Result<T> {
    tokio::task::spawn_blocking(f).await?
}

/// Streams a by-value answer's body into `path`, durably.
async fn write_body(mut answer: reqwest::Response, path: &Path) -> crate::error::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
