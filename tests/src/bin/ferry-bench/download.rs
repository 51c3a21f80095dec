//! `ferry-bench download`: the same downloads through `ferry transfer`, curl and aria2c,
//! one after another against the same local nginx, each run timed from process start to
//! exit and its output checked (size and blake3) outside the timed region.
//!
//! Scenarios: one large file unthrottled; the same file with nginx `limit_rate` per
//! connection (where parallel range connections pay off); many small files in one go.
//! Every Ferry run gets a fresh `ferryd`, so its peak RSS (`VmHWM`) is that run's.
//! Printing the table and the targets is [`crate::report`]'s job.

use std::cell::Cell;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use ferry_tests::nginx::{Nginx, NginxOptions};
use ferry_tests::{Node, NodeOptions, tokens};
use tokio::process::Command;

use crate::child::{find_program, peak_rss, run_timed};
use crate::payload::{Expected, verify, write_random};

/// Options of one `ferry-bench download` invocation, checked.
#[derive(Debug)]
pub(crate) struct Options {
    /// Size of the large file, in bytes.
    pub(crate) large_bytes: u64,
    /// nginx `limit_rate` of the throttled scenario, in bytes per second per connection.
    pub(crate) rate: u64,
    /// Number of small files; 0 skips the scenario.
    pub(crate) small_files: usize,
    /// Size of each small file, in bytes.
    pub(crate) small_bytes: u64,
    /// Runs per client; the fastest counts.
    pub(crate) repeat: usize,
    /// Longest one client run may take before it is killed.
    pub(crate) timeout: Duration,
    /// Where the work directory is created; `None` for the system temporary directory.
    pub(crate) work_dir: Option<PathBuf>,
    /// Suspended jobs each Ferry node holds before its run (created, not timed), so
    /// that its memory is measured with a queue.
    pub(crate) queued: usize,
}

/// What is downloaded, and from which server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scenario {
    /// The large file from an unthrottled nginx.
    Unthrottled,
    /// The large file from an nginx limiting each connection to `Options::rate`.
    Throttled,
    /// All small files from the unthrottled nginx, in one client invocation.
    SmallFiles,
}

impl Scenario {
    /// How the table and the progress lines name it.
    pub(crate) fn label(self, options: &Options) -> String {
        let large = if options.large_bytes.is_multiple_of(1 << 30) {
            format!("{} GiB", options.large_bytes >> 30)
        } else {
            format!("{} MiB", options.large_bytes >> 20)
        };
        match self {
            Self::Unthrottled => format!("{large} unthrottled"),
            Self::Throttled => format!("{large} @ {} MB/s/conn", options.rate / 1_000_000),
            Self::SmallFiles => {
                format!("{} × {} KiB", options.small_files, options.small_bytes >> 10)
            }
        }
    }

    /// The clients compared in this scenario, in table order.
    fn tools(self) -> Vec<Tool> {
        match self {
            Self::Unthrottled | Self::Throttled => vec![
                Tool::Curl,
                Tool::Aria2 { connections: 1, parallel: 1 },
                Tool::Aria2 { connections: 16, parallel: 1 },
                Tool::Ferry { connections: None },
                Tool::Ferry { connections: Some(16) },
            ],
            Self::SmallFiles => vec![
                Tool::Curl,
                Tool::Aria2 { connections: 1, parallel: 16 },
                Tool::Ferry { connections: None },
            ],
        }
    }
}

/// A client under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tool {
    /// One `curl` process fetching the files one after another (reusing its connection).
    Curl,
    /// `aria2c` with `connections` range connections per file (`-x -s`) and `parallel`
    /// files at a time (`-j`).
    Aria2 {
        /// Connections per file.
        connections: u32,
        /// Files downloaded at once.
        parallel: u32,
    },
    /// `ferry transfer` (one job holding every file) against a fresh `ferryd`.
    Ferry {
        /// Range connections per file (`--connections`); `None`: no options at all,
        /// what a user gets.
        connections: Option<u32>,
    },
}

impl Tool {
    /// Whether this is a Ferry run.
    pub(crate) fn is_ferry(self) -> bool {
        matches!(self, Self::Ferry { .. })
    }

    /// Whether this is an aria2c run.
    pub(crate) fn is_aria2(self) -> bool {
        matches!(self, Self::Aria2 { .. })
    }

