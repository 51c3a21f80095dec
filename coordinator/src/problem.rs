//! Errors as the API returns them: RFC 9457 `application/problem+json` carrying the
//! BITS code, with the HTTP status derived from the code.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferry_protocol::api::Problem;
use ferry_protocol::{BitsCode, CommandError};

use crate::cluster::ClusterError;

/// An API failure: an HTTP status, the BITS code and what to do about it.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The problem document.
    pub problem: Problem,
    /// The request's body was not (fully) read: the connection cannot carry another
    /// request, so the response says `Connection: close` and clients do not reuse it.
    pub close_connection: bool,
}

impl ApiError {
    /// A problem with an explicit status.
    pub fn new(status: u16, code: BitsCode, detail: impl Into<String>) -> Self {
        Self { problem: Problem::new(status, code, detail), close_connection: false }
    }

    /// Marks the response as the last on its connection (see `close_connection`).
    pub fn closing_connection(mut self) -> Self {
        self.close_connection = true;
        self
    }

    /// 400 `E_INVALIDARG`.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(400, BitsCode::E_INVALIDARG, detail)
    }
}

/// The HTTP status for a BITS code returned by apply.
pub fn status_for(code: BitsCode) -> u16 {
    match code {
        BitsCode::BG_E_NOT_FOUND => 404,
        BitsCode::E_ACCESSDENIED => 403,
        BitsCode::BG_E_INVALID_STATE
        | BitsCode::BG_E_EMPTY
        | BitsCode::E_PENDING
        | BitsCode::BG_E_ERROR_INFORMATION_UNAVAILABLE
        | BitsCode::BG_E_READ_ONLY_PROPERTY_AFTER_ADDFILE
        | BitsCode::BG_E_READ_ONLY_PROPERTY_AFTER_RESUME
        | BitsCode::BG_E_TOO_MANY_FILES
        | BitsCode::BG_E_TOO_MANY_FILES_IN_JOB
        | BitsCode::BG_E_TOO_MANY_JOBS_PER_USER
        | BitsCode::BG_E_TOO_MANY_JOBS_PER_MACHINE
        | BitsCode::BG_E_TOO_MANY_RANGES_IN_FILE => 409,
        BitsCode::ERROR_RETRY => 503,
        BitsCode::E_FAIL | BitsCode::E_UNEXPECTED => 500,
        _ => 400,
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        Self::new(status_for(e.code), e.code, e.detail)
    }
}

impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> Self {
        match e {
            ClusterError::TooLarge { .. } => Self::new(413, BitsCode::E_INVALIDARG, e.to_string()),
            ClusterError::NotMember(_) => Self::new(404, BitsCode::E_INVALIDARG, e.to_string()),
            ClusterError::MembershipRefused(_) => {
                Self::new(409, BitsCode::E_INVALIDARG, e.to_string())
            }
            _ => Self::new(503, BitsCode::ERROR_RETRY, e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(self.problem)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"ferry\""),
            );
        }
        if self.close_connection {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
