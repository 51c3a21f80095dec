//! Fetching one piece of a file: `GET` with `Range` + `If-Range` (or a positioned read
//! of a `file://` source), checking the answer (`206`, the exact `Content-Range`, the
//! length), writing the bytes at their place in the temporary file with their BLAKE3
//! digest, and fsyncing before the chunk is reported. Also the response parsing shared
//! with the probe.

use std::sync::{Arc, Mutex};

use ferry_protocol::BitsCode;
use ferry_protocol::transfer::{ChunkRecord, Piece, RemoteInfo};
use reqwest::header::{self, HeaderMap};
use reqwest::{Method, Response, StatusCode};

use super::failure::{Failure, Stop};
use super::http::HttpSession;
use super::local::TempFile;

/// Bytes buffered per connection before a positioned write.
pub(super) const WRITE_BUFFER: usize = 1024 * 1024;

/// One file's fetch, shared by its connections.
#[derive(Clone)]
pub(super) struct Fetch {
    pub(super) url: String,
    pub(super) file: u32,
    pub(super) remote: RemoteInfo,
    pub(super) temp: TempFile,
    pub(super) http: Arc<HttpSession>,
    /// The node's connection caps toward origins.
    pub(super) caps: Arc<super::ConnectionCaps>,
    /// Headers of the last response (reported with the finished file).
    pub(super) headers: Arc<Mutex<Vec<String>>>,
    /// A `file://` source, opened through its owner's sandbox by the probe.
    pub(super) source: Option<Arc<std::fs::File>>,
}

impl Fetch {
    /// `GET` one piece with `Range` + `If-Range`, check the answer and write it; the
    /// caller makes it durable ([`TempFile::sync`]) before reporting it.
    pub(super) async fn piece(&self, piece: Piece) -> Result<ChunkRecord, Stop> {
        if self.url.starts_with("file://") {
            return self.local_piece(piece).await;
        }
        let _permit = self.caps.acquire(&self.url).await;
        let response = request_piece(&self.http, &self.url, &self.remote, piece, self.file).await?;
        self.receive(piece, response, false).await
    }

    /// Writes the body of a checked response for `piece`, then (with `sync`) fsyncs:
    /// the chunk's record.
    pub(super) async fn receive(
        &self,
        piece: Piece,
        response: Response,
        sync: bool,
    ) -> Result<ChunkRecord, Stop> {
        let writer = self.read_body(piece, response).await?;
        let record = writer.seal(piece.index, sync).await.map_err(|e| {
            Stop::from(Failure::local(&e, "cannot write the temporary file", Some(self.file)))
        })?;
        crate::metrics::get().received("origin", record.len);
        Ok(record)
    }

    /// Reads the body of a checked response for `piece`, the file's last: its record,
    /// and what of it is still to be written (by the file's finish, in the same trip
    /// to the blocking pool).
    pub(super) async fn receive_last(
        &self,
        piece: Piece,
        response: Response,
    ) -> Result<(ChunkRecord, Unwritten), Stop> {
        let writer = self.read_body(piece, response).await?;
        let (record, rest) = writer.into_unwritten(piece.index);
        crate::metrics::get().received("origin", record.len);
        Ok((record, rest))
    }

    /// The body of a checked response for `piece`, hashed and written but for the
    /// last buffer; an error if it is not exactly the piece's length.
    async fn read_body(&self, piece: Piece, mut response: Response) -> Result<ChunkWriter, Stop> {
        *self.headers.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            header_lines(response.headers());
        let mut writer = ChunkWriter::new(self.temp.clone(), piece.local_offset, piece.len);
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
            // Not reading while the limit makes this connection wait is what slows the
            // server down.
            self.http.throttle.take(bytes.len()).await;
            writer.push(&bytes).await.map_err(|e| {
                Failure::local(&e, "cannot write the temporary file", Some(self.file))
            })?;
        }
        if writer.len != piece.len {
            return Err(short_body(&self.url, self.file, writer.len, piece.len));
        }
        Ok(writer)
    }

    /// A piece of a `file://` source: positioned reads from the source file.
    async fn local_piece(&self, piece: Piece) -> Result<ChunkRecord, Stop> {
        let source = self.source.clone().ok_or_else(|| {
            Failure::fatal(transport_error(
                BitsCode::E_UNEXPECTED,
                "the local source was not opened".into(),
                self.file,
            ))
        })?;
        let mut writer = ChunkWriter::new(self.temp.clone(), piece.local_offset, piece.len);
        let mut offset = piece.remote_offset;
        let end = piece.remote_offset + piece.len;
        while offset < end {
            let len =
                usize::try_from((end - offset).min(WRITE_BUFFER as u64)).unwrap_or(WRITE_BUFFER);
            let source = source.clone();
            let bytes = blocking(move || {
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0u8; len];
                source.read_exact_at(&mut buf, offset)?;
                Ok(buf)
            })
            .await
            .map_err(|e| Failure::local(&e, "cannot read the source file", Some(self.file)))?;
            writer.push(&bytes).await.map_err(|e| {
                Failure::local(&e, "cannot write the temporary file", Some(self.file))
            })?;
            offset += len as u64;
        }
        let record = writer.seal(piece.index, false).await.map_err(|e| {
            Stop::from(Failure::local(&e, "cannot write the temporary file", Some(self.file)))
        })?;
        crate::metrics::get().received("origin", record.len);
        Ok(record)
    }
}

