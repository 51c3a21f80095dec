//! `ferry job ...`: each verb as one or two API calls, and the job given by id or by
//! display name. The options are parsed in `job_args`, turned into requests in
//! `job_input`; `ferry job get` is in `job_get`, `ferry job list --watch` in
//! `job_watch`.

use anyhow::Context as _;
use ferry_coordinator::Client;
use ferry_protocol::api::{FileChanges, JobList};
use ferry_protocol::command::{JobAction, NewJob, PropertyChanges};
use ferry_protocol::{BitsCode, FileRange, JobId, NewFile};
use serde_json::json;

use crate::args::{CredentialsCommand, JobCommand};
use crate::failure::{Failure, usage};
use crate::job_input::{parse_file_set, property_changes};
use crate::output::{self, Format, show};
use crate::password::read_password;

/// Resolves a job given by id or by display name (unique among the caller's jobs).
pub(crate) async fn resolve(client: &Client, job: &str) -> anyhow::Result<JobId> {
    if let Ok(id) = job.parse() {
        return Ok(id);
    }
    let matches: Vec<JobId> = client
        .list_jobs(false)
        .await?
        .into_iter()
        .filter(|j| j.display_name == job)
        .map(|j| j.id)
        .collect();
    match matches.as_slice() {
        [id] => Ok(*id),
        [] => {
            Err(Failure::NotFound(format!("no job of yours has the id or display name {job:?}"))
                .into())
        }
        many => {
            Err(usage(format!("{} of your jobs are named {job:?}; give the job id", many.len())))
        }
    }
}

/// Runs a `ferry job` verb.
pub(crate) async fn run(
    client: &Client,
    format: Format,
    command: &JobCommand,
) -> anyhow::Result<()> {
    match command {
        JobCommand::Create { name, job_type, priority, description } => {
            let spec = NewJob {
                display_name: name.clone(),
                job_type: (*job_type).into(),
                properties: PropertyChanges {
                    priority: priority.map(Into::into),
                    description: description.clone(),
                    ..PropertyChanges::default()
                },
                files: Vec::new(),
            };
            let job = client.create_job(&spec).await?;
            show(format, &job, |job, _| println!("Created job {}.", job.id))
        }
        JobCommand::AddFile { job, remote, local, ranges, sha256 } => {
            let ranges = ranges
                .iter()
                .map(|r| r.parse::<FileRange>().map_err(usage))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let file = NewFile {
                remote_url: remote.clone(),
                local_path: local.clone(),
                ranges,
                sha256: sha256.clone(),
            };
            let id = resolve(client, job).await?;
            let files = client.add_files(id, vec![file]).await?;
            show(format, &files, |f, _| {
                println!("Added 1 file to job {id} ({} in all).", f.files.len())
            })
        }
        JobCommand::AddFileSet { job, list } => {
            let text = std::fs::read_to_string(list)
                .with_context(|| format!("cannot read {}", list.display()))?;
            let files = parse_file_set(&text)?;
            let count = files.len();
            let id = resolve(client, job).await?;
            let files = client.add_files(id, files).await?;
            show(format, &files, |f, _| {
                println!("Added {count} files to job {id} ({} in all).", f.files.len())
            })
        }
        JobCommand::Credentials(CredentialsCommand::Set { job, target, scheme, user }) => {
            let password = read_password()?;
            let id = resolve(client, job).await?;
            let set = client.set_credentials(id, *target, *scheme, user, &password).await?;
            let set = json!({ "credentials": set });
            show(format, &set, |_, _| println!("Credentials set on job {id}."))
        }
        JobCommand::Credentials(CredentialsCommand::Remove { job, target, scheme }) => {
            let id = resolve(client, job).await?;
            let left = client.remove_credentials(id, *target, *scheme).await?;
            let left = json!({ "credentials": left });
            show(format, &left, |_, _| println!("Credentials removed from job {id}."))
        }
        JobCommand::Info { job } => {
            let info = client.job(resolve(client, job).await?).await?;
            show(format, &info, |i, _| output::job(i))
        }
        JobCommand::Get { job, property } => {
            let info = client.job(resolve(client, job).await?).await?;
            crate::job_get::print(format, &info, *property)
        }
        JobCommand::List { all_users, watch: true, interval } => {
            crate::job_watch::run(client, format, *all_users, *interval).await
        }
        JobCommand::List { all_users, watch: false, .. } => {
            let list = JobList { jobs: client.list_jobs(*all_users).await?, next_cursor: None };
            show(format, &list, |l, wide| output::jobs(&l.jobs, wide))
        }
        JobCommand::Files { job, index: None } => {
            let files = client.files(resolve(client, job).await?).await?;
            show(format, &files, |f, wide| output::files(&f.files, wide))
        }
        JobCommand::Files { job, index: Some(index) } => {
            let file = client.file(resolve(client, job).await?, *index).await?;
            show(format, &file, |f, wide| output::files(std::slice::from_ref(f), wide))
        }
        JobCommand::Error { job } => {
            let error = client.job_error(resolve(client, job).await?).await?;
            show(format, &error, |e, _| output::error(e))
        }
        JobCommand::Set(set) => {
            let changes = property_changes(set)?;
            let info = client.set_properties(resolve(client, &set.job).await?, &changes).await?;
            show(format, &info, |i, _| println!("Job {} updated.", i.id))
        }
        JobCommand::ReplaceRemotePrefix { job, old_prefix, new_prefix } => {
            let id = resolve(client, job).await?;
            let replaced = client.replace_remote_prefix(id, old_prefix, new_prefix).await?;
            show(format, &replaced, |r, _| match r.code {
                BitsCode::S_FALSE => {
                    println!("No remote URL of job {} starts with {old_prefix}.", r.job.id)
                }
                _ => println!("Job {}: remote URLs now start with {new_prefix}.", r.job.id),
            })
        }
        JobCommand::SetFile { job, index, remote_url, valid } => {
            let changes = FileChanges { remote_url: remote_url.clone(), valid: *valid };
            if changes == FileChanges::default() {
                return Err(usage("give --remote-url and/or --valid"));
            }
            let file = client.set_file(resolve(client, job).await?, *index, &changes).await?;
            show(format, &file, |f, wide| output::files(std::slice::from_ref(f), wide))
        }
        JobCommand::Reply { job, output } => reply(client, format, job, output.as_deref()).await,
        JobCommand::Resume { job } => act(client, format, job, JobAction::Resume).await,
        JobCommand::Suspend { job } => act(client, format, job, JobAction::Suspend).await,
        JobCommand::Cancel { job: Some(job), .. } => {
            act(client, format, job, JobAction::Cancel).await
        }
        JobCommand::Cancel { job: None, all_users, .. } => {
            cancel_all(client, format, *all_users).await
        }
        JobCommand::Complete { job } => act(client, format, job, JobAction::Complete).await,
        JobCommand::TakeOwnership { job } => {
            act(client, format, job, JobAction::TakeOwnership).await
        }
    }
}

