//! The operator's actions through the real binary and the daemon's admin socket (issue 12):
//! dead ack/discard, show, list --delivered, pause/resume across a restart, replay --since,
//! retry now and skip on a blocked HTTP connector, actions refused without a daemon, the
//! action log on the page, and `ess list | head -1` on a closed pipe.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

const T: &str = "city_hall_cobol";

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

/// `ess ARGS --config CONFIG`: (exit code, stdout, stderr).
fn run(app: &Appliance, args: &[&str]) -> (i32, String, String) {
    let mut all = args.to_vec();
    let cfg = app.config.to_str().unwrap().to_string();
    all.extend(["--config", &cfg]);
    ess(&all, None)
}

fn json(app: &Appliance, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (code, out, err) = run(app, &all);
    assert_eq!(code, 0, "{args:?}: {out}{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

fn connector(stats: &serde_json::Value, name: &str) -> serde_json::Value {
    stats["connectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {stats}"))
        .clone()
}

fn page(app: &Appliance) -> String {
    let addr = app.status.expect("status address");
    let rt = rt();
    rt.block_on(async {
        reqwest::get(format!("http://{addr}/"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    })
}

#[test]
fn dead_letters_are_settled_shown_and_listed() {
    let mut app = Appliance::init();
    app.start();
    send(&app, &["D1", "MUCH-TOO-LONG-ID", "D3"]);
    wait_until("the dead letter", Duration::from_secs(30), || {
        json(&app, &["list", "--dead"])["entries"]
            .as_array()
            .is_some_and(|e| e.len() == 1)
    });
    assert_eq!(app.read_out("permit.txt"), lines(&["D1", "D3"]));
    // Piped (not a terminal), the table keeps every message whole.
    let whole = json(&app, &["list", "--dead"])["entries"][0]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, table, _) = run(&app, &["list", "--dead"]);
    assert!(table.contains(&whole), "{table}");

    // show: metadata, the state and the record per connector.
    let shown = json(&app, &["show", "--key", "key-D1"]);
    assert_eq!(shown["seq"], 1);
    assert_eq!(shown["targets"][0]["state"], "delivered");
    assert_eq!(
        shown["targets"][0]["record"]["text"],
        "D1        APPROVED  20250412100300\\n"
    );
    let dead = json(&app, &["show", "--seq", "2"]);
    assert_eq!(dead["targets"][0]["state"], "dead");
    let why = dead["targets"][0]["record_error"].as_str().unwrap();
    assert!(
        why.contains("width") && !why.contains("MUCH-TOO-LONG"),
        "{why}"
    );
    let (code, _, err) = run(&app, &["show", "--seq", "99"]);
    assert_eq!(code, 2, "{err}");

    // ack one that is not dead: a usage error, nothing changes; then the dead one.
    let (code, _, err) = run(&app, &["dead", "ack", "--target", T, "--seq", "1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a dead letter"), "{err}");
    let (code, out, err) = run(
        &app,
        &[
            "dead",
            "ack",
            "--target",
            T,
            "--seq",
            "2",
            "--reason",
            "typed in by hand",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 dead letter(s) acknowledged"), "{out}");
    assert!(
        json(&app, &["list", "--dead"])["entries"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let settled = json(&app, &["show", "--seq", "2"]);
    let detail = settled["targets"][0]["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("ack by ") && detail.contains("typed in by hand"),
        "{detail}"
    );
    // The receipt still tells the truth: it never reached the target.
    let rt = rt();
    let receipt = rt
        .block_on(app.client().receipt("key-MUCH-TOO-LONG-ID"))
        .unwrap()
        .json();
    assert_eq!(receipt["targets"][T], "dead");
    // Hostile reasons, straight to the admin socket (a shell cannot pass a NUL or 10 MB):
    // refused whole as the operator's mistake, nothing recorded.
    let cfg = ess::config::Config::load(&app.config).unwrap();
    let huge = "x".repeat(10 << 20);
    for reason in ["two\nlines", "nul\0byte", &"y".repeat(501), huge.as_str()] {
        let req = ess::admin::ActRequest {
            target: T.into(),
            by: "tester\nwith a line end".into(),
            action: ess::admin::ActionRequest::Pause {
                reason: reason.to_owned(),
            },
        };
        let reply = ess::admin::client::call::<_, ess::admin::ActResponse>(
            &cfg.admin_socket,
            "/v1/act",
            &req,
            Duration::from_secs(60),
        )
        .unwrap();
        match reply {
            ess::admin::client::Reply::Answer(Err(e)) => assert!(e.is_usage(), "{e}"),
            other => panic!("{} chars: {other:?}", reason.len()),
        }
    }
    let (code, _, err) = run(&app, &["pause", "--target", T, "--reason", "a\tb"]);
    assert_eq!(code, 2, "{err}");
    assert_ne!(connector(&json(&app, &["stats"]), T)["state"], "paused");
    let (code, out, _) = run(&app, &["dead", "discard", "--target", T, "--all"]);
    assert_eq!(
        (code, out.trim()),
        (0, "city_hall_cobol has no dead letters")
    );
    let (code, _, err) = run(&app, &["dead", "ack", "--target", "nope", "--all"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("known: city_hall_cobol"), "{err}");

    // list --delivered: what a replay can send again.
    let delivered = json(&app, &["list", "--delivered"]);
    let seqs: Vec<u64> = delivered["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 3]);

    // The page and the stats JSON show the action; stats says the same as the page.
    let html = page(&app);
    assert!(
        html.contains("Operator actions") && html.contains("typed in by hand"),
        "{html}"
    );
    let stats = json(&app, &["stats"]);
    assert_eq!(stats["recent_actions"][0]["action"], "ack");
    assert_eq!(connector(&stats, T)["condition"], "ok");
    assert_eq!(app.terminate().code(), Some(0));
}

#[test]
fn pause_holds_across_a_restart_and_replay_by_time_redelivers() {
    let mut app = Appliance::init();
    app.start();
    send(&app, &["P1"]);
    wait_until("P1", Duration::from_secs(30), || {
        app.read_out("permit.txt") == lines(&["P1"])
    });
    let (code, out, err) = run(
        &app,
        &["pause", "--target", T, "--reason", "legacy batch window"],
    );
    assert_eq!(code, 0, "{out}{err}");
    send(&app, &["P2"]);
    let paused = |app: &Appliance| {
        let c = connector(&json(app, &["stats"]), T);
        c["state"] == "paused" && c["lag_events"] == 1
    };
    wait_until("paused with one waiting", Duration::from_secs(30), || {
        paused(&app)
    });
    assert_eq!(
        app.read_out("permit.txt"),
        lines(&["P1"]),
        "nothing delivered while paused"
    );

    // Kept across a restart, and shown as a state with who and why.
    assert_eq!(app.terminate().code(), Some(0));
    // Without a daemon: stats says so; actions refuse and change nothing.
    let (code, out, _) = run(&app, &["stats"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("ess is NOT running"), "{out}");
    let (code, _, err) = run(&app, &["resume", "--target", T]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("needs the running daemon"), "{err}");
    app.start();
    wait_until(
        "still paused after a restart",
        Duration::from_secs(30),
        || paused(&app),
    );
    let html = page(&app);
    assert!(
        html.contains(">paused</span>") && html.contains("legacy batch window"),
        "{html}"
    );
    assert!(
        html.contains("ess resume --target city_hall_cobol"),
        "{html}"
    );
    let (code, out, err) = run(&app, &["resume", "--target", T]);
    assert_eq!(code, 0, "{out}{err}");
    wait_until(
        "P2 after resume, and its commit",
        Duration::from_secs(30),
        || {
            app.read_out("permit.txt") == lines(&["P1", "P2"])
                && connector(&json(&app, &["stats"]), T)["cursor"] == 2
        },
    );

    // Replay by time: everything received in the last hour, again.
    let (code, out, err) = run(&app, &["replay", "--target", T, "--since", "1h"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("2 event(s) queued"), "{out}");
    wait_until("the replayed events", Duration::from_secs(30), || {
        app.read_out("permit.txt") == lines(&["P1", "P2", "P1", "P2"])
    });
    let (code, _, err) = run(&app, &["replay", "--target", T, "--since", "next tuesday"]);
    assert_eq!(code, 2, "{err}");
    let actions: Vec<String> = json(&app, &["stats"])["recent_actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(actions, ["replay", "resume", "pause"]);
    assert_eq!(app.terminate().code(), Some(0));
}

/// A map that posts `CASE` events to `url`, and retries after an hour.
fn http_map(url: &str) -> String {
    format!(
        "target: docket\nevents: [CASE]\nformat: json\nfields:\n  ID: id\ndeliver:\n  kind: http\n  url: {url}\n  timeout: 5s\nretry: {{base: 1h, max_delay: 1h, max_tries: 2, on_failure: block}}\n"
    )
}

fn case_event(id: &str) -> serde_json::Value {
    serde_json::json!({"type": "CASE", "idempotency_key": format!("case-{id}"), "payload": {"id": id}})
}

#[test]
fn retry_now_and_skip_act_on_a_blocked_head_at_once() {
    let mut app = Appliance::init();
    // Nothing listens on this port: every delivery fails (connection refused).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        app.dir.join("maps/docket.yml"),
        http_map(&format!("http://127.0.0.1:{port}/cases")),
    )
    .unwrap();
    app.start();
    let rt = rt();
    let body = serde_json::json!([case_event("C1"), case_event("C2")]).to_string();
    assert_eq!(
        rt.block_on(app.client().post_events(body, false))
            .unwrap()
            .status,
        202
    );
    let docket = |app: &Appliance| connector(&json(app, &["stats"]), "docket");
    wait_until("the first failure", Duration::from_secs(30), || {
        docket(&app)["retry"]["attempts"] == 1
    });
    let c = docket(&app);
    assert_eq!(c["state"], "retrying");
    assert!(
        c["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1"),
        "{c}"
    );
    assert!(c["last_error"]["at"].is_string(), "{c}");

    // The next attempt is an hour away; `ess retry` makes it now.
    let (code, out, err) = run(&app, &["retry", "--target", "docket"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("seq 1 is retried now"), "{out}");
    wait_until("the second attempt", Duration::from_secs(30), || {
        docket(&app)["state"] == "blocked"
    });
    assert_eq!(docket(&app)["retry"]["attempts"], 2);

    // Skip: only the head, on purpose.
    let (code, _, err) = run(&app, &["skip", "--target", "docket", "--seq", "2"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("the head is seq 1"), "{err}");
    let (code, out, err) = run(
        &app,
        &[
            "skip",
            "--target",
            "docket",
            "--seq",
            "1",
            "--reason",
            "case withdrawn",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let dead = json(&app, &["list", "--dead", "--target", "docket"]);
    assert_eq!(dead["entries"][0]["seq"], 1);
    assert_eq!(dead["entries"][0]["reason"], "skipped");
    assert!(
        dead["entries"][0]["message"]
            .as_str()
            .unwrap()
            .contains("case withdrawn")
    );
    // The connector went on to the next event at once (which fails in turn).
    wait_until("C2 is the head now", Duration::from_secs(30), || {
        docket(&app)["retry"]["seq"] == 2
    });
    let receipt = rt.block_on(app.client().receipt("case-C1")).unwrap().json();
    assert_eq!(receipt["targets"]["docket"], "dead");
    let (code, _, err) = run(&app, &["retry", "--target", T]);
    assert_eq!(code, 2, "nothing to retry: {err}");
    assert_eq!(app.terminate().code(), Some(0));
}

#[test]
fn a_closed_pipe_ends_the_output_quietly() {
    let mut app = Appliance::init();
    app.start();
    let events: String = (0..1500)
        .map(|i| format!("{}\n", permit_event(&format!("L{i}"))))
        .collect();
    let file = app.tmp.path().join("many.ndjson");
    std::fs::write(&file, events).unwrap();
    let url = app.url();
    let (code, out, err) = run(&app, &["send", "--url", &url, file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    wait_until("all delivered", Duration::from_secs(60), || {
        json(&app, &["stats"])["connectors"][0]["cursor"] == 1500
    });
    // Far more than a pipe holds, read one line of: ess must exit 0, without a panic.
    let script = format!(
        "set -o pipefail; '{BIN}' list --config '{}' --delivered --limit 5000 | head -1",
        app.config.display()
    );
    let out = Command::new("bash")
        .args(["-c", &script])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("TARGET"));
    assert_eq!(app.terminate().code(), Some(0));
}
