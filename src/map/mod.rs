//! The map engine: a connector file's mapping keys (SPEC §4) compiled into a [`Mapping`]
//! that turns an [`Event`] into the record bytes a legacy system expects — fixed-width,
//! CSV, JSON lines or SOAP elements, in ASCII, Latin-1 or EBCDIC, optionally laid out by a
//! COBOL copybook, with transforms and compliance rules applied first.
//!
//! Reading order: [`spec`] (the field language as written) → [`copybook`] (layouts) →
//! `compile` here (every problem collected as a `file:line:col` diagnostic) → [`field`]
//! (one field's value pipeline) → `render` here (one record) → [`encoding`] (bytes).
//!
//! Architecture invariant: this module does no I/O after compilation (a copybook named by
//! `layout:` is read while compiling; `cli` reads files for the command line); rendering is
//! a pure function of event and mapping, so a record can be re-made identically on replay.
//!
//! Architecture invariant: a fixed-width record is always exactly [`Mapping::record_len`]
//! bytes plus the line end, or the event is refused with a [`MapError`]; no value is ever
//! silently cut, rounded (decimals never pass through a float) or replaced by `?`.

pub mod cli;
pub mod copybook;
pub mod decimal;
pub mod encoding;
pub mod field;
pub mod spec;
pub mod transform;

use std::borrow::Cow;
use std::path::Path;

use chrono::DateTime;
use chrono::format::StrftimeItems;
use chrono_tz::Tz;
use serde_saphyr::Spanned;

use crate::config::Diagnostic;
use crate::config::connector::{FieldSpec, Fields, LoadedConnector};
use crate::event::{Event, Record};
use decimal::Decimal;
use encoding::Encoding;
use field::{Batch, Field, Kind, Raw};
use spec::{Align, FieldDef, Overflow, Source};
use transform::{Mask, Transforms};

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
    header: Vec<Field>,
    trailer: Vec<Field>,
    encoding: Encoding,
    line_end: String,
    csv_delimiter: char,
    csv_header: bool,
    transforms: Transforms,
    timezone: Tz,
    /// `$sum:FIELD` of header/trailer: (FIELD, index into `fields`).
    sums: Vec<(String, usize)>,
}

/// One value ready for the record syntax.
enum Out<'a> {
    /// Characters (or blank), before layout.
    Text(Option<Cow<'a, str>>),
    /// JSON text kept as sent (JSON format, unmodified fields).
    Json(String),
}

