//! Criterion bench of the feed append path: one durable group commit per call.
//!
//!     cargo bench --bench feed

use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ess::feed::{Feed, NewEvent, open_database};

fn events(batch: usize, next: &mut u64) -> Vec<NewEvent> {
    (0..batch)
        .map(|_| {
            *next += 1;
            let payload = serde_json::json!({"id": format!("BP-{next}"), "status": "APPROVED", "updated_at": "2025-04-12T10:03:00Z"});
            NewEvent { event_type: "PERMIT_STATUS".into(), payload: payload.as_object().cloned().unwrap_or_default(), key: format!("k{next}"), trace_id: "t".into(), ts: None }
        })
        .collect()
}

fn append(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("feed_append");
    for batch in [1usize, 100, 1000] {
        let dir = tempfile::tempdir().expect("temp dir");
        let feed = Feed::open(Arc::new(
            open_database(&dir.path().join("ess.redb")).expect("db"),
        ))
        .expect("feed");
        let mut next = 0;
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            b.iter(|| {
                rt.block_on(feed.append(events(batch, &mut next)))
                    .expect("append")
            });
        });
    }
    group.finish();
}

criterion_group!(benches, append);
criterion_main!(benches);
