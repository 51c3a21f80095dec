//! Job events: what the notification bus publishes (BITS's `IBackgroundCopyCallback`).
//!
//! Apply produces them ([`crate::Queue::take_changes`]), so every node derives the same
//! ordered stream from the Raft log. A [`Cursor`] names an event: the index of the log
//! entry whose apply produced it, and its position among that entry's events.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
#[cfg(feature = "openapi")]
use utoipa::ToSchema;

use crate::codes::BitsCode;
use crate::command::CommandError;
use crate::ids::{Caller, JobId, Principal};
use crate::job::{Job, JobError, JobProgress, JobState, notify};
use crate::time::Timestamp;

/// What happened to a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub enum EventKind {
    /// The job was created.
    JobCreated,
    /// State, progress or a property changed (`BG_NOTIFY_JOB_MODIFICATION`), coalesced by
    /// the job's minimum notification interval.
    JobModification,
    /// Every file is transferred (`BG_NOTIFY_JOB_TRANSFERRED`).
    JobTransferred,
    /// The job entered ERROR (`BG_NOTIFY_JOB_ERROR`).
    JobError,
    /// One file is transferred (`BG_NOTIFY_FILE_TRANSFERRED`).
    FileTransferred,
    /// More of a file with ranges arrived (`BG_NOTIFY_FILE_RANGES_TRANSFERRED`).
    FileRangesTransferred,
    /// The owner completed the job (ACKNOWLEDGED).
    JobAcknowledged,
    /// The job was cancelled.
    JobCancelled,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [Self; 8] = [
        Self::JobCreated,
        Self::JobModification,
        Self::JobTransferred,
        Self::JobError,
        Self::FileTransferred,
        Self::FileRangesTransferred,
        Self::JobAcknowledged,
        Self::JobCancelled,
    ];

    /// The name used on the wire, in the CLI and in SSE `event:` lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::JobCreated => "JobCreated",
            Self::JobModification => "JobModification",
            Self::JobTransferred => "JobTransferred",
            Self::JobError => "JobError",
            Self::FileTransferred => "FileTransferred",
            Self::FileRangesTransferred => "FileRangesTransferred",
            Self::JobAcknowledged => "JobAcknowledged",
            Self::JobCancelled => "JobCancelled",
        }
    }

    /// The `BG_NOTIFY_*` flag that enables this kind; `None` for the lifecycle kinds BITS
    /// has no callback for (published unless notifications are disabled).
    pub fn flag(self) -> Option<u32> {
        match self {
            Self::JobModification => Some(notify::JOB_MODIFICATION),
            Self::JobTransferred => Some(notify::JOB_TRANSFERRED),
            Self::JobError => Some(notify::JOB_ERROR),
            Self::FileTransferred => Some(notify::FILE_TRANSFERRED),
            Self::FileRangesTransferred => Some(notify::FILE_RANGES_TRANSFERRED),
            Self::JobCreated | Self::JobAcknowledged | Self::JobCancelled => None,
        }
    }

    /// True if a job with `flags` publishes this kind.
    pub fn enabled_by(self, flags: u32) -> bool {
        flags & notify::DISABLE == 0 && self.flag().is_none_or(|f| flags & f != 0)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|k| k.as_str().eq_ignore_ascii_case(s)).ok_or_else(|| {
            let known: Vec<&str> = Self::ALL.iter().map(|k| k.as_str()).collect();
            format!("unknown event kind {s:?} (known: {})", known.join(", "))
        })
    }
}

/// The position of an event in the stream: log index, then position within the entry.
/// Written `INDEX.SUB` (`INDEX` alone means `INDEX.0`).
/// In JSON it is that string; in the binary codec, the two numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cursor {
    /// The Raft log index of the entry whose apply produced the event.
    pub index: u64,
    /// The event's position among that entry's events.
    pub sub: u32,
}

impl Cursor {
    /// The first cursor there is: replay everything still held.
    pub const START: Self = Self { index: 0, sub: 0 };

