//! One transfer run of an upload or upload-reply job on its home node: the client side
//! of the BITS upload protocol (bits-spec §5, [`ferry_protocol::upload`]).
//!
//! A fresh job sends Ping and Create-Session and records the session through Raft
//! before any byte leaves, so a run that starts after a crash (or on a restarted node)
//! continues the same session. It first sends one byte at the recorded offset: the
//! Ack's `BITS-Received-Content-Range` tells where the server really is, and only what
//! it lacks is sent again. Fragments follow on the run's HTTP/1.1 client (kept-alive
//! connections, reopened only after a failure): one at a time, or up to two more in
//! flight where the server's Acks allow it (`Ferry-Fragments-Ahead`, a Ferry server);
//! each Ack is recorded while the next fragment travels, which was read from disk
//! meanwhile. The
//! final Ack of an upload-reply job names the reply, which is downloaded with ranges
//! into a hidden file beside the reply file (renamed by Complete). Then
//! Close-Session, retried on 5xx, and the job is TRANSFERRED.
//!
//! The local file must not change while it uploads (`BG_E_LOCAL_FILE_CHANGED`): its
//! size and modification time are recorded with the session and checked before every
//! fragment. `BITS-Host-Id` sends the session's later packets (and the job's
//! credentials and custom headers) to that host, back to the original one once it
//! failed for `BITS-Host-Id-Fallback-Timeout` seconds — only if the host has the
//! scheme and registrable domain of the job's URL or is listed in
//! `transfer.trusted_host_ids`, and the egress policy allows it; any other host id is
//! ignored (logged), and the packets stay on the job's server. Every packet and the
//! reply download go through the run's egress connector: a reply URL on a refused
//! address fails the job with `BG_E_BLOCKED_BY_POLICY`.

mod ack;
mod host;
mod reply;
mod source;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use ferry_protocol::job::{JobError, LocalStamp};
use ferry_protocol::transfer::EngineReport;
use ferry_protocol::upload::{self, FragmentRange, PacketType, header as bits};
use ferry_protocol::{BitsCode, ErrorContext, Job, JobState, JobType};
use futures_util::StreamExt as _;
use futures_util::stream::FuturesOrdered;
use reqwest::header::{self};
use reqwest::{Method, Response, StatusCode};

use super::Run;
use super::failure::{Failure, Stop};
use super::fetch::blocking;
use super::http::{HttpSession, SendError};
use super::local;

use self::ack::{Ack, changed_file, local_error, protocol_error, stamp};
pub(crate) use self::host::HostIdRule;
use self::host::{Target, with_host};
use self::source::Source;

/// Bytes per fragment at first (a server answering 413 gets smaller ones).
const FRAGMENT_SIZE: u64 = 8 * 1024 * 1024;
/// Smallest fragment sent after 413s.
const MIN_FRAGMENT_SIZE: u64 = 64 * 1024;
/// Times Close-Session is sent again after a 5xx within one run.
const CLOSE_ATTEMPTS: u32 = 4;
/// Most fragments sent beyond the one not yet acknowledged, whatever a server allows.
const MAX_AHEAD: usize = 4;
/// How often a run creates a new session after the server lost the old one.
const MAX_NEW_SESSIONS: u32 = 3;

