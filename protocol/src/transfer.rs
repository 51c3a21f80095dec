//! The download model shared by the engine and apply: what a probe learned about a
//! remote file ([`RemoteInfo`]), the chunk plan that maps local bytes to remote ones
//! ([`plan`]), durable chunks with their digests ([`ChunkRecord`]), the HTTP status and
//! error classification of BITS, and the reports the scheduler and the engine send
//! through Raft ([`EngineReport`]).
//!
//! Everything here is pure arithmetic and tables; the node does the I/O.

use serde::{Deserialize, Serialize};
#[cfg(feature = "openapi")]
use utoipa::ToSchema;

use crate::codes::{BitsCode, ErrorContext};
use crate::file::{FileRange, JobFile};
use crate::job::{JobError, LocalStamp};

/// Default chunk size: the unit of assignment, integrity and resume.
pub const DEFAULT_CHUNK_SIZE: u64 = 8 * 1024 * 1024;
/// Smallest chunk size accepted in configuration.
pub const MIN_CHUNK_SIZE: u64 = 64 * 1024;
/// Most chunks one file is split into: larger files get larger chunks, so the
/// replicated chunk records of a file stay small (at most this many). 4,096 since
/// fleets move in 1 MiB pieces, so that a 3 GB fleet file keeps them (2,048 before).
pub const MAX_CHUNKS_PER_FILE: u64 = 4_096;
/// Most bytes of response headers kept per file (`BITS_FILE_PROPERTY_ID_HTTP_RESPONSE_HEADERS`).
pub const MAX_RESPONSE_HEADER_BYTES: usize = 8 * 1024;
/// Most bytes of response headers kept per job, over its files: a job of thousands of
/// files must still fit its replicated row (see [`crate::limits::MAX_JOB_BYTES`]); files
/// past it keep fewer lines, or none.
pub const MAX_JOB_RESPONSE_HEADER_BYTES: usize = 1024 * 1024;

/// What a probe (HEAD, or a `bytes=0-0` GET) learned about a remote file. Two probes
/// that disagree on any field mean the remote file changed (BITS consistency rule).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct RemoteInfo {
    /// Size in bytes; `None` when the server does not say (dynamic content).
    pub size: Option<u64>,
    /// The `ETag`, as sent.
    pub etag: Option<String>,
    /// The `Last-Modified` date, as sent.
    pub last_modified: Option<String>,
    /// True if the server answers range requests with `206`.
    pub ranges: bool,
    /// SHA-256 of the whole file as the server declared it (`Repr-Digest`, RFC 9530, or
    /// `Digest`, RFC 3230), in lowercase hex: the finished file is checked against it,
    /// and peers' verified copies of the same bytes may serve it from any URL.
    pub sha256: Option<String>,
}

impl RemoteInfo {
    /// The validator for `If-Range`: a strong ETag, else the Last-Modified date (RFC 9110
    /// §13.1.5 forbids weak ETags there).
    pub fn if_range(&self) -> Option<&str> {
        self.etag.as_deref().filter(|tag| !tag.starts_with("W/")).or(self.last_modified.as_deref())
    }

    /// True if `other` describes the same version of the file: size and validators
    /// equal, and declared digests too where both declare one.
    pub fn same_version(&self, other: &Self) -> bool {
        self.size == other.size
            && self.etag == other.etag
            && self.last_modified == other.last_modified
            && (self.sha256.is_none() || other.sha256.is_none() || self.sha256 == other.sha256)
    }
}

/// A durable chunk: bytes `[piece.local_offset, +len)` are fsynced in the temporary file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRecord {
    /// Index in the file's [`plan`].
    pub index: u32,
    /// Its length in bytes.
    pub len: u64,
    /// BLAKE3 of its bytes.
    pub digest: [u8; 32],
    /// The bytes came from a peer's copy, not from the origin (`GetPeerDownloadStats`).
    pub from_peer: bool,
}

/// One piece of a file's plan: `len` bytes at `remote_offset` of the remote file go to
/// `local_offset` of the local file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// Position in the plan.
    pub index: u32,
    /// Offset in the local (temporary) file.
    pub local_offset: u64,
    /// Offset in the remote file.
    pub remote_offset: u64,
    /// Bytes.
    pub len: u64,
}

impl Piece {
    /// The `Range` header value that fetches this piece.
    pub fn range_header(&self) -> String {
        format!("bytes={}-{}", self.remote_offset, self.remote_offset + self.len - 1)
    }
}

