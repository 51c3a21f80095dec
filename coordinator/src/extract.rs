//! Request extractors that turn malformed input into problem documents: JSON bodies
//! (syntax, unknown fields, wrong types), path ids, the idempotency key.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use ferry_protocol::{JobId, RequestId};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::IDEMPOTENCY_KEY;
use crate::problem::ApiError;

/// A JSON body; any rejection becomes a 400 (415 for a wrong content type) problem.
pub(crate) struct Json<T>(pub T);

impl<T: DeserializeOwned + Serialize, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Json(raw) = axum::Json::<serde_json::Value>::from_request(req, state)
            .await
            .map_err(|rejection| json_problem(&rejection))?;
        let value: T = T::deserialize(&raw).map_err(|e| {
            ApiError::bad_request(format!("the body does not match the expected fields: {e}"))
        })?;
        // serde takes a struct's fields from an array too (the binary codec writes them
        // so); a JSON client must send an object, as the document says.
        let read = serde_json::to_value(&value).unwrap_or_default();
        if let Some(path) = array_for_object(&raw, &read, "") {
            return Err(ApiError::bad_request(format!(
                "the body does not match the expected fields: {} must be an object, not an array",
                if path.is_empty() { "the body" } else { path.as_str() }
            )));
        }
        Ok(Self(value))
    }
}

/// Where `sent` holds an array at a place where `read` (the body as it was understood,
/// serialized again) holds an object, as a JSON pointer; `None` if nowhere.
fn array_for_object(
    sent: &serde_json::Value,
    read: &serde_json::Value,
    at: &str,
) -> Option<String> {
    use serde_json::Value;
    match (sent, read) {
        (Value::Array(_), Value::Object(_)) => Some(at.to_owned()),
        (Value::Object(sent), Value::Object(read)) => sent.iter().find_map(|(key, value)| {
            let inner = read.get(key)?;
            array_for_object(value, inner, &format!("{at}/{key}"))
        }),
        (Value::Array(sent), Value::Array(read)) => sent
            .iter()
            .zip(read)
            .enumerate()
            .find_map(|(i, (s, r))| array_for_object(s, r, &format!("{at}/{i}"))),
        _ => None,
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
