//! `ferry job list --watch` (`bitsadmin /monitor`): the job list redrawn every
//! interval until interrupted. On a terminal the screen is cleared and redrawn; piped,
//! each refresh is appended (with `-o json`, one `{"jobs": [...]}` line each). A
//! refresh that fails for a transient reason (no node answers, an election) is shown
//! and tried again at the next tick; any other failure ends the command.

use std::io::IsTerminal as _;
use std::time::Duration;

use ferry_coordinator::Client;
use ferry_protocol::api::JobList;

use crate::failure::{TRANSIENT, exit_code};
use crate::output::{self, Format};
use crate::signals::Terminations;

/// Runs the refreshing list.
pub(crate) async fn run(
    client: &Client,
    format: Format,
    all_users: bool,
    interval: Duration,
) -> anyhow::Result<()> {
    let mut signals = Terminations::install()?;
    let terminal = std::io::stdout().is_terminal() && !format.structured();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = signals.recv() => return Ok(()),
        }
        let listed = tokio::select! {
            listed = client.list_jobs(all_users) => listed,
            _ = signals.recv() => return Ok(()),
        };
        let jobs = match listed {
            Ok(jobs) => jobs,
            Err(e) => {
                let e = anyhow::Error::from(e);
                if exit_code(&e) != TRANSIENT {
                    return Err(e);
                }
                eprintln!(
                    "ferry: {e:#} (trying again in {})",
                    humantime::format_duration(interval)
                );
                continue;
            }
        };
        let list = JobList { jobs, next_cursor: None };
        match format {
            Format::Json => output::json_line(&list)?,
            Format::Yaml => print!("---\n{}", crate::yaml::to_yaml(&serde_json::to_value(&list)?)),
            Format::Table | Format::Wide => {
                if terminal {
                    // Home and clear, as watch(1) does.
                    print!("\x1b[H\x1b[2J");
                }
                println!(
                    "Every {}: ferry job list{}    {}",
                    humantime::format_duration(interval),
                    if all_users { " --all-users" } else { "" },
                    ferry_protocol::Timestamp::now()
                );
                output::jobs(&list.jobs, format == Format::Wide);
                if !terminal {
                    println!();
                }
            }
        }
    }
}
