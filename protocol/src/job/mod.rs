//! The BITS job model: types, states, priorities, properties, times, progress and the
//! error object, as the replicated state stores them.
//!
//! The JSON forms of these types are part of the HTTP API; their binary forms go through
//! [`crate::codec`]. Nothing here may use serde attributes that need a self-describing
//! format (`flatten`, `untagged`, internally tagged enums, `skip_serializing_if`).

use serde::{Deserialize, Serialize};
#[cfg(feature = "openapi")]
use utoipa::ToSchema;

use crate::codes::{BitsCode, ErrorContext};
use crate::time::Timestamp;

mod record;

pub use record::{Activity, Job, LocalStamp, NotifyBook, NotifyRun, Placement, UploadState};

/// `BG_JOB_TYPE`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum JobType {
    /// Server to client; any number of files.
    #[default]
    Download,
    /// Client to server over the BITS upload protocol; exactly one file.
    Upload,
    /// Upload one file, then download the server's reply.
    UploadReply,
}

impl JobType {
    /// All job types.
    pub const ALL: [Self; 3] = [Self::Download, Self::Upload, Self::UploadReply];

    /// True for upload and upload-reply jobs.
    pub fn is_upload(self) -> bool {
        !matches!(self, Self::Download)
    }

    /// The name bitsadmin prints.
    pub fn bits_name(self) -> &'static str {
        match self {
            Self::Download => "DOWNLOAD",
            Self::Upload => "UPLOAD",
            Self::UploadReply => "UPLOAD_REPLY",
        }
    }
}

/// `BG_JOB_STATE`: the nine BITS job states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// 0: ready, waiting for the scheduler.
    Queued,
    /// 1: connecting to the server.
    Connecting,
    /// 2: data is moving.
    Transferring,
    /// 3: paused; every new job starts here.
    Suspended,
    /// 4: a non-recoverable error; not retried until `Resume`.
    Error,
    /// 5: a recoverable error; retried after the minimum retry delay.
    TransientError,
    /// 6: all files transferred; waits for `Complete`.
    Transferred,
    /// 7: `Complete` was called (final).
    Acknowledged,
    /// 8: `Cancel` was called (final).
    Cancelled,
}

impl JobState {
    /// All nine states in `BG_JOB_STATE` order.
    pub const ALL: [Self; 9] = [
        Self::Queued,
        Self::Connecting,
        Self::Transferring,
        Self::Suspended,
        Self::Error,
        Self::TransientError,
        Self::Transferred,
        Self::Acknowledged,
        Self::Cancelled,
    ];

    /// The `BG_JOB_STATE` value.
    pub fn value(self) -> u32 {
        match self {
            Self::Queued => 0,
            Self::Connecting => 1,
            Self::Transferring => 2,
            Self::Suspended => 3,
            Self::Error => 4,
            Self::TransientError => 5,
            Self::Transferred => 6,
            Self::Acknowledged => 7,
            Self::Cancelled => 8,
        }
    }

    /// ACKNOWLEDGED and CANCELLED: no state-changing calls, hidden from enumerations.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Acknowledged | Self::Cancelled)
    }

    /// QUEUED, CONNECTING, TRANSFERRING: the job wants or holds transfer time.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Queued | Self::Connecting | Self::Transferring)
    }

    /// The name bitsadmin prints (`TRANSIENT_ERROR`).
    pub fn bits_name(self) -> &'static str {
        match self {
            Self::Queued => "QUEUED",
            Self::Connecting => "CONNECTING",
            Self::Transferring => "TRANSFERRING",
            Self::Suspended => "SUSPENDED",
            Self::Error => "ERROR",
            Self::TransientError => "TRANSIENT_ERROR",
            Self::Transferred => "TRANSFERRED",
            Self::Acknowledged => "ACKNOWLEDGED",
            Self::Cancelled => "CANCELLED",
        }
    }
}

/// `BG_JOB_PRIORITY`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// 0: foreground; all foreground jobs run at once.
    Foreground,
    /// 1: highest background priority.
    High,
    /// 2: the default.
    #[default]
    Normal,
    /// 3: lowest.
    Low,
}

impl Priority {
    /// All priorities, highest first.
    pub const ALL: [Self; 4] = [Self::Foreground, Self::High, Self::Normal, Self::Low];

    /// The name bitsadmin prints.
    pub fn bits_name(self) -> &'static str {
        match self {
            Self::Foreground => "FOREGROUND",
            Self::High => "HIGH",
            Self::Normal => "NORMAL",
            Self::Low => "LOW",
        }
    }
}

