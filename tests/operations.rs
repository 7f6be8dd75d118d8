//! Operations on the real binary (issue #4): replay of a range, dead letters, stats and
//! backup through the admin socket, SIGHUP reloads.

mod support;

use std::time::Duration;

use support::*;

fn send(app: &Appliance, ids: &[&str]) {
    let rt = rt();
    let body =
        serde_json::Value::Array(ids.iter().map(|id| permit_event(id)).collect()).to_string();
    let a = rt.block_on(app.client().post_events(body, false)).unwrap();
    assert_eq!(a.status, 202, "{:?}", a.body);
}

fn lines(ids: &[&str]) -> String {
    ids.iter().map(|id| permit_line(id)).collect()
}

#[test]
fn replay_of_a_range_appends_exactly_that_range_and_stats_and_backup_answer() {
    let mut app = Appliance::init();
    app.start();
    let cfg = app.config.to_str().unwrap().to_string();
    send(&app, &["R1", "R2", "R3", "R4"]);
    wait_until("four lines", Duration::from_secs(30), || {
        app.read_out("permit.txt") == lines(&["R1", "R2", "R3", "R4"])
    });
    // The records are in the file before the cursor commit that follows them: a replay
    // asked in between would find nothing behind the cursor yet.
    wait_until("the cursor at 4", Duration::from_secs(30), || {
        let (_, out, _) = ess(&["stats", "--config", &cfg, "--json"], None);
        serde_json::from_str::<serde_json::Value>(&out)
            .is_ok_and(|s| s["connectors"][0]["cursor"] == 4)
    });

    let (code, out, err) = ess(
        &[
            "replay",
            "--config",
            &cfg,
            "--target",
            "city_hall_cobol",
            "--from",
            "2",
            "--to",
            "3",
        ],
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    wait_until("the replayed range", Duration::from_secs(30), || {
        app.read_out("permit.txt") == lines(&["R1", "R2", "R3", "R4", "R2", "R3"])
    });
    send(&app, &["R5"]);
    wait_until(
        "new events after the replay",
        Duration::from_secs(30),
        || app.read_out("permit.txt") == lines(&["R1", "R2", "R3", "R4", "R2", "R3", "R5"]),
    );

    let (code, out, _) = ess(&["stats", "--config", &cfg, "--json"], None);
    assert_eq!(code, 0);
    let stats: serde_json::Value = serde_json::from_str(&out).unwrap();
    let text = stats.to_string();
    assert!(text.contains("city_hall_cobol"), "{text}");

    let backup = app.tmp.path().join("backup.redb");
    let (code, out, err) = ess(
        &["backup", "--config", &cfg, "--to", backup.to_str().unwrap()],
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    let db = ess::feed::open_database_read_only(&backup).unwrap();
    let events = ess::feed::read_after(&db, 0, 100).unwrap();
    assert_eq!(events.len(), 5);
    let (code, _, _) = ess(
        &["backup", "--config", &cfg, "--to", backup.to_str().unwrap()],
        None,
    );
    assert_ne!(code, 0, "a backup never overwrites a file");
    assert_eq!(app.terminate().code(), Some(0));
}

#[test]
fn an_unmappable_event_is_a_dead_letter_listed_and_replayable() {
    let mut app = Appliance::init();
    app.start();
    let cfg = app.config.to_str().unwrap().to_string();
    send(&app, &["D1", "MUCH-TOO-LONG-ID", "D3"]);
    wait_until("the mappable lines", Duration::from_secs(30), || {
        app.read_out("permit.txt") == lines(&["D1", "D3"])
    });
    // The file is fsynced a moment before the ledger commit that also parks the event.
    let mut out = String::new();
    wait_until("the dead letter", Duration::from_secs(30), || {
        out = ess(&["list", "--config", &cfg, "--dead", "--json"], None).1;
        out.contains("city_hall_cobol") && out.contains("\"map\"")
    });
    // Receipts tell the same story, per connector.
    let rt = rt();
    let mut c = app.client();
    let receipt = rt
        .block_on(c.receipt("key-MUCH-TOO-LONG-ID"))
        .unwrap()
        .json();
    assert_eq!(receipt["targets"]["city_hall_cobol"], "dead");
    let other = serde_json::json!({"type": "BUDGET_LINE", "idempotency_key": "budget-1", "payload": {"id": "B1"}});
    rt.block_on(c.post_events(other.to_string(), false))
        .unwrap();
    let receipt = rt.block_on(c.receipt("budget-1")).unwrap().json();
    assert_eq!(receipt["targets"]["city_hall_cobol"], "filtered");
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let message = listed["entries"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("width") && !message.contains("MUCH-TOO-LONG"),
        "dead letters show no payload values: {message}"
    );
    let (code, out, err) = ess(
        &[
            "replay",
            "--config",
            &cfg,
            "--target",
            "city_hall_cobol",
            "--dead",
        ],
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    // Still unmappable: parked again, nothing written, the connector goes on.
    send(&app, &["D4"]);
    wait_until("the next line", Duration::from_secs(30), || {
        app.read_out("permit.txt") == lines(&["D1", "D3", "D4"])
    });
    wait_until("the event parked again", Duration::from_secs(30), || {
        ess(&["list", "--config", &cfg, "--dead", "--json"], None)
            .1
            .contains("\"map\"")
    });
}

#[test]
fn sighup_refuses_an_invalid_map_set_and_starts_a_new_connector() {
    let mut app = Appliance::init();
    app.start();
    send(&app, &["H1"]);
    wait_until("first line", Duration::from_secs(30), || {
        app.read_out("permit.txt") == lines(&["H1"])
    });
    let broken = app.dir.join("maps/broken.yml");
    std::fs::write(
        &broken,
        "target: broken\nfields: {A: x}\ndeliver: {kind: nowhere}\n",
    )
    .unwrap();
    app.signal(libc::SIGHUP);
    wait_until("the refusal in the log", Duration::from_secs(30), || {
        app.stderr().contains("new maps refused")
    });
    send(&app, &["H2"]);
    wait_until(
        "the old connector keeps going",
        Duration::from_secs(30),
        || app.read_out("permit.txt") == lines(&["H1", "H2"]),
    );

    std::fs::remove_file(&broken).unwrap();
    let copy = std::fs::read_to_string(app.dir.join("maps/permit_map.yml"))
        .unwrap()
        .replace("target: city_hall_cobol", "target: copy_desk")
        .replace("file: permit.txt", "file: copy.txt")
        .replace("start: earliest", "");
    std::fs::write(app.dir.join("maps/copy.yml"), copy).unwrap();
    app.signal(libc::SIGHUP);
    // A new connector starts at the beginning of the feed (start: earliest by default).
    wait_until("the new connector's file", Duration::from_secs(30), || {
        app.read_out("copy.txt") == lines(&["H1", "H2"])
    });
    send(&app, &["H3"]);
    wait_until("both files", Duration::from_secs(30), || {
        app.read_out("copy.txt") == lines(&["H1", "H2", "H3"])
            && app.read_out("permit.txt") == lines(&["H1", "H2", "H3"])
    });
    assert_eq!(app.terminate().code(), Some(0));
}
