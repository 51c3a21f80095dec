//! One transfer run of a download job on its home node: for each untransferred file in
//! order, probe the remote file, then fetch the chunks not yet durable over one or more
//! connections ([`super::fetch`]) and report them, with their digests, once fsynced.
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

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_protocol::file::JobFile;
use ferry_protocol::job::{peer_caching, security};
use ferry_protocol::peer::Ping;
use ferry_protocol::peer_cache::ContentKey;
use ferry_protocol::transfer::{
    self, ChunkRecord, EngineReport, Piece, RemoteInfo, chunk_size_for,
};
use ferry_protocol::{BitsCode, Job, JobId, JobState, NodeId, Priority};
use reqwest::header::{self, HeaderMap};
use reqwest::{Method, Response, StatusCode};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::Run;
use super::failure::{Failure, Stop};
use super::fetch::{
    ChunkWriter, Fetch, Probe, blocking, changed, content_length, content_range, declared_sha256,
    header_lines, probe_local, short_body, text, transport_error,
};
use super::helper::{self, ChunkAnswer, ChunkRequest, MAX_HELPER_PIECE};
use super::local::{self, TempFile};
use super::peer_cache::{self, CopyError, Next, PieceQueue, Sources};
use crate::replica::ClusterView;

/// Largest file BITS fetches in one unranged GET when the server lacks ranges.
const SINGLE_STREAM_LIMIT: u64 = 2 * 1024 * 1024 * 1024;
/// How often a file may be started over within one run before the run gives up.
const MAX_RESTARTS_PER_RUN: u32 = 3;

/// Reports that may wait (connected, probed, a small file done): they go out with the
/// next report that must, or once [`OUTBOX_REPORTS`] wait or the oldest has waited
/// [`OUTBOX_DELAY`]. Their bytes are durable already; a crash before they are sent
/// costs a re-fetch of those files, never a wrong file. Many small files thus share
/// one Raft write.
#[derive(Default)]
struct Outbox {
    reports: Vec<EngineReport>,
    since: Option<Instant>,
}

/// Most reports waiting in the outbox.
const OUTBOX_REPORTS: usize = 64;
/// Longest wait of a report in the outbox (checked when reports are added).
const OUTBOX_DELAY: Duration = Duration::from_millis(200);

impl Outbox {
    fn push(&mut self, report: EngineReport) {
        self.since.get_or_insert_with(Instant::now);
        self.reports.push(report);
    }

    fn is_empty(&self) -> bool {
        self.reports.is_empty()
    }

    fn due(&self) -> bool {
        self.reports.len() >= OUTBOX_REPORTS
            || self.since.is_some_and(|t| t.elapsed() >= OUTBOX_DELAY)
    }
}

/// The first chunk, fetched by the probe of a fresh file.
struct FirstPiece {
    response: Response,
    /// Bytes of the file the response covers from offset 0.
    len: u64,
}

impl Run {
    /// Transfers every pending file; returns why it stopped if it did not finish.
    pub(crate) async fn download(&self) -> Result<(), Stop> {
        let mut outbox = Outbox::default();
        if self.job.state == JobState::Connecting {
            // Told once the server answered (the first probe), or at once without files.
            outbox.push(EngineReport::Connected);
        }
        // Files finished in this run may not be recorded yet (their reports wait in
        // the outbox): the next file is searched after the last one done.
        let mut after = 0;
        loop {
            let next = self.reporter.read(self.job.id, self.run, |job| {
                job.files.iter().skip(after).position(|f| !f.transferred).map(|i| i + after)
            })?;
            let Some(index) = next else {
                if !outbox.is_empty() {
                    self.send(&mut outbox, Vec::new()).await?;
                }
                return Ok(());
            };
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            let mut restarts = 0;
            self.origin_only.store(false, Ordering::Relaxed);
            loop {
                match self.download_file(index, &mut outbox).await {
                    Ok(()) => {
                        after = index as usize + 1;
                        break;
                    }
                    Err(Stop::DigestMismatch(why)) if !self.origin_only.load(Ordering::Relaxed) => {
                        // Perhaps bytes from peers: once more, from the origin alone.
                        restarts += 1;
                        tracing::info!(job = %self.job.id, file = index, %why, "starting the file over from the origin alone");
                        self.origin_only.store(true, Ordering::Relaxed);
                        self.send(&mut outbox, vec![EngineReport::RestartFile { file: index }])
                            .await?;
                    }
                    Err(Stop::DigestMismatch(why)) => {
                        // The origin's own bytes do not match its declaration.
                        self.send(&mut outbox, vec![EngineReport::RestartFile { file: index }])
                            .await?;
                        return Err(Failure::fatal(transport_error(
                            BitsCode::BG_E_INVALID_SERVER_RESPONSE,
                            format!("{why} (twice, the second time from the origin alone)"),
                            index,
                        ))
                        .into());
                    }
                    Err(Stop::RestartFile(why)) => {
                        restarts += 1;
                        tracing::info!(job = %self.job.id, file = index, %why, "starting the file over");
                        self.send(&mut outbox, vec![EngineReport::RestartFile { file: index }])
                            .await?;
                        if restarts >= MAX_RESTARTS_PER_RUN {
                            return Err(Failure::protocol(
                                BitsCode::BG_E_REMOTE_FILE_CHANGED,
                                format!(
                                    "the remote file kept changing during the download ({why})"
                                ),
                                index,
                            )
                            .into());
                        }
                    }
                    Err(other) => {
                        // Keep what earlier files achieved before the failure is reported.
                        if matches!(other, Stop::Failed(_)) && !outbox.is_empty() {
                            self.send(&mut outbox, Vec::new()).await?;
                        }
                        return Err(other);
                    }
                }
            }
        }
    }

