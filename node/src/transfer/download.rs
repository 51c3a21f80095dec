//! One transfer run of a download job on its home node: for each untransferred file in
//! order, probe the remote file, report what it is (a changed version restarts the
//! file), then fetch the chunks not yet durable over one or more connections with
//! `Range` + `If-Range`, writing each at its place in the temporary file, and report
//! each chunk (with its BLAKE3 digest) once it is fsynced.
//!
//! BITS rules enforced here: a `200` where a range was asked, a changed validator or a
//! mismatching `Content-Range` means the remote changed (restart the file) or the
//! server lacks range support (`BG_E_INSUFFICIENT_RANGE_SUPPORT`, with the
//! single-stream fallback for foreground jobs up to 2 GB); no size without dynamic
//! content is `BG_E_MISSING_FILE_SIZE`; dynamic content streams from the start with the
//! job's maximum download size enforced.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};

use ferry_protocol::file::JobFile;
use ferry_protocol::transfer::{
    self, ChunkRecord, EngineReport, Piece, RemoteInfo, chunk_size_for,
};
use ferry_protocol::{BitsCode, Job, Priority};
use reqwest::header::{self, HeaderMap};
use reqwest::{Method, Response, StatusCode};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::failure::{Failure, Stop};
use super::http::HttpSession;
use super::local::TempFile;
use super::{EngineSettings, Reporter};

/// Bytes buffered per connection before a positioned write.
const WRITE_BUFFER: usize = 1024 * 1024;
/// Largest file BITS fetches in one unranged GET when the server lacks ranges.
const SINGLE_STREAM_LIMIT: u64 = 2 * 1024 * 1024 * 1024;
/// How often a file may be started over within one run before the run gives up.
const MAX_RESTARTS_PER_RUN: u32 = 3;

/// Everything a run needs.
pub(crate) struct Run {
    /// The job, as it was when the run started.
    pub(crate) job: Job,
    /// Which run this is.
    pub(crate) run: u64,
    /// Reports to the queue and fresh reads of it.
    pub(crate) reporter: Reporter,
    /// Node settings.
    pub(crate) settings: EngineSettings,
    /// HTTP client and credentials of the run.
    pub(crate) http: Arc<HttpSession>,
}

