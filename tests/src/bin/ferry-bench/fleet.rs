//! `ferry-bench fleet`: one large file brought to every node of a cluster, by
//! `ferry fleet distribute` (each chunk fetched from the origin about once, then spread
//! between the nodes) and by every node downloading on its own (one job per node that
//! neither uses nor offers peers' copies, no helpers). For each cluster size: the time
//! until the last node holds the file, and the origin egress (from nginx's access log)
//! divided by the file size. Then, on 2 nodes, a second job for the same file on node 2
//! after node 1 downloaded it: served from node 1's copy (the peer cache). Every copy
//! is checked (size and BLAKE3) after the clock.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ferry_coordinator::Client;
use ferry_protocol::command::{JobAction, NewJob, PropertyChanges};
use ferry_protocol::{JobState, JobType, NewFile};
use ferry_tests::nginx::{Nginx, NginxOptions};
use ferry_tests::{Node, NodeOptions, tokens};

use crate::child::{ferry_cli, run_timed};
use crate::payload::{Expected, Workspace, verify};

/// Options of `ferry-bench fleet`.
#[derive(Debug)]
pub(crate) struct Options {
    /// Size of the file, bytes.
    pub(crate) bytes: u64,
    /// nginx `limit_rate`, bytes per second per connection.
    pub(crate) rate: u64,
    /// Cluster sizes to run (a 2-node run of a second job from a peer's copy follows).
    pub(crate) sizes: Vec<u8>,
    /// Longest one run may take.
    pub(crate) timeout: Duration,
}

/// How the file reaches the nodes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Way {
    /// `ferry fleet distribute`.
    Fleet,
    /// One job per node, no peers, no helpers.
    Alone,
    /// Node 1 downloads first (not timed); then node 2's job, timed, from its copy.
    FromPeer,
}

impl Way {
    fn name(self) -> &'static str {
        match self {
            Self::Fleet => "fleet distribute",
            Self::Alone => "each node alone",
            Self::FromPeer => "2nd job, peer copy",
        }
    }
}

/// One measured run.
struct Row {
    nodes: u8,
    way: Way,
    outcome: anyhow::Result<(Duration, u64)>,
}

/// Runs both ways for every cluster size and prints the table.
pub(crate) async fn fleet(options: &Options) -> anyhow::Result<()> {
    let (work, file) = Workspace::with_file("fleet", "fleet.bin", options.bytes, 11).await?;
    let (out, logs) = (&work.out, &work.logs);
    let nginx = Nginx::start(NginxOptions {
        limit_rate: Some(options.rate),
        ..NginxOptions::new(&work.root)
    })
    .await
    .context("starting nginx")?;
    let runs = options
        .sizes
        .iter()
        .flat_map(|&nodes| [(nodes, Way::Fleet), (nodes, Way::Alone)])
        .chain([(2, Way::FromPeer)]);
    let mut rows = Vec::new();
    for (nodes, way) in runs {
        eprintln!("{}: {nodes} nodes", way.name());
        let run = Run {
            nginx: &nginx,
            file: &file,
            out,
            logs,
            nodes,
            first_ip: Ipv4Addr::LOCALHOST,
            timeout: options.timeout,
        };
        let outcome = tokio::time::timeout(options.timeout, run.measure(way))
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out after {:?}", options.timeout)));
        rows.push(Row { nodes, way, outcome });
    }
    print(options, &rows);
    Ok(())
}

/// One run's surroundings.
pub(crate) struct Run<'a> {
    pub(crate) nginx: &'a Nginx,
    pub(crate) file: &'a Expected,
    pub(crate) out: &'a Path,
    pub(crate) logs: &'a Path,
    pub(crate) nodes: u8,
    /// The first node's address (each node's is the next one up).
    pub(crate) first_ip: Ipv4Addr,
    pub(crate) timeout: Duration,
}

