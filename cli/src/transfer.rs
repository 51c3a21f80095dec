//! `ferry transfer`: `bitsadmin /transfer` — create a download (or, with `--upload` or
//! `--upload-reply`, an upload) job with the given files, resume it, show progress
//! (`progress`), complete it when it is transferred, and fail with the job's BITS
//! error if it ends in ERROR (the job is then cancelled, as is a transfer ended by
//! Ctrl-C, SIGTERM or SIGHUP). An upload-reply prints the reply (up to 1 MiB) and
//! where its file is. `--no-wait` returns once the job is resumed, printing its id.

use std::time::Duration;

use anyhow::{Context as _, bail};
use ferry_coordinator::Client;
use ferry_protocol::api::JobInfo;
use ferry_protocol::command::{JobAction, NewJob, PropertyChanges};
use ferry_protocol::credentials::{AuthScheme, AuthTarget};
use ferry_protocol::{JobState, JobType, NewFile};

use crate::args::TransferArgs;
use crate::failure::{Failure, usage};
use crate::output::{self, Format};
use crate::progress::Progress;
use crate::signals::Terminations;

/// How often the node reports the job's progress on the event stream.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// How often the job is polled where the event stream cannot be had.
const POLL: Duration = Duration::from_millis(250);

/// Runs `ferry transfer`.
pub(crate) async fn run(
    client: &Client,
    format: Format,
    args: &TransferArgs,
) -> anyhow::Result<()> {
    let mut files = file_pairs(&args.pairs)?;
    if let Some(sha256) = &args.sha256 {
        let [file] = files.as_mut_slice() else {
            return Err(usage("--sha256 is the digest of one file: give one REMOTE LOCAL pair"));
        };
        file.sha256 = Some(sha256.clone());
    }
    let job_type = if args.upload_reply {
        JobType::UploadReply
    } else if args.upload {
        JobType::Upload
    } else {
        JobType::Download
    };
    if job_type.is_upload() && files.len() != 1 {
        return Err(usage("an upload sends exactly one file: give one REMOTE LOCAL pair"));
    }
    let password =
        args.server_user.as_ref().map(|_| crate::password::read_password()).transpose()?;
    // From here on a signal cancels the job instead of leaving it behind.
    let mut signals = Terminations::install()?;
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
    let resumed = client.act(id, JobAction::Resume).await?;
    if args.no_wait {
        if !output::structured(format, &resumed.job)? {
            println!("{id}");
            eprintln!(
                "ferry: job {id} is {}; `ferry job complete {id}` once it is TRANSFERRED",
                resumed.job.state.bits_name()
            );
        }
        return Ok(());
    }
    let mut bar = Progress::new(args.no_progress);
    let finished = tokio::select! {
        result = watch(client, id, &mut bar) => result,
        signal = signals.recv() => {
            bar.finish();
            let cancelled = client.act(id, JobAction::Cancel).await;
            return match cancelled {
                Ok(_) => Err(anyhow::anyhow!("interrupted by {signal}; job {id} was cancelled")),
                Err(e) => Err(anyhow::Error::from(e)
                    .context(format!("interrupted by {signal}; job {id} could not be cancelled"))),
            };
        }
    };
    let info = match finished {
        Ok(info) => info,
        Err(e) => {
            bar.finish();
            let _ = client.act(id, JobAction::Cancel).await;
            return Err(e);
        }
    };
    bar.done(&info);
    if info.state == JobState::Error {
        let error = client.job_error(id).await?;
        let _ = client.act(id, JobAction::Cancel).await;
        return Err(Failure::JobFailed { job: Box::new(info), error: Box::new(error) }.into());
    }
    // The reply is read before Complete renames its file (either works; this is one call).
    let reply = if job_type == JobType::UploadReply { Some(client.reply(id).await) } else { None };
    let done = client.act(id, JobAction::Complete).await?;
    if output::structured(format, &done.job)? {
        return Ok(());
    }
    if let Some(reply) = reply {
        let file = done.job.reply.as_ref().map(|r| r.file_name.clone()).unwrap_or_default();
        match reply {
            Ok(bytes) => println!(
                "Upload complete (job {id}); the reply ({} bytes, in {file}):\n{}",
                bytes.len(),
                String::from_utf8_lossy(&bytes)
            ),
            Err(e) => println!("Upload complete (job {id}); the reply is in {file} ({e})."),
        }
    } else {
        let p = done.job.progress;
        println!(
            "Transfer complete: {} file(s), {} (job {id}).",
            p.files_total,
            output::size(Some(p.bytes_transferred))
        );
    }
    Ok(())
}

