//! Delivery windows of a connector (`schedule: "Mon-Fri 06:00-22:00, Sat 08:00-12:00"`),
//! evaluated in the appliance's timezone.
//!
//! ## Grammar
//! A schedule is one or more comma-separated ranges `DAYS [HH:MM-HH:MM]`. `DAYS` is a day
//! (`Mon`, `monday`, ...) or a day range (`Mon-Fri`; `Fri-Mon` wraps over the weekend).
//! Without times the range is the whole day. `24:00` is allowed as an end. An end at or
//! before the start makes an overnight range: `Fri 22:00-02:00` opens Friday 22:00 and
//! closes Saturday 02:00 (the range belongs to the day it starts on).
//!
//! ## DST rule
//! A range on a given date is turned into an interval of real time: it opens at the first
//! instant whose local time is at or after its start, and closes at the first instant whose
//! local time is at or after its end. So on the spring-forward day of America/New_York a
//! window starting at the non-existent 02:30 opens at 03:00 EDT; on the fall-back day a
//! window starting at 01:30 opens at the first (EDT) 01:30 and one ending at 01:30 closes
//! then, without reopening during the repeated hour.
//!
//! Invariant: `is_open(at)` holds exactly when `next_open(at) == Some(at)`; both are pure
//! functions of their arguments (the clock is injected).

use chrono::{DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

/// Why a `schedule:` value was refused; the text names the part to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("empty range in schedule {schedule:?}")]
    EmptyRange { schedule: String },
    #[error("schedule {schedule:?}: {problem}")]
    Range {
        schedule: String,
        /// Shown in the message (so not a `#[source]`: a report would print it twice).
        problem: RangeError,
    },
}

/// What is wrong with one comma-separated range of a schedule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("empty range between commas")]
    Empty,
    #[error("unexpected {word:?} in {range:?} (a range is DAYS HH:MM-HH:MM)")]
    Extra { word: String, range: String },
    #[error("{0:?} is not a day (use Mon, Tue, Wed, Thu, Fri, Sat, Sun)")]
    Day(String),
    #[error("{0:?} is not a time such as 06:00")]
    Time(String),
    #[error("{0:?} is not a time range such as 06:00-22:00")]
    Times(String),
    #[error("a range cannot start at 24:00 in {0:?}")]
    StartsAtMidnight(String),
    #[error("{0:?} is empty; use 00:00-24:00 for a whole day")]
    Nothing(String),
}

/// A parsed `schedule:` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    ranges: Vec<Range>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Range {
    /// The weekdays this range starts on, Monday = index 0.
    days: [bool; 7],
    /// Minutes after local midnight.
    start: u32,
    /// Minutes after local midnight of the start day; > 1440 never, <= start means next day.
    end: u32,
}

const DAY_NAMES: [(&str, &str); 7] = [
    ("mon", "monday"),
    ("tue", "tuesday"),
    ("wed", "wednesday"),
    ("thu", "thursday"),
    ("fri", "friday"),
    ("sat", "saturday"),
    ("sun", "sunday"),
];

fn parse_day(s: &str) -> Result<usize, RangeError> {
    let lower = s.trim().to_ascii_lowercase();
    DAY_NAMES
        .iter()
        .position(|(short, long)| lower == *short || lower == *long)
        .ok_or_else(|| RangeError::Day(s.to_string()))
}

fn parse_time(s: &str) -> Result<u32, RangeError> {
    let bad = || RangeError::Time(s.to_string());
    let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: u32 = h.parse().map_err(|_| bad())?;
    let m: u32 = m.parse().map_err(|_| bad())?;
    if m > 59 || h > 24 || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

fn parse_range(part: &str) -> Result<Range, RangeError> {
    // `Mon - Fri 06:00 - 22:00` reads as `Mon-Fri 06:00-22:00`.
    let tight = part.split('-').map(str::trim).collect::<Vec<_>>().join("-");
    let mut words = tight.split_whitespace();
    let days_text = words.next().ok_or(RangeError::Empty)?;
    let times = words.next();
    if let Some(extra) = words.next() {
        return Err(RangeError::Extra {
            word: extra.to_string(),
            range: part.to_string(),
        });
    }
    let mut days = [false; 7];
    match days_text.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (parse_day(a)?, parse_day(b)?);
            let mut d = a;
            loop {
                days[d] = true;
                if d == b {
                    break;
                }
                d = (d + 1) % 7;
            }
        }
        None => days[parse_day(days_text)?] = true,
    }
    let (start, end) = match times {
        None => (0, 24 * 60),
        Some(t) => {
            let (a, b) = t
                .split_once('-')
                .ok_or_else(|| RangeError::Times(t.to_string()))?;
            let (start, end) = (parse_time(a)?, parse_time(b)?);
            if start == 24 * 60 {
                return Err(RangeError::StartsAtMidnight(part.to_string()));
            }
            if start == end {
                return Err(RangeError::Nothing(t.to_string()));
            }
            (start, end)
        }
    };
    Ok(Range { days, start, end })
}