impl Run<'_> {
    /// Starts a fresh cluster (after [`crate::warm::settle`]), brings the file to every
    /// node, checks every copy:
    /// (time to the last copy, origin egress in bytes of the timed part).
    pub(crate) async fn measure(&self, way: Way) -> anyhow::Result<(Duration, u64)> {
        if self.out.exists() {
            std::fs::remove_dir_all(self.out)?;
        }
        std::fs::create_dir_all(self.out)?;
        crate::warm::settle(self.file.size.saturating_mul(u64::from(self.nodes))).await;
        let mut cluster = start(self.nodes, self.first_ip).await?;
        let url = self.nginx.url(&self.file.name);
        let path = format!("/{}", self.file.name);
        let mut before = self.nginx.body_bytes_sent(&path);
        let outcome = match way {
            Way::Fleet => self.fleet(&cluster, &url).await,
            Way::Alone => {
                self.alone(
                    &cluster,
                    &url,
                    PropertyChanges {
                        peer_caching_flags: Some(0),
                        max_helpers: Some(Some(0)),
                        ..PropertyChanges::default()
                    },
                )
                .await
            }
            Way::FromPeer => {
                let first = self.alone(&cluster[..1], &url, PropertyChanges::default()).await;
                before = self.nginx.body_bytes_sent(&path);
                match first {
                    Ok(_) => self.alone(&cluster[1..], &url, PropertyChanges::default()).await,
                    Err(e) => Err(e),
                }
            }
        };
        for node in &mut cluster {
            let _ = node.kill9().await;
        }
        let elapsed = outcome?;
        let egress = self.nginx.body_bytes_sent(&path) - before;
        for node in 1..=u64::from(self.nodes) {
            let expected = Expected { name: copy_name(node), ..self.file.clone() };
            let out = self.out.to_path_buf();
            tokio::task::spawn_blocking(move || verify(&out, &[expected])).await??;
        }
        Ok((elapsed, egress))
    }

    /// `ferry fleet distribute URL out/fleet.bin.{node}` (waits and completes).
    async fn fleet(&self, cluster: &[Node], url: &str) -> anyhow::Result<Duration> {
        let mut command = ferry_cli(&cluster[0])?;
        command
            .args(["fleet", "distribute", "--priority", "foreground", url])
            .arg(self.out.join("fleet.bin.{node}"));
        let log = self.logs.join(format!("fleet-{}.log", self.nodes));
        run_timed(command, &log, self.timeout).await
    }

    /// One job per node of `nodes` (a slice of the cluster), created on that node with
    /// `properties` (foreground); timed from the first create to the last TRANSFERRED,
    /// then completed.
    async fn alone(
        &self,
        nodes: &[Node],
        url: &str,
        properties: PropertyChanges,
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let mut jobs = Vec::new();
        for node in nodes {
            let i = node.client(Some(tokens::ADMIN))?.cluster().await?.node_id;
            let client = node.client(Some(tokens::ADMIN))?;
            let spec = NewJob {
                display_name: "alone".into(),
                job_type: JobType::Download,
                properties: PropertyChanges {
                    priority: Some(ferry_protocol::Priority::Foreground),
                    ..properties.clone()
                },
                files: vec![NewFile {
                    remote_url: url.to_owned(),
                    local_path: self.out.join(copy_name(i)).to_string_lossy().into_owned(),
                    ranges: Vec::new(),
                    sha256: None,
                }],
            };
            let job = client.create_job(&spec).await?;
            client.act(job.id, JobAction::Resume).await?;
            jobs.push((client, job.id));
        }
        for (client, id) in &jobs {
            wait_transferred(client, *id).await?;
        }
        let elapsed = started.elapsed();
        for (client, id) in &jobs {
            client.act(*id, JobAction::Complete).await?;
        }
        Ok(elapsed)
    }
}

fn copy_name(node: u64) -> String {
    format!("fleet.bin.{node}")
}

async fn wait_transferred(client: &Client, id: ferry_protocol::JobId) -> anyhow::Result<()> {
    loop {
        let job = client.job(id).await?;
        match job.state {
            JobState::Transferred => return Ok(()),
            JobState::Error => anyhow::bail!("job {id} failed: {:?}", job.error),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// `n` fresh nodes on `first_ip` up, each its own source address.
async fn start(n: u8, first_ip: Ipv4Addr) -> anyhow::Result<Vec<Node>> {
    let options = NodeOptions { ip: first_ip, ..NodeOptions::default() };
    ferry_tests::start_cluster_each(options, usize::from(n), |_, options| {
        options.transfer = ferry_tests::source_addr(options.ip);
    })
    .await
}

fn print(options: &Options, rows: &[Row]) {
    println!(
        "\nferry-bench fleet: {} MiB from nginx (limit_rate {} MB/s per connection) to every node",
        options.bytes >> 20,
        options.rate / 1_000_000
    );
    println!(
        "{:<6} {:<18} {:>10} {:>16} {:>14}",
        "nodes", "how", "time (s)", "origin egress", "egress/file"
    );
    for row in rows {
        match &row.outcome {
            Ok((elapsed, egress)) => println!(
                "{:<6} {:<18} {:>10.1} {:>13} MiB {:>14.3}",
                row.nodes,
                row.way.name(),
                elapsed.as_secs_f64(),
                egress >> 20,
                *egress as f64 / options.bytes as f64
            ),
            Err(e) => println!("{:<6} {:<18} failed: {e:#}", row.nodes, row.way.name()),
        }
    }
    for &nodes in &options.sizes {
        let of = |way: Way| {
            rows.iter()
                .find(|r| r.nodes == nodes && r.way == way)
                .and_then(|r| r.outcome.as_ref().ok())
        };
        if let (Some(fleet), Some(alone)) = (of(Way::Fleet), of(Way::Alone)) {
            println!(
                "{nodes} nodes: fleet {:.2}x faster, {:.1}x less origin egress than each node alone",
                alone.0.as_secs_f64() / fleet.0.as_secs_f64(),
                alone.1 as f64 / fleet.1.max(1) as f64
            );
        }
    }
}
