//! The notify command line: run on the home node once per entry into TRANSFERRED, also
//! when the node crashed between the commit and the run, and never twice; and no code
//! execution by users: only allowed programs, never as root, with a clean environment,
//! never after take-ownership.
//!
//! The tests run ferryd as the user running them. As root (as on CI), programs run as
//! `[notify] run_as` (nobody) or the owner's uid; the parts that need root print a notice
//! and are skipped otherwise.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_coordinator::ClientError;
use ferry_coordinator::TokenEntry;
use ferry_protocol::api::NewFleet;
use ferry_protocol::job::NotifyCmdLine;
use ferry_protocol::{
    BitsCode, JobAction, JobId, JobState, JobType, NewFile, PropertyChanges, Role,
};
use ferry_tests::origin::{Content, Origin, OriginConfig};
use ferry_tests::{Node, NodeOptions, default_tokens, ferry, tokens};

use crate::support::{new_job, wait_for};

/// The unprivileged identity programs run as when the tests run as root.
const NOBODY: u32 = 65534;

/// True when the tests (and so the ferryd they start) run as root.
fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|uids| uids.split_whitespace().nth(1).and_then(|uid| uid.parse::<u32>().ok()));
    euid == Some(0)
}

/// A temporary directory every user may write in: programs may run as nobody.
fn shared_dir() -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777))?;
    Ok(dir)
}

/// The `[notify]` table allowing `programs` to users; as root, run as nobody.
fn notify_config(programs: &[&Path], more: &str) -> String {
    let list: Vec<String> =
        programs.iter().map(|p| format!("{:?}", p.display().to_string())).collect();
    let run_as = if is_root() {
        format!("run_as = {{ uid = {NOBODY}, gid = {NOBODY} }}\n")
    } else {
        String::new()
    };
    format!("[notify]\nallowed_programs = [{}]\n{run_as}{more}", list.join(", "))
}

/// Writes an executable shell script `name` into `dir`.
fn script(dir: &Path, name: &str, body: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}"))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// A program that appends its arguments, one line per run, to `calls` beside it.
fn recorder(dir: &Path) -> anyhow::Result<PathBuf> {
    script(dir, "notify.sh", "echo \"$@\" >> \"$(dirname \"$0\")/calls\"\n")
}

/// A program that writes who it runs as and its whole environment to
/// `probe-<job>` beside it (all at once: the file appears complete).
fn prober(dir: &Path) -> anyhow::Result<PathBuf> {
    script(
        dir,
        "probe.sh",
        "out=\"$(dirname \"$0\")/probe-$FERRY_JOB_ID\"\n\
         { echo \"uid=$(id -u)\"; echo \"gid=$(id -g)\"; echo \"groups=$(id -G)\"; env; } > \"$out.tmp\"\n\
         mv \"$out.tmp\" \"$out\"\n",
    )
}

fn cmdline(program: &Path, args: Vec<String>) -> NotifyCmdLine {
    NotifyCmdLine { program: program.to_string_lossy().into_owned(), args }
}

/// The lines `recorder` wrote for `job`.
fn calls(dir: &Path, job: JobId) -> usize {
    let text = std::fs::read_to_string(dir.join("calls")).unwrap_or_default();
    text.lines().filter(|l| l.contains(&job.to_string())).count()
}

async fn wait_calls(dir: &Path, job: JobId, n: usize, node: &Node) -> anyhow::Result<()> {
    wait_until(node, "the notify program to run", || calls(dir, job) >= n).await
}

/// Polls `done` for up to 30 s.
async fn wait_until(node: &Node, what: &str, done: impl Fn() -> bool) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "waited 30 s for {what}:\n{}",
            node.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The node's log lines about `job` that contain `text`.
fn log_lines(node: &Node, job: JobId, text: &str) -> Vec<String> {
    let log = std::fs::read_to_string(node.log_path()).unwrap_or_default();
    let job = job.to_string();
    log.lines().filter(|l| l.contains(&job) && l.contains(text)).map(str::to_owned).collect()
}

/// What `prober` wrote for `job`, once it did.
async fn probe(node: &Node, dir: &Path, job: JobId) -> anyhow::Result<String> {
    let path = dir.join(format!("probe-{job}"));
    wait_until(node, "the probe program to run", || path.exists()).await?;
    Ok(std::fs::read_to_string(path)?)
}

