//! The ingest API driven through the real binary over real mutual TLS (SPEC §5, issue #2).

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use ess::client::Client;
use serde_json::json;
use support::*;

#[test]
fn seed_event_becomes_the_exact_line_once_even_after_resends_and_a_restart() {
    let mut app = Appliance::init();
    app.start();
    let rt = rt();
    let mut c = app.client();
    let a = rt
        .block_on(c.post_events(ess::init::SEED_EVENT, false))
        .unwrap();
    assert_eq!(a.status, 202, "{:?}", a.body);
    assert_eq!(
        a.json(),
        json!({"accepted": 1, "duplicates": 0, "first_seq": 1, "last_seq": 1})
    );
    wait_until("the seed line", Duration::from_secs(30), || {
        app.read_out("permit.txt") == SEED_LINE
    });

    let again = rt
        .block_on(c.post_events(ess::init::SEED_EVENT, false))
        .unwrap();
    assert_eq!(again.json()["duplicates"], 1);
    assert_eq!(app.terminate().code(), Some(0), "SIGTERM exits 0");

    app.start();
    let mut c = app.client();
    let after_restart = rt
        .block_on(c.post_events(ess::init::SEED_EVENT, false))
        .unwrap();
    assert_eq!(
        after_restart.json(),
        json!({"accepted": 0, "duplicates": 1, "first_seq": null, "last_seq": null})
    );
    let keyed = rt
        .block_on(c.post_events(permit_event("BP-900").to_string(), false))
        .unwrap();
    assert_eq!(keyed.json()["first_seq"], 2);
    wait_until("the second line", Duration::from_secs(30), || {
        app.read_out("permit.txt") == format!("{SEED_LINE}{}", permit_line("BP-900"))
    });
    let receipt = rt.block_on(c.receipt("key-BP-900")).unwrap();
    assert_eq!(receipt.status, 200);
    assert_eq!(receipt.json()["seq"], 2);
    // The line is in the file (fsynced) a moment before the cursor commit says delivered.
    wait_until(
        "the receipt to say delivered",
        Duration::from_secs(30),
        || {
            rt.block_on(c.receipt("key-BP-900")).unwrap().json()["targets"]
                == json!({"city_hall_cobol": "delivered"})
        },
    );
    assert_eq!(rt.block_on(c.receipt("no-such-key")).unwrap().status, 404);
}

#[test]
fn tls_refusals_never_let_an_event_in_and_the_server_keeps_serving() {
    let mut app = Appliance::init();
    let ca = install_pki(&app);
    app.start();
    let rt = rt();
    let body = permit_event("REFUSED").to_string();
    let ids = app.tmp.path();

    // No client certificate at all.
    let mut anonymous = Client::new(&app.url(), &app.tls("ca.crt"), None).unwrap();
    let r = rt.block_on(anonymous.post_events(body.clone(), false));
    assert!(r.is_err(), "an anonymous client got an answer: {r:?}");

    // A certificate from another CA, with the allowed name.
    let other = ess::init::Ca::new("Other CA")
        .unwrap()
        .issue_client("codifyhq-dev")
        .unwrap();
    let (c, k) = write_identity(ids, "other", &other);
    let mut stranger = Client::new(&app.url(), &app.tls("ca.crt"), Some((&c, &k))).unwrap();
    let r = rt.block_on(stranger.post_events(body.clone(), false));
    assert!(r.is_err(), "a client of another CA got an answer: {r:?}");

    // A valid certificate whose name is not in allowed_clients.
    let intruder = ca.issue_client("intruder").unwrap();
    let (c, k) = write_identity(ids, "intruder", &intruder);
    let mut not_allowed = Client::new(&app.url(), &app.tls("ca.crt"), Some((&c, &k))).unwrap();
    let r = rt
        .block_on(not_allowed.post_events(body.clone(), false))
        .unwrap();
    assert_eq!(r.status, 403);

    // TLS 1.1 is refused by the server (the client is told to allow it); TLS 1.2 works.
    let s_client = |version: &str| {
        let mut child = std::process::Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &app.ingest.unwrap().to_string(),
                version,
                "-cipher",
                "DEFAULT@SECLEVEL=0",
            ])
            .arg("-cert")
            .arg(app.tls("client.crt"))
            .arg("-key")
            .arg(app.tls("client.key"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("openssl is installed");
        drop(child.stdin.take());
        child.wait_with_output().unwrap()
    };
    let old = s_client("-tls1_1");
    assert!(
        !old.status.success(),
        "TLS 1.1 handshake succeeded: {}",
        String::from_utf8_lossy(&old.stdout)
    );
    let modern = s_client("-tls1_2");
    assert!(
        String::from_utf8_lossy(&modern.stdout).contains("TLSv1.2"),
        "control: TLS 1.2 must work"
    );

    // Nothing got in; the server still serves an allowed client.
    let mut good = app.client();
    let ok = rt
        .block_on(good.post_events(permit_event("GOOD").to_string(), false))
        .unwrap();
    assert_eq!(ok.json()["first_seq"], 1, "no refused event took a seq");
    wait_until("the good line", Duration::from_secs(30), || {
        app.read_out("permit.txt") == permit_line("GOOD")
    });
}