impl Run {
    /// Uploads the file (and receives the reply); returns why it stopped if it did not
    /// finish.
    pub(crate) async fn upload(&self) -> Result<(), Stop> {
        let file = self.job.files().first().cloned().ok_or(Stop::Stale)?;
        let path = file.local_path.clone();
        let source = {
            let (sandboxes, owner) = (self.settings.sandboxes.clone(), self.job.owner().clone());
            let path = Path::new(&path).to_path_buf();
            blocking(move || local::open_source(&sandboxes, &owner, &path)).await
        }
        .map_err(|e| local_error(&e, &format!("cannot open {path} to upload it")))?;
        let source = Source::new(source);
        let now = stamp(source.file()).map_err(|e| local_error(&e, "cannot read the file"))?;
        let mut pending = if self.job.state() == JobState::Connecting {
            vec![EngineReport::Connected]
        } else {
            vec![]
        };
        let mut new_sessions = 0;
        loop {
            let state = self.reporter.read(self.job.id(), self.run, |job| job.upload().clone())?;
            if state.local.is_some_and(|recorded| recorded != now) {
                return Err(changed_file(&path));
            }
            let mut target = Target::new(&file.remote_url, &state, HostIdRule::of(&self.settings));
            if let Some(host) = &target.host {
                self.http.trust_origin_of(host);
            }
            let Some(session) = state.session else {
                // Recorded before any byte is sent; the next turn reads it back.
                let created = self.create_session(&mut target, now).await?;
                self.send_reports(&mut pending, vec![created]).await?;
                continue;
            };
            let acked = self.reporter.read(self.job.id(), self.run, |job| {
                job.files().first().map_or(0, |f| f.progress.bytes_transferred)
            })?;
            match self
                .send_fragments(&mut target, &session, &source, now, acked, &path, &mut pending)
                .await
            {
                Err(Stop::RestartFile(why)) if new_sessions < MAX_NEW_SESSIONS => {
                    new_sessions += 1;
                    tracing::info!(job = %self.job.id(), %why, "starting the upload over in a new session");
                    self.send_reports(&mut pending, vec![EngineReport::RestartFile { file: 0 }])
                        .await?;
                    continue;
                }
                Err(Stop::RestartFile(why)) => {
                    return Err(Failure::protocol(BitsCode::BG_E_SESSION_NOT_FOUND, why, 0).into());
                }
                other => other?,
            }
            if self.job.job_type() == JobType::UploadReply {
                self.receive_reply(&mut pending).await?;
            }
            self.close_session(&mut target, &session).await?;
            return self.send_reports(&mut pending, vec![EngineReport::UploadClosed]).await;
        }
    }

    /// Sends the reports waiting in `pending`, then `more`, as one command.
    async fn send_reports(
        &self,
        pending: &mut Vec<EngineReport>,
        more: Vec<EngineReport>,
    ) -> Result<(), Stop> {
        let mut reports = std::mem::take(pending);
        reports.extend(more);
        if reports.is_empty() {
            return Ok(());
        }
        self.reporter.report(self.job.id(), self.run, reports).await
    }

