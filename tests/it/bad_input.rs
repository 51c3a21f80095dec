//! Bad input gets a clear problem+json error with the right status and BITS code, and
//! changes nothing in the queue.

use ferry_protocol::api::Problem;
use ferry_protocol::limits::QueuePolicy;
use ferry_protocol::{BitsCode, JobId, JobType};
use ferry_tests::{Node, NodeOptions, tokens};
use serde_json::json;

use crate::support::{new_job, queue_view, raw};

struct Case {
    what: &'static str,
    method: reqwest::Method,
    path: String,
    token: Option<&'static str>,
    body: Option<String>,
    status: u16,
    code: BitsCode,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_and_change_nothing() -> anyhow::Result<()> {
    let node =
        Node::start(NodeOptions { policy: QueuePolicy::default(), ..NodeOptions::queue_only() })
            .await?;
    let alice = node.client(Some(tokens::ALICE))?;
    // A job with 200 files: the policy's limit.
    let files: Vec<_> = (0..200).map(crate::support::file).collect();
    let full = alice.create_job(&new_job("full", JobType::Download, files)).await?;
    let upload =
        alice.create_job(&new_job("up", JobType::Upload, vec![crate::support::file(1)])).await?;
    let empty = alice.create_job(&new_job("empty", JobType::Download, vec![])).await?;
    let before = queue_view(&node).await?;

    let file = |remote: &str, local: &str| {
        json!({"files": [{"remote_url": remote, "local_path": local}]}).to_string()
    };
    let files_path = format!("/v1/jobs/{}/files", full.id);
    let long_url = format!("https://origin.example/{}", "a/".repeat(1_100));
    let post = reqwest::Method::POST;
    let credential = |user: &str| json!({"target": "server", "scheme": "basic", "user_name": user, "password": "p"});
    let cases = vec![
        Case { what: "malformed JSON", method: post.clone(), path: "/v1/jobs".into(), token: Some(tokens::ALICE), body: Some(r#"{"display_name": "x""#.into()), status: 400, code: BitsCode::E_INVALIDARG },
        Case { what: "JSON of the wrong shape", method: post.clone(), path: "/v1/jobs".into(), token: Some(tokens::ALICE), body: Some(r#"{"display_name": 7}"#.into()), status: 400, code: BitsCode::E_INVALIDARG },
        Case { what: "unknown field", method: post.clone(), path: "/v1/jobs".into(), token: Some(tokens::ALICE), body: Some(r#"{"display_name": "x", "colour": "red"}"#.into()), status: 400, code: BitsCode::E_INVALIDARG },
        Case { what: "unknown property", method: reqwest::Method::PATCH, path: format!("/v1/jobs/{}", full.id), token: Some(tokens::ALICE), body: Some(r#"{"speed": 1}"#.into()), status: 400, code: BitsCode::E_INVALIDARG },
        Case { what: "relative local path", method: post.clone(), path: format!("/v1/jobs/{}/files", empty.id), token: Some(tokens::ALICE), body: Some(file("https://o.example/a", "relative/a")), status: 400, code: BitsCode::E_INVALIDARG },
        Case { what: "relative local path at create", method: post.clone(), path: "/v1/jobs".into(), token: Some(tokens::ALICE), body: Some(json!({"display_name": "r", "files": [{"remote_url": "https://o.example/a", "local_path": "a"}]}).to_string()), status: 400, code: BitsCode::E_INVALIDARG },
        Case { what: "URL over 2,200 characters", method: post.clone(), path: "/v1/jobs".into(), token: Some(tokens::ALICE), body: Some(json!({"display_name": "u", "files": [{"remote_url": long_url, "local_path": "/tmp/srv/u"}]}).to_string()), status: 400, code: BitsCode::E_INVALIDARG },
        Case { what: "201st file", method: post.clone(), path: files_path.clone(), token: Some(tokens::ALICE), body: Some(file("https://o.example/201", "/tmp/srv/201")), status: 409, code: BitsCode::BG_E_TOO_MANY_FILES_IN_JOB },
        Case { what: "second file of an upload job", method: post.clone(), path: format!("/v1/jobs/{}/files", upload.id), token: Some(tokens::ALICE), body: Some(file("https://o.example/2", "/tmp/srv/2")), status: 409, code: BitsCode::BG_E_TOO_MANY_FILES },
        Case { what: "range starting at EOF", method: post.clone(), path: "/v1/jobs".into(), token: Some(tokens::ALICE), body: Some(json!({"display_name": "r", "files": [{"remote_url": "https://o.example/a", "local_path": "/tmp/srv/a", "ranges": [{"offset": u64::MAX, "length": 1}]}]}).to_string()), status: 400, code: BitsCode::BG_E_INVALID_RANGE },
        Case { what: "overlapping ranges", method: post.clone(), path: "/v1/jobs".into(), token: Some(tokens::ALICE), body: Some(json!({"display_name": "r", "files": [{"remote_url": "https://o.example/a", "local_path": "/tmp/srv/a", "ranges": [{"offset": 0, "length": 10}, {"offset": 5, "length": "eof"}]}]}).to_string()), status: 400, code: BitsCode::BG_E_OVERLAPPING_RANGES },
        Case { what: "negative range length", method: post.clone(), path: "/v1/jobs".into(), token: Some(tokens::ALICE), body: Some(json!({"display_name": "r", "files": [{"remote_url": "https://o.example/a", "local_path": "/tmp/srv/a", "ranges": [{"offset": 0, "length": -1}]}]}).to_string()), status: 400, code: BitsCode::E_INVALIDARG },
        Case { what: "unknown job id", method: reqwest::Method::GET, path: format!("/v1/jobs/{}", JobId::generate()), token: Some(tokens::ALICE), body: None, status: 404, code: BitsCode::BG_E_NOT_FOUND },
        Case { what: "unknown job id on resume", method: post.clone(), path: format!("/v1/jobs/{}/resume", JobId::generate()), token: Some(tokens::ALICE), body: None, status: 404, code: BitsCode::BG_E_NOT_FOUND },
        Case { what: "malformed job id", method: reqwest::Method::GET, path: "/v1/jobs/not-a-guid".into(), token: Some(tokens::ALICE), body: None, status: 400, code: BitsCode::E_INVALIDARG },
        Case { what: "missing token", method: post.clone(), path: "/v1/jobs".into(), token: None, body: Some(r#"{"display_name": "x"}"#.into()), status: 401, code: BitsCode::E_ACCESSDENIED },
        Case { what: "wrong token", method: post.clone(), path: "/v1/jobs".into(), token: Some("not-a-valid-token-at-all"), body: Some(r#"{"display_name": "x"}"#.into()), status: 401, code: BitsCode::E_ACCESSDENIED },
        Case { what: "wrong token on a read", method: reqwest::Method::GET, path: "/v1/jobs".into(), token: Some("not-a-valid-token-at-all"), body: None, status: 401, code: BitsCode::E_ACCESSDENIED },
        Case { what: "unknown query parameter", method: reqwest::Method::GET, path: "/v1/jobs?everyone=1".into(), token: Some(tokens::ALICE), body: None, status: 400, code: BitsCode::E_INVALIDARG },
        Case { what: "body over the size limit", method: post.clone(), path: "/v1/jobs".into(), token: Some(tokens::ALICE), body: Some(format!(r#"{{"display_name": "{}"}}"#, "x".repeat(5 * 1024 * 1024))), status: 413, code: BitsCode::E_INVALIDARG },
        Case { what: "description too long", method: reqwest::Method::PATCH, path: format!("/v1/jobs/{}", full.id), token: Some(tokens::ALICE), body: Some(json!({"description": "d".repeat(1025)}).to_string()), status: 400, code: BitsCode::BG_E_STRING_TOO_LONG },
        Case { what: "undefined notify flags", method: reqwest::Method::PATCH, path: format!("/v1/jobs/{}", full.id), token: Some(tokens::ALICE), body: Some(r#"{"notify_flags": 128}"#.into()), status: 400, code: BitsCode::E_NOTIMPL },
        Case { what: "invalid UTF-8 in the path", method: reqwest::Method::GET, path: "/v1/jobs/%FF".into(), token: Some(tokens::ALICE), body: None, status: 400, code: BitsCode::E_INVALIDARG },
        Case { what: "node id that is not a number", method: reqwest::Method::DELETE, path: "/v1/cluster/members/one".into(), token: Some(tokens::ADMIN), body: None, status: 400, code: BitsCode::E_INVALIDARG },
        Case { what: "wrong method", method: reqwest::Method::DELETE, path: "/v1/jobs".into(), token: Some(tokens::ALICE), body: None, status: 405, code: BitsCode::E_INVALIDARG },
        Case { what: "unknown route", method: reqwest::Method::GET, path: "/v1/nothing".into(), token: Some(tokens::ALICE), body: None, status: 404, code: BitsCode::E_INVALIDARG },
        Case { what: "fleet listing a node twice", method: post.clone(), path: "/v1/fleets".into(), token: Some(tokens::ALICE), body: Some(json!({"remote_url": "https://o.example/f", "local_path": "/tmp/srv/f", "nodes": [1, 1]}).to_string()), status: 400, code: BitsCode::E_INVALIDARG },
        Case { what: "fleet with two credentials for one target and scheme", method: post.clone(), path: "/v1/fleets".into(), token: Some(tokens::ALICE), body: Some(json!({"remote_url": "https://o.example/f", "local_path": "/tmp/srv/f", "credentials": [credential("a"), credential("b")]}).to_string()), status: 400, code: BitsCode::E_INVALIDARG },
        Case { what: "fleet credential with an unknown scheme", method: post.clone(), path: "/v1/fleets".into(), token: Some(tokens::ALICE), body: Some(json!({"remote_url": "https://o.example/f", "local_path": "/tmp/srv/f", "credentials": [{"target": "server", "scheme": "kerberos", "user_name": "u", "password": "p"}]}).to_string()), status: 400, code: BitsCode::E_INVALIDARG },
    ];

    let http = raw();
    let base = node.url()?;
    for case in cases {
        let mut request = http.request(case.method.clone(), format!("{base}{}", case.path));
        if let Some(token) = case.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = case.body {
            request = request.header("content-type", "application/json").body(body);
        }
        let response = request.send().await.map_err(|e| anyhow::anyhow!("{}: {e:?}", case.what))?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
        };
        let (content_type, connection) = (header("content-type"), header("connection"));
        let text = response.text().await?;
        assert_eq!(status, case.status, "{}: {text}", case.what);
        assert_eq!(content_type, "application/problem+json", "{}", case.what);
        if status == 413 {
            // The unread body is still on the connection: the client must not reuse it.
            assert_eq!(connection, "close", "{}", case.what);
        }
        let problem: Problem = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}: {text}", case.what))?;
        assert_eq!(problem.code, case.code, "{}: {}", case.what, problem.detail);
        assert_eq!(problem.status, case.status, "{}", case.what);
        assert!(
            !problem.detail.is_empty() && !problem.description.is_empty(),
            "{}: says what went wrong",
            case.what
        );
    }
    assert_eq!(queue_view(&node).await?, before, "no bad request changed the queue");
    Ok(())
}
