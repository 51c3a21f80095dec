//! The faults a nemesis draws from, each injected and healed before the next.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ferry_protocol::JobId;

use tokio::time::Instant;

use super::Cluster;
use crate::{Partition, Rng};

/// libfaketime, for clock offsets (Debian package `faketime`).
const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// A fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// `kill -9` of the leader, restarted 0.5-2 s later.
    KillLeader,
    /// `kill -9` of a follower, restarted 0.5-2 s later.
    KillFollower,
    /// SIGSTOP of the leader for 1-3 s.
    PauseLeader,
    /// The leader cut off from the others both ways for 1.5-3.5 s.
    PartitionLeader,
    /// What the leader sends to the others dropped for 1.5-3.5 s (it still hears them).
    OneWayFromLeader,
    /// A node's API replies dropped for longer than a client waits: writes are carried
    /// out and their clients time out and retry with the same key.
    DropReplies,
    /// A node's data disk filled for up to 5 s; restarted if it stopped.
    DiskFull,
    /// A node restarted with a Raft failpoint that panics after some passes; restarted
    /// without it once it fired (or after 6 s).
    Failpoint,
    /// A node restarted with its wall clock off by up to 5 minutes, for 3-6 s.
    ClockOffset,
    /// A follower removed from the cluster under load, and a new node with an empty
    /// data directory joined in its place (a membership change each way).
    ReplaceMember,
    /// `kill -9` of the home node of the download in progress, restarted 0.5-2 s later.
    KillHome,
    /// `kill -9` of another node than the home of the download in progress (a helper),
    /// restarted 0.5-2 s later.
    KillHelper,
}

impl Fault {
    /// Every fault.
    pub const ALL: [Self; 12] = [
        Self::KillLeader,
        Self::KillFollower,
        Self::PauseLeader,
        Self::PartitionLeader,
        Self::OneWayFromLeader,
        Self::DropReplies,
        Self::DiskFull,
        Self::Failpoint,
        Self::ClockOffset,
        Self::ReplaceMember,
        Self::KillHome,
        Self::KillHelper,
    ];
}

impl std::str::FromStr for Fault {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|f| format!("{f:?}") == name)
            .ok_or_else(|| format!("no fault {name:?}; there are {:?}", Self::ALL))
    }
}

/// The failpoints [`Fault::Failpoint`] arms, with the most passes before the panic.
const FAILPOINTS: [(&str, u64); 4] =
    [("raft.log.before_ack", 60), ("raft.apply", 60), ("raft.vote.save", 2), ("events.send", 200)];

/// Draws faults from a seed and injects them.
pub struct Nemesis {
    rng: Rng,
    kinds: Vec<Fault>,
    /// Faults still to inject, in order, before random ones.
    schedule: Vec<Fault>,
    /// A node never restarted (a soak measures its memory over the whole run).
    spare: Option<usize>,
    /// The download in progress, for [`Fault::KillHome`] and [`Fault::KillHelper`].
    active: Option<Arc<Mutex<Option<JobId>>>>,
    /// Faults injected, by kind.
    pub injected: BTreeMap<Fault, usize>,
    /// What became of them ("disk full: node stopped", "failpoint fired"...).
    pub outcomes: BTreeMap<String, usize>,
}

impl Nemesis {
    /// A nemesis drawing from every fault `cluster` and this machine allow.
    pub fn new(rng: Rng, cluster: &Cluster) -> Self {
        let mut kinds = vec![Fault::KillLeader, Fault::KillFollower, Fault::PauseLeader];
        kinds.extend([Fault::Failpoint, Fault::ReplaceMember]);
        if Partition::available() {
            kinds.extend([Fault::PartitionLeader, Fault::OneWayFromLeader, Fault::DropReplies]);
        } else {
            println!("partitions and dropped replies left out: iptables is not usable here");
        }
        if !cluster.disks.is_empty() {
            kinds.push(Fault::DiskFull);
        }
        if Path::new(FAKETIME).exists() {
            kinds.push(Fault::ClockOffset);
        } else {
            println!("clock offsets left out: {FAKETIME} is missing (Debian package faketime)");
        }
        Self {
            rng,
            kinds,
            schedule: Vec::new(),
            spare: None,
            active: None,
            injected: BTreeMap::new(),
            outcomes: BTreeMap::new(),
        }
    }

    /// Injects exactly the faults of `schedule` (`Kind=count,...`), shuffled, before
    /// drawing at random; fails on a kind this machine cannot inject.
    pub fn with_schedule(mut self, schedule: &str) -> anyhow::Result<Self> {
        for part in schedule.split(',').filter(|p| !p.trim().is_empty()) {
            let (kind, count) = part.split_once('=').unwrap_or((part, "1"));
            let kind: Fault = kind.trim().parse().map_err(anyhow::Error::msg)?;
            anyhow::ensure!(self.kinds.contains(&kind), "{kind:?} cannot be injected here");
            let count: usize = count.trim().parse()?;
            self.schedule.extend(std::iter::repeat_n(kind, count));
        }
        for i in (1..self.schedule.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            self.schedule.swap(i, j);
        }
        self.schedule.reverse();
        Ok(self)
    }

