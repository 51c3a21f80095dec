//! `ferry job get JOB PROPERTY`: one property, bare, for scripts (`bitsadmin /getstate`,
//! `/getbytestransferred`, `/getpriority`...). Sizes and durations are plain numbers
//! (bytes, seconds), states and priorities their BITS names; a property with no value
//! prints an empty line. With `-o json`: `{"PROPERTY": value}`.

use ferry_protocol::api::JobInfo;
use serde_json::{Value, json};

use crate::job_args::JobProperty;
use crate::output::{self, Format};

/// Prints `property` of `info`.
pub(crate) fn print(format: Format, info: &JobInfo, property: JobProperty) -> anyhow::Result<()> {
    let value = value(info, property);
    let mut object = serde_json::Map::new();
    object.insert(property_name(property), value.clone());
    if output::structured(format, &object)? {
        return Ok(());
    }
    println!("{}", text(&value));
    Ok(())
}

/// The property's name as on the command line (`bytes-transferred`).
fn property_name(property: JobProperty) -> String {
    use clap::ValueEnum as _;
    property.to_possible_value().map_or_else(String::new, |v| v.get_name().to_owned())
}

/// The value as printed bare: strings without quotes, null as nothing, lists one item
/// a line.
fn text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join("\n"),
        other => other.to_string(),
    }
}

fn value(info: &JobInfo, property: JobProperty) -> Value {
    let p = &info.properties;
    let hex = |n: u32| json!(format!("0x{n:X}"));
    match property {
        JobProperty::Id => json!(info.id),
        JobProperty::DisplayName => json!(info.display_name),
        JobProperty::Description => json!(p.description),
        JobProperty::Type => json!(info.job_type),
        JobProperty::State => json!(info.state.bits_name()),
        JobProperty::Priority => json!(p.priority.bits_name()),
        JobProperty::Owner => json!(info.owner),
        JobProperty::BytesTransferred => json!(info.progress.bytes_transferred),
        JobProperty::BytesTotal => {
            info.progress.bytes_total.map_or_else(|| json!("UNKNOWN"), |n| json!(n))
        }
        JobProperty::FilesTransferred => json!(info.progress.files_transferred),
        JobProperty::FilesTotal => json!(info.progress.files_total),
        JobProperty::ErrorCount => json!(info.error_count),
        JobProperty::Error => {
            info.error.as_ref().map_or(Value::Null, |e| json!(format!("{} ({})", e.name, e.code)))
        }
        JobProperty::Created => json!(info.times.created),
        JobProperty::Modified => json!(info.times.modified),
        JobProperty::Completed => json!(info.times.transfer_completed),
        JobProperty::MinRetryDelay => json!(p.minimum_retry_delay_secs),
        JobProperty::NoProgressTimeout => json!(p.no_progress_timeout_secs),
        JobProperty::MaxDownloadTime => json!(p.max_download_time_secs),
        JobProperty::NotifyFlags => hex(p.notify_flags),
        JobProperty::NotifyCmdline => p.notify_cmdline.as_ref().map_or(Value::Null, |c| {
            json!(std::iter::once(&c.program).chain(&c.args).cloned().collect::<Vec<_>>())
        }),
        JobProperty::ProxyUsage => json!(p.proxy.usage),
        JobProperty::CustomHeaders => json!(*p.custom_headers),
        JobProperty::Connections => json!(p.max_connections),
        JobProperty::Helpers => json!(p.max_helpers),
        JobProperty::HttpMethod => json!(p.custom_method().unwrap_or("GET")),
        JobProperty::MaxBandwidth => json!(p.max_bandwidth),
        JobProperty::PeerCachingFlags => hex(p.peer_caching_flags),
        JobProperty::SecurityFlags => hex(p.security_flags),
        JobProperty::DynamicContent => json!(p.dynamic_content),
        JobProperty::MaxDownloadSize => json!(p.max_download_size),
        JobProperty::ReplyFile => json!(info.reply.as_ref().map(|r| &r.file_name)),
        JobProperty::HomeNode => json!(info.home_node),
    }
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum as _;

    use super::*;

    fn a_job() -> JobInfo {
        let text = include_str!("../../tests/fixtures/format-9/jobs.json");
        let list: ferry_protocol::api::JobList = serde_json::from_str(text).expect("fixture");
        list.jobs.into_iter().next().expect("a job")
    }

    #[test]
    fn every_property_reads_as_a_bare_value() {
        let mut job = a_job();
        job.progress.bytes_transferred = 1234;
        job.properties.minimum_retry_delay_secs = 300;
        let bare = |p| text(&value(&job, p));
        assert_eq!(bare(JobProperty::BytesTransferred), "1234");
        assert_eq!(bare(JobProperty::State), job.state.bits_name());
        assert_eq!(bare(JobProperty::Priority), job.properties.priority.bits_name());
        assert_eq!(bare(JobProperty::DisplayName), job.display_name);
        assert_eq!(bare(JobProperty::MinRetryDelay), "300");
        assert_eq!(bare(JobProperty::Id), job.id.to_string());
        assert_eq!(bare(JobProperty::NotifyFlags), "0x3");
        assert_eq!(bare(JobProperty::Completed), "", "no value prints nothing");
        for property in JobProperty::value_variants() {
            assert!(!property_name(*property).is_empty());
            let _ = value(&job, *property);
        }
        assert_eq!(property_name(JobProperty::BytesTransferred), "bytes-transferred");
    }
}
