//! Job events: replay from a cursor and from "now" over the QUIC bus and as SSE,
//! ownership of subscriptions, and coalescing of modification events.

use std::time::Duration;

use ferry_coordinator::bus::{BusError, Transport, Watched, Watcher};
use ferry_protocol::event::{Cursor, Delivery, Event, EventFilter, EventKind, StartAt};
use ferry_protocol::job::notify;
use ferry_protocol::{JobAction, JobId, JobState, JobType, PropertyChanges};
use ferry_tests::origin::{Content, Knobs, Origin, OriginConfig};
use ferry_tests::{Node, tokens};

use crate::support::{new_job, raw, start_download, transfer_node, wait_for};

const MIB: u64 = 1024 * 1024;

/// A watcher on `node` for `token`, over the QUIC bus (`ferry watch` and the nemesis
/// use HTTP, the default).
fn watcher(
    node: &Node,
    token: &str,
    filter: EventFilter,
    from: StartAt,
) -> anyhow::Result<Watcher> {
    let watcher = Watcher::new(node.url()?.parse()?, token.into(), filter, from);
    Ok(watcher.with_transport(Transport::Quic))
}

/// Events from `watcher` until `done` says enough (or 30 s pass).
async fn collect(
    watcher: &mut Watcher,
    mut done: impl FnMut(&[Event]) -> bool,
) -> anyhow::Result<Vec<Event>> {
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done(&events) {
        let next = tokio::time::timeout_at(deadline, watcher.next()).await;
        match next {
            Ok(Ok(Watched::Delivery(Delivery::Event(event)))) => events.push(event),
            Ok(Ok(Watched::Delivery(gap))) => anyhow::bail!("unexpected {gap:?}"),
            Ok(Ok(Watched::Connected { .. })) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => anyhow::bail!("timed out; so far: {events:#?}"),
        }
    }
    Ok(events)
}

fn kinds_of(events: &[Event], job: JobId) -> Vec<EventKind> {
    events.iter().filter(|e| e.event.job == job).map(|e| e.event.kind).collect()
}

/// A small download run to TRANSFERRED and completed; its id.
async fn finished_job(
    node: &Node,
    origin: &Origin,
    dir: &std::path::Path,
) -> anyhow::Result<JobId> {
    let client = node.client(Some(tokens::ALICE))?;
    let id = start_download(
        &client,
        &[(origin.url("/small.bin"), dir.join("small.bin"))],
        PropertyChanges::default(),
    )
    .await?;
    wait_for(node, &client, id, &[JobState::Transferred], Duration::from_secs(30)).await?;
    client.act(id, JobAction::Complete).await?;
    Ok(id)
}

