//! `ferry-bench`: Ferry's benchmarks, printed as tables. Speed targets live here, not
//! in timed unit tests: numbers from one run on one machine, compared side by side.
//!
//! - `ferry-bench submit`: job submission through the HTTP API ([`submit`]).
//! - `ferry-bench events`: latency from a job event's commit to its receipt by
//!   subscribers of the QUIC bus ([`events`]).
//! - `ferry-bench download`: `ferry transfer` against curl and aria2c, all fetching the
//!   same files from the same local nginx ([`download`]).
//! - `ferry-bench upload`: one file downloaded by curl and `ferry transfer` from a
//!   local nginx, then uploaded by `ferry transfer --upload` to another ferryd
//!   ([`upload`]).
//! - `ferry-bench fleet`: one file to every node, as a fleet and each node alone,
//!   with origin egress from nginx's log ([`fleet`]).
//! - `ferry-bench shard`: one file from an nginx limiting each connection and each
//!   client address: aria2c, Ferry on one node, Ferry on three helping nodes ([`shard`]).
//! - `ferry-bench scale`: a node's costs as its queue grows: submit rate and p99 on
//!   top of 1k / 10k / 100k jobs, memory, listing, data size, restart time ([`scale`]).
//! - `ferry-bench swarm`: one file to 10 to 2,600 simulated nodes, Ferry's piece
//!   router on each, over a modelled network ([`swarm`]).
//! - `ferry-bench soak`: a cluster under steady traffic and a fault every 60-120 s for N
//!   minutes: memory, open files, jobs/s and the checkers' verdicts per interval
//!   ([`soak`]).
//!
//! Build in release first: `cargo build --release --workspace`, then
//! `cargo run --release -p ferry-tests --bin ferry-bench -- <bench>`.

