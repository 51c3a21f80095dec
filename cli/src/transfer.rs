//! `ferry transfer`: `bitsadmin /transfer` — create a download (or, with `--upload` or
//! `--upload-reply`, an upload) job with the given files, resume it, show progress
//! (bytes, rate, ETA) on stderr, complete it when it is transferred, and fail with the
//! job's BITS error if it ends in ERROR (the job is then cancelled, as is a transfer
//! interrupted with Ctrl-C). An upload-reply prints the reply (up to 1 MiB) and where
//! its file is.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use ferry_coordinator::Client;
use ferry_protocol::api::JobInfo;
use ferry_protocol::command::{JobAction, NewJob, PropertyChanges};
use ferry_protocol::credentials::{AuthScheme, AuthTarget};
use ferry_protocol::{JobState, JobType, NewFile};

use crate::args::TransferArgs;
use crate::output;

/// How often the job is polled.
const POLL: Duration = Duration::from_millis(100);

/// Runs `ferry transfer`.
pub(crate) async fn run(client: &Client, json: bool, args: &TransferArgs) -> anyhow::Result<()> {
    let files = file_pairs(&args.pairs)?;
    let job_type = if args.upload_reply {
        JobType::UploadReply
    } else if args.upload {
        JobType::Upload
    } else {
        JobType::Download
    };
    if job_type.is_upload() && files.len() != 1 {
        bail!("an upload sends exactly one file: give one REMOTE LOCAL pair");
    }
    let password =
        args.server_user.as_ref().map(|_| crate::commands::read_password()).transpose()?;
    let spec = NewJob {
        display_name: args.display_name.clone().unwrap_or_else(|| "ferry transfer".into()),
        job_type,
        properties: PropertyChanges {
            priority: args.priority.map(Into::into),
            max_connections: args.connections.map(Some),
            max_helpers: args.helpers.map(Some),
            dynamic_content: args.dynamic.then_some(true),
            reply_file_name: args.reply_file.as_deref().map(absolute).transpose()?.map(Some),
            ..PropertyChanges::default()
        },
        files,
    };
    let job = client.create_job(&spec).await?;
    let id = job.id;
    if let (Some(user), Some(password)) = (&args.server_user, &password) {
        let set =
            client.set_credentials(id, AuthTarget::Server, AuthScheme::Basic, user, password).await;
        if let Err(e) = set {
            let _ = client.act(id, JobAction::Cancel).await;
            return Err(e.into());
        }
    }
    client.act(id, JobAction::Resume).await?;
    let mut bar = Progress::new(args.no_progress);
    let finished = tokio::select! {
        result = watch(client, id, &mut bar) => result,
        _ = tokio::signal::ctrl_c() => {
            bar.clear();
            let _ = client.act(id, JobAction::Cancel).await;
            bail!("interrupted; job {id} was cancelled");
        }
    };
    bar.clear();
    let info = match finished {
        Ok(info) => info,
        Err(e) => {
            let _ = client.act(id, JobAction::Cancel).await;
            return Err(e);
        }
    };
    if info.state == JobState::Error {
        let error = client.job_error(id).await?;
        let _ = client.act(id, JobAction::Cancel).await;
        if json {
            output::json(&serde_json::json!({ "job": info, "error": error }))?;
        }
        bail!("transfer failed: {} ({}): {}", error.name, error.code, error.detail);
    }
    // The reply is read before Complete renames its file (either works; this is one call).
    let reply = if job_type == JobType::UploadReply { Some(client.reply(id).await) } else { None };
    let done = client.act(id, JobAction::Complete).await?;
    if json {
        output::json(&done.job)
    } else if let Some(reply) = reply {
        let file = done.job.reply.as_ref().map(|r| r.file_name.clone()).unwrap_or_default();
        match reply {
            Ok(bytes) => println!(
                "Upload complete (job {id}); the reply ({} bytes, in {file}):\n{}",
                bytes.len(),
                String::from_utf8_lossy(&bytes)
            ),
            Err(e) => println!("Upload complete (job {id}); the reply is in {file} ({e})."),
        }
        Ok(())
    } else {
        let p = done.job.progress;
        println!(
            "Transfer complete: {} file(s), {} (job {id}).",
            p.files_total,
            output::size(Some(p.bytes_transferred))
        );
        Ok(())
    }
}