impl Mapping {
    /// Compiles the mapping keys of `conn`; every problem is returned.
    pub fn compile(conn: &LoadedConnector, ctx: &MapContext) -> Result<Mapping, Vec<Diagnostic>> {
        Compiler {
            file: &conn.path,
            errs: Vec::new(),
        }
        .compile(conn, ctx)
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

    /// The line end, as written (before encoding).
    pub fn line_end(&self) -> &str {
        &self.line_end
    }

    /// For `format: fixed`, the bytes of every record without its line end.
    pub fn record_len(&self) -> Option<usize> {
        if self.format != Format::Fixed {
            return None;
        }
        self.fields.iter().map(|f| f.kind.width()).sum()
    }

    /// Makes the record for `event`, line end included, in the target encoding.
    pub fn render(&self, event: &Event) -> Result<Record, MapError> {
        let payload = self
            .transforms
            .apply(&event.payload)
            .map_err(MapError::Compliance)?;
        let json = self.format == Format::Json;
        let mut out = Vec::with_capacity(self.record_len().unwrap_or(64) + 2);
        self.write_record(&self.fields, &mut out, |f| {
            let raw = f.resolve(event, &payload)?;
            if json && f.is_passthrough() {
                match &raw {
                    Raw::Json(v) => return Ok(Out::Json(v.to_string())),
                    Raw::Int(n) => return Ok(Out::Json(n.to_string())),
                    _ => {}
                }
            }
            f.text(&raw, self.timezone).map(Out::Text)
        })?;
        Ok(Record {
            seq: event.seq,
            bytes: out,
        })
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
        line.push_str(&self.line_end);
        self.encoding
            .encode_into(&line, &mut out)
            .map_err(|c| MapError::Field {
                field: "(csv header row)".into(),
                message: field::unmappable(c, self.encoding),
            })?;
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
        out.extend(self.control(&self.header, items, now)?);
        Ok(out)
    }

    /// The control record closing a batch file (`trailer:`): record count, hash totals,
    /// date. Empty when the map has no trailer.
    pub fn batch_trailer(
        &self,
        items: &[(Event, Record)],
        now: DateTime<Tz>,
    ) -> Result<Vec<u8>, MapError> {
        self.control(&self.trailer, items, now)
    }

    fn control(
        &self,
        fields: &[Field],
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
                let payload = self
                    .transforms
                    .apply(&event.payload)
                    .map_err(MapError::Compliance)?;
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
        self.write_record(fields, &mut out, |f| {
            f.text(&f.resolve_control(&batch)?, self.timezone)
                .map(Out::Text)
        })?;
        Ok(out)
    }

    /// Lays `fields` out in the map's record syntax and encoding, line end included.
    fn write_record<'f>(
        &self,
        fields: &'f [Field],
        out: &mut Vec<u8>,
        mut value: impl FnMut(&'f Field) -> Result<Out<'f>, String>,
    ) -> Result<(), MapError> {
        let enc = self.encoding;
        let encode = |s: &str, out: &mut Vec<u8>, f: &Field| {
            enc.encode_into(s, out).map_err(|c| MapError::Field {
                field: f.name.clone(),
                message: field::unmappable(c, enc),
            })
        };
        let mut line = String::new();
        if self.format == Format::Json {
            line.push('{');
        }
        for (i, f) in fields.iter().enumerate() {
            let err = |message: String| MapError::Field {
                field: f.name.clone(),
                message,
            };
            let v = value(f).map_err(err)?;
            match self.format {
                Format::Fixed => {
                    let Out::Text(t) = v else { unreachable_json() };
                    f.write(t.as_deref(), enc, out).map_err(err)?;
                }
                Format::Csv => {
                    let Out::Text(t) = v else { unreachable_json() };
                    if i > 0 {
                        line.push(self.csv_delimiter);
                    }
                    let laid = f.layout_text(t.as_deref()).map_err(err)?;
                    csv_quote(&laid, self.csv_delimiter, &mut line);
                }
                Format::Json => {
                    if i > 0 {
                        line.push(',');
                    }
                    line.push_str(&serde_json::Value::from(f.name.as_str()).to_string());
                    line.push(':');
                    match v {
                        Out::Json(j) => line.push_str(&j),
                        Out::Text(t) => {
                            let laid = f.layout_text(t.as_deref()).map_err(err)?;
                            line.push_str(&serde_json::Value::from(laid.as_ref()).to_string());
                        }
                    }
                }
                Format::Soap => {
                    let Out::Text(t) = v else { unreachable_json() };
                    let laid = f.layout_text(t.as_deref()).map_err(err)?;
                    line.push('<');
                    line.push_str(&f.name);
                    line.push('>');
                    xml_escape(&laid, &mut line);
                    line.push_str("</");
                    line.push_str(&f.name);
                    line.push('>');
                }
            }
            // Characters are encoded field by field so an unmappable one names its field.
            if !line.is_empty() && self.format != Format::Json {
                encode(&line, out, f)?;
                line.clear();
            }
        }
        if self.format == Format::Json {
            line.push('}');
            if let Some(f) = fields.first() {
                encode(&line, out, f)?;
            }
        }
        // The line end is one of "\n", "\r\n", "" (checked by the compiler): always encodable.
        let _ = enc.encode_into(&self.line_end, out);
        Ok(())
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

fn xml_escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
}

fn is_xml_name(s: &str) -> bool {
    let mut cs = s.chars();
    cs.next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && cs.all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !s.to_ascii_lowercase().starts_with("xml")
}

/// Collects every problem of one connector file.
struct Compiler<'a> {
    file: &'a Path,
    errs: Vec<Diagnostic>,
}

/// A sample time for computing how wide a `format:` pattern renders.
fn pattern_width(pattern: &str) -> Option<usize> {
    let items = StrftimeItems::new(pattern).parse().ok()?;
    let t = chrono::NaiveDate::from_ymd_opt(2025, 4, 12)?
        .and_hms_opt(10, 3, 0)?
        .and_utc();
    let mut s = String::new();
    use std::fmt::Write as _;
    write!(s, "{}", t.format_with_items(items.iter())).ok()?;
    Some(s.chars().count())
}

impl Compiler<'_> {
    fn at<T>(&mut self, span: &Spanned<T>, msg: impl Into<String>) {
        self.errs.push(Diagnostic::at(self.file, span, msg));
    }

