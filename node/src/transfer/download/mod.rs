//! One transfer run of a download job on its home node: for each untransferred file in
//! order, probe the remote file ([`probe`]), then fetch the chunks not yet durable
//! ([`pieces`]: origin connections, helpers, peers' copies, routed by the file's
//! [`PieceRouter`](super::router::PieceRouter)) and report them, with their digests,
//! once fsynced. The run owns its outbox of reports and its restarts of a file.
//!
//! The probe of a fresh file is a `GET` of its first chunk (the `206` carries size and
//! validators), so a file of one chunk costs one request and one Raft write; a file
//! with durable chunks is probed with `HEAD` (or a `bytes=0-0` GET where HEAD is
//! refused). Reports that need not wait (connected, probed) travel with the next one.
//!
//! BITS rules enforced here: a changed validator, a `200` to a conditional range or a
//! different size restarts the file (never mixing two versions); a server without range
//! support gets `BG_E_INSUFFICIENT_RANGE_SUPPORT`, with the single-stream fallback for
//! foreground jobs up to 2 GB; no size without dynamic content is
//! `BG_E_MISSING_FILE_SIZE`; dynamic content streams from the start, its maximum
//! download size enforced.

mod desk;
mod files;
mod helper_client;
mod peers;
mod pieces;
mod probe;
mod ramp;
mod stream;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_protocol::file::JobFile;
use ferry_protocol::job::security;
use ferry_protocol::transfer::{
    self, ChunkRecord, EngineReport, Piece, RemoteInfo, chunk_size_for,
};
use ferry_protocol::{BitsCode, Job, JobState, Priority};

use super::Run;
use super::failure::{Failure, Stop};
use super::fetch::{
    Fetch, Probe, Unwritten, blocking, no_range_support, probe_local, transport_error,
};
use super::local::{self, TempFile};

/// Largest file BITS fetches in one unranged GET when the server lacks ranges.
const SINGLE_STREAM_LIMIT: u64 = 2 * 1024 * 1024 * 1024;
/// How often a file may be started over within one run before the run gives up.
const MAX_RESTARTS_PER_RUN: u32 = 3;

/// Reports that may wait (connected, probed, a file done): they go out with the next
/// report that must, or once [`OUTBOX_REPORTS`] or [`OUTBOX_FILES`] wait or the oldest
/// has waited [`OUTBOX_DELAY`]. A finished file's last bytes are made durable right
/// before its report goes ([`Run::send`]), together with the other files of the batch
/// (a journaling file system commits once for fsyncs that arrive together); a crash
/// before the report costs a re-fetch of those files, never a wrong file. Many small
/// files thus share one Raft write and one round of fsyncs.
#[derive(Default)]
pub(super) struct Outbox {
    reports: Vec<EngineReport>,
    /// Finished files whose reports are here, by index, not fsynced yet.
    unsynced: Vec<(u32, TempFile)>,
    since: Option<Instant>,
}

/// Most reports waiting in the outbox. Each batch rewrites the job's row, all its
/// files, so a job of many small files pays per batch: 1,000 x 64 KiB took 0.35-0.42 s
/// with batches of 64 reports, 0.32-0.34 s with these (means of runs alternated).
const OUTBOX_REPORTS: usize = 256;
/// Most finished files waiting in the outbox (each holds its descriptor open).
const OUTBOX_FILES: usize = 64;
/// Longest wait of a report in the outbox (checked when reports are added).
const OUTBOX_DELAY: Duration = Duration::from_millis(200);

impl Outbox {
    pub(super) fn push(&mut self, report: EngineReport) {
        self.since.get_or_insert_with(Instant::now);
        self.reports.push(report);
    }

    /// Pushes the report of finished file `index`, whose last bytes `temp` must make
    /// durable before it goes.
    fn push_finished(&mut self, index: u32, temp: TempFile, reports: Vec<EngineReport>) {
        for report in reports {
            self.push(report);
        }
        self.unsynced.push((index, temp));
    }

    pub(super) fn is_empty(&self) -> bool {
        self.reports.is_empty() && self.unsynced.is_empty()
    }

    /// Takes `other`'s reports after this outbox's own.
    pub(super) fn absorb(&mut self, other: Self) {
        if let Some(since) = other.since {
            self.since = Some(self.since.map_or(since, |s| s.min(since)));
        }
        self.reports.extend(other.reports);
        self.unsynced.extend(other.unsynced);
    }

    pub(super) fn due(&self) -> bool {
        self.reports.len() >= OUTBOX_REPORTS
            || self.unsynced.len() >= OUTBOX_FILES
            || self.since.is_some_and(|t| t.elapsed() >= OUTBOX_DELAY)
    }
}

