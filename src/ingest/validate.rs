//! Request bodies -> validated events encoded for the feed ([`Batch`]), all or nothing
//! (SPEC §5).
//!
//! A body is one JSON object, a JSON array of them, or NDJSON. The first invalid event
//! rejects the whole request with its `index` and `field`; nothing of it is committed.
//!
//! Validation is a borrowed parse: each event's fields are spans of the body
//! ([`RawValue`]), the payload is walked once to prove it is JSON the feed's readers accept
//! (the same parser, the same limits) without building a tree, and its bytes go into the
//! feed exactly as they were sent. Only an event without an idempotency key builds its
//! payload as a tree, for the canonical JSON of its content key.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::event::MAX_KEY_LEN;
use crate::feed::Batch;

/// Why a request was refused, as sent back in the 400 body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    pub error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

fn reject(index: Option<usize>, field: Option<&str>, error: impl Into<String>) -> Rejection {
    Rejection {
        error: error.into(),
        index,
        field: field.map(str::to_string),
    }
}

/// Longest `trace_id` accepted, in characters.
const MAX_TRACE_LEN: usize = 256;

/// Parses and validates a body. `ndjson`: one event per non-empty line. `trace_from_header`
/// is the trace id of the request's `traceparent`, used for events without one.
pub fn parse_body(
    body: &[u8],
    ndjson: bool,
    trace_from_header: Option<&str>,
) -> Result<Batch, Rejection> {
    let text = std::str::from_utf8(body).map_err(|e| {
        reject(
            None,
            None,
            format!("body is not JSON: it is not UTF-8 ({e})"),
        )
    })?;
    let items: Vec<&RawValue> = if ndjson {
        let mut out = Vec::new();
        for (i, line) in text
            .split('\n')
            .filter(|l| !l.bytes().all(|b| b.is_ascii_whitespace()))
            .enumerate()
        {
            out.push(
                serde_json::from_str::<&RawValue>(line)
                    .map_err(|e| reject(Some(i), None, format!("line is not JSON: {e}")))?,
            );
        }
        out
    } else {
        let not_json = |e: serde_json::Error| reject(None, None, format!("body is not JSON: {e}"));
        // An array is split into its items in one pass (whitespace before it is JSON's).
        match text
            .trim_start_matches([' ', '\t', '\n', '\r'])
            .as_bytes()
            .first()
        {
            Some(b'[') => serde_json::from_str(text).map_err(not_json)?,
            Some(b'{') => vec![serde_json::from_str::<&RawValue>(text).map_err(not_json)?],
            _ => {
                // Not JSON at all says so; JSON of another kind is told what is expected.
                serde_json::from_str::<&RawValue>(text).map_err(not_json)?;
                return Err(reject(
                    None,
                    None,
                    "body must be an event object, an array of them, or NDJSON",
                ));
            }
        }
    };
    if items.is_empty() {
        return Err(reject(None, None, "no events in body"));
    }
    let mut batch = Batch::with_capacity(items.len(), body.len() + items.len() * 32);
    for (i, raw) in items.into_iter().enumerate() {
        validate_event(i, raw, trace_from_header, &mut batch)?;
    }
    Ok(batch)
}

/// A string from the body, borrowed unless it holds escapes.
struct Text<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// The fields of one event object, as spans of the body.
#[derive(Default)]
struct Fields<'a> {
    event_type: Option<&'a RawValue>,
    payload: Option<&'a RawValue>,
    idempotency_key: Option<&'a RawValue>,
    trace_id: Option<&'a RawValue>,
    ts: Option<&'a RawValue>,
    unknown: Option<Cow<'a, str>>,
}

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an event object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
                let mut f = Fields::default();
                // A repeated field: the last one counts, as in any JSON object reader.
                while let Some(Text(k)) = map.next_key::<Text<'de>>()? {
                    let slot = match k.as_ref() {
                        "type" => &mut f.event_type,
                        "payload" => &mut f.payload,
                        "idempotency_key" => &mut f.idempotency_key,
                        "trace_id" => &mut f.trace_id,
                        "ts" => &mut f.ts,
                        _ => {
                            f.unknown.get_or_insert(k);
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    *slot = Some(map.next_value()?);
                }
                Ok(f)
            }
        }
        d.deserialize_map(V)
    }
}

