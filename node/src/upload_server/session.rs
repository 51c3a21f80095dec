//! Create-Session, Fragment, Ping, Cancel-Session and Close-Session: the upload
//! protocol's packets, recorded in the replicated queue.

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use ferry_coordinator::ReadAt;
use ferry_protocol::command::{Command, Proposal, Reply};
use ferry_protocol::queue::{UploadCommand, UploadSession, check_upload_path};
use ferry_protocol::upload::{
    self, FragmentRange, FragmentRefusal, IDENTITY, header, plan_fragment,
};
use ferry_protocol::{BitsCode, Caller};

use super::handover::place;
use super::pieces::{dir_name, write_received};
use super::{UploadServer, ack, refuse, text};
use crate::fs::dir::is_symlink_refusal;

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

    pub(super) async fn fragment(
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
            let (pieces, id, offset) = (self.pieces.clone(), session.id.clone(), plan.offset);
            let stored =
                tokio::task::spawn_blocking(move || write_received(&pieces, &id, offset, &bytes))
                    .await;
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
