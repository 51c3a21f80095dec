//! `[bandwidth]` checked, and which rate it allows at a given moment: [`Schedule`] is
//! a bandwidth policy checked once (its rates, days, times and UTC offset; the API's
//! `PUT /v1/node/bandwidth` is checked the same way), [`Schedule::at`] a pure function
//! of the wall-clock time that says the rate, whether the work-hours window is open,
//! and when the answer changes next. No clock is read here: the token bucket that
//! enforces the rate and the task that follows the schedule belong to the transfer
//! engine, which uses this module (and not the other way round).
//!
//! Local time is UTC shifted by the policy's fixed `utc_offset` (no time zone
//! database, no daylight saving time): the simplest rule that is right everywhere,
//! documented for operators.

use std::time::{Duration, SystemTime};

use ferry_coordinator::bandwidth::{BandwidthPolicy, InvalidPolicy, Weekday};

/// Milliseconds in a day.
const DAY_MS: i64 = 86_400_000;
/// Lowest rate a policy may set (besides 0, unlimited): slower than this, one buffer
/// of a response would wait for minutes and servers would drop the connection.
pub(crate) const MIN_RATE: u64 = 1024;
/// Largest UTC offset there is (Kiribati, +14:00).
const MAX_OFFSET_MS: i64 = 14 * 3_600_000;

/// A checked policy's timing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Schedule {
    /// Outside the window, or always without one.
    background_rate: u64,
    /// The work-hours window, if any.
    work: Option<Window>,
}

/// The work-hours window of a checked policy.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Window {
    /// Days (Monday first) a window opens on.
    days: [bool; 7],
    /// Opening, milliseconds after local midnight.
    from: i64,
    /// Closing, milliseconds after local midnight (up to a whole day); at or before
    /// `from`, on the next day.
    to: i64,
    /// Local time minus UTC, milliseconds.
    offset: i64,
    /// The rate inside.
    rate: u64,
}

/// What a schedule says at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Decision {
    /// Bytes per second allowed (0: unlimited).
    pub(crate) rate: u64,
    /// Whether the work-hours window is open.
    pub(crate) in_work_hours: bool,
    /// How long until the window opens or closes next (`None` without work hours).
    pub(crate) next_boundary: Option<Duration>,
}

impl Schedule {
    /// Checks `policy`: rates of 0 or at least [`MIN_RATE`], work hours and their rate
    /// given together, at least one day, valid times and offset.
    pub(crate) fn new(policy: &BandwidthPolicy) -> Result<Self, InvalidPolicy> {
        let invalid = |m: String| Err(InvalidPolicy(m));
        check_rate("background_rate", policy.background_rate)?;
        let work = match (&policy.work_hours, policy.work_hours_rate) {
            (None, None) => None,
            (Some(_), None) => {
                return invalid("work_hours needs work_hours_rate (0 for unlimited)".into());
            }
            (None, Some(_)) => {
                return invalid("work_hours_rate needs work_hours (days, from, to)".into());
            }
            (Some(hours), Some(rate)) => {
                check_rate("work_hours_rate", rate)?;
                if hours.days.is_empty() {
                    return invalid("work_hours.days names no day (use \"mon\" to \"sun\")".into());
                }
                let mut days = [false; 7];
                for day in &hours.days {
                    days[day.index()] = true;
                }
                let from = clock(&hours.from, false).map_err(|e| field("work_hours.from", e))?;
                let to = clock(&hours.to, true).map_err(|e| field("work_hours.to", e))?;
                if from == to {
                    return invalid(format!(
                        "work_hours.from and work_hours.to are both {}: the window would be empty",
                        hours.from
                    ));
                }
                let offset =
                    utc_offset(&hours.utc_offset).map_err(|e| field("work_hours.utc_offset", e))?;
                Some(Window { days, from, to, offset, rate })
            }
        };
        Ok(Self { background_rate: policy.background_rate, work })
    }

    /// The rate at wall-clock time `now` (UTC), whether it is a work-hours rate, and
    /// how long until that may change.
    pub(crate) fn at(&self, now: SystemTime) -> Decision {
        let Some(window) = &self.work else {
            return Decision {
                rate: self.background_rate,
                in_work_hours: false,
                next_boundary: None,
            };
        };
        let since_epoch = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let local = i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX / 2) + window.offset;
        let inside = window.contains(local);
        Decision {
            rate: if inside { window.rate } else { self.background_rate },
            in_work_hours: inside,
            next_boundary: Some(window.next_boundary(local)),
        }
    }
}