/// `BG_NOTIFY_*` flags.
pub mod notify {
    /// All files transferred.
    pub const JOB_TRANSFERRED: u32 = 0x0001;
    /// The job entered ERROR.
    pub const JOB_ERROR: u32 = 0x0002;
    /// Disable all notifications.
    pub const DISABLE: u32 = 0x0004;
    /// Progress, property or state changed.
    pub const JOB_MODIFICATION: u32 = 0x0008;
    /// A file finished.
    pub const FILE_TRANSFERRED: u32 = 0x0010;
    /// Ranges arrived (on-demand jobs).
    pub const FILE_RANGES_TRANSFERRED: u32 = 0x0020;
    /// Every defined flag; others are refused with `E_NOTIMPL`.
    pub const VALID: u32 = 0x003F;
    /// BITS's default: `JOB_TRANSFERRED | JOB_ERROR`.
    pub const DEFAULT: u32 = JOB_TRANSFERRED | JOB_ERROR;
}

/// `BG_JOB_ENABLE_PEERCACHING_*` flags.
pub mod peer_caching {
    /// The job may download from peers.
    pub const CLIENT: u32 = 0x1;
    /// The job's content may be served to peers.
    pub const SERVER: u32 = 0x2;
    /// Do not use BranchCache.
    pub const DISABLE_BRANCH_CACHE: u32 = 0x4;
    /// Ferry's own: serve a file to peers only once its owner validated it
    /// (`SetValidationState(TRUE)`, or Complete, which validates implicitly), as BITS
    /// shares content. Without it a file is offered from its first durable chunk on,
    /// each chunk checked by its receiver against its recorded digest (fleets).
    pub const SERVE_VALIDATED_ONLY: u32 = 0x100;
    /// Every defined flag.
    pub const VALID: u32 = 0x107;
}

/// `BG_SSL_*` security flags and the `BG_HTTP_REDIRECT_POLICY_*` bits
/// (`IBackgroundCopyJobHttpOptions::SetSecurityFlags`).
pub mod security {
    /// Check certificate revocation (not supported by this build: refused).
    pub const ENABLE_CRL_CHECK: u32 = 0x1;
    /// Accept a certificate whose name does not match the host.
    pub const IGNORE_CERT_CN_INVALID: u32 = 0x2;
    /// Accept an expired or not yet valid certificate.
    pub const IGNORE_CERT_DATE_INVALID: u32 = 0x4;
    /// Accept a certificate from an unknown authority.
    pub const IGNORE_UNKNOWN_CA: u32 = 0x8;
    /// Accept a certificate meant for another use.
    pub const IGNORE_CERT_WRONG_USAGE: u32 = 0x10;
    /// The redirect policy bits.
    pub const REDIRECT_POLICY_MASK: u32 = 0x700;
    /// Follow redirects silently (default).
    pub const REDIRECT_ALLOW_SILENT: u32 = 0x000;
    /// Follow redirects and record the final URL as the file's remote name.
    pub const REDIRECT_ALLOW_REPORT: u32 = 0x100;
    /// A redirect fails the job.
    pub const REDIRECT_DISALLOW: u32 = 0x200;
    /// Allow a redirect from https to http (refused otherwise).
    pub const REDIRECT_ALLOW_HTTPS_TO_HTTP: u32 = 0x800;
    /// Every defined bit.
    pub const VALID: u32 = 0x1F | REDIRECT_POLICY_MASK | REDIRECT_ALLOW_HTTPS_TO_HTTP;
}

/// `BG_COPY_FILE_*` ACL flags.
pub mod acl {
    /// The source's owner (a local source: its user).
    pub const OWNER: u32 = 0x1;
    /// The source's group.
    pub const GROUP: u32 = 0x2;
    /// The source's discretionary ACL (POSIX: permission bits and access ACL).
    pub const DACL: u32 = 0x4;
    /// The source's system ACL (POSIX: its `user.*` extended attributes).
    pub const SACL: u32 = 0x8;
    /// Every defined flag (`BG_COPY_FILE_ALL`).
    pub const VALID: u32 = 0xF;
}

/// The program run when the job enters TRANSFERRED or ERROR (`SetNotifyCmdLine`).
/// Ferry runs it without a shell: `program` is an absolute path, `args` are passed as is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NotifyCmdLine {
    /// Absolute path of the program.
    pub program: String,
    /// Arguments, not expanded and not split.
    #[serde(default)]
    pub args: Vec<String>,
}

/// `BG_JOB_PROXY_USAGE`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ProxyUsage {
    /// The node's configured proxy (environment), the default.
    #[default]
    Preconfig,
    /// Connect directly.
    NoProxy,
    /// Use the job's explicit proxy and bypass lists.
    Override,
    /// Detect the proxy automatically.
    Autodetect,
}

