//! Whether the appliance takes events right now, and if not, why: one answer shared by the
//! ingest (which answers 503 + `Retry-After`), the feed (which reports a database it cannot
//! write) and `/healthz` (which answers 503 with the same reason), so they never disagree.
//!
//! Invariant: [`Health::refusal`] is the only place that decides whether ingest refuses;
//! callers set or clear the conditions, they do not keep their own copies.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long a free-disk reading answers for: `statvfs` on every request cost about 3 % of
/// the daemon's CPU at 64 single-event connections; at the fastest ingest measured
/// (≈ 150 MB/s) the disk fills by at most ≈ 15 MB in this time, far inside `min_free_disk`.
const FREE_DISK_EVERY: Duration = Duration::from_millis(100);

/// Why ingest refuses events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// SIGTERM/SIGINT: the daemon is draining.
    ShuttingDown,
    /// Free disk on the data folder is below `retention.min_free_disk`.
    LowDisk { free: u64, min: u64 },
    /// The feed cannot be written (for instance a full disk made redb fail); the message
    /// says what the database reported.
    Database(String),
}

impl Refusal {
    /// One line for a 503 body, a log line and `/healthz`.
    pub fn reason(&self) -> String {
        match self {
            Refusal::ShuttingDown => "shutting down".into(),
            Refusal::LowDisk { free, min } => {
                format!("free disk space ({free} bytes) is below min_free_disk ({min} bytes)")
            }
            Refusal::Database(m) => format!("database error: {m}"),
        }
    }

    /// Seconds a client should wait before it sends again.
    pub fn retry_after_secs(&self) -> u32 {
        match self {
            Refusal::ShuttingDown => 5,
            Refusal::LowDisk { .. } => 60,
            Refusal::Database(_) => 5,
        }
    }
}

/// The conditions under which ingest refuses, shared (in an `Arc`) by everyone who sets or
/// reads them.
#[derive(Debug)]
pub struct Health {
    shutting_down: AtomicBool,
    database: Mutex<Option<String>>,
    data_dir: PathBuf,
    min_free_disk: u64,
    /// The last free-disk reading and when it was taken.
    free_disk: Mutex<Option<(Instant, u64)>>,
}

impl Health {
    /// Free disk is measured on `data_dir` against `min_free_disk`, at most every
    /// [`FREE_DISK_EVERY`].
    pub fn new(data_dir: PathBuf, min_free_disk: u64) -> Health {
        Health {
            shutting_down: AtomicBool::new(false),
            database: Mutex::new(None),
            data_dir,
            min_free_disk,
            free_disk: Mutex::new(None),
        }
    }

    fn free_disk_bytes(&self) -> std::io::Result<u64> {
        let mut last = self
            .free_disk
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((at, free)) = *last {
            if at.elapsed() < FREE_DISK_EVERY {
                return Ok(free);
            }
        }
        let free = crate::feed::retention::free_disk_bytes(&self.data_dir)?;
        *last = Some((Instant::now(), free));
        Ok(free)
    }

    /// The first reason ingest refuses events now, `None` when it takes them.
    pub fn refusal(&self) -> Option<Refusal> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Some(Refusal::ShuttingDown);
        }
        if let Some(m) = self.database.lock().ok().and_then(|d| d.clone()) {
            return Some(Refusal::Database(m));
        }
        match self.free_disk_bytes() {
            Ok(free) if free < self.min_free_disk => Some(Refusal::LowDisk {
                free,
                min: self.min_free_disk,
            }),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read free disk space");
                None
            }
        }
    }

    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// The feed reports that it cannot write (`Some`), or that it can again (`None`).
    pub fn set_database_error(&self, message: Option<String>) {
        if let Ok(mut d) = self.database.lock() {
            *d = message;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_reason_wins_and_clears() {
        let dir = tempfile::tempdir().unwrap();
        let h = Health::new(dir.path().to_path_buf(), 0);
        assert_eq!(h.refusal(), None);
        h.set_database_error(Some("Previous I/O error occurred".into()));
        assert!(matches!(h.refusal(), Some(Refusal::Database(_))));
        h.set_database_error(None);
        assert_eq!(h.refusal(), None);
        let low = Health::new(dir.path().to_path_buf(), u64::MAX);
        assert!(matches!(low.refusal(), Some(Refusal::LowDisk { .. })));
        low.set_shutting_down();
        assert_eq!(low.refusal(), Some(Refusal::ShuttingDown));
    }
}
