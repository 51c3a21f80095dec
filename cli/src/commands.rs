//! Executing a command line against the API.

use anyhow::{Context as _, bail};
use ferry_coordinator::Client;
use ferry_protocol::api::{FileChanges, JobList};
use ferry_protocol::command::{JobAction, NewJob, PropertyChanges};
use ferry_protocol::job::{NotifyCmdLine, ProxySettings};
use ferry_protocol::{BitsCode, FileRange, JobId, NewFile};

use crate::args::{
    ClusterCommand, CredentialsCommand, ErrorCommand, JobCommand, Noun, SetArgs, TokenCommand,
    WatchArgs,
};
use crate::{output, target};

/// Prints `value` as JSON with `--json`, else the human rendering.
fn show<T: serde::Serialize>(json: bool, value: &T, human: impl FnOnce(&T)) -> anyhow::Result<()> {
    if json {
        output::json(value)
    } else {
        human(value);
        Ok(())
    }
}

/// Runs the parsed command line.
pub(crate) async fn run(cli: &crate::args::Cli) -> anyhow::Result<()> {
    let url = target::node_url(cli);
    let token = target::token(cli, &url);
    let client = match &cli.ca {
        Some(path) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read the CA file {} (--ca)", path.display()))?;
            Client::with_ca(&url, token, &pem)?
        }
        None => Client::new(&url, token)?,
    };
    match &cli.command {
        Noun::Job(command) => job(&client, cli.json, command).await,
        Noun::Transfer(args) => crate::transfer::run(&client, cli.json, args).await,
        Noun::Watch(args) => watch(&client, cli.json, args).await,
        Noun::Fleet(command) => crate::fleet::run(&client, cli.json, command).await,
        Noun::Error(ErrorCommand::Describe { code }) => {
            show(cli.json, &client.describe_error(code).await?, output::description)
        }
        Noun::Cluster(ClusterCommand::Join { addr }) => bail!(
            "a node joins when it starts: run `ferryd --join {addr} --join-token TOKEN` on the new \
             machine (TOKEN is in the first node's <data-dir>/join.token); this command cannot join a running node"
        ),
        Noun::Cluster(ClusterCommand::Leave { node_id }) => {
            client.remove_member(*node_id).await?;
            let removed = serde_json::json!({ "removed": node_id });
            show(cli.json, &removed, |_| println!("Node {node_id} left the cluster."))
        }
        Noun::Token(command) => tokens(&client, cli.json, command).await,
        Noun::Node(command) => crate::node::run(&client, cli.json, command).await,
        Noun::Cluster(command) => {
            let status = client.cluster().await?;
            match command {
                ClusterCommand::Members if cli.json => output::json(&status.members),
                ClusterCommand::Members => show(false, &status, output::members),
                _ => show(cli.json, &status, output::cluster),
            }
        }
    }
}

/// `ferry token`.
async fn tokens(client: &Client, json: bool, command: &TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create { name, role, roots } => {
            let created = client.create_token(name, (*role).into(), roots.clone()).await?;
            show(json, &created, |c| {
                eprintln!("Created a token for {} (shown once; every member accepts it):", c.name);
                println!("{}", c.token);
            })
        }
        TokenCommand::List => {
            let list = client.tokens().await?;
            show(json, &list, output::tokens)
        }
        TokenCommand::Revoke { name } => {
            client.revoke_token(name).await?;
            let revoked = serde_json::json!({ "revoked": name });
            show(json, &revoked, |_| println!("The token of {name} is revoked on every member."))
        }
    }
}

/// `ferry watch`: events until interrupted (or `--count`), across node losses.
async fn watch(client: &Client, json: bool, args: &WatchArgs) -> anyhow::Result<()> {
    use ferry_coordinator::bus::{Watched, Watcher};
    use ferry_protocol::event::{Delivery, EventFilter, StartAt};

    let jobs = match &args.job {
        Some(job) => vec![resolve(client, job).await?],
        None => Vec::new(),
    };
    let kinds = args
        .kinds
        .iter()
        .map(|k| k.parse())
        .collect::<Result<Vec<_>, String>>()
        .map_err(anyhow::Error::msg)?;
    let from: StartAt =
        args.from.as_deref().unwrap_or("now").parse().map_err(anyhow::Error::msg)?;
    let token = client.token().unwrap_or_default().to_owned();
    let filter = EventFilter { jobs, kinds, all_users: args.all_users };
    let mut watcher =
        Watcher::new(client.base().clone(), token, filter, from).with_api_ca(client.ca_pem());
    let mut printed = 0u64;
    while args.count.is_none_or(|n| printed < n) {
        match watcher.next().await? {
            Watched::Connected { node, position } => {
                eprintln!("ferry: watching events on node {node} from cursor {position}");
            }
            Watched::Delivery(Delivery::Event(event)) => {
                if json {
                    println!("{}", event.to_json());
                } else {
                    println!("{}", output::event_line(&event));
                }
                printed += 1;
            }
            Watched::Delivery(Delivery::Gap { from, oldest }) => {
                eprintln!(
                    "ferry: events {from} up to {oldest} are no longer held by the node; \
                     going on from {oldest}"
                );
            }
        }
    }
    Ok(())
}

