//! Properties of the map engine: a fixed-width record always has exactly the layout's
//! length (or the event is refused), and no input — map text, copybook, payload — makes
//! parsing or rendering panic.

use std::path::{Path, PathBuf};

use ess::config::connector;
use ess::event::Event;
use ess::map::copybook::Copybook;
use ess::map::decimal::Decimal;
use ess::map::spec::{self, FieldDef};
use ess::map::{MapContext, Mapping};
use proptest::prelude::*;
use serde_json::{Map, Value};

fn compile(dir: &Path, yaml: &str) -> Option<Mapping> {
    let conn = connector::parse(&dir.join("m.yml"), yaml).ok()?;
    Mapping::compile(
        &conn,
        &MapContext {
            timezone: chrono_tz::Europe::Berlin,
        },
    )
    .ok()
}

fn event(payload: Map<String, Value>) -> Event {
    Event {
        seq: 3,
        event_type: "T".into(),
        payload: ess::event::Payload::from_map(payload),
        key: "k".into(),
        trace_id: "t".into(),
        ts: None,
        received_at: "2025-03-30T01:30:00Z".parse().unwrap(),
    }
}

/// Strings that stress the engine: unicode, separators, quotes, digits, signs.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,24}",
        "\\PC{0,12}",
        // Control characters among others: line ends, NUL, DEL, C1 (NEL is EBCDIC's line end).
        "([ -~]|[\\x00-\\x1f\\x7f]|[\\u{80}-\\u{9f}]|é){0,16}",
        "-?[0-9]{0,12}(\\.[0-9]{0,6})?",
        Just("2025-04-12T10:03:00Z".to_string()),
        Just("2025-03-30".to_string()),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        text().prop_map(Value::String),
        "-?[0-9]{1,20}(\\.[0-9]{1,8})?"
            .prop_map(|n| serde_json::from_str(&n).unwrap_or(Value::Null)),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map("[a-c]", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn payload() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map("[a-e]", json_value(), 0..6).prop_map(|m| m.into_iter().collect())
}

/// Every key `a`..`e` a string, most of them holding control characters.
fn hostile_payload() -> impl Strategy<Value = Map<String, Value>> {
    let hostile = prop_oneof![
        3 => "([ -~]|[\\x00-\\x1f\\x7f]|[\\u{80}-\\u{9f}]|é){0,12}",
        // Only the control characters XML can carry escaped: line ends, tab, NEL.
        2 => "([a-z]|\\n|\\r|\\t|\\u{85}){0,8}",
        1 => text(),
    ];
    prop::collection::vec(hostile, 5).prop_map(|v| {
        ["a", "b", "c", "d", "e"]
            .into_iter()
            .zip(v)
            .map(|(k, s)| (k.to_string(), Value::String(s)))
            .collect()
    })
}

/// One random short-form field definition over payload keys `a`..`e`.
fn field_spec() -> impl Strategy<Value = String> {
    let src = prop_oneof![
        "[a-e]".prop_map(|s| s.to_string()),
        "[a-c]\\.[a-c]".prop_map(|s| s.to_string()),
        "[a-c]\\[[0-2]\\]".prop_map(|s| s.to_string()),
        Just("$seq".to_string()),
        Just("$received_at".to_string()),
        Just("updated_at".to_string()),
        Just("\"K\"".to_string()),
    ];
    let text_mods = (
        1usize..20,
        prop::option::of(prop_oneof![Just("align:right"), Just("align:left")]),
        prop::option::of(prop_oneof![Just("pad:0"), Just("pad:*")]),
        prop::option::of(prop_oneof![
            Just("upper"),
            Just("lower"),
            Just("trim"),
            Just("format:%Y%m%d")
        ]),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(w, a, p, m, trunc, dflt, replace)| {
            let mut s = format!(" | width:{w}");
            for x in [a, p, m].into_iter().flatten() {
                s.push_str(" | ");
                s.push_str(x);
            }
            if trunc {
                s.push_str(" | overflow:truncate");
            }
            if dflt {
                s.push_str(" | default:D");
            }
            if replace {
                s.push_str(" | control:replace:\" \"");
            }
            s
        });
    let num_mods = (
        "S?9\\([1-9]\\)(V9\\([1-4]\\))?",
        prop::option::of(Just(" leading separate")),
        any::<bool>(),
    )
        .prop_map(|(pic, sep, trunc)| {
            let sep = if pic.starts_with('S') {
                sep.unwrap_or("")
            } else {
                ""
            };
            format!(
                " | number:{pic}{sep}{}",
                if trunc { " | overflow:truncate" } else { "" }
            )
        });
    (src, prop_oneof![text_mods, num_mods]).prop_map(|(s, m)| format!("{s}{m}"))
}

