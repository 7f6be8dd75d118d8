//! Upgrading a real feed of the first release (feed format 1, `tests/fixtures/v1/ess.redb`,
//! made by `tests/fixtures/v1/make.sh` with the binary of commit 69d3cf1): the new build
//! migrates it in place on its first open, delivers the pending events exactly once, keeps
//! what was delivered, dead and retrying, and dedupes the keys the old release stored.

#[path = "support/http.rs"]
#[allow(dead_code)]
mod http;
mod support;

use std::path::Path;
use std::time::Duration;

use ess::feed::schema::{FORMAT_VERSION, META};
use redb::ReadableDatabase;
use support::*;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/v1/ess.redb");

fn permits_map(url: &str) -> String {
    format!(
        "target: permits_http\nevents: [PERMIT_STATUS]\nformat: json\nfields:\n  id: id\n  status: status\n  fee: fee | default:\"0\"\ndeliver:\n  kind: http\n  url: {url}\n  method: POST\n"
    )
}

/// An appliance whose data folder holds a copy of the v1 fixture, delivering to `url`.
fn upgraded_appliance(url: &str) -> Appliance {
    let app = Appliance::init();
    std::fs::remove_file(app.dir.join("maps/permit_map.yml")).unwrap();
    std::fs::write(app.dir.join("maps/permits_http.yml"), permits_map(url)).unwrap();
    std::fs::create_dir_all(app.dir.join("data")).unwrap();
    std::fs::copy(FIXTURE, app.dir.join("data/ess.redb")).unwrap();
    app
}

fn recovery_flag_set(db: &Path) -> bool {
    // Byte 9 of a redb file is its god byte; bit 2 means "needs recovery at the next open".
    std::fs::read(db).unwrap()[9] & 2 != 0
}

#[test]
fn a_v1_feed_is_migrated_in_place_and_its_pending_events_are_delivered_exactly_once() {
    let rt = rt();
    let endpoint = rt.block_on(http::Endpoint::start(http::ok_json()));
    let mut app = upgraded_appliance(&endpoint.url("/permits"));
    let db_path = app.dir.join("data/ess.redb");
    app.start();

    // Seqs 5-7 were pending for permits_http when the old release stopped.
    wait_until(
        "the pending events delivered",
        Duration::from_secs(60),
        || endpoint.applied().len() >= 3,
    );
    // Keys the first release stored still dedupe: v1-2 (delivered) and v1-6 (pending), and
    // seq 5's content key (SHA-256 of its canonical JSON, computed the same way).
    let body = serde_json::json!([
        {"type":"PERMIT_STATUS","idempotency_key":"v1-2","payload":{"id":"BP-2","status":"REJECTED"}},
        {"type":"PERMIT_STATUS","idempotency_key":"v1-6","payload":{"id":"BP-6","status":"APPROVED"}},
        {"type":"PERMIT_STATUS","payload":{"fee":7,"status":"APPROVED","id":"BP-5"}},
        {"type":"PERMIT_STATUS","idempotency_key":"new-8","payload":{"id":"BP-8","status":"APPROVED"}}
    ]);
    let answer = rt
        .block_on(app.client().post_events(body.to_string(), false))
        .unwrap();
    assert_eq!(answer.status, 202, "{:?}", answer.body);
    let out: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(out["accepted"], 1, "{out}");
    assert_eq!(out["duplicates"], 3, "{out}");
    assert_eq!(
        out["first_seq"], 8,
        "seqs go on after the old release's last one"
    );
    wait_until("the new event delivered", Duration::from_secs(60), || {
        endpoint.applied().len() >= 4
    });
    assert_eq!(app.terminate().code(), Some(0));

    let applied = endpoint.applied();
    let keys: Vec<&str> = applied.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys.len(), 4, "{keys:?}");
    assert_eq!(keys[0].len(), 64, "seq 5 carries its content key: {keys:?}");
    assert_eq!(&keys[1..], ["v1-6", "v1-7", "new-8"]);
    let ids: Vec<String> = applied
        .iter()
        .map(|(_, b)| {
            let v: serde_json::Value = serde_json::from_slice(b).unwrap();
            v["id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        ids,
        ["BP-5", "BP-6", "BP-7", "BP-8"],
        "in feed order, once each"
    );
    assert!(
        !recovery_flag_set(&db_path),
        "a clean stop leaves no repair"
    );

    // The ledger came through: the dead letter, the other connector's retry, the counts.
    let db = ess::feed::open_database_read_only(&db_path).unwrap();
    let tx = db.begin_read().unwrap();
    let version = tx.open_table(META).unwrap().get("format_version").unwrap();
    assert_eq!(version.map(|v| v.value()), Some(FORMAT_VERSION));
    drop(tx);
    let dead = ess::ledger::read_dead_letters(&db, "permits_http").unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].0, dead[0].1.reason.as_str()), (4, "map"));
    let cursor = ess::ledger::read_cursor(&db, "permits_http")
        .unwrap()
        .unwrap();
    assert_eq!((cursor.seq, cursor.delivered), (8, 3 + 4));
    let retry = ess::ledger::read_retry(&db, "flaky_http").unwrap().unwrap();
    assert_eq!((retry.seq, retry.attempts), (1, 1));
    assert!(retry.last_error.contains("cannot connect"), "{retry:?}");
    assert_eq!(
        ess::ledger::read_cursor(&db, "flaky_http")
            .unwrap()
            .unwrap()
            .seq,
        0
    );
    let events = ess::feed::read_after(&db, 0, 100).unwrap();
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=8).collect::<Vec<_>>()
    );
    assert_eq!(
        events[0].payload.tree().unwrap()["fee"].to_string(),
        "120.50"
    );
    assert_eq!(events[1].trace_id, "trace-BP-2");
    assert_eq!(
        events[2].ts.map(|t| t.to_rfc3339()),
        Some("2025-04-12T10:03:00+00:00".to_string())
    );
    assert_eq!(events[5].payload.tree().unwrap()["note"], "Ünïcode ✓");
    let by_key = ess::feed::get_by_key(&db, "v1-2").unwrap().unwrap();
    assert_eq!(by_key.seq, 2);
}

