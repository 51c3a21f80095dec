//! The answers every operation shares, written into the OpenAPI document once instead
//! of in each route's annotation: the refusals that come from the layers around the
//! handlers (authentication, the JSON and path extractors, the body limit and deadline,
//! the request slots of ferryd's API server) rather than from what a handler decides.
//! A route's own annotation wins where it declares the same status.
//!
//! What is added, by what the operation has:
//! - a bearer `security` requirement: `401` (`WWW-Authenticate: Bearer`);
//! - any parameter or a request body: `400` (a malformed id, index, query string,
//!   `Idempotency-Key` or body; a value BITS refuses);
//! - a request body: `408` (not sent in time), `413` (over `api.max_body_bytes`, or a
//!   command too large for one log entry), `415` (not `application/json`);
//! - every operation but `/healthz`: `503` with `Retry-After` (no leader, a member not
//!   yet upgraded, or no request slot free in time).
//!
//! Every `503` carries `Retry-After`, and every `Idempotency-Key` parameter gets the
//! schema `RequestId::new` checks (1 to 128 printable ASCII characters).

use serde_json::{Map, Value, json};
use utoipa::openapi::OpenApi;

/// The HTTP methods an OpenAPI path item may hold operations for.
const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// Paths that answer without waiting for a request slot and have their own `503`.
const NO_SLOT: [&str; 1] = ["/healthz"];

/// `doc` with the shared answers of every operation (see the module documentation).
/// The document is the server's own; should it not survive the round trip through
/// JSON, it is returned as it was.
pub(super) fn complete(doc: OpenApi) -> OpenApi {
    let Ok(mut value) = serde_json::to_value(&doc) else { return doc };
    add_components(&mut value);
    if let Some(paths) = value.get_mut("paths").and_then(Value::as_object_mut) {
        for (path, item) in paths.iter_mut() {
            for method in METHODS {
                if let Some(operation) = item.get_mut(method).and_then(Value::as_object_mut) {
                    complete_operation(path, operation);
                }
            }
        }
    }
    serde_json::from_value(value).unwrap_or(doc)
}

/// A `$ref` to a shared response.
fn response_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/responses/{name}") })
}

/// A problem document response.
fn problem(description: &str) -> Value {
    json!({
        "description": description,
        "content": {
            "application/problem+json": {
                "schema": { "$ref": "#/components/schemas/Problem" }
            }
        }
    })
}

/// The `Retry-After` header of a `503`.
fn retry_after() -> Value {
    json!({
        "description": "Seconds to wait before retrying (the same Idempotency-Key makes a \
                        retried write safe)",
        "required": true,
        "schema": { "type": "integer", "minimum": 0 }
    })
}

fn add_components(doc: &mut Value) {
    let Some(root) = doc.as_object_mut() else { return };
    let components = root.entry("components").or_insert_with(|| json!({}));
    let Some(components) = components.as_object_mut() else { return };
    let responses = components.entry("responses").or_insert_with(|| json!({}));
    let Some(responses) = responses.as_object_mut() else { return };
    let mut unauthorized = problem(
        "No token, or one that is not valid (E_ACCESSDENIED): send 'Authorization: Bearer \
         <token>'",
    );
    unauthorized["headers"] = json!({
        "WWW-Authenticate": {
            "description": "The scheme to authenticate with: `Bearer realm=\"ferry\"`",
            "required": true,
            "schema": { "type": "string" }
        }
    });
    let mut unavailable = problem(
        "ERROR_RETRY: no leader is known, a member of the cluster does not read the format \
         the request needs yet, or no request slot was free in time; retry after \
         Retry-After seconds",
    );
    unavailable["headers"] = json!({ "Retry-After": retry_after() });
    for (name, response) in [
        (
            "BadRequest",
            problem(
                "Input the API cannot take (E_INVALIDARG or the BITS code of the rule it \
                 breaks): a malformed path parameter, query string, Idempotency-Key or JSON \
                 body, an unknown field, or a value BITS refuses",
            ),
        ),
        ("Unauthorized", unauthorized),
        (
            "RequestTimeout",
            problem(
                "BG_E_TIMEOUT: the request body did not arrive in time (the connection closes)",
            ),
        ),
        (
            "PayloadTooLarge",
            problem(
                "The body is over api.max_body_bytes (the connection closes), or the command \
                 is too large for one log entry",
            ),
        ),
        (
            "UnsupportedMediaType",
            problem("The body is not sent as 'Content-Type: application/json'"),
        ),
        ("Unavailable", unavailable),
    ] {
        responses.entry(name).or_insert(response);
    }
}

