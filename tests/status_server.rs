//! The status server over real HTTP on 127.0.0.1: every route, its status code, content type
//! and content; methods other than GET/HEAD; HTML escaping; health switching; clean stop.

#[path = "support/status_fixture.rs"]
mod status_fixture;

use std::time::{Duration, Instant};

use ess::status::Metrics;
use reqwest::{Client, Method, StatusCode};

async fn fetch(client: &Client, method: Method, url: &str) -> (StatusCode, String, String) {
    let response = client
        .request(method, url)
        .send()
        .await
        .expect("request answered");
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().expect("ascii content type").to_owned())
        .unwrap_or_default();
    let body = response.text().await.expect("body read");
    (status, content_type, body)
}

#[tokio::test]
async fn every_route_answers() {
    let (server, source) = status_fixture::start(Metrics::new());
    let base = format!("http://{}", server.local_addr());
    let client = Client::new();

    let (status, content_type, html) = fetch(&client, Method::GET, &format!("{base}/")).await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "text/html; charset=utf-8");
    assert!(html.starts_with("<!DOCTYPE html>"), "{html}");
    assert!(
        html.contains(r#"<meta http-equiv="refresh" content="5">"#),
        "{html}"
    );
    assert!(html.contains(r#"name="viewport""#));
    assert!(!html.contains("<script"), "no JavaScript on the page");
    for name in [
        "city_hall_cobol",
        "court_docket_sftp",
        "nightly_batch",
        "permits_csv",
        "budget_feed",
        "old_feed",
    ] {
        assert!(html.contains(name), "{name} missing");
    }
    for badge in [
        "ok",
        "retrying",
        "blocked",
        "outside schedule",
        "dead letters",
        "paused",
        "not running",
    ] {
        assert!(
            html.contains(&format!(">{badge}</span>")),
            "badge {badge} missing"
        );
    }
    // Strings from the source are escaped, never interpreted as markup.
    assert!(
        html.contains("payroll_&lt;soap&gt;"),
        "connector name escaped"
    );
    assert!(
        html.contains("&lt;b&gt;bad&lt;/b&gt; &amp; &quot;worse&quot;"),
        "error escaped"
    );
    assert!(!html.contains("<soap>") && !html.contains("<b>bad"));
    assert!(
        html.contains("3 of 7 connectors need attention"),
        "summary line"
    );
    assert!(html.contains("connection refused"), "last error shown");
    assert!(
        html.contains("50 events, oldest 5 min 10 s old"),
        "lag in events and time"
    );
    // Where each delivers, what to do, why the reload was refused, who did what.
    assert!(html.contains("file /var/spool/ess/out/city_hall_cobol.txt (append)"));
    assert!(
        html.contains("ess retry --target court_docket_sftp"),
        "retry hint"
    );
    assert!(
        html.contains("ess skip --target payroll_&lt;soap&gt; --seq 1190"),
        "skip hint"
    );
    assert!(
        html.contains("ess resume --target budget_feed"),
        "resume hint"
    );
    assert!(
        html.contains("5 (compliance 1, skipped 4)"),
        "dead letters by reason"
    );
    assert!(html.contains("was refused with 2 problem(s)") && html.contains("new.yml:3:5"));
    assert!(html.contains("legacy maintenance window") && html.contains("alice (sudo)"));
    assert!(
        html.contains("seq 1180: &lt;script&gt;"),
        "action detail escaped"
    );
    assert!(html.contains("1 d 2 h"), "uptime");
    assert!(
        html.contains("3.0 MiB") && html.contains("40.0 GiB") && html.contains("12.5 events/s")
    );

    let (status, content_type, text) =
        fetch(&client, Method::GET, &format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    assert!(text.contains("ess_feed_last_seq 1250"), "{text}");

    let (status, content_type, json) =
        fetch(&client, Method::GET, &format!("{base}/api/status")).await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "application/json");
    let json: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    assert_eq!(json["version"], "0.1.0");
    assert_eq!(json["feed"]["last_seq"], 1250);
    let connectors = json["connectors"].as_array().expect("connectors array");
    assert_eq!(connectors.len(), 7);
    let states: Vec<&str> = connectors
        .iter()
        .map(|c| c["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        [
            "ok",
            "retrying",
            "blocked",
            "outside_schedule",
            "ok",
            "paused",
            "not_running"
        ]
    );
    // The headline the page shows is in the JSON too (the badge and the API agree).
    assert_eq!(connectors[4]["condition"], "dead_letters");
    assert_eq!(connectors[3]["next_open"], "2026-11-28T06:00:00Z");
    assert_eq!(connectors[1]["retry"]["attempts"], 3);
    assert_eq!(connectors[1]["oldest_pending_secs"], 310.0);
    assert_eq!(connectors[4]["dead_letters"], 5);
    assert_eq!(
        json,
        serde_json::to_value(status_fixture::snapshot()).unwrap()
    );
    // A client (ess stats) reads the JSON back into the same Snapshot.
    let back: ess::status::Snapshot = serde_json::from_value(json).expect("JSON reads back");
    assert_eq!(back, status_fixture::snapshot());

    let (status, _, body) = fetch(&client, Method::GET, &format!("{base}/healthz")).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "ok\n"));
    source.set_health(
        None,
        &["payroll blocked for 20 min (since 2026-11-27T01:40:00Z)"],
    );
    let (status, _, body) = fetch(&client, Method::GET, &format!("{base}/healthz")).await;
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (
            200,
            "degraded: payroll blocked for 20 min (since 2026-11-27T01:40:00Z)\n"
        )
    );
    source.set_health(
        Some("free disk space (1 bytes) is below min_free_disk (2 bytes)"),
        &[],
    );
    let (status, _, body) = fetch(&client, Method::GET, &format!("{base}/healthz")).await;
    assert_eq!(status, 503);
    assert!(body.starts_with("unavailable: free disk space"), "{body}");
    let (_, _, html) = fetch(&client, Method::GET, &format!("{base}/")).await;
    assert!(
        html.contains("The ingest refuses events (503): free disk space"),
        "{html}"
    );

    // A query string does not change the route.
    let (status, _, _) = fetch(&client, Method::GET, &format!("{base}/?refresh=1")).await;
    assert_eq!(status, 200);

    server.stop();
}