/// Creates a download of `/f.bin` into `dir` owned by `token`'s principal, with the
/// notify command line `program` (its arguments: the job id and "transferred", set once
/// the id is known), and resumes it.
async fn notified_job(
    node: &Node,
    origin: &Origin,
    dir: &Path,
    token: &str,
    program: &Path,
) -> anyhow::Result<JobId> {
    let client = node.client(Some(token))?;
    let file = NewFile {
        remote_url: origin.url("/f.bin"),
        local_path: dir.join(format!("out-{}", JobId::generate())).to_string_lossy().into(),
        ranges: vec![],
        sha256: None,
    };
    let id = client.create_job(&new_job("notified", JobType::Download, vec![file])).await?.id;
    let cmdline = cmdline(program, vec![id.to_string(), "transferred".into()]);
    let changes = PropertyChanges { notify_cmdline: Some(Some(cmdline)), ..Default::default() };
    client.set_properties(id, &changes).await?;
    client.act(id, JobAction::Resume).await?;
    Ok(id)
}

async fn origin() -> anyhow::Result<Origin> {
    let origin = Origin::start(OriginConfig::default()).await?;
    origin.add_file("/f.bin", Content::Pattern { seed: 5, len: 100_000 });
    Ok(origin)
}

/// True if `result` is a 403 `E_ACCESSDENIED` naming `[notify] allowed_programs`.
fn refused_by_policy<T: std::fmt::Debug>(result: Result<T, ClientError>) -> bool {
    match result {
        Err(ClientError::Api(p)) => {
            p.status == 403
                && p.code == BitsCode::E_ACCESSDENIED
                && p.detail.contains("[notify] allowed_programs")
        }
        other => {
            eprintln!("not refused by the notify policy: {other:?}");
            false
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notify_program_runs_once_even_across_a_crash_between_commit_and_run()
-> anyhow::Result<()> {
    let origin = origin().await?;
    let dir = shared_dir()?;
    let program = recorder(dir.path())?;
    // The node waits 2 s before starting a notify program: room to crash it in between.
    let options = NodeOptions {
        extra_config: notify_config(&[&program], "start_delay_ms = 2000\n"),
        ..NodeOptions::default()
    };
    let mut node = Node::start(options).await?;
    let client = node.client(Some(tokens::ALICE))?;

    // Normal case: TRANSFERRED → the program runs once, and not again after a restart.
    let first = notified_job(&node, &origin, dir.path(), tokens::ALICE, &program).await?;
    wait_for(&node, &client, first, &[JobState::Transferred], Duration::from_secs(30)).await?;
    wait_calls(dir.path(), first, 1, &node).await?;

    // Crash case: kill -9 once TRANSFERRED is committed, before the program starts.
    let second = notified_job(&node, &origin, dir.path(), tokens::ALICE, &program).await?;
    wait_for(&node, &client, second, &[JobState::Transferred], Duration::from_secs(30)).await?;
    node.kill9().await?;
    assert_eq!(calls(dir.path(), second), 0, "the program ran before the kill");
    node.restart().await?;
    wait_calls(dir.path(), second, 1, &node).await?;

    // Nothing runs twice: not the first job's program after the restart, not the
    // second's once recorded.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!((calls(dir.path(), first), calls(dir.path(), second)), (1, 1));
    node.restart().await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!((calls(dir.path(), first), calls(dir.path(), second)), (1, 1));
    Ok(())
}

/// (a) A user naming a program that is not allowed is refused at the API (create,
/// set, fleet) and through the CLI; a program an admin set on the user's job is refused
/// again by the home node, and nothing runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_cannot_run_programs_that_are_not_allowed() -> anyhow::Result<()> {
    let origin = origin().await?;
    let dir = shared_dir()?;
    let allowed = recorder(dir.path())?;
    let options =
        NodeOptions { extra_config: notify_config(&[&allowed], ""), ..NodeOptions::default() };
    let node = Node::start(options).await?;
    let alice = node.client(Some(tokens::ALICE))?;
    let witness = dir.path().join("F");
    let shell = NotifyCmdLine {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), format!("id > {}", witness.display())],
    };
    let with_shell =
        PropertyChanges { notify_cmdline: Some(Some(shell.clone())), ..Default::default() };

    let file = NewFile {
        remote_url: origin.url("/f.bin"),
        local_path: dir.path().join("out").to_string_lossy().into(),
        ranges: vec![],
        sha256: None,
    };
    let mut spec = new_job("shell", JobType::Download, vec![file.clone()]);
    spec.properties = with_shell.clone();
    assert!(refused_by_policy(alice.create_job(&spec).await), "POST /v1/jobs");
    assert!(alice.list_jobs(false).await?.is_empty(), "no job was created");

    let id = alice.create_job(&new_job("plain", JobType::Download, vec![file.clone()])).await?.id;
    assert!(refused_by_policy(alice.set_properties(id, &with_shell).await), "PATCH");
    let fleet = NewFleet {
        remote_url: file.remote_url.clone(),
        local_path: dir.path().join("fleet-out").to_string_lossy().into(),
        nodes: vec![],
        display_name: None,
        properties: with_shell.clone(),
        credentials: vec![],
        sha256: None,
    };
    assert!(refused_by_policy(alice.create_fleet(&fleet).await), "POST /v1/fleets");

    let (code, _, err) = ferry(
        &node,
        tokens::ALICE,
        &["job", "set", &id.to_string(), "--notify-cmdline", "/bin/sh", "--notify-arg", "-c"],
    )
    .await?;
    assert_ne!(code, 0, "the CLI must fail");
    assert!(err.contains("E_ACCESSDENIED") && err.contains("allowed_programs"), "{err}");
    assert_eq!(alice.job(id).await?.properties.notify_cmdline, None);

    // An allowed program is accepted; clearing is always.
    let allowed_cmd = cmdline(&allowed, vec![]);
    let set = PropertyChanges { notify_cmdline: Some(Some(allowed_cmd)), ..Default::default() };
    alice.set_properties(id, &set).await?;
    let clear = PropertyChanges { notify_cmdline: Some(None), ..Default::default() };
    alice.set_properties(id, &clear).await?;

    // An administrator may set any program, but on a user's job the home node still
    // refuses what the user could not have set: the run fails with a log line.
    let admin = node.client(Some(tokens::ADMIN))?;
    admin.set_properties(id, &with_shell).await?;
    alice.act(id, JobAction::Resume).await?;
    wait_for(&node, &alice, id, &[JobState::Transferred], Duration::from_secs(30)).await?;
    wait_until(&node, "the refusal in the log", || {
        !log_lines(&node, id, "the notify program was not run").is_empty()
    })
    .await?;
    let lines = log_lines(&node, id, "the notify program was not run");
    assert!(lines[0].contains("allowed_programs"), "{lines:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!witness.exists(), "the shell ran");
    assert!(log_lines(&node, id, "ran the notify program").is_empty());
    Ok(())
}

/// (b) An allowed program runs as `run_as` (as root) with a clean environment: the
/// variables ferryd has (`RUST_LOG`, `HOME`, ...) are not passed on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_programs_run_unprivileged_with_a_clean_environment() -> anyhow::Result<()> {
    let origin = origin().await?;
    let dir = shared_dir()?;
    let program = prober(dir.path())?;
    let options =
        NodeOptions { extra_config: notify_config(&[&program], ""), ..NodeOptions::default() };
    let node = Node::start(options).await?;
    let id = notified_job(&node, &origin, dir.path(), tokens::ALICE, &program).await?;
    let seen = probe(&node, dir.path(), id).await?;

    if is_root() {
        let want = format!("uid={NOBODY}\ngid={NOBODY}\ngroups={NOBODY}\n");
        assert!(seen.starts_with(&want), "not run as nobody alone:\n{seen}");
    } else {
        eprintln!("notice: not root, so the program ran as this user; the run_as check is skipped");
    }
    let env: Vec<(&str, &str)> = seen.lines().skip(3).filter_map(|l| l.split_once('=')).collect();
    let get = |key: &str| env.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    assert_eq!(get("FERRY_JOB_ID"), Some(id.to_string().as_str()), "{seen}");
    assert_eq!(get("FERRY_JOB_STATE"), Some("TRANSFERRED"), "{seen}");
    assert_eq!(get("FERRY_JOB_OWNER"), Some("alice"), "{seen}");
    assert_eq!(get("PATH"), Some("/usr/local/bin:/usr/bin:/bin"), "{seen}");
    assert_eq!(get("RUST_LOG"), None, "ferryd's environment leaked:\n{seen}");
    // Only what ferryd sets, and what the shell itself adds.
    let expected = ["PATH", "FERRY_JOB_ID", "FERRY_JOB_STATE", "FERRY_JOB_OWNER", "PWD"];
    for (key, _) in &env {
        assert!(expected.contains(key), "unexpected variable {key}:\n{seen}");
    }
    Ok(())
}