impl Run {
    /// Sends what waits in `outbox`, then `more`, as one command, once the finished
    /// files it reports are durable.
    pub(super) async fn send(
        &self,
        outbox: &mut Outbox,
        more: Vec<EngineReport>,
    ) -> Result<(), Stop> {
        let Outbox { mut reports, unsynced, .. } = std::mem::take(outbox);
        if !unsynced.is_empty() {
            let first = unsynced.first().map(|(index, _)| *index);
            let temps: Vec<TempFile> = unsynced.into_iter().map(|(_, temp)| temp).collect();
            sync_files(temps)
                .await
                .map_err(|e| Failure::local(&e, "cannot write the temporary file", first))?;
        }
        reports.extend(more);
        self.reporter.report(self.job.id(), self.run, reports).await
    }

    fn file(&self, index: u32) -> Result<Arc<JobFile>, Stop> {
        self.reporter
            .read(self.job.id(), self.run, |job| job.files().get(index as usize).cloned())?
            .ok_or(Stop::Stale)
    }

    /// Probe, plan, fetch what is missing, finish one file.
    async fn download_file(
        &self,
        index: u32,
        outbox: &mut Outbox,
        lane: &files::Lane,
    ) -> Result<(), Stop> {
        let file = self.file(index)?;
        let url = file.remote_url.clone();
        let local_source = url.starts_with("file://");
        if local_source && !self.settings.allow_file_urls {
            return Err(Failure::fatal(transport_error(
                BitsCode::E_ACCESSDENIED,
                "file:// sources are disabled on this node (transfer.allow_file_urls)".into(),
                index,
            ))
            .into());
        }
        if !local_source {
            let parsed = url::Url::parse(&url).map_err(|e| {
                Failure::fatal(transport_error(
                    BitsCode::E_INVALIDARG,
                    format!("{url}: {e}"),
                    index,
                ))
            })?;
            crate::egress::check_url(self.settings.egress, &parsed)
                .map_err(|refused| Failure::blocked(format!("{url}: {refused}"), index))?;
        }
        // Dynamic content, or an HTTP method of the job's own: one request per file.
        let dynamic = self.job.props().whole_streams();
        // A fresh whole file is probed with a GET of its first chunk, unless its bytes
        // may come from peers.
        let prospects = self.peer_prospects(&url, index, Path::new(&file.local_path)).await;
        let probe_with_data = !local_source
            && file.chunks.is_empty()
            && file.ranges.is_empty()
            && !dynamic
            && !prospects.may_serve;
        if !probe_with_data {
            // Checked before any request; a fresh file's create checks it below.
            let (dest, sandboxes, owner) = (
                Path::new(&file.local_path).to_path_buf(),
                self.settings.sandboxes.clone(),
                self.job.owner().clone(),
            );
            blocking(move || local::check_destination(&sandboxes, &owner, &dest))
                .await
                .map_err(|e| refused_destination(&e, index))?;
        }
        let mut source = None;
        let mut fresh_temp = None;
        let (probe, first) = if local_source {
            let (sandboxes, owner) = (self.settings.sandboxes.clone(), self.job.owner().clone());
            let (probe, opened) = probe_local(&url, index, sandboxes, owner).await?;
            source = Some(opened);
            (probe, None)
        } else if dynamic {
            // BITS sends no HEAD for dynamic content: size and validators are unknown.
            (Probe { remote: RemoteInfo::default(), headers: Vec::new(), moved_to: None }, None)
        } else if probe_with_data {
            // The temporary file is made (its destination checked) while the request
            // is on its way; the file is fresh, so the create is what comes next anyway.
            let (temp, probe) = tokio::join!(
                self.temp_file(&file, index, true),
                self.probe_first_chunk(&url, index)
            );
            fresh_temp = Some(temp?);
            probe?
        } else {
            (self.probe(&url, index).await?, None)
        };
        let probe = expect_digest(probe, &file, &url, index)?;
        let same_version = file.remote.as_ref().is_some_and(|r| r.same_version(&probe.remote));
        let chunk_size = match probe.remote.size {
            // A resumed file keeps its plan (perhaps one adopted from peers' copies).
            Some(_) if same_version && file.chunk_size != 0 => file.chunk_size,
            Some(size) => self
                .copies_chunk_size(&file, index, &probe.remote, size)
                .unwrap_or_else(|| chunk_size_for(size, self.chunk_size_setting())),
            None => self.chunk_size_setting(),
        };
        let pieces = match probe.remote.size {
            Some(size) => Some(transfer::plan(&file.ranges, size, chunk_size).map_err(|code| {
                Failure::protocol(
                    code,
                    format!("{url}: the file's ranges lie outside its {size} bytes"),
                    index,
                )
            })?),
            None => None,
        };
        // A file of one piece (carried by the probe's answer, or taken from a copy or
        // the origin in one request) keeps nothing in order and no connections to
        // itself: the next file may start.
        let one_piece = matches!(pieces.as_deref(), Some([_]));
        if one_piece {
            lane.small();
        } else {
            lane.large();
        }
        // What the Probed report will do to the recorded chunks: same version and plan
        // keep them; anything else starts the file over (apply decides the same).
        let keeps_chunks = !file.chunks.is_empty()
            && file.remote.as_ref().is_some_and(|r| r.same_version(&probe.remote))
            && file.chunk_size == chunk_size;
        let mut durable = if keeps_chunks { file.chunks.clone() } else { Vec::new() };
        if probe.remote.size.is_none() && !file.chunks.is_empty() {
            // Dynamic content cannot resume: what an earlier run wrote is discarded.
            return Err(Stop::RestartFile("dynamic content restarts from the beginning".into()));
        }
        outbox.push(EngineReport::Probed { file: index, remote: probe.remote.clone(), chunk_size });
        if self.job.state() == JobState::Connecting && after_connected(outbox) {
            // The server answered: the job is TRANSFERRING from now on, not once its
            // first chunk is durable (which, on a slow link, takes a while).
            self.send(outbox, Vec::new()).await?;
        }
        // Redirected: pieces go straight to where the redirects led; with the "report"
        // policy that URL also becomes the file's remote name.
        let url = match &probe.moved_to {
            Some(moved) => {
                let policy = self.job.props().security_flags & security::REDIRECT_POLICY_MASK;
                if policy == security::REDIRECT_ALLOW_REPORT {
                    outbox.push(EngineReport::RemoteMoved { file: index, url: moved.clone() });
                }
                moved.clone()
            }
            None => url,
        };

        let temp = match fresh_temp {
            Some(temp) => temp,
            None => self.temp_file(&file, index, durable.is_empty()).await?,
        };
        let base: u64 = durable.iter().map(|c| c.len).sum();
        self.settings.live.track(self.job.id(), self.run, index, base, temp.received());
        if !durable.is_empty() {
            // Recorded chunks count only if their bytes are still what was recorded.
            let damaged = self.damaged_chunks(&temp, &file, index).await?;
            if !damaged.is_empty() {
                tracing::warn!(job = %self.job.id(), file = index, ?damaged, "recorded chunks of the temporary file no longer match their digests; fetching them again");
                durable.retain(|c| damaged.binary_search(&c.index).is_err());
                outbox.push(EngineReport::ChunksLost { file: index, chunks: damaged });
            }
        }
        let fetch = Fetch {
            url: url.clone(),
            file: index,
            remote: probe.remote.clone(),
            temp: temp.clone(),
            http: self.http.clone(),
            caps: self.settings.caps.clone(),
            headers: Arc::new(Mutex::new(probe.headers.clone())),
            source,
        };
        let Some(pieces) = pieces else {
            lane.wait_turn().await;
            let size = self.stream_dynamic(&fetch, chunk_size, outbox).await?;
            return self.finish_file(&fetch, size, &probe, Last::default(), outbox).await;
        };
        let total = transfer::planned_bytes(&pieces);
        if let Some(cap) = self.job.props().max_download_size.filter(|cap| total > *cap) {
            return Err(Failure::fatal(transport_error(
                BitsCode::BG_E_MAX_DOWNLOAD_SIZE_LIMIT_REACHED,
                format!("the file has {total} bytes; the job allows {cap}"),
                index,
            ))
            .into());
        }
        let mut missing: VecDeque<Piece> = pieces
            .iter()
            .filter(|p| durable.binary_search_by_key(&p.index, |c| c.index).is_err())
            .copied()
            .collect();
        let mut unreported = Vec::new();
        let mut unwritten = None;
        if let Some(first) = first {
            match missing.front() {
                Some(piece) if piece.local_offset == 0 && piece.len == first.len => {
                    let piece = *piece;
                    missing.pop_front();
                    if missing.is_empty() {
                        // A one-chunk file: written by its finish, made durable by its
                        // final fsync, reported whole in a single command.
                        let (record, rest) = fetch.receive_last(piece, first.response).await?;
                        unreported.push(record);
                        unwritten = Some(rest);
                    } else {
                        let record = fetch.receive(piece, first.response, true).await?;
                        let report = EngineReport::Chunks { file: index, chunks: vec![record] };
                        self.send(outbox, vec![report]).await?;
                    }
                }
                // The server ignored the range and sent the whole (larger) file: read
                // in its turn (or asked again then, through the ranges' path).
                _ if first.len == total && total > 0 && lane.is_turn() => {
                    if !single_stream_allowed(&self.job, &file, total) {
                        return Err(no_range_support(&url, index, first.response.version()));
                    }
                    tracing::info!(job = %self.job.id(), file = index, "the server ignores ranges; fetching the file in one stream");
                    self.stream_into(&fetch, first.response, chunk_size, Some(total), None, outbox)
                        .await?;
                    missing.clear();
                }
                _ => drop(first),
            }
        }
        if !missing.is_empty() {
            if !one_piece {
                lane.wait_turn().await;
            }
            match self.fetch_pieces(&fetch, chunk_size, missing, prospects.gone, outbox).await {
                Err(Stop::Failed(f)) if ranges_refused(f.error.code) => {
                    if !single_stream_allowed(&self.job, &file, total) {
                        return Err(Stop::Failed(f));
                    }
                    tracing::info!(job = %self.job.id(), file = index, "the server ignores ranges; fetching the file in one stream");
                    self.stream_whole(&fetch, chunk_size, total, outbox).await?;
                }
                other => other?,
            }
        }
        let last = Last { chunks: unreported, unwritten };
        self.finish_file(&fetch, total, &probe, last, outbox).await
    }

