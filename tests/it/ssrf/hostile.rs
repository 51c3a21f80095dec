//! Hostile servers for the SSRF suite, on plain TCP with a hand-written HTTP/1.1 loop
//! so every answer is under the test's control:
//! - [`Hostile`]: an origin and a BITS upload server whose answers point elsewhere
//!   (`/redirect/<hex URL>`, `BITS_POST /bits/hostid/<hex host>`,
//!   `BITS_POST /bits/reply/<hex URL>`); it records every request's headers;
//!   `GET /rebind` rewrites a hosts file (the name it was reached by then points to a
//!   refused address: DNS rebinding) and closes the connection after answering;
//!   `GET /helped/<hex URL>` serves [`REBIND_LEN`] bytes to its home node (the
//!   `HOME` address) and redirects every other client (helpers) to the URL;
//! - [`Tarpit`]: a listener on a refused address that only counts connections.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ferry_protocol::upload::{PROTOCOL_GUID, header as bits};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Bytes of `/file`.
pub(crate) const FILE_LEN: usize = 4096;
/// Bytes of `/rebind`: more than a download's first chunk (8 MiB), so its second
/// chunk needs another request.
pub(crate) const REBIND_LEN: usize = 9 * 1024 * 1024;

/// The home node of the helper check: the only client `/helped/` serves.
pub(crate) const HOME: &str = "127.0.0.11";

/// A request as the server saw it.
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    /// The client's address.
    pub(crate) from: std::net::IpAddr,
    /// Method.
    pub(crate) method: String,
    /// Path and query.
    pub(crate) path: String,
    /// Headers, names in lower case.
    pub(crate) headers: Vec<(String, String)>,
}

impl Seen {
    /// The value of header `name` (lower case), if sent.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// An origin and BITS server that answers with hostile redirects, host ids and reply
/// URLs.
pub(crate) struct Hostile {
    /// Every request, in order.
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Connections accepted.
    connections: Arc<AtomicUsize>,
}

/// A hosts file and what `/rebind` writes into it.
pub(crate) type Rebind = Option<(std::path::PathBuf, String)>;

impl Hostile {
    /// Serves on `addr`; `challenge`: `/file` answers 401 (Basic) without credentials.
    pub(crate) async fn start(
        addr: SocketAddr,
        challenge: bool,
        rebind: Rebind,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (log, count) = (seen.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((stream, from)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let (log, rebind) = (log.clone(), rebind.clone());
                tokio::spawn(async move {
                    let _ = serve(stream, from.ip(), log, challenge, rebind).await;
                });
            }
        });
        Ok(Self { seen, connections })
    }