/// The first instant whose local time in `tz` is at or after `date` + `minutes`.
fn local_instant(tz: Tz, date: NaiveDate, minutes: u32) -> Option<DateTime<Utc>> {
    let midnight = date.and_time(NaiveTime::MIN);
    let wanted = midnight + Duration::minutes(i64::from(minutes));
    // A DST gap is at most a few hours; step through it a minute at a time (bounded).
    for step in 0..=24 * 60 {
        let local = wanted + Duration::minutes(step);
        match tz.from_local_datetime(&local) {
            LocalResult::Single(t) => return Some(t.with_timezone(&Utc)),
            LocalResult::Ambiguous(a, b) => return Some(a.min(b).with_timezone(&Utc)),
            LocalResult::None => {}
        }
    }
    None
}

impl Schedule {
    /// Parses a `schedule:` value; the error says what is wrong in words.
    pub fn parse(text: &str) -> Result<Schedule, ScheduleError> {
        let mut ranges = Vec::new();
        for part in text.split(',') {
            let part = part.trim();
            if part.is_empty() {
                return Err(ScheduleError::EmptyRange {
                    schedule: text.to_string(),
                });
            }
            ranges.push(parse_range(part).map_err(|problem| ScheduleError::Range {
                schedule: text.to_string(),
                problem,
            })?);
        }
        Ok(Schedule { ranges })
    }

    /// The open intervals (real time) of ranges starting on local `date`.
    fn intervals_on(
        &self,
        date: NaiveDate,
        tz: Tz,
    ) -> impl Iterator<Item = (DateTime<Utc>, DateTime<Utc>)> + '_ {
        let weekday = date.weekday().num_days_from_monday() as usize;
        self.ranges
            .iter()
            .filter(move |r| r.days[weekday])
            .filter_map(move |r| {
                let end_minutes = if r.end <= r.start {
                    r.end + 24 * 60
                } else {
                    r.end
                };
                let open = local_instant(tz, date, r.start)?;
                let close = local_instant(tz, date, end_minutes)?;
                (open < close).then_some((open, close))
            })
    }

    /// Whether delivery may happen at `at`.
    pub fn is_open(&self, at: DateTime<Utc>, tz: Tz) -> bool {
        self.next_open(at, tz) == Some(at)
    }

    /// The first instant at or after `at` at which the schedule is open: `at` itself when
    /// open now, `None` when it never opens.
    pub fn next_open(&self, at: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let today = at.with_timezone(&tz).date_naive();
        // A range started yesterday may still be open; a weekly schedule whose window one
        // DST day empties opens again within two weeks.
        let mut best: Option<DateTime<Utc>> = None;
        for offset in -1..=15 {
            let date = today + Duration::days(offset);
            for (open, close) in self.intervals_on(date, tz) {
                if close > at {
                    let candidate = open.max(at);
                    best = Some(best.map_or(candidate, |b| b.min(candidate)));
                }
            }
            // Ranges of later dates open no earlier than the next local midnight.
            let next_midnight = local_instant(tz, date + Duration::days(1), 0);
            if let (Some(b), Some(m)) = (best, next_midnight) {
                if b <= m {
                    break;
                }
            }
        }
        best
    }

    /// When the window containing `at` closes (`None` if not open at `at`).
    pub fn closes_at(&self, at: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let today = at.with_timezone(&tz).date_naive();
        let mut end = None;
        for offset in -1..=1 {
            for (open, close) in self.intervals_on(today + Duration::days(offset), tz) {
                if open <= at && at < close {
                    end = Some(end.map_or(close, |e: DateTime<Utc>| e.max(close)));
                }
            }
        }
        end
    }
}
