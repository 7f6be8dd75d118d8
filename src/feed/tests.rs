//! Feed tests: group commit, dedupe, format checks.

use super::*;
use schema::META;
use std::time::Duration;

fn new_event(key: &str) -> NewEvent {
    let payload = serde_json::json!({"id": key, "amount": 19.99})
        .as_object()
        .unwrap()
        .clone();
    NewEvent {
        event_type: "T".into(),
        payload,
        key: key.into(),
        trace_id: "t".into(),
        ts: None,
    }
}

fn open(dir: &std::path::Path) -> Feed {
    Feed::open(Arc::new(open_database(&dir.join("ess.redb")).unwrap())).unwrap()
}

#[tokio::test]
async fn seqs_are_gap_free_and_keys_dedupe_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let feed = open(dir.path());
    let out = feed
        .append(vec![new_event("a"), new_event("b"), new_event("a")])
        .await
        .unwrap();
    assert_eq!(
        out,
        AppendOutcome {
            accepted: 2,
            duplicates: 1,
            first_seq: Some(1),
            last_seq: Some(2)
        }
    );
    feed.close();

    let feed = open(dir.path());
    assert_eq!(feed.last_seq(), 2);
    let out = feed
        .append(vec![new_event("b"), new_event("c")])
        .await
        .unwrap();
    assert_eq!(
        out,
        AppendOutcome {
            accepted: 1,
            duplicates: 1,
            first_seq: Some(3),
            last_seq: Some(3)
        }
    );
    let all = feed.read_after(0, 10).unwrap();
    assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(all[2].key, "c");
    assert_eq!(
        all[0].payload.tree().unwrap()["amount"].to_string(),
        "19.99"
    );
    assert_eq!(feed.get_by_key("b").unwrap().unwrap().seq, 2);
    assert!(feed.get_by_key("zz").unwrap().is_none());
}

/// `n` producers appending `each` events one at a time, keys `{producer}-{i}`; each stops
/// when the feed is closed and returns the keys whose appends were acknowledged.
fn producers(feed: &Feed, n: usize, each: usize) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
    (0..n)
        .map(|t| {
            let feed = feed.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..each {
                    let key = format!("{t}-{i}");
                    match feed.append(vec![new_event(&key)]).await {
                        Ok(_) => acked.push(key),
                        Err(Error::Closed) => break,
                        Err(e) => panic!("{e}"),
                    }
                }
                acked
            })
        })
        .collect()
}

#[tokio::test]
async fn concurrent_appends_share_commits_and_stay_gap_free() {
    let dir = tempfile::tempdir().unwrap();
    let feed = open(dir.path());
    for t in producers(&feed, 16, 20) {
        assert_eq!(t.await.unwrap().len(), 20);
    }
    let all = feed.read_after(0, 1000).unwrap();
    assert_eq!(all.len(), 320);
    assert!(all.iter().enumerate().all(|(i, e)| e.seq == i as u64 + 1));
}

#[test]
fn a_newer_format_version_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_database(&dir.path().join("ess.redb")).unwrap();
    let tx = db.begin_write().unwrap();
    tx.open_table(META)
        .unwrap()
        .insert("format_version", 99)
        .unwrap();
    tx.commit().unwrap();
    let err = Feed::open(db).err().unwrap().to_string();
    assert!(err.contains("format version 99"), "{err}");
}

/// A ledger write takes the queued appends into its own transaction: one commit, one sync,
/// where separate commits would pay one each.
#[tokio::test]
async fn a_ledger_write_carries_the_queued_appends_in_one_commit() {
    use crate::fault::PowerCut;
    let disk = PowerCut::new();
    let db = store::builder(0)
        .create_with_backend(disk.backend())
        .unwrap();
    let store = Store::from_database(db, StoreOptions::default());
    store.prepare().unwrap();
    let ledger = crate::ledger::Ledger::new(store.clone());
    // Separate commits: an append (written by a ledger-less round), then a ledger write;
    // ten times. (The file's growth adds a sync now and then, hence rounds.)
    let before = disk.n_syncs();
    for i in 0..10 {
        let answer = store
            .enqueue(Batch::from(vec![new_event(&format!("s{i}"))]))
            .unwrap();
        store.write(|_| Ok(())).unwrap();
        answer.await.unwrap().unwrap();
        ledger.ensure_cursor(&format!("s{i}"), 0).unwrap();
    }
    let separate = disk.n_syncs() - before;
    // Together: the append waits in the queue, the ledger write commits both.
    let before = disk.n_syncs();
    for i in 0..10 {
        let answer = store
            .enqueue(Batch::from(vec![new_event(&format!("t{i}"))]))
            .unwrap();
        ledger.ensure_cursor(&format!("t{i}"), 0).unwrap();
        let out = answer.await.unwrap().unwrap();
        assert_eq!(out.first_seq, Some(11 + i));
    }
    let together = disk.n_syncs() - before;
    assert!(
        together * 3 < separate * 2,
        "one commit instead of two: {together} vs {separate} syncs"
    );
    // A ledger closure that fails commits nothing and leaves the appends queued, unanswered.
    let mut answer = store.enqueue(Batch::from(vec![new_event("c")])).unwrap();
    let err = store
        .write(|_| -> Result<(), Error> { Err(Error::Unavailable("no".into())) })
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)));
    assert!(answer.try_recv().is_err(), "not answered yet");
    store.write(|_| Ok(())).unwrap();
    assert_eq!(answer.await.unwrap().unwrap().first_seq, Some(21));
    assert_eq!(read_after(&store, 0, 100).unwrap().len(), 21);
}

