//! The process harness for Ferry's end-to-end tests and benchmarks: real `ferryd`
//! processes on loopback addresses, each with its own data directory and
//! configuration, that tests start, query, `kill -9`, pause and restart.
//!
//! Binaries are taken from the same target directory as the running test or benchmark
//! (`target/<profile>/ferryd`), and refused if older than their sources.
//!
//! [`origin`] is the test origin server that downloads are made from.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use ferry_coordinator::{Client, TokenEntry};
use ferry_protocol::Role;
use ferry_protocol::limits::QueuePolicy;
use tokio::process::{Child, Command};

pub mod backend;
pub mod nemesis;
pub mod nginx;
pub mod origin;

/// Tokens every harness node is configured with, unless the test gives its own.
pub mod tokens {
    /// A user.
    pub const ALICE: &str = "alice-token-0123456789";
    /// Another user.
    pub const BOB: &str = "bob-token-0123456789ab";
    /// An administrator.
    pub const ADMIN: &str = "admin-token-0123456789";
}

/// The default token table: alice and bob (users, the node's default roots) and root
/// (admin, full access: benchmarks may work in any directory).
pub fn default_tokens() -> Vec<TokenEntry> {
    vec![
        TokenEntry::new(tokens::ALICE, "alice", Role::User),
        TokenEntry::new(tokens::BOB, "bob", Role::User),
        TokenEntry {
            roots: Some(vec!["/".into()]),
            ..TokenEntry::new(tokens::ADMIN, "root", Role::Admin)
        },
    ]
}

/// The directory holding the binaries of the current build profile.
pub fn target_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the running executable")?;
    let mut dir = exe.parent().context("executable has no directory")?.to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    Ok(dir)
}

/// The path of workspace binary `name`, checked to be at least as new as its sources.
///
/// Testing only this package does not make cargo rebuild other packages' binaries, so
/// a stale `ferryd` could silently be tested. Rather than building from inside tests,
/// the harness refuses a binary older than any source it was built from (cargo lists
/// them in `<name>.d` beside the binary) and says how to build it; the workspace-wide
/// test command builds every binary first.
///
/// `FERRY_BIN_DIR` names another directory to take the binaries from as they are (a
/// build pinned for a long run, so that building meanwhile does not change them).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    if let Some(pinned) = std::env::var_os("FERRY_BIN_DIR") {
        let path = PathBuf::from(pinned).join(name);
        anyhow::ensure!(path.is_file(), "FERRY_BIN_DIR has no {name}: {}", path.display());
        return Ok(path);
    }
    let dir = target_dir()?;
    let path = dir.join(name);
    let built = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .map_err(|_| anyhow::anyhow!("{} is missing: {}", path.display(), build_hint(&dir)))?;
    let deps = std::fs::read_to_string(dir.join(format!("{name}.d"))).unwrap_or_default();
    for source in dep_info_sources(&deps) {
        if std::fs::metadata(&source).and_then(|m| m.modified()).is_ok_and(|m| m > built) {
            bail!("{} is older than {}: {}", path.display(), source.display(), build_hint(&dir));
        }
    }
    Ok(path)
}

fn build_hint(dir: &Path) -> &'static str {
    if dir.ends_with("release") {
        "run `cargo build --release --workspace --bins` first"
    } else {
        "run the whole suite (`cargo nextest run --workspace`) or `cargo build --workspace` first"
    }
}

/// The sources listed in a make-style dep-info file (`target: a.rs b.rs`, spaces in
/// paths escaped as `\ `).
fn dep_info_sources(text: &str) -> Vec<PathBuf> {
    let Some(first) = text.lines().next() else { return Vec::new() };
    let Some((_, list)) = first.split_once(": ") else { return Vec::new() };
    let mut sources = Vec::new();
    let mut current = String::new();
    let mut chars = list.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => current.extend(chars.next()),
            ' ' => {
                if !current.is_empty() {
                    sources.push(PathBuf::from(std::mem::take(&mut current)));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        sources.push(PathBuf::from(current));
    }
    sources
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dep_info_lists_sources_with_escaped_spaces() {
        let text = "/t/ferryd: /w/a.rs /w/my\\ dir/b.rs\n\n/w/a.rs:\n";
        assert_eq!(
            dep_info_sources(text),
            vec![PathBuf::from("/w/a.rs"), PathBuf::from("/w/my dir/b.rs")]
        );
        assert!(dep_info_sources("").is_empty());
    }
}

/// A small deterministic generator (xorshift64*), so that a failing seeded run can be
/// replayed.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// The next number.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// A duration between `low` and `high` milliseconds.
    pub fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.below(high.saturating_sub(low) + 1))
    }
}

