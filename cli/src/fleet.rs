//! `ferry fleet distribute` and `ferry fleet status`: one file brought to several nodes.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use ferry_coordinator::Client;
use ferry_protocol::api::{FleetInfo, NewFleet};
use ferry_protocol::command::{JobAction, PropertyChanges};
use ferry_protocol::credentials::{AuthScheme, AuthTarget, NewCredentials};
use ferry_protocol::{JobId, JobState};

use crate::args::FleetCommand;
use crate::output::{self, Format};
use crate::signals::Terminations;

/// How often a waiting `distribute` polls the fleet.
const POLL: Duration = Duration::from_millis(200);

/// Runs a `ferry fleet` command.
pub(crate) async fn run(
    client: &Client,
    format: Format,
    command: &FleetCommand,
) -> anyhow::Result<()> {
    match command {
        FleetCommand::Status { id } => {
            let id: JobId = id.parse().with_context(|| format!("{id:?} is not a fleet id"))?;
            let fleet = client.fleet(id).await?;
            show(format, &fleet)
        }
        FleetCommand::Distribute { url, path, nodes, priority, no_wait, server_user, sha256 } => {
            let credentials = match server_user {
                Some(user) => vec![NewCredentials {
                    target: AuthTarget::Server,
                    scheme: AuthScheme::Basic,
                    user_name: user.clone(),
                    password: crate::password::read_password()?,
                }],
                None => Vec::new(),
            };
            let request = NewFleet {
                remote_url: url.clone(),
                local_path: crate::transfer::absolute(path)?,
                sha256: sha256.clone(),
                nodes: node_list(nodes)?,
                display_name: None,
                properties: PropertyChanges {
                    priority: priority.map(Into::into),
                    ..PropertyChanges::default()
                },
                credentials,
            };
            let started = Instant::now();
            let mut signals = Terminations::install()?;
            let fleet = client.create_fleet(&request).await?;
            if *no_wait {
                return show(format, &fleet);
            }
            eprintln!("ferry: fleet {} to {} node(s)", fleet.id, fleet.members.len());
            let fleet = tokio::select! {
                result = wait(client, &fleet) => result?,
                signal = signals.recv() => {
                    for member in &fleet.members {
                        let _ = client.act(member.job, JobAction::Cancel).await;
                    }
                    bail!("interrupted by {signal}; the jobs of fleet {} were cancelled", fleet.id);
                }
            };
            if let Some(failed) = fleet.members.iter().find(|m| m.state == JobState::Error) {
                if !format.structured() {
                    output::fleet(&fleet);
                }
                let detail = failed.error.as_ref().map_or(String::new(), |e| e.detail.clone());
                bail!(
                    "node {} failed: {detail}; see `ferry fleet status {}` (the other jobs go on)",
                    failed.node,
                    fleet.id
                );
            }
            for member in &fleet.members {
                client.act(member.job, JobAction::Complete).await?;
            }
            let fleet = client.fleet(fleet.id).await?;
            if output::structured(format, &fleet)? {
                return Ok(());
            }
            output::fleet(&fleet);
            println!(
                "Distributed to {} node(s) in {:.1} s (fleet {}).",
                fleet.members.len(),
                started.elapsed().as_secs_f64(),
                fleet.id
            );
            Ok(())
        }
    }
}

/// Prints the fleet as `format` says.
fn show(format: Format, fleet: &FleetInfo) -> anyhow::Result<()> {
    output::show(format, fleet, |f, _| output::fleet(f))
}

/// `all` (every member) or comma-separated node ids.
fn node_list(nodes: &str) -> anyhow::Result<Vec<u64>> {
    if nodes.trim().eq_ignore_ascii_case("all") {
        return Ok(Vec::new());
    }
    nodes
        .split(',')
        .map(|n| n.trim().parse().with_context(|| format!("{n:?} is not a node id")))
        .collect()
}

/// Follows the fleet until every member is TRANSFERRED or one is in ERROR, saying on
/// stderr how far it got (at most every [`REPORT_EVERY`], when something moved). It is
/// read again at each event or progress report of its jobs on the event stream, or
/// polled where the stream cannot be had.
async fn wait(client: &Client, started: &FleetInfo) -> anyhow::Result<FleetInfo> {
    use ferry_coordinator::sse::SseSubscription;
    let id = started.id;
    let jobs: Vec<JobId> = started.members.iter().map(|m| m.job).collect();
    let mut stream = SseSubscription::with_progress(client, &jobs, PROGRESS_EVERY).await.ok();
    let mut reported: Option<(Instant, String)> = None;
    loop {
        let fleet = client.fleet(id).await?;
        let line = progress_line(&fleet);
        let due = reported
            .as_ref()
            .is_none_or(|(at, last)| at.elapsed() >= REPORT_EVERY && *last != line);
        if due {
            eprintln!("ferry: fleet {id}: {line}");
            reported = Some((Instant::now(), line));
        }
        let states = || fleet.members.iter().map(|m| m.state);
        if states().all(|s| s == JobState::Transferred) || states().any(|s| s == JobState::Error) {
            return Ok(fleet);
        }
        if let Some(gone) =
            states().find(|s| matches!(s, JobState::Cancelled | JobState::Acknowledged))
        {
            bail!("a job of fleet {id} was {} by someone else", gone.bits_name().to_lowercase());
        }
        match stream.as_mut() {
            Some(events) => {
                if !matches!(events.next_item().await, Ok(Some(_))) {
                    eprintln!("ferry: the event stream ended; polling instead");
                    stream = None;
                }
            }
            None => tokio::time::sleep(POLL).await,
        }
    }
}

/// How often the node reports the fleet's progress on the event stream.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// How often `fleet distribute` says how far the fleet got.
const REPORT_EVERY: Duration = Duration::from_secs(5);

/// `2/3 nodes transferred, 1.0 GiB / 1.5 GiB`.
fn progress_line(fleet: &FleetInfo) -> String {
    let done = fleet.members.iter().filter(|m| m.state == JobState::Transferred).count();
    let bytes: u64 = fleet.members.iter().map(|m| m.progress.bytes_transferred).sum();
    let total = fleet
        .members
        .iter()
        .map(|m| m.progress.bytes_total)
        .try_fold(0u64, |sum, t| t.map(|t| sum.saturating_add(t)));
    format!(
        "{done}/{} nodes transferred, {} / {}",
        fleet.members.len(),
        output::size(Some(bytes)),
        output::size(total)
    )
}
