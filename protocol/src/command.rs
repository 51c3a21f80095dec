//! Commands: every mutation of the job queue, as proposed to Raft and applied by every
//! node. A [`Batch`] is one Raft entry: the leader groups concurrent proposals so that
//! they share one log write and one fsync, and stamps the batch with its time.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
#[cfg(feature = "openapi")]
use utoipa::ToSchema;

use crate::codes::BitsCode;
use crate::credentials::{AuthScheme, AuthTarget, SealedCredential};
use crate::file::NewFile;
use crate::ids::{Caller, JobId, NodeId, RequestId};
use crate::job::{HeaderLines, JobType, NotifyCmdLine, Priority, ProxySettings};
use crate::limits::QueuePolicy;
use crate::time::Timestamp;
use crate::transfer::EngineReport;

/// One Raft entry's payload: proposals applied in order, all at `time`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// The leader's wall-clock time when it formed the batch.
    pub time: Timestamp,
    /// The proposals, applied in this order.
    pub proposals: Vec<Proposal>,
}

/// One client's command with who sent it and its idempotency key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// Key under which a retry of the same request finds the first answer.
    pub request_id: Option<RequestId>,
    /// The authenticated sender; apply checks ownership against it.
    pub caller: Caller,
    /// What to do.
    pub command: Command,
}

/// A mutation of the job queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// `CreateJob` (+ optional properties and files in the same step).
    CreateJob {
        /// Id chosen by the accepting node.
        id: JobId,
        /// The node that will hold the job's files.
        home_node: NodeId,
        /// Name, type, properties and files.
        spec: NewJob,
    },
    /// `AddFile` / `AddFileSet` / `AddFileWithRanges`.
    AddFiles {
        /// Target job.
        job: JobId,
        /// Files to append, in order.
        files: Vec<NewFile>,
    },
    /// Property setters, all-or-nothing.
    SetProperties {
        /// Target job.
        job: JobId,
        /// Changes to make.
        changes: PropertyChanges,
    },
    /// `IBackgroundCopyFile2::SetRemoteName` and/or
    /// `IBackgroundCopyFile3::SetValidationState`, all or nothing.
    ChangeFile {
        /// Target job.
        job: JobId,
        /// File index.
        index: u32,
        /// What to change.
        changes: FileChanges,
    },
    /// `SetCredentials`: add or replace the credential for its (target, scheme).
    SetCredentials {
        /// Target job.
        job: JobId,
        /// The credential, password sealed by the accepting node.
        credential: SealedCredential,
    },
    /// `RemoveCredentials`.
    RemoveCredentials {
        /// Target job.
        job: JobId,
        /// Server or proxy.
        target: AuthTarget,
        /// The scheme.
        scheme: AuthScheme,
    },
    /// Resume, suspend, cancel, complete or take ownership.
    Lifecycle {
        /// Target job.
        job: JobId,
        /// Which call.
        action: JobAction,
    },
    /// Replace the queue policy (administrators only).
    SetPolicy(QueuePolicy),
    /// A BITS upload session's Create, Fragment or End (the serving node proposes it for
    /// the uploader).
    Upload(crate::queue::UploadCommand),
    /// Hand out the next node id for a joining node, above every id given so far and
    /// above `at_least` (the node itself only): any member may admit joins, and ids
    /// are never reused.
    AllocateNodeId {
        /// The largest id the admitting node knows of (members, older records).
        at_least: NodeId,
    },
    /// `ferry fleet distribute`: one download job per member node (the node is its
    /// home), all with `spec`, created and resumed together, all or nothing.
    CreateFleet {
        /// The fleet's id, chosen by the accepting node.
        fleet: JobId,
        /// Each member's job id and home node, in member order.
        members: Vec<(JobId, NodeId)>,
        /// Name, properties and the one file every member downloads.
        spec: NewJob,
        /// Credentials, one list per member in member order (each sealed for that
        /// member's job), or none.
        credentials: Vec<Vec<SealedCredential>>,
    },
    /// Takes file `file` of `job` out of the peer cache: its copy served bytes that did
    /// not match their digest, its node's cache limits dropped it, or its file is gone
    /// (the node itself only).
    WithdrawPeerCopy {
        /// The job holding the copy.
        job: JobId,
        /// The file.
        file: u32,
        /// The chunk whose bytes did not match, with the digest they were checked
        /// against: the copy is withdrawn only if it still records that digest (a
        /// holder that started the file over since has a new copy). `None`: the
        /// holder's own limits, whatever the copy holds.
        mismatch: Option<(u32, [u8; 32])>,
    },
    /// A report of the scheduler or the transfer engine (the node itself only).
    Engine {
        /// Target job.
        job: JobId,
        /// The transfer run the report belongs to (see [`crate::Job::run`]); ignored by
        /// reports that are not about a run.
        run: u64,
        /// What happened, applied in order, all or nothing.
        reports: Vec<EngineReport>,
    },
    /// Create or revoke a token of the cluster's principals (format 9; appended last so
    /// that every earlier variant keeps its number).
    Principals(crate::principals::PrincipalCommand),
    /// `ReplaceRemotePrefix` (format 10, appended last).
    ReplaceRemotePrefix(ReplacePrefix),
}

