//! Executing a command line: the dispatch to each noun, and the small nouns (tokens,
//! the cluster, events, error codes). Jobs are in `job`, transfers in `transfer`.

use anyhow::bail;
use ferry_coordinator::Client;
use ferry_protocol::BitsCode;
use ferry_protocol::api::ErrorDescription;

use crate::args::{ClusterCommand, ErrorCommand, Noun, TokenCommand, WatchArgs};
use crate::failure::{Failure, usage};
use crate::output::{self, Format, show};

/// Runs a command that needs no node (completions, the man page, error codes), or
/// returns `None` for the others.
pub(crate) fn run_offline(cli: &crate::args::Cli) -> Option<anyhow::Result<()>> {
    match &cli.command {
        Noun::Completions { shell } => Some(crate::manual::completions(*shell)),
        Noun::Man => Some(crate::manual::man()),
        Noun::Error(ErrorCommand::Describe { code }) => Some(describe(cli.output(), code)),
        _ => None,
    }
}

/// Runs the parsed command line against the node of `client`.
pub(crate) async fn run(client: &Client, cli: &crate::args::Cli) -> anyhow::Result<()> {
    let format = cli.output();
    match &cli.command {
        Noun::Job(command) => crate::job::run(client, format, command).await,
        Noun::Transfer(args) => crate::transfer::run(client, format, args).await,
        Noun::Watch(args) => watch(client, format, args).await,
        Noun::Fleet(command) => crate::fleet::run(client, format, command).await,
        Noun::Completions { .. } | Noun::Man | Noun::Error(_) => run_offline(cli).unwrap_or(Ok(())),
        Noun::Cluster(ClusterCommand::Join { addr }) => bail!(
            "a node joins when it starts: run `ferryd --join {addr} --join-token TOKEN` on the new \
             machine (TOKEN is in the first node's <data-dir>/join.token); this command cannot join a running node"
        ),
        Noun::Cluster(ClusterCommand::Leave { node_id }) => {
            client.remove_member(*node_id).await?;
            let removed = serde_json::json!({ "removed": node_id });
            show(format, &removed, |_, _| println!("Node {node_id} left the cluster."))
        }
        Noun::Token(command) => tokens(client, format, command).await,
        Noun::Node(command) => crate::node::run(client, format, command).await,
        Noun::Cluster(command) => {
            let status = client.cluster().await?;
            match command {
                ClusterCommand::Members => {
                    let members = serde_json::json!({ "members": status.members });
                    show(format, &members, |_, _| output::members(&status))
                }
                _ => show(format, &status, |s, _| output::cluster(s)),
            }
        }
    }
}

/// `ferry error describe CODE`, from the table the CLI carries (no node needed).
fn describe(format: Format, code: &str) -> anyhow::Result<()> {
    let parsed: BitsCode = code.parse().map_err(|_| {
        usage(format!(
            "{code:?} is not a code: give hex such as 0x80200001 or a name such as BG_E_NOT_FOUND"
        ))
    })?;
    let description = ErrorDescription::of(parsed)
        .ok_or_else(|| Failure::NotFound(format!("no description is known for {parsed}")))?;
    show(format, &description, |d, _| output::description(d))
}

/// `ferry token`.
async fn tokens(client: &Client, format: Format, command: &TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create { name, role, roots } => {
            let created = client.create_token(name, (*role).into(), roots.clone()).await?;
            show(format, &created, |c, _| {
                eprintln!("Created a token for {} (shown once; every member accepts it):", c.name);
                println!("{}", c.token);
            })
        }
        TokenCommand::List => {
            let list = client.tokens().await?;
            show(format, &list, |l, _| output::tokens(l))
        }
        TokenCommand::Revoke { name } => {
            client.revoke_token(name).await?;
            let revoked = serde_json::json!({ "revoked": name });
            show(format, &revoked, |_, _| {
                println!("The token of {name} is revoked on every member.")
            })
        }
    }
}

/// `ferry watch`: events until interrupted (or `--count`), across node losses.
async fn watch(client: &Client, format: Format, args: &WatchArgs) -> anyhow::Result<()> {
    use ferry_coordinator::bus::{Transport, Watched, Watcher};
    use ferry_protocol::event::{Delivery, EventFilter, StartAt};

    let jobs = match &args.job {
        Some(job) => vec![crate::job::resolve(client, job).await?],
        None => Vec::new(),
    };
    let kinds =
        args.kinds.iter().map(|k| k.parse()).collect::<Result<Vec<_>, String>>().map_err(usage)?;
    let from: StartAt = args.from.as_deref().unwrap_or("now").parse().map_err(usage)?;
    let token = client.token().unwrap_or_default().to_owned();
    let filter = EventFilter { jobs, kinds, all_users: args.all_users };
    let transport = if args.quic { Transport::Quic } else { Transport::Http };
    let mut watcher = Watcher::new(client.base().clone(), token, filter, from)
        .with_api_ca(client.ca_pem())
        .with_transport(transport);
    let mut printed = 0u64;
    while args.count.is_none_or(|n| printed < n) {
        match watcher.next().await? {
            Watched::Connected { node, position } => {
                eprintln!("ferry: watching events on node {node} from cursor {position}");
            }
            Watched::Delivery(Delivery::Event(event)) => {
                match format {
                    Format::Json => println!("{}", event.to_json()),
                    Format::Yaml => print!("---\n{}", crate::yaml::to_yaml(&event.to_json())),
                    Format::Table | Format::Wide => println!("{}", output::event_line(&event)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_described_without_a_node() -> anyhow::Result<()> {
        describe(Format::Json, "0x80200013")?;
        describe(Format::Table, "BG_E_HTTP_ERROR_404")?;
        let unknown = describe(Format::Table, "0x80209999").expect_err("unknown code");
        assert_eq!(crate::failure::exit_code(&unknown), crate::failure::NOT_FOUND);
        let bad = describe(Format::Table, "not-a-code").expect_err("not a code");
        assert_eq!(crate::failure::exit_code(&bad), crate::failure::USAGE);
        Ok(())
    }
}
