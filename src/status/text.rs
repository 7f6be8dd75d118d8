//! The same [`Snapshot`] as plain text for a terminal (`ess stats`): a summary line, one
//! table row per connector, then each connector's last error in full.
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
    let _ = writeln!(
        out,
        "ess {}, up {}; feed: last seq {}, {}, {:.1} events/s; free disk {}",
        clean(&snapshot.version),
        human_duration(snapshot.uptime_secs as f64),
        snapshot.feed.last_seq,
        human_bytes(snapshot.feed.size_bytes),
        snapshot.feed.ingest_rate_per_sec,
        human_bytes(snapshot.free_disk_bytes),
    );
    if snapshot.disk_low() {
        let _ = writeln!(
            out,
            "free disk is below the minimum of {}: the ingest refuses events (503)",
            human_bytes(snapshot.min_free_disk_bytes)
        );
    }
    let header = [
        "CONNECTOR",
        "STATE",
        "CURSOR",
        "LAG",
        "BEHIND",
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
                _ => c.condition().label().to_owned(),
            };
            [
                clean(&c.name),
                state,
                c.cursor.to_string(),
                c.lag_events.to_string(),
                c.lag_secs.map_or_else(|| "-".to_owned(), human_duration),
                c.delivered.to_string(),
                c.retry_pending.to_string(),
                c.dead_letters.to_string(),
                c.last_success
                    .as_deref()
                    .map_or_else(|| "never".to_owned(), clean),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut line = |cells: &[String]| {
        let mut text = String::new();
        for (cell_idx, (cell, width)) in cells.iter().zip(widths).enumerate() {
            // Names and words align left, numbers right.
            let _ = match cell_idx {
                0 | 1 | 8 => write!(text, "{cell:<width$}  "),
                _ => write!(text, "{cell:>width$}  "),
            };
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(&header.map(str::to_owned));
    for row in &rows {
        line(row);
    }
    for c in &snapshot.connectors {
        if let Some(e) = &c.last_error {
            let _ = writeln!(out, "{}: last error: {}", clean(&c.name), clean(e));
        }
    }
    out
}

/// `s` with control characters escaped (`\n`, `\u{1b}`).
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
    use crate::status::{ConnectorStatus, FeedStatus};

    #[test]
    fn table_and_errors() {
        let connector = |name: &str, state| ConnectorStatus {
            name: name.to_owned(),
            state,
            cursor: 12,
            lag_events: 3,
            lag_secs: Some(75.0),
            delivered: 9,
            retry_pending: 0,
            next_retry_at: None,
            last_success: None,
            last_error: None,
            dead_letters: 0,
        };
        let snapshot = Snapshot {
            version: "0.1.0".to_owned(),
            uptime_secs: 61,
            feed: FeedStatus {
                last_seq: 15,
                size_bytes: 2048,
                ingest_rate_per_sec: 0.5,
            },
            free_disk_bytes: 1024 * 1024,
            min_free_disk_bytes: 2 * 1024 * 1024,
            connectors: vec![
                connector("cobol", ConnectorState::Ok),
                ConnectorStatus {
                    retry_pending: 2,
                    last_error: Some("refused\x1b[31m\nsecond line".to_owned()),
                    ..connector("sftp", ConnectorState::Retrying)
                },
            ],
        };
        let text = render_text(&snapshot);
        let expected = "\
ess 0.1.0, up 1 min 1 s; feed: last seq 15, 2.0 KiB, 0.5 events/s; free disk 1.0 MiB
free disk is below the minimum of 2.0 MiB: the ingest refuses events (503)
CONNECTOR  STATE     CURSOR  LAG      BEHIND  DELIVERED  RETRY  DEAD  LAST SUCCESS
cobol      ok            12    3  1 min 15 s          9      0     0  never
sftp       retrying      12    3  1 min 15 s          9      2     0  never
sftp: last error: refused\\u{1b}[31m\\nsecond line
";
        assert_eq!(text, expected);
    }
}
