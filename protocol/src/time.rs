//! Wall-clock timestamps as the replicated state stores them.
//!
//! Apply never reads a clock: the leader stamps every batch of commands with the time,
//! and apply keeps a monotonic maximum of the stamps it has seen. Timers that must not
//! jump with the wall clock (retry delay, no-progress timeout) run on the leader's
//! monotonic clock and are only *derived* from these stamps after a leader change.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
#[cfg(feature = "openapi")]
use utoipa::ToSchema;

/// Milliseconds since the Unix epoch, UTC.
///
/// Serialized as an RFC 3339 string in human-readable formats (JSON) and as a plain
/// integer in binary ones (the codec).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime, example = "2026-11-22T10:15:30.123Z"))]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The current wall-clock time (only the leader and clients call this; apply never does).
    pub fn now() -> Self {
        let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Self(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
    }

    /// This time plus `d`, saturating.
    pub fn plus(self, d: Duration) -> Self {
        Self(self.0.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
    }

    /// The time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Self) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        humantime::format_rfc3339_millis(self.to_system_time()).fmt(f)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() { s.collect_str(self) } else { s.serialize_u64(self.0) }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            let time = humantime::parse_rfc3339_weak(&text).map_err(serde::de::Error::custom)?;
            let since = time.duration_since(UNIX_EPOCH).map_err(serde::de::Error::custom)?;
            Ok(Self(u64::try_from(since.as_millis()).map_err(serde::de::Error::custom)?))
        } else {
            u64::deserialize(d).map(Self)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_form_is_rfc3339_and_round_trips() {
        let t = Timestamp(1_795_000_000_123);
        let json = serde_json::to_string(&t).expect("serialize");
        assert_eq!(json, "\"2026-11-18T11:06:40.123Z\"");
        let back: Timestamp = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, t);
    }

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(Timestamp(5).since(Timestamp(9)), Duration::ZERO);
        assert_eq!(Timestamp(u64::MAX).plus(Duration::from_secs(1)), Timestamp(u64::MAX));
    }
}
