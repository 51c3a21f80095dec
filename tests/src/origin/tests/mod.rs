//! Black-box tests of the test origin over real sockets on 127.0.0.1, with reqwest, or
//! with a raw `TcpStream` where reqwest would hide what happens on the wire (cut
//! connections, absolute-form requests).
//!
//! Helpers here; the tests by subject in `serving`, `faults` and `access`.

mod access;
mod faults;
mod serving;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::{Content, Knobs, Origin, OriginConfig};

/// The seed of `/p`.
const SEED: u64 = 42;
/// The length of `/p`.
const LEN: u64 = 100_000;
/// The content of `/small`.
const SMALL: &[u8] = b"hello world";

/// An origin with `/small` (fixed bytes) and `/p` (a pattern) and these knobs.
async fn origin(knobs: Knobs) -> anyhow::Result<Origin> {
    let origin = Origin::start(OriginConfig { tls: false, knobs }).await?;
    origin.add_file("/small", Content::from(SMALL));
    origin.add_file("p", Content::Pattern { seed: SEED, len: LEN });
    Ok(origin)
}

/// A reqwest client that ignores proxy variables from the environment.
fn client() -> anyhow::Result<reqwest::Client> {
    install_ring();
    Ok(reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build()?)
}

/// reqwest is built without a default crypto provider.
fn install_ring() {
    // Err means another test installed it first.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A header of a reqwest response as text.
fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Sends `request` as is on a new connection and reads until the server closes it
/// (at most 5 s). Returns the head (status line and headers) and the body bytes.
async fn raw(addr: SocketAddr, request: &str) -> anyhow::Result<(String, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut bytes))
        .await
        .context("the origin did not close the connection")??;
    let split = bytes.windows(4).position(|w| w == b"\r\n\r\n").context("no end of head")?;
    let head = String::from_utf8_lossy(&bytes[..split]).into_owned();
    Ok((head, bytes[split + 4..].to_vec()))
}

/// The value of header `name` in a raw response head.
fn raw_header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then_some(v.trim())
    })
}
