//! Deriving a change's events (and the notify command line it owes) from the job before
//! and after it. Runs inside apply, so it is deterministic: the job's notify flags and
//! the batch clock decide everything.

use std::time::Duration;

use crate::event::{EventKind, JobEvent};
use crate::job::{Job, JobState, NotifyRun, notify};
use crate::time::Timestamp;

/// The events `old → job` produces, in order: files first, then the job. Also records
/// a published modification (for coalescing) and a notify command line run owed by an
/// entry into TRANSFERRED or ERROR.
pub(super) fn derive(old: Option<&Job>, job: &mut Job, now: Timestamp) -> Vec<JobEvent> {
    let mut kinds: Vec<(EventKind, Option<u32>)> = Vec::new();
    let Some(old) = old else {
        kinds.push((EventKind::JobCreated, None));
        return publish(job, &kinds);
    };
    for (index, file) in job.files.iter().enumerate() {
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        let before = old.files.get(index as usize);
        if !file.ranges.is_empty()
            && file.progress.bytes_transferred > before.map_or(0, |f| f.progress.bytes_transferred)
        {
            kinds.push((EventKind::FileRangesTransferred, Some(index)));
        }
        if file.transferred && !before.is_some_and(|f| f.transferred) {
            kinds.push((EventKind::FileTransferred, Some(index)));
        }
    }
    let entered = (old.state != job.state).then_some(job.state);
    let final_kind = match entered {
        Some(JobState::Transferred) => Some(EventKind::JobTransferred),
        Some(JobState::Error) => Some(EventKind::JobError),
        Some(JobState::Acknowledged) => Some(EventKind::JobAcknowledged),
        Some(JobState::Cancelled) => Some(EventKind::JobCancelled),
        _ => None,
    };
    // BITS sends no modification for entries into TRANSFERRED or ERROR (their own
    // callbacks say it); the others are coalesced by the minimum notification interval.
    let interval = Duration::from_millis(u64::from(job.props.minimum_notification_interval_ms));
    let quiet = job.notify.modification_notified.is_none_or(|last| now.since(last) >= interval);
    if final_kind.is_none()
        && quiet
        && EventKind::JobModification.enabled_by(job.props.notify_flags)
    {
        kinds.push((EventKind::JobModification, None));
        job.notify.modification_notified = Some(now);
    }
    kinds.extend(final_kind.map(|kind| (kind, None)));
    owe_notify_run(entered, job, now);
    publish(job, &kinds)
}

/// Events of the kinds the job's notify flags enable.
fn publish(job: &Job, kinds: &[(EventKind, Option<u32>)]) -> Vec<JobEvent> {
    kinds
        .iter()
        .filter(|(kind, _)| kind.enabled_by(job.props.notify_flags))
        .map(|(kind, file)| JobEvent::of(*kind, job, *file))
        .collect()
}

/// An entry into TRANSFERRED or ERROR owes a run of the notify command line if one is
/// set and the matching flag is on (BITS: command lines are for those two events only).
fn owe_notify_run(entered: Option<JobState>, job: &mut Job, now: Timestamp) {
    let flag = match entered {
        Some(JobState::Transferred) => notify::JOB_TRANSFERRED,
        Some(JobState::Error) => notify::JOB_ERROR,
        _ => return,
    };
    let flags = job.props.notify_flags;
    if job.props.notify_cmdline.is_none() || flags & notify::DISABLE != 0 || flags & flag == 0 {
        return;
    }
    job.notify.entries += 1;
    job.notify.run = Some(NotifyRun { entry: job.notify.entries, attempt: 0, not_before: now });
}
