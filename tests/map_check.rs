//! The map language, case by case: `check(map_yaml, event_json, expected)`.
//!
//! `expected` is the record as text (line end included), or `hex:..` for its bytes, or
//! `error:..` (the event is refused with a message containing the rest; `compliance:` for
//! the compliance reason), or `compile:..` (the map is refused with a diagnostic containing
//! the rest). A map without `target`/`deliver` gets them added; an event without `payload`
//! is taken as the payload of a `PERMIT_STATUS` event.

use std::path::Path;

use chrono::{DateTime, TimeZone, Utc};
use ess::config::connector;
use ess::event::Event;
use ess::map::{MapContext, Mapping, View};

fn compile_in(dir: &Path, yaml: &str, tz: &str) -> Result<Mapping, String> {
    let mut text = String::new();
    if !yaml.contains("target:") {
        text.push_str("target: t\n");
    }
    if !yaml.contains("deliver:") {
        text.push_str("deliver: {kind: file, dir: out, file: f.txt}\n");
    }
    text.push_str(yaml);
    let conn = connector::parse(&dir.join("m.yml"), &text).map_err(|d| d.to_string())?;
    let ctx = MapContext {
        timezone: tz.parse().unwrap(),
    };
    Mapping::compile(&conn, &ctx).map_err(|ds| {
        ds.iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    })
}

