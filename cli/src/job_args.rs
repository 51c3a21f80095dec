//! `ferry job ...`: the verbs on jobs and their options (`bitsadmin`'s switches, one
//! verb each), and the single properties `ferry job get` reads.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

use crate::args::{PriorityArg, ProxyUsageArg, TypeArg};
use crate::duration::{parse_millis, parse_refresh, parse_retry_delay, parse_secs};

/// A job, by id or by display name (unique among the caller's jobs).
pub(crate) type JobRef = String;

#[derive(Debug, Subcommand)]
pub(crate) enum JobCommand {
    /// Create a job (it starts SUSPENDED); prints its id.
    Create {
        /// Display name.
        name: String,
        /// Job type.
        #[arg(long = "type", value_enum, default_value = "download")]
        job_type: TypeArg,
        /// Priority.
        #[arg(long, value_enum)]
        priority: Option<PriorityArg>,
        /// Description.
        #[arg(long)]
        description: Option<String>,
    },
    /// Add a file, optionally only some byte ranges of it (`AddFileWithRanges`).
    AddFile {
        /// The job.
        job: JobRef,
        /// Remote URL.
        remote: String,
        /// Absolute local path on the job's home node.
        local: String,
        /// OFFSET:LENGTH, LENGTH a byte count or `eof`; repeat or separate with commas.
        #[arg(long = "range", value_name = "OFFSET:LENGTH", value_delimiter = ',')]
        ranges: Vec<String>,
        /// The SHA-256 the downloaded file must have (64 hex digits): checked before it
        /// counts as transferred, and members' copies of that content may serve it.
        #[arg(long, value_name = "HEX")]
        sha256: Option<String>,
    },
    /// Add the files listed in a text file: one "REMOTE LOCAL" pair per line, `#` comments.
    AddFileSet {
        /// The job.
        job: JobRef,
        /// The list file.
        list: PathBuf,
    },
    /// Show a job.
    Info {
        /// The job.
        job: JobRef,
    },
    /// List your jobs (all users' with --all-users, administrators only).
    List {
        /// Every user's jobs.
        #[arg(long)]
        all_users: bool,
        /// Redraw the list until interrupted (`bitsadmin /monitor`); with --json, one
        /// `{"jobs": [...]}` line per refresh.
        #[arg(long)]
        watch: bool,
        /// How often --watch refreshes: 1s to 1h (a number is seconds).
        #[arg(
            long,
            value_name = "DURATION",
            default_value = "2s",
            value_parser = parse_refresh,
            requires = "watch"
        )]
        interval: Duration,
    },
    /// Print one property of a job, bare (for scripts; `bitsadmin /getstate` and its
    /// kin). With --json: `{"PROPERTY": value}`.
    Get {
        /// The job.
        job: JobRef,
        /// The property.
        #[arg(value_enum)]
        property: JobProperty,
    },
    /// List a job's files with their progress (one with --index).
    Files {
        /// The job.
        job: JobRef,
        /// Only this file (its index, from 0).
        #[arg(long)]
        index: Option<u32>,
    },
    /// Show a job's error.
    Error {
        /// The job.
        job: JobRef,
    },
    /// Change job properties.
    Set(Box<SetArgs>),
    /// Change one file: remote URL and/or validation state.
    SetFile {
        /// The job.
        job: JobRef,
        /// File index.
        index: u32,
        /// New remote URL (`SetRemoteName`).
        #[arg(long)]
        remote_url: Option<String>,
        /// Validation state (`SetValidationState`).
        #[arg(long)]
        valid: Option<bool>,
    },
    /// Replace the start of every remote URL (`ReplaceRemotePrefix`: the server moved).
    ReplaceRemotePrefix {
        /// The job.
        job: JobRef,
        /// The start of the remote URLs to replace.
        old_prefix: String,
        /// What replaces it.
        new_prefix: String,
    },
    /// Queue the job for transfer.
    Resume {
        /// The job.
        job: JobRef,
    },
    /// Pause the job.
    Suspend {
        /// The job.
        job: JobRef,
    },
    /// Cancel the job and delete its temporary files.
    Cancel {
        /// The job.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        job: Option<JobRef>,
        /// Cancel every unfinished job of yours (`bitsadmin /reset`).
        #[arg(long)]
        all: bool,
        /// With --all: every user's jobs (`bitsadmin /reset /allusers`; administrators).
        #[arg(long, requires = "all")]
        all_users: bool,
    },
    /// Make the transferred files visible and end the job.
    Complete {
        /// The job.
        job: JobRef,
    },
    /// Take ownership of a job (administrators).
    TakeOwnership {
        /// The job.
        job: JobRef,
    },
    /// Server or proxy credentials of a job.
    #[command(subcommand)]
    Credentials(CredentialsCommand),
    /// The reply of an upload-reply job (`GetReplyData`, up to 1 MiB).
    Reply {
        /// The job.
        job: JobRef,
        /// Write it to this file instead of standard output.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

/// `ferry job credentials`.
#[derive(Debug, Subcommand)]
pub(crate) enum CredentialsCommand {
    /// Set the credential for (target, scheme); the password is read from stdin (or a
    /// prompt), never from the command line.
    Set {
        /// The job.
        job: JobRef,
        /// server or proxy.
        #[arg(long)]
        target: ferry_protocol::credentials::AuthTarget,
        /// basic or digest.
        #[arg(long)]
        scheme: ferry_protocol::credentials::AuthScheme,
        /// User name.
        #[arg(long)]
        user: String,
    },
    /// Remove the credential for (target, scheme).
    Remove {
        /// The job.
        job: JobRef,
        /// server or proxy.
        #[arg(long)]
        target: ferry_protocol::credentials::AuthTarget,
        /// basic, digest, ntlm, negotiate or passport.
        #[arg(long)]
        scheme: ferry_protocol::credentials::AuthScheme,
    },
}

/// `ferry job set` options.
#[derive(Debug, Args)]
pub(crate) struct SetArgs {
    /// The job.
    pub(crate) job: JobRef,
    /// Display name.
    #[arg(long)]
    pub(crate) display_name: Option<String>,
    /// Description.
    #[arg(long)]
    pub(crate) description: Option<String>,
    /// Priority.
    #[arg(long, value_enum)]
    pub(crate) priority: Option<PriorityArg>,
    /// Minimum retry delay after a transient error: 90s, 5m, 1h30m... or seconds;
    /// at least 5 s (BITS's minimum; smaller values are refused).
    #[arg(long, value_name = "DURATION", value_parser = parse_retry_delay)]
    pub(crate) min_retry_delay: Option<u32>,
    /// No-progress timeout: 30m, 14d... or seconds (0: every error is fatal).
    #[arg(long, value_name = "DURATION", value_parser = parse_secs)]
    pub(crate) no_progress_timeout: Option<u32>,
    /// Maximum active download time: 12h, 90d... or seconds.
    #[arg(long, value_name = "DURATION", value_parser = parse_secs)]
    pub(crate) max_download_time: Option<u32>,
    /// BG_NOTIFY_* flags, decimal or 0x-hex.
    #[arg(long, value_parser = parse_flags, value_name = "FLAGS")]
    pub(crate) notify_flags: Option<u32>,
    /// Program (absolute path) run when the job enters TRANSFERRED or ERROR; no shell.
    #[arg(long, value_name = "PROGRAM")]
    pub(crate) notify_cmdline: Option<String>,
    /// An argument for the notify program; repeat for more, in order.
    #[arg(
        long = "notify-arg",
        value_name = "ARG",
        allow_hyphen_values = true,
        requires = "notify_cmdline"
    )]
    pub(crate) notify_args: Vec<String>,
    /// Remove the notify command line.
    #[arg(long, conflicts_with = "notify_cmdline")]
    pub(crate) clear_notify_cmdline: bool,
    /// "Name: value" header sent with every request of the job; repeat for more.
    #[arg(long = "custom-header", value_name = "NAME: VALUE")]
    pub(crate) custom_headers: Vec<String>,
    /// Remove all custom headers.
    #[arg(long, conflicts_with = "custom_headers")]
    pub(crate) clear_custom_headers: bool,
    /// Hide the custom headers for good.
    #[arg(long)]
    pub(crate) custom_headers_write_only: bool,
    /// Proxy usage.
    #[arg(long, value_enum)]
    pub(crate) proxy_usage: Option<ProxyUsageArg>,
    /// Proxy list (with --proxy-usage override).
    #[arg(long)]
    pub(crate) proxy_list: Option<String>,
    /// Proxy bypass list (with --proxy-usage override).
    #[arg(long)]
    pub(crate) proxy_bypass: Option<String>,
    /// Reply file of an upload-reply job.
    #[arg(long, value_name = "PATH")]
    pub(crate) reply_file_name: Option<String>,
    /// Allow dynamic content (download jobs, before the first resume).
    #[arg(long)]
    pub(crate) dynamic_content: Option<bool>,
    /// Cap on downloaded bytes (download jobs, before the first resume).
    #[arg(long, value_name = "BYTES")]
    pub(crate) max_download_size: Option<u64>,
    /// BG_JOB_ENABLE_PEERCACHING_* flags: 1 the job may use helpers and peers' copies,
    /// 2 its files are offered to peers (default 3).
    #[arg(long, value_parser = parse_flags, value_name = "FLAGS")]
    pub(crate) peer_caching_flags: Option<u32>,
    /// BG_COPY_FILE_* flags.
    #[arg(long, value_parser = parse_flags, value_name = "FLAGS")]
    pub(crate) acl_flags: Option<u32>,
    /// Minimum interval between modification notifications: 500ms, 2s... or
    /// milliseconds.
    #[arg(long, value_name = "DURATION", value_parser = parse_millis)]
    pub(crate) min_notification_interval: Option<u32>,
    /// Parallel range connections per file (1-16).
    #[arg(long, value_name = "N")]
    pub(crate) connections: Option<u32>,
    /// Most other nodes fetching pieces for the job's home node (0-16; 0: none).
    #[arg(long, value_name = "N")]
    pub(crate) max_helpers: Option<u32>,
    /// BG_SSL_* flags and redirect policy (0x100 report, 0x200 disallow, 0x800 allow
    /// https to http), decimal or 0x-hex.
    #[arg(long, value_parser = parse_flags, value_name = "FLAGS")]
    pub(crate) security_flags: Option<u32>,
    /// PEM file (certificate and private key) for TLS client authentication, on the
    /// job's home node.
    #[arg(long, value_name = "PATH")]
    pub(crate) client_certificate: Option<String>,
    /// Remove the client certificate.
    #[arg(long, conflicts_with = "client_certificate")]
    pub(crate) clear_client_certificate: bool,
    /// The HTTP method of the job's requests (`SetHttpMethod`; download jobs, before
    /// the first resume): another verb than GET makes the job FOREGROUND for good and
    /// every error fatal.
    #[arg(long, value_name = "VERB")]
    pub(crate) http_method: Option<String>,
    /// The job's own bandwidth cap, whatever its priority: 2MB, 500KiB, 1.5MB/s...
    /// (bytes per second, at least 1 KiB), or `none` to remove it.
    #[arg(long, value_name = "RATE", value_parser = parse_job_rate)]
    pub(crate) max_bandwidth: Option<JobRate>,
}

