//! Applying the reports of the scheduler and the transfer engine ([`EngineReport`]):
//! state changes through the BITS state machine, per-file probe results, durable
//! chunks and progress, errors with their retry bookkeeping, and the end of Complete
//! and Cancel on the home node.
//!
//! A report about a transfer run that is no longer current (the owner suspended the
//! job, the scheduler pre-empted it) is refused with `BG_E_INVALID_STATE`; the engine
//! treats that as "stop".

use super::Queue;
use super::apply::{check, file_mut};
use crate::codes::{BitsCode, ErrorContext};
use crate::command::{CommandError, CommandResult, Reply};
use crate::ids::{Caller, JobId, Principal};
use crate::job::{Job, JobError, JobState, JobType, ReplyProgress, UploadState};
use crate::peer_cache;
use crate::state::Operation;
use crate::time::Timestamp;
use crate::transfer::{self, EngineReport, Severity};

impl Queue {
    pub(super) fn engine_reports(
        &mut self,
        caller: &Caller,
        id: JobId,
        run: u64,
        reports: &[EngineReport],
    ) -> CommandResult {
        if caller.principal != Principal::system() || !caller.is_admin() {
            return Err(CommandError::new(
                BitsCode::E_ACCESSDENIED,
                "engine reports come from the node itself",
            ));
        }
        let mut job = self.job(&id).cloned().ok_or_else(|| CommandError::job_not_found(id))?;
        if let [EngineReport::FilesFinished { completed }] = reports {
            if !job.state.is_final() || job.activity.files_finished {
                return Err(CommandError::new(
                    BitsCode::BG_E_INVALID_STATE,
                    "files are finished only once, after Complete or Cancel",
                ));
            }
            for index in completed {
                file_mut(&mut job, *index)?.progress.completed = true;
            }
            job.activity.files_finished = true;
            // Final jobs keep their place in the retention order: no `store`.
            self.put_quietly(job);
            return Ok(Reply::Done(BitsCode::S_OK));
        }
        if let [EngineReport::HomeNodeRemoved] = reports {
            return self.home_node_removed(job);
        }
        if let [EngineReport::NotifyRan { entry, attempt, success }] = reports {
            let owed = job.notify.run.filter(|r| (r.entry, r.attempt) == (*entry, *attempt));
            let Some(mut owed) = owed else {
                return Err(CommandError::new(
                    BitsCode::BG_E_INVALID_STATE,
                    format!("no notify run {entry}/{attempt} is owed (already recorded)"),
                ));
            };
            // BITS runs a failed command line again after the retry delay while the job
            // stays in the state that caused it.
            let entered = matches!(job.state, JobState::Transferred | JobState::Error);
            job.notify.run = if *success || !entered {
                None
            } else {
                owed.attempt += 1;
                let delay = u64::from(job.props.minimum_retry_delay_secs);
                owed.not_before = self.meta.clock.plus(std::time::Duration::from_secs(delay));
                Some(owed)
            };
            // Not a change the owner made or sees: no `store`, no event.
            self.put_quietly(job);
            return Ok(Reply::Done(BitsCode::S_OK));
        }
        if reports.is_empty() {
            return Err(CommandError::new(
                BitsCode::E_INVALIDARG,
                "an engine command carries reports",
            ));
        }
        // All or nothing, in order, on a working copy.
        let now = self.meta.clock;
        for report in reports {
            if report.belongs_to_run() && run != job.activity.run {
                return Err(stale(&job, run));
            }
            apply_report(&mut job, run, report, now)?;
        }
        self.store(job);
        Ok(Reply::Done(BitsCode::S_OK))
    }
}