mod calibrate;
mod child;
mod download;
mod events;
mod fleet;
mod payload;
mod report;
mod scale;
mod shard;
mod soak;
mod submit;
mod swarm;
mod upload;
mod warm;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "ferry-bench", about = "Ferry benchmarks")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Job submission throughput and latency through the HTTP API.
    Submit {
        /// Jobs created per run.
        #[arg(long, default_value_t = 5_000)]
        jobs: usize,
        /// Concurrent clients, one run each.
        #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
        clients: Vec<usize>,
        /// Nodes in the cluster (joined over QUIC); clients are spread over all.
        #[arg(long, default_value_t = 1)]
        nodes: usize,
    },
    /// A node's costs as its queue grows: submit rate, p99, memory, listing, data size
    /// and restart time with 1k, 10k and 100k jobs queued.
    Scale {
        /// Jobs queued at each level, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
        levels: Vec<usize>,
    },
    /// Latency from a job's creation being committed to bus subscribers receiving it.
    Events {
        /// Jobs created per run.
        #[arg(long, default_value_t = 2_000)]
        jobs: usize,
        /// Job creations per second, in all (paced, so that latency is measured on a
        /// cluster that is not saturated).
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        /// Subscribers, one run each (a fresh set per run).
        #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
        subscribers: Vec<usize>,
        /// Nodes in the cluster (joined over QUIC); subscribers and creators are spread
        /// over all.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
    },
    /// Downloads from a local nginx: ferry transfer vs curl vs aria2c, side by side.
    Download {
        /// Size of the large file, in MiB.
        #[arg(long, default_value_t = 1024)]
        size_mib: u64,
        /// Per-connection limit of the throttled scenario, in MB/s (10^6 bytes/s).
        #[arg(long, default_value_t = 25)]
        rate_mbps: u64,
        /// Number of small files (0 skips the small-files scenario).
        #[arg(long, default_value_t = 1_000)]
        small_files: usize,
        /// Size of each small file, in KiB.
        #[arg(long, default_value_t = 64)]
        small_kib: u64,
        /// Runs per client; the best is reported.
        #[arg(long, default_value_t = 1)]
        repeat: usize,
        /// Longest any one client run may take before it is killed, in seconds.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
        /// Directory for the served files and the downloads [default: the system
        /// temporary directory]; needs room for twice the large file.
        #[arg(long, value_name = "DIR")]
        work_dir: Option<PathBuf>,
        /// Suspended jobs each ferryd holds before its runs (its memory is measured
        /// with them in the queue).
        #[arg(long, default_value_t = 10_000)]
        queued: usize,
    },
    /// One file both ways on loopback: downloaded (curl, ferry transfer) from nginx,
    /// uploaded (ferry transfer --upload) to another ferryd's BITS upload server.
    Upload {
        /// Size of the file, in MiB.
        #[arg(long, default_value_t = 1024)]
        size_mib: u64,
        /// Longest any one client run may take before it is killed, in seconds.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
    /// A file to every node of 3- and 5-node clusters: `ferry fleet distribute` vs every
    /// node downloading on its own (time to the last copy, origin egress / file size).
    Fleet {
        /// Size of the file, in MiB.
        #[arg(long, default_value_t = 1024)]
        size_mib: u64,
        /// Per-connection limit, in MB/s (10^6 bytes/s).
        #[arg(long, default_value_t = 25)]
        rate_mbps: u64,
        /// Cluster sizes, comma-separated (2 to 10 nodes each).
        #[arg(long, value_delimiter = ',', default_value = "3,5")]
        nodes: Vec<u8>,
        /// Longest one run may take, in seconds.
        #[arg(long, default_value_t = 900)]
        timeout_secs: u64,
    },
    /// A file from an nginx limiting each connection's rate and each address's
    /// connections: aria2c -x16 vs Ferry on 1 node vs Ferry on 3 helping nodes.
    Shard {
        /// Size of the file, in MiB.
        #[arg(long, default_value_t = 1024)]
        size_mib: u64,
        /// Per-connection limit, in MB/s (10^6 bytes/s).
        #[arg(long, default_value_t = 25)]
        rate_mbps: u64,
        /// Requests at once per client address.
        #[arg(long, default_value_t = 2)]
        per_ip: u32,
        /// Longest one run may take, in seconds.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
    /// The swarm simulator against real ferryd fleets of 5 and 10 nodes, on loopback
    /// shaped with tc in a network namespace of its own (root): time to the last copy,
    /// simulated vs real.
    Calibrate {
        /// Cluster sizes, comma-separated (2 to 20 nodes each).
        #[arg(long, value_delimiter = ',', default_value = "5,10")]
        nodes: Vec<u8>,
        /// Size of the file, in MiB.
        #[arg(long, default_value_t = 100)]
        size_mib: u64,
        /// Each node's upload and download rate, in MB/s (10^6 bytes/s). The simulator
        /// leaves CPU out: at 10 MB/s, 10 nodes on 2 cores keep the CPU 89-95 % busy
        /// (fleets of 2 MiB pieces) and the real fleet falls behind its links.
        #[arg(long, default_value_t = 5)]
        link_mbps: u64,
        /// The origin's egress limit, in MB/s.
        #[arg(long, default_value_t = 5)]
        origin_mbps: u64,
        /// The simulator's one-way latency, in microseconds.
        #[arg(long, default_value_t = 200)]
        latency_us: u64,
        /// Longest one real run may take, in seconds.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
    /// One file to 10, 100, 1,000 and 2,600 nodes in simulation (Ferry's piece router
    /// over a modelled network): time to the last copy, origin egress, fan-out.
    Swarm(swarm::Args),
    /// Steady traffic and a random fault every 60-120 s for N minutes (root: the
    /// faults use iptables and tmpfs mounts).
    Soak {
        /// How long, in minutes.
        #[arg(long, default_value_t = 60)]
        minutes: u64,
        /// Nodes in the cluster.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Seconds between rows of the table.
        #[arg(long, default_value_t = 60)]
        interval_secs: u64,
        /// Seed of the traffic and the faults (printed; replays a run).
        #[arg(long)]
        seed: Option<u64>,
        /// Last byte of the first node's address (127.0.0.N up): another soak or
        /// nemesis run may go on beside this one on other addresses.
        #[arg(long, default_value_t = 121)]
        first_ip: u8,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ferry_coordinator::client::ensure_crypto_provider();
    match Cli::parse().bench {
        Bench::Submit { jobs, clients, nodes } => {
            let runs = submit::submit(jobs, &clients, nodes).await?;
            submit::print_submit(&runs, nodes);
        }
        Bench::Scale { levels } => {
            anyhow::ensure!(
                levels.iter().all(|l| (1..=1_000_000).contains(l)),
                "--levels: each from 1 to 1,000,000 jobs"
            );
            let measured = scale::scale(&levels).await?;
            scale::print_scale(&measured);
        }
        Bench::Events { jobs, rate, subscribers, nodes } => {
            anyhow::ensure!(jobs > 0, "--jobs must be at least 1");
            anyhow::ensure!(rate > 0.0 && rate.is_finite(), "--rate must be positive");
            anyhow::ensure!(
                subscribers.iter().all(|s| (1..=1_000).contains(s)),
                "--subscribers: each count from 1 to 1,000"
            );
            let runs = events::events(jobs, rate, &subscribers, nodes).await?;
            events::print_events(&runs, nodes, rate);
        }
        Bench::Download {
            size_mib,
            rate_mbps,
            small_files,
            small_kib,
            repeat,
            timeout_secs,
            work_dir,
            queued,
        } => {
            anyhow::ensure!(size_mib > 0, "--size-mib must be at least 1");
            anyhow::ensure!(rate_mbps > 0, "--rate-mbps must be at least 1");
            anyhow::ensure!(small_kib > 0, "--small-kib must be at least 1");
            anyhow::ensure!(repeat > 0, "--repeat must be at least 1");
            let options = download::Options {
                large_bytes: size_mib << 20,
                rate: rate_mbps * 1_000_000,
                small_files,
                small_bytes: small_kib << 10,
                repeat,
                timeout: Duration::from_secs(timeout_secs),
                work_dir,
                queued,
            };
            let rows = download::download(&options).await?;
            report::print(&options, &rows);
        }
        Bench::Upload { size_mib, timeout_secs } => {
            anyhow::ensure!(size_mib > 0, "--size-mib must be at least 1");
            upload::upload(size_mib << 20, Duration::from_secs(timeout_secs)).await?;
        }
        Bench::Fleet { size_mib, rate_mbps, nodes, timeout_secs } => {
            anyhow::ensure!(
                size_mib > 0 && rate_mbps > 0,
                "--size-mib and --rate-mbps: at least 1"
            );
            anyhow::ensure!(nodes.iter().all(|n| (2..=10).contains(n)), "--nodes: 2 to 10 each");
            let options = fleet::Options {
                bytes: size_mib << 20,
                rate: rate_mbps * 1_000_000,
                sizes: nodes,
                timeout: Duration::from_secs(timeout_secs),
            };
            fleet::fleet(&options).await?;
        }
        Bench::Shard { size_mib, rate_mbps, per_ip, timeout_secs } => {
            anyhow::ensure!(
                size_mib > 0 && rate_mbps > 0,
                "--size-mib and --rate-mbps: at least 1"
            );
            anyhow::ensure!((1..=16).contains(&per_ip), "--per-ip: 1 to 16");
            let options = shard::Options {
                bytes: size_mib << 20,
                rate: rate_mbps * 1_000_000,
                per_ip,
                timeout: Duration::from_secs(timeout_secs),
            };
            shard::shard(&options).await?;
        }
        Bench::Calibrate { nodes, size_mib, link_mbps, origin_mbps, latency_us, timeout_secs } => {
            anyhow::ensure!(
                size_mib > 0 && link_mbps > 0 && origin_mbps > 0,
                "--size-mib, --link-mbps, --origin-mbps: at least 1"
            );
            anyhow::ensure!(nodes.iter().all(|n| (2..=20).contains(n)), "--nodes: 2 to 20 each");
            let options = calibrate::Options {
                sizes: nodes,
                bytes: size_mib << 20,
                link: link_mbps * 1_000_000,
                origin: origin_mbps * 1_000_000,
                latency: Duration::from_micros(latency_us),
                timeout: Duration::from_secs(timeout_secs),
            };
            calibrate::calibrate(&options).await?;
        }
        Bench::Swarm(args) => swarm::swarm(&args)?,
        Bench::Soak { minutes, nodes, interval_secs, seed, first_ip } => {
            anyhow::ensure!(minutes > 0, "--minutes must be at least 1");
            anyhow::ensure!(matches!(nodes, 3 | 5), "--nodes: 3 or 5");
            anyhow::ensure!(interval_secs >= 10, "--interval-secs: at least 10");
            anyhow::ensure!((2..=250).contains(&first_ip), "--first-ip: 2 to 250");
            let interval = Duration::from_secs(interval_secs);
            soak::soak(&soak::Options { minutes, nodes, interval, seed, first_ip }).await?;
        }
    }
    Ok(())
}
