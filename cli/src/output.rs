//! Rendering: human tables by default, JSON (the API's own types) with `--json`.

use comfy_table::presets::UTF8_BORDERS_ONLY;
use comfy_table::{ContentArrangement, Table};
use ferry_protocol::api::{
    ClusterStatus, ErrorDescription, ErrorInfo, FileInfo, FleetInfo, JobInfo,
};
use ferry_protocol::file::LENGTH_TO_EOF;
use serde::Serialize;

/// Prints `value` as pretty JSON.
pub(crate) fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_style(UTF8_BORDERS_ONLY).set_content_arrangement(ContentArrangement::Dynamic);
    table.set_header(header.iter().copied());
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
pub(crate) fn jobs(jobs: &[JobInfo]) {
    if jobs.is_empty() {
        println!("No jobs.");
        return;
    }
    let mut t = table(&["ID", "NAME", "TYPE", "STATE", "PRIORITY", "OWNER", "FILES", "BYTES"]);
    for job in jobs {
        t.add_row(vec![
            job.id.to_string(),
            job.display_name.clone(),
            job.job_type.bits_name().to_owned(),
            job.state.bits_name().to_owned(),
            job.properties.priority.bits_name().to_owned(),
            job.owner.to_string(),
            format!("{} / {}", job.progress.files_transferred, job.progress.files_total),
            progress(job),
        ]);
    }
    println!("{t}");
    println!("Listed {} job(s).", jobs.len());
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
    row("min retry delay", format!("{} s", p.minimum_retry_delay_secs));
    row("no-progress timeout", format!("{} s", p.no_progress_timeout_secs));
    row("max download time", format!("{} s", p.max_download_time_secs));
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
pub(crate) fn files(files: &[FileInfo]) {
    if files.is_empty() {
        println!("No files.");
        return;
    }
    let mut t = table(&["#", "STATE", "BYTES", "FROM PEERS", "REMOTE", "LOCAL", "RANGES"]);
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
    let mut t = table(&["NODE", "JOB", "STATE", "BYTES", "FROM ORIGIN", "FROM PEERS", "ERROR"]);
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
