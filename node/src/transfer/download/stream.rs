//! Whole-file streams: the single-stream fallback for a server without ranges and
//! dynamic content, reported in chunks as the bytes arrive.

use ferry_protocol::BitsCode;
use ferry_protocol::transfer::EngineReport;
use reqwest::{Method, Response, StatusCode};

use super::Outbox;
use crate::transfer::Run;
use crate::transfer::failure::{Failure, Stop};
use crate::transfer::fetch::{
    ChunkWriter, Fetch, changed, header_lines, short_body, transport_error,
};

impl Run {
    /// The single-stream fallback: one unranged GET of the whole file, reported in
    /// chunks as it arrives. An interruption fails the run (it restarts from zero).
    pub(super) async fn stream_whole(
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
    pub(super) async fn stream_dynamic(
        &self,
        fetch: &Fetch,
        chunk_size: u64,
        outbox: &mut Outbox,
    ) -> Result<u64, Stop> {
        let response = fetch
            .http
            .send(self.method(fetch.file)?, &fetch.url, |r| r)
            .await
            .map_err(|e| Failure::request(&e, &fetch.url, fetch.file))?;
        if !response.status().is_success() {
            return Err(Failure::status(response.status().as_u16(), &fetch.url, fetch.file).into());
        }
        let cap = self.job.props().max_download_size;
        self.stream_into(fetch, response, chunk_size, None, cap, outbox).await
    }

    /// The verb of a whole-file request: the job's own (`SetHttpMethod`), else `GET`.
    fn method(&self, file: u32) -> Result<Method, Stop> {
        let Some(verb) = self.job.props().custom_method() else { return Ok(Method::GET) };
        Method::from_bytes(verb.as_bytes()).map_err(|_| {
            let detail = format!("{verb:?} is not an HTTP method");
            Failure::fatal(transport_error(BitsCode::E_INVALIDARG, detail, file)).into()
        })
    }

    /// Writes a whole-file response from offset 0, reporting a chunk at every
    /// `chunk_size` boundary (and the tail); returns the bytes written.
    pub(super) async fn stream_into(
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
        let mut writer = ChunkWriter::new(fetch.temp.clone(), 0, chunk_size);
        let mut index = 0u32;
        let mut offset = 0u64;
        while let Some(mut bytes) =
            response.chunk().await.map_err(|e| Failure::request(&e, &fetch.url, fetch.file))?
        {
            fetch.http.throttle.take(bytes.len()).await;
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
                crate::metrics::get().received("origin", part.len() as u64);
                if offset == (u64::from(index) + 1) * chunk_size {
                    let record = writer.seal(index, true).await.map_err(write_error)?;
                    let report = EngineReport::Chunks { file: fetch.file, chunks: vec![record] };
                    self.send(outbox, vec![report]).await?;
                    writer = ChunkWriter::new(fetch.temp.clone(), offset, chunk_size);
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
