//! The state module against a real feed and ledger: every kind of event state, the lag of
//! a filtering connector, last errors and their times, list kinds, and backup.

use chrono::{TimeZone, Utc};

use super::list::ListKind;
use super::*;
use crate::connector::Phase;
use crate::feed::{Feed, NewEvent, open_database};
use crate::ledger::actions::{Actor, ErrorNote, Settle};
use crate::ledger::{DeadLetter, Ledger, RetryState};

struct Rig {
    dir: tempfile::TempDir,
    feed: Feed,
    ledger: Ledger,
    store: Reader,
    city: ConnectorInfo,
    all: ConnectorInfo,
}

fn new_event(i: usize, ty: &str) -> NewEvent {
    NewEvent {
        event_type: ty.into(),
        payload: serde_json::json!({"id": format!("ID{i}")})
            .as_object()
            .unwrap()
            .clone(),
        key: format!("k{i}"),
        trace_id: "t".into(),
        ts: None,
    }
}

fn info(dir: &std::path::Path, name: &str, events: &str) -> ConnectorInfo {
    let path = dir.join(format!("{name}.yml"));
    std::fs::write(
        &path,
        format!("target: {name}\n{events}fields:\n  ID: id | width:6\ndeliver: {{kind: file, dir: out, file: x.txt}}\nretry: {{max_tries: 3}}\n"),
    )
    .unwrap();
    let spec = crate::connector::load_one(&path, chrono_tz::UTC).unwrap();
    ConnectorInfo::of_spec(&spec, Some(crate::connector::Live::default()))
}

/// 3000 events: every third a PERMIT (seqs 3, 6, ...), the rest OTHER.
fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("ess.redb");
    let db = crate::feed::Store::from(open_database(&db_path).unwrap());
    let feed = Feed::open(db.clone()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let events = (1..=3000)
        .map(|i| new_event(i, if i % 3 == 0 { "PERMIT" } else { "OTHER" }))
        .collect();
    rt.block_on(feed.append(events)).unwrap();
    let city = info(dir.path(), "city", "events: [PERMIT]\n");
    let all = info(dir.path(), "all", "");
    Rig {
        store: Reader::shared(db.clone(), &db_path),
        ledger: Ledger::new(db),
        feed,
        dir,
        city,
        all,
    }
}

fn letter(reason: &str, at: i64) -> DeadLetter {
    DeadLetter {
        reason: reason.into(),
        message: "field ID: too wide".into(),
        at_micros: at,
        attempts: 0,
    }
}

fn state(r: &Rig, info: &ConnectorInfo, seq: u64) -> DeliveryState {
    let ev = r.store.get(seq).unwrap().unwrap();
    delivery_state(&r.store.view().unwrap(), info, &ev).unwrap()
}

#[test]
fn every_event_state_comes_from_one_place() {
    let r = rig();
    let now = Utc::now();
    r.ledger
        .commit_progress("city", 9, vec![], 2, &[(6, letter("map", 1))], now)
        .unwrap();
    r.ledger.requeue_range("city", 3, 3).unwrap();
    let retry = RetryState {
        seq: 12,
        attempts: 2,
        next_at_micros: 0,
        last_error: "down".into(),
    };
    r.ledger.record_failure("city", &retry).unwrap();
    assert_eq!(state(&r, &r.city, 1), DeliveryState::Filtered);
    assert_eq!(
        state(&r, &r.city, 3),
        DeliveryState::Pending,
        "queued again"
    );
    assert_eq!(state(&r, &r.city, 6), DeliveryState::Dead);
    assert_eq!(state(&r, &r.city, 9), DeliveryState::Delivered);
    assert_eq!(state(&r, &r.city, 12), DeliveryState::Retrying);
    assert_eq!(state(&r, &r.city, 15), DeliveryState::Pending);
    let who = Actor { by: "op", at: now };
    r.ledger
        .settle_dead("city", Some(6), Settle::Discard, "obsolete", &who)
        .unwrap();
    assert_eq!(
        state(&r, &r.city, 6),
        DeliveryState::Dead,
        "settled stays dead"
    );
    let ev = r.store.get(6).unwrap().unwrap();
    let shown = r.store.show(std::slice::from_ref(&r.city), &ev).unwrap();
    let detail = shown.targets[0].detail.clone().unwrap();
    assert!(
        detail.starts_with("discard by op at ") && detail.contains("obsolete"),
        "{detail}"
    );
    assert_eq!(shown.targets[0].record.as_ref().unwrap().text, "ID6   \\n");
    let receipt = receipt(&r.store, &[r.city.clone(), r.all.clone()], &ev).unwrap();
    assert_eq!(receipt["city"], DeliveryState::Dead);
    assert_eq!(receipt["all"], DeliveryState::Pending);
}

