//! The command line: global options and the nouns, as DESIGN §7 fixes them (the job
//! verbs are in `job_args`). Names are a contract: options are added, never renamed.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ferry_protocol::job::{JobType, Priority, ProxyUsage};

pub(crate) use crate::job_args::{CredentialsCommand, JobCommand, SetArgs};
use crate::output::Format;

/// What `ferry --help` ends with: the exit codes and where settings come from.
const AFTER_HELP: &str = "\
Exit codes:
  0  success
  1  any other failure (a job that ended in ERROR, a refused request, a bad file...)
  2  usage: bad options or arguments
  3  not found: no such job, code or file (HTTP 404, BG_E_NOT_FOUND)
  4  access denied: missing or wrong token, not your job (HTTP 401/403, E_ACCESSDENIED)
  5  transient: no node answers, timeouts, the cluster is electing (HTTP 503); try again

The node, token and CA come from the flags, else FERRY_NODE, FERRY_TOKEN (or
FERRY_TOKEN_FILE) and FERRY_CA, else $XDG_CONFIG_HOME/ferry/config.toml (keys: node,
token_file, ca), else a local node's data directory (--data-dir).";

/// Operate a Ferry cluster: BITS jobs, errors, cluster status.
#[derive(Debug, Parser)]
#[command(
    name = "ferry",
    version = env!("FERRY_VERSION"),
    propagate_version = true,
    after_help = AFTER_HELP
)]
pub(crate) struct Cli {
    /// Node API URL [default: $FERRY_NODE, else `node` in the config file, else
    /// <data-dir>/api.addr (https:// with --ca), else http://127.0.0.1:7070]
    #[arg(long, global = true, env = "FERRY_NODE", value_name = "URL")]
    pub(crate) node: Option<String>,
    /// API token [default: $FERRY_TOKEN, else --token-file, else <data-dir>/admin.token]
    #[arg(long, global = true, env = "FERRY_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub(crate) token: Option<String>,
    /// A file holding the API token [default: $FERRY_TOKEN_FILE, else `token_file` in
    /// the config file]
    #[arg(long, global = true, env = "FERRY_TOKEN_FILE", value_name = "FILE")]
    pub(crate) token_file: Option<PathBuf>,
    /// PEM file of the CA that issued the node's API certificate (for https:// nodes;
    /// the cluster CA is <data-dir>/ca.pem on any member). Only that CA is trusted.
    /// [default: $FERRY_CA, else `ca` in the config file, else the system's roots]
    #[arg(long, global = true, env = "FERRY_CA", value_name = "FILE")]
    pub(crate) ca: Option<PathBuf>,
    /// The client config file [default: $FERRY_CONFIG, else
    /// $XDG_CONFIG_HOME/ferry/config.toml, else ~/.config/ferry/config.toml]
    #[arg(long, global = true, env = "FERRY_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Data directory of a local node, to find its token and address.
    #[arg(
        long,
        global = true,
        env = "FERRY_DATA_DIR",
        default_value = "./ferry-data",
        value_name = "DIR"
    )]
    pub(crate) data_dir: PathBuf,
    /// Print JSON instead of tables (the same as -o json): one JSON object per command.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Output format: table, wide (every column, never wrapped), json or yaml.
    #[arg(short = 'o', long = "format", global = true, value_enum, value_name = "FORMAT")]
    pub(crate) format: Option<Format>,
    #[command(subcommand)]
    pub(crate) command: Noun,
}

impl Cli {
    /// The output format: `--json` is `-o json`.
    pub(crate) fn output(&self) -> Format {
        if self.json { Format::Json } else { self.format.unwrap_or(Format::Table) }
    }
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
    /// Print a shell completion script (e.g. `ferry completions bash >
    /// /etc/bash_completion.d/ferry`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff; e.g. `ferry man > /usr/local/share/man/man1/ferry.1`).
    Man,
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
    /// Over the QUIC bus on the peer port (UDP) instead of `GET /v1/events` on the
    /// API port.
    #[arg(long)]
    pub(crate) quic: bool,
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
        /// The SHA-256 the file must have (64 hex digits), checked on every node.
        #[arg(long, value_name = "HEX")]
        sha256: Option<String>,
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
    /// The SHA-256 the downloaded file must have (64 hex digits; one file): checked
    /// before it counts as transferred.
    #[arg(long, value_name = "HEX")]
    pub(crate) sha256: Option<String>,
    /// Do not draw the progress line.
    #[arg(long)]
    pub(crate) no_progress: bool,
    /// Create and resume the job, print its id and return (no progress, no Complete:
    /// finish it later with `ferry job complete JOB`).
    #[arg(long, conflicts_with = "no_progress")]
    pub(crate) no_wait: bool,
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
