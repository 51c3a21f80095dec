//! Property setters: validates a [`PropertyChanges`] against a job and returns the new
//! properties, all or nothing.

use super::Queue;
use crate::codes::BitsCode;
use crate::command::{CommandError, PropertyChanges};
use crate::ids::Caller;
use crate::job::{Job, JobProperties, JobType, Priority, defaults};
use crate::validate;

impl Queue {
    /// The job's properties with `changes` applied, or the first rule they break. The
    /// values were checked by [`validate::command_input`]; these are the rules that
    /// depend on the job and the caller.
    pub(super) fn changed_properties(
        &self,
        caller: &Caller,
        job: &Job,
        changes: &PropertyChanges,
    ) -> Result<JobProperties, CommandError> {
        let headers =
            changes.custom_headers.is_some() || changes.custom_headers_write_only.is_some();
        if headers && caller.principal != job.owner {
            // SetCustomHeaders and MakeCustomHeadersWriteOnly are the owner's alone.
            return Err(CommandError::new(
                BitsCode::E_ACCESSDENIED,
                "only the job's owner may set its custom headers",
            ));
        }
        if changes.reply_file_name.is_some() && job.job_type != JobType::UploadReply {
            return Err(CommandError::new(
                BitsCode::E_NOTIMPL,
                "a reply file name can only be set on upload-reply jobs",
            ));
        }
        if changes.custom_headers_write_only == Some(false) && job.props.custom_headers_write_only {
            return Err(CommandError::new(
                BitsCode::E_INVALIDARG,
                "custom headers made write-only cannot be made readable again",
            ));
        }
        if let Some(dynamic) = changes.dynamic_content {
            download_only_before_resume(job, "dynamic content")?;
            if dynamic && job.files.iter().any(|f| !f.ranges.is_empty()) {
                return Err(CommandError::new(
                    BitsCode::BG_E_UNSUPPORTED_JOB_CONFIGURATION,
                    "dynamic content cannot be enabled on a job with byte ranges",
                ));
            }
        }
        if changes.max_download_size.is_some() {
            download_only_before_resume(job, "maximum download size")?;
        }
        if changes.http_method.is_some() {
            download_only_before_resume(job, "an HTTP method")?;
        }

        let mut p = job.props.clone();
        let c = changes.clone();
        set(&mut p.display_name, c.display_name);
        set(&mut p.description, c.description);
        set(&mut p.priority, c.priority);
        set(&mut p.notify_flags, c.notify_flags);
        set(&mut p.notify_cmdline, c.notify_cmdline);
        // BITS raises a short retry delay to its floor rather than refusing it.
        let floor = defaults::MINIMUM_RETRY_DELAY_FLOOR_SECS;
        set(&mut p.minimum_retry_delay_secs, c.minimum_retry_delay_secs.map(|d| d.max(floor)));
        set(&mut p.no_progress_timeout_secs, c.no_progress_timeout_secs);
        set(&mut p.max_download_time_secs, c.max_download_time_secs);
        set(&mut p.proxy, c.proxy);
        set(&mut p.reply_file_name, c.reply_file_name);
        set(&mut p.custom_headers, c.custom_headers.map(Option::unwrap_or_default));
        p.custom_headers_write_only |= c.custom_headers_write_only == Some(true);
        set(&mut p.dynamic_content, c.dynamic_content);
        set(&mut p.max_download_size, c.max_download_size);
        set(&mut p.peer_caching_flags, c.peer_caching_flags);
        set(&mut p.acl_flags, c.acl_flags);
        set(&mut p.minimum_notification_interval_ms, c.minimum_notification_interval_ms);
        set(&mut p.max_connections, c.max_connections);
        set(&mut p.max_helpers, c.max_helpers);
        set(&mut p.security_flags, c.security_flags);
        set(&mut p.client_certificate, c.client_certificate);
        set(&mut p.max_bandwidth, c.max_bandwidth);
        if let Some(method) = c.http_method {
            // Setting the default verb changes nothing (BITS).
            p.http_method = (method != validate::DEFAULT_METHOD).then_some(method);
        }
        custom_method_rules(job, changes, &mut p)?;
        Ok(p)
    }
}

/// `SetHttpMethod`'s consequences (BITS 10): the job becomes FOREGROUND for good, and
/// dynamic content and byte ranges cannot go with it (one request per whole file).
fn custom_method_rules(
    job: &Job,
    changes: &PropertyChanges,
    p: &mut JobProperties,
) -> Result<(), CommandError> {
    let Some(method) = p.http_method.clone() else { return Ok(()) };
    if p.dynamic_content {
        return Err(CommandError::new(
            BitsCode::BG_E_UNSUPPORTED_JOB_CONFIGURATION,
            format!("a job with the HTTP method {method} cannot download dynamic content"),
        ));
    }
    if job.files.iter().any(|f| !f.ranges.is_empty()) {
        return Err(CommandError::new(
            BitsCode::BG_E_UNSUPPORTED_JOB_CONFIGURATION,
            format!("a job with the HTTP method {method} cannot download byte ranges"),
        ));
    }
    if changes.priority.is_some_and(|priority| priority != Priority::Foreground) {
        return Err(CommandError::new(
            BitsCode::BG_E_READ_ONLY_PROPERTY,
            format!("a job with the HTTP method {method} stays FOREGROUND"),
        ));
    }
    p.priority = Priority::Foreground;
    Ok(())
}

/// Replaces `field` when a new value is given.
fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *field = value;
    }
}

/// `BITS_JOB_PROPERTY_DYNAMIC_CONTENT` and `..._MAX_DOWNLOAD_SIZE`: download jobs only,
/// and only before the first `Resume`.
fn download_only_before_resume(job: &Job, what: &str) -> Result<(), CommandError> {
    if job.job_type != JobType::Download {
        return Err(CommandError::new(
            BitsCode::BG_E_PROPERTY_SUPPORTED_FOR_DOWNLOAD_JOBS_ONLY,
            format!("{what} is supported for download jobs only"),
        ));
    }
    if job.ever_resumed {
        return Err(CommandError::new(
            BitsCode::BG_E_READ_ONLY_PROPERTY_AFTER_RESUME,
            format!("{what} can only be set before the job is first resumed"),
        ));
    }
    Ok(())
}
