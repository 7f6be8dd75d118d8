//! Issue 15, points 1 and 7, through the real binary: no payload value forges, splits or
//! shortens a record (a line end or another control character is an error for that event,
//! parked with reason `map`, unless the field opts in with `control:`), and numbers written
//! as text keep the characters they were sent with.

use std::time::Duration;

use serde_json::json;

mod support;
use support::{Appliance, ess, permit_line, rt, wait_until};

fn post(app: &Appliance, events: &[serde_json::Value]) {
    let body = serde_json::Value::Array(events.to_vec()).to_string();
    let answer = rt()
        .block_on(app.client().post_events(body, false))
        .unwrap();
    assert_eq!(answer.status, 202, "{:?}", answer.body);
}

fn permit(key: &str, id: &str) -> serde_json::Value {
    json!({
        "type": "PERMIT_STATUS",
        "idempotency_key": key,
        "payload": {"id": id, "status": "APPROVED", "updated_at": "2025-04-12T10:03:00Z"}
    })
}

fn dead_letters(app: &Appliance) -> Vec<serde_json::Value> {
    let cfg = app.config.to_str().unwrap();
    let (_, out, _) = ess(&["list", "--config", cfg, "--dead", "--json"], None);
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    listed["entries"].as_array().cloned().unwrap_or_default()
}

#[test]
fn issue_15_a_line_end_in_a_payload_value_never_forges_a_record() {
    let mut app = Appliance::init();
    app.start();
    let forged = "X\nFAKE-1  APPROVED  20250412100300";
    post(
        &app,
        &[
            permit("k-1", "GOOD-1"),
            permit("k-2", forged),
            permit("k-3", "CR\rX"),
            permit("k-4", "NUL\u{0}X"),
            permit("k-5", "NEL\u{85}X"),
            permit("k-6", "GOOD-2"),
        ],
    );
    wait_until("the good records", Duration::from_secs(30), || {
        app.read_out("permit.txt") == permit_line("GOOD-1") + &permit_line("GOOD-2")
    });
    let mut dead = Vec::new();
    wait_until("four dead letters", Duration::from_secs(30), || {
        dead = dead_letters(&app);
        dead.len() == 4
    });
    for d in &dead {
        let message = d["message"].as_str().unwrap_or_default();
        assert_eq!(d["reason"], "map", "{d}");
        assert!(
            message.contains("PERMIT_ID") && message.contains("control character"),
            "the field and the problem are named: {message}"
        );
        for value in ["FAKE", "CR", "NUL", "NEL"] {
            assert!(!message.contains(value), "no value quoted: {message}");
        }
    }
    let file = std::fs::read(app.out_path("permit.txt")).unwrap();
    assert_eq!(file.len(), 2 * 35);
    assert!(
        file.chunks(35)
            .all(|r| r.iter().position(|&b| b == b'\n') == Some(34))
    );
}

#[test]
fn issue_15_a_field_that_opts_in_replaces_or_keeps_control_characters() {
    let mut app = Appliance::init();
    app.edit_map(
        "PERMIT_ID: id | width:10",
        "PERMIT_ID: id | width:10 | control:replace:\" \"",
    );
    app.edit_map(
        "STATUS   : status | width:10",
        "STATUS   : {from: status, width: 10, control: allow}",
    );
    // The seed's golden cases expect the default (a line end refused).
    std::fs::remove_file(app.dir.join("maps/permit_map.test.yml")).unwrap();
    let (code, out, err) = ess(&["check", "--config", app.config.to_str().unwrap()], None);
    assert_eq!(code, 0, "{out}{err}");
    app.start();
    post(
        &app,
        &[json!({
            "type": "PERMIT_STATUS",
            "idempotency_key": "k-1",
            "payload": {"id": "A\nB\u{0}C", "status": "OK\tNOW", "updated_at": "2025-04-12T10:03:00Z"}
        })],
    );
    wait_until("the record", Duration::from_secs(30), || {
        app.read_out("permit.txt") == "A B C     OK\tNOW    20250412100300\n"
    });
}

#[test]
fn issue_15_a_control_option_that_is_not_understood_is_refused_by_check() {
    let app = Appliance::init();
    app.edit_map(
        "PERMIT_ID: id | width:10",
        "PERMIT_ID: id | width:10 | control:strip",
    );
    let (code, out, err) = ess(&["check", "--config", app.config.to_str().unwrap()], None);
    assert_eq!(code, 2, "{out}{err}");
    let text = format!("{out}{err}");
    assert!(
        text.contains("permit_map.yml:") && text.contains("control"),
        "a file:line:col diagnostic about control: {text}"
    );
}

#[test]
fn issue_15_numbers_written_as_text_keep_the_characters_they_were_sent_with() {
    let mut app = Appliance::init();
    app.edit_map("STATUS   : status | width:10", "STATUS   : fee | width:10");
    app.start();
    let body = r#"[{"type":"PERMIT_STATUS","idempotency_key":"n-1","payload":{"id":"N-1","fee":1E2,"updated_at":"2025-04-12T10:03:00Z"}},
                   {"type":"PERMIT_STATUS","idempotency_key":"n-2","payload":{"id":"N-2","fee":19.990,"updated_at":"2025-04-12T10:03:00Z"}},
                   {"type":"PERMIT_STATUS","idempotency_key":"n-3","payload":{"id":"N-3","fee":-0.0e-0,"updated_at":"2025-04-12T10:03:00Z"}}]"#;
    let answer = rt()
        .block_on(app.client().post_events(body.to_string(), false))
        .unwrap();
    assert_eq!(answer.status, 202, "{:?}", answer.body);
    wait_until("the records", Duration::from_secs(30), || {
        app.read_out("permit.txt")
            == "N-1       1E2       20250412100300\n\
                N-2       19.990    20250412100300\n\
                N-3       -0.0e-0   20250412100300\n"
    });
}