/// The chunk size for a file of `size` bytes: `configured`, grown so that the file has
/// at most [`MAX_CHUNKS_PER_FILE`] chunks.
pub fn chunk_size_for(size: u64, configured: u64) -> u64 {
    let configured = configured.max(MIN_CHUNK_SIZE);
    configured.max(size.div_ceil(MAX_CHUNKS_PER_FILE))
}

/// Splits the requested `ranges` of a remote file of `size` bytes (the whole file when
/// empty) into pieces of at most `chunk_size` that never cross a range boundary. The
/// local file is the ranges concatenated in the order given (`AddFileWithRanges`).
///
/// A range that starts or ends beyond the file is `BG_E_INVALID_RANGE`, as in BITS.
pub fn plan(ranges: &[FileRange], size: u64, chunk_size: u64) -> Result<Vec<Piece>, BitsCode> {
    let chunk_size = chunk_size.max(1);
    let whole = [FileRange { offset: 0, length: size }];
    let ranges = if ranges.is_empty() { &whole[..] } else { ranges };
    let mut pieces = Vec::new();
    let mut local_offset = 0u64;
    for range in ranges {
        let end = match range.end() {
            None if range.to_eof() => size,
            None => return Err(BitsCode::BG_E_INVALID_RANGE),
            Some(end) => end,
        };
        if range.offset > size || end > size {
            return Err(BitsCode::BG_E_INVALID_RANGE);
        }
        let mut offset = range.offset;
        while offset < end {
            let len = chunk_size.min(end - offset);
            let index = u32::try_from(pieces.len()).map_err(|_| BitsCode::BG_E_INVALID_RANGE)?;
            pieces.push(Piece { index, local_offset, remote_offset: offset, len });
            offset += len;
            local_offset += len;
        }
    }
    Ok(pieces)
}

/// The plan of a recorded file: from its remote size (or, for dynamic content, the
/// size it ended with), its ranges and its chunk size. `None` before the size is known.
pub fn recorded_plan(file: &JobFile) -> Option<Vec<Piece>> {
    let size = file.remote.as_ref().and_then(|remote| remote.size).or(file.progress.bytes_total)?;
    plan(&file.ranges, size, file.chunk_size).ok()
}

/// Where each recorded chunk of `file` starts in its local file, with the record
/// (without a plan, chunk `i` starts at `i` chunk sizes).
pub fn chunk_spans(file: &JobFile) -> Vec<(u64, ChunkRecord)> {
    let pieces = recorded_plan(file);
    file.chunks
        .iter()
        .map(|chunk| {
            let planned = pieces.as_ref().and_then(|p| p.get(chunk.index as usize));
            let offset = planned
                .map_or(u64::from(chunk.index).saturating_mul(file.chunk_size), |p| p.local_offset);
            (offset, *chunk)
        })
        .collect()
}

/// Total bytes of a plan (the local file's size).
pub fn planned_bytes(pieces: &[Piece]) -> u64 {
    pieces.iter().map(|p| p.len).sum()
}

/// The identity of a finished file's content: BLAKE3 over the chunk size and the chunk
/// digests in order (a hash list), so a peer's copy can be checked chunk by chunk.
pub fn content_digest(chunk_size: u64, chunks: &[ChunkRecord]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&chunk_size.to_le_bytes());
    for chunk in chunks {
        hasher.update(&chunk.len.to_le_bytes());
        hasher.update(&chunk.digest);
    }
    *hasher.finalize().as_bytes()
}

/// Whether BITS retries an error (TRANSIENT_ERROR) or gives up (ERROR).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Severity {
    /// Retried after the minimum retry delay.
    Transient,
    /// The job waits in ERROR until the owner acts.
    Fatal,
}

/// BITS's split of HTTP statuses (bits-spec §5.4, which downloads follow): 3xx transient
/// except 300–305 and 307; 4xx fatal except 408 and 409; 5xx transient except 501 and
/// 505; anything else transient.
pub fn http_status_severity(status: u16) -> Severity {
    match status {
        300..=305 | 307 => Severity::Fatal,
        408 | 409 => Severity::Transient,
        400..=499 | 501 | 505 => Severity::Fatal,
        _ => Severity::Transient,
    }
}

