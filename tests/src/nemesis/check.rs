//! The checkers run on a history once the faults are healed.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use ferry_protocol::api::JobInfo;
use ferry_protocol::{JobId, JobState};
use tokio::time::Instant;

use super::Cluster;
use super::history::{Call, Op, Seen, cancel, create};
use crate::tokens;

/// What the checkers looked at (they found nothing wrong, or they would have failed).
#[derive(Clone, Copy, Debug, Default)]
pub struct Verdict {
    /// Keys of creates checked.
    pub keys: usize,
    /// Writes whose outcome no attempt learned, settled by sending them again.
    pub settled: usize,
    /// Reads checked against the cancels.
    pub reads: usize,
    /// Jobs whose reads were checked for linearizability.
    pub jobs: usize,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "0 violations ({} keys, {} writes settled, {} reads of {} jobs checked)",
            self.keys, self.settled, self.reads, self.jobs
        )
    }
}

/// What the checkers carry from one check to the next (a soak checks its history
/// interval by interval).
#[derive(Debug, Default)]
pub struct Ledger {
    /// Every key's job so far.
    known: HashMap<String, JobId>,
    /// Unfinished jobs no known key had made at the last check: clients may still be
    /// creating them while a soak is checked. Each must be explained by the next check.
    unexplained: HashSet<(String, JobId)>,
    /// The traffic was stopped before this check: every job must be explained now.
    pub strict: bool,
}

impl Ledger {
    /// A ledger for one check of a run whose traffic has stopped.
    pub fn strict() -> Self {
        Self { strict: true, ..Self::default() }
    }
}

