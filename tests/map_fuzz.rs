//! Fuzzing the map side's input-facing parsers without a nightly toolchain (issue 15, point
//! 9): proptest-driven, a bounded number of cases in CI, from grammars of plausible input
//! that are then mutated (bytes dropped, doubled, replaced). What must hold: no panic, and
//! every refusal is a diagnostic at a real place — `file:line:col` inside the file that is
//! wrong, with a message — never a crash or a silent acceptance of the impossible.
//!
//! Parsers covered: the copybook parser, the map YAML (connector file) with its field
//! language and `layout_when`, and the record decoder (framing split + field decoders) fed
//! arbitrary bytes, which is what a pickup source will face.

use std::path::Path;

use ess::config::Diagnostic;
use ess::config::connector;
use ess::map::copybook::Copybook;
use ess::map::{MapContext, Mapping, View};
use proptest::prelude::*;

/// Copybook-ish lines: level numbers, names, clauses, pictures good and bad, literals.
fn copybook_line() -> impl Strategy<Value = String> {
    let level = prop_oneof![
        Just("01"),
        Just("05"),
        Just("10"),
        Just("88"),
        Just("66"),
        Just("77"),
        Just("1"),
        Just("49"),
        Just("50"),
        Just("X")
    ];
    let name = prop_oneof![
        Just("A"),
        Just("B-1"),
        Just("FILLER"),
        Just("N"),
        Just("REC-TYPE"),
        Just("IS-H"),
        Just("T")
    ];
    let clause = prop_oneof![
        Just("PIC X(3)"),
        Just("PIC 9(5)V99"),
        Just("PIC S9(4) COMP"),
        Just("PIC S9(7)V99 COMP-3"),
        Just("PIC ZZ9.99"),
        Just("PIC 9(3)PPP"),
        Just("PIC SVPP9"),
        Just("PIC N(2)"),
        Just("PIC X(0)"),
        Just("PIC 9(40)"),
        Just("PIC"),
        Just("COMP-1"),
        Just("COMP-2 SYNC"),
        Just("PIC S9(9) COMP-5 SYNC"),
        Just("VALUE 'AB'"),
        Just("VALUE ZEROS"),
        Just("VALUE X'C1'"),
        Just("VALUE 1 THRU 9"),
        Just("VALUE 'A"),
        Just("OCCURS 3"),
        Just("OCCURS 1 TO 4 DEPENDING ON N"),
        Just("OCCURS 0 TO 2 DEPENDING ON A"),
        Just("REDEFINES A"),
        Just("REDEFINES B-1"),
        Just("SIGN LEADING SEPARATE"),
        Just("BLANK WHEN ZERO"),
        Just("JUSTIFIED RIGHT"),
        Just("USAGE INDEX"),
        Just("RENAMES A"),
        Just("COPY X"),
    ];
    (
        level,
        name,
        prop::collection::vec(clause, 0..3),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(l, n, cs, period, fixed)| {
            let mut s = format!("{l} {n} {}", cs.join(" "));
            if period {
                s.push('.');
            }
            if fixed { format!("       {s}") } else { s }
        })
}

