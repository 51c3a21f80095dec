//! `ferry-bench calibrate`: the swarm simulator (`ferry_node::sim`) against real
//! `ferryd` processes. In a network namespace of its own, loopback is shaped with `tc`
//! so that every node has an upload and a download link of `--link-mbps` (HTB on
//! loopback's egress by source address, and on an IFB device fed by loopback's ingress
//! by destination address) and the origin, a local nginx, an egress limit of
//! `--origin-mbps`. Then, for each cluster size, `ferry fleet distribute` brings one
//! file to every real node, and the simulator runs the same fleet, file and rates. It
//! prints both times to the last copy and both origin egresses, and whether the
//! simulator's time is within ±20 % of the real one (issue 20's calibration line).

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use ferry_node::sim::{self, Swarm};
use ferry_tests::nginx::{Nginx, NginxOptions};

use crate::fleet::{Run, Way};
use crate::payload::Workspace;

/// The first node's address; node `i` (from 0) has the `i`-th one up. nginx listens on
/// 127.0.0.1, so that addresses tell the origin's traffic from the nodes'.
const FIRST_NODE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);

/// How far the simulator's time may be from the real one.
const WITHIN: f64 = 0.2;

/// Options of one `ferry-bench calibrate` invocation, checked.
#[derive(Debug)]
pub(crate) struct Options {
    /// Cluster sizes (2 to 64).
    pub(crate) sizes: Vec<u8>,
    /// The file's size, in bytes.
    pub(crate) bytes: u64,
    /// Each node's upload and download rate, bytes per second.
    pub(crate) link: u64,
    /// The origin's egress limit, bytes per second.
    pub(crate) origin: u64,
    /// The simulator's one-way latency.
    pub(crate) latency: Duration,
    /// Longest one real run may take.
    pub(crate) timeout: Duration,
}

/// One cluster size, measured both ways.
struct Row {
    nodes: u8,
    /// Time to the last copy and origin egress (bytes), of the real fleet.
    real: anyhow::Result<(Duration, u64)>,
    /// The simulator's, for the same fleet (its default links: equal shares).
    simulated: sim::Outcome,
    /// The simulator's with links divided by water-filling ([`sim::Sharing::Fill`]),
    /// for comparison.
    filled: sim::Outcome,
}

/// Runs every size (in a network namespace of its own: the process runs itself again
/// there, as root) and prints the table.
pub(crate) async fn calibrate(options: &Options) -> anyhow::Result<()> {
    if !ferry_tests::in_own_network() {
        eprintln!("running again in a network namespace of its own (unshare --net)");
        return ferry_tests::rerun_self_in_network_namespace(std::env::args_os().skip(1));
    }
    let (work, file) =
        Workspace::with_file("calibrate", "calibrate.bin", options.bytes, 13).await?;
    let nginx = Nginx::start(NginxOptions::new(&work.root)).await.context("starting nginx")?;
    let most = options.sizes.iter().copied().max().unwrap_or(0);
    shape(most, options, nginx.port()).context("shaping loopback with tc")?;
    let mut rows = Vec::new();
    for &nodes in &options.sizes {
        eprintln!("{nodes} nodes: ferry fleet distribute");
        let run = Run {
            nginx: &nginx,
            file: &file,
            out: &work.out,
            logs: &work.logs,
            nodes,
            first_ip: FIRST_NODE,
            timeout: options.timeout,
        };
        let real = tokio::time::timeout(options.timeout, run.measure(Way::Fleet))
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out after {:?}", options.timeout)));
        let mut swarm = Swarm::new(
            usize::from(nodes),
            options.bytes,
            options.link as f64,
            options.origin as f64,
        );
        swarm.latency = options.latency;
        let (simulated, filled) = tokio::task::spawn_blocking(move || {
            let simulated = sim::run(&swarm);
            swarm.sharing = sim::Sharing::Fill;
            (simulated, sim::run(&swarm))
        })
        .await?;
        rows.push(Row { nodes, real, simulated, filled });
    }
    print(options, &rows);
    Ok(())
}

