//! The reply of an upload-reply job: downloaded from the final Ack's `BITS-Reply-URL`
//! with ranged resume into a hidden file beside the reply file (renamed by Complete).

use std::path::PathBuf;

use ferry_protocol::transfer::EngineReport;
use reqwest::header;
use reqwest::{Method, StatusCode};

use super::super::Run;
use super::super::failure::{Failure, Stop};
use super::super::fetch::{blocking, content_length, content_range};
use super::super::local::{self, TempFile};
use super::ack::{local_error, protocol_error};

/// Reply bytes between two progress reports (each one fsynced first).
const REPLY_REPORT_BYTES: u64 = 8 * 1024 * 1024;

impl Run {
    /// Downloads the reply into its temporary file (resuming what is durable).
    pub(super) async fn receive_reply(&self, pending: &mut Vec<EngineReport>) -> Result<(), Stop> {
        let (state, temp_path, reply_path) =
            self.reporter.read(self.job.id(), self.run, |job| {
                (job.upload().clone(), job.reply_temporary(), job.reply_path())
            })?;
        if state.reply_done {
            return Ok(());
        }
        let (Some(url), Some(temp_path), Some(reply_path)) =
            (state.reply_url, temp_path, reply_path)
        else {
            return Err(protocol_error("no reply URL was recorded".into()));
        };
        let (sandboxes, owner) = (self.settings.sandboxes.clone(), self.job.owner().clone());
        let mut from = state.reply.bytes_transferred;
        let temp = {
            let (temp, dest) = (PathBuf::from(&temp_path), PathBuf::from(&reply_path));
            let tag = local::temp_tag(self.job.id(), 1);
            blocking(move || match TempFile::reopen(&sandboxes, &owner, &temp, tag.clone())? {
                Some(file) if from > 0 => Ok((file, from)),
                _ => Ok((TempFile::create(&sandboxes, &owner, &dest, &temp, tag)?, 0)),
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
            return Err(super::super::fetch::short_body(&url, 0, offset, total));
        }
        let synced = temp.clone();
        blocking(move || {
            synced.set_len(offset)?;
            synced.finish(None)
        })
        .await
        .map_err(|e| local_error(&e, "cannot write the reply file"))?;
        tracing::info!(job = %self.job.id(), bytes = offset, "reply received");
        let report =
            EngineReport::ReplyReceived { total: Some(offset), received: offset, done: true };
        self.send_reports(pending, vec![report]).await
    }
}
