//! `ferry-bench calibrate`: the swarm simulator (`ferry_node::sim`) against real
//! `ferryd` processes. In a network namespace of its own, loopback is shaped with `tc`
//! so that every node has an upload and a download link of `--link-mbps` (HTB on
//! loopback's egress by source address, and on an IFB device fed by loopback's ingress
//! by destination address) and the origin, a local nginx, an egress limit of
//! `--origin-mbps`. Then, for each cluster size, `ferry fleet distribute` brings one
//! file to every real node, and the simulator runs the same fleet and file over links
//! of `tc`'s rates less what the real run's packets carried besides the file (headers,
//! acknowledgements, retransmissions: `tc`'s byte counters, read around the run). It
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
    /// Bytes the real run put on the shaped links per byte of the file.
    wire: Wire,
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
        let before = Counters::read(nodes)?;
        let real = tokio::time::timeout(options.timeout, run.measure(Way::Fleet))
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out after {:?}", options.timeout)));
        let wire = match &real {
            Ok(_) => Counters::read(nodes)?.wire_since(&before, nodes, options.bytes),
            Err(_) => Wire::NONE,
        };
        let mut swarm = Swarm::new(
            usize::from(nodes),
            options.bytes,
            options.link as f64 / wire.link,
            options.origin as f64 / wire.origin,
        );
        swarm.latency = options.latency;
        let (simulated, filled) = tokio::task::spawn_blocking(move || {
            let simulated = sim::run(&swarm);
            swarm.sharing = sim::Sharing::Fill;
            (simulated, sim::run(&swarm))
        })
        .await?;
        rows.push(Row { nodes, real, wire, simulated, filled });
    }
    print(options, &rows);
    Ok(())
}

/// Bytes a run put on the shaped links (IP packets, as `tc` counts them) per byte of
/// the file: the headers of every packet, the acknowledgements and requests that share
/// a link, and retransmissions. The simulator's links carry the file's bytes only, so
/// its rates are `tc`'s over these: what the links delivered of the file, measured.
#[derive(Clone, Copy, Debug)]
struct Wire {
    /// On the nodes' downloads (every byte a node receives crosses one).
    link: f64,
    /// On the origin's egress.
    origin: f64,
}

impl Wire {
    /// Nothing measured: the simulator runs at `tc`'s rates.
    const NONE: Self = Self { link: 1.0, origin: 1.0 };
}

/// `tc`'s byte counters of the shaped links, read between runs.
struct Counters {
    /// The first `nodes` nodes' downloads, summed.
    downloads: u64,
    /// The origin's egress.
    origin: u64,
}

impl Counters {
    /// The counters of the links of `nodes` nodes and the origin's.
    fn read(nodes: u8) -> anyhow::Result<Self> {
        let mut downloads = 0;
        for i in 0..nodes {
            downloads += sent("ifb0", 10 + u32::from(i))?;
        }
        Ok(Self { downloads, origin: sent("lo", 1)? })
    }

    /// The bytes on the wire per byte of the file since `before`, over a run that brought
    /// `bytes` to each of `nodes` nodes (never below 1: a link carries the file at least).
    fn wire_since(&self, before: &Self, nodes: u8, bytes: u64) -> Wire {
        let per_byte = |now: u64, then: u64, of: u64| {
            (now.saturating_sub(then) as f64 / of.max(1) as f64).max(1.0)
        };
        Wire {
            link: per_byte(self.downloads, before.downloads, u64::from(nodes) * bytes),
            origin: per_byte(self.origin, before.origin, bytes),
        }
    }
}

/// Bytes class `1:{class}` of `dev` has sent (`tc -s class show`: "Sent N bytes").
fn sent(dev: &str, class: u32) -> anyhow::Result<u64> {
    let classid = format!("1:{class}");
    let shown = Command::new("tc")
        .args(["-s", "class", "show", "dev", dev, "classid", &classid])
        .output()
        .with_context(|| format!("tc -s class show dev {dev} classid {classid}"))?;
    let text = String::from_utf8_lossy(&shown.stdout);
    sent_bytes(&text).with_context(|| format!("no byte count for {dev} {classid} in: {text}"))
}

/// The byte count in `tc -s class show`'s output for one class.
fn sent_bytes(text: &str) -> Option<u64> {
    text.split_whitespace().skip_while(|word| *word != "Sent").nth(1)?.parse().ok()
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
        "{:>6} {:>8} {:>6} {:>6} {:>8} {:>8} {:>9} {:>8} {:>11} {:>12} {:>11} {:>8}",
        "nodes",
        "floor s",
        "wire",
        "o.wire",
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
                    "{:>6} {:>8.2} {:>6.3} {:>6.3} {:>8.2} {:>8.2} {:>9.2} {:>8.2} {:>11.2} {:>11.3}× \
                     {:>10.3}× {:>8}",
                    row.nodes,
                    floor,
                    row.wire.link,
                    row.wire.origin,
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
        "times to the last copy (real: `ferry fleet distribute` from start to exit); wire, \
         o.wire: bytes the real run put on the nodes' download links and on the origin's \
         per byte of the file (tc's counters: headers, acknowledgements, requests, \
         retransmissions); the simulator's links run at tc's rates over these; sim: links \
         divided in equal shares (a share a flow cannot use is lost); fill: links divided \
         by water-filling (max-min fair); acceptance: sim within ±{:.0} % of real",
        WITHIN * 100.0
    );
}

#[cfg(test)]
mod tests {
    use super::{Counters, sent_bytes};

    #[test]
    fn the_sent_bytes_of_a_class_are_read_from_tc_s_statistics() {
        let shown = "class htb 1:11 root prio 0 rate 40Mbit ceil 40Mbit burst 256Kb cburst 256Kb \n \
                     Sent 110332483 bytes 83371 pkt (dropped 0, overlimits 9787 requeues 0) \n \
                     backlog 0b 0p requeues 0\n";
        assert_eq!(sent_bytes(shown), Some(110_332_483));
        assert_eq!(sent_bytes("class htb 1:11 root"), None);
        assert_eq!(sent_bytes("Sent many bytes"), None);
    }

    #[test]
    fn wire_bytes_are_counted_per_byte_of_the_file_delivered_and_never_below_one() {
        let before = Counters { downloads: 1_000, origin: 500 };
        let after = Counters { downloads: 1_000 + 2 * 1_060, origin: 500 + 1_030 };
        let wire = after.wire_since(&before, 2, 1_000);
        assert!((wire.link - 1.06).abs() < 1e-9, "{wire:?}");
        assert!((wire.origin - 1.03).abs() < 1e-9, "{wire:?}");
        // Counters that moved less than the file (reset, or another run's) are no
        // reason to run the simulator faster than tc's rate.
        let short = Counters { downloads: 1_500, origin: 600 }.wire_since(&before, 2, 1_000);
        assert_eq!((short.link, short.origin), (1.0, 1.0));
    }
}