    /// A file-name-safe tag for log files.
    fn slug(self) -> String {
        match self {
            Self::Curl => "curl".into(),
            Self::Aria2 { connections, parallel } => format!("aria2c-x{connections}-j{parallel}"),
            Self::Ferry { connections: None } => "ferry-defaults".into(),
            Self::Ferry { connections: Some(n) } => format!("ferry-c{n}"),
        }
    }
}

impl fmt::Display for Tool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Curl => f.write_str("curl"),
            Self::Aria2 { connections, parallel: 1 } => write!(f, "aria2c -x{connections}"),
            Self::Aria2 { parallel, .. } => write!(f, "aria2c -j{parallel}"),
            Self::Ferry { connections: None } => f.write_str("ferry (defaults)"),
            Self::Ferry { connections: Some(n) } => write!(f, "ferry --connections {n}"),
        }
    }
}

/// How a client's runs went.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Every run succeeded and produced the right files; the fastest run's wall time.
    Done(Duration),
    /// Not run: the client is not installed (or not built).
    Skipped(String),
    /// A run failed (exit status, timeout, wrong output); why.
    Failed(String),
}

/// One line of the table: a client in a scenario.
#[derive(Debug)]
pub(crate) struct Row {
    /// The scenario.
    pub(crate) scenario: Scenario,
    /// The client.
    pub(crate) tool: Tool,
    /// Bytes downloaded per run.
    pub(crate) bytes: u64,
    /// Files downloaded per run.
    pub(crate) files: usize,
    /// How it went.
    pub(crate) outcome: Outcome,
    /// Ferry only: the largest `ferryd` peak RSS over the runs, in bytes.
    pub(crate) peak_rss: Option<u64>,
}

