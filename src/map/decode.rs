//! Decoding: record bytes back into JSON, in two views.
//!
//! - **fields**: `{"NAME": value, ...}` keyed by the layout's field names (copybook names,
//!   `(i)` subscripts kept), in layout order: what a pickup source maps its payload from;
//! - **event**: the event the map would have been given, its sources inverted: a payload
//!   path gets the field's value (`items[1].code` builds the list), `$type`, `$key`,
//!   `$trace_id`, `$ts` fill the event's own members, `map:` is looked up backwards,
//!   `format:` parsed back (fields writing one path, such as a date and a time, are read
//!   together), `count`, constants and FILLER are checked by the layout and left out.
//!
//! Invariant: numbers are written as the digits the record holds, with the picture's scale
//! (`12.50`, `-0.00`), never through a float (COMP-1/COMP-2 print the shortest text that
//! encodes back to the same bits); a value that is not there (another REDEFINES
//! alternative, a table element past its count, a blank date) is left out, not invented.

use chrono::format::{Item, Parsed};
use chrono::{NaiveDate, TimeZone};
use chrono_tz::Tz;

use super::encoding::Encoding;
use super::field::{BadBytes, Field, Kind};
use super::layout::{Sink, Slots};
use super::spec::{PathSeg, Source};

/// Why a record could not be decoded: which record, field and byte, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record {record_index}, field {field}, byte {offset}: {message}")]
pub struct DecodeError {
    /// 0-based position of the record in its file (or batch).
    pub record_index: usize,
    pub field: String,
    /// Byte offset in the record (framing not counted).
    pub offset: usize,
    pub message: String,
}

/// How a field's decoded text becomes a JSON value.
#[derive(Debug, Clone)]
enum Leaf {
    /// The text as a JSON string, or as a number for numeric fields.
    Value(usize),
    /// `map:` backwards: the key whose value the record holds.
    Unmap(usize),
    /// Date/time fields writing the same path, parsed together.
    Time(Vec<usize>),
    /// A constant (the event's default type).
    Const(String),
}

#[derive(Debug, Clone)]
enum Node {
    /// Members with their keys already JSON-quoted.
    Obj(Vec<(String, Node)>),
    Arr(Vec<Option<Node>>),
    /// Fields writing the same place (one per REDEFINES alternative, say): the first that
    /// the record holds is written.
    Leaf(Vec<Leaf>),
}

/// The fields view of a fixed-width record written as it is read: `"NAME":value` per field
/// the record holds, in record order, straight into the output (no intermediate values).
pub struct FieldsJson<'a> {
    /// Per field, `"NAME":` quoted, or `None` for fields the view leaves out.
    pub keys: &'a [Option<String>],
    pub out: &'a mut String,
    pub first: bool,
}

impl FieldsJson<'_> {
    /// The keys of the fields view: every field that holds data.
    pub fn keys(fields: &[Field]) -> Vec<Option<String>> {
        fields
            .iter()
            .map(|f| {
                (f.fill.is_none()
                    && !matches!(f.source, Source::Const(_))
                    && !f.name.eq_ignore_ascii_case("FILLER"))
                .then(|| format!("{}:", quote(&f.name)))
            })
            .collect()
    }
}

impl Sink for FieldsJson<'_> {
    fn field(&mut self, i: usize, f: &Field, bytes: &[u8], enc: Encoding) -> Result<(), BadBytes> {
        let Some(key) = &self.keys[i] else {
            return Ok(());
        };
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        self.out.push_str(key);
        if f.kind.is_numeric() {
            return f.kind.decode(bytes, enc, self.out);
        }
        self.out.push('"');
        let at = self.out.len();
        f.kind.decode(bytes, enc, self.out)?;
        // Text needing escapes is rare: escape it after the fact.
        if self.out[at..]
            .bytes()
            .any(|b| b < 0x20 || b == b'"' || b == b'\\')
        {
            let raw = self.out.split_off(at);
            self.out.pop(); // the opening quote: `push_str` writes its own
            push_str(self.out, &raw);
            return Ok(());
        }
        self.out.push('"');
        Ok(())
    }
}

/// A compiled view: where each field's value goes in the JSON.
#[derive(Debug, Clone)]
pub struct Template {
    root: Node,
    /// The event view: its `payload` is written even when empty.
    event: bool,
}

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    push_str(&mut out, s);
    out
}

