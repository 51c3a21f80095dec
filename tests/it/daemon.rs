//! `ferryd` as a program: flags without a config file, `--print-config`, and clear
//! failures for bad configurations and a data directory already in use.

use std::process::Stdio;
use std::time::{Duration, Instant};

use ferry_tests::{Node, NodeOptions, binary};
use tokio::process::Command;

async fn run_to_end(args: &[&str]) -> anyhow::Result<(i32, String)> {
    run_with_env(args, &[]).await
}

/// Runs ferryd with `args` and the environment variables `env` (beside the inherited
/// ones) to its end: its exit code and what it printed.
async fn run_with_env(args: &[&str], env: &[(&str, String)]) -> anyhow::Result<(i32, String)> {
    let output = tokio::time::timeout(
        Duration::from_secs(20),
        Command::new(binary("ferryd")?)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output(),
    )
    .await??;
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    Ok((output.status.code().unwrap_or(-1), text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_alone_start_a_node() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("d");
    let mut child = Command::new(binary("ferryd")?)
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = loop {
        if let Ok(text) = std::fs::read_to_string(data.join("api.addr")) {
            break text.trim().to_owned();
        }
        anyhow::ensure!(Instant::now() < deadline, "ferryd did not write api.addr");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let token = std::fs::read_to_string(data.join("admin.token"))?;
    let client =
        ferry_coordinator::Client::new(&format!("http://{addr}"), Some(token.trim().into()))?;
    let mut healthy = false;
    while !healthy && Instant::now() < deadline {
        healthy = client.health().await.is_ok_and(|h| h.status == "ok");
    }
    assert!(healthy);
    assert_eq!(client.cluster().await?.members.len(), 1);
    // The queue and the token are private to the node's user.
    use std::os::unix::fs::PermissionsExt;
    for (name, mode) in
        [("", 0o700), ("raft-log.redb", 0o600), ("state.redb", 0o600), ("admin.token", 0o600)]
    {
        let path = if name.is_empty() { data.clone() } else { data.join(name) };
        assert_eq!(
            std::fs::metadata(&path)?.permissions().mode() & 0o777,
            mode,
            "{}",
            path.display()
        );
    }
    child.start_kill()?;
    Ok(())
}

#[tokio::test]
async fn print_config_shows_the_effective_configuration() -> anyhow::Result<()> {
    let (code, out) = run_to_end(&["--print-config", "--listen", "127.0.0.9:7999"]).await?;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("listen = \"127.0.0.9:7999\"") && out.contains("[policy]"), "{out}");
    // Tokens from a config file are not printed.
    let tmp = tempfile::tempdir()?;
    let config = tmp.path().join("ferryd.toml");
    std::fs::write(
        &config,
        "[[api.tokens]]\ntoken = \"very-secret-token-value\"\nprincipal = \"ops\"\nrole = \"admin\"\n",
    )?;
    let (code, out) =
        run_to_end(&["--print-config", "--config", config.to_str().unwrap_or_default()]).await?;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ops") && !out.contains("very-secret-token-value"), "{out}");
    Ok(())
}

#[tokio::test]
async fn bad_configurations_are_refused_with_the_reason() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let config = tmp.path().join("ferryd.toml");
    std::fs::write(&config, "[api]\nlisten_on = \"127.0.0.1:1\"\n")?;
    let (code, out) = run_to_end(&["--config", config.to_str().unwrap_or_default()]).await?;
    assert_eq!(code, 1);
    assert!(out.contains("listen_on"), "names the unknown field: {out}");

    let (code, out) = run_to_end(&[
        "--listen",
        "0.0.0.0:0",
        "--data-dir",
        tmp.path().to_str().unwrap_or_default(),
    ])
    .await?;
    assert_eq!(code, 1);
    assert!(out.contains("loopback"), "without tokens only loopback is allowed: {out}");

    let (code, out) = run_to_end(&["--config", "/nonexistent/ferryd.toml"]).await?;
    assert_eq!(code, 1);
    assert!(out.contains("cannot read config file"), "{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_serves_one_node_at_a_time() -> anyhow::Result<()> {
    let node = Node::start(NodeOptions::queue_only()).await?;
    let data = node.data_dir();
    let (code, out) =
        run_to_end(&["--data-dir", data.to_str().unwrap_or_default(), "--listen", "127.0.0.1:0"])
            .await?;
    assert_eq!(code, 1);
    assert!(out.contains("another ferryd"), "{out}");
    assert!(!data.join("admin.token").exists(), "the refused node wrote nothing there");
    // The first node is unharmed.
    assert_eq!(node.client(None)?.health().await?.status, "ok");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_names_the_commit_and_the_build_date() -> anyhow::Result<()> {
    // The commit the binaries were built from, where this is a git checkout.
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    for program in ["ferryd", "ferry"] {
        let output = Command::new(binary(program)?).arg("--version").output().await?;
        assert!(output.status.success(), "{program} --version failed");
        let text = String::from_utf8_lossy(&output.stdout).trim().to_string();
        let rest = text
            .strip_prefix(&format!("{program} {} (commit ", env!("CARGO_PKG_VERSION")))
            .ok_or_else(|| anyhow::anyhow!("{program} --version printed {text:?}"))?;
        let (commit, date) = rest
            .strip_suffix(')')
            .and_then(|r| r.split_once(", built "))
            .ok_or_else(|| anyhow::anyhow!("{program} --version printed {text:?}"))?;
        match &head {
            Some(head) => assert_eq!(commit, head, "{program} names the commit built"),
            None => assert!(!commit.is_empty(), "{program}: {text}"),
        }
        let fields: Vec<&str> = date.split('-').collect();
        assert!(
            fields.len() == 3
                && [4, 2, 2]
                    .iter()
                    .zip(&fields)
                    .all(|(n, f)| { f.len() == *n && f.chars().all(|c| c.is_ascii_digit()) }),
            "{program}: the build date {date:?} is not YYYY-MM-DD"
        );
        let year: u32 = fields[0].parse()?;
        assert!((2026..2100).contains(&year), "{program}: build year {year}");
    }
    Ok(())
}

/// Waits up to 30 s for a datagram on `socket` (ferryd's `sd_notify` messages).
async fn next_notice(socket: &std::os::unix::net::UnixDatagram) -> anyhow::Result<String> {
    let socket = socket.try_clone()?;
    socket.set_read_timeout(Some(Duration::from_secs(30)))?;
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; 4096];
        let n = socket.recv(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_variables_alone_start_a_node_that_tells_systemd_when_it_serves()
-> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    let token_file = tmp.path().join("svc.token");
    std::fs::write(&token_file, "svc-token-from-a-mounted-secret\n")?;
    let socket_path = tmp.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path)?;
    let env = [
        ("FERRYD_DATA_DIR", data.display().to_string()),
        ("FERRYD_API__LISTEN", "127.0.0.1:0".to_string()),
        ("FERRYD_PEER__LISTEN", "127.0.0.1:0".to_string()),
        (
            "FERRYD_API__TOKENS",
            format!(
                "[{{ token_file = \"{}\", principal = \"svc\", role = \"admin\" }}]",
                token_file.display()
            ),
        ),
        ("FERRYD_RAFT__HEARTBEAT_MS", "100ms".to_string()),
        ("FERRYD_EVENTS__HISTORY_MAX_AGE_SECS", "2d".to_string()),
    ];
    // check-config sees what ferryd would run with, the secret left out.
    let (code, out) = run_with_env(&["check-config"], &env).await?;
    assert_eq!(code, 0, "{out}");
    for line in ["heartbeat_ms = 100", "history_max_age_secs = 172800", "principal = \"svc\""] {
        assert!(out.contains(line), "check-config shows {line}: {out}");
    }
    assert!(!out.contains("svc-token-from"), "check-config printed the secret: {out}");

    // No config file, no flags: the variables alone.
    let mut child = Command::new(binary("ferryd")?)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("NOTIFY_SOCKET", &socket_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let ready = next_notice(&socket).await?;
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    let pid = child.id().unwrap_or_default();
    assert!(ready.lines().any(|l| l == format!("MAINPID={pid}")), "{ready}");
    // Ready means serving, with the token from the file.
    let addr = std::fs::read_to_string(data.join("api.addr"))?;
    let client = ferry_coordinator::Client::new(
        &format!("http://{}", addr.trim()),
        Some("svc-token-from-a-mounted-secret".into()),
    )?;
    assert_eq!(client.cluster().await?.members.len(), 1);
    assert!(!data.join("admin.token").exists(), "a configured token means no generated one");

    let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status()?;
    assert!(status.success());
    let stopping = next_notice(&socket).await?;
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping}");
    let exit = tokio::time::timeout(Duration::from_secs(20), child.wait()).await??;
    assert!(exit.success(), "{exit}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_refuses_what_ferryd_refuses_and_names_the_cause() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = ("FERRYD_DATA_DIR", tmp.path().join("data").display().to_string());
    let junk = tmp.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate")?;
    let missing = tmp.path().join("missing.token");
    let tokens = |file: &std::path::Path| {
        format!("[{{ token_file = \"{}\", principal = \"svc\", role = \"user\" }}]", file.display())
    };
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        (vec![("FERRYD_RAFT__HEARTBEAT_MS", "abc".into())], "FERRYD_RAFT__HEARTBEAT_MS"),
        (vec![("FERRYD_NOPE", "1".into())], "unknown field `nope`"),
        (vec![("FERRYD_API__TOKENS", tokens(&missing))], "missing.token"),
        (vec![("FERRYD_API__LISTEN", "0.0.0.0:0".into())], "loopback"),
        (vec![("FERRYD_EVENTS__HISTORY_MAX_AGE_SECS", "5 minutes".into())], "unknown unit"),
        (
            vec![
                ("FERRYD_API__TOKENS", tokens(&junk)),
                ("FERRYD_API__TLS_CERT", junk.display().to_string()),
                ("FERRYD_API__TLS_KEY", junk.display().to_string()),
            ],
            "junk.pem",
        ),
    ];
    for (vars, cause) in cases {
        let mut env = vars.clone();
        env.push(data.clone());
        let (code, out) = run_with_env(&["check-config"], &env).await?;
        assert_eq!(code, 1, "check-config with {vars:?}: {out}");
        assert!(out.contains(cause), "check-config with {vars:?} names {cause}: {out}");
        // ferryd itself refuses the same, for the same reason.
        let (code, out) = run_with_env(&[], &env).await?;
        assert_eq!(code, 1, "ferryd with {vars:?}: {out}");
        assert!(out.contains(cause), "ferryd with {vars:?} names {cause}: {out}");
        assert!(!tmp.path().join("data").exists(), "a refused start left a data directory");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_systemd_unit_verifies_and_starts_ferryd_the_way_it_accepts() -> anyhow::Result<()> {
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let unit = std::fs::read_to_string(deploy.join("ferryd.service"))?;
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .ok_or_else(|| anyhow::anyhow!("no ExecStart"))?;
    assert!(unit.contains("Type=notify"), "ferryd signals readiness: Type=notify");
    // The command line, with the sample configuration: ferryd accepts it.
    let args: Vec<&str> = exec.split_whitespace().skip(1).collect();
    let sample = deploy.join("ferryd.toml").display().to_string();
    let args: Vec<&str> = args
        .iter()
        .map(|a| if *a == "/etc/ferry/ferryd.toml" { sample.as_str() } else { a })
        .collect();
    let (code, out) = run_to_end(&[args.as_slice(), &["check-config"]].concat()).await?;
    assert_eq!(code, 0, "{exec}: {out}");
    if std::process::Command::new("systemd-analyze").arg("--version").output().is_err() {
        println!("SKIPPED the unit check: systemd-analyze is missing");
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let local = tmp.path().join("ferryd.service");
    let ferryd = binary("ferryd")?;
    std::fs::write(&local, unit.replace("/usr/local/bin/ferryd", &ferryd.display().to_string()))?;
    let verified =
        std::process::Command::new("systemd-analyze").arg("verify").arg(&local).output()?;
    let said = String::from_utf8_lossy(&verified.stderr).into_owned()
        + &String::from_utf8_lossy(&verified.stdout);
    assert!(
        verified.status.success() && !said.contains("ferryd.service"),
        "systemd-analyze: {said}"
    );
    Ok(())
}

/// ferryd raises its soft limit on open files to the hard one: connections and the
/// files a download holds until their batch is synced are descriptors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_files_limit_is_raised_to_the_hard_one() -> anyhow::Result<()> {
    // Started with the soft limit lowered, as a login shell or systemd would give it.
    let tmp = tempfile::tempdir()?;
    let wrapper = tmp.path().join("ferryd");
    let ferryd = binary("ferryd")?;
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nulimit -Sn 256\nexec '{}' \"$@\"\n", ferryd.display()),
    )?;
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let options = NodeOptions { ferryd: Some(wrapper), ..NodeOptions::default() };
    let node = Node::start(options).await?;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", node.pid()?))?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"));
    let line = line.ok_or_else(|| anyhow::anyhow!("no open files line in:\n{limits}"))?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    // "Max open files  <soft>  <hard>  files"
    let [.., soft, hard, _] = fields[..] else { anyhow::bail!("unexpected line {line:?}") };
    assert_eq!(soft, hard, "the soft limit is not the hard one: {line}");
    Ok(())
}