#[test]
fn lag_counts_only_selected_events_and_ages_the_oldest() {
    let r = rig();
    let feed = feed_status(&r.store, Some(r.feed.last_seq()), Utc::now()).unwrap();
    assert_eq!(
        (feed.first_seq, feed.last_seq, feed.events),
        (Some(1), 3000, 3000)
    );
    assert_eq!(feed.received_last_minute, 3000);
    for cursor in [0u64, 1, 1023, 1024, 1500, 2999, 3000] {
        r.ledger
            .commit_progress("city", cursor, vec![], 0, &[], Utc::now())
            .unwrap();
        r.ledger
            .commit_progress("all", cursor, vec![], 0, &[], Utc::now())
            .unwrap();
        let reports = r
            .store
            .reports(&[r.city.clone(), r.all.clone()], &feed, Utc::now())
            .unwrap();
        assert_eq!(reports[0].lag_events, 1000 - cursor / 3, "city at {cursor}");
        assert_eq!(reports[1].lag_events, 3000 - cursor, "all at {cursor}");
        assert_eq!(reports[0].oldest_pending_secs.is_some(), cursor < 3000);
        assert_eq!(reports[0].condition, Condition::Ok);
    }
    assert!(
        r.store.lag_index().n_blocks() <= 1,
        "blocks below every cursor are forgotten"
    );
}

#[test]
fn last_error_is_the_newest_of_noted_and_parked_and_survives_parking() {
    let r = rig();
    let t = |s| Utc.timestamp_opt(s, 0).unwrap();
    let note = ErrorNote {
        seq: 3,
        message: "connection refused".into(),
        at_micros: t(1000).timestamp_micros(),
    };
    r.ledger.note_error("city", &note).unwrap();
    let feed = feed_status(&r.store, None, Utc::now()).unwrap();
    let one = |r: &Rig| {
        r.store
            .reports(std::slice::from_ref(&r.city), &feed, Utc::now())
            .unwrap()
            .remove(0)
    };
    let e = one(&r).last_error.unwrap();
    assert_eq!(
        (e.message.as_str(), e.at.as_deref()),
        ("connection refused", Some("1970-01-01T00:16:40Z"))
    );
    r.ledger
        .commit_progress(
            "city",
            3,
            vec![],
            0,
            &[(3, letter("retries", t(2000).timestamp_micros()))],
            Utc::now(),
        )
        .unwrap();
    let report = one(&r);
    let e = report.last_error.unwrap();
    assert_eq!(e.message, "seq 3 parked (retries): field ID: too wide");
    assert_eq!(report.condition, Condition::DeadLetters);
    assert_eq!(report.dead_by_reason["retries"], 1);
}

#[test]
fn states_from_the_live_phase_and_the_headline() {
    let r = rig();
    let feed = feed_status(&r.store, None, Utc::now()).unwrap();
    let mut city = r.city.clone();
    let with = |phase: Phase, city: &mut ConnectorInfo| {
        city.live.as_mut().unwrap().phase = phase;
        r.store
            .reports(std::slice::from_ref(city), &feed, Utc::now())
            .unwrap()
            .remove(0)
    };
    assert_eq!(
        with(Phase::Blocked, &mut city).condition,
        Condition::Blocked
    );
    assert_eq!(with(Phase::Paused, &mut city).state, ConnectorState::Paused);
    let c = with(Phase::Corrupted { seq: Some(7) }, &mut city);
    assert_eq!(
        (c.state, c.condition),
        (
            ConnectorState::Corrupted {
                corrupted_seq: Some(7)
            },
            Condition::Corrupted
        )
    );
    city.live = None;
    let off = r
        .store
        .reports(std::slice::from_ref(&city), &feed, Utc::now())
        .unwrap()
        .remove(0);
    assert_eq!(off.condition, Condition::NotRunning);
    let json = serde_json::to_value(&off).unwrap();
    assert_eq!(
        (json["state"].as_str(), json["condition"].as_str()),
        (Some("not_running"), Some("not_running"))
    );
}

