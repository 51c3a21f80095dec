//! `GET /v1/jobs` with filters and pages over real HTTP: `state`, `priority`, `type`
//! and `owner` narrow the listing (names in any case, comma-separated), `limit` and
//! `cursor` page through it in id order, and what a caller may not ask is refused.

use ferry_protocol::api::{JobList, Problem};
use ferry_protocol::command::JobAction;
use ferry_protocol::{JobId, JobType, Priority};
use ferry_tests::{Node, NodeOptions, tokens};

use crate::support::{file, new_job, raw};

/// `GET /v1/jobs?{query}` as `token`: the status and the body.
async fn list(node: &Node, token: &str, query: &str) -> anyhow::Result<(u16, serde_json::Value)> {
    let response =
        raw().get(format!("{}/v1/jobs?{query}", node.url()?)).bearer_auth(token).send().await?;
    Ok((response.status().as_u16(), response.json().await?))
}

/// The ids of a successful listing, and its cursor.
async fn ids(
    node: &Node,
    token: &str,
    query: &str,
) -> anyhow::Result<(Vec<JobId>, Option<String>)> {
    let (status, body) = list(node, token, query).await?;
    anyhow::ensure!(status == 200, "{query}: {status} {body}");
    let list: JobList = serde_json::from_value(body)?;
    Ok((list.jobs.iter().map(|j| j.id).collect(), list.next_cursor))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_and_pages_narrow_and_walk_the_listing() -> anyhow::Result<()> {
    let node = Node::start(NodeOptions::queue_only()).await?;
    let alice = node.client(Some(tokens::ALICE))?;
    let bob = node.client(Some(tokens::BOB))?;
    let mut made = Vec::new();
    for (i, (job_type, priority)) in [
        (JobType::Download, Priority::High),
        (JobType::Download, Priority::Low),
        (JobType::Upload, Priority::High),
        (JobType::Download, Priority::Normal),
        (JobType::Download, Priority::High),
    ]
    .into_iter()
    .enumerate()
    {
        let mut spec = new_job(&format!("j{i}"), job_type, vec![file(i)]);
        spec.properties.priority = Some(priority);
        made.push((alice.create_job(&spec).await?.id, job_type, priority));
    }
    // The first job is queued; the others stay suspended.
    alice.act(made[0].0, JobAction::Resume).await?;
    let bobs = bob.create_job(&new_job("b", JobType::Download, vec![file(9)])).await?.id;
    let mut all: Vec<JobId> = made.iter().map(|m| m.0).collect();
    all.sort();
    let select = |f: &dyn Fn(JobType, Priority) -> bool| -> Vec<JobId> {
        let mut ids: Vec<JobId> = made.iter().filter(|m| f(m.1, m.2)).map(|m| m.0).collect();
        ids.sort();
        ids
    };

    // Without parameters: everything, no cursor (older clients see it all).
    assert_eq!(ids(&node, tokens::ALICE, "").await?, (all.clone(), None));
    let high = select(&|_, p| p == Priority::High);
    assert_eq!(ids(&node, tokens::ALICE, "priority=high").await?.0, high);
    let high_downloads = select(&|t, p| p == Priority::High && t == JobType::Download);
    assert_eq!(ids(&node, tokens::ALICE, "priority=HIGH&type=download").await?.0, high_downloads);
    let high_or_low = select(&|_, p| p != Priority::Normal);
    assert_eq!(ids(&node, tokens::ALICE, "priority=high,low").await?.0, high_or_low);
    assert_eq!(ids(&node, tokens::ALICE, "state=QUEUED").await?.0, vec![made[0].0]);
    assert_eq!(ids(&node, tokens::ALICE, "state=suspended,transient_error").await?.0.len(), 4);
    assert!(ids(&node, tokens::ALICE, "state=cancelled").await?.0.is_empty());

    // Pages of two, in id order, without gaps or repeats.
    let mut walked = Vec::new();
    let mut query = "limit=2".to_owned();
    let mut pages = 0;
    loop {
        let (page, next) = ids(&node, tokens::ALICE, &query).await?;
        assert!(page.len() <= 2);
        walked.extend(page);
        pages += 1;
        match next {
            Some(cursor) => query = format!("limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!((walked, pages), (all.clone(), 3));

    // Owner: a user may name itself only; an administrator anyone.
    assert_eq!(ids(&node, tokens::ALICE, "owner=alice").await?.0, all);
    assert_eq!(ids(&node, tokens::ADMIN, "owner=bob").await?.0, vec![bobs]);
    assert!(ids(&node, tokens::ADMIN, "owner=nobody").await?.0.is_empty());
    for (token, query, status) in [
        (tokens::ALICE, "owner=bob", 403),
        (tokens::ALICE, "all_users=true", 403),
        (tokens::ALICE, "state=sleeping", 400),
        (tokens::ALICE, "state=", 400),
        (tokens::ALICE, "priority=high,,low", 400),
        (tokens::ALICE, "limit=0", 400),
        (tokens::ALICE, "limit=1001", 400),
        (tokens::ALICE, "cursor=not-a-job", 400),
        (tokens::ALICE, "colour=red", 400),
    ] {
        let (got, body) = list(&node, token, query).await?;
        let problem: Problem = serde_json::from_value(body)?;
        assert_eq!((got, problem.status), (status, status), "{query}: {}", problem.detail);
    }
    Ok(())
}
