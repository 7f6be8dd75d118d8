//! Issue 15, point 3: memory is bounded by configuration, not by load. Request bodies in
//! flight share `ingest.max_inflight_bytes`; a request that does not fit is answered 503 +
//! `Retry-After` at once and nothing of it is committed. (The RSS bound under 64
//! concurrent maximum-size bodies is measured by `cargo bench --bench inflight`.)

mod support;

use std::io::Write;

use serde_json::json;
use support::*;

/// One permit event padded so that the whole JSON array body is exactly `len` bytes.
fn body_of_len(id: &str, len: usize) -> String {
    let mut ev = permit_event(id);
    ev["payload"]["pad"] = json!("");
    let bare = json!([ev]).to_string().len();
    assert!(bare <= len);
    ev["payload"]["pad"] = json!("x".repeat(len - bare));
    let body = json!([ev]).to_string();
    assert_eq!(body.len(), len);
    body
}

/// `head` with an `Expect: 100-continue` header.
fn expect_continue(head: String) -> String {
    head.replacen("\r\n", "\r\nExpect: 100-continue\r\n", 1)
}

fn headers(len: Option<usize>) -> String {
    let framing = match len {
        Some(n) => format!("Content-Length: {n}\r\n"),
        None => "Transfer-Encoding: chunked\r\n".to_string(),
    };
    format!(
        "POST /v1/events HTTP/1.1\r\nHost: ess\r\nContent-Type: application/json\r\n{framing}\r\n"
    )
}

#[test]
fn bodies_over_max_inflight_bytes_get_503_with_retry_after_and_nothing_is_committed() {
    let mut app = Appliance::init();
    app.edit_config(
        "max_body: 8MiB",
        "max_body: 64KiB\n  max_inflight_bytes: 128KiB",
    );
    app.start();
    let rt = rt();
    let len = 60_000;

    // Two clients announce 60,000-byte bodies: together they hold 120,000 of the 131,072
    // bytes. They ask `Expect: 100-continue`, so the server's "100 Continue" tells us it
    // has reserved their bytes; they then send only their first bytes and wait.
    let held: Vec<(_, String)> = ["HELD-1", "HELD-2"]
        .iter()
        .map(|id| {
            let body = body_of_len(id, len);
            let mut s = raw_tls(&app);
            s.write_all(expect_continue(headers(Some(len))).as_bytes())
                .unwrap();
            s.flush().unwrap();
            let (status, head, _) = read_response(&mut s).expect("an answer");
            assert_eq!(status, 100, "{head}");
            s.write_all(&body.as_bytes()[..100]).unwrap();
            s.flush().unwrap();
            (s, body)
        })
        .collect();

    // A third maximum-size body does not fit: 503 + Retry-After, not committed; its
    // connection goes on (the body was read to its end and thrown away).
    let mut c = app.client();
    let r = rt
        .block_on(c.post_events(body_of_len("OVER", len), false))
        .unwrap();
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert!(r.retry_after.is_some(), "503 without Retry-After");
    let error = r.json()["error"].as_str().unwrap().to_string();
    assert!(error.contains("max_inflight_bytes"), "{error}");
    assert_eq!(
        rt.block_on(c.receipt("key-OVER")).unwrap().status,
        404,
        "a refused request was committed"
    );

    // One that asks `Expect: 100-continue` is refused before it sends its body.
    let mut waiting = raw_tls(&app);
    waiting
        .write_all(expect_continue(headers(Some(len))).as_bytes())
        .unwrap();
    waiting.flush().unwrap();
    let (status, head, _) = read_response(&mut waiting).expect("an answer");
    assert_eq!(status, 503, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );

    // A chunked body is charged as it grows: it fits at first and is refused once its
    // buffer would pass what is left.
    let mut chunked = raw_tls(&app);
    chunked.write_all(headers(None).as_bytes()).unwrap();
    let chunk_body = body_of_len("CHUNKED", 30_000);
    let (first, rest) = chunk_body.as_bytes().split_at(1_000);
    for part in [first, rest] {
        let _ = chunked.write_all(format!("{:x}\r\n", part.len()).as_bytes());
        let _ = chunked.write_all(part);
        let _ = chunked.write_all(b"\r\n");
    }
    let _ = chunked.write_all(b"0\r\n\r\n");
    let (status, head, _) = read_response(&mut chunked).expect("an answer");
    assert_eq!(status, 503, "{head}");
    assert!(head.to_ascii_lowercase().contains("retry-after:"), "{head}");
    assert_eq!(rt.block_on(c.receipt("key-CHUNKED")).unwrap().status, 404);

    // The held requests finish and are taken; the budget is given back.
    for (mut s, body) in held {
        s.write_all(&body.as_bytes()[100..]).unwrap();
        let (status, _, answer) = read_response(&mut s).expect("an answer");
        assert_eq!(status, 202, "{answer}");
    }
    for id in ["AFTER-1", "AFTER-2"] {
        let r = rt
            .block_on(c.post_events(body_of_len(id, len), false))
            .unwrap();
        assert_eq!(r.status, 202, "the budget was not given back: {:?}", r.body);
    }
    for id in ["HELD-1", "HELD-2", "AFTER-1", "AFTER-2"] {
        assert_eq!(
            rt.block_on(c.receipt(&format!("key-{id}"))).unwrap().status,
            200
        );
    }
}