    /// The cursor just after this one (where a subscriber resumes).
    pub fn next(self) -> Self {
        match self.sub.checked_add(1) {
            Some(sub) => Self { index: self.index, sub },
            None => Self { index: self.index.saturating_add(1), sub: 0 },
        }
    }
}

impl Serialize for Cursor {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            (self.index, self.sub).serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for Cursor {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let text = String::deserialize(deserializer)?;
            text.parse().map_err(serde::de::Error::custom)
        } else {
            let (index, sub) = <(u64, u32)>::deserialize(deserializer)?;
            Ok(Self { index, sub })
        }
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.index, self.sub)
    }
}

impl FromStr for Cursor {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("bad cursor {s:?}: expected INDEX or INDEX.SUB (e.g. 1042.3)");
        let (index, sub) = s.trim().split_once('.').unwrap_or((s.trim(), "0"));
        Ok(Self { index: index.parse().map_err(|_| bad())?, sub: sub.parse().map_err(|_| bad())? })
    }
}

/// One job event, as apply produced it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEvent {
    /// What happened.
    pub kind: EventKind,
    /// The job.
    pub job: JobId,
    /// Its owner (subscriptions of users see only their own jobs).
    pub owner: Principal,
    /// The job's display name.
    pub display_name: String,
    /// The job's state after the change.
    pub state: JobState,
    /// The job's progress after the change.
    pub progress: JobProgress,
    /// The BITS error object, for `JobError` (and modifications into TRANSIENT_ERROR).
    pub error: Option<JobError>,
    /// The file, for `FileTransferred` and `FileRangesTransferred`.
    pub file_index: Option<u32>,
    /// The batch time of the change.
    pub time: Timestamp,
}

impl JobEvent {
    /// An event of `kind` describing `job` as it is now.
    pub fn of(kind: EventKind, job: &Job, file_index: Option<u32>) -> Self {
        Self {
            kind,
            job: job.id,
            owner: job.owner.clone(),
            display_name: job.props.display_name.clone(),
            state: job.state,
            progress: job.progress(),
            error: job.error.clone(),
            file_index,
            time: job.times.modified,
        }
    }
}

/// An event with its place in the stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Where it is in the stream.
    pub cursor: Cursor,
    /// What happened.
    pub event: JobEvent,
}

impl Event {
    /// The event as one flat JSON object, `cursor` first (what SSE and `ferry watch
    /// --json` print).
    pub fn to_json(&self) -> serde_json::Value {
        let mut object = serde_json::Map::new();
        object.insert("cursor".into(), serde_json::Value::String(self.cursor.to_string()));
        if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(&self.event) {
            object.extend(fields);
        }
        serde_json::Value::Object(object)
    }
}

/// What a subscriber wants to see.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventFilter {
    /// Only these jobs (empty: every job the subscriber may see).
    #[serde(default)]
    pub jobs: Vec<JobId>,
    /// Only these kinds (empty: every kind).
    #[serde(default)]
    pub kinds: Vec<EventKind>,
    /// Every user's jobs (administrators only); otherwise the subscriber's own.
    #[serde(default)]
    pub all_users: bool,
}

impl EventFilter {
    /// Refuses a filter `caller` may not use: every user's events are for administrators.
    pub fn authorize(&self, caller: &Caller) -> Result<(), CommandError> {
        if self.all_users && !caller.is_admin() {
            return Err(CommandError::new(
                BitsCode::E_ACCESSDENIED,
                "only administrators may watch the jobs of all users",
            ));
        }
        if self.jobs.len() > MAX_FILTER_JOBS {
            return Err(CommandError::new(
                BitsCode::E_INVALIDARG,
                format!("a filter names at most {MAX_FILTER_JOBS} jobs"),
            ));
        }
        Ok(())
    }