    /// One packet of the session, `body` its bytes; answered with the server's Ack.
    async fn packet(
        &self,
        target: &mut Target,
        packet: PacketType,
        headers: Vec<(&'static str, String)>,
        body: Bytes,
    ) -> Result<Ack, Stop> {
        let mut url = target.url().to_owned();
        let mut sent = send_packet(&self.http, &url, packet, &headers, body.clone()).await;
        if sent.as_ref().is_err_and(|e| e.is_refused()) && url != target.original {
            // A host id whose name resolves to a refused address: nothing was sent.
            target.refuse_host();
            url = target.url().to_owned();
            sent = send_packet(&self.http, &url, packet, &headers, body).await;
        }
        answer(target, packet, &url, sent).await
    }

    /// Ping, then Create-Session; the report that records the session.
    async fn create_session(
        &self,
        target: &mut Target,
        local: LocalStamp,
    ) -> Result<EngineReport, Stop> {
        let url = target.url().to_owned();
        let ping = self.packet(target, PacketType::Ping, Vec::new(), Bytes::new()).await?;
        if !ping.ok() {
            return Err(ping.failure(PacketType::Ping, &url).into());
        }
        let offer = vec![(bits::SUPPORTED_PROTOCOLS, upload::PROTOCOL_GUID.to_owned())];
        let ack = self.packet(target, PacketType::CreateSession, offer, Bytes::new()).await?;
        if !ack.ok() {
            return Err(ack.failure(PacketType::CreateSession, &url).into());
        }
        let chosen = ack.header(bits::PROTOCOL).unwrap_or_default();
        if !chosen.trim().eq_ignore_ascii_case(upload::PROTOCOL_GUID) {
            return Err(Failure::fatal(JobError {
                context: ErrorContext::RemoteFile,
                code: BitsCode::BG_E_CLIENT_SERVER_PROTOCOL_MISMATCH,
                detail: format!("{url}: the server chose protocol {chosen:?}"),
                file_index: Some(0),
                protocol: Some("http".into()),
            })
            .into());
        }
        let session = ack
            .header(bits::SESSION_ID)
            .map(str::trim)
            .filter(|id| !id.is_empty() && id.len() <= upload::MAX_SESSION_ID_LEN)
            .ok_or_else(|| {
                protocol_error(format!("{url}: Create-Session Ack without a valid session id"))
            })?
            .to_owned();
        let host_id = ack
            .header(bits::HOST_ID)
            .map(str::trim)
            .filter(|h| !h.is_empty() && h.len() <= 300 && with_host(&url, h).is_some())
            .map(str::to_owned);
        let host_fallback_secs = ack
            .header(bits::HOST_ID_FALLBACK_TIMEOUT)
            .and_then(|t| t.trim().parse::<u64>().ok())
            .filter(|t| *t != u64::from(u32::MAX));
        tracing::info!(job = %self.job.id(), %session, host = ?host_id, "upload session created");
        Ok(EngineReport::UploadSession { session, host_id, host_fallback_secs, local })
    }

    /// Sends the file from `acked` on; every Ack is recorded, the last one before this
    /// returns, the others while the next fragment travels (a crash may thus lose the
    /// record of one Ack: the next run's one-byte question finds where the server is).
    /// A server whose Acks name [`bits::FRAGMENTS_AHEAD`] gets that many fragments
    /// (at most [`MAX_AHEAD`]) beyond the one not yet acknowledged, on other
    /// connections; the first answer out of the ordinary ends that for the run: the
    /// fragments in flight are awaited, and the run goes on one fragment at a time
    /// from what the server said.
    #[allow(clippy::too_many_arguments)]
    async fn send_fragments(
        &self,
        target: &mut Target,
        session: &str,
        source: &Source,
        local: LocalStamp,
        acked: u64,
        path: &str,
        pending: &mut Vec<EngineReport>,
    ) -> Result<(), Stop> {
        let total = local.size;
        if total == 0 {
            return Err(Failure::fatal(JobError {
                context: ErrorContext::LocalFile,
                code: BitsCode::E_INVALIDARG,
                detail: format!(
                    "{path} is empty: the BITS upload protocol cannot send an empty file"
                ),
                file_index: Some(0),
                protocol: None,
            })
            .into());
        }
        let mut next = acked;
        let mut size = FRAGMENT_SIZE;
        // A resumed session: one byte asks the server where it really is.
        let mut probe = acked > 0;
        let mut first_answer = true;
        // Acks that moved nothing in a row: a server that never advances is broken.
        let mut stalled = 0;
        let reply_wanted = self.job.job_type() == JobType::UploadReply;
        let mut reply_url = None;
        // The fragment read while the last one travelled: its offset and bytes.
        let mut ahead: Option<(u64, Bytes)> = None;
        // Fragments sent and not yet answered, oldest first; where the last one ends.
        let mut flights = FuturesOrdered::new();
        let mut sent_to = next;
        // Fragments the server takes beyond the unacknowledged one; `None` once the run
        // went back to one at a time.
        let mut allowed: Option<usize> = Some(0);
        loop {
            while flights.len() <= allowed.unwrap_or(0) {
                let start = if flights.is_empty() { next } else { sent_to };
                let done = start >= total;
                if !flights.is_empty() && (done || probe) {
                    break;
                }
                if done && (!reply_wanted || reply_url.is_some() || self.has_reply_url()?) {
                    return self.send_reports(pending, Vec::new()).await;
                }
                // A final Ack lost in a crash is asked for again with the last byte.
                let start = if done { total - 1 } else { start };
                let len = if probe || done { 1 } else { size.min(total - start) };
                let current =
                    stamp(source.file()).map_err(|e| local_error(&e, "cannot read the file"))?;
                if current != local {
                    return Err(changed_file(path));
                }
                let bytes = match ahead.take() {
                    Some((at, bytes)) if at == start && bytes.len() as u64 == len => bytes,
                    _ => source.read_at(start, len).await?,
                };
                let range = FragmentRange::new(start, len, total).ok_or_else(|| {
                    protocol_error(format!("a fragment at {start} of {total} bytes"))
                })?;
                self.http.throttle.take(bytes.len()).await;
                flights.push_back(self.fragment(target.url().to_owned(), session, range, bytes));
                sent_to = start + len;
            }
            // While the oldest fragment travels: the last Acks' record is written (one
            // write at a time, in order) and the next fragment is read.
            let recording = std::mem::take(pending);
            let record = async {
                if recording.is_empty() {
                    return Ok(());
                }
                self.reporter.report(self.job.id(), self.run, recording).await
            };
            let read_ahead = async {
                if probe || sent_to >= total {
                    return None;
                }
                let len = size.min(total - sent_to);
                source.read_at(sent_to, len).await.ok().map(|bytes| (sent_to, bytes))
            };
            let (answered, recorded, read) = tokio::join!(flights.next(), record, read_ahead);
            recorded?;
            ahead = read;
            let Some(Flight { url, range, sent }) = answered else { continue };
            let (start, len) = (range.start, range.len());
            if sent.as_ref().is_err_and(|e| e.is_refused()) && url != target.original {
                // A host id whose name resolves to a refused address: nothing was sent.
                target.refuse_host();
                drain(target, &mut flights).await;
                (allowed, sent_to) = (None, next);
                continue;
            }
            let ack = answer(target, PacketType::Fragment, &url, sent).await;
            let in_order = ack.as_ref().is_ok_and(|a| a.ok() && a.received() == Some(start + len));
            if !in_order && !flights.is_empty() {
                tracing::info!(job = %self.job.id(), session, start, "a fragment answered out of the ordinary with more in flight: sending one at a time from here");
                drain(target, &mut flights).await;
                allowed = None;
            }
            let ack = ack?;
            if in_order && let Some(more) = allowed.as_mut() {
                *more = ack
                    .header(bits::FRAGMENTS_AHEAD)
                    .and_then(|n| n.trim().parse::<usize>().ok())
                    .map_or(0, |n| n.min(MAX_AHEAD));
            }
            let status = ack.status;
            if ack.error_code() == Some(BitsCode::BG_E_SESSION_NOT_FOUND.0) {
                return Err(Stop::RestartFile(format!(
                    "{url}: the server lost upload session {session}"
                )));
            }
            if status == StatusCode::PAYLOAD_TOO_LARGE
                && ack.error_code() != Some(BitsCode::BG_E_TOO_LARGE.0)
                && len > MIN_FRAGMENT_SIZE
            {
                size = (len / 2).max(MIN_FRAGMENT_SIZE);
                sent_to = next;
                continue;
            }
            let gap = status == StatusCode::RANGE_NOT_SATISFIABLE;
            if !ack.ok() && !gap {
                return Err(ack.failure(PacketType::Fragment, &url).into());
            }
            let server_next = ack.received().ok_or_else(|| {
                protocol_error(format!(
                    "{url}: a Fragment Ack without {}",
                    bits::RECEIVED_CONTENT_RANGE
                ))
            })?;
            if server_next > total {
                return Err(protocol_error(format!(
                    "{url}: the server expects byte {server_next} of a {total}-byte file"
                )));
            }
            if first_answer && probe {
                // Where the server was before the one-byte question: it acknowledges
                // whole fragments, which end where a recorded offset does, so it was
                // either at the recorded byte (now one further) or beyond the byte
                // (which was then sent again).
                let (server, resent) =
                    if server_next == acked + 1 { (acked, 0) } else { (server_next, 1) };
                tracing::info!(job = %self.job.id(), session, recorded = acked, server, resent, "upload resumed");
            }
            first_answer = false;
            probe = false;
            reply_url = ack
                .header(bits::REPLY_URL)
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned);
            if server_next == total && reply_wanted && reply_url.is_none() && ack.ok() {
                return Err(protocol_error(format!(
                    "{url}: the final Ack of an upload-reply job names no {}",
                    bits::REPLY_URL
                )));
            }
            if server_next <= start && !gap {
                stalled += 1;
                if stalled >= 3 {
                    return Err(protocol_error(format!(
                        "{url}: the server keeps expecting byte {server_next} after receiving it"
                    )));
                }
            } else {
                stalled = 0;
            }
            next = server_next;
            if !in_order {
                sent_to = next;
            }
            pending.push(EngineReport::UploadAcked { next, reply_url: reply_url.clone() });
            if next == total && !reply_wanted {
                return self.send_reports(pending, Vec::new()).await;
            }
        }
    }

