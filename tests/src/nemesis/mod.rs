//! The nemesis: Jepsen-style faults on a loopback cluster of real `ferryd` processes,
//! under clients that record every operation (invoke, result, time), and checkers run
//! on the history afterwards. Used by the CI-sized run (`tests/it/nemesis.rs`), the long
//! one (`scripts/nemesis.sh`) and `ferry-bench soak`.
//!
//! - [`Traffic`]: clients creating, cancelling and reading their jobs with
//!   Idempotency-Keys, retrying writes whose outcome they did not learn.
//! - [`Nemesis`]: the faults ([`Fault`]), drawn at random from a seed.
//! - [`check`]: no acknowledged change lost, no duplicate from a retried key, per-job
//!   linearizability; [`EventStream`]: the event stream gap-free and in order across
//!   reconnects.

mod check;
mod downloads;
mod events;
mod faults;
mod history;

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

pub use check::{Ledger, Verdict, check};
pub use downloads::{DownloadVerdict, Downloads};
pub use events::EventStream;
pub use faults::{Fault, Nemesis};
pub use history::{Call, History, Op, Seen, Traffic, TrafficConfig, cancel, create, job_for};
use tokio::time::Instant;

use anyhow::Context as _;

use crate::{Node, NodeOptions, SmallDisk, tokens};

/// Moves `node`'s data directory onto a tmpfs of `mib` MiB (stopping and restarting
/// it); `None` where mounting is not allowed.
async fn own_disk(node: &mut Node, mib: u64) -> anyhow::Result<Option<SmallDisk>> {
    node.stop().await?;
    let disk = SmallDisk::mount(&node.data_dir(), mib)?;
    node.restart().await?;
    Ok(disk)
}

