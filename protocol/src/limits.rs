//! Size limits of BITS (fixed) and the queue policy (BITS group policies, replicated so
//! that every node enforces the same values).

use serde::{Deserialize, Serialize};
#[cfg(feature = "openapi")]
use utoipa::ToSchema;

/// Longest remote URL, in characters (BITS: 2,200).
pub const MAX_REMOTE_URL_CHARS: usize = 2_200;
/// Longest path segment of a remote URL, in characters (BITS: MAX_PATH).
pub const MAX_URL_SEGMENT_CHARS: usize = 260;
/// Longest local path, in bytes (Linux `PATH_MAX`).
pub const MAX_LOCAL_PATH_BYTES: usize = 4_096;
/// Longest display name, in characters.
pub const MAX_DISPLAY_NAME_CHARS: usize = 256;
/// Longest description, in characters (BITS: 1,024).
pub const MAX_DESCRIPTION_CHARS: usize = 1_024;
/// Longest notify program path, in bytes.
pub const MAX_NOTIFY_PROGRAM_BYTES: usize = 4_096;
/// Longest notify argument list, in characters summed over arguments (BITS: 4,000).
pub const MAX_NOTIFY_ARGS_CHARS: usize = 4_000;
/// Most notify arguments.
pub const MAX_NOTIFY_ARGS: usize = 256;
/// Longest custom header block, in characters, counting CRLF after each line (BITS:
/// 16,384 including the terminating NUL).
pub const MAX_CUSTOM_HEADERS_CHARS: usize = 16_383;
/// Longest proxy list and bypass list, in bytes (BITS: 32 KB).
pub const MAX_PROXY_LIST_BYTES: usize = 32 * 1_024;
/// Most files one request may add, whatever the policy (a bound on request size).
pub const MAX_FILES_PER_REQUEST: usize = 10_000;

/// Most parallel range connections for one file.
pub const MAX_CONNECTIONS_PER_FILE: u32 = 16;
/// Most helpers of one file (other members fetching pieces for its home node).
pub const MAX_HELPERS_PER_FILE: u32 = 16;

/// Largest encoded job, in bytes, whoever owns it: every job must fit comfortably in a
/// stored row and a Raft entry (see `codec::FRAME_LIMIT`).
pub const MAX_JOB_BYTES: usize = 4 * 1024 * 1024;
/// Most unfinished jobs in the cluster, administrators included (the policy's
/// `max_jobs` binds users only, as in BITS; this bounds everyone).
pub const HARD_MAX_JOBS: u32 = 100_000;

/// The queue policy: BITS's group-policy limits. Like BITS, they do not apply to
/// administrators. Replicated, so that every node's apply enforces the same numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct QueuePolicy {
    /// Most unfinished jobs one user may own (`MaxJobsPerUser`, default 60).
    pub max_jobs_per_user: u32,
    /// Most unfinished jobs of all users together (`MaxJobsPerMachine`, default 300).
    pub max_jobs: u32,
    /// Most files per job (`MaxFilesPerJob`, default 200).
    pub max_files_per_job: u32,
    /// Most ranges per file (`MaxRangesPerFile`, default 500).
    pub max_ranges_per_file: u32,
    /// Seconds without any change after which a job is cancelled
    /// (`JobInactivityTimeout`, default 90 days).
    pub job_inactivity_timeout_secs: u64,
}

impl Default for QueuePolicy {
    fn default() -> Self {
        Self {
            max_jobs_per_user: 60,
            max_jobs: 300,
            max_files_per_job: 200,
            max_ranges_per_file: 500,
            job_inactivity_timeout_secs: 90 * 24 * 3600,
        }
    }
}

/// Longest HTTP method `SetHttpMethod` takes, in bytes.
pub const MAX_HTTP_METHOD_BYTES: usize = 32;

/// Smallest per-job bandwidth cap, bytes per second: below it a job would barely move.
pub const MIN_JOB_BANDWIDTH: u64 = 1024;
