//! The well-behaved origin: whole files, HEAD, ranges, If-Range, 404/405, keep-alive,
//! and the knobs that take features away (`no_ranges`, `no_content_length`, `no_head`).

use reqwest::StatusCode;

use super::super::pattern_bytes;
use super::*;

#[tokio::test]
async fn get_and_head_serve_whole_files_with_validators() -> anyhow::Result<()> {
    let origin = origin(Knobs::default()).await?;
    let client = client()?;
    let response = client.get(origin.url("/p")).send().await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "content-length"), Some("100000"));
    assert_eq!(header(&response, "accept-ranges"), Some("bytes"));
    let info = origin.file("/p").context("file")?;
    assert_eq!(header(&response, "etag"), Some(info.etag.as_str()));
    assert_eq!(header(&response, "last-modified"), Some(info.last_modified.as_str()));
    assert_eq!(response.bytes().await?, pattern_bytes(SEED, 0, LEN));

    let response = client.head(origin.url("/small")).send().await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "content-length"), Some("11"));
    assert!(response.bytes().await?.is_empty());
    assert_eq!(client.get(origin.url("/small")).send().await?.bytes().await?, SMALL);

    let stats = origin.stats();
    assert_eq!((stats.requests, stats.body_bytes), (3, LEN + 11));
    Ok(())
}

#[tokio::test]
async fn single_ranges_get_206_and_bad_ones_416() -> anyhow::Result<()> {
    let origin = origin(Knobs::default()).await?;
    let client = client()?;
    let cases = [
        ("bytes=10-19", 10, 19),
        ("bytes=99990-", 99_990, 99_999),
        ("bytes=-5", 99_995, 99_999),
        ("bytes=50-999999", 50, 99_999),
    ];
    for (range, start, end) in cases {
        let response = client.get(origin.url("/p")).header("range", range).send().await?;
        assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        let expected = format!("bytes {start}-{end}/{LEN}");
        assert_eq!(header(&response, "content-range"), Some(expected.as_str()));
        let len = end - start + 1;
        assert_eq!(header(&response, "content-length"), Some(len.to_string().as_str()));
        assert_eq!(response.bytes().await?, pattern_bytes(SEED, start, len), "{range}");
    }
    let response = client.get(origin.url("/p")).header("range", "bytes=100000-").send().await?;
    assert_eq!(response.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&response, "content-range"), Some("bytes */100000"));
    // Multi-range requests are answered with the whole body.
    let response = client.get(origin.url("/p")).header("range", "bytes=0-1,5-6").send().await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.bytes().await?.len() as u64, LEN);
    let log = origin.requests();
    assert_eq!(log[0].range.as_deref(), Some("bytes=10-19"));
    assert_eq!(log[4].status, 416);
    Ok(())
}

#[tokio::test]
async fn if_range_that_no_longer_matches_gets_the_whole_new_content() -> anyhow::Result<()> {
    let origin = origin(Knobs::default()).await?;
    let client = client()?;
    let old = origin.file("/p").context("file")?;
    for validator in [&old.etag, &old.last_modified] {
        let response = client
            .get(origin.url("/p"))
            .header("range", "bytes=5-9")
            .header("if-range", validator.as_str())
            .send()
            .await?;
        assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT, "{validator}");
    }
    origin.change_content_now();
    let new = origin.file("/p").context("file")?;
    assert_ne!(new.etag, old.etag);
    assert_ne!(new.last_modified, old.last_modified);
    assert_eq!(new.content, Content::Pattern { seed: SEED + 1, len: LEN });
    for validator in [&old.etag, &old.last_modified] {
        let response = client
            .get(origin.url("/p"))
            .header("range", "bytes=5-9")
            .header("if-range", validator.as_str())
            .send()
            .await?;
        assert_eq!(response.status(), StatusCode::OK, "{validator}");
        assert_eq!(header(&response, "etag"), Some(new.etag.as_str()));
        assert_eq!(response.bytes().await?, pattern_bytes(SEED + 1, 0, LEN));
    }
    assert_eq!(origin.requests()[2].if_range.as_deref(), Some(old.etag.as_str()));
    Ok(())
}

#[tokio::test]
async fn unknown_paths_and_methods_are_refused() -> anyhow::Result<()> {
    let origin = origin(Knobs::default()).await?;
    let client = client()?;
    assert_eq!(client.get(origin.url("/nope")).send().await?.status(), StatusCode::NOT_FOUND);
    let response = client.post(origin.url("/p")).body("x").send().await?;
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(header(&response, "allow"), Some("GET, HEAD"));
    Ok(())
}

#[tokio::test]
async fn keep_alive_carries_several_requests_on_one_connection() -> anyhow::Result<()> {
    let origin = origin(Knobs::default()).await?;
    let client = client()?;
    for _ in 0..3 {
        let response = client.get(origin.url("/p")).header("range", "bytes=0-99").send().await?;
        assert_eq!(response.bytes().await?.len(), 100);
    }
    assert_eq!(origin.stats().connections, 1);
    assert!(origin.requests().iter().all(|r| r.connection == 1));
    Ok(())
}

#[tokio::test]
async fn no_ranges_ignores_range_and_does_not_advertise_it() -> anyhow::Result<()> {
    let origin = origin(Knobs { no_ranges: true, ..Knobs::default() }).await?;
    let response = client()?.get(origin.url("/p")).header("range", "bytes=0-9").send().await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "accept-ranges"), None);
    assert_eq!(header(&response, "content-length"), Some("100000"));
    assert_eq!(response.bytes().await?.len() as u64, LEN);
    Ok(())
}

#[tokio::test]
async fn no_content_length_sends_chunked_bodies_and_bare_heads() -> anyhow::Result<()> {
    let origin = origin(Knobs { no_content_length: true, ..Knobs::default() }).await?;
    let client = client()?;
    let response = client.get(origin.url("/p")).header("range", "bytes=0-9").send().await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "content-length"), None);
    assert_eq!(header(&response, "transfer-encoding"), Some("chunked"));
    assert_eq!(header(&response, "accept-ranges"), None);
    assert_eq!(response.bytes().await?, pattern_bytes(SEED, 0, LEN));
    let (head, body) =
        raw(origin.addr(), "HEAD /p HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await?;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(raw_header(&head, "content-length"), None, "{head}");
    assert!(body.is_empty());
    Ok(())
}

#[tokio::test]
async fn no_head_refuses_head_but_serves_get() -> anyhow::Result<()> {
    let origin = origin(Knobs { no_head: true, ..Knobs::default() }).await?;
    let client = client()?;
    let response = client.head(origin.url("/p")).send().await?;
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(header(&response, "allow"), Some("GET"));
    assert_eq!(client.get(origin.url("/small")).send().await?.bytes().await?, SMALL);
    Ok(())
}

#[tokio::test]
async fn dropping_the_origin_stops_the_listener_and_its_connections() -> anyhow::Result<()> {
    let origin = origin(Knobs::default()).await?;
    let addr = origin.addr();
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await??;
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    drop(origin);
    // The kept-alive connection is closed (EOF or reset) rather than left hanging.
    let after = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await?;
    assert!(matches!(after, Ok(0) | Err(_)), "{after:?}");
    assert!(TcpStream::connect(addr).await.is_err());
    Ok(())
}