    /// Sends what waits in `outbox`, then `more`, as one command.
    async fn send(&self, outbox: &mut Outbox, more: Vec<EngineReport>) -> Result<(), Stop> {
        let mut reports = std::mem::take(outbox).reports;
        reports.extend(more);
        self.reporter.report(self.job.id, self.run, reports).await
    }

    fn file(&self, index: u32) -> Result<JobFile, Stop> {
        self.reporter
            .read(self.job.id, self.run, |job| job.files.get(index as usize).cloned())?
            .ok_or(Stop::Stale)
    }

    /// Probe, plan, fetch what is missing, finish one file.
    async fn download_file(&self, index: u32, outbox: &mut Outbox) -> Result<(), Stop> {
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
        let (dest, sandboxes, owner) = (
            Path::new(&file.local_path).to_path_buf(),
            self.settings.sandboxes.clone(),
            self.job.owner.clone(),
        );
        blocking(move || local::check_destination(&sandboxes, &owner, &dest)).await.map_err(
            |e| {
                Failure::fatal(ferry_protocol::job::JobError {
                    context: ferry_protocol::ErrorContext::LocalFile,
                    code: BitsCode::E_ACCESSDENIED,
                    detail: e.to_string(),
                    file_index: Some(index),
                    protocol: None,
                })
            },
        )?;
        let dynamic = self.job.props.dynamic_content;
        // A fresh whole file is probed with a GET of its first chunk, unless its bytes
        // may come from peers: members hold copies of the URL or of some declared
        // digest (known after a HEAD), or another member of the job's fleet fetches the
        // first chunk.
        let peers_may_serve = self.uses_cluster() && {
            let queue = &self.reporter.cluster.state.read().queue;
            queue.offers_url(&url)
                || queue.offers_digests()
                || self.job.fleet.is_some_and(|f| !f.fetches(0))
        };
        let probe_with_data =
            file.chunks.is_empty() && file.ranges.is_empty() && !dynamic && !peers_may_serve;
        let mut source = None;
        let (probe, first) = if local_source {
            let (sandboxes, owner) = (self.settings.sandboxes.clone(), self.job.owner.clone());
            let (probe, opened) = probe_local(&url, index, sandboxes, owner).await?;
            source = Some(opened);
            (probe, None)
        } else if dynamic {
            // BITS sends no HEAD for dynamic content: size and validators are unknown.
            (Probe { remote: RemoteInfo::default(), headers: Vec::new(), moved_to: None }, None)
        } else if probe_with_data {
            self.probe_first_chunk(&url, index).await?
        } else {
            (self.probe(&url, index).await?, None)
        };
        let same_version = file.remote.as_ref().is_some_and(|r| r.same_version(&probe.remote));
        let chunk_size = match probe.remote.size {
            // A resumed file keeps its plan (perhaps one adopted from peers' copies).
            Some(_) if same_version && file.chunk_size != 0 => file.chunk_size,
            Some(size) => self
                .copies_chunk_size(&file, &probe.remote, size)
                .unwrap_or_else(|| chunk_size_for(size, self.settings.chunk_size)),
            None => self.settings.chunk_size,
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
        // What the Probed report will do to the recorded chunks: same version and plan
        // keep them; anything else starts the file over (apply decides the same).
        let keeps_chunks = !file.chunks.is_empty()
            && file.remote.as_ref().is_some_and(|r| r.same_version(&probe.remote))
            && file.chunk_size == chunk_size;
        let durable = if keeps_chunks { file.chunks.clone() } else { Vec::new() };
        if probe.remote.size.is_none() && !file.chunks.is_empty() {
            // Dynamic content cannot resume: what an earlier run wrote is discarded.
            return Err(Stop::RestartFile("dynamic content restarts from the beginning".into()));
        }
        outbox.push(EngineReport::Probed { file: index, remote: probe.remote.clone(), chunk_size });
        // Redirected: pieces go straight to where the redirects led; with the "report"
        // policy that URL also becomes the file's remote name.
        let url = match &probe.moved_to {
            Some(moved) => {
                let policy = self.job.props.security_flags & security::REDIRECT_POLICY_MASK;
                if policy == security::REDIRECT_ALLOW_REPORT {
                    outbox.push(EngineReport::RemoteMoved { file: index, url: moved.clone() });
                }
                moved.clone()
            }
            None => url,
        };

        let temp = self.temp_file(&file, index, durable.is_empty()).await?;
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
            let size = self.stream_dynamic(&fetch, chunk_size, outbox).await?;
            return self.finish_file(&fetch, size, &probe, Vec::new(), outbox).await;
        };
        let total = transfer::planned_bytes(&pieces);
        if let Some(cap) = self.job.props.max_download_size.filter(|cap| total > *cap) {
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
        if let Some(first) = first {
            match missing.front() {
                Some(piece) if piece.local_offset == 0 && piece.len == first.len => {
                    let piece = *piece;
                    missing.pop_front();
                    // A file's last chunk is made durable by the file's final fsync.
                    let record = fetch.receive(piece, first.response, !missing.is_empty()).await?;
                    if missing.is_empty() {
                        // A one-chunk file: reported whole in a single command.
                        unreported.push(record);
                    } else {
                        let report = EngineReport::Chunks { file: index, chunks: vec![record] };
                        self.send(outbox, vec![report]).await?;
                    }
                }
                // The server ignored the range and sent the whole (larger) file.
                _ if first.len == total && total > 0 => {
                    if !single_stream_allowed(&self.job, &file, total) {
                        return Err(no_range_support(&url, index));
                    }
                    tracing::info!(job = %self.job.id, file = index, "the server ignores ranges; fetching the file in one stream");
                    self.stream_into(&fetch, first.response, chunk_size, Some(total), None, outbox)
                        .await?;
                    missing.clear();
                }
                _ => drop(first),
            }
        }
        if !missing.is_empty() {
            match self.fetch_pieces(&fetch, chunk_size, missing, outbox).await {
                Err(Stop::Failed(f))
                    if f.error.code == BitsCode::BG_E_INSUFFICIENT_RANGE_SUPPORT =>
                {
                    if !single_stream_allowed(&self.job, &file, total) {
                        return Err(Stop::Failed(f));
                    }
                    tracing::info!(job = %self.job.id, file = index, "the server ignores ranges; fetching the file in one stream");
                    self.stream_whole(&fetch, chunk_size, total, outbox).await?;
                }
                other => other?,
            }
        }
        self.finish_file(&fetch, total, &probe, unreported, outbox).await
    }

    /// The temporary file: created afresh, or reopened to add to its durable chunks.
    async fn temp_file(&self, file: &JobFile, index: u32, fresh: bool) -> Result<TempFile, Stop> {
        let temp = Path::new(&file.temporary_name).to_path_buf();
        let tag = local::temp_tag(self.job.id, index);
        let (sandboxes, owner) = (self.settings.sandboxes.clone(), self.job.owner.clone());
        if fresh {
            // The destination is checked again right before the create: the directory
            // may have been swapped for a symlink while the probe ran.
            let dest = Path::new(&file.local_path).to_path_buf();
            return blocking(move || TempFile::create(&sandboxes, &owner, &dest, &temp, tag))
                .await
                .map_err(|e| {
                    Failure::local(&e, "cannot create the temporary file", Some(index)).into()
                });
        }
        match blocking(move || TempFile::reopen(&sandboxes, &owner, &temp, tag)).await {
            Ok(Some(temp)) => Ok(temp),
            Ok(None) => Err(Stop::RestartFile("the temporary file is gone".into())),
            Err(e) => Err(Failure::local(&e, "cannot open the temporary file", Some(index)).into()),
        }
    }

    /// Sets the length and mtime, fsyncs, and reports the file with its last chunks.
    async fn finish_file(
        &self,
        fetch: &Fetch,
        size: u64,
        probe: &Probe,
        chunks: Vec<ChunkRecord>,
        outbox: &mut Outbox,
    ) -> Result<(), Stop> {
        let modified = probe
            .remote
            .last_modified
            .as_deref()
            .and_then(|text| httpdate::parse_http_date(text).ok());
        let t = fetch.temp.clone();
        blocking(move || t.set_len(size).and_then(|()| t.finish(modified))).await.map_err(|e| {
            Failure::local(&e, "cannot finish the temporary file", Some(fetch.file))
        })?;
        if let Some(declared) = &probe.remote.sha256 {
            // Bytes from the origin and from peers alike must make the declared file.
            let t = fetch.temp.clone();
            let actual = blocking(move || t.sha256()).await.map_err(|e| {
                Failure::local(&e, "cannot read the temporary file", Some(fetch.file))
            })?;
            if actual != *declared {
                let url = &fetch.url;
                let why = format!(
                    "{url}: the file's SHA-256 is {actual}, the server declared {declared}"
                );
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
        for report in reports {
            outbox.push(report);
        }
        if outbox.due() { self.send(outbox, Vec::new()).await } else { Ok(()) }
    }

    /// `GET bytes=0-(chunk-1)` of a fresh file: the `206` tells size and validators and
    /// carries the first chunk; a `200` is a server that ignores ranges (fine when the
    /// whole file fits in a chunk); a `416` with size 0 is an empty file.
    async fn probe_first_chunk(
        &self,
        url: &str,
        index: u32,
    ) -> Result<(Probe, Option<FirstPiece>), Stop> {
        let asked = self.settings.chunk_size;
        let response = self
            .http
            .send(Method::GET, url, |r| r.header(header::RANGE, format!("bytes=0-{}", asked - 1)))
            .await
            .map_err(|e| Failure::request(&e, url, index))?;
        let headers = response.headers();
        let validators = |size, ranges| RemoteInfo {
            size: Some(size),
            etag: text(headers, header::ETAG),
            last_modified: text(headers, header::LAST_MODIFIED),
            ranges,
            sha256: declared_sha256(headers),
        };
        let (remote, len) = match response.status() {
            StatusCode::PARTIAL_CONTENT => {
                let range = content_range(headers).filter(|r| r.first == 0);
                let (Some(range), Some(total)) = (range, range.and_then(|r| r.total)) else {
                    return Err(Failure::protocol(
                        BitsCode::BG_E_INVALID_SERVER_RESPONSE,
                        format!("{url}: a range answer without a usable Content-Range"),
                        index,
                    )
                    .into());
                };
                (validators(total, true), range.last + 1)
            }
            StatusCode::OK => {
                let Some(size) = content_length(headers) else {
                    return Err(missing_size(url, index));
                };
                (validators(size, false), size)
            }
            StatusCode::RANGE_NOT_SATISFIABLE if content_range_total(headers) == Some(0) => {
                (validators(0, true), 0)
            }
            status => return Err(Failure::status(status.as_u16(), url, index).into()),
        };
        let probe = Probe::new(remote, url, &response);
        let first = (len > 0).then_some(FirstPiece { response, len });
        Ok((probe, first))
    }

    /// `HEAD` (or a `bytes=0-0` GET where HEAD is refused) for size and validators.
    async fn probe(&self, url: &str, index: u32) -> Result<Probe, Stop> {
        let head = self.http.send(Method::HEAD, url, |r| r).await;
        let response = match head {
            Ok(r)
                if matches!(
                    r.status(),
                    StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_IMPLEMENTED
                ) =>
            {
                self.http
                    .send(Method::GET, url, |r| r.header(header::RANGE, "bytes=0-0"))
                    .await
                    .map_err(|e| Failure::request(&e, url, index))?
            }
            Ok(r) => r,
            Err(e) => return Err(Failure::request(&e, url, index).into()),
        };
        let status = response.status();
        if !status.is_success() {
            return Err(Failure::status(status.as_u16(), url, index).into());
        }
        let headers = response.headers();
        let size = if status == StatusCode::PARTIAL_CONTENT {
            content_range(headers).and_then(|r| r.total)
        } else {
            content_length(headers)
        };
        let Some(size) = size else {
            return Err(missing_size(url, index));
        };
        let remote = RemoteInfo {
            size: Some(size),
            etag: text(headers, header::ETAG),
            last_modified: text(headers, header::LAST_MODIFIED),
            ranges: status == StatusCode::PARTIAL_CONTENT
                || text(headers, header::ACCEPT_RANGES).is_some_and(|v| v.contains("bytes")),
            sha256: declared_sha256(headers),
        };
        Ok(Probe::new(remote, url, &response))
    }

    /// Fetches `missing` over the job's connections; chunks are reported as they
    /// become durable (several per command when they finish together).
    async fn fetch_pieces(
        &self,
        fetch: &Fetch,
        chunk_size: u64,
        missing: VecDeque<Piece>,
        outbox: &mut Outbox,
    ) -> Result<(), Stop> {
        let connections = helper::connections(&self.job, &self.settings);
        let sources = self.sources(fetch, chunk_size);
        let queue = Arc::new(Mutex::new(PieceQueue::new(missing, sources)));
        let mut helpers = self.helpers(fetch);
        // A fleet member pings the others while it downloads (stopped with the file).
        let _watcher = self.job.fleet.map(|tag| {
            let watching = watch_fleet(self.reporter.cluster.clone(), tag.fleet, queue.clone());
            tokio_util::task::AbortOnDropHandle::new(tokio::spawn(watching))
        });
        // A helper that fails gives its piece back, perhaps after the local workers
        // found the queue empty and ended: then another round fetches what is left.
        loop {
            let left = lock(&queue).len();
            if left == 0 {
                return Ok(());
            }
            let (done_tx, done_rx) = mpsc::channel::<ChunkRecord>(64);
            let mut tasks = JoinSet::new();
            // Peer workers first: counted before an origin worker looks at the queue.
            if lock(&queue).uses_peers() {
                for _ in 0..PEER_WORKERS {
                    let (done, fetch) = (done_tx.clone(), fetch.clone());
                    let cluster = self.reporter.cluster.clone();
                    // Counted from now until the task ends, or is dropped unstarted.
                    let worker = PeerWorker::start(queue.clone());
                    tasks
                        .spawn(async move { from_peers(&cluster, &fetch, &worker.0, &done).await });
                }
            }
            for _ in 0..connections.min(left) {
                let (queue, done, fetch) = (queue.clone(), done_tx.clone(), fetch.clone());
                tasks.spawn(async move {
                    // A piece is made durable (and then reported) while the worker
                    // already fetches the next one.
                    let mut syncing: Option<tokio::task::JoinHandle<Result<(), Stop>>> = None;
                    let outcome = loop {
                        let Some(piece) = next_origin(&queue, u64::MAX).await else {
                            break Ok(());
                        };
                        let record = match fetch.piece(piece).await {
                            Ok(record) => record,
                            Err(stop) => break Err(stop),
                        };
                        if let Some(previous) = syncing.take() {
                            previous.await.map_err(|_| internal(fetch.file, "a sync failed"))??;
                        }
                        let (temp, done, file) = (fetch.temp.clone(), done.clone(), fetch.file);
                        syncing = Some(tokio::spawn(async move {
                            blocking(move || temp.sync()).await.map_err(|e| {
                                Stop::from(Failure::local(
                                    &e,
                                    "cannot write the temporary file",
                                    Some(file),
                                ))
                            })?;
                            let _ = done.send(record).await;
                            Ok(())
                        }));
                    };
                    if let Some(previous) = syncing.take() {
                        previous.await.map_err(|_| internal(fetch.file, "a sync failed"))??;
                    }
                    outcome
                });
            }
            // Twice the helper's connections: a piece travels here while the helper
            // fetches the next (it fetches `connections` at a time).
            for helper in std::mem::take(&mut helpers) {
                for _ in 0..2 * connections {
                    let (queue, done, helper) = (queue.clone(), done_tx.clone(), helper.clone());
                    tasks.spawn(async move { helper.work(&queue, &done).await });
                }
            }
            drop(done_tx);
            self.collect(fetch, tasks, done_rx, outbox).await?;
        }
    }

    /// Reports the chunks the workers make durable until every worker ended; the first
    /// worker error stops the others.
    async fn collect(
        &self,
        fetch: &Fetch,
        mut tasks: JoinSet<Result<(), Stop>>,
        mut done_rx: mpsc::Receiver<ChunkRecord>,
        outbox: &mut Outbox,
    ) -> Result<(), Stop> {
        let outcome: Result<(), Stop> = loop {
            tokio::select! {
                record = done_rx.recv() => match record {
                    Some(record) => {
                        let mut chunks = vec![record];
                        while let Ok(more) = done_rx.try_recv() {
                            chunks.push(more);
                        }
                        let report = EngineReport::Chunks { file: fetch.file, chunks };
                        if let Err(stop) = self.send(outbox, vec![report]).await {
                            break Err(stop);
                        }
                    }
                    // Every worker is gone: each ended with Ok or its error, collected below.
                    None => break Ok(()),
                },
                Some(joined) = tasks.join_next() => match joined {
                    Ok(Ok(())) => {}
                    Ok(Err(stop)) => break Err(stop),
                    Err(e) if e.is_panic() => break Err(internal(fetch.file, "a download task panicked")),
                    Err(_) => {}
                },
            }
        };
        if outcome.is_ok() {
            // Workers that ended while their last record was being reported.
            while let Some(joined) = tasks.join_next().await {
                match joined {
                    Ok(Ok(())) => {}
                    Ok(Err(stop)) => return Err(stop),
                    Err(_) => return Err(internal(fetch.file, "a download task failed")),
                }
            }
        }
        tasks.abort_all();
        outcome
    }

    /// The chunk size of members' copies of this content, so that their chunks fit
    /// this file's plan (only a size a plan could have: within the chunk limits and
    /// small enough to travel between members).
    fn copies_chunk_size(&self, file: &JobFile, remote: &RemoteInfo, size: u64) -> Option<u64> {
        if !self.uses_cluster() || !file.ranges.is_empty() || !file.chunks.is_empty() {
            return None;
        }
        let keys = ContentKey::all_of(&file.remote_url, remote);
        let state = self.reporter.cluster.state.read();
        let copies = state.queue.peer_copies(&keys);
        let chunk_size = copies.first()?.chunk_size;
        let fits = (transfer::MIN_CHUNK_SIZE..=MAX_HELPER_PIECE).contains(&chunk_size)
            && size.div_ceil(chunk_size) <= transfer::MAX_CHUNKS_PER_FILE;
        fits.then_some(chunk_size)
    }

    /// Whether the job may use helpers and peers' copies (`BG_JOB_ENABLE_PEERCACHING_CLIENT`),
    /// and the current file is not to come from the origin alone.
    fn uses_cluster(&self) -> bool {
        self.job.props.peer_caching_flags & peer_caching::CLIENT != 0
            && !self.origin_only.load(Ordering::Relaxed)
    }

    /// Where pieces of this file may come from besides the origin: members' copies of
    /// the same content (none for local sources, ranges, jobs that do not use peers, or
    /// chunks too large to travel between members: files over 24 GiB).
    fn sources(&self, fetch: &Fetch, chunk_size: u64) -> Option<Sources> {
        if chunk_size > MAX_HELPER_PIECE {
            return None;
        }
        let file = self.reporter.read(self.job.id, self.run, |job| {
            job.files
                .get(fetch.file as usize)
                .filter(|f| f.ranges.is_empty())
                .map(|f| f.remote_url.clone())
        });
        let Ok(Some(url)) = file else { return None };
        if !self.uses_cluster() || fetch.url.starts_with("file://") {
            return None;
        }
        let keys = ContentKey::all_of(&url, &fetch.remote);
        if keys.is_empty() {
            return None;
        }
        let cluster = self.reporter.cluster.clone();
        Some(Sources::new(cluster, keys, self.job.id, chunk_size, self.job.fleet))
    }

    /// The members that may fetch pieces of this file (none for local sources, fleet
    /// members, or jobs that do not use the cluster).
    fn helpers(&self, fetch: &Fetch) -> Vec<Arc<Helper>> {
        let cluster = &self.reporter.cluster;
        let most = self.job.props.max_helpers.unwrap_or(self.settings.max_helpers);
        let fleet = self.job.fleet.is_some();
        if fetch.url.starts_with("file://") || most == 0 || fleet || !self.uses_cluster() {
            return Vec::new();
        }
        let applied = cluster.state.read().applied.map_or(0, |id| id.index);
        cluster
            .member_ids()
            .into_iter()
            .filter(|node| *node != cluster.node_id)
            .take(most as usize)
            .map(|node| {
                Arc::new(Helper {
                    node,
                    cluster: cluster.clone(),
                    fetch: fetch.clone(),
                    job: self.job.id,
                    run: self.run,
                    applied,
                })
            })
            .collect()
    }

    /// The single-stream fallback: one unranged GET of the whole file, reported in
    /// chunks as it arrives. An interruption fails the run (it restarts from zero).
    async fn stream_whole(
        &self,
        fetch: &Fetch,
        chunk_size: u64,
        size: u64,
        outbox: &mut Outbox,
    ) -> Result<(), Stop> {
        let response = fetch
            .http
            .send(Method::GET, &fetch.url, |r| r)
            .await
            .map_err(|e| Failure::request(&e, &fetch.url, fetch.file))?;
        if response.status() != StatusCode::OK {
            return Err(Failure::status(response.status().as_u16(), &fetch.url, fetch.file).into());
        }
        if changed(&fetch.remote, response.headers()) {
            return Err(Stop::RestartFile("the remote file changed".into()));
        }
        self.stream_into(fetch, response, chunk_size, Some(size), None, outbox).await.map(drop)
    }

    /// Dynamic content: one GET from the start, the job's maximum download size
    /// enforced; returns the size received.
    async fn stream_dynamic(
        &self,
        fetch: &Fetch,
        chunk_size: u64,
        outbox: &mut Outbox,
    ) -> Result<u64, Stop> {
        let response = fetch
            .http
            .send(Method::GET, &fetch.url, |r| r)
            .await
            .map_err(|e| Failure::request(&e, &fetch.url, fetch.file))?;
        if !response.status().is_success() {
            return Err(Failure::status(response.status().as_u16(), &fetch.url, fetch.file).into());
        }
        let cap = self.job.props.max_download_size;
        self.stream_into(fetch, response, chunk_size, None, cap, outbox).await
    }

    /// Writes a whole-file response from offset 0, reporting a chunk at every
    /// `chunk_size` boundary (and the tail); returns the bytes written.
    async fn stream_into(
        &self,
        fetch: &Fetch,
        mut response: Response,
        chunk_size: u64,
        size: Option<u64>,
        cap: Option<u64>,
        outbox: &mut Outbox,
    ) -> Result<u64, Stop> {
        let write_error = |e: std::io::Error| {
            Failure::local(&e, "cannot write the temporary file", Some(fetch.file))
        };
        *fetch.headers.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            header_lines(response.headers());
        let mut writer = ChunkWriter::new(fetch.temp.clone(), 0);
        let mut index = 0u32;
        let mut offset = 0u64;
        while let Some(mut bytes) =
            response.chunk().await.map_err(|e| Failure::request(&e, &fetch.url, fetch.file))?
        {
            while !bytes.is_empty() {
                let room = chunk_size - (offset - u64::from(index) * chunk_size);
                let take = usize::try_from(room).unwrap_or(usize::MAX).min(bytes.len());
                let part = bytes.split_to(take);
                offset += part.len() as u64;
                if let Some(cap) = cap.filter(|cap| offset > *cap) {
                    return Err(Failure::fatal(transport_error(
                        BitsCode::BG_E_MAX_DOWNLOAD_SIZE_LIMIT_REACHED,
                        format!(
                            "{}: more than the job's maximum download size of {cap} bytes",
                            fetch.url
                        ),
                        fetch.file,
                    ))
                    .into());
                }
                if size.is_some_and(|size| offset > size) {
                    return Err(Failure::protocol(
                        BitsCode::BG_E_INVALID_SERVER_RESPONSE,
                        format!("{}: the server sent more bytes than the file has", fetch.url),
                        fetch.file,
                    )
                    .into());
                }
                writer.push(&part).await.map_err(write_error)?;
                if offset == (u64::from(index) + 1) * chunk_size {
                    let record = writer.seal(index, true).await.map_err(write_error)?;
                    let report = EngineReport::Chunks { file: fetch.file, chunks: vec![record] };
                    self.send(outbox, vec![report]).await?;
                    writer = ChunkWriter::new(fetch.temp.clone(), offset);
                    index += 1;
                }
            }
        }
        if let Some(size) = size.filter(|size| offset != *size) {
            return Err(short_body(&fetch.url, fetch.file, offset, size));
        }
        if writer.len > 0 {
            let record = writer.seal(index, true).await.map_err(write_error)?;
            let report = EngineReport::Chunks { file: fetch.file, chunks: vec![record] };
            self.send(outbox, vec![report]).await?;
        }
        Ok(offset)
    }
}

fn lock(queue: &Mutex<PieceQueue>) -> std::sync::MutexGuard<'_, PieceQueue> {
    queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The next piece for an origin worker (at most `max_len` bytes), waiting while pieces
/// may still come its way; `None` once none will.
async fn next_origin(queue: &Mutex<PieceQueue>, max_len: u64) -> Option<Piece> {
    loop {
        let next = lock(queue).next_origin(max_len);
        match next {
            Next::Piece(piece) => return Some(piece),
            Next::Done => return None,
            Next::Wait => tokio::time::sleep(peer_cache::IDLE).await,
        }
    }
}

/// Another member fetching pieces of a file for this (its home) node.
struct Helper {
    node: NodeId,
    cluster: ClusterView,
    fetch: Fetch,
    job: JobId,
    run: u64,
    /// This node's applied index when the file started: the helper waits for it.
    applied: u64,
}

impl Helper {
    /// Takes pieces from `queue` until it is empty; a piece the helper cannot deliver
    /// goes back to the queue and the helper stops (it is not asked again this round).
    /// A piece is written while the helper already fetches the next one.
    async fn work(
        &self,
        queue: &Mutex<PieceQueue>,
        done: &mpsc::Sender<ChunkRecord>,
    ) -> Result<(), Stop> {
        let mut writing: Option<(Piece, tokio::task::JoinHandle<std::io::Result<ChunkRecord>>)> =
            None;
        let outcome = loop {
            let Some(piece) = next_origin(queue, MAX_HELPER_PIECE).await else { break Ok(()) };
            let asked = self.ask(piece).await;
            if let Some((written, handle)) = writing.take() {
                self.written(written, handle, queue, done).await;
            }
            match asked {
                Ok(bytes) => {
                    let writer = ChunkWriter::new(self.fetch.temp.clone(), piece.local_offset);
                    writing = Some((piece, tokio::spawn(write_piece(writer, piece, bytes))));
                }
                Err(HelperError::RemoteChanged(why)) => break Err(Stop::RestartFile(why)),
                Err(HelperError::Lost(why)) => {
                    tracing::info!(job = %self.job, helper = self.node, piece = piece.index, %why, "a helper gave its piece back");
                    lock(queue).give_back(piece);
                    break Ok(());
                }
            }
        };
        if let Some((written, handle)) = writing.take() {
            self.written(written, handle, queue, done).await;
        }
        outcome
    }

    /// The end of a piece's write: its record goes to the reports, or (the write
    /// failed) the piece goes back to the queue.
    async fn written(
        &self,
        piece: Piece,
        handle: tokio::task::JoinHandle<std::io::Result<ChunkRecord>>,
        queue: &Mutex<PieceQueue>,
        done: &mpsc::Sender<ChunkRecord>,
    ) {
        match handle.await {
            Ok(Ok(record)) => {
                let _ = done.send(record).await;
            }
            Ok(Err(e)) => {
                tracing::warn!(job = %self.job, piece = piece.index, error = %e, "cannot write a helper's piece");
                lock(queue).give_back(piece);
            }
            Err(_) => lock(queue).give_back(piece),
        }
    }

    /// Returns once the helper missed [`helper::MISSED_PINGS`] pings in a row (one
    /// every [`helper::PING_EVERY`]): a dead helper loses its piece in seconds, not at
    /// the piece's deadline.
    async fn gone(&self) {
        let mut missed = 0;
        loop {
            tokio::time::sleep(helper::PING_EVERY).await;
            let ping = self.cluster.call(self.node, &Ping, helper::PING_TIMEOUT);
            if ping.await.is_ok() {
                missed = 0;
            } else {
                missed += 1;
                if missed >= helper::MISSED_PINGS {
                    return;
                }
            }
        }
    }

    /// One piece's bytes through the helper, checked (length, digest).
    async fn ask(&self, piece: Piece) -> Result<Vec<u8>, HelperError> {
        let request = ChunkRequest {
            job: self.job,
            run: self.run,
            applied: self.applied,
            file: self.fetch.file,
            url: self.fetch.url.clone(),
            remote: self.fetch.remote.clone(),
            offset: piece.remote_offset,
            len: piece.len,
        };
        let asking = self.cluster.call(self.node, &request, helper::deadline(piece.len));
        let answer = tokio::select! {
            answer = asking => answer.map_err(|e| HelperError::Lost(e.to_string()))?,
            () = self.gone() => {
                return Err(HelperError::Lost("the helper stopped answering pings".into()));
            }
        };
        let (bytes, digest) = match answer {
            ChunkAnswer::Bytes { bytes, digest } => (bytes.into_vec(), digest),
            ChunkAnswer::Restart(why) => return Err(HelperError::RemoteChanged(why)),
            ChunkAnswer::Stale => {
                return Err(HelperError::Lost("the helper does not know the run".into()));
            }
            ChunkAnswer::Failed { error, .. } => {
                return Err(HelperError::Lost(format!("{}: {}", error.code, error.detail)));
            }
        };
        // Hashing megabytes is CPU work: off the runtime threads Raft shares.
        let (bytes, actual) = tokio::task::spawn_blocking(move || {
            let actual = *blake3::hash(&bytes).as_bytes();
            (bytes, actual)
        })
        .await
        .map_err(|e| HelperError::Lost(e.to_string()))?;
        if bytes.len() as u64 != piece.len || actual != digest {
            return Err(HelperError::Lost(format!(
                "{} bytes that do not match their digest (wanted {})",
                bytes.len(),
                piece.len
            )));
        }
        Ok(bytes)
    }
}

/// Peer fetches at once per file.
const PEER_WORKERS: usize = 4;

/// Pings the other members of fleet `fleet` every [`helper::PING_EVERY`] and tells
/// `queue` which nodes missed [`helper::MISSED_PINGS`] in a row, until aborted.
async fn watch_fleet(cluster: ClusterView, fleet: JobId, queue: Arc<Mutex<PieceQueue>>) {
    let mut missed: HashMap<NodeId, u32> = HashMap::new();
    loop {
        tokio::time::sleep(helper::PING_EVERY).await;
        let nodes: Vec<NodeId> = (cluster.state.read().queue.fleet_jobs(&fleet).iter())
            .map(|job| job.home_node)
            .filter(|node| *node != cluster.node_id)
            .collect();
        let pings = nodes.into_iter().map(|node| {
            let asked = cluster.call(node, &Ping, helper::PING_TIMEOUT);
            async move { (node, asked.await.is_ok()) }
        });
        for (node, answered) in futures_util::future::join_all(pings).await {
            let count = missed.entry(node).or_default();
            *count = if answered { 0 } else { *count + 1 };
        }
        let unreachable =
            missed.iter().filter(|(_, n)| **n >= helper::MISSED_PINGS).map(|(node, _)| *node);
        lock(&queue).set_unreachable(unreachable.collect());
    }
}

/// A peer worker's place in its queue's count of peer workers, from its spawn until
/// its task ends or is dropped.
struct PeerWorker(Arc<Mutex<PieceQueue>>);

impl PeerWorker {
    fn start(queue: Arc<Mutex<PieceQueue>>) -> Self {
        lock(&queue).peer_worker_started();
        Self(queue)
    }
}

impl Drop for PeerWorker {
    fn drop(&mut self) {
        lock(&self.0).peer_worker_ended();
    }
}

/// A peer worker: takes pieces from members' copies until none is left for peers. A
/// piece a holder cannot deliver goes to another holder or the origin; a holder whose
/// bytes do not match the recorded digest has its copy withdrawn.
async fn from_peers(
    cluster: &ClusterView,
    fetch: &Fetch,
    queue: &Mutex<PieceQueue>,
    done: &mpsc::Sender<ChunkRecord>,
) -> Result<(), Stop> {
    loop {
        let next = lock(queue).next_peer();
        let (piece, holders) = match next {
            Next::Done => return Ok(()),
            Next::Wait => {
                tokio::time::sleep(peer_cache::IDLE).await;
                continue;
            }
            Next::Piece(next) => next,
        };
        let holder = holders[0];
        match peer_cache::fetch_copy(cluster, holder, piece).await {
            Ok(bytes) => {
                let writer = ChunkWriter::new(fetch.temp.clone(), piece.local_offset);
                match write_piece(writer, piece, bytes).await {
                    Ok(mut record) => {
                        record.from_peer = true;
                        let _ = done.send(record).await;
                    }
                    Err(e) => {
                        return Err(Failure::local(
                            &e,
                            "cannot write the temporary file",
                            Some(fetch.file),
                        )
                        .into());
                    }
                }
            }
            Err(CopyError::Missing(why)) => {
                tracing::debug!(node = holder.node, piece = piece.index, %why, "a peer's copy did not deliver");
                lock(queue).peer_failed(piece, holder.node);
            }
            Err(CopyError::Wrong(why)) => {
                tracing::warn!(node = holder.node, job = %holder.job, %why, "a peer's copy is corrupt; withdrawing it");
                let mismatch = Some((piece.index, holder.digest));
                peer_cache::withdraw(cluster, holder.job, holder.file, mismatch).await;
                lock(queue).peer_failed(piece, holder.node);
            }
        }
    }
}

/// Writes a helper's piece at its offset and makes it durable: its record.
async fn write_piece(
    mut writer: ChunkWriter,
    piece: Piece,
    bytes: Vec<u8>,
) -> std::io::Result<ChunkRecord> {
    writer.push(&bytes).await?;
    writer.seal(piece.index, true).await
}

/// Why a helper's piece did not arrive.
enum HelperError {
    /// The remote file changed (the whole run starts the file over).
    RemoteChanged(String),
    /// The helper failed, stalled or is gone: the piece goes back to the queue.
    Lost(String),
}

/// BITS allows one unranged GET for a foreground job's whole file up to 2 GB.
fn single_stream_allowed(job: &Job, file: &JobFile, size: u64) -> bool {
    job.props.priority == Priority::Foreground
        && file.ranges.is_empty()
        && size <= SINGLE_STREAM_LIMIT
}

fn no_range_support(url: &str, index: u32) -> Stop {
    Failure::fatal(transport_error(
        BitsCode::BG_E_INSUFFICIENT_RANGE_SUPPORT,
        format!("{url}: the server ignores range requests; use foreground priority (files up to 2 GB) or dynamic content"),
        index,
    ))
    .into()
}

fn missing_size(url: &str, index: u32) -> Stop {
    Failure::fatal(transport_error(
        BitsCode::BG_E_MISSING_FILE_SIZE,
        format!(
            "{url}: the server gave no Content-Length; enable dynamic content for such servers"
        ),
        index,
    ))
    .into()
}

fn internal(file: u32, what: &str) -> Stop {
    Failure::local(&std::io::Error::other(what.to_owned()), "internal error", Some(file)).into()
}

/// The total of an unsatisfied range answer (`Content-Range: bytes */N`).
fn content_range_total(headers: &HeaderMap) -> Option<u64> {
    text(headers, header::CONTENT_RANGE)?.trim().strip_prefix("bytes */")?.parse().ok()
}
