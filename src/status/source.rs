//! Where the daemon's [`Snapshot`] comes from: the state module's reports over the running
//! generation of connectors ([`Connectors`]), plus what only the daemon knows (uptime,
//! ingest rate, whether the ingest refuses events, the last reload).
//!
//! Invariant: read-only; everything stored is read through [`crate::state`].

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;

use super::{HealthStatus, Snapshot, StatusSource};
use crate::connector::Phase;
use crate::event::Seq;
use crate::feed::Feed;
use crate::state::Connectors;

/// How many operator actions the page lists.
const RECENT_ACTIONS: usize = 8;

/// The running daemon's [`StatusSource`].
pub struct DaemonStatus {
    connectors: Arc<Connectors>,
    feed: Feed,
    data_dir: PathBuf,
    min_free_disk: u64,
    blocked_alarm: Duration,
    started: Instant,
    health: Arc<crate::health::Health>,
    rate: Mutex<RateWindow>,
    sources: crate::source::running::Lives,
}

impl DaemonStatus {
    /// `health` is the ingest's own answer to "do you take events"; `data_dir` is where
    /// free disk is measured, `min_free_disk` the ingest's threshold
    /// (`retention.min_free_disk`); a connector blocked longer than `blocked_alarm`
    /// (`status.blocked_alarm`) makes the appliance degraded.
    pub fn new(
        connectors: Arc<Connectors>,
        feed: Feed,
        data_dir: PathBuf,
        min_free_disk: u64,
        blocked_alarm: Duration,
        health: Arc<crate::health::Health>,
    ) -> DaemonStatus {
        let started = Instant::now();
        let rate = Mutex::new(RateWindow::new(started, feed.last_seq()));
        DaemonStatus {
            connectors,
            feed,
            data_dir,
            min_free_disk,
            blocked_alarm,
            started,
            health,
            rate,
            sources: Default::default(),
        }
    }
}

impl DaemonStatus {
    /// The running pickup sources (the set a SIGHUP may replace), shown with what they see
    /// between scans.
    pub fn with_sources(mut self, sources: crate::source::running::Lives) -> Self {
        self.sources = sources;
        self
    }

    fn source_reports(
        &self,
        now: chrono::DateTime<Utc>,
    ) -> Result<Vec<crate::ledger::sources::SourceReport>, crate::state::Error> {
        use std::sync::atomic::Ordering;
        let mut reports = self.connectors.store().view()?.sources()?;
        let lives = self
            .sources
            .lock()
            .map_or_else(|e| e.into_inner().clone(), |l| l.clone());
        for (name, live) in &lives {
            let i = match reports.iter().position(|r| &r.name == name) {
                Some(i) => i,
                None => {
                    reports.push(crate::ledger::sources::SourceReport {
                        name: name.clone(),
                        ..Default::default()
                    });
                    reports.len() - 1
                }
            };
            let r = &mut reports[i];
            r.files_waiting = Some(live.waiting.load(Ordering::Relaxed));
            let oldest = live.oldest_unread_micros.load(Ordering::Relaxed);
            r.oldest_unread_age_secs = Some(if oldest == 0 {
                0
            } else {
                (now.timestamp_micros() - oldest).max(0) as u64 / 1_000_000
            });
            r.last_error = live.last_error.lock().map_or(None, |e| e.clone());
        }
        reports.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(reports)
    }
}

impl StatusSource for DaemonStatus {
    fn snapshot(&self) -> Result<Snapshot, crate::state::Error> {
        let now = Utc::now();
        let last_seq = self.feed.last_seq();
        let store = self.connectors.store();
        let feed = crate::state::feed_status(store, Some(last_seq), now)?;
        let connectors = store.reports(&self.connectors.infos_with_ledger()?, &feed, now)?;
        let ingest_rate_per_sec = self
            .rate
            .lock()
            .map_or(0.0, |mut w| w.observe(Instant::now(), last_seq));
        Ok(Snapshot {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            running: true,
            uptime_secs: Some(self.started.elapsed().as_secs()),
            feed,
            ingest_rate_per_sec: Some(ingest_rate_per_sec),
            free_disk_bytes: crate::feed::retention::free_disk_bytes(&self.data_dir).unwrap_or(0),
            min_free_disk_bytes: self.min_free_disk,
            health: self.health(),
            last_reload: self.connectors.last_reload(),
            connectors,
            recent_actions: store.recent_actions(RECENT_ACTIONS)?,
            sources: self.source_reports(now)?,
        })
    }

    fn health(&self) -> HealthStatus {
        let now = Utc::now();
        let degraded = self
            .connectors
            .running()
            .iter()
            .filter_map(|r| {
                let live = r.live.lock().ok()?.clone();
                let since = live.since.filter(|_| live.phase == Phase::Blocked)?;
                let blocked = (now - since).to_std().ok()?;
                (blocked >= self.blocked_alarm).then(|| {
                    format!(
                        "{} blocked for {} min (since {})",
                        r.spec.name,
                        blocked.as_secs() / 60,
                        crate::state::rfc3339(since)
                    )
                })
            })
            .collect();
        HealthStatus {
            refusal: self.health.refusal().map(|r| r.reason()),
            degraded,
        }
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
