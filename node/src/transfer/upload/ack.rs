//! The server's Acks, and the errors and local-file checks of an upload run.

use std::fs::File;
use std::time::UNIX_EPOCH;

use ferry_protocol::job::{JobError, LocalStamp};
use ferry_protocol::transfer::http_status_severity;
use ferry_protocol::upload::{self, PacketType, header as bits};
use ferry_protocol::{BitsCode, ErrorContext};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;

use super::super::failure::{Failure, Stop};

/// A server's Ack: its status and headers.
pub(super) struct Ack {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
}

impl Ack {
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub(super) fn ok(&self) -> bool {
        self.status == StatusCode::OK || self.status == StatusCode::CREATED
    }

    /// The error code the server named (`BITS-Error-Code`).
    pub(super) fn error_code(&self) -> Option<u32> {
        self.header(bits::ERROR_CODE).and_then(upload::parse_hex)
    }

    /// `BITS-Received-Content-Range`.
    pub(super) fn received(&self) -> Option<u64> {
        self.header(bits::RECEIVED_CONTENT_RANGE)?.trim().parse().ok()
    }

    /// The job error for an Ack that is not 200/201 (or not an Ack at all).
    pub(super) fn failure(&self, packet: PacketType, url: &str) -> Failure {
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

pub(super) fn protocol_error(detail: String) -> Stop {
    Failure::protocol(BitsCode::BG_E_INVALID_SERVER_RESPONSE, detail, 0).into()
}

pub(super) fn local_error(e: &std::io::Error, what: &str) -> Stop {
    Failure::local(e, what, Some(0)).into()
}

/// The local file's size and modification time.
pub(super) fn stamp(file: &File) -> std::io::Result<LocalStamp> {
    let meta = file.metadata()?;
    let modified = meta.modified()?.duration_since(UNIX_EPOCH).unwrap_or_default();
    Ok(LocalStamp {
        size: meta.len(),
        modified_ns: u64::try_from(modified.as_nanos()).unwrap_or(u64::MAX),
    })
}

pub(super) fn changed_file(path: &str) -> Stop {
    Failure::fatal(JobError {
        context: ErrorContext::LocalFile,
        code: BitsCode::BG_E_LOCAL_FILE_CHANGED,
        detail: format!("{path} changed while it was being uploaded"),
        file_index: Some(0),
        protocol: None,
    })
    .into()
}
