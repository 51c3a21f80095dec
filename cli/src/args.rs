//! The command line: nouns then verbs, as DESIGN §7 fixes them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ferry_protocol::job::{JobType, Priority, ProxyUsage};

/// Operate a Ferry cluster: BITS jobs, errors, cluster status.
#[derive(Debug, Parser)]
#[command(name = "ferry", version = env!("FERRY_VERSION"), propagate_version = true)]
pub(crate) struct Cli {
    /// Node API URL [default: $FERRY_NODE, else <data-dir>/api.addr (https:// with --ca), else http://127.0.0.1:7070]
    #[arg(long, global = true, env = "FERRY_NODE", value_name = "URL")]
    pub(crate) node: Option<String>,
    /// API token [default: $FERRY_TOKEN, else <data-dir>/admin.token]
    #[arg(long, global = true, env = "FERRY_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub(crate) token: Option<String>,
    /// PEM file of the CA that issued the node's API certificate (for https:// nodes;
    /// the cluster CA is <data-dir>/ca.pem on any member). Only that CA is trusted.
    /// [default: $FERRY_CA, else the system's roots]
    #[arg(long, global = true, env = "FERRY_CA", value_name = "FILE")]
    pub(crate) ca: Option<PathBuf>,
    /// Data directory of a local node, to find its token and address.
    #[arg(
        long,
        global = true,
        env = "FERRY_DATA_DIR",
        default_value = "./ferry-data",
        value_name = "DIR"
    )]
    pub(crate) data_dir: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    #[command(subcommand)]
    pub(crate) command: Noun,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Noun {
    /// Download files now (`bitsadmin /transfer`): create a job, show progress, complete it.
    Transfer(TransferArgs),
    /// Jobs: create, add files, inspect, change, resume, complete...
    #[command(subcommand)]
    Job(JobCommand),
    /// BITS error codes.
    #[command(subcommand)]
    Error(ErrorCommand),
    /// One file to many nodes: each chunk fetched from the origin about once and
    /// spread between the nodes.
    #[command(subcommand)]
    Fleet(FleetCommand),
    /// The cluster: leader, members, indexes.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// API tokens of the cluster's principals (administrators): any member accepts them.
    #[command(subcommand)]
    Token(TokenCommand),
    /// The node this command talks to (--node): its own settings, not the cluster's.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Print job events as they happen, one line each (NDJSON with --json); follows the
    /// cluster: on the loss of its node, resumes at another from the last cursor.
    Watch(WatchArgs),
}

/// `ferry watch` options.
#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    /// Only this job (id or display name).
    pub(crate) job: Option<String>,
    /// Replay from this cursor (`INDEX[.SUB]`; `0` for all the history held) instead of
    /// starting now.
    #[arg(long, value_name = "CURSOR")]
    pub(crate) from: Option<String>,
    /// Every user's jobs (administrators).
    #[arg(long)]
    pub(crate) all_users: bool,
    /// Only these kinds, comma-separated (e.g. JobTransferred,JobError).
    #[arg(long, value_delimiter = ',', value_name = "KIND,...")]
    pub(crate) kinds: Vec<String>,
    /// Stop after this many events (default: run until interrupted).
    #[arg(long, value_name = "N")]
    pub(crate) count: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum FleetCommand {
    /// Download URL to PATH on several nodes (one job per node, that node its home);
    /// waits, showing progress, then completes every job (unless --no-wait).
    Distribute {
        /// The URL.
        url: String,
        /// Absolute path the file gets on every node (`{node}` in it becomes each
        /// node's id, for nodes sharing a file system).
        path: String,
        /// `all` (default) or node ids, comma-separated.
        #[arg(long, default_value = "all", value_name = "all|ID,...")]
        nodes: String,
        /// Priority of the jobs (BITS default: normal).
        #[arg(long, value_enum)]
        priority: Option<PriorityArg>,
        /// Print the fleet id and return at once.
        #[arg(long)]
        no_wait: bool,
        /// Basic credentials for the server, this user; the password is read from stdin.
        #[arg(long, value_name = "USER")]
        server_user: Option<String>,
    },
    /// Each node's progress in fleet ID.
    Status {
        /// The fleet id printed by `distribute`.
        id: String,
    },
}

