//! Pickup from a local folder, end to end with the real binary (issue 14 points 3, 5): a
//! header/detail/trailer file renamed into the folder is taken record by record into the
//! feed and delivered by an ordinary HTTP connector (`format: json`) to an endpoint over
//! mutual TLS that dedupes by Idempotency-Key; ESS is killed with SIGKILL while it takes
//! the file and again while it delivers. The endpoint acts on every record exactly once, in
//! file order, with the values the file holds; the file is moved only after all its records
//! are in the feed, and is never taken again.

#[allow(dead_code)]
#[path = "support/http.rs"]
mod http;
#[path = "support/pickup.rs"]
mod pickup;
#[path = "support/source.rs"]
mod source;
mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use ess::ledger::sources::FileState;
use pickup::{Pki, drop_file, gated_codifyhq, pki, rows, source_status, write_codifyhq};
use support::{Appliance, rt, wait_until};

const COPYBOOK: &str = "       01  R-HEADER.
           05  RH-TYPE   PIC X.
               88  RH-IS-HEADER VALUE 'H'.
           05  RH-DATE   PIC 9(8).
       01  R-DETAIL.
           05  RD-TYPE   PIC X.
               88  RD-IS-DETAIL VALUE 'D'.
           05  RD-ID     PIC X(8).
           05  RD-FEE    PIC S9(7)V99 COMP-3.
       01  R-TRAILER.
           05  RT-TYPE   PIC X.
               88  RT-IS-TRAILER VALUE 'T'.
           05  RT-COUNT  PIC 9(7).
           05  RT-TOTAL  PIC S9(11)V99 COMP-3.
";

const N: usize = 1500;

/// Packed decimal of `v` (cents) in `bytes` bytes, sign C.
fn comp3(v: i64, bytes: usize) -> Vec<u8> {
    let digits = format!("{:0width$}", v.unsigned_abs(), width = bytes * 2 - 1);
    let mut nibbles: Vec<u8> = digits.bytes().map(|b| b - b'0').collect();
    nibbles.push(if v < 0 { 0xD } else { 0xC });
    nibbles.chunks(2).map(|p| (p[0] << 4) | p[1]).collect()
}

fn fee(i: usize) -> i64 {
    (i as i64 * 137) % 100_000 + 1
}

/// The file: EBCDIC-free ASCII text fields, packed fees, fixed-length records (RDW).
fn results_file(n: usize) -> Vec<u8> {
    let mut recs: Vec<Vec<u8>> = vec![b"H20251201".to_vec()];
    let mut total = 0i64;
    for i in 1..=n {
        let mut r = format!("D{:<8}", format!("P{i:06}")).into_bytes();
        r.extend(comp3(fee(i), 5));
        total += fee(i);
        recs.push(r);
    }
    let mut t = format!("T{n:07}").into_bytes();
    t.extend(comp3(total, 7));
    recs.push(t);
    let mut out = Vec::new();
    for r in recs {
        out.extend(((r.len() + 4) as u16).to_be_bytes());
        out.extend([0, 0]);
        out.extend(r);
    }
    out
}

fn setup(app: &Appliance, pki: &Pki, port: u16) {
    let maps = app.dir.join("maps");
    std::fs::create_dir_all(app.dir.join("in")).unwrap();
    std::fs::write(maps.join("R.cpy"), COPYBOOK).unwrap();
    std::fs::write(
        maps.join("results.yml"),
        "source:\n  name: results\n  kind: file\n  dir: ../in\n  pattern: \"RES_*.DAT\"\n  every: 100ms\n  chunk: 3\n  trailer: {record: R-TRAILER, count: RT-COUNT, sum: {RT-TOTAL: RD-FEE}}\n  then: {move: ../done}\nformat: fixed\nlayout: R.cpy\nrecord: {encoding: ascii, framing: rdw}\nlayout_when: {R-HEADER: RH-IS-HEADER, R-DETAIL: RD-IS-DETAIL, R-TRAILER: RT-IS-TRAILER}\nevent:\n  type: PERMIT_RESULT\n  records: [R-DETAIL]\n  payload: {id: RD-ID, fee: RD-FEE}\n",
    )
    .unwrap();
    write_codifyhq(&maps, pki, port, "{permit: id, fee: fee}");
}

