//! Clean close (issue 10.3): SIGTERM and SIGINT finish what is under way, drop every
//! database handle (status page, admin socket, retention, connectors) and leave `ess.redb`
//! closed, so the next open runs no repair; an unclean stop's repair is logged with its
//! duration.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::*;

/// redb's god byte is byte 9 of the file; bit 2 means "run recovery at the next open".
fn needs_recovery(db: &Path) -> bool {
    std::fs::read(db).unwrap()[9] & 2 != 0
}

/// Starts the appliance, delivers a few events, and uses every reader of the database
/// (status page, admin socket, receipts) so each holds or held a handle.
fn run_a_while(app: &mut Appliance, ids: &[&str]) {
    app.start();
    let rt = rt();
    let body = serde_json::Value::Array(ids.iter().map(|id| permit_event(id)).collect());
    let a = rt
        .block_on(app.client().post_events(body.to_string(), false))
        .unwrap();
    assert_eq!(a.status, 202);
    let want: String = ids.iter().map(|id| permit_line(id)).collect();
    wait_until("delivered", Duration::from_secs(60), || {
        app.read_out("permit.txt").ends_with(&want)
    });
    assert!(status_get(app, "/api/status").1.contains("city_hall_cobol"));
    let config = app.config.to_str().unwrap().to_string();
    let (code, out, err) = ess(&["stats", "--config", &config], None);
    assert_eq!(code, 0, "{out}{err}");
    let r = rt
        .block_on(app.client().receipt(&format!("key-{}", ids[0])))
        .unwrap();
    assert_eq!(r.status, 200);
}

#[test]
fn sigterm_and_sigint_leave_ess_redb_closed_so_the_next_start_runs_no_repair() {
    for (sig, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        let mut app = Appliance::init();
        let db = app.dir.join("data/ess.redb");
        run_a_while(&mut app, &["A1", "A2"]);
        app.signal(sig);
        let mut child = app.child.take().unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "{name}");
        assert!(
            !needs_recovery(&db),
            "{name} left ess.redb needing recovery"
        );
        assert!(app.stderr().contains("ess.redb closed"), "{name}");

        // The next start opens without a repair and goes on where it stopped.
        run_a_while(&mut app, &["B1"]);
        assert_eq!(app.terminate().code(), Some(0));
        assert!(
            !app.stderr().contains("repaired it"),
            "{name}: {}",
            app.stderr()
        );
        assert_eq!(
            app.read_out("permit.txt"),
            [permit_line("A1"), permit_line("A2"), permit_line("B1")].concat()
        );
        assert!(!needs_recovery(&db));
    }
}

#[test]
fn an_unclean_stop_is_repaired_at_the_next_start_and_the_repair_time_is_logged() {
    let mut app = Appliance::init();
    let db = app.dir.join("data/ess.redb");
    run_a_while(&mut app, &["K1"]);
    app.kill9();
    assert!(needs_recovery(&db), "a killed daemon leaves the flag set");
    run_a_while(&mut app, &["K2"]);
    let log = app.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("not closed cleanly; redb repaired it"))
        .unwrap_or_else(|| panic!("no repair line in {log}"));
    assert!(line.contains("duration_ms="), "{line}");
    assert_eq!(app.terminate().code(), Some(0));
    assert!(!needs_recovery(&db));
    assert_eq!(
        app.read_out("permit.txt"),
        [permit_line("K1"), permit_line("K2")].concat()
    );
}

/// The daemon run in-process (no signals: `serve::run` obeys a control channel, which is
/// what the CLI feeds from SIGTERM/SIGINT/SIGHUP): a reload keeps it serving, a stop returns
/// `Ok` with `ess.redb` closed, and dropping every sender stops it the same way.
#[test]
fn the_daemon_in_process_reloads_and_stops_on_its_control_channel_and_closes_the_feed() {
    use ess::serve::Control;
    ess::cli::install_crypto_provider();
    let mut app = Appliance::init();
    let db = app.dir.join("data/ess.redb");
    let rt = rt();
    for (round, ids, how) in [
        (0, ["C1", "C2"], "stop"),
        (1, ["C3", "C4"], "every sender gone"),
    ] {
        let cfg = ess::config::Config::load(&app.config).unwrap();
        let (control, rx) = tokio::sync::mpsc::channel(4);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let daemon = rt.spawn(ess::serve::run(cfg, rx, move |b| {
            let _ = ready_tx.send(b);
        }));
        let bound = ready_rx.recv_timeout(Duration::from_secs(60)).unwrap();
        app.ingest = Some(bound.ingest);
        rt.block_on(control.send(Control::Reload)).unwrap();
        let body = serde_json::Value::Array(ids.iter().map(|id| permit_event(id)).collect());
        let a = rt
            .block_on(app.client().post_events(body.to_string(), false))
            .unwrap();
        assert_eq!(a.status, 202, "round {round}");
        let want: String = ["C1", "C2", "C3", "C4"][..2 * (round + 1)]
            .iter()
            .map(|id| permit_line(id))
            .collect();
        wait_until("delivered", Duration::from_secs(60), || {
            app.read_out("permit.txt") == want
        });
        assert!(needs_recovery(&db), "an open database carries the flag");
        match how {
            "stop" => rt.block_on(control.send(Control::Stop)).unwrap(),
            _ => drop(control),
        }
        let result = rt.block_on(daemon).unwrap();
        assert!(result.is_ok(), "{how}: {result:?}");
        assert!(!needs_recovery(&db), "{how} left ess.redb needing recovery");
    }
}

