//! `ess test`: golden cases for maps, in the manner of `vector test`. A file
//! `NAME.test.yml` next to the map `NAME.yml` lists events and what the map must make of
//! each — the exact record bytes, an error, or nothing (not selected):
//!
//! ```yaml
//! # maps/permit_map.test.yml
//! map: permit_map.yml            # default: this file's name without .test
//! cases:
//!   - name: the seed event
//!     event: '{"type": "PERMIT_STATUS", "payload": {"id": "BP-802", "status": "APPROVED", "updated_at": "2025-04-12T10:03:00Z"}}'
//!     record: "BP-802    APPROVED  20250412100300\n"
//!   - name: an id longer than its field
//!     event: {type: PERMIT_STATUS, payload: {id: BP-8020000001, status: APPROVED}}
//!     error: width               # a part of the error message
//!   - name: budget lines are not taken
//!     event: {type: BUDGET_LINE, payload: {}}
//!     filtered: true
//! ```
//!
//! `event` is an event as `POST /v1/events` takes it (as JSON text, which keeps decimals
//! exactly as written, or as YAML), plus optional `seq` and `received_at` (defaults 1 and
//! 2025-01-01T00:00:00Z) for maps that use them. `record` is text (encoded as the map
//! encodes); `record_hex` gives bytes for EBCDIC and other binary records.
//!
//! Architecture invariant: a case is judged by exactly the runtime's map code: the map is
//! compiled with [`Mapping::compile`] and rendered with [`Mapping::render`], nothing else.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::config::Diagnostic;
use crate::event::Event;
use crate::map::{MapContext, Mapping};

/// What running golden files found.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub files: usize,
    pub cases: usize,
    pub passed: usize,
    /// One per failed case (or unreadable file), at the case.
    pub failures: Vec<Diagnostic>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    #[serde(default)]
    map: Option<Spanned<String>>,
    cases: Vec<Spanned<Case>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    event: EventSpec,
    #[serde(default)]
    record: Option<String>,
    #[serde(default)]
    record_hex: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    filtered: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum EventSpec {
    Json(String),
    Yaml(serde_json::Value),
}

/// Whether `path` names a golden file (`*.test.yml` / `*.test.yaml`).
pub(crate) fn is_test_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".test.yml") || n.ends_with(".test.yaml"))
}

/// Runs every golden file in `maps_dir`.
pub(crate) fn run_dir(maps_dir: &Path, tz: chrono_tz::Tz) -> Outcome {
    let mut out = Outcome::default();
    let files = match std::fs::read_dir(maps_dir) {
        Ok(entries) => {
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| is_test_file(p))
                .collect();
            files.sort();
            files
        }
        Err(e) => {
            out.failures.push(Diagnostic::new(
                maps_dir,
                1,
                1,
                format!("cannot list maps folder: {e}"),
            ));
            return out;
        }
    };
    for file in files {
        run_file(&file, tz, &mut out);
    }
    out
}

/// Runs one golden file, adding to `out`.
pub(crate) fn run_file(path: &Path, tz: chrono_tz::Tz, out: &mut Outcome) {
    out.files += 1;
    let fail = |out: &mut Outcome, line, col, msg: String| {
        out.failures.push(Diagnostic::new(path, line, col, msg));
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return fail(out, 1, 1, format!("cannot read: {e}")),
    };
    let file: TestFile = match serde_saphyr::from_str(&text) {
        Ok(f) => f,
        Err(e) => return out.failures.push(Diagnostic::from_yaml(path, &e)),
    };
    let map_path = match &file.map {
        Some(m) => crate::config::resolve_path(&crate::config::absolute_dir_of(path), &m.value),
        None => default_map(path),
    };
    let mapping = match compile(&map_path, tz) {
        Ok(m) => m,
        Err(msg) => {
            let (line, col) = file
                .map
                .as_ref()
                .map_or((1, 1), |m| (m.referenced.line(), m.referenced.column()));
            return fail(out, line, col, msg);
        }
    };
    for case in &file.cases {
        out.cases += 1;
        match judge(&mapping, &case.value) {
            Ok(()) => out.passed += 1,
            Err(msg) => fail(
                out,
                case.referenced.line(),
                case.referenced.column(),
                format!("case {:?}: {msg}", case.value.name),
            ),
        }
    }
}

/// `NAME.test.yml` tests `NAME.yml` (or `NAME.yaml`).
fn default_map(test: &Path) -> PathBuf {
    let name = test
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let stem = name
        .trim_end_matches(".yaml")
        .trim_end_matches(".yml")
        .trim_end_matches(".test");
    let yml = test.with_file_name(format!("{stem}.yml"));
    if yml.exists() {
        yml
    } else {
        test.with_file_name(format!("{stem}.yaml"))
    }
}

fn compile(map: &Path, tz: chrono_tz::Tz) -> Result<Mapping, String> {
    let text = std::fs::read_to_string(map)
        .map_err(|e| format!("cannot read map {}: {e}", map.display()))?;
    let loaded = crate::config::connector::parse(map, &text)
        .map_err(|d| format!("map does not load: {d}"))?;
    Mapping::compile(&loaded, &MapContext { timezone: tz }).map_err(|errs| {
        format!(
            "map {} does not compile ({} problem(s)); first: {}",
            map.display(),
            errs.len(),
            errs.first().map(ToString::to_string).unwrap_or_default()
        )
    })
}