/// Resolves a job given by id or by display name (unique among the caller's jobs).
async fn resolve(client: &Client, job: &str) -> anyhow::Result<JobId> {
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
        [] => bail!("no job of yours has the id or display name {job:?}"),
        many => bail!("{} of your jobs are named {job:?}; give the job id", many.len()),
    }
}

async fn job(client: &Client, json: bool, command: &JobCommand) -> anyhow::Result<()> {
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
            show(json, &job, |job| println!("Created job {}.", job.id))
        }
        JobCommand::AddFile { job, remote, local, ranges } => {
            let ranges = ranges
                .iter()
                .map(|r| r.parse::<FileRange>().map_err(anyhow::Error::msg))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let file = NewFile { remote_url: remote.clone(), local_path: local.clone(), ranges };
            let id = resolve(client, job).await?;
            let files = client.add_files(id, vec![file]).await?;
            show(json, &files, |f| println!("Added 1 file to job {id} ({} in all).", f.files.len()))
        }
        JobCommand::AddFileSet { job, list } => {
            let text = std::fs::read_to_string(list)
                .with_context(|| format!("cannot read {}", list.display()))?;
            let files = parse_file_set(&text)?;
            let count = files.len();
            let id = resolve(client, job).await?;
            let files = client.add_files(id, files).await?;
            show(json, &files, |f| {
                println!("Added {count} files to job {id} ({} in all).", f.files.len())
            })
        }
        JobCommand::Credentials(CredentialsCommand::Set { job, target, scheme, user }) => {
            let password = read_password()?;
            let id = resolve(client, job).await?;
            let set = client.set_credentials(id, *target, *scheme, user, &password).await?;
            show(json, &set, |_| println!("Credentials set on job {id}."))
        }
        JobCommand::Credentials(CredentialsCommand::Remove { job, target, scheme }) => {
            let id = resolve(client, job).await?;
            let left = client.remove_credentials(id, *target, *scheme).await?;
            show(json, &left, |_| println!("Credentials removed from job {id}."))
        }
        JobCommand::Info { job } => {
            let info = client.job(resolve(client, job).await?).await?;
            show(json, &info, output::job)
        }
        JobCommand::List { all_users } => {
            let list = JobList { jobs: client.list_jobs(*all_users).await? };
            show(json, &list, |l| output::jobs(&l.jobs))
        }
        JobCommand::Files { job, index: None } => {
            let files = client.files(resolve(client, job).await?).await?;
            show(json, &files, |f| output::files(&f.files))
        }
        JobCommand::Files { job, index: Some(index) } => {
            let file = client.file(resolve(client, job).await?, *index).await?;
            show(json, &file, |f| output::files(std::slice::from_ref(f)))
        }
        JobCommand::Error { job } => {
            let error = client.job_error(resolve(client, job).await?).await?;
            show(json, &error, output::error)
        }
        JobCommand::Set(set) => {
            let changes = property_changes(set)?;
            let info = client.set_properties(resolve(client, &set.job).await?, &changes).await?;
            show(json, &info, |i| println!("Job {} updated.", i.id))
        }
        JobCommand::ReplaceRemotePrefix { job, old_prefix, new_prefix } => {
            let id = resolve(client, job).await?;
            let replaced = client.replace_remote_prefix(id, old_prefix, new_prefix).await?;
            show(json, &replaced, |r| match r.code {
                BitsCode::S_FALSE => {
                    println!("No remote URL of job {} starts with {old_prefix}.", r.job.id)
                }
                _ => println!("Job {}: remote URLs now start with {new_prefix}.", r.job.id),
            })
        }
        JobCommand::SetFile { job, index, remote_url, valid } => {
            let changes = FileChanges { remote_url: remote_url.clone(), valid: *valid };
            if changes == FileChanges::default() {
                bail!("give --remote-url and/or --valid");
            }
            let file = client.set_file(resolve(client, job).await?, *index, &changes).await?;
            show(json, &file, |f| output::files(std::slice::from_ref(f)))
        }
        JobCommand::Reply { job, output } => {
            let id = resolve(client, job).await?;
            let reply = client.reply(id).await?;
            match output {
                Some(path) => {
                    std::fs::write(path, &reply)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    if !json {
                        println!("{} bytes of reply written to {}.", reply.len(), path.display());
                    }
                    Ok(())
                }
                None => {
                    use std::io::Write as _;
                    let mut out = std::io::stdout().lock();
                    out.write_all(&reply)
                        .and_then(|()| out.flush())
                        .context("cannot write the reply")
                }
            }
        }
        JobCommand::Resume { job } => act(client, json, job, JobAction::Resume).await,
        JobCommand::Suspend { job } => act(client, json, job, JobAction::Suspend).await,
        JobCommand::Cancel { job } => act(client, json, job, JobAction::Cancel).await,
        JobCommand::Complete { job } => act(client, json, job, JobAction::Complete).await,
        JobCommand::TakeOwnership { job } => act(client, json, job, JobAction::TakeOwnership).await,
    }
}