/// Appends `n` permit events (ids `D0000000`, ...) to the feed of a stopped appliance,
/// through the library, as a backlog the permit connector has not seen; their ids.
fn fill_backlog(db: &Path, n: usize) -> Vec<String> {
    let feed = ess::feed::Feed::open(
        ess::feed::Store::open(db, ess::feed::StoreOptions::default()).unwrap(),
    )
    .unwrap();
    let ids: Vec<String> = (0..n).map(|i| format!("D{i:07}")).collect();
    let rt = rt();
    for chunk in ids.chunks(20_000) {
        let mut batch = ess::feed::Batch::with_capacity(chunk.len(), chunk.len() * 200);
        for id in chunk {
            let payload = permit_event(id)["payload"].to_string();
            batch.push(
                "PERMIT_STATUS",
                &format!("key-{id}"),
                "t",
                None,
                payload.as_bytes(),
            );
        }
        rt.block_on(feed.append_batch(batch)).unwrap();
    }
    feed.close();
    ids
}

/// An appliance with a backlog of 200k permit events whose daemon got `sig` in the middle
/// of the drain: the appliance, every event's line in order, the feed's path and the exit
/// status. What the file held then is asserted to be a prefix of the whole, not all of it.
fn drain_stopped_by(sig: i32) -> (Appliance, String, PathBuf, std::process::ExitStatus) {
    let mut app = Appliance::init();
    let db = app.dir.join("data/ess.redb");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    let ids = fill_backlog(&db, 200_000);
    let want: String = ids.iter().map(|id| permit_line(id)).collect();
    app.start();
    wait_until("the drain under way", Duration::from_secs(60), || {
        !app.read_out("permit.txt").is_empty()
    });
    app.signal(sig);
    let status = app.child.take().unwrap().wait().unwrap();
    let at_stop = app.read_out("permit.txt");
    assert!(
        want.starts_with(&at_stop),
        "what was delivered is a prefix, in order"
    );
    assert!(
        at_stop.len() < want.len(),
        "the stop came in the middle of the drain"
    );
    (app, want, db, status)
}

/// Starts the daemon again and waits for the rest: every event once, in order.
fn the_rest_comes_once(app: &mut Appliance, want: &str) {
    app.start();
    wait_until("the rest delivered", Duration::from_secs(300), || {
        app.read_out("permit.txt").len() >= want.len()
    });
    assert_eq!(app.terminate().code(), Some(0));
    assert!(
        app.read_out("permit.txt") == want,
        "every event once, in order"
    );
}

/// SIGTERM while the connector drains a backlog (its next round read and mapped ahead on
/// other threads at that moment): the stop waits for those reads, closes `ess.redb`
/// cleanly, and the next start delivers the rest, every event once and in order.
#[test]
fn sigterm_in_the_middle_of_a_backlog_drain_closes_cleanly_and_the_rest_comes_once() {
    let (mut app, want, db, status) = drain_stopped_by(libc::SIGTERM);
    assert_eq!(status.code(), Some(0));
    let err = app.stderr();
    assert!(
        !needs_recovery(&db),
        "SIGTERM mid-drain left ess.redb needing recovery"
    );
    assert!(err.contains("ess.redb closed"), "{err}");
    assert!(
        !err.contains("still under way") && !err.contains("still in use"),
        "{err}"
    );
    the_rest_comes_once(&mut app, &want);
    assert!(!app.stderr().contains("repaired it"), "{}", app.stderr());
    assert!(!needs_recovery(&db));
}

/// kill -9 while the connector drains a backlog: a round read and mapped ahead in flight,
/// and delivery commits deferred (made durable by the committer within 10 ms, as no ingest
/// carries them). What the file holds at the kill is a prefix in order, maybe past the
/// cursor redb brings back; the next start repairs redb, cuts what is past the mark and
/// delivers the rest: every event once, in order.
#[test]
fn kill_9_in_the_middle_of_a_backlog_drain_leaves_every_event_once_after_the_restart() {
    let (mut app, want, db, status) = drain_stopped_by(libc::SIGKILL);
    assert_eq!(status.code(), None, "killed");
    the_rest_comes_once(&mut app, &want);
    assert!(app.stderr().contains("repaired it"), "{}", app.stderr());
    assert!(!needs_recovery(&db));
}
