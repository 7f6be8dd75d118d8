//! Issue 15, point 9 (ingest and config): the parsers that face input, driven with
//! generated and hostile input for a bounded number of cases (`PROPTEST_CASES`, default
//! 256; `cargo fuzz` needs a nightly toolchain, which this project does not use). No input
//! may panic; every refusal must be a clear error: for a body, a message (with `index`
//! and `field` pointing into the request when they are given); for `ess.yml`, a
//! `file:line:col: message` inside the file.
//!
//! The body parser (`ingest::validate::parse_body`) is driven through its public function
//! only: its inside belongs to the feed work.

use std::path::Path;

use ess::config::Config;
use ess::ingest::validate::parse_body;
use proptest::prelude::*;
use serde_json::{Value, json};

// ---- request bodies ----

/// Strings an attacker would try: control characters, line ends, NUL, non-ASCII,
/// lookalikes, long runs.
fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,24}",
        "[\\x00-\\x1f\\x7f\\u{80}-\\u{9f}]{1,8}",
        Just("X\nFAKE-1  APPROVED  20250412100300".to_string()),
        Just("\r\n\0".to_string()),
        Just("é".repeat(200)),
        Just("\u{202e}\u{feff}\u{2028}".to_string()),
        (1usize..5000).prop_map(|n| "x".repeat(n)),
    ]
}

/// Any JSON value, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        hostile_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(hostile_string(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Something shaped like an event, each field present or not, of the right type or not.
fn event_like() -> impl Strategy<Value = Value> {
    let field = |good: BoxedStrategy<Value>| {
        prop_oneof![
            3 => good.prop_map(Some),
            1 => json_value().prop_map(Some),
            1 => Just(None),
        ]
    };
    (
        field(
            prop_oneof![
                "[A-Za-z0-9_.-]{1,20}".prop_map(Value::String),
                hostile_string().prop_map(Value::String),
            ]
            .boxed(),
        ),
        field(
            prop::collection::btree_map("[a-z_]{1,8}", json_value(), 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect()))
                .boxed(),
        ),
        field(hostile_string().prop_map(Value::String).boxed()),
        field(hostile_string().prop_map(Value::String).boxed()),
        field(
            prop_oneof![
                Just(json!("2025-04-12T10:03:00Z")),
                hostile_string().prop_map(Value::String),
            ]
            .boxed(),
        ),
        prop::option::of((hostile_string(), json_value())),
    )
        .prop_map(|(ty, payload, key, trace, ts, extra)| {
            let mut o = serde_json::Map::new();
            for (name, v) in [
                ("type", ty),
                ("payload", payload),
                ("idempotency_key", key),
                ("trace_id", trace),
                ("ts", ts),
            ] {
                if let Some(v) = v {
                    o.insert(name.into(), v);
                }
            }
            if let Some((k, v)) = extra {
                o.insert(k, v);
            }
            Value::Object(o)
        })
}

/// Checks what `parse_body` said about a body holding `events` (if known).
fn check_outcome(body: &[u8], ndjson: bool, events: Option<&[Value]>) {
    let n_events = events.map(<[Value]>::len);
    match parse_body(body, ndjson, None) {
        Ok(taken) => {
            assert!(!taken.is_empty());
            if let Some(n) = n_events {
                assert_eq!(taken.len(), n);
            }
            for e in &taken.to_events().expect("an accepted batch reads back") {
                let t = &e.event_type;
                assert!(
                    !t.is_empty()
                        && t.chars().count() <= 128
                        && t.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)),
                    "accepted type {t:?}"
                );
                assert!(!e.key.is_empty() && !e.trace_id.is_empty());
            }
        }
        Err(r) => {
            assert!(!r.error.trim().is_empty(), "a refusal without a message");
            assert!(!r.error.contains("panicked"), "{}", r.error);
            if let (Some(i), Some(n)) = (r.index, n_events) {
                assert!(i < n, "index {i} of {n} events");
            }
            // The field named is one of the event's own (an unknown one is named as sent).
            if let (Some(f), Some(i), Some(events)) = (&r.field, r.index, events) {
                let known = ["type", "payload", "idempotency_key", "trace_id", "ts"];
                let own = events[i].as_object().is_some_and(|o| o.contains_key(f));
                assert!(
                    own || known.contains(&f.as_str()),
                    "field {f:?} is not in event {i}"
                );
            }
        }
    }
}