/// Reads Server-Sent Events from `GET /v1/events?{query}` until `n` events arrived.
async fn sse(node: &Node, token: &str, query: &str, n: usize) -> anyhow::Result<Vec<Event>> {
    let url = format!("{}/v1/events?{query}", node.url()?);
    let mut response = raw().get(&url).bearer_auth(token).send().await?.error_for_status()?;
    let mut text = String::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while events.len() < n {
        let chunk = tokio::time::timeout_at(deadline, response.chunk()).await??;
        let Some(chunk) = chunk else { anyhow::bail!("the stream ended: {events:?}") };
        text.push_str(std::str::from_utf8(&chunk)?);
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let (mut id, mut data) = (None, None);
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().parse::<Cursor>().map_err(anyhow::Error::msg)?);
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = Some(serde_json::from_str::<serde_json::Value>(v.trim())?);
                }
            }
            if let (Some(cursor), Some(mut data)) = (id, data) {
                let object =
                    data.as_object_mut().ok_or_else(|| anyhow::anyhow!("not an object"))?;
                anyhow::ensure!(object.remove("cursor") == Some(cursor.to_string().into()));
                events.push(Event { cursor, event: serde_json::from_value(data)? });
            }
        }
    }
    Ok(events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_replays_in_order_from_zero_and_now_starts_fresh() -> anyhow::Result<()> {
    let origin = Origin::start(OriginConfig::default()).await?;
    origin.add_file("/small.bin", Content::Pattern { seed: 3, len: 200_000 });
    let node = transfer_node("").await?;
    let out = tempfile::tempdir()?;
    let first = finished_job(&node, &origin, out.path()).await?;

    // A subscriber that arrives afterwards, from cursor 0: the whole history in order.
    let mut late =
        watcher(&node, tokens::ALICE, EventFilter::default(), StartAt::Cursor(Cursor::START))?;
    let history = collect(&mut late, |e| kinds_of(e, first).len() >= 3).await?;
    assert_eq!(
        kinds_of(&history, first),
        [EventKind::JobCreated, EventKind::JobTransferred, EventKind::JobAcknowledged],
        "default notify flags: creation, the outcome and the acknowledgement"
    );
    assert!(history.windows(2).all(|w| w[0].cursor < w[1].cursor), "cursor order");
    let transferred = history.iter().find(|e| e.event.kind == EventKind::JobTransferred);
    let transferred = transferred.ok_or_else(|| anyhow::anyhow!("no JobTransferred"))?;
    assert_eq!(transferred.event.state, JobState::Transferred);
    assert_eq!(transferred.event.progress.bytes_transferred, 200_000);

    // The same history as Server-Sent Events.
    let over_sse = sse(&node, tokens::ALICE, "from=0", history.len()).await?;
    assert_eq!(over_sse, history, "SSE and the bus carry the same stream");

    // From "now": only what happens next.
    let mut fresh = watcher(&node, tokens::ALICE, EventFilter::default(), StartAt::Now)?;
    let connected = fresh.next().await?;
    assert!(matches!(connected, Watched::Connected { .. }), "{connected:?}");
    let client = node.client(Some(tokens::ALICE))?;
    let second = client.create_job(&new_job("second", JobType::Download, vec![])).await?.id;
    let seen = collect(&mut fresh, |e| !e.is_empty()).await?;
    assert_eq!(seen[0].event.job, second, "{seen:#?}");
    assert_eq!(seen[0].event.kind, EventKind::JobCreated);
    assert!(seen[0].cursor > history[history.len() - 1].cursor);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_subscription_never_carries_another_users_events() -> anyhow::Result<()> {
    let node = Node::start(ferry_tests::NodeOptions::queue_only()).await?;
    let alice = node.client(Some(tokens::ALICE))?;
    let bob = node.client(Some(tokens::BOB))?;
    let mut alices = Vec::new();
    for n in 0..5 {
        alices.push(
            alice.create_job(&new_job(&format!("a{n}"), JobType::Download, vec![])).await?.id,
        );
        bob.create_job(&new_job(&format!("b{n}"), JobType::Download, vec![])).await?;
        alice.act(alices[n], JobAction::Cancel).await?;
    }
    // Bob, from the start, even naming Alice's job in his filter: only his five jobs.
    let filter = EventFilter { jobs: vec![], kinds: vec![], all_users: false };
    let mut bobs = watcher(&node, tokens::BOB, filter, StartAt::Cursor(Cursor::START))?;
    let seen = collect(&mut bobs, |e| e.len() >= 5).await?;
    assert!(seen.iter().all(|e| e.event.owner.as_str() == "bob"), "{seen:#?}");
    let named = EventFilter { jobs: alices.clone(), kinds: vec![], all_users: false };
    let over_sse = format!("from=0&job={}", alices[0]);
    let mut nosy = watcher(&node, tokens::BOB, named, StartAt::Cursor(Cursor::START))?;
    let quiet =
        tokio::time::timeout(Duration::from_secs(2), collect(&mut nosy, |e| !e.is_empty())).await;
    assert!(quiet.is_err(), "bob received events of alice's jobs: {quiet:?}");
    let url = format!("{}/v1/events?{over_sse}", node.url()?);
    let mut response = raw().get(&url).bearer_auth(tokens::BOB).send().await?;
    assert_eq!(response.status(), 200);
    let mut body = Vec::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(1);
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(until, response.chunk()).await {
        body.extend_from_slice(&chunk);
    }
    assert!(!String::from_utf8_lossy(&body).contains("Job"), "bob saw alice's events over SSE");

    // Every user's events are for administrators only, on the bus and over SSE.
    let all = EventFilter { all_users: true, ..EventFilter::default() };
    let refused = watcher(&node, tokens::ALICE, all.clone(), StartAt::Now)?.next().await;
    assert!(matches!(refused, Err(BusError::Refused { status: 403, .. })), "{refused:?}");
    let url = format!("{}/v1/events?all_users=true", node.url()?);
    let response = raw().get(&url).bearer_auth(tokens::ALICE).send().await?;
    assert_eq!(response.status(), 403);
    let mut admin = watcher(&node, tokens::ADMIN, all, StartAt::Cursor(Cursor::START))?;
    let everyone = collect(&mut admin, |e| e.len() >= 15).await?;
    let owners: std::collections::BTreeSet<&str> =
        everyone.iter().map(|e| e.event.owner.as_str()).collect();
    assert_eq!(owners, ["alice", "bob"].into_iter().collect());

    // A wrong token is refused outright.
    let mut stranger =
        watcher(&node, "not-a-token-at-all-0000", EventFilter::default(), StartAt::Now)?;
    let refused = stranger.next().await;
    assert!(matches!(refused, Err(BusError::Refused { status: 401, .. })), "{refused:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_progress_is_coalesced_but_the_outcome_is_not() -> anyhow::Result<()> {
    const SIZE: u64 = 4 * MIB;
    let origin = Origin::start(OriginConfig::default()).await?;
    origin.add_file("/steady.bin", Content::Pattern { seed: 9, len: SIZE });
    // About two seconds of transfer, in 64 KiB chunks: dozens of progress reports.
    origin.set_knobs(Knobs { rate_limit_per_connection: Some(2 * MIB), ..Knobs::default() });
    let node = transfer_node("chunk_size_bytes = 65536").await?;
    let client = node.client(Some(tokens::ALICE))?;
    let mut events = watcher(&node, tokens::ALICE, EventFilter::default(), StartAt::Now)?;
    assert!(matches!(events.next().await?, Watched::Connected { .. }));
    let out = tempfile::tempdir()?;
    let properties = PropertyChanges {
        notify_flags: Some(notify::DEFAULT | notify::JOB_MODIFICATION),
        minimum_notification_interval_ms: Some(500),
        ..PropertyChanges::default()
    };
    let started = tokio::time::Instant::now();
    let id = start_download(
        &client,
        &[(origin.url("/steady.bin"), out.path().join("s.bin"))],
        properties,
    )
    .await?;
    let seen =
        collect(&mut events, |e| kinds_of(e, id).contains(&EventKind::JobTransferred)).await?;
    let took = started.elapsed();
    let kinds = kinds_of(&seen, id);
    let modifications = kinds.iter().filter(|k| **k == EventKind::JobModification).count();
    let transferred = kinds.iter().filter(|k| **k == EventKind::JobTransferred).count();
    println!("a {took:?} download published {modifications} modification events");
    // One per 500 ms at most, plus the first of the run.
    let bound = (took.as_millis() / 500 + 1) as usize;
    assert!(modifications <= bound, "{modifications} modifications in {took:?}: {kinds:?}");
    assert!(modifications >= 2, "{kinds:?}");
    assert_eq!(transferred, 1);
    Ok(())
}

/// `ferry watch --json` against `node`, its output into files in `dir`.
fn spawn_watch(
    node: &Node,
    dir: &std::path::Path,
    args: &[&str],
) -> anyhow::Result<std::process::Child> {
    let stdout = std::fs::File::create(dir.join("watch.out"))?;
    let stderr = std::fs::File::create(dir.join("watch.err"))?;
    Ok(std::process::Command::new(ferry_tests::binary("ferry")?)
        .args(["--json", "watch"])
        .args(args)
        .env("FERRY_NODE", node.url()?)
        .env("FERRY_TOKEN", tokens::ADMIN)
        .stdin(std::process::Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()?)
}

/// (cursor, kind, job) of every line `ferry watch --json` printed so far.
fn printed(dir: &std::path::Path) -> anyhow::Result<Vec<(Cursor, EventKind, JobId)>> {
    let text = std::fs::read_to_string(dir.join("watch.out"))?;
    let mut lines = Vec::new();
    // The last line may still be being written.
    for line in text.lines().filter(|l| l.ends_with('}')) {
        let value: serde_json::Value = serde_json::from_str(line)?;
        let field = |name: &str| value[name].as_str().map(str::to_owned).unwrap_or_default();
        lines.push((
            field("cursor").parse().map_err(anyhow::Error::msg)?,
            field("kind").parse().map_err(anyhow::Error::msg)?,
            field("job").parse()?,
        ));
    }
    Ok(lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_follows_the_cluster_when_its_node_is_killed() -> anyhow::Result<()> {
    const JOBS: usize = 200;
    const MISSING_EVERY: usize = 10;
    let origin = Origin::start(OriginConfig::default()).await?;
    origin.add_file("/ok.bin", Content::Pattern { seed: 4, len: 20_000 });
    let options = ferry_tests::NodeOptions {
        transfer: "max_active_jobs = 8\nread_timeout_secs = 10".into(),
        ..ferry_tests::NodeOptions::default()
    };
    let (mut nodes, agreed) = crate::cluster::form_cluster(options).await?;
    // Watch through a follower; submit through the other two (their jobs' home nodes
    // stay up, so every job ends while the watched node is down).
    let watched = agreed.iter().position(|s| s.role == "follower").unwrap_or(0);
    let submitters: Vec<usize> = (0..3).filter(|i| *i != watched).collect();
    let out = tempfile::tempdir()?;
    let mut watch = spawn_watch(
        &nodes[watched],
        out.path(),
        &["--all-users", "--from", "0", "--kinds", "JobTransferred,JobError"],
    )?;

    let mut ids = Vec::new();
    for n in 0..JOBS {
        let node = &nodes[submitters[n % 2]];
        // An administrator: 200 unfinished jobs exceed a user's quota.
        let client = node.client(Some(tokens::ADMIN))?;
        let path = if n % MISSING_EVERY == 0 { "/missing.bin" } else { "/ok.bin" };
        let file = ferry_protocol::NewFile {
            remote_url: origin.url(path),
            local_path: out.path().join(format!("f{n}")).to_string_lossy().into(),
            ranges: vec![],
            sha256: None,
        };
        let id =
            client.create_job(&new_job(&format!("j{n}"), JobType::Download, vec![file])).await?.id;
        client.act(id, JobAction::Resume).await?;
        ids.push(id);
        if n == JOBS / 4 {
            nodes[watched].kill9().await?;
        }
    }

    // Every job ends (the watched node is down meanwhile).
    let survivor = nodes[submitters[0]].client(Some(tokens::ADMIN))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    for id in &ids {
        loop {
            let state = survivor.job(*id).await?.state;
            if matches!(state, JobState::Transferred | JobState::Error) {
                break;
            }
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "job {id} is still {state:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Everything printed: one outcome per job, in cursor order.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let lines = loop {
        let lines = printed(out.path())?;
        let jobs: std::collections::HashSet<JobId> = lines.iter().map(|l| l.2).collect();
        if ids.iter().all(|id| jobs.contains(id)) {
            break lines;
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = watch.kill();
            anyhow::bail!(
                "ferry watch printed {} of {JOBS} jobs' outcomes; stderr:\n{}",
                jobs.len(),
                std::fs::read_to_string(out.path().join("watch.err"))?
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    watch.kill()?;
    let _ = watch.wait();
    let stderr = std::fs::read_to_string(out.path().join("watch.err"))?;
    assert!(stderr.matches("watching events on node").count() >= 2, "no reconnect:\n{stderr}");
    assert!(lines.windows(2).all(|w| w[0].0 < w[1].0), "not in cursor order (or repeated)");
    for (n, id) in ids.iter().enumerate() {
        let kinds: Vec<EventKind> = lines.iter().filter(|l| l.2 == *id).map(|l| l.1).collect();
        let expected =
            if n % MISSING_EVERY == 0 { EventKind::JobError } else { EventKind::JobTransferred };
        assert_eq!(kinds, [expected], "job {n}");
    }
    println!("ferry watch printed {} outcomes across a kill of its node; {stderr}", lines.len());
    nodes[watched].restart().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_with_ranges_publishes_its_ranges_then_the_file_then_the_job() -> anyhow::Result<()>
{
    let origin = Origin::start(OriginConfig::default()).await?;
    origin.add_file("/r.bin", Content::Pattern { seed: 8, len: 1_000_000 });
    let node = transfer_node("").await?;
    let client = node.client(Some(tokens::ALICE))?;
    let mut events = watcher(&node, tokens::ALICE, EventFilter::default(), StartAt::Now)?;
    assert!(matches!(events.next().await?, Watched::Connected { .. }));
    let out = tempfile::tempdir()?;
    let file = ferry_protocol::NewFile {
        remote_url: origin.url("/r.bin"),
        local_path: out.path().join("r.bin").to_string_lossy().into(),
        ranges: vec![
            ferry_protocol::FileRange { offset: 0, length: 300_000 },
            ferry_protocol::FileRange { offset: 600_000, length: 300_000 },
        ],
        sha256: None,
    };
    let mut spec = new_job("ranged", JobType::Download, vec![file]);
    spec.properties.notify_flags =
        Some(notify::JOB_TRANSFERRED | notify::FILE_TRANSFERRED | notify::FILE_RANGES_TRANSFERRED);
    let id = client.create_job(&spec).await?.id;
    client.act(id, JobAction::Resume).await?;
    let seen =
        collect(&mut events, |e| kinds_of(e, id).contains(&EventKind::JobTransferred)).await?;
    let mine: Vec<&Event> = seen.iter().filter(|e| e.event.job == id).collect();
    let kinds: Vec<EventKind> = mine.iter().map(|e| e.event.kind).collect();
    let last_two = &kinds[kinds.len() - 2..];
    assert_eq!(last_two, [EventKind::FileTransferred, EventKind::JobTransferred], "{kinds:?}");
    let ranges: Vec<&&Event> =
        mine.iter().filter(|e| e.event.kind == EventKind::FileRangesTransferred).collect();
    assert!(!ranges.is_empty(), "no FileRangesTransferred: {kinds:?}");
    assert!(ranges.iter().all(|e| e.event.file_index == Some(0)));
    assert_eq!(kinds[0], EventKind::JobCreated);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_while_sending_an_event_leaves_the_stream_whole() -> anyhow::Result<()> {
    // The node crashes while sending an event to a subscriber (events.send); the
    // subscriber reconnects to the restarted node and resumes after the last event it
    // got: every job's creation arrives once, in cursor order, and the stream is what a
    // fresh replay from the start gives. Crossed at varied events per round
    // (`FERRY_FAILPOINT_ROUNDS`, scripts/failpoints.sh).
    const NAME: &str = "events.send";
    const JOBS: usize = 60;
    let rounds = crate::support::failpoint_rounds();
    for round in 0..rounds {
        let passes = 5 + (round * 7) % 40;
        let options = ferry_tests::NodeOptions {
            failpoints: Some(format!("{NAME}={passes}*off->panic")),
            ..ferry_tests::NodeOptions::queue_only()
        };
        let mut node = Node::start(options).await?;
        let every = EventFilter { all_users: true, ..Default::default() };
        let mut follower =
            watcher(&node, tokens::ADMIN, every.clone(), StartAt::Cursor(Cursor::START))?;
        // A writer creates the jobs, retrying each with its key until it is acknowledged.
        let url = node.url()?;
        let writer = tokio::spawn(async move {
            let http = raw();
            let mut ids = Vec::new();
            for i in 0..JOBS {
                let key = format!("job-{i}");
                loop {
                    let sent = ferry_tests::nemesis::create(&http, &url, &key).send().await;
                    if let Ok(answer) = sent
                        && answer.status() == 201
                    {
                        ids.push(answer.json::<ferry_protocol::api::JobInfo>().await?.id);
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            anyhow::Ok(ids)
        });
        // The node is restarted, without the failpoint, once it crashed.
        let restarter = tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while !node.exited() {
                anyhow::ensure!(tokio::time::Instant::now() < deadline, "{NAME} never fired");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            node.options.failpoints = None;
            node.restart().await?;
            anyhow::Ok(node)
        });
        let created = |events: &[Event]| {
            events.iter().filter(|e| e.event.kind == EventKind::JobCreated).count()
        };
        let events = collect(&mut follower, |e| created(e) >= JOBS).await?;
        let node = restarter.await??;
        let log = std::fs::read_to_string(node.log_path())?;
        anyhow::ensure!(log.contains(&format!("failpoint {NAME} panic")), "another crash");
        let ids = writer.await??;
        anyhow::ensure!(events.windows(2).all(|w| w[0].cursor < w[1].cursor), "cursor order");
        let seen: std::collections::BTreeSet<JobId> = events
            .iter()
            .filter(|e| e.event.kind == EventKind::JobCreated)
            .map(|e| e.event.job)
            .collect();
        anyhow::ensure!(
            seen == ids.iter().copied().collect() && created(&events) == JOBS,
            "round {round}: each job's creation once"
        );
        let mut replay = watcher(&node, tokens::ADMIN, every, StartAt::Cursor(Cursor::START))?;
        let replayed = collect(&mut replay, |e| e.len() >= events.len()).await?;
        anyhow::ensure!(replayed == events, "round {round}: the stream differs from a replay");
        if rounds == 1 {
            println!(
                "crashed sending event {}; the subscriber resumed: {JOBS} creations once each, in order, as a replay gives them",
                passes + 1
            );
        }
    }
    Ok(())
}

/// `ferry watch` goes over `GET /v1/events` by default: it works where only the API
/// port is reachable, and `--quic` (the bus on the peer port) does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_works_with_the_peer_port_firewalled() -> anyhow::Result<()> {
    if !ferry_tests::Partition::available() {
        eprintln!("skipped: iptables is not usable here");
        return Ok(());
    }
    let options = ferry_tests::NodeOptions {
        ip: "127.0.23.1".parse()?,
        ..ferry_tests::NodeOptions::queue_only()
    };
    let node = Node::start(options).await?;
    let firewall = ferry_tests::Partition::drop_udp_to(node.peer_addr()?)?;
    let out = tempfile::tempdir()?;
    let mut watch = spawn_watch(&node, out.path(), &["--all-users", "--count", "2"])?;
    let quic_dir = tempfile::tempdir()?;
    let mut quic = spawn_watch(&node, quic_dir.path(), &["--all-users", "--quic", "--count", "1"])?;
    // Subscribed (`subscribed` came first), then a new job's two events.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(out.path().join("watch.err"))?.contains("watching events") {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "ferry watch did not subscribe");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let admin = node.client(Some(tokens::ADMIN))?;
    let job = admin.create_job(&new_job("watched", JobType::Download, vec![])).await?;
    admin.act(job.id, JobAction::Cancel).await?;
    let status = loop {
        if let Some(status) = watch.try_wait()? {
            break status;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "ferry watch printed too little");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{}", std::fs::read_to_string(out.path().join("watch.err"))?);
    let lines = printed(out.path())?;
    let kinds: Vec<EventKind> = lines.iter().map(|l| l.1).collect();
    assert_eq!(kinds, [EventKind::JobCreated, EventKind::JobCancelled], "{lines:?}");
    assert!(lines.iter().all(|l| l.2 == job.id));
    // Over the bus, nothing gets through the firewall.
    assert!(quic.try_wait()?.is_none(), "ferry watch --quic ended through a firewall");
    assert!(printed(quic_dir.path())?.is_empty());
    quic.kill()?;
    let _ = quic.wait();
    drop(firewall);
    println!("ferry watch over HTTP with UDP to the peer port dropped: {lines:?}");
    Ok(())
}

/// A watcher keeps learning the members while it is subscribed: when every node it knew
/// of is gone (a fleet replaced node by node), it resumes at a node that joined after it
/// connected, and goes on from where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_at_members_that_joined_after_it_connected() -> anyhow::Result<()> {
    let mut nodes = vec![Node::start(ferry_tests::NodeOptions::default()).await?];
    let every_job = EventFilter { all_users: true, ..EventFilter::default() };
    let mut watcher =
        Watcher::new(nodes[0].url()?.parse()?, tokens::ADMIN.into(), every_job, StartAt::Now);
    // Subscribed while the cluster is this one node: the only member it learns then.
    let connected = tokio::time::timeout(Duration::from_secs(10), watcher.next()).await??;
    let Watched::Connected { node: first_id, .. } = connected else {
        anyhow::bail!("{connected:?}")
    };
    let token = nodes[0].join_token()?;
    let base = nodes[0].options.ip.octets();
    for i in 1..3 {
        let ip = std::net::Ipv4Addr::new(base[0], base[1], base[2], base[3] + i);
        let joiner = nodes[0].joiner(ip, &token)?;
        nodes.push(Node::start(joiner).await?);
    }
    ferry_tests::await_agreement(&nodes, 3, "the two nodes did not join").await?;
    // Long enough for the watcher's refresh of the members (every 10 s).
    tokio::time::sleep(Duration::from_secs(12)).await;

    // The first node leaves the cluster and stops.
    // Through the leader, whichever it is; a leader that removes itself may step down
    // before it answers, so the others are asked whether it is gone.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut answers = Vec::new();
    'removed: loop {
        for node in &nodes {
            match node.client(Some(tokens::ADMIN))?.remove_member(first_id).await {
                Ok(()) => break 'removed,
                Err(e) => answers.push(e.to_string()),
            }
            let status = nodes[1].client(Some(tokens::ADMIN))?.cluster().await;
            if status.is_ok_and(|s| s.members.iter().all(|m| m.node_id != first_id)) {
                break 'removed;
            }
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "cannot remove the first node: {answers:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    nodes[0].kill9().await?;
    let client = nodes[1].client(Some(tokens::ADMIN))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let created = loop {
        match client.create_job(&new_job("after", JobType::Download, vec![])).await {
            Ok(job) => break job.id,
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    };

    // It resumes at one of the nodes that joined later, and delivers the new job.
    let mut resumed_at = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let next = tokio::time::timeout_at(deadline, watcher.next()).await;
        match next.map_err(|_| anyhow::anyhow!("no new job seen; resumed at {resumed_at:?}"))?? {
            Watched::Connected { node, .. } => resumed_at = Some(node),
            Watched::Delivery(Delivery::Event(e)) if e.event.job == created => break,
            Watched::Delivery(Delivery::Event(_)) => {}
            Watched::Delivery(gap) => anyhow::bail!("unexpected {gap:?}"),
        }
    }
    assert!(resumed_at.is_some_and(|n| n != first_id), "resumed at {resumed_at:?}");
    Ok(())
}

/// A watcher that asks a member for events its history no longer starts at (the member
/// caught up by installing a snapshot) takes them from a member that still holds them,
/// instead of passing the hole on as a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_given_a_gap_takes_the_events_from_a_member_that_holds_them() -> anyhow::Result<()>
{
    // Snapshots every 50 entries: the leader purges its log past the paused follower,
    // which catches up by installing a snapshot and so holds no history before it.
    let options = ferry_tests::NodeOptions {
        snapshot_after_entries: 50,
        ..ferry_tests::NodeOptions::queue_only()
    };
    let nodes = ferry_tests::start_cluster(options, 3).await?;
    let agreed = ferry_tests::await_agreement(&nodes, 3, "the cluster did not form").await?;
    let follower = (agreed.iter().position(|s| s.role == "follower"))
        .ok_or_else(|| anyhow::anyhow!("no follower"))?;
    let leader = (agreed.iter().position(|s| s.role == "leader"))
        .ok_or_else(|| anyhow::anyhow!("no leader"))?;
    nodes[follower].signal("STOP")?;
    let client = nodes[leader].client(Some(tokens::ADMIN))?;
    let mut created = std::collections::BTreeSet::new();
    for n in 0..200 {
        created.insert(
            client
                .create_job(&new_job(&format!("paused-{n}"), JobType::Download, vec![]))
                .await?
                .id,
        );
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while client.cluster().await?.purged_index.is_none_or(|p| p <= 100) {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "the leader purged no log");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    nodes[follower].signal("CONT")?;
    ferry_tests::await_agreement(&nodes, 3, "the follower did not catch up").await?;
    let caught_up = nodes[follower].client(Some(tokens::ADMIN))?.cluster().await?;
    anyhow::ensure!(caught_up.snapshot_index.is_some(), "the follower installed no snapshot");

    // From the start, at the follower: its history begins at its snapshot.
    let every_job = EventFilter { all_users: true, ..EventFilter::default() };
    let start = StartAt::Cursor(Cursor::START);
    let url = nodes[follower].url()?.parse()?;
    let mut watcher = Watcher::new(url, tokens::ADMIN.into(), every_job, start);
    let mut connected = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !created.is_empty() {
        let next = tokio::time::timeout_at(deadline, watcher.next()).await;
        let next = next.map_err(|_| anyhow::anyhow!("{} creations not seen", created.len()))??;
        match next {
            Watched::Connected { node, .. } => connected.push(node),
            Watched::Delivery(Delivery::Event(e)) => {
                if e.event.kind == EventKind::JobCreated {
                    created.remove(&e.event.job);
                }
            }
            Watched::Delivery(gap) => {
                anyhow::bail!("{gap:?} after connecting to {connected:?}")
            }
        }
    }
    let follower_id = agreed[follower].node_id;
    assert_eq!(connected.first(), Some(&follower_id), "it connected at the follower first");
    assert!(connected.len() >= 2, "it moved to a member holding the events: {connected:?}");
    Ok(())
}