/// `GET` `piece` of the file at `url` (file index `file`) with `Range` + `If-Range`
/// and checks the answer: a `206` with exactly the range asked for, of the probed
/// version. The body is the caller's to read.
pub(super) async fn request_piece(
    http: &HttpSession,
    url: &str,
    remote: &RemoteInfo,
    piece: Piece,
    file: u32,
) -> Result<Response, Stop> {
    let validator = remote.if_range().map(str::to_owned);
    let response = http
        .send(Method::GET, url, |r| {
            let r = r.header(header::RANGE, piece.range_header());
            match &validator {
                Some(v) => r.header(header::IF_RANGE, v),
                None => r,
            }
        })
        .await
        .map_err(|e| Failure::request(&e, url, file))?;
    match response.status() {
        StatusCode::PARTIAL_CONTENT => {}
        StatusCode::OK | StatusCode::RANGE_NOT_SATISFIABLE
            if changed(remote, response.headers()) =>
        {
            return Err(Stop::RestartFile("the remote file changed".into()));
        }
        StatusCode::OK => {
            return Err(no_range_support(url, file, response.version()));
        }
        status => return Err(Failure::status(status.as_u16(), url, file).into()),
    }
    let range = content_range(response.headers());
    let expected_last = piece.remote_offset + piece.len - 1;
    let fits = range.is_some_and(|r| {
        r.first == piece.remote_offset
            && r.last == expected_last
            && r.total.is_none_or(|t| Some(t) == remote.size)
    });
    if !fits {
        if range.and_then(|r| r.total).is_some_and(|t| Some(t) != remote.size) {
            return Err(Stop::RestartFile("the remote file's size changed".into()));
        }
        return Err(Failure::protocol(
            BitsCode::BG_E_INVALID_SERVER_RESPONSE,
            format!(
                "{url}: asked for {}, the server sent Content-Range {:?}",
                piece.range_header(),
                text(response.headers(), header::CONTENT_RANGE)
            ),
            file,
        )
        .into());
    }
    Ok(response)
}

/// What a probe learned, with the headers of its response.
pub(super) struct Probe {
    /// Size and validators.
    pub(super) remote: RemoteInfo,
    /// The response's headers.
    pub(super) headers: Vec<String>,
    /// Where redirects led, if the answer came from another URL.
    pub(super) moved_to: Option<String>,
}

impl Probe {
    /// A probe of `asked` answered by `response`.
    pub(super) fn new(remote: RemoteInfo, asked: &str, response: &Response) -> Self {
        let final_url = response.url().as_str();
        Self {
            remote,
            headers: header_lines(response.headers()),
            moved_to: (final_url != asked).then(|| final_url.to_owned()),
        }
    }
}

/// Accumulates one chunk's bytes: hashes them, writes them in [`WRITE_BUFFER`] pieces
/// at their offset, and fsyncs at the end.
pub(super) struct ChunkWriter {
    temp: TempFile,
    /// Where the buffer goes in the temporary file.
    offset: u64,
    buffer: Vec<u8>,
    hasher: blake3::Hasher,
    /// Bytes pushed so far.
    pub(super) len: u64,
}