/// (c) As root: with no `run_as` and no uid for the owner, an allowed program does not
/// run (the run fails, with a log line); an owner with a uid gets its program run as
/// that uid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_identity_a_root_ferryd_runs_nothing() -> anyhow::Result<()> {
    if !is_root() {
        eprintln!("notice: not root; skipping the test of a root ferryd without an identity");
        return Ok(());
    }
    const CAROL: &str = "carol-token-0123456789";
    let origin = origin().await?;
    let dir = shared_dir()?;
    let program = prober(dir.path())?;
    let mut carol = TokenEntry::new(CAROL, "carol", Role::User);
    carol.uid = Some(NOBODY);
    let list = format!("{:?}", program.display().to_string());
    let options = NodeOptions {
        tokens: default_tokens().into_iter().chain([carol]).collect(),
        extra_config: format!("[notify]\nallowed_programs = [{list}]\n"),
        ..NodeOptions::default()
    };
    let node = Node::start(options).await?;

    let alices = notified_job(&node, &origin, dir.path(), tokens::ALICE, &program).await?;
    wait_until(&node, "the refusal in the log", || {
        !log_lines(&node, alices, "the notify program was not run").is_empty()
    })
    .await?;
    let lines = log_lines(&node, alices, "the notify program was not run");
    assert!(lines[0].contains("run_as"), "{lines:?}");

    let carols = notified_job(&node, &origin, dir.path(), CAROL, &program).await?;
    let seen = probe(&node, dir.path(), carols).await?;
    assert!(seen.starts_with(&format!("uid={NOBODY}\ngid={NOBODY}\n")), "{seen}");
    assert!(!dir.path().join(format!("probe-{alices}")).exists(), "alice's program ran");
    assert!(log_lines(&node, alices, "ran the notify program").is_empty());
    Ok(())
}