impl Run {
    /// Transfers every pending file; returns why it stopped if it did not finish.
    pub(crate) async fn transfer(&self) -> Result<(), Stop> {
        let mut connected = self.job.state == ferry_protocol::JobState::Transferring;
        loop {
            let job = self.reporter.job(self.job.id, self.run)?;
            let Some(index) = job.files.iter().position(|f| !f.transferred) else {
                if !connected {
                    self.report(EngineReport::Connected).await?;
                }
                return Ok(());
            };
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            let mut restarts = 0;
            loop {
                match self.download_file(index, &mut connected).await {
                    Ok(()) => break,
                    Err(Stop::RestartFile(why)) => {
                        restarts += 1;
                        tracing::info!(job = %self.job.id, file = index, %why, "starting the file over");
                        self.report(EngineReport::RestartFile { file: index }).await?;
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
                    Err(other) => return Err(other),
                }
            }
        }
    }

    async fn report(&self, report: EngineReport) -> Result<(), Stop> {
        self.reporter.report(self.job.id, self.run, report).await
    }

    /// Probe, plan, fetch what is missing, finish one file.
    async fn download_file(&self, index: u32, connected: &mut bool) -> Result<(), Stop> {
        let job = self.reporter.job(self.job.id, self.run)?;
        let file = file_of(&job, index)?;
        let url = file.remote_url.clone();
        if url.starts_with("file://") && !self.settings.allow_file_urls {
            return Err(Failure::fatal(transport_error(
                BitsCode::E_ACCESSDENIED,
                "file:// sources are disabled on this node (transfer.allow_file_urls)".into(),
                index,
            ))
            .into());
        }
        let probe = if url.starts_with("file://") {
            probe_local(&url, index).await?
        } else {
            self.probe(&job, &url, index).await?
        };
        if !*connected {
            self.report(EngineReport::Connected).await?;
            *connected = true;
        }
        let chunk_size = match probe.remote.size {
            Some(size) => chunk_size_for(size, self.settings.chunk_size),
            None => self.settings.chunk_size,
        };
        if let Some(size) = probe.remote.size {
            transfer::plan(&file.ranges, size, chunk_size).map_err(|code| {
                Failure::protocol(
                    code,
                    format!("{url}: the file's ranges lie outside its {size} bytes"),
                    index,
                )
            })?;
        }
        // Dynamic content cannot resume: whatever an earlier run wrote is discarded.
        if probe.remote.size.is_none() && !file.chunks.is_empty() {
            return Err(Stop::RestartFile("dynamic content restarts from the beginning".into()));
        }
        self.report(EngineReport::Probed { file: index, remote: probe.remote.clone(), chunk_size })
            .await?;
        let job = self.reporter.job(self.job.id, self.run)?;
        let file = file_of(&job, index)?;
        let temp_path = Path::new(&file.temporary_name).to_path_buf();

        let temp = if file.chunks.is_empty() {
            let path = temp_path.clone();
            blocking(move || TempFile::create(&path))
                .await
                .map_err(|e| Failure::local(&e, "cannot create the temporary file", Some(index)))?
        } else {
            let path = temp_path.clone();
            match blocking(move || TempFile::reopen(&path)).await {
                Ok(Some(temp)) => temp,
                Ok(None) => return Err(Stop::RestartFile("the temporary file is gone".into())),
                Err(e) => {
                    return Err(
                        Failure::local(&e, "cannot open the temporary file", Some(index)).into()
                    );
                }
            }
        };

        let Some(size) = probe.remote.size else {
            let size = self.stream_dynamic(&job, file, index, &temp, chunk_size).await?;
            return self.finish_file(index, &temp, size, &probe).await;
        };
        let pieces = transfer::plan(&file.ranges, size, chunk_size).map_err(|code| {
            Failure::protocol(
                code,
                format!("the file's ranges lie outside its {size} bytes"),
                index,
            )
        })?;
        let total = transfer::planned_bytes(&pieces);
        if let Some(cap) = job.props.max_download_size.filter(|cap| total > *cap) {
            return Err(Failure::fatal(transport_error(
                BitsCode::BG_E_MAX_DOWNLOAD_SIZE_LIMIT_REACHED,
                format!("the file has {total} bytes; the job allows {cap}"),
                index,
            ))
            .into());
        }
        let missing: VecDeque<Piece> = pieces
            .iter()
            .filter(|p| file.chunks.binary_search_by_key(&p.index, |c| c.index).is_err())
            .copied()
            .collect();
        if !missing.is_empty() {
            let fetch = Fetch {
                url: url.clone(),
                file: index,
                remote: probe.remote.clone(),
                temp: temp.clone(),
                http: self.http.clone(),
                headers: Arc::new(Mutex::new(probe.headers.clone())),
            };
            match self.fetch_pieces(&job, &fetch, missing).await {
                Err(Stop::Failed(f))
                    if f.error.code == BitsCode::BG_E_INSUFFICIENT_RANGE_SUPPORT =>
                {
                    if !single_stream_allowed(&job, file, size) {
                        return Err(Stop::Failed(f));
                    }
                    tracing::info!(job = %job.id, file = index, "the server ignores ranges; fetching the file in one stream");
                    self.stream_whole(&fetch, chunk_size, size).await?;
                }
                other => other?,
            }
        }
        self.finish_file(index, &temp, total, &probe).await
    }

    async fn finish_file(
        &self,
        index: u32,
        temp: &TempFile,
        size: u64,
        probe: &Probe,
    ) -> Result<(), Stop> {
        let modified = probe
            .remote
            .last_modified
            .as_deref()
            .and_then(|text| httpdate::parse_http_date(text).ok());
        let t = temp.clone();
        blocking(move || t.set_len(size).and_then(|()| t.finish(modified)))
            .await
            .map_err(|e| Failure::local(&e, "cannot finish the temporary file", Some(index)))?;
        self.report(EngineReport::FileTransferred {
            file: index,
            size,
            headers: probe.headers.clone(),
        })
        .await
    }

    /// HEAD (or a `bytes=0-0` GET where HEAD is refused) for size and validators.
    async fn probe(&self, job: &Job, url: &str, index: u32) -> Result<Probe, Stop> {
        if job.props.dynamic_content {
            // BITS sends no HEAD for dynamic content: size and validators are unknown.
            return Ok(Probe { remote: RemoteInfo::default(), headers: Vec::new() });
        }
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
            return Err(Failure::fatal(transport_error(
                BitsCode::BG_E_MISSING_FILE_SIZE,
                format!("{url}: the server gave no Content-Length; enable dynamic content for such servers"),
                index,
            ))
            .into());
        };
        let remote = RemoteInfo {
            size: Some(size),
            etag: text(headers, header::ETAG),
            last_modified: text(headers, header::LAST_MODIFIED),
            ranges: status == StatusCode::PARTIAL_CONTENT
                || text(headers, header::ACCEPT_RANGES).is_some_and(|v| v.contains("bytes")),
        };
        Ok(Probe { remote, headers: header_lines(headers) })
    }

