//! The download benchmark's output: one table of every client in every scenario (time,
//! throughput, ratio to the best aria2c of the scenario, `ferryd` peak RSS), then
//! Ferry's targets with PASS, FAIL or n/a. Pure formatting of [`Row`]s: runs nothing.

use std::time::Duration;

use crate::download::{Options, Outcome, Row, Scenario, Tool};

/// The most peak RSS a `ferryd` may reach in any run.
const RSS_LIMIT: u64 = 150 << 20;

/// How a target fared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// Met.
    Pass,
    /// Missed.
    Fail,
    /// Not measurable: a run it needs failed or was skipped.
    Unknown,
}

impl Verdict {
    fn label(self) -> &'static str {
        match self {
            Self::Pass => "PASS",
            Self::Fail => "FAIL",
            Self::Unknown => "n/a",
        }
    }
}

/// Prints the table and the targets.
pub(crate) fn print(options: &Options, rows: &[Row]) {
    println!();
    println!(
        "ferry-bench download — local nginx (sendfile, 1 worker); seconds = wall time of the \
         client process, best of {}; outputs checked with blake3; each ferryd holds {} \
         suspended jobs; before each run, sync and the memory it will use touched (warm.rs)",
        options.repeat, options.queued
    );
    let header = ["scenario", "client", "seconds", "rate", "vs aria2c", "ferryd RSS", "note"];
    let mut table = vec![header.map(str::to_owned)];
    table.extend(rows.iter().map(|row| cells(options, rows, row)));
    print_aligned(&table);

    if rows.iter().any(|r| r.scenario == Scenario::Throttled) {
        println!(
            "(throttled: nginx sends each connection's first write, up to a second's worth \
             and bounded by the socket buffer, at full speed; small sizes flatter clients \
             with many connections)"
        );
    }
    println!();
    println!("targets");
    for (claim, verdict, detail) in targets(options, rows) {
        println!("  {:<4}  {claim:<62} {detail}", verdict.label());
    }
}

/// One row's cells, in header order.
fn cells(options: &Options, rows: &[Row], row: &Row) -> [String; 7] {
    let scenario = row.scenario.label(options);
    let rss = row.peak_rss.map(|b| format!("{:.0} MiB", mib(b))).unwrap_or_default();
    let (seconds, rate, ratio, note) = match &row.outcome {
        Outcome::Done(elapsed) => {
            let secs = elapsed.as_secs_f64();
            let rate = if row.scenario == Scenario::SmallFiles {
                format!("{:.0} files/s", row.files as f64 / secs)
            } else {
                format!("{:.1} MiB/s", mib(row.bytes) / secs)
            };
            let ratio = best(rows, row.scenario, Tool::is_aria2)
                .map(|aria| format!("×{:.2}", secs / aria.as_secs_f64()))
                .unwrap_or_default();
            (format!("{secs:.2}"), rate, ratio, String::new())
        }
        Outcome::Skipped(why) => ("-".into(), String::new(), String::new(), why.clone()),
        Outcome::Failed(why) => {
            ("-".into(), String::new(), String::new(), format!("FAILED: {why}"))
        }
    };
    [scenario, row.tool.to_string(), seconds, rate, ratio, rss, note]
}

/// Prints rows of cells in columns: the first two left-aligned, then numbers
/// right-aligned, the last (notes) as is.
fn print_aligned(table: &[[String; 7]]) {
    let mut widths = [0usize; 7];
    for row in table {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in table {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            let pad = " ".repeat(width - cell.chars().count());
            match i {
                0 | 1 => line.push_str(&format!("{cell}{pad}  ")),
                6 => line.push_str(cell),
                _ => line.push_str(&format!("{pad}{cell}  ")),
            }
        }
        println!("{}", line.trim_end());
    }
}

