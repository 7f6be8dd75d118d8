//! Feed tests: group commit, dedupe, format checks.

use super::*;
use schema::META;

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
    assert_eq!(all[0].payload["amount"].to_string(), "19.99");
    assert_eq!(feed.get_by_key("b").unwrap().unwrap().seq, 2);
    assert!(feed.get_by_key("zz").unwrap().is_none());
}

#[tokio::test]
async fn concurrent_appends_share_commits_and_stay_gap_free() {
    let dir = tempfile::tempdir().unwrap();
    let feed = open(dir.path());
    let mut tasks = Vec::new();
    for t in 0..16 {
        let feed = feed.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                feed.append(vec![new_event(&format!("{t}-{i}"))])
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
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
