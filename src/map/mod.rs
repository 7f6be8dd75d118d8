//! The map engine: a connector file's mapping keys (SPEC §4) compiled into a [`Mapping`]
//! that turns an [`Event`] into the record bytes a legacy system expects — fixed-width,
//! CSV, JSON lines or SOAP elements, in ASCII, Latin-1 or an EBCDIC code page, optionally
//! laid out by a COBOL copybook, framed as fixed-length, RDW or line records, with
//! transforms and compliance rules applied first — and record bytes back into JSON
//! ([`Mapping::decode`]), the way a pickup source reads a legacy file.
//!
//! Reading order: [`spec`] (the field language as written) → [`copybook`] (layouts) →
//! `compile` (every problem collected as a `file:line:col` diagnostic) → [`field`] (one
//! field's value pipeline and byte layout) → [`layout`] (the record's plan: REDEFINES,
//! variable-length tables) → `render` here (one record) → [`frame`] (fixed / RDW / lines)
//! → [`encoding`] (bytes). Back: [`frame::Framing::split`] → [`Mapping::decode`] →
//! [`decode`] (the JSON views).
//!
//! Architecture invariant: this module does no I/O after compilation (a copybook named by
//! `layout:` is read while compiling; `cli` reads files for the command line); rendering is
//! a pure function of event and mapping, so a record can be re-made identically on replay;
//! decoding is a pure function of record bytes and mapping.
//!
//! Architecture invariant: a fixed-width record is always exactly its layout's bytes (the
//! longest layout for fixed-length framing) plus its framing, or the event is refused with a
//! [`MapError`]; no value is ever silently cut, rounded (decimals never pass through a
//! float) or replaced by `?`.

pub mod cli;
mod codepages;
mod compile;
pub mod copybook;
pub mod decimal;
pub mod decode;
pub mod encoding;
pub mod field;
pub mod float;
pub mod frame;
pub mod layout;
pub mod spec;
pub mod transform;

use std::borrow::Cow;

use chrono::DateTime;
use chrono_tz::Tz;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::config::Diagnostic;
use crate::config::connector::LoadedConnector;
use crate::event::{Event, Record};
use decimal::Decimal;
use decode::{DecodeError, Template};
use encoding::Encoding;
use field::{Batch, Field, Raw};
use frame::Framing;
use layout::{Misfit, Plan, Slots, Walk};
use transform::Transforms;

/// What compiling needs beyond the file itself.
#[derive(Debug, Clone)]
pub struct MapContext {
    /// Dates are formatted in this zone (`timezone` of ess.yml).
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

/// The record syntax (`format:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Fixed,
    Csv,
    Json,
    Soap,
}

/// A compiled connector mapping.
#[derive(Debug, Clone)]
pub struct Mapping {
    events: Option<Vec<String>>,
    format: Format,
    fields: Vec<Field>,
    /// How the fields make a fixed-width record (a copybook's tree, or the fields in order).
    plan: Plan,
    header: Vec<Field>,
    trailer: Vec<Field>,
    /// For control records laid out by one of the copybook's record types: its plan (the
    /// header's / trailer's fields are then the copybook's, the others blank or VALUE).
    header_plan: Option<Plan>,
    trailer_plan: Option<Plan>,
    encoding: Encoding,
    line_end: String,
    framing: Framing,
    csv_delimiter: char,
    csv_header: bool,
    transforms: Transforms,
    timezone: Tz,
    /// `$sum:FIELD` of header/trailer: (FIELD, index into `fields`).
    sums: Vec<(String, usize)>,
    /// The payload paths the fields read, sorted by first key (see [`field::lookup_all`]).
    lookups: Vec<field::Lookup>,
    /// The decoded record by field name, and as the event it came from.
    fields_view: Template,
    /// The fields view's `"NAME":` keys (written as fixed-width records are read).
    field_keys: Vec<Option<String>>,
    event_view: Template,
}

/// One value ready for the record syntax.
enum Out<'a> {
    /// Characters (or blank), before layout.
    Text(Option<Cow<'a, str>>),
    /// JSON text kept as sent (JSON format, unmodified fields).
    Json(String),
}