fn complete_operation(path: &str, operation: &mut Map<String, Value>) {
    let secured = operation
        .get("security")
        .and_then(Value::as_array)
        .is_some_and(|list| list.iter().any(|req| req.get("bearer").is_some()));
    let has_body = operation.contains_key("requestBody");
    let has_params =
        operation.get("parameters").and_then(Value::as_array).is_some_and(|p| !p.is_empty());
    if let Some(params) = operation.get_mut("parameters").and_then(Value::as_array_mut) {
        for param in params.iter_mut().filter(|p| {
            p["name"].as_str().is_some_and(|n| n.eq_ignore_ascii_case(crate::IDEMPOTENCY_KEY))
        }) {
            param["schema"] = json!({
                "type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[!-~]+$"
            });
        }
    }
    let responses = operation.entry("responses").or_insert_with(|| json!({}));
    let Some(responses) = responses.as_object_mut() else { return };
    let mut add = |status: &str, name: &str| {
        responses.entry(status).or_insert_with(|| response_ref(name));
    };
    if secured {
        add("401", "Unauthorized");
    }
    if has_body || has_params {
        add("400", "BadRequest");
    }
    if has_body {
        add("408", "RequestTimeout");
        add("413", "PayloadTooLarge");
        add("415", "UnsupportedMediaType");
    }
    if !NO_SLOT.contains(&path) {
        add("503", "Unavailable");
    }
    // OpenAPI requires a description on every response; a route that gave none gets its
    // status's reason phrase.
    for (status, response) in responses.iter_mut() {
        if let Some(response) = response.as_object_mut()
            && !response.contains_key("$ref")
            && !response.contains_key("description")
        {
            let reason = status
                .parse::<u16>()
                .ok()
                .and_then(|s| axum::http::StatusCode::from_u16(s).ok())
                .and_then(|s| s.canonical_reason())
                .unwrap_or("The answer");
            response.insert("description".into(), reason.into());
        }
    }
    // A 503 a route declares itself carries Retry-After too.
    if let Some(own) = responses.get_mut("503").and_then(Value::as_object_mut)
        && !own.contains_key("$ref")
    {
        let headers = own.entry("headers").or_insert_with(|| json!({}));
        if let Some(headers) = headers.as_object_mut() {
            headers.entry("Retry-After").or_insert_with(retry_after);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every operation of the real document gets what its shape implies, and the
    /// document still reads as an OpenAPI value afterwards.
    #[test]
    fn every_operation_gets_the_shared_answers() {
        let doc = serde_json::to_value(super::super::openapi()).expect("json");
        let paths = doc["paths"].as_object().expect("paths");
        for (path, item) in paths {
            for method in METHODS {
                let Some(op) = item.get(method) else { continue };
                let responses = &op["responses"];
                let label = format!("{method} {path}");
                if op.get("security").is_some() {
                    assert!(responses.get("401").is_some(), "{label}: 401");
                }
                if op.get("requestBody").is_some() {
                    for status in ["400", "408", "413", "415"] {
                        assert!(responses.get(status).is_some(), "{label}: {status}");
                    }
                }
                if path != "/healthz" {
                    assert!(responses.get("503").is_some(), "{label}: 503");
                }
                for (status, response) in responses.as_object().expect("responses") {
                    let described = response.get("$ref").is_some()
                        || response.get("description").is_some_and(Value::is_string);
                    assert!(described, "{label}: {status} has no description");
                }
            }
        }
        assert!(
            doc["components"]["responses"]["Unavailable"]["headers"]["Retry-After"].is_object()
        );
    }
}