/// How to start a node.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// Loopback address to bind (127.0.0.x); the port is chosen by the node.
    pub ip: Ipv4Addr,
    /// API tokens; empty means the node generates an admin token.
    pub tokens: Vec<TokenEntry>,
    /// Queue policy.
    pub policy: QueuePolicy,
    /// Snapshot after this many log entries.
    pub snapshot_after_entries: u64,
    /// Lines of the `[transfer]` table (e.g. `max_active_jobs = 0` for a node that
    /// only queues: tests whose jobs name fictional origins must never reach out).
    pub transfer: String,
    /// Set for a node whose API speaks TLS (`[api] tls`/`tls_cert` in `extra_config`):
    /// the harness, its clients and [`ferry`] then use `https://` and trust this CA only.
    pub api_ca: Option<ApiCa>,
    /// Extra TOML merged into the config: its tables may also name tables the harness
    /// writes (`[api]` keys, say), whose keys it adds or replaces.
    pub extra_config: String,
    /// `FAILPOINTS` for the next starts (`name=action;...`, see `ferry_node::failpoint`).
    pub failpoints: Option<String>,
    /// Extra environment for the next starts (a clock offset with libfaketime, say).
    pub env: Vec<(String, String)>,
    /// Another `ferryd` for the next starts (an earlier build, for upgrade tests);
    /// unset: this build's.
    pub ferryd: Option<PathBuf>,
}

impl NodeOptions {
    /// A node that never starts transfers (its scheduler activates nothing): for tests
    /// of the queue whose files name fictional origins.
    pub fn queue_only() -> Self {
        Self { transfer: "max_active_jobs = 0".into(), ..Self::default() }
    }
}

impl Default for NodeOptions {
    fn default() -> Self {
        Self {
            ip: Ipv4Addr::LOCALHOST,
            tokens: default_tokens(),
            policy: QueuePolicy::default(),
            snapshot_after_entries: 5_000,
            transfer: String::new(),
            extra_config: String::new(),
            api_ca: None,
            failpoints: None,
            env: Vec::new(),
            ferryd: None,
        }
    }
}

/// The CA a TLS node's API certificate is checked against.
#[derive(Clone, Debug)]
pub enum ApiCa {
    /// The cluster CA, `<data_dir>/ca.pem` of the node.
    Cluster,
    /// A PEM file.
    File(PathBuf),
}

/// A running (or stopped) `ferryd` process with its own data directory.
pub struct Node {
    /// The options it was started with.
    pub options: NodeOptions,
    dir: tempfile::TempDir,
    child: Option<Child>,
    api: Option<SocketAddr>,
    /// The API and peer addresses of the first start: a restart keeps them, as a
    /// deployed node does (its ports are configured).
    bound: Option<(SocketAddr, SocketAddr)>,
}

