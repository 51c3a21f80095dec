//! The client's retries against a tiny in-test HTTP server: `Retry-After`, the budget,
//! idempotency keys kept across tries, backoff.

use std::sync::Mutex;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use ferry_protocol::BitsCode;

use super::retry::{BACKOFF_CAP, BACKOFF_START};
use super::*;

/// A one-request-per-connection HTTP server on 127.0.0.1 that answers the n-th
/// request with `answers[n]` (the last one again after that) and keeps each
/// request's head.
struct TinyServer {
    url: String,
    heads: Arc<Mutex<Vec<String>>>,
}

impl TinyServer {
    async fn start(answers: Vec<String>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buffer = vec![0u8; 16 * 1024];
                let mut got = 0;
                while !buffer[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer[got..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => got += k,
                    }
                }
                let head = String::from_utf8_lossy(&buffer[..got]).into_owned();
                seen.lock().expect("lock").push(head);
                let answer = &answers[n.min(answers.len() - 1)];
                n += 1;
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
        });
        Self { url, heads }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().expect("lock").clone()
    }
}

fn answer(status: &str, extra: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

fn unavailable(retry_after: &str) -> String {
    let problem = Problem::new(503, BitsCode::ERROR_RETRY, "electing");
    let body = serde_json::to_string(&problem).expect("json");
    answer("503 Service Unavailable", &format!("Retry-After: {retry_after}\r\n"), &body)
}

const DESCRIPTION: &str = r#"{"code":"0x80200001","name":"BG_E_NOT_FOUND","description":"The requested job was not found."}"#;

#[tokio::test]
async fn a_503_with_retry_after_is_waited_out_then_retried() {
    let server = TinyServer::start(vec![unavailable("1"), answer("200 OK", "", DESCRIPTION)]).await;
    let client = Client::new(&server.url, None).expect("client");
    let started = Instant::now();
    let described = client.describe_error("BG_E_NOT_FOUND").await.expect("retried to success");
    let took = started.elapsed();
    assert_eq!(described.code, BitsCode::BG_E_NOT_FOUND);
    assert_eq!(server.heads().len(), 2);
    assert!(took >= Duration::from_secs(1), "Retry-After: 1 was not obeyed: {took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test]
async fn a_write_is_retried_with_the_same_idempotency_key() {
    let job = r#"{"error":"not a job"}"#;
    let server = TinyServer::start(vec![
        answer("429 Too Many Requests", "Retry-After: 0\r\n", "{}"),
        answer("502 Bad Gateway", "", "{}"),
        answer("200 OK", "", job),
    ])
    .await;
    let client = Client::new(&server.url, None).expect("client");
    // The body is not a JobInfo: what matters is what was sent.
    let _ = client.act(JobId::generate(), JobAction::Resume).await;
    let heads = server.heads();
    assert_eq!(heads.len(), 3, "{heads:#?}");
    let keys: Vec<&str> = heads
        .iter()
        .filter_map(|h| {
            h.lines().find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case(IDEMPOTENCY_KEY).then_some(value.trim())
            })
        })
        .collect();
    assert_eq!(keys.len(), 3, "{heads:#?}");
    assert!(keys.iter().all(|k| *k == keys[0]), "one key for every try: {keys:?}");
}

#[tokio::test]
async fn the_budget_bounds_the_retries() {
    let server = TinyServer::start(vec![unavailable("1")]).await;
    let client = Client::new(&server.url, None)
        .expect("client")
        .with_retry_budget(Duration::from_millis(4500));
    let started = Instant::now();
    let error = client.describe_error("BG_E_NOT_FOUND").await.expect_err("always 503");
    assert!(matches!(&error, ClientError::Api(p) if p.status == 503), "{error}");
    assert_eq!(server.heads().len(), 5, "tries at 0, 1, 2, 3 and 4 s");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_node_that_never_answered_fails_fast() {
    // A port nothing listens on.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    drop(listener);
    let client = Client::new(&url, None).expect("client");
    let started = Instant::now();
    let error = client.cluster().await.expect_err("nobody there");
    assert!(matches!(error, ClientError::Transport { .. }), "{error}");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
}

#[test]
fn backoff_grows_with_jitter_up_to_its_cap() {
    let mut backoff = Backoff::new();
    let waits: Vec<Duration> = (0..8).map(|_| backoff.next()).collect();
    assert!(waits[0] >= Duration::from_millis(50) && waits[0] <= BACKOFF_START);
    assert!(waits.iter().all(|w| *w <= BACKOFF_CAP));
    assert!(waits[7] >= BACKOFF_CAP / 2);
}