fn fixed_map() -> impl Strategy<Value = (String, &'static str)> {
    (
        prop::collection::vec(field_spec(), 1..6),
        prop_oneof![
            Just("ascii"),
            Just("latin1"),
            Just("ebcdic-037"),
            Just("ebcdic-1047")
        ],
        prop_oneof![Just("\"\\n\""), Just("\"\\r\\n\""), Just("\"\"")],
    )
        .prop_map(|(fields, enc, le)| {
            let mut y = format!(
                "target: p\nformat: fixed\nrecord: {{encoding: {enc}, line_end: {le}}}\nfields:\n"
            );
            for (i, f) in fields.iter().enumerate() {
                y.push_str(&format!("  F{i}: '{}'\n", f.replace('\'', "''")));
            }
            y.push_str("deliver: {kind: file, dir: o, file: f}\n");
            (y, enc)
        })
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn fixed_records_always_have_the_layout_length((yaml, _enc) in fixed_map(), p in payload()) {
        let dir = tempfile::tempdir().unwrap();
        let m = compile(dir.path(), &yaml).unwrap_or_else(|| panic!("generated map must compile:\n{yaml}"));
        let len = m.record_len().unwrap() + m.line_end().len();
        if let Ok(r) = m.render(&event(p)) {
            prop_assert_eq!(r.bytes.len(), len);
        }
    }

    /// Issue 11: the common record is made from the payload's text, values borrowed; any
    /// other from its tree. Both ways give the same record, or the same refusal, whatever
    /// the text's spelling: whitespace, escapes, exponents, duplicate keys. (A transform that
    /// touches nothing sends the same map down the tree's way.)
    #[test]
    fn the_record_from_the_payload_text_is_the_record_from_its_tree(
        (yaml, _enc) in fixed_map(),
        p in payload(),
        pretty in any::<bool>(),
        escape in any::<bool>(),
        exp in prop::option::of("-?[1-9][0-9]{0,3}(\\.[0-9]{1,3})?[eE][+-]?[0-9]{1,2}"),
        dup in prop::option::of(("[a-e]", "[a-z]{0,4}")),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let by_text = compile(dir.path(), &yaml).unwrap();
        let tree_yaml = yaml.replace("deliver:", "transform: {drop_fields: [zz]}\ndeliver:");
        let by_tree = compile(dir.path(), &tree_yaml).unwrap();
        let mut text = if pretty {
            serde_json::to_string_pretty(&p).unwrap()
        } else {
            serde_json::to_string(&p).unwrap()
        };
        if escape {
            text = text.replace('é', "\\u00e9").replace('/', "\\/");
        }
        // An exponent (read as sent) spelled before the others, and a key given twice (the
        // later one counts, both ways).
        let body = text.trim()[1..text.trim().len() - 1].trim().to_string();
        let mut members: Vec<String> = exp.iter().map(|e| format!("\"e\": {e}")).collect();
        members.extend((!body.is_empty()).then_some(body));
        members.extend(dup.iter().map(|(k, v)| format!("\"{k}\": \"{v}\"")));
        let text = format!("{{{}}}", members.join(", "));
        let payload = ess::event::Payload::parse(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        let ev = Event { payload, ..event(Map::new()) };
        prop_assert_eq!(
            format!("{:?}", by_text.render(&ev)),
            format!("{:?}", by_tree.render(&ev)),
            "payload {}", text
        );
    }

    /// Issue 15, point 1: whatever the payload holds, a fixed-width record is the layout's
    /// length, holds no control character (in the record's encoding) and has its line end
    /// only at its end: no value can split a record or forge another.
    #[test]
    fn no_payload_splits_or_forges_a_fixed_width_record((yaml, enc) in fixed_map(), p in hostile_payload()) {
        let dir = tempfile::tempdir().unwrap();
        let m = compile(dir.path(), &yaml).unwrap_or_else(|| panic!("generated map must compile:\n{yaml}"));
        let data_len = m.record_len().unwrap();
        if let Ok(r) = m.render(&event(p)) {
            prop_assert_eq!(r.bytes.len(), data_len + m.line_end().len());
            let mut end = Vec::new();
            m.encoding().encode_into(m.line_end(), &mut end).unwrap();
            prop_assert!(r.bytes.ends_with(&end));
            let mut text = String::new();
            m.encoding().decode_into(&r.bytes[..data_len], &mut text).unwrap();
            prop_assert!(!text.chars().any(char::is_control), "{enc}: {text:?}");
        }
    }

    /// Issue 15, point 1, for bodies: JSON and SOAP escape control characters, never raw
    /// (a SOAP field refuses the C0 characters XML cannot carry).
    #[test]
    fn json_and_soap_bodies_hold_no_raw_control_character(soap in any::<bool>(), replace in any::<bool>(), p in hostile_payload()) {
        let dir = tempfile::tempdir().unwrap();
        let ctl = if replace { " | control:replace:\"_\"" } else { "" };
        let yaml = format!(
            "target: p\nformat: {}\nrecord: {{line_end: \"\\n\"}}\nfields:\n  A: 'a{ctl}'\n  B: 'b | upper{ctl}'\n  C: c\ndeliver: {{kind: file, dir: o, file: f}}\n",
            if soap { "soap" } else { "json" }
        );
        let m = compile(dir.path(), &yaml).unwrap_or_else(|| panic!("map must compile:\n{yaml}"));
        if let Ok(r) = m.render(&event(p)) {
            let body = std::str::from_utf8(&r.bytes).unwrap();
            let body = body.strip_suffix('\n').unwrap();
            prop_assert!(!body.chars().any(char::is_control), "{body:?}");
            if !soap {
                prop_assert!(serde_json::from_str::<Value>(body).is_ok(), "{body:?}");
            }
        }
    }

    #[test]
    fn copybook_records_always_have_the_copybook_length(p in payload()) {
        let m = compile_shipped("maps/permit_status_ebcdic.yml");
        let mut p = p;
        // Give the mapped sources random values of every type.
        for (k, v) in [("id", "a"), ("status", "b"), ("fee", "c"), ("reviewer", "d")] {
            if let Some(x) = p.get(v).cloned() { p.insert(k.into(), x); }
        }
        if let Ok(r) = m.render(&event(p)) {
            prop_assert_eq!(r.bytes.len(), 80);
        }
    }

    #[test]
    fn any_copybook_lays_out_to_its_declared_length(items in prop::collection::vec((0u8..5, 1u32..9, 0u32..4, 1usize..4), 1..8), p in payload()) {
        // Build a copybook and compute its length independently of the parser.
        let mut cpy = String::from("       01  GEN-REC.\n");
        let mut fields = String::new();
        let mut expected = 0usize;
        for (i, (kind, n, m, occurs)) in items.iter().enumerate() {
            let (pic, width) = match kind {
                0 => (format!("X({n})"), *n as usize),
                1 => (format!("9({n})"), *n as usize),
                2 => (format!("S9({n})V9({})", m + 1), (n + m + 1) as usize),
                3 => (format!("S9({n})V9({}) COMP-3", m + 1), (n + m + 1) as usize / 2 + 1),
                _ => (format!("9({n}) COMP"), if *n <= 4 { 2 } else { 4 }),
            };
            let occ = if *occurs > 1 { format!(" OCCURS {occurs} TIMES") } else { String::new() };
            cpy.push_str(&format!("           05  F{i} PIC {pic}{occ}.\n"));
            expected += width * occurs;
            let src = ["a", "b", "c", "d", "e"][i % 5];
            for k in 1..=*occurs {
                let name = if *occurs > 1 { format!("\"F{i}({k})\"") } else { format!("F{i}") };
                fields.push_str(&format!("  {name}: '{src} | default:\"0\"'\n"));
            }
        }
        let cb = Copybook::parse(&cpy).unwrap_or_else(|e| panic!("{e:?}\n{cpy}"));
        prop_assert_eq!(cb.len, expected);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("gen.cpy"), &cpy).unwrap();
        let yaml = format!("target: g\nlayout: gen.cpy\nrecord: {{line_end: \"\", encoding: ebcdic-1047}}\nfields:\n{fields}deliver: {{kind: file, dir: o, file: f}}\n");
        let m = compile(dir.path(), &yaml).unwrap_or_else(|| panic!("generated map must compile:\n{yaml}"));
        prop_assert_eq!(m.record_len(), Some(expected));
        if let Ok(r) = m.render(&event(p)) {
            prop_assert_eq!(r.bytes.len(), expected);
        }
    }

    #[test]
    fn map_errors_never_quote_payload_values(v in "[ -~é€]{0,20}", n in "-?7[0-9]{5,39}(\\.[0-9]{1,9})?") {
        // Numbers carry a mark of their own (a 7 and five more digits, which no fixed part
        // of a message, such as its example date, holds).
        // Dead letters and logs carry the error text; payload values must not leak into it.
        let marked = format!("Zq9{v}");
        let payload: Map<String, Value> = serde_json::from_value(serde_json::json!({
            "id": marked, "status": marked, "updated_at": marked, "parcel": marked,
            "fee": {"amount": marked, "paid": serde_json::from_str::<Value>(&n).unwrap_or(Value::Null)},
            "inspections": serde_json::from_str::<Value>(&format!("{n}9")).unwrap_or(Value::Null),
            "employee": {"id": marked, "name": marked, "dept": marked}, "action": marked,
            "effective_date": marked, "amount": marked,
        })).unwrap();
        for f in ["maps/permit_map.yml", "maps/payroll_batch.yml", "maps/permit_status_ebcdic.yml"] {
            if let Err(e) = compile_shipped(f).render(&event(payload.clone())) {
                prop_assert!(!e.to_string().contains("Zq9"), "{f}: {e}");
                prop_assert!(!e.to_string().contains(n.trim_start_matches('-')), "{f}: {e}");
            }
        }
    }

    #[test]
    fn rendering_any_payload_never_panics(p in payload()) {
        for f in ["maps/permit_map.yml", "maps/payroll_batch.yml", "maps/permit_status_ebcdic.yml"] {
            let _ = compile_shipped(f).render(&event(p.clone()));
        }
    }

    #[test]
    fn parsing_any_field_text_never_panics(s in "\\PC{0,40}", t in "[a-z$\"'|:{}, 0-9()SV.\\[\\]%-]{0,40}") {
        let _ = FieldDef::parse_short(&s);
        let _ = FieldDef::parse_short(&t);
        let _ = spec::parse_pic(&t);
        let _ = Decimal::parse(&t);
    }

    #[test]
    fn compiling_any_map_text_never_panics(body in "[a-z_:{}\\[\\]|'\" \\n0-9%$.-]{0,120}") {
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!("target: t\ndeliver: {{kind: file, dir: o, file: f}}\n{body}");
        let _ = compile(dir.path(), &yaml);
    }

    #[test]
    fn parsing_any_copybook_never_panics(lines in prop::collection::vec("[0-9 ]{0,8}[A-Z0-9() .*'\"-]{0,40}", 0..12)) {
        let _ = Copybook::parse(&lines.join("\n"));
    }

    #[test]
    fn decimals_survive_any_picture(m in -999_999_999i64..999_999_999, scale in 0u32..5, int in 1u32..12, frac in 0u32..6) {
        let d = Decimal { mantissa: i128::from(m), scale };
        let parsed = Decimal::parse(&d.to_string()).unwrap();
        prop_assert_eq!(parsed.checked_add(Decimal::ZERO), d.checked_add(Decimal::ZERO));
        if let Ok(stored) = d.to_stored(int + frac, frac as i32, false) {
            prop_assert!(stored < 10u128.pow(int + frac));
            // Reading the stored integer back with the picture's scale gives the same value.
            let back = Decimal::from_stored(m < 0, stored, frac as i32).unwrap();
            prop_assert_eq!(back.checked_add(Decimal { mantissa: -d.mantissa, scale: d.scale }).map(|z| z.mantissa), Some(0));
        }
    }
}

fn compile_shipped(rel: &str) -> Mapping {
    let path = root().join(rel);
    let text = std::fs::read_to_string(&path).unwrap();
    let conn = connector::parse(&path, &text).unwrap();
    Mapping::compile(
        &conn,
        &MapContext {
            timezone: chrono_tz::UTC,
        },
    )
    .unwrap()
}