impl Node {
    /// Starts a node with a fresh data directory and waits until it serves.
    pub async fn start(options: NodeOptions) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("ferry-node-").tempdir()?;
        let mut node = Self { options, dir, child: None, api: None, bound: None };
        node.write_config()?;
        node.spawn().await?;
        Ok(node)
    }

    /// The node's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("ferryd.toml")
    }

    /// The node's log file (stderr of every run, appended).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("ferryd.log")
    }

    /// The last lines of the node's log, for failure messages: 40, or `FERRY_TAIL` lines.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(
            std::env::var("FERRY_TAIL").ok().and_then(|v| v.parse().ok()).unwrap_or(40),
        )..]
            .join("\n")
    }

    fn write_config(&self) -> anyhow::Result<()> {
        #[derive(serde::Serialize)]
        struct Api<'a> {
            listen: SocketAddr,
            tokens: &'a [TokenEntry],
        }
        #[derive(serde::Serialize)]
        struct Raft {
            snapshot_after_entries: u64,
            keep_entries_after_snapshot: u64,
        }
        #[derive(serde::Serialize)]
        struct Peer {
            listen: SocketAddr,
        }
        #[derive(serde::Serialize)]
        struct Config<'a> {
            data_dir: PathBuf,
            api: Api<'a>,
            peer: Peer,
            raft: Raft,
            policy: QueuePolicy,
        }
        let o = &self.options;
        let config = Config {
            data_dir: self.data_dir(),
            api: Api {
                listen: self.bound.map_or(SocketAddr::new(IpAddr::V4(o.ip), 0), |(api, _)| api),
                tokens: &o.tokens,
            },
            peer: Peer {
                listen: self.bound.map_or(SocketAddr::new(IpAddr::V4(o.ip), 0), |(_, peer)| peer),
            },
            raft: Raft {
                snapshot_after_entries: o.snapshot_after_entries,
                keep_entries_after_snapshot: (o.snapshot_after_entries / 2).max(1),
            },
            policy: o.policy,
        };
        let mut text = toml::to_string(&config)?;
        // Tests write their files in temporary directories: principals without roots
        // of their own may use those, unless the test sets the roots itself.
        let mut transfer = o.transfer.clone();
        if !transfer.contains("destination_roots") {
            let tmp = std::env::temp_dir().canonicalize()?;
            transfer.push_str(&format!("\ndestination_roots = [{:?}]", tmp.display().to_string()));
        }
        text.push_str(&format!("\n[transfer]\n{transfer}\n"));
        let mut table: toml::Table = toml::from_str(&text)?;
        let extra: toml::Table =
            toml::from_str(&o.extra_config).context("NodeOptions::extra_config is not TOML")?;
        merge(&mut table, extra);
        std::fs::write(self.config_path(), toml::to_string(&table)?)?;
        Ok(())
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let addr_file = self.data_dir().join("api.addr");
        // A node killed with -9 leaves its old address behind.
        let _ = std::fs::remove_file(&addr_file);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path())?;
        let program = match &self.options.ferryd {
            Some(path) => path.clone(),
            None => binary("ferryd")?,
        };
        let mut command = Command::new(program);
        if let Some(failpoints) = &self.options.failpoints {
            command.env("FAILPOINTS", failpoints);
        }
        command.envs(self.options.env.iter().map(|(k, v)| (k, v)));
        let child = command
            .arg("--config")
            .arg(self.config_path())
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("cannot start ferryd")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("ferryd exited with {status} during start:\n{}", self.log_tail());
            }
            if let Ok(text) = std::fs::read_to_string(&addr_file)
                && let Ok(addr) = text.trim().parse::<SocketAddr>()
            {
                self.api = Some(addr);
                let client = self.client(None)?;
                if matches!(client.health().await, Ok(h) if h.status == "ok") {
                    if self.bound.is_none() {
                        self.bound = Some((addr, self.peer_addr()?));
                    }
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("ferryd did not become ready within 30 s:\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The API address.
    pub fn addr(&self) -> anyhow::Result<SocketAddr> {
        self.api.context("the node is not running")
    }

    /// The peer (QUIC) address, while the node runs.
    pub fn peer_addr(&self) -> anyhow::Result<SocketAddr> {
        let text = std::fs::read_to_string(self.data_dir().join("peer.addr"))
            .context("the node has not written peer.addr")?;
        Ok(text.trim().parse()?)
    }

    /// The cluster's join token, on the node that founded it.
    pub fn join_token(&self) -> anyhow::Result<String> {
        let text = std::fs::read_to_string(self.data_dir().join("join.token"))
            .context("this node holds no join token")?;
        Ok(text.trim().to_owned())
    }

    /// Options for a node on `ip` that joins the cluster of `self` with `token` (and
    /// otherwise has `self`'s options, its extra configuration included).
    pub fn joiner(&self, ip: Ipv4Addr, token: &str) -> anyhow::Result<NodeOptions> {
        let seed = self.peer_addr()?;
        // A joiner's own join table (always last) is replaced by this one.
        let own = self.options.extra_config.split("[cluster]").next().unwrap_or_default();
        Ok(NodeOptions {
            ip,
            extra_config: format!(
                "{own}\n[cluster]\njoin = [\"{seed}\"]\njoin_token = \"{token}\"\n"
            ),
            ..self.options.clone()
        })
    }

    /// The API base URL.
    pub fn url(&self) -> anyhow::Result<String> {
        let scheme = if self.options.api_ca.is_some() { "https" } else { "http" };
        Ok(format!("{scheme}://{}", self.addr()?))
    }

    /// The CA file the node's API is checked against, for a TLS node.
    pub fn api_ca_file(&self) -> Option<PathBuf> {
        match &self.options.api_ca {
            None => None,
            Some(ApiCa::Cluster) => Some(self.data_dir().join("ca.pem")),
            Some(ApiCa::File(path)) => Some(path.clone()),
        }
    }

    /// A typed client authenticating with `token`.
    pub fn client(&self, token: Option<&str>) -> anyhow::Result<Client> {
        let token = token.map(str::to_owned);
        Ok(match self.api_ca_file() {
            Some(ca) => Client::with_ca(&self.url()?, token, &std::fs::read(ca)?)?,
            None => Client::new(&self.url()?, token)?,
        })
    }

    /// The process id.
    pub fn pid(&self) -> anyhow::Result<u32> {
        self.child.as_ref().and_then(Child::id).context("the node is not running")
    }

    /// True if the process was started and has exited (a crash, or a stop on a
    /// storage failure).
    pub fn exited(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_some())
    }

    /// `kill -9`: no chance to flush or shut down.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.start_kill()?;
            child.wait().await?;
        }
        self.api = None;
        Ok(())
    }

    /// Sends a signal (`STOP`, `CONT`, `TERM`) with `kill(1)`.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid()?.to_string())
            .status()?;
        if !status.success() {
            bail!("kill -{signal} failed");
        }
        Ok(())
    }

    /// Starts the node again on its data directory (after [`Node::kill9`] or a stop).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9().await?;
        self.write_config()?;
        self.spawn().await
    }

    /// Like [`Node::restart`], but on new ports (a node whose ports are not configured):
    /// the node must announce its new peer address to the cluster.
    pub async fn restart_on_new_ports(&mut self) -> anyhow::Result<()> {
        self.bound = None;
        self.restart().await
    }

    /// Stops the node with SIGTERM and waits for it to exit.
    pub async fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        self.signal("TERM")?;
        let mut child = self.child.take().context("the node is not running")?;
        self.api = None;
        Ok(tokio::time::timeout(Duration::from_secs(20), child.wait()).await??)
    }
}