    fn compile(
        mut self,
        conn: &LoadedConnector,
        ctx: &MapContext,
    ) -> Result<Mapping, Vec<Diagnostic>> {
        let f = &conn.file;
        let format = match &f.format {
            None => Format::Fixed,
            Some(s) => match s.value.trim() {
                "fixed" => Format::Fixed,
                "csv" => Format::Csv,
                "json" => Format::Json,
                "soap" => Format::Soap,
                other => {
                    self.at(
                        s,
                        format!("format {other:?} is not one of fixed, csv, json, soap"),
                    );
                    Format::Fixed
                }
            },
        };
        let overflow = match &f.overflow {
            None => Overflow::Error,
            Some(o) => Overflow::parse(&o.value).unwrap_or_else(|e| {
                self.at(o, e);
                Overflow::Error
            }),
        };
        let (mut encoding, mut line_end) = (
            Encoding::Ascii,
            if format == Format::Soap { "" } else { "\n" }.to_string(),
        );
        if let Some(r) = &f.record {
            if let Some(e) = &r.value.encoding {
                match Encoding::parse(&e.value) {
                    Some(enc) => encoding = enc,
                    None => self.at(
                        e,
                        format!("encoding {:?} is not one of {}", e.value, encoding::NAMES),
                    ),
                }
            }
            if let Some(le) = &r.value.line_end {
                if matches!(le.as_str(), "\n" | "\r\n" | "") {
                    line_end = le.clone();
                } else {
                    self.at(
                        r,
                        format!("record.line_end {le:?} is not \"\\n\", \"\\r\\n\" or \"\""),
                    );
                }
            }
        }
        let (mut csv_delimiter, mut csv_header) = (',', false);
        if let Some(c) = &f.csv {
            if format != Format::Csv {
                self.at(c, "`csv:` options apply only to `format: csv`");
            }
            if let Some(d) = &c.value.delimiter {
                let mut cs = d.chars();
                match (cs.next(), cs.next()) {
                    (Some(ch), None) if !matches!(ch, '"' | '\r' | '\n') => csv_delimiter = ch,
                    _ => self.at(c, format!("csv.delimiter {d:?} must be one character other than a quote or line break")),
                }
            }
            csv_header = c.value.header.unwrap_or(false);
        }

        let layout = f
            .layout
            .as_ref()
            .and_then(|l| self.load_layout(conn, l, format));
        let fields = self.record_fields(conn, format, overflow, layout.as_ref());
        if let (Some(l), Some(cb)) = (&f.layout, &layout) {
            if cb.fields.iter().any(|cf| cf.kind.is_binary()) && !line_end.is_empty() {
                self.at(
                    l,
                    "the copybook has binary (COMP/COMP-3) fields, whose bytes can look like line ends: add `record: {line_end: \"\"}`",
                );
            }
        }
        if format == Format::Soap {
            for fd in &fields {
                if !is_xml_name(&fd.name) {
                    let msg = format!(
                        "field name {:?} is not a valid XML element name for format soap",
                        fd.name
                    );
                    self.errs
                        .push(Diagnostic::new(self.file, fd.pos.0, fd.pos.1, msg));
                }
            }
        }

        let mut sums = Vec::new();
        let header = self.control_fields(f.header.as_ref(), format, overflow, &fields, &mut sums);
        let trailer = self.control_fields(f.trailer.as_ref(), format, overflow, &fields, &mut sums);
        let transforms = self.transforms(conn);

        // Constants and pad characters are checked against the encoding now rather than
        // failing every event.
        for fd in fields.iter().chain(&header).chain(&trailer) {
            let mut probe = Vec::new();
            if let Source::Const(c) = &fd.source {
                if let Err(ch) = encoding.encode_into(c, &mut probe) {
                    let msg = format!(
                        "constant {c:?} has {ch:?}, which {} cannot represent",
                        encoding.name()
                    );
                    self.errs.push(Diagnostic::new(
                        self.file,
                        fd.pos.0,
                        fd.pos.1,
                        format!("field {}: {msg}", fd.name),
                    ));
                }
            }
            if let Kind::Text { pad, .. } = fd.kind {
                if encoding
                    .encode_into(pad.encode_utf8(&mut [0; 4]), &mut probe)
                    .is_err()
                {
                    let msg = format!("pad {pad:?} cannot be written in {}", encoding.name());
                    self.errs.push(Diagnostic::new(
                        self.file,
                        fd.pos.0,
                        fd.pos.1,
                        format!("field {}: {msg}", fd.name),
                    ));
                }
            }
        }
        if !self.errs.is_empty() {
            return Err(self.errs);
        }
        Ok(Mapping {
            events: f.events.clone(),
            format,
            fields,
            header,
            trailer,
            encoding,
            line_end,
            csv_delimiter,
            csv_header,
            transforms,
            timezone: ctx.timezone,
            sums,
        })
    }

