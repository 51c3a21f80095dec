//! A node's bandwidth policy for background transfers (BITS's `MaxInternetBandwidth`
//! and `MaxTransferRateOnSchedule` group policies), as the `[bandwidth]` section of
//! `ferryd`'s configuration and the body of `PUT /v1/node/bandwidth` spell it; the
//! answer of `GET /v1/node/bandwidth`; and rates as people write them (`"20MB"`,
//! `"2.5 MiB/s"`).
//!
//! Only the shapes live here. Whether a policy's times make sense, which rate applies
//! at a given moment and the token bucket that enforces it are the node's
//! (`ferry_node`'s `transfer::bandwidth`): it refuses a policy it cannot apply with
//! [`InvalidPolicy`].

use std::fmt;

use ferry_protocol::NodeId;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A node's bandwidth policy. Rates are bytes per second, 0 meaning unlimited; in the
/// configuration file (and in API bodies) a rate may also be a string with a unit:
/// `"20MB"` (SI: 20,000,000), `"2.5 MiB"` (binary), an optional `/s`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BandwidthPolicy {
    /// Bytes per second that the node's background jobs (priorities HIGH, NORMAL and
    /// LOW) may receive from origins and send to upload servers, all together: its own
    /// jobs and the pieces it fetches as a helper for other members. Outside work
    /// hours when `work_hours` is set, else always. 0: unlimited. Default 0.
    #[serde(deserialize_with = "rate")]
    #[schema(value_type = u64, example = 20_000_000)]
    pub background_rate: u64,
    /// A weekly window in which `work_hours_rate` applies instead (BITS's work hours of
    /// `MaxTransferRateOnSchedule`). Default none.
    pub work_hours: Option<WorkHours>,
    /// Bytes per second for background transfers inside `work_hours` (required with
    /// it); 0: unlimited.
    #[serde(deserialize_with = "optional_rate", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<u64>, example = 5_000_000)]
    pub work_hours_rate: Option<u64>,
    /// Foreground jobs draw on the same limit (BITS exempts them). Default false.
    pub limit_foreground: bool,
}

/// A window of each of some weekdays, in the node's local time as `utc_offset` gives
/// it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkHours {
    /// The days a window starts on (`"mon"` to `"sun"`).
    pub days: Vec<Weekday>,
    /// When the window opens: `"HH:MM"` or `"HH:MM:SS"`.
    #[schema(example = "08:00")]
    pub from: String,
    /// When it closes: `"HH:MM"`, `"HH:MM:SS"` or `"24:00"` (midnight). Earlier than
    /// `from`: the window runs past midnight into the next day.
    #[schema(example = "17:00")]
    pub to: String,
    /// The node's local time as an offset from UTC, `"+HH:MM"` or `"-HH:MM"`.
    /// Daylight saving time is not followed: change the offset when clocks change.
    /// Default `"+00:00"` (UTC).
    #[serde(default = "utc")]
    #[schema(example = "+01:00")]
    pub utc_offset: String,
}

fn utc() -> String {
    "+00:00".to_owned()
}

/// A day of the week.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Weekday {
    /// Monday.
    Mon,
    /// Tuesday.
    Tue,
    /// Wednesday.
    Wed,
    /// Thursday.
    Thu,
    /// Friday.
    Fri,
    /// Saturday.
    Sat,
    /// Sunday.
    Sun,
}

impl Weekday {
    /// Monday to Sunday.
    pub const ALL: [Self; 7] =
        [Self::Mon, Self::Tue, Self::Wed, Self::Thu, Self::Fri, Self::Sat, Self::Sun];

    /// 0 for Monday to 6 for Sunday.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl Weekday {
    /// The three-letter name (`mon`).
    pub fn as_str(self) -> &'static str {
        ["mon", "tue", "wed", "thu", "fri", "sat", "sun"][self.index()]
    }
}

impl std::str::FromStr for Weekday {
    type Err = String;