#[test]
fn the_migration_is_one_transaction_and_runs_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ess.redb");
    std::fs::copy(FIXTURE, &path).unwrap();
    let before = std::fs::read(FIXTURE).unwrap();
    let feed = ess::feed::Feed::open(ess::feed::open_database(&path).unwrap()).unwrap();
    assert_eq!(feed.last_seq(), 7);
    let events = feed.read_after(0, 100).unwrap();
    assert_eq!(events.len(), 7);
    feed.close();
    // Opening the migrated file again changes nothing about its contents.
    let feed = ess::feed::Feed::open(ess::feed::open_database(&path).unwrap()).unwrap();
    assert_eq!(feed.read_after(0, 100).unwrap(), events);
    feed.close();
    assert_eq!(
        std::fs::read(FIXTURE).unwrap(),
        before,
        "the fixture itself untouched"
    );
}

#[test]
fn a_v1_feed_migrated_with_encryption_on_has_its_payloads_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ess.redb");
    std::fs::copy(FIXTURE, &path).unwrap();
    let key = ess::feed::seal::register(ess::feed::seal::Key::from_bytes(&[0x5a; 32]));
    let store = ess::feed::Store::open(
        &path,
        ess::feed::StoreOptions {
            seal: Some(key),
            ..Default::default()
        },
    )
    .unwrap();
    let feed = ess::feed::Feed::open(store).unwrap();
    let n = ess::feed::visit_after(feed.db(), 0, 100, |view| {
        assert!(view.is_sealed(), "seq {}", view.seq);
        Ok(std::ops::ControlFlow::Continue(()))
    })
    .unwrap();
    assert_eq!(n, 7);
    let events = feed.read_after(0, 100).unwrap();
    assert_eq!(events[0].payload.tree().unwrap()["id"], "BP-1");
    let dead = ess::ledger::read_dead_letters(feed.db(), "permits_http").unwrap();
    assert_eq!(dead[0].1.reason, "map");
    feed.close();
}
