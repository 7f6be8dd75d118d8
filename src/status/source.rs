//! Where the daemon's [`Snapshot`] comes from: the feed and the ledger (read transactions
//! only) plus what each connector task reports live ([`Live`]).
//!
//! [`connector_status`] needs only a readable redb handle, so `ess stats` can build the
//! same rows from a read-only database when no daemon runs; [`DaemonStatus`] is the
//! [`StatusSource`] the daemon hands to [`super::serve`].
//!
//! Invariant: read-only. Only `begin_read` transactions, through the feed's and the
//! ledger's read functions; a read error shows as missing data, never as a write or a panic.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use redb::ReadableDatabase;

use super::{ConnectorState, ConnectorStatus, FeedStatus, Snapshot, StatusSource};
use crate::connector::{Live, Phase};
use crate::event::Seq;
use crate::feed::Feed;
use crate::ledger;
use crate::serve::Connectors;

/// One connector's row, from the ledger and feed in `db` and, when its task runs, `live`.
/// Without `live` (no daemon) the state comes from the ledger alone: a stored retry state
/// reads as retrying, else ok.
pub fn connector_status<D: ReadableDatabase>(
    db: &D,
    name: &str,
    live: Option<&Live>,
    last_seq: Seq,
    now: DateTime<Utc>,
) -> ConnectorStatus {
    let cursor = ledger::read_cursor(db, name)
        .ok()
        .flatten()
        .unwrap_or_default();
    let retry = ledger::read_retry(db, name).ok().flatten();
    let dead_letters = ledger::read_dead_letters(db, name).map_or(0, |d| d.len() as u64);
    let lag_events = last_seq.saturating_sub(cursor.seq);
    // The age of the oldest event not passed yet: the one right after the cursor.
    let lag_secs = if lag_events == 0 {
        None
    } else {
        crate::feed::read_after(db, cursor.seq, 1)
            .ok()
            .and_then(|events| events.first().map(|e| seconds_between(e.received_at, now)))
    };
    let state = match live.map(|l| &l.phase) {
        Some(Phase::Retrying) => ConnectorState::Retrying,
        // Shown as blocked (with the damage as its last error) until the page knows the state.
        Some(Phase::Blocked | Phase::Corrupted { .. }) => ConnectorState::Blocked,
        Some(Phase::OutsideSchedule) => ConnectorState::OutsideSchedule {
            next_open: live.and_then(|l| l.next_open).map(rfc3339),
        },
        Some(Phase::Idle | Phase::Delivering) => ConnectorState::Ok,
        None if retry.is_some() => ConnectorState::Retrying,
        None => ConnectorState::Ok,
    };
    let next_retry_at = retry
        .as_ref()
        .map(|r| r.next_at())
        .or_else(|| live.and_then(|l| l.next_attempt))
        .map(rfc3339);
    let last_error = live
        .and_then(|l| l.last_error.clone())
        .or_else(|| retry.as_ref().map(|r| r.last_error.clone()));
    ConnectorStatus {
        name: name.to_owned(),
        state,
        cursor: cursor.seq,
        lag_events,
        lag_secs,
        delivered: cursor.delivered,
        retry_pending: retry.as_ref().map_or(0, |r| r.attempts),
        next_retry_at,
        last_success: cursor
            .last_success_micros
            .and_then(|us| Utc.timestamp_micros(us).single())
            .map(rfc3339),
        last_error,
        dead_letters,
    }
}

/// The running daemon's [`StatusSource`].
pub struct DaemonStatus {
    connectors: Arc<Connectors>,
    feed: Feed,
    data_dir: PathBuf,
    db_path: PathBuf,
    min_free_disk: u64,
    started: Instant,
    health: Arc<crate::health::Health>,
    rate: Mutex<RateWindow>,
}