    /// `mon` or `monday`, in any case.
    fn from_str(text: &str) -> Result<Self, String> {
        const NAMES: [&str; 7] =
            ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"];
        let lower = text.trim().to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|day| lower == day.as_str() || lower == NAMES[day.index()])
            .ok_or_else(|| format!("{text:?} is not a weekday (mon, tue, wed, thu, fri, sat, sun)"))
    }
}

/// Where a node's policy in force comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PolicySource {
    /// The `[bandwidth]` section of the node's configuration, as read at start.
    Config,
    /// `PUT /v1/node/bandwidth` since the node started: lost when it restarts.
    Api,
}

/// A node's bandwidth policy and what it does now (`GET /v1/node/bandwidth`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BandwidthStatus {
    /// The node that answered: each node has its own policy.
    pub node_id: NodeId,
    /// The policy in force.
    pub policy: BandwidthPolicy,
    /// Where it comes from.
    pub source: PolicySource,
    /// Bytes per second background transfers may use now (0: unlimited).
    pub current_rate: u64,
    /// Whether the work-hours window is open now.
    pub in_work_hours: bool,
    /// Seconds until the schedule changes the rate next (with work hours only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_change_secs: Option<u64>,
    /// Bytes that drew on the limit since the node started (background transfers, and
    /// foreground ones with `limit_foreground`), whatever the rate was.
    pub throttled_bytes: u64,
}

/// Why a node refuses a bandwidth policy: a sentence saying what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidPolicy(pub String);

/// Units of a rate, lower case, in bytes.
const UNITS: [(&str, f64); 11] = [
    ("", 1.0),
    ("b", 1.0),
    ("k", 1e3),
    ("kb", 1e3),
    ("m", 1e6),
    ("mb", 1e6),
    ("g", 1e9),
    ("gb", 1e9),
    ("kib", 1024.0),
    ("mib", 1_048_576.0),
    ("gib", 1_073_741_824.0),
];

/// Parses a rate in bytes per second: a number (`"20000000"`) or a number with a unit
/// (`"20MB"`, `"2.5 MiB"`, `"512 KiB/s"`; `k`/`kB`, `M`/`MB`, `G`/`GB` are powers of
/// 1000, `KiB`, `MiB`, `GiB` of 1024; case does not matter). `"0"` is unlimited.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let lower = trimmed.to_ascii_lowercase();
    let body = lower.strip_suffix("/s").unwrap_or(&lower).trim_end();
    let split = body.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(body.len());
    let (number, unit) = body.split_at(split);
    let explain = || {
        format!(
            "{text:?} is not a rate: give bytes per second, e.g. 20000000, \"20MB\" or \"2.5 MiB\""
        )
    };
    let value: f64 = number.parse().map_err(|_| explain())?;
    let (_, scale) = UNITS.iter().find(|(name, _)| *name == unit.trim()).ok_or_else(explain)?;
    let bytes = (value * scale).round();
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(explain());
    }
    // In range (checked above) and integral (rounded): the cast is exact enough.
    Ok(bytes as u64)
}

/// A rate for people: `unlimited`, `20 MB/s`, `2.5 MiB/s` (whichever unit gives the
/// shorter exact figure), `900 B/s`.
pub fn format_rate(bytes_per_sec: u64) -> String {
    if bytes_per_sec == 0 {
        return "unlimited".to_owned();
    }
    let mut best = format!("{bytes_per_sec} B/s");
    for (name, scale) in [
        ("kB", 1e3),
        ("MB", 1e6),
        ("GB", 1e9),
        ("KiB", 1024.0),
        ("MiB", 1_048_576.0),
        ("GiB", 1_073_741_824.0),
    ] {
        let value = bytes_per_sec as f64 / scale;
        if value < 1.0 {
            continue;
        }
        let text = format!("{value:.2}");
        let text = text.trim_end_matches('0').trim_end_matches('.');
        let candidate = format!("{text} {name}/s");
        // Exact figures only (two decimals at most), the shortest wins.
        if parse_rate(&candidate) == Ok(bytes_per_sec) && candidate.len() < best.len() {
            best = candidate;
        }
    }
    if best.len() > 12 {
        // No short exact figure: an approximate one in MB/s.
        return format!("{:.2} MB/s", bytes_per_sec as f64 / 1e6);
    }
    best
}

