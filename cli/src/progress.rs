//! The progress of `ferry transfer` on stderr. On a terminal: an indicatif bar with
//! bytes, a smoothed rate and an ETA, redrawn in place. Anywhere else (a log, a pipe,
//! CI): a plain line at most every [`LINE_EVERY`], so that a long transfer does not
//! fill a log with ten lines a second.

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use ferry_protocol::api::JobInfo;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::output;

/// The least time between two progress lines when stderr is not a terminal.
pub(crate) const LINE_EVERY: Duration = Duration::from_secs(10);

/// Where the progress goes.
pub(crate) enum Progress {
    /// Nothing is shown (`--no-progress`).
    Off,
    /// A bar on the terminal.
    Bar(ProgressBar),
    /// Plain lines, throttled.
    Lines(Lines),
}

impl Progress {
    /// A bar when stderr is a terminal, else throttled lines; nothing when `disabled`.
    pub(crate) fn new(disabled: bool) -> Self {
        if disabled {
            Self::Off
        } else if std::io::stderr().is_terminal() {
            Self::Bar(bar())
        } else {
            Self::Lines(Lines::new(Instant::now()))
        }
    }

    /// Shows the job's progress.
    pub(crate) fn show(&mut self, info: &JobInfo) {
        match self {
            Self::Off => {}
            Self::Bar(bar) => {
                let total = info.progress.bytes_total;
                if let Some(total) = total
                    && bar.length() != Some(total)
                {
                    bar.set_length(total);
                    bar.set_style(bar_style(true));
                }
                bar.set_position(info.progress.bytes_transferred);
                bar.set_message(note(info));
            }
            Self::Lines(lines) => {
                if let Some(line) = lines.line(info, Instant::now()) {
                    eprintln!("{line}");
                }
            }
        }
    }

    /// The transfer is over: the bar is removed; piped, a last line says where it
    /// ended (bytes and average rate).
    pub(crate) fn done(&mut self, info: &JobInfo) {
        match self {
            Self::Lines(lines) => eprintln!("{}", lines.last_line(info, Instant::now())),
            _ => self.finish(),
        }
    }

    /// Removes the bar (lines stay).
    pub(crate) fn finish(&mut self) {
        if let Self::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

fn bar() -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(bar_style(false));
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// With a known total: bar, percentage, bytes, rate, ETA; without: bytes and rate.
fn bar_style(sized: bool) -> ProgressStyle {
    let template = if sized {
        "[{bar:30}] {percent:>3}% {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} \
         ETA {eta} {elapsed} {msg}"
    } else {
        "{spinner} {binary_bytes} {binary_bytes_per_sec} {elapsed} {msg}"
    };
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("#>.")
}

/// The state while it is not transferring, or the error being retried.
fn note(info: &JobInfo) -> String {
    match &info.error {
        Some(e) => format!("retrying after {}", e.name),
        None if info.progress.bytes_total.is_none() => info.state.bits_name().to_owned(),
        None => String::new(),
    }
}

/// The span the shown rate is measured over: bytes arrive in bursts (pieces, the
/// bandwidth limit's steps), so a rate over a few seconds says what the transfer does.
const RATE_WINDOW: Duration = Duration::from_secs(5);

/// Throttled progress lines with a rate over the last [`RATE_WINDOW`].
pub(crate) struct Lines {
    started: Instant,
    /// When the next line may be printed.
    next: Instant,
    /// Samples (time, bytes) of the last [`RATE_WINDOW`], oldest first.
    samples: std::collections::VecDeque<(Instant, u64)>,
    /// Bytes per second over the samples.
    rate: f64,
}

impl Lines {
    fn new(now: Instant) -> Self {
        Self { started: now, next: now, samples: Default::default(), rate: 0.0 }
    }

    /// Takes a sample at `now`; the line to print, if one is due.
    fn line(&mut self, info: &JobInfo, now: Instant) -> Option<String> {
        let done = info.progress.bytes_transferred;
        self.samples.push_back((now, done));
        while self.samples.len() > 2
            && self.samples.front().is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
        {
            self.samples.pop_front();
        }
        if let (Some((first, from)), Some((last, to))) = (self.samples.front(), self.samples.back())
        {
            let secs = last.duration_since(*first).as_secs_f64();
            if secs > 0.0 {
                self.rate = to.saturating_sub(*from) as f64 / secs;
            }
        }
        if now < self.next {
            return None;
        }
        self.next = now + LINE_EVERY;
        let total = info.progress.bytes_total;
        let percent = total
            .filter(|t| *t > 0)
            .map_or_else(String::new, |t| format!("{:.1}% ", done as f64 * 100.0 / t as f64));
        let eta = match total {
            Some(t) if self.rate > 0.0 => {
                format!("  ETA {:.0} s", t.saturating_sub(done) as f64 / self.rate)
            }
            _ => String::new(),
        };
        let note = note(info);
        Some(format!(
            "{percent}{} / {}  {}/s{eta}  {:.0} s{}{note}",
            output::size(Some(done)),
            output::size(total),
            output::size(Some(self.rate as u64)),
            now.duration_since(self.started).as_secs_f64(),
            if note.is_empty() { "" } else { "  " },
        ))
    }
}

impl Lines {
    /// The closing line: bytes, the average rate over the whole transfer, the time.
    fn last_line(&self, info: &JobInfo, now: Instant) -> String {
        let done = info.progress.bytes_transferred;
        let secs = now.duration_since(self.started).as_secs_f64();
        let average = if secs > 0.0 { done as f64 / secs } else { 0.0 };
        format!(
            "{} / {}  {}/s on average  {secs:.0} s  {}",
            output::size(Some(done)),
            output::size(info.progress.bytes_total),
            output::size(Some(average as u64)),
            info.state.bits_name(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_come_at_most_every_ten_seconds() {
        let text = include_str!("../../tests/fixtures/format-9/jobs.json");
        let list: ferry_protocol::api::JobList = serde_json::from_str(text).expect("fixture");
        let mut info = list.jobs.into_iter().next().expect("a job");
        info.progress.bytes_total = Some(12 << 20);
        let start = Instant::now();
        let mut lines = Lines::new(start);
        let mut printed = Vec::new();
        // A 12 s transfer polled every 100 ms, at 1 MiB/s.
        for tick in 0..=120u64 {
            info.progress.bytes_transferred = tick * (1 << 20) / 10;
            let now = start + Duration::from_millis(tick * 100);
            printed.extend(lines.line(&info, now));
        }
        assert_eq!(printed.len(), 2, "{printed:#?}");
        assert!(printed[1].contains("1.0 MiB/s") && printed[1].contains("ETA"), "{printed:#?}");
    }

    #[test]
    fn a_thirty_second_transfer_prints_at_most_five_lines() {
        let text = include_str!("../../tests/fixtures/format-9/jobs.json");
        let list: ferry_protocol::api::JobList = serde_json::from_str(text).expect("fixture");
        let mut info = list.jobs.into_iter().next().expect("a job");
        info.progress.bytes_total = Some(30 << 20);
        let start = Instant::now();
        let mut lines = Lines::new(start);
        let mut printed = 0;
        // Polled every 250 ms for 30 s, then the closing line.
        for tick in 0..=120u64 {
            info.progress.bytes_transferred = tick * (1 << 20) / 4;
            printed +=
                usize::from(lines.line(&info, start + Duration::from_millis(tick * 250)).is_some());
        }
        let _last = lines.last_line(&info, start + Duration::from_secs(30));
        assert!(printed < 5, "{} lines with the closing one", printed + 1);
    }
}