    fn load_layout(
        &mut self,
        conn: &LoadedConnector,
        l: &Spanned<String>,
        format: Format,
    ) -> Option<copybook::Copybook> {
        if format != Format::Fixed {
            self.at(l, "`layout:` (a COBOL copybook) needs `format: fixed`");
            return None;
        }
        let path = conn.base_dir().join(&l.value);
        let text = match std::fs::read(&path) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) => {
                self.at(l, format!("cannot read copybook {}: {e}", path.display()));
                return None;
            }
        };
        match copybook::Copybook::parse(&text) {
            Ok(c) => Some(c),
            Err(errs) => {
                for e in errs {
                    self.errs
                        .push(Diagnostic::new(&path, e.line as u64, 1, e.message));
                }
                None
            }
        }
    }

    /// Parses one field definition; problems are recorded at the definition.
    fn def(&mut self, spec: &Spanned<FieldSpec>) -> Option<FieldDef> {
        let r = match &spec.value {
            FieldSpec::Short(s) => FieldDef::parse_short_at(s).map_err(|errs| {
                // Point at the modifier when the value sits on one line, plain or quoted
                // without escapes (its span is then the text, or the text plus two quotes).
                let (line, col) = (spec.referenced.line(), spec.referenced.column());
                let span_len = spec.referenced.span().len();
                let n = s.chars().count() as u64;
                let shift = if span_len == n {
                    Some(0)
                } else if span_len == n + 2 {
                    Some(1)
                } else {
                    None
                };
                errs.into_iter()
                    .map(|(at, m)| match shift.filter(|_| !s.contains('\n')) {
                        Some(q) => Diagnostic::new(self.file, line, col + q + at as u64, m),
                        None => Diagnostic::new(self.file, line, col, m),
                    })
                    .collect::<Vec<_>>()
            }),
            FieldSpec::Long(l) => FieldDef::from_long(l).map_err(|errs| {
                errs.into_iter()
                    .map(|m| Diagnostic::at(self.file, spec, m))
                    .collect()
            }),
        };
        match r {
            Ok(d) => Some(d),
            Err(diags) => {
                self.errs.extend(diags);
                None
            }
        }
    }

    fn record_fields(
        &mut self,
        conn: &LoadedConnector,
        format: Format,
        overflow: Overflow,
        layout: Option<&copybook::Copybook>,
    ) -> Vec<Field> {
        let Some(Fields(entries)) = &conn.file.fields else {
            self.at(&conn.file.target, "the map has no `fields:`; list the record's fields, e.g. `PERMIT_ID: id | width:10`");
            return Vec::new();
        };
        if entries.is_empty() {
            self.at(
                &conn.file.target,
                "`fields:` is empty; list the record's fields, e.g. `PERMIT_ID: id | width:10`",
            );
        }
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        let mut by_name = std::collections::HashMap::new();
        for (name, spec) in entries {
            if !seen.insert(name.value.clone()) {
                self.at(name, format!("field {} is defined twice", name.value));
                continue;
            }
            let Some(def) = self.def(spec) else { continue };
            if let Some(Source::Path(p)) = &def.source {
                if p.contains(&spec::PathSeg::Each) {
                    self.at(spec, "`[*]` (every element) is for transform and compliance paths; a field takes one value, e.g. `items[0].code`");
                    continue;
                }
            }
            if let Some(src) = &def.source {
                if src.is_control() {
                    self.at(spec, "$count, $sum, $date, $first_seq and $last_seq belong in `header:` / `trailer:`");
                    continue;
                }
            }
            if let Some(cb) = layout {
                match cb
                    .fields
                    .iter()
                    .find(|cf| !cf.filler && cf.name == name.value)
                {
                    Some(cf) => {
                        if let Some(f) = self.build(name, spec, def, format, overflow, Some(cf)) {
                            by_name.insert(name.value.clone(), f);
                        }
                    }
                    None => {
                        let hint = cb
                            .suggest(&name.value)
                            .map(|s| format!(" (did you mean {s}?)"))
                            .unwrap_or_default();
                        self.at(
                            name,
                            format!("{} is not a field of the copybook{hint}", name.value),
                        );
                    }
                }
            } else if let Some(f) = self.build(name, spec, def, format, overflow, None) {
                out.push(f);
            }
        }
        if let Some(cb) = layout {
            // Copybook order; FILLER and unmapped fields are blank (spaces, or zeros if numeric).
            for cf in &cb.fields {
                match by_name.remove(&cf.name) {
                    Some(f) if !cf.filler => out.push(f),
                    _ => out.push(Field::plain(&cf.name, Source::Blank, cf.kind.clone())),
                }
            }
        }
        out
    }

    fn build(
        &mut self,
        name: &Spanned<String>,
        spec: &Spanned<FieldSpec>,
        def: FieldDef,
        format: Format,
        overflow: Overflow,
        from_layout: Option<&copybook::CopyField>,
    ) -> Option<Field> {
        let n = &name.value;
        let before = self.errs.len();
        let kind = if let Some(cf) = from_layout {
            let w = cf.kind.width();
            if def.width.is_some() && def.width != w {
                self.at(spec, format!("width:{} disagrees with the copybook: {n} is PIC {} ({} bytes); remove the width", def.width.unwrap_or(0), cf.pic, w.unwrap_or(0)));
            }
            if let Some((pic, _)) = def.number {
                self.at(
                    spec,
                    format!(
                        "number:{pic:?} is not needed: the copybook gives {n} the picture {}",
                        cf.pic
                    ),
                );
            }
            match &cf.kind {
                Kind::Text { width, align, pad } => Kind::Text {
                    width: *width,
                    align: def.align.unwrap_or(*align),
                    pad: def.pad.unwrap_or(*pad),
                },
                other => {
                    if def.align.is_some() || def.pad.is_some() {
                        self.at(spec, format!("{n} is numeric (PIC {}): it is always zero-filled and right-aligned; remove align/pad", cf.pic));
                    }
                    other.clone()
                }
            }
        } else if let Some((pic, sign)) = def.number {
            let kind = Kind::Zoned { pic, sign };
            if def.width.is_some() && def.width != kind.width() {
                self.at(spec, format!("width:{} disagrees with the number picture, which is {} characters; remove the width", def.width.unwrap_or(0), kind.width().unwrap_or(0)));
            }
            if def.align.is_some() || def.pad.is_some() {
                self.at(
                    spec,
                    "a number picture is always zero-padded and right-aligned; remove align/pad",
                );
            }
            kind
        } else {
            if format == Format::Fixed && def.width.is_none() {
                let suggested = def
                    .format
                    .as_deref()
                    .and_then(pattern_width)
                    .map_or("N".to_string(), |w| w.to_string());
                let shown = match &spec.value {
                    FieldSpec::Short(s) => format!("{n}: {} | width:{suggested}", s.trim()),
                    FieldSpec::Long(_) => format!("width: {suggested} in {n}'s definition"),
                };
                self.at(spec, format!(
                    "field {n} has no width, and a fixed-width record needs one for every field: write `{shown}`{}",
                    if suggested == "N" { " (N = the column width the legacy system expects)" } else { "" }
                ));
            }
            Kind::Text {
                width: def.width,
                align: def.align.unwrap_or(Align::Left),
                pad: def.pad.unwrap_or(' '),
            }
        };
        let date = def.format.as_ref().and_then(|p| {
            StrftimeItems::new(p)
                .parse_to_owned()
                .ok()
                .map(|items| (items, p.clone()))
        });
        if self.errs.len() > before {
            return None;
        }
        Some(Field {
            name: n.clone(),
            // A definition without a source was refused by FieldDef.
            source: def.source.unwrap_or(Source::Blank),
            default: def.default,
            trim: def.trim,
            map: def.map,
            date,
            case: def.case,
            kind,
            truncate: def.overflow.unwrap_or(overflow) == Overflow::Truncate,
            pos: (name.referenced.line(), name.referenced.column()),
        })
    }

    fn control_fields(
        &mut self,
        fields: Option<&Fields>,
        format: Format,
        overflow: Overflow,
        record: &[Field],
        sums: &mut Vec<(String, usize)>,
    ) -> Vec<Field> {
        let Some(Fields(entries)) = fields else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (name, spec) in entries {
            let Some(def) = self.def(spec) else { continue };
            match &def.source {
                Some(Source::Sum(target)) => match record.iter().position(|f| &f.name == target) {
                    Some(i) => {
                        if !sums.iter().any(|(n, _)| n == target) {
                            sums.push((target.clone(), i));
                        }
                    }
                    None => self.at(
                        spec,
                        format!("$sum:{target}: {target} is not a field of this map"),
                    ),
                },
                Some(s) if !s.is_control() && !matches!(s, Source::Const(_)) => {
                    self.at(spec, "header/trailer fields take quoted constants and $count, $sum:FIELD, $date, $first_seq, $last_seq");
                    continue;
                }
                _ => {}
            }
            if let Some(f) = self.build(name, spec, def, format, overflow, None) {
                out.push(f);
            }
        }
        out
    }

    fn transforms(&mut self, conn: &LoadedConnector) -> Transforms {
        let mut t = Transforms::default();
        if let Some(tr) = &conn.file.transform {
            for d in &tr.value.drop_fields {
                match transform::path(d) {
                    Ok(p) => t.drop.push(p),
                    Err(e) => self.at(tr, format!("transform.drop_fields: {e}")),
                }
            }
            for (k, m) in &tr.value.mask {
                match (transform::path(k), Mask::parse(m)) {
                    (Ok(p), Ok(m)) => t.mask.push((p, m)),
                    (Err(e), _) | (_, Err(e)) => self.at(tr, format!("transform.mask: {e}")),
                }
            }
        }
        if let Some(c) = &conn.file.compliance {
            for d in &c.value.deny_fields {
                match transform::path(d) {
                    Ok(p) => t.deny.push((d.clone(), p)),
                    Err(e) => self.at(c, format!("compliance.deny_fields: {e}")),
                }
            }
        }
        t
    }
}