/// The format that brought [`ReplacePrefix`].
pub const REPLACE_PREFIX_FORMAT: u8 = 10;

/// `ReplaceRemotePrefix`: every file of a download job whose remote name starts with
/// `old_prefix`, and that is not transferred yet, gets `new_prefix` instead (the server
/// moved); each such file starts over, as with `SetRemoteName`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ReplacePrefix {
    /// The job.
    pub job: JobId,
    /// The prefixes.
    pub change: PrefixChange,
}

/// The body of `POST /v1/jobs/{id}/replace-remote-prefix`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PrefixChange {
    /// The start of the remote names to replace (not empty).
    #[cfg_attr(feature = "openapi", schema(min_length = 1))]
    pub old_prefix: String,
    /// What replaces it (not a `file:` URL: use `SetRemoteName` for local sources).
    pub new_prefix: String,
}

/// How [`ReplacePrefix`] is written: with the format it appeared in.
#[derive(Serialize)]
#[serde(rename = "ReplacePrefix")]
struct ReplacePrefixRef<'a> {
    job: &'a JobId,
    change: &'a PrefixChange,
}

impl Serialize for ReplacePrefix {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        crate::codec::needs_version(REPLACE_PREFIX_FORMAT);
        ReplacePrefixRef { job: &self.job, change: &self.change }.serialize(serializer)
    }
}

/// The state-changing job calls of `IBackgroundCopyJob`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum JobAction {
    /// `Resume`.
    Resume,
    /// `Suspend`.
    Suspend,
    /// `Cancel`.
    Cancel,
    /// `Complete`.
    Complete,
    /// `TakeOwnership` (administrators).
    TakeOwnership,
}

impl JobAction {
    /// Every action.
    pub const ALL: [Self; 5] =
        [Self::Resume, Self::Suspend, Self::Cancel, Self::Complete, Self::TakeOwnership];

    /// The action's path segment and CLI verb.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Resume => "resume",
            Self::Suspend => "suspend",
            Self::Cancel => "cancel",
            Self::Complete => "complete",
            Self::TakeOwnership => "take-ownership",
        }
    }
}

/// A new job: `POST /v1/jobs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewJob {
    /// Display name (not unique).
    #[cfg_attr(
        feature = "openapi",
        schema(max_length = 256, pattern = "^[^\\u0000-\\u0008\\u000B-\\u001F\\u007F-\\u009F]*$")
    )]
    pub display_name: String,
    /// Download (default), upload or upload-reply.
    #[serde(rename = "type", default)]
    pub job_type: JobType,
    /// Properties to set at creation; unset ones take BITS's defaults.
    #[serde(default)]
    pub properties: PropertyChanges,
    /// Files to add at creation, in order.
    #[serde(default)]
    pub files: Vec<NewFile>,
}