impl ChunkWriter {
    /// A writer of the chunk at `offset`, of about `len` bytes (its buffer holds at
    /// most [`WRITE_BUFFER`]).
    pub(super) fn new(temp: TempFile, offset: u64, len: u64) -> Self {
        let capacity = usize::try_from(len).unwrap_or(WRITE_BUFFER).min(WRITE_BUFFER);
        Self {
            temp,
            offset,
            buffer: Vec::with_capacity(capacity),
            hasher: blake3::Hasher::new(),
            len: 0,
        }
    }

    pub(super) async fn push(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.temp.count_received(bytes.len());
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

    /// Writes the rest and fsyncs (unless the caller will), in one trip to the
    /// blocking pool; returns the chunk's record.
    pub(super) async fn seal(self, index: u32, sync: bool) -> std::io::Result<ChunkRecord> {
        let temp = self.temp.clone();
        let (record, rest) = self.into_unwritten(index);
        fail::fail_point!("chunk.before_fsync", |_| Err(crate::failpoint::error(
            "chunk.before_fsync"
        )));
        if sync || !rest.buffer.is_empty() {
            blocking(move || {
                rest.write(&temp)?;
                if sync { temp.sync() } else { Ok(()) }
            })
            .await?;
        }
        Ok(record)
    }

    /// The chunk's record, and its bytes not written yet.
    pub(super) fn into_unwritten(self, index: u32) -> (ChunkRecord, Unwritten) {
        let record = ChunkRecord {
            index,
            len: self.len,
            digest: *self.hasher.finalize().as_bytes(),
            from_peer: false,
        };
        (record, Unwritten { offset: self.offset, buffer: self.buffer })
    }
}

/// The last bytes of a chunk, received and hashed but not yet written.
pub(super) struct Unwritten {
    offset: u64,
    buffer: Vec<u8>,
}

impl Unwritten {
    /// Writes them at their place in `temp` (blocking).
    pub(super) fn write(self, temp: &TempFile) -> std::io::Result<()> {
        if self.buffer.is_empty() { Ok(()) } else { temp.write_at(&self.buffer, self.offset) }
    }
}

/// The probe of a `file://` source: the source opened through its owner's sandbox,
/// its size and modification time.
pub(super) async fn probe_local(
    url: &str,
    index: u32,
    sandboxes: Arc<crate::fs::Sandboxes>,
    owner: ferry_protocol::Principal,
) -> Result<(Probe, Arc<std::fs::File>), Stop> {
    let path = local_source(url, index)?;
    let (source, meta) = blocking(move || {
        let source = super::local::open_source(&sandboxes, &owner, &path)?;
        let meta = source.metadata()?;
        Ok((source, meta))
    })
    .await
    .map_err(|e| Failure::local(&e, "cannot read the source file", Some(index)))?;
    let modified = meta.modified().ok().map(httpdate::fmt_http_date);
    let probe = Probe {
        remote: RemoteInfo {
            size: Some(meta.len()),
            etag: None,
            last_modified: modified,
            ranges: true,
            sha256: None,
        },
        headers: Vec::new(),
        moved_to: None,
    };
    Ok((probe, Arc::new(source)))
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

pub(super) fn transport_error(
    code: BitsCode,
    detail: String,
    file: u32,
) -> ferry_protocol::job::JobError {
    let mut error = super::failure::transport(code, detail, Some(file));
    if code == BitsCode::E_ACCESSDENIED || code == BitsCode::E_INVALIDARG {
        error.context = ferry_protocol::ErrorContext::RemoteFile;
    }
    error
}

/// The server answered a range request with the whole file: `BG_E_INSUFFICIENT_RANGE_SUPPORT`,
/// or `BG_E_INSUFFICIENT_HTTP_SUPPORT` when it speaks HTTP/1.0 (BITS needs HTTP/1.1).
pub(super) fn no_range_support(url: &str, index: u32, version: reqwest::Version) -> Stop {
    let way_out = "use foreground priority (files up to 2 GB) or dynamic content";
    let (code, detail) = if version < reqwest::Version::HTTP_11 {
        (
            BitsCode::BG_E_INSUFFICIENT_HTTP_SUPPORT,
            format!(
                "{url}: the server speaks {version:?}, not HTTP/1.1, and ignores range requests; {way_out}"
            ),
        )
    } else {
        (
            BitsCode::BG_E_INSUFFICIENT_RANGE_SUPPORT,
            format!("{url}: the server ignores range requests; {way_out}"),
        )
    };
    Failure::fatal(transport_error(code, detail, index)).into()
}

pub(super) fn short_body(url: &str, file: u32, got: u64, wanted: u64) -> Stop {
    Failure::new(super::failure::transport(
        BitsCode::BG_E_CONNECTION_CLOSED,
        format!("{url}: the connection closed after {got} of {wanted} bytes"),
        Some(file),
    ))
    .into()
}

/// True if a response's validators differ from the probed ones.
pub(super) fn changed(remote: &RemoteInfo, headers: &HeaderMap) -> bool {
    let etag = text(headers, header::ETAG);
    let modified = text(headers, header::LAST_MODIFIED);
    let sha256 = declared_sha256(headers);
    (etag.is_some() && etag != remote.etag)
        || (modified.is_some() && modified != remote.last_modified)
        || (sha256.is_some() && remote.sha256.is_some() && sha256 != remote.sha256)
}

/// The SHA-256 of the whole file a response declares, in lowercase hex: the `sha-256`
/// member of `Repr-Digest` (RFC 9530, `sha-256=:<base64>:`), else of the obsolete
/// `Digest` (RFC 3230, `SHA-256=<base64>`). Malformed values declare nothing.
pub(super) fn declared_sha256(headers: &HeaderMap) -> Option<String> {
    use base64::Engine as _;
    let member = |name: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .find_map(|member| {
                let (algorithm, value) = member.trim().split_once('=')?;
                algorithm.trim().eq_ignore_ascii_case("sha-256").then(|| {
                    let value = value.split(';').next().unwrap_or_default().trim();
                    value.trim_matches(':').to_owned()
                })
            })
    };
    let encoded = member("repr-digest").or_else(|| member("digest"))?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).ok()?;
    (bytes.len() == 32).then(|| hex::encode(bytes))
}