/// `SetProxySettings`: usage plus space-delimited proxy and bypass lists (OVERRIDE only).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ProxySettings {
    /// How the proxy is chosen.
    pub usage: ProxyUsage,
    /// Proxies, space-delimited (`host:port` or URLs); required with OVERRIDE.
    #[serde(default)]
    pub list: Option<String>,
    /// Hosts that bypass the proxy, space-delimited; OVERRIDE only.
    #[serde(default)]
    pub bypass: Option<String>,
}

/// Marks a custom header value sealed at rest (`Name: ferry-sealed:<hex>`): the API
/// node seals values before proposing them; readers open them with the cluster key.
pub const SEALED_PREFIX: &str = "ferry-sealed:";

/// Custom header lines (`Name: value`). Values may be secrets (`Authorization`), so
/// `Debug` shows the names only; the API hides them all once they are write-only.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(transparent)]
#[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
pub struct HeaderLines(pub Vec<String>);

impl std::fmt::Debug for HeaderLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names =
            self.0.iter().map(|line| line.split_once(':').map_or("?", |(name, _)| name.trim()));
        f.debug_list().entries(names).finish()
    }
}

impl std::ops::Deref for HeaderLines {
    type Target = Vec<String>;

    fn deref(&self) -> &Vec<String> {
        &self.0
    }
}

impl std::ops::DerefMut for HeaderLines {
    fn deref_mut(&mut self) -> &mut Vec<String> {
        &mut self.0
    }
}

impl From<Vec<String>> for HeaderLines {
    fn from(lines: Vec<String>) -> Self {
        Self(lines)
    }
}

/// Every settable property of a job, with BITS's defaults.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct JobProperties {
    /// Free text, not unique.
    pub display_name: String,
    /// Free text, at most 1,024 characters.
    pub description: String,
    /// Scheduling priority.
    pub priority: Priority,
    /// `BG_NOTIFY_*` flags; default `0x3`.
    pub notify_flags: u32,
    /// Program run on TRANSFERRED/ERROR.
    pub notify_cmdline: Option<NotifyCmdLine>,
    /// Seconds to wait before retrying after a transient error; default 600, at least 5.
    pub minimum_retry_delay_secs: u32,
    /// Seconds without progress before a transient error becomes fatal; default 14 days.
    pub no_progress_timeout_secs: u32,
    /// Seconds of active transfer allowed; default 90 days.
    pub max_download_time_secs: u32,
    /// Proxy usage and lists.
    pub proxy: ProxySettings,
    /// Where an upload-reply job stores the reply.
    pub reply_file_name: Option<String>,
    /// `Name: value` lines sent with every HTTP request of the job.
    pub custom_headers: HeaderLines,
    /// Once set, custom headers are never returned again (BITS `MakeCustomHeadersWriteOnly`).
    pub custom_headers_write_only: bool,
    /// Allow servers without HEAD/Content-Length/ranges (`BITS_JOB_PROPERTY_DYNAMIC_CONTENT`).
    pub dynamic_content: bool,
    /// Cap on the bytes downloaded (`BITS_JOB_PROPERTY_MAX_DOWNLOAD_SIZE`).
    pub max_download_size: Option<u64>,
    /// `BG_JOB_ENABLE_PEERCACHING_*` flags: `CLIENT` lets the job use helpers and peers'
    /// copies, `SERVER` offers its files to peers. Ferry's default is both.
    pub peer_caching_flags: u32,
    /// `BG_COPY_FILE_*` flags.
    pub acl_flags: u32,
    /// Minimum interval between modification events, in milliseconds; default 500.
    pub minimum_notification_interval_ms: u32,
    /// Parallel range connections per file; `None` takes the node's setting. Several
    /// connections help only against a per-connection bottleneck.
    pub max_connections: Option<u32>,
    /// Other members that may fetch pieces of the job's files for its home node
    /// (helpers); `None` takes the node's setting, 0 keeps the job on its home node.
    pub max_helpers: Option<u32>,
    /// `BG_SSL_*` flags and redirect policy (see [`security`]); default 0.
    pub security_flags: u32,
    /// TLS client certificate: absolute path of a PEM file (certificate chain and
    /// private key) on the home node. Removed by TakeOwnership.
    pub client_certificate: Option<String>,
    /// `SetHttpMethod`: the verb of a download job's requests; `None` is `GET`. Any
    /// other verb makes the job FOREGROUND for good, sends one request per file with no
    /// probe and no ranges, and makes every error fatal (BITS 10).
    #[serde(default, with = "crate::codec::since_11")]
    pub http_method: Option<String>,
    /// The job's own bandwidth cap, bytes per second, whatever its priority (beside the
    /// node's limit for background jobs); a capped job is not helped by other members.
    #[serde(default, with = "crate::codec::since_11")]
    pub max_bandwidth: Option<u64>,
}