impl Window {
    /// The window opening on local day `day` (days since 1970-01-01, a Thursday), as
    /// local milliseconds since the epoch, if it opens that day.
    fn opening(&self, day: i64) -> Option<(i64, i64)> {
        self.days[weekday(day).index()].then(|| {
            let start = day * DAY_MS + self.from;
            let end = if self.to > self.from {
                day * DAY_MS + self.to
            } else {
                (day + 1) * DAY_MS + self.to
            };
            (start, end)
        })
    }

    /// Whether local time `local` (milliseconds since the epoch) is inside a window.
    fn contains(&self, local: i64) -> bool {
        let today = local.div_euclid(DAY_MS);
        // A window that opened yesterday may still be open (past midnight).
        [today - 1, today]
            .into_iter()
            .filter_map(|day| self.opening(day))
            .any(|(start, end)| start <= local && local < end)
    }

    /// Time from `local` to the next opening or closing of a window.
    fn next_boundary(&self, local: i64) -> Duration {
        let today = local.div_euclid(DAY_MS);
        let next = (today - 1..=today + 8)
            .filter_map(|day| self.opening(day))
            .flat_map(|(start, end)| [start, end])
            .filter(|at| *at > local)
            .min()
            // A day is always listed, so a boundary comes within 8 days.
            .unwrap_or(local + DAY_MS);
        Duration::from_millis(u64::try_from(next - local).unwrap_or(0))
    }
}

/// The weekday of local day `day` (days since 1970-01-01, a Thursday).
fn weekday(day: i64) -> Weekday {
    Weekday::ALL[usize::try_from((day + 3).rem_euclid(7)).unwrap_or(0)]
}

fn check_rate(name: &str, rate: u64) -> Result<(), InvalidPolicy> {
    if rate != 0 && rate < MIN_RATE {
        return Err(InvalidPolicy(format!(
            "{name} is {rate} bytes/s: give 0 (unlimited) or at least {MIN_RATE} bytes/s"
        )));
    }
    Ok(())
}

fn field(name: &str, why: String) -> InvalidPolicy {
    InvalidPolicy(format!("{name}: {why}"))
}

/// `"HH:MM"` or `"HH:MM:SS"` as milliseconds after midnight; `"24:00"` (end of the
/// day) only if `end_of_day` may be named.
fn clock(text: &str, end_of_day: bool) -> Result<i64, String> {
    let explain = || format!("{text:?} is not a time of day such as \"08:00\" or \"17:30:00\"");
    let parts: Vec<&str> = text.trim().split(':').collect();
    if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.len() != 2) {
        return Err(explain());
    }
    let mut numbers = [0i64; 3];
    for (number, part) in numbers.iter_mut().zip(&parts) {
        if !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(explain());
        }
        *number = part.parse().map_err(|_| explain())?;
    }
    let [hours, minutes, seconds] = numbers;
    if minutes > 59 || seconds > 59 {
        return Err(explain());
    }
    let millis = ((hours * 60 + minutes) * 60 + seconds) * 1000;
    match millis {
        m if m < DAY_MS => Ok(m),
        m if m == DAY_MS && end_of_day => Ok(m),
        _ if end_of_day => Err(format!("{text:?} is past the end of the day (24:00)")),
        _ => Err(format!("{text:?} is not a time a window can open at (00:00 to 23:59:59)")),
    }
}

/// `"+HH:MM"` or `"-HH:MM"` (also `"Z"`) as milliseconds east of UTC.
fn utc_offset(text: &str) -> Result<i64, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("z") {
        return Ok(0);
    }
    let explain = || format!("{text:?} is not a UTC offset such as \"+01:00\" or \"-05:00\"");
    let (sign, rest) = match text.as_bytes().first() {
        Some(b'+') => (1, &text[1..]),
        Some(b'-') => (-1, &text[1..]),
        _ => return Err(explain()),
    };
    let millis = clock(rest, false).map_err(|_| explain())?;
    if millis > MAX_OFFSET_MS || millis % 60_000 != 0 || rest.len() != 5 {
        return Err(explain());
    }
    Ok(sign * millis)
}

#[cfg(test)]
mod tests {
    use ferry_coordinator::bandwidth::WorkHours;

    use super::*;

    const MB: u64 = 1_000_000;

