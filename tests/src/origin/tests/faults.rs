//! The fault knobs: cut connections, failing and forced statuses, slow bodies, the
//! per-connection rate cap and content that changes under the client.

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use super::super::pattern_bytes;
use super::*;

#[tokio::test]
async fn drop_after_bytes_closes_the_connection_mid_body() -> anyhow::Result<()> {
    let origin = origin(Knobs { drop_after_bytes: Some(1000), ..Knobs::default() }).await?;
    // No `Connection: close`: the origin must close on its own, after exactly 1000 bytes.
    let (head, body) = raw(origin.addr(), "GET /p HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(raw_header(&head, "content-length"), Some("100000"));
    assert_eq!(body, pattern_bytes(SEED, 0, 1000));
    assert_eq!(origin.requests()[0].body_bytes, 1000);

    // The budget is per connection, over all its responses.
    let client = client()?;
    assert_eq!(client.get(origin.url("/small")).send().await?.bytes().await?, SMALL);
    let response = client.get(origin.url("/p")).header("range", "bytes=10-").send().await?;
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert!(response.bytes().await.is_err(), "the body must be cut short");
    let log = origin.requests();
    assert_eq!((log[1].connection, log[2].connection), (2, 2));
    assert_eq!(log[2].body_bytes, 1000 - SMALL.len() as u64);
    Ok(())
}

#[tokio::test]
async fn fail_first_fails_k_requests_since_the_knobs_were_set() -> anyhow::Result<()> {
    let knobs = Knobs { fail_first: Some((2, 503)), ..Knobs::default() };
    let origin = origin(knobs.clone()).await?;
    let client = client()?;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(client.get(origin.url("/small")).send().await?.status().as_u16());
    }
    assert_eq!(statuses, [503, 503, 200]);
    origin.set_knobs(knobs);
    assert_eq!(client.head(origin.url("/small")).send().await?.status().as_u16(), 503);
    Ok(())
}

#[tokio::test]
async fn force_status_answers_every_request_with_it() -> anyhow::Result<()> {
    let origin = origin(Knobs { force_status: Some(403), ..Knobs::default() }).await?;
    let client = client()?;
    assert_eq!(client.get(origin.url("/p")).send().await?.status().as_u16(), 403);
    assert_eq!(client.head(origin.url("/p")).send().await?.status().as_u16(), 403);
    assert_eq!(client.get(origin.url("/nope")).send().await?.status().as_u16(), 403);
    origin.set_knobs(Knobs { force_status: Some(500), ..Knobs::default() });
    assert_eq!(client.get(origin.url("/p")).send().await?.status().as_u16(), 500);
    assert_eq!(origin.stats().body_bytes, 0);
    Ok(())
}

#[tokio::test]
async fn trickle_sends_pieces_at_intervals() -> anyhow::Result<()> {
    let trickle = Some((1000, Duration::from_millis(50)));
    let origin = origin(Knobs { trickle, ..Knobs::default() }).await?;
    let started = Instant::now();
    let response = client()?.get(origin.url("/p")).header("range", "bytes=0-4999").send().await?;
    assert_eq!(response.bytes().await?, pattern_bytes(SEED, 0, 5000));
    // Five pieces, four pauses of 50 ms.
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(150), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    Ok(())
}

#[tokio::test]
async fn rate_limit_caps_each_connection() -> anyhow::Result<()> {
    let knobs = Knobs { rate_limit_per_connection: Some(1 << 20), ..Knobs::default() };
    let origin = origin(knobs).await?;
    origin.add_file("/r", Content::Pattern { seed: 5, len: 256 * 1024 });
    let started = Instant::now();
    let body = client()?.get(origin.url("/r")).send().await?.bytes().await?;
    let elapsed = started.elapsed();
    assert_eq!(body, pattern_bytes(5, 0, 256 * 1024));
    // 256 KiB at 1 MiB/s: about 0.25 s.
    assert!(elapsed > Duration::from_millis(150), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    Ok(())
}

#[tokio::test]
async fn content_changes_after_a_number_of_bytes() -> anyhow::Result<()> {
    let knobs = Knobs { change_content_after_bytes: Some(50_000), ..Knobs::default() };
    let origin = origin(knobs).await?;
    let client = client()?;
    let old = origin.file("/p").context("file")?;
    // The response under way when the threshold passes finishes with the old bytes.
    let first = client.get(origin.url("/p")).header("range", "bytes=0-59999").send().await?;
    assert_eq!(first.bytes().await?, pattern_bytes(SEED, 0, 60_000));
    let new = origin.file("/p").context("file")?;
    assert_eq!((old.version, new.version), (0, 1));
    assert_eq!(origin.file("/small").context("file")?.version, 1);

    // Without If-Range the rest comes from the new version: a mixed file.
    let rest = client.get(origin.url("/p")).header("range", "bytes=60000-").send().await?;
    assert_eq!(rest.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(rest.bytes().await?, pattern_bytes(SEED + 1, 60_000, 40_000));
    // With If-Range the client learns and gets the whole new version.
    let rest = client
        .get(origin.url("/p"))
        .header("range", "bytes=60000-")
        .header("if-range", old.etag.as_str())
        .send()
        .await?;
    assert_eq!(rest.status(), StatusCode::OK);
    assert_eq!(header(&rest, "etag"), Some(new.etag.as_str()));
    assert_eq!(rest.bytes().await?, pattern_bytes(SEED + 1, 0, LEN));
    // It changes once per setting of the knobs.
    assert_eq!(origin.file("/p").context("file")?.version, 1);
    Ok(())
}
