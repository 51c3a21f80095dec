//! The console's routes over a real socket: content types, security headers, 404s, and
//! request paths that try to leave `/ui/` (sent raw, as a browser would not).

use std::net::{Ipv4Addr, SocketAddr};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use super::{CONTENT_SECURITY_POLICY, router};

/// Serves the console on `127.0.0.1:0`, behind a fallback that would answer anything
/// else (as the API router does), and returns its address.
async fn serve() -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let app = router::<()>().fallback(|| async { "THE-API-FALLBACK" });
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// One answer, as the server sent it.
struct Answer {
    status: u16,
    /// Header lines, names lower-cased.
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Sends `GET {target}` exactly as given (no normalisation) and reads the answer.
async fn get(addr: SocketAddr, target: &str) -> Answer {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8(raw).expect("utf-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Answer { status, headers, body: body.to_owned() }
}

fn assert_hardened(answer: &Answer, target: &str) {
    assert_eq!(answer.header("content-security-policy"), Some(CONTENT_SECURITY_POLICY), "{target}");
    assert_eq!(answer.header("x-content-type-options"), Some("nosniff"), "{target}");
    assert_eq!(answer.header("x-frame-options"), Some("DENY"), "{target}");
}

#[tokio::test]
async fn assets_are_served_with_their_types_and_the_security_headers() {
    let addr = serve().await;
    for (target, content_type, contains) in [
        ("/ui", "text/html; charset=utf-8", "<title>Ferry"),
        ("/ui/", "text/html; charset=utf-8", "<title>Ferry"),
        ("/ui/index.html", "text/html; charset=utf-8", "/ui/console.js"),
        ("/ui/console.js", "text/javascript; charset=utf-8", "textContent"),
        ("/ui/console.css", "text/css; charset=utf-8", "{"),
        ("/ui/favicon.svg", "image/svg+xml", "<svg"),
    ] {
        let answer = get(addr, target).await;
        assert_eq!(answer.status, 200, "{target}");
        assert_eq!(answer.header("content-type"), Some(content_type), "{target}");
        assert!(answer.body.contains(contains), "{target}: {}", answer.body);
        assert_hardened(&answer, target);
    }
}

#[test]
fn the_policy_allows_no_inline_code_and_the_page_needs_none() {
    assert!(CONTENT_SECURITY_POLICY.starts_with("default-src 'self';"));
    assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
    let page = std::str::from_utf8(super::INDEX.body).expect("utf-8 page");
    assert!(!page.contains("<script>"), "no inline script");
    assert!(!page.contains("style="), "no inline style");
    let handler = page.match_indices(" on").any(|(at, _)| {
        let rest = &page[at + 3..];
        let name = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_lowercase()).len();
        name > 0 && rest[name..].starts_with('=')
    });
    assert!(!handler, "no inline event handler");
    assert!(!page.contains("//"), "no other origin (only root-relative URLs)");
    let script = std::str::from_utf8(super::ASSETS[1].body).expect("utf-8 script");
    assert!(!script.contains("innerHTML") && !script.contains("outerHTML"));
    assert!(!script.contains("insertAdjacentHTML") && !script.contains("document.write"));
    assert!(!script.contains("eval("));
}

#[tokio::test]
async fn unknown_paths_and_escapes_answer_404_from_the_console() {
    let addr = serve().await;
    for target in [
        "/ui/nope",
        "/ui/index.htm",
        "/ui/console.js/",
        "/ui//console.js",
        "/ui/../Cargo.toml",
        "/ui/..%2fCargo.toml",
        "/ui/%2e%2e/%2e%2e/etc/passwd",
        "/ui/assets/console.js",
        "/ui/mod.rs",
        "/ui/./console.js",
        "/ui/console.js%00.html",
        "/ui/..\\..\\Cargo.toml",
    ] {
        let answer = get(addr, target).await;
        assert_eq!(answer.status, 404, "{target}: {}", answer.body);
        assert_eq!(answer.body, "not found\n", "{target}");
        assert_eq!(answer.header("content-type"), Some("text/plain; charset=utf-8"), "{target}");
        assert_hardened(&answer, target);
    }
    // Paths beside the console are not its business.
    for target in ["/uix", "/u/i", "/"] {
        assert_eq!(get(addr, target).await.body, "THE-API-FALLBACK", "{target}");
    }
}
