//! Replay on the ledger side: ranges and dead letters go to the requeue table.

use std::sync::Arc;

use chrono::Utc;
use ess::feed::{Feed, NewEvent, open_database};
use ess::ledger::replay::remove_requeued;
use ess::ledger::{DeadLetter, Ledger};

fn event(i: usize) -> NewEvent {
    let payload = serde_json::json!({"id": i});
    NewEvent {
        event_type: "T".into(),
        payload: payload.as_object().unwrap().clone(),
        key: format!("k{i}"),
        trace_id: "t".into(),
        ts: None,
    }
}

fn letter() -> DeadLetter {
    DeadLetter {
        reason: "permanent".into(),
        message: "HTTP 400".into(),
        at_micros: 1,
        attempts: 1,
    }
}

#[tokio::test]
async fn range_and_dead_letters_are_requeued_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let feed = Feed::open(Arc::new(
        open_database(&dir.path().join("ess.redb")).unwrap(),
    ))
    .unwrap();
    feed.append((1..=10).map(event).collect()).await.unwrap();
    let ledger = Ledger::new(feed.db().clone());
    ledger.ensure_cursor("c", 0).unwrap();
    ledger
        .commit_progress("c", 6, vec![], 5, &[(3, letter())], Utc::now())
        .unwrap();

    // Only seqs at or below the cursor (6) are queued; 7..9 will be delivered anyway.
    assert_eq!(ledger.requeue_range("c", 2, 9).unwrap(), 5);
    assert_eq!(ledger.requeued("c", 100).unwrap(), [2, 3, 4, 5, 6]);
    assert_eq!(
        ledger.requeue_range("c", 2, 9).unwrap(),
        0,
        "already queued"
    );
    assert_eq!(ledger.requeued("c", 2).unwrap(), [2, 3]);
    // Another connector, or one that never ran, gets nothing.
    assert_eq!(ledger.requeue_range("other", 1, 10).unwrap(), 0);
    assert!(ledger.requeued("other", 10).unwrap().is_empty());
    assert_eq!(ledger.requeue_range("c", 5, 4).unwrap(), 0);

    // Dead letters move, in one step.
    assert_eq!(ledger.requeue_dead("c").unwrap(), 1);
    assert!(ledger.dead_letters("c").unwrap().is_empty());
    assert_eq!(ledger.requeue_dead("c").unwrap(), 0);

    // The connector loop removes delivered seqs in its checkpoint transaction.
    let tx = feed.db().begin_write().unwrap();
    remove_requeued(&tx, "c", &[2, 3]).unwrap();
    tx.commit().unwrap();
    assert_eq!(ledger.requeued("c", 100).unwrap(), [4, 5, 6]);
    feed.close();
}

#[tokio::test]
async fn requeued_dead_letters_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ess.redb");
    {
        let feed = Feed::open(Arc::new(open_database(&path).unwrap())).unwrap();
        feed.append((1..=3).map(event).collect()).await.unwrap();
        let ledger = Ledger::new(feed.db().clone());
        ledger
            .commit_progress(
                "c",
                3,
                vec![],
                1,
                &[(1, letter()), (2, letter())],
                Utc::now(),
            )
            .unwrap();
        assert_eq!(ledger.requeue_dead("c").unwrap(), 2);
        feed.close();
    }
    let ledger = Ledger::new(Arc::new(open_database(&path).unwrap()));
    assert_eq!(ledger.requeued("c", 10).unwrap(), [1, 2]);
    assert!(ledger.dead_letters("c").unwrap().is_empty());
}

#[tokio::test]
async fn the_connector_reads_queued_events_and_commits_their_redelivery_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let feed = Feed::open(Arc::new(
        open_database(&dir.path().join("ess.redb")).unwrap(),
    ))
    .unwrap();
    feed.append((1..=10).map(event).collect()).await.unwrap();
    let ledger = Ledger::new(feed.db().clone());
    ledger
        .commit_progress(
            "c",
            8,
            b"cp8".to_vec(),
            6,
            &[(2, letter()), (7, letter())],
            Utc::now(),
        )
        .unwrap();
    ledger.requeue_range("c", 1, 3).unwrap();
    ledger.requeue_range("c", 5, 5).unwrap();
    ledger.requeue_dead("c").unwrap(); // 2 (already queued) and 7
    // A queued seq without its event (only a hand-edited database has one).
    let tx = feed.db().begin_write().unwrap();
    tx.open_table(ess::feed::schema::REQUEUE)
        .unwrap()
        .insert(("c", 99), ())
        .unwrap();
    tx.commit().unwrap();

    let (events, missing) = ledger.requeued_events("c", 100).unwrap();
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2, 3, 5, 7]
    );
    assert_eq!(events[3].key, "k5");
    assert_eq!(missing, [99]);
    let (first_two, _) = ledger.requeued_events("c", 2).unwrap();
    assert_eq!(first_two.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);

    // Re-deliver 1, 2, 3 (2 fails again and is parked anew) and drop the missing 99.
    let mut again = letter();
    again.message = "HTTP 400 again".into();
    let state = ledger
        .commit_replayed(
            "c",
            &[1, 2, 3, 99],
            b"cp-replay".to_vec(),
            2,
            &[(2, again.clone())],
            Utc::now(),
        )
        .unwrap();
    assert_eq!(
        (state.seq, state.delivered, state.checkpoint.as_slice()),
        (8, 8, &b"cp-replay"[..])
    );
    assert_eq!(ledger.requeued("c", 100).unwrap(), [5, 7]);
    assert_eq!(ledger.dead_letters("c").unwrap(), [(2, again)]);
    assert_eq!(ledger.cursor("c").unwrap().unwrap().seq, 8);
    feed.close();
}