/// Shapes loopback for `nodes` nodes from [`FIRST_NODE`] up: each node's sending (by
/// source address) and receiving (by destination address, on `ifb0`) at `link`, and
/// nginx's answers (source 127.0.0.1, port `origin_port`) at `origin`. Other traffic
/// (API calls, the bench's own) is not shaped.
fn shape(nodes: u8, options: &Options, origin_port: u16) -> anyhow::Result<()> {
    let rate = |bytes_per_second: u64| {
        // tc's "bps" is bytes per second. A burst of 20 ms (at least 256 KiB: loopback
        // hands over segments of up to 64 KiB); the quantum only matters between
        // classes that borrow, which these do not (it silences HTB's warning).
        let burst = (bytes_per_second / 50).max(256 * 1024);
        format!(
            "rate {bytes_per_second}bps ceil {bytes_per_second}bps burst {burst} cburst {burst} \
             quantum 65536"
        )
    };
    let mut script = String::from(
        "ip link add ifb0 type ifb\n\
         ip link set ifb0 up\n\
         tc qdisc add dev lo root handle 1: htb\n\
         tc qdisc add dev ifb0 root handle 1: htb\n\
         tc qdisc add dev lo handle ffff: ingress\n\
         tc filter add dev lo parent ffff: protocol ip u32 match u32 0 0 \
         action mirred egress redirect dev ifb0\n",
    );
    script.push_str(&format!(
        "tc class add dev lo parent 1: classid 1:1 htb {}\n",
        rate(options.origin)
    ));
    script.push_str(&format!(
        "tc filter add dev lo parent 1: protocol ip prio 1 u32 match ip src 127.0.0.1/32 \
         match ip sport {origin_port} 0xffff flowid 1:1\n"
    ));
    for i in 0..nodes {
        let ip = Ipv4Addr::from(u32::from(FIRST_NODE) + u32::from(i));
        let class = 10 + u32::from(i);
        for (dev, side) in [("lo", "src"), ("ifb0", "dst")] {
            script.push_str(&format!(
                "tc class add dev {dev} parent 1: classid 1:{class} htb {}\n\
                 tc filter add dev {dev} parent 1: protocol ip prio 2 u32 match ip {side} {ip}/32 \
                 flowid 1:{class}\n",
                rate(options.link)
            ));
        }
    }
    for line in script.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let (program, args) = words.split_first().context("an empty line")?;
        let status = Command::new(program).args(args).status().with_context(|| line.to_owned())?;
        anyhow::ensure!(status.success(), "{line}: {status}");
    }
    Ok(())
}

fn print(options: &Options, rows: &[Row]) {
    let mb = |bytes_per_second: u64| bytes_per_second as f64 / 1e6;
    println!(
        "\nferry-bench calibrate: {} MiB to every node; links {:.0} MB/s each way per node, \
         origin {:.0} MB/s (tc on loopback); simulator latency {} µs one way",
        options.bytes >> 20,
        mb(options.link),
        mb(options.origin),
        options.latency.as_micros()
    );
    println!(
        "{:>6} {:>8} {:>8} {:>8} {:>9} {:>8} {:>11} {:>12} {:>11} {:>8}",
        "nodes",
        "floor s",
        "real s",
        "sim s",
        "sim/real",
        "fill s",
        "fill/real",
        "real egress",
        "sim egress",
        "verdict"
    );
    let floor = options.bytes as f64 / options.link as f64;
    let last = |outcome: &sim::Outcome| outcome.finished.last().map(Duration::as_secs_f64);
    for row in rows {
        match (&row.real, last(&row.simulated), last(&row.filled)) {
            (Ok((real, egress)), Some(simulated), Some(filled)) => {
                let real_secs = real.as_secs_f64();
                let ratio = simulated / real_secs;
                let verdict = if (ratio - 1.0).abs() <= WITHIN { "PASS" } else { "FAIL" };
                println!(
                    "{:>6} {:>8.2} {:>8.2} {:>8.2} {:>9.2} {:>8.2} {:>11.2} {:>11.3}× {:>10.3}× {:>8}",
                    row.nodes,
                    floor,
                    real_secs,
                    simulated,
                    ratio,
                    filled,
                    filled / real_secs,
                    *egress as f64 / options.bytes as f64,
                    row.simulated.egress_ratio(options.bytes),
                    verdict
                );
            }
            (Err(e), _, _) => println!("{:>6} real run failed: {e:#}", row.nodes),
            _ => println!("{:>6} a simulated node did not finish", row.nodes),
        }
    }
    println!(
        "times to the last copy (real: `ferry fleet distribute` from start to exit); sim: \
         links divided in equal shares (a share a flow cannot use is lost); fill: links \
         divided by water-filling (max-min fair); acceptance: sim within ±{:.0} % of real",
        WITHIN * 100.0
    );
}