/// Polls until the job is TRANSFERRED or ERROR.
async fn watch(
    client: &Client,
    id: ferry_protocol::JobId,
    bar: &mut Progress,
) -> anyhow::Result<JobInfo> {
    loop {
        let info = client.job(id).await?;
        match info.state {
            JobState::Transferred | JobState::Error => return Ok(info),
            JobState::Cancelled | JobState::Acknowledged | JobState::Suspended => {
                bail!("job {id} was {} by someone else", info.state.bits_name().to_lowercase())
            }
            _ => bar.show(&info),
        }
        tokio::time::sleep(POLL).await;
    }
}

/// REMOTE LOCAL pairs; relative local paths are made absolute against the current
/// directory (the node needs full paths, as BITS does).
fn file_pairs(pairs: &[String]) -> anyhow::Result<Vec<NewFile>> {
    if pairs.is_empty() || !pairs.len().is_multiple_of(2) {
        bail!("give REMOTE LOCAL pairs (got {} arguments)", pairs.len());
    }
    pairs
        .chunks(2)
        .map(|pair| {
            Ok(NewFile {
                remote_url: pair[0].clone(),
                local_path: absolute(&pair[1])?,
                ranges: Vec::new(),
            })
        })
        .collect()
}

/// `path` made absolute against the current directory.
pub(crate) fn absolute(path: &str) -> anyhow::Result<String> {
    let local = std::path::Path::new(path);
    let local = if local.is_absolute() {
        local.to_path_buf()
    } else {
        std::env::current_dir().context("cannot read the current directory")?.join(local)
    };
    Ok(local
        .to_str()
        .with_context(|| format!("{} is not valid UTF-8", local.display()))?
        .to_owned())
}

/// The progress line on stderr: bytes, percentage, rate and ETA.
struct Progress {
    enabled: bool,
    started: Instant,
    last: Option<(Instant, u64)>,
    rate: f64,
    drawn: bool,
}

impl Progress {
    fn new(disabled: bool) -> Self {
        Self { enabled: !disabled, started: Instant::now(), last: None, rate: 0.0, drawn: false }
    }

    fn show(&mut self, info: &JobInfo) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        let done = info.progress.bytes_transferred;
        if let Some((then, before)) = self.last {
            let secs = now.duration_since(then).as_secs_f64();
            if secs > 0.0 {
                let instant = done.saturating_sub(before) as f64 / secs;
                self.rate =
                    if self.rate == 0.0 { instant } else { 0.7 * self.rate + 0.3 * instant };
            }
        }
        self.last = Some((now, done));
        let total = info.progress.bytes_total;
        let percent = total.filter(|t| *t > 0).map(|t| done as f64 * 100.0 / t as f64);
        let eta = match (total, self.rate > 0.0) {
            (Some(t), true) => {
                format!("{:.0} s", t.saturating_sub(done) as f64 / self.rate)
            }
            _ => "-".into(),
        };
        let bar = match percent {
            Some(p) => {
                let filled = ((p / 100.0) * 30.0).round() as usize;
                format!(
                    "[{}{}] {p:5.1}%",
                    "#".repeat(filled.min(30)),
                    ".".repeat(30 - filled.min(30))
                )
            }
            None => format!("[{}]", info.state.bits_name()),
        };
        let error =
            info.error.as_ref().map(|e| format!("  retrying after {}", e.name)).unwrap_or_default();
        let line = format!(
            "{bar} {} / {}  {}/s  ETA {eta}  {:.0} s{error}",
            output::size(Some(done)),
            output::size(total),
            output::size(Some(self.rate as u64)),
            self.started.elapsed().as_secs_f64(),
        );
        let mut err = std::io::stderr();
        if err.is_terminal() {
            let _ = write!(err, "\r\x1b[2K{line}");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
        self.drawn = true;
    }

    fn clear(&mut self) {
        if self.drawn && std::io::stderr().is_terminal() {
            eprint!("\r\x1b[2K");
        }
        self.drawn = false;
    }
}
