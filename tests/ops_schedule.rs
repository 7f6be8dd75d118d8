//! Schedule windows across both DST changes of America/New_York (2026-03-08 and
//! 2026-11-01), with injected instants: no clock, no sleeps.

use chrono::{DateTime, Duration, TimeZone, Utc};
use chrono_tz::America::New_York;
use ess::connector::schedule::Schedule;

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
}

/// Checks `next_open` against `is_open` minute by minute between `at` and the answer.
fn next_open_is_the_first_open_minute(s: &Schedule, at: DateTime<Utc>) -> DateTime<Utc> {
    let next = s.next_open(at, New_York).expect("opens");
    assert!(next >= at);
    assert!(
        s.is_open(next, New_York),
        "not open at the announced opening {next}"
    );
    let mut t = at;
    while t < next {
        assert!(
            !s.is_open(t, New_York),
            "open at {t}, before the announced {next}"
        );
        t += Duration::minutes(1);
    }
    next
}

#[test]
fn weekday_window_and_weekend_gap() {
    let s = Schedule::parse("Mon-Fri 06:00-22:00").unwrap();
    // Wed 2026-06-10 12:00 EDT = 16:00 UTC.
    assert!(s.is_open(utc(2026, 6, 10, 16, 0), New_York));
    // 05:59 EDT closed, 06:00 open, 22:00 closed.
    assert!(!s.is_open(utc(2026, 6, 10, 9, 59), New_York));
    assert!(s.is_open(utc(2026, 6, 10, 10, 0), New_York));
    assert!(!s.is_open(utc(2026, 6, 11, 2, 0), New_York));
    // Friday 22:00 EDT -> Monday 06:00 EDT.
    let fri_close = utc(2026, 6, 13, 2, 0);
    assert_eq!(
        s.next_open(fri_close, New_York),
        Some(utc(2026, 6, 15, 10, 0))
    );
}

#[test]
fn spring_forward_weekend_shifts_the_utc_opening_by_an_hour() {
    let s = Schedule::parse("Mon-Fri 06:00-22:00").unwrap();
    // Friday 2026-03-06 22:00 EST = Sat 03:00 UTC; Monday 06:00 is EDT (10:00 UTC), not 11:00.
    let next = next_open_is_the_first_open_minute(&s, utc(2026, 3, 7, 3, 0));
    assert_eq!(next, utc(2026, 3, 9, 10, 0));
    // The Friday before opened at 06:00 EST = 11:00 UTC.
    assert_eq!(
        s.next_open(utc(2026, 3, 6, 5, 0), New_York),
        Some(utc(2026, 3, 6, 11, 0))
    );
}

#[test]
fn a_start_inside_the_spring_gap_opens_when_the_clock_jumps() {
    // 02:30 does not exist on 2026-03-08: clocks go 01:59 EST -> 03:00 EDT (07:00 UTC).
    let s = Schedule::parse("Sun 02:30-04:00").unwrap();
    assert!(!s.is_open(utc(2026, 3, 8, 6, 59), New_York));
    let next = next_open_is_the_first_open_minute(&s, utc(2026, 3, 8, 5, 0));
    assert_eq!(next, utc(2026, 3, 8, 7, 0));
    assert!(s.is_open(utc(2026, 3, 8, 7, 59), New_York));
    assert!(!s.is_open(utc(2026, 3, 8, 8, 0), New_York)); // 04:00 EDT
    // A window lying wholly in the gap is empty that day and opens next week.
    let gap = Schedule::parse("Sun 02:00-02:45").unwrap();
    assert_eq!(
        gap.next_open(utc(2026, 3, 8, 5, 0), New_York),
        Some(utc(2026, 3, 15, 6, 0))
    );
}