/// Drops, doubles or replaces some bytes (as UTF-8 allows).
fn mutate(text: String, edits: Vec<(usize, u8, u8)>) -> String {
    let mut b = text.into_bytes();
    for (at, what, c) in edits {
        if b.is_empty() {
            break;
        }
        let at = at % b.len();
        match what % 4 {
            0 => {
                b.remove(at);
            }
            1 => b.insert(at, b[at]),
            2 => b[at] = c,
            _ => {
                let pick = b"\n.'\"-*>() 9:{}[]|$";
                b.insert(at, pick[usize::from(c) % pick.len()]);
            }
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

fn edits() -> impl Strategy<Value = Vec<(usize, u8, u8)>> {
    prop::collection::vec((any::<usize>(), any::<u8>(), 32u8..127), 0..4)
}

/// A diagnostic points into `file` (1-based line within its lines, column at least 1) and
/// says something.
fn placed(d: &Diagnostic, file: &Path, text: &str) -> bool {
    let lines = text.lines().count().max(1) as u64 + 1;
    d.file == file && d.line >= 1 && d.line <= lines && d.col >= 1 && !d.message.trim().is_empty()
}

const MAP_KEYS: &[&str] = &[
    "events: [T]",
    "format: fixed",
    "format: csv",
    "format: soap",
    "format: nope",
    "layout: c.cpy",
    "layout: missing.cpy",
    "record: {encoding: ebcdic-037, framing: rdw}",
    "record: {framing: fixed}",
    "record: {framing: lines, line_end: \"\\r\\n\"}",
    "record: {encoding: ebcdic-1141, bdw: true}",
    "record: {floats: ieee, byte_order: little}",
    "record: {floats: x}",
    "layout_when: {A: IS-H}",
    "layout_when: {B-1: {REC-TYPE: [H, D]}}",
    "layout_when: {X: 1}",
    "overflow: truncate",
    "csv: {delimiter: ';', header: true}",
    "header: {H: '\"HDR\" | width:3', C: '$count | number:9(5)'}",
    "trailer: {S: '$sum:A | number:9(7)V99'}",
    "transform: {drop_fields: [ssn], mask: {phone: last4}}",
    "compliance: {deny_fields: [ssn]}",
];

const FIELD_DEFS: &[&str] = &[
    "id | width:10",
    "id",
    "a.b[1] | upper | width:4",
    "n | number:S9(5)V99 leading separate",
    "s | map:{A: APPROVED, R: \"$88:IS-H\"} | width:8",
    "updated_at | format:%Y%m%d | width:8",
    "items | count",
    "$88:IS-H",
    "$type | width:3",
    "\"K\" | pad:0 | align:right | width:2",
    "x | widht:3",
    "| width:",
    "{from: id, width: 3, count: true}",
    "{from: id, bogus: 1}",
];

fn map_text() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop::sample::select(MAP_KEYS), 0..4),
        prop::collection::vec(
            (
                prop::sample::select(&["A", "B-1", "N", "T(1)", "REC-TYPE", "F"][..]),
                prop::sample::select(FIELD_DEFS),
            ),
            0..5,
        ),
        any::<bool>(),
    )
        .prop_map(|(keys, fields, deliver)| {
            let mut y = String::from("target: t\n");
            for k in keys {
                y.push_str(k);
                y.push('\n');
            }
            if !fields.is_empty() {
                y.push_str("fields:\n");
                for (n, d) in fields {
                    let v = if d.starts_with('{') {
                        d.to_string()
                    } else {
                        format!("'{}'", d.replace('\'', "''"))
                    };
                    y.push_str(&format!("  \"{n}\": {v}\n"));
                }
            }
            if deliver {
                y.push_str("deliver: {kind: file, dir: o, file: f.txt}\n");
            }
            y
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn copybook_parser_never_panics_and_places_every_refusal(lines in prop::collection::vec(copybook_line(), 0..10), e in edits()) {
        let text = mutate(lines.join("\n"), e);
        if let Err(errs) = Copybook::parse(&text) {
            prop_assert!(!errs.is_empty());
            let n_lines = text.lines().count().max(1) + 1;
            for e in &errs {
                prop_assert!(e.line >= 1 && e.line <= n_lines && e.col >= 1 && !e.message.is_empty(), "{e:?} in {text:?}");
            }
        }
    }

    #[test]
    fn map_compiler_never_panics_and_places_every_refusal(map in map_text(), cpy in prop::collection::vec(copybook_line(), 0..6), e1 in edits(), e2 in edits()) {
        let dir = tempfile::tempdir().unwrap();
        let (map_path, cpy_path) = (dir.path().join("m.yml"), dir.path().join("c.cpy"));
        let map = mutate(map, e1);
        let cpy = mutate(format!("01 A.\n{}", cpy.join("\n")), e2);
        std::fs::write(&cpy_path, &cpy).unwrap();
        match connector::parse(&map_path, &map) {
            Err(d) => prop_assert!(placed(&d, &map_path, &map), "{d} in\n{map}"),
            Ok(conn) => {
                let ctx = MapContext { timezone: chrono_tz::UTC };
                for r in [Mapping::compile(&conn, &ctx), Mapping::compile_layout(&conn, &ctx)] {
                    if let Err(ds) = r {
                        prop_assert!(!ds.is_empty());
                        for d in &ds {
                            let ok = placed(d, &map_path, &map) || placed(d, &cpy_path, &cpy);
                            prop_assert!(ok, "{d} in\n{map}\n---\n{cpy}");
                        }
                    }
                }
            }
        }
    }

    /// A pickup source's records are whatever the legacy side wrote: any bytes split and
    /// decode to records or to errors naming a record, field and offset inside the record.
    #[test]
    fn decoding_any_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300), framing in 0u8..4) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("maps/RESULTS.cpy"),
            dir.path().join("RESULTS.cpy"),
        ).unwrap();
        let framing = ["rdw", "rdw, bdw: true", "fixed", "rdw, floats: ieee, byte_order: little"][usize::from(framing)];
        let text = format!(
            "target: r\nlayout: RESULTS.cpy\nrecord: {{encoding: ebcdic-037, framing: {framing}}}\n\
             layout_when: {{RES-HEADER: RH-IS-HEADER, RES-DETAIL: RD-IS-DETAIL, RES-TRAILER: RT-IS-TRAILER}}\n\
             deliver: {{kind: file, dir: o, file: f}}\n"
        );
        let conn = connector::parse(&dir.path().join("m.yml"), &text).unwrap();
        let m = Mapping::compile_layout(&conn, &MapContext { timezone: chrono_tz::UTC }).unwrap();
        for frame in m.framing().split(&bytes) {
            let Ok(f) = frame else { break };
            prop_assert!(f.offset + f.bytes.len() <= bytes.len());
            for view in [View::Fields, View::Event] {
                match m.decode(f.bytes, f.index, view) {
                    Ok(d) => { serde_json::from_str::<serde_json::Value>(&d.json).unwrap(); }
                    Err(e) => prop_assert!(e.offset <= f.bytes.len() && e.record_index == f.index && !e.field.is_empty(), "{e}"),
                }
            }
        }
    }
}
