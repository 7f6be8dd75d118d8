//! Pickup over SFTP with real parts (issue 14 points 1, 3, 5, 7): a GnuCOBOL program
//! (tests/fixtures/cobol/reswrite.cob, `cobc`) writes the nightly results file (RESULTS.cpy:
//! header, details with COMP-3, COMP, COMP-5, COMP-1/2, PIC N, OCCURS DEPENDING ON,
//! trailer; RDW-framed) under a temp name into a real OpenSSH sshd's folder and renames it;
//! ESS, pinning the server's host key, takes each file over SFTP into the feed and an HTTP
//! connector delivers the records as JSON to an endpoint over mutual TLS that dedupes by
//! Idempotency-Key. ESS is killed with SIGKILL while it takes the files and while it
//! delivers: every record arrives exactly once, in order, with the values COBOL wrote, and
//! each file is moved on the server only after its records are in the feed.
//!
//! GnuCOBOL has no CODE-SET, so the file is ASCII (with the machine's COMP-5 and IEEE
//! floats, as `tests/cobol_judge.rs`); EBCDIC decoding is the map's, checked there and in
//! `tests/map_codepages.rs`.

#[path = "support/cobol.rs"]
mod cobol;
#[allow(dead_code)]
#[path = "support/http.rs"]
mod http;
#[path = "support/pickup.rs"]
mod pickup;
#[path = "support/source.rs"]
mod source;
#[path = "support/sshd.rs"]
mod sshd;
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ess::ledger::sources::FileState;
use pickup::{Pki, events, gated_codifyhq, pki, rows, source_status, write_codifyhq};
use support::{Appliance, rt, wait_until};

/// Files the COBOL job writes (one run each), 4 details per file.
const FILES: usize = 30;
const DETAILS: usize = 4;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The detail records RESWRITE writes: (permit, status, fee, balance, owner), as text.
/// The owner is PIC N (national, UTF-16BE); JSON goes upstream in UTF-8, "Ñandú" as it is.
const WRITTEN: [(&str, &str, &str, &str, &str); DETAILS] = [
    ("BP-802", "A", "1234.56", "-12.34", "Ñandú"),
    ("MAX-PERMIT", "R", "9999999.99", "99999.99", "MAX  Z"),
    ("MIN-PERMIT", "A", "-9999999.99", "-99999.99", ""),
    ("NEG-ZERO", "A", "-0.00", "-0.00", ""),
];

fn setup(app: &Appliance, sshd: &sshd::Sshd, pki: &Pki, port: u16) {
    let maps = app.dir.join("maps");
    std::fs::copy(root().join("maps/RESULTS.cpy"), maps.join("RESULTS.cpy")).unwrap();
    std::fs::create_dir_all(sshd.path("done")).unwrap();
    std::fs::write(
        maps.join("results_sftp.yml"),
        format!(
            "source:\n  name: results\n  kind: sftp\n  host: 127.0.0.1\n  port: {}\n  user: {}\n  key: {}\n  known_hosts: {}\n  dir: {}\n  pattern: \"RESULTS_*.DAT\"\n  ready: rename\n  every: 100ms\n  chunk: 1\n  trailer: {{record: RES-TRAILER, count: RT-COUNT}}\n  then: {{move: {}}}\n  timeout: 10s\nformat: fixed\nlayout: RESULTS.cpy\nrecord: {{encoding: ascii, framing: rdw, floats: ieee, byte_order: little}}\nlayout_when: {{RES-HEADER: RH-IS-HEADER, RES-DETAIL: RD-IS-DETAIL, RES-TRAILER: RT-IS-TRAILER}}\nevent:\n  type: PERMIT_RESULT\n  records: [RES-DETAIL]\n  payload: {{id: RD-PERMIT-ID, status: RD-STATUS, fee: RD-FEE, balance: RD-BALANCE, owner: RD-OWNER}}\n",
            sshd.port,
            sshd::user(),
            sshd.path("user_ed25519").display(),
            sshd.path("known_hosts").display(),
            sshd.drop_dir().display(),
            sshd.path("done").display(),
        ),
    )
    .unwrap();
    write_codifyhq(
        &maps,
        pki,
        port,
        "{permit: id, status: status, fee: fee, balance: balance, owner: owner}",
    );
}

