//! Logs (SPEC §6, issue #5): with `log.format: json`, one event can be followed end to end
//! by its trace_id, every line about it carries `seq` and `trace_id`, and no payload value
//! appears at info level.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

#[test]
fn json_logs_follow_one_event_by_trace_id_and_show_no_payload() {
    let mut app = Appliance::init();
    app.edit_config("format: text", "format: json");
    // Per-event lines are at debug (info has one line per delivered batch).
    app.log_filter = "ess=debug".into();
    app.start();
    let rt = rt();
    let event = json!({
        "type": "PERMIT_STATUS",
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "payload": {"id": "SECRET-42", "status": "APPROVED", "updated_at": "2025-04-12T10:03:00Z"}
    });
    let a = rt
        .block_on(app.client().post_events(event.to_string(), false))
        .unwrap();
    assert_eq!(a.status, 202);
    // A second event that cannot be mapped: its warning must not show the payload either.
    let bad = json!({"type": "PERMIT_STATUS", "trace_id": "badbadbadbadbadbadbadbadbadbad00",
                     "payload": {"id": "TOO-LONG-SECRET-ID", "status": "APPROVED"}});
    rt.block_on(app.client().post_events(bad.to_string(), false))
        .unwrap();
    wait_until("the delivery log line", Duration::from_secs(30), || {
        app.stderr().contains("4bf92f3577b34da6a3ce929d0e0e4736")
            && app.stderr().contains("badbadbadbadbadbadbadbadbadbad00")
    });
    assert_eq!(app.terminate().code(), Some(0));
    let log = app.stderr();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let about_it: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736")
        .collect();
    assert!(!about_it.is_empty(), "{log}");
    for l in &about_it {
        assert_eq!(
            l["seq"], 1,
            "every line about the event carries its seq: {l}"
        );
    }
    assert!(
        about_it.iter().any(|l| l["message"]
            .as_str()
            .is_some_and(|m| m.contains("delivered"))),
        "{log}"
    );
    let parked = lines
        .iter()
        .find(|l| l["trace_id"] == "badbadbadbadbadbadbadbadbadbad00")
        .expect("a line about the parked event");
    assert_eq!(parked["seq"], 2);
    assert!(!log.contains("SECRET"), "payload values in the log: {log}");
}

#[test]
fn under_the_journal_every_line_has_its_priority_and_stays_one_line() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::MetadataExt;
    let app = Appliance::init();
    let log = app.tmp.path().join("journal.log");
    let file = std::fs::File::create(&log).unwrap();
    let meta = file.metadata().unwrap();
    let mut child = std::process::Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&app.config)
        // What systemd sets when stderr is the journal: that file's device and inode.
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(file)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut ready = String::new();
    BufReader::new(stdout).read_line(&mut ready).unwrap();
    assert!(ready.starts_with("ess listening"), "{ready}");
    // A reload refused for a map whose problem message spans several lines.
    std::fs::write(
        app.dir.join("maps/broken.yml"),
        "target: broken\nfields:\n  A: a | width:1\n",
    )
    .unwrap();
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    wait_until("the refusal", Duration::from_secs(30), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("new maps refused")
    });
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    for line in text.lines() {
        let prio = line.strip_prefix('<').and_then(|l| l.chars().next());
        assert!(
            prio.is_some_and(|p| ('0'..='7').contains(&p)) && line[2..].starts_with('>'),
            "a line without its priority: {line:?}\n{text}"
        );
    }
    let missing = text
        .lines()
        .find(|l| l.contains("missing deliver"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(missing.starts_with("<3>"), "{missing}");
    assert!(
        missing.contains(r"e.g.\n  deliver:\n    kind: file"),
        "one line: {missing}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("<6>") && l.contains("ess serving")),
        "{text}"
    );
}