impl Template {
    /// The fields view: every field that holds data, by name.
    pub fn fields(fields: &[Field]) -> Template {
        let members = fields
            .iter()
            .enumerate()
            .filter(|(_, f)| {
                f.fill.is_none()
                    && !matches!(f.source, Source::Const(_))
                    && !f.name.eq_ignore_ascii_case("FILLER")
            })
            .map(|(i, f)| (quote(&f.name), Node::Leaf(vec![Leaf::Value(i)])))
            .collect();
        Template {
            root: Node::Obj(members),
            event: false,
        }
    }

    /// The event view: the map's sources inverted; `event_type` when no field is `$type`.
    pub fn event(fields: &[Field], event_type: &str) -> Template {
        let mut payload = Node::Obj(Vec::new());
        let mut meta: Vec<(&'static str, Node)> = Vec::new();
        for (i, f) in fields.iter().enumerate() {
            if f.count || f.fill.is_some() {
                continue;
            }
            let leaf = if f.date.is_some() {
                Leaf::Time(vec![i])
            } else if f.map.is_some() {
                Leaf::Unmap(i)
            } else {
                Leaf::Value(i)
            };
            let member = match &f.source {
                Source::Path(p) => {
                    insert(&mut payload, p, leaf);
                    continue;
                }
                Source::Type => "type",
                Source::Key => "idempotency_key",
                Source::TraceId => "trace_id",
                Source::Ts => "ts",
                _ => continue,
            };
            match meta.iter_mut().find(|(k, _)| *k == member) {
                Some((_, n)) => add_leaf(n, leaf),
                None => meta.push((member, Node::Leaf(vec![leaf]))),
            }
        }
        let mut members = Vec::new();
        let ty = meta
            .iter()
            .position(|(k, _)| *k == "type")
            .map(|at| meta.remove(at).1)
            .unwrap_or_else(|| Node::Leaf(vec![Leaf::Const(event_type.to_string())]));
        members.push((quote("type"), ty));
        members.push((quote("payload"), payload));
        for (k, n) in meta {
            members.push((quote(k), n));
        }
        Template {
            root: Node::Obj(members),
            event: true,
        }
    }

    /// Writes the view of one decoded record as JSON text.
    pub fn write(
        &self,
        fields: &[Field],
        slots: &Slots,
        tz: Tz,
        out: &mut String,
    ) -> Result<(), (usize, String)> {
        let w = Writer { fields, slots, tz };
        let Node::Obj(members) = &self.root else {
            w.write(&self.root, out)?;
            return Ok(());
        };
        // The top level is always an object; an event always has its payload, if empty.
        out.push('{');
        let mut first = true;
        for (k, c) in members {
            let mark = out.len();
            if !first {
                out.push(',');
            }
            out.push_str(k);
            out.push(':');
            if w.write(c, out)? {
                first = false;
            } else if self.event && k == "\"payload\"" {
                out.push_str("{}");
                first = false;
            } else {
                out.truncate(mark);
            }
        }
        out.push('}');
        Ok(())
    }
}

/// Adds `leaf` at `path`. A path another field already writes takes this one as an
/// alternative (the first the record holds wins), except that date/time fields of one
/// path are read together; a path that runs into a leaf where it needs an object is left
/// out (the earlier field keeps it).
fn insert(node: &mut Node, path: &[PathSeg], leaf: Leaf) {
    let Some((seg, rest)) = path.split_first() else {
        add_leaf(node, leaf);
        return;
    };
    let child: &mut Node = match (seg, &mut *node) {
        (PathSeg::Key(k), Node::Obj(members)) => {
            let key = quote(k);
            let at = match members.iter().position(|(m, _)| *m == key) {
                Some(at) => at,
                None => {
                    members.push((key, empty_for(rest)));
                    members.len() - 1
                }
            };
            &mut members[at].1
        }
        (PathSeg::Index(i), Node::Arr(items)) => {
            if items.len() <= *i {
                items.resize(*i + 1, None);
            }
            items[*i].get_or_insert_with(|| empty_for(rest))
        }
        _ => return,
    };
    insert(child, rest, leaf);
}

fn add_leaf(node: &mut Node, leaf: Leaf) {
    let Node::Leaf(have) = node else { return };
    if let Leaf::Time(new) = &leaf {
        if let Some(Leaf::Time(t)) = have.iter_mut().find(|l| matches!(l, Leaf::Time(_))) {
            t.extend(new);
            return;
        }
    }
    have.push(leaf);
}

/// The node a path's next segment needs (a leaf with no fields yet at the end).
fn empty_for(rest: &[PathSeg]) -> Node {
    match rest.first() {
        None => Node::Leaf(Vec::new()),
        Some(PathSeg::Index(_)) => Node::Arr(Vec::new()),
        Some(_) => Node::Obj(Vec::new()),
    }
}

struct Writer<'a> {
    fields: &'a [Field],
    slots: &'a Slots,
    tz: Tz,
}