/// One report on the working copy of the job.
fn apply_report(
    job: &mut Job,
    run: u64,
    report: &EngineReport,
    now: Timestamp,
) -> Result<(), CommandError> {
    match report {
        EngineReport::Activate => {
            transit(job, Operation::Activate)?;
            job.activity.run += 1;
            job.activity.last_activated = Some(now);
        }
        EngineReport::Preempt => transit(job, Operation::Preempt)?,
        EngineReport::Connected => {
            transit(job, Operation::Connected)?;
            if job.pending_files() == 0 {
                transit(job, Operation::AllFilesTransferred)?;
            }
        }
        EngineReport::Probed { file, remote, chunk_size } => {
            require_active(job, run)?;
            let index = *file;
            let entry = file_mut(job, index)?;
            if entry.transferred {
                return Err(CommandError::new(
                    BitsCode::BG_E_INVALID_STATE,
                    format!("file {index} is already transferred"),
                ));
            }
            let changed = entry.remote.as_ref().is_some_and(|old| !old.same_version(remote))
                || (entry.chunk_size != 0 && entry.chunk_size != *chunk_size);
            if changed {
                entry.restart();
            }
            entry.remote = Some(remote.clone());
            entry.chunk_size = *chunk_size;
            entry.progress.bytes_total = planned_size(entry)?;
        }
        EngineReport::Chunks { file, chunks } => {
            require_active(job, run)?;
            let entry = file_mut(job, *file)?;
            if entry.chunk_size == 0 || entry.transferred {
                return Err(CommandError::new(
                    BitsCode::BG_E_INVALID_STATE,
                    format!("file {file} is not being transferred"),
                ));
            }
            let mut added = false;
            for chunk in chunks {
                if let Err(at) = entry.chunks.binary_search_by_key(&chunk.index, |c| c.index) {
                    entry.chunks.insert(at, *chunk);
                    added = true;
                }
            }
            entry.count_chunks();
            if added {
                job.activity.no_progress_since = None;
            }
        }
        EngineReport::ChunksLost { file, chunks } => {
            require_active(job, run)?;
            let entry = file_mut(job, *file)?;
            if entry.transferred {
                return Err(CommandError::new(
                    BitsCode::BG_E_INVALID_STATE,
                    format!("file {file} is transferred already"),
                ));
            }
            let lost: std::collections::BTreeSet<u32> = chunks.iter().copied().collect();
            entry.chunks.retain(|c| !lost.contains(&c.index));
            entry.count_chunks();
        }
        EngineReport::FileTransferred { file, size, headers } => {
            require_active(job, run)?;
            let entry = file_mut(job, *file)?;
            let durable: u64 = entry.chunks.iter().map(|c| c.len).sum();
            if durable != *size || entry.progress.bytes_total.is_some_and(|t| t != *size) {
                // No file is ever reported whole with bytes missing (G4).
                return Err(CommandError::new(
                    BitsCode::E_UNEXPECTED,
                    format!(
                        "file {file} cannot be transferred: {durable} of {size} bytes are durable"
                    ),
                ));
            }
            entry.transferred = true;
            entry.progress.bytes_total = Some(*size);
            entry.progress.bytes_transferred = *size;
            entry.content_digest = Some(transfer::content_digest(entry.chunk_size, &entry.chunks));
            if !peer_cache::keeps_chunks(job, *file as usize) {
                file_mut(job, *file)?.chunks = Vec::new();
            }
            let others: usize = (job.files.iter().enumerate())
                .filter(|(i, _)| *i != *file as usize)
                .map(|(_, f)| transfer::header_bytes(&f.response_headers))
                .sum();
            let room = transfer::MAX_JOB_RESPONSE_HEADER_BYTES
                .saturating_sub(others)
                .min(transfer::MAX_RESPONSE_HEADER_BYTES);
            file_mut(job, *file)?.response_headers = transfer::headers_within(headers, room);
            job.activity.no_progress_since = None;
            if job.pending_files() == 0 && job.state == JobState::Transferring {
                transit(job, Operation::AllFilesTransferred)?;
            }
        }
        EngineReport::RemoteMoved { file, url } => {
            require_active(job, run)?;
            crate::validate::remote_url(url, job.job_type)?;
            file_mut(job, *file)?.remote_url = url.clone();
        }
        EngineReport::RestartFile { file } => {
            require_active(job, run)?;
            file_mut(job, *file)?.restart();
            // An upload starts over with a new session.
            job.upload = UploadState::default();
        }
        EngineReport::UploadSession { session, host_id, host_fallback_secs, local } => {
            require_active(job, run)?;
            require_upload(job)?;
            job.upload = UploadState {
                session: Some(session.clone()),
                host_id: host_id.clone(),
                host_fallback_secs: *host_fallback_secs,
                local: Some(*local),
                ..UploadState::default()
            };
            let entry = file_mut(job, 0)?;
            entry.progress.bytes_total = Some(local.size);
            entry.progress.bytes_transferred = 0;
        }
        EngineReport::UploadAcked { next, reply_url } => {
            require_active(job, run)?;
            let size = upload_size(job)?;
            if *next > size {
                return Err(CommandError::new(
                    BitsCode::BG_E_INVALID_SERVER_RESPONSE,
                    format!("the server acknowledged byte {next} of a {size}-byte file"),
                ));
            }
            let progress = &mut file_mut(job, 0)?.progress;
            let moved = *next > progress.bytes_transferred;
            progress.bytes_transferred = *next;
            if moved {
                job.activity.no_progress_since = None;
            }
            if let Some(url) = reply_url {
                crate::validate::remote_url(url, JobType::Download)?;
                job.upload.reply_url = Some(url.clone());
            }
        }
        EngineReport::ReplyReceived { total, received, done } => {
            require_active(job, run)?;
            if job.job_type != JobType::UploadReply || job.upload.reply_url.is_none() {
                return Err(CommandError::new(
                    BitsCode::BG_E_INVALID_STATE,
                    "no reply is being received",
                ));
            }
            if *received > job.upload.reply.bytes_transferred {
                job.activity.no_progress_since = None;
            }
            job.upload.reply = ReplyProgress { bytes_total: *total, bytes_transferred: *received };
            job.upload.reply_done = *done;
        }
        EngineReport::UploadClosed => {
            require_active(job, run)?;
            let size = upload_size(job)?;
            let sent = job.files.first().map_or(0, |f| f.progress.bytes_transferred);
            let reply_missing = job.job_type == JobType::UploadReply && !job.upload.reply_done;
            if sent != size || reply_missing {
                return Err(CommandError::new(
                    BitsCode::E_UNEXPECTED,
                    format!(
                        "the upload cannot end: {sent} of {size} bytes acknowledged, reply {}",
                        if reply_missing { "missing" } else { "received" }
                    ),
                ));
            }
            file_mut(job, 0)?.transferred = true;
            job.upload.session = None;
            job.activity.no_progress_since = None;
            if job.state == JobState::Transferring {
                transit(job, Operation::AllFilesTransferred)?;
            }
        }
        EngineReport::Failed { error, severity } => {
            let op = match severity {
                Severity::Transient => Operation::TransientFailure,
                Severity::Fatal => Operation::FatalFailure,
            };
            transit(job, op)?;
            job.error_count = job.error_count.saturating_add(1);
            job.error = Some(error.clone());
            if job.state == JobState::TransientError {
                let since = *job.activity.no_progress_since.get_or_insert(now);
                let timeout = u64::from(job.props.no_progress_timeout_secs) * 1000;
                if now.0.saturating_sub(since.0) >= timeout {
                    job.state = JobState::Error;
                    // A timeout of 0 makes every error fatal: it stays what it was.
                    if timeout > 0 {
                        no_progress(job);
                    }
                }
            }
        }
        EngineReport::HomeNodeLost => {
            let detail = format!(
                "the job's home node {} is unavailable; it resumes when the node returns",
                job.placement.home_node
            );
            queue_manager_error(
                job,
                Operation::NetworkLost,
                BitsCode::BG_E_NETWORK_DISCONNECTED,
                detail,
            )?;
        }
        EngineReport::HomeNodeBack => {
            if !job.error.as_ref().is_some_and(transfer::is_home_node_lost) {
                return Err(CommandError::new(
                    BitsCode::BG_E_INVALID_STATE,
                    "the job is not waiting for its home node",
                ));
            }
            transit(job, Operation::NetworkRestored)?;
        }
        EngineReport::RetryDelayElapsed => transit(job, Operation::RetryDelayElapsed)?,
        EngineReport::NoProgressTimeout => {
            transit(job, Operation::NoProgressTimeout)?;
            no_progress(job);
        }
        EngineReport::MaxDownloadTimeExceeded => {
            let detail = format!(
                "the job was active for longer than its maximum download time of {} s",
                job.props.max_download_time_secs
            );
            queue_manager_error(
                job,
                Operation::MaxDownloadTimeExceeded,
                BitsCode::BG_E_MAXDOWNLOAD_TIMEOUT,
                detail,
            )?;
        }
        EngineReport::InactivityTimeout => transit(job, Operation::InactivityTimeout)?,
        EngineReport::FilesFinished { .. }
        | EngineReport::NotifyRan { .. }
        | EngineReport::HomeNodeRemoved => {
            return Err(CommandError::new(
                BitsCode::E_INVALIDARG,
                "files finished, notify runs and removed home nodes are reported on their own",
            ));
        }
    }
    Ok(())
}

