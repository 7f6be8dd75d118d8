//! Measures `ess.redb` on disk per permit event: appends N permit events (the load bench's
//! event: unique keys `c{conn}-{n}` from 16 producers, generated trace ids) in groups as 16
//! concurrent requests of 100 make them, then prints the file size per event and what each
//! table takes.
//!
//! `cargo bench --bench feed_size -- [N=1000000]`

use ess::feed::{Feed, NewEvent, Store, StoreOptions};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // cargo bench adds `--bench` (and `--list` when it only asks what is there).
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let n: u64 = std::env::args()
        .filter(|a| a != "--bench")
        .nth(1)
        .map_or(Ok(1_000_000), |s| s.parse())?;
    let tmp = tempfile::tempdir()?;
    let path = tmp.path().join("ess.redb");
    let feed = Feed::open(Store::open(&path, StoreOptions::default())?)?;
    let mut sent = 0u64;
    while sent < n {
        // One group: 16 requests of 100 events, each from its own producer.
        let mut requests = Vec::new();
        for conn in 0..16u64 {
            let batch: Vec<NewEvent> = (0..100)
                .map(|i| {
                    let k = sent / 16 + i;
                    NewEvent {
                        event_type: "PERMIT_STATUS".into(),
                        payload: serde_json::json!({"id": format!("BP-{k}"), "status": "APPROVED", "updated_at": "2025-04-12T10:03:00Z"})
                            .as_object()
                            .cloned()
                            .unwrap_or_default(),
                        key: format!("c{conn}-{k}"),
                        trace_id: format!("{:032x}", rand::random::<u128>()),
                        ts: None,
                    }
                })
                .collect();
            requests.push(feed.append(batch));
        }
        for r in futures_join(requests).await {
            r?;
        }
        sent += 1600;
    }
    let events = feed.last_seq();
    let sizes = ess::feed::table_sizes(feed.db())?;
    feed.close();
    let meta = std::fs::metadata(&path)?;
    let bytes = meta.len();
    // What the file holds on the disk: the tail redb reserves when it grows is sparse until
    // it is written.
    let on_disk = std::os::unix::fs::MetadataExt::blocks(&meta) * 512;
    println!(
        "{events} events: ess.redb {bytes} bytes long = {:.0} bytes/event; {on_disk} bytes on disk = {:.0} bytes/event",
        bytes as f64 / events as f64,
        on_disk as f64 / events as f64
    );
    if std::env::args().any(|a| a == "--compact") {
        let started = std::time::Instant::now();
        let mut db = ess::feed::open_database(&path)?;
        while db.compact().map_err(|e| anyhow::anyhow!("compact: {e}"))? {}
        drop(db);
        let after = std::fs::metadata(&path)?.len();
        println!(
            "compacted in {:.1}s: {after} bytes = {:.0} bytes/event",
            started.elapsed().as_secs_f64(),
            after as f64 / events as f64
        );
    }
    for t in sizes.iter().filter(|t| t.rows > 0) {
        println!(
            "  {:<10} {:>9} rows, {:>6} leaf + {:>4} branch pages = {:>6.1} bytes/event ({:.0} stored, {:.0} free in pages)",
            t.table,
            t.rows,
            t.leaf_pages,
            t.branch_pages,
            ((t.leaf_pages + t.branch_pages) * 4096) as f64 / events as f64,
            t.stored_bytes as f64 / events as f64,
            t.fragmented_bytes as f64 / events as f64,
        );
    }
    Ok(())
}

/// Awaits all the appends of one group (they commit together).
async fn futures_join<F: std::future::Future>(fs: Vec<F>) -> Vec<F::Output> {
    let handles: Vec<_> = fs.into_iter().map(Box::pin).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await);
    }
    out
}