#[test]
fn lists_pending_dead_and_the_newest_delivered() {
    let r = rig();
    let now = Utc::now();
    r.ledger
        .commit_progress("city", 2400, vec![], 800, &[(2397, letter("map", 1))], now)
        .unwrap();
    let (delivered, more) = r
        .store
        .list(std::slice::from_ref(&r.city), ListKind::Delivered, 3)
        .unwrap();
    let seqs: Vec<u64> = delivered.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        [2391, 2394, 2400],
        "newest delivered, oldest first, not the dead one"
    );
    assert!(more);
    let (pending, _) = r
        .store
        .list(std::slice::from_ref(&r.city), ListKind::Pending, 2)
        .unwrap();
    assert_eq!(
        pending.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [2403, 2406]
    );
    let (dead, more) = r
        .store
        .list(std::slice::from_ref(&r.city), ListKind::Dead, 5)
        .unwrap();
    assert_eq!(
        (dead.len(), dead[0].reason.as_deref(), more),
        (1, Some("map"), false)
    );
}

#[test]
fn a_backup_copies_every_table_and_never_overwrites() {
    let r = rig();
    let who = Actor {
        by: "op",
        at: Utc::now(),
    };
    r.ledger.pause("city", "maintenance", &who).unwrap();
    let path = r.dir.path().join("b.redb");
    let report = r.store.backup(&path).unwrap();
    assert_eq!(report.tables["events"], 3000);
    assert_eq!(report.tables["key_index"], 3000);
    assert_eq!(report.tables["pauses"], 1);
    assert_eq!(report.tables["actions"], 1);
    let copied: Vec<&str> = report.tables.keys().map(String::as_str).collect();
    let mut every: Vec<&str> = crate::feed::schema::TABLES.to_vec();
    every.sort_unstable();
    assert_eq!(
        copied, every,
        "a backup copies every table the schema names"
    );
    let copy = Reader::open_read_only(&path).unwrap();
    assert!(copy.view().unwrap().pause("city").unwrap().is_some());
    let again = r.store.backup(&path).unwrap_err();
    assert!(
        again.is_usage() && again.to_string().contains("exists"),
        "{again}"
    );
    assert!(
        r.store
            .backup(std::path::Path::new("rel.redb"))
            .unwrap_err()
            .is_usage()
    );
}

#[test]
fn show_makes_the_record_as_the_map_masks_it() {
    let r = rig();
    let path = r.dir.path().join("masked.yml");
    std::fs::write(
        &path,
        "target: masked\nfields:\n  ID: id | width:6\ntransform: {mask: {id: last4}}\ndeliver: {kind: file, dir: out, file: m.txt}\n",
    )
    .unwrap();
    let spec = crate::connector::load_one(&path, chrono_tz::UTC).unwrap();
    let masked = ConnectorInfo::of_spec(&spec, None);
    let ev = r.store.get_by_key("k1234").unwrap().unwrap();
    let shown = r.store.show(&[masked], &ev).unwrap();
    let text = &shown.targets[0].record.as_ref().unwrap().text;
    assert_eq!(
        text, "**1234\\n",
        "masked as the map masks it, never the payload's value"
    );
}

#[test]
fn received_counts_find_the_first_recent_event_over_a_compacted_prefix() {
    let r = rig();
    let feed = feed_status(&r.store, None, Utc::now() + chrono::Duration::minutes(2)).unwrap();
    assert_eq!(
        (feed.received_last_minute, feed.received_last_hour),
        (0, 3000)
    );
    let since = r
        .store
        .first_received_at_or_after(Utc::now() - chrono::Duration::hours(1))
        .unwrap();
    assert_eq!(since, Some(1));
    let later = r
        .store
        .first_received_at_or_after(Utc::now() + chrono::Duration::hours(1))
        .unwrap();
    assert_eq!(later, None);
}
