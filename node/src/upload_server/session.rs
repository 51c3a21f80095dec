//! Create-Session, Fragment, Ping, Cancel-Session and Close-Session: the upload
//! protocol's packets, recorded in the replicated queue.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use ferry_coordinator::ReadAt;
use ferry_protocol::command::{Command, Proposal, Reply};
use ferry_protocol::queue::{UploadCommand, UploadSession, check_upload_path};
use ferry_protocol::upload::{
    self, FragmentPlan, FragmentRange, FragmentRefusal, IDENTITY, header, plan_fragment,
};
use ferry_protocol::{BitsCode, Caller};
use futures_util::StreamExt as _;

use super::ahead;
use super::handover::place;
use super::pieces::{Received, dir_name};
use super::{UploadServer, ack, refuse, text};
use crate::fs::dir::is_symlink_refusal;

/// Bytes of a fragment's body gathered before they are written.
const WRITE_CHUNK: usize = 1024 * 1024;

impl UploadServer {
    pub(super) async fn propose(
        &self,
        caller: &Caller,
        command: UploadCommand,
    ) -> Result<Reply, Response> {
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
    pub(super) async fn session(
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
    pub(super) async fn session_named(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<UploadSession, Response> {
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

    pub(super) async fn create(
        &self,
        caller: &Caller,
        path: &str,
        headers: &HeaderMap,
    ) -> Response {
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

    /// A Fragment: its bytes are written at their offset as they arrive (those the
    /// session has are skipped), made durable, then recorded; a fragment ahead of its
    /// turn behind another in flight here is written at once and recorded after it
    /// (see `ahead`).
    pub(super) async fn fragment(
        &self,
        caller: &Caller,
        target: &str,
        headers: &HeaderMap,
        body: Body,
        max_fragment: usize,
    ) -> Response {
        let checked = match self.session(caller, headers).await {
            Ok(session) => match checked_range(headers, max_fragment) {
                Ok(range) => Ok((session, range)),
                Err((status, code)) => {
                    Err(refuse(status, code, &[(header::SESSION_ID, session.id.clone())]))
                }
            },
            Err(refused) => Err(refused),
        };
        let (session, range) = match checked {
            Ok(checked) => checked,
            Err(refused) => {
                // The body is read first (up to the limit): a client still sending it
                // would see its connection closed, not the answer.
                super::drain(body, max_fragment).await;
                return refused;
            }
        };
        let echo = (header::SESSION_ID, session.id.clone());
        // Until it leaves: the fragments after it may wait for it (see `ahead`).
        let _entered = self.in_flight.enter(&session.id, range.start, range.end + 1);
        let mut plan = plan_fragment(session.next, session.total, range, self.max_size);
        // Where the body goes (the bytes from `skip` on, at `offset`), and whether the
        // fragment is ahead of its turn.
        let (skip, offset, ahead) = match &plan {
            Ok(plan) => (plan.skip, plan.offset, false),
            Err(FragmentRefusal::Gap { next })
                if self.in_flight.wait_for_predecessor(&session.id, *next, range.start).await =>
            {
                (0, range.start, true)
            }
            // Refused: the body is read (the connection is kept) and nothing written.
            Err(_) => (range.len(), range.start, false),
        };
        if let Err(refused) = self.receive(&session.id, body, range.len(), skip, offset).await {
            return refused;
        }
        if ahead {
            // Written ahead of its turn: recorded once the fragments before it are.
            tracing::debug!(session = %session.id, start = range.start, "a fragment waits for its turn");
            plan = match self.wait_turn(caller, &session.id, range).await {
                Ok(plan) => plan,
                Err(refused) => return refused,
            };
        }
        let plan = match plan {
            Ok(plan) => plan,
            Err(refusal) => return refused_fragment(refusal, echo),
        };
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

    /// Reads a fragment's `body` of `len` bytes, writing those from `skip` on at
    /// `offset` of the session's received file as they come (one write in flight while
    /// the next bytes arrive), and makes them durable. An error Ack if the body is not
    /// `len` bytes or cannot be written.
    async fn receive(
        &self,
        session: &str,
        body: Body,
        len: u64,
        skip: u64,
        offset: u64,
    ) -> Result<(), Response> {
        let echo = || [(header::SESSION_ID, session.to_owned())];
        let failed = |e: &dyn std::fmt::Display| {
            tracing::warn!(session, error = %e, "cannot store an upload fragment");
            refuse(StatusCode::INTERNAL_SERVER_ERROR, BitsCode::E_UNEXPECTED, &echo())
        };
        let mut file: Option<Arc<Received>> = None;
        let mut writing: Option<tokio::task::JoinHandle<std::io::Result<()>>> = None;
        // Frames gathered for the next write (not copied: written one after another).
        let (mut frames, mut gathered) = (Vec::<Bytes>::new(), 0usize);
        // Body bytes seen; where the first gathered byte goes in the file.
        let (mut seen, mut at) = (0u64, offset);
        let mut stream = body.into_data_stream();
        loop {
            let frame = match stream.next().await {
                Some(Ok(frame)) => Some(frame),
                Some(Err(e)) => {
                    tracing::info!(session, error = %e, "a fragment's body ended early");
                    return Err(refuse(StatusCode::BAD_REQUEST, BitsCode::E_INVALIDARG, &echo()));
                }
                None => None,
            };
            if let Some(frame) = &frame {
                let from = seen;
                seen += frame.len() as u64;
                if seen > len {
                    return Err(refuse(StatusCode::BAD_REQUEST, BitsCode::E_INVALIDARG, &echo()));
                }
                // The part of the frame at or after `skip`.
                let keep = usize::try_from(skip.saturating_sub(from)).unwrap_or(usize::MAX);
                if keep < frame.len() {
                    gathered += frame.len() - keep;
                    frames.push(frame.slice(keep..));
                }
            }
            let last = frame.is_none();
            if gathered >= WRITE_CHUNK || (last && gathered > 0) {
                if let Some(previous) = writing.take() {
                    previous.await.map_err(|e| failed(&e))?.map_err(|e| failed(&e))?;
                }
                let received = match &file {
                    Some(file) => file.clone(),
                    None => {
                        let (pieces, id) = (self.pieces.clone(), session.to_owned());
                        let opened =
                            tokio::task::spawn_blocking(move || Received::open(&pieces, &id))
                                .await
                                .map_err(|e| failed(&e))?
                                .map_err(|e| failed(&e))?;
                        file.insert(Arc::new(opened)).clone()
                    }
                };
                let (bytes, place) = (std::mem::take(&mut frames), at);
                at += std::mem::take(&mut gathered) as u64;
                writing =
                    Some(tokio::task::spawn_blocking(move || received.write_all_at(&bytes, place)));
            }
            if last {
                break;
            }
        }
        if seen != len {
            return Err(refuse(StatusCode::BAD_REQUEST, BitsCode::E_INVALIDARG, &echo()));
        }
        if let Some(previous) = writing.take() {
            previous.await.map_err(|e| failed(&e))?.map_err(|e| failed(&e))?;
        }
        if let Some(file) = file {
            tokio::task::spawn_blocking(move || file.sync())
                .await
                .map_err(|e| failed(&e))?
                .map_err(|e| failed(&e))?;
        }
        Ok(())
    }

    /// Waits until the fragments before `range` (in flight on this node) are recorded;
    /// then the plan for `range` as the session stands. A refusal if one of them
    /// failed (a gap), or 503 after [`ahead::WAIT`].
    async fn wait_turn(
        &self,
        caller: &Caller,
        session: &str,
        range: FragmentRange,
    ) -> Result<Result<FragmentPlan, FragmentRefusal>, Response> {
        let deadline = tokio::time::Instant::now() + ahead::WAIT;
        loop {
            let mut left = self.in_flight.watch();
            let now = self.session_named(caller, session).await?;
            let plan = plan_fragment(now.next, now.total, range, self.max_size);
            match plan {
                Err(FragmentRefusal::Gap { next })
                    if self.in_flight.may_wait(session, next, range.start) =>
                {
                    if tokio::time::timeout_at(deadline, left.changed()).await.is_err() {
                        let echo = (header::SESSION_ID, session.to_owned());
                        return Err(refuse(
                            StatusCode::SERVICE_UNAVAILABLE,
                            BitsCode::E_UNEXPECTED,
                            &[echo],
                        ));
                    }
                }
                other => return Ok(other),
            }
        }
    }

    /// Close-Session (`close`) or Cancel-Session.
    pub(super) async fn end(
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

/// The fragment's range from its headers, if they are acceptable: `Content-Range` (and
/// `Content-Length`, when given, its length), at most `max_fragment` bytes, no content
/// encoding but `identity`; else the refusal's status and code.
fn checked_range(
    headers: &HeaderMap,
    max_fragment: usize,
) -> Result<FragmentRange, (StatusCode, BitsCode)> {
    let range = text(headers, header::CONTENT_RANGE).and_then(|r| r.parse::<FragmentRange>().ok());
    let length = text(headers, header::CONTENT_LENGTH).and_then(|l| l.trim().parse().ok());
    let Some(range) = range.filter(|r| length.is_none_or(|l: u64| l == r.len())) else {
        return Err((StatusCode::BAD_REQUEST, BitsCode::E_INVALIDARG));
    };
    if range.len() > max_fragment as u64 {
        return Err((StatusCode::PAYLOAD_TOO_LARGE, BitsCode::E_INVALIDARG));
    }
    if text(headers, header::CONTENT_ENCODING).is_some_and(|e| !e.eq_ignore_ascii_case("identity"))
    {
        return Err((StatusCode::BAD_REQUEST, BitsCode::E_INVALIDARG));
    }
    Ok(range)
}

/// The Ack refusing a fragment for `refusal` (`echo`: the session id header).
fn refused_fragment(refusal: FragmentRefusal, echo: (&'static str, String)) -> Response {
    match refusal {
        FragmentRefusal::Gap { next } => {
            let next = (header::RECEIVED_CONTENT_RANGE, next.to_string());
            refuse(StatusCode::RANGE_NOT_SATISFIABLE, BitsCode::BG_E_INVALID_RANGE, &[echo, next])
        }
        FragmentRefusal::TooLarge { .. } => {
            refuse(StatusCode::PAYLOAD_TOO_LARGE, BitsCode::BG_E_TOO_LARGE, &[echo])
        }
        FragmentRefusal::TotalChanged { .. } => {
            refuse(StatusCode::BAD_REQUEST, BitsCode::E_INVALIDARG, &[echo])
        }
    }
}
