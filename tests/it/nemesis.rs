//! A short nemesis run (the CI size; `FERRY_NEMESIS_FAULTS=N` or
//! `FERRY_NEMESIS_SCHEDULE=KillLeader=100,...` for longer ones, see
//! `scripts/nemesis.sh`): three nodes on loopback in a network namespace of their own
//! ([`ferry_tests::nemesis::run_in_own_network`]), each on its own small disk and on
//! storage that loses unsynced writes when killed, three clients creating, cancelling
//! and reading jobs with Idempotency-Keys, one subscriber following every event, one
//! client downloading a file whose origin content keeps changing ([`Downloads`]), and
//! faults drawn at random ([`ferry_tests::nemesis::Fault`]). Then every checker runs on
//! the whole history ([`ferry_tests::nemesis::check`], [`EventStream::check`]).

use std::time::Duration;

use ferry_tests::Rng;
use ferry_tests::nemesis::{
    Cluster, Downloads, EventStream, Ledger, Nemesis, Seen, Setup, Traffic, TrafficConfig,
};
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_nemesis_run_keeps_every_guarantee() -> anyhow::Result<()> {
    if ferry_tests::nemesis::run_in_own_network(
        "nemesis::a_short_nemesis_run_keeps_every_guarantee",
    )? {
        return Ok(());
    }
    let faults: usize =
        std::env::var("FERRY_NEMESIS_FAULTS").ok().and_then(|f| f.parse().ok()).unwrap_or(10);
    let seed = std::env::var("FERRY_NEMESIS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    println!("nemesis seed {seed} (FERRY_NEMESIS_SEED replays the schedule)");
    let mut rng = Rng(seed);
    let mut cluster = Cluster::start(&Setup::default()).await?;
    let events = EventStream::start(&cluster)?;
    let traffic = Traffic::start(cluster.urls.clone(), &TrafficConfig::default(), &mut rng);
    let downloads = Downloads::start(cluster.urls.clone(), &mut rng).await?;
    // Enough traffic before the first fault, or the run proves nothing.
    let warmup = Instant::now();
    while traffic.history.acknowledged_creates() < 30 {
        anyhow::ensure!(
            warmup.elapsed() < Duration::from_secs(30),
            "too little traffic before the first fault"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut nemesis =
        Nemesis::new(Rng(rng.next() | 1), &cluster).aiming_at(downloads.active.clone());
    println!("faults drawn from {:?}", nemesis.kinds());
    if let Ok(schedule) = std::env::var("FERRY_NEMESIS_SCHEDULE") {
        nemesis = nemesis.with_schedule(&schedule)?;
    }
    let (mut struck, most) = (0, 4 * (faults + nemesis.scheduled()));
    while struck < faults || nemesis.scheduled() > 0 {
        anyhow::ensure!(struck < most, "no leader to aim at for most of the schedule");
        nemesis.strike(&mut cluster).await?;
        struck += 1;
        tokio::time::sleep(Duration::from_millis(500 + rng.below(1000))).await;
    }
    let history = traffic.stop().await?;
    cluster.heal().await?;
    let ops = history.all();
    let verdict = ferry_tests::nemesis::check(&cluster, &ops, &mut Ledger::strict()).await?;
    let acknowledged: Vec<_> = ops
        .iter()
        .filter_map(|o| if let Seen::Created(id) = o.seen { Some(id) } else { None })
        .collect();
    let checked = events.check(&cluster, &acknowledged).await?;
    let files = downloads.check(cluster.member_ids()).await?;
    let count = |f: fn(&Seen) -> bool| ops.iter().filter(|o| f(&o.seen)).count();
    println!(
        "nemesis: {} operations ({} acknowledged creates, {} acknowledged cancels, {} reads, {} unknown outcomes; {} timed-out writes retried with their keys) under {:?} ({:?}); {verdict}; event stream: {checked} events in order and gap-free over {} reconnects; downloads: {} completed, each file one of the {} versions the origin served ({} lost with their removed home node), {} cancelled with no file at their names",
        ops.len(),
        count(|s| matches!(s, Seen::Created(_))),
        count(|s| *s == Seen::Cancelled),
        count(|s| matches!(s, Seen::Read(_))),
        count(|s| *s == Seen::Unknown),
        history.timed_out_and_retried.load(std::sync::atomic::Ordering::Relaxed),
        nemesis.injected,
        nemesis.outcomes,
        events.reconnects(),
        files.completed,
        files.versions,
        files.lost_with_home,
        files.cancelled,
    );
    Ok(())
}