    /// Aims [`Fault::KillHome`] and [`Fault::KillHelper`] at the download in `active`.
    pub fn aiming_at(mut self, active: Arc<Mutex<Option<JobId>>>) -> Self {
        self.kinds.extend([Fault::KillHome, Fault::KillHelper]);
        self.active = Some(active);
        self
    }

    /// Never restarts node index `node` (faults that would restart it hit another).
    pub fn sparing(mut self, node: usize) -> Self {
        self.spare = Some(node);
        self
    }

    /// Faults of the schedule not injected yet.
    pub fn scheduled(&self) -> usize {
        self.schedule.len()
    }

    /// The kinds it draws from.
    pub fn kinds(&self) -> &[Fault] {
        &self.kinds
    }

    /// Draws a fault, injects it and heals it; which it was.
    pub async fn strike(&mut self, cluster: &mut Cluster) -> anyhow::Result<Fault> {
        // The supervisor first (systemd's Restart=on-failure): a node may stop on its
        // own after its fault was healed (a storage failure is answered by exiting once
        // the waiting writes are answered, which can outlast a disk-full window).
        for i in 0..cluster.nodes.len() {
            if cluster.nodes[i].exited() {
                self.note("supervisor: restarted a node that had exited");
                cluster.restart(i, None, Vec::new()).await?;
            }
        }
        let fault = match self.schedule.pop() {
            Some(fault) => fault,
            None => self.kinds[self.rng.below(self.kinds.len() as u64) as usize],
        };
        let before = self.injected.get(&fault).copied().unwrap_or(0);
        self.inject(cluster, fault).await?;
        if self.injected.get(&fault).copied().unwrap_or(0) == before {
            // Not injected (no leader to aim at): a scheduled fault waits its turn again.
            self.schedule.push(fault);
        }
        Ok(fault)
    }

    fn note(&mut self, outcome: impl Into<String>) {
        *self.outcomes.entry(outcome.into()).or_default() += 1;
    }

    /// Injects `fault` and heals it.
    pub async fn inject(&mut self, cluster: &mut Cluster, fault: Fault) -> anyhow::Result<()> {
        let Some(lead) = cluster.leader().await else {
            self.note("no leader to aim at: waited");
            tokio::time::sleep(Duration::from_secs(1)).await;
            return Ok(());
        };
        *self.injected.entry(fault).or_default() += 1;
        let n = cluster.nodes.len();
        let others: Vec<Ipv4Addr> = (0..n).filter(|i| *i != lead).map(|i| ip(cluster, i)).collect();
        let spare = self.spare;
        let mut follower = (lead + 1 + self.rng.below(n as u64 - 1) as usize) % n;
        if Some(follower) == spare {
            follower = (0..n).find(|i| *i != lead && Some(*i) != spare).unwrap_or(follower);
        }
        let mut any = self.rng.below(n as u64) as usize;
        if Some(any) == spare {
            any = follower;
        }
        match fault {
            Fault::KillLeader | Fault::KillFollower => {
                let victim =
                    if fault == Fault::KillLeader && spare != Some(lead) { lead } else { follower };
                cluster.nodes[victim].kill9().await?;
                tokio::time::sleep(self.rng.millis(500, 2000)).await;
                cluster.restart(victim, None, Vec::new()).await?;
            }
            Fault::PauseLeader => {
                cluster.nodes[lead].signal("STOP")?;
                tokio::time::sleep(self.rng.millis(1000, 3000)).await;
                cluster.nodes[lead].signal("CONT")?;
            }
            Fault::PartitionLeader => {
                let cut = Partition::isolate(ip(cluster, lead), &others)?;
                tokio::time::sleep(self.rng.millis(1500, 3500)).await;
                drop(cut);
            }
            Fault::OneWayFromLeader => {
                let cut = Partition::one_way(ip(cluster, lead), &others)?;
                tokio::time::sleep(self.rng.millis(1500, 3500)).await;
                drop(cut);
            }
            Fault::DropReplies => {
                let target = if self.rng.below(2) == 0 { lead } else { any };
                let cut = Partition::drop_replies(cluster.nodes[target].addr()?)?;
                tokio::time::sleep(self.rng.millis(3500, 6000)).await;
                drop(cut);
            }
            Fault::DiskFull => self.fill_disk(cluster, any).await?,
            Fault::KillHome | Fault::KillHelper => {
                let home = self.home_of_active(cluster).await;
                let victim = match (fault, home) {
                    (Fault::KillHome, Some(home)) if spare != Some(home) => home,
                    (Fault::KillHelper, Some(home)) => {
                        (0..n).find(|i| *i != home && Some(*i) != spare).unwrap_or(follower)
                    }
                    _ => {
                        self.note("no download in progress: killed a follower");
                        follower
                    }
                };
                cluster.nodes[victim].kill9().await?;
                tokio::time::sleep(self.rng.millis(500, 2000)).await;
                cluster.restart(victim, None, Vec::new()).await?;
            }
            Fault::ReplaceMember => {
                cluster.replace(follower, lead).await?;
            }
            Fault::Failpoint => self.arm_failpoint(cluster, any).await?,
            Fault::ClockOffset => {
                let seconds = 1 + self.rng.below(300);
                let sign = if self.rng.below(2) == 0 { "+" } else { "-" };
                let env = vec![
                    ("LD_PRELOAD".to_string(), FAKETIME.to_string()),
                    ("FAKETIME".to_string(), format!("{sign}{seconds}s")),
                    ("FAKETIME_DONT_FAKE_MONOTONIC".to_string(), "1".to_string()),
                ];
                cluster.restart(any, None, env).await?;
                tokio::time::sleep(self.rng.millis(3000, 6000)).await;
                cluster.restart(any, None, Vec::new()).await?;
            }
        }
        Ok(())
    }

