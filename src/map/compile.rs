//! Compiling a connector file's mapping keys into a [`Mapping`]: every problem collected as
//! a `file:line:col` diagnostic that says what to write instead.
//!
//! Invariant: one mistake gives one message. A copybook that cannot be read or parsed gives
//! its own errors only (the fields naming it are not also reported as lacking widths); a
//! field whose definition is wrong is not checked further.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use chrono::format::StrftimeItems;
use serde_saphyr::Spanned;

use super::copybook::{CondValue, CopyField, Copybook, Figurative, Literal};
use super::decimal::Decimal;
use super::decode::Template;
use super::encoding::{self, Encoding};
use super::field::{self, Field, Kind};
use super::float::FloatFormat;
use super::frame::{Framing, MAX_RDW_DATA};
use super::layout::{Match, Plan, PlanAlt, PlanSet, PlanTable, Test};
use super::spec::{self, Align, FieldDef, Overflow, Source};
use super::transform::{self, Mask, Transforms};
use super::{Format, MapContext, Mapping};
use crate::config::Diagnostic;
use crate::config::connector::{FieldSpec, Fields, LayoutWhen, LoadedConnector, WhenRule};

/// Compiles `conn`. With `layout_only` (a decode-only layout), a file with `layout:` and
/// no `fields:` reads every copybook field under its own name (what a pickup source
/// decodes records with).
pub(super) fn compile(
    conn: &LoadedConnector,
    ctx: &MapContext,
    layout_only: bool,
) -> Result<Mapping, Vec<Diagnostic>> {
    Compiler {
        file: &conn.path,
        errs: Vec::new(),
        layout_only,
    }
    .compile(conn, ctx)
}

fn is_xml_name(s: &str) -> bool {
    let mut cs = s.chars();
    cs.next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && cs.all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !s.to_ascii_lowercase().starts_with("xml")
}

/// A sample time for computing how wide a `format:` pattern renders.
pub(super) fn pattern_width(pattern: &str) -> Option<usize> {
    let items = StrftimeItems::new(pattern).parse().ok()?;
    let t = chrono::NaiveDate::from_ymd_opt(2025, 4, 12)?
        .and_hms_opt(10, 3, 0)?
        .and_utc();
    let mut s = String::new();
    use std::fmt::Write as _;
    write!(s, "{}", t.format_with_items(items.iter())).ok()?;
    Some(s.chars().count())
}

/// Collects every problem of one connector file.
struct Compiler<'a> {
    file: &'a Path,
    errs: Vec<Diagnostic>,
    layout_only: bool,
}

/// `record:` as compiled.
struct RecordSettings {
    encoding: Encoding,
    line_end: String,
    /// `fixed` / `rdw` / `lines`, before the record length is known.
    framing: Frame,
    ieee: bool,
    little: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Frame {
    Fixed,
    Rdw { bdw: bool },
    Lines,
}

/// What compiling `header:` / `trailer:` needs from the record.
struct ControlCtx<'a> {
    format: Format,
    overflow: Overflow,
    record: &'a [Field],
    layout: Option<&'a Layout>,
    plan: &'a Plan,
    settings: &'a RecordSettings,
}

/// A loaded copybook and where it came from.
struct Layout {
    cb: Copybook,
    path: PathBuf,
}

