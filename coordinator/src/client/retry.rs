//! When a call is tried again: which statuses mean "not now", how long `Retry-After`
//! asks to wait, and the jittered exponential backoff between tries.

use std::time::Duration;

use reqwest::StatusCode;

/// The first backoff and the most it grows to.
pub(super) const BACKOFF_START: Duration = Duration::from_millis(100);
pub(super) const BACKOFF_CAP: Duration = Duration::from_secs(2);

/// The longest `Retry-After` obeyed; a longer one ends the retries.
pub(super) const RETRY_AFTER_CAP: Duration = Duration::from_secs(30);

/// Statuses that mean "not now": unavailable (an election), too many requests, and a
/// proxy's bad gateway or gateway timeout.
pub(super) fn retried_status(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::TOO_MANY_REQUESTS
            | StatusCode::BAD_GATEWAY
            | StatusCode::GATEWAY_TIMEOUT
    )
}

/// `Retry-After` in seconds (the form ferryd sends; an HTTP date is not read).
pub(super) fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response.headers().get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Exponential backoff with jitter: each wait is drawn from the upper half of a window
/// that doubles from [`BACKOFF_START`] up to [`BACKOFF_CAP`], so that clients who
/// failed together do not all come back together.
pub(super) struct Backoff {
    window: Duration,
}

impl Backoff {
    pub(super) fn new() -> Self {
        Self { window: BACKOFF_START }
    }

    pub(super) fn next(&mut self) -> Duration {
        let window = self.window;
        self.window = (window * 2).min(BACKOFF_CAP);
        let half = window / 2;
        let millis = u64::try_from(half.as_millis()).unwrap_or(u64::MAX).max(1);
        half + Duration::from_millis(jitter() % millis)
    }
}

/// A random number, from the system's generator; the clock's nanoseconds if that fails.
fn jitter() -> u64 {
    getrandom::u64().unwrap_or_else(|_| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        now.map_or(0, |d| u64::from(d.subsec_nanos()))
    })
}
