//! The notify command line (`SetNotifyCmdLine`), run on the job's home node once per
//! entry into TRANSFERRED or ERROR.
//!
//! Apply records the run a job owes ([`NotifyRun`]); this task, on the home node, runs
//! the program and records that it ran through Raft (an engine report, written like the
//! transfer engine's), so a restart or a leader change does not run it again. Between
//! the two, a marker file (`<data-dir>/notify/<job>-<entry>-<attempt>`, made durable
//! before the program starts) tells a restarted node whether the program had been
//! started: without it the program runs after the restart; with it, the run is recorded
//! without running again.
//!
//! The command line is a way to run code on this node (MITRE ATT&CK T1197), so right
//! before it starts, the job is read again and the program runs only if:
//! - the job's owner may name it ([`NotifyPolicy`]: administrators any program, users
//!   those in `[notify] allowed_programs` of *this* node's configuration);
//! - it gets an identity that is not root's: the owner's `uid`/`gid` from
//!   `[[api.tokens]]`, else `[notify] run_as`, else ferryd's own user when that is not
//!   root.
//!
//! It then runs without a shell, with its arguments as given, a clean environment (a
//! fixed `PATH` and `FERRY_*` variables), stdin from `/dev/null`, `/` as working
//! directory, and a timeout; the start of its output goes to the node log. A refused
//! program does not run and the run counts as failed (retried after the job's retry
//! delay, like a program that failed).
//!
//! The API refuses disallowed programs before they are stored (`ferry_coordinator::
//! notify_policy`); this module does not rely on that.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_coordinator::TokenEntry;
use ferry_coordinator::notify_policy::NotifyPolicy;
use ferry_protocol::job::{NotifyCmdLine, NotifyRun};
use ferry_protocol::transfer::EngineReport;
use ferry_protocol::{Job, JobId, JobState, Role, Timestamp};
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio_util::task::AbortOnDropHandle;

use crate::config::{NotifyConfig, RunAs};
use crate::feed::Feed;
use crate::replica::ClusterView;
use crate::transfer::Reporter;
use crate::transfer::failure::Stop;

/// Most output bytes of a program kept for the log (the rest is read and dropped).
const MAX_LOGGED_OUTPUT: usize = 4096;
/// How long output is still read once the program exited (its own children may hold
/// the pipes open).
const OUTPUT_GRACE: Duration = Duration::from_secs(1);
/// The whole `PATH` a program sees.
const PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// The principal of the admin token ferryd generates when no token is configured
/// (`node.rs`).
const GENERATED_ADMIN: &str = "admin";

/// An OS identity a program runs as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct OsIdentity {
    uid: u32,
    gid: u32,
}

/// What this node's configuration says about one principal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Owner {
    role: Role,
    /// The principal's OS identity; `Err` when its token entries disagree on it.
    identity: Result<Option<OsIdentity>, ConflictingIdentity>,
}

/// A principal's token entries give different OS identities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ConflictingIdentity;

/// Why a notify program is not run (the run counts as failed).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
enum NotRun {
    /// A user-owned job names a program this node does not allow.
    #[error(
        "{0:?} is not in this node's [notify] allowed_programs, and the job's owner is not an administrator"
    )]
    NotAllowed(String),
    /// The owner's token entries disagree on its OS identity.
    #[error("the owner's [[api.tokens]] entries give different uid/gid; make them agree")]
    ConflictingIdentity,
    /// The chosen identity is root's.
    #[error("it would run as uid {uid} gid {gid}, and notify programs never run as root")]
    Root {
        /// The uid it would have had.
        uid: u32,
        /// The gid it would have had.
        gid: u32,
    },
    /// ferryd is root and nothing names another identity.
    #[error(
        "ferryd runs as root and neither the owner's [[api.tokens]] entry (uid) nor [notify] run_as gives an identity to run the program as"
    )]
    NoIdentity,
}

/// Job owners as this node knows them, from its `[[api.tokens]]` (secrets left out). A
/// principal it does not know is treated as a user with no OS identity.
#[derive(Clone, Debug, Default)]
pub(crate) struct Owners {
    by_principal: HashMap<String, Owner>,
}