#[test]
fn cobol_results_over_sftp_reach_codifyhq_once_in_order_through_kills() {
    let runtime = rt();
    let pki = pki();
    let (endpoint, open) = gated_codifyhq(&runtime, &pki);
    let sshd = sshd::Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let writer = cobol::cobc(work.path(), "reswrite");
    // The COBOL job writes each file under a temp name on the server, then renames it.
    let drop = sshd.drop_dir();
    for n in 1..=FILES {
        let tmp = drop.join(format!("RESULTS_{n:03}.DAT.tmp"));
        let st = Command::new(&writer)
            .env("VBFILE", &tmp)
            .env("FBFILE", work.path().join("fb.dat"))
            .status()
            .unwrap();
        assert!(st.success());
        std::fs::rename(&tmp, drop.join(format!("RESULTS_{n:03}.DAT"))).unwrap();
    }
    let written = std::fs::read(drop.join("RESULTS_001.DAT")).unwrap();

    let mut app = Appliance::init();
    setup(&app, &sshd, &pki, endpoint.addr.port());
    let (code, out, err) = support::ess(
        &["check", "--config", &app.config.display().to_string()],
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    let total = FILES * DETAILS;
    let applied = || endpoint.applied.lock().unwrap().len();

    let source = source_status;

    // Killed while the files are being taken (some records in the feed, not all files).
    app.start();
    wait_until(
        "the first records in the feed",
        Duration::from_secs(60),
        || source(&app)["records"].as_u64().is_some_and(|n| n >= 1),
    );
    app.kill9();
    let r = rows(&app);
    let during_pickup = r.len() < FILES || r.iter().any(|f| f.state != FileState::Done);
    assert!(during_pickup, "every file was taken before the first kill");
    // Nothing moved on the server before its records were committed.
    for f in &r {
        let on_server = drop.join(&f.name).exists();
        assert!(
            on_server || f.state == FileState::Done,
            "{} moved early",
            f.name
        );
    }

    // Resumed: every file taken; then killed while delivering.
    app.start();
    wait_until("every file in the feed", Duration::from_secs(120), || {
        source(&app)["files_taken"].as_u64() == Some(FILES as u64)
    });
    assert_eq!(applied(), 0);
    open.store(true, Ordering::SeqCst);
    wait_until("some records upstream", Duration::from_secs(60), || {
        applied() >= 20
    });
    app.kill9();
    assert!(applied() < total, "delivered whole before the kill");
    let r = rows(&app);
    assert!(r.iter().all(|f| f.state == FileState::Done), "{r:?}");
    app.start();
    let before = applied();
    wait_until("more records upstream", Duration::from_secs(60), || {
        applied() >= (before + 20).min(total)
    });
    app.kill9();
    app.start();
    wait_until("every record upstream", Duration::from_secs(120), || {
        applied() == total
    });
    app.terminate();
    let r = rows(&app);
    assert_eq!(r.len(), FILES);
    assert!(
        r.iter()
            .all(|f| f.state == FileState::Done && f.then_done && f.events == DETAILS as u64),
        "{r:?}"
    );

    // Each record once, in order (files by name, records by index), values as COBOL wrote.
    let got = endpoint.applied.lock().unwrap().clone();
    assert_eq!(got.len(), total);
    let mut last: Option<(String, u64)> = None;
    for (i, (key, body)) in got.iter().enumerate() {
        let parts: Vec<&str> = key.split('/').collect();
        assert_eq!((parts.len(), parts[0]), (3, "results"), "{key}");
        let index: u64 = parts[2].parse().unwrap();
        assert_eq!(index, (i % DETAILS) as u64 + 1, "record {i}: {key}");
        if let Some((k, _)) = &last
            && index == 1
        {
            assert_ne!(k, parts[1], "a new file starts at record 1");
        }
        last = Some((parts[1].to_string(), index));
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        let (permit, status, fee, balance, owner) = WRITTEN[i % DETAILS];
        assert_eq!(v["permit"], permit, "{v}");
        assert_eq!(v["status"], status, "{v}");
        assert_eq!(v["fee"].to_string(), fee, "{v}");
        assert_eq!(v["balance"].to_string(), balance, "{v}");
        assert_eq!(v["owner"], owner, "{v}");
    }
    // The feed holds what COBOL wrote, the PIC N owner too, once per record.
    let feed = events(&app);
    assert_eq!(feed.len(), total);
    for (i, e) in feed.iter().enumerate() {
        assert_eq!(e.key, got[i].0, "the feed's order is the delivery's");
        assert_eq!(
            e.payload.tree().unwrap()["owner"],
            WRITTEN[i % DETAILS].4,
            "{:?}",
            e.payload
        );
    }
    let mut files: Vec<String> = got
        .iter()
        .map(|(k, _)| k.split('/').nth(1).unwrap().to_string())
        .collect();
    files.dedup();
    assert_eq!(
        files.len(),
        FILES,
        "each file's records together, each file once"
    );
    // Every file moved on the server after its records, byte for byte; none left.
    for n in 1..=FILES {
        let name = format!("RESULTS_{n:03}.DAT");
        assert!(!drop.join(&name).exists(), "{name} still in the folder");
        assert_eq!(
            std::fs::read(sshd.path("done").join(&name)).unwrap(),
            written
        );
    }
    assert!(sshd.log().contains("Accepted publickey"), "{}", sshd.log());
}

/// The source's map file for `sshd` in `dir` (with `extra` source keys), compiled.
fn sftp_source(dir: &Path, sshd: &sshd::Sshd, extra: &str) -> ess::source::SourceSpec {
    std::fs::copy(root().join("maps/RESULTS.cpy"), dir.join("RESULTS.cpy")).unwrap();
    let path = dir.join("results_sftp.yml");
    std::fs::write(
        &path,
        format!(
            "source:\n  name: results\n  kind: sftp\n  host: 127.0.0.1\n  port: {}\n  user: {}\n  key: {}\n  known_hosts: {}\n  dir: {}\n  pattern: \"RESULTS_*.DAT\"\n  trailer: {{record: RES-TRAILER, count: RT-COUNT}}\n  timeout: 10s\n{extra}format: fixed\nlayout: RESULTS.cpy\nrecord: {{encoding: ascii, framing: rdw, floats: ieee, byte_order: little}}\nlayout_when: {{RES-HEADER: RH-IS-HEADER, RES-DETAIL: RD-IS-DETAIL, RES-TRAILER: RT-IS-TRAILER}}\nevent:\n  type: PERMIT_RESULT\n  records: [RES-DETAIL]\n",
            sshd.port,
            sshd::user(),
            sshd.path("user_ed25519").display(),
            sshd.path("known_hosts").display(),
            sshd.drop_dir().display(),
        ),
    )
    .unwrap();
    source::compile(&path)
}

#[test]
fn a_changed_host_key_takes_nothing_and_then_delete_waits_for_the_server() {
    let runtime = rt();
    let sshd = sshd::Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let writer = cobol::cobc(work.path(), "reswrite");
    let drop = sshd.drop_dir();
    let tmp = drop.join("RESULTS_001.DAT.partial");
    let st = Command::new(&writer)
        .env("VBFILE", &tmp)
        .env("FBFILE", work.path().join("fb.dat"))
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::rename(&tmp, drop.join("RESULTS_001.DAT")).unwrap();
    let spec = Arc::new(sftp_source(work.path(), &sshd, "  then: delete\n"));
    let store = source::memory_store();
    let sources = ess::ledger::sources::Sources::new(store.clone());
    let open = || spec.open_dir(runtime.handle().clone()).unwrap();

    // The server's host key is not the pinned one: refused, nothing read, nothing taken.
    sshd.new_host_key();
    let mut sshd = sshd;
    sshd.restart();
    let mut p = ess::source::local::Pickup::new(spec.clone(), sources.clone(), open());
    let err = p.scan().unwrap_err().to_string();
    assert!(err.contains("host key refused"), "{err}");
    assert!(sources.files("results").unwrap().is_empty());
    assert!(drop.join("RESULTS_001.DAT").exists());

    // Pinned again: taken, and deleted on the server after the commit.
    sshd.write_known_hosts();
    let mut p = ess::source::local::Pickup::new(spec.clone(), sources.clone(), open());
    let scan = p.scan().unwrap();
    assert_eq!((scan.files_done, scan.events, scan.bad), (1, 4, 0));
    assert!(!drop.join("RESULTS_001.DAT").exists());
    let rows = sources.files("results").unwrap();
    assert_eq!(rows.len(), 1);
    assert!(rows[0].1.then_done);
    assert_eq!(ess::feed::read_last_seq(&store).unwrap(), 4);
    // A temp name on the server is never taken.
    std::fs::write(drop.join("RESULTS_002.DAT.partial"), b"half").unwrap();
    let scan = p.scan().unwrap();
    assert_eq!((scan.files_done, scan.events), (0, 0));
}
