//! Measures `ess.redb`'s size under steady load with feed retention: appends N events in
//! groups of 1,000 (about 250 bytes of payload each) and, every 10,000 events, compacts
//! the events older than RETENTION that every connector has passed (here: all of them).
//!
//! `cargo bench --bench retention_growth -- [N=1000000] [RETENTION=1s] [DIR]`

use std::time::Instant;

use ess::config::parse_duration;
use ess::feed::retention::compact;
use ess::feed::{Feed, NewEvent, Store, StoreOptions};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // cargo bench adds `--bench`; the numbers are the arguments.
    let args: Vec<String> = std::env::args().filter(|a| a != "--bench").collect();
    if args.iter().any(|a| a == "--list") {
        return Ok(());
    }
    let n: usize = args.get(1).map_or(Ok(1_000_000), |s| s.parse())?;
    let retention = parse_duration(args.get(2).map_or("1s", String::as_str))?;
    let tmp = tempfile::tempdir()?;
    let dir = args
        .get(3)
        .map_or_else(|| tmp.path().to_path_buf(), std::path::PathBuf::from);
    let path = dir.join("ess.redb");
    let feed = Feed::open(Store::open(&path, StoreOptions::default())?)?;
    let started = Instant::now();
    let mut deleted = 0;
    let mut i = 0;
    while i < n {
        let batch: Vec<NewEvent> = (i..(i + 1000).min(n))
            .map(|k| {
                let payload = serde_json::json!({
                    "id": format!("BP-{k}"), "status": "APPROVED", "applicant": "x".repeat(200), "amount": 19.99
                });
                NewEvent {
                    event_type: "PERMIT_STATUS".into(),
                    payload: payload.as_object().cloned().unwrap_or_default(),
                    key: format!("key-{k}"),
                    trace_id: "t".into(),
                    ts: None,
                }
            })
            .collect();
        i += batch.len();
        feed.append(batch).await?;
        if i % 10_000 == 0 || i == n {
            let older_than = chrono::Utc::now() - chrono::Duration::from_std(retention)?;
            deleted += compact(feed.db(), feed.last_seq(), older_than)?.deleted;
        }
        if i % 100_000 == 0 || i == n {
            println!(
                "{i:>9} events appended, {deleted:>9} compacted, file {:>6.1} MiB, {:.0}s",
                std::fs::metadata(&path)?.len() as f64 / (1 << 20) as f64,
                started.elapsed().as_secs_f64()
            );
        }
    }
    feed.close();
    Ok(())
}
