//! Errors as the API returns them: RFC 9457 `application/problem+json` carrying the
//! BITS code, with the HTTP status derived from the code; and [`as_problem`], which
//! turns any other error response (a rejection of an extractor a route uses directly)
//! into one, so that every error the API answers is a problem document.

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

/// Largest body of a non-problem error response that is read to become the detail.
const MAX_PLAIN_ERROR_BYTES: usize = 16 * 1024;

/// Response middleware: an error response (4xx, 5xx) in plain text (an extractor's or
/// the framework's refusal) becomes a problem document, with the same status and
/// headers and its text as the detail (`E_INVALIDARG` for 4xx, `E_UNEXPECTED` for
/// 5xx). Other responses pass unchanged, among them documents of their own (the JSON
/// of `/healthz` when degraded).
pub async fn as_problem(response: Response) -> Response {
    let status = response.status();
    let plain = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_none_or(|v| v.as_bytes().starts_with(b"text/plain"));
    if !plain || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, MAX_PLAIN_ERROR_BYTES).await {
        Ok(bytes) if !bytes.is_empty() => String::from_utf8_lossy(&bytes).into_owned(),
        _ => status.canonical_reason().unwrap_or("the request failed").to_owned(),
    };
    let code =
        if status.is_server_error() { BitsCode::E_UNEXPECTED } else { BitsCode::E_INVALIDARG };
    let problem = ApiError::new(status.as_u16(), code, text).into_response();
    parts.headers.remove(header::CONTENT_LENGTH);
    let (problem_parts, body) = problem.into_parts();
    for (name, value) in &problem_parts.headers {
        parts.headers.insert(name.clone(), value.clone());
    }
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn plain_error_responses_become_problem_documents() {
        let plain =
            (StatusCode::BAD_REQUEST, [(header::ALLOW, "GET")], "bad query").into_response();
        let response = as_problem(plain).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/problem+json");
        assert_eq!(response.headers()[header::ALLOW], "GET", "other headers are kept");
        let body = axum::body::to_bytes(response.into_body(), 4096).await.expect("body");
        let problem: Problem = serde_json::from_slice(&body).expect("a problem");
        assert_eq!((problem.status, problem.code), (400, BitsCode::E_INVALIDARG));
        assert_eq!(problem.detail, "bad query");
        // A document of its own passes unchanged.
        let json = (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"status":"degraded"}"#,
        )
            .into_response();
        let response = as_problem(json).await;
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body = axum::body::to_bytes(response.into_body(), 4096).await.expect("body");
        assert_eq!(&body[..], br#"{"status":"degraded"}"#);

        let fine = as_problem((StatusCode::OK, "ok").into_response()).await;
        assert_eq!(fine.headers()[header::CONTENT_TYPE], "text/plain; charset=utf-8");
    }
}
