//! How many range connections a file's download opens when the node picks them
//! (`transfer.connections = "auto"`, the default): one at first; then, every
//! [`WINDOW`], the throughput of the last window decides. Each step doubles the
//! connections (1, 2, 4, 8, 16) as long as the step before raised the throughput by
//! [`GAIN`] at least; once a step does not, the count stays. A link that one
//! connection fills, a node or job bandwidth cap, or an origin that is slow for all
//! alike stop the ramp at once; a server that limits each connection lets it grow.
//!
//! Pure: the caller gives the time and the bytes received so far.

use std::time::{Duration, Instant};

/// How long each count of connections is measured before the next step.
pub(super) const WINDOW: Duration = Duration::from_millis(150);

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
    settled: bool,
}

impl Ramp {
    /// A ramp starting with one connection open, up to `max`, at `now` with
    /// `received` bytes so far.
    pub(super) fn new(max: usize, now: Instant, received: u64) -> Self {
        Self { open: 1, max: max.max(1), mark: (now, received), before: None, settled: max <= 1 }
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
        if elapsed < WINDOW {
            return 0;
        }
        let rate = received.saturating_sub(self.mark.1) as f64 / elapsed.as_secs_f64();
        self.mark = (now, received);
        if self.before.is_some_and(|before| rate < before * GAIN) {
            self.settled = true;
            return 0;
        }
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
    fn a_server_limiting_each_connection_gets_every_connection() {
        assert_eq!(drive(16, 2e6, f64::INFINITY, 10), 16);
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
    fn it_waits_a_window_between_steps_and_respects_its_maximum() {
        let start = Instant::now();
        let mut ramp = Ramp::new(3, start, 0);
        assert_eq!(ramp.tick(start + WINDOW / 2, 1_000), 0, "the window still runs");
        assert_eq!(ramp.tick(start + WINDOW, 2_000), 1);
        assert_eq!(ramp.tick(start + WINDOW * 2, 10_000), 1, "only up to the maximum");
        assert!(ramp.settled());
        assert_eq!(ramp.open(), 3);
        assert_eq!(ramp.tick(start + WINDOW * 10, 1_000_000), 0);
        assert!(Ramp::new(1, start, 0).settled(), "a maximum of one is settled at once");
    }
}
