//! `Range` and `If-Range` for the test origin (RFC 9110 §14 and §13.1.5), as pure
//! functions of the header values and the file's current validators.
//!
//! Only single byte ranges are honoured: a multi-range request (`bytes=0-1,5-6`) is
//! answered `200` with the whole body, which RFC 9110 allows. Syntactically invalid
//! ranges are ignored (also `200`), as the RFC requires.

/// What a GET is answered with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RangeDecision {
    /// `200` with the whole body.
    Whole,
    /// `206` with bytes `start..=end`.
    Partial {
        /// First byte.
        start: u64,
        /// Last byte, inclusive (as in `Content-Range`).
        end: u64,
    },
    /// `416` with `Content-Range: bytes */total`.
    Unsatisfiable,
}

/// Decides how to answer a GET with these `Range` and `If-Range` values for a body of
/// `total` bytes whose current validators are `etag` and `last_modified`.
pub(super) fn decide(
    range: Option<&str>,
    if_range: Option<&str>,
    total: u64,
    etag: &str,
    last_modified: &str,
) -> RangeDecision {
    let Some(range) = range else { return RangeDecision::Whole };
    if let Some(validator) = if_range
        && !if_range_matches(validator, etag, last_modified)
    {
        return RangeDecision::Whole;
    }
    parse_single(range, total).unwrap_or(RangeDecision::Whole)
}

/// Whether an `If-Range` validator names the current version: an ETag by strong
/// comparison (a weak one never matches), a date by exact equality with Last-Modified.
fn if_range_matches(validator: &str, etag: &str, last_modified: &str) -> bool {
    let validator = validator.trim();
    if validator.starts_with('"') || validator.starts_with("W/") {
        return validator == etag && !etag.starts_with("W/");
    }
    match (httpdate::parse_http_date(validator), httpdate::parse_http_date(last_modified)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// A single `bytes=` range against `total`, or `None` when the header is to be ignored
/// (other unit, bad syntax, several ranges).
fn parse_single(value: &str, total: u64) -> Option<RangeDecision> {
    let (unit, spec) = value.trim().split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return None;
    }
    let (first, last) = spec.trim().split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    let number = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // Absurdly large numbers are still syntactically valid: saturate.
        Some(s.parse::<u64>().unwrap_or(u64::MAX))
    };
    if first.is_empty() {
        let suffix = number(last)?;
        if suffix == 0 || total == 0 {
            return Some(RangeDecision::Unsatisfiable);
        }
        return Some(RangeDecision::Partial { start: total - suffix.min(total), end: total - 1 });
    }
    let start = number(first)?;
    let end = if last.is_empty() { u64::MAX } else { number(last)? };
    if start > end {
        return None;
    }
    if start >= total {
        return Some(RangeDecision::Unsatisfiable);
    }
    Some(RangeDecision::Partial { start, end: end.min(total - 1) })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::RangeDecision::{Partial, Unsatisfiable, Whole};
    use super::*;

    const ETAG: &str = "\"abc-v0\"";
    const DATE: &str = "Sat, 01 Aug 2026 10:00:00 GMT";

    fn range(value: &str, total: u64) -> RangeDecision {
        decide(Some(value), None, total, ETAG, DATE)
    }

    #[test]
    fn single_ranges() {
        assert_eq!(range("bytes=0-9", 100), Partial { start: 0, end: 9 });
        assert_eq!(range("bytes=90-200", 100), Partial { start: 90, end: 99 });
        assert_eq!(range("bytes=10-", 100), Partial { start: 10, end: 99 });
        assert_eq!(range("bytes=-10", 100), Partial { start: 90, end: 99 });
        assert_eq!(range("bytes=-1000", 100), Partial { start: 0, end: 99 });
        assert_eq!(range("Bytes = 5 - 5", 100), Partial { start: 5, end: 5 });
    }

    #[test]
    fn unsatisfiable_and_ignored_ranges() {
        assert_eq!(range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(range("bytes=100-200", 100), Unsatisfiable);
        assert_eq!(range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(range("bytes=-5", 0), Unsatisfiable);
        assert_eq!(range("bytes=5-1", 100), Whole);
        assert_eq!(range("bytes=0-1,5-6", 100), Whole);
        assert_eq!(range("items=0-1", 100), Whole);
        assert_eq!(range("bytes=a-b", 100), Whole);
        assert_eq!(range("bytes=-", 100), Whole);
        assert_eq!(decide(None, Some(ETAG), 100, ETAG, DATE), Whole);
    }

    #[test]
    fn if_range_by_etag_and_by_date() {
        let with = |v: &str| decide(Some("bytes=1-2"), Some(v), 10, ETAG, DATE);
        assert_eq!(with(ETAG), Partial { start: 1, end: 2 });
        assert_eq!(with(DATE), Partial { start: 1, end: 2 });
        assert_eq!(with("\"abc-v1\""), Whole);
        assert_eq!(with("W/\"abc-v0\""), Whole);
        assert_eq!(with("Sat, 01 Aug 2026 10:00:01 GMT"), Whole);
        assert_eq!(with("yesterday"), Whole);
    }

    proptest! {
        #[test]
        fn satisfiable_ranges_stay_inside_the_body(a in 0u64..300, b in 0u64..300, total in 0u64..200) {
            match range(&format!("bytes={a}-{b}"), total) {
                Partial { start, end } => {
                    prop_assert!(start == a && start <= end && end < total && end <= b);
                }
                Unsatisfiable => prop_assert!(a >= total && a <= b),
                Whole => prop_assert!(a > b),
            }
        }
    }
}
