//! Rendering: human tables by default (`-o wide`: every column, never wrapped), one
//! JSON object per command with `--json`/`-o json` (the API's own types), or the same
//! object as YAML (`-o yaml`).
//!
//! The JSON rule: a command prints exactly one object. A command that shows an API
//! resource prints it as the API returns it (`JobInfo`, `FileList`, `ClusterStatus`);
//! a list is an object holding one array named after what it lists (`{"jobs": [...]}`,
//! `{"files": [...]}`, `{"members": [...]}`, `{"credentials": [...]}`), as the API's
//! own list bodies are; a failure is `{"error": {...}}` (see `failure`). Streams
//! (`ferry watch`, `ferry job list --watch`) print one such object per line.

use clap::ValueEnum;
use comfy_table::presets::UTF8_BORDERS_ONLY;
use comfy_table::{ColumnConstraint, ContentArrangement, Table};
use ferry_protocol::api::{
    ClusterStatus, ErrorDescription, ErrorInfo, FileInfo, FleetInfo, JobInfo,
};
use ferry_protocol::file::LENGTH_TO_EOF;
use serde::Serialize;

/// `-o FORMAT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// Tables sized to the terminal (ids are never wrapped).
    Table,
    /// Tables with every column, never wrapped.
    Wide,
    /// One JSON object (the same as --json).
    Json,
    /// The JSON object as YAML.
    Yaml,
}

impl Format {
    /// True for JSON and YAML: machine-readable output, no prose on stdout.
    pub(crate) fn structured(self) -> bool {
        matches!(self, Self::Json | Self::Yaml)
    }
}

/// Prints `value` as `format` says if it is structured; false for the table formats
/// (the caller then draws its human rendering).
pub(crate) fn structured<T: Serialize>(format: Format, value: &T) -> anyhow::Result<bool> {
    match format {
        Format::Json => json(value)?,
        Format::Yaml => print!("{}", crate::yaml::to_yaml(&object(value)?)),
        Format::Table | Format::Wide => return Ok(false),
    }
    Ok(true)
}

/// Prints `value` in `format`: structured, or through `human` (told whether wide).
pub(crate) fn show<T: Serialize>(
    format: Format,
    value: &T,
    human: impl FnOnce(&T, bool),
) -> anyhow::Result<()> {
    if !structured(format, value)? {
        human(value, format == Format::Wide);
    }
    Ok(())
}

/// Prints `value` as pretty JSON (an object: see the module's rule), its fields in
/// their declared order.
pub(crate) fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    if text.starts_with('{') {
        println!("{text}");
    } else {
        println!("{}", serde_json::to_string_pretty(&object(value)?)?);
    }
    Ok(())
}

/// Prints `value` as one line of JSON (streams).
pub(crate) fn json_line<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(&object(value)?)?);
    Ok(())
}

/// `value` as a JSON object. Every command passes an object; anything else is a bug,
/// wrapped as `{"items": [...]}` or `{"value": ...}` rather than printed bare.
fn object<T: Serialize>(value: &T) -> anyhow::Result<serde_json::Value> {
    let value = serde_json::to_value(value)?;
    debug_assert!(value.is_object(), "the CLI prints objects only: {value}");
    Ok(match value {
        serde_json::Value::Object(_) => value,
        serde_json::Value::Array(_) => serde_json::json!({ "items": value }),
        other => serde_json::json!({ "value": other }),
    })
}

fn table(header: &[&str]) -> Table {
    table_of(header, false)
}

/// A table; `wide`: never wrapped (every column at its content's width).
pub(crate) fn table_of(header: &[&str], wide: bool) -> Table {
    let mut table = Table::new();
    let arrangement = if wide { ContentArrangement::Disabled } else { ContentArrangement::Dynamic };
    table.load_style(UTF8_BORDERS_ONLY).set_content_arrangement(arrangement);
    table.set_header(header.iter().copied());
    // Ids are copied and pasted: never wrapped, whatever the width.
    for (i, name) in header.iter().enumerate() {
        if matches!(*name, "ID" | "JOB")
            && let Some(column) = table.column_mut(i)
        {
            column.set_constraint(ColumnConstraint::ContentWidth);
        }
    }
    table
}

