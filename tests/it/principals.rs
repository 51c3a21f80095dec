//! The cluster's principals: a token made through one member works on every member; a
//! revocation through another reaches all of them, open event streams included, within
//! a second; the founder's generated admin token works on every member.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use ferry_coordinator::ClientError;
use ferry_coordinator::bus::BusSubscription;
use ferry_protocol::event::{EventFilter, StartAt, Subscribe};
use ferry_protocol::{JobType, Role};
use ferry_tests::{Node, NodeOptions, ferry, start_cluster, tokens};

use crate::support::{new_job, raw};

/// The HTTP status of an API refusal.
fn refused_with<T>(outcome: &Result<T, ClientError>) -> Option<u16> {
    match outcome {
        Err(ClientError::Api(problem)) => Some(problem.status),
        _ => None,
    }
}

/// Until a request with `token` is refused by `node`: the time it took.
async fn until_refused(node: &Node, token: &str, since: Instant) -> anyhow::Result<Duration> {
    let client = node.client(Some(token))?;
    loop {
        let outcome = client.list_jobs(false).await;
        match refused_with(&outcome) {
            Some(401) => return Ok(since.elapsed()),
            None if outcome.is_ok() && since.elapsed() < Duration::from_secs(5) => {}
            _ => bail!("the revoked token still answers {outcome:?}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_token_made_on_one_member_works_on_all_and_its_revocation_reaches_all_within_a_second()
-> anyhow::Result<()> {
    let nodes = start_cluster(NodeOptions::queue_only(), 3).await?;
    let admin = |i: usize| nodes[i].client(Some(tokens::ADMIN));

    let created = admin(0)?.create_token("carol", Role::User, None).await?;
    ensure!(created.token.len() >= 32, "a long token");
    // Any member accepts it at once (the create's answer came after it was applied
    // there; node 3 may apply it a moment later).
    let carol = nodes[2].client(Some(&created.token))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let job = loop {
        let outcome = carol.create_job(&new_job("carol's", JobType::Download, vec![])).await;
        if refused_with(&outcome) == Some(401) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        break outcome.context("carol's token on node 3")?;
    };
    ensure!(job.owner.as_str() == "carol", "the job belongs to the principal: {}", job.owner);
    ensure!(nodes[1].client(Some(&created.token))?.job(job.id).await.is_ok());
    // Admins see the principal, never the token.
    let listed = admin(1)?.tokens().await?;
    ensure!(listed.tokens.iter().any(|t| t.name == "carol" && t.revoked.is_none()));
    ensure!(!serde_json::to_string(&listed)?.contains(&created.token));
    // Users manage no tokens; a second live token for a name is refused.
    ensure!(refused_with(&carol.create_token("mallory", Role::Admin, None).await) == Some(403));
    ensure!(refused_with(&admin(2)?.create_token("carol", Role::User, None).await) == Some(400));

    // Open event streams with carol's token: SSE on node 3, the QUIC bus on node 1.
    let sse = raw()
        .get(format!("{}/v1/events", nodes[2].url()?))
        .bearer_auth(&created.token)
        .send()
        .await?;
    ensure!(sse.status() == 200, "SSE subscription: {}", sse.status());
    let mut sse_body = sse;
    let ca = std::fs::read_to_string(nodes[0].data_dir().join("ca.pem"))?;
    let subscribe = Subscribe {
        token: created.token.clone(),
        filter: EventFilter::default(),
        from: StartAt::Now,
    };
    let mut bus = BusSubscription::open(nodes[0].peer_addr()?, 1, &ca, &subscribe).await?;

    // Revoke through node 2.
    admin(1)?.revoke_token("carol").await?;
    let revoked = Instant::now();
    let mut refused = Vec::new();
    for node in &nodes {
        refused.push(until_refused(node, &created.token, revoked).await?);
    }
    let sse_closed = tokio::time::timeout(Duration::from_secs(5), async {
        let mut said = String::new();
        while let Some(chunk) = sse_body.chunk().await? {
            said.push_str(&String::from_utf8_lossy(&chunk));
        }
        anyhow::Ok((revoked.elapsed(), said))
    })
    .await
    .context("the SSE stream is still open 5 s after the revocation")??;
    let bus_closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match bus.next().await {
                Ok(Some(_)) => {}
                ended => return (revoked.elapsed(), ended),
            }
        }
    })
    .await
    .context("the bus subscription is still open 5 s after the revocation")?;
    println!(
        "revocation: refused after {refused:?} on nodes 1-3; SSE closed after {:?}, bus after {:?}",
        sse_closed.0, bus_closed.0
    );
    for (i, took) in refused.iter().enumerate() {
        ensure!(*took < Duration::from_secs(1), "node {} refused only after {took:?}", i + 1);
    }
    ensure!(sse_closed.0 < Duration::from_secs(1), "SSE closed after {:?}", sse_closed.0);
    ensure!(sse_closed.1.contains("revoked"), "the stream says why: {}", sse_closed.1);
    ensure!(bus_closed.0 < Duration::from_secs(1), "the bus closed after {:?}", bus_closed.0);
    ensure!(bus_closed.1.is_err(), "the bus subscription ends with an error: {:?}", bus_closed.1);
    // A new subscription is refused; the job stays; the name may get a new token.
    ensure!(matches!(
        BusSubscription::open(nodes[0].peer_addr()?, 1, &ca, &subscribe).await,
        Err(ferry_coordinator::bus::BusError::Refused { status: 401, .. })
    ));
    ensure!(admin(0)?.job(job.id).await?.owner.as_str() == "carol");
    let again = admin(2)?.create_token("carol", Role::User, None).await?;
    ensure!(nodes[0].client(Some(&again.token))?.job(job.id).await.is_ok());
    Ok(())
}

#[tokio::test]
async fn the_founders_generated_admin_token_works_on_every_member() -> anyhow::Result<()> {
    // No tokens configured: each node generates its own admin.token; the founder's
    // becomes the cluster's first principal.
    let options = NodeOptions { tokens: Vec::new(), ..NodeOptions::queue_only() };
    let founder = Node::start(options).await?;
    let token = std::fs::read_to_string(founder.data_dir().join("admin.token"))?;
    let token = token.trim();
    let joiner = Node::start(founder.joiner("127.0.0.2".parse()?, &founder.join_token()?)?).await?;
    let on_joiner = joiner.client(Some(token))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        match on_joiner.cluster().await {
            Ok(status) => break status,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e).context("the founder's admin token on the joined node"),
        }
    };
    ensure!(status.members.len() == 2);
    // It is an administrator there, with the CLI too.
    let (code, out, err) = ferry(&joiner, token, &["token", "list"]).await?;
    ensure!(code == 0 && out.contains("admin"), "ferry token list: {code} {out} {err}");
    let (code, out, err) =
        ferry(&joiner, token, &["token", "create", "dave", "--role", "user"]).await?;
    ensure!(code == 0 && out.trim().len() == 64, "ferry token create: {code} {out} {err}");
    let dave = founder.client(Some(out.trim()))?;
    ensure!(dave.list_jobs(false).await.is_ok(), "dave's token works on the founder");
    let (code, _, err) = ferry(&founder, token, &["token", "revoke", "dave"]).await?;
    ensure!(code == 0, "ferry token revoke: {err}");
    Ok(())
}