/// Follows the job until it is TRANSFERRED or ERROR: on the event stream (`GET
/// /v1/events` with its progress), or by polling where the stream cannot be had or
/// breaks.
async fn watch(
    client: &Client,
    id: ferry_protocol::JobId,
    bar: &mut Progress,
) -> anyhow::Result<JobInfo> {
    match follow(client, id, bar).await {
        Ok(Some(info)) => return Ok(info),
        Ok(None) => {}
        Err(e) => eprintln!("ferry: the event stream broke ({e}); polling instead"),
    }
    loop {
        let info = client.job(id).await?;
        if let Some(done) = ended(&info)? {
            return Ok(done);
        }
        bar.show(&info);
        tokio::time::sleep(POLL).await;
    }
}

/// The job, if it ended as `ferry transfer` waits for (TRANSFERRED or ERROR); an error
/// if someone else ended or suspended it.
fn ended(info: &JobInfo) -> anyhow::Result<Option<JobInfo>> {
    match info.state {
        JobState::Transferred | JobState::Error => Ok(Some(info.clone())),
        JobState::Cancelled | JobState::Acknowledged | JobState::Suspended => {
            bail!("job {} was {} by someone else", info.id, info.state.bits_name().to_lowercase())
        }
        _ => Ok(None),
    }
}

/// Follows the job on the event stream: the bar moves with the progress reports, and
/// each event of the job is read back in full. `None` if the stream ended first.
async fn follow(
    client: &Client,
    id: ferry_protocol::JobId,
    bar: &mut Progress,
) -> anyhow::Result<Option<JobInfo>> {
    use ferry_coordinator::sse::{SseSubscription, Streamed};
    let mut stream = SseSubscription::with_progress(client, &[id], PROGRESS_EVERY).await?;
    // Read once subscribed, so that no end is missed between the two.
    let mut info = client.job(id).await?;
    loop {
        if let Some(done) = ended(&info)? {
            return Ok(Some(done));
        }
        bar.show(&info);
        match stream.next_item().await? {
            None => return Ok(None),
            Some(Streamed::Progress(reports)) => {
                for report in reports.into_iter().filter(|r| r.job == id) {
                    info.state = report.state;
                    info.progress.bytes_transferred = report.bytes_transferred;
                    info.progress.bytes_total = report.bytes_total;
                }
                if !info.state.is_active() {
                    // An end, or an error being retried: the whole job says more.
                    info = client.job(id).await?;
                }
            }
            Some(Streamed::Delivery(_)) => info = client.job(id).await?,
        }
    }
}

/// REMOTE LOCAL pairs; relative local paths are made absolute against the current
/// directory (the node needs full paths, as BITS does).
fn file_pairs(pairs: &[String]) -> anyhow::Result<Vec<NewFile>> {
    if pairs.is_empty() || !pairs.len().is_multiple_of(2) {
        return Err(usage(format!("give REMOTE LOCAL pairs (got {} arguments)", pairs.len())));
    }
    pairs
        .chunks(2)
        .map(|pair| {
            Ok(NewFile {
                remote_url: pair[0].clone(),
                local_path: absolute(&pair[1])?,
                ranges: Vec::new(),
                sha256: None,
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
