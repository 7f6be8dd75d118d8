//! The HTTP target against real HTTP servers on loopback: REST (CSV, JSON) and SOAP 1.1 /
//! 1.2 endpoints with real responses and Faults, HTTPS with a private CA and a client
//! certificate, and injected faults (500s, 429, dropped connections, timeouts) showing that
//! records arrive in order and are acted on once per idempotency key.

#[path = "support/http.rs"]
mod http;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::TimeZone;
use ess::config::connector::{DeliverSpec, HttpDeliver, parse};
use ess::event::{Event, Record};
use ess::target::http::HttpTarget;
use ess::target::{Checkpoint, Delivery, DeliveryError, Target};
use http::{Answer, Endpoint, Fault, Handler, ok_json, pki};

fn event(seq: u64, record: &str) -> (Event, Record) {
    let event = Event {
        seq,
        event_type: "T".into(),
        payload: Default::default(),
        key: format!("key-{seq}"),
        trace_id: format!("{:032x}", 0xabc000 + seq).into(),
        ts: None,
        received_at: chrono::Utc::now(),
    };
    (
        event,
        Record {
            seq,
            bytes: record.as_bytes().to_vec(),
        },
    )
}

async fn deliver(
    t: &mut HttpTarget,
    items: &[(Event, Record)],
    ck: &[u8],
) -> Result<Checkpoint, DeliveryError> {
    let now = chrono_tz::UTC
        .with_ymd_and_hms(2025, 4, 12, 10, 0, 0)
        .unwrap();
    t.deliver(
        &Delivery {
            connector: "c",
            items,
            now,
            replay: false,
        },
        ck,
    )
    .await
}

fn spec(url: String) -> HttpDeliver {
    HttpDeliver {
        url,
        method: None,
        headers: Default::default(),
        soap_action: None,
        soap_version: None,
        body: None,
        ca: None,
        client_cert: None,
        client_key: None,
        timeout: Some("2s".into()),
    }
}

/// The `deliver:` of a map in `maps/`, pointed at `url`.
fn map_spec(name: &str, url: String) -> (HttpDeliver, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("maps")
        .join(name);
    let conn = parse(&path, &std::fs::read_to_string(&path).unwrap()).unwrap();
    let DeliverSpec::Http(mut spec) = conn.file.deliver.as_ref().unwrap().value.clone() else {
        panic!("{name} is not http")
    };
    spec.url = url;
    // The map's TLS files name the court's real CA and ESS's certificate; not in tests.
    (spec.ca, spec.client_cert, spec.client_key) = (None, None, None);
    let format = conn
        .file
        .format
        .map(|f| f.value)
        .unwrap_or_else(|| "fixed".into());
    (spec, format)
}

/// A tiny connector loop: each event in order, transient failures retried at once (the
/// real back-off lives in the connector), at most `max_tries` per event.
async fn run(
    t: &mut HttpTarget,
    items: &[(Event, Record)],
    max_tries: usize,
) -> (Checkpoint, Vec<DeliveryError>) {
    let mut ck = Vec::new();
    let mut errors = Vec::new();
    for item in items {
        let mut tries = 0;
        loop {
            tries += 1;
            match deliver(t, std::slice::from_ref(item), &ck).await {
                Ok(next) => {
                    ck = next;
                    break;
                }
                Err(e @ DeliveryError::Transient { .. }) if tries < max_tries => errors.push(e),
                Err(e) => panic!("seq {}: {e:?}", item.0.seq),
            }
        }
    }
    (ck, errors)
}

#[tokio::test]
async fn payroll_csv_rows_are_posted_in_order_with_their_keys() {
    let server = Endpoint::start(ok_json()).await;
    let (spec, format) = map_spec("payroll_fmis.yml", server.url("/api/v1/payroll/changes"));
    assert_eq!(format, "csv");
    let mut t = HttpTarget::new(&spec, Path::new("."), "payroll_fmis", &format).unwrap();
    assert_eq!(t.max_batch(), 1);
    let items: Vec<_> = (1..=3)
        .map(|s| event(s, &format!("E{s},G7,\"52,000.00\",2025-05-01\r\n")))
        .collect();
    run(&mut t, &items, 1).await;
    let seen = server.seen();
    assert_eq!(seen.len(), 3);
    for (s, (e, r)) in seen.iter().zip(&items) {
        assert_eq!(s.method, "POST");
        assert_eq!(s.header("content-type"), Some("text/csv"));
        assert_eq!(s.header("x-api-client"), Some("city-hall-ess"));
        assert_eq!(s.key(), e.key);
        assert_eq!(
            s.header("traceparent").unwrap(),
            format!("00-{}-{:016x}-01", e.trace_id, e.seq)
        );
        assert_eq!(s.body, r.bytes);
    }
}

