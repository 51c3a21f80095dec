//! `ferry-bench shard`: one large file from an nginx that limits every connection
//! (`limit_rate`) and every client address (`limit_conn`), fetched by `aria2c -x16`
//! from one address, by Ferry on one node, and by Ferry on a three-node cluster whose
//! nodes use 127.0.0.1, .2 and .3 as source addresses and help each other (issue 6).
//! Side by side in one run; each output is checked (size and BLAKE3) outside the timed
//! region.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use ferry_tests::NodeOptions;
use ferry_tests::nginx::{Nginx, NginxOptions};
use tokio::process::Command;

use crate::child::{ferry_cli, find_program, run_timed};
use crate::payload::{Expected, Workspace, verify};

/// Options of `ferry-bench shard`.
#[derive(Debug)]
pub(crate) struct Options {
    /// Size of the file, bytes.
    pub(crate) bytes: u64,
    /// nginx `limit_rate`, bytes per second per connection.
    pub(crate) rate: u64,
    /// nginx `limit_conn` per client address.
    pub(crate) per_ip: u32,
    /// Longest one run may take.
    pub(crate) timeout: Duration,
}

/// One line of the table.
struct Row {
    client: String,
    outcome: anyhow::Result<Duration>,
}

/// Runs the three clients and prints the table.
pub(crate) async fn shard(options: &Options) -> anyhow::Result<()> {
    let (work, file) = Workspace::with_file("shard", "large.bin", options.bytes, 7).await?;
    let (out, logs) = (&work.out, &work.logs);
    let nginx = Nginx::start(NginxOptions {
        limit_rate: Some(options.rate),
        limit_conn_per_ip: Some(options.per_ip),
        ..NginxOptions::new(&work.root)
    })
    .await
    .context("starting nginx")?;
    let url = nginx.url(&file.name);
    let run = Run { out, logs, file: &file, timeout: options.timeout };

    let mut rows = Vec::new();
    match find_program("aria2c") {
        Some(aria2) => {
            let mut command = Command::new(aria2);
            command
                .args(["--no-conf=true", "--allow-overwrite=true", "--file-allocation=none"])
                .args(["--console-log-level=warn", "--summary-interval=0", "-x16", "-s16"])
                .args(["--min-split-size=1M", "-d"])
                .arg(out)
                .arg("-o")
                .arg(&file.name)
                .arg(&url);
            rows.push(Row {
                client: "aria2c -x16 (one address)".into(),
                outcome: run.timed(command, "aria2c").await,
            });
        }
        None => eprintln!("aria2c is not installed: its row is skipped"),
    }
    let one = run.ferry(&url, 1, options.per_ip).await;
    rows.push(Row { client: "ferry, 1 node".into(), outcome: one });
    let three = run.ferry(&url, 3, options.per_ip).await;
    rows.push(Row { client: "ferry, 3 nodes (helpers)".into(), outcome: three });
    print(options, &rows);
    Ok(())
}

/// Where runs write.
struct Run<'a> {
    out: &'a Path,
    logs: &'a Path,
    file: &'a Expected,
    timeout: Duration,
}

impl Run<'_> {
    /// Times `command` on an empty output directory, after [`crate::warm::settle`],
    /// then checks the file.
    async fn timed(&self, command: Command, slug: &str) -> anyhow::Result<Duration> {
        if self.out.exists() {
            std::fs::remove_dir_all(self.out)?;
        }
        std::fs::create_dir_all(self.out)?;
        crate::warm::settle(self.file.size).await;
        let elapsed =
            run_timed(command, &self.logs.join(format!("{slug}.log")), self.timeout).await?;
        let (out, expected) = (self.out.to_path_buf(), vec![self.file.clone()]);
        tokio::task::spawn_blocking(move || verify(&out, &expected)).await??;
        Ok(elapsed)
    }

    /// `ferry transfer` on the first of `nodes` fresh nodes (127.0.0.1 up), each with
    /// its own source address and `per_ip` connections per file.
    async fn ferry(&self, url: &str, nodes: u8, per_ip: u32) -> anyhow::Result<Duration> {
        let mut cluster =
            ferry_tests::start_cluster_each(NodeOptions::default(), usize::from(nodes), |_, o| {
                let source = ferry_tests::source_addr(o.ip);
                o.transfer =
                    format!("connections = {per_ip}\n{source}\nmax_helpers = {}", nodes - 1);
            })
            .await?;
        let mut command = ferry_cli(&cluster[0])?;
        command
            .args(["transfer", "--no-progress", "--priority", "foreground", "--connections"])
            .arg(per_ip.to_string())
            .arg(url)
            .arg(self.out.join(&self.file.name));
        let elapsed = self.timed(command, &format!("ferry-{nodes}")).await;
        for node in &mut cluster {
            let _ = node.kill9().await;
        }
        elapsed
    }
}

fn print(options: &Options, rows: &[Row]) {
    let mb = options.bytes as f64 / 1e6;
    let base = rows
        .iter()
        .find(|r| r.client == "ferry, 1 node")
        .and_then(|r| r.outcome.as_ref().ok())
        .map(Duration::as_secs_f64);
    println!(
        "\n{} MiB from nginx, limit_rate {} MB/s per connection, limit_conn {} per address\n",
        options.bytes >> 20,
        options.rate / 1_000_000,
        options.per_ip
    );
    println!("| client | time | MB/s | speed-up vs ferry on 1 node |");
    println!("|---|---:|---:|---:|");
    for row in rows {
        match &row.outcome {
            Ok(took) => {
                let secs = took.as_secs_f64();
                let ratio = base.map_or("-".into(), |b| format!("{:.2}×", b / secs));
                println!("| {} | {secs:.2} s | {:.1} | {ratio} |", row.client, mb / secs);
            }
            Err(e) => println!("| {} | failed: {e:#} | | |", row.client),
        }
    }
}