impl DaemonStatus {
    /// `health` answers `/healthz` (the ingest's own refusal reasons); `data_dir` is where
    /// free disk is measured, `db_path` the file whose size is the feed size,
    /// `min_free_disk` the ingest's threshold (`retention.min_free_disk`).
    pub fn new(
        connectors: Arc<Connectors>,
        feed: Feed,
        data_dir: PathBuf,
        db_path: PathBuf,
        min_free_disk: u64,
        health: Arc<crate::health::Health>,
    ) -> DaemonStatus {
        let started = Instant::now();
        let rate = Mutex::new(RateWindow::new(started, feed.last_seq()));
        DaemonStatus {
            connectors,
            feed,
            data_dir,
            db_path,
            min_free_disk,
            started,
            health,
            rate,
        }
    }
}

impl StatusSource for DaemonStatus {
    fn snapshot(&self) -> Snapshot {
        let now = Utc::now();
        let last_seq = self.feed.last_seq();
        let specs = self
            .connectors
            .specs
            .read()
            .map(|s| s.clone())
            .unwrap_or_default();
        let db = &**self.feed.db();
        let connectors = specs
            .iter()
            .map(|(spec, live)| {
                let live = live.lock().map(|l| l.clone()).ok();
                connector_status(db, &spec.name, live.as_ref(), last_seq, now)
            })
            .collect();
        let ingest_rate_per_sec = self
            .rate
            .lock()
            .map_or(0.0, |mut w| w.observe(Instant::now(), last_seq));
        Snapshot {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_secs: self.started.elapsed().as_secs(),
            feed: FeedStatus {
                last_seq,
                size_bytes: std::fs::metadata(&self.db_path).map_or(0, |m| m.len()),
                ingest_rate_per_sec,
            },
            free_disk_bytes: crate::feed::retention::free_disk_bytes(&self.data_dir).unwrap_or(0),
            min_free_disk_bytes: self.min_free_disk,
            connectors,
        }
    }

    fn healthy(&self) -> bool {
        self.health.refusal().is_none()
    }
}

/// The ingest rate over about the last minute, from `last_seq` seen at each snapshot: the
/// window keeps the samples of the last [`RateWindow::SPAN`] and the newest one older.
#[derive(Debug)]
struct RateWindow {
    samples: VecDeque<(Instant, Seq)>,
}

impl RateWindow {
    const SPAN: Duration = Duration::from_secs(60);
    /// Bounds memory however often the page is scraped.
    const MAX_SAMPLES: usize = 1024;

    fn new(at: Instant, seq: Seq) -> RateWindow {
        RateWindow {
            samples: VecDeque::from([(at, seq)]),
        }
    }

    /// Adds a sample and returns events per second since the oldest kept one.
    fn observe(&mut self, now: Instant, seq: Seq) -> f64 {
        self.samples.push_back((now, seq));
        while self.samples.len() > Self::MAX_SAMPLES
            || (self.samples.len() > 2
                && self
                    .samples
                    .get(1)
                    .is_some_and(|(t, _)| now.duration_since(*t) >= Self::SPAN))
        {
            self.samples.pop_front();
        }
        let Some(&(t0, seq0)) = self.samples.front() else {
            return 0.0;
        };
        let secs = now.duration_since(t0).as_secs_f64();
        if secs < 0.001 {
            return 0.0;
        }
        seq.saturating_sub(seq0) as f64 / secs
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn seconds_between(earlier: DateTime<Utc>, later: DateTime<Utc>) -> f64 {
    ((later - earlier).num_milliseconds() as f64 / 1000.0).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_over_the_window() {
        let t0 = Instant::now();
        let mut w = RateWindow::new(t0, 100);
        assert_eq!(w.observe(t0 + Duration::from_secs(10), 150), 5.0);
        assert_eq!(w.observe(t0 + Duration::from_secs(20), 250), 7.5);
        // Samples older than the span are dropped, except the newest of them.
        let rate = w.observe(t0 + Duration::from_secs(90), 250);
        assert_eq!(rate, 0.0, "no events between 20 s and 90 s");
        assert_eq!(w.samples.len(), 2);
    }

    #[test]
    fn rate_memory_is_bounded() {
        let t0 = Instant::now();
        let mut w = RateWindow::new(t0, 0);
        for i in 1..5000u64 {
            w.observe(t0 + Duration::from_micros(i), i);
        }
        assert!(w.samples.len() <= RateWindow::MAX_SAMPLES);
    }
}
