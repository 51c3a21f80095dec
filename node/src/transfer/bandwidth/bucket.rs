//! The token bucket behind a node's bandwidth limit, as a pure value: time is an
//! argument. Bytes are drawn after they were read (or before they are sent): a draw
//! always succeeds and says how long its caller waits, so the bucket may go into debt
//! and each later draw waits for the debt too. Callers that wait in turn thus move at
//! most `rate` bytes a second between them, whatever their number and the size of
//! their draws, and a rate change applies to the very next draw.

use std::time::{Duration, Instant};

/// Most bytes saved up while idle: a tenth of a second at the rate, at least this.
const MIN_BURST: f64 = 16.0 * 1024.0;
/// The share of a second that can be saved up.
const BURST_SECONDS: f64 = 0.1;

/// A token bucket of bytes.
#[derive(Clone, Debug)]
pub(crate) struct TokenBucket {
    /// Bytes per second; 0 is unlimited (draws never wait, nothing is tracked).
    rate: u64,
    /// Bytes that may be drawn without waiting; negative: the debt later draws wait
    /// for.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    last: Instant,
}

impl TokenBucket {
    /// An empty bucket filling at `rate` bytes per second from `now`.
    pub(crate) fn new(rate: u64, now: Instant) -> Self {
        Self { rate, tokens: 0.0, last: now }
    }

    /// The rate, bytes per second (0: unlimited).
    pub(crate) fn rate(&self) -> u64 {
        self.rate
    }

    /// Draws `bytes` at `now`: how long the caller waits before it goes on.
    pub(crate) fn draw(&mut self, now: Instant, bytes: u64) -> Duration {
        if self.rate == 0 {
            return Duration::ZERO;
        }
        self.refill(now);
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate as f64)
        }
    }

    /// Changes the rate at `now`: what was saved up or owed so far counts at the old
    /// rate, the rest at the new one. From unlimited, the bucket starts empty.
    pub(crate) fn set_rate(&mut self, now: Instant, rate: u64) {
        if rate == self.rate {
            return;
        }
        if self.rate == 0 {
            *self = Self::new(rate, now);
            return;
        }
        self.refill(now);
        self.rate = rate;
        self.tokens = self.tokens.min(self.burst());
    }

    fn burst(&self) -> f64 {
        (self.rate as f64 * BURST_SECONDS).max(MIN_BURST)
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate as f64).min(self.burst());
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const MB: u64 = 1_000_000;

    #[test]
    fn unlimited_never_waits() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(0, t0);
        assert_eq!(bucket.draw(t0, u64::MAX / 2), Duration::ZERO);
    }

    #[test]
    fn draws_wait_for_the_rate_and_queue_behind_each_other() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(MB, t0);
        // 100 kB with nothing saved up: a tenth of a second.
        assert_eq!(bucket.draw(t0, 100_000), Duration::from_millis(100));
        // Another caller at the same moment waits behind the first.
        assert_eq!(bucket.draw(t0, 100_000), Duration::from_millis(200));
        // A second later the debt is paid and 100 kB are saved up (the burst).
        let t1 = t0 + Duration::from_secs(1);
        let waited = bucket.draw(t1, 50_000);
        assert_eq!(waited, Duration::ZERO);
    }

    #[test]
    fn a_rate_change_applies_to_the_next_draw() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(20 * MB, t0);
        assert_eq!(bucket.draw(t0, 2 * MB), Duration::from_millis(100));
        // Slower: the 2 MB owed are now paid at 5 MB/s, and so is the next draw.
        bucket.set_rate(t0, 5 * MB);
        assert_eq!(bucket.draw(t0, 500_000), Duration::from_millis(500));
        // Back to unlimited, then limited again: starts afresh.
        bucket.set_rate(t0, 0);
        assert_eq!(bucket.draw(t0, 10 * MB), Duration::ZERO);
        bucket.set_rate(t0, MB);
        assert_eq!(bucket.draw(t0, 10_000), Duration::from_millis(10));
        assert_eq!(bucket.rate(), MB);
    }

    proptest! {
        /// Whatever the draws, the bytes whose wait has ended by any moment are at most
        /// the rate times the time since the start (the bucket starts empty), and a
        /// caller that draws again as soon as its wait ended gets the full rate.
        #[test]
        fn never_faster_than_the_rate(
            rate in 1024u64..100_000_000,
            draws in proptest::collection::vec((0u64..50_000, 1u64..2_000_000), 1..200),
        ) {
            let t0 = Instant::now();
            let mut bucket = TokenBucket::new(rate, t0);
            let mut now = t0;
            let mut released = Vec::new();
            for (gap_us, bytes) in draws {
                now += Duration::from_micros(gap_us);
                let wait = bucket.draw(now, bytes);
                released.push((now + wait, bytes));
            }
            released.sort();
            let mut total = 0u64;
            for (at, bytes) in released {
                total += bytes;
                let allowed = rate as f64 * at.duration_since(t0).as_secs_f64();
                prop_assert!(total as f64 <= allowed + 1.0, "{total} bytes by {:?} at {rate}/s", at - t0);
            }
        }

        #[test]
        fn a_busy_caller_gets_the_whole_rate(rate in 1024u64..100_000_000, share in 1u64..1000) {
            // Draws of a thousandth of the rate to a whole second's worth.
            let piece = (rate * share / 1000).max(1);
            let t0 = Instant::now();
            let mut bucket = TokenBucket::new(rate, t0);
            let mut now = t0;
            let mut total = 0u64;
            while now.duration_since(t0) < Duration::from_secs(10) {
                now += bucket.draw(now, piece);
                total += piece;
            }
            let achieved = total as f64 / now.duration_since(t0).as_secs_f64();
            prop_assert!((achieved - rate as f64).abs() <= rate as f64 * 0.001, "{achieved} at {rate}/s");
        }
    }
}