impl Writer<'_> {
    fn present(&self, n: &Node) -> bool {
        match n {
            Node::Obj(m) => m.iter().any(|(_, c)| self.present(c)),
            Node::Arr(items) => items.iter().flatten().any(|c| self.present(c)),
            Node::Leaf(ls) => ls.iter().any(|l| self.leaf_present(l)),
        }
    }

    fn leaf_present(&self, l: &Leaf) -> bool {
        match l {
            Leaf::Const(_) => true,
            Leaf::Value(i) | Leaf::Unmap(i) => self.slots.get(*i).is_some(),
            Leaf::Time(fs) => fs.iter().any(|i| {
                self.slots
                    .get(*i)
                    .is_some_and(|t| !t.trim().is_empty() && !t.bytes().all(|b| b == b'0'))
            }),
        }
    }

    /// Writes `n` if anything of it is present; returns whether it wrote (nothing is left
    /// in `out` when it did not).
    fn write(&self, n: &Node, out: &mut String) -> Result<bool, (usize, String)> {
        match n {
            Node::Obj(members) => {
                let start = out.len();
                out.push('{');
                let mut any = false;
                for (k, c) in members {
                    let mark = out.len();
                    if any {
                        out.push(',');
                    }
                    out.push_str(k);
                    out.push(':');
                    if self.write(c, out)? {
                        any = true;
                    } else {
                        out.truncate(mark);
                    }
                }
                if !any {
                    out.truncate(start);
                    return Ok(false);
                }
                out.push('}');
            }
            Node::Arr(items) => {
                let Some(last) = items
                    .iter()
                    .rposition(|c| c.as_ref().is_some_and(|c| self.present(c)))
                else {
                    return Ok(false);
                };
                out.push('[');
                for (i, c) in items[..=last].iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let wrote = match c {
                        Some(c) => self.write(c, out)?,
                        None => false,
                    };
                    if !wrote {
                        out.push_str("null");
                    }
                }
                out.push(']');
            }
            Node::Leaf(ls) => {
                for l in ls {
                    if self.leaf(l, out)? {
                        return Ok(true);
                    }
                }
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn leaf(&self, l: &Leaf, out: &mut String) -> Result<bool, (usize, String)> {
        match l {
            Leaf::Const(c) => push_str(out, c),
            Leaf::Value(i) => {
                let Some(t) = self.slots.get(*i) else {
                    return Ok(false);
                };
                if self.fields[*i].kind.is_numeric() {
                    out.push_str(t);
                } else {
                    push_str(out, t);
                }
            }
            Leaf::Unmap(i) => {
                let Some(t) = self.slots.get(*i) else {
                    return Ok(false);
                };
                let f = &self.fields[*i];
                let found = f.map.as_ref().and_then(|m| {
                    m.iter()
                        .find(|(_, v)| v == t || (f.kind.is_numeric() && same_number(v, t)))
                });
                match found {
                    Some((k, _)) => push_str(out, k),
                    None => {
                        return Err((
                            *i,
                            "the value is not one of the field's `map:` values".into(),
                        ));
                    }
                }
            }
            Leaf::Time(fs) => return self.time(fs, out),
        }
        Ok(true)
    }

    /// Date/time fields parsed together: RFC 3339 (UTC) with date and time, `YYYY-MM-DD`
    /// with a date only, `HH:MM:SS` with a time only.
    fn time(&self, fs: &[usize], out: &mut String) -> Result<bool, (usize, String)> {
        // One `%Y%m%d` field is the common case and needs no parser.
        if let [i] = fs {
            if let (Some(t), Some((_, pattern))) = (self.slots.get(*i), &self.fields[*i].date) {
                if pattern == "%Y%m%d" {
                    let t = padded(&self.fields[*i].kind, t);
                    if t.trim().is_empty() || t.bytes().all(|b| b == b'0') {
                        return Ok(false);
                    }
                    let ok = t.len() == 8
                        && t.bytes().all(|b| b.is_ascii_digit())
                        && NaiveDate::from_ymd_opt(
                            t[..4].parse().unwrap_or(0),
                            t[4..6].parse().unwrap_or(0),
                            t[6..].parse().unwrap_or(0),
                        )
                        .is_some();
                    if !ok {
                        return Err((*i, "the value is not a date in the format %Y%m%d".into()));
                    }
                    out.push('"');
                    out.push_str(&t[..4]);
                    out.push('-');
                    out.push_str(&t[4..6]);
                    out.push('-');
                    out.push_str(&t[6..]);
                    out.push('"');
                    return Ok(true);
                }
            }
        }
        let mut parsed = Parsed::new();
        let mut any = false;
        for &i in fs {
            let f = &self.fields[i];
            let (Some(t), Some((items, pattern))) = (self.slots.get(i), &f.date) else {
                continue;
            };
            let t = padded(&f.kind, t);
            if t.trim().is_empty() || t.bytes().all(|b| b == b'0') {
                continue;
            }
            chrono::format::parse(&mut parsed, &t, items.iter()).map_err(|_| {
                (
                    i,
                    format!("the value is not a date/time in the format {pattern}"),
                )
            })?;
            any = true;
        }
        if !any {
            return Ok(false);
        }
        let first = fs[0];
        let has_time = parsed.hour_div_12.is_some() || parsed.hour_mod_12.is_some();
        let text = match (parsed.to_naive_date(), parsed.to_naive_time()) {
            (Ok(d), Ok(t)) if has_time => {
                let local = d.and_time(t);
                let at = self.tz.from_local_datetime(&local).earliest().ok_or_else(|| {
                    (first, format!("the local time does not exist in {} (skipped by a daylight-saving change)", self.tz))
                })?;
                at.with_timezone(&chrono::Utc)
                    .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
            }
            (Ok(d), _) => d.format("%Y-%m-%d").to_string(),
            (Err(_), Ok(t)) => t.format("%H:%M:%S").to_string(),
            _ => return Err((first, "the date/time is incomplete or out of range".into())),
        };
        push_str(out, &text);
        Ok(true)
    }
}

/// A numeric date field's digits with their leading zeros (`10101` of a 9(8) is `00010101`).
fn padded<'t>(kind: &Kind, t: &'t str) -> std::borrow::Cow<'t, str> {
    match kind.pic() {
        Some(p)
            if p.scale == 0
                && t.len() < p.digits as usize
                && t.bytes().all(|b| b.is_ascii_digit()) =>
        {
            std::borrow::Cow::Owned(format!("{t:0>w$}", w = p.digits as usize))
        }
        _ => std::borrow::Cow::Borrowed(t),
    }
}