    /// True if `caller`, subscribed with this filter, receives `event`: it passes the job
    /// and kind filters, and the job is the caller's own (or all users were asked for).
    pub fn admits(&self, caller: &Caller, event: &JobEvent) -> bool {
        (self.jobs.is_empty() || self.jobs.contains(&event.job))
            && (self.kinds.is_empty() || self.kinds.contains(&event.kind))
            && (event.owner == caller.principal || (self.all_users && caller.is_admin()))
    }
}

/// Most job ids one filter may name.
pub const MAX_FILTER_JOBS: usize = 1_000;

/// Where a subscription starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StartAt {
    /// Replay from this cursor (inclusive), then go live.
    Cursor(Cursor),
    /// Only events committed from now on.
    Now,
}

impl FromStr for StartAt {
    type Err = String;

    /// `now`, or a cursor (`INDEX[.SUB]`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "now" => Ok(Self::Now),
            cursor => cursor.parse().map(Self::Cursor),
        }
    }
}

/// What a subscription delivers, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Delivery {
    /// An event.
    Event(Event),
    /// Events from `from` on are no longer held (the subscriber fell too far behind, or
    /// asked for history this node pruned); delivery resumes at `oldest`.
    Gap {
        /// The first cursor the subscriber missed.
        from: Cursor,
        /// The oldest cursor this node still holds, where delivery goes on.
        oldest: Cursor,
    },
}

/// The first frame a bus subscriber sends (ALPN `ferry-events/1`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribe {
    /// An API token.
    pub token: String,
    /// Which events.
    pub filter: EventFilter,
    /// From where.
    pub from: StartAt,
}

/// The bus's answer to [`Subscribe`], before any [`Delivery`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SubscribeAnswer {
    /// Accepted: deliveries follow.
    Accepted {
        /// The node serving the subscription.
        node: u64,
        /// The cursor delivery starts at (for `Now`: just after the newest event held);
        /// a subscriber that reconnects before any event resumes here.
        position: Cursor,
    },
    /// Refused, with the HTTP-like status and the reason.
    Refused {
        /// 401 (bad token), 403 (all users without admin), 400 (bad request).
        status: u16,
        /// Why.
        detail: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_parse_print_and_order() {
        let c: Cursor = "1042.3".parse().expect("cursor");
        assert_eq!(c, Cursor { index: 1042, sub: 3 });
        assert_eq!(c.to_string(), "1042.3");
        assert_eq!("7".parse::<Cursor>(), Ok(Cursor { index: 7, sub: 0 }));
        assert!("x.1".parse::<Cursor>().is_err());
        assert!("1.2.3".parse::<Cursor>().is_err());
        assert!(c < c.next() && c.next() < Cursor { index: 1043, sub: 0 });
        assert!(Cursor { index: 1, sub: u32::MAX }.next() == Cursor { index: 2, sub: 0 });
    }

    #[test]
    fn cursors_are_strings_in_json_and_numbers_in_the_codec() {
        let c = Cursor { index: 12, sub: 3 };
        assert_eq!(serde_json::to_string(&c).expect("json"), "\"12.3\"");
        assert_eq!(serde_json::from_str::<Cursor>("\"12.3\"").expect("parse"), c);
        let bytes = crate::codec::encode(&c).expect("encode");
        assert_eq!(crate::codec::decode::<Cursor>(&bytes).expect("decode"), c);
    }

    #[test]
    fn flags_decide_what_is_published() {
        assert!(EventKind::JobTransferred.enabled_by(notify::DEFAULT));
        assert!(EventKind::JobError.enabled_by(notify::DEFAULT));
        assert!(!EventKind::JobModification.enabled_by(notify::DEFAULT));
        assert!(EventKind::JobCreated.enabled_by(notify::DEFAULT));
        assert!(EventKind::JobModification.enabled_by(notify::JOB_MODIFICATION));
        for kind in EventKind::ALL {
            assert!(!kind.enabled_by(notify::VALID), "{kind} with DISABLE");
            assert_eq!(kind.as_str().parse::<EventKind>(), Ok(kind));
        }
    }
}
