//! The map commands as a user meets them, through the real binary: a skeleton from
//! `ess map from-copybook` is a map `ess check` accepts (issue 12 and 13), for copybooks
//! with every clause; `ess map decode` prints a legacy file's records as events `ess send`
//! takes, and names the bad ones (exit 2).

mod support;

use std::path::{Path, PathBuf};

use ess::config::connector;
use ess::event::Event;
use ess::map::{MapContext, Mapping};
use support::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const COPYBOOKS: [&str; 3] = [
    "tests/fixtures/copybooks/PAYROLL.cpy",
    "maps/RESULTS.cpy",
    "maps/PERMIT.cpy",
];

#[test]
fn from_copybook_skeletons_pass_ess_check() {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app");
    let (code, _, err) = ess(&["init", "--dir", app.to_str().unwrap()], None);
    assert_eq!(code, 0, "{err}");
    for cpy in COPYBOOKS {
        let src = root().join(cpy);
        let name = src.file_name().unwrap().to_str().unwrap();
        std::fs::copy(&src, app.join("maps").join(name)).unwrap();
        let (code, skeleton, err) = ess(&["map", "from-copybook", src.to_str().unwrap()], None);
        assert_eq!(code, 0, "{cpy}: {err}");
        let stem = name.trim_end_matches(".cpy").to_ascii_lowercase();
        std::fs::write(app.join("maps").join(format!("{stem}.yml")), skeleton).unwrap();
    }
    let config = app.join("ess.yml");
    let (code, out, err) = ess(&["check", "--config", config.to_str().unwrap()], None);
    assert_eq!(code, 0, "ess check refused the skeletons:\n{out}{err}");
}

#[test]
fn a_bad_copybook_is_refused_with_its_own_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cpy = dir.path().join("BAD.cpy");
    std::fs::write(
        &cpy,
        "01 R.\n 05 A PIC ZZ9.\n 05 B PIC X.\n 66 C RENAMES B.\n",
    )
    .unwrap();
    let (code, out, err) = ess(&["map", "from-copybook", cpy.to_str().unwrap()], None);
    assert_eq!(code, 2, "{out}{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("BAD.cpy:")).collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].contains("BAD.cpy:2:11:") && lines[0].contains("edited picture"),
        "{err}"
    );
    assert!(
        lines[1].contains("BAD.cpy:4:2:") && lines[1].contains("RENAMES"),
        "{err}"
    );
}

/// The RESULTS skeleton next to its copybook, and a file of three records it wrote.
fn results(dir: &Path) -> (PathBuf, PathBuf) {
    std::fs::copy(root().join("maps/RESULTS.cpy"), dir.join("RESULTS.cpy")).unwrap();
    let (_, skeleton, _) = ess(
        &[
            "map",
            "from-copybook",
            root().join("maps/RESULTS.cpy").to_str().unwrap(),
        ],
        None,
    );
    let map = dir.join("results.yml");
    std::fs::write(&map, &skeleton).unwrap();
    let conn = connector::parse(&map, &skeleton).unwrap();
    let m = Mapping::compile(
        &conn,
        &MapContext {
            timezone: chrono_tz::UTC,
        },
    )
    .unwrap();
    let mut file = Vec::new();
    for (seq, p) in [
        r#"{"rh_type":"H","rh_run_date":"2025-04-12","rh_system":"ESS"}"#,
        r#"{"rd_type":"D","rd_permit_id":"BP-802","rd_status":"A","rd_fee":19.99,"rd_units":3,
            "rd_balance":-1.50,"rd_adj":0.25,"rd_credit":-7,"rd_lead_over":5,"rd_discount":0,
            "rd_area_sqft":2000,"rd_rate":0.001234,"rd_native":-40000,"rd_tag":"AB","rd_weight":12,
            "rd_score":0.5,"rd_flag":"Y","rd_ratio":-2.25,"rd_owner":"Zoë",
            "rd_insp_code":["ELE","PLU"],"rd_insp_result":[1,-1]}"#,
        r#"{"rt_type":"T","rt_count":1,"rt_fee_total":19.99}"#,
    ]
    .iter()
    .enumerate()
    {
        let ev = Event {
            seq: seq as u64 + 1,
            event_type: "RESULTS".into(),
            payload: ess::event::Payload::parse(p).unwrap(),
            key: "k".into(),
            trace_id: "t".into(),
            ts: None,
            received_at: "2025-04-12T12:00:00Z".parse().unwrap(),
        };
        file.extend(m.render(&ev).unwrap().bytes);
    }
    let data = dir.join("RESULTS.DAT");
    std::fs::write(&data, &file).unwrap();
    (map, data)
}

