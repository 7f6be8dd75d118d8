//! The same [`Snapshot`] as plain text for a terminal (`ess stats`): whether the daemon
//! runs, a feed line, what needs doing, one table row per connector, then each connector's
//! last error in full.
//!
//! Invariant: control characters in names and messages are printed escaped, so a hostile
//! error message cannot move the cursor or recolour the operator's terminal.

use std::fmt::Write;

use super::page::{human_bytes, human_duration};
use super::{ConnectorState, Snapshot};

/// Renders `snapshot` as a few lines of text, ending with a newline.
pub fn render_text(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; the results are ignored for that reason.
    if snapshot.running {
        let _ = writeln!(
            out,
            "ess {} running, up {}",
            clean(&snapshot.version),
            snapshot
                .uptime_secs
                .map_or_else(|| "?".to_owned(), |s| human_duration(s as f64)),
        );
    } else {
        let _ = writeln!(
            out,
            "ess is NOT running (no daemon answers on the admin socket); read from the database"
        );
    }
    let f = &snapshot.feed;
    let rate = snapshot
        .ingest_rate_per_sec
        .map_or_else(String::new, |r| format!(", {r:.1} events/s"));
    let _ = writeln!(
        out,
        "feed: last seq {}, {} event(s) kept, {}{rate}; received {} in the last minute, {} in the last hour; free disk {}",
        f.last_seq,
        f.events,
        human_bytes(f.size_bytes),
        f.received_last_minute,
        f.received_last_hour,
        human_bytes(snapshot.free_disk_bytes),
    );
    if let Some(reason) = &snapshot.health.refusal {
        let _ = writeln!(out, "the ingest refuses events (503): {}", clean(reason));
    } else if snapshot.disk_low() {
        let _ = writeln!(
            out,
            "free disk is below the minimum of {}: the ingest refuses events (503)",
            human_bytes(snapshot.min_free_disk_bytes)
        );
    }
    for d in &snapshot.health.degraded {
        let _ = writeln!(out, "degraded: {}", clean(d));
    }
    if let Some(r) = snapshot.last_reload.as_ref().filter(|r| !r.ok) {
        let _ = writeln!(
            out,
            "the last reload ({}) was refused: {} problem(s), first: {}",
            r.at,
            r.n_problems,
            clean(r.first_problem.as_deref().unwrap_or("?"))
        );
    }
    for src in &snapshot.sources {
        let waiting = match (src.files_waiting, src.oldest_unread_age_secs) {
            (Some(w), Some(age)) if w > 0 => {
                format!(", {w} waiting (oldest {})", human_duration(age as f64))
            }
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "source {}: {} file(s) taken, {} record(s), {} bad record(s), {} being read{waiting}",
            clean(&src.name),
            src.files_taken,
            src.records,
            src.bad_records,
            src.files_reading,
        );
        for h in &src.files_held {
            let _ = writeln!(
                out,
                "  {} {}: {}",
                h.state,
                clean(&h.file),
                clean(&h.reason)
            );
        }
        for b in &src.recent_bad {
            let _ = writeln!(
                out,
                "  bad record {} {} (byte {}), field {} at byte {}: {}",
                clean(&b.file),
                b.record_index,
                b.offset,
                clean(&b.field),
                b.field_offset,
                clean(&b.message)
            );
        }
        if let Some(e) = &src.last_error {
            let _ = writeln!(out, "  last error: {}", clean(e));
        }
    }
    out.push('\n');
    if snapshot.connectors.is_empty() {
        out.push_str("no connectors\n");
        return out;
    }
    let header = [
        "CONNECTOR",
        "STATE",
        "CURSOR",
        "LAG",
        "OLDEST",
        "DELIVERED",
        "RETRY",
        "DEAD",
        "LAST SUCCESS",
    ];
    let rows: Vec<[String; 9]> = snapshot
        .connectors
        .iter()
        .map(|c| {
            let state = match &c.state {
                ConnectorState::OutsideSchedule { next_open: Some(t) } => {
                    format!("outside schedule (opens {})", clean(t))
                }
                _ => c.condition.label().to_owned(),
            };
            [
                clean(&c.name),
                state,
                c.cursor.to_string(),
                (c.lag_events + c.requeued).to_string(),
                c.oldest_pending_secs
                    .map_or_else(|| "-".to_owned(), human_duration),
                c.delivered.to_string(),
                c.retry.as_ref().map_or_else(
                    || "-".to_owned(),
                    |r| format!("seq {} x{}", r.seq, r.attempts),
                ),
                c.dead_letters.to_string(),
                c.last_success
                    .as_deref()
                    .map_or_else(|| "never".to_owned(), clean),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    // Text columns left-aligned, numbers right-aligned.
    let right = [false, false, true, true, true, true, false, true, false];
    let mut line = |cells: &[String]| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            let pad = widths[i] - cell.chars().count();
            if right[i] {
                s.extend(std::iter::repeat_n(' ', pad));
                s.push_str(cell);
            } else {
                s.push_str(cell);
                s.extend(std::iter::repeat_n(' ', pad));
            }
        }
        let _ = writeln!(out, "{}", s.trim_end());
    };
    line(&header.map(str::to_owned));
    for row in &rows {
        line(row);
    }
    for c in &snapshot.connectors {
        if let Some(d) = &c.destination {
            let _ = writeln!(out, "{}: delivers to {}", clean(&c.name), clean(d));
        }
        if let Some(p) = &c.paused {
            let _ = writeln!(
                out,
                "{}: paused by {} at {}: {}",
                clean(&c.name),
                clean(&p.by),
                p.at,
                clean(&p.reason)
            );
        }
        if let Some(e) = &c.last_error {
            let _ = writeln!(
                out,
                "{}: last error{}: {}",
                clean(&c.name),
                e.at.as_deref()
                    .map_or_else(String::new, |t| format!(" at {t}")),
                clean(&e.message)
            );
        }
    }
    out
}

/// `s` with control characters escaped (`\u{1b}`, `\n`), so it stays on its line.
fn clean(s: &str) -> String {
    s.chars()
        .map(|ch| {
            if ch.is_control() {
                ch.escape_default().to_string()
            } else {
                ch.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Condition, ConnectorReport, ErrorReport, FeedStatus, HealthStatus};

    fn connector(name: &str, state: ConnectorState, condition: Condition) -> ConnectorReport {
        ConnectorReport {
            name: name.to_owned(),
            destination: None,
            state,
            condition,
            since: None,
            cursor: 12,
            lag_events: 3,
            requeued: 0,
            oldest_pending_secs: Some(75.0),
            delivered: 9,
            retry: None,
            last_success: None,
            last_error: None,
            dead_letters: 0,
            dead_by_reason: Default::default(),
            paused: None,
        }
    }

    #[test]
    fn table_and_errors() {
        let snapshot = Snapshot {
            version: "0.1.0".to_owned(),
            running: false,
            uptime_secs: None,
            feed: FeedStatus {
                first_seq: Some(1),
                last_seq: 15,
                events: 15,
                size_bytes: 2048,
                received_last_minute: 2,
                received_last_hour: 15,
            },
            ingest_rate_per_sec: None,
            free_disk_bytes: 1024 * 1024,
            min_free_disk_bytes: 2 * 1024 * 1024,
            health: HealthStatus {
                refusal: None,
                degraded: Vec::new(),
            },
            last_reload: None,
            connectors: vec![
                connector("cobol", ConnectorState::NotRunning, Condition::NotRunning),
                ConnectorReport {
                    last_error: Some(ErrorReport {
                        message: "refused\x1b[31m\nsecond line".to_owned(),
                        at: Some("2026-11-27T02:00:00Z".into()),
                        seq: Some(13),
                    }),
                    ..connector("sftp", ConnectorState::NotRunning, Condition::NotRunning)
                },
            ],
            recent_actions: Vec::new(),
            sources: Vec::new(),
        };
        let text = render_text(&snapshot);
        let expected = "\
ess is NOT running (no daemon answers on the admin socket); read from the database
feed: last seq 15, 15 event(s) kept, 2.0 KiB; received 2 in the last minute, 15 in the last hour; free disk 1.0 MiB
free disk is below the minimum of 2.0 MiB: the ingest refuses events (503)

CONNECTOR  STATE        CURSOR  LAG      OLDEST  DELIVERED  RETRY  DEAD  LAST SUCCESS
cobol      not running      12    3  1 min 15 s          9  -         0  never
sftp       not running      12    3  1 min 15 s          9  -         0  never
sftp: last error at 2026-11-27T02:00:00Z: refused\\u{1b}[31m\\nsecond line
";
        assert_eq!(text, expected);
    }
}