#[test]
fn max_inflight_bytes_below_max_body_is_refused_at_start_with_its_position() {
    let app = Appliance::init();
    app.edit_config(
        "max_body: 8MiB",
        "max_body: 8MiB\n  max_inflight_bytes: 1MiB",
    );
    let (code, out, err) = ess(&["check", "--config", app.config.to_str().unwrap()], None);
    assert_eq!(code, 2, "{err}");
    let err = format!("{out}{err}");
    assert!(
        err.contains(
            "ess.yml:12:23: ingest.max_inflight_bytes (1048576 bytes) must be at least max_body"
        ),
        "{err}"
    );
}

/// Starts an appliance with `max_body` and posts a permit event whose `status` is one
/// 10 MB value: the appliance and the answer.
fn post_a_10_mb_value(max_body: &str) -> (Appliance, ess::client::Answer) {
    let mut app = Appliance::init();
    app.edit_config("max_body: 8MiB", &format!("max_body: {max_body}"));
    app.start();
    let mut ev = permit_event("HUGE");
    ev["payload"]["status"] = json!("A".repeat(10 << 20));
    let r = rt()
        .block_on(app.client().post_events(ev.to_string(), false))
        .unwrap();
    (app, r)
}

/// The next event is delivered: the daemon is up and its connector goes on.
fn the_next_event_flows(app: &Appliance) {
    app.send_ids(&["AFTER"]);
    wait_until("the next event", std::time::Duration::from_secs(30), || {
        app.read_out("permit.txt") == permit_line("AFTER")
    });
}

#[test]
fn a_10_mb_field_value_is_refused_413_naming_max_body_and_others_flow() {
    let (app, r) = post_a_10_mb_value("8MiB");
    assert_eq!(r.status, 413, "{:?}", r.body);
    let error = r.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("max_body (8388608 bytes)"), "{error}");
    let receipt = rt().block_on(app.client().receipt("key-HUGE")).unwrap();
    assert_eq!(receipt.status, 404, "nothing committed");
    the_next_event_flows(&app);
}

#[test]
fn a_10_mb_field_value_within_max_body_is_parked_as_too_wide_naming_the_field() {
    let (mut app, r) = post_a_10_mb_value("16MiB");
    assert_eq!(r.status, 202, "{:?}", r.body);
    the_next_event_flows(&app);
    let cfg = app.config.to_str().unwrap().to_string();
    let mut listed = String::new();
    wait_until(
        "the dead letter",
        std::time::Duration::from_secs(30),
        || {
            listed = ess(&["list", "--config", &cfg, "--dead", "--json"], None).1;
            listed.contains("key-HUGE")
        },
    );
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let message = listed["entries"][0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("STATUS")
            && message.contains(&format!(
                "value is {} characters, longer than width 10",
                10 << 20
            )),
        "{message}"
    );
    assert_eq!(app.terminate().code(), Some(0), "the daemon stayed up");
}
