//! Benchmark clients as child processes: finding a program, timing a run with a
//! deadline (killed when it passes), summarising its output when it fails, and a
//! process's peak resident memory. Nothing here knows which client it runs.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::process::Command;

/// Proxy settings that would send loopback requests elsewhere; removed from every
/// client's environment.
const PROXY_VARS: [&str; 8] = [
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
];

/// Longest failure summary kept from a client's output, in characters.
const SUMMARY_CHARS: usize = 160;

/// The `ferry` CLI aimed at `node` with the admin token; arguments follow.
pub(crate) fn ferry_cli(node: &ferry_tests::Node) -> anyhow::Result<Command> {
    let mut command = Command::new(ferry_tests::binary("ferry")?);
    command.arg("--node").arg(node.url()?).arg("--token").arg(ferry_tests::tokens::ADMIN);
    Ok(command)
}

/// The first `name` on `$PATH`, if any.
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file())
}

/// Runs `command` to completion and returns its wall time, from spawn to exit.
///
/// Its stdout and stderr go to `log` (overwritten). It is killed if it runs longer than
/// `timeout`. A non-zero exit is an error carrying the status and the most telling line
/// of its output.
pub(crate) async fn run_timed(
    command: Command,
    log: &Path,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    run_timed_from(command, Stdio::null(), log, timeout).await
}

/// As [`run_timed`], the child reading `stdin` (e.g. a password file).
pub(crate) async fn run_timed_from(
    mut command: Command,
    stdin: Stdio,
    log: &Path,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let out =
        std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let err = out.try_clone().context("cannot share the log file")?;
    command.stdin(stdin).stdout(out).stderr(err).kill_on_drop(true);
    for var in PROXY_VARS {
        command.env_remove(var);
    }
    let started = Instant::now();
    let mut child = command.spawn().context("cannot start")?;
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => status.context("cannot wait for the process")?,
        Err(_) => {
            // Fails only if it exited in the meantime.
            let _ = child.start_kill();
            let _ = child.wait().await;
            bail!("killed after the {} s timeout", timeout.as_secs());
        }
    };
    let elapsed = started.elapsed();
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        bail!("{status}: {}", summary(&text));
    }
    Ok(elapsed)
}

/// The most telling line of a failed client's output: its first line mentioning an
/// error, else its last non-empty line; progress lines split on `\r` count as lines.
pub(crate) fn summary(text: &str) -> String {
    let lines: Vec<&str> =
        text.split(['\n', '\r']).map(str::trim).filter(|l| !l.is_empty()).collect();
    let line = lines
        .iter()
        .find(|l| l.to_ascii_lowercase().contains("error"))
        .or(lines.last())
        .copied()
        .unwrap_or("(no output)");
    let mut short: String = line.chars().take(SUMMARY_CHARS).collect();
    if short.len() < line.len() {
        short.push('…');
    }
    short
}

/// The peak resident set size of process `pid` so far, in bytes (`VmHWM`).
pub(crate) fn peak_rss(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    parse_vm_hwm(&text).with_context(|| format!("no VmHWM line in {path}"))
}

/// `VmHWM:   123456 kB` in a `/proc/<pid>/status` text, in bytes.
fn parse_vm_hwm(status: &str) -> Option<u64> {
    let value = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    let kib: u64 = value.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_hwm_is_read_in_bytes() {
        let status =
            "Name:\tferryd\nVmPeak:\t  900000 kB\nVmHWM:\t   51200 kB\nVmRSS:\t 40000 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(50 << 20));
        assert_eq!(parse_vm_hwm("Name:\tx\n"), None);
        assert_eq!(parse_vm_hwm("VmHWM:\tlots kB\n"), None);
    }

    #[test]
    fn own_peak_rss_is_plausible() -> anyhow::Result<()> {
        let rss = peak_rss(std::process::id())?;
        assert!(rss > 1 << 20, "{rss}");
        Ok(())
    }

    #[test]
    fn summary_prefers_the_error_line() {
        let text = "Usage: ferry\r\nerror: unrecognized subcommand 'transfer'\n\nmore help\n";
        assert_eq!(summary(text), "error: unrecognized subcommand 'transfer'");
        assert_eq!(summary(" 10%\r 55%\r"), "55%");
        assert_eq!(summary(""), "(no output)");
    }

    #[tokio::test]
    async fn a_slow_child_is_killed_at_the_deadline() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("log");
        let mut sleep = Command::new("sleep");
        sleep.arg("30");
        let started = Instant::now();
        let outcome = run_timed(sleep, &log, Duration::from_millis(200)).await;
        assert!(outcome.is_err_and(|e| e.to_string().contains("timeout")));
        assert!(started.elapsed() < Duration::from_secs(10));

        let mut failing = Command::new("sh");
        failing.args(["-c", "echo 'error: nope' >&2; exit 3"]);
        let outcome = run_timed(failing, &log, Duration::from_secs(10)).await;
        let message = format!("{:#}", outcome.err().context("sh exited 0")?);
        assert!(message.contains("exit status: 3") && message.contains("error: nope"), "{message}");
        Ok(())
    }
}
