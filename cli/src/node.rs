//! `ferry node`: settings of the node the command talks to (`--node`), not of the
//! cluster. Its bandwidth policy for background transfers: shown, and replaced until
//! the node restarts (the node's `[bandwidth]` configuration is the durable source).

use anyhow::{Context as _, bail};
use ferry_coordinator::Client;
use ferry_coordinator::bandwidth::{
    BandwidthPolicy, BandwidthStatus, PolicySource, Weekday, WorkHours, format_rate,
};

use crate::args::{NodeCommand, SetBandwidthArgs};
use crate::output::{self, Format};

/// Runs `ferry node ...`.
pub(crate) async fn run(
    client: &Client,
    format: Format,
    command: &NodeCommand,
) -> anyhow::Result<()> {
    let status = match command {
        NodeCommand::Bandwidth => client.bandwidth().await?,
        NodeCommand::SetBandwidth(args) => {
            let current = client.bandwidth().await?.policy;
            client.set_bandwidth(&policy(args, current)?).await?
        }
    };
    output::show(format, &status, |s, _| print(s))
}

/// The policy `args` ask for: the rates and `limit_foreground` as given, the work-hours
/// window (and its rate, unless given) kept from `current` unless `args` replace or
/// drop it.
fn policy(args: &SetBandwidthArgs, current: BandwidthPolicy) -> anyhow::Result<BandwidthPolicy> {
    let work_hours = if args.no_work_hours {
        None
    } else if let Some(spec) = &args.work_hours {
        let offset = args
            .utc_offset
            .clone()
            .or_else(|| current.work_hours.as_ref().map(|w| w.utc_offset.clone()))
            .unwrap_or_else(|| "+00:00".to_owned());
        Some(work_hours(spec, offset)?)
    } else {
        current.work_hours
    };
    let work_hours_rate = match &work_hours {
        None if args.work_hours_rate.is_some() => {
            bail!(
                "--work-hours-rate needs a work-hours window: the node has none; give --work-hours too"
            )
        }
        None => None,
        Some(_) => args.work_hours_rate.or(current.work_hours_rate),
    };
    Ok(BandwidthPolicy {
        background_rate: args.rate,
        work_hours,
        work_hours_rate,
        limit_foreground: args.limit_foreground,
    })
}

/// `"mon-fri 08:00-17:00"`: days (names, ranges, comma-separated) then `FROM-TO`.
pub(crate) fn work_hours(spec: &str, utc_offset: String) -> anyhow::Result<WorkHours> {
    let explain =
        || format!("--work-hours {spec:?}: give DAYS FROM-TO, e.g. \"mon-fri 08:00-17:00\"");
    let (days_text, times) = spec.trim().split_once(char::is_whitespace).with_context(explain)?;
    let (from, to) = times.trim().split_once('-').with_context(explain)?;
    let mut days = Vec::new();
    for part in days_text.split(',') {
        let (first, last) = part.split_once('-').unwrap_or((part, part));
        let (first, last): (Weekday, Weekday) = (
            first.parse().map_err(anyhow::Error::msg).with_context(explain)?,
            last.parse().map_err(anyhow::Error::msg).with_context(explain)?,
        );
        // A range may wrap past Sunday ("fri-mon").
        let mut day = first.index();
        loop {
            days.push(Weekday::ALL[day]);
            if day == last.index() {
                break;
            }
            day = (day + 1) % 7;
        }
    }
    days.sort();
    days.dedup();
    Ok(WorkHours { days, from: from.trim().to_owned(), to: to.trim().to_owned(), utc_offset })
}

fn print(status: &BandwidthStatus) {
    let policy = &status.policy;
    let source = match status.source {
        PolicySource::Config => "its configuration",
        PolicySource::Api => "the API, until the node restarts",
    };
    println!("Node {} bandwidth policy (from {source}):", status.node_id);
    let when = if status.in_work_hours { "inside work hours" } else { "outside work hours" };
    match &policy.work_hours {
        Some(_) => println!("  Background now:     {} ({when})", format_rate(status.current_rate)),
        None => println!("  Background now:     {}", format_rate(status.current_rate)),
    }
    println!("  Background rate:    {}", format_rate(policy.background_rate));
    match (&policy.work_hours, policy.work_hours_rate) {
        (Some(hours), Some(rate)) => {
            let days: Vec<&str> = hours.days.iter().map(|d| d.as_str()).collect();
            println!(
                "  Work hours:         {} {}-{} (UTC{}) at {}",
                days.join(","),
                hours.from,
                hours.to,
                hours.utc_offset,
                format_rate(rate)
            );
        }
        _ => println!("  Work hours:         none"),
    }
    let foreground = if policy.limit_foreground { "limited too" } else { "exempt" };
    println!("  Foreground jobs:    {foreground}");
    if let Some(secs) = status.next_change_secs {
        println!("  Next change in:     {}", duration(secs));
    }
    println!("  Throttled so far:   {}", output::size(Some(status.throttled_bytes)));
}

/// `2d 3h`, `1h 5m`, `12m 30s`, `9s`.
fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_hours_read_days_ranges_and_times() {
        let hours = work_hours("mon-fri 08:00-17:00", "+01:00".into()).expect("parses");
        let weekdays = [Weekday::Mon, Weekday::Tue, Weekday::Wed, Weekday::Thu, Weekday::Fri];
        assert_eq!(hours.days, weekdays);
        assert_eq!((hours.from.as_str(), hours.to.as_str()), ("08:00", "17:00"));
        assert_eq!(hours.utc_offset, "+01:00");
        let hours = work_hours("sat,sun,fri-mon 22:00-06:00", "+00:00".into()).expect("parses");
        assert_eq!(hours.days, [Weekday::Mon, Weekday::Fri, Weekday::Sat, Weekday::Sun]);
        for bad in ["mon-fri", "08:00-17:00", "mon-xyz 08:00-17:00", "mon 08:00"] {
            assert!(work_hours(bad, "+00:00".into()).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_new_rate_keeps_the_window_unless_told() {
        let current = BandwidthPolicy {
            background_rate: 1,
            work_hours: Some(work_hours("mon 08:00-09:00", "+02:00".into()).expect("parses")),
            work_hours_rate: Some(5),
            limit_foreground: true,
        };
        let args = |work_hours: Option<&str>, rate: Option<u64>, none: bool| SetBandwidthArgs {
            rate: 7,
            work_hours_rate: rate,
            work_hours: work_hours.map(str::to_owned),
            utc_offset: None,
            no_work_hours: none,
            limit_foreground: false,
        };
        let kept = policy(&args(None, None, false), current.clone()).expect("policy");
        assert_eq!((kept.background_rate, kept.work_hours_rate), (7, Some(5)));
        assert_eq!(kept.work_hours, current.work_hours);
        assert!(!kept.limit_foreground);
        let moved = policy(&args(Some("tue 10:00-11:00"), Some(9), false), current.clone())
            .expect("policy");
        let hours = moved.work_hours.expect("window");
        assert_eq!((hours.days, hours.utc_offset.as_str()), (vec![Weekday::Tue], "+02:00"));
        assert_eq!(moved.work_hours_rate, Some(9));
        let dropped = policy(&args(None, None, true), current.clone()).expect("policy");
        assert_eq!((dropped.work_hours, dropped.work_hours_rate), (None, None));
        assert!(policy(&args(None, Some(3), true), current).is_err());
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration(9), "9s");
        assert_eq!(duration(750), "12m 30s");
        assert_eq!(duration(3900), "1h 5m");
        assert_eq!(duration(183_600), "2d 3h");
    }
}