#[test]
fn fall_back_repeated_hour_neither_closes_nor_reopens_a_window() {
    // 2026-11-01: 01:59 EDT (05:59 UTC) -> 01:00 EST (06:00 UTC); 01:30 happens twice.
    let s = Schedule::parse("Sun 01:30-03:00").unwrap();
    let next = next_open_is_the_first_open_minute(&s, utc(2026, 11, 1, 4, 0));
    assert_eq!(next, utc(2026, 11, 1, 5, 30)); // the first 01:30 (EDT)
    // The second pass through 01:00-01:30 (EST) stays open.
    assert!(s.is_open(utc(2026, 11, 1, 6, 10), New_York));
    assert!(s.is_open(utc(2026, 11, 1, 7, 59), New_York)); // 02:59 EST
    assert!(!s.is_open(utc(2026, 11, 1, 8, 0), New_York)); // 03:00 EST

    let until = Schedule::parse("Sun 00:00-01:30").unwrap();
    assert!(until.is_open(utc(2026, 11, 1, 5, 29), New_York)); // 01:29 EDT
    assert!(!until.is_open(utc(2026, 11, 1, 5, 30), New_York)); // 01:30 EDT closes
    assert!(!until.is_open(utc(2026, 11, 1, 6, 10), New_York)); // 01:10 EST: not reopened
    assert!(!until.is_open(utc(2026, 11, 1, 6, 40), New_York)); // the second 01:30..
    // Next Sunday 00:00 EST = 05:00 UTC.
    assert_eq!(
        until.next_open(utc(2026, 11, 1, 6, 10), New_York),
        Some(utc(2026, 11, 8, 5, 0))
    );
    // The fall-back day is 25 hours long: a whole-day window lasts 25 real hours.
    let sunday = Schedule::parse("Sun").unwrap();
    assert!(sunday.is_open(utc(2026, 11, 1, 4, 0), New_York)); // 00:00 EDT
    assert!(sunday.is_open(utc(2026, 11, 2, 4, 59), New_York)); // 23:59 EST
    assert!(!sunday.is_open(utc(2026, 11, 2, 5, 0), New_York));
}

#[test]
fn several_ranges_overnight_and_wrapping_days() {
    let s = Schedule::parse("Mon-Fri 06:00-22:00, Sat 08:00-12:00").unwrap();
    // Sat 2026-06-13 09:00 EDT open, 12:00 closed; next: Mon 06:00.
    assert!(s.is_open(utc(2026, 6, 13, 13, 0), New_York));
    assert!(!s.is_open(utc(2026, 6, 13, 16, 0), New_York));
    assert_eq!(
        s.next_open(utc(2026, 6, 13, 16, 0), New_York),
        Some(utc(2026, 6, 15, 10, 0))
    );
    // Friday 23:00 -> Saturday 08:00.
    assert_eq!(
        s.next_open(utc(2026, 6, 13, 3, 0), New_York),
        Some(utc(2026, 6, 13, 12, 0))
    );

    assert_eq!(
        s.closes_at(utc(2026, 6, 13, 13, 0), New_York),
        Some(utc(2026, 6, 13, 16, 0))
    );
    assert_eq!(s.closes_at(utc(2026, 6, 13, 16, 0), New_York), None);

    let night = Schedule::parse("fri 22:00-02:00").unwrap();
    assert_eq!(
        night.closes_at(utc(2026, 6, 13, 5, 0), New_York),
        Some(utc(2026, 6, 13, 6, 0))
    );
    assert!(night.is_open(utc(2026, 6, 13, 2, 30), New_York)); // Fri 22:30 EDT
    assert!(night.is_open(utc(2026, 6, 13, 5, 59), New_York)); // Sat 01:59 EDT
    assert!(!night.is_open(utc(2026, 6, 13, 6, 0), New_York)); // Sat 02:00
    assert!(!night.is_open(utc(2026, 6, 14, 5, 0), New_York)); // Sun 01:00: not a Sat range

    let weekend = Schedule::parse("Sat-Sun").unwrap();
    assert!(weekend.is_open(utc(2026, 6, 14, 12, 0), New_York));
    assert!(!weekend.is_open(utc(2026, 6, 15, 12, 0), New_York));
    let wrap = Schedule::parse("Fri-Mon 10:00-11:00").unwrap();
    assert!(wrap.is_open(utc(2026, 6, 15, 14, 30), New_York)); // Monday 10:30
    assert!(!wrap.is_open(utc(2026, 6, 16, 14, 30), New_York)); // Tuesday
}