/// `ferry job reply`: the reply to stdout or a file; with structured output, an object
/// saying how long it is and, when it is text and not written to a file, the text.
async fn reply(
    client: &Client,
    format: Format,
    job: &str,
    path: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let id = resolve(client, job).await?;
    let reply = client.reply(id).await?;
    if let Some(path) = path {
        std::fs::write(path, &reply).with_context(|| format!("cannot write {}", path.display()))?;
        let written = json!({ "job": id, "length": reply.len(), "output": path });
        return show(format, &written, |_, _| {
            println!("{} bytes of reply written to {}.", reply.len(), path.display())
        });
    }
    if format.structured() {
        let text = String::from_utf8(reply.clone()).ok();
        let object = match text {
            Some(text) => json!({ "job": id, "length": reply.len(), "reply": text }),
            None => json!({ "job": id, "length": reply.len(), "reply_hex": hex_of(&reply) }),
        };
        return output::structured(format, &object).map(drop);
    }
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_all(&reply).and_then(|()| out.flush()).context("cannot write the reply")
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn act(client: &Client, format: Format, job: &str, action: JobAction) -> anyhow::Result<()> {
    let result = client.act(resolve(client, job).await?, action).await?;
    if output::structured(format, &result)? {
        return Ok(());
    }
    let done = match action {
        JobAction::Resume => "resumed",
        JobAction::Suspend => "suspended",
        JobAction::Cancel => "cancelled",
        JobAction::Complete => "completed",
        JobAction::TakeOwnership => "taken over",
    };
    println!("Job {} {done}; it is now {}.", result.job.id, result.job.state.bits_name());
    if result.code.0 != 0 {
        println!("{} ({})", result.code_name, result.code);
    }
    Ok(())
}

/// `ferry job cancel --all [--all-users]` (`bitsadmin /reset [/allusers]`): cancels
/// every unfinished job of the caller (of every user with `all_users`). Goes on past a
/// job that cannot be cancelled, and fails at the end if any could not.
async fn cancel_all(client: &Client, format: Format, all_users: bool) -> anyhow::Result<()> {
    let jobs = client.list_jobs(all_users).await?;
    let mut cancelled = Vec::new();
    let mut failed = Vec::new();
    for job in &jobs {
        match client.act(job.id, JobAction::Cancel).await {
            Ok(_) => cancelled.push(job.id),
            // Finished meanwhile (completed or cancelled by someone else): not ours to count.
            Err(e) if e.code() == Some(BitsCode::BG_E_NOT_FOUND) => {}
            Err(e) => failed.push(json!({ "job": job.id, "error": e.to_string() })),
        }
    }
    if !failed.is_empty() {
        let which: Vec<String> =
            failed.iter().map(|f| format!("{}: {}", f["job"], f["error"])).collect();
        anyhow::bail!(
            "{} job(s) cancelled, {} not: {}",
            cancelled.len(),
            failed.len(),
            which.join("; ")
        );
    }
    let outcome = json!({ "cancelled": cancelled });
    show(format, &outcome, |_, _| {
        for id in &cancelled {
            println!("Job {id} cancelled.");
        }
        println!("{} job(s) cancelled.", cancelled.len());
    })
}