async fn act(client: &Client, json: bool, job: &str, action: JobAction) -> anyhow::Result<()> {
    let result = client.act(resolve(client, job).await?, action).await?;
    if json {
        return output::json(&result);
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

/// bitsadmin `/addfileset` format: "REMOTE LOCAL" per line, blank lines and `#` comments
/// ignored.
fn parse_file_set(text: &str) -> anyhow::Result<Vec<NewFile>> {
    let mut files = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((remote, local)) = line.split_once(char::is_whitespace) else {
            bail!("line {}: expected \"REMOTE LOCAL\"", n + 1);
        };
        files.push(NewFile {
            remote_url: remote.to_owned(),
            local_path: local.trim().to_owned(),
            ranges: vec![],
        });
    }
    if files.is_empty() {
        bail!("the list names no files");
    }
    Ok(files)
}

/// The password: one line from stdin (a prompt first when stdin is a terminal). Never
/// an argument, which other users could read from the process table.
pub(crate) fn read_password() -> anyhow::Result<ferry_protocol::credentials::Secret> {
    use std::io::{BufRead, IsTerminal, Write};
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("Password (echoed; pipe it in to avoid that): ");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    stdin.lock().read_line(&mut line).context("cannot read the password from stdin")?;
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        bail!("no password on stdin");
    }
    Ok(ferry_protocol::credentials::Secret::new(password))
}

fn property_changes(set: &SetArgs) -> anyhow::Result<PropertyChanges> {
    let notify_cmdline = match (&set.notify_cmdline, set.clear_notify_cmdline) {
        (_, true) => Some(None),
        (Some(program), false) => {
            Some(Some(NotifyCmdLine { program: program.clone(), args: set.notify_args.clone() }))
        }
        (None, false) => None,
    };
    let custom_headers = match (set.custom_headers.is_empty(), set.clear_custom_headers) {
        (_, true) => Some(None),
        (false, false) => Some(Some(set.custom_headers.clone().into())),
        (true, false) => None,
    };
    let proxy = match (set.proxy_usage, &set.proxy_list, &set.proxy_bypass) {
        (None, None, None) => None,
        (None, _, _) => bail!("--proxy-list and --proxy-bypass need --proxy-usage override"),
        (Some(usage), list, bypass) => {
            Some(ProxySettings { usage: usage.into(), list: list.clone(), bypass: bypass.clone() })
        }
    };
    let changes = PropertyChanges {
        display_name: set.display_name.clone(),
        description: set.description.clone(),
        priority: set.priority.map(Into::into),
        notify_flags: set.notify_flags,
        notify_cmdline,
        minimum_retry_delay_secs: set.min_retry_delay,
        no_progress_timeout_secs: set.no_progress_timeout,
        max_download_time_secs: set.max_download_time,
        proxy,
        reply_file_name: set.reply_file_name.clone().map(Some),
        custom_headers,
        custom_headers_write_only: set.custom_headers_write_only.then_some(true),
        dynamic_content: set.dynamic_content,
        max_download_size: set.max_download_size.map(Some),
        peer_caching_flags: set.peer_caching_flags,
        acl_flags: set.acl_flags,
        minimum_notification_interval_ms: set.min_notification_interval,
        max_connections: set.connections.map(Some),
        max_helpers: set.max_helpers.map(Some),
        security_flags: set.security_flags,
        client_certificate: match (&set.client_certificate, set.clear_client_certificate) {
            (_, true) => Some(None),
            (Some(path), false) => Some(Some(path.clone())),
            (None, false) => None,
        },
    };
    if changes.is_empty() {
        bail!("nothing to change: give at least one property option (see ferry job set --help)");
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_sets_parse_like_bitsadmin() {
        let files = parse_file_set("# list\nhttp://o/a /tmp/a\n\n  http://o/b   /tmp/b c  \n")
            .expect("parses");
        assert_eq!(files.len(), 2);
        assert_eq!(files[1].local_path, "/tmp/b c");
        assert!(parse_file_set("http://o/a\n").is_err());
        assert!(parse_file_set("# nothing\n").is_err());
    }
}
