//! Pickup throughput (issue 14 point 8): records/s a local folder source takes from one
//! file of the 40-field EBCDIC payroll copybook (`tests/fixtures/copybooks/PAYROLL.cpy`,
//! 238-byte fixed records: zoned, packed, binary and sign-separate fields) into the feed,
//! each chunk committed with the file's checkpoint (fsync per chunk), on the machine's disk.
//!
//! Measured in the same run, as the machine's limits for the two halves of the work:
//! decoding alone (split + decode into the fields JSON, one core, no feed), and appending
//! alone (the same events, already decoded, committed in the same chunks with the same
//! checkpoint rows). Pickup does both, one after the other, on one thread.
//!
//! Run: `cargo bench --bench pickup` (a 1 GiB file; `ESS_PICKUP_BENCH_MB=100` for less).

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use ess::config::connector;
use ess::feed::{Batch, Store, StoreOptions};
use ess::ledger::sources::{FileCommit, SourceFile, Sources};
use ess::map::{DecodeScratch, MapContext, Mapping, View};
use ess::source::dir::LocalDir;
use ess::source::local::Pickup;

const RECORD: usize = 238;

/// `n` distinct payroll records, rendered by a map that fills two fields (the others are
/// spaces or zeros, as the copybook's blanks).
fn records(dir: &Path, n: usize) -> Vec<Vec<u8>> {
    let text = "target: payroll\nformat: fixed\nlayout: PAYROLL.cpy\nrecord: {encoding: ebcdic-037, framing: fixed}\nfields:\n  PR-REC-TYPE: '\"PD\"'\n  PR-EMP-ID: id\n  PR-LAST-NAME: name\n  PR-GROSS-PAY: gross\n  PR-NET-PAY: net\n  PR-BATCH-SEQ: seq\n  PR-ADJ-AMOUNT: adj\ndeliver: {kind: file, dir: out, file: p.dat}\n";
    let path = dir.join("payroll_out.yml");
    std::fs::write(&path, text).unwrap();
    let conn = connector::parse(&path, text).unwrap();
    let m = Mapping::compile(
        &conn,
        &MapContext {
            timezone: chrono_tz::UTC,
        },
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    (0..n)
        .map(|i| {
            let payload = serde_json::json!({
                "id": format!("E{i:08}"), "name": format!("NAME {i}"),
                "gross": serde_json::from_str::<serde_json::Value>(&format!("{}.{:02}", 1000 + i % 9000, i % 100)).unwrap(),
                "net": serde_json::from_str::<serde_json::Value>(&format!("{}.{:02}", 800 + i % 7000, i % 97)).unwrap(),
                "seq": i, "adj": -((i % 500) as i64)
            });
            let e = ess::event::Event {
                seq: 1,
                event_type: "PAYROLL".into(),
                payload: ess::event::Payload::from_map(payload.as_object().unwrap().clone()),
                key: "k".into(),
                trace_id: "".into(),
                ts: None,
                received_at: chrono::Utc::now(),
            };
            let r = m.render(&e).unwrap().bytes;
            assert_eq!(r.len(), RECORD);
            r
        })
        .collect()
}

fn store(path: &Path) -> Store {
    let s = Store::open(path, StoreOptions::default()).unwrap();
    s.prepare().unwrap();
    s
}

fn main() {
    let mb: u64 = std::env::var("ESS_PICKUP_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir =
        tempfile::tempdir_in(std::env::var("ESS_BENCH_DIR").unwrap_or_else(|_| "/tmp".into()))
            .unwrap();
    std::fs::copy(
        root.join("tests/fixtures/copybooks/PAYROLL.cpy"),
        dir.path().join("PAYROLL.cpy"),
    )
    .unwrap();
    let distinct = records(dir.path(), 1000);
    let n = (mb * 1024 * 1024) as usize / RECORD;
    std::fs::create_dir(dir.path().join("in")).unwrap();
    let file = dir.path().join("in/PAYROLL_1.DAT");
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        for i in 0..n {
            w.write_all(&distinct[i % distinct.len()]).unwrap();
        }
        w.flush().unwrap();
    }
    let bytes = n * RECORD;
    let source = "source:\n  name: payroll\n  kind: file\n  dir: in\n  pattern: \"PAYROLL_*.DAT\"\n  chunk: 1000\nformat: fixed\nlayout: PAYROLL.cpy\nrecord: {encoding: ebcdic-037, framing: fixed}\nevent:\n  type: PAYROLL\n";
    let map = dir.path().join("payroll_in.yml");
    std::fs::write(&map, source).unwrap();
    let spec =
        Arc::new(ess::source::load_one(&map, chrono_tz::UTC).unwrap_or_else(|e| panic!("{e:?}")));

    // 1. Decoding alone: split and decode every record into its fields JSON.
    let data = std::fs::read(&file).unwrap();
    let t = Instant::now();
    let mut scratch = DecodeScratch::default();
    let mut json = String::new();
    let mut decoded = 0usize;
    for frame in spec.mapping.framing().split(&data) {
        let frame = frame.unwrap();
        json.clear();
        spec.mapping
            .decode_into(
                frame.bytes,
                frame.index,
                View::Fields,
                &mut scratch,
                &mut json,
            )
            .unwrap();
        decoded += 1;
    }
    let decode_s = t.elapsed().as_secs_f64();
    assert_eq!(decoded, n);
    let sample_payload = json.clone();
    drop(data);

    // 2. Pickup: the source takes the whole file into a feed on disk.
    let feed = dir.path().join("pickup.redb");
    let s = store(&feed);
    let folder = Box::new(LocalDir {
        dir: dir.path().join("in"),
    });
    let mut p = Pickup::new(spec.clone(), Sources::new(s.clone()), folder);
    let t = Instant::now();
    let scan = p.scan().unwrap();
    let pickup_s = t.elapsed().as_secs_f64();
    assert_eq!((scan.files_done, scan.events as usize), (1, n));
    let feed_bytes = std::fs::metadata(&feed).map(|m| m.len()).unwrap_or(0);
    s.close().unwrap();
    drop(s);
    let _ = std::fs::remove_file(&feed);

    // 3. Appending alone: the same number of events (one decoded payload), the same chunks
    // and checkpoint rows, no decoding.
    let feed = dir.path().join("append.redb");
    let s = store(&feed);
    let sources = Sources::new(s.clone());
    let mut row = SourceFile {
        size: bytes as u64,
        then_done: true,
        ..SourceFile::first_read("PAYROLL_1.DAT".into(), [0; 32], 0)
    };
    let t = Instant::now();
    let mut i = 0usize;
    while i < n {
        let mut batch = Batch::default();
        let end = (i + 1000).min(n);
        for k in i..end {
            batch.push(
                "PAYROLL",
                &format!("payroll/0123456789abcdef0123456789abcdef/{k}"),
                "",
                None,
                sample_payload.as_bytes(),
            );
        }
        row.next_record = end as u64;
        let change = FileCommit {
            source: "payroll",
            key: "0123456789abcdef0123456789abcdef",
            file: &row,
            was_done: false,
            bad: &[],
        };
        let (_, stored) = sources.commit(&change, batch, chrono::Utc::now()).unwrap();
        row = stored;
        i = end;
    }
    let append_s = t.elapsed().as_secs_f64();
    s.close().unwrap();
    drop(s);

    let rate = |s: f64| n as f64 / s;
    println!(
        "pickup bench: one file of {n} records x {RECORD} bytes ({:.0} MiB), 40-field EBCDIC payroll copybook, chunk 1000",
        bytes as f64 / 1048576.0
    );
    println!(
        "  decode only (split + fields JSON, no feed): {:>10.0} records/s  ({:.1} s, {:.0} MiB/s)",
        rate(decode_s),
        decode_s,
        bytes as f64 / 1048576.0 / decode_s
    );
    println!(
        "  append only (same chunks + checkpoints):    {:>10.0} records/s  ({:.1} s)",
        rate(append_s),
        append_s
    );
    println!(
        "  pickup (read, digest, check, decode, commit): {:>8.0} records/s  ({:.1} s, {:.0} MiB/s); feed {:.0} MiB",
        rate(pickup_s),
        pickup_s,
        bytes as f64 / 1048576.0 / pickup_s,
        feed_bytes as f64 / 1048576.0
    );
    let serial = decode_s + append_s;
    println!(
        "  pickup / (decode then append, one thread): {:.2}",
        serial / pickup_s
    );
    println!("  pickup / append only: {:.2}", append_s / pickup_s);
}