impl Compiler<'_> {
    fn at<T>(&mut self, span: &Spanned<T>, msg: impl Into<String>) {
        self.errs.push(Diagnostic::at(self.file, span, msg));
    }

    fn at_field(&mut self, f: &Field, msg: impl Into<String>) {
        self.errs
            .push(Diagnostic::new(self.file, f.pos.0, f.pos.1, msg));
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
        let settings = self.record(conn, format);
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

        let mut layout_failed = false;
        let layout = f.layout.as_ref().and_then(|l| {
            let r = self.load_layout(conn, l, format);
            layout_failed = r.is_none();
            r
        });
        let fields = if layout_failed {
            // The copybook's own errors are the story; still check the definitions' syntax.
            self.defs_only(conn);
            Vec::new()
        } else {
            self.record_fields(conn, format, overflow, layout.as_ref(), &settings)
        };
        let plan = match &layout {
            Some(l) => self.plan(l, &fields, f.layout_when.as_ref(), settings.encoding),
            None => {
                if let Some(w) = &f.layout_when {
                    self.at(w, "`layout_when:` chooses between a copybook's REDEFINES alternatives; it needs `layout:`");
                }
                Plan::flat(&fields)
            }
        };
        let framing = self.framing(conn, format, &settings, &plan, &fields, layout.is_some());
        if format == Format::Soap {
            for fd in &fields {
                if !is_xml_name(&fd.name) {
                    let msg = format!(
                        "field name {:?} is not a valid XML element name for format soap",
                        fd.name
                    );
                    self.at_field(fd, msg);
                }
            }
        }

        let mut sums = Vec::new();
        let cc = ControlCtx {
            format,
            overflow,
            record: &fields,
            layout: layout.as_ref(),
            plan: &plan,
            settings: &settings,
        };
        let (header, header_plan) = self.control(f.header.as_ref(), &cc, &mut sums);
        let (trailer, trailer_plan) = self.control(f.trailer.as_ref(), &cc, &mut sums);
        let transforms = self.transforms(conn);
        self.check_constants(
            fields.iter().chain(&header).chain(&trailer),
            settings.encoding,
        );
        if !self.errs.is_empty() {
            return Err(self.errs);
        }
        let lookups = field::lookup_order(&fields);
        let event_type = f
            .events
            .as_ref()
            .and_then(|e| e.first())
            .map_or("RECORD", String::as_str);
        Ok(Mapping {
            events: f.events.clone(),
            format,
            fields_view: Template::fields(&fields),
            field_keys: super::decode::FieldsJson::keys(&fields),
            event_view: Template::event(&fields, event_type),
            fields,
            plan,
            header,
            trailer,
            header_plan,
            trailer_plan,
            encoding: settings.encoding,
            line_end: settings.line_end,
            framing,
            csv_delimiter,
            csv_header,
            transforms,
            timezone: ctx.timezone,
            sums,
            lookups,
        })
    }

    /// `record:`: encoding, framing, line end, float format and byte order.
    fn record(&mut self, conn: &LoadedConnector, format: Format) -> RecordSettings {
        let mut s = RecordSettings {
            // JSON is UTF-8 between systems (RFC 8259 §8.1); records default to ASCII.
            encoding: if format == Format::Json {
                Encoding::Utf8
            } else {
                Encoding::Ascii
            },
            line_end: if format == Format::Soap { "" } else { "\n" }.to_string(),
            framing: Frame::Lines,
            ieee: false,
            little: false,
        };
        let Some(r) = &conn.file.record else {
            return s;
        };
        let spec = &r.value;
        if let Some(e) = &spec.encoding {
            match Encoding::parse(&e.value) {
                Some(Encoding::Utf8) if format == Format::Fixed => self.at(
                    e,
                    "encoding utf-8 is not for fixed-width records (their widths count bytes, and a UTF-8 character may take several): use latin1 or an EBCDIC code page",
                ),
                Some(enc) if format == Format::Json && enc != Encoding::Utf8 => self.at(
                    e,
                    format!(
                        "format json is always UTF-8 (RFC 8259), not {}: remove record.encoding",
                        enc.name()
                    ),
                ),
                Some(enc) => s.encoding = enc,
                None => self.at(
                    e,
                    format!("encoding {:?} is not one of {}", e.value, encoding::NAMES),
                ),
            }
        }
        if let Some(le) = &spec.line_end {
            if matches!(le.as_str(), "\n" | "\r\n" | "") {
                s.line_end = le.clone();
            } else {
                self.at(
                    r,
                    format!("record.line_end {le:?} is not \"\\n\", \"\\r\\n\" or \"\""),
                );
            }
        }
        let bdw = spec.bdw.unwrap_or(false);
        s.framing = match spec
            .framing
            .as_ref()
            .map(|f| (f, f.value.trim().to_ascii_lowercase()))
        {
            None if s.line_end.is_empty() && format == Format::Fixed => Frame::Fixed,
            None => Frame::Lines,
            Some((_, v)) if v == "fixed" => Frame::Fixed,
            Some((_, v)) if v == "rdw" => Frame::Rdw { bdw },
            Some((_, v)) if v == "lines" => Frame::Lines,
            Some((sp, v)) => {
                self.at(sp, format!("record.framing {v:?} is not one of fixed (RECFM=F/FB), rdw (RECFM=V/VB: a record descriptor word before each record), lines"));
                Frame::Lines
            }
        };
        if let Some(fr) = &spec.framing {
            match s.framing {
                Frame::Fixed | Frame::Rdw { .. } => {
                    if spec.line_end.as_ref().is_some_and(|l| !l.is_empty()) {
                        self.at(
                            fr,
                            "records framed `fixed` or `rdw` have no line end: remove `line_end`",
                        );
                    }
                    s.line_end.clear();
                    if s.framing == Frame::Fixed && format != Format::Fixed {
                        self.at(
                            fr,
                            "`framing: fixed` needs `format: fixed`; use `lines` or `rdw`",
                        );
                    }
                }
                Frame::Lines if s.line_end.is_empty() => {
                    self.at(
                        fr,
                        "`framing: lines` needs a line end: `line_end: \"\\n\"` or `\"\\r\\n\"`",
                    );
                }
                Frame::Lines => {}
            }
        }
        if bdw && !matches!(s.framing, Frame::Rdw { .. }) {
            self.at(
                r,
                "`bdw: true` (block descriptor words) goes with `framing: rdw`",
            );
        }
        if let Some(fl) = &spec.floats {
            match fl.value.trim().to_ascii_lowercase().as_str() {
                "hfp" | "ibm" | "hex" => s.ieee = false,
                "ieee" => s.ieee = true,
                other => self.at(fl, format!("record.floats {other:?} is not `hfp` (IBM hexadecimal, the z/OS default) or `ieee`")),
            }
        }
        if let Some(bo) = &spec.byte_order {
            match bo.value.trim().to_ascii_lowercase().as_str() {
                "big" | "big-endian" => s.little = false,
                "little" | "little-endian" => s.little = true,
                other => self.at(bo, format!("record.byte_order {other:?} is not `big` (z/OS) or `little` (a COBOL compiler on x86)")),
            }
        }
        s
    }

    /// The framing, now that the layout's length is known; binary bytes and line ends do
    /// not mix.
    fn framing(
        &mut self,
        conn: &LoadedConnector,
        format: Format,
        s: &RecordSettings,
        plan: &Plan,
        fields: &[Field],
        copybook: bool,
    ) -> Framing {
        if s.framing == Frame::Lines
            && !s.line_end.is_empty()
            && fields.iter().any(|f| f.kind.is_binary())
        {
            let msg = "the copybook has binary (COMP, COMP-3, COMP-5, COMP-1/2) or national fields, whose bytes can look like line ends: add `record: {line_end: \"\"}` (fixed-length records) or `record: {framing: rdw}`";
            match (&conn.file.layout, copybook) {
                (Some(l), true) => self.at(l, msg),
                _ => self.at(&conn.file.target, msg),
            }
        }
        if format == Format::Fixed
            && matches!(s.framing, Frame::Rdw { .. })
            && plan.len > MAX_RDW_DATA
        {
            let msg = format!(
                "the record is up to {} bytes, more than an RDW can describe ({MAX_RDW_DATA})",
                plan.len
            );
            self.at(&conn.file.target, msg);
        }
        match s.framing {
            Frame::Fixed => Framing::Fixed(plan.len),
            Frame::Rdw { bdw } => Framing::Rdw { bdw },
            Frame::Lines => {
                let mut end = Vec::new();
                // The line end is one of "\n", "\r\n", "": in every encoding ESS knows.
                let _ = s.encoding.encode_into(&s.line_end, &mut end);
                Framing::Lines(end)
            }
        }
    }

    fn load_layout(
        &mut self,
        conn: &LoadedConnector,
        l: &Spanned<String>,
        format: Format,
    ) -> Option<Layout> {
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
        match Copybook::parse(&text) {
            Ok(cb) => Some(Layout { cb, path }),
            Err(errs) => {
                for e in errs {
                    self.errs.push(Diagnostic::new(
                        &path,
                        e.line as u64,
                        e.col as u64,
                        e.message,
                    ));
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

    /// Only the definitions' own syntax (the layout they refer to failed).
    fn defs_only(&mut self, conn: &LoadedConnector) {
        if let Some(Fields(entries)) = &conn.file.fields {
            for (_, spec) in entries {
                self.def(spec);
            }
        }
    }

    fn record_fields(
        &mut self,
        conn: &LoadedConnector,
        format: Format,
        overflow: Overflow,
        layout: Option<&Layout>,
        s: &RecordSettings,
    ) -> Vec<Field> {
        let entries = match (&conn.file.fields, layout) {
            (Some(Fields(entries)), _) => entries.as_slice(),
            (None, Some(l)) if self.layout_only => return self.identity_fields(l, s),
            (None, _) => {
                self.at(&conn.file.target, "the map has no `fields:`; list the record's fields, e.g. `PERMIT_ID: id | width:10`");
                return Vec::new();
            }
        };
        if entries.is_empty() {
            self.at(
                &conn.file.target,
                "`fields:` is empty; list the record's fields, e.g. `PERMIT_ID: id | width:10`",
            );
        }
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        let mut by_name = HashMap::new();
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
            if def.source.as_ref().is_some_and(Source::is_control) {
                self.at(spec, "$count, $sum, $date, $first_seq and $last_seq belong in `header:` / `trailer:`");
                continue;
            }
            match layout {
                Some(l) => match l
                    .cb
                    .fields
                    .iter()
                    .position(|cf| !cf.filler && cf.name == name.value)
                {
                    Some(i) => {
                        let cf = &l.cb.fields[i];
                        if let Some(f) =
                            self.build(name, spec, def, format, overflow, Some((cf, s)))
                        {
                            by_name.insert(i, f);
                        }
                    }
                    None => {
                        let hint =
                            l.cb.suggest(&name.value)
                                .map(|s| format!(" (did you mean {s}?)"))
                                .unwrap_or_default();
                        self.at(
                            name,
                            format!("{} is not a field of the copybook{hint}", name.value),
                        );
                    }
                },
                None => {
                    if let Some(f) = self.build(name, spec, def, format, overflow, None) {
                        out.push(f);
                    }
                }
            }
        }
        if let Some(l) = layout {
            // Copybook order; FILLER and unmapped fields take their VALUE, else are blank
            // (spaces, or zeros if numeric).
            for (i, cf) in l.cb.fields.iter().enumerate() {
                match by_name.remove(&i) {
                    Some(f) => out.push(f),
                    None => out.push(self.unmapped(cf, s, l)),
                }
            }
        }
        out
    }

    /// Every copybook field read under its own name.
    fn identity_fields(&mut self, l: &Layout, s: &RecordSettings) -> Vec<Field> {
        l.cb.fields
            .iter()
            .map(|cf| {
                if cf.filler {
                    return self.unmapped(cf, s, l);
                }
                let kind = record_kind(&cf.kind, s);
                let path = vec![spec::PathSeg::Key(cf.name.clone())];
                Field::plain(&cf.name, Source::Path(path), kind)
            })
            .collect()
    }

    /// An unmapped copybook field: its VALUE, else blank.
    fn unmapped(&mut self, cf: &CopyField, s: &RecordSettings, l: &Layout) -> Field {
        let kind = record_kind(&cf.kind, s);
        let mut f = Field::plain(&cf.name, Source::Blank, kind);
        if let Some(v) = &cf.value {
            match value_source(v, &f.kind, s.encoding) {
                Ok((src, fill)) => {
                    f.source = src;
                    f.fill = fill;
                    // A constant that does not fit is the copybook's mistake: say so now.
                    if let Source::Const(c) = &f.source {
                        let mut probe = Vec::new();
                        if let Err(e) = f.write(Some(c), s.encoding, &mut probe) {
                            self.errs.push(Diagnostic::new(
                                &l.path,
                                cf.line as u64,
                                1,
                                format!("{}: VALUE {c:?}: {e}", cf.name),
                            ));
                        }
                    }
                }
                Err(e) => self.errs.push(Diagnostic::new(
                    &l.path,
                    cf.line as u64,
                    1,
                    format!("{}: {e}", cf.name),
                )),
            }
        }
        f
    }

    fn build(
        &mut self,
        name: &Spanned<String>,
        spec: &Spanned<FieldSpec>,
        def: FieldDef,
        format: Format,
        overflow: Overflow,
        from_layout: Option<(&CopyField, &RecordSettings)>,
    ) -> Option<Field> {
        let n = &name.value;
        let before = self.errs.len();
        let mut fill = None;
        let mut def = def;
        let kind = if let Some((cf, s)) = from_layout {
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
            // `$88:NAME` wherever a value of this field is written.
            let cond_value = |c: &str, this: &mut Self| -> Option<Literal> {
                match cf
                    .conditions
                    .iter()
                    .find(|k| k.name.eq_ignore_ascii_case(c))
                {
                    Some(k) => Some(match &k.values[0] {
                        CondValue::One(v) | CondValue::Range(v, _) => v.clone(),
                    }),
                    None => {
                        let own: Vec<&str> =
                            cf.conditions.iter().map(|k| k.name.as_str()).collect();
                        let hint = if own.is_empty() {
                            format!("{n} has no level-88 conditions")
                        } else {
                            format!("{n}'s conditions are {}", own.join(", "))
                        };
                        this.at(spec, format!("$88:{c} is not a condition of {n}: {hint}"));
                        None
                    }
                }
            };
            let kind = record_kind(&cf.kind, s);
            if let Some(Source::Cond(c)) = &def.source {
                if let Some(lit) = cond_value(c, self) {
                    match value_source(&lit, &kind, s.encoding) {
                        Ok((src, f)) => {
                            def.source = Some(src);
                            fill = f;
                        }
                        Err(e) => self.at(spec, format!("$88:{c}: {e}")),
                    }
                }
            }
            let as_text = |lit: Literal| {
                match lit {
                Literal::Text(t) | Literal::Number(t) => Ok(t),
                Literal::Figurative(Figurative::Spaces) => Ok(String::new()),
                Literal::Figurative(Figurative::Zeros) => Ok("0".into()),
                _ => Err("a HIGH-VALUES, LOW-VALUES, hex or ALL value cannot be a `map:` or `default:` value".to_string()),
            }
            };
            if let Some(map) = &mut def.map {
                for (_, v) in map.iter_mut() {
                    if let Some(c) = v.strip_prefix("$88:") {
                        if let Some(lit) = cond_value(c.trim(), self) {
                            match as_text(lit) {
                                Ok(t) => *v = t,
                                Err(e) => self.at(spec, e),
                            }
                        }
                    }
                }
            }
            if let Some(c) = def.default.as_deref().and_then(|d| d.strip_prefix("$88:")) {
                if let Some(lit) = cond_value(c.trim(), self) {
                    match as_text(lit) {
                        Ok(t) => def.default = Some(t),
                        Err(e) => self.at(spec, e),
                    }
                }
            }
            match kind {
                Kind::Text { width, align, pad } => Kind::Text {
                    width,
                    align: def.align.unwrap_or(align),
                    pad: def.pad.unwrap_or(pad),
                },
                Kind::National { chars, align } => {
                    if def.pad.is_some() {
                        self.at(
                            spec,
                            format!(
                                "{n} is national (PIC {}): it is padded with spaces; remove pad",
                                cf.pic
                            ),
                        );
                    }
                    Kind::National {
                        chars,
                        align: def.align.unwrap_or(align),
                    }
                }
                other => {
                    if def.align.is_some() || def.pad.is_some() {
                        self.at(spec, format!("{n} is numeric (PIC {}): it is always zero-filled and right-aligned; remove align/pad", cf.pic));
                    }
                    other
                }
            }
        } else if let Some((pic, sign)) = def.number {
            let kind = Kind::Zoned {
                pic,
                sign,
                blank_zero: false,
            };
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
            if let Some(Source::Cond(c)) = &def.source {
                self.at(
                    spec,
                    format!("$88:{c} names a copybook condition; it needs `layout:` (a copybook)"),
                );
            }
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
        if def.count && !kind.is_numeric() && !matches!(kind, Kind::Text { .. }) {
            self.at(
                spec,
                format!("`count` writes a number; {n} cannot hold one"),
            );
        }
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
            count: def.count,
            fill,
            pos: (name.referenced.line(), name.referenced.column()),
            control: def.control.unwrap_or_default(),
        })
    }

    /// The copybook's tree with each REDEFINES set's choice: `layout_when` rules, else the
    /// one alternative the map names, else the first.
    fn plan(
        &mut self,
        l: &Layout,
        fields: &[Field],
        when: Option<&Spanned<LayoutWhen>>,
        enc: Encoding,
    ) -> Plan {
        let cb = &l.cb;
        let mut sets: Vec<PlanSet> = cb
            .sets
            .iter()
            .map(|s| PlanSet {
                alts: s
                    .alts
                    .iter()
                    .map(|a| PlanAlt {
                        name: a.name.clone(),
                        nodes: a.nodes.clone(),
                        len: a.len,
                        rule: Vec::new(),
                    })
                    .collect(),
                width: s.width,
                records: s.records,
                fixed: None,
            })
            .collect();
        // Fields that could not be built were reported; rules over them would only repeat it.
        let when = when.filter(|_| fields.len() == cb.fields.len());
        if let Some(w) = when {
            if cb.sets.is_empty() {
                self.at(w, "the copybook has no REDEFINES and one 01 record: there is nothing for `layout_when:` to choose; remove it");
            }
            let mut named = std::collections::HashSet::new();
            for (alt, rule) in &w.value.0 {
                let Some((s, a)) = cb.alternative(&alt.value) else {
                    let names: Vec<&str> = cb
                        .sets
                        .iter()
                        .flat_map(|s| s.alts.iter().map(|a| a.name.as_str()))
                        .collect();
                    self.at(alt, format!("{} is not a REDEFINES alternative or 01 record of the copybook; they are {}", alt.value, names.join(", ")));
                    continue;
                };
                if !named.insert((s, a)) {
                    self.at(alt, format!("{} has two rules", alt.value));
                    continue;
                }
                if let Some(tests) = self.rule(cb, fields, rule, enc) {
                    sets[s].alts[a].rule = tests;
                }
            }
        }
        let layout_only = self.layout_only;
        let mapped =
            |s: usize, a: usize| {
                !layout_only
                    && cb.fields.iter().zip(fields).any(|(cf, f)| {
                        cf.alts.contains(&(s, a)) && !matches!(f.source, Source::Blank)
                    })
            };
        let layout_span = when.map(|w| (w.referenced.line(), w.referenced.column()));
        for (s, set) in sets.iter_mut().enumerate() {
            let with_rules = set.alts.iter().any(|a| !a.rule.is_empty());
            let used: Vec<usize> = (0..set.alts.len()).filter(|&a| mapped(s, a)).collect();
            if with_rules {
                for &a in &used {
                    if set.alts[a].rule.is_empty() {
                        let msg = format!(
                            "fields of {} are mapped, but `layout_when:` has no rule for {}: add one",
                            set.alts[a].name, set.alts[a].name
                        );
                        let (line, col) = layout_span.unwrap_or((1, 1));
                        self.errs.push(Diagnostic::new(self.file, line, col, msg));
                    }
                }
                continue;
            }
            if used.len() > 1 {
                let names: Vec<&str> = used.iter().map(|&a| set.alts[a].name.as_str()).collect();
                let msg = format!(
                    "fields of {} are mapped, and they share the same bytes (REDEFINES, line {}): add `layout_when:` to say which record is which, e.g. `layout_when: {{{}: {{REC-TYPE: \"H\"}}}}`",
                    names.join(" and "),
                    cb.sets[s].line,
                    names[0]
                );
                self.at_field(
                    &fields[cb
                        .fields
                        .iter()
                        .position(|cf| cf.alts.contains(&(s, used[1])))
                        .unwrap_or(0)],
                    msg,
                );
            }
            set.fixed = Some(used.first().copied().unwrap_or(0));
        }
        let tables = cb
            .tables
            .iter()
            .map(|t| PlanTable {
                name: t.name.clone(),
                object: t.object,
                min: t.min,
                max: t.max,
                elems: t.elems.clone(),
            })
            .collect();
        Plan {
            nodes: cb.nodes.clone(),
            sets,
            tables,
            len: cb.len,
            min_len: cb.min_len,
        }
    }

    /// One `layout_when` rule into tests on record bytes.
    fn rule(
        &mut self,
        cb: &Copybook,
        fields: &[Field],
        rule: &Spanned<WhenRule>,
        enc: Encoding,
    ) -> Option<Vec<Test>> {
        let before = self.errs.len();
        let mut tests = Vec::new();
        let mut test_of = |this: &mut Self, idx: usize, values: Vec<Match>| {
            let cf = &cb.fields[idx];
            if !cf.fixed_offset {
                this.at(rule, format!("{} sits after a variable-length table, so it has no fixed position to test; test a field before the table", cf.name));
                return;
            }
            tests.push(Test {
                field: idx,
                offset: cf.offset,
                values,
            });
        };
        match &rule.value {
            WhenRule::Condition(c) => {
                let c = c.trim().strip_prefix("$88:").unwrap_or(c.trim());
                match cb.condition(c) {
                    Some((idx, cond)) => {
                        let values = self.cond_matches(&cond.values, &fields[idx], enc, rule);
                        test_of(self, idx, values);
                    }
                    None => self.at(rule, format!("{c} is not a level-88 condition of the copybook; write `{{FIELD: value}}` or a condition name")),
                }
            }
            WhenRule::Fields(list) => {
                if list.is_empty() {
                    self.at(rule, "an empty rule; write `{FIELD: value}`");
                }
                for (name, values) in list {
                    let Some(idx) = cb.field(name) else {
                        let hint = cb
                            .suggest(name)
                            .map(|s| format!(" (did you mean {s}?)"))
                            .unwrap_or_default();
                        self.at(rule, format!("{name} is not a field of the copybook{hint}"));
                        continue;
                    };
                    let mut m = Vec::new();
                    for v in values {
                        match v.trim().strip_prefix("$88:") {
                            Some(c) => match cb.fields[idx]
                                .conditions
                                .iter()
                                .find(|k| k.name.eq_ignore_ascii_case(c.trim()))
                            {
                                Some(k) => {
                                    m.extend(self.cond_matches(&k.values, &fields[idx], enc, rule))
                                }
                                None => {
                                    self.at(rule, format!("$88:{c} is not a condition of {name}"))
                                }
                            },
                            None => {
                                match layout_bytes(&fields[idx], &Literal::Text(v.clone()), enc) {
                                    Ok(b) => m.push(Match::Bytes(b)),
                                    Err(e) => self.at(rule, format!("layout_when {name}: {e}")),
                                }
                            }
                        }
                    }
                    test_of(self, idx, m);
                }
            }
        }
        (self.errs.len() == before).then_some(tests)
    }

    fn cond_matches(
        &mut self,
        values: &[CondValue],
        f: &Field,
        enc: Encoding,
        at: &Spanned<WhenRule>,
    ) -> Vec<Match> {
        let mut out = Vec::new();
        for v in values {
            match v {
                CondValue::One(lit) => match layout_bytes(f, lit, enc) {
                    Ok(b) => out.push(Match::Bytes(b)),
                    Err(e) => self.at(at, format!("{}: {e}", f.name)),
                },
                CondValue::Range(lo, hi) => match (lo, hi) {
                    (Literal::Number(a), Literal::Number(b)) if f.kind.is_numeric() => {
                        match (Decimal::parse(a), Decimal::parse(b)) {
                            (Ok(a), Ok(b)) => out.push(Match::Range(a, b)),
                            _ => self.at(
                                at,
                                format!("{}: a THRU range of numbers is not readable", f.name),
                            ),
                        }
                    }
                    _ => self.at(
                        at,
                        format!("{}: THRU ranges are supported for numbers only", f.name),
                    ),
                },
            }
        }
        out
    }

    /// `header:` / `trailer:`. When a copybook lays the records out and the control fields
    /// are copybook fields, the control record is laid out by the record type they belong
    /// to (the header record of a header/detail/trailer copybook); else its fields are
    /// laid out in order, each with its own width.
    fn control(
        &mut self,
        fields: Option<&Fields>,
        ctx: &ControlCtx<'_>,
        sums: &mut Vec<(String, usize)>,
    ) -> (Vec<Field>, Option<Plan>) {
        let (format, overflow, record, layout, plan, s) = (
            ctx.format,
            ctx.overflow,
            ctx.record,
            ctx.layout,
            ctx.plan,
            ctx.settings,
        );
        let (Some(l), Some(Fields(entries))) = (layout, fields) else {
            return (
                self.control_fields(fields, format, overflow, record, sums),
                None,
            );
        };
        let cb = &l.cb;
        let idx: Vec<Option<usize>> = entries.iter().map(|(n, _)| cb.field(&n.value)).collect();
        if idx.iter().all(Option::is_none) {
            return (
                self.control_fields(fields, format, overflow, record, sums),
                None,
            );
        }
        let mut mapped = HashMap::new();
        for ((name, spec), i) in entries.iter().zip(&idx) {
            let Some(i) = *i else {
                let hint = cb
                    .suggest(&name.value)
                    .map(|s| format!(" (did you mean {s}?)"))
                    .unwrap_or_default();
                self.at(name, format!("{} is not a field of the copybook{hint}; a control record laid out by the copybook names copybook fields only", name.value));
                continue;
            };
            let Some(def) = self.def(spec) else { continue };
            if !self.control_source(&def, spec, record, sums) {
                continue;
            }
            if let Some(f) = self.build(name, spec, def, format, overflow, Some((&cb.fields[i], s)))
            {
                mapped.insert(i, f);
            }
        }
        // The alternatives the control fields sit in fix every set they touch.
        let mut plan = plan.clone();
        for (si, set) in plan.sets.iter_mut().enumerate() {
            let used: Vec<usize> = (0..set.alts.len())
                .filter(|&a| mapped.keys().any(|&i| cb.fields[i].alts.contains(&(si, a))))
                .collect();
            if used.len() > 1 {
                let names: Vec<&str> = used.iter().map(|&a| set.alts[a].name.as_str()).collect();
                let (line, col) = (
                    entries[0].0.referenced.line(),
                    entries[0].0.referenced.column(),
                );
                self.errs.push(Diagnostic::new(
                    self.file,
                    line,
                    col,
                    format!(
                        "a control record is one record type; its fields are in {}",
                        names.join(" and ")
                    ),
                ));
            }
            set.fixed = Some(used.first().copied().unwrap_or(0));
        }
        let fields = cb
            .fields
            .iter()
            .enumerate()
            .map(|(i, cf)| mapped.remove(&i).unwrap_or_else(|| self.unmapped(cf, s, l)))
            .collect();
        (fields, Some(plan))
    }

    /// Whether a control field's source is one a control record can have (reported if not).
    fn control_source(
        &mut self,
        def: &FieldDef,
        spec: &Spanned<FieldSpec>,
        record: &[Field],
        sums: &mut Vec<(String, usize)>,
    ) -> bool {
        match &def.source {
            Some(Source::Sum(target)) => match record.iter().position(|f| &f.name == target) {
                Some(i) => {
                    if !sums.iter().any(|(n, _)| n == target) {
                        sums.push((target.clone(), i));
                    }
                    true
                }
                None => {
                    self.at(
                        spec,
                        format!("$sum:{target}: {target} is not a field of this map"),
                    );
                    false
                }
            },
            Some(s) if !s.is_control() && !matches!(s, Source::Const(_) | Source::Cond(_)) => {
                self.at(spec, "header/trailer fields take quoted constants and $count, $sum:FIELD, $date, $first_seq, $last_seq");
                false
            }
            _ => true,
        }
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
            if !self.control_source(&def, spec, record, sums) {
                continue;
            }
            if let Some(f) = self.build(name, spec, def, format, overflow, None) {
                out.push(f);
            }
        }
        out
    }

    /// Constants and pad characters are checked against the encoding now rather than
    /// failing every event.
    fn check_constants<'f>(&mut self, fields: impl Iterator<Item = &'f Field>, encoding: Encoding) {
        for fd in fields {
            let mut probe = Vec::new();
            if let Source::Const(c) = &fd.source {
                if let Err(ch) = encoding.encode_into(c, &mut probe) {
                    let msg = format!(
                        "field {}: constant {c:?} has {ch:?}, which {} cannot represent",
                        fd.name,
                        encoding.name()
                    );
                    self.at_field(fd, msg);
                }
            }
            if let Kind::Text { pad, .. } = fd.kind {
                if encoding.byte(pad).is_none() {
                    let msg = format!(
                        "field {}: pad {pad:?} cannot be written in {}",
                        fd.name,
                        encoding.name()
                    );
                    self.at_field(fd, msg);
                }
            }
        }
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

/// A copybook kind with the record's float format and byte order.
fn record_kind(kind: &Kind, s: &RecordSettings) -> Kind {
    match kind {
        Kind::Binary {
            pic, bytes, native, ..
        } => Kind::Binary {
            pic: *pic,
            bytes: *bytes,
            native: *native,
            little: *native && s.little,
        },
        Kind::Float(f) => Kind::Float(FloatFormat {
            double: f.double,
            ieee: s.ieee,
            little: s.little,
        }),
        k => k.clone(),
    }
}

/// What a VALUE literal writes into a field: a constant for the field's pipeline, or exact
/// bytes.
fn value_source(
    v: &Literal,
    kind: &Kind,
    enc: Encoding,
) -> Result<(Source, Option<Vec<u8>>), String> {
    let w = kind.width().unwrap_or(0);
    let text = matches!(kind, Kind::Text { .. } | Kind::National { .. });
    Ok(match v {
        Literal::Text(t) | Literal::Number(t) => (Source::Const(t.clone()), None),
        Literal::Figurative(Figurative::Spaces) if text => (Source::Blank, None),
        Literal::Figurative(Figurative::Spaces) => (Source::Blank, Some(vec![enc.space(); w])),
        Literal::Figurative(Figurative::Zeros) if text => (Source::Const("0".repeat(w)), None),
        Literal::Figurative(Figurative::Zeros) => (Source::Blank, None),
        Literal::Figurative(Figurative::HighValues) => (Source::Blank, Some(vec![0xFF; w])),
        Literal::Figurative(Figurative::LowValues) => (Source::Blank, Some(vec![0x00; w])),
        Literal::Figurative(Figurative::Quotes) => (Source::Const("\"".repeat(w)), None),
        Literal::All(s) => (Source::Const(s.chars().cycle().take(w).collect()), None),
        Literal::Hex(b) => {
            if b.len() > w {
                return Err(format!(
                    "the hex VALUE is {} bytes; the field has {w}",
                    b.len()
                ));
            }
            let mut bytes = b.clone();
            bytes.resize(w, enc.space());
            (Source::Blank, Some(bytes))
        }
    })
}

/// A literal laid out exactly as field `f` writes it.
fn layout_bytes(f: &Field, lit: &Literal, enc: Encoding) -> Result<Vec<u8>, String> {
    let (src, fill) = value_source(lit, &f.kind, enc)?;
    if let Some(b) = fill {
        return Ok(b);
    }
    let mut probe = Field::plain(&f.name, src.clone(), f.kind.clone());
    probe.fill = None;
    let mut out = Vec::new();
    let text = match &src {
        Source::Const(c) => Some(c.as_str()),
        _ => None,
    };
    probe.write(text, enc, &mut out)?;
    Ok(out)
}
