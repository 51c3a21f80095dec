//! The web console (`/ui`) in a real headless Chromium: a download started with the
//! `ferry` CLI shows up in the console's jobs table and reaches `TRANSFERRED` at
//! `100 %`, with its files, its hostile display name shown as text, and the cluster's
//! members; a refused token brings the sign-in form back.
//!
//! Chromium is driven without the DevTools protocol: each look is one
//! `chromium --headless=new --dump-dom` run (the token travels in the URL fragment,
//! which the console moves into session storage), repeated until the page shows what
//! is expected or a bound passes. A screenshot is left at `target/console-screenshot.png`.
//!
//! Without Chromium the test prints SKIPPED and passes, unless
//! `FERRY_REQUIRE_CHROMIUM=1` (CI) makes it fail.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use ferry_tests::origin::{Content, Knobs, Origin, OriginConfig, file_matches_pattern};
use ferry_tests::{ferry, tokens};
use tokio::process::Command;

use crate::support::{raw, transfer_node};

/// Bound of every wait for the page to show something.
const WAIT: Duration = Duration::from_secs(60);
/// Bound of one Chromium run.
const ONE_RUN: Duration = Duration::from_secs(30);
/// A display name that would run script if the console inserted it as HTML.
const HOSTILE_NAME: &str = "<img src=x onerror=alert(1)> console & co";

/// A headless Chromium, each run in a fresh profile.
struct Browser {
    exe: PathBuf,
    profiles: tempfile::TempDir,
    runs: u32,
}

