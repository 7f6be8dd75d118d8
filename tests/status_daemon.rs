//! `DaemonStatus` over a real redb feed and ledger: the snapshot shows what the ledger and
//! the connector tasks hold (cursor, lag, retries, dead letters, schedule), the metrics hooks
//! record what the ingest and connectors report, and the page serves it.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use ess::connector::{self, Hooks, Live, Phase};
use ess::event::{Event, Record};
use ess::feed::{self, Feed, NewEvent};
use ess::ingest::IngestHooks;
use ess::ledger::{DeadLetter, Ledger, RetryState};
use ess::serve::Connectors;
use ess::status::{ConnectorState, DaemonStatus, Metrics, StatusSource, connector_status};

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
    let db = Arc::new(feed::open_database(&db_path).unwrap());
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

    let retrying = Live {
        phase: Phase::Retrying,
        last_error: Some("disk full (live)".to_owned()),
        next_attempt: Some(next_at),
        next_open: None,
    };
    let next_open = Utc.with_ymd_and_hms(2030, 1, 3, 6, 0, 0).unwrap();
    let outside = Live {
        phase: Phase::OutsideSchedule,
        next_open: Some(next_open),
        ..Live::default()
    };
    let connectors = Arc::new(Connectors {
        specs: RwLock::new(vec![
            (specs[0].clone(), Arc::new(Mutex::new(retrying))),
            (specs[1].clone(), Arc::new(Mutex::new(outside))),
        ]),
        ledger: ledger.clone(),
    });
    let status = DaemonStatus::new(
        connectors,
        feed.clone(),
        dir.path().to_owned(),
        db_path.clone(),
        1024,
        Arc::new(ess::health::Health::new(dir.path().to_owned(), 1024)),
    );
    let snapshot = status.snapshot();
    assert!(status.healthy());
    assert_eq!(snapshot.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(snapshot.feed.last_seq, 5);
    assert_eq!(
        snapshot.feed.size_bytes,
        std::fs::metadata(&db_path).unwrap().len()
    );
    assert!(snapshot.free_disk_bytes > 0);
    assert_eq!(snapshot.min_free_disk_bytes, 1024);
    assert!(!snapshot.disk_low());

    let cobol = &snapshot.connectors[0];
    assert_eq!(cobol.name, "city_hall_cobol");
    assert_eq!(cobol.state, ConnectorState::Retrying);
    assert_eq!((cobol.cursor, cobol.lag_events, cobol.delivered), (3, 2, 2));
    assert!(
        cobol.lag_secs.is_some_and(|s| s >= 0.0),
        "{:?}",
        cobol.lag_secs
    );
    assert_eq!(cobol.retry_pending, 2);
    assert_eq!(cobol.next_retry_at.as_deref(), Some("2030-01-02T03:04:05Z"));
    assert_eq!(cobol.last_error.as_deref(), Some("disk full (live)"));
    assert_eq!(cobol.dead_letters, 1);
    assert!(cobol.last_success.is_some());

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
    assert_eq!((nightly.retry_pending, nightly.dead_letters), (0, 0));
    assert_eq!(
        (
            nightly.last_success.as_deref(),
            nightly.last_error.as_deref()
        ),
        (None, None)
    );

    // Without a daemon (ess stats on a read-only database) the ledger alone decides.
    let offline = connector_status(&*db, "city_hall_cobol", None, 5, Utc::now());
    assert_eq!(offline.state, ConnectorState::Retrying);
    assert_eq!(offline.last_error.as_deref(), Some("disk full (ledger)"));
    let text = ess::status::render_text(&snapshot);
    assert!(
        text.contains("city_hall_cobol") && text.contains("disk full (live)"),
        "{text}"
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
        payload: serde_json::Map::new(),
        key: format!("k{seq}"),
        trace_id: format!("t{seq}"),
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

    let snapshot = ess::status::Snapshot {
        version: "t".to_owned(),
        uptime_secs: 1,
        feed: ess::status::FeedStatus {
            last_seq: 3,
            size_bytes: 1,
            ingest_rate_per_sec: 0.0,
        },
        free_disk_bytes: 1,
        min_free_disk_bytes: 0,
        connectors: Vec::new(),
    };
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
