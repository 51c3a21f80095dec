//! Human durations for the `*_secs` and `*_ms` fields: a number in the field's unit
//! (`30`), or a string of numbers with units (`"5m"`, `"1h30m"`, `"1.5s"`, `"250ms"`),
//! units `ms`, `s`, `m`, `h` and `d`. The configuration prints them back as numbers.

use std::fmt;

use serde::Deserializer;
use serde::de::{self, Visitor};

/// Milliseconds in each unit.
const UNITS: [(&str, f64); 5] =
    [("ms", 1.0), ("s", 1_000.0), ("m", 60_000.0), ("h", 3_600_000.0), ("d", 86_400_000.0)];

/// Parses `text` (`"1h30m"`, `"1.5s"`) into milliseconds.
fn parse_millis(text: &str) -> Result<f64, String> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err("an empty duration".into());
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let number_len =
            rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (number, tail) = rest.split_at(number_len);
        let value: f64 = number.parse().map_err(|_| {
            format!("{text:?} is not a duration such as \"90s\", \"5m\" or \"1h30m\"")
        })?;
        let unit_len = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let Some((_, millis)) = UNITS.iter().find(|(name, _)| *name == unit.trim()) else {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use ms, s, m, h or d, e.g. \"5m\")"
            ));
        };
        total += value * millis;
        rest = tail.trim_start();
    }
    Ok(total)
}

/// Reads a duration in units of `unit_millis` milliseconds.
struct InUnits {
    unit_millis: f64,
    unit: &'static str,
}

impl Visitor<'_> for InUnits {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a number of {} or a duration such as \"5m\"", self.unit)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v).map_err(|_| E::custom(format!("a duration cannot be negative ({v})")))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        let millis = parse_millis(v).map_err(E::custom)?;
        let units = millis / self.unit_millis;
        if units.fract() != 0.0 || !(0.0..=u64::MAX as f64).contains(&units) {
            return Err(E::custom(format!("{v:?} is not a whole number of {}", self.unit)));
        }
        Ok(units as u64)
    }
}

/// `deserialize_with` for a `*_secs` field.
pub(super) fn secs<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    d.deserialize_any(InUnits { unit_millis: 1_000.0, unit: "seconds" })
}

/// `deserialize_with` for a `*_ms` field.
pub(super) fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    d.deserialize_any(InUnits { unit_millis: 1.0, unit: "milliseconds" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    struct T {
        #[serde(deserialize_with = "secs")]
        s: u64,
        #[serde(deserialize_with = "millis")]
        ms: u64,
    }

    fn parse(text: &str) -> Result<(u64, u64), String> {
        toml::from_str::<T>(text).map(|t| (t.s, t.ms)).map_err(|e| e.to_string())
    }

    #[test]
    fn numbers_and_human_durations() {
        assert_eq!(parse("s = 30\nms = 250"), Ok((30, 250)));
        assert_eq!(parse("s = \"5m\"\nms = \"1.5s\""), Ok((300, 1_500)));
        assert_eq!(parse("s = \"1h30m\"\nms = \"250ms\""), Ok((5_400, 250)));
        assert_eq!(parse("s = \"7d\"\nms = \"2 s\""), Ok((604_800, 2_000)));
    }

    #[test]
    fn nonsense_is_refused_with_the_reason() {
        for (text, why) in [
            ("s = \"5 minutes\"\nms = 1", "unknown unit"),
            ("s = \"1500ms\"\nms = 1", "not a whole number of seconds"),
            ("s = \"\"\nms = 1", "empty duration"),
            ("s = -1\nms = 1", "cannot be negative"),
            ("s = \"m\"\nms = 1", "is not a duration"),
            ("s = true\nms = 1", "a number of seconds or a duration"),
        ] {
            let error = parse(text).expect_err(text);
            assert!(error.contains(why), "{text}: {error}");
        }
    }
}