    /// Fetches `missing` over the job's connections; each chunk is reported once durable.
    async fn fetch_pieces(
        &self,
        job: &Job,
        fetch: &Fetch,
        missing: VecDeque<Piece>,
    ) -> Result<(), Stop> {
        let connections =
            job.props
                .max_connections
                .unwrap_or(self.settings.connections)
                .clamp(1, ferry_protocol::limits::MAX_CONNECTIONS_PER_FILE) as usize;
        let workers = connections.min(missing.len());
        let queue = Arc::new(Mutex::new(missing));
        let (done_tx, mut done_rx) = mpsc::channel::<ChunkRecord>(64);
        let mut tasks = JoinSet::new();
        for _ in 0..workers {
            let queue = queue.clone();
            let done = done_tx.clone();
            let fetch = fetch.clone();
            tasks.spawn(async move {
                loop {
                    let piece =
                        queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop_front();
                    let Some(piece) = piece else { return Ok(()) };
                    let record = fetch.piece(piece).await?;
                    if done.send(record).await.is_err() {
                        return Ok(());
                    }
                }
            });
        }
        drop(done_tx);
        let mut batch = Vec::new();
        let outcome: Result<(), Stop> = loop {
            tokio::select! {
                record = done_rx.recv() => match record {
                    Some(record) => {
                        batch.push(record);
                        while let Ok(more) = done_rx.try_recv() {
                            batch.push(more);
                        }
                        let chunks = std::mem::take(&mut batch);
                        if let Err(stop) = self.report(EngineReport::Chunks { file: fetch.file, chunks }).await {
                            break Err(stop);
                        }
                    }
                    // Every worker is gone: each ended with Ok or its error, collected below.
                    None => break Ok(()),
                },
                Some(joined) = tasks.join_next() => match joined {
                    Ok(Ok(())) => {}
                    Ok(Err(stop)) => break Err(stop),
                    Err(e) if e.is_panic() => break Err(Failure::local(&std::io::Error::other("a download task panicked"), "internal error", Some(fetch.file)).into()),
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
                    Err(e) => {
                        let e = std::io::Error::other(format!("a download task failed: {e}"));
                        return Err(Failure::local(&e, "internal error", Some(fetch.file)).into());
                    }
                }
            }
        }
        tasks.abort_all();
        outcome
    }

    /// The single-stream fallback: one unranged GET of the whole file, reported in
    /// chunks as it arrives. An interruption fails the run (it restarts from zero).
    async fn stream_whole(&self, fetch: &Fetch, chunk_size: u64, size: u64) -> Result<(), Stop> {
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
        let received = self.stream_into(fetch, response, chunk_size, Some(size), None).await?;
        if received != size {
            return Err(short_body(&fetch.url, fetch.file, received, size));
        }
        Ok(())
    }

    /// Dynamic content: one GET from the start, the job's maximum download size
    /// enforced; returns the size received.
    async fn stream_dynamic(
        &self,
        job: &Job,
        file: &JobFile,
        index: u32,
        temp: &TempFile,
        chunk_size: u64,
    ) -> Result<u64, Stop> {
        let fetch = Fetch {
            url: file.remote_url.clone(),
            file: index,
            remote: RemoteInfo::default(),
            temp: temp.clone(),
            http: self.http.clone(),
            headers: Arc::new(Mutex::new(Vec::new())),
        };
        let response = fetch
            .http
            .send(Method::GET, &fetch.url, |r| r)
            .await
            .map_err(|e| Failure::request(&e, &fetch.url, index))?;
        if !response.status().is_success() {
            return Err(Failure::status(response.status().as_u16(), &fetch.url, index).into());
        }
        self.stream_into(&fetch, response, chunk_size, None, job.props.max_download_size).await
    }

