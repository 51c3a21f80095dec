//! How many range connections a file's download opens when the node picks them
//! (`transfer.connections = "auto"`, the default): one at first; then, every
//! [`WINDOW`] (and [`MIN_WINDOW_BYTES`]), or as soon as a window of at least
//! [`FAST_WINDOW`] holds [`FAST_WINDOW_BYTES`] (a fast link), the throughput of the last
//! window decides (the first window only warms up: it holds the connection's start and
//! a bandwidth bucket's first burst). Each step doubles the
//! connections (1, 2, 4, 8, 16) as long as the step before raised the throughput by
//! [`GAIN`] at least; once a step does not, in two windows running (one window can
//! be a scheduler's hiccup on a loaded host), the count stays. A link that one
//! connection fills, a node or job bandwidth cap, or an origin that is slow for all
//! alike stop the ramp at once; a server that limits each connection lets it grow.
//!
//! Pure: the caller gives the time and the bytes received so far.

use std::time::{Duration, Instant};

/// How long each count of connections is measured before the next step.
pub(super) const WINDOW: Duration = Duration::from_millis(150);

/// Bytes a window must hold besides lasting [`WINDOW`]: a bandwidth cap hands out
/// bytes 64 KiB at a time, and a window of a few such draws would measure the draws,
/// not the link. On a slow link the windows are longer.
pub(super) const MIN_WINDOW_BYTES: u64 = 1024 * 1024;

/// Bytes after which a window ends before [`WINDOW`]: at 1 GB/s a step every 150 ms
/// would spend a third of a 1 GiB download ramping; this many bytes measure such a
/// link as well as 150 ms measure a slow one.
pub(super) const FAST_WINDOW_BYTES: u64 = 32 * 1024 * 1024;

/// Shortest window, however many bytes it holds.
pub(super) const FAST_WINDOW: Duration = Duration::from_millis(25);

/// Throughput a step must add to be followed by another (1.2: a fifth more).
const GAIN: f64 = 1.2;

/// The connection count of one file's download, and what its last steps measured.
#[derive(Debug)]
pub(super) struct Ramp {
    open: usize,
    max: usize,
    /// When the current window began, and the bytes received by then.
    mark: (Instant, u64),
    /// Throughput (bytes per second) of the window before the last step.
    before: Option<f64>,
    /// The first window, which is not measured, is over.
    warm: bool,
    /// The last window at this count gained too little: one more like it settles.
    doubt: bool,
    settled: bool,
}

impl Ramp {
    /// A ramp starting with one connection open, up to `max`, at `now` with
    /// `received` bytes so far.
    pub(super) fn new(max: usize, now: Instant, received: u64) -> Self {
        let settled = max <= 1;
        Self {
            open: 1,
            max: max.max(1),
            mark: (now, received),
            before: None,
            warm: false,
            doubt: false,
            settled,
        }
    }

    /// Connections open (or asked for).
    pub(super) fn open(&self) -> usize {
        self.open
    }

    /// Whether the count will not change any more.
    pub(super) fn settled(&self) -> bool {
        self.settled
    }