/// Where a field's payload value is, for a fixed-width record.
#[derive(Clone, Copy)]
enum Found<'a> {
    /// In the tree (`None`: missing or null).
    Tree(Option<&'a Value>),
    /// In the payload's text: the value of the path's first key, then (in [`Mapping::fixed`])
    /// of the whole path (`None`: missing).
    Text(Option<&'a RawValue>),
}

/// A payload value the common field writes as it is: a string's characters, or a number's
/// characters as sent.
enum Plain<'a> {
    Str(&'a str),
    Num(&'a str),
}

impl<'a> Found<'a> {
    /// The value as [`Plain`] text when it is a string or a number (a string without
    /// escapes, when still text); else `None`.
    fn plain(self, f: &'a Field, event: &'a Event) -> Option<Plain<'a>> {
        let spec::Source::Path(p) = &f.source else {
            return None;
        };
        match self {
            Found::Tree(Some(Value::String(s))) => Some(Plain::Str(s)),
            Found::Tree(Some(Value::Number(n))) => {
                Some(Plain::Num(field::sent_number(event, p, n)))
            }
            Found::Tree(_) | Found::Text(None) => None,
            Found::Text(Some(raw)) => {
                let t = raw.get();
                match t.as_bytes().first()? {
                    // JSON text holds no raw control characters: without a backslash, the
                    // characters between the quotes are the string.
                    b'"' if !t.contains('\\') => t.get(1..t.len() - 1).map(Plain::Str),
                    b'-' | b'0'..=b'9' => Some(Plain::Num(t)),
                    _ => None,
                }
            }
        }
    }
}

/// Runs `f` on `n` slots set to `None`: on the stack for records of up to 64 fields (and
/// only 8 set for the many records of a few fields: clearing 64 was 1.5 % of a drain).
fn with_slots<T: Copy, R>(n: usize, f: impl FnOnce(&mut [Option<T>]) -> R) -> R {
    if n <= 8 {
        f(&mut [None; 8][..n])
    } else if n <= 64 {
        f(&mut [None; 64][..n])
    } else {
        f(&mut vec![None; n])
    }
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The REDEFINES alternative (or 01 record) the record is, when the layout has several.
    pub record_type: Option<String>,
    /// The JSON text of the view asked for.
    pub json: String,
}

/// Which JSON a record decodes into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// `{"FIELD-NAME": value, ...}`: the layout's names.
    Fields,
    /// `{"type": .., "payload": {..}}`: the event the map would have been given.
    Event,
}

/// Scratch space reused from record to record when decoding many.
#[derive(Debug, Default)]
pub struct DecodeScratch {
    walk: Walk,
    slots: Slots,
    line: String,
}

impl Mapping {
    /// Compiles the mapping keys of `conn`; every problem is returned.
    pub fn compile(conn: &LoadedConnector, ctx: &MapContext) -> Result<Mapping, Vec<Diagnostic>> {
        compile::compile(conn, ctx, false)
    }

    /// Compiles a layout for decoding only: as [`Mapping::compile`], except that a file
    /// with `layout:` and no `fields:` reads every copybook field under its own name (a
    /// pickup source's records: `layout:`, `record:`, `layout_when:`).
    pub fn compile_layout(
        conn: &LoadedConnector,
        ctx: &MapContext,
    ) -> Result<Mapping, Vec<Diagnostic>> {
        compile::compile(conn, ctx, true)
    }

    /// Whether this connector takes events of `event_type`.
    pub fn selects(&self, event_type: &str) -> bool {
        self.events
            .as_ref()
            .is_none_or(|e| e.iter().any(|t| t == event_type))
    }

    pub fn format(&self) -> Format {
        self.format
    }

    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// The line end, as written (before encoding); empty for fixed-length and RDW framing.
    pub fn line_end(&self) -> &str {
        &self.line_end
    }

    /// How records sit one after another in a file (what [`frame::Framing::split`] needs).
    pub fn framing(&self) -> &Framing {
        &self.framing
    }

    /// For `format: fixed` with records all of one length, that length (framing not
    /// counted).
    pub fn record_len(&self) -> Option<usize> {
        if self.format != Format::Fixed {
            return None;
        }
        if matches!(self.framing, Framing::Fixed(_)) || self.plan.is_fixed_len() {
            return Some(self.plan.len);
        }
        None
    }

    /// For `format: fixed`, the bytes of the longest record (framing not counted).
    pub fn max_record_len(&self) -> Option<usize> {
        (self.format == Format::Fixed).then_some(self.plan.len)
    }