/// Whether JSON that serde_json already spanned as a [`RawValue`] (which proves its syntax:
/// strings, the form of escapes and numbers, brackets) is sure to pass [`Checked`] too, so
/// the second walk can be skipped. What a span does not check and `Checked` does: `\u`
/// escapes that are lone surrogates (no backslash here: no escapes at all), numbers out of
/// `f64`'s range (only with an exponent — a digit followed by `e`/`E` — or 300 digits in a
/// row; neither here), and nesting beyond the reader's limit of 128 (fewer than 64 `{`/`[`
/// bytes here, counted even inside strings). Anything else takes the full check.
fn reads_back_as_spanned(json: &[u8]) -> bool {
    const LONGEST_RUN: usize = 300;
    if json.contains(&b'\\')
        || json.iter().filter(|&&b| b == b'{' || b == b'[').count() >= 64
        || json
            .windows(2)
            .any(|w| w[0].is_ascii_digit() && (w[1] == b'e' || w[1] == b'E'))
    {
        return false;
    }
    json.len() < LONGEST_RUN
        || json
            .split(|b| !b.is_ascii_digit())
            .all(|run| run.len() < LONGEST_RUN)
}

/// Proves a value is JSON the feed's readers parse (escapes, surrogates, nesting limit),
/// building nothing.
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Checked;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_unit<E>(self) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_none<E>(self) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Checked, D::Error> {
                Checked::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
                while seq.next_element::<Checked>()?.is_some() {}
                Ok(Checked)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
                while map.next_key::<Checked>()?.is_some() {
                    map.next_value::<Checked>()?;
                }
                Ok(Checked)
            }
        }
        d.deserialize_any(V)
    }
}

fn validate_event<'a>(
    index: usize,
    raw: &'a RawValue,
    trace_from_header: Option<&str>,
    batch: &mut Batch,
) -> Result<(), Rejection> {
    let err = |field: &str, msg: String| reject(Some(index), Some(field), msg);
    if !raw.get().starts_with('{') {
        return Err(reject(Some(index), None, "event must be a JSON object"));
    }
    let fields: Fields<'a> = serde_json::from_str(raw.get())
        .map_err(|e| reject(Some(index), None, format!("event is not valid JSON: {e}")))?;
    if let Some(unknown) = &fields.unknown {
        return Err(err(
            unknown,
            format!(
                "unknown field {unknown:?} (known: type, payload, idempotency_key, trace_id, ts)"
            ),
        ));
    }
    let event_type = match fields.event_type {
        None => return Err(err("type", "type is required".into())),
        Some(t) => {
            serde_json::from_str::<Text<'_>>(t.get())
                .map_err(|_| err("type", "type must be a string".into()))?
                .0
        }
    };
    if event_type.is_empty()
        || event_type.len() > 128
        || !event_type
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    {
        return Err(err(
            "type",
            "type must be 1-128 characters of A-Z a-z 0-9 _ . -".into(),
        ));
    }
    let payload = match fields.payload {
        None => return Err(err("payload", "payload is required".into())),
        Some(p) if !p.get().starts_with('{') => {
            return Err(err("payload", "payload must be a JSON object".into()));
        }
        Some(p) => p,
    };
    if !reads_back_as_spanned(payload.get().as_bytes()) {
        serde_json::from_str::<Checked>(payload.get())
            .map_err(|e| err("payload", format!("payload is not valid JSON: {e}")))?;
    }
    let opt_string =
        |raw: Option<&'a RawValue>, field: &str| -> Result<Option<Cow<'a, str>>, Rejection> {
            match raw {
                None => Ok(None),
                Some(r) if r.get() == "null" => Ok(None),
                Some(r) => serde_json::from_str::<Text<'a>>(r.get())
                    .map(|t| Some(t.0))
                    .map_err(|_| err(field, format!("{field} must be a string"))),
            }
        };
    let ts_text = opt_string(fields.ts, "ts")?;
    let ts = match &ts_text {
        None => None,
        Some(t) => Some(
            DateTime::parse_from_rfc3339(t)
                .map_err(|e| {
                    err(
                        "ts",
                        format!("ts must be an RFC 3339 time such as 2025-04-12T10:03:00Z: {e}"),
                    )
                })?
                .with_timezone(&Utc),
        ),
    };
    let key = match opt_string(fields.idempotency_key, "idempotency_key")? {
        Some(k) if k.is_empty() || k.chars().count() > MAX_KEY_LEN => {
            return Err(err(
                "idempotency_key",
                format!("idempotency_key must be 1-{MAX_KEY_LEN} characters"),
            ));
        }
        Some(k) => k,
        None => {
            let tree: Map<String, Value> = serde_json::from_str(payload.get())
                .map_err(|e| err("payload", format!("payload is not valid JSON: {e}")))?;
            Cow::Owned(content_key(&event_type, &tree, ts_text.as_deref()))
        }
    };
    let payload = payload.get().as_bytes();
    match opt_string(fields.trace_id, "trace_id")? {
        Some(t) if t.is_empty() || t.chars().count() > MAX_TRACE_LEN => {
            return Err(err(
                "trace_id",
                format!("trace_id must be 1-{MAX_TRACE_LEN} characters"),
            ));
        }
        Some(t) => batch.push(&event_type, &key, &t, ts, payload),
        None => match trace_from_header {
            Some(t) => batch.push(&event_type, &key, t, ts, payload),
            // A fresh random W3C-style id, made in its stored form (16 bytes).
            None => batch.push_new_trace(&event_type, &key, ts, payload),
        },
    }
    Ok(())
}

