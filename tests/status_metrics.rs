//! `/metrics` parsed with a Prometheus text-format parser: the values recorded through
//! `Metrics` and the gauges of the snapshot come back as sent, with SPEC §6's names.

#[path = "support/status_fixture.rs"]
mod status_fixture;

use ess::status::{Metrics, REJECT_REASONS};
use prometheus_parse::{HistogramCount, Sample, Scrape, Value};

fn scrape(addr: std::net::SocketAddr) -> Scrape {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let text = runtime.block_on(async {
        let response = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .expect("scrape");
        assert_eq!(response.status(), 200);
        response.text().await.expect("body")
    });
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("valid Prometheus text")
}

/// The label set selecting one target's series.
fn of(target: &str) -> [(&str, &str); 1] {
    [("target", target)]
}

/// The one sample named `name` whose labels include `labels`.
fn sample<'a>(scrape: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> &'a Sample {
    let found: Vec<&Sample> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect();
    assert_eq!(found.len(), 1, "{name}{labels:?}: {found:?}");
    found[0]
}

fn number(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    match sample(scrape, name, labels).value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
        ref other => panic!("{name}: not a number: {other:?}"),
    }
}

fn histogram<'a>(scrape: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> &'a [HistogramCount] {
    match &sample(scrape, name, labels).value {
        Value::Histogram(buckets) => buckets,
        other => panic!("{name}: not a histogram: {other:?}"),
    }
}

/// Observations counted by the first bucket whose bound is `le` or above (buckets are
/// cumulative, so that is the smallest count among them).
fn at_most(buckets: &[HistogramCount], le: f64) -> f64 {
    buckets
        .iter()
        .filter(|b| b.less_than >= le)
        .map(|b| b.count)
        .reduce(f64::min)
        .expect("a bucket bound at or above le")
}