/// Creates the files, starts the two nginx instances and runs every client of every
/// scenario; a client's failure becomes its row, not an error.
pub(crate) async fn download(options: &Options) -> anyhow::Result<Vec<Row>> {
    let mut builder = tempfile::Builder::new();
    builder.prefix("ferry-bench-");
    let work = match &options.work_dir {
        Some(dir) => builder.tempdir_in(dir),
        None => builder.tempdir(),
    }
    .context("cannot create the work directory")?;
    let root = work.path().join("www");
    let bench = Bench {
        options,
        out: work.path().join("out"),
        set_aside: Cell::new(0),
        last_files: Cell::new(0),
        logs: work.path().join("logs"),
        work: work.path().to_path_buf(),
    };
    std::fs::create_dir_all(&bench.logs).context("cannot create the log directory")?;

    eprintln!(
        "writing {} MiB and {} × {} KiB of pseudo-random data under {}",
        options.large_bytes >> 20,
        options.small_files,
        options.small_bytes >> 10,
        work.path().display()
    );
    let (large, small) = {
        let root = root.clone();
        let (large_bytes, small_files, small_bytes) =
            (options.large_bytes, options.small_files, options.small_bytes);
        tokio::task::spawn_blocking(move || {
            let large = write_random(&root, "large.bin", large_bytes, 0)?;
            let small = (0..small_files)
                .map(|i| {
                    write_random(&root, &format!("small/{i:05}.bin"), small_bytes, i as u64 + 1)
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            Ok::<_, anyhow::Error>((large, small))
        })
        .await??
    };

    let open = Nginx::start(NginxOptions::new(&root)).await.context("starting nginx")?;
    let throttled =
        Nginx::start(NginxOptions { limit_rate: Some(options.rate), ..NginxOptions::new(&root) })
            .await
            .context("starting the throttled nginx")?;
    let large = [large];
    let scenarios: [(Scenario, &Nginx, &[Expected]); 3] = [
        (Scenario::Unthrottled, &open, &large),
        (Scenario::Throttled, &throttled, &large),
        (Scenario::SmallFiles, &open, &small),
    ];
    let mut rows = Vec::new();
    for (scenario, nginx, files) in scenarios {
        if files.is_empty() {
            continue;
        }
        for tool in scenario.tools() {
            eprint!("  {}, {tool}: ", scenario.label(options));
            let row = bench.row(scenario, tool, nginx, files).await;
            match &row.outcome {
                Outcome::Done(elapsed) => eprintln!("{:.2} s", elapsed.as_secs_f64()),
                Outcome::Skipped(why) => eprintln!("skipped: {why}"),
                Outcome::Failed(why) => eprintln!("failed: {why}"),
            }
            rows.push(row);
        }
    }
    Ok(rows)
}

/// Where runs write, and how long they may take.
struct Bench<'a> {
    /// The options.
    options: &'a Options,
    /// The clients' output directory, emptied before every run.
    out: PathBuf,
    /// Outputs set aside so far (see [`Bench::prepare_output`]).
    set_aside: Cell<u32>,
    /// How many files the last run wrote.
    last_files: Cell<usize>,
    /// One log per client (its stdout and stderr), overwritten by every run.
    logs: PathBuf,
    /// The work directory: clients run in it.
    work: PathBuf,
}

impl Bench<'_> {
    /// Runs `tool` `repeat` times (stopping at the first failure) and sums it up.
    async fn row(&self, scenario: Scenario, tool: Tool, nginx: &Nginx, files: &[Expected]) -> Row {
        let mut row = Row {
            scenario,
            tool,
            bytes: files.iter().map(|f| f.size).sum(),
            files: files.len(),
            outcome: Outcome::Skipped(String::new()),
            peak_rss: None,
        };
        let program = match program(tool) {
            Ok(program) => program,
            Err(why) => {
                row.outcome = Outcome::Skipped(why);
                return row;
            }
        };
        let mut best: Option<Duration> = None;
        for _ in 0..self.options.repeat {
            match self.run_once(tool, &program, nginx, files).await {
                Ok((elapsed, rss)) => {
                    best = Some(best.map_or(elapsed, |b| b.min(elapsed)));
                    row.peak_rss = row.peak_rss.max(rss);
                }
                Err(e) => {
                    row.outcome = Outcome::Failed(format!("{e:#}"));
                    return row;
                }
            }
        }
        if let Some(best) = best {
            row.outcome = Outcome::Done(best);
        }
        row
    }

    /// One timed run on an empty output directory, then the check of its output;
    /// returns the wall time and, for Ferry, `ferryd`'s peak RSS.
    async fn run_once(
        &self,
        tool: Tool,
        program: &Path,
        nginx: &Nginx,
        files: &[Expected],
    ) -> anyhow::Result<(Duration, Option<u64>)> {
        self.prepare_output(files)?;
        let log = self.logs.join(format!("{}.log", tool.slug()));
        let timeout = self.options.timeout;
        let output = files.iter().map(|f| f.size).sum::<u64>();
        let (elapsed, rss) = match tool {
            Tool::Curl => {
                crate::warm::settle(output).await;
                (run_timed(self.curl(program, nginx, files), &log, timeout).await?, None)
            }
            Tool::Aria2 { connections, parallel } => {
                let command = self.aria2(program, connections, parallel, nginx, files)?;
                crate::warm::settle(output).await;
                (run_timed(command, &log, timeout).await?, None)
            }
            Tool::Ferry { connections } => {
                let mut node_options = NodeOptions::default();
                node_options.policy.max_files_per_job =
                    node_options.policy.max_files_per_job.max(u32::try_from(files.len())?);
                let mut node = Node::start(node_options).await.context("cannot start ferryd")?;
                if self.options.queued > 0 {
                    let admin = [node.client(Some(tokens::ADMIN))?];
                    crate::submit::submit_run(&admin, self.options.queued, 64)
                        .await
                        .context("cannot fill the queue")?;
                }
                let command = self.ferry(program, &node, connections, nginx, files)?;
                crate::warm::settle(output).await;
                let elapsed = run_timed(command, &log, timeout).await;
                let rss = node.pid().and_then(peak_rss);
                node.kill9().await.context("cannot stop ferryd")?;
                (elapsed?, Some(rss.context("cannot read ferryd's peak RSS")?))
            }
        };
        let (out, expected) = (self.out.clone(), files.to_vec());
        tokio::task::spawn_blocking(move || verify(&out, &expected)).await??;
        Ok((elapsed, rss))
    }

    /// Empties the output directory and creates the directories outputs go into (not
    /// timed: not every client creates them).
    ///
    /// The last run's output of many files is set aside in the work directory (removed
    /// with it at the end), not deleted: on ext4, creating files shortly after many
    /// were deleted scans past the recently freed inodes, which would slow whichever
    /// client runs after another and bias the comparison.
    fn prepare_output(&self, files: &[Expected]) -> anyhow::Result<()> {
        if self.out.exists() {
            if self.last_files.replace(files.len()) > 1 {
                self.set_aside.set(self.set_aside.get() + 1);
                let aside = self.work.join(format!("out-{}", self.set_aside.get()));
                std::fs::rename(&self.out, &aside)
                    .with_context(|| format!("cannot move {} aside", self.out.display()))?;
            } else {
                std::fs::remove_dir_all(&self.out)
                    .with_context(|| format!("cannot empty {}", self.out.display()))?;
            }
        }
        self.last_files.set(files.len());
        for file in files {
            let parent = self.out.join(&file.name);
            let parent = parent.parent().unwrap_or(&self.out);
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        Ok(())
    }

    /// `curl URL1 -o OUT1 URL2 -o OUT2 ...`: one process, one keep-alive connection.
    fn curl(&self, program: &Path, nginx: &Nginx, files: &[Expected]) -> Command {
        let mut command = self.command(program);
        // -q first: ignore ~/.curlrc.
        command.args(["-q", "--silent", "--show-error", "--fail"]);
        for file in files {
            command.arg(nginx.url(&file.name)).arg("-o").arg(self.out.join(&file.name));
        }
        command
    }

    /// aria2c with `connections` per file; one file on the command line, several
    /// through an input list downloaded `parallel` at a time.
    fn aria2(
        &self,
        program: &Path,
        connections: u32,
        parallel: u32,
        nginx: &Nginx,
        files: &[Expected],
    ) -> anyhow::Result<Command> {
        let mut command = self.command(program);
        command
            .args([
                "--no-conf=true",
                "--allow-overwrite=true",
                "--auto-file-renaming=false",
                "--file-allocation=none",
                "--console-log-level=warn",
                "--summary-interval=0",
            ])
            .arg(format!("--max-connection-per-server={connections}"))
            .arg(format!("--split={connections}"))
            .arg("--min-split-size=1M")
            .arg("-d")
            .arg(&self.out);
        if let [file] = files {
            command.arg("-o").arg(&file.name).arg(nginx.url(&file.name));
        } else {
            let list = self.logs.join("aria2c-input.txt");
            let text: String = files
                .iter()
                .map(|f| format!("{}\n  out={}\n", nginx.url(&f.name), f.name))
                .collect();
            std::fs::write(&list, text)
                .with_context(|| format!("cannot write {}", list.display()))?;
            command.arg(format!("--max-concurrent-downloads={parallel}")).arg("-i").arg(list);
        }
        Ok(command)
    }

    /// `ferry --node N --token T transfer [--priority foreground --connections C]
    /// URL1 LOCAL1 URL2 LOCAL2 ...`: one job for all files; without a count, no option
    /// at all (a background job, the node picking its connections).
    fn ferry(
        &self,
        program: &Path,
        node: &Node,
        connections: Option<u32>,
        nginx: &Nginx,
        files: &[Expected],
    ) -> anyhow::Result<Command> {
        let mut command = self.command(program);
        for var in ["FERRY_NODE", "FERRY_TOKEN", "FERRY_DATA_DIR"] {
            command.env_remove(var);
        }
        command.arg("--node").arg(node.url()?).arg("--token").arg(tokens::ADMIN).arg("transfer");
        if let Some(n) = connections {
            command.args(["--priority", "foreground", "--connections"]).arg(n.to_string());
        }
        for file in files {
            command.arg(nginx.url(&file.name)).arg(self.out.join(&file.name));
        }
        Ok(command)
    }

    /// `program`, run in the work directory.
    fn command(&self, program: &Path) -> Command {
        let mut command = Command::new(program);
        command.current_dir(&self.work);
        command
    }
}

/// The program that runs `tool`, or why it cannot run.
fn program(tool: Tool) -> Result<PathBuf, String> {
    match tool {
        Tool::Curl => find_program("curl").ok_or_else(|| "not installed (curl)".to_owned()),
        Tool::Aria2 { .. } => {
            find_program("aria2c").ok_or_else(|| "not installed (aria2c)".to_owned())
        }
        Tool::Ferry { .. } => ferry_tests::binary("ferryd")
            .and_then(|_| ferry_tests::binary("ferry"))
            .map_err(|e| format!("not built: {e:#}")),
    }
}