    /// `format: csv` with `csv: {header: true}`: a file's first line names the columns.
    pub fn has_csv_header(&self) -> bool {
        self.format == Format::Csv && self.csv_header
    }

    /// The record types a decoded record can be ([`Decoded::record_type`]): the REDEFINES
    /// alternatives or 01 records the layout chooses from per record. Empty when every
    /// record has the one layout.
    pub fn record_types(&self) -> Vec<&str> {
        self.plan
            .sets
            .iter()
            .filter(|s| s.records || s.fixed.is_none())
            .flat_map(|s| s.alts.iter().map(|a| a.name.as_str()))
            .collect()
    }

    /// The fields of the record, in layout order (FILLER and unmapped fields included).
    pub fn fields(&self) -> &[Field] {
        &self.fields
    }

    /// Makes the record for `event`, framing included, in the target encoding.
    ///
    /// The common record (fixed width, no transform) is made from the payload's text: the
    /// values the fields read are found in it and borrowed ([`field::lookup_raw`]); only a
    /// value that needs the general pipeline is parsed, alone. Other records read the tree.
    pub fn render(&self, event: &Event) -> Result<Record, MapError> {
        let payload_err = |e: &dyn std::fmt::Display| MapError::Field {
            field: "(payload)".into(),
            message: e.to_string(),
        };
        let mut out = Vec::with_capacity(self.plan.len + 8);
        if self.format == Format::Fixed && self.transforms.is_empty() {
            with_slots(self.fields.len(), |found| {
                field::lookup_raw(event.payload.text(), &self.lookups, found)
                    .map_err(|e| payload_err(&e))?;
                self.fixed(event, &mut out, |i| Found::Text(found[i]))
            })?;
        } else {
            let tree = event.payload.tree().map_err(|e| payload_err(&e))?;
            let payload = self.transforms.apply(tree).map_err(MapError::Compliance)?;
            with_slots(self.fields.len(), |found| {
                field::lookup_all(&payload, &self.lookups, found);
                let found = &*found;
                if self.format == Format::Fixed {
                    self.fixed(event, &mut out, |i| Found::Tree(found[i]))
                } else {
                    let json = self.format == Format::Json;
                    self.write_record(&self.fields, None, &mut out, |i, f| {
                        self.value(f, event, found[i], json)
                    })
                }
            })?;
        }
        Ok(Record {
            seq: event.seq,
            bytes: out,
        })
    }

