//! A synthetic `StatusSource` for the status tests: one connector in every state, names and
//! errors that need HTML escaping, and a health switch.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ess::status::{
    ConnectorState, ConnectorStatus, FeedStatus, Metrics, Snapshot, StatusServer, StatusSource,
};

pub(crate) struct FakeSource {
    pub(crate) snapshot: Snapshot,
    pub(crate) healthy: AtomicBool,
}

impl StatusSource for FakeSource {
    fn snapshot(&self) -> Snapshot {
        self.snapshot.clone()
    }
    fn healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }
}

/// A connector with defaults for everything but its name and state.
pub(crate) fn connector(name: &str, state: ConnectorState) -> ConnectorStatus {
    ConnectorStatus {
        name: name.to_owned(),
        state,
        cursor: 1200,
        lag_events: 0,
        lag_secs: None,
        delivered: 1200,
        retry_pending: 0,
        next_retry_at: None,
        last_success: Some("2026-11-27T01:59:30Z".to_owned()),
        last_error: None,
        dead_letters: 0,
    }
}

/// One connector in each state, plus dead letters on an otherwise healthy one and on a
/// retrying one.
pub(crate) fn snapshot() -> Snapshot {
    Snapshot {
        version: "0.1.0".to_owned(),
        uptime_secs: 93_784,
        feed: FeedStatus {
            last_seq: 1250,
            size_bytes: 3 * 1024 * 1024,
            ingest_rate_per_sec: 12.5,
        },
        free_disk_bytes: 40 * 1024 * 1024 * 1024,
        min_free_disk_bytes: 512 * 1024 * 1024,
        connectors: vec![
            connector("city_hall_cobol", ConnectorState::Ok),
            ConnectorStatus {
                lag_events: 50,
                lag_secs: Some(310.0),
                retry_pending: 3,
                next_retry_at: Some("2026-11-27T02:05:00Z".to_owned()),
                last_error: Some("connect to 10.0.0.7:22: connection refused".to_owned()),
                dead_letters: 2,
                ..connector("court_docket_sftp", ConnectorState::Retrying)
            },
            ConnectorStatus {
                lag_events: 7,
                lag_secs: Some(86_400.0),
                retry_pending: 20,
                last_error: Some(
                    "HTTP 400 from https://payroll.example/api: <b>bad</b> & \"worse\"".to_owned(),
                ),
                ..connector("payroll_<soap>", ConnectorState::Blocked)
            },
            ConnectorStatus {
                lag_events: 40,
                lag_secs: Some(3600.0),
                ..connector(
                    "nightly_batch",
                    ConnectorState::OutsideSchedule {
                        next_open: Some("2026-11-28T06:00:00Z".to_owned()),
                    },
                )
            },
            ConnectorStatus {
                dead_letters: 5,
                ..connector("permits_csv", ConnectorState::Ok)
            },
        ],
    }
}

/// Starts the status server on an ephemeral port of 127.0.0.1 over `snapshot()`.
pub(crate) fn start(metrics: Metrics) -> (StatusServer, Arc<FakeSource>) {
    start_with(snapshot(), metrics)
}

/// Starts the status server on an ephemeral port of 127.0.0.1 over `snapshot`.
pub(crate) fn start_with(snapshot: Snapshot, metrics: Metrics) -> (StatusServer, Arc<FakeSource>) {
    let source = Arc::new(FakeSource {
        snapshot,
        healthy: AtomicBool::new(true),
    });
    let addr = "127.0.0.1:0".parse().expect("literal address");
    let server = ess::status::serve(addr, source.clone(), metrics).expect("status server starts");
    (server, source)
}
