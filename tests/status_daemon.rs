//! `DaemonStatus` over a real redb feed and ledger: the snapshot shows what the ledger and
//! the connector tasks hold (cursor, lag, retries, dead letters, schedule), the metrics hooks
//! record what the ingest and connectors report, and the page serves it.

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use ess::connector::{self, Hooks, Live, Phase};
use ess::event::{Event, Record};
use ess::feed::{self, Feed, NewEvent};
use ess::ingest::IngestHooks;
use ess::ledger::{DeadLetter, Ledger, RetryState};
use ess::state::{Connectors, Reader, Running};
use ess::status::{ConnectorState, DaemonStatus, Metrics, StatusSource};

const MAP: &str = "\
target: NAME
events: [PERMIT_STATUS]
format: fixed
fields:
  PERMIT_ID: id | width:10
deliver:
  kind: file
  dir: ../out
  file: NAME.txt
  mode: append
";

fn new_event(i: u64) -> NewEvent {
    let payload = serde_json::json!({"id": format!("BP-{i}")});
    NewEvent {
        event_type: "PERMIT_STATUS".to_owned(),
        payload: payload.as_object().unwrap().clone(),
        key: format!("key-{i}"),
        trace_id: format!("trace-{i}"),
        ts: None,
    }
}

#[test]
fn snapshot_reflects_feed_ledger_and_live_state() {
    let dir = tempfile::tempdir().unwrap();
    let maps = dir.path().join("maps");
    std::fs::create_dir_all(&maps).unwrap();
    let mut specs = Vec::new();
    for name in ["city_hall_cobol", "nightly_batch"] {
        let path = maps.join(format!("{name}.yml"));
        std::fs::write(&path, MAP.replace("NAME", name)).unwrap();
        specs.push(Arc::new(
            connector::load_one(&path, chrono_tz::UTC).expect("map loads"),
        ));
    }
    let db_path = dir.path().join("ess.redb");
    let db = feed::Store::from(feed::open_database(&db_path).unwrap());
    let feed = Feed::open(db.clone()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let outcome = runtime
        .block_on(feed.append((1..=5).map(new_event).collect()))
        .unwrap();
    assert_eq!(outcome.last_seq, Some(5));

    // city_hall_cobol delivered 1-2, parked 3, and is retrying 4; nightly_batch never ran.
    let ledger = Ledger::new(db.clone());
    let now = Utc::now();
    ledger.ensure_cursor("city_hall_cobol", 0).unwrap();
    let parked = DeadLetter {
        reason: "map".to_owned(),
        message: "missing field id".to_owned(),
        at_micros: now.timestamp_micros(),
        attempts: 1,
    };
    ledger
        .commit_progress("city_hall_cobol", 3, Vec::new(), 2, &[(3, parked)], now)
        .unwrap();
    let next_at = Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5).unwrap();
    let retry = RetryState {
        seq: 4,
        attempts: 2,
        next_at_micros: next_at.timestamp_micros(),
        last_error: "disk full (ledger)".to_owned(),
    };
    ledger.record_failure("city_hall_cobol", &retry).unwrap();

    let next_open = Utc.with_ymd_and_hms(2030, 1, 3, 6, 0, 0).unwrap();
    let env = connector::Env {
        feed: feed.clone(),
        ledger: ledger.clone(),
        timezone: chrono_tz::UTC,
        hooks: Arc::new(Metrics::new()),
        wake: tokio::sync::watch::channel(0).1,
    };
    let mut running = Vec::new();
    for (spec, phase) in [
        (&specs[0], Phase::Retrying),
        (&specs[1], Phase::OutsideSchedule),
    ] {
        let runner = connector::Runner::new(spec.clone(), env.clone()).unwrap();
        let mut live = Live::default();
        live.set_phase(phase, Utc::now());
        live.next_open = Some(next_open);
        *runner.live.lock().unwrap() = live;
        running.push(Running {
            spec: spec.clone(),
            live: runner.live.clone(),
            handle: runner.handle(),
        });
    }
    let store = Arc::new(Reader::shared(db.clone(), &db_path));
    let connectors = Arc::new(Connectors::new(store.clone()));
    connectors.set(running);
    connectors.reloaded(false, 2, &["maps/x.yml:1:1: broken".to_owned()]);
    let health = Arc::new(ess::health::Health::new(dir.path().to_owned(), 1024));
    let status = DaemonStatus::new(
        connectors.clone(),
        feed.clone(),
        dir.path().to_owned(),
        1024,
        Duration::from_secs(900),
        health.clone(),
    );
    let snapshot = status.snapshot().unwrap();
    assert_eq!(status.health().refusal, None);
    assert_eq!(snapshot.version, env!("CARGO_PKG_VERSION"));
    assert!(snapshot.running);
    assert_eq!(snapshot.feed.last_seq, 5);
    assert_eq!(
        snapshot.feed.size_bytes,
        std::fs::metadata(&db_path).unwrap().len()
    );
    assert!(snapshot.free_disk_bytes > 0);
    assert_eq!(snapshot.min_free_disk_bytes, 1024);
    assert!(!snapshot.disk_low());
    let reload = snapshot.last_reload.as_ref().unwrap();
    assert_eq!(
        (reload.ok, reload.first_problem.as_deref()),
        (false, Some("maps/x.yml:1:1: broken"))
    );

    let cobol = &snapshot.connectors[0];
    assert_eq!(cobol.name, "city_hall_cobol");
    assert_eq!(cobol.state, ConnectorState::Retrying);
    assert_eq!((cobol.cursor, cobol.lag_events, cobol.delivered), (3, 2, 2));
    assert!(
        cobol.oldest_pending_secs.is_some_and(|s| s >= 0.0),
        "{:?}",
        cobol.oldest_pending_secs
    );
    let r = cobol.retry.as_ref().unwrap();
    assert_eq!((r.seq, r.attempts), (4, 2));
    assert_eq!(r.next_at, "2030-01-02T03:04:05Z");
    assert_eq!(
        cobol.last_error.as_ref().unwrap().message,
        "seq 3 parked (map): missing field id"
    );
    assert_eq!(cobol.dead_letters, 1);
    assert!(cobol.last_success.is_some());
    assert!(
        cobol
            .destination
            .as_deref()
            .unwrap()
            .ends_with("out/city_hall_cobol.txt (append)")
    );

    let nightly = &snapshot.connectors[1];
    assert_eq!(
        nightly.state,
        ConnectorState::OutsideSchedule {
            next_open: Some("2030-01-03T06:00:00Z".to_owned())
        }
    );
    assert_eq!(
        (nightly.cursor, nightly.lag_events, nightly.delivered),
        (0, 5, 0)
    );
    assert!(nightly.retry.is_none() && nightly.dead_letters == 0);
    assert_eq!(
        (nightly.last_success.as_deref(), nightly.last_error.as_ref()),
        (None, None)
    );
    let text = ess::status::render_text(&snapshot);
    assert!(
        text.contains("city_hall_cobol") && text.contains("missing field id"),
        "{text}"
    );
    // Blocked for longer than status.blocked_alarm: degraded, naming it and since when.
    assert!(status.health().degraded.is_empty());
    {
        let running = connectors.running();
        let mut live = running[0].live.lock().unwrap();
        live.phase = Phase::Idle;
        live.set_phase(Phase::Blocked, Utc::now() - chrono::Duration::minutes(20));
    }
    let degraded = status.health().degraded;
    assert_eq!(degraded.len(), 1, "{degraded:?}");
    assert!(
        degraded[0].starts_with("city_hall_cobol blocked for 20 min (since "),
        "{degraded:?}"
    );
    // Ingest refusing shows in /healthz's answer and the snapshot alike.
    health.set_shutting_down();
    assert_eq!(status.health().refusal.as_deref(), Some("shutting down"));
    assert_eq!(
        status.snapshot().unwrap().health.refusal.as_deref(),
        Some("shutting down")
    );

    feed.close();
}