/// Reads a rate: a number of bytes per second or a string [`parse_rate`] reads.
struct RateVisitor;

impl Visitor<'_> for RateVisitor {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bytes per second: a number, or a string such as \"20MB\" or \"2.5 MiB\"")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v).map_err(|_| E::custom(format!("a rate cannot be negative ({v})")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<u64, E> {
        parse_rate(&v.to_string()).map_err(E::custom)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        parse_rate(v).map_err(E::custom)
    }
}

fn rate<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    deserializer.deserialize_any(RateVisitor)
}

fn optional_rate<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    struct OptionalRate;
    impl<'de> Visitor<'de> for OptionalRate {
        type Value = Option<u64>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            RateVisitor.expecting(f)
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            rate(d).map(Some)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            RateVisitor.visit_u64(v).map(Some)
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            RateVisitor.visit_i64(v).map(Some)
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            RateVisitor.visit_f64(v).map(Some)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            RateVisitor.visit_str(v).map(Some)
        }
    }
    deserializer.deserialize_any(OptionalRate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_and_without_units() {
        for (text, bytes) in [
            ("0", 0),
            ("20000000", 20_000_000),
            ("20MB", 20_000_000),
            ("20 mb/s", 20_000_000),
            ("2.5 MiB", 2_621_440),
            ("512KiB/s", 524_288),
            ("1.5k", 1_500),
            ("1 GiB", 1_073_741_824),
            ("3G", 3_000_000_000),
            (" 100 B ", 100),
        ] {
            assert_eq!(parse_rate(text), Ok(bytes), "{text}");
        }
        for bad in ["", "MB", "-5MB", "20 MBps", "1e3", "twenty", "1.2.3MB", "99999999999GiB"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rates_print_exactly_or_in_megabytes() {
        assert_eq!(format_rate(0), "unlimited");
        assert_eq!(format_rate(20_000_000), "20 MB/s");
        assert_eq!(format_rate(2_621_440), "2.5 MiB/s");
        assert_eq!(format_rate(900), "900 B/s");
        assert_eq!(format_rate(123_456_789), "123.46 MB/s");
        for rate in [1, 1_000, 1_024, 5_000_000, 20_000_000, 2_621_440] {
            let printed = format_rate(rate);
            assert_eq!(parse_rate(&printed), Ok(rate), "{printed}");
        }
    }

    #[test]
    fn policies_read_numbers_and_strings() {
        let json = r#"{"background_rate": "20MB", "work_hours_rate": 5000000,
            "work_hours": {"days": ["mon", "fri"], "from": "08:00", "to": "17:00"}}"#;
        let policy: BandwidthPolicy = serde_json::from_str(json).expect("parses");
        assert_eq!(policy.background_rate, 20_000_000);
        assert_eq!(policy.work_hours_rate, Some(5_000_000));
        let hours = policy.work_hours.as_ref().expect("work hours");
        assert_eq!(hours.days, vec![Weekday::Mon, Weekday::Fri]);
        assert_eq!(hours.utc_offset, "+00:00");
        assert!(!policy.limit_foreground);
        // Printed as numbers, read back the same.
        let again: BandwidthPolicy =
            serde_json::from_str(&serde_json::to_string(&policy).expect("prints")).expect("reads");
        assert_eq!(again, policy);
        assert_eq!(serde_json::from_str::<BandwidthPolicy>("{}").ok(), Some(Default::default()));
        for bad in [r#"{"background_rate": -1}"#, r#"{"rate": 1}"#, r#"{"background_rate": "x"}"#] {
            assert!(serde_json::from_str::<BandwidthPolicy>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn weekdays_parse_short_and_long() {
        assert_eq!("Mon".parse::<Weekday>(), Ok(Weekday::Mon));
        assert_eq!("sunday".parse::<Weekday>(), Ok(Weekday::Sun));
        assert!("mo".parse::<Weekday>().is_err());
        assert!("monk".parse::<Weekday>().is_err());
    }
}