#[test]
fn every_record_reaches_codifyhq_once_in_order_through_kills_during_pickup_and_delivery() {
    let runtime = rt();
    let pki = pki();
    let (endpoint, open) = gated_codifyhq(&runtime, &pki);
    let mut app = Appliance::init();
    setup(&app, &pki, endpoint.addr.port());
    let applied = || endpoint.applied.lock().unwrap().len();
    let bytes = results_file(N);
    drop_file(&app.dir.join("in"), "RES_20251201.DAT", &bytes);

    let source = source_status;

    // Killed while the file is being taken (some of its records in the feed).
    app.start();
    wait_until(
        "the first records in the feed",
        Duration::from_secs(60),
        || source(&app)["records"].as_u64().is_some_and(|n| n >= 1),
    );
    app.kill9();
    let r = rows(&app);
    assert_eq!(r.len(), 1);
    assert_eq!(
        r[0].state,
        FileState::Reading,
        "taken whole before the kill"
    );
    assert!(r[0].next_record < (N + 2) as u64, "{:?}", r[0]);
    assert!(
        app.dir.join("in/RES_20251201.DAT").exists(),
        "moved before its records were committed"
    );

    // Resumed inside the file until all of it is in the feed; then killed while delivering.
    app.start();
    wait_until(
        "the whole file in the feed",
        Duration::from_secs(120),
        || source(&app)["files_taken"].as_u64() == Some(1),
    );
    assert_eq!(applied(), 0);
    open.store(true, Ordering::SeqCst);
    for _ in 0..2 {
        let before = applied();
        wait_until("more records upstream", Duration::from_secs(60), || {
            applied() >= before + 100
        });
        app.kill9();
        assert!(applied() < N, "delivered whole before the kill");
        assert_eq!(rows(&app)[0].state, FileState::Done);
        app.start();
    }
    wait_until("every record upstream", Duration::from_secs(120), || {
        applied() == N
    });
    // Receipts for the records' events, as for any event.
    let (first, last) = {
        let got = endpoint.applied.lock().unwrap();
        (got[0].0.clone(), got[N - 1].0.clone())
    };
    let mut client = app.client();
    for key in [&first, &last] {
        let answer = runtime.block_on(client.receipt(key)).unwrap();
        assert_eq!(answer.status, 200, "{key}");
        let receipt = answer.json();
        wait_until(
            "the receipt to say delivered",
            Duration::from_secs(30),
            || {
                let r = runtime.block_on(client.receipt(key)).unwrap().json();
                r["targets"]["codifyhq"] == "delivered"
            },
        );
        assert!(receipt["seq"].as_u64().is_some(), "{receipt}");
    }
    app.terminate();

    // Each record once, in file order, with the file's values, under a deterministic key.
    let got = endpoint.applied.lock().unwrap().clone();
    assert_eq!(got.len(), N);
    let mut file_key = None;
    for (i, (key, body)) in got.iter().enumerate() {
        let parts: Vec<&str> = key.split('/').collect();
        assert_eq!(parts.len(), 3, "{key}");
        assert_eq!(parts[0], "results");
        assert_eq!(*file_key.get_or_insert(parts[1].to_string()), parts[1]);
        assert_eq!(parts[2], (i + 1).to_string(), "out of order at {i}: {key}");
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["permit"], format!("P{:06}", i + 1), "{v}");
        let cents = fee(i + 1);
        assert_eq!(
            v["fee"].to_string(),
            format!("{}.{:02}", cents / 100, cents % 100),
            "{v}"
        );
    }
    // Moved after the commit, and recorded; never taken again.
    let r = rows(&app);
    assert_eq!(
        (r[0].state.clone(), r[0].then_done),
        (FileState::Done, true)
    );
    assert_eq!(r[0].events, N as u64);
    assert!(!app.dir.join("in/RES_20251201.DAT").exists());
    assert_eq!(
        std::fs::read(app.dir.join("done/RES_20251201.DAT")).unwrap(),
        bytes
    );
    // Put back by hand (same file): not taken again.
    std::fs::rename(
        app.dir.join("done/RES_20251201.DAT"),
        app.dir.join("in/RES_20251201.DAT"),
    )
    .unwrap();
    // A later file (its name sorts after) is taken: the scan went past the first one.
    drop_file(&app.dir.join("in"), "RES_20251202.DAT", &results_file(2));
    app.start();
    wait_until(
        "the next day's file upstream",
        Duration::from_secs(60),
        || applied() == N + 2,
    );
    // A file failing its trailer (count) is parked whole, and shown with why.
    let mut bad = results_file(3);
    let at = bad.len() - 7 - 7;
    bad[at..at + 7].copy_from_slice(b"0000004");
    drop_file(&app.dir.join("in"), "RES_20251203.DAT", &bad);
    wait_until(
        "the parked file on /api/status",
        Duration::from_secs(60),
        || {
            source(&app)["files_held"]
                .as_array()
                .is_some_and(|h| !h.is_empty())
        },
    );
    let s = source(&app);
    assert_eq!(s["name"], "results");
    assert_eq!(s["files_taken"], 2);
    assert_eq!(s["records"], N as u64 + 2);
    assert_eq!(s["files_held"][0]["state"], "parked");
    assert_eq!(s["files_held"][0]["file"], "RES_20251203.DAT");
    let reason = s["files_held"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("RT-COUNT says 4 records, the file has 3"),
        "{reason}"
    );
    let (_, metrics) = support::status_get(&app, "/metrics");
    // The scrape with the source series is well-formed and lint-clean.
    let body = metrics.split_once("\r\n\r\n").map_or("", |b| b.1);
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs (apt-get install prometheus; CI's .ci/run does)");
    std::io::Write::write_all(&mut promtool.stdin.take().unwrap(), body.as_bytes()).unwrap();
    let said = promtool.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&said.stdout).into_owned() + &String::from_utf8_lossy(&said.stderr);
    assert!(
        said.status.success() && text.trim().is_empty(),
        "promtool: {text}"
    );
    for line in [
        format!("ess_source_records{{source=\"results\"}} {}", N + 2),
        "ess_source_files_taken{source=\"results\"} 2".to_string(),
        "ess_source_files_held{source=\"results\"} 1".to_string(),
        "ess_source_bad_records{source=\"results\"} 0".to_string(),
    ] {
        assert!(metrics.lines().any(|l| l == line), "no {line} in {metrics}");
    }
    let cfg = app.config.display().to_string();
    let (code, out, err) = support::ess(&["stats", "--config", &cfg], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!(
            "source results: 2 file(s) taken, {} record(s), 0 bad record(s)",
            N + 2
        )),
        "{out}"
    );
    assert!(out.contains("parked RES_20251203.DAT: trailer"), "{out}");
    let (code, out, err) = support::ess(&["list", "--source", "results", "--config", &cfg], None);
    assert_eq!(code, 0, "{out}{err}");
    let line = |file: &str| {
        out.lines()
            .find(|l| l.starts_with(file))
            .unwrap_or_else(|| panic!("no {file} in {out}"))
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        line("RES_20251201.DAT")[1..5],
        ["done", &(N + 2).to_string(), &N.to_string(), "0"]
    );
    assert_eq!(line("RES_20251203.DAT")[1..5], ["parked", "0", "0", "0"]);
    assert!(out.contains("RT-COUNT says 4 records"), "{out}");
    let (code, _, err) = support::ess(&["list", "--source", "nope", "--config", &cfg], None);
    assert_ne!(code, 0);
    assert!(
        err.contains("no source named \"nope\" (known: results)"),
        "{err}"
    );
    app.terminate();
    assert_eq!(applied(), N + 2, "nothing of the parked file went upstream");
    assert!(app.dir.join("in/RES_20251201.DAT").exists(), "left alone");
    let r = rows(&app);
    assert_eq!(r.len(), 3);
    assert_eq!(r.iter().map(|r| r.events).sum::<u64>(), N as u64 + 2);
}