/// BITS defaults for job properties.
pub mod defaults {
    /// `SetMinimumRetryDelay` default, seconds.
    pub const MINIMUM_RETRY_DELAY_SECS: u32 = 600;
    /// `SetMinimumRetryDelay` floor, seconds: smaller values are raised to this.
    pub const MINIMUM_RETRY_DELAY_FLOOR_SECS: u32 = 5;
    /// `SetNoProgressTimeout` default: 14 days.
    pub const NO_PROGRESS_TIMEOUT_SECS: u32 = 1_209_600;
    /// `SetMaximumDownloadTime` default: 90 days.
    pub const MAX_DOWNLOAD_TIME_SECS: u32 = 7_776_000;
    /// `BITS_JOB_PROPERTY_MINIMUM_NOTIFICATION_INTERVAL_MS` default.
    pub const MINIMUM_NOTIFICATION_INTERVAL_MS: u32 = 500;
}

impl JobProperties {
    /// The job's own HTTP method (`SetHttpMethod`), if it is not `GET`.
    pub fn custom_method(&self) -> Option<&str> {
        self.http_method.as_deref()
    }

    /// True if each file is fetched in one request from its start, with no probe and
    /// no ranges: dynamic content, or an HTTP method of its own.
    pub fn whole_streams(&self) -> bool {
        self.dynamic_content || self.http_method.is_some()
    }

    /// BITS's defaults for a new job with this display name and priority.
    pub fn new(display_name: String, priority: Priority) -> Self {
        Self {
            display_name,
            description: String::new(),
            priority,
            notify_flags: notify::DEFAULT,
            notify_cmdline: None,
            minimum_retry_delay_secs: defaults::MINIMUM_RETRY_DELAY_SECS,
            no_progress_timeout_secs: defaults::NO_PROGRESS_TIMEOUT_SECS,
            max_download_time_secs: defaults::MAX_DOWNLOAD_TIME_SECS,
            proxy: ProxySettings::default(),
            reply_file_name: None,
            custom_headers: HeaderLines::default(),
            custom_headers_write_only: false,
            dynamic_content: false,
            max_download_size: None,
            // Unlike BITS (0), a Ferry job may use and serve peers' copies by default:
            // a plain transfer on a cluster uses the cluster.
            peer_caching_flags: peer_caching::CLIENT | peer_caching::SERVER,
            acl_flags: 0,
            minimum_notification_interval_ms: defaults::MINIMUM_NOTIFICATION_INTERVAL_MS,
            max_connections: None,
            max_helpers: None,
            security_flags: 0,
            client_certificate: None,
            http_method: None,
            max_bandwidth: None,
        }
    }
}

/// `BG_JOB_TIMES`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct JobTimes {
    /// When the job was created.
    pub created: Timestamp,
    /// Last change of state, properties or files (resets the inactivity timer).
    pub modified: Timestamp,
    /// When the job entered TRANSFERRED.
    pub transfer_completed: Option<Timestamp>,
}

/// `BG_JOB_PROGRESS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct JobProgress {
    /// Total bytes of all files; `null` (`BG_SIZE_UNKNOWN`) until every size is known.
    pub bytes_total: Option<u64>,
    /// Bytes transferred so far.
    pub bytes_transferred: u64,
    /// Number of files.
    pub files_total: u32,
    /// Number of files completely transferred.
    pub files_transferred: u32,
}

/// The job's last error (`IBackgroundCopyError`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct JobError {
    /// Where the error happened.
    pub context: ErrorContext,
    /// The BITS code.
    pub code: BitsCode,
    /// What Ferry observed, in one sentence (request, status, path...).
    pub detail: String,
    /// The file the error concerns, if any (`GetFile`).
    pub file_index: Option<u32>,
    /// The protocol in use (`GetProtocol`), e.g. `http`.
    pub protocol: Option<String>,
}

/// `BG_JOB_REPLY_PROGRESS`: the reply of an upload-reply job.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ReplyProgress {
    /// Size of the reply; `null` (`BG_SIZE_UNKNOWN`) until the server gave it (an
    /// error while it is unknown happened in the upload phase).
    pub bytes_total: Option<u64>,
    /// Bytes of the reply received.
    pub bytes_transferred: u64,
}

/// Most reply bytes returned in memory (`GetReplyData`); a longer reply is read from
/// the reply file.
pub const MAX_REPLY_DATA: u64 = 1024 * 1024;