#[test]
fn a_damaged_last_seq_is_refused_at_open_instead_of_reusing_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ess.redb");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let feed = open(dir.path());
    rt.block_on(feed.append(vec![new_event("a"), new_event("b")]))
        .unwrap();
    feed.close();
    let db = open_database(&path).unwrap();
    let tx = db.begin_write().unwrap();
    tx.open_table(META).unwrap().insert("last_seq", 1).unwrap();
    tx.commit().unwrap();
    let err = Feed::open(db).err().unwrap().to_string();
    assert!(err.contains("last_seq"), "{err}");
}

#[test]
fn a_panic_in_a_guarded_section_is_an_error_and_the_sections_around_it_still_work() {
    let inner: Result<(), Error> = guarded("events", || {
        let nested = guarded("meta", || -> Result<u8, Error> {
            panic!("page 7 is damaged")
        });
        let e = nested.unwrap_err();
        assert!(
            e.to_string()
                .contains("redb panicked on a damaged page: page 7 is damaged"),
            "{e}"
        );
        Ok(())
    });
    assert!(
        inner.is_ok(),
        "the outer section goes on after the inner one's panic"
    );
    let after = guarded("events", || -> Result<u8, Error> {
        panic!("{}", String::from("owned"))
    });
    assert!(after.unwrap_err().to_string().contains("owned"));
    assert_eq!(
        quiet::CONTAINING.with(std::cell::Cell::get),
        0,
        "no section left open"
    );
}

/// A feed and ledger on a simulated disk whose deferred writes wait `defer` for their fsync.
fn on_disk(disk: &crate::fault::PowerCut, defer: Duration) -> (Feed, crate::ledger::Ledger) {
    let db = store::builder(0)
        .create_with_backend(disk.backend())
        .unwrap();
    let store = Store::from_database(
        db,
        StoreOptions {
            defer_durable: defer,
            ..Default::default()
        },
    );
    let feed = Feed::open(store.clone()).unwrap();
    (feed, crate::ledger::Ledger::new(store))
}

/// A deferred delivery commit costs no sync: readers see it at once, a power cut before a
/// durable commit loses it (the cursor is back where the last durable commit left it), and
/// the next append's commit makes it durable with the append.
#[tokio::test]
async fn a_deferred_commit_is_seen_at_once_lost_in_a_cut_and_made_durable_by_the_next_append() {
    use crate::fault::{CutMode, PowerCut};
    let hour = Duration::from_secs(3600);
    let disk = PowerCut::new();
    let (feed, ledger) = on_disk(&disk, hour);
    feed.append(vec![new_event("a"), new_event("b")])
        .await
        .unwrap();
    ledger
        .commit_progress("c", 1, b"one".to_vec(), 1, &[], chrono::Utc::now())
        .unwrap();
    let syncs = disk.n_syncs();
    ledger
        .commit_progress_deferred("c", 2, b"two".to_vec(), 1, chrono::Utc::now())
        .unwrap();
    assert_eq!(disk.n_syncs(), syncs, "a deferred commit does not sync");
    let seen = ledger.cursor("c").unwrap().unwrap();
    assert_eq!((seen.seq, seen.checkpoint.as_slice()), (2, &b"two"[..]));
    disk.cut(CutMode::Forget);
    drop((feed, ledger));

    let disk = PowerCut::from_image(disk.image());
    let (feed, ledger) = on_disk(&disk, hour);
    let back = ledger.cursor("c").unwrap().unwrap();
    assert_eq!(
        (back.seq, back.checkpoint.as_slice()),
        (1, &b"one"[..]),
        "lost with the power: the durable cursor and its checkpoint, together"
    );
    ledger
        .commit_progress_deferred("c", 2, b"two".to_vec(), 1, chrono::Utc::now())
        .unwrap();
    feed.append(vec![new_event("c")]).await.unwrap();
    disk.cut(CutMode::Forget);
    drop((feed, ledger));

    let disk = PowerCut::from_image(disk.image());
    let (feed, ledger) = on_disk(&disk, hour);
    assert_eq!(
        ledger.cursor("c").unwrap().unwrap().seq,
        2,
        "carried by the append"
    );
    assert_eq!(feed.last_seq(), 3);
    feed.close();
}