/// A parsed `Content-Range: bytes first-last/total`.
#[derive(Clone, Copy, Debug)]
pub(super) struct ContentRange {
    pub(super) first: u64,
    pub(super) last: u64,
    pub(super) total: Option<u64>,
}

pub(super) fn content_range(headers: &HeaderMap) -> Option<ContentRange> {
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

pub(super) fn content_length(headers: &HeaderMap) -> Option<u64> {
    text(headers, header::CONTENT_LENGTH)?.trim().parse().ok()
}

pub(super) fn text(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// Response headers as `Name: value` lines (BITS File5's raw header block).
pub(super) fn header_lines(headers: &HeaderMap) -> Vec<String> {
    headers
        .iter()
        .filter(|(name, _)| *name != header::SET_COOKIE)
        .map(|(name, value)| format!("{}: {}", name, String::from_utf8_lossy(value.as_bytes())))
        .collect()
}

/// Runs blocking file work on the blocking pool (tracked by the current run's scope).
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    super::scope::spawn_blocking(f).await.map_err(|e| std::io::Error::other(e.to_string()))?
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
    fn declared_digests_parse_from_both_headers() {
        // SHA-256 of "abc".
        let b64 = "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=";
        let hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let mut h = HeaderMap::new();
        assert_eq!(declared_sha256(&h), None);
        h.insert("digest", format!("MD5=x, SHA-256={b64}").parse().expect("value"));
        assert_eq!(declared_sha256(&h).as_deref(), Some(hex));
        h.insert("repr-digest", format!("sha-512=:AA==:, sha-256=:{b64}:").parse().expect("v"));
        assert_eq!(declared_sha256(&h).as_deref(), Some(hex));
        for bad in ["sha-256=:AAAA:", "sha-256=:not base64:", "sha-256", "md5=:AA==:"] {
            h.remove("digest");
            h.insert("repr-digest", bad.parse().expect("value"));
            assert_eq!(declared_sha256(&h), None, "{bad}");
        }
        let remote = RemoteInfo { sha256: Some("00".repeat(32)), ..RemoteInfo::default() };
        h.insert("repr-digest", format!("sha-256=:{b64}:").parse().expect("value"));
        assert!(changed(&remote, &h), "another declared digest is another file");
    }

    #[test]
    fn validators_detect_a_changed_remote() {
        let remote = RemoteInfo {
            size: Some(1),
            etag: Some("\"a\"".into()),
            last_modified: None,
            ranges: true,
            sha256: None,
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
