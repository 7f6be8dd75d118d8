#![allow(dead_code)]
//! A synthetic `StatusSource` for the status tests: one connector in every state, names and
//! errors that need HTML escaping, a refused reload, operator actions, and a health switch.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use ess::state::{
    ActionReport, Condition, ConnectorReport, ConnectorState, ErrorReport, FeedStatus,
    HealthStatus, PauseReport, ReloadReport, RetryReport, Snapshot,
};
use ess::status::{Metrics, StatusServer, StatusSource};

pub(crate) struct FakeSource {
    pub(crate) snapshot: Snapshot,
    pub(crate) health: Mutex<HealthStatus>,
}

impl StatusSource for FakeSource {
    fn snapshot(&self) -> Result<Snapshot, ess::state::Error> {
        let mut s = self.snapshot.clone();
        s.health = self.health();
        Ok(s)
    }
    fn health(&self) -> HealthStatus {
        self.health.lock().unwrap().clone()
    }
}

impl FakeSource {
    pub(crate) fn set_health(&self, refusal: Option<&str>, degraded: &[&str]) {
        *self.health.lock().unwrap() = HealthStatus {
            refusal: refusal.map(str::to_owned),
            degraded: degraded.iter().map(|d| d.to_string()).collect(),
        };
    }
}

/// A connector with defaults for everything but its name and state.
pub(crate) fn connector(
    name: &str,
    state: ConnectorState,
    condition: Condition,
) -> ConnectorReport {
    ConnectorReport {
        name: name.to_owned(),
        destination: Some(format!("file /var/spool/ess/out/{name}.txt (append)")),
        state,
        condition,
        since: Some("2026-11-27T01:40:00Z".to_owned()),
        cursor: 1200,
        lag_events: 0,
        requeued: 0,
        oldest_pending_secs: None,
        delivered: 1200,
        retry: None,
        last_success: Some("2026-11-27T01:59:30Z".to_owned()),
        last_error: None,
        dead_letters: 0,
        dead_by_reason: BTreeMap::new(),
        paused: None,
    }
}

/// One connector in each state, dead letters on an otherwise healthy one and on a
/// retrying one, a refused reload and two operator actions.
pub(crate) fn snapshot() -> Snapshot {
    Snapshot {
        version: "0.1.0".to_owned(),
        running: true,
        uptime_secs: Some(93_784),
        feed: FeedStatus {
            first_seq: Some(1),
            last_seq: 1250,
            events: 1250,
            size_bytes: 3 * 1024 * 1024,
            received_last_minute: 700,
            received_last_hour: 1250,
        },
        ingest_rate_per_sec: Some(12.5),
        free_disk_bytes: 40 * 1024 * 1024 * 1024,
        min_free_disk_bytes: 512 * 1024 * 1024,
        health: HealthStatus {
            refusal: None,
            degraded: Vec::new(),
        },
        last_reload: Some(ReloadReport {
            at: "2026-11-27T01:50:00Z".to_owned(),
            ok: false,
            connectors: 5,
            n_problems: 2,
            first_problem: Some("/etc/ess/maps/new.yml:3:5: field STATUS has no width".to_owned()),
        }),
        connectors: vec![
            connector("city_hall_cobol", ConnectorState::Ok, Condition::Ok),
            ConnectorReport {
                lag_events: 50,
                oldest_pending_secs: Some(310.0),
                retry: Some(RetryReport {
                    seq: 1201,
                    attempts: 3,
                    max_tries: 20,
                    next_at: "2026-11-27T02:05:00Z".to_owned(),
                }),
                last_error: Some(ErrorReport {
                    message: "connect to 10.0.0.7:22: connection refused".to_owned(),
                    at: Some("2026-11-27T01:58:00Z".to_owned()),
                    seq: Some(1201),
                }),
                dead_letters: 2,
                dead_by_reason: BTreeMap::from([("map".to_owned(), 2)]),
                ..connector(
                    "court_docket_sftp",
                    ConnectorState::Retrying,
                    Condition::Retrying,
                )
            },
            ConnectorReport {
                lag_events: 7,
                oldest_pending_secs: Some(86_400.0),
                retry: Some(RetryReport {
                    seq: 1190,
                    attempts: 20,
                    max_tries: 20,
                    next_at: "2026-11-27T02:15:00Z".to_owned(),
                }),
                last_error: Some(ErrorReport {
                    message: "HTTP 400 from https://payroll.example/api: <b>bad</b> & \"worse\""
                        .to_owned(),
                    at: Some("2026-11-27T01:45:00Z".to_owned()),
                    seq: Some(1190),
                }),
                ..connector(
                    "payroll_<soap>",
                    ConnectorState::Blocked,
                    Condition::Blocked,
                )
            },
            ConnectorReport {
                lag_events: 40,
                oldest_pending_secs: Some(3600.0),
                ..connector(
                    "nightly_batch",
                    ConnectorState::OutsideSchedule {
                        next_open: Some("2026-11-28T06:00:00Z".to_owned()),
                    },
                    Condition::OutsideSchedule,
                )
            },
            ConnectorReport {
                dead_letters: 5,
                dead_by_reason: BTreeMap::from([
                    ("compliance".to_owned(), 1),
                    ("skipped".to_owned(), 4),
                ]),
                ..connector("permits_csv", ConnectorState::Ok, Condition::DeadLetters)
            },
            ConnectorReport {
                paused: Some(PauseReport {
                    at: "2026-11-27T01:30:00Z".to_owned(),
                    by: "alice (sudo), uid 0".to_owned(),
                    reason: "legacy maintenance window".to_owned(),
                }),
                ..connector("budget_feed", ConnectorState::Paused, Condition::Paused)
            },
            ConnectorReport {
                destination: None,
                since: None,
                ..connector(
                    "old_feed",
                    ConnectorState::NotRunning,
                    Condition::NotRunning,
                )
            },
        ],
        recent_actions: vec![
            ActionReport {
                id: 2,
                at: "2026-11-27T01:30:00Z".to_owned(),
                by: "alice (sudo), uid 0".to_owned(),
                target: "budget_feed".to_owned(),
                action: "pause".to_owned(),
                detail: "legacy maintenance window".to_owned(),
            },
            ActionReport {
                id: 1,
                at: "2026-11-27T01:20:00Z".to_owned(),
                by: "bob, uid 0".to_owned(),
                target: "permits_csv".to_owned(),
                action: "skip".to_owned(),
                detail: "seq 1180: <script>".to_owned(),
            },
        ],
        sources: Vec::new(),
    }
}

/// Starts the status server on an ephemeral port of 127.0.0.1 over `snapshot()`.
pub(crate) fn start(metrics: Metrics) -> (StatusServer, Arc<FakeSource>) {
    start_with(snapshot(), metrics)
}

/// Starts the status server on an ephemeral port of 127.0.0.1 over `snapshot`.
pub(crate) fn start_with(snapshot: Snapshot, metrics: Metrics) -> (StatusServer, Arc<FakeSource>) {
    let health = Mutex::new(snapshot.health.clone());
    let source = Arc::new(FakeSource { snapshot, health });
    let addr = "127.0.0.1:0".parse().expect("literal address");
    let server = ess::status::serve(addr, source.clone(), metrics).expect("status server starts");
    (server, source)
}