    /// A fixed-width record, framed, from the payload values `found` gives by field.
    fn fixed<'a>(
        &'a self,
        event: &'a Event,
        out: &mut Vec<u8>,
        found: impl Fn(usize) -> Found<'a>,
    ) -> Result<(), MapError> {
        let enc = self.encoding;
        let field_err = |f: &Field, message: String| MapError::Field {
            field: f.name.clone(),
            message,
        };
        self.framed(out, |out| {
            let mut render = |i: usize, out: &mut Vec<u8>| -> Result<(), MapError> {
                let f = &self.fields[i];
                let found = match found(i) {
                    // A nested path: its value, found inside its first key's.
                    Found::Text(Some(raw)) => match &f.source {
                        spec::Source::Path(p) if p.len() > 1 => Found::Text(
                            field::raw_in(raw, &p[1..])
                                .map_err(|e| field_err(f, format!("the payload value: {e}")))?,
                        ),
                        _ => Found::Text(Some(raw)),
                    },
                    found => found,
                };
                match found.plain(f, event) {
                    // A payload date only formatted: into a buffer, no allocation.
                    Some(Plain::Str(s)) if f.is_plain_date() => {
                        let mut buf = [0u8; 32];
                        if let Some(t) = f.date_into(s, self.timezone, &mut buf) {
                            let t = t.map_err(|m| field_err(f, m))?;
                            return f.write(Some(t), enc, out).map_err(|m| field_err(f, m));
                        }
                    }
                    // The common field (a payload path, no modifier before the layout):
                    // its text as sent, straight into the record.
                    Some(Plain::Str(s) | Plain::Num(s)) if f.is_plain() => {
                        return f.write(Some(s), enc, out).map_err(|m| field_err(f, m));
                    }
                    _ => {}
                }
                // The general pipeline, on the value alone when it is still text.
                let parsed: Value;
                let value = match found {
                    Found::Tree(v) => v,
                    Found::Text(None) => None,
                    Found::Text(Some(raw)) => {
                        parsed = serde_json::from_str(raw.get())
                            .map_err(|e| field_err(f, format!("the payload value: {e}")))?;
                        field::lookup_in(&parsed, &[])
                    }
                };
                match self
                    .value(f, event, value, false)
                    .map_err(|m| field_err(f, m))?
                {
                    Out::Text(t) => f.write(t.as_deref(), enc, out).map_err(|m| field_err(f, m)),
                    Out::Json(_) => unreachable_json(),
                }
            };
            let misfit = |m: Misfit| MapError::Field {
                field: m.field,
                message: m.message,
            };
            self.plan
                .encode(&self.fields, enc, out, &mut render, &misfit)
        })
    }

    /// One field's value for `event` through its pipeline (`found`: its payload value).
    fn value<'a>(
        &'a self,
        f: &'a Field,
        event: &'a Event,
        found: Option<&'a Value>,
        json: bool,
    ) -> Result<Out<'a>, String> {
        let raw = f.resolve_found(event, found)?;
        if json && f.is_passthrough() {
            match &raw {
                // A string through our own escaper: every control character escaped.
                Raw::Json(Value::String(t)) => {
                    let mut j = String::with_capacity(t.len() + 2);
                    decode::push_str(&mut j, t);
                    return Ok(Out::Json(j));
                }
                Raw::Number(n) => return Ok(Out::Json((*n).to_string())),
                Raw::Json(v) => return Ok(Out::Json(v.to_string())),
                Raw::Int(n) => return Ok(Out::Json(n.to_string())),
                _ => {}
            }
        }
        f.text(&raw, self.timezone).map(Out::Text)
    }

    /// Decodes one record (its data, framing removed: a [`frame::Frame`]'s bytes) into the
    /// JSON of `view`. `index` is the record's position, for the error.
    pub fn decode(&self, record: &[u8], index: usize, view: View) -> Result<Decoded, DecodeError> {
        let mut scratch = DecodeScratch::default();
        let mut json = String::new();
        let record_type = self.decode_into(record, index, view, &mut scratch, &mut json)?;
        Ok(Decoded {
            record_type: record_type.map(str::to_string),
            json,
        })
    }

    /// [`Mapping::decode`] appending the JSON to `out` and reusing `scratch`: the form for
    /// decoding whole files. Returns the record type.
    pub fn decode_into(
        &self,
        record: &[u8],
        index: usize,
        view: View,
        scratch: &mut DecodeScratch,
        out: &mut String,
    ) -> Result<Option<&str>, DecodeError> {
        let err = |field: String, offset: usize, message: String| DecodeError {
            record_index: index,
            field,
            offset,
            message,
        };
        match self.format {
            Format::Fixed => {
                let exact = !matches!(self.framing, Framing::Fixed(_));
                let misfit = |m: Misfit| err(m.field, m.offset, m.message);
                if view == View::Fields {
                    // Written as it is read: no intermediate values.
                    let start = out.len();
                    out.push('{');
                    let mut sink = decode::FieldsJson {
                        keys: &self.field_keys,
                        out,
                        first: true,
                    };
                    let r = self.plan.decode(
                        &self.fields,
                        self.encoding,
                        record,
                        exact,
                        &mut scratch.walk,
                        &mut sink,
                    );
                    if let Err(m) = r {
                        out.truncate(start);
                        return Err(misfit(m));
                    }
                    out.push('}');
                    return Ok(self.plan.record_type(&scratch.walk.chosen));
                }
                scratch.slots.clear(self.fields.len());
                self.plan
                    .decode(
                        &self.fields,
                        self.encoding,
                        record,
                        exact,
                        &mut scratch.walk,
                        &mut scratch.slots,
                    )
                    .map_err(misfit)?;
            }
            Format::Csv => {
                scratch.walk.chosen.clear();
                self.split_csv(record, index, scratch)?;
            }
            Format::Json | Format::Soap => {
                return Err(err(
                    "(record)".into(),
                    0,
                    format!(
                        "format {} is not decoded; decoding reads fixed-width and CSV records",
                        if self.format == Format::Json {
                            "json"
                        } else {
                            "soap"
                        }
                    ),
                ));
            }
        }
        let view = match view {
            View::Fields => &self.fields_view,
            View::Event => &self.event_view,
        };
        view.write(&self.fields, &scratch.slots, self.timezone, out)
            .map_err(|(i, m)| err(self.fields[i].name.clone(), 0, m))?;
        Ok(self.plan.record_type(&scratch.walk.chosen))
    }

    /// Where each field of a fixed-width record's data sits: (field index, offset), in
    /// record order; `None` when the data does not decode.
    pub fn spans(&self, data: &[u8]) -> Option<Vec<(usize, usize)>> {
        if self.format != Format::Fixed {
            return None;
        }
        let (mut walk, mut slots) = (Walk::default(), Slots::default());
        slots.clear(self.fields.len());
        self.plan
            .decode(
                &self.fields,
                self.encoding,
                data,
                false,
                &mut walk,
                &mut slots,
            )
            .ok()?;
        let mut out: Vec<(usize, usize)> = walk
            .offsets
            .iter()
            .enumerate()
            .filter_map(|(i, o)| o.map(|o| (i, o as usize)))
            .collect();
        out.sort_by_key(|&(_, o)| o);
        Some(out)
    }

    /// One CSV record into the slots: RFC 4180 fields (quotes, doubled quotes), each read
    /// by its field's layout (padding removed, numbers from their text).
    fn split_csv(
        &self,
        record: &[u8],
        index: usize,
        scratch: &mut DecodeScratch,
    ) -> Result<(), DecodeError> {
        let err = |field: &str, offset: usize, message: String| DecodeError {
            record_index: index,
            field: field.to_string(),
            offset,
            message,
        };
        scratch.line.clear();
        self.encoding
            .decode_into(record, &mut scratch.line)
            .map_err(|at| {
                err(
                    "(record)",
                    at,
                    format!(
                        "byte 0x{:02X} is not a character in {}",
                        record[at],
                        self.encoding.name()
                    ),
                )
            })?;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .delimiter(u8::try_from(self.csv_delimiter).unwrap_or(b','))
            .from_reader(scratch.line.as_bytes());
        let mut row = csv::StringRecord::new();
        let ok = reader
            .read_record(&mut row)
            .map_err(|e| err("(record)", 0, format!("not a CSV record: {e}")))?;
        let slots = &mut scratch.slots;
        slots.clear(self.fields.len());
        if !ok {
            return Err(err("(record)", 0, "the record is empty".into()));
        }
        if row.len() != self.fields.len() {
            return Err(err(
                "(record)",
                0,
                format!(
                    "the record has {} columns; the map has {}",
                    row.len(),
                    self.fields.len()
                ),
            ));
        }
        for (i, (f, cell)) in self.fields.iter().zip(row.iter()).enumerate() {
            let a = slots.text.len();
            match &f.kind {
                field::Kind::Text { align, pad, .. } => {
                    let t = match align {
                        spec::Align::Left => cell.trim_end_matches(*pad),
                        spec::Align::Right => cell.trim_start_matches(*pad),
                    };
                    slots.text.push_str(t);
                }
                kind => {
                    let mut bytes = Vec::new();
                    Encoding::Ascii
                        .encode_into(cell, &mut bytes)
                        .map_err(|_| err(&f.name, 0, "the value is not a number".into()))?;
                    if Some(bytes.len()) != kind.width() {
                        return Err(err(
                            &f.name,
                            0,
                            format!(
                                "the value is {} characters; the picture has {}",
                                bytes.len(),
                                kind.width().unwrap_or(0)
                            ),
                        ));
                    }
                    kind.decode(&bytes, Encoding::Ascii, &mut slots.text)
                        .map_err(|b| err(&f.name, b.at, b.message))?;
                }
            }
            // A CSV record is far below 4 GiB.
            slots.spans[i] = Some((a as u32, slots.text.len() as u32));
        }
        Ok(())
    }

    /// The CSV column-name row (with line end, encoded) when `csv.header: true`; a file
    /// target writes it at the top of each new file. Empty otherwise.
    pub fn csv_header_row(&self) -> Result<Vec<u8>, MapError> {
        let mut out = Vec::new();
        if self.format != Format::Csv || !self.csv_header {
            return Ok(out);
        }
        let mut line = String::new();
        for (i, f) in self.fields.iter().enumerate() {
            if i > 0 {
                line.push(self.csv_delimiter);
            }
            csv_quote(&f.name, self.csv_delimiter, &mut line);
        }
        let mut data = Vec::new();
        self.encoding
            .encode_into(&line, &mut data)
            .map_err(|c| MapError::Field {
                field: "(csv header row)".into(),
                message: field::unmappable(c, self.encoding),
            })?;
        self.frame(&data, &mut out)?;
        Ok(out)
    }

    /// The control record(s) opening a batch file: the CSV column row (if configured), then
    /// `header:`. Empty when the map has neither.
    pub fn batch_header(
        &self,
        items: &[(Event, Record)],
        now: DateTime<Tz>,
    ) -> Result<Vec<u8>, MapError> {
        let mut out = self.csv_header_row()?;
        out.extend(self.control(&self.header, self.header_plan.as_ref(), items, now)?);
        Ok(out)
    }

    /// The control record closing a batch file (`trailer:`): record count, hash totals,
    /// date. Empty when the map has no trailer.
    pub fn batch_trailer(
        &self,
        items: &[(Event, Record)],
        now: DateTime<Tz>,
    ) -> Result<Vec<u8>, MapError> {
        self.control(&self.trailer, self.trailer_plan.as_ref(), items, now)
    }

    fn control(
        &self,
        fields: &[Field],
        plan: Option<&Plan>,
        items: &[(Event, Record)],
        now: DateTime<Tz>,
    ) -> Result<Vec<u8>, MapError> {
        let mut out = Vec::new();
        if fields.is_empty() {
            return Ok(out);
        }
        let mut batch = Batch {
            count: items.len() as u64,
            first_seq: items.first().map_or(0, |(e, _)| e.seq),
            last_seq: items.last().map_or(0, |(e, _)| e.seq),
            date: Some(now),
            sums: Vec::new(),
        };
        for (name, idx) in &self.sums {
            let f = &self.fields[*idx];
            let mut total = Decimal::ZERO;
            for (event, _) in items {
                let err = |message: String| MapError::Field {
                    field: f.name.clone(),
                    message,
                };
                let tree = event.payload.tree().map_err(|e| MapError::Field {
                    field: "(payload)".into(),
                    message: e.to_string(),
                })?;
                let payload = self.transforms.apply(tree).map_err(MapError::Compliance)?;
                let raw = f.resolve(event, &payload).map_err(err)?;
                let Some(text) = f.text(&raw, self.timezone).map_err(err)? else {
                    continue;
                };
                let d = Decimal::parse(&text).map_err(|m| err(format!("$sum:{name}: {m}")))?;
                total = total
                    .checked_add(d)
                    .ok_or_else(|| err(format!("$sum:{name} exceeds 38 digits")))?;
            }
            batch.sums.push((name.clone(), total));
        }
        self.write_record(fields, plan, &mut out, |_, f| {
            f.text(&f.resolve_control(&batch)?, self.timezone)
                .map(Out::Text)
        })?;
        Ok(out)
    }

    /// Writes one fixed-width record with `write` in place, then frames it (descriptor words
    /// filled in, or the line end added; a record shorter than fixed-length framing's
    /// length is filled with spaces): no copy of the record.
    fn framed(
        &self,
        out: &mut Vec<u8>,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), MapError>,
    ) -> Result<(), MapError> {
        let start = out.len();
        out.resize(start + self.framing.prefix_len(), 0);
        write(out)?;
        if let Framing::Fixed(len) = &self.framing {
            if out.len() - start < *len {
                out.resize(start + len, self.encoding.space());
            }
        }
        self.framing
            .finish(out, start)
            .map_err(|message| MapError::Field {
                field: "(record)".into(),
                message,
            })
    }

    /// Frames `data` (already encoded) as one record.
    fn frame(&self, data: &[u8], out: &mut Vec<u8>) -> Result<(), MapError> {
        self.framing
            .write(data, out)
            .map_err(|message| MapError::Field {
                field: "(record)".into(),
                message,
            })
    }

    /// Lays `fields` out in the map's record syntax and encoding, framing included. `plan`
    /// (fixed format) says how the fields make the record; without it they go in order.
    fn write_record<'f>(
        &self,
        fields: &'f [Field],
        plan: Option<&Plan>,
        out: &mut Vec<u8>,
        mut value: impl FnMut(usize, &'f Field) -> Result<Out<'f>, String>,
    ) -> Result<(), MapError> {
        let enc = self.encoding;
        let field_err = |f: &Field, message: String| MapError::Field {
            field: f.name.clone(),
            message,
        };
        if self.format == Format::Fixed {
            // Control records: laid out by their record type's plan, or their fields in
            // order; framed like the records.
            let mut render = |i: usize, out: &mut Vec<u8>| -> Result<(), MapError> {
                let f = &fields[i];
                let v = value(i, f).map_err(|m| field_err(f, m))?;
                let Out::Text(t) = v else { unreachable_json() };
                f.write(t.as_deref(), enc, out).map_err(|m| field_err(f, m))
            };
            return self.framed(out, |out| match plan {
                Some(p) => {
                    let misfit = |m: Misfit| MapError::Field {
                        field: m.field,
                        message: m.message,
                    };
                    p.encode(fields, enc, out, &mut render, &misfit)
                }
                None => (0..fields.len()).try_for_each(|i| render(i, out)),
            });
        }
        let mut line = String::new();
        let mut data = Vec::new();
        if self.format == Format::Json {
            line.push('{');
        }
        for (i, f) in fields.iter().enumerate() {
            let err = |message: String| field_err(f, message);
            let v = value(i, f).map_err(err)?;
            match self.format {
                Format::Fixed => unreachable!("handled above"),
                Format::Csv => {
                    let Out::Text(t) = v else { unreachable_json() };
                    if i > 0 {
                        line.push(self.csv_delimiter);
                    }
                    let t = t
                        .as_deref()
                        .map(|t| f.screen(t, true))
                        .transpose()
                        .map_err(err)?;
                    let laid = f.layout_text(t.as_deref()).map_err(err)?;
                    csv_quote(&laid, self.csv_delimiter, &mut line);
                }
                Format::Json => {
                    if i > 0 {
                        line.push(',');
                    }
                    decode::push_str(&mut line, &f.name);
                    line.push(':');
                    match v {
                        Out::Json(j) => line.push_str(&j),
                        Out::Text(t) => {
                            let t = t
                                .as_deref()
                                .map(|t| f.screen(t, false))
                                .transpose()
                                .map_err(err)?;
                            let laid = f.layout_text(t.as_deref()).map_err(err)?;
                            decode::push_str(&mut line, &laid);
                        }
                    }
                }
                Format::Soap => {
                    let Out::Text(t) = v else { unreachable_json() };
                    let t = t
                        .as_deref()
                        .map(|t| f.screen(t, false))
                        .transpose()
                        .map_err(err)?;
                    let laid = f.layout_text(t.as_deref()).map_err(err)?;
                    line.push('<');
                    line.push_str(&f.name);
                    line.push('>');
                    xml_escape(&laid, &mut line).map_err(|c| {
                        err(format!(
                            "the value holds a control character (U+{:04X}) that XML 1.0 cannot carry, not even escaped; add `| control:replace:\" \"` to the field",
                            u32::from(c)
                        ))
                    })?;
                    line.push_str("</");
                    line.push_str(&f.name);
                    line.push('>');
                }
            }
            // Characters are encoded field by field so an unmappable one names its field.
            if !line.is_empty() && self.format != Format::Json {
                enc.encode_into(&line, &mut data)
                    .map_err(|c| err(field::unmappable(c, enc)))?;
                line.clear();
            }
        }
        if self.format == Format::Json {
            line.push('}');
            if let Some(f) = fields.first() {
                enc.encode_into(&line, &mut data)
                    .map_err(|c| field_err(f, field::unmappable(c, enc)))?;
            }
        }
        self.frame(&data, out)
    }
}

/// Only `render` produces [`Out::Json`], and only for `format: json`.
fn unreachable_json() -> ! {
    unreachable!("JSON pass-through values are only made for format json")
}

/// RFC 4180: quote a field holding the delimiter, a quote, CR or LF; double inner quotes.
fn csv_quote(s: &str, delim: char, out: &mut String) {
    if s.contains([delim, '"', '\r', '\n']) {
        out.push('"');
        out.push_str(&s.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(s);
    }
}

/// XML text content with the markup characters escaped and every control character XML 1.0
/// allows (tab, LF, CR, DEL, C1) written as a character reference, never raw (a raw line end
/// would be normalised away by the reader). The other C0 characters cannot be in an XML 1.0
/// document at all: the first one is returned.
fn xml_escape(s: &str, out: &mut String) -> Result<(), char> {
    use std::fmt::Write as _;
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' | '\u{7f}'..='\u{9f}' => {
                let _ = write!(out, "&#x{:X};", u32::from(c));
            }
            c if c.is_control() => return Err(c),
            c => out.push(c),
        }
    }
    Ok(())
}