    /// Writes a whole-file response from offset 0, reporting a chunk at every
    /// `chunk_size` boundary (and the tail).
    async fn stream_into(
        &self,
        fetch: &Fetch,
        mut response: Response,
        chunk_size: u64,
        size: Option<u64>,
        cap: Option<u64>,
    ) -> Result<u64, Stop> {
        let mut writer = ChunkWriter::new(fetch.temp.clone(), 0);
        let mut index = 0u32;
        let mut offset = 0u64;
        loop {
            let next =
                response.chunk().await.map_err(|e| Failure::request(&e, &fetch.url, fetch.file))?;
            let Some(mut bytes) = next else { break };
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
                writer.push(&part).await.map_err(|e| {
                    Failure::local(&e, "cannot write the temporary file", Some(fetch.file))
                })?;
                if offset == (u64::from(index) + 1) * chunk_size {
                    let record = writer.seal(index).await.map_err(|e| {
                        Failure::local(&e, "cannot write the temporary file", Some(fetch.file))
                    })?;
                    self.report(EngineReport::Chunks { file: fetch.file, chunks: vec![record] })
                        .await?;
                    writer = ChunkWriter::new(fetch.temp.clone(), offset);
                    index += 1;
                }
            }
        }
        if writer.len > 0 {
            let record = writer.seal(index).await.map_err(|e| {
                Failure::local(&e, "cannot write the temporary file", Some(fetch.file))
            })?;
            self.report(EngineReport::Chunks { file: fetch.file, chunks: vec![record] }).await?;
        }
        Ok(offset)
    }
}

/// What a probe learned, with the headers of its response.
struct Probe {
    remote: RemoteInfo,
    headers: Vec<String>,
}

/// One file's fetch, shared by its connections.
#[derive(Clone)]
struct Fetch {
    url: String,
    file: u32,
    remote: RemoteInfo,
    temp: TempFile,
    http: Arc<HttpSession>,
    /// Headers of the last response (reported with the finished file).
    headers: Arc<Mutex<Vec<String>>>,
}

impl Fetch {
    /// `GET` one piece with `Range` + `If-Range`, check the answer, write it, fsync.
    async fn piece(&self, piece: Piece) -> Result<ChunkRecord, Stop> {
        if self.url.starts_with("file://") {
            return self.local_piece(piece).await;
        }
        let validator = self.remote.if_range().map(str::to_owned);
        let response = self
            .http
            .send(Method::GET, &self.url, |r| {
                let r = r.header(header::RANGE, piece.range_header());
                match &validator {
                    Some(v) => r.header(header::IF_RANGE, v),
                    None => r,
                }
            })
            .await
            .map_err(|e| Failure::request(&e, &self.url, self.file))?;
        match response.status() {
            StatusCode::PARTIAL_CONTENT => {}
            StatusCode::OK | StatusCode::RANGE_NOT_SATISFIABLE
                if changed(&self.remote, response.headers()) =>
            {
                return Err(Stop::RestartFile("the remote file changed".into()));
            }
            StatusCode::OK => {
                return Err(Failure::fatal(transport_error(
                    BitsCode::BG_E_INSUFFICIENT_RANGE_SUPPORT,
                    format!("{}: the server ignored a range request (answered 200)", self.url),
                    self.file,
                ))
                .into());
            }
            status => return Err(Failure::status(status.as_u16(), &self.url, self.file).into()),
        }
        let range = content_range(response.headers());
        let expected_last = piece.remote_offset + piece.len - 1;
        let fits = range.is_some_and(|r| {
            r.first == piece.remote_offset
                && r.last == expected_last
                && r.total.is_none_or(|t| Some(t) == self.remote.size)
        });
        if !fits {
            if range.and_then(|r| r.total).is_some_and(|t| Some(t) != self.remote.size) {
                return Err(Stop::RestartFile("the remote file's size changed".into()));
            }
            return Err(Failure::protocol(
                BitsCode::BG_E_INVALID_SERVER_RESPONSE,
                format!(
                    "{}: asked for {}, the server sent Content-Range {:?}",
                    self.url,
                    piece.range_header(),
                    text(response.headers(), header::CONTENT_RANGE)
                ),
                self.file,
            )
            .into());
        }
        *self.headers.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            header_lines(response.headers());
        let mut response = response;
        let mut writer = ChunkWriter::new(self.temp.clone(), piece.local_offset);
        while let Some(bytes) =
            response.chunk().await.map_err(|e| Failure::request(&e, &self.url, self.file))?
        {
            if writer.len + bytes.len() as u64 > piece.len {
                return Err(Failure::protocol(
                    BitsCode::BG_E_INVALID_SERVER_RESPONSE,
                    format!(
                        "{}: the server sent more than the {} bytes asked for",
                        self.url, piece.len
                    ),
                    self.file,
                )
                .into());
            }
            writer.push(&bytes).await.map_err(|e| {
                Failure::local(&e, "cannot write the temporary file", Some(self.file))
            })?;
        }
        if writer.len != piece.len {
            return Err(short_body(&self.url, self.file, writer.len, piece.len));
        }
        writer.seal(piece.index).await.map_err(|e| {
            Failure::local(&e, "cannot write the temporary file", Some(self.file)).into()
        })
    }

