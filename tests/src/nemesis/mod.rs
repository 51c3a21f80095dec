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
mod events;
mod faults;
mod history;

use std::sync::Arc;
use std::time::Duration;

pub use check::{Ledger, Verdict, check};
pub use events::EventStream;
pub use faults::{Fault, Nemesis};
pub use history::{Call, History, Op, Seen, Traffic, TrafficConfig, cancel, create, job_for};
use tokio::time::Instant;

use crate::{Node, NodeOptions, SmallDisk, tokens};

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
}

impl Default for Setup {
    fn default() -> Self {
        Self { nodes: 3, disk_mib: Some(256), lose_unsynced: true }
    }
}

/// The cluster under test.
pub struct Cluster {
    /// Its nodes, node id `i + 1` at index `i`.
    pub nodes: Vec<Node>,
    /// The API base URL of each node (fixed: a restart keeps its ports).
    pub urls: Arc<Vec<String>>,
    /// The tmpfs of each node, when [`Setup::disk_mib`] is set and mounting worked.
    disks: Vec<SmallDisk>,
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
        let options = NodeOptions {
            policy,
            failpoints: base_failpoints.clone(),
            ..NodeOptions::queue_only()
        };
        let mut nodes = crate::start_cluster(options, setup.nodes).await?;
        let mut disks = Vec::new();
        if let Some(mib) = setup.disk_mib {
            for node in &mut nodes {
                node.stop().await?;
                match SmallDisk::mount(&node.data_dir(), mib)? {
                    Some(disk) => disks.push(disk),
                    None => println!("disk-full faults left out: cannot mount a tmpfs here"),
                }
                node.restart().await?;
                if disks.is_empty() {
                    break;
                }
            }
            if disks.len() < nodes.len() {
                disks.clear();
            }
        }
        let urls = Arc::new(nodes.iter().map(Node::url).collect::<anyhow::Result<_>>()?);
        let cluster = Self { nodes, urls, disks, base_failpoints };
        cluster.agreement(Duration::from_secs(60)).await?;
        Ok(cluster)
    }

    /// The index of the leader, asked of any node that answers.
    pub async fn leader(&self) -> Option<usize> {
        for node in &self.nodes {
            let Ok(client) = node.client(Some(tokens::ADMIN)) else { continue };
            if let Ok(status) = client.cluster().await
                && let Some(leader) = status.leader
            {
                return usize::try_from(leader).ok().and_then(|l| l.checked_sub(1));
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

    /// Waits until every member answers and they agree.
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
