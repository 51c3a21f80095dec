//! G3: a create retried with the same request id after a timeout yields one job.

use std::time::Duration;

use ferry_protocol::BitsCode;
use ferry_protocol::api::{JobInfo, Problem};
use ferry_tests::{Node, NodeOptions, tokens};
use serde_json::json;

use crate::support::raw;

/// `POST /v1/jobs` with `Idempotency-Key: create-once-1`.
async fn create(
    node: &Node,
    token: &str,
    body: &str,
    timeout: Duration,
) -> anyhow::Result<reqwest::Response> {
    let url = format!("{}/v1/jobs", node.url()?);
    Ok(raw()
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("idempotency-key", "create-once-1")
        .timeout(timeout)
        .body(body.to_owned())
        .send()
        .await?)
}

const PATIENT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_retried_after_a_timeout_yields_one_job() -> anyhow::Result<()> {
    let mut node = Node::start(NodeOptions::queue_only()).await?;
    let body = json!({"display_name": "once", "files": [{"remote_url": "https://o.example/a", "local_path": "/tmp/srv/a"}]}).to_string();

    // The node is paused: the request reaches its socket, the client gives up waiting.
    node.signal("STOP")?;
    let first = create(&node, tokens::ALICE, &body, Duration::from_millis(500)).await;
    let timed_out = first
        .as_ref()
        .err()
        .and_then(|e| e.downcast_ref::<reqwest::Error>())
        .is_some_and(reqwest::Error::is_timeout);
    assert!(timed_out, "the first attempt times out: {first:?}");
    node.signal("CONT")?;
    // The node now processes the abandoned request; the retry carries the same id.
    let retry = create(&node, tokens::ALICE, &body, PATIENT).await?;
    assert_eq!(retry.status().as_u16(), 201);
    let created: JobInfo = retry.json().await?;
    let again: JobInfo = create(&node, tokens::ALICE, &body, PATIENT).await?.json().await?;
    assert_eq!(again.id, created.id);

    let alice = node.client(Some(tokens::ALICE))?;
    let jobs = alice.list_jobs(false).await?;
    assert_eq!(jobs.len(), 1, "exactly one job: {jobs:?}");
    assert_eq!(jobs[0].id, created.id);

    // The same id with a different request is refused and applies nothing.
    let other =
        create(&node, tokens::ALICE, &json!({"display_name": "different"}).to_string(), PATIENT)
            .await?;
    assert_eq!(other.status().as_u16(), 400);
    assert_eq!(other.json::<Problem>().await?.code, BitsCode::E_INVALIDARG);
    assert_eq!(alice.list_jobs(false).await?.len(), 1);
    // Ids are per principal: Bob may use the same key for his own request.
    let bobs = create(&node, tokens::BOB, &body, PATIENT).await?;
    assert_eq!(bobs.status().as_u16(), 201);
    assert_ne!(bobs.json::<JobInfo>().await?.id, created.id);

    // Survives a restart too: the request table is replicated state.
    node.kill9().await?;
    node.restart().await?;
    let after: JobInfo = create(&node, tokens::ALICE, &body, PATIENT).await?.json().await?;
    assert_eq!(after.id, created.id);
    assert_eq!(node.client(Some(tokens::ALICE))?.list_jobs(false).await?.len(), 1);
    Ok(())
}