    /// A piece of a `file://` source: positioned reads from the source file.
    async fn local_piece(&self, piece: Piece) -> Result<ChunkRecord, Stop> {
        let path = local_source(&self.url, self.file)?;
        let mut writer = ChunkWriter::new(self.temp.clone(), piece.local_offset);
        let mut offset = piece.remote_offset;
        let end = piece.remote_offset + piece.len;
        while offset < end {
            let len =
                usize::try_from((end - offset).min(WRITE_BUFFER as u64)).unwrap_or(WRITE_BUFFER);
            let path = path.clone();
            let bytes = blocking(move || {
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0u8; len];
                std::fs::File::open(&path)?.read_exact_at(&mut buf, offset)?;
                Ok(buf)
            })
            .await
            .map_err(|e| Failure::local(&e, "cannot read the source file", Some(self.file)))?;
            writer.push(&bytes).await.map_err(|e| {
                Failure::local(&e, "cannot write the temporary file", Some(self.file))
            })?;
            offset += len as u64;
        }
        writer.seal(piece.index).await.map_err(|e| {
            Failure::local(&e, "cannot write the temporary file", Some(self.file)).into()
        })
    }
}

/// Accumulates one chunk's bytes: hashes them, writes them in [`WRITE_BUFFER`] pieces
/// at their offset, and fsyncs at the end.
struct ChunkWriter {
    temp: TempFile,
    /// Where the buffer goes in the temporary file.
    offset: u64,
    buffer: Vec<u8>,
    hasher: blake3::Hasher,
    /// Bytes pushed so far.
    len: u64,
}

impl ChunkWriter {
    fn new(temp: TempFile, offset: u64) -> Self {
        Self {
            temp,
            offset,
            buffer: Vec::with_capacity(WRITE_BUFFER),
            hasher: blake3::Hasher::new(),
            len: 0,
        }
    }

