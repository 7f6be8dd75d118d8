//! Feed retention: compaction deletes exactly what it may, and bounds the file size under
//! steady load.

use std::sync::Arc;

use chrono::{Duration, Utc};
use ess::feed::retention::{compact, compact_passed, free_disk_bytes, lowest_cursor};
use ess::feed::{Feed, NewEvent, open_database};
use ess::ledger::{DeadLetter, Ledger};

fn event(key: String) -> NewEvent {
    let payload = serde_json::json!({
        "id": key, "status": "APPROVED", "applicant": "x".repeat(120), "amount": 19.99
    });
    NewEvent {
        event_type: "PERMIT_STATUS".into(),
        payload: payload.as_object().unwrap().clone(),
        key,
        trace_id: "t".into(),
        ts: None,
    }
}

async fn append_n(feed: &Feed, prefix: &str, n: usize) {
    for chunk in 0..n.div_ceil(1000) {
        let batch = (chunk * 1000..((chunk + 1) * 1000).min(n))
            .map(|i| event(format!("{prefix}-{i}")))
            .collect();
        feed.append(batch).await.unwrap();
    }
}

fn open(dir: &std::path::Path) -> Feed {
    Feed::open(Arc::new(open_database(&dir.join("ess.redb")).unwrap())).unwrap()
}

#[tokio::test]
async fn compaction_deletes_only_passed_old_events_and_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    let feed = open(dir.path());
    append_n(&feed, "a", 100).await;
    let future = Utc::now() + Duration::seconds(5);

    // Too young: nothing goes.
    let stats = compact(feed.db(), 100, Utc::now() - Duration::hours(1)).unwrap();
    assert_eq!(stats.deleted, 0);

    // Only up to the lowest cursor (40).
    let stats = compact(feed.db(), 40, future).unwrap();
    assert_eq!(
        (stats.deleted, stats.last_deleted, stats.transactions),
        (40, Some(40), 1)
    );
    let left = feed.read_after(0, 1000).unwrap();
    assert_eq!(left.first().unwrap().seq, 41);
    assert_eq!(left.len(), 60);
    assert!(feed.get_by_key("a-0").unwrap().is_none());
    assert_eq!(feed.get_by_key("a-40").unwrap().unwrap().seq, 41);

    // A dead letter (seq 60) and a queued replay (seq 55) of any connector hold compaction.
    let ledger = Ledger::new(feed.db().clone());
    let letter = DeadLetter {
        reason: "permanent".into(),
        message: "400".into(),
        at_micros: 0,
        attempts: 1,
    };
    ledger
        .commit_progress("c", 70, vec![], 0, &[(60, letter)], Utc::now())
        .unwrap();
    let stats = compact(feed.db(), 100, future).unwrap();
    assert_eq!((stats.deleted, stats.effective_bound), (19, 59));
    ledger.requeue_dead("c").unwrap();
    ledger.requeue_range("c", 62, 62).unwrap();
    let stats = compact(feed.db(), 100, future).unwrap();
    assert_eq!(stats.deleted, 0);

    // Seqs stay gap-free after compaction, and a compacted key is accepted again as new.
    let out = feed.append(vec![event("a-0".into())]).await.unwrap();
    assert_eq!(out.first_seq, Some(101));
    feed.close();
}

#[tokio::test]
async fn the_daemon_pass_keeps_what_the_slowest_connector_needs_and_young_events() {
    let dir = tempfile::tempdir().unwrap();
    let feed = open(dir.path());
    append_n(&feed, "c", 50).await;
    let ledger = Ledger::new(feed.db().clone());
    ledger
        .commit_progress("fast", 50, vec![], 50, &[], Utc::now())
        .unwrap();
    ledger
        .commit_progress("slow", 20, vec![], 20, &[], Utc::now())
        .unwrap();
    ledger
        .commit_progress("removed", 1, vec![], 1, &[], Utc::now())
        .unwrap();
    assert_eq!(lowest_cursor(feed.db(), &["fast", "slow"]).unwrap(), 20);
    assert_eq!(
        lowest_cursor(feed.db(), &["fast", "new"]).unwrap(),
        0,
        "a connector without cursor holds all"
    );
    assert_eq!(lowest_cursor(feed.db(), &[]).unwrap(), 0);

    let later = Utc::now() + Duration::hours(2);
    let hour = std::time::Duration::from_secs(3600);
    // Events received now are younger than 1h at `now`: kept.
    assert_eq!(
        compact_passed(feed.db(), &["fast", "slow"], hour, Utc::now())
            .unwrap()
            .deleted,
        0
    );
    // Two hours later they are old; only what "slow" passed goes ("removed" holds nothing).
    let stats = compact_passed(feed.db(), &["fast", "slow"], hour, later).unwrap();
    assert_eq!((stats.deleted, stats.last_deleted), (20, Some(20)));
    // A huge retention never overflows.
    let forever = std::time::Duration::from_secs(u64::MAX);
    assert_eq!(
        compact_passed(feed.db(), &["fast"], forever, later)
            .unwrap()
            .deleted,
        0
    );
    feed.close();
}

#[tokio::test]
async fn compaction_works_in_bounded_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let feed = open(dir.path());
    append_n(&feed, "b", 25_000).await;
    let stats = compact(feed.db(), 25_000, Utc::now() + Duration::seconds(5)).unwrap();
    assert_eq!((stats.deleted, stats.transactions), (25_000, 3));
    assert!(feed.read_after(0, 10).unwrap().is_empty());
    feed.close();
}

/// File size after each of 12 rounds of 10,000 appended events, compacting everything
/// after each round or not at all.
async fn sizes_per_round(with_compaction: bool) -> Vec<u64> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ess.redb");
    let feed = open(dir.path());
    let mut sizes = Vec::new();
    for round in 0..12 {
        append_n(&feed, &format!("r{round}"), 10_000).await;
        if with_compaction {
            let stats = compact(
                feed.db(),
                feed.last_seq(),
                Utc::now() + Duration::seconds(5),
            )
            .unwrap();
            assert_eq!(stats.deleted, 10_000);
        }
        sizes.push(std::fs::metadata(&path).unwrap().len());
    }
    feed.close();
    sizes
}

#[tokio::test]
async fn file_size_plateaus_under_steady_load_with_compaction() {
    let compacted = sizes_per_round(true).await;
    let control = sizes_per_round(false).await;
    eprintln!("file sizes per round, compacted: {compacted:?}\nwithout compaction: {control:?}");
    // Later rounds reuse the pages earlier compactions freed: no growth after warm-up
    // beyond a generous margin ...
    let (early, late) = (compacted[3], compacted[11]);
    assert!(
        late <= early + early / 2,
        "file kept growing: {compacted:?}"
    );
    // ... while the same load without compaction keeps growing.
    assert!(
        control[11] > 2 * late,
        "control did not grow: {control:?} vs {compacted:?}"
    );
}

#[test]
fn free_disk_is_reported_for_a_real_folder_and_fails_for_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    assert!(free_disk_bytes(dir.path()).unwrap() > 0);
    assert!(free_disk_bytes(&dir.path().join("missing")).is_err());
}