#[test]
fn metrics_carry_what_was_recorded() {
    let metrics = Metrics::new();
    let (server, _source) = status_fixture::start(metrics.clone());

    // Before anything happens every rejection reason is already there, at 0.
    let before = scrape(server.local_addr());
    for reason in REJECT_REASONS {
        assert_eq!(
            number(&before, "ess_ingest_rejected_total", &[("reason", reason)]),
            0.0
        );
    }
    assert_eq!(number(&before, "ess_ingest_events_total", &[]), 0.0);

    // Record from several threads through clones, as the ingest and connector tasks do.
    std::thread::scope(|s| {
        for _ in 0..4 {
            let m = metrics.clone();
            s.spawn(move || {
                m.ingest_accepted(25);
                m.ingest_duplicates(1);
                m.observe_ingest_latency(0.003);
                m.delivered("city_hall_cobol", 10);
                m.observe_delivery_latency("city_hall_cobol", 0.5);
            });
        }
    });
    // A connector's cached handles record into the same series.
    let cobol = metrics.for_target("city_hall_cobol");
    cobol.delivered(5);
    cobol.observe_delivery_latency(30.0);
    cobol.delivery_failed();
    metrics.ingest_rejected("too_large");
    metrics.ingest_rejected("too_large");
    metrics.ingest_rejected("forbidden");
    metrics.observe_ingest_latency(2.0);
    metrics.delivered("court_docket_sftp", 3);
    metrics.observe_delivery_latency("court_docket_sftp", 600.0);
    for _ in 0..3 {
        metrics.delivery_failed("court_docket_sftp");
    }

    let after = scrape(server.local_addr());
    assert_eq!(number(&after, "ess_ingest_events_total", &[]), 100.0);
    assert_eq!(number(&after, "ess_ingest_duplicates_total", &[]), 4.0);
    assert_eq!(
        number(
            &after,
            "ess_ingest_rejected_total",
            &[("reason", "too_large")]
        ),
        2.0
    );
    assert_eq!(
        number(
            &after,
            "ess_ingest_rejected_total",
            &[("reason", "forbidden")]
        ),
        1.0
    );
    assert_eq!(
        number(
            &after,
            "ess_ingest_rejected_total",
            &[("reason", "bad_request")]
        ),
        0.0
    );
    assert_eq!(
        number(&after, "ess_success_total", &of("city_hall_cobol")),
        45.0
    );
    assert_eq!(
        number(&after, "ess_success_total", &of("court_docket_sftp")),
        3.0
    );
    assert_eq!(
        number(
            &after,
            "ess_delivery_failures_total",
            &of("court_docket_sftp")
        ),
        3.0
    );

    assert_eq!(
        number(
            &after,
            "ess_delivery_failures_total",
            &of("city_hall_cobol")
        ),
        1.0
    );

    // Histograms: counts, sums and where the observations fell.
    assert_eq!(number(&after, "ess_ingest_latency_seconds_count", &[]), 5.0);
    let sum = number(&after, "ess_ingest_latency_seconds_sum", &[]);
    assert!((sum - 2.012).abs() < 1e-9, "{sum}");
    let ingest = histogram(&after, "ess_ingest_latency_seconds", &[]);
    assert_eq!(at_most(ingest, 0.004), 4.0, "{ingest:?}");
    assert_eq!(at_most(ingest, f64::INFINITY), 5.0);
    let cobol = histogram(
        &after,
        "ess_delivery_latency_seconds",
        &of("city_hall_cobol"),
    );
    assert_eq!(at_most(cobol, 0.64), 4.0, "{cobol:?}");
    assert_eq!(at_most(cobol, f64::INFINITY), 5.0, "{cobol:?}");
    let sftp = histogram(
        &after,
        "ess_delivery_latency_seconds",
        &of("court_docket_sftp"),
    );
    assert_eq!(at_most(sftp, 163.84), 0.0, "{sftp:?}");
    assert_eq!(at_most(sftp, 655.36), 1.0, "{sftp:?}");

    // Gauges from the snapshot (see status_fixture::snapshot).
    assert_eq!(number(&after, "ess_feed_last_seq", &[]), 1250.0);
    assert_eq!(
        number(&after, "ess_feed_size_bytes", &[]),
        3.0 * 1024.0 * 1024.0
    );
    assert_eq!(
        number(&after, "ess_free_disk_bytes", &[]),
        40.0 * 1024.0 * 1024.0 * 1024.0
    );
    assert_eq!(number(&after, "ess_uptime_seconds", &[]), 93_784.0);
    assert_eq!(
        number(&after, "ess_retry_pending", &of("court_docket_sftp")),
        3.0
    );
    assert_eq!(
        number(&after, "ess_retry_pending", &of("city_hall_cobol")),
        0.0
    );
    assert_eq!(
        number(&after, "ess_dead_letters", &of("court_docket_sftp")),
        2.0
    );
    assert_eq!(number(&after, "ess_dead_letters", &of("permits_csv")), 5.0);
    assert_eq!(number(&after, "ess_lag_events", &of("nightly_batch")), 40.0);
    assert_eq!(
        number(&after, "ess_oldest_pending_seconds", &of("nightly_batch")),
        3600.0
    );
    assert_eq!(number(&after, "ess_lag_events", &of("payroll_<soap>")), 7.0);
    // One state series per connector and state: 1 for its state, 0 for the others.
    let state = |t: &str, s: &str| {
        number(
            &after,
            "ess_connector_state",
            &[("target", t), ("state", s)],
        )
    };
    assert_eq!(state("payroll_<soap>", "blocked"), 1.0);
    assert_eq!(state("payroll_<soap>", "ok"), 0.0);
    assert_eq!(state("budget_feed", "paused"), 1.0);
    for s in ess::status::STATES {
        let want = if s == "ok" { 1.0 } else { 0.0 };
        assert_eq!(state("city_hall_cobol", s), want, "{s}");
    }
    // The process series a Prometheus dashboard expects.
    assert!(number(&after, "process_resident_memory_bytes", &[]) > 0.0);
    assert!(number(&after, "process_open_fds", &[]) > 0.0);
    assert!(number(&after, "process_start_time_seconds", &[]) > 1.5e9);
    assert!(number(&after, "process_cpu_seconds_total", &[]) >= 0.0);

    server.stop();
}

#[test]
fn every_series_exists_from_the_start_at_zero() {
    let (server, _source) = status_fixture::start(Metrics::new());
    let first = scrape(server.local_addr());
    for c in status_fixture::snapshot().connectors {
        assert_eq!(
            number(&first, "ess_success_total", &of(&c.name)),
            0.0,
            "{}",
            c.name
        );
        assert_eq!(
            number(&first, "ess_delivery_failures_total", &of(&c.name)),
            0.0
        );
        assert_eq!(
            number(&first, "ess_dead_letters", &of(&c.name)),
            c.dead_letters as f64
        );
    }
    server.stop();
}

#[test]
fn promtool_accepts_the_metrics() {
    let metrics = Metrics::new();
    let text = metrics.render(&status_fixture::snapshot());
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs (apt-get install prometheus; CI's .ci/run does)");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "promtool check metrics:\n{said}\n{text}"
    );
    assert!(
        said.trim().is_empty(),
        "promtool has remarks (lint):\n{said}"
    );
}

#[test]
fn removed_connectors_leave_no_stale_gauges() {
    let metrics = Metrics::new();
    let mut snapshot = status_fixture::snapshot();
    let parse = |text: String| Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let full = parse(metrics.render(&snapshot));
    assert_eq!(number(&full, "ess_lag_events", &of("nightly_batch")), 40.0);

    snapshot.connectors.retain(|c| c.name != "nightly_batch");
    let reduced = parse(metrics.render(&snapshot));
    assert!(
        !reduced
            .samples
            .iter()
            .any(|s| s.labels.get("target") == Some("nightly_batch")),
        "nightly_batch still exported after removal"
    );
    assert_eq!(
        number(&reduced, "ess_lag_events", &of("court_docket_sftp")),
        50.0
    );
}