/// Property changes: every field is optional; a field that is present is set. For the
/// nullable ones (`notify_cmdline`, `reply_file_name`, `custom_headers`,
/// `max_download_size`) an explicit JSON `null` clears the property.
///
/// In JSON, absent fields are left out (never written as `null`, which would mean
/// "clear"); the binary codec writes every field positionally. See the `Serialize` impl.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields, remote = "Self")]
pub struct PropertyChanges {
    /// Display name.
    #[serde(default)]
    #[cfg_attr(
        feature = "openapi",
        schema(max_length = 256, pattern = "^[^\\u0000-\\u0008\\u000B-\\u001F\\u007F-\\u009F]*$")
    )]
    pub display_name: Option<String>,
    /// Description (at most 1,024 characters).
    #[serde(default)]
    #[cfg_attr(
        feature = "openapi",
        schema(max_length = 1024, pattern = "^[^\\u0000-\\u0008\\u000B-\\u001F\\u007F-\\u009F]*$")
    )]
    pub description: Option<String>,
    /// Priority.
    #[serde(default)]
    pub priority: Option<Priority>,
    /// `BG_NOTIFY_*` flags.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(maximum = 0x3F))]
    pub notify_flags: Option<u32>,
    /// Program to run on TRANSFERRED/ERROR; `null` removes it.
    #[serde(default, deserialize_with = "nullable")]
    #[cfg_attr(feature = "openapi", schema(nullable))]
    pub notify_cmdline: Option<Option<NotifyCmdLine>>,
    /// Retry delay after a transient error, seconds (raised to at least 5).
    #[serde(default)]
    pub minimum_retry_delay_secs: Option<u32>,
    /// No-progress timeout, seconds (0: every error is fatal).
    #[serde(default)]
    pub no_progress_timeout_secs: Option<u32>,
    /// Maximum active transfer time, seconds.
    #[serde(default)]
    pub max_download_time_secs: Option<u32>,
    /// Proxy usage and lists.
    #[serde(default)]
    pub proxy: Option<ProxySettings>,
    /// Reply file of an upload-reply job; `null` lets Ferry choose.
    #[serde(default, deserialize_with = "nullable")]
    #[cfg_attr(feature = "openapi", schema(nullable))]
    pub reply_file_name: Option<Option<String>>,
    /// `Name: value` header lines; `null` removes them.
    #[serde(default, deserialize_with = "nullable")]
    #[cfg_attr(feature = "openapi", schema(nullable))]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<String>>))]
    pub custom_headers: Option<Option<HeaderLines>>,
    /// `true` hides the custom headers for good (it cannot be undone).
    #[serde(default)]
    pub custom_headers_write_only: Option<bool>,
    /// Allow dynamic content (download jobs, before the first resume).
    #[serde(default)]
    pub dynamic_content: Option<bool>,
    /// Cap on downloaded bytes; `null` removes it (download jobs, before the first resume).
    #[serde(default, deserialize_with = "nullable")]
    #[cfg_attr(feature = "openapi", schema(nullable))]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub max_download_size: Option<Option<u64>>,
    /// `BG_JOB_ENABLE_PEERCACHING_*` flags.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::peer_caching_flags))]
    pub peer_caching_flags: Option<u32>,
    /// `BG_COPY_FILE_*` flags.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(maximum = 0xF))]
    pub acl_flags: Option<u32>,
    /// Minimum interval between modification events, milliseconds.
    #[serde(default)]
    pub minimum_notification_interval_ms: Option<u32>,
    /// Parallel range connections per file (1 to 16); `null` takes the node's setting.
    #[serde(default, deserialize_with = "nullable")]
    #[cfg_attr(feature = "openapi", schema(nullable))]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 16))]
    pub max_connections: Option<Option<u32>>,
    /// Most helpers (other members fetching pieces for the home node), 0 to 16; `null`
    /// takes the node's setting.
    #[serde(default, deserialize_with = "nullable")]
    #[cfg_attr(feature = "openapi", schema(nullable))]
    #[cfg_attr(feature = "openapi", schema(maximum = 16))]
    pub max_helpers: Option<Option<u32>>,
    /// `BG_SSL_*` flags and redirect policy bits.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::security_flags))]
    pub security_flags: Option<u32>,
    /// PEM file (certificate and key) for TLS client authentication; `null` removes it.
    #[serde(default, deserialize_with = "nullable")]
    #[cfg_attr(feature = "openapi", schema(nullable))]
    pub client_certificate: Option<Option<String>>,
    /// `SetHttpMethod`: the verb of the job's requests (download jobs, before the first
    /// resume; `GET` is the default). Another verb makes the job FOREGROUND for good.
    #[serde(default, with = "crate::codec::since_11")]
    #[cfg_attr(
        feature = "openapi",
        schema(max_length = 32, pattern = "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
    )]
    pub http_method: Option<String>,
    /// The job's own bandwidth cap, bytes per second (at least 1,024); `null` removes it.
    #[serde(
        default,
        serialize_with = "crate::codec::since_11::serialize",
        deserialize_with = "crate::codec::since_11::nullable"
    )]
    #[cfg_attr(feature = "openapi", schema(nullable))]
    #[cfg_attr(feature = "openapi", schema(minimum = 1024))]
    pub max_bandwidth: Option<Option<u64>>,
}

