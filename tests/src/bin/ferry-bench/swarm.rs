//! `ferry-bench swarm`: one file to 10, 100, 1,000 and 2,600 nodes in simulation
//! (`ferry_node::sim`: Ferry's own piece router on every simulated node, over a
//! modelled network), with time to the last copy p50/p99, origin egress and fan-out,
//! and issue 20's acceptance checked on the largest fleet: 3 GB to 2,600 nodes over
//! 300 MB/s links from an origin limited to 300 MB/s, p50 ≤ 10.5 s, p99 ≤ 12 s, origin
//! egress ≤ 1.05 × the file.

use std::time::{Duration, Instant};

use ferry_node::sim::{self, MB, Swarm};

/// The simulated fleets.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Fleet sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000,2600")]
    nodes: Vec<usize>,
    /// The file's size, in MB (10^6 bytes).
    #[arg(long, default_value_t = 3_000)]
    size_mb: u64,
    /// Each node's upload and download rate, in MB/s.
    #[arg(long, default_value_t = 300)]
    link_mbps: u64,
    /// The origin's egress limit, in MB/s.
    #[arg(long, default_value_t = 300)]
    origin_mbps: u64,
    /// One-way latency between any two parties, in microseconds.
    #[arg(long, default_value_t = 500)]
    latency_us: u64,
    /// How a link divides its rate among its flows [default: the simulator's].
    #[arg(long, value_enum)]
    sharing: Option<sim::Sharing>,
    /// Nodes that die during each run (spread over the first seconds).
    #[arg(long, default_value_t = 0)]
    failures: usize,
    /// The generator's seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Tuning: a worker's wait before asking again, in ms [default: the router's].
    #[arg(long, hide = true)]
    idle_ms: Option<u64>,
    /// Tuning: the fleet's origin window, in pieces [default: the router's].
    #[arg(long, hide = true)]
    window: Option<usize>,
    /// Tuning: how long a busy holder is passed over, in ms [default: the router's].
    #[arg(long, hide = true)]
    busy_ms: Option<u64>,
    /// Tuning: pieces a holder serves at once [default: `[peer_cache] max_serving`'s].
    #[arg(long, hide = true)]
    max_serving: Option<usize>,
    /// Tuning: requests a holder keeps waiting beyond its slots; more are answered busy
    /// [default: 0, as ferryd].
    #[arg(long, hide = true)]
    queue: Option<usize>,
    /// Tuning: peer workers per node [default: the shell's for the chunk size].
    #[arg(long, hide = true)]
    peer_workers: Option<usize>,
    /// Tuning: round trips before its last byte a peer worker asks for its next piece
    /// (0: once it is in) [default: the shell's].
    #[arg(long, hide = true)]
    pipeline: Option<u32>,
    /// Tuning: holders a view lists per piece.
    #[arg(long, hide = true)]
    sample: Option<usize>,
    /// Tuning: the chunk size, in MiB [default: a fleet's for the file].
    #[arg(long, hide = true)]
    chunk_mib: Option<u64>,
}

/// Issue 20's acceptance, for the 2,600-node line.
const P50: Duration = Duration::from_millis(10_500);
const P99: Duration = Duration::from_secs(12);
const EGRESS: f64 = 1.05;