/// Runs test `test` (its path inside the test binary, e.g. `nemesis::a_run`) again in
/// a network namespace of its own, where its partitions and dropped packets cannot touch
/// anything else on the machine, and returns whether it did: the caller returns at once
/// when it did (the run there passed, or this fails), and goes on here when it did not.
/// It does not when it already runs inside one, or when none can be made here (not
/// root, or no `unshare`/`ip`): then the test runs on the host's loopback, on addresses
/// of its own.
pub fn run_in_own_network(test: &str) -> anyhow::Result<bool> {
    use std::process::Command;
    if crate::in_own_network() {
        return Ok(false);
    }
    let usable = Command::new("unshare")
        .args(["--net", "ip", "link", "set", "lo", "up"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !usable {
        println!("no network namespace can be made here (unshare --net): on the host's loopback");
        return Ok(false);
    }
    println!("in a network namespace of its own (unshare --net)");
    crate::rerun_in_network_namespace(test)?;
    Ok(true)
}

/// How to set up the cluster a nemesis runs on.
#[derive(Clone, Debug)]
pub struct Setup {
    /// Nodes (3 or 5).
    pub nodes: usize,
    /// Put each node's data directory on a tmpfs of this many MiB, so that the nemesis
    /// can fill it (root only; without, disk-full faults are left out).
    pub disk_mib: Option<u64>,
    /// Run every node on the storage backend that loses what was not synced when the
    /// node is killed (`storage.lose_unsynced`).
    pub lose_unsynced: bool,
    /// Let the nodes transfer (for [`Downloads`]); otherwise they only queue.
    pub transfers: bool,
    /// Last byte of the first node's loopback address (node `i` on 127.0.0.`first_ip + i`):
    /// clusters on different addresses can run side by side, each partitioned alone.
    pub first_ip: u8,
}

impl Default for Setup {
    fn default() -> Self {
        Self { nodes: 3, disk_mib: Some(256), lose_unsynced: true, transfers: true, first_ip: 101 }
    }
}

/// The API base URL of each node, shared with the clients: a restart keeps a node's
/// ports, a member that replaces another has its own.
#[derive(Clone, Debug, Default)]
pub struct Urls(Arc<RwLock<Vec<String>>>);

impl Urls {
    /// Every node's URL, by index.
    pub fn all(&self) -> Vec<String> {
        self.0.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Node `i`'s URL.
    pub fn get(&self, i: usize) -> String {
        self.0.read().unwrap_or_else(PoisonError::into_inner)[i].clone()
    }

    /// A node's URL drawn by `rng`.
    pub fn pick(&self, rng: &mut crate::Rng) -> String {
        let all = self.0.read().unwrap_or_else(PoisonError::into_inner);
        all[rng.below(all.len() as u64) as usize].clone()
    }

    fn set(&self, i: usize, url: String) {
        self.0.write().unwrap_or_else(PoisonError::into_inner)[i] = url;
    }
}

/// The cluster under test.
pub struct Cluster {
    /// Its nodes, at fixed loopback addresses (index `i` on 127.0.0.`first_ip + i`).
    pub nodes: Vec<Node>,
    /// The Raft node id of each.
    ids: Vec<u64>,
    /// The API base URL of each node.
    pub urls: Urls,
    /// The tmpfs of each node, when [`Setup::disk_mib`] is set and mounting worked.
    disks: Vec<SmallDisk>,
    /// How it was set up.
    setup: Setup,
    /// The cluster's join token (for members that replace others).
    token: String,
    /// The failpoints every start carries.
    base_failpoints: Option<String>,
}

impl Cluster {
    /// Starts the cluster and waits until it agrees.
    pub async fn start(setup: &Setup) -> anyhow::Result<Self> {
        let policy = ferry_protocol::limits::QueuePolicy {
            max_jobs_per_user: 100_000,
            max_jobs: 100_000,
            ..Default::default()
        };
        let base_failpoints =
            setup.lose_unsynced.then(|| format!("{}=return", ferry_node::failpoint::LOSE_UNSYNCED));
        let transfer =
            if setup.transfers { downloads::TRANSFER.into() } else { "max_active_jobs = 0".into() };
        // Addresses of their own (127.0.0.101 up by default), so that the partitions
        // drop no packet of another test's cluster running beside this one.
        let options = NodeOptions {
            ip: std::net::Ipv4Addr::new(127, 0, 0, setup.first_ip),
            policy,
            failpoints: base_failpoints.clone(),
            transfer,
            ..Default::default()
        };
        let mut nodes = crate::start_cluster(options, setup.nodes).await?;
        let token = nodes[0].join_token()?;
        let mut disks = Vec::new();
        if let Some(mib) = setup.disk_mib {
            for node in &mut nodes {
                match own_disk(node, mib).await? {
                    Some(disk) => disks.push(disk),
                    None => {
                        println!("disk-full faults left out: cannot mount a tmpfs here");
                        break;
                    }
                }
            }
            if disks.len() < nodes.len() {
                disks.clear();
            }
        }
        let mut ids = Vec::new();
        for node in &nodes {
            ids.push(node.client(Some(tokens::ADMIN))?.cluster().await?.node_id);
        }
        let urls = Urls(Arc::new(RwLock::new(
            nodes.iter().map(Node::url).collect::<anyhow::Result<_>>()?,
        )));
        let setup = setup.clone();
        let cluster = Self { nodes, ids, urls, disks, setup, token, base_failpoints };
        cluster.agreement(Duration::from_secs(60)).await?;
        Ok(cluster)
    }

    /// Removes node `i` from the cluster (its process killed, its data gone) and starts
    /// a new node with an empty data directory on its address, which joins in its place.
    ///
    /// The leader refuses to remove a voter while the voters that stay could not commit
    /// it (one of them down): a member that exited meanwhile is restarted between tries,
    /// as its supervisor would.
    async fn replace(&mut self, i: usize, through: usize) -> anyhow::Result<()> {
        let id = self.ids[i];
        // Through the leader first, then any member (a leader change may be under way).
        let deadline = Instant::now() + Duration::from_secs(30);
        let order: Vec<usize> = std::iter::once(through).chain(0..self.nodes.len()).collect();
        'removed: loop {
            let mut answers = Vec::new();
            for &n in order.iter().filter(|n| **n != i) {
                match self.nodes[n].client(Some(tokens::ADMIN))?.remove_member(id).await {
                    Ok(()) => break 'removed,
                    Err(e) => answers.push(format!("node index {n}: {e}")),
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "cannot remove node {id}:\n{}",
                answers.join("\n")
            );
            for n in (0..self.nodes.len()).filter(|n| *n != i) {
                if self.nodes[n].exited() {
                    self.restart(n, None, Vec::new()).await?;
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        self.nodes[i].kill9().await?;
        let ip = self.nodes[i].options.ip;
        let mut options = self.nodes[through].joiner(ip, &self.token)?;
        options.failpoints = self.base_failpoints.clone();
        options.env.clear();
        let mut node = Node::start(options).await?;
        if !self.disks.is_empty()
            && let Some(mib) = self.setup.disk_mib
        {
            // The old disk goes first (unmounted), then the old node's directory.
            let disk = own_disk(&mut node, mib).await?.context("the tmpfs mount failed")?;
            self.disks[i] = disk;
        }
        self.ids[i] = node.client(Some(tokens::ADMIN))?.cluster().await?.node_id;
        self.urls.set(i, node.url()?);
        self.nodes[i] = node;
        self.membership_settled(Duration::from_secs(60)).await
    }

    /// The Raft ids of the nodes now.
    pub fn member_ids(&self) -> &[u64] {
        &self.ids
    }

    /// The index of the node with Raft id `id`.
    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.ids.iter().position(|i| *i == id)
    }

    /// The index of the leader, asked of any node that answers.
    pub async fn leader(&self) -> Option<usize> {
        for node in &self.nodes {
            let Ok(client) = node.client(Some(tokens::ADMIN)) else { continue };
            if let Ok(status) = client.cluster().await
                && let Some(leader) = status.leader
            {
                return self.ids.iter().position(|id| *id == leader);
            }
        }
        None
    }

    /// Restarts every node that has exited, then waits until all agree.
    pub async fn heal(&mut self) -> anyhow::Result<()> {
        for i in 0..self.nodes.len() {
            if self.nodes[i].exited() {
                self.restart(i, None, Vec::new()).await?;
            }
        }
        self.agreement(Duration::from_secs(60)).await
    }

    /// Waits until every member answers and they agree on the leader and the voters
    /// (under traffic their applied indexes never stand still to be compared).
    async fn membership_settled(&self, patience: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + patience;
        let voters = crate::default_voters(self.nodes.len());
        loop {
            let mut all = Vec::new();
            for node in &self.nodes {
                if let Ok(status) = node.client(Some(tokens::ADMIN))?.cluster().await {
                    all.push(status);
                }
            }
            let settled = all.len() == self.nodes.len()
                && all.iter().all(|s| {
                    s.leader.is_some()
                        && s.leader == all[0].leader
                        && s.members.iter().filter(|m| m.role == "voter").count() == voters
                        && s.members.len() == self.nodes.len()
                });
            if settled {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "the membership never settled: {all:#?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until every member answers and they agree, the same index applied by all
    /// (traffic stopped).
    pub async fn agreement(&self, patience: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + patience;
        loop {
            let mut all = Vec::new();
            for node in &self.nodes {
                if let Ok(status) = node.client(Some(tokens::ADMIN))?.cluster().await {
                    all.push(status);
                }
            }
            let voters = crate::default_voters(self.nodes.len());
            if all.len() == self.nodes.len() && crate::agree(&all, voters) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let logs: Vec<String> = self.nodes.iter().map(Node::log_tail).collect();
                anyhow::bail!("the members never agreed again: {all:#?}\n{}", logs.join("\n--\n"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Restarts node `i` (killing it first if it runs) with `failpoints` added to the
    /// base ones and `env`; a start that fails (a failpoint fired early) is left to
    /// [`Cluster::heal`].
    async fn restart(
        &mut self,
        i: usize,
        failpoints: Option<&str>,
        env: Vec<(String, String)>,
    ) -> anyhow::Result<bool> {
        let all: Vec<&str> =
            self.base_failpoints.as_deref().into_iter().chain(failpoints).collect();
        let node = &mut self.nodes[i];
        node.options.failpoints = (!all.is_empty()).then(|| all.join(";"));
        node.options.env = env;
        let started = node.restart().await;
        node.options.failpoints = self.base_failpoints.clone();
        node.options.env.clear();
        match started {
            Ok(()) => Ok(true),
            Err(_) if failpoints.is_some() => Ok(false),
            Err(e) => Err(e),
        }
    }
}