#[test]
fn bad_schedules_are_refused_with_a_reason() {
    for (text, needle) in [
        ("", "empty range"),
        ("Mon-Fri 06:00-22:00,", "empty range"),
        ("Mun 06:00-22:00", "not a day"),
        ("Mon 6-22", "not a time"),
        ("Mon 06:00-25:00", "not a time"),
        ("Mon 06:60-07:00", "not a time"),
        ("Mon 06:00", "not a time range"),
        ("Mon 06:00-06:00", "is empty"),
        ("Mon 06:00-07:00 daily", "unexpected"),
    ] {
        let err = Schedule::parse(text).unwrap_err().to_string();
        assert!(err.contains(needle), "{text:?}: {err}");
    }
    assert!(Schedule::parse("Mon 00:00-24:00").is_ok());
    assert_eq!(
        Schedule::parse(" Mon - Fri 06:00 - 22:00 ,Sat  08:00-12:00 ").unwrap(),
        Schedule::parse("Mon-Fri 06:00-22:00, Sat 08:00-12:00").unwrap()
    );
}

mod properties {
    use super::*;
    use chrono::{Datelike, Timelike};
    use proptest::prelude::*;

    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

    /// The plain wall-clock reading of one range, right away from DST changes.
    fn wall_clock_open(ranges: &[(usize, usize, u32, u32)], at: DateTime<Utc>) -> bool {
        let local = at.with_timezone(&New_York);
        let day = local.weekday().num_days_from_monday() as usize;
        let minute = local.hour() * 60 + local.minute();
        let in_days = |d: usize, a: usize, b: usize| {
            if a <= b {
                (a..=b).contains(&d)
            } else {
                d >= a || d <= b
            }
        };
        ranges.iter().any(|&(a, b, start, end)| {
            if start < end {
                in_days(day, a, b) && (start..end).contains(&minute)
            } else {
                (in_days(day, a, b) && minute >= start)
                    || (in_days((day + 6) % 7, a, b) && minute < end)
            }
        })
    }

    fn hhmm(m: u32) -> String {
        format!("{:02}:{:02}", m / 60, m % 60)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn agrees_with_the_wall_clock_and_next_open_is_an_opening(
            ranges in prop::collection::vec((0usize..7, 0usize..7, 0u32..1440, 0u32..1440), 1..4),
            minute_of_2026 in 0i64..525_600,
        ) {
            let ranges: Vec<_> = ranges.into_iter().filter(|r| r.2 != r.3).collect();
            prop_assume!(!ranges.is_empty());
            let text = ranges
                .iter()
                .map(|&(a, b, s, e)| format!("{}-{} {}-{}", DAYS[a], DAYS[b], hhmm(s), hhmm(e)))
                .collect::<Vec<_>>()
                .join(", ");
            let schedule = Schedule::parse(&text).unwrap();
            let at = utc(2026, 1, 1, 0, 0) + Duration::minutes(minute_of_2026);
            // Away from the two DST changes (and a day's margin for overnight ranges), the
            // interval rule is the plain wall-clock rule.
            let near_dst = [utc(2026, 3, 8, 7, 0), utc(2026, 11, 1, 6, 0)]
                .iter()
                .any(|&t| (at - t).num_hours().abs() < 30);
            if !near_dst {
                prop_assert_eq!(schedule.is_open(at, New_York), wall_clock_open(&ranges, at), "{} at {}", text, at);
            }
            let next = schedule.next_open(at, New_York).expect("a weekly window always opens");
            prop_assert!(next >= at);
            prop_assert!(schedule.is_open(next, New_York));
            if next > at {
                prop_assert!(!schedule.is_open(next - Duration::seconds(1), New_York), "{} at {}: {}", text, at, next);
            }
        }

        #[test]
        fn parse_never_panics(text in "\\PC{0,60}") {
            let _ = Schedule::parse(&text);
        }
    }
}