impl Browser {
    /// Chromium from `$FERRY_CHROMIUM` or `PATH` (`chromium`, as Debian names it).
    fn find() -> anyhow::Result<Option<Self>> {
        let exe = std::env::var_os("FERRY_CHROMIUM").map(PathBuf::from).or_else(|| {
            let path = std::env::var_os("PATH")?;
            ["chromium", "chromium-browser", "google-chrome"].iter().find_map(|name| {
                std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file())
            })
        });
        let Some(exe) = exe else { return Ok(None) };
        let profiles = tempfile::Builder::new().prefix("ferry-chromium-").tempdir()?;
        Ok(Some(Self { exe, profiles, runs: 0 }))
    }

    /// Loads `url`, lets the page run for a few (virtual) seconds, and returns stdout.
    async fn run(&mut self, url: &str, extra: &[String]) -> anyhow::Result<String> {
        self.runs += 1;
        let profile = self.profiles.path().join(format!("run-{}", self.runs));
        let mut command = Command::new(&self.exe);
        command
            .args([
                "--headless=new",
                "--disable-gpu",
                "--no-sandbox",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-proxy-server",
                "--hide-scrollbars",
                "--virtual-time-budget=4000",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra)
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child =
            command.spawn().with_context(|| format!("cannot run {}", self.exe.display()))?;
        let output = tokio::time::timeout(ONE_RUN, child.wait_with_output())
            .await
            .with_context(|| format!("chromium did not finish within {ONE_RUN:?}"))??;
        ensure!(
            output.status.success(),
            "chromium failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The page's DOM after it ran.
    async fn dom(&mut self, url: &str) -> anyhow::Result<String> {
        self.run(url, &["--dump-dom".into()]).await
    }

    /// A 1280×800 screenshot of the page at `path`.
    async fn screenshot(&mut self, url: &str, path: &Path) -> anyhow::Result<()> {
        let _ = std::fs::remove_file(path);
        let extra = [format!("--screenshot={}", path.display()), "--window-size=1280,800".into()];
        self.run(url, &extra).await?;
        ensure!(path.is_file(), "chromium wrote no screenshot at {}", path.display());
        Ok(())
    }

    /// Loads `url` until `done` accepts its DOM; fails after [`WAIT`] with the last DOM.
    async fn wait_for(
        &mut self,
        url: &str,
        what: &str,
        mut done: impl FnMut(&str) -> bool,
    ) -> anyhow::Result<String> {
        let started = Instant::now();
        loop {
            let dom = self.dom(url).await?;
            if done(&dom) {
                println!("console showed {what} after {:?}", started.elapsed());
                return Ok(dom);
            }
            if started.elapsed() > WAIT {
                bail!("the console did not show {what} within {WAIT:?}; last DOM:\n{dom}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// The markup of the jobs-table row of job `id` (from its `data-job-id` attribute to
/// the row's end), if the DOM has one.
fn job_row<'a>(dom: &'a str, id: &str) -> Option<&'a str> {
    let start = dom.find(&format!("<tr data-job-id=\"{id}\""))?;
    let end = dom[start..].find("</tr>")?;
    Some(&dom[start..start + end])
}

/// The state a row shows (`data-state`).
fn row_state(row: &str) -> Option<&str> {
    let at = row.find("data-state=\"")? + "data-state=\"".len();
    row[at..].split('"').next()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_a_cli_download_reach_transferred() -> anyhow::Result<()> {
    let Some(mut browser) = Browser::find()? else {
        if std::env::var("FERRY_REQUIRE_CHROMIUM").is_ok_and(|v| v == "1") {
            bail!(
                "FERRY_REQUIRE_CHROMIUM=1 but no Chromium was found (PATH or FERRY_CHROMIUM): \
                 install it with `apt-get install -y chromium`"
            );
        }
        println!("SKIPPED: Chromium is not installed (apt-get install -y chromium)");
        return Ok(());
    };
    let origin = Origin::start(OriginConfig::default()).await?;
    let len = 6 << 20;
    origin.add_file("/console.bin", Content::Pattern { seed: 19, len });
    // About 3 s on one connection: the console sees the job while it moves.
    origin.set_knobs(Knobs { rate_limit_per_connection: Some(2 << 20), ..Knobs::default() });
    let node = transfer_node("").await?;
    let base = node.url()?;

    // The static files need no token; the API still does.
    let http = raw();
    let page = http.get(format!("{base}/ui")).send().await?;
    assert_eq!(page.status(), 200);
    let csp = page.headers().get("content-security-policy").context("no CSP on /ui")?;
    assert!(csp.to_str()?.starts_with("default-src 'self'"), "{csp:?}");
    assert_eq!(
        page.headers().get("x-content-type-options").map(|v| v.as_bytes()),
        Some(&b"nosniff"[..])
    );
    assert_eq!(http.get(format!("{base}/ui/nope.js")).send().await?.status(), 404);
    assert_eq!(http.get(format!("{base}/v1/jobs")).send().await?.status(), 401);

    // A download from the CLI, left running (no Complete): it stays listed.
    let out = tempfile::tempdir()?;
    let local = out.path().join("console.bin");
    let local_arg = local.to_string_lossy().into_owned();
    let url = origin.url("/console.bin");
    let args = [
        "transfer",
        "--no-wait",
        "--connections",
        "1",
        "--display-name",
        HOSTILE_NAME,
        &url,
        &local_arg,
    ];
    let started = Instant::now();
    let (code, stdout, stderr) = ferry(&node, tokens::ALICE, &args).await?;
    ensure!(code == 0, "ferry transfer failed: {stdout}\n{stderr}\n{}", node.log_tail());
    let id = stdout.trim().to_owned();
    let _: ferry_protocol::JobId = id.parse().with_context(|| format!("not a job id: {id}"))?;

    let console = format!("{base}/ui#token={}&job={id}", tokens::ALICE);
    let mut seen = Vec::<String>::new();
    let dom = browser
        .wait_for(&console, "the job TRANSFERRED at 100 %", |dom| {
            let Some(row) = job_row(dom, &id) else { return false };
            let state = row_state(row).unwrap_or_default();
            if seen.last().map(String::as_str) != Some(state) {
                seen.push(state.to_owned());
            }
            state == "TRANSFERRED" && row.contains(">100 %<")
        })
        .await
        .with_context(|| node.log_tail())?;
    println!(
        "states the console showed: {:?}; job transferred {:?} after the CLI started it, \
         {} chromium runs",
        seen,
        started.elapsed(),
        browser.runs
    );
    let row = job_row(&dom, &id).context("the row went away")?;
    // The name is text, not markup: serialised escaped, and no <img> was made of it.
    assert!(row.contains("&lt;img src=x onerror=alert(1)&gt; console &amp; co"), "{row}");
    assert!(!dom.contains("<img"), "an element was made of the job's name:\n{dom}");
    assert!(row.contains(">alice<"), "the owner: {row}");
    // The selected job's details: its file, fully transferred.
    assert!(
        dom.contains(&format!("<div id=\"details\" class=\"panel\" data-job-id=\"{id}\"")),
        "{dom}"
    );
    assert!(dom.contains(&format!(">{local_arg}<")), "the file's local path:\n{dom}");
    assert!(dom.contains(&format!(">{url}<")), "the file's URL:\n{dom}");
    assert!(dom.contains("<tr data-file-index=\"0\">"), "{dom}");
    // The cluster: this node, healthy.
    assert!(dom.contains("data-health=\"ok\""), "a healthy member:\n{dom}");
    assert!(!local.exists(), "files appear at their name only on Complete");

    let shot = ferry_tests::target_dir()?
        .parent()
        .context("no target dir")?
        .join("console-screenshot.png");
    browser.screenshot(&console, &shot).await?;
    println!("console screenshot: {}", shot.display());

    // A refused token: back to the sign-in form, saying why.
    let refused = format!("{base}/ui#token=not-a-token-at-all-0123");
    browser
        .wait_for(&refused, "the sign-in form after a refused token", |dom| {
            dom.contains("<section id=\"login\">") && dom.contains("refused the token")
        })
        .await?;

    // The job still completes from the CLI: the console changed nothing.
    let (code, stdout, stderr) = ferry(&node, tokens::ALICE, &["job", "complete", &id]).await?;
    ensure!(code == 0, "complete failed: {stdout}\n{stderr}");
    ensure!(
        file_matches_pattern(&local, 19, len)?,
        "the downloaded file differs from the origin's"
    );
    Ok(())
}
