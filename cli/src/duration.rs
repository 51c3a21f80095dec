//! Durations on the command line: `90s`, `5m`, `1h30m`, `2d` (humantime's units), or a
//! plain integer in the option's own unit (seconds, or milliseconds where the option
//! says so). A value below a BITS minimum is refused with the minimum named, never
//! raised behind the user's back.
//!
//! The clap value parsers live here; the options that use them are in `args` and
//! `job_args`.

use std::time::Duration;

use ferry_protocol::job::defaults::MINIMUM_RETRY_DELAY_FLOOR_SECS;

/// Whole seconds: `600`, `10m`, `1h30m`, `2d`.
pub(crate) fn parse_secs(text: &str) -> Result<u32, String> {
    let duration = parse(text, Duration::from_secs)?;
    if duration.subsec_nanos() != 0 {
        return Err(format!("{text:?}: give whole seconds (e.g. 90s, 5m, 1h30m)"));
    }
    u32::try_from(duration.as_secs())
        .map_err(|_| format!("{text:?} is too long (at most {} s)", u32::MAX))
}

/// Whole milliseconds: `500` (milliseconds), `500ms`, `2s`.
pub(crate) fn parse_millis(text: &str) -> Result<u32, String> {
    let duration = parse(text, Duration::from_millis)?;
    if duration.subsec_nanos() % 1_000_000 != 0 {
        return Err(format!("{text:?}: give whole milliseconds"));
    }
    u32::try_from(duration.as_millis())
        .map_err(|_| format!("{text:?} is too long (at most {} ms)", u32::MAX))
}

/// `--min-retry-delay`: seconds, at least BITS's floor (5 s). BITS would raise a
/// smaller value to 5 s; the CLI says so instead of sending it.
pub(crate) fn parse_retry_delay(text: &str) -> Result<u32, String> {
    let secs = parse_secs(text)?;
    if secs < MINIMUM_RETRY_DELAY_FLOOR_SECS {
        return Err(format!(
            "{text} is below the BITS minimum retry delay of {MINIMUM_RETRY_DELAY_FLOOR_SECS} s; \
             give {MINIMUM_RETRY_DELAY_FLOOR_SECS}s or more"
        ));
    }
    Ok(secs)
}

/// The refresh interval of `ferry job list --watch`: 1 s to 1 h (a plain integer is
/// seconds).
pub(crate) fn parse_refresh(text: &str) -> Result<Duration, String> {
    let duration = parse(text, Duration::from_secs)?;
    let (low, high) = (Duration::from_secs(1), Duration::from_secs(3600));
    if duration < low || duration > high {
        return Err(format!("{text}: the refresh interval must be between 1s and 1h"));
    }
    Ok(duration)
}

/// `text` as a duration: a plain integer in `unit`, else humantime's notation with
/// the units written together or apart (`1h30m`, `1h 30m`).
fn parse(text: &str, unit: fn(u64) -> Duration) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(n) = text.parse::<u64>() {
        return Ok(unit(n));
    }
    humantime::parse_duration(text).map_err(|e| {
        format!("{text:?} is not a duration ({e}): give e.g. 90s, 5m, 1h30m, 2d or a number")
    })
}

/// `1h30m`, `5m`, `90s` style rendering of whole seconds (`0s` for zero).
pub(crate) fn format_secs(secs: u64) -> String {
    if secs == 0 {
        return "0s".to_owned();
    }
    humantime::format_duration(Duration::from_secs(secs)).to_string().replace(' ', "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations_and_plain_seconds() {
        assert_eq!(parse_secs("600"), Ok(600));
        assert_eq!(parse_secs("90s"), Ok(90));
        assert_eq!(parse_secs("5m"), Ok(300));
        assert_eq!(parse_secs("1h30m"), Ok(5400));
        assert_eq!(parse_secs("1h 30m"), Ok(5400));
        assert_eq!(parse_secs("2d"), Ok(172_800));
        assert!(parse_secs("1.5s").is_err(), "fractions of a second are refused");
        assert!(parse_secs("soon").is_err());
        assert!(parse_secs("-5").is_err());
        assert!(parse_secs("200y").is_err(), "beyond u32 seconds");
    }

    #[test]
    fn milliseconds_options_keep_their_unit() {
        assert_eq!(parse_millis("500"), Ok(500));
        assert_eq!(parse_millis("2s"), Ok(2000));
        assert_eq!(parse_millis("250ms"), Ok(250));
        assert!(parse_millis("10us").is_err());
    }

    #[test]
    fn a_retry_delay_below_the_bits_minimum_is_refused_naming_it() {
        assert_eq!(parse_retry_delay("5"), Ok(5));
        assert_eq!(parse_retry_delay("5m"), Ok(300));
        for low in ["1", "4s", "0"] {
            let error = parse_retry_delay(low).expect_err(low);
            assert!(error.contains("minimum") && error.contains("5 s"), "{error}");
        }
    }

    #[test]
    fn refresh_intervals_are_bounded() {
        assert_eq!(parse_refresh("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_refresh("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_refresh("100ms").is_err());
        assert!(parse_refresh("2h").is_err());
    }

    #[test]
    fn seconds_render_compactly() {
        assert_eq!(format_secs(0), "0s");
        assert_eq!(format_secs(600), "10m");
        assert_eq!(format_secs(5400), "1h30m");
        assert_eq!(format_secs(1_209_600), "14days");
    }
}