    /// The temporary file: created afresh, or reopened to add to its durable chunks.
    async fn temp_file(&self, file: &JobFile, index: u32, fresh: bool) -> Result<TempFile, Stop> {
        let temp = Path::new(&file.temporary_name).to_path_buf();
        let tag = local::temp_tag(self.job.id(), index);
        let (sandboxes, owner) = (self.settings.sandboxes.clone(), self.job.owner().clone());
        if fresh {
            // The destination is checked again right before the create: the directory
            // may have been swapped for a symlink while the probe ran.
            let dest = Path::new(&file.local_path).to_path_buf();
            let made =
                blocking(move || Ok(TempFile::create(&sandboxes, &owner, &dest, &temp, tag)))
                    .await
                    .map_err(local::CreateError::Failed)
                    .and_then(|made| made);
            return made.map_err(|e| match e {
                local::CreateError::Refused(e) => refused_destination(&e, index),
                local::CreateError::Failed(e) => {
                    Failure::local(&e, "cannot create the temporary file", Some(index)).into()
                }
            });
        }
        match blocking(move || TempFile::reopen(&sandboxes, &owner, &temp, tag)).await {
            Ok(Some(temp)) => Ok(temp),
            Ok(None) => Err(Stop::RestartFile("the temporary file is gone".into())),
            Err(e) => Err(Failure::local(&e, "cannot open the temporary file", Some(index)).into()),
        }
    }