/// With nothing else committing, the committer makes a deferred commit durable by itself
/// once `defer_durable` has passed: the window a power cut can take it in is bounded.
#[tokio::test]
async fn a_deferred_commit_alone_is_made_durable_within_its_bound() {
    use crate::fault::{CutMode, PowerCut};
    let disk = PowerCut::new();
    let (feed, ledger) = on_disk(&disk, Duration::from_millis(20));
    feed.append(vec![new_event("a")]).await.unwrap();
    let syncs = disk.n_syncs();
    ledger
        .commit_progress_deferred("c", 1, b"one".to_vec(), 1, chrono::Utc::now())
        .unwrap();
    // Awaited, not slept: the committer's own commit shows as a sync.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while disk.n_syncs() == syncs {
        assert!(
            std::time::Instant::now() < deadline,
            "the deferred commit was never made durable"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    disk.cut(CutMode::Forget);
    drop((feed, ledger));
    let disk = PowerCut::from_image(disk.image());
    let (feed, ledger) = on_disk(&disk, Duration::ZERO);
    assert_eq!(ledger.cursor("c").unwrap().unwrap().seq, 1);
    // A clean close makes a deferred commit durable too (redb's close commits it).
    ledger
        .commit_progress_deferred("c", 1, b"closed".to_vec(), 0, chrono::Utc::now())
        .unwrap();
    feed.close();
    drop(ledger);
    let (_feed, ledger) = on_disk(&PowerCut::from_image(disk.image()), Duration::ZERO);
    assert_eq!(
        ledger.cursor("c").unwrap().unwrap().checkpoint,
        b"closed".to_vec()
    );
}

/// A close that lands while the committer gathers a group (several producers at once, so a
/// small group waits up to `GROUP_LINGER` for more): every append is answered, none hangs,
/// and the feed holds exactly the events whose appends were acknowledged, gap-free.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_close_while_the_committer_gathers_a_group_answers_every_append_and_keeps_exactly_the_acknowledged()
 {
    for round in 0..10u64 {
        let dir = tempfile::tempdir().unwrap();
        let feed = open(dir.path());
        let tasks = producers(&feed, 16, 400);
        // Close at a different point each round, with the producers going.
        let at = 16 + round * 13;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while feed.last_seq() < at {
            assert!(std::time::Instant::now() < deadline, "no progress");
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        feed.clone().close();
        let mut acked = Vec::new();
        for t in tasks {
            let got = tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("every append is answered after the close")
                .unwrap();
            acked.extend(got);
        }
        drop(feed);
        let feed = open(dir.path());
        let all = feed.read_after(0, 10_000).unwrap();
        assert!(all.iter().enumerate().all(|(i, e)| e.seq == i as u64 + 1));
        let mut stored: Vec<String> = all.into_iter().map(|e| e.key).collect();
        stored.sort();
        acked.sort();
        assert_eq!(
            stored, acked,
            "round {round}: exactly the acknowledged events"
        );
        feed.close();
    }
}

/// The disk fails (full, or its sync fails) after a deferred delivery commit and before the
/// durable commit that carries it: an append's (the bound is an hour), or the committer's
/// own once the bound has passed (200 ms), awaited through the disk's count of refused
/// operations. The append is answered with the error, never acknowledged; and a power cut
/// then leaves the last durable state whole, the cursor and its checkpoint together,
/// without the deferred one or the failed append.
#[tokio::test]
async fn a_disk_failing_before_a_deferred_commit_is_carried_acknowledges_nothing_and_keeps_the_durable_state()
 {
    use crate::fault::{CutMode, DiskFault, PowerCut};
    let faults = [DiskFault::SyncFails, DiskFault::NoSpace];
    let carried_by = [("an append", 3_600_000), ("the committer's flush", 200)];
    for (fault, (by, bound_ms)) in faults.into_iter().flat_map(|f| carried_by.map(|c| (f, c))) {
        let disk = PowerCut::new();
        let (feed, ledger) = on_disk(&disk, Duration::from_millis(bound_ms));
        feed.append(vec![new_event("a")]).await.unwrap();
        ledger
            .commit_progress("c", 1, b"one".to_vec(), 1, &[], chrono::Utc::now())
            .unwrap();
        ledger
            .commit_progress_deferred("c", 1, b"deferred".to_vec(), 0, chrono::Utc::now())
            .unwrap();
        disk.inject(Some(fault));
        if bound_ms < 1000 {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while disk.n_refused() == 0 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the flush was never tried"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        assert!(
            feed.append(vec![new_event("b")]).await.is_err(),
            "{fault:?}, carried by {by}: no acknowledgement without a durable commit"
        );
        disk.cut(CutMode::Forget);
        drop((feed, ledger));

        let (feed, ledger) = on_disk(&PowerCut::from_image(disk.image()), Duration::ZERO);
        let kept = ledger.cursor("c").unwrap().unwrap();
        assert_eq!(
            (kept.seq, kept.checkpoint.as_slice()),
            (1, &b"one"[..]),
            "{fault:?}: the durable cursor and its checkpoint"
        );
        assert_eq!(
            feed.last_seq(),
            1,
            "{fault:?}: the failed append is not there"
        );
        feed.close();
    }
}