/// The severity of a BITS code raised by the engine.
pub fn code_severity(code: BitsCode) -> Severity {
    if let Some(status) = code.http_status() {
        return http_status_severity(status);
    }
    match code {
        BitsCode::BG_E_INSUFFICIENT_RANGE_SUPPORT
        | BitsCode::BG_E_MISSING_FILE_SIZE
        | BitsCode::BG_E_INVALID_RANGE
        | BitsCode::BG_E_INVALID_SERVER_RESPONSE
        | BitsCode::BG_E_INVALID_PROXY_INFO
        | BitsCode::BG_E_INVALID_CREDENTIALS
        | BitsCode::BG_E_MAX_DOWNLOAD_SIZE_LIMIT_REACHED
        | BitsCode::BG_E_TRUST_FAILURE
        | BitsCode::BG_E_SECURE_CHANNEL_FAILURE
        | BitsCode::BG_E_INVALID_AUTH_SCHEME
        | BitsCode::BG_E_REMOTE_NOT_SUPPORTED
        | BitsCode::BG_E_BLOCKED_BY_POLICY
        | BitsCode::E_ACCESSDENIED => Severity::Fatal,
        // Local disk problems (full, read-only, missing directory) need the owner.
        c if c.0 & 0xFFFF_0000 == 0x8007_0000 => Severity::Fatal,
        _ => Severity::Transient,
    }
}

/// A report to the replicated queue from the leader's scheduler or a home node's
/// transfer engine. Only the node itself (principal `ferryd`) may send these.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EngineReport {
    /// Scheduler: give the job transfer time (QUEUED → CONNECTING; starts a new run).
    Activate,
    /// Scheduler: take the time back (time slice over or pre-empted → QUEUED).
    Preempt,
    /// Engine: connected to the server (CONNECTING → TRANSFERRING).
    Connected,
    /// Engine: the remote file as probed, with the chunk size chosen for it. A version
    /// different from the recorded one restarts the file.
    Probed {
        /// File index.
        file: u32,
        /// What the server said.
        remote: RemoteInfo,
        /// Chunk size of the file's plan.
        chunk_size: u64,
    },
    /// Engine: these chunks are durable in the temporary file.
    Chunks {
        /// File index.
        file: u32,
        /// The chunks.
        chunks: Vec<ChunkRecord>,
    },
    /// Engine: these recorded chunks no longer match their digests in the temporary
    /// file (found when a run resumed); they are forgotten and fetched again.
    ChunksLost {
        /// File index.
        file: u32,
        /// Indexes of the damaged chunks.
        chunks: Vec<u32>,
    },
    /// Engine: every byte of the file is durable (and its mtime set).
    FileTransferred {
        /// File index.
        file: u32,
        /// Final size in bytes (the only place a dynamic-content size is learned).
        size: u64,
        /// The last response's headers, `Name: value` lines.
        headers: Vec<String>,
    },
    /// Engine: the remote file changed or the temporary file was lost; start it over.
    RestartFile {
        /// File index.
        file: u32,
    },
    /// Engine: the run failed.
    Failed {
        /// What happened.
        error: JobError,
        /// Transient or fatal.
        severity: Severity,
    },
    /// Scheduler: the job's home node stopped answering (→ TRANSIENT_ERROR with
    /// `BG_E_NETWORK_DISCONNECTED`, "home node unavailable"); the job waits for it.
    HomeNodeLost,
    /// Scheduler: the home node answers again (TRANSIENT_ERROR → QUEUED).
    HomeNodeBack,
    /// Scheduler: the minimum retry delay elapsed (TRANSIENT_ERROR → QUEUED).
    RetryDelayElapsed,
    /// Scheduler: no progress for the no-progress timeout (TRANSIENT_ERROR → ERROR).
    NoProgressTimeout,
    /// Scheduler: active time exceeded the maximum download time (→ ERROR).
    MaxDownloadTimeExceeded,
    /// Scheduler: no activity for the inactivity timeout (→ CANCELLED).
    InactivityTimeout,
    /// Engine: the file's server redirected it for good and the job's redirect policy
    /// is "report": the final URL becomes the remote name (progress is kept).
    RemoteMoved {
        /// File index.
        file: u32,
        /// The URL the redirects ended at.
        url: String,
    },
    /// Upload engine: the server opened session `session` for the job's file, which
    /// had `local` as its size and time then; the upload starts from byte 0.
    UploadSession {
        /// `BITS-Session-Id`.
        session: String,
        /// `BITS-Host-Id`, if the server named one.
        host_id: Option<String>,
        /// `BITS-Host-Id-Fallback-Timeout`, seconds.
        host_fallback_secs: Option<u64>,
        /// The local file when the session began.
        local: LocalStamp,
    },
    /// Upload engine: the server expects byte `next` (`BITS-Received-Content-Range`);
    /// the final Ack of an upload-reply job also names the reply.
    UploadAcked {
        /// The next byte the server expects.
        next: u64,
        /// `BITS-Reply-URL`.
        reply_url: Option<String>,
    },
    /// Upload engine: bytes of the reply are durable in its temporary file.
    ReplyReceived {
        /// The reply's size, once known.
        total: Option<u64>,
        /// Bytes durable.
        received: u64,
        /// Every byte is durable.
        done: bool,
    },
    /// Upload engine: the server has the whole file (and the reply was received) and
    /// the session was closed: the job is transferred.
    UploadClosed,
    /// Home node: after Complete or Cancel, these files were renamed into place (and
    /// every other temporary file deleted).
    FilesFinished {
        /// Indexes of the files now at their destination.
        completed: Vec<u32>,
    },
    /// Home node: the notify command line of this entry ran (or, after a crash, had
    /// been started before it); a failure is retried after the retry delay.
    NotifyRan {
        /// The entry ([`crate::job::NotifyRun::entry`]).
        entry: u64,
        /// The attempt ([`crate::job::NotifyRun::attempt`]).
        attempt: u32,
        /// The program exited with status 0.
        success: bool,
    },
    /// Scheduler: the job's home node was removed from the cluster, with the job's
    /// files. An unfinished job goes to ERROR saying so (`BG_E_NETWORK_DISCONNECTED`
    /// would wait for a node that never returns); a cancelled or completed one is done
    /// with its files (nothing this cluster can reach is left to delete or rename).
    HomeNodeRemoved,
}