    /// The recorded chunks of `file` whose bytes in `temp` no longer match their digests.
    async fn damaged_chunks(
        &self,
        temp: &TempFile,
        file: &JobFile,
        index: u32,
    ) -> Result<Vec<u32>, Stop> {
        let (temp, spans) = (temp.clone(), transfer::chunk_spans(file));
        blocking(move || temp.damaged_chunks(&spans))
            .await
            .map_err(|e| Failure::local(&e, "cannot read the temporary file", Some(index)).into())
    }

    /// Writes what is left of the file, sets its length and mtime and reports it with
    /// its last chunks (fsynced when the report goes).
    async fn finish_file(
        &self,
        fetch: &Fetch,
        size: u64,
        probe: &Probe,
        Last { chunks, unwritten }: Last,
        outbox: &mut Outbox,
    ) -> Result<(), Stop> {
        let modified = probe
            .remote
            .last_modified
            .as_deref()
            .and_then(|text| httpdate::parse_http_date(text).ok());
        let (t, sandboxes) = (fetch.temp.clone(), self.settings.sandboxes.clone());
        blocking(move || {
            if let Some(rest) = unwritten {
                rest.write(&t)?;
            }
            t.set_len(size)?;
            t.set_modified(modified)?;
            t.seal(&sandboxes)
        })
        .await
        .map_err(|e| Failure::local(&e, "cannot finish the temporary file", Some(fetch.file)))?;
        if let Some(declared) = &probe.remote.sha256 {
            // Bytes from the origin and from peers alike must make the declared file.
            let t = fetch.temp.clone();
            let actual = blocking(move || t.sha256()).await.map_err(|e| {
                Failure::local(&e, "cannot read the temporary file", Some(fetch.file))
            })?;
            if actual != *declared {
                let url = &fetch.url;
                let why = format!("{url}: the file's SHA-256 is {actual}, expected {declared}");
                return Err(Stop::DigestMismatch(why));
            }
        }
        let headers =
            fetch.headers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let mut reports = Vec::new();
        if !chunks.is_empty() {
            reports.push(EngineReport::Chunks { file: fetch.file, chunks });
        }
        let headers = transfer::bounded_headers(&headers);
        reports.push(EngineReport::FileTransferred { file: fetch.file, size, headers });
        outbox.push_finished(fetch.file, fetch.temp.clone(), reports);
        if outbox.due() { self.send(outbox, Vec::new()).await } else { Ok(()) }
    }
}