/// Runs every fleet size and prints the table.
pub(crate) fn swarm(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.nodes.iter().all(|n| (2..=10_000).contains(n)), "--nodes: 2 to 10,000");
    anyhow::ensure!(
        args.size_mb > 0 && args.link_mbps > 0 && args.origin_mbps > 0,
        "--size-mb, --link-mbps, --origin-mbps: at least 1"
    );
    println!();
    println!(
        "ferry-bench swarm — simulated fleet (ferry_node::sim, Ferry's PieceRouter per node); \
         latency {} µs one way, seed {}; floor = file / link",
        args.latency_us, args.seed
    );
    println!(
        "{:>6} {:>8} {:>8} {:>8} {:>7} {:>8} {:>8} {:>8} {:>7} {:>9} {:>9} {:>6} {:>8}",
        "nodes",
        "file MB",
        "link",
        "origin",
        "chunks",
        "floor s",
        "p50 s",
        "p99 s",
        "egress",
        "fan-out",
        "peers",
        "dead",
        "verdict"
    );
    for &nodes in &args.nodes {
        let link = (args.link_mbps * MB) as f64;
        let origin = (args.origin_mbps * MB) as f64;
        let mut swarm = Swarm::new(nodes, args.size_mb * MB, link, origin);
        swarm.latency = Duration::from_micros(args.latency_us);
        swarm.seed = args.seed;
        swarm.sharing = args.sharing.unwrap_or(swarm.sharing);
        if let Some(ms) = args.idle_ms {
            swarm.idle = Duration::from_millis(ms);
        }
        if let Some(ms) = args.busy_ms {
            swarm.busy = Duration::from_millis(ms);
        }
        swarm.window = args.window.unwrap_or(swarm.window);
        if let Some(mib) = args.chunk_mib {
            swarm.chunk_size = mib << 20;
            swarm.peer_workers = sim::peer_workers(swarm.chunk_size);
            swarm.max_serving = sim::served_at_once(swarm.chunk_size);
        }
        swarm.max_serving = args.max_serving.unwrap_or(swarm.max_serving);
        swarm.queue = args.queue.unwrap_or(swarm.queue);
        swarm.peer_workers = args.peer_workers.unwrap_or(swarm.peer_workers);
        swarm.sample = args.sample.unwrap_or(swarm.sample);
        swarm.pipeline = args.pipeline.unwrap_or(swarm.pipeline);
        swarm.failures = (0..args.failures.min(nodes / 2))
            .map(|k| (nodes - 1 - 2 * k, Duration::from_millis(500 + 1_000 * k as u64)))
            .collect();
        let took = Instant::now();
        let outcome = sim::run(&swarm);
        let took = took.elapsed();
        let floor = swarm.file_bytes as f64 / link;
        let secs =
            |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.2}", d.as_secs_f64()));
        let (p50, p99) = (outcome.percentile(50.0), outcome.percentile(99.0));
        let egress = outcome.egress_ratio(swarm.file_bytes);
        let verdict = if nodes != 2_600 || args.size_mb != 3_000 {
            "-"
        } else if outcome.unfinished == 0
            && p50.is_some_and(|p| p <= P50)
            && p99.is_some_and(|p| p <= P99)
            && egress <= EGRESS
        {
            "PASS"
        } else {
            "FAIL"
        };
        println!(
            "{:>6} {:>8} {:>8} {:>8} {:>7} {:>8.2} {:>8} {:>8} {:>6.3}× {:>9} {:>9} {:>6} {:>8}",
            nodes,
            args.size_mb,
            format!("{}MB/s", args.link_mbps),
            format!("{}MB/s", args.origin_mbps),
            swarm.file_bytes.div_ceil(swarm.chunk_size),
            floor,
            secs(p50),
            secs(p99),
            egress,
            format!("{}/{}", outcome.max_serving, swarm.max_serving),
            format!("{:.1}/{}", outcome.mean_served_peers, outcome.max_served_peers),
            swarm.failures.len(),
            verdict,
        );
        if outcome.unfinished > 0 {
            println!("       {} surviving nodes did not finish", outcome.unfinished);
        }
        eprintln!(
            "       ({} events in {:.1} s; origin done at {:.2} s; {} busy answers; {} requests to dead nodes; \
             {} nodes served nobody)",
            outcome.events,
            took.as_secs_f64(),
            outcome.origin_last.as_secs_f64(),
            outcome.busy_answers,
            outcome.failed_requests,
            outcome.idle_servers
        );
        let held: Vec<String> = (outcome.held.iter())
            .map(|h| {
                let carried = (link * h.at.as_secs_f64()).min(swarm.file_bytes as f64);
                format!(
                    "{:.0} s: p50 {:.0} MB (min {:.0}, max {:.0}) of {:.0}",
                    h.at.as_secs_f64(),
                    h.p50 as f64 / MB as f64,
                    h.min as f64 / MB as f64,
                    h.max as f64 / MB as f64,
                    carried / MB as f64
                )
            })
            .collect();
        eprintln!(
            "       (held by the nodes, against what a link carries by then: {})",
            held.join("; ")
        );
        let [asking, busy, flowing, landing, waiting] =
            outcome.peer_time.shares().map(|share| share * 100.0);
        eprintln!(
            "       (peer workers' time: {flowing:.1} % bytes flowing, {asking:.1} % asking, \
             {busy:.1} % busy answers on their way back, {landing:.1} % landing, {waiting:.1} % told to wait)"
        );
    }
    println!(
        "fan-out = most pieces one node served at once / its slots; peers = distinct nodes \
         one node served, mean/max; acceptance (2,600 nodes, 3 GB): p50 ≤ {:.1} s, p99 ≤ {:.0} s, \
         egress ≤ {EGRESS}×",
        P50.as_secs_f64(),
        P99.as_secs_f64()
    );
    Ok(())
}
