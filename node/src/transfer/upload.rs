//! One transfer run of an upload or upload-reply job on its home node: the client side
//! of the BITS upload protocol (bits-spec §5, [`ferry_protocol::upload`]).
//!
//! A fresh job sends Ping and Create-Session and records the session through Raft
//! before any byte leaves, so a run that starts after a crash (or on a restarted node)
//! continues the same session. It first sends one byte at the recorded offset: the
//! Ack's `BITS-Received-Content-Range` tells where the server really is, and only what
//! it lacks is sent again. Fragments follow in lock-step on the run's one HTTP/1.1
//! client (a kept-alive connection, reopened only after a failure); each Ack is
//! recorded. The final Ack of an upload-reply job names the reply, which is downloaded
//! with ranges into a hidden file beside the reply file (renamed by Complete). Then
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

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use axum::body::Bytes;
use ferry_protocol::job::{JobError, LocalStamp, UploadState};
use ferry_protocol::transfer::{EngineReport, http_status_severity};
use ferry_protocol::upload::{self, FragmentRange, PacketType, header as bits};
use ferry_protocol::{BitsCode, ErrorContext, Job, JobState, JobType};
use reqwest::header::{self, HeaderMap};
use reqwest::{Method, Response, StatusCode};

use super::failure::{Failure, Stop};
use super::fetch::{blocking, content_length, content_range};
use super::http::{HttpSession, SendError};
use super::local::{self, TempFile};
use super::{EngineSettings, Run};
use crate::egress::{self, EgressPolicy};

/// Bytes per fragment at first (a server answering 413 gets smaller ones).
const FRAGMENT_SIZE: u64 = 8 * 1024 * 1024;
/// Smallest fragment sent after 413s.
const MIN_FRAGMENT_SIZE: u64 = 64 * 1024;
/// Times Close-Session is sent again after a 5xx within one run.
const CLOSE_ATTEMPTS: u32 = 4;
/// Reply bytes between two progress reports (each one fsynced first).
const REPLY_REPORT_BYTES: u64 = 8 * 1024 * 1024;
/// How often a run creates a new session after the server lost the old one.
const MAX_NEW_SESSIONS: u32 = 3;

/// When each session's host id first failed to connect, without a success since: kept
/// across the runs of this process (a run ends at the first failure, and the fallback
/// timeout counts from the first one).
static HOST_FAILURES: Mutex<BTreeMap<String, Instant>> = Mutex::new(BTreeMap::new());

/// Sessions whose host id named a host the egress policy refused at connect time (a
/// name resolving to a refused address): their packets stay on the job's server.
static REFUSED_HOST_IDS: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
/// Sessions remembered in [`REFUSED_HOST_IDS`] at most (a bound, not a quota).
const MAX_REFUSED_HOST_IDS: usize = 4096;

/// Which `BITS-Host-Id` targets a session may move to.
#[derive(Clone, Copy)]
pub(crate) struct HostIdRule<'a> {
    /// The node's egress policy.
    policy: EgressPolicy,
    /// `transfer.trusted_host_ids`.
    trusted: &'a [String],
}

impl<'a> HostIdRule<'a> {
    /// The rule of a node with `settings`.
    pub(crate) fn of(settings: &'a EngineSettings) -> Self {
        Self { policy: settings.egress, trusted: &settings.trusted_host_ids }
    }

    /// Why packets for `original` may not go to `moved` (the URL with the host id), if
    /// they may not.
    fn refusal(self, original: &str, moved: &str) -> Option<String> {
        let (Ok(original), Ok(moved)) = (url::Url::parse(original), url::Url::parse(moved)) else {
            return Some("not a valid host".into());
        };
        if let Err(refused) = egress::check_url(self.policy, &moved) {
            return Some(refused.to_string());
        }
        let host = moved.host_str().unwrap_or_default();
        let listed = self.trusted.iter().any(|entry| egress::host_listed(host, entry));
        if !listed && !egress::same_site(&original, &moved) {
            return Some(format!(
                "{host} is not on the site of {} (same scheme and registrable domain) nor in transfer.trusted_host_ids",
                original.host_str().unwrap_or_default()
            ));
        }
        None
    }
}