fn same_number(a: &str, b: &str) -> bool {
    match (
        super::decimal::Decimal::parse(a),
        super::decimal::Decimal::parse(b),
    ) {
        (Ok(x), Ok(y)) => super::layout::cmp(x, y).is_eq(),
        _ => false,
    }
}

/// Appends `s` as a JSON string.
pub fn push_str(out: &mut String, s: &str) {
    out.push('"');
    if !s
        .bytes()
        .any(|b| b < 0x20 || b == b'"' || b == b'\\' || b == 0x7f || b == 0xc2)
    {
        out.push_str(s);
    } else {
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                // Every control character escaped (C0, DEL, C1): never raw in a body.
                c if c.is_control() => {
                    use std::fmt::Write as _;
                    let _ = write!(out, "\\u{:04x}", u32::from(c));
                }
                c => out.push(c),
            }
        }
    }
    out.push('"');
}

/// Items of a `format:` pattern, for the compiler's checks.
pub fn pattern_has_date(items: &[Item<'_>]) -> bool {
    use chrono::format::{Fixed, Numeric};
    items.iter().any(|i| {
        matches!(
            i,
            Item::Numeric(
                Numeric::Year | Numeric::Day | Numeric::Ordinal | Numeric::Timestamp,
                _
            ) | Item::Fixed(Fixed::RFC3339 | Fixed::RFC2822)
        )
    })
}