/// `ferry transfer` options.
#[derive(Debug, Args)]
pub(crate) struct TransferArgs {
    /// Priority (BITS default: normal).
    #[arg(long, value_enum)]
    pub(crate) priority: Option<PriorityArg>,
    /// Parallel range connections per file (1-16; default: the node's setting).
    #[arg(long, value_name = "N")]
    pub(crate) connections: Option<u32>,
    /// Most other nodes fetching pieces for this node (0-16; default: the node's
    /// setting).
    #[arg(long, value_name = "N")]
    pub(crate) helpers: Option<u32>,
    /// Display name of the job.
    #[arg(long)]
    pub(crate) display_name: Option<String>,
    /// Allow servers that give no size or ranges (no resume; restarts from zero).
    #[arg(long)]
    pub(crate) dynamic: bool,
    /// Do not draw the progress line.
    #[arg(long)]
    pub(crate) no_progress: bool,
    /// An upload job: send LOCAL to the BITS upload server at REMOTE (one pair).
    #[arg(long, conflicts_with = "upload_reply")]
    pub(crate) upload: bool,
    /// An upload-reply job: upload, then receive the server's reply (printed, and kept
    /// in the reply file).
    #[arg(long)]
    pub(crate) upload_reply: bool,
    /// Where the reply of --upload-reply goes (default: beside LOCAL).
    #[arg(long, value_name = "PATH", requires = "upload_reply")]
    pub(crate) reply_file: Option<String>,
    /// Basic credentials for the server, this user; the password is read from stdin.
    #[arg(long, value_name = "USER")]
    pub(crate) server_user: Option<String>,
    /// REMOTE LOCAL [REMOTE LOCAL ...]: URLs and where to put them.
    #[arg(required = true, num_args = 2.., value_name = "REMOTE LOCAL")]
    pub(crate) pairs: Vec<String>,
}

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
        job: JobRef,
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
    /// Minimum retry delay after a transient error, seconds (at least 5).
    #[arg(long, value_name = "SECONDS")]
    pub(crate) min_retry_delay: Option<u32>,
    /// No-progress timeout, seconds (0: every error is fatal).
    #[arg(long, value_name = "SECONDS")]
    pub(crate) no_progress_timeout: Option<u32>,
    /// Maximum active download time, seconds.
    #[arg(long, value_name = "SECONDS")]
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
    /// Minimum interval between modification notifications, milliseconds.
    #[arg(long, value_name = "MS")]
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
}

fn parse_flags(text: &str) -> Result<u32, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| format!("{text:?} is not a number (decimal or 0x-hex)"))
}

