//! The map engine: a connector file's mapping keys compiled into a [`Mapping`] that turns
//! an [`Event`] into the record bytes a legacy system expects.
//!
//! Architecture invariant: this module does no I/O after compilation (a copybook named by
//! `layout:` is read while compiling); rendering is a pure function of event and mapping.
//!
//! This first cut handles the seed's fixed-width short form (`src | width:N |
//! format:STRFTIME`); the full language (SPEC §4) is issue #3.

pub mod cli;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde_json::Value;

use crate::config::Diagnostic;
use crate::config::connector::{FieldSpec, LoadedConnector};
use crate::event::{Event, Record};

/// What compiling needs beyond the file itself.
#[derive(Debug, Clone)]
pub struct MapContext {
    pub timezone: Tz,
}

/// Why one event could not be made into a record. The event is parked as a dead letter
/// with this reason; the connector goes on (it is the event's problem, not the target's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// A value is missing, malformed or too wide.
    #[error("field {field}: {message}")]
    Field { field: String, message: String },
    /// A compliance rule stopped the event.
    #[error("compliance: {0}")]
    Compliance(String),
}

impl MapError {
    /// The dead-letter reason class: `map` or `compliance`.
    pub fn reason(&self) -> &'static str {
        match self {
            MapError::Field { .. } => "map",
            MapError::Compliance(_) => "compliance",
        }
    }
}

#[derive(Debug, Clone)]
struct Field {
    name: String,
    source: String,
    width: usize,
    format: Option<String>,
}

/// A compiled connector mapping.
#[derive(Debug, Clone)]
pub struct Mapping {
    events: Option<Vec<String>>,
    fields: Vec<Field>,
    timezone: Tz,
}

impl Mapping {
    /// Compiles the mapping keys of `conn`; every problem is returned.
    pub fn compile(conn: &LoadedConnector, ctx: &MapContext) -> Result<Mapping, Vec<Diagnostic>> {
        let mut errs = Vec::new();
        let mut fields = Vec::new();
        for (name, spec) in conn.file.fields.iter().flat_map(|f| f.0.iter()) {
            let FieldSpec::Short(text) = &spec.value else {
                errs.push(Diagnostic::at(
                    &conn.path,
                    spec,
                    "long-form fields are not supported yet",
                ));
                continue;
            };
            let mut parts = text.split('|').map(str::trim);
            let source = parts.next().unwrap_or_default().to_string();
            let (mut width, mut format) = (None, None);
            for m in parts {
                match m.split_once(':') {
                    Some(("width", w)) => width = w.trim().parse().ok(),
                    Some(("format", f)) => format = Some(f.to_string()),
                    _ => errs.push(Diagnostic::at(
                        &conn.path,
                        spec,
                        format!("unknown modifier {m:?}"),
                    )),
                }
            }
            let Some(width) = width else {
                errs.push(Diagnostic::at(
                    &conn.path,
                    spec,
                    format!(
                        "field {} needs a width for format fixed (add `| width:N`)",
                        name.value
                    ),
                ));
                continue;
            };
            fields.push(Field {
                name: name.value.clone(),
                source,
                width,
                format,
            });
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(Mapping {
            events: conn.file.events.clone(),
            fields,
            timezone: ctx.timezone,
        })
    }

    /// Whether this connector takes events of `event_type`.
    pub fn selects(&self, event_type: &str) -> bool {
        self.events
            .as_ref()
            .is_none_or(|e| e.iter().any(|t| t == event_type))
    }

    /// The header control record of a batch file (empty: none).
    pub fn batch_header(
        &self,
        _items: &[(Event, Record)],
        _now: chrono::DateTime<Tz>,
    ) -> Result<Vec<u8>, MapError> {
        Ok(Vec::new())
    }

    /// The trailer control record of a batch file (empty: none).
    pub fn batch_trailer(
        &self,
        _items: &[(Event, Record)],
        _now: chrono::DateTime<Tz>,
    ) -> Result<Vec<u8>, MapError> {
        Ok(Vec::new())
    }

    /// Makes the record for `event`, line end included.
    pub fn render(&self, event: &Event) -> Result<Record, MapError> {
        let mut line = String::new();
        for f in &self.fields {
            let err = |message: String| MapError::Field {
                field: f.name.clone(),
                message,
            };
            let raw = match event.payload.get(&f.source) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(other) => Some(other.to_string()),
                None => None,
            };
            let raw = match (raw, f.source.as_str()) {
                (Some(v), _) => v,
                (None, "updated_at") => event.ts.unwrap_or(event.received_at).to_rfc3339(),
                (None, src) => return Err(err(format!("source {src} is missing"))),
            };
            let value = match &f.format {
                Some(fmt) => {
                    let t: DateTime<Utc> = DateTime::parse_from_rfc3339(&raw)
                        .map_err(|e| err(format!("value is not an RFC 3339 time: {e}")))?
                        .with_timezone(&Utc);
                    t.with_timezone(&self.timezone).format(fmt).to_string()
                }
                None => raw,
            };
            if value.chars().count() > f.width {
                return Err(err(format!(
                    "value of {} characters is longer than width {}",
                    value.chars().count(),
                    f.width
                )));
            }
            line.push_str(&format!("{value:<width$}", width = f.width));
        }
        line.push('\n');
        Ok(Record {
            seq: event.seq,
            bytes: line.into_bytes(),
        })
    }
}