impl Owners {
    /// The owners of `tokens`; with none configured, the generated admin.
    pub(crate) fn new(tokens: &[TokenEntry]) -> Self {
        let mut by_principal: HashMap<String, Owner> = HashMap::new();
        if tokens.is_empty() {
            let admin = Owner { role: Role::Admin, identity: Ok(None) };
            by_principal.insert(GENERATED_ADMIN.to_owned(), admin);
        }
        for entry in tokens {
            // A gid without a uid maps no identity; a uid without a gid uses its number.
            let identity = entry.uid.map(|uid| OsIdentity { uid, gid: entry.gid.unwrap_or(uid) });
            let owner = Owner { role: entry.role, identity: Ok(identity) };
            by_principal
                .entry(entry.principal.clone())
                .and_modify(|known| {
                    if known.identity != owner.identity {
                        known.identity = Err(ConflictingIdentity);
                    }
                    // Roles never conflict (the token table refuses that); be strict anyway.
                    if known.role != owner.role {
                        known.role = Role::User;
                    }
                })
                .or_insert(owner);
        }
        Self { by_principal }
    }

    fn get(&self, principal: &str) -> Owner {
        self.by_principal
            .get(principal)
            .copied()
            .unwrap_or(Owner { role: Role::User, identity: Ok(None) })
    }
}

/// What the task needs besides the cluster.
struct Runner {
    config: NotifyConfig,
    policy: NotifyPolicy,
    owners: Owners,
    /// ferryd's effective uid; `None` if unknown (then treated as root).
    euid: Option<u32>,
    dir: PathBuf,
}

/// One owed run.
struct Owed {
    job: JobId,
    run: NotifyRun,
    /// Whether the job had a command line when the run was found owed.
    has_cmdline: bool,
}

/// The job as it is right before its program would start.
struct Current {
    owner: String,
    state: JobState,
    cmdline: Option<NotifyCmdLine>,
}