#[derive(Debug, Subcommand)]
pub(crate) enum ErrorCommand {
    /// Describe a BITS code given in hex (0x80200001) or by name (BG_E_NOT_FOUND).
    Describe {
        /// The code.
        code: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ClusterCommand {
    /// Leader, term, this node's role, indexes and the queue policy.
    Status,
    /// The members and their roles.
    Members,
    /// Join the node to a cluster (needs the peer transport: not in this release).
    Join {
        /// A member's peer (QUIC) address.
        addr: String,
    },
    /// Remove a member (administrators; the last voter cannot leave).
    Leave {
        /// Node id.
        #[arg(value_name = "NODE")]
        node_id: u64,
    },
}

/// `ferry token`.
#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Create a principal's token, valid on every member at once; prints it (the only
    /// time it is shown).
    Create {
        /// The principal (the owner of the jobs made with the token).
        name: String,
        /// `user` sees and changes only its own jobs; `admin` all.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Absolute directories its jobs may name local files in, on every member
        /// (comma-separated); unset: each node's `transfer.destination_roots`.
        #[arg(long, value_delimiter = ',', value_name = "DIR[,DIR...]")]
        roots: Option<Vec<String>>,
    },
    /// The principals of the cluster, revoked ones included (never their tokens).
    List,
    /// Revoke a principal's token on every member; its open event streams end.
    Revoke {
        /// The principal.
        name: String,
    },
}

/// `ferry node`.
#[derive(Debug, Subcommand)]
pub(crate) enum NodeCommand {
    /// The node's bandwidth policy for background transfers and the rate it allows now.
    Bandwidth,
    /// Replace the node's bandwidth policy until it restarts (administrators; put it in
    /// the node's [bandwidth] configuration to keep it). The work-hours window and its
    /// rate are kept unless given or dropped.
    SetBandwidth(SetBandwidthArgs),
}

/// `ferry node set-bandwidth` options.
#[derive(Debug, Args)]
pub(crate) struct SetBandwidthArgs {
    /// Bytes per second for background jobs (outside work hours, if any): a number, or
    /// with a unit such as 20MB or 2.5MiB; 0 for unlimited.
    #[arg(value_name = "RATE", value_parser = parse_rate)]
    pub(crate) rate: u64,
    /// Bytes per second for background jobs inside work hours (0: unlimited).
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub(crate) work_hours_rate: Option<u64>,
    /// The work-hours window: days then times, e.g. "mon-fri 08:00-17:00".
    #[arg(long, value_name = "DAYS FROM-TO", conflicts_with = "no_work_hours")]
    pub(crate) work_hours: Option<String>,
    /// Offset from UTC of the --work-hours times, e.g. +01:00 [default: the node's
    /// current one, else +00:00].
    #[arg(long, value_name = "+HH:MM", requires = "work_hours", allow_hyphen_values = true)]
    pub(crate) utc_offset: Option<String>,
    /// Drop the work-hours window.
    #[arg(long)]
    pub(crate) no_work_hours: bool,
    /// Limit foreground jobs too (BITS exempts them).
    #[arg(long)]
    pub(crate) limit_foreground: bool,
}

fn parse_rate(text: &str) -> Result<u64, String> {
    ferry_coordinator::bandwidth::parse_rate(text)
}

/// `--role`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum RoleArg {
    /// Its own jobs only.
    User,
    /// Every job; manages tokens and members.
    Admin,
}

impl From<RoleArg> for ferry_protocol::Role {
    fn from(role: RoleArg) -> Self {
        match role {
            RoleArg::User => Self::User,
            RoleArg::Admin => Self::Admin,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum TypeArg {
    Download,
    Upload,
    UploadReply,
}

impl From<TypeArg> for JobType {
    fn from(t: TypeArg) -> Self {
        match t {
            TypeArg::Download => Self::Download,
            TypeArg::Upload => Self::Upload,
            TypeArg::UploadReply => Self::UploadReply,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum PriorityArg {
    Foreground,
    High,
    Normal,
    Low,
}

impl From<PriorityArg> for Priority {
    fn from(p: PriorityArg) -> Self {
        match p {
            PriorityArg::Foreground => Self::Foreground,
            PriorityArg::High => Self::High,
            PriorityArg::Normal => Self::Normal,
            PriorityArg::Low => Self::Low,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum ProxyUsageArg {
    Preconfig,
    NoProxy,
    Override,
    Autodetect,
}

impl From<ProxyUsageArg> for ProxyUsage {
    fn from(p: ProxyUsageArg) -> Self {
        match p {
            ProxyUsageArg::Preconfig => Self::Preconfig,
            ProxyUsageArg::NoProxy => Self::NoProxy,
            ProxyUsageArg::Override => Self::Override,
            ProxyUsageArg::Autodetect => Self::Autodetect,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// clap's own consistency checks of the definitions (conflicting ids, bad defaults).
    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }
}