#[tokio::test]
async fn json_body_template_and_custom_headers() {
    let server = Endpoint::start(ok_json()).await;
    let mut s = spec(server.url("/events"));
    s.method = Some("put".into());
    s.body = Some(r#"{"seq": {{seq}}, "type": "{{type}}", "data": {{record}}}"#.into());
    s.headers
        .insert("Authorization".into(), "Bearer t0k".into());
    let mut t = HttpTarget::new(&s, Path::new("."), "c", "json").unwrap();
    deliver(&mut t, &[event(9, r#"{"id":"BP-802"}"#)], &[])
        .await
        .unwrap();
    let seen = &server.seen()[0];
    assert_eq!(seen.method, "PUT");
    assert_eq!(seen.header("content-type"), Some("application/json"));
    assert_eq!(seen.header("authorization"), Some("Bearer t0k"));
    let body: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"seq": 9, "type": "T", "data": {"id": "BP-802"}})
    );
}

/// A docket service: answers UpdateCase with a real SOAP 1.1 response, and with a Fault
/// when the case is sealed. It reads the request with an XML parser like a real one.
fn docket() -> Handler {
    Arc::new(|seen| {
        let body = String::from_utf8_lossy(&seen.body).to_string();
        let mut reader = quick_xml::Reader::from_str(&body);
        let mut names = Vec::new();
        loop {
            match reader.read_event() {
                Ok(quick_xml::events::Event::Start(e)) => {
                    names.push(String::from_utf8_lossy(e.name().as_ref().as_bytes()).to_string())
                }
                Ok(quick_xml::events::Event::Eof) => break,
                Err(e) => return Answer::new(400, format!("bad XML: {e}")),
                _ => {}
            }
        }
        if names.first().map(String::as_str) != Some("soap:Envelope")
            || !names.iter().any(|n| n == "UpdateCase")
        {
            return Answer::new(400, format!("not an UpdateCase envelope: {names:?}"));
        }
        if body.contains("SEALED") {
            return Answer::new(
                500,
                r#"<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><soap:Fault><faultcode>soap:Client</faultcode><faultstring>Case CV-7 is sealed &amp; cannot be updated</faultstring></soap:Fault></soap:Body></soap:Envelope>"#,
            )
            .header("content-type", "text/xml; charset=utf-8");
        }
        Answer::new(
            200,
            r#"<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><UpdateCaseResponse xmlns="http://court.example.gov/docket"><Result>OK</Result></UpdateCaseResponse></soap:Body></soap:Envelope>"#,
        )
        .header("content-type", "text/xml; charset=utf-8")
    })
}

#[tokio::test]
async fn court_docket_soap_11_update_case_and_fault() {
    let server = Endpoint::start(docket()).await;
    let (spec, format) = map_spec("court_docket.yml", server.url("/CaseService.asmx"));
    assert_eq!(format, "soap");
    let mut t = HttpTarget::new(&spec, Path::new("."), "court_docket", &format).unwrap();
    let open = event(1, "<CaseNumber>CV-1</CaseNumber><Status>OPEN</Status>");
    let ck = deliver(&mut t, &[open], &[]).await.unwrap();
    let seen = &server.seen()[0];
    assert_eq!(seen.header("content-type"), Some("text/xml; charset=utf-8"));
    assert_eq!(
        seen.header("soapaction"),
        Some("\"http://court.example.gov/docket/UpdateCase\"")
    );
    let body = String::from_utf8(seen.body.clone()).unwrap();
    assert!(body.contains(r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><UpdateCase xmlns="http://court.example.gov/docket"><CaseNumber>CV-1</CaseNumber><Status>OPEN</Status><CorrelationId>key-1</CorrelationId></UpdateCase>"#), "{body}");

    let sealed = event(2, "<CaseNumber>CV-7</CaseNumber><Status>SEALED</Status>");
    let err = deliver(&mut t, &[sealed], &ck).await.unwrap_err();
    assert_eq!(
        err,
        DeliveryError::Permanent(format!(
            "http POST {}: seq 2: HTTP 500 Internal Server Error: SOAP Fault soap:Client: Case CV-7 is sealed & cannot be updated",
            server.url("/CaseService.asmx")
        ))
    );
    assert_eq!(server.applied().len(), 1);
}

#[tokio::test]
async fn soap_12_puts_the_action_in_the_content_type_and_reads_its_faults() {
    let fault12 = r#"<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope"><env:Body><env:Fault><env:Code><env:Value>env:Receiver</env:Value></env:Code><env:Reason><env:Text xml:lang="en">docket locked for audit</env:Text></env:Reason></env:Fault></env:Body></env:Envelope>"#;
    let server = Endpoint::start(Arc::new(move |seen: &http::Seen| {
        if String::from_utf8_lossy(&seen.body).contains("LOCK") { Answer::new(500, fault12) } else { Answer::new(200, "<env:Envelope xmlns:env=\"http://www.w3.org/2003/05/soap-envelope\"><env:Body/></env:Envelope>") }
    }))
    .await;
    let mut s = spec(server.url("/soap12"));
    s.soap_version = Some("1.2".into());
    s.soap_action = Some("urn:UpdateCase".into());
    let mut t = HttpTarget::new(&s, Path::new("."), "c", "soap").unwrap();
    deliver(
        &mut t,
        &[event(1, "<UpdateCase><Id>1</Id></UpdateCase>")],
        &[],
    )
    .await
    .unwrap();
    let seen = &server.seen()[0];
    assert_eq!(
        seen.header("content-type"),
        Some("application/soap+xml; charset=utf-8; action=\"urn:UpdateCase\"")
    );
    assert_eq!(seen.header("soapaction"), None);
    assert!(String::from_utf8_lossy(&seen.body).contains("<soap:Envelope xmlns:soap=\"http://www.w3.org/2003/05/soap-envelope\"><soap:Body><UpdateCase><Id>1</Id></UpdateCase></soap:Body>"));
    let err = deliver(
        &mut t,
        &[event(2, "<UpdateCase><Id>LOCK</Id></UpdateCase>")],
        &[],
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, DeliveryError::Permanent(m) if m.ends_with("SOAP Fault env:Receiver: docket locked for audit")),
        "{err:?}"
    );
}

#[tokio::test]
async fn faults_are_retried_and_each_key_is_acted_on_once_in_order() {
    let server = Endpoint::start(ok_json()).await;
    let mut s = spec(server.url("/in"));
    s.timeout = Some("500ms".into());
    let mut t = HttpTarget::new(&s, Path::new("."), "c", "json").unwrap();
    server.inject([
        Fault::Answer(Answer::new(500, "db down")),
        Fault::Drop,
        // Acted on, but the answer never comes: the retry must not act a second time.
        Fault::ApplyThenHang,
        Fault::Answer(Answer::new(429, "slow down").header("retry-after", "7")),
        Fault::Answer(Answer::new(503, "maintenance")),
        Fault::Drop,
    ]);
    let items: Vec<_> = (1..=5)
        .map(|s| event(s, &format!("{{\"n\":{s}}}")))
        .collect();
    let (ck, errors) = run(&mut t, &items, 10).await;
    let applied = server.applied();
    let want: Vec<_> = items
        .iter()
        .map(|(e, r)| (e.key.clone(), r.bytes.clone()))
        .collect();
    assert_eq!(applied, want, "each record acted on once, in order");
    assert_eq!(server.seen().len(), 5 + 6, "every fault cost one retry");
    assert_eq!(errors.len(), 6);
    let retry_after: Vec<_> = errors
        .iter()
        .map(|e| match e {
            DeliveryError::Transient { retry_after, .. } => *retry_after,
            DeliveryError::Permanent(_) => unreachable!(),
        })
        .collect();
    assert!(
        retry_after.contains(&Some(Duration::from_secs(7))),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.to_string().contains("timed out")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e
            .to_string()
            .contains("HTTP 500 Internal Server Error: db down")),
        "{errors:?}"
    );
    // A re-delivery of an acknowledged record (a crash before the ledger commit, or a
    // replay) is sent again with the same key, and the receiver does not act twice.
    let before = server.seen().len();
    deliver(&mut t, &items[4..], &ck).await.unwrap();
    assert_eq!(server.seen().len(), before + 1);
    assert_eq!(server.seen().last().unwrap().key(), "key-5");
    assert_eq!(server.applied(), want);
}

#[tokio::test]
async fn client_errors_are_permanent_and_servers_down_are_transient() {
    let server = Endpoint::start(Arc::new(|_: &http::Seen| {
        Answer::new(422, "field ssn is not allowed")
    }))
    .await;
    let mut t = HttpTarget::new(&spec(server.url("/x")), Path::new("."), "c", "csv").unwrap();
    let err = deliver(&mut t, &[event(1, "a,b\n")], &[])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DeliveryError::Permanent(m) if m.ends_with("HTTP 422 Unprocessable Entity: field ssn is not allowed")),
        "{err:?}"
    );

    let moved = Endpoint::start(Arc::new(|_: &http::Seen| {
        Answer::new(308, "").header("location", "https://new.example/x")
    }))
    .await;
    let mut t = HttpTarget::new(&spec(moved.url("/x")), Path::new("."), "c", "csv").unwrap();
    let err = deliver(&mut t, &[event(1, "a,b\n")], &[])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DeliveryError::Permanent(m) if m.contains("redirected to https://new.example/x") && m.contains("HTTP 308")),
        "{err:?}"
    );

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut t = HttpTarget::new(
        &spec(format!("http://{closed}/x")),
        Path::new("."),
        "c",
        "csv",
    )
    .unwrap();
    let err = deliver(&mut t, &[event(1, "a,b\n")], &[])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DeliveryError::Transient { message, .. } if message.contains("cannot connect")),
        "{err:?}"
    );
}

