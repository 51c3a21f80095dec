//! The `ferry` CLI's habits against a real node: exit codes by kind of failure, one
//! JSON object per command (errors included), `-o yaml`/`-o wide`, `ferry job get`,
//! `ferry job cancel --all`, `ferry job list --watch`, the client config file, the one
//! line said when no node answers, offline commands, a password prompt that does not
//! echo, and `ferry transfer`'s `--no-wait`, signals and quiet progress when piped.

use std::process::Stdio;
use std::time::{Duration, Instant};

use ferry_protocol::JobState;
use ferry_protocol::api::JobInfo;
use ferry_tests::origin::{Content, Knobs, Origin, OriginConfig};
use ferry_tests::{Node, NodeOptions, binary, ferry, tokens};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::process::Command;

const KIB: u64 = 1024;

/// A port on 127.0.0.1 that nothing listens on.
fn dead_url() -> anyhow::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", listener.local_addr()?);
    drop(listener);
    Ok(url)
}

/// `ferry` with no node, token or config from the environment: only `args` and `env`.
async fn bare_ferry(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<(i32, String, String)> {
    let mut command = Command::new(binary("ferry")?);
    command
        .args(args)
        .env_remove("FERRY_NODE")
        .env_remove("FERRY_TOKEN")
        .env_remove("FERRY_TOKEN_FILE")
        .env_remove("FERRY_CA")
        .env_remove("FERRY_CONFIG")
        .env("FERRY_DATA_DIR", "/nonexistent/ferry-data")
        .env("XDG_CONFIG_HOME", "/nonexistent/xdg")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    let output = tokio::time::timeout(Duration::from_secs(60), command.output()).await??;
    Ok((
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// The `error` object of a JSON failure on stdout.
fn json_error(stdout: &str) -> anyhow::Result<Value> {
    let value: Value = serde_json::from_str(stdout)?;
    anyhow::ensure!(value["error"].is_object(), "no error object: {stdout}");
    Ok(value["error"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_json_errors_getters_and_formats() -> anyhow::Result<()> {
    let node = Node::start(NodeOptions::queue_only()).await?;
    let run = |args: &'static [&'static str]| ferry(&node, tokens::ALICE, args);
    let (code, _, err) = run(&["job", "create", "habits", "--priority", "high"]).await?;
    assert_eq!(code, 0, "{err}");

    // `ferry job get`: bare values, and one object with --json.
    let (code, out, err) = run(&["job", "get", "habits", "state"]).await?;
    assert_eq!((code, out.as_str()), (0, "SUSPENDED\n"), "{err}");
    let (_, out, _) = run(&["job", "get", "habits", "priority"]).await?;
    assert_eq!(out, "HIGH\n");
    let (_, out, _) = run(&["--json", "job", "get", "habits", "bytes-transferred"]).await?;
    assert_eq!(serde_json::from_str::<Value>(&out)?, serde_json::json!({"bytes-transferred": 0}));

    // Human durations; a retry delay under BITS's minimum is refused, naming it.
    let (code, _, err) = run(&["job", "set", "habits", "--min-retry-delay", "1"]).await?;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("minimum retry delay of 5 s"), "{err}");
    let (code, _, err) =
        run(&["job", "set", "habits", "--min-retry-delay", "5m", "--no-progress-timeout", "1h30m"])
            .await?;
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = run(&["job", "get", "habits", "min-retry-delay"]).await?;
    assert_eq!(out, "300\n");
    let (_, out, _) = run(&["job", "get", "habits", "no-progress-timeout"]).await?;
    assert_eq!(out, "5400\n");

    // Exit codes: not found 3, access denied 4, usage 2; JSON errors on stdout.
    let missing = ferry_protocol::JobId::generate().to_string();
    let (code, _, err) = ferry(&node, tokens::ALICE, &["job", "info", &missing]).await?;
    assert_eq!(code, 3, "{err}");
    let (code, out, _) = ferry(&node, tokens::ALICE, &["--json", "job", "info", &missing]).await?;
    assert_eq!(code, 3);
    let error = json_error(&out)?;
    assert_eq!(
        (error["title"].as_str(), error["exit_code"].as_u64()),
        (Some("BG_E_NOT_FOUND"), Some(3))
    );
    let (code, out, _) = run(&["--json", "job", "info", "no-such-name"]).await?;
    assert_eq!(code, 3, "an unknown display name is not found too");
    assert_eq!(json_error(&out)?["title"], "not found");
    let (code, _, err) = ferry(&node, "wrong-token-wrong-token", &["job", "list"]).await?;
    assert_eq!(code, 4, "{err}");
    let (code, _, _) = run(&["job", "frobnicate"]).await?;
    assert_eq!(code, 2);
    let (code, out, _) = run(&["--json", "job", "frobnicate"]).await?;
    assert_eq!(code, 2);
    assert_eq!(json_error(&out)?["title"], "usage");

    // Every command prints one object: lists are named, -o yaml and -o wide work.
    let (_, out, _) = run(&["--json", "cluster", "members"]).await?;
    let members: Value = serde_json::from_str(&out)?;
    assert!(members["members"].is_array(), "{out}");
    let (_, out, _) = run(&["-o", "json", "job", "list"]).await?;
    let jobs: Value = serde_json::from_str(&out)?;
    assert_eq!(jobs["jobs"].as_array().map(Vec::len), Some(1), "{out}");
    let (code, out, _) = run(&["-o", "yaml", "job", "info", "habits"]).await?;
    assert!(code == 0 && out.contains("display_name: \"habits\""), "{out}");
    let (_, out, _) = run(&["-o", "wide", "job", "list"]).await?;
    assert!(out.contains("HOME NODE"), "{out}");

    // `ferry job cancel --all` (bitsadmin /reset): the caller's jobs only; every user's
    // for administrators.
    for name in ["r1", "r2"] {
        ferry(&node, tokens::ALICE, &["job", "create", name]).await?;
    }
    let (code, _, err) = ferry(&node, tokens::BOB, &["job", "create", "bobs"]).await?;
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(&["--json", "job", "cancel", "--all"]).await?;
    assert_eq!(code, 0, "{err}");
    let cancelled: Value = serde_json::from_str(&out)?;
    assert_eq!(cancelled["cancelled"].as_array().map(Vec::len), Some(3), "{out}");
    let (_, out, _) = run(&["job", "list"]).await?;
    assert!(out.contains("No jobs"), "{out}");
    let (_, out, _) = ferry(&node, tokens::BOB, &["job", "list"]).await?;
    assert!(out.contains("bobs"), "bob's job is not alice's to cancel: {out}");
    let (code, _, _) = run(&["job", "cancel", "--all", "--all-users"]).await?;
    assert_eq!(code, 4, "only administrators cancel every user's jobs");
    let (code, out, err) =
        ferry(&node, tokens::ADMIN, &["job", "cancel", "--all", "--all-users"]).await?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("1 job(s) cancelled"), "{out}");
    let (code, _, _) = run(&["job", "cancel"]).await?;
    assert_eq!(code, 2, "cancel needs a job or --all");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_list_watch_refreshes_until_terminated() -> anyhow::Result<()> {
    let node = Node::start(NodeOptions::queue_only()).await?;
    ferry(&node, tokens::ALICE, &["job", "create", "watched"]).await?;
    let mut child = Command::new(binary("ferry")?)
        .args(["--json", "job", "list", "--watch", "--interval", "1s"])
        .env("FERRY_NODE", node.url()?)
        .env("FERRY_TOKEN", tokens::ALICE)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let started = Instant::now();
    let mut text = String::new();
    while text.lines().count() < 3 {
        let mut buffer = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), stdout.read(&mut buffer)).await??;
        anyhow::ensure!(n > 0, "ferry job list --watch ended: {text}");
        text.push_str(&String::from_utf8_lossy(&buffer[..n]));
    }
    let took = started.elapsed();
    for line in text.lines().take(3) {
        let list: Value = serde_json::from_str(line)?;
        assert_eq!(list["jobs"][0]["display_name"], "watched", "{line}");
    }
    assert!(took >= Duration::from_millis(1800), "3 refreshes 1 s apart took {took:?}");
    let pid = child.id().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status()?;
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await??;
    assert!(status.success(), "SIGTERM ends the watch cleanly: {status:?}");
    let (code, _, err) =
        ferry(&node, tokens::ALICE, &["job", "list", "--watch", "--interval", "100ms"]).await?;
    assert_eq!(code, 2, "the interval is bounded: {err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_file_offline_commands_and_the_unreachable_line() -> anyhow::Result<()> {
    let node = Node::start(NodeOptions::queue_only()).await?;
    let dir = tempfile::tempdir()?;
    let xdg = dir.path().join("xdg");
    std::fs::create_dir_all(xdg.join("ferry"))?;
    let token_file = dir.path().join("alice.token");
    std::fs::write(&token_file, format!("{}\n", tokens::ALICE))?;
    let config = xdg.join("ferry").join("config.toml");
    std::fs::write(
        &config,
        format!("node = {:?}\ntoken_file = {:?}\n", node.url()?, token_file.display().to_string()),
    )?;
    let xdg_arg = xdg.to_string_lossy().into_owned();
    let env = [("XDG_CONFIG_HOME", xdg_arg.as_str())];

    // The config file names the node and the token.
    let (code, out, err) = bare_ferry(&["job", "create", "configured"], &env).await?;
    assert_eq!(code, 0, "{out}{err}");
    let alice = node.client(Some(tokens::ALICE))?;
    assert_eq!(alice.list_jobs(false).await?.len(), 1, "created as alice");

    // A flag overrides it; no node there: one line and a hint, exit 5, quickly.
    let dead = dead_url()?;
    let started = Instant::now();
    let (code, _, err) = bare_ferry(&["--node", &dead, "job", "list"], &env).await?;
    let took = started.elapsed();
    assert_eq!(code, 5, "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "one line and a hint: {err}");
    assert_eq!(
        lines[0],
        format!("ferry: no node answers at {dead} (from --node): connection refused")
    );
    assert!(lines[1].starts_with("hint:") && lines[1].contains("FERRY_NODE"), "{err}");
    assert!(lines[1].contains(&config.display().to_string()) && lines[1].contains("ferryd"));
    assert!(took < Duration::from_secs(5), "a node that never answered fails fast: {took:?}");
    println!("ferry against a dead address: {took:?}, stderr:\n{err}");

    // A dead node named by the config file is named as such.
    std::fs::write(&config, format!("node = {dead:?}\n"))?;
    let (code, out, err) = bare_ferry(&["--json", "job", "list"], &env).await?;
    assert_eq!(code, 5);
    assert!(err.contains(&format!("from {}", config.display())), "{err}");
    assert_eq!(json_error(&out)?["title"], "unreachable");

    // Offline: error codes, completions and the man page need no node.
    let (code, out, err) = bare_ferry(&["error", "describe", "0x80200013"], &env).await?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("BG_E_INSUFFICIENT_RANGE_SUPPORT") && out.contains("--dynamic"), "{out}");
    let (code, _, _) = bare_ferry(&["error", "describe", "0x80209999"], &env).await?;
    assert_eq!(code, 3);
    let (code, out, _) = bare_ferry(&["completions", "bash"], &env).await?;
    assert!(code == 0 && out.contains("take-ownership"), "{out}");
    let (code, out, _) = bare_ferry(&["man"], &env).await?;
    assert!(code == 0 && out.contains(".TH ferry") && out.contains("Exit codes"));

    // A broken config file is said so, with its name.
    std::fs::write(&config, "nodes = 1\n")?;
    let (code, _, err) = bare_ferry(&["job", "list"], &env).await?;
    assert_ne!(code, 0);
    assert!(err.contains(&config.display().to_string()), "{err}");
    Ok(())
}

/// `ferry job credentials set` on a terminal (script(1)), for a fresh job of Alice's,
/// with `after` run on the same terminal once ferry ends; returns once the prompt is
/// up and the terminal no longer echoes (`None` without script(1)).
async fn password_prompt(after: &str) -> anyhow::Result<Option<Prompt>> {
    if std::process::Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: script(1) is not installed");
        return Ok(None);
    }
    let node = Node::start(NodeOptions::queue_only()).await?;
    let (_, out, _) = ferry(&node, tokens::ALICE, &["--json", "job", "create", "secret"]).await?;
    let job: JobInfo = serde_json::from_str(&out)?;
    let line = format!(
        "{} job credentials set {} --target server --scheme basic --user u; {after}",
        binary("ferry")?.display(),
        job.id
    );
    // script(1) gives ferry a terminal; what the terminal shows comes back on stdout.
    let mut child = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env("FERRY_NODE", node.url()?)
        .env("FERRY_TOKEN", tokens::ALICE)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdin = child.stdin.take().ok_or_else(|| anyhow::anyhow!("no stdin"))?;
    let mut stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut shown = String::new();
    while !shown.contains("Password:") {
        let mut buffer = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(20), stdout.read(&mut buffer)).await??;
        anyhow::ensure!(n > 0, "no prompt: {shown}");
        shown.push_str(&String::from_utf8_lossy(&buffer[..n]));
    }
    // Echo goes off before the prompt is written: it is off by now.
    let tty = terminal_of(&job.id.to_string())
        .ok_or_else(|| anyhow::anyhow!("ferry has no terminal: {shown}"))?;
    let out = Command::new("stty").arg("-F").arg(&tty).arg("-a").output().await?;
    let settings = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(
        settings.split_whitespace().any(|flag| flag == "-echo"),
        "the terminal echoes at the prompt: {settings}"
    );
    Ok(Some(Prompt { node, job, child, stdin, stdout, shown }))
}

/// A password prompt waiting on a terminal.
struct Prompt {
    node: Node,
    job: JobInfo,
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::process::ChildStdout,
    /// What the terminal showed so far.
    shown: String,
}

impl Prompt {
    /// Types `keys`; everything the terminal shows until the session ends.
    async fn type_keys(mut self, keys: &str) -> anyhow::Result<(Self, String)> {
        self.stdin.write_all(keys.as_bytes()).await?;
        self.stdin.flush().await?;
        let mut rest = String::new();
        tokio::time::timeout(Duration::from_secs(30), self.stdout.read_to_string(&mut rest))
            .await??;
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await??;
        anyhow::ensure!(status.success(), "{}{rest}", self.shown);
        let shown = format!("{}{rest}", self.shown);
        Ok((self, shown))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_prompt_does_not_echo() -> anyhow::Result<()> {
    const PASSWORD: &str = "n0-echo-pa55word";
    let Some(prompt) = password_prompt("echo \"status=$?\"").await? else { return Ok(()) };
    let (prompt, shown) = prompt.type_keys(&format!("{PASSWORD}\r")).await?;
    assert!(shown.contains("status=0"), "{shown}");
    assert!(!shown.contains(PASSWORD), "the password was echoed: {shown:?}");
    assert!(shown.contains("Credentials set"), "{shown}");
    let alice = prompt.node.client(Some(tokens::ALICE))?;
    assert_eq!(alice.job(prompt.job.id).await?.credentials.len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_at_the_password_prompt_gives_the_terminal_back() -> anyhow::Result<()> {
    let Some(prompt) = password_prompt("echo \"status=$?\"; stty -a").await? else {
        return Ok(());
    };
    let (prompt, shown) = prompt.type_keys("half-typed\x03").await?;
    // Killed by SIGINT, as without the prompt; the shell after it finds echo on.
    assert!(shown.contains("status=130"), "{shown}");
    let settings = shown.rsplit("status=").next().unwrap_or_default();
    assert!(settings.split_whitespace().any(|flag| flag == "echo"), "{shown}");
    assert!(settings.split_whitespace().any(|flag| flag == "icanon"), "{shown}");
    assert!(!shown.contains("half-typed"), "{shown}");
    let alice = prompt.node.client(Some(tokens::ALICE))?;
    assert!(alice.job(prompt.job.id).await?.credentials.is_empty());
    Ok(())
}

/// The terminal on the standard input of the process whose command line names `marker`.
fn terminal_of(marker: &str) -> Option<std::path::PathBuf> {
    let processes = std::fs::read_dir("/proc").ok()?;
    processes.flatten().find_map(|entry| {
        let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
        let named = String::from_utf8_lossy(&cmdline).contains(marker);
        let tty = std::fs::read_link(entry.path().join("fd/0")).ok()?;
        (named && tty.starts_with("/dev/pts")).then_some(tty)
    })
}

/// A node and an origin serving `/slow.bin` (`len` bytes) at `rate` bytes/s per
/// connection.
async fn slow_origin(len: u64, rate: u64) -> anyhow::Result<(Node, Origin)> {
    let origin = Origin::start(OriginConfig::default()).await?;
    origin.add_file("/slow.bin", Content::Pattern { seed: 19, len });
    origin.set_knobs(Knobs { rate_limit_per_connection: Some(rate), ..Knobs::default() });
    let node = crate::support::transfer_node("connections = 1").await?;
    Ok((node, origin))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_signals_cancel_and_no_wait_returns_the_id() -> anyhow::Result<()> {
    let (node, origin) = slow_origin(16 * 1024 * KIB, 256 * KIB).await?;
    let alice = node.client(Some(tokens::ALICE))?;
    let out = tempfile::tempdir()?;
    let url = origin.url("/slow.bin");
    for signal in ["TERM", "HUP"] {
        let local = out.path().join(format!("slow-{signal}.bin"));
        let child = Command::new(binary("ferry")?)
            .args(["transfer", "--connections", "1", &url, &local.to_string_lossy()])
            .env("FERRY_NODE", node.url()?)
            .env("FERRY_TOKEN", tokens::ALICE)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        // Wait until the job transfers, then signal the CLI.
        let deadline = Instant::now() + Duration::from_secs(30);
        let id = loop {
            let jobs = alice.list_jobs(false).await?;
            if let Some(job) = jobs.iter().find(|j| j.progress.bytes_transferred > 0) {
                break job.id;
            }
            anyhow::ensure!(Instant::now() < deadline, "no transfer started\n{}", node.log_tail());
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let pid = child.id().ok_or_else(|| anyhow::anyhow!("no pid"))?;
        std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()?;
        let output =
            tokio::time::timeout(Duration::from_secs(30), child.wait_with_output()).await??;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(&format!("interrupted by SIG{signal}")), "{stderr}");
        assert_eq!(alice.job(id).await?.state, JobState::Cancelled, "SIG{signal} cancels the job");
    }

    // --no-wait: the id on stdout, the job left running.
    let local = out.path().join("nowait.bin");
    let started = Instant::now();
    let (code, stdout, stderr) =
        ferry(&node, tokens::ALICE, &["transfer", "--no-wait", &url, &local.to_string_lossy()])
            .await?;
    assert_eq!(code, 0, "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let id: ferry_protocol::JobId = stdout.trim().parse()?;
    let state = alice.job(id).await?.state;
    assert!(
        matches!(state, JobState::Queued | JobState::Connecting | JobState::Transferring),
        "{state:?}"
    );
    let (code, _, _) = ferry(&node, tokens::ALICE, &["job", "cancel", &id.to_string()]).await?;
    assert_eq!(code, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piped_progress_is_a_line_per_ten_seconds_and_one_at_the_end() -> anyhow::Result<()> {
    // About 12 s at 256 KiB/s on one connection.
    let (node, origin) = slow_origin(3 * 1024 * KIB, 256 * KIB).await?;
    let out = tempfile::tempdir()?;
    let local = out.path().join("slow.bin").to_string_lossy().into_owned();
    let url = origin.url("/slow.bin");
    let started = Instant::now();
    let (code, stdout, stderr) =
        ferry(&node, tokens::ALICE, &["transfer", "--connections", "1", &url, &local]).await?;
    let took = started.elapsed();
    assert_eq!(code, 0, "{stdout}\n{stderr}\n{}", node.log_tail());
    assert!(stdout.contains("Transfer complete"), "{stdout}");
    let progress: Vec<&str> = stderr.lines().filter(|l| l.contains("/s")).collect();
    println!("a {took:?} piped transfer printed {} progress line(s):\n{stderr}", progress.len());
    assert!(took > Duration::from_secs(10), "the download must outlast one period: {took:?}");
    // One line at the start, one per 10 s, one at the end: 3 for a 12 s transfer.
    let most = took.as_secs() / 10 + 2;
    assert!(!progress.is_empty() && progress.len() as u64 <= most, "{stderr}");
    assert!(progress.last().is_some_and(|l| l.contains("3.0 MiB / 3.0 MiB")), "{stderr}");
    Ok(())
}
