//! Who may download: Basic and Digest authentication, proxy mode (with and without
//! proxy credentials) and HTTPS.

use base64::Engine as _;
use base64::prelude::BASE64_STANDARD;
use reqwest::StatusCode;

use super::super::auth::{md5_hex, parse_auth_params, sha256_hex};
use super::super::{Auth, ProxyMode};
use super::*;

#[tokio::test]
async fn basic_auth_is_required_and_checked() -> anyhow::Result<()> {
    let auth = Auth::Basic { user: "alice".into(), password: "secret".into() };
    let origin = origin(Knobs { auth: Some(auth), ..Knobs::default() }).await?;
    let client = client()?;
    let response = client.get(origin.url("/small")).send().await?;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(header(&response, "www-authenticate"), Some("Basic realm=\"ferry-test\""));
    let wrong = client.get(origin.url("/small")).basic_auth("alice", Some("guess")).send().await?;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let right = client.get(origin.url("/small")).basic_auth("alice", Some("secret")).send().await?;
    assert_eq!(right.bytes().await?, SMALL);
    let log = origin.requests();
    assert_eq!(log[0].authorization, None);
    assert_eq!(log[2].authorization.as_deref(), Some("Basic"));
    assert!(!format!("{log:?}").contains("c2VjcmV0"), "no secret in the log");
    Ok(())
}

/// A Digest `Authorization` value for `GET /small`.
fn digest(
    hash: fn(&str) -> String,
    algorithm: &str,
    password: &str,
    nonce: &str,
    nc: u32,
) -> String {
    let (realm, uri, cnonce) = ("ferry-digest", "/small", "0a4f113b");
    let ha1 = hash(&format!("alice:{realm}:{password}"));
    let ha2 = hash(&format!("GET:{uri}"));
    let response = hash(&format!("{ha1}:{nonce}:{nc:08x}:{cnonce}:auth:{ha2}"));
    format!(
        "Digest username=\"alice\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
         algorithm={algorithm}, qop=auth, nc={nc:08x}, cnonce=\"{cnonce}\", \
         response=\"{response}\""
    )
}

#[tokio::test]
async fn digest_auth_accepts_md5_and_sha256_with_increasing_nonce_counts() -> anyhow::Result<()> {
    let auth = Auth::Digest {
        user: "alice".into(),
        password: "secret".into(),
        realm: "ferry-digest".into(),
    };
    let origin = origin(Knobs { auth: Some(auth), ..Knobs::default() }).await?;
    let client = client()?;
    let url = origin.url("/small");
    let challenge = client.get(&url).send().await?;
    assert_eq!(challenge.status(), StatusCode::UNAUTHORIZED);
    let value = header(&challenge, "www-authenticate").context("challenge")?;
    let params = parse_auth_params(value.strip_prefix("Digest ").context("scheme")?)
        .context("challenge params")?;
    let param = |name: &str| params.get(name).map(String::as_str);
    assert_eq!(param("realm"), Some("ferry-digest"));
    assert_eq!(param("qop"), Some("auth"));
    assert_eq!(param("algorithm"), Some("MD5"));
    assert!(param("opaque").is_some());
    let nonce = param("nonce").context("nonce")?.to_owned();

    let send = |value: String| client.get(&url).header("authorization", value).send();
    let ok = send(digest(md5_hex, "MD5", "secret", &nonce, 1)).await?;
    assert_eq!(ok.bytes().await?, SMALL);
    // The same nonce again, a higher count, the other algorithm.
    let ok = send(digest(sha256_hex, "SHA-256", "secret", &nonce, 2)).await?;
    assert_eq!(ok.status(), StatusCode::OK);
    // A replayed count, a wrong password.
    let replay = send(digest(md5_hex, "MD5", "secret", &nonce, 2)).await?;
    assert_eq!(replay.status(), StatusCode::UNAUTHORIZED);
    let wrong = send(digest(md5_hex, "MD5", "guess", &nonce, 3)).await?;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    // Right credentials on a nonce the origin never issued: stale.
    let stale = send(digest(md5_hex, "MD5", "secret", "0123abcd", 1)).await?;
    assert_eq!(stale.status(), StatusCode::UNAUTHORIZED);
    assert!(header(&stale, "www-authenticate").is_some_and(|v| v.contains("stale=true")));
    let log = origin.requests();
    assert_eq!(log[0].authorization, None);
    assert_eq!(log[1].authorization.as_deref(), Some("Digest"));
    Ok(())
}