    /// The index of the home node of the download in progress, if any.
    async fn home_of_active(&self, cluster: &Cluster) -> Option<usize> {
        let active = self.active.as_ref()?;
        let job = (*active.lock().unwrap_or_else(PoisonError::into_inner))?;
        for node in &cluster.nodes {
            let Ok(client) = node.client(Some(crate::tokens::ADMIN)) else { continue };
            if let Ok(info) = client.job(job).await {
                return cluster.index_of(info.home_node);
            }
        }
        None
    }

    /// Fills node `i`'s disk for up to 5 s; the node either stops (and is restarted
    /// once there is room) or rides it out on the space its files already hold.
    ///
    /// A node whose Raft stopped on the full disk takes a while to exit (it drains its
    /// API for up to 10 s first): it is waited for, not taken for one that rode it out,
    /// or the next fault would find a voter down that the cluster was told is up.
    async fn fill_disk(&mut self, cluster: &mut Cluster, i: usize) -> anyhow::Result<()> {
        let stops_before = log_count(&cluster.nodes[i], STOPPED);
        let filler = cluster.disks[i].fill(0)?;
        let deadline = Instant::now() + self.rng.millis(2000, 5000);
        while Instant::now() < deadline && !cluster.nodes[i].exited() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        std::fs::remove_file(&filler)?;
        if log_count(&cluster.nodes[i], STOPPED) > stops_before {
            let exiting = Instant::now() + Duration::from_secs(30);
            while Instant::now() < exiting && !cluster.nodes[i].exited() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            anyhow::ensure!(
                cluster.nodes[i].exited(),
                "node {} stopped its Raft on the full disk but did not exit within 30 s:\n{}",
                i + 1,
                cluster.nodes[i].log_tail()
            );
        }
        if cluster.nodes[i].exited() {
            self.note("disk full: the node stopped, restarted with room");
            cluster.restart(i, None, Vec::new()).await?;
        } else {
            self.note("disk full: the node rode it out");
        }
        Ok(())
    }

    /// Restarts node `i` with a failpoint armed; restarts it without once it fired (or
    /// after 6 s).
    async fn arm_failpoint(&mut self, cluster: &mut Cluster, i: usize) -> anyhow::Result<()> {
        let (name, most) = FAILPOINTS[self.rng.below(FAILPOINTS.len() as u64) as usize];
        let passes = self.rng.below(most + 1);
        let armed = format!("{name}={passes}*off->panic");
        let mark = format!("failpoint {name} panic");
        let before = log_count(&cluster.nodes[i], &mark);
        let started = cluster.restart(i, Some(&armed), Vec::new()).await?;
        let deadline = Instant::now() + Duration::from_secs(6);
        while started && Instant::now() < deadline && !cluster.nodes[i].exited() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let fired = log_count(&cluster.nodes[i], &mark) > before;
        anyhow::ensure!(
            fired || (started && !cluster.nodes[i].exited()),
            "node {} stopped, not at {name}:\n{}",
            i + 1,
            cluster.nodes[i].log_tail()
        );
        self.note(format!("{name}: {}", if fired { "fired" } else { "armed, not reached" }));
        cluster.restart(i, None, Vec::new()).await?;
        Ok(())
    }
}

/// What a node logs when its Raft stopped on a storage failure and it is about to exit.
const STOPPED: &str = "raft stopped on a fatal error; exiting";

/// How often `text` is in `node`'s log.
fn log_count(node: &crate::Node, text: &str) -> usize {
    std::fs::read_to_string(node.log_path()).map_or(0, |log| log.matches(text).count())
}

/// The loopback address of node index `i`.
fn ip(cluster: &Cluster, i: usize) -> Ipv4Addr {
    cluster.nodes[i].options.ip
}
