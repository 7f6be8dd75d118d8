//! The command line as a user meets it (SPEC §2): help, init, check, send, demo, essctl.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

#[test]
fn every_option_of_every_command_has_help() {
    use clap::CommandFactory;
    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            let builtin = matches!(arg.get_id().as_str(), "help" | "version");
            if !builtin && arg.get_help().is_none() && arg.get_long_help().is_none() {
                missing.push(format!("{path} {}", arg.get_id()));
            }
        }
        for sub in cmd.get_subcommands() {
            if sub.get_about().is_none() {
                missing.push(format!("{path} {} (the command)", sub.get_name()));
            }
            walk(sub, &format!("{path} {}", sub.get_name()), missing);
        }
    }
    let mut missing = Vec::new();
    walk(&ess::cli::Cli::command(), "ess", &mut missing);
    assert!(missing.is_empty(), "without help: {missing:#?}");
}

#[test]
fn every_command_finds_its_config_the_same_way() {
    let app = Appliance::init();
    let cfg = app.config.to_str().unwrap();
    let with_env = |args: &[&str], config: &str| {
        let out = Command::new(BIN)
            .args(args)
            .env("ESS_CONFIG", config)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    // $ESS_CONFIG when no --config: check, stats, list, test alike.
    assert_eq!(with_env(&["check"], cfg).0, 0);
    let (code, out) = with_env(&["stats"], cfg);
    assert_eq!(code, 1, "no database yet: {out}");
    assert!(
        out.contains("no database at") && out.contains("has `ess serve` run"),
        "{out}"
    );
    assert_eq!(with_env(&["test"], cfg).0, 0);
    // --config wins over $ESS_CONFIG.
    assert_eq!(with_env(&["check", "--config", cfg], "/nowhere.yml").0, 0);
    // Neither: /etc/ess/ess.yml, and its absence is a clear validation error.
    let (code, out) = with_env(&["check"], "/nowhere/ess.yml");
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("/nowhere/ess.yml:1:1: cannot read config"),
        "{out}"
    );
    let out = Command::new(BIN)
        .args(["stats", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("ESS_CONFIG") && help.contains("/etc/ess/ess.yml"),
        "{help}"
    );
}

#[test]
fn completions_and_the_manual_come_from_the_command_definitions() {
    let (code, out, _) = ess(&["completions", "bash"], None);
    assert_eq!(code, 0);
    assert!(
        out.contains("_ess()") && out.contains("replay") && out.contains("--since"),
        "{out}"
    );
    let (code, out, _) = ess(&["completions", "zsh"], None);
    assert_eq!(code, 0);
    assert!(out.starts_with("#compdef ess"), "{out}");
    let (code, out, _) = ess(&["man"], None);
    assert_eq!(code, 0);
    assert!(
        out.contains(".TH ess 1") && out.contains("External System Sync"),
        "{out}"
    );
    let (code, _, err) = ess(&["completions", "tcsh"], None);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn validation_errors_exit_2_and_runtime_failures_1() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("BAD.cpy");
    std::fs::write(&bad, "       01 REC.\n          05 A PIC Q(3).\n").unwrap();
    let (code, _, err) = ess(&["map", "from-copybook", bad.to_str().unwrap()], None);
    assert_eq!(code, 2, "a copybook it cannot lay out: {err}");
    let (code, _, err) = ess(&["map", "from-copybook", "/nowhere.cpy"], None);
    assert_eq!(code, 2, "{err}");

    let app = Appliance::init();
    let cfg = app.config.to_str().unwrap();
    let junk = tmp.path().join("junk.ndjson");
    std::fs::write(&junk, "{\"type\": \"A\"}\nnot json\n").unwrap();
    let (code, _, err) = ess(
        &[
            "send",
            "--config",
            cfg,
            "--url",
            "https://127.0.0.1:1",
            junk.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("junk.ndjson:2: not JSON"), "{err}");
    // Nobody listens: a runtime failure, given up after --timeout, saying so.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let one = tmp.path().join("one.json");
    std::fs::write(&one, permit_event("T1").to_string()).unwrap();
    let url = format!("https://127.0.0.1:{port}");
    let (code, _, err) = ess(
        &[
            "send",
            "--config",
            cfg,
            "--url",
            &url,
            "--timeout",
            "1s",
            one.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("gave up after") && err.contains("--timeout"),
        "{err}"
    );
}

#[test]
fn every_command_has_help() {
    for cmd in [
        &["--help"][..],
        &["demo", "--help"],
        &["init", "--help"],
        &["serve", "--help"],
        &["send", "--help"],
        &["check", "--help"],
        &["map", "--help"],
        &["list", "--help"],
        &["replay", "--help"],
        &["stats", "--help"],
        &["show", "--help"],
        &["backup", "--help"],
        &["dead", "ack", "--help"],
        &["dead", "discard", "--help"],
        &["retry", "--help"],
        &["pause", "--help"],
        &["resume", "--help"],
        &["skip", "--help"],
        &["test", "--help"],
        &["completions", "--help"],
        &["man", "--help"],
    ] {
        let (code, out, _) = ess(cmd, None);
        assert_eq!(code, 0, "{cmd:?}");
        assert!(out.contains("Usage:"), "{cmd:?}: {out}");
    }
    let (code, _, err) = ess(&["serve"], None);
    assert_eq!(code, 2, "a missing argument is a usage error: {err}");
}

#[test]
fn init_refuses_an_existing_folder_unless_forced_and_writes_a_valid_appliance() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let d = dir.to_str().unwrap();
    assert_eq!(ess(&["init", "--dir", d], None).0, 0);
    for f in [
        "ess.yml",
        "tls/ca.crt",
        "tls/server.crt",
        "tls/server.key",
        "tls/client.crt",
        "tls/client.key",
        "maps/permit_map.yml",
    ] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    assert!(dir.join("data").is_dir() && dir.join("out").is_dir());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("tls/server.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "private key is private");
    std::fs::write(dir.join("data/keep.me"), "x").unwrap();
    let (code, _, err) = ess(&["init", "--dir", d], None);
    assert_eq!(code, 2);
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(ess(&["init", "--dir", d, "--force"], None).0, 0);
    assert!(dir.join("data/keep.me").exists(), "--force keeps data");
    let (code, out, _) = ess(
        &["check", "--config", dir.join("ess.yml").to_str().unwrap()],
        None,
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("city_hall_cobol"), "{out}");
}

#[test]
fn check_reports_every_problem_with_file_line_col_and_exits_2() {
    let app = Appliance::init();
    let map = app.dir.join("maps/permit_map.yml");
    let text = std::fs::read_to_string(&map).unwrap();
    std::fs::write(
        &map,
        text.replace("  STATUS   : status | width:10\n", "  STATUS   : status\n"),
    )
    .unwrap();
    std::fs::write(
        app.dir.join("maps/other.yml"),
        "target: other\nformt: fixed\ndeliver: {kind: file, dir: ., file: x.txt}\n",
    )
    .unwrap();
    let (code, out, _) = ess(&["check", "--config", app.config.to_str().unwrap()], None);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("other.yml:2:1: unknown field `formt`"),
        "{out}"
    );
    assert!(
        out.contains("permit_map.yml:12:") && out.contains("STATUS") && out.contains("width"),
        "{out}"
    );

    // The seed's own map as printed in the design chapter: no widths, no deliver.
    std::fs::remove_file(app.dir.join("maps/other.yml")).unwrap();
    std::fs::write(&map, "target: city_hall_cobol\nfields:\n  PERMIT_ID: id\n  STATUS    : status\n  TS        : updated_at | format:%Y%m%d%H%M%S\n").unwrap();
    let (code, out, err) = ess(&["check", "--config", app.config.to_str().unwrap()], None);
    assert_eq!(code, 2);
    for (line, field) in [(3, "PERMIT_ID"), (4, "STATUS"), (5, "TS")] {
        assert!(
            out.contains(&format!("permit_map.yml:{line}:"))
                && out.contains(&format!("field {field} has no width")),
            "{out}"
        );
    }
    assert!(
        out.contains("width:14") && out.contains("missing deliver"),
        "{out}"
    );
    assert!(err.contains("4 problem(s)"), "{err}");

    app.edit_config("log:", "colour: blue\nlog:");
    let (code, out, _) = ess(&["check", "--config", app.config.to_str().unwrap()], None);
    assert_eq!(code, 2);
    assert!(out.contains("ess.yml:") && out.contains("colour"), "{out}");
}

#[test]
fn serve_refuses_a_private_key_readable_by_others() {
    use std::os::unix::fs::PermissionsExt;
    let app = Appliance::init();
    std::fs::set_permissions(
        app.tls("server.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let (code, _, err) = ess(&["serve", "--config", app.config.to_str().unwrap()], None);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("readable by group or others") && err.contains("chmod 600"),
        "{err}"
    );
}

#[test]
fn send_reads_files_arrays_ndjson_and_stdin_and_counts() {
    let mut app = Appliance::init();
    app.start();
    let cfg = app.config.to_str().unwrap().to_string();
    let (code, _, err) = ess(&["send", "--config", &cfg, "-"], None);
    assert_eq!(code, 2, "port 0 in the config needs --url: {err}");
    let url = app.url();
    let arr = app.tmp.path().join("batch.json");
    std::fs::write(
        &arr,
        serde_json::Value::Array(vec![permit_event("A1"), permit_event("A2")]).to_string(),
    )
    .unwrap();
    let (code, out, err) = ess(
        &[
            "send",
            "--config",
            &cfg,
            "--url",
            &url,
            arr.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("accepted: 2, duplicates: 0"), "{out}");

    let mut child = Command::new(BIN)
        .args(["send", "--config", &cfg, "--url", &url, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let nd = format!("{}\n{}\n", permit_event("A2"), permit_event("A3"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(nd.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("accepted: 1, duplicates: 1"));

    let bad = app.tmp.path().join("bad.ndjson");
    std::fs::write(
        &bad,
        format!("{}\n{{\"type\":\"A\"}}\n", permit_event("A4")),
    )
    .unwrap();
    let (code, _, err) = ess(
        &[
            "send",
            "--config",
            &cfg,
            "--url",
            &url,
            bad.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(
        code, 2,
        "a 400 (the events are wrong) is a validation error"
    );
    assert!(
        err.contains("bad.ndjson:2") && err.contains("payload"),
        "{err}"
    );
    let want: String = ["A1", "A2", "A3"]
        .iter()
        .map(|id| permit_line(id))
        .collect();
    wait_until("three lines", Duration::from_secs(30), || {
        app.read_out("permit.txt") == want
    });
}

#[test]
fn demo_prints_the_send_command_that_makes_the_seed_line() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["demo", "--dir", "ess-demo"])
        .current_dir(tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut send_line = None;
    while send_line.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("demo prints its instructions");
        if line.contains(" send --config ") {
            send_line = Some(line);
        }
    }
    let send_line = send_line.unwrap();
    // The printed command as a user would run it, with this build's binary.
    let args: Vec<&str> = send_line
        .split_once(" send ")
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let out = Command::new(BIN)
        .arg("send")
        .args(&args)
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = tmp.path().join("ess-demo/out/permit.txt");
    wait_until("the seed line", Duration::from_secs(30), || {
        std::fs::read_to_string(&file).unwrap_or_default() == SEED_LINE
    });
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn essctl_is_ess() {
    let tmp = tempfile::tempdir().unwrap();
    let link = tmp.path().join("essctl");
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    let out = Command::new(&link).arg("--help").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("send"));
}

#[test]
fn send_resends_a_batch_whose_answer_never_came_until_the_daemon_is_up() {
    let mut app = Appliance::init();
    // A fixed free port, so `ess send` can be started before the daemon listens on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    app.edit_config(
        "listen: 127.0.0.1:0\n  cert",
        &format!("listen: 127.0.0.1:{port}\n  cert"),
    );
    let events = app.tmp.path().join("e.json");
    std::fs::write(&events, permit_event("LATE").to_string()).unwrap();
    let sender = Command::new(BIN)
        .args([
            "send",
            "--config",
            app.config.to_str().unwrap(),
            events.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut sender = sender;
    let stderr = sender.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Wait until `send` has found no daemon and is re-sending, then bring the daemon up.
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("send reports its retries");
        if line.contains("re-sending") {
            break;
        }
    }
    app.start();
    let out = sender.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("accepted: 1, duplicates: 0"));
    wait_until("the line", Duration::from_secs(30), || {
        app.read_out("permit.txt") == permit_line("LATE")
    });
}
