//! Throughput of the map engine, both ways: the seed's permit map (fixed-width, a date
//! format) and the 40-field EBCDIC payroll copybook (zoned, packed and binary fields, two
//! dates), encoded from an event and decoded from its 238-byte record into JSON (the
//! fields view a pickup source reads, and the event view `ess map decode` prints).
//!
//! Run: `cargo bench --bench map`. Records/s = 1 / (time per iteration); the payroll
//! groups also show bytes/s of records (238 bytes each). One thread: per core.

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ess::config::connector;
use ess::event::Event;
use ess::map::{DecodeScratch, MapContext, Mapping, View};
use serde_json::{Map, Value};

mod support;

fn compile(path: &Path) -> Mapping {
    let text = std::fs::read_to_string(path).unwrap();
    let conn = connector::parse(path, &text).unwrap();
    Mapping::compile(
        &conn,
        &MapContext {
            timezone: chrono_tz::America::New_York,
        },
    )
    .unwrap()
}

fn event(payload: Map<String, Value>) -> Event {
    Event {
        seq: 42,
        event_type: "PERMIT_STATUS".into(),
        payload: ess::event::Payload::from_map(payload),
        key: "k".into(),
        trace_id: "t".into(),
        ts: None,
        received_at: "2025-04-12T12:00:00Z".parse().unwrap(),
    }
}

fn bench(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut g = c.benchmark_group("render");
    g.throughput(Throughput::Elements(1));

    let permit = compile(&root.join("maps/permit_map.yml"));
    let e = event(
        serde_json::from_str(
            r#"{"id":"BP-802","status":"APPROVED","updated_at":"2025-04-12T10:03:00Z"}"#,
        )
        .unwrap(),
    );
    assert_eq!(
        permit.render(&e).unwrap().bytes,
        b"BP-802    APPROVED  20250412060300\n"
    );
    g.bench_function("permit_map", |b| {
        b.iter(|| permit.render(black_box(&e)).unwrap())
    });

    // The 40-field payroll copybook, every field mapped from the payload.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("PAYROLL.cpy"),
        support::payroll::copybook_text(),
    )
    .unwrap();
    std::fs::write(dir.path().join("payroll.yml"), support::payroll::skeleton()).unwrap();
    let payroll = compile(&dir.path().join("payroll.yml"));
    let payload = support::payroll::payload();
    let record_len = support::payroll::record_len();
    let e40 = event(payload);
    let r = payroll.render(&e40).unwrap();
    assert_eq!(r.bytes.len(), record_len);
    g.finish();

    let mut g = c.benchmark_group("payroll_40_fields");
    g.throughput(Throughput::Bytes(record_len as u64));
    g.bench_function("encode", |b| {
        b.iter(|| payroll.render(black_box(&e40)).unwrap())
    });
    let record = r.bytes;
    let mut scratch = DecodeScratch::default();
    let mut json = String::new();
    for (name, view) in [
        ("decode_fields", View::Fields),
        ("decode_event", View::Event),
    ] {
        // The event view gives the payload back (dates as dates).
        json.clear();
        payroll
            .decode_into(&record, 0, view, &mut scratch, &mut json)
            .unwrap();
        let v: Value = serde_json::from_str(&json).unwrap();
        if view == View::Event {
            assert_eq!(
                v["payload"]["pr_emp_id"],
                e40.payload.tree().unwrap()["pr_emp_id"]
            );
        }
        g.bench_function(name, |b| {
            b.iter(|| {
                json.clear();
                payroll
                    .decode_into(black_box(&record), 0, view, &mut scratch, &mut json)
                    .unwrap();
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