/// Writes the present fields of `changes` as map entries.
macro_rules! present_fields {
    ($map:ident, $changes:ident, $($field:ident),* $(,)?) => {
        $( if let Some(value) = &$changes.$field {
            serde::ser::SerializeMap::serialize_entry(&mut $map, stringify!($field), value)?;
        } )*
    };
}

impl Serialize for PropertyChanges {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if !s.is_human_readable() {
            // The derived, positional form (`remote = "Self"` makes it an inherent fn).
            return Self::serialize(self, s);
        }
        let mut map = s.serialize_map(None)?;
        present_fields!(
            map,
            self,
            display_name,
            description,
            priority,
            notify_flags,
            notify_cmdline,
            minimum_retry_delay_secs,
            no_progress_timeout_secs,
            max_download_time_secs,
            proxy,
            reply_file_name,
            custom_headers,
            custom_headers_write_only,
            dynamic_content,
            max_download_size,
            peer_caching_flags,
            acl_flags,
            minimum_notification_interval_ms,
            max_connections,
            max_helpers,
            security_flags,
            client_certificate,
            http_method,
            max_bandwidth,
        );
        serde::ser::SerializeMap::end(map)
    }
}

impl<'de> Deserialize<'de> for PropertyChanges {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::deserialize(d)
    }
}

impl PropertyChanges {
    /// True if nothing would change.
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// Reads a present-but-null JSON field as `Some(None)` and an absent one (via
/// `#[serde(default)]`) as `None`. Binary formats store the nested options as they are.
fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    if d.is_human_readable() {
        Option::<T>::deserialize(d).map(Some)
    } else {
        Option::<Option<T>>::deserialize(d)
    }
}

/// Changes to one file (`PATCH /v1/jobs/{id}/files/{index}`): the remote name first,
/// then the validation state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[cfg_attr(feature = "openapi", schema(min_properties = 1))]
#[serde(deny_unknown_fields)]
pub struct FileChanges {
    /// New remote URL (`SetRemoteName`).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(nullable = false, max_length = 2200))]
    pub remote_url: Option<String>,
    /// Validation state (`SetValidationState`); `false` marks the content as bad.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub valid: Option<bool>,
}