    /// Seconds since the epoch of a UTC date and time (proleptic Gregorian).
    fn utc(year: i64, month: i64, day: i64, hour: i64, minute: i64, second: i64) -> SystemTime {
        // Days from civil (Howard Hinnant's algorithm).
        let y = if month <= 2 { year - 1 } else { year };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (month + 9) % 12;
        let doy = (153 * mp + 2) / 5 + day - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
        SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).expect("after 1970"))
    }

    fn policy(days: &[Weekday], from: &str, to: &str, offset: &str) -> BandwidthPolicy {
        BandwidthPolicy {
            background_rate: 20 * MB,
            work_hours: Some(WorkHours {
                days: days.to_vec(),
                from: from.into(),
                to: to.into(),
                utc_offset: offset.into(),
            }),
            work_hours_rate: Some(5 * MB),
            limit_foreground: false,
        }
    }

    const WEEKDAYS: [Weekday; 5] =
        [Weekday::Mon, Weekday::Tue, Weekday::Wed, Weekday::Thu, Weekday::Fri];

    #[test]
    fn weekdays_count_from_a_thursday() {
        assert_eq!(weekday(0), Weekday::Thu, "1970-01-01");
        assert_eq!(weekday(-1), Weekday::Wed, "1969-12-31");
        // 2026-12-07 is a Monday.
        let monday = utc(2026, 12, 7, 12, 0, 0);
        let days = monday.duration_since(SystemTime::UNIX_EPOCH).expect("after").as_secs() / 86_400;
        assert_eq!(weekday(i64::try_from(days).expect("fits")), Weekday::Mon);
    }

    #[test]
    fn work_hours_apply_on_their_days_between_their_times() {
        let s = Schedule::new(&policy(&WEEKDAYS, "08:00", "17:00", "+00:00")).expect("valid");
        let at = |d, h, m, sec| s.at(utc(2026, 12, d, h, m, sec));
        // Monday 2026-12-07.
        assert_eq!(at(7, 7, 59, 59).rate, 20 * MB, "just before the opening");
        assert_eq!(at(7, 8, 0, 0).rate, 5 * MB, "at the opening: inside");
        assert!(at(7, 8, 0, 0).in_work_hours);
        assert_eq!(at(7, 16, 59, 59).rate, 5 * MB);
        assert_eq!(at(7, 17, 0, 0).rate, 20 * MB, "at the closing: outside");
        assert!(!at(7, 17, 0, 0).in_work_hours);
        // Friday inside, Saturday and Sunday never.
        assert_eq!(at(11, 12, 0, 0).rate, 5 * MB);
        assert_eq!(at(12, 12, 0, 0).rate, 20 * MB);
        assert_eq!(at(13, 12, 0, 0).rate, 20 * MB);
    }

    #[test]
    fn the_next_boundary_is_the_next_opening_or_closing() {
        let s = Schedule::new(&policy(&WEEKDAYS, "08:00", "17:00", "+00:00")).expect("valid");
        let next = |t| s.at(t).next_boundary.expect("work hours");
        assert_eq!(next(utc(2026, 12, 7, 7, 59, 59)), Duration::from_secs(1));
        assert_eq!(next(utc(2026, 12, 7, 8, 0, 0)), Duration::from_secs(9 * 3600));
        assert_eq!(next(utc(2026, 12, 7, 17, 0, 0)), Duration::from_secs(15 * 3600));
        // Friday's closing: the next opening is on Monday.
        assert_eq!(next(utc(2026, 12, 11, 17, 0, 0)), Duration::from_secs((2 * 24 + 15) * 3600));
        let millis = utc(2026, 12, 7, 7, 59, 59) + Duration::from_millis(250);
        assert_eq!(next(millis), Duration::from_millis(750));
        // Without work hours nothing ever changes.
        let flat = Schedule::new(&BandwidthPolicy { background_rate: MB, ..Default::default() })
            .expect("valid");
        let d = flat.at(utc(2026, 12, 7, 12, 0, 0));
        assert_eq!((d.rate, d.in_work_hours, d.next_boundary), (MB, false, None));
    }

    #[test]
    fn a_window_may_run_past_midnight() {
        // Nights starting Monday to Friday, 22:00 to 06:00 the next morning.
        let s = Schedule::new(&policy(&WEEKDAYS, "22:00", "06:00", "+00:00")).expect("valid");
        let inside = |d, h, m| s.at(utc(2026, 12, d, h, m, 0)).in_work_hours;
        assert!(!inside(7, 21, 59));
        assert!(inside(7, 22, 0));
        assert!(inside(7, 23, 59));
        assert!(inside(8, 0, 0), "Tuesday's early hours belong to Monday's night");
        assert!(inside(8, 5, 59));
        assert!(!inside(8, 6, 0));
        assert!(inside(12, 5, 0), "Saturday's early hours: Friday's night");
        assert!(!inside(12, 22, 0), "no night starts on Saturday");
        assert!(!inside(7, 5, 0), "Monday's early hours: Sunday started no night");
        let next = s.at(utc(2026, 12, 7, 23, 0, 0)).next_boundary.expect("work hours");
        assert_eq!(next, Duration::from_secs(7 * 3600));
    }

    #[test]
    fn the_offset_shifts_local_time() {
        // 08:00-17:00 at UTC+02:00 is 06:00-15:00 UTC.
        let s = Schedule::new(&policy(&WEEKDAYS, "08:00", "17:00", "+02:00")).expect("valid");
        assert!(!s.at(utc(2026, 12, 7, 5, 59, 59)).in_work_hours);
        assert!(s.at(utc(2026, 12, 7, 6, 0, 0)).in_work_hours);
        assert!(!s.at(utc(2026, 12, 7, 15, 0, 0)).in_work_hours);
        // At UTC-05:00, Monday 23:00 UTC is Monday 18:00 local: outside; and Saturday
        // 03:00 UTC is Friday 22:00 local.
        let s = Schedule::new(&policy(&WEEKDAYS, "08:00", "23:00", "-05:00")).expect("valid");
        assert!(s.at(utc(2026, 12, 12, 3, 0, 0)).in_work_hours, "Friday evening local");
        assert!(!s.at(utc(2026, 12, 7, 12, 59, 0)).in_work_hours, "Monday 07:59 local");
    }

    #[test]
    fn whole_days_and_seconds() {
        let s = Schedule::new(&policy(&Weekday::ALL, "00:00", "24:00", "Z")).expect("valid");
        assert!(s.at(utc(2026, 12, 9, 0, 0, 0)).in_work_hours);
        assert!(s.at(utc(2026, 12, 9, 23, 59, 59)).in_work_hours);
        let s = Schedule::new(&policy(&[Weekday::Wed], "10:00:30", "10:00:45", "+00:00"))
            .expect("valid");
        assert!(!s.at(utc(2026, 12, 9, 10, 0, 29)).in_work_hours);
        assert!(s.at(utc(2026, 12, 9, 10, 0, 30)).in_work_hours);
        assert!(!s.at(utc(2026, 12, 9, 10, 0, 45)).in_work_hours);
    }

    #[test]
    fn bad_policies_are_refused_with_the_field_at_fault() {
        let refused = |p: BandwidthPolicy| Schedule::new(&p).expect_err("refused").0;
        let mut p = policy(&WEEKDAYS, "08:00", "17:00", "+00:00");
        p.work_hours_rate = None;
        assert!(refused(p).contains("work_hours_rate"));
        let p = BandwidthPolicy { work_hours_rate: Some(MB), ..Default::default() };
        assert!(refused(p).contains("needs work_hours"));
        let p = BandwidthPolicy { background_rate: 100, ..Default::default() };
        assert!(refused(p).contains("at least 1024"));
        assert!(refused(policy(&[], "08:00", "17:00", "+00:00")).contains("no day"));
        assert!(refused(policy(&WEEKDAYS, "08:00", "08:00", "+00:00")).contains("empty"));
        for (from, to, offset, at_fault) in [
            ("8:00", "17:00", "+00:00", "work_hours.from"),
            ("24:00", "17:00", "+00:00", "work_hours.from"),
            ("08:60", "17:00", "+00:00", "work_hours.from"),
            ("08:00", "24:01", "+00:00", "work_hours.to"),
            ("08:00", "17:00:0x", "+00:00", "work_hours.to"),
            ("08:00", "17:00", "01:00", "work_hours.utc_offset"),
            ("08:00", "17:00", "+15:00", "work_hours.utc_offset"),
            ("08:00", "17:00", "+01:00:30", "work_hours.utc_offset"),
        ] {
            let why = refused(policy(&WEEKDAYS, from, to, offset));
            assert!(why.starts_with(at_fault), "{from} {to} {offset}: {why}");
        }
        assert!(Schedule::new(&BandwidthPolicy::default()).is_ok(), "unlimited");
    }
}
