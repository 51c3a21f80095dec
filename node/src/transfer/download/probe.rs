//! The probe of a remote file: a `GET` of the first chunk for a fresh file (the `206`
//! tells size and validators and carries the chunk), else `HEAD` (or a `bytes=0-0`
//! GET where HEAD is refused).

use ferry_protocol::BitsCode;
use ferry_protocol::peer_cache::FLEET_CHUNK_SIZE;
use ferry_protocol::transfer::RemoteInfo;
use reqwest::header::{self, HeaderMap};
use reqwest::{Method, Response, StatusCode};

use super::missing_size;
use crate::transfer::Run;
use crate::transfer::failure::{Failure, Stop};
use crate::transfer::fetch::{Probe, content_length, content_range, declared_sha256, text};

/// The first chunk, fetched by the probe of a fresh file.
pub(super) struct FirstPiece {
    /// The response, its body unread.
    pub(super) response: Response,
    /// Bytes of the file the response covers from offset 0.
    pub(super) len: u64,
}

impl Run {
    /// `GET bytes=0-(chunk-1)` of a fresh file: the `206` tells size and validators and
    /// carries the first chunk; a `200` is a server that ignores ranges (fine when the
    /// whole file fits in a chunk); a `416` with size 0 is an empty file.
    pub(super) async fn probe_first_chunk(
        &self,
        url: &str,
        index: u32,
    ) -> Result<(Probe, Option<FirstPiece>), Stop> {
        let asked = self.chunk_size_setting();
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

    /// The chunk size a fresh file is planned with (grown for a huge file), unless
    /// copies have a plan: a fleet member's [`FLEET_CHUNK_SIZE`], the same on every
    /// member whatever its node's configuration; else `[transfer] chunk_size_bytes`.
    pub(super) fn chunk_size_setting(&self) -> u64 {
        match self.job.fleet() {
            Some(_) => FLEET_CHUNK_SIZE,
            None => self.settings.chunk_size,
        }
    }

    /// `HEAD` (or a `bytes=0-0` GET where HEAD is refused) for size and validators.
    pub(super) async fn probe(&self, url: &str, index: u32) -> Result<Probe, Stop> {
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
}

/// The total of an unsatisfied range answer (`Content-Range: bytes */N`).
fn content_range_total(headers: &HeaderMap) -> Option<u64> {
    text(headers, header::CONTENT_RANGE)?.trim().strip_prefix("bytes */")?.parse().ok()
}