impl Queue {
    /// [`EngineReport::HomeNodeRemoved`].
    fn home_node_removed(&mut self, mut job: Job) -> CommandResult {
        if job.state.is_final() {
            if job.activity.files_finished {
                return Err(CommandError::new(
                    BitsCode::BG_E_INVALID_STATE,
                    "the job's files are finished already",
                ));
            }
            job.activity.files_finished = true;
            self.put_quietly(job);
            return Ok(Reply::Done(BitsCode::S_OK));
        }
        if matches!(job.state, JobState::Queued | JobState::Connecting | JobState::Transferring) {
            transit(&mut job, Operation::NetworkLost)?;
        }
        // TRANSIENT_ERROR → ERROR, as when the no-progress timeout ends the wait.
        let detail = format!(
            "the job's home node {} was removed from the cluster, and its files with it; \
             cancel the job and submit it again",
            job.placement.home_node
        );
        queue_manager_error(&mut job, Operation::NoProgressTimeout, BitsCode::E_FAIL, detail)?;
        self.store(job);
        Ok(Reply::Done(BitsCode::S_OK))
    }
}

/// Moves the job through `op` with an error the queue manager raised (counted).
/// The job's error once its no-progress timeout ended the wait: `BG_E_NO_PROGRESS`,
/// saying what the last transient error was (its context and file are kept).
fn no_progress(job: &mut Job) {
    let timeout = job.props.no_progress_timeout_secs;
    let Some(error) = job.error.as_mut() else { return };
    if error.code == BitsCode::BG_E_NO_PROGRESS {
        return;
    }
    error.detail = format!(
        "no progress for {timeout} s (the no-progress timeout); the last error was {} ({}): {}",
        error.code.name().unwrap_or_default(),
        error.code,
        error.detail
    );
    error.code = BitsCode::BG_E_NO_PROGRESS;
}

