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