/// `ess map decode [--fields] --map MAP FILE`: (exit code, JSON lines, stderr).
fn decode(map: &Path, data: &Path, fields: bool) -> (i32, Vec<serde_json::Value>, String) {
    let mut args = vec!["map", "decode"];
    if fields {
        args.push("--fields");
    }
    args.extend(["--map", map.to_str().unwrap(), data.to_str().unwrap()]);
    let (code, out, err) = ess(&args, None);
    let lines = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (code, lines, err)
}

#[test]
fn map_decode_prints_each_record_as_an_event() {
    let dir = tempfile::tempdir().unwrap();
    let (map, data) = results(dir.path());
    let (code, events, err) = decode(&map, &data, false);
    assert_eq!(code, 0, "{err}");
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[0]["type"], "RESULTS");
    assert_eq!(events[0]["payload"]["rh_run_date"], "2025-04-12");
    let d = &events[1]["payload"];
    assert_eq!(d["rd_fee"].to_string(), "19.99");
    assert_eq!(d["rd_balance"].to_string(), "-1.50");
    assert_eq!(d["rd_rate"].to_string(), "0.001234");
    assert_eq!(d["rd_owner"], "Zoë");
    assert_eq!(d["rd_insp_code"], serde_json::json!(["ELE", "PLU"]));
    assert_eq!(d["rd_insp_result"].to_string(), "[1,-1]");
    assert!(
        d.get("rd_n_insp").is_none(),
        "the count is the list's length"
    );
    assert_eq!(events[2]["payload"]["rt_fee_total"].to_string(), "19.99");

    let (code, recs, err) = decode(&map, &data, true);
    assert_eq!(code, 0, "{err}");
    assert_eq!(recs[1]["record"], 1);
    assert_eq!(recs[1]["offset"], 28, "the data, after its RDW");
    assert_eq!(recs[1]["type"], "RES-DETAIL");
    assert_eq!(recs[1]["fields"]["RD-N-INSP"], 2);
    assert_eq!(recs[1]["fields"]["RD-INSP-CODE(2)"], "PLU");
}

#[test]
fn map_decode_names_bad_records_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let (map, data) = results(dir.path());
    let mut bytes = std::fs::read(&data).unwrap();
    // The detail's RD-FEE (record 1, data offset 12, after the header's 24 bytes and the
    // detail's RDW): a nibble that is no digit.
    bytes[24 + 4 + 12] = 0xFA;
    // And the file ends inside the trailer.
    bytes.truncate(bytes.len() - 3);
    std::fs::write(&data, &bytes).unwrap();
    let (code, out, err) = decode(&map, &data, false);
    assert_eq!(code, 2, "{out:?}{err}");
    assert_eq!(out.len(), 1, "the header still decodes: {out:?}");
    assert!(
        err.contains("record 1, field RD-FEE, byte 12: nibble F of byte 0xFA is not a packed-decimal digit (file offset 40)"),
        "{err}"
    );
    assert!(err.contains("record 2 at byte"), "{err}");
    assert!(
        err.contains("says 19 bytes; the file ends after 16"),
        "{err}"
    );
    assert!(err.contains("2 record(s) of"), "{err}");
}
