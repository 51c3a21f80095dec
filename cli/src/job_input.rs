//! Turning `ferry job` options into API requests: the property changes of `ferry job
//! set`, and the file list of `ferry job add-file-set`.

use anyhow::bail;
use ferry_protocol::NewFile;
use ferry_protocol::command::PropertyChanges;
use ferry_protocol::job::{NotifyCmdLine, ProxySettings};

use crate::args::SetArgs;
use crate::failure::usage;
use crate::job_args::JobRate;

/// bitsadmin `/addfileset` format: "REMOTE LOCAL" per line, blank lines and `#` comments
/// ignored.
pub(crate) fn parse_file_set(text: &str) -> anyhow::Result<Vec<NewFile>> {
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
            sha256: None,
        });
    }
    if files.is_empty() {
        bail!("the list names no files");
    }
    Ok(files)
}

/// The changes `ferry job set` asks for; a usage error when it asks for none.
pub(crate) fn property_changes(set: &SetArgs) -> anyhow::Result<PropertyChanges> {
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
        (None, _, _) => {
            return Err(usage("--proxy-list and --proxy-bypass need --proxy-usage override"));
        }
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
        http_method: set.http_method.clone(),
        max_bandwidth: set.max_bandwidth.map(|rate| match rate {
            JobRate::Cap(rate) => Some(rate),
            JobRate::Unlimited => None,
        }),
    };
    if changes.is_empty() {
        return Err(usage(
            "nothing to change: give at least one property option (see ferry job set --help)",
        ));
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

    fn set_args(extra: &[&str]) -> Result<SetArgs, clap::Error> {
        use clap::Parser as _;
        let mut args = vec!["ferry", "job", "set", "j"];
        args.extend_from_slice(extra);
        match crate::args::Cli::try_parse_from(args)?.command {
            crate::args::Noun::Job(crate::args::JobCommand::Set(set)) => Ok(*set),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn job_set_takes_human_durations() -> anyhow::Result<()> {
        let set = set_args(&[
            "--min-retry-delay",
            "5m",
            "--no-progress-timeout",
            "1h30m",
            "--max-download-time",
            "2d",
            "--min-notification-interval",
            "2s",
        ])?;
        let changes = property_changes(&set)?;
        assert_eq!(changes.minimum_retry_delay_secs, Some(300));
        assert_eq!(changes.no_progress_timeout_secs, Some(5400));
        assert_eq!(changes.max_download_time_secs, Some(172_800));
        assert_eq!(changes.minimum_notification_interval_ms, Some(2000));
        let plain = property_changes(&set_args(&["--min-retry-delay", "60"])?)?;
        assert_eq!(plain.minimum_retry_delay_secs, Some(60), "a plain number is seconds");
        Ok(())
    }

    #[test]
    fn a_retry_delay_below_five_seconds_is_a_usage_error() {
        let error = set_args(&["--min-retry-delay", "1"]).expect_err("refused");
        assert_eq!(error.exit_code(), 2);
        let text = error.to_string();
        assert!(text.contains("minimum retry delay of 5 s"), "{text}");
    }
}