#[tokio::test]
async fn low_disk_is_shown_on_the_page_and_in_metrics() {
    let mut snapshot = status_fixture::snapshot();
    snapshot.free_disk_bytes = 100 * 1024 * 1024;
    let (server, _source) = status_fixture::start_with(snapshot, Metrics::new());
    let base = format!("http://{}", server.local_addr());
    let client = Client::new();
    let (_, _, html) = fetch(&client, Method::GET, &format!("{base}/")).await;
    assert!(
        html.contains("Free disk 100.0 MiB is below the minimum of 512.0 MiB: the ingest refuses events (503)."),
        "{html}"
    );
    assert!(html.contains(r#"<div class="stat low">"#), "{html}");
    let (_, _, metrics) = fetch(&client, Method::GET, &format!("{base}/metrics")).await;
    assert!(
        metrics.contains("ess_free_disk_bytes 104857600\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ess_min_free_disk_bytes 536870912\n"),
        "{metrics}"
    );
    server.stop();
}

#[tokio::test]
async fn head_answers_without_body() {
    let (server, _source) = status_fixture::start(Metrics::new());
    let client = Client::new();
    for path in ["/", "/metrics", "/api/status", "/healthz"] {
        let (status, _, body) = fetch(
            &client,
            Method::HEAD,
            &format!("http://{}{path}", server.local_addr()),
        )
        .await;
        assert_eq!(status, 200, "{path}");
        assert!(body.is_empty(), "{path}: {body}");
    }
    server.stop();
}

#[tokio::test]
async fn writes_and_unknown_paths_are_refused() {
    let (server, _source) = status_fixture::start(Metrics::new());
    let base = format!("http://{}", server.local_addr());
    let client = Client::new();
    for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
        for path in ["/", "/metrics", "/api/status", "/healthz"] {
            let response = client
                .request(method.clone(), format!("{base}{path}"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 405, "{method} {path}");
            assert_eq!(response.headers()["allow"], "GET, HEAD");
        }
    }
    for path in [
        "/nope",
        "/api",
        "/metrics/",
        "/../etc/passwd",
        "/index.html",
    ] {
        let (status, _, _) = fetch(&client, Method::GET, &format!("{base}{path}")).await;
        assert_eq!(status, 404, "{path}");
    }
    server.stop();
}

#[test]
fn stop_closes_the_listener() {
    let (server, _source) = status_fixture::start(Metrics::new());
    let addr = server.local_addr();
    std::net::TcpStream::connect(addr).expect("listening before stop");
    server.stop();
    // tiny_http closes its listening socket on its own accept thread once the server is
    // dropped; wait (bounded) until connections are refused.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_ok() {
        assert!(
            Instant::now() < deadline,
            "still accepting on {addr} after stop"
        );
        std::thread::yield_now();
    }
}

#[test]
fn binding_a_busy_port_is_a_clear_error() {
    let (server, _source) = status_fixture::start(Metrics::new());
    let err = ess::status::serve(
        server.local_addr(),
        std::sync::Arc::new(status_fixture::FakeSource {
            snapshot: status_fixture::snapshot(),
            health: std::sync::Mutex::new(status_fixture::snapshot().health),
        }),
        Metrics::new(),
    )
    .expect_err("port is taken");
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    assert!(
        err.to_string().contains(&server.local_addr().to_string()),
        "{err}"
    );
    server.stop();
}

#[tokio::test]
async fn malformed_requests_do_not_stop_the_server() {
    use std::io::{Read, Write};
    let (server, _source) = status_fixture::start(Metrics::new());
    let addr = server.local_addr();
    let garbage: [&[u8]; 4] = [
        b"\x00\x01\x02 not http at all\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"GET /\xff\xfe HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x", // cut off before the end of the headers
    ];
    for bytes in garbage {
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.write_all(bytes).unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        // Whatever the answer (an error status, a lenient 200 or a closed connection),
        // read it to the end.
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
    }
    let (status, _, _) = fetch(
        &Client::new(),
        Method::GET,
        &format!("http://{addr}/healthz"),
    )
    .await;
    assert_eq!(status, 200);
    server.stop();
}

/// A source with a bug: every snapshot panics.
struct PanickingSource;

impl ess::status::StatusSource for PanickingSource {
    fn snapshot(&self) -> Result<ess::status::Snapshot, ess::state::Error> {
        panic!("bug in the source (expected by this test)");
    }
    fn health(&self) -> ess::status::HealthStatus {
        ess::status::HealthStatus {
            refusal: None,
            degraded: Vec::new(),
        }
    }
}

#[tokio::test]
async fn a_panicking_source_costs_one_500_not_the_server() {
    let addr = "127.0.0.1:0".parse().unwrap();
    let server =
        ess::status::serve(addr, std::sync::Arc::new(PanickingSource), Metrics::new()).unwrap();
    let base = format!("http://{}", server.local_addr());
    let client = Client::new();
    // More requests than worker threads: every one is answered.
    for _ in 0..5 {
        for path in ["/", "/metrics", "/api/status"] {
            let (status, _, _) = fetch(&client, Method::GET, &format!("{base}{path}")).await;
            assert_eq!(status, 500, "{path}");
        }
    }
    let (status, _, _) = fetch(&client, Method::GET, &format!("{base}/healthz")).await;
    assert_eq!(status, 200);
    server.stop();
}