/// The targets: what is claimed, whether it holds, and the figures behind it.
fn targets(options: &Options, rows: &[Row]) -> Vec<(String, Verdict, String)> {
    let mut targets = Vec::new();
    let defaults = |t: Tool| t == Tool::Ferry { connections: None };
    let aria16 = |t: Tool| t == Tool::Aria2 { connections: 16, parallel: 1 };
    let (verdict, detail) = at_most(
        best(rows, Scenario::Unthrottled, defaults),
        ("aria2c -x16", best(rows, Scenario::Unthrottled, aria16)),
        1.0,
    );
    targets.push(("unthrottled: ferry (defaults) time ≤ aria2c -x16 time".into(), verdict, detail));
    let (verdict, detail) = at_most(
        best(rows, Scenario::Unthrottled, defaults),
        ("curl", best(rows, Scenario::Unthrottled, |t| t == Tool::Curl)),
        1.1,
    );
    targets.push(("unthrottled: ferry (defaults) time ≤ 1.1 × curl time".into(), verdict, detail));
    let (verdict, detail) = at_most(
        best(rows, Scenario::Throttled, defaults),
        ("aria2c -x16", best(rows, Scenario::Throttled, aria16)),
        1.0,
    );
    targets.push(("throttled: ferry (defaults) time ≤ aria2c -x16 time".into(), verdict, detail));

    let peak = rows.iter().filter(|r| r.tool.is_ferry()).filter_map(|r| r.peak_rss).max();
    let (verdict, detail) = match peak {
        Some(peak) => (
            if peak <= RSS_LIMIT { Verdict::Pass } else { Verdict::Fail },
            format!("{:.0} MiB (largest of all Ferry runs)", mib(peak)),
        ),
        None => (Verdict::Unknown, "no successful Ferry run".into()),
    };
    let claim =
        format!("ferryd peak RSS ≤ {} MiB, {} jobs queued", RSS_LIMIT >> 20, options.queued);
    targets.push((claim, verdict, detail));

    // files/s ≥ 1.0 × curl's ⇔ time ≤ curl's (one curl fetching them in turn).
    let (verdict, detail) = at_most(
        best(rows, Scenario::SmallFiles, defaults),
        ("curl", best(rows, Scenario::SmallFiles, |t| t == Tool::Curl)),
        1.0,
    );
    targets.push((
        "small files: ferry (defaults) files/s ≥ curl files/s (sequential keep-alive)".into(),
        verdict,
        detail,
    ));
    targets
}

/// Whether `ferry ≤ factor × reference`, with both times for the record.
fn at_most(
    ferry: Option<Duration>,
    (name, reference): (&str, Option<Duration>),
    factor: f64,
) -> (Verdict, String) {
    match (ferry, reference) {
        (Some(f), Some(r)) => {
            let (f, r) = (f.as_secs_f64(), r.as_secs_f64());
            let verdict = if f <= r * factor { Verdict::Pass } else { Verdict::Fail };
            (verdict, format!("ferry {f:.2} s vs {name} {r:.2} s"))
        }
        (None, _) => (Verdict::Unknown, "no successful Ferry run".into()),
        (_, None) => (Verdict::Unknown, format!("no successful {name} run")),
    }
}

/// The fastest successful run among `scenario`'s rows whose tool passes `pick`.
fn best(rows: &[Row], scenario: Scenario, pick: impl Fn(Tool) -> bool) -> Option<Duration> {
    rows.iter()
        .filter(|r| r.scenario == scenario && pick(r.tool))
        .filter_map(|r| match r.outcome {
            Outcome::Done(elapsed) => Some(elapsed),
            Outcome::Skipped(_) | Outcome::Failed(_) => None,
        })
        .min()
}

/// Bytes as MiB.
fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}

/// Nearest-rank percentile `p` (0 to 1) of sorted `values`, in milliseconds.
pub(crate) fn percentile_ms(values: &[Duration], p: f64) -> f64 {
    let index = ((values.len() as f64 - 1.0) * p).round() as usize;
    values.get(index).map_or(0.0, |d| d.as_secs_f64() * 1e3)
}