    async fn push(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= WRITE_BUFFER {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let buffer = std::mem::take(&mut self.buffer);
        let temp = self.temp.clone();
        let offset = self.offset;
        let mut buffer = blocking(move || temp.write_at(&buffer, offset).map(|()| buffer)).await?;
        self.offset += buffer.len() as u64;
        buffer.clear();
        self.buffer = buffer;
        Ok(())
    }

    /// Writes the rest, fsyncs, and returns the chunk's record.
    async fn seal(mut self, index: u32) -> std::io::Result<ChunkRecord> {
        self.flush().await?;
        let temp = self.temp.clone();
        blocking(move || temp.sync()).await?;
        Ok(ChunkRecord { index, len: self.len, digest: *self.hasher.finalize().as_bytes() })
    }
}

/// The probe of a `file://` source: its size and modification time.
async fn probe_local(url: &str, index: u32) -> Result<Probe, Stop> {
    let path = local_source(url, index)?;
    let meta = blocking(move || std::fs::metadata(&path))
        .await
        .map_err(|e| Failure::local(&e, "cannot read the source file", Some(index)))?;
    let modified = meta.modified().ok().map(httpdate::fmt_http_date);
    Ok(Probe {
        remote: RemoteInfo {
            size: Some(meta.len()),
            etag: None,
            last_modified: modified,
            ranges: true,
        },
        headers: Vec::new(),
    })
}

fn local_source(url: &str, index: u32) -> Result<std::path::PathBuf, Stop> {
    url::Url::parse(url).ok().and_then(|u| u.to_file_path().ok()).ok_or_else(|| {
        Failure::fatal(transport_error(
            BitsCode::E_INVALIDARG,
            format!("{url} is not a local file URL"),
            index,
        ))
        .into()
    })
}

/// BITS allows one unranged GET for a foreground job's whole file up to 2 GB.
fn single_stream_allowed(job: &Job, file: &JobFile, size: u64) -> bool {
    job.props.priority == Priority::Foreground
        && file.ranges.is_empty()
        && size <= SINGLE_STREAM_LIMIT
}

fn file_of(job: &Job, index: u32) -> Result<&JobFile, Stop> {
    job.files.get(index as usize).ok_or(Stop::Stale)
}

fn transport_error(code: BitsCode, detail: String, file: u32) -> ferry_protocol::job::JobError {
    let mut error = super::failure::transport(code, detail, Some(file));
    if code == BitsCode::E_ACCESSDENIED || code == BitsCode::E_INVALIDARG {
        error.context = ferry_protocol::ErrorContext::RemoteFile;
    }
    error
}

fn short_body(url: &str, file: u32, got: u64, wanted: u64) -> Stop {
    Failure::new(super::failure::transport(
        BitsCode::BG_E_CONNECTION_CLOSED,
        format!("{url}: the connection closed after {got} of {wanted} bytes"),
        Some(file),
    ))
    .into()
}

/// True if a response's validators differ from the probed ones.
fn changed(remote: &RemoteInfo, headers: &HeaderMap) -> bool {
    let etag = text(headers, header::ETAG);
    let modified = text(headers, header::LAST_MODIFIED);
    (etag.is_some() && etag != remote.etag)
        || (modified.is_some() && modified != remote.last_modified)
}

/// A parsed `Content-Range: bytes first-last/total`.
#[derive(Clone, Copy, Debug)]
struct ContentRange {
    first: u64,
    last: u64,
    total: Option<u64>,
}

fn content_range(headers: &HeaderMap) -> Option<ContentRange> {
    let value = text(headers, header::CONTENT_RANGE)?;
    let rest = value.trim().strip_prefix("bytes ")?;
    let (span, total) = rest.split_once('/')?;
    let (first, last) = span.split_once('-')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    let range =
        ContentRange { first: first.trim().parse().ok()?, last: last.trim().parse().ok()?, total };
    (range.first <= range.last).then_some(range)
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    text(headers, header::CONTENT_LENGTH)?.trim().parse().ok()
}

fn text(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// Response headers as `Name: value` lines (BITS File5's raw header block).
fn header_lines(headers: &HeaderMap) -> Vec<String> {
    headers
        .iter()
        .filter(|(name, _)| *name != header::SET_COOKIE)
        .map(|(name, value)| format!("{}: {}", name, String::from_utf8_lossy(value.as_bytes())))
        .collect()
}

/// Runs blocking file work on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| std::io::Error::other(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_parses_and_rejects() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_RANGE, "bytes 10-19/100".parse().expect("value"));
        let r = content_range(&h).expect("parsed");
        assert_eq!((r.first, r.last, r.total), (10, 19, Some(100)));
        h.insert(header::CONTENT_RANGE, "bytes 10-19/*".parse().expect("value"));
        assert_eq!(content_range(&h).and_then(|r| r.total), None);
        for bad in ["bytes 19-10/100", "items 1-2/3", "bytes x-1/2", "bytes 1-2"] {
            h.insert(header::CONTENT_RANGE, bad.parse().expect("value"));
            assert!(content_range(&h).is_none(), "{bad}");
        }
    }

    #[test]
    fn validators_detect_a_changed_remote() {
        let remote = RemoteInfo {
            size: Some(1),
            etag: Some("\"a\"".into()),
            last_modified: None,
            ranges: true,
        };
        let mut h = HeaderMap::new();
        assert!(!changed(&remote, &h));
        h.insert(header::ETAG, "\"a\"".parse().expect("value"));
        assert!(!changed(&remote, &h));
        h.insert(header::ETAG, "\"b\"".parse().expect("value"));
        assert!(changed(&remote, &h));
    }

    #[test]
    fn mtime_from_last_modified() {
        let t = httpdate::parse_http_date("Sat, 01 Aug 2026 10:00:00 GMT").expect("date");
        assert!(t > std::time::SystemTime::UNIX_EPOCH);
    }
}