/// Checks one case against the map; `Err` says how it differs.
fn judge(mapping: &Mapping, case: &Case) -> Result<(), String> {
    let event = event_of(&case.event)?;
    let expects = [
        case.record.is_some(),
        case.record_hex.is_some(),
        case.error.is_some(),
        case.filtered,
    ];
    if expects.iter().filter(|e| **e).count() != 1 {
        return Err("give exactly one of record, record_hex, error, filtered: true".into());
    }
    let selected = mapping.selects(&event.event_type);
    if case.filtered {
        return if selected {
            Err(format!(
                "expected the map not to take type {}, but its events: does",
                event.event_type
            ))
        } else {
            Ok(())
        };
    }
    if !selected {
        return Err(format!(
            "the map does not take events of type {} (events:)",
            event.event_type
        ));
    }
    let rendered = mapping.render(&event);
    if let Some(want) = &case.error {
        return match rendered {
            Err(e) if e.to_string().contains(want.as_str()) => Ok(()),
            Err(e) => Err(format!("expected an error containing {want:?}, got: {e}")),
            Ok(r) => Err(format!(
                "expected an error containing {want:?}, got the record {:?}",
                shown(mapping, &r.bytes)
            )),
        };
    }
    let want = match (&case.record, &case.record_hex) {
        (Some(text), _) => {
            let mut bytes = Vec::new();
            mapping
                .encoding()
                .encode_into(text, &mut bytes)
                .map_err(|c| format!("record: {c:?} has no {} code", mapping.encoding().name()))?;
            bytes
        }
        (_, Some(hex)) => from_hex(hex)?,
        (None, None) => return Err("give record, record_hex, error or filtered: true".into()),
    };
    let got = rendered
        .map_err(|e| format!("expected a record, got the error: {e}"))?
        .bytes;
    if got == want {
        return Ok(());
    }
    let at = got
        .iter()
        .zip(&want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    Err(format!(
        "record differs at byte {at}:\n  expected {:?} ({} bytes)\n  got      {:?} ({} bytes)",
        shown(mapping, &want),
        want.len(),
        shown(mapping, &got),
        got.len()
    ))
}

fn shown(mapping: &Mapping, bytes: &[u8]) -> String {
    let view = crate::state::list::RecordView::of(bytes, mapping.encoding());
    view.hex.unwrap_or(view.text)
}

fn from_hex(hex: &str) -> Result<Vec<u8>, String> {
    let digits: String = hex.chars().filter(|c| !c.is_whitespace()).collect();
    if digits.len() % 2 != 0 {
        return Err("record_hex has an odd number of digits".into());
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&digits[i..i + 2], 16)
                .map_err(|_| format!("record_hex: {:?} is not hex", &digits[i..i + 2]))
        })
        .collect()
}

/// The event a case describes.
fn event_of(spec: &EventSpec) -> Result<Event, String> {
    let value = match spec {
        EventSpec::Json(text) => serde_json::from_str::<serde_json::Value>(text)
            .map_err(|e| format!("event is not JSON: {e}"))?,
        EventSpec::Yaml(v) => v.clone(),
    };
    let serde_json::Value::Object(mut obj) = value else {
        return Err("event must be an object with type and payload".into());
    };
    for key in obj.keys() {
        if ![
            "type",
            "payload",
            "idempotency_key",
            "trace_id",
            "ts",
            "seq",
            "received_at",
        ]
        .contains(&key.as_str())
        {
            return Err(format!("event: unknown field {key:?}"));
        }
    }
    let text = |obj: &serde_json::Map<String, serde_json::Value>, k: &str| {
        obj.get(k).and_then(|v| v.as_str()).map(str::to_owned)
    };
    let time = |k: &str| -> Result<Option<DateTime<Utc>>, String> {
        text(&obj, k)
            .map(|t| {
                DateTime::parse_from_rfc3339(&t)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|e| format!("event.{k}: {e}"))
            })
            .transpose()
    };
    let ts = time("ts")?;
    let received_at = time("received_at")?
        .unwrap_or_else(|| DateTime::from_timestamp(1_735_689_600, 0).unwrap_or_default());
    let event_type = text(&obj, "type").ok_or("event has no type")?;
    let payload = match obj.remove("payload") {
        Some(serde_json::Value::Object(p)) => p,
        None => serde_json::Map::new(),
        Some(_) => return Err("event.payload must be an object".into()),
    };
    Ok(Event {
        seq: obj.get("seq").and_then(|v| v.as_u64()).unwrap_or(1),
        key: text(&obj, "idempotency_key").unwrap_or_else(|| "test-key".into()),
        trace_id: text(&obj, "trace_id")
            .unwrap_or_else(|| "test-trace".into())
            .into(),
        event_type,
        payload: crate::event::Payload::from_map(payload),
        ts,
        received_at,
    })
}

/// `ess test`'s report: each failure, then a count.
pub(crate) fn report(out: &Outcome) -> String {
    let mut s = String::new();
    for f in &out.failures {
        s.push_str(&format!("{f}\n"));
    }
    s.push_str(&format!(
        "{} passed, {} failed ({} case(s) in {} file(s))\n",
        out.passed,
        out.cases - out.passed,
        out.cases,
        out.files
    ));
    s
}
