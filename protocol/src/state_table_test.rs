//! Every state × every operation, checked against bits-spec.md §1.3.
//!
//! The expected results are written out by hand, one row per operation with one column
//! per state in `BG_JOB_STATE` order, so that the table is an independent statement of
//! the specification rather than a copy of the implementation.

use super::*;
use crate::codes::BitsCode;
use crate::job::JobState::{self, *};

type Expected = Result<JobState, BitsCode>;

const INV: Expected = Err(BitsCode::BG_E_INVALID_STATE);
const EMPTY: Expected = Err(BitsCode::BG_E_EMPTY);
const TOO_MANY: Expected = Err(BitsCode::BG_E_TOO_MANY_FILES);
const PENDING: Expected = Err(BitsCode::E_PENDING);

const fn s(state: JobState) -> Expected {
    Ok(state)
}

/// Column order of every row.
const STATES: [JobState; 9] = JobState::ALL;

/// A download job with two files, one of them transferred, the target file transferred.
const DOWNLOAD: JobFacts = JobFacts {
    job_type: JobType::Download,
    files: 2,
    pending_files: 1,
    target_file_transferred: true,
    retries_allowed: true,
};

#[rustfmt::skip]
const DOWNLOAD_TABLE: [(Operation, [Expected; 9]); 22] = {
    use Operation::*;
    //                            QUEUED        CONNECTING    TRANSFERRING   SUSPENDED     ERROR         TRANSIENT_ERR  TRANSFERRED    ACKNOWLEDGED CANCELLED
    [
        (Resume,                 [s(Queued),    s(Connecting), s(Transferring), s(Queued), s(Queued),    s(Queued),     s(Queued),     INV, INV]),
        (Suspend,                [s(Suspended), s(Suspended),  s(Suspended),  s(Suspended), s(Suspended), s(Suspended), s(Suspended), INV, INV]),
        (Cancel,                 [s(Cancelled), s(Cancelled),  s(Cancelled),  s(Cancelled), s(Cancelled), s(Cancelled), s(Cancelled), INV, INV]),
        (Complete,               [s(Acknowledged), s(Acknowledged), s(Acknowledged), s(Acknowledged), s(Acknowledged), s(Acknowledged), s(Acknowledged), INV, INV]),
        (AddFiles,               [s(Queued),    s(Connecting), s(Transferring), s(Suspended), s(Error),  s(TransientError), s(Transferred), INV, INV]),
        (SetProperties,          [s(Queued),    s(Connecting), s(Transferring), s(Suspended), s(Error),  s(TransientError), s(Transferred), INV, INV]),
        (TakeOwnership,          [s(Queued),    s(Connecting), s(Transferring), s(Suspended), s(Error),  s(TransientError), s(Transferred), INV, INV]),
        (SetRemoteName,          [s(Queued),    s(Connecting), s(Transferring), s(Suspended), s(Error),  s(TransientError), s(Transferred), INV, INV]),
        (ValidateFile,           [s(Queued),    s(Connecting), s(Transferring), s(Suspended), s(Error),  s(TransientError), s(Transferred), INV, INV]),
        (InvalidateFile,         [s(Error),     s(Error),      s(Error),      s(Error),     s(Error),     s(Error),      s(Error),      INV, INV]),
        (Activate,               [s(Connecting), INV,          INV,           INV,          INV,          INV,           INV,           INV, INV]),
        (Connected,              [INV,          s(Transferring), INV,         INV,          INV,          INV,           INV,           INV, INV]),
        (Preempt,                [INV,          s(Queued),     s(Queued),     INV,          INV,          INV,           INV,           INV, INV]),
        (AllFilesTransferred,    [INV,          INV,           s(Transferred), INV,         INV,          INV,           INV,           INV, INV]),
        (TransientFailure,       [INV,          s(TransientError), s(TransientError), INV,  INV,          INV,           INV,           INV, INV]),
        (FatalFailure,           [INV,          s(Error),      s(Error),      INV,          INV,          INV,           INV,           INV, INV]),
        (NetworkLost,            [s(TransientError), s(TransientError), s(TransientError), INV, INV,      INV,           INV,           INV, INV]),
        (NetworkRestored,        [INV,          INV,           INV,           INV,          INV,          s(Queued),     INV,           INV, INV]),
        (RetryDelayElapsed,      [INV,          INV,           INV,           INV,          INV,          s(Queued),     INV,           INV, INV]),
        (NoProgressTimeout,      [INV,          INV,           INV,           INV,          INV,          s(Error),      INV,           INV, INV]),
        (MaxDownloadTimeExceeded,[INV,          s(Error),      s(Error),      INV,          INV,          INV,           INV,           INV, INV]),
        (InactivityTimeout,      [s(Cancelled), s(Cancelled),  s(Cancelled),  s(Cancelled), s(Cancelled), s(Cancelled), s(Cancelled), INV, INV]),
    ]
};