fn queue_manager_error(
    job: &mut Job,
    op: Operation,
    code: BitsCode,
    detail: String,
) -> Result<(), CommandError> {
    transit(job, op)?;
    job.error_count = job.error_count.saturating_add(1);
    job.error = Some(JobError {
        context: ErrorContext::GeneralQueueManager,
        code,
        detail,
        file_index: None,
        protocol: None,
    });
    Ok(())
}

/// Moves the job through the state machine.
fn transit(job: &mut Job, op: Operation) -> Result<(), CommandError> {
    job.state = check(job, op, None)?.next;
    Ok(())
}

/// Upload reports are only taken for upload jobs.
fn require_upload(job: &Job) -> Result<(), CommandError> {
    if job.job_type.is_upload() && job.files.len() == 1 {
        Ok(())
    } else {
        Err(CommandError::new(
            BitsCode::BG_E_INVALID_STATE,
            format!("job {} is not an upload job with its file", job.id),
        ))
    }
}

/// The size of an upload job's file, recorded when its session began.
fn upload_size(job: &Job) -> Result<u64, CommandError> {
    require_upload(job)?;
    match (&job.upload.session, job.upload.local) {
        (Some(_), Some(local)) => Ok(local.size),
        _ => Err(CommandError::new(
            BitsCode::BG_E_INVALID_STATE,
            format!("job {} has no upload session", job.id),
        )),
    }
}

/// Reports about bytes are only taken from the current run of an active job.
fn require_active(job: &Job, run: u64) -> Result<(), CommandError> {
    if matches!(job.state, JobState::Connecting | JobState::Transferring) {
        Ok(())
    } else {
        Err(stale(job, run))
    }
}

fn stale(job: &Job, run: u64) -> CommandError {
    CommandError::new(
        BitsCode::BG_E_INVALID_STATE,
        format!(
            "report of run {run} is stale: job {} is {} in run {}",
            job.id,
            job.state.bits_name(),
            job.activity.run
        ),
    )
}

/// The local size of a probed file: its planned bytes, or unknown for dynamic content.
fn planned_size(file: &crate::file::JobFile) -> Result<Option<u64>, CommandError> {
    let Some(size) = file.remote.as_ref().and_then(|r| r.size) else {
        return Ok(None);
    };
    let pieces = transfer::plan(&file.ranges, size, file.chunk_size).map_err(|code| {
        CommandError::new(
            code,
            format!("the ranges of {} lie outside its {size} bytes", file.remote_url),
        )
    })?;
    Ok(Some(transfer::planned_bytes(&pieces)))
}