    /// The requests seen so far.
    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Connections accepted so far.
    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// One connection: requests until it closes.
async fn serve(
    stream: TcpStream,
    from: std::net::IpAddr,
    log: Arc<Mutex<Vec<Seen>>>,
    challenge: bool,
    rebind: Rebind,
) -> anyhow::Result<()> {
    let mut stream = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if stream.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (method, path) =
            (parts.next().unwrap_or("").to_owned(), parts.next().unwrap_or("").to_owned());
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if stream.read_line(&mut h).await? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((n, v)) = h.split_once(':') {
                headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        let seen = Seen { from, method, path, headers };
        let length: usize = seen.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut body = vec![0; length];
        stream.read_exact(&mut body).await?;
        if let Ok(mut log) = log.lock() {
            log.push(seen.clone());
        }
        let answer = answer(&seen, challenge);
        let flip = seen.path == "/rebind";
        if let (true, Some((hosts, text))) = (flip, &rebind) {
            std::fs::write(hosts, text)?;
        }
        stream.get_mut().write_all(&answer).await?;
        if flip {
            // The next request needs a new connection, hence a new resolution.
            return Ok(());
        }
    }
}

/// The bytes of the answer to `seen`.
fn answer(seen: &Seen, challenge: bool) -> Vec<u8> {
    let mut parts = seen.path.trim_start_matches('/').split('/');
    let first = parts.next().unwrap_or("");
    let response = |status: &str, headers: Vec<(&str, String)>, body: &[u8]| {
        let mut text = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n", body.len());
        for (n, v) in headers {
            text.push_str(&format!("{n}: {v}\r\n"));
        }
        text.push_str("\r\n");
        let mut bytes = text.into_bytes();
        if seen.method != "HEAD" {
            bytes.extend_from_slice(body);
        }
        bytes
    };
    if seen.method == "BITS_POST" {
        let mode = parts.next().unwrap_or("plain");
        let target = parts.next().and_then(unhex).unwrap_or_default();
        let ack = |mut extra: Vec<(&str, String)>| {
            extra.insert(0, (bits::PACKET_TYPE, "Ack".into()));
            response("200 OK", extra, b"")
        };
        return match seen.header(&bits::PACKET_TYPE.to_ascii_lowercase()).unwrap_or("") {
            t if t.eq_ignore_ascii_case("create-session") => {
                let mut extra = vec![
                    (bits::PROTOCOL, PROTOCOL_GUID.to_owned()),
                    (bits::SESSION_ID, format!("{{{}}}", uuid::Uuid::new_v4())),
                ];
                if mode == "hostid" {
                    extra.push((bits::HOST_ID, target));
                    extra.push((bits::HOST_ID_FALLBACK_TIMEOUT, "2".into()));
                }
                ack(extra)
            }
            t if t.eq_ignore_ascii_case("fragment") => {
                // Content-Range: bytes first-last/total
                let range = seen.header("content-range").unwrap_or("");
                let (last, total) = range
                    .trim_start_matches("bytes ")
                    .split_once('/')
                    .and_then(|(r, t)| {
                        let last: u64 = r.split_once('-')?.1.parse().ok()?;
                        Some((last, t.parse::<u64>().ok()?))
                    })
                    .unwrap_or((0, 1));
                let mut extra = vec![(bits::RECEIVED_CONTENT_RANGE, (last + 1).to_string())];
                if last + 1 == total && mode == "reply" {
                    extra.push((bits::REPLY_URL, target));
                }
                ack(extra)
            }
            _ => ack(Vec::new()),
        };
    }
    match first {
        "redirect" => {
            let to = parts.next().and_then(unhex).unwrap_or_default();
            response("302 Found", vec![("Location", to)], b"")
        }
        "file" if challenge && seen.header("authorization").is_none() => response(
            "401 Unauthorized",
            vec![("WWW-Authenticate", "Basic realm=\"hostile\"".into())],
            b"",
        ),
        "helped" if seen.from.to_string() != HOME => {
            let to = parts.next().and_then(unhex).unwrap_or_default();
            response("302 Found", vec![("Location", to)], b"")
        }
        "file" | "rebind" | "helped" => {
            let len = if first == "file" { FILE_LEN } else { REBIND_LEN };
            let body = vec![b'x'; len];
            let range = seen.header("range").and_then(|r| {
                let (a, b) = r.strip_prefix("bytes=")?.split_once('-')?;
                let a: usize = a.parse().ok()?;
                let b: usize = b.parse().unwrap_or(len - 1).min(len - 1);
                (a <= b).then_some((a, b))
            });
            let mut common =
                vec![("Accept-Ranges", "bytes".to_owned()), ("ETag", "\"v1\"".to_owned())];
            if first == "rebind" {
                common.push(("Connection", "close".to_owned()));
            }
            match range {
                Some((a, b)) => {
                    let mut headers = common;
                    headers.push(("Content-Range", format!("bytes {a}-{b}/{len}")));
                    response("206 Partial Content", headers, &body[a..=b])
                }
                None => response("200 OK", common, &body),
            }
        }
        _ => response("404 Not Found", Vec::new(), b""),
    }
}

/// `text` as lower-case hex (paths carry URLs this way, unmangled).
pub(crate) fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<String> {
    let bytes = (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

/// A listener on a refused address: it counts connections and closes them.
pub(crate) struct Tarpit {
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    /// Connections accepted.
    connections: Arc<AtomicUsize>,
}

impl Tarpit {
    /// Listens on `addr`.
    pub(crate) async fn start(addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        tokio::spawn(async move {
            while let Ok((stream, from)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                eprintln!("tarpit {addr}: a connection from {from}");
                drop(stream);
            }
        });
        Ok(Self { addr, connections })
    }

    /// Connections accepted so far.
    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}
