//! `ferry-bench upload`: one file through Ferry both ways on loopback, side by side in
//! one run: curl and `ferry transfer` downloading it from a local nginx (the raw
//! speed of the path, and Ferry's), then `ferry transfer --upload` sending it to another
//! `ferryd`'s BITS upload server. Each run is timed from process start to exit, with
//! no options beyond what the job needs, right after a `sync` and a touch of the
//! memory it will use ([`crate::warm::settle`]); the outputs are checked outside the
//! timed region. Issue 20's target: the upload's rate at least 0.8 × Ferry's download
//! rate.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use ferry_tests::nginx::{Nginx, NginxOptions};
use ferry_tests::{Node, NodeOptions, tokens};
use tokio::process::Command;

use crate::child::{ferry_cli, find_program, run_timed, run_timed_from};
use crate::payload::{Expected, Workspace, verify};

/// Upload rate / download rate that the upload must reach.
const TARGET_RATIO: f64 = 0.8;

/// One timed client run.
struct Row {
    what: &'static str,
    elapsed: Duration,
}

/// Runs the three clients on a `bytes`-byte file and prints the table and the target.
pub(crate) async fn upload(bytes: u64, timeout: Duration) -> anyhow::Result<()> {
    let (work, file) = Workspace::with_file("upload", "large.bin", bytes, 0).await?;
    let nginx = Nginx::start(NginxOptions::new(&work.root)).await.context("starting nginx")?;
    let server = Node::start(NodeOptions::default()).await.context("starting the server")?;
    let client_node =
        Node::start(NodeOptions { ip: "127.0.0.2".parse()?, ..NodeOptions::default() })
            .await
            .context("starting the client's ferryd")?;
    let expected = std::slice::from_ref(&file);
    let mut rows = Vec::new();

    if let Some(curl) = find_program("curl") {
        prepare(&work.out)?;
        crate::warm::settle(bytes).await;
        let mut command = Command::new(curl);
        command.args(["-q", "--silent", "--show-error", "--fail"]);
        command.arg(nginx.url(&file.name)).arg("-o").arg(work.out.join(&file.name));
        let elapsed = timed("curl download", command, &work.logs, timeout).await?;
        check(&work.out, expected).await?;
        rows.push(Row { what: "curl download (raw path)", elapsed });
    }

    prepare(&work.out)?;
    crate::warm::settle(bytes).await;
    let mut command = ferry_cli(&client_node)?;
    command.args(["transfer", "--no-progress"]);
    command.arg(nginx.url(&file.name)).arg(work.out.join(&file.name));
    let elapsed = timed("ferry download", command, &work.logs, timeout).await?;
    check(&work.out, expected).await?;
    rows.push(Row { what: "ferry transfer (download)", elapsed });

    let mut command = ferry_cli(&client_node)?;
    command.args(["transfer", "--no-progress", "--upload", "--server-user", "alice"]);
    command.arg(format!("{}/bits/in/{}", server.url()?, file.name));
    command.arg(work.root.join(&file.name));
    // The server takes alice's API token as her Basic password (read from stdin).
    let password = work.logs.join("password");
    std::fs::write(&password, format!("{}\n", tokens::ALICE))?;
    let stdin = std::fs::File::open(&password)?.into();
    let log = work.logs.join("ferry-upload.log");
    crate::warm::settle(bytes).await;
    eprint!("  ferry upload: ");
    let elapsed = run_timed_from(command, stdin, &log, timeout).await?;
    eprintln!("{:.2} s", elapsed.as_secs_f64());
    check(&server.data_dir().join("uploads").join("in"), expected).await?;
    rows.push(Row { what: "ferry transfer --upload", elapsed });
    let client_log = std::fs::read_to_string(client_node.log_path()).unwrap_or_default();
    if client_log.contains("sending one at a time") {
        eprintln!("  note: the upload went back to one fragment at a time (see the client's log)");
    }

    print(bytes, &rows);
    Ok(())
}

/// Runs `command`, logging to `logs/<what>.log`, and prints its time.
async fn timed(
    what: &str,
    command: Command,
    logs: &Path,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    eprint!("  {what}: ");
    let log = logs.join(format!("{}.log", what.replace(' ', "-")));
    let elapsed = run_timed(command, &log, timeout).await.with_context(|| what.to_owned())?;
    eprintln!("{:.2} s", elapsed.as_secs_f64());
    Ok(elapsed)
}

/// Empties `out` (not timed).
fn prepare(out: &Path) -> anyhow::Result<()> {
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("cannot empty {}", out.display()))?;
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))
}

/// Checks the copies under `dir` (not timed).
async fn check(dir: &Path, expected: &[Expected]) -> anyhow::Result<()> {
    let (dir, expected) = (dir.to_path_buf(), expected.to_vec());
    tokio::task::spawn_blocking(move || verify(&dir, &expected)).await?
}

fn print(bytes: u64, rows: &[Row]) {
    let mib = bytes as f64 / f64::from(1 << 20);
    println!("\n{} MiB through Ferry on loopback\n", bytes >> 20);
    println!("{:<28} {:>9} {:>10}", "client", "time", "MiB/s");
    for row in rows {
        let secs = row.elapsed.as_secs_f64();
        println!("{:<28} {:>8.2}s {:>10.0}", row.what, secs, mib / secs);
    }
    let rate =
        |what: &str| rows.iter().find(|r| r.what == what).map(|r| mib / r.elapsed.as_secs_f64());
    if let (Some(down), Some(up)) =
        (rate("ferry transfer (download)"), rate("ferry transfer --upload"))
    {
        let ratio = up / down;
        let verdict = if ratio >= TARGET_RATIO { "PASS" } else { "FAIL" };
        println!(
            "\ntarget: upload rate ≥ {TARGET_RATIO} × download rate: {ratio:.2} × ({up:.0} vs {down:.0} MiB/s) {verdict}"
        );
    }
}