#[tokio::test]
async fn new_reports_every_problem_of_the_spec() {
    let mut s = spec("ftp://x/".into());
    s.method = Some("GET".into());
    s.body = Some("{{field:NAME}}".into());
    s.client_cert = Some("c.pem".into());
    s.soap_action = Some("urn:x".into());
    s.timeout = Some("fast".into());
    s.headers.insert("Idempotency-Key".into(), "mine".into());
    let err = HttpTarget::new(&s, Path::new("."), "c", "json").unwrap_err();
    for want in [
        "http:// or https://",
        "GET",
        "unknown placeholder {{field:NAME}}",
        "client_cert and client_key",
        "need `format: soap`",
        "header Idempotency-Key is set by ESS",
        "timeout",
    ] {
        assert!(err.contains(want), "{want:?} missing in {err}");
    }
    let mut s = spec("https://h/".into());
    s.ca = Some("no-such-ca.pem".into());
    assert!(
        HttpTarget::new(&s, Path::new("/nonexistent"), "c", "json")
            .unwrap_err()
            .contains("no-such-ca.pem")
    );
}

#[tokio::test]
async fn https_with_a_private_ca_and_a_client_certificate() {
    let pki = pki();
    let server = Endpoint::start_with(ok_json(), Some(pki.server.clone())).await;
    let url = format!("https://127.0.0.1:{}/in", server.addr.port());
    let mut s = spec(url.clone());
    s.ca = Some("ca.pem".into());
    s.client_cert = Some("client.pem".into());
    s.client_key = Some("client.key".into());
    let mut t = HttpTarget::new(&s, pki.dir.path(), "c", "json").unwrap();
    deliver(&mut t, &[event(1, "{}")], &[]).await.unwrap();
    let cert = server.seen()[0]
        .client_cert
        .clone()
        .expect("client certificate presented");
    let (_, parsed) = x509_parser::parse_x509_certificate(&cert).unwrap();
    assert_eq!(
        parsed
            .subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap(),
        "ess-client"
    );

    // Without the client certificate the server refuses the handshake: no request arrives.
    let mut s2 = s.clone();
    (s2.client_cert, s2.client_key) = (None, None);
    let mut t = HttpTarget::new(&s2, pki.dir.path(), "c", "json").unwrap();
    assert!(matches!(
        deliver(&mut t, &[event(2, "{}")], &[]).await,
        Err(DeliveryError::Transient { .. })
    ));
    // With the system roots, the private CA is not trusted.
    let mut s3 = s.clone();
    s3.ca = None;
    let mut t = HttpTarget::new(&s3, pki.dir.path(), "c", "json").unwrap();
    let err = deliver(&mut t, &[event(3, "{}")], &[]).await.unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    assert_eq!(server.seen().len(), 1);
}