/// Sends a write again with its key until a node answers it with success.
async fn resend(
    cluster: &Cluster,
    what: &str,
    request: impl Fn(&str) -> reqwest::RequestBuilder,
) -> anyhow::Result<reqwest::Response> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut failures = Vec::new();
        for url in &cluster.urls.all() {
            match request(url).timeout(Duration::from_secs(10)).send().await {
                Ok(answer) if answer.status().is_success() => return Ok(answer),
                Ok(answer) if answer.status().is_client_error() => {
                    anyhow::bail!("{what}: answered {}", answer.status())
                }
                Ok(answer) => {
                    let status = answer.status();
                    failures.push(format!("{url}: {status} {}", answer.text().await?));
                }
                Err(e) => failures.push(format!("{url}: {e:?}")),
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what}: no node took it:\n{}",
            failures.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Runs the checkers on `ops`: the whole history of a run, or one interval of a soak.
/// `ledger` holds what earlier checks learned and gains this one's.
///
/// - Writes whose outcome the clients never learned are sent again with their keys.
/// - Every acknowledged create is there, and every key has one job: whatever attempt
///   of it was acknowledged, and no unfinished job beyond those.
/// - No write was refused (these requests are always valid), no job read as missing.
/// - Every acknowledged cancel took effect.
/// - Per job created in `ops`, reads are linearizable with its one cancel (a register
///   that moves once, SUSPENDED to CANCELLED): no read that began after a cancel was
///   acknowledged sees it uncancelled, none that ended before the cancel began sees it
///   cancelled, none sees it uncancelled after an earlier read saw it cancelled.
pub async fn check(cluster: &Cluster, ops: &[Op], ledger: &mut Ledger) -> anyhow::Result<Verdict> {
    let http = reqwest::Client::builder().no_proxy().build()?;
    let mut verdict = Verdict::default();
    let mut ids: HashMap<&str, HashSet<JobId>> = HashMap::new();
    let mut unknown_cancels: HashSet<(JobId, &str)> = HashSet::new();
    for op in ops {
        if let Seen::Refused(status) = op.seen
            && !matches!(op.call, Call::Read { .. })
        {
            anyhow::bail!("{:?} was refused with {status}", op.call);
        }
        match (&op.call, &op.seen) {
            (Call::Create { key }, Seen::Created(id)) => {
                ids.entry(key).or_default().insert(*id);
            }
            (Call::Create { key }, Seen::Unknown) => {
                ids.entry(key).or_default();
            }
            (Call::Cancel { job, key }, Seen::Unknown) => {
                unknown_cancels.insert((*job, key));
            }
            (Call::Cancel { job, key }, Seen::Cancelled) => {
                unknown_cancels.remove(&(*job, key.as_str()));
            }
            _ => {}
        }
    }
    // A key whose every attempt had an unknown outcome: its job, if any, by retrying.
    for (key, seen) in &mut ids {
        if seen.is_empty() {
            let answer = resend(cluster, key, |url| create(&http, url, key)).await?;
            seen.insert(answer.json::<JobInfo>().await?.id);
            verdict.settled += 1;
        }
    }
    let admin = cluster.nodes[0].client(Some(tokens::ADMIN))?;
    for (job, key) in &unknown_cancels {
        // A job already cancelled settles it: sent again, a cancel whose key its
        // principal's newer requests pushed out would be refused as a cancel of a
        // cancelled job.
        if !admin.job(*job).await.is_ok_and(|j| j.state == JobState::Cancelled) {
            resend(cluster, key, |url| cancel(&http, url, *job, key)).await?;
        }
        verdict.settled += 1;
    }
    let mut jobs: HashMap<JobId, JobInfo> = HashMap::new();
    for (key, seen) in &ids {
        anyhow::ensure!(seen.len() == 1, "key {key} made jobs {seen:?}");
        let id = *seen.iter().next().unwrap_or_else(|| unreachable!("one id"));
        if let Some(earlier) = ledger.known.insert((*key).to_string(), id) {
            anyhow::ensure!(earlier == id, "key {key} made jobs {earlier} and {id}");
        }
        let job = admin.job(id).await.map_err(|e| anyhow::anyhow!("the job of {key}: {e}"))?;
        anyhow::ensure!(&job.display_name == key, "job {id} is not {key}'s");
        jobs.insert(id, job);
    }
    verdict.keys = ids.len();
    let mut unexplained = HashSet::new();
    // The queue clients are alice (the downloads are bob's).
    for job in admin.list_jobs(true).await?.into_iter().filter(|j| j.owner.as_str() == "alice") {
        let made = ledger.known.get(&job.display_name);
        if made == Some(&job.id) {
            continue;
        }
        let entry = (job.display_name.clone(), job.id);
        anyhow::ensure!(
            !ledger.strict && made.is_none() && !ledger.unexplained.contains(&entry),
            "job {} ({}) was made by no key (that key's job: {made:?})",
            job.id,
            job.display_name
        );
        unexplained.insert(entry);
    }
    ledger.unexplained = unexplained;
    // Every acknowledged cancel took effect.
    for op in ops {
        if let (Call::Cancel { job, .. }, Seen::Cancelled) = (&op.call, &op.seen) {
            let state = match jobs.get(job) {
                Some(info) => Some(info.state),
                None => admin.job(*job).await.ok().map(|j| j.state),
            };
            anyhow::ensure!(
                state == Some(JobState::Cancelled),
                "job {job} cancelled, now {state:?}"
            );
        }
    }
    linearizable(ops, &jobs, &mut verdict)?;
    Ok(verdict)
}

/// The per-job linearizability checker (see [`check`]), for jobs created in `ops`.
fn linearizable(
    ops: &[Op],
    jobs: &HashMap<JobId, JobInfo>,
    verdict: &mut Verdict,
) -> anyhow::Result<()> {
    let mut per_job: HashMap<JobId, Vec<&Op>> = HashMap::new();
    for op in ops {
        match &op.call {
            Call::Cancel { job, .. } | Call::Read { job } if jobs.contains_key(job) => {
                per_job.entry(*job).or_default().push(op);
            }
            _ => {}
        }
    }
    for (job, ops) in &per_job {
        let cancelled_in_the_end = jobs.get(job).is_some_and(|j| j.state == JobState::Cancelled);
        let cancels = ops.iter().filter(|o| matches!(o.call, Call::Cancel { .. }));
        let sent: Vec<&&Op> = cancels.filter(|o| o.seen != Seen::NotSent).collect();
        // The cancel may take effect from its first attempt's start; it has by the end of
        // its first acknowledged attempt.
        let began = sent.iter().map(|o| o.invoked).min();
        let acknowledged =
            sent.iter().filter(|o| o.seen == Seen::Cancelled).map(|o| o.completed).min();
        let reads: Vec<(&Op, bool)> = ops
            .iter()
            .filter_map(|o| match o.seen {
                Seen::Read(state) => Some((*o, state == JobState::Cancelled)),
                Seen::Refused(status) => Some((*o, status == 404 && cancelled_in_the_end)),
                _ => None,
            })
            .collect();
        for &(read, saw_cancelled) in &reads {
            verdict.reads += 1;
            if let Seen::Refused(status) = read.seen {
                anyhow::ensure!(saw_cancelled, "job {job}: a read was answered {status}");
            }
            match began {
                None => {
                    anyhow::ensure!(!saw_cancelled, "job {job} read cancelled, never cancelled")
                }
                Some(began) => {
                    if acknowledged.is_some_and(|at| read.invoked > at) {
                        anyhow::ensure!(
                            saw_cancelled,
                            "job {job}: a read after the acknowledged cancel saw {:?}",
                            read.seen
                        );
                    }
                    if read.completed < began {
                        anyhow::ensure!(
                            !saw_cancelled,
                            "job {job}: a read before the cancel saw it cancelled"
                        );
                    }
                    if saw_cancelled {
                        anyhow::ensure!(
                            cancelled_in_the_end,
                            "job {job}: read cancelled, not cancelled in the end"
                        );
                    }
                }
            }
        }
        // Once a read saw it cancelled, no read begun later sees it uncancelled.
        let first_seen = reads.iter().filter(|(_, c)| *c).map(|(o, _)| o.completed).min();
        if let Some(seen_at) = first_seen {
            for (read, saw_cancelled) in &reads {
                anyhow::ensure!(
                    read.invoked <= seen_at || *saw_cancelled,
                    "job {job}: uncancelled again after a read saw it cancelled"
                );
            }
        }
        verdict.jobs += 1;
    }
    Ok(())
}
