//! `[notify]`, `[upload]` and `[log]`: notify programs, the upload server and logging.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[notify]`: running a job's notify command line on its home node.
///
/// The command line is a way to run code on the node, so users may name only the
/// programs listed here, and no program runs as root: it runs as the job owner's OS
/// identity (`uid`/`gid` of its `[[api.tokens]]` entry), else as `run_as`, else (when
/// ferryd is not root) as ferryd's own user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// A program still running after this is killed (and the run counts as failed),
    /// seconds. Default 300.
    #[serde(deserialize_with = "super::duration::secs")]
    pub timeout_secs: u64,
    /// Wait before starting a program, milliseconds. Tests use it to crash a node
    /// between the commit of TRANSFERRED and the run. Default 0.
    #[serde(deserialize_with = "super::duration::millis")]
    pub start_delay_ms: u64,
    /// Absolute paths of the programs users may name in a notify command line (as
    /// spelled here: no other spelling of the path matches). Administrators may name
    /// any program. List no shell, interpreter or program that runs others (`env`,
    /// `xargs`, `find`): its arguments come from the user. Default none: users may set
    /// no notify command line.
    pub allowed_programs: Vec<PathBuf>,
    /// The unprivileged OS identity programs run as when the job's owner has no `uid`
    /// of its own. Unset, and ferryd runs as root: programs of owners without a `uid`
    /// do not run (the run counts as failed). Default unset.
    pub run_as: Option<RunAs>,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self { timeout_secs: 300, start_delay_ms: 0, allowed_programs: Vec::new(), run_as: None }
    }
}

/// `[notify] run_as = { uid = N, gid = N }`: an OS identity, never root's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunAs {
    /// User id; not 0.
    pub uid: u32,
    /// Group id (the only group: supplementary groups are dropped); not 0.
    pub gid: u32,
}

impl NotifyConfig {
    /// Checks the values: a timeout, absolute allowed programs without `..`, an
    /// identity that is not root's.
    pub fn check(&self) -> Result<(), String> {
        if self.timeout_secs == 0 {
            return Err("notify.timeout_secs must be at least 1".into());
        }
        for program in &self.allowed_programs {
            let parent = program.components().any(|c| c == std::path::Component::ParentDir);
            if !program.is_absolute() || parent {
                return Err(format!(
                    "notify.allowed_programs: {} must be an absolute path without '..'",
                    program.display()
                ));
            }
        }
        if let Some(RunAs { uid, gid }) = self.run_as
            && (uid == 0 || gid == 0)
        {
            return Err(format!(
                "notify.run_as must be an unprivileged identity, not uid {uid} gid {gid} (0 is root's)"
            ));
        }
        Ok(())
    }

    /// The programs users may name, for the API's check.
    pub fn policy(&self) -> ferry_coordinator::notify_policy::NotifyPolicy {
        ferry_coordinator::notify_policy::NotifyPolicy::new(self.allowed_programs.clone())
    }
}

/// `[upload]`: the BITS upload server on the API listener (`BITS_POST /bits/<path>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadConfig {
    /// Where completed uploads go (`<root>/<path>`). Default `<data-dir>/uploads`.
    pub root: Option<PathBuf>,
    /// Largest file accepted, bytes (`BG_E_TOO_LARGE` beyond). Default 4 GiB.
    pub max_size_bytes: u64,
    /// Largest fragment (request body), bytes. Default 32 MiB.
    pub max_fragment_bytes: usize,
    /// Whether an upload may replace an existing file (else Create-Session gets 409).
    /// Default false.
    pub allow_overwrite: bool,
    /// What receives a completed upload (IIS `BITSServerNotificationType`): `none` (the
    /// file stays at `<root>/<path>`), `by_reference` or `by_value` (POSTed to
    /// `backend_url`, whose answer becomes the reply). Default `none`.
    pub backend: BackendMode,
    /// The back end's URL (`BITSServerNotificationURL`, plain http); the upload URL's
    /// query string is appended.
    pub backend_url: Option<String>,
    /// Seconds the back end has to answer (then the client retries). Default 300.
    #[serde(deserialize_with = "super::duration::secs")]
    pub backend_timeout_secs: u64,
    /// `BITS-Host-Id` sent on Create-Session: the host (and port) every later packet of
    /// the session goes to. Default none.
    pub host_id: Option<String>,
    /// `BITS-Host-Id-Fallback-Timeout`, seconds. Default 86,400 (IIS's).
    #[serde(deserialize_with = "super::duration::secs")]
    pub host_id_fallback_timeout_secs: u64,
}

/// How a completed upload is handed to the back end (bits-spec §5.6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendMode {
    /// No notification: the file is placed at its upload path.
    #[default]
    None,
    /// POST naming the uploaded file and the file the reply goes to.
    ByReference,
    /// POST carrying the uploaded file; the response body is the reply.
    ByValue,
}

impl Default for UploadConfig {
    fn default() -> Self {
        Self {
            root: None,
            max_size_bytes: 4 * 1024 * 1024 * 1024,
            max_fragment_bytes: 32 * 1024 * 1024,
            allow_overwrite: false,
            backend: BackendMode::None,
            backend_url: None,
            backend_timeout_secs: 300,
            host_id: None,
            host_id_fallback_timeout_secs: 86_400,
        }
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`. Default `text`.
    pub format: LogFormat,
    /// A tracing filter (`RUST_LOG` syntax); `RUST_LOG` overrides it. Default
    /// `info,openraft=warn`.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Text, filter: "info,openraft=warn".into() }
    }
}
