//! The nginx harness itself: it serves a directory, honours byte ranges and basic
//! authentication, and is gone once stopped. Skipped (with a notice) where nginx is not
//! installed.

use anyhow::Context as _;
use ferry_tests::nginx::{Nginx, NginxOptions};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, RANGE};

use crate::support::raw;

/// A MiB of bytes that are not all alike.
fn content() -> Vec<u8> {
    (0..1u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_serves_files_ranges_and_basic_auth() -> anyhow::Result<()> {
    if !Nginx::available() {
        eprintln!("skipped: nginx is not installed");
        return Ok(());
    }
    let root = tempfile::tempdir()?;
    let body = content();
    std::fs::write(root.path().join("one.bin"), &body).context("writing the served file")?;
    let http = raw();

    let mut open = Nginx::start(NginxOptions::new(root.path())).await?;
    let url = open.url("/one.bin");
    assert!(url.starts_with("http://127.0.0.1:") && url.ends_with("/one.bin"), "{url}");
    let response = http.get(&url).send().await.context("GET the whole file")?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.bytes().await?.as_ref(), body.as_slice());

    let response = http.get(&url).header(RANGE, "bytes=10-19").send().await?;
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    let range = response.headers().get(CONTENT_RANGE).context("no Content-Range")?;
    assert_eq!(range.to_str()?, format!("bytes 10-19/{}", body.len()));
    assert_eq!(response.bytes().await?.as_ref(), &body[10..20]);

    assert_eq!(http.get(open.url("missing.bin")).send().await?.status(), StatusCode::NOT_FOUND);
    // The access log counts the body bytes of each path (the origin egress benchmarks read).
    assert_eq!(open.body_bytes_sent("/one.bin"), body.len() as u64 + 10);
    open.stop().await?;
    assert!(http.get(&url).send().await.is_err(), "nginx still answers after stop()");

    let guarded = Nginx::start(NginxOptions {
        basic_auth: Some(("ferry".into(), "s3cret pass".into())),
        ..NginxOptions::new(root.path())
    })
    .await?;
    let url = guarded.url("one.bin");
    assert_eq!(http.get(&url).send().await?.status(), StatusCode::UNAUTHORIZED);
    let wrong = http.get(&url).basic_auth("ferry", Some("wrong")).send().await?;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let response = http.get(&url).basic_auth("ferry", Some("s3cret pass")).send().await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.bytes().await?.len(), body.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_limit_rate_throttles_each_connection() -> anyhow::Result<()> {
    if !Nginx::available() {
        eprintln!("skipped: nginx is not installed");
        return Ok(());
    }
    let root = tempfile::tempdir()?;
    std::fs::write(root.path().join("one.bin"), content())?;
    let nginx = Nginx::start(NginxOptions {
        limit_rate: Some(512 << 10),
        ..NginxOptions::new(root.path())
    })
    .await?;
    // nginx lets the first second's worth (512 KiB) go at once, then waits for the
    // rate to catch up: 1 MiB takes about a second. Only a lower bound is checked,
    // which a slow or busy machine cannot break.
    let started = std::time::Instant::now();
    let bytes = raw().get(nginx.url("one.bin")).send().await?.bytes().await?;
    assert_eq!(bytes.len(), 1 << 20);
    let elapsed = started.elapsed();
    assert!(elapsed.as_millis() >= 500, "1 MiB at 512 KiB/s took only {elapsed:?}");
    Ok(())
}
