//! `GET /bits-reply/<session>`: a session's reply, served by every node.

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::pieces::{GATHER_CHUNK, fetch_piece, read_piece};
use super::{REPLY_PIECE, UploadServer, caller, text};

/// `GET /bits-reply/<session>`: the reply of a session, to its owner, from whichever
/// node holds it; `Range: bytes=N-` or `bytes=N-M` answered with 206.
pub(super) async fn serve_reply(
    State(server): State<UploadServer>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let Some(caller) = caller(&server.auth, &headers) else {
        let mut response = StatusCode::UNAUTHORIZED.into_response();
        response
            .headers_mut()
            .insert("www-authenticate", HeaderValue::from_static("Basic realm=\"ferry\""));
        return response;
    };
    let held = match server.session_named(&caller, &id).await {
        Ok(session) => session.outcome.and_then(|o| o.reply),
        Err(_) => None,
    };
    let Some(held) = held else {
        return (StatusCode::NOT_FOUND, "no reply for this session").into_response();
    };
    let (start, end) = match text(&headers, "range").map(|r| reply_range(r, held.len)) {
        None => (0, held.len),
        Some(Some(range)) => range,
        Some(None) => {
            let mut response = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            if let Ok(value) = HeaderValue::from_str(&format!("bytes */{}", held.len)) {
                response.headers_mut().insert("content-range", value);
            }
            return response;
        }
    };
    let partial = text(&headers, "range").is_some();
    let stream = futures_util::stream::unfold(start, move |at| {
        let server = server.clone();
        let id = id.clone();
        async move {
            if at >= end {
                return None;
            }
            let want =
                u32::try_from((end - at).min(u64::from(GATHER_CHUNK))).unwrap_or(GATHER_CHUNK);
            let read = if held.node == server.cluster.node_id {
                let pieces = server.pieces.clone();
                let id = id.clone();
                tokio::task::spawn_blocking(move || read_piece(&pieces, &id, REPLY_PIECE, at, want))
                    .await
                    .map_err(std::io::Error::other)
                    .and_then(|r| r)
            } else {
                fetch_piece(&server.cluster, held.node, &id, REPLY_PIECE, at, want)
                    .await
                    .map_err(std::io::Error::other)
            };
            let read = read.and_then(|bytes| {
                if bytes.is_empty() {
                    Err(std::io::Error::other("the reply is shorter than recorded"))
                } else {
                    Ok(bytes)
                }
            });
            match read {
                Ok(bytes) => {
                    let next = at + bytes.len() as u64;
                    Some((Ok::<_, std::io::Error>(Bytes::from(bytes)), next))
                }
                // The error ends the body; the client sees a short reply and resumes.
                Err(e) => Some((Err(e), end)),
            }
        }
    });
    let mut response = axum::body::Body::from_stream(stream).into_response();
    *response.status_mut() = if partial { StatusCode::PARTIAL_CONTENT } else { StatusCode::OK };
    let map = response.headers_mut();
    map.insert("content-type", HeaderValue::from_static("application/octet-stream"));
    map.insert("accept-ranges", HeaderValue::from_static("bytes"));
    if let Ok(value) = HeaderValue::from_str(&(end - start).to_string()) {
        map.insert("content-length", value);
    }
    if partial
        && let Ok(value) =
            HeaderValue::from_str(&format!("bytes {start}-{}/{}", end.saturating_sub(1), held.len))
    {
        map.insert("content-range", value);
    }
    response
}

/// `[start, end)` of a `Range: bytes=N-` or `bytes=N-M` header over `len` bytes.
fn reply_range(header: &str, len: u64) -> Option<(u64, u64)> {
    let spec = header.trim().strip_prefix("bytes=")?;
    let (first, last) = spec.split_once('-')?;
    let first: u64 = first.trim().parse().ok()?;
    let end = match last.trim() {
        "" => len,
        last => last.parse::<u64>().ok()?.saturating_add(1).min(len),
    };
    (first < end).then_some((first, end))
}

#[cfg(test)]
mod tests {
    use super::reply_range;

    #[test]
    fn reply_ranges_are_read_as_http_says() {
        assert_eq!(reply_range("bytes=0-", 10), Some((0, 10)));
        assert_eq!(reply_range("bytes=4-", 10), Some((4, 10)));
        assert_eq!(reply_range("bytes=2-5", 10), Some((2, 6)));
        assert_eq!(reply_range("bytes=2-50", 10), Some((2, 10)));
        assert_eq!(reply_range("bytes=10-", 10), None, "nothing left");
        assert_eq!(reply_range("bytes=-5", 10), None, "suffix ranges are not served");
        assert_eq!(reply_range("items=0-", 10), None);
    }
}
