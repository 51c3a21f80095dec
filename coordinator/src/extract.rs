//! Request extractors that turn malformed input into problem documents: JSON bodies
//! (syntax, unknown fields, wrong types), path ids, the idempotency key.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use ferry_protocol::{JobId, RequestId};
use serde::de::DeserializeOwned;

use crate::IDEMPOTENCY_KEY;
use crate::problem::ApiError;

/// A JSON body; any rejection becomes a 400 (415 for a wrong content type) problem.
pub(crate) struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_problem(&rejection)),
        }
    }
}

fn json_problem(rejection: &JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            415,
            ferry_protocol::BitsCode::E_INVALIDARG,
            "send the body as JSON with 'Content-Type: application/json'",
        ),
        JsonRejection::JsonSyntaxError(_) => {
            ApiError::bad_request(format!("the body is not valid JSON: {}", rejection.body_text()))
        }
        JsonRejection::JsonDataError(_) => ApiError::bad_request(format!(
            "the body does not match the expected fields: {}",
            rejection.body_text()
        )),
        // E.g. 413 for a body over the limit: keep the status axum chose. The rest of the
        // body is still on the connection, so it cannot be reused.
        _ => ApiError::new(
            rejection.status().as_u16(),
            ferry_protocol::BitsCode::E_INVALIDARG,
            format!("the body could not be read: {}", rejection.body_text()),
        )
        .closing_connection(),
    }
}

/// Parses a job id from a path segment.
pub(crate) fn job_id(raw: &str) -> Result<JobId, ApiError> {
    raw.parse().map_err(|_| ApiError::bad_request(format!("{raw:?} is not a job id (a GUID)")))
}

/// The optional `Idempotency-Key` header.
pub(crate) struct IdempotencyKey(pub Option<RequestId>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(IDEMPOTENCY_KEY) else {
            return Ok(Self(None));
        };
        let text = value
            .to_str()
            .map_err(|_| ApiError::bad_request("the Idempotency-Key header is not ASCII"))?;
        RequestId::new(text)
            .map(|id| Self(Some(id)))
            .map_err(|e| ApiError::bad_request(format!("Idempotency-Key: {e}")))
    }
}

/// A query string; a malformed one becomes a 400 problem.
pub(crate) struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Self(value))
            .map_err(|e| {
                ApiError::bad_request(format!("the query string is not valid: {}", e.body_text()))
            })
    }
}

/// A path parameter; a malformed one (e.g. invalid UTF-8) becomes a 400 problem.
pub(crate) struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| Self(value))
            .map_err(|e| {
                ApiError::bad_request(format!("the URL path is not valid: {}", e.body_text()))
            })
    }
}
