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
use ess::map::copybook::Copybook;
use ess::map::field::Kind;
use ess::map::{DecodeScratch, MapContext, Mapping, View, cli};
use serde_json::{Map, Value};

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
        payload,
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
    let cpy = std::fs::read_to_string(root.join("tests/fixtures/copybooks/PAYROLL.cpy")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("PAYROLL.cpy"), &cpy).unwrap();
    let skeleton = cli::from_copybook(&cpy, "PAYROLL.cpy").unwrap();
    std::fs::write(dir.path().join("payroll.yml"), &skeleton).unwrap();
    let payroll = compile(&dir.path().join("payroll.yml"));
    let cb = Copybook::parse(&cpy).unwrap();
    let mut payload = Map::new();
    for f in cb.fields.iter().filter(|f| !f.filler) {
        let key = f.name.to_ascii_lowercase().replace('-', "_");
        let dated = f.name.contains("DATE") || f.name.contains("TIME");
        let v: Value = match &f.kind {
            // The skeleton formats fields named like dates (`| format:%Y%m%d`).
            Kind::Zoned { .. } if dated => Value::String("2025-04-12T10:03:00Z".into()),
            Kind::Text { width, .. } => Value::String(
                "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[..width.unwrap_or(1).min(26) / 2 + 1].into(),
            ),
            Kind::National { .. } | Kind::Float(_) => Value::from(1),
            Kind::Zoned { pic, .. } | Kind::Packed { pic } | Kind::Binary { pic, .. } => {
                let int = "1234567"
                    .get(..pic.int_digits().min(7) as usize)
                    .unwrap_or("1");
                let frac = "5678"
                    .get(..pic.frac_digits().min(4) as usize)
                    .unwrap_or("");
                let text = if frac.is_empty() {
                    int.to_string()
                } else {
                    format!("{int}.{frac}")
                };
                serde_json::from_str(&text).unwrap()
            }
        };
        match key.split_once('(') {
            None => {
                payload.insert(key, v);
            }
            Some((base, _)) => {
                let arr = payload
                    .entry(base.to_string())
                    .or_insert_with(|| Value::Array(Vec::new()));
                if let Value::Array(a) = arr {
                    a.push(v);
                }
            }
        }
    }
    let e40 = event(payload);
    let r = payroll.render(&e40).unwrap();
    assert_eq!(r.bytes.len(), cb.len);
    g.finish();

    let mut g = c.benchmark_group("payroll_40_fields");
    g.throughput(Throughput::Bytes(cb.len as u64));
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
            assert_eq!(v["payload"]["pr_emp_id"], e40.payload["pr_emp_id"]);
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