/// What a file's finish writes and reports with it: its last chunks' records, and the
/// last bytes of a file fetched in one request, not yet written.
#[derive(Default)]
struct Last {
    chunks: Vec<ChunkRecord>,
    unwritten: Option<Unwritten>,
}

/// Most fsyncs [`sync_files`] has in flight at once.
const SYNCS_AT_ONCE: usize = 8;

/// Makes `files` durable (data and metadata), up to [`SYNCS_AT_ONCE`] at a time on the
/// blocking pool: a journaling file system commits once for the fsyncs that arrive
/// together, where one after another would each wait for a commit of their own.
async fn sync_files(files: Vec<TempFile>) -> std::io::Result<()> {
    let share = files.len().div_ceil(SYNCS_AT_ONCE).max(1);
    let syncing = files.chunks(share).map(|some| {
        let some = some.to_vec();
        blocking(move || some.iter().try_for_each(|temp| temp.finish(None)))
    });
    futures_util::future::try_join_all(syncing).await.map(drop)
}

/// A destination the job's owner may not write: a fatal `E_ACCESSDENIED`.
fn refused_destination(error: &std::io::Error, index: u32) -> Stop {
    Failure::fatal(ferry_protocol::job::JobError {
        context: ferry_protocol::ErrorContext::LocalFile,
        code: BitsCode::E_ACCESSDENIED,
        detail: error.to_string(),
        file_index: Some(index),
        protocol: None,
    })
    .into()
}

/// True if `outbox` still holds the run's `Connected` report.
fn after_connected(outbox: &Outbox) -> bool {
    outbox.reports.iter().any(|r| matches!(r, EngineReport::Connected))
}

/// The probe with the SHA-256 the owner gave for the file, if any, in place of what
/// the server declared: the finished file is checked against it, and peers' copies of
/// that content may serve it. A server that declares another digest serves another
/// file: a fatal error.
fn expect_digest(mut probe: Probe, file: &JobFile, url: &str, index: u32) -> Result<Probe, Stop> {
    let Some(expected) = &file.expected_sha256 else { return Ok(probe) };
    if let Some(declared) = probe.remote.sha256.as_ref().filter(|d| *d != expected) {
        return Err(Failure::fatal(transport_error(
            BitsCode::BG_E_INVALID_SERVER_RESPONSE,
            format!("{url}: the server declares SHA-256 {declared}; the file must have {expected}"),
            index,
        ))
        .into());
    }
    probe.remote.sha256 = Some(expected.clone());
    Ok(probe)
}

/// BITS allows one unranged GET for a foreground job's whole file up to 2 GB.
pub(super) fn single_stream_allowed(job: &Job, file: &JobFile, size: u64) -> bool {
    job.props().priority == Priority::Foreground
        && file.ranges.is_empty()
        && size <= SINGLE_STREAM_LIMIT
}

/// Whether `code` says the server would not serve ranges (a single stream may do).
fn ranges_refused(code: BitsCode) -> bool {
    matches!(
        code,
        BitsCode::BG_E_INSUFFICIENT_RANGE_SUPPORT | BitsCode::BG_E_INSUFFICIENT_HTTP_SUPPORT
    )
}

pub(super) fn missing_size(url: &str, index: u32) -> Stop {
    Failure::fatal(transport_error(
        BitsCode::BG_E_MISSING_FILE_SIZE,
        format!(
            "{url}: the server gave no Content-Length; enable dynamic content for such servers"
        ),
        index,
    ))
    .into()
}

pub(super) fn internal(file: u32, what: &str) -> Stop {
    Failure::local(&std::io::Error::other(what.to_owned()), "internal error", Some(file)).into()
}