/// Where the session's packets go: the job's URL, or the server's `BITS-Host-Id`.
struct Target {
    original: String,
    host: Option<String>,
    fallback: Option<Duration>,
    /// The session, for [`HOST_FAILURES`].
    session: Option<String>,
    /// The first connection failure to the host id not followed by a success.
    failing_since: Option<Instant>,
}

impl Target {
    fn new(original: &str, state: &UploadState, rule: HostIdRule<'_>) -> Self {
        let refused_before = state.session.as_ref().is_some_and(|s| {
            REFUSED_HOST_IDS.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains(s)
        });
        let host = state
            .host_id
            .as_deref()
            .filter(|_| !refused_before)
            .and_then(|host| with_host(original, host))
            .filter(|moved| match rule.refusal(original, moved) {
                None => true,
                Some(why) => {
                    tracing::info!(host_id = ?state.host_id, %why, "BITS-Host-Id ignored: the session stays on the job's server");
                    false
                }
            });
        let failures = HOST_FAILURES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Self {
            original: original.to_owned(),
            host,
            fallback: state.host_fallback_secs.map(Duration::from_secs),
            failing_since: state.session.as_ref().and_then(|s| failures.get(s).copied()),
            session: state.session.clone(),
        }
    }

    /// A connection to the host id failed (`false`) or a packet got through (`true`).
    fn connected(&mut self, ok: bool) {
        let Some(session) = &self.session else { return };
        let mut failures = HOST_FAILURES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if ok {
            self.failing_since = None;
            failures.remove(session);
        } else if self.host.is_some() {
            let since = *self.failing_since.get_or_insert_with(Instant::now);
            failures.insert(session.clone(), since);
        }
    }

    /// The egress policy refused the host id at connect time: stay on the job's server
    /// for the rest of the session.
    fn refuse_host(&mut self) {
        tracing::info!(host = ?self.host, "BITS-Host-Id refused by the egress policy: the session stays on the job's server");
        self.host = None;
        if let Some(session) = &self.session {
            let mut refused =
                REFUSED_HOST_IDS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if refused.len() >= MAX_REFUSED_HOST_IDS {
                refused.clear();
            }
            refused.insert(session.clone());
        }
    }

    fn url(&self) -> &str {
        match (&self.host, self.failing_since, self.fallback) {
            (Some(_), Some(since), Some(fallback)) if since.elapsed() >= fallback => &self.original,
            (Some(host), _, _) => host,
            (None, _, _) => &self.original,
        }
    }
}

/// `url` with its host (and port, if `host` names one) replaced by `host`.
fn with_host(url: &str, host: &str) -> Option<String> {
    let mut parsed = url::Url::parse(url).ok()?;
    let probe = url::Url::parse(&format!("{}://{host}/", parsed.scheme())).ok()?;
    parsed.set_host(probe.host_str()).ok()?;
    if probe.port().is_some() {
        parsed.set_port(probe.port()).ok()?;
    }
    Some(parsed.to_string())
}

/// A server's Ack: its status and headers.
struct Ack {
    status: StatusCode,
    headers: HeaderMap,
}

impl Ack {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn ok(&self) -> bool {
        self.status == StatusCode::OK || self.status == StatusCode::CREATED
    }

    /// The error code the server named (`BITS-Error-Code`).
    fn error_code(&self) -> Option<u32> {
        self.header(bits::ERROR_CODE).and_then(upload::parse_hex)
    }

    /// `BITS-Received-Content-Range`.
    fn received(&self) -> Option<u64> {
        self.header(bits::RECEIVED_CONTENT_RANGE)?.trim().parse().ok()
    }

    /// The job error for an Ack that is not 200/201 (or not an Ack at all).
    fn failure(&self, packet: PacketType, url: &str) -> Failure {
        let status = self.status.as_u16();
        let (code, context) = upload::server_error(
            status,
            self.header(bits::ERROR_CODE),
            self.header(bits::ERROR_CONTEXT),
        );
        // The application's status decides for its errors, the server's for its own.
        let severity = http_status_severity(code.http_status().unwrap_or(status));
        let detail = match context {
            ErrorContext::RemoteApplication => {
                format!("{packet} to {url}: the server's application failed ({status}, {code})")
            }
            _ => format!("{packet} to {url}: the server answered {status} ({code})"),
        };
        Failure {
            error: JobError {
                context,
                code,
                detail,
                file_index: Some(0),
                protocol: Some("http".into()),
            },
            severity,
        }
    }
}