#[tokio::test]
async fn proxy_mode_serves_absolute_form_for_any_host() -> anyhow::Result<()> {
    let proxy = ProxyMode::default();
    let origin = origin(Knobs { proxy: Some(proxy), ..Knobs::default() }).await?;
    let request = "GET http://files.invalid/small HTTP/1.1\r\nHost: files.invalid\r\n\
                   Connection: close\r\n\r\n";
    let (head, body) = raw(origin.addr(), request).await?;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, SMALL);
    let (head, _) =
        raw(origin.addr(), "GET /small HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await?;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let log = origin.requests();
    assert!(log[0].via_proxy);
    assert_eq!(log[0].proxied_host.as_deref(), Some("files.invalid"));
    assert_eq!(log[0].path, "/small");
    assert!(!log[1].via_proxy);
    Ok(())
}

#[tokio::test]
async fn proxy_credentials_are_required_when_configured() -> anyhow::Result<()> {
    let proxy =
        ProxyMode { require_auth: Some(("bob".into(), "hunter2".into())), ..ProxyMode::default() };
    let origin = origin(Knobs { proxy: Some(proxy), ..Knobs::default() }).await?;
    install_ring();
    let proxy_url = format!("http://{}", origin.addr());
    let without = reqwest::Client::builder().proxy(reqwest::Proxy::http(&proxy_url)?).build()?;
    let response = without.get("http://files.invalid/p").send().await?;
    assert_eq!(response.status(), StatusCode::PROXY_AUTHENTICATION_REQUIRED);
    assert_eq!(header(&response, "proxy-authenticate"), Some("Basic realm=\"ferry-proxy\""));

    let with = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(&proxy_url)?.basic_auth("bob", "hunter2"))
        .build()?;
    let response = with.get("http://files.invalid/p").send().await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.bytes().await?, super::super::pattern_bytes(SEED, 0, LEN));

    let wrong = BASE64_STANDARD.encode("bob:nope");
    let request = format!(
        "GET http://files.invalid/small HTTP/1.1\r\nHost: files.invalid\r\n\
         Proxy-Authorization: Basic {wrong}\r\nConnection: close\r\n\r\n"
    );
    let (head, _) = raw(origin.addr(), &request).await?;
    assert!(head.starts_with("HTTP/1.1 407"), "{head}");
    let log = origin.requests();
    assert_eq!(log[0].proxy_authorization, None);
    assert_eq!(log[1].proxy_authorization.as_deref(), Some("Basic"));
    assert!(log.iter().all(|r| r.via_proxy));
    Ok(())
}

#[tokio::test]
async fn https_with_a_generated_certificate() -> anyhow::Result<()> {
    let origin = Origin::start(OriginConfig { tls: true, knobs: Knobs::default() }).await?;
    origin.add_file("/small", Content::from(SMALL));
    let url = origin.url("/small");
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    install_ring();
    let ca = reqwest::Certificate::from_pem(origin.ca_pem().context("CA")?.as_bytes())?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([ca])
        .resolve("localhost", origin.addr())
        .build()?;
    let response = client.get(&url).header("range", "bytes=0-4").send().await?;
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(response.bytes().await?, &SMALL[..5]);
    let by_name = format!("https://localhost:{}/small", origin.addr().port());
    assert_eq!(client.get(by_name).send().await?.bytes().await?, SMALL);
    // A client that does not trust the CA fails the handshake.
    let untrusting = reqwest::Client::builder().no_proxy().tls_certs_only([]).build()?;
    assert!(untrusting.get(&url).send().await.is_err());
    Ok(())
}