/// The idempotency key of an event without one: SHA-256 (hex) of the canonical JSON of
/// `{"payload": …, "ts": …, "type": …}` — keys sorted at every level, no whitespace,
/// numbers as sent.
pub fn content_key(event_type: &str, payload: &Map<String, Value>, ts: Option<&str>) -> String {
    let mut canon = String::new();
    canon.push_str("{\"payload\":");
    write_canonical(&mut canon, &Value::Object(payload.clone()));
    canon.push_str(",\"ts\":");
    write_canonical(
        &mut canon,
        &ts.map_or(Value::Null, |t| Value::String(t.into())),
    );
    canon.push_str(",\"type\":");
    write_canonical(&mut canon, &Value::String(event_type.into()));
    canon.push('}');
    let digest = Sha256::digest(canon.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn write_canonical(out: &mut String, v: &Value) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(out, &m[k]);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(out, x);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The trace id of a W3C `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`), if valid.
pub fn trace_id_from_traceparent(header: &str) -> Option<String> {
    let mut parts = header.trim().split('-');
    let (_version, trace, _parent, _flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let valid = trace.len() == 32
        && trace.chars().all(|c| c.is_ascii_hexdigit())
        && trace.chars().any(|c| c != '0');
    valid.then(|| trace.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(body: &str) -> Result<Vec<crate::event::Event>, Rejection> {
        parse_body(body.as_bytes(), false, None).map(|b| b.to_events().unwrap())
    }

    #[test]
    fn object_array_and_ndjson_bodies() {
        let ev = r#"{"type":"PERMIT_STATUS","payload":{"id":"BP-802"}}"#;
        assert_eq!(one(ev).unwrap().len(), 1);
        assert_eq!(one(&format!("[{ev},{ev}]")).unwrap().len(), 2);
        let nd = format!("{ev}\n\n{ev}\n");
        assert_eq!(parse_body(nd.as_bytes(), true, None).unwrap().len(), 2);
    }

    #[test]
    fn a_body_is_split_in_one_pass_and_what_is_not_an_event_list_says_why() {
        let ev = r#"{"type":"PERMIT_STATUS","payload":{"id":"BP-802"}}"#;
        // JSON whitespace before and after the array or object.
        assert_eq!(one(&format!(" \r\n\t[ {ev} , {ev} ]\n")).unwrap().len(), 2);
        assert_eq!(one(&format!("\n {ev} \n")).unwrap().len(), 1);
        let error = |body: &str| one(body).unwrap_err().error;
        for not_json in ["", "  \n", "[", "[{}", "nope", "[] x", "{} {}", "\u{a0}[]"] {
            assert!(
                error(not_json).starts_with("body is not JSON"),
                "{not_json:?}: {}",
                error(not_json)
            );
        }
        for other in ["1", "\"text\"", "null", " true "] {
            assert_eq!(
                error(other),
                "body must be an event object, an array of them, or NDJSON",
                "{other:?}"
            );
        }
    }

    #[test]
    fn each_bad_input_names_index_and_field() {
        let cases = [
            (
                r#"[{"type":"A","payload":{}},{"type":"bad type!","payload":{}}]"#,
                Some(1),
                Some("type"),
            ),
            (r#"[{"type":"A","payload":[]}]"#, Some(0), Some("payload")),
            (r#"{"payload":{}}"#, Some(0), Some("type")),
            (r#"{"type":"A"}"#, Some(0), Some("payload")),
            (
                r#"{"type":"A","payload":{},"ts":"yesterday"}"#,
                Some(0),
                Some("ts"),
            ),
            (
                r#"{"type":"A","payload":{},"idempotency_key":""}"#,
                Some(0),
                Some("idempotency_key"),
            ),
            (
                r#"{"type":"A","payload":{},"colour":1}"#,
                Some(0),
                Some("colour"),
            ),
            (r#"[1]"#, Some(0), None),
            (r#"[]"#, None, None),
            (r#"{"type":"#, None, None),
            (r#""text""#, None, None),
        ];
        for (body, index, field) in cases {
            let r = one(body).unwrap_err();
            assert_eq!(
                (r.index, r.field.as_deref()),
                (index, field),
                "{body}: {r:?}"
            );
        }
        let long_key = format!(
            r#"{{"type":"A","payload":{{}},"idempotency_key":"{}"}}"#,
            "k".repeat(257)
        );
        assert_eq!(
            one(&long_key).unwrap_err().field.as_deref(),
            Some("idempotency_key")
        );
    }

    #[test]
    fn content_key_ignores_key_order_and_whitespace_but_not_values() {
        let a = one(r#"{"type":"A","payload":{"x":1,"y":{"b":2,"a":19.99}}}"#).unwrap();
        let b = one(r#"{ "payload" : { "y":{"a":19.99, "b":2}, "x":1 }, "type":"A" }"#).unwrap();
        let c = one(r#"{"type":"A","payload":{"x":1,"y":{"b":2,"a":19.990}}}"#).unwrap();
        assert_eq!(a[0].key, b[0].key);
        assert_ne!(a[0].key, c[0].key, "numbers are kept as sent");
        assert_eq!(a[0].key.len(), 64);
    }

    #[test]
    fn trace_id_from_event_then_header_then_generated() {
        let tp =
            trace_id_from_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_eq!(tp.as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(trace_id_from_traceparent("garbage"), None);
        let evs = parse_body(
            br#"[{"type":"A","payload":{},"trace_id":"mine"},{"type":"A","payload":{}}]"#,
            false,
            tp.as_deref(),
        )
        .unwrap()
        .to_events()
        .unwrap();
        assert_eq!(evs[0].trace_id, "mine");
        assert_eq!(evs[1].trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        let generated = one(r#"[{"type":"A","payload":{}},{"type":"A","payload":{}}]"#).unwrap();
        for ev in &generated {
            assert_eq!(ev.trace_id.len(), 32, "{}", ev.trace_id);
            assert!(
                ev.trace_id
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{}",
                ev.trace_id
            );
        }
        assert_ne!(generated[0].trace_id, generated[1].trace_id);
    }

    #[test]
    fn idempotency_key_limit_counts_characters_not_bytes() {
        let key = |k: &str| format!(r#"{{"type":"A","payload":{{}},"idempotency_key":"{k}"}}"#);
        let accented = "é".repeat(256);
        assert_eq!(one(&key(&accented)).unwrap()[0].key, accented);
        let err = one(&key(&"é".repeat(257))).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("idempotency_key"));
        let trace = format!(
            r#"{{"type":"A","payload":{{}},"trace_id":"{}"}}"#,
            "ü".repeat(256)
        );
        assert_eq!(one(&trace).unwrap()[0].trace_id, "ü".repeat(256));
    }

    #[test]
    fn the_payload_is_stored_as_sent_and_validated_as_strictly_as_it_is_read() {
        let body = r#"{"type":"A","idempotency_key":"k","payload": {"fee" : 1E2, "amt": 19.990, "n":"a\u00e9b"}}"#;
        let batch = parse_body(body.as_bytes(), false, None).unwrap();
        let ev = &batch.to_events().unwrap()[0];
        assert_eq!(ev.payload.tree().unwrap()["amt"].to_string(), "19.990");
        assert_eq!(ev.payload.tree().unwrap()["n"], "aéb");
        assert_eq!(
            batch.payload_bytes(0),
            br#"{"fee" : 1E2, "amt": 19.990, "n":"a\u00e9b"}"#
        );
        // A lone surrogate passes a span-only parse but not a reader: refused up front, or
        // the event would be stored and then never read back.
        let r = one(r#"{"type":"A","payload":{"x":"\ud800"}}"#).unwrap_err();
        assert_eq!(
            (r.index, r.field.as_deref()),
            (Some(0), Some("payload")),
            "{r:?}"
        );
        for bad in [
            r#"{"type":"A","payload":{"x":[1,}}"#,
            r#"{"type":"A","payload":{"x":"\q"}}"#,
        ] {
            assert!(one(bad).is_err(), "{bad}");
        }
        let deep = format!(
            r#"{{"type":"A","payload":{}1{}}}"#,
            r#"{"a":"#.repeat(200),
            "}".repeat(200)
        );
        assert!(
            one(&deep).is_err(),
            "nesting beyond the reader's limit is refused"
        );
    }

    #[test]
    fn what_skips_the_second_walk_always_passes_it() {
        // Pieces of payloads, many of them at the edges of what a span proves; every
        // combination that parses as a span and is let through without the full check
        // must pass the full check.
        let pieces = [
            r#""s""#,
            "1",
            "-0.5",
            "1e5",
            "1E400",
            "2.5e-3",
            r#""\ud800""#,
            r#""\u00e9""#,
            r#""a\"b""#,
            r#""e1""#,
            "true",
            "null",
            "[]",
            "{}",
            r#"{"k":[1,2]}"#,
            r#""2025-04-12T10:03:00Z""#,
            "12345678901234567890123",
            r#""x{[""#,
        ];
        let mut fast = 0;
        for a in pieces {
            for b in pieces {
                for body in [
                    format!(r#"{{"a":{a},"b":{b}}}"#),
                    format!(r#"{{"a":[{a},{b}]}}"#),
                ] {
                    if serde_json::from_str::<&RawValue>(&body).is_err() {
                        continue;
                    }
                    if reads_back_as_spanned(body.as_bytes()) {
                        fast += 1;
                        assert!(serde_json::from_str::<Checked>(&body).is_ok(), "{body}");
                    }
                }
            }
        }
        assert!(
            fast > 100,
            "the common payloads take the short way ({fast})"
        );
        let long_number = format!(r#"{{"n":{}}}"#, "9".repeat(400));
        let deep = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        for slow in [
            long_number.as_str(),
            deep.as_str(),
            r#"{"n":1e999}"#,
            r#"{"s":"\ud800"}"#,
            // The shrunk case of the property below when the check was broken on purpose:
            // a lone surrogate inside nesting.
            r#"{"v":[{"a":["\ud800"]}]}"#,
        ] {
            assert!(!reads_back_as_spanned(slow.as_bytes()), "{slow}");
        }
        let permit =
            r#"{"id":"BP-1","status":"APPROVED","updated_at":"2025-04-12T10:03:00Z","fee":123.45}"#;
        assert!(reads_back_as_spanned(permit.as_bytes()));
    }

    /// JSON texts built from pieces at the edges of what a span proves: numbers with and
    /// without exponents, too large, long digit runs; strings with escapes, surrogates,
    /// brackets; nesting up to 150 deep.
    fn edge_json() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            proptest::sample::select(vec![
                "0",
                "-1",
                "1.5",
                "1e5",
                "1E400",
                "-2.5e-3",
                "1e999",
                "123456789012345678901234",
                "true",
                "false",
                "null",
            ])
            .prop_map(str::to_string),
            "[0-9]{250,350}".prop_map(|d| format!("1{d}")),
            proptest::sample::select(vec![
                r#""s""#,
                r#""\ud800""#,
                r#""\udc00\ud800""#,
                r#""\ud83d\ude00""#,
                r#""\u00e9""#,
                r#""a\"b\\""#,
                r#""e1E""#,
                r#""{[""#,
                r#""9e""#,
            ])
            .prop_map(str::to_string),
        ];
        leaf.prop_recursive(150, 400, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                proptest::collection::vec(("[a-e]{1,2}", inner), 0..4).prop_map(|v| {
                    let fields: Vec<String> = v
                        .into_iter()
                        .map(|(k, x)| format!(r#""{k}":{x}"#))
                        .collect();
                    format!("{{{}}}", fields.join(","))
                }),
            ]
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]
        #[test]
        fn random_json_that_skips_the_second_walk_passes_it(value in edge_json()) {
            let payload = format!(r#"{{"v":{value}}}"#);
            if serde_json::from_str::<&RawValue>(&payload).is_ok()
                && reads_back_as_spanned(payload.as_bytes())
            {
                proptest::prop_assert!(
                    serde_json::from_str::<Checked>(&payload).is_ok(),
                    "{}",
                    payload
                );
            }
        }
    }

    #[test]
    fn escaped_names_and_repeated_fields_read_as_any_json_reader_would() {
        let evs =
            one(r#"{"\u0074ype":"A","payload":{},"payload":{"x":1},"idempotency_key":"k\n"}"#)
                .unwrap();
        assert_eq!(evs[0].event_type, "A");
        assert_eq!(evs[0].payload.tree().unwrap()["x"], 1);
        assert_eq!(evs[0].key, "k\n");
    }
}