/// A job's bandwidth cap as `--max-bandwidth` gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum JobRate {
    /// Bytes per second.
    Cap(u64),
    /// `none`: remove the cap.
    Unlimited,
}

fn parse_job_rate(text: &str) -> Result<JobRate, String> {
    if text.trim().eq_ignore_ascii_case("none") {
        return Ok(JobRate::Unlimited);
    }
    match ferry_coordinator::bandwidth::parse_rate(text)? {
        0 => Err("a cap of 0 would stop the job: give a rate, or none to remove the cap".into()),
        rate => Ok(JobRate::Cap(rate)),
    }
}

fn parse_flags(text: &str) -> Result<u32, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| format!("{text:?} is not a number (decimal or 0x-hex)"))
}

/// What `ferry job get JOB PROPERTY` can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum JobProperty {
    /// The job id.
    Id,
    /// The display name.
    DisplayName,
    /// The description.
    Description,
    /// download, upload or upload-reply.
    Type,
    /// SUSPENDED, QUEUED, CONNECTING, TRANSFERRING, TRANSFERRED, ERROR...
    State,
    /// FOREGROUND, HIGH, NORMAL or LOW.
    Priority,
    /// The owner principal.
    Owner,
    /// Bytes transferred so far.
    BytesTransferred,
    /// Total bytes (UNKNOWN until every size is known).
    BytesTotal,
    /// Files transferred so far.
    FilesTransferred,
    /// Number of files.
    FilesTotal,
    /// Errors so far.
    ErrorCount,
    /// The current error's name and code, or nothing.
    Error,
    /// Creation time.
    Created,
    /// Last modification time.
    Modified,
    /// When the transfer completed, or nothing.
    Completed,
    /// Minimum retry delay, seconds.
    MinRetryDelay,
    /// No-progress timeout, seconds.
    NoProgressTimeout,
    /// Maximum download time, seconds.
    MaxDownloadTime,
    /// BG_NOTIFY_* flags, hex.
    NotifyFlags,
    /// The notify program and its arguments.
    NotifyCmdline,
    /// Proxy usage.
    ProxyUsage,
    /// Custom headers, one per line (nothing when write-only).
    CustomHeaders,
    /// Parallel connections per file (empty: the node's setting).
    Connections,
    /// Most helper nodes (empty: the node's setting).
    Helpers,
    /// The HTTP method of the job's requests (`GET` unless set).
    HttpMethod,
    /// The job's own bandwidth cap, bytes per second (empty: none).
    MaxBandwidth,
    /// Peer caching flags, hex.
    PeerCachingFlags,
    /// Security flags, hex.
    SecurityFlags,
    /// Whether dynamic content is allowed.
    DynamicContent,
    /// Cap on downloaded bytes, or nothing.
    MaxDownloadSize,
    /// The reply file of an upload-reply job.
    ReplyFile,
    /// The node that holds the job's files.
    HomeNode,
}