/// What a successful command returns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// The job was created with this id.
    Created(JobId),
    /// Done; the code is `S_OK` or an informational success such as
    /// `BG_S_PARTIAL_COMPLETE`.
    Done(BitsCode),
    /// A node id was handed out ([`Command::AllocateNodeId`]).
    NodeId(NodeId),
    /// An upload fragment was taken ([`crate::queue::UploadCommand::Fragment`]).
    Fragment(crate::queue::FragmentAck),
}

/// Why a command was refused: the BITS code and a sentence saying what to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandError {
    /// The BITS code (`BG_E_NOT_FOUND`, `E_INVALIDARG`, ...).
    pub code: BitsCode,
    /// What was wrong, for a human.
    pub detail: String,
}

impl CommandError {
    /// A refusal with this code and explanation.
    pub fn new(code: BitsCode, detail: impl Into<String>) -> Self {
        Self { code, detail: detail.into() }
    }

    /// `BG_E_NOT_FOUND` for a job that does not exist or that the caller may not see.
    pub fn job_not_found(job: JobId) -> Self {
        Self::new(BitsCode::BG_E_NOT_FOUND, format!("job {job} was not found"))
    }
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.code.name().unwrap_or_default();
        write!(f, "{name} ({}): {}", self.code, self.detail)
    }
}

impl std::error::Error for CommandError {}

/// The outcome of one proposal.
pub type CommandResult = Result<Reply, CommandError>;

/// The outcome of one Raft entry: one result per proposal of the batch (empty for
/// blank and membership entries).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchReply(pub Vec<CommandResult>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_null_clears_and_absent_leaves_alone() {
        let clear: PropertyChanges =
            serde_json::from_str(r#"{"notify_cmdline": null}"#).expect("json");
        assert_eq!(clear.notify_cmdline, Some(None));
        let leave: PropertyChanges = serde_json::from_str(r#"{"priority": "high"}"#).expect("json");
        assert_eq!(leave.notify_cmdline, None);
        assert_eq!(leave.priority, Some(Priority::High));
        assert!(serde_json::from_str::<PropertyChanges>(r#"{"colour": "red"}"#).is_err());
    }

    #[test]
    fn json_leaves_out_absent_fields_and_keeps_explicit_clears() {
        let changes = PropertyChanges {
            priority: Some(Priority::Low),
            notify_cmdline: Some(None),
            ..PropertyChanges::default()
        };
        let json = serde_json::to_string(&changes).expect("json");
        assert_eq!(json, r#"{"priority":"low","notify_cmdline":null}"#);
        let back: PropertyChanges = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, changes);
        assert_eq!(serde_json::to_string(&PropertyChanges::default()).expect("json"), "{}");
    }

    #[test]
    fn debug_shows_header_names_not_values() {
        let changes = PropertyChanges {
            custom_headers: Some(Some(vec!["Authorization: Bearer s3cret".to_owned()].into())),
            ..PropertyChanges::default()
        };
        let text = format!("{changes:?}");
        assert!(text.contains("Authorization") && !text.contains("s3cret"), "{text}");
        let mut props = crate::job::JobProperties::new("j".into(), Priority::Normal);
        props.custom_headers = vec!["Authorization: Bearer s3cret".to_owned()].into();
        let text = format!("{props:?}");
        assert!(text.contains("Authorization") && !text.contains("s3cret"), "{text}");
    }

    #[test]
    fn nullable_fields_round_trip_through_the_codec() {
        let changes = PropertyChanges {
            notify_cmdline: Some(None),
            max_download_size: Some(Some(7)),
            custom_headers: None,
            ..PropertyChanges::default()
        };
        let bytes = crate::codec::encode(&changes).expect("encode");
        let back: PropertyChanges = crate::codec::decode(&bytes).expect("decode");
        assert_eq!(back, changes);
    }
}