/// `1.5 MiB` style sizes; `UNKNOWN` for `None`, as bitsadmin prints.
pub(crate) fn size(bytes: Option<u64>) -> String {
    let Some(bytes) = bytes else {
        return "UNKNOWN".to_owned();
    };
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

fn progress(job: &JobInfo) -> String {
    bytes_of(job.progress.bytes_transferred, job.progress.bytes_total)
}

/// `done / total (percent)`.
fn bytes_of(done: u64, total: Option<u64>) -> String {
    match total.filter(|t| *t > 0) {
        Some(t) => format!(
            "{} / {} ({:.0}%)",
            size(Some(done)),
            size(Some(t)),
            done as f64 * 100.0 / t as f64
        ),
        None => format!("{} / {}", size(Some(done)), size(total)),
    }
}

/// `ferry job list`.
pub(crate) fn jobs(jobs: &[JobInfo], wide: bool) {
    if jobs.is_empty() {
        println!("No jobs.");
        return;
    }
    println!("{}", jobs_table(jobs, wide));
    println!("Listed {} job(s).", jobs.len());
}

/// The table of `ferry job list`; `wide` adds the error count, home node and times.
pub(crate) fn jobs_table(jobs: &[JobInfo], wide: bool) -> Table {
    let mut header = vec!["ID", "NAME", "TYPE", "STATE", "PRIORITY", "OWNER", "FILES", "BYTES"];
    if wide {
        header.extend(["ERRORS", "HOME NODE", "CREATED", "MODIFIED"]);
    }
    let mut t = table_of(&header, wide);
    for job in jobs {
        let mut row = vec![
            job.id.to_string(),
            job.display_name.clone(),
            job.job_type.bits_name().to_owned(),
            job.state.bits_name().to_owned(),
            job.properties.priority.bits_name().to_owned(),
            job.owner.to_string(),
            format!("{} / {}", job.progress.files_transferred, job.progress.files_total),
            progress(job),
        ];
        if wide {
            row.extend([
                job.error_count.to_string(),
                job.home_node.to_string(),
                job.times.created.to_string(),
                job.times.modified.to_string(),
            ]);
        }
        t.add_row(row);
    }
    t
}

/// `ferry job info`.
pub(crate) fn job(job: &JobInfo) {
    let p = &job.properties;
    let mut t = table(&["FIELD", "VALUE"]);
    let mut row = |k: &str, v: String| {
        t.add_row(vec![k.to_owned(), v]);
    };
    row("id", job.id.to_string());
    row("display name", job.display_name.clone());
    row("type", job.job_type.bits_name().into());
    row("state", job.state.bits_name().into());
    row("priority", p.priority.bits_name().into());
    row("owner", job.owner.to_string());
    row("files", format!("{} / {}", job.progress.files_transferred, job.progress.files_total));
    row("bytes", progress(job));
    if let Some(reply) = &job.reply {
        // `bitsadmin /getreplyfilename` and `/getreplyprogress`.
        row("reply file", reply.file_name.clone());
        let r = reply.progress;
        row("reply", format!("{} / {}", size(Some(r.bytes_transferred)), size(r.bytes_total)));
    }
    row("created", job.times.created.to_string());
    row("modified", job.times.modified.to_string());
    row(
        "completed",
        job.times.transfer_completed.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
    );
    row("errors", job.error_count.to_string());
    if let Some(e) = &job.error {
        row("error", format!("{} ({}): {}", e.name, e.code, e.detail));
    }
    row("description", p.description.clone());
    row("notify flags", format!("0x{:X}", p.notify_flags));
    row(
        "notify command",
        p.notify_cmdline
            .as_ref()
            .map(|c| format!("{} {}", c.program, c.args.join(" ")))
            .unwrap_or_else(|| "-".into()),
    );
    let secs = |s: u32| format!("{s} s ({})", crate::duration::format_secs(u64::from(s)));
    row("min retry delay", secs(p.minimum_retry_delay_secs));
    row("no-progress timeout", secs(p.no_progress_timeout_secs));
    row("max download time", secs(p.max_download_time_secs));
    row(
        "proxy",
        format!(
            "{:?} {} {}",
            p.proxy.usage,
            p.proxy.list.as_deref().unwrap_or(""),
            p.proxy.bypass.as_deref().unwrap_or("")
        )
        .trim()
        .to_owned(),
    );
    let headers = if p.custom_headers_write_only {
        "(write-only)".to_owned()
    } else {
        p.custom_headers.join("; ")
    };
    row("custom headers", headers);
    row(
        "connections",
        p.max_connections.map_or_else(|| "node default".to_owned(), |n| n.to_string()),
    );
    row("helpers", p.max_helpers.map_or_else(|| "node default".to_owned(), |n| n.to_string()));
    if let Some(method) = p.custom_method() {
        row("http method", method.to_owned());
    }
    if let Some(cap) = p.max_bandwidth {
        row("bandwidth cap", ferry_coordinator::bandwidth::format_rate(cap));
    }
    row("peer caching", format!("0x{:X} (1: use peers, 2: serve peers)", p.peer_caching_flags));
    if let Some(f) = job.fleet {
        row("fleet", format!("{} (member {} of {})", f.fleet, f.member + 1, f.members));
    }
    row("security flags", format!("0x{:X}", p.security_flags));
    row("client certificate", p.client_certificate.clone().unwrap_or_else(|| "-".into()));
    let credentials: Vec<String> =
        job.credentials.iter().map(|c| format!("{:?}/{:?}", c.target, c.scheme)).collect();
    row(
        "credentials",
        if credentials.is_empty() { "-".into() } else { credentials.join(", ").to_lowercase() },
    );
    row("home node", job.home_node.to_string());
    println!("{t}");
}

fn range_text(file: &FileInfo) -> String {
    file.ranges
        .iter()
        .map(|r| {
            if r.length == LENGTH_TO_EOF {
                format!("{}:eof", r.offset)
            } else {
                format!("{}:{}", r.offset, r.length)
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `ferry job files`.
pub(crate) fn files(files: &[FileInfo], wide: bool) {
    if files.is_empty() {
        println!("No files.");
        return;
    }
    let mut t = table_of(&["#", "STATE", "BYTES", "FROM PEERS", "REMOTE", "LOCAL", "RANGES"], wide);
    for f in files {
        let state = if f.progress.completed {
            "completed"
        } else if f.transferred {
            "transferred"
        } else {
            "pending"
        };
        t.add_row(vec![
            f.index.to_string(),
            state.to_owned(),
            bytes_of(f.progress.bytes_transferred, f.progress.bytes_total),
            size(Some(f.peer_stats.from_peers)),
            f.remote_url.clone(),
            f.local_path.clone(),
            range_text(f),
        ]);
    }
    println!("{t}");
}

/// `ferry fleet status`: one row per node.
pub(crate) fn fleet(fleet: &FleetInfo) {
    println!("Fleet {}", fleet.id);
    let mut t =
        table_of(&["NODE", "JOB", "STATE", "BYTES", "FROM ORIGIN", "FROM PEERS", "ERROR"], false);
    for m in &fleet.members {
        t.add_row(vec![
            m.node.to_string(),
            m.job.to_string(),
            m.state.bits_name().to_owned(),
            bytes_of(m.progress.bytes_transferred, m.progress.bytes_total),
            size(Some(m.peer_stats.from_origin)),
            size(Some(m.peer_stats.from_peers)),
            m.error.as_ref().map_or(String::new(), |e| format!("{} {}", e.name, e.detail)),
        ]);
    }
    println!("{t}");
}

/// `ferry job error`.
pub(crate) fn error(e: &ErrorInfo) {
    println!("{} ({})", e.name, e.code);
    println!("  {}", e.description);
    println!("context: {:?} ({})", e.context, e.context_description);
    println!("detail:  {}", e.detail);
    if let Some(index) = e.file_index {
        println!("file:    {index}");
    }
}

/// `ferry error describe`.
pub(crate) fn description(d: &ErrorDescription) {
    println!("{} ({})", d.name, d.code);
    println!("{}", d.description);
    if let Some(hint) = crate::failure::code_hint(d.code) {
        println!("hint: {hint}");
    }
}

/// `ferry cluster status`.
pub(crate) fn cluster(s: &ClusterStatus) {
    let mut t = table(&["FIELD", "VALUE"]);
    let leader = s.leader.map(|l| l.to_string()).unwrap_or_else(|| "none".into());
    let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
    for (k, v) in [
        ("node", s.node_id.to_string()),
        ("role", s.role.clone()),
        ("leader", leader),
        ("term", s.term.to_string()),
        ("last log index", opt(s.last_log_index)),
        ("last applied", opt(s.last_applied)),
        ("snapshot index", opt(s.snapshot_index)),
        ("purged index", opt(s.purged_index)),
        ("members", s.members.len().to_string()),
        ("unfinished jobs", s.jobs.to_string()),
        ("commands applied", s.commands_applied.to_string()),
        ("command batches", s.command_batches.to_string()),
        (
            "policy",
            format!(
                "jobs/user {}, jobs {}, files/job {}, ranges/file {}",
                s.policy.max_jobs_per_user,
                s.policy.max_jobs,
                s.policy.max_files_per_job,
                s.policy.max_ranges_per_file
            ),
        ),
    ] {
        t.add_row(vec![k.to_owned(), v]);
    }
    println!("{t}");
}

/// `ferry cluster members`.
pub(crate) fn members(s: &ClusterStatus) {
    let mut t = table(&[
        "NODE", "ROLE", "STATE", "HEALTH", "APPLIED", "API", "PEER", "LEADER", "MATCHED", "BEHIND",
    ]);
    for m in &s.members {
        let leads = if s.leader == Some(m.node_id) { "*" } else { "" };
        let behind = match (m.matched_index, s.last_log_index) {
            (Some(matched), Some(last)) => last.saturating_sub(matched).to_string(),
            _ => "-".to_owned(),
        };
        t.add_row(vec![
            m.node_id.to_string(),
            m.role.clone(),
            m.state.clone().unwrap_or_else(|| "-".to_owned()),
            m.health.clone(),
            m.applied_index.map_or_else(|| "-".to_owned(), |i| i.to_string()),
            m.api_addr.clone(),
            m.peer_addr.clone(),
            leads.to_owned(),
            m.matched_index.map_or_else(|| "-".to_owned(), |i| i.to_string()),
            behind,
        ]);
    }
    println!("{t}");
}

/// One event as a line: cursor, time, kind, job, state, progress, and the file or the
/// error when there is one.
pub(crate) fn event_line(event: &ferry_protocol::event::Event) -> String {
    let e = &event.event;
    let mut line = format!(
        "{:<10} {} {:<22} {} {:<16} {:<14} {}",
        event.cursor.to_string(),
        e.time,
        e.kind.as_str(),
        e.job,
        e.display_name,
        e.state.bits_name(),
        bytes_of(e.progress.bytes_transferred, e.progress.bytes_total),
    );
    if let Some(file) = e.file_index {
        line.push_str(&format!(" file {file}"));
    }
    if let Some(error) = &e.error {
        line.push_str(&format!(" {}: {}", error.code, error.detail));
    }
    line
}

/// `ferry token list`.
pub(crate) fn tokens(list: &ferry_protocol::principals::TokenList) {
    let mut t = table(&["PRINCIPAL", "ROLE", "ROOTS", "CREATED", "REVOKED"]);
    for token in &list.tokens {
        t.add_row(vec![
            token.name.clone(),
            format!("{:?}", token.role).to_lowercase(),
            token.roots.as_ref().map_or_else(|| "(node default)".to_owned(), |r| r.join(",")),
            token.created.to_string(),
            token.revoked.map_or_else(|| "-".to_owned(), |t| t.to_string()),
        ]);
    }
    println!("{t}");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Jobs as a node answered them (the fixture of data format 9).
    fn some_jobs() -> Vec<JobInfo> {
        let text = include_str!("../../tests/fixtures/format-9/jobs.json");
        let list: ferry_protocol::api::JobList = serde_json::from_str(text).expect("fixture");
        list.jobs.into_iter().take(5).collect()
    }

    /// At 80 columns the other columns wrap, the id never does: it stays on one line,
    /// whole, to be copied.
    #[test]
    fn ids_are_never_wrapped_at_80_columns() {
        let mut jobs = some_jobs();
        assert!(!jobs.is_empty());
        for job in &mut jobs {
            job.display_name = format!("{} with a name long enough to wrap", job.display_name);
        }
        let mut table = jobs_table(&jobs, false);
        table.set_width(80);
        let text = table.to_string();
        for job in &jobs {
            assert!(text.contains(&job.id.to_string()), "{} is cut:\n{text}", job.id);
        }
        assert!(text.lines().all(|l| l.chars().count() <= 80), "wider than 80:\n{text}");
    }

    #[test]
    fn json_output_is_always_an_object() -> anyhow::Result<()> {
        assert!(object(&serde_json::json!({"jobs": []}))?.is_object());
        Ok(())
    }
}