/// Watches the applied queue and runs what this node owes, until the node stops.
pub(crate) async fn run(cluster: ClusterView, config: NotifyConfig, owners: Owners, root: PathBuf) {
    let dir = root.join("notify");
    if let Err(e) = std::fs::create_dir_all(&dir) {
        tracing::error!(dir = %dir.display(), error = %e, "cannot create the notify directory; notify command lines will not run");
        return;
    }
    let euid = effective_uid();
    if euid.is_none_or(|uid| uid == 0) && config.run_as.is_none() {
        tracing::info!(
            "ferryd runs as root and notify.run_as is not set: notify programs run only for owners with a uid in [[api.tokens]]"
        );
    }
    let runner = Arc::new(Runner { policy: config.policy(), config, owners, euid, dir });
    let busy: Arc<Mutex<HashSet<(JobId, u64, u32)>>> = Arc::default();
    // Subscribed before the first look, so no change falls between the two.
    let mut feed = cluster.state.feed().subscribe();
    let mut owing = HashSet::new();
    follow(&cluster, &mut owing, &Feed::Reset);
    loop {
        for owed in owed_here(&cluster, &owing) {
            let key = (owed.job, owed.run.entry, owed.run.attempt);
            if !lock(&busy).insert(key) {
                continue;
            }
            let (cluster, runner, busy) = (cluster.clone(), runner.clone(), busy.clone());
            tokio::spawn(async move {
                runner.run_one(&cluster, &owed).await;
                lock(&busy).remove(&key);
            });
        }
        // Look again when something is applied, or every second (retry times pass).
        tokio::select! {
            delivery = feed.next() => match delivery {
                Some(delivery) => follow(&cluster, &mut owing, &delivery),
                None => return,
            },
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Keeps `owing` (the jobs homed here that owe a run) up to date with the feed.
fn follow(cluster: &ClusterView, owing: &mut HashSet<JobId>, feed: &Feed) {
    let owes = |job: &Job| job.home_node() == cluster.node_id && job.notify_run().is_some();
    let machine = cluster.state.read();
    match feed {
        Feed::Reset => {
            *owing = cluster
                .state
                .feed()
                .scan(&machine.queue)
                .filter(|j| owes(j))
                .map(|j| j.id())
                .collect();
        }
        Feed::Changed(batch) => {
            for change in &batch.jobs {
                if machine.queue.job(&change.job).is_some_and(owes) {
                    owing.insert(change.job);
                } else {
                    owing.remove(&change.job);
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The runs this node owes now, among the jobs `owing`.
fn owed_here(cluster: &ClusterView, owing: &HashSet<JobId>) -> Vec<Owed> {
    let now = Timestamp::now();
    let machine = cluster.state.read();
    owing
        .iter()
        .filter_map(|id| machine.queue.job(id))
        .filter_map(|job| {
            let run = job.notify_run().filter(|r| r.not_before <= now)?;
            Some(Owed { job: job.id(), run, has_cmdline: job.props().notify_cmdline.is_some() })
        })
        .collect()
}

/// The job, if it still owes `owed`'s run.
fn still_owed(cluster: &ClusterView, owed: &Owed) -> Option<Current> {
    let machine = cluster.state.read();
    let job = machine.queue.job(&owed.job)?;
    let run = job.notify_run()?;
    ((run.entry, run.attempt) == (owed.run.entry, owed.run.attempt)).then(|| Current {
        owner: job.owner().as_str().to_owned(),
        state: job.state(),
        cmdline: job.props().notify_cmdline.clone(),
    })
}

impl Runner {
    /// Runs one owed run (unless its marker says it was started before) and records it.
    async fn run_one(&self, cluster: &ClusterView, owed: &Owed) {
        let marker = self.dir.join(format!("{}-{}-{}", owed.job, owed.run.entry, owed.run.attempt));
        let success = if marker.exists() {
            tracing::warn!(job = %owed.job, entry = owed.run.entry, "the notify program was started before this node stopped; not running it again");
            true
        } else if owed.has_cmdline {
            tokio::time::sleep(Duration::from_millis(self.config.start_delay_ms)).await;
            // Read the job again: its owner or command line may have changed meanwhile
            // (take-ownership drops both the command line and the owed run).
            let Some(current) = still_owed(cluster, owed) else { return };
            match current.cmdline.as_ref().map(|cmdline| self.launch(owed.job, &current, cmdline)) {
                // The command line was removed since: nothing to run.
                None => true,
                Some(Err(reason)) => {
                    tracing::warn!(job = %owed.job, owner = %current.owner, reason = %reason, "the notify program was not run; the run counts as failed");
                    false
                }
                Some(Ok(launch)) => {
                    if let Err(e) = durable_marker(&marker) {
                        tracing::error!(job = %owed.job, error = %e, "cannot record the notify run locally; not running it");
                        return;
                    }
                    let timeout = Duration::from_secs(self.config.timeout_secs);
                    execute(&launch, timeout).await
                }
            }
        } else {
            // The job had no command line: nothing to run.
            true
        };
        if record(cluster, owed, success).await {
            let _ = std::fs::remove_file(&marker);
        }
    }

    /// How `cmdline` of the job (as it is now) would run, or why it may not.
    fn launch(
        &self,
        job: JobId,
        current: &Current,
        cmdline: &NotifyCmdLine,
    ) -> Result<Launch, NotRun> {
        let owner = self.owners.get(&current.owner);
        if !self.policy.permits(owner.role, &cmdline.program) {
            return Err(NotRun::NotAllowed(cmdline.program.clone()));
        }
        let identity = identity(owner.identity, self.config.run_as, self.euid)?;
        let state = format!("{:?}", current.state).to_ascii_uppercase();
        Ok(Launch {
            job,
            cmdline: cmdline.clone(),
            identity,
            env: vec![
                ("PATH", PATH.to_owned()),
                ("FERRY_JOB_ID", job.to_string()),
                ("FERRY_JOB_STATE", state),
                ("FERRY_JOB_OWNER", current.owner.clone()),
            ],
        })
    }
}

/// Who a program runs as: `Some` identity to switch to, `None` for ferryd's own user
/// (only when that is known not to be root), or why it may not run. The owner's mapped
/// identity comes first (the job acts as its owner, as BITS impersonates it), then
/// `run_as`; no identity is ever root's.
fn identity(
    owner: Result<Option<OsIdentity>, ConflictingIdentity>,
    run_as: Option<RunAs>,
    euid: Option<u32>,
) -> Result<Option<OsIdentity>, NotRun> {
    let owner = owner.map_err(|ConflictingIdentity| NotRun::ConflictingIdentity)?;
    let chosen = owner.or(run_as.map(|RunAs { uid, gid }| OsIdentity { uid, gid }));
    match (chosen, euid) {
        (Some(OsIdentity { uid, gid }), _) if uid == 0 || gid == 0 => {
            Err(NotRun::Root { uid, gid })
        }
        (Some(id), _) => Ok(Some(id)),
        (None, Some(uid)) if uid != 0 => Ok(None),
        (None, _) => Err(NotRun::NoIdentity),
    }
}

/// ferryd's effective uid, from `/proc/self/status` (`None` if it cannot be read).
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uids = status.lines().find_map(|line| line.strip_prefix("Uid:"))?;
    uids.split_whitespace().nth(1)?.parse().ok()
}

/// Creates `path` and makes it durable (file and directory entry).
fn durable_marker(path: &PathBuf) -> std::io::Result<()> {
    std::fs::File::create(path)?.sync_all()?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// A program cleared to run.
struct Launch {
    job: JobId,
    cmdline: NotifyCmdLine,
    /// The identity to switch to; `None`: ferryd's own (not root).
    identity: Option<OsIdentity>,
    /// The whole environment.
    env: Vec<(&'static str, String)>,
}

/// Runs the program without a shell; true if it exited with status 0 in time.
async fn execute(launch: &Launch, timeout: Duration) -> bool {
    let (job, program) = (launch.job, &launch.cmdline.program);
    let mut command = tokio::process::Command::new(program);
    command
        .args(&launch.cmdline.args)
        .env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a timeout kills what it started too.
        .process_group(0)
        .kill_on_drop(true);
    if let Some(OsIdentity { uid, gid }) = launch.identity {
        // Set by root, the uid also drops ferryd's supplementary groups: the program
        // has `gid` only.
        command.uid(uid).gid(gid);
    }
    let as_uid = launch.identity.map(|id| id.uid);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            tracing::warn!(%job, %program, uid = ?as_uid, error = %e, "cannot start the notify program");
            return false;
        }
    };
    let stdout = AbortOnDropHandle::new(tokio::spawn(head(child.stdout.take())));
    let stderr = AbortOnDropHandle::new(tokio::spawn(head(child.stderr.take())));
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => {
            tracing::warn!(%job, %program, error = %e, "the notify program failed");
            return false;
        }
        Err(_) => {
            // The whole group; dropping the child then reaps it.
            if let Some(pid) =
                child.id().and_then(|id| rustix::process::Pid::from_raw(i32::try_from(id).ok()?))
            {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
            tracing::warn!(%job, %program, ?timeout, "the notify program timed out and was killed with its process group");
            return false;
        }
    };
    let text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).trim_end().to_owned();
    let output = |handle| async {
        let read = tokio::time::timeout(OUTPUT_GRACE, handle).await;
        read.ok().and_then(Result::ok).map(text).unwrap_or_default()
    };
    let (stdout, stderr) = (output(stdout).await, output(stderr).await);
    tracing::info!(%job, %program, uid = ?as_uid, %status, %stdout, %stderr, "ran the notify program");
    status.success()
}

/// The first [`MAX_LOGGED_OUTPUT`] bytes of `stream`; the rest is read and dropped, so
/// the program never blocks on a full pipe and ferryd holds no more than that.
async fn head(stream: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
    let mut kept = Vec::new();
    if let Some(mut stream) = stream {
        let limit = MAX_LOGGED_OUTPUT as u64;
        let _ = (&mut stream).take(limit).read_to_end(&mut kept).await;
        let _ = tokio::io::copy(&mut stream, &mut tokio::io::sink()).await;
    }
    kept
}

/// Records the run through Raft (as an engine report); true once the applied queue no
/// longer owes it. A refusal as stale may also mean "no leader within the attempts", so
/// the queue decides: while the run is still owed the marker stays, and the next look
/// records it without running the program again.
async fn record(cluster: &ClusterView, owed: &Owed, success: bool) -> bool {
    let NotifyRun { entry, attempt, .. } = owed.run;
    let reports = vec![EngineReport::NotifyRan { entry, attempt, success }];
    if let Err(Stop::Failed(e)) = Reporter::new(cluster.clone()).report(owed.job, 0, reports).await
    {
        tracing::warn!(job = %owed.job, error = ?e, "the notify run was refused");
    }
    let machine = cluster.state.read();
    let still_owed = machine
        .queue
        .job(&owed.job)
        .and_then(|job| job.notify_run())
        .is_some_and(|run| (run.entry, run.attempt) == (entry, attempt));
    !still_owed
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOBODY: OsIdentity = OsIdentity { uid: 65534, gid: 65534 };
    const RUN_AS: RunAs = RunAs { uid: 1500, gid: 1501 };

    #[test]
    fn the_owner_identity_comes_first_then_run_as_and_never_root() {
        let run_as = Some(RUN_AS);
        assert_eq!(identity(Ok(Some(NOBODY)), run_as, Some(0)), Ok(Some(NOBODY)));
        let from_config = Some(OsIdentity { uid: 1500, gid: 1501 });
        assert_eq!(identity(Ok(None), run_as, Some(0)), Ok(from_config));
        // No identity: ferryd's own only when it is known not to be root.
        assert_eq!(identity(Ok(None), None, Some(1000)), Ok(None));
        assert_eq!(identity(Ok(None), None, Some(0)), Err(NotRun::NoIdentity));
        assert_eq!(identity(Ok(None), None, None), Err(NotRun::NoIdentity), "unknown: root");
        // Root never, whoever asks.
        let root = Some(OsIdentity { uid: 0, gid: 0 });
        assert_eq!(identity(Ok(root), run_as, Some(0)), Err(NotRun::Root { uid: 0, gid: 0 }));
        let root_group = Some(OsIdentity { uid: 1000, gid: 0 });
        let refused = identity(Ok(root_group), None, Some(1000));
        assert_eq!(refused, Err(NotRun::Root { uid: 1000, gid: 0 }));
        let conflicting = identity(Err(ConflictingIdentity), run_as, Some(0));
        assert_eq!(conflicting, Err(NotRun::ConflictingIdentity));
    }

    #[test]
    fn owners_come_from_the_token_table() {
        let mut alice = TokenEntry::new("alice-token-0123456789", "alice", Role::User);
        alice.uid = Some(1200);
        let mut alice2 = alice.clone();
        alice2.token = "alice-token-2-0123456789".into();
        let admin = TokenEntry::new("admin-token-0123456789", "root", Role::Admin);
        let owners = Owners::new(&[alice.clone(), alice2.clone(), admin]);
        let a = owners.get("alice");
        assert_eq!(a.role, Role::User);
        assert_eq!(a.identity, Ok(Some(OsIdentity { uid: 1200, gid: 1200 })));
        assert_eq!(owners.get("root").role, Role::Admin);
        // Unknown principals are users without an identity; "admin" is only the
        // generated admin when no token is configured.
        assert_eq!(owners.get("admin"), Owner { role: Role::User, identity: Ok(None) });
        assert_eq!(Owners::new(&[]).get("admin").role, Role::Admin);

        alice2.uid = Some(1300);
        let conflicting = Owners::new(&[alice, alice2]).get("alice").identity;
        assert_eq!(conflicting, Err(ConflictingIdentity));
    }

    #[test]
    fn the_effective_uid_is_read() {
        assert!(effective_uid().is_some());
    }

    #[tokio::test]
    async fn only_the_head_of_the_output_is_kept() {
        let long = vec![b'x'; 1_000_000];
        assert_eq!(head(Some(&long[..])).await.len(), MAX_LOGGED_OUTPUT);
        assert_eq!(head(Some(&b"ok\n"[..])).await, b"ok\n");
        assert!(head(None::<&[u8]>).await.is_empty());
    }
}
