//! Property setters: validates a [`PropertyChanges`] against a job and returns the new
//! properties, all or nothing.

use super::Queue;
use crate::codes::BitsCode;
use crate::command::{CommandError, PropertyChanges};
use crate::job::{Job, JobProperties, JobType, defaults};
use crate::limits::{MAX_DESCRIPTION_CHARS, MAX_DISPLAY_NAME_CHARS};
use crate::validate;

impl Queue {
    /// The job's properties with `changes` applied, or the first rule they break.
    pub(super) fn changed_properties(
        &self,
        job: &Job,
        changes: &PropertyChanges,
    ) -> Result<JobProperties, CommandError> {
        let mut props = job.props.clone();
        if let Some(name) = &changes.display_name {
            validate::text("display name", name, MAX_DISPLAY_NAME_CHARS)?;
            props.display_name = name.clone();
        }
        if let Some(description) = &changes.description {
            validate::text("description", description, MAX_DESCRIPTION_CHARS)?;
            props.description = description.clone();
        }
        if let Some(priority) = changes.priority {
            props.priority = priority;
        }
        if let Some(flags) = changes.notify_flags {
            validate::notify_flags(flags)?;
            props.notify_flags = flags;
        }
        if let Some(cmdline) = &changes.notify_cmdline {
            if let Some(cmd) = cmdline {
                validate::notify_cmdline(cmd)?;
            }
            props.notify_cmdline = cmdline.clone();
        }
        if let Some(delay) = changes.minimum_retry_delay_secs {
            // BITS clamps rather than refuses.
            props.minimum_retry_delay_secs = delay.max(defaults::MINIMUM_RETRY_DELAY_FLOOR_SECS);
        }
        if let Some(timeout) = changes.no_progress_timeout_secs {
            props.no_progress_timeout_secs = timeout;
        }
        if let Some(limit) = changes.max_download_time_secs {
            props.max_download_time_secs = limit;
        }
        if let Some(proxy) = &changes.proxy {
            validate::proxy(proxy)?;
            props.proxy = proxy.clone();
        }
        if let Some(reply) = &changes.reply_file_name {
            if job.job_type != JobType::UploadReply {
                return Err(CommandError::new(
                    BitsCode::E_NOTIMPL,
                    "a reply file name can only be set on upload-reply jobs",
                ));
            }
            if let Some(path) = reply {
                validate::local_path(path)?;
            }
            props.reply_file_name = reply.clone();
        }
        if let Some(headers) = &changes.custom_headers {
            let lines = headers.clone().unwrap_or_default();
            validate::custom_headers(&lines)?;
            props.custom_headers = lines;
        }
        match changes.custom_headers_write_only {
            Some(true) => props.custom_headers_write_only = true,
            Some(false) if props.custom_headers_write_only => {
                return Err(CommandError::new(
                    BitsCode::E_INVALIDARG,
                    "custom headers made write-only cannot be made readable again",
                ));
            }
            _ => {}
        }
        if let Some(dynamic) = changes.dynamic_content {
            download_only_before_resume(job, "dynamic content")?;
            if dynamic && job.files.iter().any(|f| !f.ranges.is_empty()) {
                return Err(CommandError::new(
                    BitsCode::BG_E_UNSUPPORTED_JOB_CONFIGURATION,
                    "dynamic content cannot be enabled on a job with byte ranges",
                ));
            }
            props.dynamic_content = dynamic;
        }
        if let Some(size) = changes.max_download_size {
            download_only_before_resume(job, "maximum download size")?;
            if size == Some(0) {
                return Err(CommandError::new(
                    BitsCode::BG_E_MAX_DOWNLOAD_SIZE_INVALID_VALUE,
                    "the maximum download size must be at least one byte",
                ));
            }
            props.max_download_size = size;
        }
        if let Some(flags) = changes.peer_caching_flags {
            validate::peer_caching_flags(flags)?;
            props.peer_caching_flags = flags;
        }
        if let Some(flags) = changes.acl_flags {
            validate::acl_flags(flags)?;
            props.acl_flags = flags;
        }
        if let Some(interval) = changes.minimum_notification_interval_ms {
            props.minimum_notification_interval_ms = interval;
        }
        Ok(props)
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
