//! The web console: `GET /ui` serves a small single-page application (one HTML page,
//! one script, one style sheet) built into the binary, so every node serves it with no
//! files to install and no build step.
//!
//! Only the static assets live here, and they are served without authentication: they
//! hold no data. The page asks for an API token, keeps it in the tab's
//! `sessionStorage` and calls the same node's `/v1/...` API with `Authorization: Bearer`,
//! like any other client; what it may see and do is what the token may.
//!
//! Every answer carries a strict `Content-Security-Policy` (scripts, styles and
//! connections from this origin only, no inline script or style, no framing) and
//! `X-Content-Type-Options: nosniff`. The script renders every API-provided string with
//! `textContent`, never as HTML: job names, URLs and error details are the callers'.
//!
//! Assets are looked up by exact name in a fixed table, so no request path (`..`,
//! encoded slashes, ...) reaches anything else; unknown `/ui/...` paths answer 404.

use axum::Router;
use axum::body::Body;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::get;

/// The policy sent with every console answer: everything from this origin only, no
/// inline script or style, no plugins, no `<base>`, not framed by anyone.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One file of the console.
struct Asset {
    /// Its name under `/ui/`.
    name: &'static str,
    /// Its `Content-Type`.
    content_type: &'static str,
    /// Its bytes, compiled in.
    body: &'static [u8],
}

/// The page: also served at `/ui` and `/ui/`.
const INDEX: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    body: include_bytes!("assets/index.html"),
};

/// Every file of the console.
const ASSETS: [Asset; 4] = [
    INDEX,
    Asset {
        name: "console.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("assets/console.js"),
    },
    Asset {
        name: "console.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("assets/console.css"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("assets/favicon.svg"),
    },
];

/// The console's routes (`/ui`, `/ui/`, `/ui/{asset}`), for any router state: merge
/// them into the API router.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/ui", get(|| async { respond(Some(&INDEX)) }))
        .route("/ui/", get(|| async { respond(Some(&INDEX)) }))
        .route("/ui/{*path}", get(|Path(path): Path<String>| async move { serve(&path) }))
}

/// The answer for `/ui/{path}`: the asset of that exact name, or 404.
fn serve(path: &str) -> Response {
    respond(ASSETS.iter().find(|asset| asset.name == path))
}

/// An asset (200) or a plain 404, both with the console's security headers.
fn respond(asset: Option<&Asset>) -> Response {
    let (status, content_type, body) = match asset {
        Some(asset) => (StatusCode::OK, asset.content_type, Body::from(asset.body)),
        None => (StatusCode::NOT_FOUND, "text/plain; charset=utf-8", Body::from("not found\n")),
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers
        .insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // Small files: always revalidate, so a node's upgrade shows at the next load.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests;