/// (d) Take-ownership drops the command line and the run it is owed: the program,
/// waiting to start, never runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_runs_after_take_ownership() -> anyhow::Result<()> {
    let origin = origin().await?;
    let dir = shared_dir()?;
    let program = recorder(dir.path())?;
    // Programs start 3 s after the entry into TRANSFERRED: time to take the job over.
    let options = NodeOptions {
        extra_config: notify_config(&[&program], "start_delay_ms = 3000\n"),
        ..NodeOptions::default()
    };
    let node = Node::start(options).await?;
    let alice = node.client(Some(tokens::ALICE))?;
    let admin = node.client(Some(tokens::ADMIN))?;

    let id = notified_job(&node, &origin, dir.path(), tokens::ALICE, &program).await?;
    wait_for(&node, &alice, id, &[JobState::Transferred], Duration::from_secs(30)).await?;
    admin.act(id, JobAction::TakeOwnership).await?;
    let job = admin.job(id).await?;
    assert_eq!((job.owner.as_str(), job.properties.notify_cmdline), ("root", None));

    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(calls(dir.path(), id), 0, "the previous owner's program ran");
    assert!(log_lines(&node, id, "ran the notify program").is_empty());
    Ok(())
}

/// A program that outlives `[notify] timeout_secs` is killed with everything it
/// started (its process group), not only itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_program_is_killed_with_its_children() -> anyhow::Result<()> {
    let origin = origin().await?;
    let dir = shared_dir()?;
    // Starts a grandchild that would sleep for a minute, records its pid (all at
    // once: the shell creates a redirect's file before it writes), then waits.
    let program = script(
        dir.path(),
        "lingers.sh",
        "out=\"$(dirname \"$0\")/child-$2\"\nsleep 60 &\necho $! > \"$out.tmp\"\n\
         mv \"$out.tmp\" \"$out\"\nwait\n",
    )?;
    let options = NodeOptions {
        extra_config: notify_config(&[&program], "timeout_secs = 1\n"),
        ..NodeOptions::default()
    };
    let node = Node::start(options).await?;
    let id = notified_job(&node, &origin, dir.path(), tokens::ALICE, &program).await?;
    let pid_file = dir.path().join("child-transferred");
    wait_until(&node, "the program to start its child", || pid_file.exists()).await?;
    let pid: u32 = std::fs::read_to_string(&pid_file)?.trim().parse()?;
    let alive = || Path::new(&format!("/proc/{pid}")).exists();
    wait_until(&node, "the timeout to kill the child", || !alive()).await?;
    // The node logs the timeout after the kill, so the line may come a moment later.
    let logged = || !log_lines(&node, id, "timed out").is_empty();
    wait_until(&node, "the timeout to be logged", logged).await?;
    Ok(())
}
