//! The shipped example maps (`maps/`), the golden copybooks (`tests/fixtures/`) and the
//! `ess map preview` / `ess map from-copybook` helpers.
//!
//! Goldens are rewritten with `UPDATE_GOLDEN=1 cargo test --test map_examples`.

use std::path::{Path, PathBuf};

use chrono::TimeZone;
use ess::config::connector;
use ess::event::Event;
use ess::map::copybook::Copybook;
use ess::map::{MapContext, Mapping, View, cli};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn load(path: &Path) -> Mapping {
    let text = std::fs::read_to_string(path).unwrap();
    let conn = connector::parse(path, &text).unwrap_or_else(|d| panic!("{d}"));
    Mapping::compile(
        &conn,
        &MapContext {
            timezone: chrono_tz::UTC,
        },
    )
    .unwrap_or_else(|ds| {
        panic!(
            "{}",
            ds.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

fn event(ty: &str, payload: &str) -> Event {
    Event {
        seq: 1,
        event_type: ty.into(),
        payload: ess::event::Payload::parse(payload).unwrap(),
        key: "k".into(),
        trace_id: "t".into(),
        ts: None,
        received_at: "2025-04-12T12:00:00Z".parse().unwrap(),
    }
}

fn golden(name: &str, actual: &str) {
    let path = root().join("tests/fixtures/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
    assert_eq!(
        actual, want,
        "golden {name} differs (UPDATE_GOLDEN=1 rewrites it after review)"
    );
}

#[test]
fn every_shipped_map_compiles() {
    // Pickup sources (`source:`) are compiled by `ess::source` (tests/pickup_local.rs).
    let files: Vec<_> = connector::map_files(&root().join("maps"))
        .unwrap()
        .into_iter()
        .filter(|p| !ess::source::is_source_file(p))
        .collect();
    assert!(files.len() >= 3, "{files:?}");
    let mut targets = std::collections::HashSet::new();
    for f in files {
        load(&f);
        let text = std::fs::read_to_string(&f).unwrap();
        let conn = connector::parse(&f, &text).unwrap();
        assert!(
            targets.insert(conn.file.target.value.clone()),
            "{} reuses target {}",
            f.display(),
            conn.file.target.value
        );
    }
}

#[test]
fn shipped_permit_map_writes_the_spec_line() {
    let m = load(&root().join("maps/permit_map.yml"));
    let e = event(
        "PERMIT_STATUS",
        r#"{"id":"BP-802","status":"APPROVED","updated_at":"2025-04-12T10:03:00Z"}"#,
    );
    assert!(m.selects("PERMIT_STATUS"));
    assert_eq!(
        m.render(&e).unwrap().bytes,
        b"BP-802    APPROVED  20250412100300\n"
    );
}

#[test]
fn shipped_ebcdic_map_makes_80_byte_records() {
    let m = load(&root().join("maps/permit_status_ebcdic.yml"));
    assert_eq!(m.record_len(), Some(80));
    let e = event(
        "PERMIT_STATUS",
        r#"{"id":"bp-802","status":"APPROVED","updated_at":"2025-04-12T10:03:00Z","fee":{"amount":19.99,"paid":19.99},"inspections":3,"zoning":["R1"],"reviewer":" jdoe "}"#,
    );
    let r = m.render(&e).unwrap();
    assert_eq!(r.bytes.len(), 80);
    let h = |b: &[u8]| b.iter().map(|b| format!("{b:02X}")).collect::<String>();
    assert_eq!(h(&r.bytes[..11]), "C2D760F8F0F240404040C1"); // "BP-802    A" in EBCDIC
    assert_eq!(h(&r.bytes[37..42]), "000001999C"); // +19.99 packed
    assert_eq!(h(&r.bytes[47..49]), "0003"); // binary halfword
    let denied = event(
        "PERMIT_STATUS",
        r#"{"id":"x","status":"APPROVED","applicant":{"ssn":"1"}}"#,
    );
    // drop_fields removes it first, so compliance lets the event through.
    assert!(m.render(&denied).is_ok());
}

#[test]
fn shipped_payroll_map_balances_its_batches() {
    let m = load(&root().join("maps/payroll_batch.yml"));
    let file = batch_file(
        &m,
        "PAYROLL_CHANGE",
        &[
            r#"{"employee":{"id":"E1","name":" Ann Lee ","dept":"fin","phone":"555-123-4567","ssn":"x"},"action":"HIRE","effective_date":"2025-04-14","amount":1234.50}"#,
            r#"{"employee":{"id":"E2","name":"Bo, Jr.","dept":"pw"},"action":"RAISE","effective_date":"2025-04-14","amount":"0.5"}"#,
        ],
    );
    golden("payroll_batch.csv", &String::from_utf8(file).unwrap());
}

/// A whole batch file as a batch target writes it: header, records, trailer (at 09:00 UTC
/// on 2025-04-12).
fn batch_file(m: &Mapping, ty: &str, payloads: &[&str]) -> Vec<u8> {
    let items: Vec<_> = payloads
        .iter()
        .map(|p| {
            let e = event(ty, p);
            let r = m.render(&e).unwrap();
            (e, r)
        })
        .collect();
    let now = chrono_tz::UTC
        .with_ymd_and_hms(2025, 4, 12, 9, 0, 0)
        .unwrap();
    let mut file = m.batch_header(&items, now).unwrap();
    for (_, r) in &items {
        file.extend_from_slice(&r.bytes);
    }
    file.extend(m.batch_trailer(&items, now).unwrap());
    file
}

#[test]
fn shipped_results_map_writes_a_vb_batch_that_reads_back() {
    let m = load(&root().join("maps/permit_results_vb.yml"));
    let file = batch_file(
        &m,
        "PERMIT_RESULT",
        &[
            r#"{"id":"bp-802","status":"approved","fee":19.99,"owner":"Zoë","inspections":[{"code":"ELE","result":1},{"code":"PLU","result":-2}]}"#,
            r#"{"id":"bp-803","status":"rejected","fee":"0.01","rate":0.0012,"inspections":[]}"#,
        ],
    );
    // Header 20 bytes, details 94 + 5 per inspection, trailer 15; each behind its RDW.
    let lens: Vec<usize> = m
        .framing()
        .split(&file)
        .map(|f| f.unwrap().bytes.len())
        .collect();
    assert_eq!(lens, [20, 104, 94, 15]);
    let mut types = Vec::new();
    let mut json = Vec::new();
    for f in m.framing().split(&file) {
        let f = f.unwrap();
        let d = m.decode(f.bytes, f.index, View::Fields).unwrap();
        types.push(d.record_type.unwrap());
        json.push(serde_json::from_str::<serde_json::Value>(&d.json).unwrap());
    }
    assert_eq!(
        types,
        ["RES-HEADER", "RES-DETAIL", "RES-DETAIL", "RES-TRAILER"]
    );
    assert_eq!(json[0]["RH-RUN-DATE"], 20250412);
    assert_eq!(json[0]["RH-SYSTEM"], "ESS");
    assert_eq!(json[1]["RD-PERMIT-ID"], "BP-802");
    assert_eq!(json[1]["RD-STATUS"], "A");
    assert_eq!(json[1]["RD-OWNER"], "Zoë");
    assert_eq!(json[1]["RD-INSP-RESULT(2)"].to_string(), "-2");
    assert_eq!(json[2]["RD-STATUS"], "R");
    assert_eq!(json[2]["RD-RATE"].to_string(), "0.001200");
    assert_eq!(json[3]["RT-COUNT"], 2);
    assert_eq!(json[3]["RT-FEE-TOTAL"].to_string(), "20.00");
    // And as the events they were: `map:` read backwards, the inspections as a list.
    let f = m.framing().split(&file).nth(1).unwrap().unwrap();
    let d = m.decode(f.bytes, 1, View::Event).unwrap();
    let ev: serde_json::Value = serde_json::from_str(&d.json).unwrap();
    assert_eq!(ev["payload"]["status"], "approved");
    assert_eq!(ev["payload"]["inspections"][1]["code"], "PLU");
}

fn layout_dump(cb: &Copybook) -> String {
    let mut s = format!("record {:?}, {} bytes\n", cb.record_name, cb.len);
    if cb.min_len != cb.len {
        s.push_str(&format!("shortest record {} bytes\n", cb.min_len));
    }
    for f in &cb.fields {
        s.push_str(&format!(
            "{:>5} {:>3}  {:<22} {}\n",
            f.offset,
            f.kind.width().unwrap_or(0),
            f.name,
            f.pic
        ));
    }
    for set in &cb.sets {
        let alts: Vec<String> = set
            .alts
            .iter()
            .map(|a| format!("{} ({} bytes)", a.name, a.len))
            .collect();
        s.push_str(&format!(
            "redefines, line {}: {}\n",
            set.line,
            alts.join(" | ")
        ));
    }
    for t in &cb.tables {
        s.push_str(&format!(
            "table {}: OCCURS {} TO {} DEPENDING ON {}, {} bytes each\n",
            t.name, t.min, t.max, cb.fields[t.object].name, t.elem_len
        ));
    }
    s
}

#[test]
fn golden_copybooks() {
    // PERMIT.cpy is the one shipped next to maps/permit_status_ebcdic.yml.
    for (name, dir) in [
        ("PAYROLL", "tests/fixtures/copybooks"),
        ("RESULTS", "maps"),
        ("PERMIT", "maps"),
    ] {
        let text = std::fs::read_to_string(root().join(format!("{dir}/{name}.cpy"))).unwrap();
        let cb = Copybook::parse(&text).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        golden(&format!("{name}.layout"), &layout_dump(&cb));
        let skeleton = cli::from_copybook(&text, &format!("{name}.cpy")).unwrap();
        golden(&format!("{name}.skeleton.yml"), &skeleton);
        // The skeleton is a working map next to its copybook.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(format!("{name}.cpy")), &text).unwrap();
        std::fs::write(dir.path().join("m.yml"), &skeleton).unwrap();
        let m = load(&dir.path().join("m.yml"));
        assert_eq!(m.max_record_len(), Some(cb.len));
    }
}

#[test]
fn payroll_copybook_has_forty_fields() {
    let text =
        std::fs::read_to_string(root().join("tests/fixtures/copybooks/PAYROLL.cpy")).unwrap();
    let cb = Copybook::parse(&text).unwrap();
    assert_eq!(cb.fields.iter().filter(|f| !f.filler).count(), 40);
}

#[test]
fn from_copybook_refuses_what_it_cannot_lay_out() {
    let e = cli::from_copybook("01 R.\n 05 A PIC X(2).\n 66 B RENAMES A.\n", "R.cpy").unwrap_err();
    assert!(
        e.to_string().starts_with(
            "R.cpy:3:2: 66 B RENAMES: level 66 is not supported; map the renamed fields themselves"
        ),
        "{e}"
    );
}

#[test]
fn preview_shows_a_ruler_for_fixed_and_hex_for_ebcdic() {
    let ev = r#"{"type":"PERMIT_STATUS","payload":{"id":"BP-802","status":"APPROVED","updated_at":"2025-04-12T10:03:00Z"}}"#;
    let out = cli::preview(&root().join("maps/permit_map.yml"), ev, chrono_tz::UTC).unwrap();
    let want = [
        "         1         2         3",
        "1234567890123456789012345678901234",
        "BP-802    APPROVED  20250412100300⏎",
        "     1-10   PERMIT_ID",
        "    11-20   STATUS",
        "    21-34   TS",
    ];
    assert_eq!(out, want.join("\n") + "\n");
    let out = cli::preview(
        &root().join("maps/permit_status_ebcdic.yml"),
        ev,
        chrono_tz::UTC,
    )
    .unwrap();
    assert!(out.starts_with("80 bytes, ebcdic-037:\n000000  C2 D7 60 F8 F0 F2 40 40 40 40 C1 F2 F0 F2 F5 F0  |BP-802    A20250|\n"), "{out}");
    assert!(out.contains("    38-42   PS-FEE-AMOUNT packed"), "{out}");
    let err = cli::preview(
        &root().join("maps/permit_map.yml"),
        r#"{"id":"BP-802"}"#,
        chrono_tz::UTC,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("would be parked (reason map): field STATUS: payload.status is missing"),
        "{err}"
    );
}

#[test]
fn from_copybook_takes_a_bare_name_too() {
    let y = cli::from_copybook("01 R.\n 05 A PIC X(2).\n", "PERMIT").unwrap();
    assert!(y.contains("\nlayout: PERMIT.cpy\n"), "{y}");
    assert!(y.contains("\n  A: a "), "{y}");
}