fn event(json: &str) -> Event {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let (ty, payload, ts) = if v.get("payload").is_some() {
        (
            v["type"].as_str().unwrap_or("PERMIT_STATUS").to_string(),
            v["payload"].as_object().unwrap().clone(),
            v.get("ts")
                .and_then(|t| t.as_str())
                .map(|t| t.parse::<DateTime<Utc>>().unwrap()),
        )
    } else {
        (
            "PERMIT_STATUS".to_string(),
            v.as_object().unwrap().clone(),
            None,
        )
    };
    Event {
        seq: 7,
        event_type: ty,
        payload: ess::event::Payload::from_map(payload),
        key: "k-1".into(),
        trace_id: "trace-1".into(),
        ts,
        received_at: "2025-04-12T12:00:00Z".parse().unwrap(),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The copybooks the cases below name in `layout:`.
fn write_copybooks(dir: &Path) {
    for (name, text) in [
        ("permit.cpy", PERMIT_CPY),
        ("clauses.cpy", CLAUSES_CPY),
        ("batch.cpy", BATCH_CPY),
        ("types.cpy", TYPES_CPY),
        (
            "redefines.cpy",
            "01 R.\n 05 A PIC X(4).\n 05 B REDEFINES A PIC 9(4).\n",
        ),
        (
            "odo.cpy",
            "01 R.\n 05 N PIC 99.\n 05 T OCCURS 1 TO 9 DEPENDING ON N PIC X.\n 05 Z PIC X.\n",
        ),
        (
            "bad.cpy",
            "01 R.\n 05 A PIC ZZ9.\n 05 B PIC X.\n 05 C PIC X.\n",
        ),
    ] {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

fn check_tz(map: &str, ev: &str, expected: &str, tz: &str) {
    let dir = tempfile::tempdir().unwrap();
    write_copybooks(dir.path());
    let m = match compile_in(dir.path(), map, tz) {
        Ok(m) => m,
        Err(e) => {
            let want = expected
                .strip_prefix("compile:")
                .unwrap_or_else(|| panic!("map refused: {e}\nmap: {map}"));
            assert!(
                e.contains(want),
                "diagnostics {e:?} do not contain {want:?}"
            );
            return;
        }
    };
    if let Some(want) = expected.strip_prefix("compile:") {
        panic!("map compiled but {want:?} was expected: {map}");
    }
    match m.render(&event(ev)) {
        Ok(r) => {
            if let Some(h) = expected.strip_prefix("hex:") {
                assert_eq!(hex(&r.bytes), h.trim(), "map: {map}");
            } else {
                let got = String::from_utf8_lossy(&r.bytes);
                assert!(
                    !expected.starts_with("error:"),
                    "rendered {got:?} but {expected:?} was expected; map: {map}"
                );
                assert_eq!(got, expected, "map: {map}");
                if let Some(len) = m.record_len() {
                    assert_eq!(r.bytes.len(), len + m.line_end().len());
                }
            }
        }
        Err(e) => {
            let msg = e.to_string();
            let want = expected
                .strip_prefix("error:")
                .unwrap_or_else(|| panic!("event refused: {msg}; map: {map}"));
            assert!(
                msg.contains(want.trim()),
                "error {msg:?} does not contain {want:?}"
            );
        }
    }
}

fn check(map: &str, ev: &str, expected: &str) {
    check_tz(map, ev, expected, "UTC");
}

fn unhex(h: &str) -> Vec<u8> {
    h.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

/// Decodes `file` (hex) with the map, record by record, into the event view: the JSON
/// lines joined by `\n`, or `error:..` (a decode or framing error containing the rest).
fn decode_check(map: &str, file: &str, expected: &str) {
    let dir = tempfile::tempdir().unwrap();
    write_copybooks(dir.path());
    let m = compile_in(dir.path(), map, "UTC").unwrap_or_else(|e| panic!("map refused: {e}"));
    let bytes = unhex(file);
    let mut lines = Vec::new();
    for frame in m.framing().split(&bytes) {
        let got = frame.map_err(|e| e.to_string()).and_then(|f| {
            m.decode(f.bytes, f.index, View::Event)
                .map_err(|e| e.to_string())
        });
        match got {
            Ok(d) => lines.push(d.json),
            Err(e) => {
                let want = expected
                    .strip_prefix("error:")
                    .unwrap_or_else(|| panic!("decoding failed: {e}; map: {map}"));
                assert!(
                    e.contains(want.trim()),
                    "error {e:?} does not contain {want:?}"
                );
                return;
            }
        }
    }
    assert!(
        !expected.starts_with("error:"),
        "decoded {lines:?} but {expected:?} was expected"
    );
    // Compared as JSON values: the decoder writes members in layout order.
    let parse = |t: &str| -> Vec<serde_json::Value> {
        t.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    assert_eq!(
        parse(&lines.join("\n")),
        parse(expected),
        "decoded {lines:?}; map: {map}"
    );
}

/// Both ways: the event renders to `hex`, and `hex` decodes to the event (`type` and
/// `payload` as given; any other member of `ev` is left out of the comparison).
fn both(map: &str, ev: &str, hex: &str) {
    check(map, ev, &format!("hex:{hex}"));
    let v: serde_json::Value = serde_json::from_str(ev).unwrap();
    let (ty, payload) = match v.get("payload") {
        Some(p) => (
            v["type"].as_str().unwrap_or("RECORD").to_string(),
            p.clone(),
        ),
        None => ("RECORD".to_string(), v.clone()),
    };
    let want = serde_json::json!({"type": ty, "payload": payload}).to_string();
    decode_check(map, hex, &want);
}

const PERMIT: &str = r#"{"type":"PERMIT_STATUS","payload":{"id":"BP-802","status":"APPROVED","updated_at":"2025-04-12T10:03:00Z"}}"#;

const PERMIT_CPY: &str = "\
      * PERMIT STATUS RECORD, CITY HALL
       01  PERMIT-REC.
           05  PERMIT-ID          PIC X(10).
           05  STATUS-CODE        PIC X(1).
           05  FEE                PIC S9(5)V99 COMP-3.
           05  UNITS              PIC 9(4) COMP.
           05  FILLER             PIC X(2).
           05  BALANCE            PIC S9(3)V99.
";

/// Free-format source (no sequence area) exercising the remaining clauses.
const CLAUSES_CPY: &str = "\
*> free-format copybook
01 CLAUSE-REC.
   05 NAME        PIC X(6) JUSTIFIED RIGHT.
   05 ADJ         PIC S9(3)V9 SIGN IS LEADING SEPARATE CHARACTER.
   05 LEAD        PIC S9(3) SIGN LEADING.
   05 TRAIL-SEP   PIC S99 SIGN TRAILING SEPARATE.
   05 COUNTS      COMP-5.
      10 CNT      PIC S9(4) OCCURS 2 TIMES.
   05 BIG         PIC S9(12) BINARY.
   05 GRID        OCCURS 2.
      10 CELL     PIC X OCCURS 2 TIMES.
   05 STATUS-X    PIC X VALUE 'A'.
      88 ACTIVE   VALUE 'A'.
";

/// Header, detail and trailer records in one file (three 01 records sharing the bytes).
const BATCH_CPY: &str = "\
       01  HDR-REC.
           05  HDR-TYPE           PIC X.
               88  IS-HDR         VALUE 'H'.
           05  HDR-DATE           PIC 9(8).
       01  DTL-REC.
           05  DTL-TYPE           PIC X.
               88  IS-DTL         VALUE 'D'.
           05  DTL-ID             PIC X(6).
           05  DTL-AMT            PIC S9(5)V99 COMP-3.
       01  TRL-REC.
           05  TRL-TYPE           PIC X.
               88  IS-TRL         VALUE 'T'.
           05  TRL-COUNT          PIC 9(5).
";

/// Every other clause, one field each.
const TYPES_CPY: &str = "\
01 TYPES-REC.
   05 F1          COMP-1.
   05 F2          COMP-2.
   05 C5          PIC S9(4) COMP-5.
   05 TAG         PIC X.
   05 HW          PIC S9(4) COMP SYNC.
   05 BWZ         PIC 9(3) BLANK WHEN ZERO.
   05 THOUSANDS   PIC 9(3)PPP.
   05 MILLIONTHS  PIC SVPPP9(3).
   05 FILLER      PIC X(3) VALUE 'EOR'.
   05 NM          PIC N(3).
   05 FLAG        PIC X.
      88 FLAG-ON  VALUE 'Y'.
      88 FLAG-OFF VALUE 'N'.
";

const SEED_FIELDS: &str = "fields:\n  PERMIT_ID: id | width:10\n  STATUS   : status | width:10\n  TS       : updated_at | format:%Y%m%d%H%M%S | width:14\n";

#[test]
fn spec_section_4_permit_line() {
    check(
        &format!("events: [PERMIT_STATUS]\nformat: fixed\n{SEED_FIELDS}"),
        PERMIT,
        "BP-802    APPROVED  20250412100300\n",
    );
}

#[test]
fn short_form_modifiers() {
    check(
        "fields: {A: 'id | width:8'}",
        r#"{"id":"BP"}"#,
        "BP      \n",
    );
    check(
        "fields: {A: 'id | width:8 | align:right'}",
        r#"{"id":"BP"}"#,
        "      BP\n",
    );
    check(
        "fields: {A: 'id | width:6 | align:right | pad:0'}",
        r#"{"id":"42"}"#,
        "000042\n",
    );
    check(
        "fields: {A: 'id | width:6 | pad:\"*\"'}",
        r#"{"id":"42"}"#,
        "42****\n",
    );
    check(
        "fields: {A: 'id | width:4 | upper'}",
        r#"{"id":"bp-1"}"#,
        "BP-1\n",
    );
    check(
        "fields: {A: 'id | width:4 | lower'}",
        r#"{"id":"BP-1"}"#,
        "bp-1\n",
    );
    check(
        "fields: {A: 'id | trim | width:4'}",
        r#"{"id":"  x  "}"#,
        "x   \n",
    );
    check(
        "fields: {A: 'id | width:4'}",
        r#"{"id":"  x  "}"#,
        "error: longer than width 4",
    );
    check(
        "fields: {A: 'id | width:3'}",
        r#"{"id":"BP-802"}"#,
        "error: longer than width 3",
    );
    check(
        "fields: {A: 'id | width:3 | overflow:truncate'}",
        r#"{"id":"BP-802"}"#,
        "BP-\n",
    );
    check(
        "overflow: truncate\nfields: {A: 'id | width:3'}",
        r#"{"id":"BP-802"}"#,
        "BP-\n",
    );
    check(
        "overflow: truncate\nfields: {A: 'id | width:3 | align:right'}",
        r#"{"id":"BP-802"}"#,
        "802\n",
    );
    check(
        "fields: {A: 'id | width:5 | default:NONE'}",
        r#"{}"#,
        "NONE \n",
    );
    check(
        "fields: {A: 'id | width:5 | default:\"\"'}",
        r#"{}"#,
        "     \n",
    );
    check(
        "fields: {A: 'id | width:5'}",
        r#"{}"#,
        "error: payload.id is missing",
    );
    check(
        "fields: {A: 'id | width:5'}",
        r#"{"id":null}"#,
        "error: payload.id is missing",
    );
    check(
        "fields: {A: 'status | map:{A: APPROVED, R: REJECTED} | width:10'}",
        r#"{"status":"R"}"#,
        "REJECTED  \n",
    );
    check(
        "fields: {A: 'status | map:{A: APPROVED} | width:10'}",
        r#"{"status":"X"}"#,
        "error: value is not in the map",
    );
    check(
        "fields: {A: 'status | map:{A: APPROVED} | default:OTHER | width:10'}",
        r#"{"status":"X"}"#,
        "OTHER     \n",
    );
    check(
        "fields: {A: 'status | trim | map:{a: yes} | upper | width:3'}",
        r#"{"status":" a "}"#,
        "YES\n",
    );
}

#[test]
fn long_form_modifiers() {
    check(
        "fields: {A: {from: id, width: 6, align: right, pad: '0'}}",
        r#"{"id":"42"}"#,
        "000042\n",
    );
    check(
        "fields: {A: {from: id, width: 6, align: right, pad: 0}}",
        r#"{"id":"42"}"#,
        "000042\n",
    );
    check(
        "fields: {A: {from: id, width: 4, upper: true, trim: true}}",
        r#"{"id":" ab "}"#,
        "AB  \n",
    );
    check(
        "fields: {A: {from: s, width: 8, map: {A: APPROVED}}}",
        r#"{"s":"A"}"#,
        "APPROVED\n",
    );
    check(
        "fields: {A: {from: d, format: '%Y%m%d', width: 8}}",
        r#"{"d":"2025-04-12T23:30:00Z"}"#,
        "20250412\n",
    );
    check(
        "fields: {A: {from: amt, number: 9(5)V99}}",
        r#"{"amt":19.99}"#,
        "0001999\n",
    );
    check(
        "fields: {A: {from: id, width: 2, overflow: truncate}}",
        r#"{"id":"ABC"}"#,
        "AB\n",
    );
    check(
        "fields: {A: {from: id, width: 4, default: '-'}}",
        r#"{}"#,
        "-   \n",
    );
    check(
        "fields: {A: {from: id, widht: 4}}",
        r#"{}"#,
        "compile:widht",
    );
    check("fields: {A: {width: 4}}", r#"{}"#, "compile:needs `from:`");
    check(
        "format: csv\nfields: {A: n}",
        r#"{}"#,
        "compile:as a boolean (false); quote the source",
    );
}

#[test]
fn sources_paths_constants_and_metadata() {
    check(
        "fields: {A: 'address.zip | width:5'}",
        r#"{"address":{"zip":"02139"}}"#,
        "02139\n",
    );
    check(
        "fields: {A: 'items[1].code | width:3'}",
        r#"{"items":[{"code":"X1"},{"code":"Y2"}]}"#,
        "Y2 \n",
    );
    check(
        "fields: {A: 'items[5].code | width:3'}",
        r#"{"items":[]}"#,
        "error: payload.items[5].code is missing",
    );
    check(
        "fields: {A: 'items | width:3'}",
        r#"{"items":[1]}"#,
        "error: is a list",
    );
    check(
        "fields: {A: '\"H\" | width:1', B: 'id | width:3'}",
        r#"{"id":"x"}"#,
        "Hx  \n",
    );
    check("fields: {A: \"'P|Q' | width:3\"}", r#"{}"#, "P|Q\n");
    check(
        "fields: {A: '$seq | width:4 | align:right | pad:0'}",
        r#"{}"#,
        "0007\n",
    );
    check(
        "fields: {A: '$type | width:13'}",
        r#"{}"#,
        "PERMIT_STATUS\n",
    );
    check(
        "fields: {A: '$key | width:3', B: '$trace_id | width:7'}",
        r#"{}"#,
        "k-1trace-1\n",
    );
    check(
        "fields: {A: '$received_at | format:%H%M | width:4'}",
        r#"{}"#,
        "1200\n",
    );
    check(
        "fields: {A: '$ts | format:%H%M | width:4'}",
        r#"{"type":"X","payload":{},"ts":"2025-01-02T03:04:05Z"}"#,
        "0304\n",
    );
    check(
        "fields: {A: '$ts | format:%H%M | width:4'}",
        r#"{}"#,
        "error: $ts is missing",
    );
    check(
        "fields: {A: '$nope | width:4'}",
        r#"{}"#,
        "compile:unknown source \"$nope\"",
    );
    check(
        "fields: {A: '$count | width:4'}",
        r#"{}"#,
        "compile:belong in `header:`",
    );
    check(
        "fields: {A: 'a b | width:4'}",
        r#"{}"#,
        "compile:not a payload path",
    );
}

#[test]
fn updated_at_falls_back_to_ts_then_received_at() {
    let f = "fields: {TS: 'updated_at | format:%Y%m%d%H%M%S | width:14'}";
    check(
        f,
        r#"{"type":"P","payload":{},"ts":"2025-04-12T10:03:00Z"}"#,
        "20250412100300\n",
    );
    check(f, r#"{}"#, "20250412120000\n");
    check(
        f,
        r#"{"updated_at":"2025-04-12T10:03:00+02:00"}"#,
        "20250412080300\n",
    );
}

#[test]
fn dates_in_the_configured_timezone() {
    let f = "fields: {D: 'd | format:%Y-%m-%d %H:%M %Z | width:20'}";
    check_tz(
        f,
        r#"{"d":"2025-04-12T10:03:00Z"}"#,
        "2025-04-12 06:03 EDT\n",
        "America/New_York",
    );
    check_tz(
        f,
        r#"{"d":"2025-01-12T10:03:00Z"}"#,
        "2025-01-12 05:03 EST\n",
        "America/New_York",
    );
    check_tz(
        "fields: {D: 'd | format:%d.%m.%Y | width:10'}",
        r#"{"d":"2025-04-12"}"#,
        "12.04.2025\n",
        "Europe/Berlin",
    );
    check(
        "fields: {D: 'd | format:%Y%m%d | width:8'}",
        r#"{"d":"12/04/2025"}"#,
        "error: is not a date or time",
    );
    check(
        "fields: {D: 'd | format:%Q | width:8'}",
        r#"{}"#,
        "compile:not a valid strftime",
    );
}

#[test]
fn numbers_are_exact_with_implied_decimals_and_signs() {
    check(
        "fields: {A: 'amt | number:9(7)V99'}",
        r#"{"amt":19.99}"#,
        "000001999\n",
    );
    check(
        "fields: {A: 'amt | number:9(7)V99'}",
        r#"{"amt":"19.99"}"#,
        "000001999\n",
    );
    check(
        "fields: {A: 'amt | number:9(3)V99'}",
        r#"{"amt":12345678901234567890.5}"#,
        "error: does not fit",
    );
    check(
        "fields: {A: 'amt | number:9(18)V99'}",
        r#"{"amt":1234567890123456.78}"#,
        "00123456789012345678\n",
    );
    check(
        "fields: {A: 'amt | number:9(3)V99'}",
        r#"{"amt":1.005}"#,
        "error: has 3 decimal places",
    );
    check(
        "fields: {A: 'amt | number:9(5)'}",
        r#"{"amt":-5}"#,
        "error: negative but the picture has no sign",
    );
    check(
        "fields: {A: 'amt | number:S9(3)V99'}",
        r#"{"amt":-19.99}"#,
        "0199R\n",
    );
    check(
        "fields: {A: 'amt | number:S9(3)V99'}",
        r#"{"amt":19.90}"#,
        "0199{\n",
    );
    check(
        "fields: {A: 'amt | number:S9(3)V99 leading separate'}",
        r#"{"amt":-1.5}"#,
        "-00150\n",
    );
    check(
        "fields: {A: 'amt | number:S9(3) trailing separate'}",
        r#"{"amt":7}"#,
        "007+\n",
    );
    check(
        "fields: {A: 'amt | number:S9(3) leading'}",
        r#"{"amt":-123}"#,
        "J23\n",
    );
    check(
        "fields: {A: 'amt | number:9(3) | overflow:truncate'}",
        r#"{"amt":12345}"#,
        "345\n",
    );
    check(
        "fields: {A: 'amt | number:9(3)'}",
        r#"{"amt":"12a"}"#,
        "error: not a decimal number",
    );
    check(
        "fields: {A: 'amt | number:9(3) | width:4'}",
        r#"{}"#,
        "compile:disagrees with the number picture",
    );
    check(
        "fields: {A: 'amt | number:ZZ9'}",
        r#"{}"#,
        "compile:edited picture",
    );
    check(
        "fields: {A: 'amt | number:9(3) | default:0'}",
        r#"{}"#,
        "000\n",
    );
}

#[test]
fn compile_errors_teach() {
    check(
        "fields: {A: 'id | widht:3'}",
        "{}",
        "compile:unknown modifier \"widht\"",
    );
    check(
        "fields: {A: 'id | len:3'}",
        "{}",
        "compile:did you mean `width:N`?",
    );
    check(
        "fields: {A: 'id | width:x'}",
        "{}",
        "compile:width \"x\" is not a positive number",
    );
    check(
        "fields: {A: 'id | align:center | width:3'}",
        "{}",
        "compile:align \"center\" is not `left` or `right`",
    );
    check(
        "fields: {A: 'id | pad:ab | width:3'}",
        "{}",
        "compile:must be one character",
    );
    check(
        "fields: {A: 'id | upper:yes | width:3'}",
        "{}",
        "compile:takes no value",
    );
    check(
        "fields: {A: 'id | map:A=B | width:3'}",
        "{}",
        "compile:in braces",
    );
    check(
        "format: xml\nfields: {A: 'id | width:3'}",
        "{}",
        "compile:format \"xml\" is not one of",
    );
    check(
        "record: {encoding: ebcdic}\nfields: {A: 'id | width:3'}",
        "{}",
        "compile:encoding \"ebcdic\" is not one of",
    );
    check(
        "record: {line_end: \"\\t\"}\nfields: {A: 'id | width:3'}",
        "{}",
        "compile:record.line_end",
    );
    check("fields: {A: 'id'}", "{}", "compile:m.yml:3:");
    check(
        "fields: {TS: 'updated_at | format:%Y%m%d%H%M%S'}",
        "{}",
        "compile:write `TS: updated_at | format:%Y%m%d%H%M%S | width:14`",
    );
}

#[test]
fn compile_errors_point_at_the_field() {
    check(
        "format: soap\nfields:\n  ok: id\n  'bad name': id\n",
        "{}",
        "compile:m.yml:6:3: field name \"bad name\"",
    );
    check(
        "fields:\n  A: '\"é\" | width:1'\n",
        "{}",
        "compile:m.yml:4:3: field A: constant \"é\"",
    );
    check(
        "record: {encoding: ascii}\nfields: {A: 'id | width:3 | pad:é'}",
        "{}",
        "compile:pad 'é' cannot be written in ascii",
    );
    check("fields: {}", "{}", "compile:`fields:` is empty");
}

#[test]
fn modifier_errors_point_at_the_modifier() {
    // Plain scalar: `A: id | widht:3` `widht` at column 11.
    check(
        "fields:\n  A: id | widht:3\n",
        "{}",
        "compile:m.yml:4:11: unknown modifier \"widht\"",
    );
    // Quoted scalar: one more for the quote.
    check(
        "fields:\n  A: 'id | width:3 | align:mid'\n",
        "{}",
        "compile:m.yml:4:22: align \"mid\"",
    );
    check(
        "fields:\n  A: 'a b | width:3'\n",
        "{}",
        "compile:m.yml:4:7: \"a b\" is not a payload path",
    );
}

#[test]
fn seed_map_without_widths_names_every_field_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let seed = "target: city_hall_cobol\nfields:\n  PERMIT_ID: id\n  STATUS    : status\n  TS        : updated_at | format:%Y%m%d%H%M%S\ndeliver: {kind: file, dir: out, file: permit.txt}\n";
    let conn = connector::parse(&dir.path().join("permit_map.yml"), seed).unwrap();
    let errs = Mapping::compile(
        &conn,
        &MapContext {
            timezone: chrono_tz::UTC,
        },
    )
    .unwrap_err();
    let msgs: Vec<String> = errs.iter().map(|d| d.to_string()).collect();
    assert_eq!(msgs.len(), 3, "{msgs:#?}");
    assert!(
        msgs[0].contains("permit_map.yml:3:")
            && msgs[0].contains("field PERMIT_ID has no width")
            && msgs[0].contains("`PERMIT_ID: id | width:N`"),
        "{}",
        msgs[0]
    );
    assert!(
        msgs[1].contains(":4:") && msgs[1].contains("`STATUS: status | width:N`"),
        "{}",
        msgs[1]
    );
    assert!(
        msgs[2].contains(":5:") && msgs[2].contains("| width:14`"),
        "{}",
        msgs[2]
    );
}

/// Issue 15, point 1: no control character reaches a fixed-width or CSV record unless the
/// field opts in; JSON and SOAP bodies escape them, never raw.
#[test]
fn issue_15_control_characters_are_refused_unless_the_field_opts_in() {
    let refused = "error:the value holds a control character";
    for (value, at) in [
        (r"X\nFAKE-1", "U+000A, character 2"),
        (r"CR\rX", "U+000D, character 3"),
        (r"\u0000", "U+0000, character 1"),
        (r"T\tX", "U+0009"),
        (r"D\u007fX", "U+007F"),
        (r"NEL\u0085X", "U+0085, character 4"),
        (r"é\u009f", "U+009F, character 2"),
    ] {
        let ev = format!(r#"{{"id":"{value}"}}"#);
        check(
            "fields: {A: 'id | width:12'}",
            &ev,
            &format!("{refused} ({at}"),
        );
        check("format: csv\nfields: {A: id}", &ev, refused);
        check(
            "format: fixed\nrecord: {line_end: \"\"}\nfields: {A: 'id | width:12'}",
            &ev,
            refused,
        );
    }
    // The message names the field and never the value.
    check(
        "fields: {PERMIT_ID: 'id | width:12'}",
        r#"{"id":"X\nFAKE-1"}"#,
        "error:field PERMIT_ID: the value holds a control character",
    );
    // Constants, defaults and modified values go through the same rule.
    check(
        r#"fields: {A: {from: "\"a\tb\"", width: 4}}"#,
        "{}",
        refused,
    );
    check(
        "fields: {A: 'id | upper | width:4'}",
        r#"{"id":"a\nb"}"#,
        refused,
    );
    check("fields: {A: 'id | default:x | width:4'}", "{}", "x   \n");
    // Opting in: replace (short and long form) or allow.
    check(
        "fields: {A: 'id | width:8 | control:replace:\" \"'}",
        r#"{"id":"A\nB\u0000C\u0085D"}"#,
        "A B C D \n",
    );
    check(
        "fields: {A: 'id | width:4 | control:replace:_'}",
        r#"{"id":"\r\n"}"#,
        "__  \n",
    );
    check(
        "fields: {A: {from: id, width: 4, control: 'replace:\" \"'}}",
        r#"{"id":"a\tb"}"#,
        "a b \n",
    );
    check(
        "fields: {A: {from: id, width: 4, control: allow}}",
        r#"{"id":"a\tb"}"#,
        "a\tb \n",
    );
    check(
        "format: csv\nfields: {A: 'id | control:replace:\" \"', B: id2}",
        r#"{"id":"a\r\nb","id2":"c"}"#,
        "a  b,c\n",
    );
    // The option is checked.
    check(
        "fields: {A: 'id | width:4 | control:strip'}",
        "{}",
        "compile:control \"strip\" is not",
    );
    check(
        "fields: {A: 'id | width:4 | control'}",
        "{}",
        "compile:`control` needs a value",
    );
    check(
        "fields: {A: 'id | width:4 | control:replace:\"ab\"'}",
        "{}",
        "compile:must be one character",
    );
    check(
        r#"fields: {A: {from: id, width: 4, control: "replace:\"\n\""}}"#,
        "{}",
        "compile:would put a control character in the record",
    );
    check(
        "fields: {A: {from: id, width: 4, control: sometimes}}",
        "{}",
        "compile:control \"sometimes\" is not",
    );
    // JSON: escaped, never raw (C0, DEL and C1 alike), modified values and pass-through.
    check(
        "format: json\nfields: {a: id, b: 'id | upper'}",
        r#"{"id":"x\ny\u0000\u007f\u0085"}"#,
        "{\"a\":\"x\\ny\\u0000\\u007f\\u0085\",\"b\":\"X\\nY\\u0000\\u007f\\u0085\"}\n",
    );
    check(
        "format: json\nfields: {a: 'id | control:replace:\" \"'}",
        r#"{"id":"x\ny"}"#,
        "{\"a\":\"x y\"}\n",
    );
    // SOAP: line ends, tab, DEL and C1 as character references; other C0 cannot be in XML.
    check(
        "format: soap\nfields: {P: id}",
        r#"{"id":"a\r\nb\tc\u0085"}"#,
        "<P>a&#xD;&#xA;b&#x9;c&#x85;</P>",
    );
    check(
        "format: soap\nfields: {P: id}",
        r#"{"id":"a\u0001"}"#,
        "error:field P: the value holds a control character (U+0001) that XML 1.0 cannot carry",
    );
    check(
        "format: soap\nfields: {P: 'id | control:replace:\" \"'}",
        r#"{"id":"a\u0001"}"#,
        "<P>a </P>",
    );
}

#[test]
fn csv_json_and_soap() {
    check(
        "format: csv\nfields: {A: id, B: status}",
        PERMIT,
        "BP-802,APPROVED\n",
    );
    check(
        "format: csv\nfields: {A: id, B: note}",
        r#"{"id":"a,b","note":"say \"hi\""}"#,
        "\"a,b\",\"say \"\"hi\"\"\"\n",
    );
    check(
        "format: csv\nfields: {A: id}",
        r#"{"id":"two\nlines"}"#,
        "error:field A: the value holds a control character (U+000A, character 4)",
    );
    check(
        "format: csv\nfields: {A: 'id | control:allow'}",
        r#"{"id":"two\nlines"}"#,
        "\"two\nlines\"\n",
    );
    check(
        "format: csv\ncsv: {delimiter: ';'}\nfields: {A: id, B: note}",
        r#"{"id":"a,b","note":"c;d"}"#,
        "a,b;\"c;d\"\n",
    );
    check(
        "format: csv\nrecord: {line_end: \"\\r\\n\"}\nfields: {A: id, B: 'amt | number:9(3)V99'}",
        r#"{"id":"x","amt":1.5}"#,
        "x,00150\r\n",
    );
    check(
        "format: csv\ncsv: {delimiter: '\"'}\nfields: {A: id}",
        "{}",
        "compile:csv.delimiter",
    );
    check(
        "format: fixed\ncsv: {header: true}\nfields: {A: 'id | width:2'}",
        "{}",
        "compile:apply only to `format: csv`",
    );
    check(
        "format: json\nfields: {id: id, amt: amt, ok: ok, seq: $seq}",
        r#"{"id":"BP-802","amt":19.990,"ok":true}"#,
        "{\"id\":\"BP-802\",\"amt\":19.990,\"ok\":true,\"seq\":7}\n",
    );
    check(
        "format: json\nfields: {id: 'id | upper', when: 'updated_at | format:%Y%m%d'}",
        r#"{"id":"bp"}"#,
        "{\"id\":\"BP\",\"when\":\"20250412\"}\n",
    );
    check(
        "format: json\nfields: {tags: tags}",
        r#"{"tags":["a","b"]}"#,
        "{\"tags\":[\"a\",\"b\"]}\n",
    );
    check(
        "format: soap\nfields: {PermitId: id, Status: status}",
        r#"{"id":"BP<1>&","status":"OK"}"#,
        "<PermitId>BP&lt;1&gt;&amp;</PermitId><Status>OK</Status>",
    );
    check(
        "format: soap\nrecord: {line_end: \"\\n\"}\nfields: {P: id}",
        r#"{"id":"x"}"#,
        "<P>x</P>\n",
    );
    check(
        "format: soap\nfields: {'1bad': id}",
        "{}",
        "compile:not a valid XML element name",
    );
}

#[test]
fn encodings() {
    let f = "fields: {A: 'id | width:6'}\nrecord: {line_end: \"\", encoding: ";
    check(
        &format!("{f}ebcdic-037}}"),
        r#"{"id":"BP-8"}"#,
        "hex:C2 D7 60 F8 40 40",
    );
    check(
        &format!("{f}ebcdic-1047}}"),
        r#"{"id":"[a]^"}"#,
        "hex:AD 81 BD 5F 40 40",
    );
    check(
        &format!("{f}ebcdic-037}}"),
        r#"{"id":"[a]^"}"#,
        "hex:BA 81 BB B0 40 40",
    );
    check(
        &format!("{f}ebcdic-037}}"),
        r#"{"id":"€"}"#,
        "error: a character (U+20AC) cannot be written in ebcdic-037",
    );
    check(
        &format!("{f}latin1}}"),
        r#"{"id":"café"}"#,
        "hex:63 61 66 E9 20 20",
    );
    check(
        &format!("{f}ascii}}"),
        r#"{"id":"café"}"#,
        "error: field A: a character (U+00E9)",
    );
    check(
        "fields: {A: 'id | width:4'}",
        r#"{"id":"café"}"#,
        "error: cannot be written in ascii",
    );
    check(
        "record: {encoding: ebcdic-037}\nfields: {A: 'id | width:1'}",
        r#"{"id":"A"}"#,
        "hex:C1 25",
    );
    check(
        "record: {encoding: ebcdic-037, line_end: \"\"}\nfields: {A: 'n | number:S9(3)'}",
        r#"{"n":-12}"#,
        "hex:F0 F1 D2",
    );
    check(
        "record: {encoding: ascii}\nfields: {A: '\"é\" | width:1'}",
        "{}",
        "compile:ascii cannot represent",
    );
}

#[test]
fn copybook_layouts() {
    let cb = "layout: permit.cpy\nrecord: {line_end: \"\", encoding: ebcdic-037}\n";
    check(
        &format!(
            "{cb}fields: {{PERMIT-ID: id, STATUS-CODE: '\"A\"', FEE: fee, UNITS: units, BALANCE: bal}}"
        ),
        r#"{"id":"BP-802","fee":-123.45,"units":258,"bal":1.5}"#,
        "hex:C2 D7 60 F8 F0 F2 40 40 40 40 C1 00 12 34 5D 01 02 40 40 F0 F0 F1 F5 C0",
    );
    // Unmapped fields are blank: spaces for text, zeros for numbers.
    check(
        &format!("{cb}fields: {{PERMIT-ID: id}}"),
        r#"{"id":"X"}"#,
        "hex:E7 40 40 40 40 40 40 40 40 40 40 00 00 00 0C 00 00 40 40 F0 F0 F0 F0 C0",
    );
    check(
        &format!("{cb}fields: {{PERMIT_ID: id}}"),
        "{}",
        "compile:PERMIT_ID is not a field of the copybook (did you mean PERMIT-ID?)",
    );
    check(
        &format!("{cb}fields: {{PERMIT-ID: 'id | width:12'}}"),
        "{}",
        "compile:width:12 disagrees with the copybook: PERMIT-ID is PIC X(10) (10 bytes)",
    );
    check(
        "layout: permit.cpy\nfields: {PERMIT-ID: id}",
        "{}",
        "compile:add `record: {line_end: \"\"}`",
    );
    check(
        "layout: missing.cpy\nfields: {A: id}",
        "{}",
        "compile:cannot read copybook",
    );
    check(
        "format: csv\nlayout: permit.cpy\nfields: {A: id}",
        "{}",
        "compile:needs `format: fixed`",
    );
    check(
        &format!("{cb}fields: {{FEE: fee}}"),
        r#"{"fee":123456.78}"#,
        "error: does not fit in 5 integer digits",
    );
    check(
        &format!("{cb}fields: {{UNITS: units}}"),
        r#"{"units":-1}"#,
        "error: negative but the picture has no sign",
    );
}

#[test]
fn copybook_clauses() {
    let m = "layout: clauses.cpy\nrecord: {line_end: \"\"}\nfields: ";
    check(
        &format!("{m}{{NAME: nm}}"),
        r#"{"nm":"ab"}"#,
        "hex:20 20 20 20 61 62 2B 30 30 30 30 7B 30 30 30 30 2B 00 00 00 00 00 00 00 00 00 00 00 00 20 20 20 20 41",
    );
    check(
        &format!("{m}{{ADJ: a, LEAD: l, TRAIL-SEP: t}}"),
        r#"{"a":-12.5,"l":-123,"t":7}"#,
        "hex:20 20 20 20 20 20 2D 30 31 32 35 4A 32 33 30 37 2B 00 00 00 00 00 00 00 00 00 00 00 00 20 20 20 20 41",
    );
    check(
        &format!("{m}{{CNT(1): 'c[0]', CNT(2): 'c[1]', BIG: b}}"),
        r#"{"c":[1,-2],"b":-1}"#,
        "hex:20 20 20 20 20 20 2B 30 30 30 30 7B 30 30 30 30 2B 00 01 FF FE FF FF FF FF FF FF FF FF 20 20 20 20 41",
    );
    check(
        &format!("{m}{{\"CELL(1,2)\": g, \"CELL(2,1)\": h, STATUS-X: s}}"),
        r#"{"g":"x","h":"y","s":"B"}"#,
        "hex:20 20 20 20 20 20 2B 30 30 30 30 7B 30 30 30 30 2B 00 00 00 00 00 00 00 00 00 00 00 00 20 78 79 20 42",
    );
    check(
        &format!("{m}{{BIG: b}}"),
        r#"{"b":1234567890123}"#,
        "error: does not fit in 12 integer digits",
    );
}

#[test]
fn transforms_and_compliance() {
    check(
        "transform: {drop_fields: [ssn]}\nfields: {A: 'ssn | width:4 | default:NONE'}",
        r#"{"ssn":"123"}"#,
        "NONE\n",
    );
    check(
        "transform: {mask: {phone: last4}}\nfields: {A: 'phone | width:12'}",
        r#"{"phone":"555-123-4567"}"#,
        "********4567\n",
    );
    check(
        "transform: {mask: {p.ssn: redact}}\nfields: {A: 'p.ssn | width:8'}",
        r#"{"p":{"ssn":"123-45-6789"}}"#,
        "REDACTED\n",
    );
    check(
        "transform: {mask: {k: sha256}}\nfields: {A: 'k | width:64'}",
        r#"{"k":"abc"}"#,
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n",
    );
    check(
        "compliance: {deny_fields: [ssn]}\nfields: {A: 'id | width:2'}",
        r#"{"id":"x","ssn":"1"}"#,
        "error:compliance: the event carries ssn",
    );
    check(
        "compliance: {deny_fields: [ssn]}\nfields: {A: 'id | width:2'}",
        r#"{"id":"x"}"#,
        "x \n",
    );
    check(
        "transform: {drop_fields: [ssn]}\ncompliance: {deny_fields: [ssn]}\nfields: {A: 'id | width:2'}",
        r#"{"id":"x","ssn":"1"}"#,
        "x \n",
    );
    check(
        "transform: {mask: {ssn: hide}}\nfields: {A: 'id | width:2'}",
        "{}",
        "compile:mask \"hide\" is not",
    );
}

#[test]
fn every_element_paths_in_transforms_only() {
    check(
        "transform: {drop_fields: ['kids[*].ssn']}\ncompliance: {deny_fields: ['kids[*].ssn']}\nfields: {A: 'kids[1].name | width:3'}",
        r#"{"kids":[{"name":"Al","ssn":"1"},{"name":"Bo","ssn":"2"}]}"#,
        "Bo \n",
    );
    check(
        "compliance: {deny_fields: ['kids[*].ssn']}\nfields: {A: 'kids[0].name | width:3'}",
        r#"{"kids":[{"name":"Al"},{"name":"Bo","ssn":"2"}]}"#,
        "error:compliance: the event carries kids[*].ssn",
    );
    check(
        "fields: {A: 'kids[*].name | width:3'}",
        "{}",
        "compile:`[*]` (every element) is for transform and compliance paths",
    );
}

#[test]
fn compliance_reason_is_compliance() {
    let dir = tempfile::tempdir().unwrap();
    let m = compile_in(
        dir.path(),
        "compliance: {deny_fields: [ssn]}\nfields: {A: 'id | width:2'}",
        "UTC",
    )
    .unwrap();
    let e = m.render(&event(r#"{"ssn":"1"}"#)).unwrap_err();
    assert_eq!(e.reason(), "compliance");
    let m = compile_in(dir.path(), "fields: {A: 'id | width:2'}", "UTC").unwrap();
    assert_eq!(m.render(&event("{}")).unwrap_err().reason(), "map");
}

#[test]
fn events_filter() {
    let dir = tempfile::tempdir().unwrap();
    let m = compile_in(
        dir.path(),
        "events: [PERMIT_STATUS]\nfields: {A: 'id | width:2'}",
        "UTC",
    )
    .unwrap();
    assert!(m.selects("PERMIT_STATUS") && !m.selects("PAYROLL"));
    let all = compile_in(dir.path(), "fields: {A: 'id | width:2'}", "UTC").unwrap();
    assert!(all.selects("ANYTHING"));
}

fn batch_of(m: &Mapping, payloads: &[&str]) -> Vec<(Event, ess::event::Record)> {
    payloads
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut e = event(p);
            e.seq = 100 + i as u64;
            let r = m.render(&e).unwrap();
            (e, r)
        })
        .collect()
}

#[test]
fn control_records_count_hash_total_and_date() {
    let dir = tempfile::tempdir().unwrap();
    let m = compile_in(
        dir.path(),
        "fields: {ID: 'id | width:4', AMT: 'amt | number:9(5)V99'}\n\
         header: {T: '\"H\" | width:1', RUN: '$date | format:%Y%m%d | width:8', FIRST: '$first_seq | number:9(6)'}\n\
         trailer: {T: '\"T\" | width:1', N: '$count | number:9(6)', HASH: '$sum:AMT | number:9(9)V99', LAST: '$last_seq | width:6 | align:right'}\n",
        "America/New_York",
    )
    .unwrap();
    let items = batch_of(
        &m,
        &[
            r#"{"id":"A","amt":19.99}"#,
            r#"{"id":"B","amt":"0.01"}"#,
            r#"{"id":"C","amt":1000}"#,
        ],
    );
    let now = chrono_tz::America::New_York
        .with_ymd_and_hms(2025, 4, 12, 23, 30, 0)
        .unwrap();
    assert_eq!(
        String::from_utf8(m.batch_header(&items, now).unwrap()).unwrap(),
        "H20250412000100\n"
    );
    assert_eq!(
        String::from_utf8(m.batch_trailer(&items, now).unwrap()).unwrap(),
        "T00000300000102000   102\n"
    );
    // Maps without control records give nothing.
    let plain = compile_in(dir.path(), "fields: {ID: 'id | width:4'}", "UTC").unwrap();
    assert!(plain.batch_header(&items, now).unwrap().is_empty());
    assert!(plain.batch_trailer(&items, now).unwrap().is_empty());
}

/// A header/detail/trailer file written by ESS: the batch's header and trailer laid out by
/// the copybook's HDR-REC and TRL-REC, the events as DTL-REC.
#[test]
fn control_records_laid_out_by_the_copybooks_record_types() {
    let dir = tempfile::tempdir().unwrap();
    write_copybooks(dir.path());
    let m = compile_in(
        dir.path(),
        "layout: batch.cpy\nrecord: {framing: rdw}\n\
         fields: {DTL-TYPE: '$88:IS-DTL', DTL-ID: id, DTL-AMT: amt}\n\
         header: {HDR-TYPE: '$88:IS-HDR', HDR-DATE: '$date | format:%Y%m%d'}\n\
         trailer: {TRL-TYPE: '\"T\"', TRL-COUNT: $count}\n",
        "UTC",
    )
    .unwrap();
    let items = batch_of(&m, &[r#"{"id":"A1","amt":1.5}"#, r#"{"id":"B2","amt":-2}"#]);
    let now = chrono_tz::UTC
        .with_ymd_and_hms(2025, 4, 12, 8, 0, 0)
        .unwrap();
    let mut file = m.batch_header(&items, now).unwrap();
    for (_, r) in &items {
        file.extend(&r.bytes);
    }
    file.extend(m.batch_trailer(&items, now).unwrap());
    assert_eq!(
        hex(&file),
        "00 0D 00 00 48 32 30 32 35 30 34 31 32 \
         00 0F 00 00 44 41 31 20 20 20 20 00 00 15 0C \
         00 0F 00 00 44 42 32 20 20 20 20 00 00 20 0D \
         00 0A 00 00 54 30 30 30 30 32"
    );
    // The same file decodes record type by record type with the rules of a pickup.
    let text = "layout: batch.cpy\nrecord: {framing: rdw}\nlayout_when: {HDR-REC: IS-HDR, DTL-REC: IS-DTL, TRL-REC: IS-TRL}\n";
    let d = compile_in(dir.path(), text, "UTC").map(|_| ()).unwrap_err();
    assert!(d.contains("the map has no `fields:`"), "{d}");
    check(
        "layout: batch.cpy\nrecord: {framing: rdw}\nfields: {DTL-ID: id}\nheader: {HDR-DATE: '$count', DTL-ID: '\"X\"'}",
        "{}",
        "compile:a control record is one record type; its fields are in HDR-REC and DTL-REC",
    );
}

#[test]
fn control_record_mistakes_are_compile_errors() {
    check(
        "fields: {A: 'id | width:2'}\ntrailer: {S: '$sum:NOPE | number:9(5)'}",
        "{}",
        "compile:$sum:NOPE: NOPE is not a field of this map",
    );
    check(
        "fields: {A: 'id | width:2'}\ntrailer: {S: 'id | width:2'}",
        "{}",
        "compile:header/trailer fields take quoted constants",
    );
}

#[test]
fn csv_header_row_opens_batches() {
    let dir = tempfile::tempdir().unwrap();
    let m = compile_in(
        dir.path(),
        "format: csv\ncsv: {header: true}\nfields: {EMP_ID: id, 'NAME, FULL': name}",
        "UTC",
    )
    .unwrap();
    assert_eq!(m.csv_header_row().unwrap(), b"EMP_ID,\"NAME, FULL\"\n");
    let now = chrono_tz::UTC
        .with_ymd_and_hms(2025, 4, 12, 0, 0, 0)
        .unwrap();
    assert_eq!(
        m.batch_header(&[], now).unwrap(),
        b"EMP_ID,\"NAME, FULL\"\n"
    );
}

#[test]
fn every_clause_both_ways() {
    let types = "layout: types.cpy\nrecord: {line_end: \"\"}\nfields: {F1: a, F2: b, C5: c, TAG: '\"T\"', HW: h, BWZ: z, THOUSANDS: k, MILLIONTHS: u, NM: nm, FLAG: '$88:FLAG-ON'}";
    let ev = r#"{"a":1,"b":-118.625,"c":-2,"h":258,"z":0,"k":123000,"u":-0.000456,"nm":"é€"}"#;
    // COMP-1/COMP-2 in IBM hex float, COMP-5, a slack byte before the SYNC halfword, BLANK
    // WHEN ZERO, P scaling both ways, a FILLER constant, national UTF-16, a level-88 value.
    both(
        types,
        ev,
        "41 10 00 00 C2 76 A0 00 00 00 00 00 FF FE 54 20 01 02 20 20 20 31 32 33 34 35 4F 45 4F 52 00 E9 20 AC 00 20 59",
    );
    // IEEE floats and COMP-5 as a compiler on x86 writes them; COMP stays big-endian.
    let ieee = types.replace(
        "{line_end: \"\"}",
        "{line_end: \"\", floats: ieee, byte_order: little}",
    );
    both(
        &ieee,
        ev,
        "00 00 80 3F 00 00 00 00 00 A8 5D C0 FE FF 54 20 01 02 20 20 20 31 32 33 34 35 4F 45 4F 52 00 E9 20 AC 00 20 59",
    );
    let with = |from: &str, to: &str| ev.replace(from, to);
    check(
        types,
        &with("123000", "123456"),
        "error: THOUSANDS: value is not a multiple of 1000",
    );
    check(types, &with("-0.000456", "0.5"), "error: less than 0.001");
    check(
        types,
        &with("-2", "32768"),
        "error: does not fit in 2 bytes of COMP-5",
    );
    check(
        types,
        &with("-118.625", "1e80"),
        "error: too large for IBM hexadecimal floating point",
    );
    check(types, &with("é€", "abcd"), "error: longer than PIC N(3)");
    check(
        "layout: types.cpy\nrecord: {line_end: \"\"}\nfields: {FLAG: '$88:NOPE'}",
        "{}",
        "compile:$88:NOPE is not a condition of FLAG: FLAG's conditions are FLAG-ON, FLAG-OFF",
    );
    check(
        "layout: types.cpy\nfields: {TAG: x}",
        "{}",
        "compile:add `record: {line_end: \"\"}`",
    );
}

const BATCH_MAP: &str = "layout: batch.cpy
record: {framing: rdw}
layout_when: {HDR-REC: IS-HDR, DTL-REC: IS-DTL, TRL-REC: {TRL-TYPE: T}}
fields:
  HDR-TYPE: 'kind | map:{header: \"$88:IS-HDR\"}'
  HDR-DATE: 'date | format:%Y%m%d'
  DTL-TYPE: 'kind | map:{detail: \"$88:IS-DTL\"}'
  DTL-ID: id
  DTL-AMT: amt
  TRL-TYPE: 'kind | map:{trailer: T}'
  TRL-COUNT: cnt
";

#[test]
fn record_types_share_one_file() {
    let hdr = "00 0D 00 00 48 32 30 32 35 30 34 31 32";
    let dtl = "00 0F 00 00 44 41 31 20 20 20 20 00 01 25 0C";
    let trl = "00 0A 00 00 54 30 30 30 30 33";
    both(BATCH_MAP, r#"{"kind":"header","date":"2025-04-12"}"#, hdr);
    both(BATCH_MAP, r#"{"kind":"detail","id":"A1","amt":12.50}"#, dtl);
    both(BATCH_MAP, r#"{"kind":"trailer","cnt":3}"#, trl);
    decode_check(
        BATCH_MAP,
        &format!("{hdr} {dtl} {dtl} {trl}"),
        &[
            r#"{"type":"RECORD","payload":{"kind":"header","date":"2025-04-12"}}"#,
            r#"{"type":"RECORD","payload":{"kind":"detail","id":"A1","amt":12.50}}"#,
            r#"{"type":"RECORD","payload":{"kind":"detail","id":"A1","amt":12.50}}"#,
            r#"{"type":"RECORD","payload":{"kind":"trailer","cnt":3}}"#,
        ]
        .join("\n"),
    );
    check(
        BATCH_MAP,
        r#"{"kind":"other"}"#,
        "error: no layout_when rule matches: the record is none of HDR-REC, DTL-REC, TRL-REC",
    );
    decode_check(
        BATCH_MAP,
        &format!("{hdr} 00 06 00 00 58 31"),
        "error:record 1, field HDR-TYPE, DTL-TYPE, TRL-TYPE, byte 0: no layout_when rule matches",
    );
    // Without a rule, fields of two record types cannot both be mapped.
    check(
        "layout: batch.cpy\nrecord: {framing: rdw}\nfields: {HDR-DATE: d, DTL-ID: id}",
        "{}",
        "compile:fields of HDR-REC and DTL-REC are mapped, and they share the same bytes (REDEFINES, line 1): add `layout_when:`",
    );
    check(
        "layout: batch.cpy\nrecord: {framing: rdw}\nlayout_when: {HDR: IS-HDR}\nfields: {HDR-DATE: d}",
        "{}",
        "compile:HDR is not a REDEFINES alternative or 01 record of the copybook; they are HDR-REC, DTL-REC, TRL-REC",
    );
    // Fixed-length framing pads the shorter record types to the longest (11 bytes).
    check(
        &BATCH_MAP.replace("framing: rdw", "framing: fixed"),
        r#"{"kind":"trailer","cnt":3}"#,
        "hex:54 30 30 30 30 33 20 20 20 20 20",
    );
    // One map chooses one layout: REDEFINES within a record.
    both(
        "layout: redefines.cpy\nfields: {B: num}",
        r#"{"num":42}"#,
        "30 30 34 32 0A",
    );
    check(
        "layout: redefines.cpy\nfields: {A: id, B: num}",
        "{}",
        "compile:fields of A and B are mapped",
    );
}

#[test]
fn variable_length_tables_both_ways() {
    let odo = "layout: odo.cpy\nrecord: {framing: rdw}\nfields: {N: 'items | count', T(1): 'items[0]', T(2): 'items[1]', T(3): 'items[2]', Z: '\"Z\"'}";
    both(odo, r#"{"items":["a","b"]}"#, "00 09 00 00 30 32 61 62 5A");
    both(
        odo,
        r#"{"items":["a","b","c"]}"#,
        "00 0A 00 00 30 33 61 62 63 5A",
    );
    check(
        odo,
        r#"{"items":[]}"#,
        "error: field N: the count of table T is outside OCCURS 1 TO 9",
    );
    check(
        odo,
        r#"{"items":"x"}"#,
        "error: payload.items is not a list",
    );
    // Fixed-length records carry the table at its maximum.
    check(
        &odo.replace("framing: rdw", "framing: fixed"),
        r#"{"items":["a"]}"#,
        "hex:30 31 61 5A 20 20 20 20 20 20 20 20",
    );
    decode_check(
        odo,
        "00 09 00 00 31 30 61 62 5A",
        "error:record 0, field N, byte 2: the count of table T is outside OCCURS 1 TO 9",
    );
    decode_check(
        odo,
        "00 08 00 00 30 32 61 62",
        "error:field Z, byte 4: the record ends after 4 bytes; Z needs bytes 5 to 5",
    );
    decode_check(
        odo,
        "00 0A 00 00 30 32 61 62 5A 5A",
        "error:the record is 6 bytes; its layout ends after 5",
    );
}

#[test]
fn decode_errors_name_record_field_and_byte() {
    let m = "layout: permit.cpy\nrecord: {line_end: \"\", encoding: ebcdic-037}\nfields: {PERMIT-ID: id, STATUS-CODE: '\"A\"', FEE: fee, UNITS: units, BALANCE: bal}";
    let good = "C2 D7 60 F8 F0 F2 40 40 40 40 C1 00 12 34 5D 01 02 40 40 F0 F0 F1 F5 C0";
    decode_check(
        m,
        good,
        r#"{"type":"RECORD","payload":{"id":"BP-802","fee":-123.45,"units":258,"bal":1.50}}"#,
    );
    let bad = good.replace("34 5D", "3A 5D");
    decode_check(
        m,
        &format!("{good} {bad}"),
        "error:record 1, field FEE, byte 13: nibble A of byte 0x3A is not a packed-decimal digit",
    );
    let bad = good.replace("F0 F0 F1 F5 C0", "F0 F0 F1 F5 40");
    decode_check(
        m,
        &bad,
        "error:field BALANCE, byte 23: byte 0x40 is not a zoned-decimal digit",
    );
    decode_check(
        m,
        &good[..good.len() - 3],
        "error:record 0 at byte 0: the last record is 23 bytes, a record is 24",
    );
    // ASCII has no character for bytes above 0x7F: an error, never a replacement.
    decode_check(
        "fields: {A: 'id | width:3'}",
        "61 E9 62 0A",
        "error:field A, byte 1: byte 0xE9 is not a character in ascii",
    );
    // The map's own inversions: `map:` backwards, dates parsed back in the timezone.
    decode_check(
        "fields: {S: 'status | map:{APPROVED: A, REJECTED: R} | width:1', D: 'updated_at | format:%Y%m%d | width:8', T: 'updated_at | format:%H%M%S | width:6'}",
        "52 32 30 32 35 30 34 31 32 31 30 30 33 30 30 0A",
        r#"{"type":"RECORD","payload":{"status":"REJECTED","updated_at":"2025-04-12T10:03:00Z"}}"#,
    );
    decode_check(
        "fields: {S: 'status | map:{APPROVED: A} | width:1'}",
        "52 0A",
        "error:field S, byte 0: the value is not one of the field's `map:` values",
    );
}

#[test]
fn a_bad_copybook_gives_its_own_errors_only() {
    let dir = tempfile::tempdir().unwrap();
    write_copybooks(dir.path());
    let e = compile_in(
        dir.path(),
        "layout: bad.cpy\nfields: {A: a, B: b, C: c, D: 'x | widht:3'}",
        "UTC",
    )
    .unwrap_err();
    let lines: Vec<&str> = e.lines().collect();
    assert_eq!(lines.len(), 2, "{e}");
    assert!(
        lines[0].contains("bad.cpy:2:") && lines[0].contains("edited picture"),
        "{e}"
    );
    assert!(lines[1].contains("unknown modifier \"widht\""), "{e}");
}

#[test]
fn framings_and_code_pages() {
    let f = "fields: {A: 'id | width:3'}";
    check(
        &format!("record: {{framing: rdw}}\n{f}"),
        r#"{"id":"ab"}"#,
        "hex:00 07 00 00 61 62 20",
    );
    check(
        &format!("record: {{framing: rdw, bdw: true}}\n{f}"),
        r#"{"id":"ab"}"#,
        "hex:00 0B 00 00 00 07 00 00 61 62 20",
    );
    check(
        &format!("record: {{framing: lines, line_end: \"\\r\\n\"}}\n{f}"),
        r#"{"id":"ab"}"#,
        "ab \r\n",
    );
    check(
        &format!("record: {{framing: lines, line_end: \"\"}}\n{f}"),
        "{}",
        "compile:`framing: lines` needs a line end",
    );
    check(
        &format!("record: {{framing: fixed, line_end: \"\\n\"}}\n{f}"),
        "{}",
        "compile:have no line end: remove `line_end`",
    );
    check(
        &format!("record: {{bdw: true}}\n{f}"),
        "{}",
        "compile:`bdw: true` (block descriptor words) goes with `framing: rdw`",
    );
    check(
        &format!("record: {{framing: vb}}\n{f}"),
        "{}",
        "compile:is not one of fixed (RECFM=F/FB), rdw",
    );
    for (page, text, hex) in [
        ("ebcdic-273", "Ä", "4A 25"),
        ("ebcdic-285", "£", "5B 25"),
        ("ebcdic-297", "à", "7C 25"),
        ("ebcdic-500", "[", "4A 25"),
        ("ebcdic-1141", "€", "9F 25"),
        ("ebcdic-1147", "€", "9F 25"),
    ] {
        check(
            &format!("record: {{encoding: {page}}}\nfields: {{A: 'id | width:1'}}"),
            &serde_json::json!({ "id": text }).to_string(),
            &format!("hex:{hex}"),
        );
        decode_check(
            &format!("record: {{encoding: {page}}}\nfields: {{A: 'id | width:1'}}"),
            hex,
            &serde_json::json!({"type": "RECORD", "payload": { "id": text }}).to_string(),
        );
    }
    check(
        "record: {encoding: ebcdic-037}\nfields: {A: 'id | width:1'}",
        r#"{"id":"€"}"#,
        "error: cannot be written in ebcdic-037",
    );
}

/// JSON bodies are UTF-8 (RFC 8259 §8.1): names like "Ñandú" or "Zoë" go upstream as they
/// are (a pickup source's PIC N owner among them), not as a dead letter for want of a byte in
/// ASCII; any other encoding for JSON is refused. UTF-8 is allowed for CSV and SOAP, never
/// for fixed-width records, whose widths count bytes.
#[test]
fn json_is_utf8_and_utf8_is_refused_for_fixed_width() {
    check(
        "format: json\nfields: {owner: owner, k: k}",
        r#"{"owner":"Ñandú 北","k":1}"#,
        "hex:7B 22 6F 77 6E 65 72 22 3A 22 C3 91 61 6E 64 C3 BA 20 E5 8C 97 22 2C 22 6B 22 3A 31 7D 0A",
    );
    check(
        "format: json\nrecord: {encoding: utf-8}\nfields: {owner: 'owner | upper'}",
        r#"{"owner":"zoë"}"#,
        "{\"owner\":\"ZOË\"}\n",
    );
    check(
        "format: json\nrecord: {encoding: latin1}\nfields: {owner: owner}",
        "{}",
        "compile:format json is always UTF-8 (RFC 8259), not latin1",
    );
    check(
        "format: json\nrecord: {encoding: ebcdic-037}\nfields: {owner: owner}",
        "{}",
        "compile:format json is always UTF-8",
    );
    check(
        "format: csv\nrecord: {encoding: utf-8}\nfields: {A: owner, B: k}",
        r#"{"owner":"Ñandú","k":2}"#,
        "Ñandú,2\n",
    );
    check(
        "format: soap\nrecord: {encoding: utf8}\nfields: {Owner: owner}",
        r#"{"owner":"Ñandú"}"#,
        "<Owner>Ñandú</Owner>",
    );
    check(
        "format: csv\nfields: {A: owner}",
        r#"{"owner":"Ñandú"}"#,
        "error: field A: a character (U+00D1)",
    );
    check(
        "record: {encoding: utf-8}\nfields: {A: 'owner | width:6'}",
        "{}",
        "compile:encoding utf-8 is not for fixed-width records",
    );
}