/// Adds `extra`'s keys to `base`, tables key by key.
fn merge(base: &mut toml::Table, extra: toml::Table) {
    for (key, value) in extra {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(inner)), toml::Value::Table(more)) => merge(inner, more),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Runs a CLI command against a node; returns (exit code, stdout, stderr).
pub async fn ferry(
    node: &Node,
    token: &str,
    args: &[&str],
) -> anyhow::Result<(i32, String, String)> {
    ferry_with_input(node, token, args, "").await
}

/// [`ferry`] with `input` on its standard input (a password, say); it may take 120 s.
pub async fn ferry_with_input(
    node: &Node,
    token: &str,
    args: &[&str],
    input: &str,
) -> anyhow::Result<(i32, String, String)> {
    use tokio::io::AsyncWriteExt;
    let mut command = Command::new(binary("ferry")?);
    if let Some(ca) = node.api_ca_file() {
        command.env("FERRY_CA", ca);
    }
    let mut child = command
        .args(args)
        .env("FERRY_NODE", node.url()?)
        .env("FERRY_TOKEN", token)
        .env("FERRY_DATA_DIR", node.data_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).await?;
    }
    let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output()).await??;
    Ok((
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// Starts `n` nodes on `options.ip`, the next addresses up, ... with `options`, the first founding the cluster
/// and the others joining it with `--join`, and waits (up to 30 s) until every node
/// knows the same leader, [`default_voters`] members are voters and all have applied the same
/// index.
pub async fn start_cluster(options: NodeOptions, n: usize) -> anyhow::Result<Vec<Node>> {
    start_cluster_each(options, n, |_, _| {}).await
}

/// [`start_cluster`] with each node's options changed by `each(i, options)` before it
/// starts (`i` from 0; `options.ip` is already its address). A joiner's options carry
/// the founder's extra configuration, which `each` may replace: the `[cluster]` table
/// that joins it is added after.
pub async fn start_cluster_each(
    mut options: NodeOptions,
    n: usize,
    each: impl Fn(usize, &mut NodeOptions),
) -> anyhow::Result<Vec<Node>> {
    anyhow::ensure!((1..=250).contains(&n), "a cluster of 1 to 250 nodes");
    let base = options.ip.octets();
    each(0, &mut options);
    let first = Node::start(options).await?;
    let token = first.join_token()?;
    let mut nodes = vec![first];
    for i in 1..n {
        let ip = Ipv4Addr::new(base[0], base[1], base[2], base[3].wrapping_add(u8::try_from(i)?));
        let mut joiner = nodes[0].joiner(ip, &token)?;
        let at = joiner.extra_config.rfind("[cluster]").unwrap_or(joiner.extra_config.len());
        let cluster = joiner.extra_config.split_off(at);
        each(i, &mut joiner);
        joiner.extra_config = format!("{}\n{cluster}", joiner.extra_config);
        nodes.push(Node::start(joiner).await?);
    }
    await_agreement(&nodes, default_voters(n), "the cluster did not form").await?;
    Ok(nodes)
}

/// `[transfer]` settings that make a node connect to origins from its own address.
pub fn source_addr(ip: Ipv4Addr) -> String {
    format!("source_addr = \"{ip}\"")
}

/// Waits (up to 30 s) until `nodes` [`agree`] with `voters` voters; their statuses.
/// Fails saying `what`, with the statuses and the nodes' log tails.
pub async fn await_agreement(
    nodes: &[Node],
    voters: usize,
    what: &str,
) -> anyhow::Result<Vec<ferry_protocol::api::ClusterStatus>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut all = Vec::new();
        for node in nodes {
            all.push(node.client(Some(tokens::ADMIN))?.cluster().await?);
        }
        if agree(&all, voters) {
            return Ok(all);
        }
        if Instant::now() >= deadline {
            let logs: Vec<String> = nodes.iter().map(Node::log_tail).collect();
            bail!("{what} within 30 s: {all:#?}\n{}", logs.join("\n----\n"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Voters a cluster of `n` nodes has with the default `cluster.voters` (5): all up to
/// three, then odd sizes only.
pub fn default_voters(n: usize) -> usize {
    match n {
        0..=3 => n,
        4 => 3,
        _ => 5,
    }
}

/// True if the statuses agree: every node knows the same leader, `voters` members are
/// voters, and all have applied the same index.
pub fn agree(all: &[ferry_protocol::api::ClusterStatus], voters: usize) -> bool {
    let Some(first) = all.first() else { return false };
    let voting = first.members.iter().filter(|m| m.role == "voter").count();
    voting == voters
        && first.leader.is_some()
        && all.iter().all(|s| s.leader == first.leader && s.last_applied == first.last_applied)
}

/// A network partition made of real dropped packets: iptables rules on the loopback
/// addresses of nodes, dropping their UDP (QUIC) traffic; the HTTP API (TCP) stays
/// reachable for the test. The rules are removed when the value is dropped.
pub struct Partition {
    /// Each rule's `iptables` arguments after the action.
    rules: Vec<Vec<String>>,
}

impl Partition {
    /// True if partitions can be made here (iptables present and usable).
    pub fn available() -> bool {
        std::process::Command::new("iptables")
            .args(["-L", "INPUT", "-n"])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Cuts `node` off from each of `others`, both ways.
    pub fn isolate(node: Ipv4Addr, others: &[Ipv4Addr]) -> anyhow::Result<Self> {
        let mut partition = Self { rules: Vec::new() };
        for other in others {
            for (src, dst) in [(node, *other), (*other, node)] {
                partition.insert(udp(src, dst))?;
            }
        }
        Ok(partition)
    }
}

impl Partition {
    /// Drops what `from` sends to each of `to` (one way: `to` still reaches `from`).
    pub fn one_way(from: Ipv4Addr, to: &[Ipv4Addr]) -> anyhow::Result<Self> {
        let mut partition = Self { rules: Vec::new() };
        for dst in to {
            partition.insert(udp(from, *dst))?;
        }
        Ok(partition)
    }

    /// Drops all UDP to `addr` (a firewalled peer port: no QUIC reaches the node there).
    pub fn drop_udp_to(addr: SocketAddr) -> anyhow::Result<Self> {
        let mut partition = Self { rules: Vec::new() };
        let rule = ["-p", "udp", "-d", &addr.ip().to_string(), "--dport", &addr.port().to_string()];
        partition.insert(rule.iter().map(|a| a.to_string()).chain(drop_rule()).collect())?;
        Ok(partition)
    }

    /// Drops every TCP segment the API at `api` sends (its replies, and its side of
    /// new connections): requests arrive and are carried out, their clients time out.
    pub fn drop_replies(api: SocketAddr) -> anyhow::Result<Self> {
        let mut partition = Self { rules: Vec::new() };
        let rule = ["-p", "tcp", "-s", &api.ip().to_string(), "--sport", &api.port().to_string()];
        partition.insert(rule.iter().map(|a| a.to_string()).chain(drop_rule()).collect())?;
        Ok(partition)
    }

    fn insert(&mut self, rule: Vec<String>) -> anyhow::Result<()> {
        iptables("-I", &rule)?;
        self.rules.push(rule);
        Ok(())
    }
}

/// The rule dropping UDP from `src` to `dst`.
fn udp(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<String> {
    ["-p", "udp", "-s", &src.to_string(), "-d", &dst.to_string()]
        .iter()
        .map(|a| a.to_string())
        .chain(drop_rule())
        .collect()
}

fn drop_rule() -> impl Iterator<Item = String> {
    ["-j", "DROP"].into_iter().map(String::from)
}

impl Drop for Partition {
    fn drop(&mut self) {
        for rule in &self.rules {
            let _ = iptables("-D", rule);
        }
    }
}

fn iptables(action: &str, rule: &[String]) -> anyhow::Result<()> {
    let status = std::process::Command::new("iptables")
        .args([action, "INPUT"])
        .args(rule)
        .status()
        .context("cannot run iptables")?;
    anyhow::ensure!(status.success(), "iptables {action} INPUT {} failed", rule.join(" "));
    Ok(())
}

/// A tmpfs of a few MiB mounted on a directory (root only), for full-disk tests;
/// unmounted when dropped.
pub struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `mib` MiB on `dir`, keeping what `dir` held (copied over);
    /// `None` where mounting is not allowed.
    pub fn mount(dir: &Path, mib: u64) -> anyhow::Result<Option<Self>> {
        let saved = tempfile::tempdir()?;
        copy_dir(dir, saved.path())?;
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m,mode=0700"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            return Ok(None);
        }
        let disk = Self { dir: dir.to_path_buf() };
        copy_dir(saved.path(), dir)?;
        Ok(Some(disk))
    }

    /// Fills the disk but for `spare` bytes with a file named `filler`; its path.
    pub fn fill(&self, spare: u64) -> anyhow::Result<PathBuf> {
        use std::io::Write as _;
        let filler = self.dir.join("filler");
        let mut file = std::fs::File::create(&filler)?;
        let block = vec![0u8; 1 << 20];
        loop {
            let free = self.free()?;
            if free <= spare {
                break;
            }
            let n = usize::try_from(free - spare).unwrap_or(usize::MAX).min(block.len());
            if file.write_all(&block[..n]).is_err() {
                break;
            }
        }
        Ok(filler)
    }

    /// Free bytes on the disk.
    pub fn free(&self) -> anyhow::Result<u64> {
        let out = std::process::Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(&self.dir)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text.lines().nth(1).unwrap_or("0").trim().parse()?)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Copies the files and directories under `from` into `to`.
/// Set inside a network namespace [`rerun_in_network_namespace`] made.
const IN_OWN_NETWORK: &str = "FERRY_TEST_NETNS";

/// Whether this process runs inside a network namespace [`rerun_in_network_namespace`]
/// made.
pub fn in_own_network() -> bool {
    std::env::var_os(IN_OWN_NETWORK).is_some()
}

/// Runs test `test` (its path inside this test binary, e.g. `nemesis::a_run`) again in
/// a new network namespace with its loopback up, and waits for it; fails if that run
/// failed. The caller checks first that such a namespace can be made here.
pub fn rerun_in_network_namespace(test: &str) -> anyhow::Result<()> {
    rerun_self_in_network_namespace([test, "--exact", "--nocapture", "--test-threads=1"])
}

/// Runs this program again with `args` in a new network namespace with its loopback up
/// (where [`in_own_network`] is true), and waits for it; fails if that run failed.
pub fn rerun_self_in_network_namespace<S: AsRef<std::ffi::OsStr>>(
    args: impl IntoIterator<Item = S>,
) -> anyhow::Result<()> {
    let status = std::process::Command::new("unshare")
        .args(["--net", "--", "sh", "-c", r#"ip link set lo up && exec "$0" "$@""#])
        .arg(std::env::current_exe()?)
        .args(args)
        .env(IN_OWN_NETWORK, "1")
        .status()
        .context("cannot run unshare")?;
    anyhow::ensure!(status.success(), "the run in its own network namespace failed ({status})");
    Ok(())
}

pub fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            std::fs::create_dir_all(&target)?;
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}