#[test]
fn metrics_hooks_record_ingest_and_deliveries() {
    let metrics = Metrics::new();
    IngestHooks::accepted(&metrics, 3, 1, Duration::from_millis(2));
    IngestHooks::rejected(&metrics, "too_large");
    let received_at = Utc::now() - chrono::Duration::seconds(30);
    let event = |seq| Event {
        seq,
        event_type: "PERMIT_STATUS".to_owned(),
        payload: Default::default(),
        key: format!("k{seq}"),
        trace_id: format!("t{seq}").into(),
        ts: None,
        received_at,
    };
    let batch: Vec<(Event, Record)> = (1..=2)
        .map(|seq| {
            (
                event(seq),
                Record {
                    seq,
                    bytes: b"x\n".to_vec(),
                },
            )
        })
        .collect();
    Hooks::delivered(&metrics, "city_hall_cobol", &batch);
    Hooks::failed(
        &metrics,
        "city_hall_cobol",
        &ess::target::DeliveryError::Transient {
            message: "refused".to_owned(),
            retry_after: None,
        },
    );

    let mut snapshot = ess::status::Snapshot {
        feed: ess::status::FeedStatus {
            last_seq: 3,
            ..status_fixture_feed()
        },
        ..empty_snapshot()
    };
    snapshot.connectors.clear();
    let text = metrics.render(&snapshot);
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let value = |name: &str, label: Option<(&str, &str)>| {
        let s = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"));
        match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{name}: {other:?}"),
        }
    };
    assert_eq!(value("ess_ingest_events_total", None), 3.0);
    assert_eq!(value("ess_ingest_duplicates_total", None), 1.0);
    assert_eq!(
        value("ess_ingest_rejected_total", Some(("reason", "too_large"))),
        1.0
    );
    assert_eq!(value("ess_ingest_latency_seconds_count", None), 1.0);
    let target = Some(("target", "city_hall_cobol"));
    assert_eq!(value("ess_success_total", target), 2.0);
    assert_eq!(value("ess_delivery_failures_total", target), 1.0);
    assert_eq!(value("ess_delivery_latency_seconds_count", target), 2.0);
    let sum = value("ess_delivery_latency_seconds_sum", target);
    assert!((60.0..70.0).contains(&sum), "two events 30 s old: {sum}");
}

fn status_fixture_feed() -> ess::status::FeedStatus {
    ess::status::FeedStatus {
        first_seq: None,
        last_seq: 0,
        events: 0,
        size_bytes: 1,
        received_last_minute: 0,
        received_last_hour: 0,
    }
}

fn empty_snapshot() -> ess::status::Snapshot {
    ess::status::Snapshot {
        version: "t".to_owned(),
        running: true,
        uptime_secs: Some(1),
        feed: status_fixture_feed(),
        ingest_rate_per_sec: Some(0.0),
        free_disk_bytes: 1,
        min_free_disk_bytes: 0,
        health: ess::status::HealthStatus {
            refusal: None,
            degraded: Vec::new(),
        },
        last_reload: None,
        connectors: Vec::new(),
        recent_actions: Vec::new(),
        sources: Vec::new(),
    }
}
