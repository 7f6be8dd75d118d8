//! What a status page refresh costs with a backlog: N events (one in three of the type a
//! filtering connector selects) after its cursor. Times the first snapshot (which counts
//! the backlog's event types once, per block of 1,024 seqs), the next ones (which reuse
//! the counts), and, for scale, one plain decode of the whole backlog — what counting the
//! selected events without the index would cost at every refresh.
//!
//! `cargo bench --bench status_backlog -- [N=300000]`

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use ess::feed::{Feed, NewEvent, open_database};
use ess::state::{ConnectorInfo, Reader, feed_status};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // cargo bench adds `--bench` (and `--list` when it only asks what is there).
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let n: usize = std::env::args()
        .filter(|a| a != "--bench")
        .nth(1)
        .map_or(Ok(300_000), |s| s.parse())?;
    let tmp = tempfile::tempdir()?;
    let path = tmp.path().join("ess.redb");
    let db = Arc::new(open_database(&path)?);
    let feed = Feed::open(db.clone())?;
    let mut i = 0;
    while i < n {
        let batch: Vec<NewEvent> = (i..(i + 5000).min(n))
            .map(|k| NewEvent {
                event_type: if k % 3 == 0 { "PERMIT_STATUS" } else { "BUDGET_LINE" }.into(),
                payload: serde_json::json!({"id": format!("BP-{k}"), "status": "APPROVED", "amount": 19.99})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
                key: format!("key-{k}"),
                trace_id: "t".into(),
                ts: None,
            })
            .collect();
        i += batch.len();
        feed.append(batch).await?;
    }
    let map = tmp.path().join("permit.yml");
    std::fs::write(
        &map,
        "target: permits\nevents: [PERMIT_STATUS]\nfields:\n  ID: id | width:10\ndeliver: {kind: file, dir: out, file: p.txt}\n",
    )?;
    let spec =
        ess::connector::load_one(&map, chrono_tz::UTC).map_err(|d| anyhow::anyhow!("{d:?}"))?;
    let info = ConnectorInfo::of_spec(&spec, Some(ess::connector::Live::default()));
    let store = Reader::shared(db.clone(), &path);
    let status = feed_status(&store, Some(feed.last_seq()), Utc::now())?;

    let t = Instant::now();
    let first = store.reports(std::slice::from_ref(&info), &status, Utc::now())?;
    let first_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let rounds = 20;
    for _ in 0..rounds {
        store.reports(std::slice::from_ref(&info), &status, Utc::now())?;
    }
    let next_ms = t.elapsed().as_secs_f64() * 1e3 / f64::from(rounds);
    let t = Instant::now();
    let mut selected = 0u64;
    let mut after = 0;
    loop {
        let events = ess::feed::read_after(&*db, after, 4096)?;
        let Some(last) = events.last() else { break };
        after = last.seq;
        selected += events
            .iter()
            .filter(|e| e.event_type == "PERMIT_STATUS")
            .count() as u64;
    }
    let scan_ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(first[0].lag_events, selected);
    println!(
        "{n} events, {selected} selected: first snapshot {first_ms:.1} ms, next ones {next_ms:.2} ms each; \
         one plain decode of the backlog {scan_ms:.1} ms ({:.0}x a refresh)",
        scan_ms / next_ms
    );
    feed.close();
    Ok(())
}
