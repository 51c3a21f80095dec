//! The BITS job state machine (bits-spec §1.3) as a pure function over
//! (state, operation, facts about the job).
//!
//! Callers — the queue's apply, and later the scheduler and transfer engine — ask
//! [`transition`] whether an operation is legal and where it leads; side effects (errors,
//! times, file progress) are theirs. An operation reported by the engine in a state where
//! it no longer applies (the owner suspended the job meanwhile) is answered with
//! `BG_E_INVALID_STATE`, which is how a stale report is recognised and dropped.

use crate::codes::BitsCode;
use crate::job::{JobState, JobType};

/// Everything that can happen to a job. API calls first, then scheduler/engine events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `Resume`.
    Resume,
    /// `Suspend`.
    Suspend,
    /// `Cancel`.
    Cancel,
    /// `Complete`.
    Complete,
    /// `AddFile` / `AddFileSet` / `AddFileWithRanges`.
    AddFiles,
    /// Any property setter.
    SetProperties,
    /// `TakeOwnership`.
    TakeOwnership,
    /// `IBackgroundCopyFile2::SetRemoteName`.
    SetRemoteName,
    /// `SetValidationState(TRUE)`.
    ValidateFile,
    /// `SetValidationState(FALSE)`: the content is bad.
    InvalidateFile,
    /// The scheduler gives the job transfer time.
    Activate,
    /// The engine connected to the server.
    Connected,
    /// The scheduler takes the time back (time slice over, or pre-empted).
    Preempt,
    /// The engine finished the last file.
    AllFilesTransferred,
    /// A recoverable error (5xx, timeout, DNS, connection reset...).
    TransientFailure,
    /// A fatal error (404, 403, range support missing...).
    FatalFailure,
    /// The node lost its network.
    NetworkLost,
    /// The node's network came back.
    NetworkRestored,
    /// The minimum retry delay elapsed.
    RetryDelayElapsed,
    /// No progress for the no-progress timeout.
    NoProgressTimeout,
    /// Active transfer time exceeded the maximum download time.
    MaxDownloadTimeExceeded,
    /// No activity for the job inactivity timeout (90 days).
    InactivityTimeout,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Self; 22] = [
        Self::Resume,
        Self::Suspend,
        Self::Cancel,
        Self::Complete,
        Self::AddFiles,
        Self::SetProperties,
        Self::TakeOwnership,
        Self::SetRemoteName,
        Self::ValidateFile,
        Self::InvalidateFile,
        Self::Activate,
        Self::Connected,
        Self::Preempt,
        Self::AllFilesTransferred,
        Self::TransientFailure,
        Self::FatalFailure,
        Self::NetworkLost,
        Self::NetworkRestored,
        Self::RetryDelayElapsed,
        Self::NoProgressTimeout,
        Self::MaxDownloadTimeExceeded,
        Self::InactivityTimeout,
    ];
}

/// What the state machine needs to know about the job besides its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobFacts {
    /// The job's type.
    pub job_type: JobType,
    /// Number of files in the job.
    pub files: usize,
    /// Number of files not yet completely transferred.
    pub pending_files: usize,
    /// For file operations: whether the target file is completely transferred.
    pub target_file_transferred: bool,
    /// False when the no-progress timeout is 0 or shorter than the minimum retry delay:
    /// BITS then never retries, and a recoverable error puts the job in ERROR.
    pub retries_allowed: bool,
}

impl JobFacts {
    /// Whether BITS would retry a job with these timeouts (bits-spec §1.3).
    pub fn retries_allowed(no_progress_timeout_secs: u32, minimum_retry_delay_secs: u32) -> bool {
        no_progress_timeout_secs > 0 && minimum_retry_delay_secs <= no_progress_timeout_secs
    }
}

/// A legal transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The state after the operation (may equal the current one).
    pub next: JobState,
    /// The success code: `S_OK`, or `BG_S_PARTIAL_COMPLETE` for a partial Complete.
    pub code: BitsCode,
}

fn to(next: JobState) -> Result<Outcome, BitsCode> {
    Ok(Outcome { next, code: BitsCode::S_OK })
}

/// Decides whether `op` is legal for a job in `state` and where it leads.
pub fn transition(state: JobState, op: Operation, facts: JobFacts) -> Result<Outcome, BitsCode> {
    use JobState::*;
    use Operation::*;

    if state.is_final() {
        return Err(BitsCode::BG_E_INVALID_STATE);
    }
    match op {
        Resume => match state {
            Suspended if facts.files == 0 => Err(BitsCode::BG_E_EMPTY),
            Suspended | Error | TransientError => to(Queued),
            Transferred if facts.pending_files > 0 => to(Queued),
            _ => to(state),
        },
        Suspend => to(Suspended),
        TakeOwnership | SetProperties | SetRemoteName => to(state),
        Cancel | InactivityTimeout => to(Cancelled),
        Complete => {
            if facts.job_type.is_upload() && state != Transferred {
                return Err(BitsCode::BG_E_INVALID_STATE);
            }
            let partial = facts.pending_files > 0;
            Ok(Outcome {
                next: Acknowledged,
                code: if partial { BitsCode::BG_S_PARTIAL_COMPLETE } else { BitsCode::S_OK },
            })
        }
        AddFiles => {
            if facts.job_type.is_upload() && facts.files >= 1 {
                Err(BitsCode::BG_E_TOO_MANY_FILES)
            } else {
                to(state)
            }
        }
        ValidateFile | InvalidateFile => {
            if !facts.target_file_transferred {
                Err(BitsCode::E_PENDING)
            } else if op == InvalidateFile {
                to(Error)
            } else {
                to(state)
            }
        }
        Activate => match state {
            Queued => to(Connecting),
            _ => Err(BitsCode::BG_E_INVALID_STATE),
        },
        Connected => match state {
            Connecting => to(Transferring),
            _ => Err(BitsCode::BG_E_INVALID_STATE),
        },
        Preempt => match state {
            Connecting | Transferring => to(Queued),
            _ => Err(BitsCode::BG_E_INVALID_STATE),
        },
        AllFilesTransferred => match state {
            Transferring => to(Transferred),
            _ => Err(BitsCode::BG_E_INVALID_STATE),
        },
        TransientFailure | FatalFailure | MaxDownloadTimeExceeded => match state {
            Connecting | Transferring if op == TransientFailure && facts.retries_allowed => {
                to(TransientError)
            }
            Connecting | Transferring => to(Error),
            _ => Err(BitsCode::BG_E_INVALID_STATE),
        },
        NetworkLost => match state {
            Queued | Connecting | Transferring => to(TransientError),
            _ => Err(BitsCode::BG_E_INVALID_STATE),
        },
        NetworkRestored | RetryDelayElapsed => match state {
            TransientError => to(Queued),
            _ => Err(BitsCode::BG_E_INVALID_STATE),
        },
        NoProgressTimeout => match state {
            TransientError => to(Error),
            _ => Err(BitsCode::BG_E_INVALID_STATE),
        },
    }
}

#[cfg(test)]
#[path = "state_table_test.rs"]
mod table_test;