/// Cases from `PROPTEST_CASES` (default 256); a failure is printed with its minimal
/// input rather than written to a file next to the sources.
fn cases() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn any_bytes_are_answered_never_a_panic(
        body in prop::collection::vec(any::<u8>(), 0..2048),
        ndjson in any::<bool>(),
        traceparent in prop::option::of(".{0,64}"),
    ) {
        let _ = parse_body(&body, ndjson, traceparent.as_deref());
        check_outcome(&body, ndjson, None);
    }

    #[test]
    fn event_shaped_bodies_are_taken_or_refused_clearly(
        events in prop::collection::vec(event_like(), 1..6),
        form in 0..3u8,
    ) {
        let (body, ndjson) = match form {
            0 => (Value::Array(events.clone()).to_string(), false),
            1 => (
                events.iter().map(Value::to_string).collect::<Vec<_>>().join("\n"),
                true,
            ),
            _ => (events[0].to_string(), false),
        };
        let sent = if form == 2 { &events[..1] } else { &events[..] };
        check_outcome(body.as_bytes(), ndjson, Some(sent));
    }
}

#[test]
fn deep_nesting_and_huge_values_are_refused_or_taken_without_a_panic() {
    for depth in [200, 10_000, 1_000_000] {
        let deep = format!(
            r#"{{"type":"A","payload":{{"x":{}{}}}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        let r = parse_body(deep.as_bytes(), false, None);
        assert!(r.is_err(), "nesting {depth} taken");
        let nd = "[".repeat(depth);
        assert!(parse_body(nd.as_bytes(), true, None).is_err());
    }
    let huge = json!({"type": "A", "payload": {"x": "y".repeat(10 << 20)}}).to_string();
    assert!(parse_body(huge.as_bytes(), false, None).is_ok());
    let many = format!(
        "[{}]",
        vec![r#"{"type":"A","payload":{}}"#; 100_000].join(",")
    );
    assert_eq!(
        parse_body(many.as_bytes(), false, None).unwrap().len(),
        100_000
    );
    let numbers = r#"{"type":"A","payload":{"n":1e999999,"m":-0.0000000000000000000000000001,"k":123456789012345678901234567890}}"#;
    let _ = parse_body(numbers.as_bytes(), false, None);
}

// ---- ess.yml ----

const VALID: &str = "data_dir: data\nmaps_dir: maps\ntimezone: UTC\ningest:\n  listen: 127.0.0.1:8443\n  cert: tls/server.crt\n  key: tls/server.key\n  client_ca: tls/ca.crt\n  client_crl: tls/clients.crl\n  allowed_clients: [codifyhq-dev]\n  max_body: 8MiB\n  max_inflight_bytes: 32MiB\nstatus:\n  listen: 127.0.0.1:8080\nadmin:\n  socket: data/admin.sock\nretention:\n  feed: 30d\n  min_free_disk: 512MiB\nlog:\n  format: text\n";

fn config_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tls")).unwrap();
    let key = dir.path().join("tls/server.key");
    std::fs::write(&key, "k").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    dir
}

/// Parses `text` as `dir/ess.yml`; a refusal must point inside the text.
fn check_config(dir: &Path, text: &str) {
    let path = dir.join("ess.yml");
    match Config::parse(&path, text) {
        Ok(cfg) => {
            assert!(cfg.data_dir.is_absolute() && cfg.maps_dir.is_absolute());
            assert!(cfg.ingest.max_inflight_bytes >= cfg.ingest.max_body);
        }
        Err(diags) => {
            assert!(!diags.0.is_empty(), "an error without a diagnostic");
            // YAML also breaks lines at a lone CR (and 1.1 at NEL, LS, PS).
            let n_lines = 1 + text
                .replace("\r\n", "\n")
                .chars()
                .filter(|c| matches!(c, '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}'))
                .count() as u64;
            for d in &diags.0 {
                assert_eq!(d.file, path);
                assert!(d.line >= 1 && d.col >= 1, "{d}");
                assert!(
                    d.line <= n_lines + 1,
                    "{d} is past the end ({n_lines} lines)"
                );
                assert!(!d.message.trim().is_empty(), "{d}");
                assert!(!d.message.contains("panicked"), "{d}");
            }
        }
    }
}

/// A change to the valid config: a value replaced, a line removed, duplicated or inserted.
#[derive(Debug, Clone)]
enum Edit {
    Value(usize, String),
    Remove(usize),
    Duplicate(usize),
    Insert(usize, String),
}

fn edit() -> impl Strategy<Value = Edit> {
    let n = VALID.lines().count();
    let yaml_noise = prop_oneof![
        hostile_string(),
        Just("&a [*a, *a]".to_string()),
        Just("!!binary aGVsbG8=".to_string()),
        Just("{".to_string()),
        Just("- - - -".to_string()),
        Just("~".to_string()),
        Just("0x1F".to_string()),
        Just("99999999999999999999999999TiB".to_string()),
        Just("-1MiB".to_string()),
        Just("[1, 2".to_string()),
        Just("'unterminated".to_string()),
        Just("\"\\u0000\"".to_string()),
        Just("? complex\n: key".to_string()),
    ];
    prop_oneof![
        (0..n, yaml_noise.clone()).prop_map(|(i, v)| Edit::Value(i, v)),
        (0..n).prop_map(Edit::Remove),
        (0..n).prop_map(Edit::Duplicate),
        (0..=n, yaml_noise).prop_map(|(i, v)| Edit::Insert(i, v)),
    ]
}

fn apply(edits: &[Edit]) -> String {
    let mut lines: Vec<String> = VALID.lines().map(str::to_string).collect();
    for e in edits {
        let len = lines.len();
        match e.clone() {
            Edit::Value(i, v) if len > 0 => {
                let line = &mut lines[i % len];
                match line.split_once(':') {
                    Some((k, _)) => *line = format!("{k}: {v}"),
                    None => *line = v,
                }
            }
            Edit::Remove(i) if len > 0 => {
                lines.remove(i % len);
            }
            Edit::Duplicate(i) if len > 0 => {
                let l = lines[i % len].clone();
                lines.insert(i % len, l);
            }
            Edit::Insert(i, v) => lines.insert(i.min(len), v),
            _ => {}
        }
    }
    lines.join("\n") + "\n"
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn edited_configs_are_taken_or_refused_at_a_position(edits in prop::collection::vec(edit(), 1..4)) {
        let dir = config_dir();
        check_config(dir.path(), &apply(&edits));
    }

    #[test]
    fn any_text_as_a_config_is_refused_at_a_position(text in "(.|\n){0,400}") {
        let dir = config_dir();
        check_config(dir.path(), &text);
    }
}

#[test]
fn the_valid_config_is_taken_and_yaml_bombs_are_refused() {
    let dir = config_dir();
    let cfg = Config::parse(&dir.path().join("ess.yml"), VALID).unwrap();
    assert_eq!(cfg.ingest.max_inflight_bytes, 32 << 20);
    assert_eq!(
        cfg.ingest.client_crl.as_deref(),
        Some(dir.path().join("tls/clients.crl").as_path())
    );
    // A billion laughs: aliases that would expand to 10^9 nodes.
    let mut bomb = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for (i, name) in ["b", "c", "d", "e", "f", "g", "h", "i"].iter().enumerate() {
        let prev = if i == 0 {
            "a".to_string()
        } else {
            ["b", "c", "d", "e", "f", "g", "h"][i - 1].to_string()
        };
        bomb.push_str(&format!("{name}: &{name} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"));
    }
    check_config(dir.path(), &format!("{VALID}{bomb}"));
    assert!(Config::parse(&dir.path().join("ess.yml"), &format!("{VALID}{bomb}")).is_err());
    let deep = format!("{VALID}x: {}\n", "[".repeat(100_000));
    check_config(dir.path(), &deep);
    let long_value = VALID.replace("127.0.0.1:8443", &"9".repeat(1 << 20));
    check_config(dir.path(), &long_value);
    check_config(dir.path(), "\u{feff}");
    check_config(dir.path(), "\0");
}