#[test]
fn the_shipped_source_compiles_and_its_connector_takes_its_events() {
    let maps = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("maps");
    let sources = ess::source::load_all(&maps, chrono_tz::UTC)
        .unwrap_or_else(|e| panic!("{}", source::problems(&e)));
    assert_eq!(sources.len(), 1);
    let s = &sources[0];
    assert_eq!(
        (s.name.as_str(), s.event_type.as_str()),
        ("cobol_results", "PERMIT_RESULT")
    );
    // The connector's mapping (its certificates are the operator's to put in place).
    let path = maps.join("codifyhq_results.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    let conn = ess::config::connector::parse(&path, &text).unwrap();
    let m = ess::map::Mapping::compile(
        &conn,
        &ess::map::MapContext {
            timezone: chrono_tz::UTC,
        },
    )
    .unwrap();
    assert!(m.selects("PERMIT_RESULT"));
}

#[test]
fn sighup_starts_a_new_source_and_refuses_a_broken_one_keeping_the_running_one() {
    let pki = pki();
    let mut app = Appliance::init();
    setup(&app, &pki, 9);
    let map = app.dir.join("maps/results.yml");
    let text = std::fs::read_to_string(&map).unwrap();
    std::fs::remove_file(&map).unwrap();
    app.start();
    assert!(source_status(&app).is_null(), "no source yet");
    std::fs::write(&map, &text).unwrap();
    app.signal(libc::SIGHUP);
    wait_until("the source after SIGHUP", Duration::from_secs(30), || {
        source_status(&app)["name"] == "results"
    });
    drop_file(&app.dir.join("in"), "RES_1.DAT", &results_file(3));
    wait_until("the file taken", Duration::from_secs(30), || {
        source_status(&app)["records"] == 3
    });
    // A broken source file: refused, the running source goes on.
    std::fs::write(&map, text.replace("chunk: 3", "chunk: many")).unwrap();
    app.signal(libc::SIGHUP);
    wait_until("the refusal", Duration::from_secs(30), || {
        app.stderr().contains("new sources refused")
    });
    drop_file(&app.dir.join("in"), "RES_2.DAT", &results_file(2));
    wait_until("the next file taken", Duration::from_secs(30), || {
        source_status(&app)["records"] == 5
    });
    app.terminate();
}

#[test]
fn ess_check_names_every_problem_of_a_source_file_and_a_missing_folder() {
    let pki = pki();
    let app = Appliance::init();
    setup(&app, &pki, 9);
    let cfg = app.config.display().to_string();
    let (code, out, err) = support::ess(&["check", "--config", &cfg], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("source results: folder"), "{out}");
    let map = app.dir.join("maps/results.yml");
    let text = std::fs::read_to_string(&map).unwrap();
    let broken = text
        .replace("every: 100ms", "every: soon")
        .replace("then: {move: ../done}", "then: archive")
        .replace("records: [R-DETAIL]", "records: [R-DETAYL]")
        .replace(
            "payload: {id: RD-ID, fee: RD-FEE}",
            "payload: {id: RD-ID, fee: RD-FEES}",
        );
    std::fs::write(&map, broken).unwrap();
    let (code, out, err) = support::ess(&["check", "--config", &cfg], None);
    assert_ne!(code, 0);
    let all = format!("{out}{err}");
    for want in [
        "results.yml:9:9:",
        "unknown variant `archive`, expected one of keep, delete, move",
    ] {
        assert!(all.contains(want), "no {want:?} in {all}");
    }
    // With `then` right, the other problems are reported together, each with its place.
    std::fs::write(
        &map,
        text.replace("every: 100ms", "every: soon")
            .replace("records: [R-DETAIL]", "records: [R-DETAYL]")
            .replace(
                "payload: {id: RD-ID, fee: RD-FEE}",
                "payload: {id: RD-ID, fee: RD-FEES}",
            ),
    )
    .unwrap();
    let (code, out, err) = support::ess(&["check", "--config", &cfg], None);
    assert_ne!(code, 0);
    let all = format!("{out}{err}");
    for want in [
        "every: \"soon\" is not a duration",
        "event.records: \"R-DETAYL\" is not a record type of the layout",
        "event.payload: fee: \"RD-FEES\" is not a field of the layout",
    ] {
        assert!(all.contains(want), "no {want:?} in {all}");
    }
    assert!(
        all.lines().filter(|l| l.contains("results.yml:")).count() >= 3,
        "{all}"
    );
    // The folder gone: said so.
    std::fs::write(&map, &text).unwrap();
    std::fs::remove_dir(app.dir.join("in")).unwrap();
    let (code, out, err) = support::ess(&["check", "--config", &cfg], None);
    assert_ne!(code, 0);
    assert!(
        format!("{out}{err}").contains("does not exist"),
        "{out}{err}"
    );
}