#[test]
fn bad_input_is_refused_whole_with_index_and_field_and_the_server_keeps_serving() {
    let mut app = Appliance::init();
    app.edit_config("max_body: 8MiB", "max_body: 4KiB");
    app.start();
    let rt = rt();
    let mut c = app.client();

    let mut bad_type = permit_event("B3");
    bad_type["type"] = json!("no spaces allowed");
    let batch = json!([permit_event("B1"), permit_event("B2"), bad_type]).to_string();
    let r = rt.block_on(c.post_events(batch, false)).unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(
        (r.json()["index"].clone(), r.json()["field"].clone()),
        (json!(2), json!("type"))
    );

    let nd = format!(
        "{}\n{{\"type\":\"A\",\"payload\":[1]}}\n",
        permit_event("N1")
    );
    let r = rt.block_on(c.post_events(nd, true)).unwrap();
    assert_eq!(
        (
            r.status.as_u16(),
            r.json()["index"].clone(),
            r.json()["field"].clone()
        ),
        (400, json!(1), json!("payload"))
    );

    let r = rt.block_on(c.post_events("{not json", false)).unwrap();
    assert_eq!(r.status, 400);

    let r = rt
        .block_on(c.request(
            hyper::Method::POST,
            "/v1/events",
            Some("text/plain"),
            permit_event("T").to_string().into(),
        ))
        .unwrap();
    assert_eq!(r.status, 415);

    let big = json!([permit_event("BIG"), {"type": "X", "payload": {"pad": "x".repeat(5000)}}])
        .to_string();
    let r = rt.block_on(c.post_events(big, false)).unwrap();
    assert_eq!(r.status, 413);

    // Malformed HTTP inside a good TLS session: answered 400 or closed, never a crash.
    let mut raw = raw_tls(&app);
    raw.write_all(b"THIS IS NOT HTTP\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = raw.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );

    // The server still serves, and nothing of a rejected request was committed.
    let mut c = app.client();
    let ok = rt
        .block_on(c.post_events(permit_event("OK").to_string(), false))
        .unwrap();
    assert_eq!(ok.json()["first_seq"], 1);
    wait_until("the good line", Duration::from_secs(30), || {
        app.read_out("permit.txt") == permit_line("OK")
    });
}

#[test]
fn silent_or_slow_clients_are_disconnected() {
    let mut app = Appliance::init();
    app.start();
    // A TCP client that never starts TLS.
    let mut tcp = std::net::TcpStream::connect(app.ingest.unwrap()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    // A TLS client that never sends a request.
    let mut tls = raw_tls(&app);
    tls.conn.complete_io(&mut tls.sock).unwrap();
    let mut buf = [0u8; 64];
    let n = tcp
        .read(&mut buf)
        .expect("server closes, it does not leave us hanging");
    assert_eq!(n, 0, "closed without data");
    let r = tls.read(&mut buf);
    assert!(
        matches!(r, Ok(0))
            || r.as_ref()
                .is_err_and(|e| e.kind() != std::io::ErrorKind::WouldBlock),
        "{r:?}"
    );
    // And it still serves.
    let rt = rt();
    let ok = rt
        .block_on(
            app.client()
                .post_events(permit_event("AFTER").to_string(), false),
        )
        .unwrap();
    assert_eq!(ok.status, 202);
}

#[test]
fn low_disk_answers_503_with_retry_after_and_stores_nothing() {
    let mut app = Appliance::init();
    app.edit_config("min_free_disk: 512MiB", "min_free_disk: 1000000TiB");
    app.start();
    let rt = rt();
    let mut c = app.client();
    let r = rt
        .block_on(c.post_events(permit_event("FULL").to_string(), false))
        .unwrap();
    assert_eq!(r.status, 503);
    assert!(r.retry_after.is_some());
    assert_eq!(rt.block_on(c.receipt("key-FULL")).unwrap().status, 404);
}