impl EngineReport {
    /// True for reports of a transfer run, which must name the job's current run.
    pub fn belongs_to_run(&self) -> bool {
        matches!(
            self,
            Self::Preempt
                | Self::Connected
                | Self::Probed { .. }
                | Self::Chunks { .. }
                | Self::FileTransferred { .. }
                | Self::RestartFile { .. }
                | Self::RemoteMoved { .. }
                | Self::UploadSession { .. }
                | Self::UploadAcked { .. }
                | Self::ReplyReceived { .. }
                | Self::UploadClosed
                | Self::Failed { .. }
        )
    }
}

/// True if `error` is the scheduler's "home node unavailable" (the job waits for the
/// node, not for its retry delay).
pub fn is_home_node_lost(error: &JobError) -> bool {
    error.code == BitsCode::BG_E_NETWORK_DISCONNECTED
        && error.context == ErrorContext::GeneralQueueManager
}

/// Response headers cut to [`MAX_RESPONSE_HEADER_BYTES`].
pub fn bounded_headers(headers: &[String]) -> Vec<String> {
    headers_within(headers, MAX_RESPONSE_HEADER_BYTES)
}

/// The first response header lines that fit in `limit` bytes (counting CRLF after each).
pub fn headers_within(headers: &[String], limit: usize) -> Vec<String> {
    let mut total = 0;
    headers
        .iter()
        .take_while(|line| {
            total += line.len() + 2;
            total <= limit
        })
        .cloned()
        .collect()
}

/// Bytes of `headers` as [`headers_within`] counts them.
pub fn header_bytes(headers: &[String]) -> usize {
    headers.iter().map(|line| line.len() + 2).sum()
}