fn check(facts: JobFacts, op: Operation, row: &[Expected; 9]) {
    for (state, expected) in STATES.iter().zip(row) {
        let outcome = transition(*state, op, facts);
        assert_eq!(&outcome.map(|o| o.next), expected, "{op:?} in {state:?} with {facts:?}");
        // Every legal transition succeeds with S_OK, except a Complete that leaves files
        // behind (BG_S_PARTIAL_COMPLETE).
        if let Ok(o) = outcome {
            let partial = op == Operation::Complete && facts.pending_files > 0;
            let code = if partial { BitsCode::BG_S_PARTIAL_COMPLETE } else { BitsCode::S_OK };
            assert_eq!(o.code, code, "{op:?} in {state:?}");
        }
    }
}

#[test]
fn every_state_and_operation_of_a_download_job() {
    let covered: Vec<Operation> = DOWNLOAD_TABLE.iter().map(|(op, _)| *op).collect();
    assert_eq!(covered, Operation::ALL.to_vec(), "the table must list every operation in order");
    for (op, row) in &DOWNLOAD_TABLE {
        check(DOWNLOAD, *op, row);
    }
}

#[test]
fn upload_jobs_follow_the_same_table_except_complete_and_add_files() {
    for job_type in [JobType::Upload, JobType::UploadReply] {
        let facts = JobFacts { job_type, files: 1, pending_files: 1, ..DOWNLOAD };
        for (op, row) in DOWNLOAD_TABLE
            .iter()
            .filter(|(op, _)| !matches!(op, Operation::Complete | Operation::AddFiles))
        {
            check(facts, *op, row);
        }
    }
}

#[test]
fn without_retries_a_recoverable_error_is_fatal() {
    // No-progress timeout 0, or a retry delay longer than it: BITS does not retry.
    assert!(!JobFacts::retries_allowed(0, 600));
    assert!(!JobFacts::retries_allowed(300, 600));
    assert!(JobFacts::retries_allowed(600, 600));
    let no_retry = JobFacts { retries_allowed: false, ..DOWNLOAD };
    let row = [INV, s(Error), s(Error), INV, INV, INV, INV, INV, INV];
    check(no_retry, Operation::TransientFailure, &row);
    // Losing the network still waits for it to return (no retry timer involved).
    let row =
        [s(TransientError), s(TransientError), s(TransientError), INV, INV, INV, INV, INV, INV];
    check(no_retry, Operation::NetworkLost, &row);
}

#[test]
fn resume_without_files_is_empty_and_stays_suspended() {
    let no_files = JobFacts { files: 0, pending_files: 0, ..DOWNLOAD };
    let row = [
        s(Queued),
        s(Connecting),
        s(Transferring),
        EMPTY,
        s(Queued),
        s(Queued),
        s(Transferred),
        INV,
        INV,
    ];
    check(no_files, Operation::Resume, &row);
}

#[test]
fn resume_of_a_transferred_job_requeues_only_when_files_were_added() {
    let all_done = JobFacts { pending_files: 0, ..DOWNLOAD };
    assert_eq!(
        transition(Transferred, Operation::Resume, all_done).map(|o| o.next),
        s(Transferred)
    );
    assert_eq!(transition(Transferred, Operation::Resume, DOWNLOAD).map(|o| o.next), s(Queued));
}

#[test]
fn complete_reports_partial_completion_for_downloads() {
    let partial = transition(Transferring, Operation::Complete, DOWNLOAD).expect("legal");
    assert_eq!(partial.code, BitsCode::BG_S_PARTIAL_COMPLETE);
    let all_done = JobFacts { pending_files: 0, ..DOWNLOAD };
    let full = transition(Transferred, Operation::Complete, all_done).expect("legal");
    assert_eq!(full.code, BitsCode::S_OK);
}

#[test]
fn upload_jobs_complete_only_when_transferred_and_hold_one_file() {
    for job_type in [JobType::Upload, JobType::UploadReply] {
        let one_file = JobFacts {
            job_type,
            files: 1,
            pending_files: 1,
            target_file_transferred: false,
            retries_allowed: true,
        };
        let complete = [INV, INV, INV, INV, INV, INV, s(Acknowledged), INV, INV];
        check(one_file, Operation::Complete, &complete);
        let add = [TOO_MANY, TOO_MANY, TOO_MANY, TOO_MANY, TOO_MANY, TOO_MANY, TOO_MANY, INV, INV];
        check(one_file, Operation::AddFiles, &add);
        let empty = JobFacts { files: 0, pending_files: 0, ..one_file };
        let add_first = [
            s(Queued),
            s(Connecting),
            s(Transferring),
            s(Suspended),
            s(Error),
            s(TransientError),
            s(Transferred),
            INV,
            INV,
        ];
        check(empty, Operation::AddFiles, &add_first);
    }
}

#[test]
fn validation_needs_a_finished_file() {
    let unfinished = JobFacts { target_file_transferred: false, ..DOWNLOAD };
    let row = [PENDING, PENDING, PENDING, PENDING, PENDING, PENDING, PENDING, INV, INV];
    check(unfinished, Operation::InvalidateFile, &row);
    check(unfinished, Operation::ValidateFile, &row);
}