    /// Looks at the window ending `now` (with `received` bytes so far); returns how
    /// many connections to open besides those open (0 while the window runs, and
    /// once settled).
    pub(super) fn tick(&mut self, now: Instant, received: u64) -> usize {
        if self.settled {
            return 0;
        }
        let elapsed = now.saturating_duration_since(self.mark.0);
        let bytes = received.saturating_sub(self.mark.1);
        let full = elapsed >= WINDOW && bytes >= MIN_WINDOW_BYTES;
        let fast = elapsed >= FAST_WINDOW && bytes >= FAST_WINDOW_BYTES;
        if !(full || fast) {
            return 0;
        }
        let rate = bytes as f64 / elapsed.as_secs_f64();
        self.mark = (now, received);
        if !std::mem::replace(&mut self.warm, true) {
            return 0;
        }
        if self.before.is_some_and(|before| rate < before * GAIN) {
            self.settled = std::mem::replace(&mut self.doubt, true);
            return 0;
        }
        self.doubt = false;
        self.before = Some(rate);
        let next = (self.open * 2).min(self.max);
        let added = next - self.open;
        self.open = next;
        if self.open >= self.max {
            self.settled = true;
        }
        added
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives a ramp against a link of `per_connection` bytes/s per connection and
    /// `link` bytes/s in all, for `windows` windows; returns the connections open.
    fn drive(max: usize, per_connection: f64, link: f64, windows: u32) -> usize {
        let start = Instant::now();
        let mut ramp = Ramp::new(max, start, 0);
        let (mut t, mut received) = (start, 0.0);
        for _ in 0..windows {
            let rate = (per_connection * ramp.open() as f64).min(link);
            t += WINDOW;
            received += rate * WINDOW.as_secs_f64();
            ramp.tick(t, received as u64);
        }
        ramp.open()
    }

    #[test]
    fn a_slow_start_does_not_count_as_a_gain() {
        // The first window holds the connection's start (a tenth of the rate); the
        // step after it would otherwise see a gain that a capped link does not give.
        let start = Instant::now();
        let mut ramp = Ramp::new(16, start, 0);
        let window = WINDOW.as_secs_f64();
        let mut received = 0.1 * 100e6 * window;
        ramp.tick(start + WINDOW, received as u64);
        for i in 2..10 {
            received += 100e6 * window;
            ramp.tick(start + WINDOW * i, received as u64);
        }
        assert_eq!(ramp.open(), 2);
    }

    #[test]
    fn a_fast_link_steps_as_soon_as_a_window_holds_enough_bytes() {
        // 1 GB/s per connection, no limit: a window ends at 32 MiB (about 34 ms), so
        // the ramp reaches 16 connections within a fifth of a second, not 750 ms.
        let start = Instant::now();
        let mut ramp = Ramp::new(16, start, 0);
        let (mut t, mut received) = (start, 0.0);
        let tick = Duration::from_millis(5);
        while t < start + Duration::from_millis(200) {
            t += tick;
            received += 1e9 * ramp.open() as f64 * tick.as_secs_f64();
            ramp.tick(t, received as u64);
        }
        assert_eq!(ramp.open(), 16);
        // However fast, a window lasts at least FAST_WINDOW.
        let mut ramp = Ramp::new(16, start, 0);
        assert_eq!(ramp.tick(start + Duration::from_millis(10), 1 << 30), 0);
        assert_eq!(ramp.tick(start + Duration::from_millis(20), 2 << 30), 0);
        assert_eq!(ramp.open(), 1);
    }

    #[test]
    fn one_window_that_gains_nothing_does_not_settle_the_count() {
        // A server limiting each connection to 100 MB/s; the window right after the
        // step to two connections measures half of that (the host was busy).
        let start = Instant::now();
        let mut ramp = Ramp::new(16, start, 0);
        let (mut t, mut received) = (start, 0.0);
        for window in 0..12 {
            let dip = if window == 2 { 0.5 } else { 1.0 };
            t += WINDOW;
            received += 100e6 * ramp.open() as f64 * dip * WINDOW.as_secs_f64();
            ramp.tick(t, received as u64);
        }
        assert_eq!(ramp.open(), 16);
    }

    #[test]
    fn a_server_limiting_each_connection_gets_every_connection() {
        assert_eq!(drive(16, 20e6, f64::INFINITY, 10), 16);
    }

    #[test]
    fn a_link_one_connection_fills_keeps_one_more_at_most() {
        // The step to two adds nothing: two stay (the step is not taken back).
        assert_eq!(drive(16, 100e6, 100e6, 10), 2);
    }

    #[test]
    fn the_ramp_stops_where_the_link_is_full() {
        // Three connections fill the link: the step to four still adds half, the
        // step to eight nothing.
        assert_eq!(drive(16, 10e6, 30e6, 10), 8);
        assert_eq!(drive(16, 10e6, 21e6, 10), 4);
    }

    #[test]
    fn a_window_lasts_until_it_holds_enough_bytes() {
        // 512 KiB/s: a window needs two seconds, not 150 ms, and the draws of a
        // bandwidth cap (64 KiB at a time) do not sway it.
        let start = Instant::now();
        let mut ramp = Ramp::new(16, start, 0);
        let mut received = 0;
        for i in 1..=40 {
            received += if i % 2 == 0 { 128 * 1024 } else { 0 };
            ramp.tick(start + WINDOW * i, received);
        }
        assert_eq!(ramp.open(), 2, "one step, then no gain");
    }

    #[test]
    fn it_waits_a_window_between_steps_and_respects_its_maximum() {
        let start = Instant::now();
        const MIB: u64 = 1024 * 1024;
        let mut ramp = Ramp::new(3, start, 0);
        assert_eq!(ramp.tick(start + WINDOW / 2, 2 * MIB), 0, "the window still runs");
        assert_eq!(ramp.tick(start + WINDOW, 4 * MIB), 0, "the first window only warms up");
        assert_eq!(ramp.tick(start + WINDOW * 2, 5 * MIB), 1);
        assert_eq!(ramp.tick(start + WINDOW * 3, 7 * MIB), 1, "only up to the maximum");
        assert!(ramp.settled());
        assert_eq!(ramp.open(), 3);
        assert_eq!(ramp.tick(start + WINDOW * 10, 1_000_000), 0);
        assert!(Ramp::new(1, start, 0).settled(), "a maximum of one is settled at once");
    }
}