    /// Sends the fragment `range` of the file, `bytes`, to `url`.
    fn fragment<'a>(
        &'a self,
        url: String,
        session: &str,
        range: FragmentRange,
        bytes: Bytes,
    ) -> impl Future<Output = Flight> + Send + 'a {
        let headers = vec![
            (bits::SESSION_ID, session.to_owned()),
            (header::CONTENT_RANGE.as_str(), range.to_string()),
        ];
        async move {
            let sent = send_packet(&self.http, &url, PacketType::Fragment, &headers, bytes).await;
            Flight { url, range, sent }
        }
    }

    fn has_reply_url(&self) -> Result<bool, Stop> {
        self.reporter.read(self.job.id(), self.run, |job| job.upload().reply_url.is_some())
    }

    /// Close-Session, sent again on 5xx; a session the server no longer knows is closed.
    async fn close_session(&self, target: &mut Target, session: &str) -> Result<(), Stop> {
        let mut delay = Duration::from_millis(500);
        for attempt in 1..=CLOSE_ATTEMPTS {
            let url = target.url().to_owned();
            let headers = vec![(bits::SESSION_ID, session.to_owned())];
            let ack = self.packet(target, PacketType::CloseSession, headers, Bytes::new()).await?;
            if ack.ok() || !upload::retry_session_end(ack.status.as_u16(), ack.error_code()) {
                if !ack.ok() {
                    tracing::info!(job = %self.job.id(), session, status = %ack.status, "Close-Session refused; the server has the whole file");
                }
                return Ok(());
            }
            if attempt == CLOSE_ATTEMPTS {
                return Err(ack.failure(PacketType::CloseSession, &url).into());
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
        Ok(())
    }
}

/// Sends one BITS packet (`BITS_POST`, its type, `headers`, `body` with its length).
async fn send_packet(
    http: &HttpSession,
    url: &str,
    packet: PacketType,
    headers: &[(&'static str, String)],
    body: Bytes,
) -> Result<Response, SendError> {
    // `BITS_POST` is a valid method token: the fallback is never taken.
    let method = Method::from_bytes(upload::METHOD.as_bytes()).unwrap_or(Method::POST);
    let length = body.len().to_string();
    http.send(method, url, |request| {
        let mut request = request
            .header(bits::PACKET_TYPE, packet.as_str())
            .header(header::CONTENT_LENGTH, &length);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        request.body(body.clone())
    })
    .await
}

/// The Ack of a packet sent to `url` (`sent`: the response, or why there is none).
async fn answer(
    target: &mut Target,
    packet: PacketType,
    url: &str,
    sent: Result<Response, SendError>,
) -> Result<Ack, Stop> {
    let response: Response = match sent {
        Ok(response) => response,
        Err(e) => {
            if e.is_connect() {
                target.connected(false);
            }
            return Err(Failure::request(&e, url, 0).into());
        }
    };
    target.connected(true);
    let ack = Ack { status: response.status(), headers: response.headers().clone() };
    // Acks carry no body worth reading; drain it so the connection is kept.
    let _ = response.bytes().await;
    let is_ack = ack.header(bits::PACKET_TYPE).is_some_and(|p| p.eq_ignore_ascii_case("Ack"));
    if !is_ack && ack.ok() {
        return Err(protocol_error(format!(
            "{packet} to {url}: the answer is not a BITS Ack (is this a BITS upload server?)"
        )));
    }
    Ok(ack)
}

/// A fragment sent: where, which bytes, and the server's response.
struct Flight {
    url: String,
    range: FragmentRange,
    sent: Result<Response, SendError>,
}

/// Awaits the fragments still in flight, ignoring their answers (the run goes on from
/// the server's word on an earlier one; a fragment sent twice is taken once).
async fn drain(target: &mut Target, flights: &mut FuturesOrdered<impl Future<Output = Flight>>) {
    while let Some(Flight { url, sent, .. }) = flights.next().await {
        let _ = answer(target, PacketType::Fragment, &url, sent).await;
    }
}

/// Cancel-Session for a cancelled job's open session (best effort: the server drops
/// sessions without progress after its timeout anyway).
pub(crate) async fn cancel_session(job: &Job, http: Arc<HttpSession>, rule: HostIdRule<'_>) {
    let (Some(session), Some(file)) = (&job.upload().session, job.files().first()) else { return };
    let target = Target::new(&file.remote_url, job.upload(), rule);
    let headers = [(bits::SESSION_ID, session.clone())];
    for _ in 0..3 {
        let cancel = PacketType::CancelSession;
        match send_packet(&http, target.url(), cancel, &headers, Bytes::new()).await {
            Ok(response) => {
                let code = response
                    .headers()
                    .get(bits::ERROR_CODE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(upload::parse_hex);
                if !upload::retry_session_end(response.status().as_u16(), code) {
                    tracing::info!(job = %job.id(), session, status = %response.status(), "upload session cancelled");
                    return;
                }
            }
            Err(e) => {
                tracing::info!(job = %job.id(), session, error = %e, "cannot send Cancel-Session")
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