/// A transport error as BITS reports it.
pub fn transport_error(code: BitsCode, detail: String, file: Option<u32>) -> JobError {
    JobError {
        context: ErrorContext::GeneralTransport,
        code,
        detail,
        file_index: file,
        protocol: Some("http".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::file::LENGTH_TO_EOF;

    fn r(offset: u64, length: u64) -> FileRange {
        FileRange { offset, length }
    }

    #[test]
    fn whole_file_splits_into_chunks() {
        let pieces = plan(&[], 20, 8).expect("plan");
        let spans: Vec<_> =
            pieces.iter().map(|p| (p.local_offset, p.remote_offset, p.len)).collect();
        assert_eq!(spans, vec![(0, 0, 8), (8, 8, 8), (16, 16, 4)]);
        assert_eq!(pieces[2].range_header(), "bytes=16-19");
        assert!(plan(&[], 0, 8).expect("empty").is_empty());
    }

    #[test]
    fn ranges_concatenate_in_the_order_given() {
        // The BITS example: 100-199, 900-999, 400-499 make a 300-byte local file.
        let pieces = plan(&[r(100, 100), r(900, 100), r(400, 100)], 1000, 64).expect("plan");
        let spans: Vec<_> =
            pieces.iter().map(|p| (p.local_offset, p.remote_offset, p.len)).collect();
        assert_eq!(
            spans,
            vec![
                (0, 100, 64),
                (64, 164, 36),
                (100, 900, 64),
                (164, 964, 36),
                (200, 400, 64),
                (264, 464, 36)
            ]
        );
        assert_eq!(planned_bytes(&pieces), 300);
    }

    #[test]
    fn eof_ranges_and_ranges_outside_the_file() {
        let pieces = plan(&[r(900, LENGTH_TO_EOF)], 1000, 1000).expect("plan");
        assert_eq!(planned_bytes(&pieces), 100);
        assert_eq!(plan(&[r(1001, 1)], 1000, 8), Err(BitsCode::BG_E_INVALID_RANGE));
        assert_eq!(plan(&[r(990, 11)], 1000, 8), Err(BitsCode::BG_E_INVALID_RANGE));
        assert_eq!(plan(&[r(1000, LENGTH_TO_EOF)], 1000, 8).map(|p| p.len()), Ok(0));
    }

    #[test]
    fn chunk_size_grows_for_huge_files() {
        assert_eq!(chunk_size_for(1 << 30, DEFAULT_CHUNK_SIZE), DEFAULT_CHUNK_SIZE);
        let big = 1u64 << 40;
        assert_eq!(chunk_size_for(big, DEFAULT_CHUNK_SIZE), big / MAX_CHUNKS_PER_FILE);
        assert_eq!(chunk_size_for(10, 1), MIN_CHUNK_SIZE);
    }

    #[test]
    fn http_statuses_split_as_bits_does() {
        for (status, severity) in [
            (404, Severity::Fatal),
            (403, Severity::Fatal),
            (401, Severity::Fatal),
            (408, Severity::Transient),
            (409, Severity::Transient),
            (500, Severity::Transient),
            (503, Severity::Transient),
            (501, Severity::Fatal),
            (505, Severity::Fatal),
            (302, Severity::Fatal),
            (306, Severity::Transient),
        ] {
            assert_eq!(http_status_severity(status), severity, "{status}");
            assert_eq!(code_severity(BitsCode::http(status)), severity, "{status}");
        }
        assert_eq!(code_severity(BitsCode::BG_E_INSUFFICIENT_RANGE_SUPPORT), Severity::Fatal);
        assert_eq!(code_severity(BitsCode::BG_E_CONNECTION_CLOSED), Severity::Transient);
    }

    #[test]
    fn if_range_prefers_a_strong_etag() {
        let mut info = RemoteInfo {
            size: Some(1),
            etag: Some("\"a\"".into()),
            last_modified: Some("Sat, 01 Aug 2026 10:00:00 GMT".into()),
            ranges: true,
            sha256: None,
        };
        assert_eq!(info.if_range(), Some("\"a\""));
        info.etag = Some("W/\"a\"".into());
        assert_eq!(info.if_range(), Some("Sat, 01 Aug 2026 10:00:00 GMT"));
    }

    proptest! {
        /// Pieces tile the local file without gaps, stay inside their range, and never
        /// exceed the chunk size.
        #[test]
        fn plans_tile_the_local_file(
            size in 0u64..10_000,
            chunk in 1u64..2_000,
            raw in proptest::collection::vec((0u64..10_000, 0u64..3_000), 0..6),
        ) {
            let ranges: Vec<FileRange> = raw.iter().map(|&(o, l)| r(o, l)).collect();
            let valid = ranges.iter().all(|x| x.offset + x.length <= size);
            match plan(&ranges, size, chunk) {
                Err(_) => prop_assert!(!valid),
                Ok(pieces) => {
                    prop_assert!(valid);
                    let mut next = 0;
                    for (i, p) in pieces.iter().enumerate() {
                        prop_assert_eq!(p.index as usize, i);
                        prop_assert_eq!(p.local_offset, next);
                        prop_assert!(p.len >= 1 && p.len <= chunk);
                        prop_assert!(p.remote_offset + p.len <= size);
                        next += p.len;
                    }
                    let wanted: u64 = if ranges.is_empty() { size } else { ranges.iter().map(|x| x.length).sum() };
                    prop_assert_eq!(next, wanted);
                }
            }
        }
    }
}