fn protocol_error(detail: String) -> Stop {
    Failure::protocol(BitsCode::BG_E_INVALID_SERVER_RESPONSE, detail, 0).into()
}

fn local_error(e: &std::io::Error, what: &str) -> Stop {
    Failure::local(e, what, Some(0)).into()
}

/// The local file's size and modification time.
fn stamp(file: &File) -> std::io::Result<LocalStamp> {
    let meta = file.metadata()?;
    let modified = meta.modified()?.duration_since(UNIX_EPOCH).unwrap_or_default();
    Ok(LocalStamp {
        size: meta.len(),
        modified_ns: u64::try_from(modified.as_nanos()).unwrap_or(u64::MAX),
    })
}

fn changed_file(path: &str) -> Stop {
    Failure::fatal(JobError {
        context: ErrorContext::LocalFile,
        code: BitsCode::BG_E_LOCAL_FILE_CHANGED,
        detail: format!("{path} changed while it was being uploaded"),
        file_index: Some(0),
        protocol: None,
    })
    .into()
}

impl Run {
    /// Uploads the file (and receives the reply); returns why it stopped if it did not
    /// finish.
    pub(crate) async fn upload(&self) -> Result<(), Stop> {
        let file = self.job.files.first().cloned().ok_or(Stop::Stale)?;
        let path = file.local_path.clone();
        let source = {
            let (sandboxes, owner) = (self.settings.sandboxes.clone(), self.job.owner.clone());
            let path = Path::new(&path).to_path_buf();
            blocking(move || local::open_source(&sandboxes, &owner, &path)).await
        }
        .map_err(|e| local_error(&e, &format!("cannot open {path} to upload it")))?;
        let source = Arc::new(source);
        let now = stamp(&source).map_err(|e| local_error(&e, "cannot read the file"))?;
        let mut pending = if self.job.state == JobState::Connecting {
            vec![EngineReport::Connected]
        } else {
            vec![]
        };
        let mut new_sessions = 0;
        loop {
            let state = self.reporter.read(self.job.id, self.run, |job| job.upload.clone())?;
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
            let acked = self.reporter.read(self.job.id, self.run, |job| {
                job.files.first().map_or(0, |f| f.progress.bytes_transferred)
            })?;
            match self
                .send_fragments(&mut target, &session, &source, now, acked, &path, &mut pending)
                .await
            {
                Err(Stop::RestartFile(why)) if new_sessions < MAX_NEW_SESSIONS => {
                    new_sessions += 1;
                    tracing::info!(job = %self.job.id, %why, "starting the upload over in a new session");
                    self.send_reports(&mut pending, vec![EngineReport::RestartFile { file: 0 }])
                        .await?;
                    continue;
                }
                Err(Stop::RestartFile(why)) => {
                    return Err(Failure::protocol(BitsCode::BG_E_SESSION_NOT_FOUND, why, 0).into());
                }
                other => other?,
            }
            if self.job.job_type == JobType::UploadReply {
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
        self.reporter.report(self.job.id, self.run, reports).await
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
        let response: Response = match sent {
            Ok(response) => response,
            Err(e) => {
                if e.is_connect() {
                    target.connected(false);
                }
                return Err(Failure::request(&e, &url, 0).into());
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
        tracing::info!(job = %self.job.id, %session, host = ?host_id, "upload session created");
        Ok(EngineReport::UploadSession { session, host_id, host_fallback_secs, local })
    }

    /// Sends the file from `acked` on; every Ack is recorded.
    #[allow(clippy::too_many_arguments)]
    async fn send_fragments(
        &self,
        target: &mut Target,
        session: &str,
        source: &Arc<File>,
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
        let reply_wanted = self.job.job_type == JobType::UploadReply;
        let mut reply_url = None;
        loop {
            let done = next >= total;
            // A final Ack lost in a crash is asked for again with the last byte.
            let start = if done { total - 1 } else { next };
            if done && (!reply_wanted || reply_url.is_some() || self.has_reply_url()?) {
                return Ok(());
            }
            let len = if probe || done { 1 } else { size.min(total - start) };
            let current = stamp(source).map_err(|e| local_error(&e, "cannot read the file"))?;
            if current != local {
                return Err(changed_file(path));
            }
            let bytes = read_at(source, start, len).await?;
            let range = FragmentRange::new(start, len, total)
                .ok_or_else(|| protocol_error(format!("a fragment at {start} of {total} bytes")))?;
            let headers = vec![
                (bits::SESSION_ID, session.to_owned()),
                (header::CONTENT_RANGE.as_str(), range.to_string()),
            ];
            let url = target.url().to_owned();
            let ack = self.packet(target, PacketType::Fragment, headers, bytes).await?;
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
                tracing::info!(job = %self.job.id, session, recorded = acked, server, resent, "upload resumed");
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
            let report = EngineReport::UploadAcked { next, reply_url: reply_url.clone() };
            self.send_reports(pending, vec![report]).await?;
            if next == total && !reply_wanted {
                return Ok(());
            }
        }
    }

    fn has_reply_url(&self) -> Result<bool, Stop> {
        self.reporter.read(self.job.id, self.run, |job| job.upload.reply_url.is_some())
    }

    /// Downloads the reply into its temporary file (resuming what is durable).
    async fn receive_reply(&self, pending: &mut Vec<EngineReport>) -> Result<(), Stop> {
        let (state, temp_path, reply_path) = self.reporter.read(self.job.id, self.run, |job| {
            (job.upload.clone(), job.reply_temporary(), job.reply_path())
        })?;
        if state.reply_done {
            return Ok(());
        }
        let (Some(url), Some(temp_path), Some(reply_path)) =
            (state.reply_url, temp_path, reply_path)
        else {
            return Err(protocol_error("no reply URL was recorded".into()));
        };
        let (sandboxes, owner) = (self.settings.sandboxes.clone(), self.job.owner.clone());
        let mut from = state.reply.bytes_transferred;
        let temp = {
            let (temp, dest) = (PathBuf::from(&temp_path), PathBuf::from(&reply_path));
            let tag = local::temp_tag(self.job.id, 1);
            blocking(move || match TempFile::reopen(&sandboxes, &owner, &temp, tag.clone())? {
                Some(file) if from > 0 => Ok((file, from)),
                _ => TempFile::create(&sandboxes, &owner, &dest, &temp, tag).map(|file| (file, 0)),
            })
            .await
        };
        let (temp, start) = temp.map_err(|e| local_error(&e, "cannot create the reply file"))?;
        from = start;
        let range = format!("bytes={from}-");
        let response = self
            .http
            .send(Method::GET, &url, |r| if from > 0 { r.header(header::RANGE, &range) } else { r })
            .await
            .map_err(|e| Failure::request(&e, &url, 0))?;
        let status = response.status();
        let total = match status {
            StatusCode::PARTIAL_CONTENT => {
                let r = content_range(response.headers()).filter(|r| r.first == from).ok_or_else(
                    || protocol_error(format!("{url}: a reply range that is not bytes {from}-")),
                )?;
                r.total
            }
            StatusCode::OK => {
                from = 0;
                content_length(response.headers())
            }
            other => return Err(Failure::status(other.as_u16(), &url, 0).into()),
        };
        let mut response = response;
        let mut offset = from;
        let mut reported = from;
        while let Some(bytes) = response.chunk().await.map_err(|e| Failure::request(&e, &url, 0))? {
            let at = offset;
            offset += bytes.len() as u64;
            if total.is_some_and(|t| offset > t) {
                return Err(protocol_error(format!(
                    "{url}: the reply is longer than its {total:?} bytes"
                )));
            }
            let writer = temp.clone();
            blocking(move || writer.write_at(&bytes, at))
                .await
                .map_err(|e| local_error(&e, "cannot write the reply file"))?;
            if offset - reported >= REPLY_REPORT_BYTES {
                let synced = temp.clone();
                blocking(move || synced.sync())
                    .await
                    .map_err(|e| local_error(&e, "cannot write the reply file"))?;
                reported = offset;
                let report = EngineReport::ReplyReceived { total, received: offset, done: false };
                self.send_reports(pending, vec![report]).await?;
            }
        }
        if let Some(total) = total.filter(|t| offset != *t) {
            return Err(super::fetch::short_body(&url, 0, offset, total));
        }
        let synced = temp.clone();
        blocking(move || {
            synced.set_len(offset)?;
            synced.finish(None)
        })
        .await
        .map_err(|e| local_error(&e, "cannot write the reply file"))?;
        tracing::info!(job = %self.job.id, bytes = offset, "reply received");
        let report =
            EngineReport::ReplyReceived { total: Some(offset), received: offset, done: true };
        self.send_reports(pending, vec![report]).await
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
                    tracing::info!(job = %self.job.id, session, status = %ack.status, "Close-Session refused; the server has the whole file");
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

/// `len` bytes of `file` at `offset`.
async fn read_at(file: &Arc<File>, offset: u64, len: u64) -> Result<Bytes, Stop> {
    let file = file.clone();
    let len = usize::try_from(len).map_err(|_| protocol_error("a fragment too large".into()))?;
    blocking(move || {
        let mut buffer = vec![0; len];
        file.read_exact_at(&mut buffer, offset)?;
        Ok(Bytes::from(buffer))
    })
    .await
    .map_err(|e| local_error(&e, "cannot read the file to upload"))
}

/// Cancel-Session for a cancelled job's open session (best effort: the server drops
/// sessions without progress after its timeout anyway).
pub(crate) async fn cancel_session(job: &Job, http: Arc<HttpSession>, rule: HostIdRule<'_>) {
    let (Some(session), Some(file)) = (&job.upload.session, job.files.first()) else { return };
    let target = Target::new(&file.remote_url, &job.upload, rule);
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
                    tracing::info!(job = %job.id, session, status = %response.status(), "upload session cancelled");
                    return;
                }
            }
            Err(e) => {
                tracing::info!(job = %job.id, session, error = %e, "cannot send Cancel-Session")
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ids_replace_the_host_and_port_only() {
        assert_eq!(
            with_host("http://a.example:7070/bits/x?q=1", "127.0.0.2:8080").as_deref(),
            Some("http://127.0.0.2:8080/bits/x?q=1")
        );
        assert_eq!(
            with_host("https://a.example/bits/x", "farm-7").as_deref(),
            Some("https://farm-7/bits/x")
        );
        assert_eq!(with_host("http://a/x", "bad host"), None);
    }

    #[test]
    fn host_ids_must_be_on_the_site_or_listed_and_allowed() {
        let trusted = vec!["farm.example.net".to_owned()];
        let rule = HostIdRule { policy: EgressPolicy::default(), trusted: &trusted };
        let original = "https://upload.example.com/bits/x";
        assert_eq!(rule.refusal(original, "https://node7.example.com:8443/bits/x"), None);
        assert_eq!(rule.refusal(original, "https://n1.farm.example.net/bits/x"), None);
        for refused in [
            "https://evil.example.org/bits/x",
            "https://169.254.169.254/bits/x",
            "https://[::ffff:a9fe:a9fe]/bits/x",
            "https://2852039166/bits/x",
            "http://node7.example.com/bits/x",
        ] {
            assert!(rule.refusal(original, refused).is_some(), "{refused}");
        }
        // A listed host is still subject to the policy.
        let trusted = vec!["169.254.169.254".to_owned()];
        let rule = HostIdRule { policy: EgressPolicy::default(), trusted: &trusted };
        assert!(rule.refusal("http://127.0.0.1/x", "http://169.254.169.254/x").is_some());
        let state =
            UploadState { host_id: Some("169.254.169.254:80".into()), ..UploadState::default() };
        let target = Target::new("http://127.0.0.1:7070/bits/x", &state, rule);
        assert_eq!(target.url(), "http://127.0.0.1:7070/bits/x", "ignored");
    }

    #[test]
    fn the_host_id_is_left_after_its_fallback_timeout() {
        let state = UploadState {
            host_id: Some("b:1".into()),
            host_fallback_secs: Some(0),
            ..UploadState::default()
        };
        let trusted = vec!["b".to_owned()];
        let rule = HostIdRule { policy: EgressPolicy::default(), trusted: &trusted };
        let mut target = Target::new("http://a:1/x", &state, rule);
        assert_eq!(target.url(), "http://b:1/x");
        target.failing_since = Some(Instant::now());
        assert_eq!(target.url(), "http://a:1/x");
        target.fallback = None;
        assert_eq!(target.url(), "http://b:1/x", "no fallback timeout: the host id for ever");
    }
}
