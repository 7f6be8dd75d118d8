//! `ess test`: golden cases next to maps, judged by the runtime's own map code — records as
//! text or hex (EBCDIC), expected errors, filtered types, decimals kept exactly, and every
//! failure at its file:line:col with what differs.

mod support;

use std::path::Path;

use support::ess;

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

const FEES: &str = "\
target: fees
events: [FEE]
fields:
  ID : id | width:6
  AMT: amount | number:9(5)V99
deliver: {kind: file, dir: out, file: fees.txt}
";

const EBCDIC: &str = "\
target: host
record: {encoding: ebcdic-037, line_end: \"\"}
fields:
  ID: id | width:6
deliver: {kind: file, dir: out, file: host.dat}
";

fn test_dir(dir: &Path) -> (i32, String) {
    let (code, out, err) = ess(&["test", dir.to_str().unwrap()], None);
    (code, out + &err)
}

#[test]
fn golden_cases_pass_and_failures_say_where_and_what() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write(d, "fees.yml", FEES);
    write(
        d,
        "fees.test.yml",
        r#"cases:
  - name: decimals keep their digits
    event: '{"type": "FEE", "payload": {"id": "F1", "amount": 19.99}}'
    record: "F1    0001999\n"
  - name: a YAML event works too
    event: {type: FEE, payload: {id: F2, amount: 5}}
    record: "F2    0000500\n"
  - name: too wide
    event: {type: FEE, payload: {id: F1234567, amount: 1}}
    error: "field ID"
  - name: not a fee
    event: {type: OTHER, payload: {}}
    filtered: true
"#,
    );
    write(d, "host.yml", EBCDIC);
    write(
        d,
        "host.test.yml",
        "cases:\n  - name: EBCDIC bytes\n    event: {type: X, payload: {id: BP-1}}\n    record_hex: c2d760f14040\n  - name: the same as text, encoded as the map encodes\n    event: {type: X, payload: {id: BP-1}}\n    record: \"BP-1  \"\n",
    );
    let (code, out) = test_dir(d);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("6 passed, 0 failed (6 case(s) in 2 file(s))"),
        "{out}"
    );

    // Each kind of failure, at its case, with what differs.
    write(
        d,
        "fees.test.yml",
        r#"cases:
  - name: wrong amount
    event: {type: FEE, payload: {id: F1, amount: 1}}
    record: "F1    0000200\n"
  - name: expects an error that does not come
    event: {type: FEE, payload: {id: F1, amount: 1}}
    error: "too wide"
  - name: expects filtered
    event: {type: FEE, payload: {id: F1, amount: 1}}
    filtered: true
  - name: two expectations
    event: {type: FEE, payload: {id: F1, amount: 1}}
    filtered: true
    error: x
"#,
    );
    let (code, out) = test_dir(d);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("fees.test.yml:2:5: case \"wrong amount\": record differs at byte 10"),
        "{out}"
    );
    assert!(out.contains("expected \"F1    0000200\\\\n\""), "{out}");
    assert!(
        out.contains("fees.test.yml:5:5: case \"expects an error that does not come\""),
        "{out}"
    );
    assert!(
        out.contains("expected the map not to take type FEE"),
        "{out}"
    );
    assert!(out.contains("give exactly one of"), "{out}");
    assert!(out.contains("2 passed, 4 failed"), "{out}");

    // A broken file or a map that does not compile is a failure too, not a crash.
    write(d, "fees.test.yml", "cases: [unclosed\n");
    let (code, out) = test_dir(d);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("fees.test.yml:"), "{out}");
    write(d, "fees.test.yml", "map: nowhere.yml\ncases: []\n");
    let (code, out) = test_dir(d);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("fees.test.yml:1:6: cannot read map"), "{out}");
}

#[test]
fn golden_files_are_not_connectors_and_the_shipped_ones_pass() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "fees.yml", FEES);
    write(tmp.path(), "fees.test.yml", "cases: []\n");
    let files = ess::config::connector::map_files(tmp.path()).unwrap();
    assert_eq!(files, [tmp.path().join("fees.yml")]);
    let maps = Path::new(env!("CARGO_MANIFEST_DIR")).join("maps");
    let (code, out) = test_dir(&maps);
    assert_eq!(code, 0, "{out}");
    let (code, out) = test_dir(&tmp.path().join("empty"));
    assert_eq!(code, 2, "a folder without golden files is an error: {out}");
}
