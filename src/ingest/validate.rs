//! Request bodies -> validated [`NewEvent`]s, all or nothing (SPEC §5).
//!
//! A body is one JSON object, a JSON array of them, or NDJSON. The first invalid event
//! rejects the whole request with its `index` and `field`; nothing of it is committed.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::event::MAX_KEY_LEN;
use crate::feed::NewEvent;

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

const KNOWN_FIELDS: [&str; 5] = ["type", "payload", "idempotency_key", "trace_id", "ts"];

/// Parses and validates a body. `ndjson`: one event per non-empty line. `trace_from_header`
/// is the trace id of the request's `traceparent`, used for events without one.
pub fn parse_body(
    body: &[u8],
    ndjson: bool,
    trace_from_header: Option<&str>,
) -> Result<Vec<NewEvent>, Rejection> {
    let values: Vec<Value> = if ndjson {
        let mut out = Vec::new();
        for (i, line) in body
            .split(|b| *b == b'\n')
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .enumerate()
        {
            out.push(
                serde_json::from_slice(line)
                    .map_err(|e| reject(Some(i), None, format!("line is not JSON: {e}")))?,
            );
        }
        out
    } else {
        match serde_json::from_slice(body)
            .map_err(|e| reject(None, None, format!("body is not JSON: {e}")))?
        {
            Value::Array(items) => items,
            v @ Value::Object(_) => vec![v],
            _ => {
                return Err(reject(
                    None,
                    None,
                    "body must be an event object, an array of them, or NDJSON",
                ));
            }
        }
    };
    if values.is_empty() {
        return Err(reject(None, None, "no events in body"));
    }
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| validate_event(i, v, trace_from_header))
        .collect()
}

fn validate_event(
    index: usize,
    value: Value,
    trace_from_header: Option<&str>,
) -> Result<NewEvent, Rejection> {
    let err = |field: &str, msg: String| reject(Some(index), Some(field), msg);
    let Value::Object(mut obj) = value else {
        return Err(reject(Some(index), None, "event must be a JSON object"));
    };
    if let Some(unknown) = obj.keys().find(|k| !KNOWN_FIELDS.contains(&k.as_str())) {
        return Err(err(
            unknown,
            format!(
                "unknown field {unknown:?} (known: type, payload, idempotency_key, trace_id, ts)"
            ),
        ));
    }
    let event_type = match obj.remove("type") {
        Some(Value::String(t)) => t,
        Some(_) => return Err(err("type", "type must be a string".into())),
        None => return Err(err("type", "type is required".into())),
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
    let payload: Map<String, Value> = match obj.remove("payload") {
        Some(Value::Object(p)) => p,
        Some(_) => return Err(err("payload", "payload must be a JSON object".into())),
        None => return Err(err("payload", "payload is required".into())),
    };
    let opt_string =
        |obj: &mut Map<String, Value>, field: &str| -> Result<Option<String>, Rejection> {
            match obj.remove(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(_) => Err(err(field, format!("{field} must be a string"))),
            }
        };
    let ts_text = opt_string(&mut obj, "ts")?;
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
    let key = match opt_string(&mut obj, "idempotency_key")? {
        Some(k) if k.is_empty() || k.len() > MAX_KEY_LEN => {
            return Err(err(
                "idempotency_key",
                format!("idempotency_key must be 1-{MAX_KEY_LEN} characters"),
            ));
        }
        Some(k) => k,
        None => content_key(&event_type, &payload, ts_text.as_deref()),
    };
    let trace_id = match opt_string(&mut obj, "trace_id")? {
        Some(t) if t.is_empty() || t.len() > 256 => {
            return Err(err("trace_id", "trace_id must be 1-256 characters".into()));
        }
        Some(t) => t,
        None => trace_from_header.map_or_else(new_trace_id, str::to_string),
    };
    Ok(NewEvent {
        event_type,
        payload,
        key,
        trace_id,
        ts,
    })
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

/// A fresh random W3C-style trace id (32 hex digits).
pub fn new_trace_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(body: &str) -> Result<Vec<NewEvent>, Rejection> {
        parse_body(body.as_bytes(), false, None)
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
        .unwrap();
        assert_eq!(evs[0].trace_id, "mine");
        assert_eq!(evs[1].trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        let generated = one(r#"{"type":"A","payload":{}}"#).unwrap();
        assert_eq!(generated[0].trace_id.len(), 32);
    }
}
