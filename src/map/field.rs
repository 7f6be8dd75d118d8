//! One compiled field: where its value comes from, the text pipeline it goes through
//! (trim, map, date format, case) and how it is laid out (padded text, national UTF-16,
//! zoned, packed or binary decimal, floating point) — and the way back, from record bytes to
//! a value.
//!
//! The order, fixed so that a map reads the same way to everyone:
//! 1. source: payload path, constant or `$` metadata; when missing, `updated_at` falls back
//!    to `$ts` then `$received_at`, anything else to `default:` (which skips steps 2–4),
//!    else the event is refused; `count` takes the number of elements of the list instead;
//! 2. `trim`; 3. `map` (an unknown value takes `default:`, else is refused);
//! 4. `format` (the value read as a date/time, written in the configured timezone);
//! 5. `upper` / `lower`; 6. layout: `width`/`align`/`pad`, or the number picture.
//!
//! The payload seam: [`lookup`] follows one path, [`lookup_all`] finds every path of a
//! record in one pass over the payload's tree (a merge of sorted keys: a 40-field record
//! reads 40 values for about as many key comparisons as the payload has keys), and
//! [`lookup_raw`] finds them in the payload's text without building a tree. Nothing else
//! here reads `Event.payload`.
//!
//! Invariant: a field with a width always renders to exactly that many bytes or fails; the
//! record's length therefore never depends on the data. The byte writers append straight to
//! the record (no intermediate strings on the numeric paths).

use std::borrow::Cow;
use std::fmt::Write as _;

use chrono::format::Item;
use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde_json::value::RawValue;
use serde_json::{Map, Number, Value};

use super::decimal::Decimal;
use super::encoding::Encoding;
use super::float::FloatFormat;
use super::spec::{Align, Case, Control, NumPic, PathSeg, SignMode, Source};
use crate::event::Event;

/// How a field's bytes are laid out.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// Characters, padded to `width` (when given).
    Text {
        width: Option<usize>,
        align: Align,
        pad: char,
    },
    /// PIC N: `chars` UTF-16 code units, big-endian, padded with U+0020.
    National { chars: usize, align: Align },
    /// DISPLAY numeric: one character per digit, sign per `sign` when the picture is signed;
    /// all spaces for zero with BLANK WHEN ZERO.
    Zoned {
        pic: NumPic,
        sign: SignMode,
        blank_zero: bool,
    },
    /// COMP-3: two digits a byte, sign in the last nibble.
    Packed { pic: NumPic },
    /// COMP / BINARY (`native: false`: the value has at most the picture's digits) or COMP-5
    /// (`native`: the whole storage), two's complement of `bytes` bytes.
    Binary {
        pic: NumPic,
        bytes: usize,
        native: bool,
        little: bool,
    },
    /// COMP-1 / COMP-2.
    Float(FloatFormat),
}

impl Kind {
    /// Bytes this field occupies, if fixed.
    pub fn width(&self) -> Option<usize> {
        match self {
            Kind::Text { width, .. } => *width,
            Kind::National { chars, .. } => Some(chars * 2),
            Kind::Zoned { pic, sign, .. } => {
                let sep = matches!(sign, SignMode::LeadingSeparate | SignMode::TrailingSeparate)
                    && pic.signed;
                Some(pic.digits() as usize + usize::from(sep))
            }
            Kind::Packed { pic } => Some(pic.digits() as usize / 2 + 1),
            Kind::Binary { bytes, .. } => Some(*bytes),
            Kind::Float(f) => Some(f.width()),
        }
    }

    /// Whether this field writes raw bytes rather than characters (bytes that can look like
    /// a line end).
    pub fn is_binary(&self) -> bool {
        matches!(
            self,
            Kind::Packed { .. } | Kind::Binary { .. } | Kind::Float(_) | Kind::National { .. }
        )
    }

    /// Whether the field holds a number (decoded as a JSON number).
    pub fn is_numeric(&self) -> bool {
        matches!(
            self,
            Kind::Zoned { .. } | Kind::Packed { .. } | Kind::Binary { .. } | Kind::Float(_)
        )
    }

    /// The decimal picture of a numeric field.
    pub fn pic(&self) -> Option<NumPic> {
        match self {
            Kind::Zoned { pic, .. } | Kind::Packed { pic } | Kind::Binary { pic, .. } => Some(*pic),
            _ => None,
        }
    }

    /// A short name for previews and messages.
    pub fn label(&self) -> &'static str {
        match self {
            Kind::Text { .. } => "",
            Kind::National { .. } => "national",
            Kind::Zoned { .. } => "zoned",
            Kind::Packed { .. } => "packed",
            Kind::Binary { native: false, .. } => "binary",
            Kind::Binary { native: true, .. } => "comp-5",
            Kind::Float(f) if f.double => "comp-2",
            Kind::Float(_) => "comp-1",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Field {
    pub name: String,
    pub source: Source,
    pub default: Option<String>,
    pub trim: bool,
    pub map: Option<Vec<(String, String)>>,
    /// The parsed `format:` pattern, and its text for messages.
    pub date: Option<(Vec<Item<'static>>, String)>,
    pub case: Option<Case>,
    pub kind: Kind,
    pub truncate: bool,
    /// `count`: the source's number of elements is the value.
    pub count: bool,
    /// Exact bytes written instead of a value (a VALUE of HIGH-VALUES, X'..', ALL '*').
    pub fill: Option<Vec<u8>>,
    /// Line and column of the definition in the map file, for diagnostics.
    pub pos: (u64, u64),
    /// What a control character in the value does (`control:`).
    pub control: Control,
}

/// A source's value before the text pipeline.
#[derive(Debug)]
pub enum Raw<'a> {
    Json(&'a Value),
    /// A payload number, as sent ([`sent_number`]).
    Number(&'a str),
    Str(Cow<'a, str>),
    Time(DateTime<Utc>),
    Int(u64),
    /// The field's `default:` (skips trim, map and format).
    Default(&'a str),
    Blank,
}

/// What control-record sources resolve to for one batch.
#[derive(Debug, Default)]
pub struct Batch {
    pub count: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub date: Option<DateTime<Tz>>,
    /// `$sum:FIELD` results by field name.
    pub sums: Vec<(String, Decimal)>,
}

impl Field {
    /// A field with only a source and a kind; modifiers are set by the compiler.
    pub fn plain(name: &str, source: Source, kind: Kind) -> Field {
        Field {
            name: name.to_string(),
            source,
            default: None,
            trim: false,
            map: None,
            date: None,
            case: None,
            kind,
            truncate: false,
            count: false,
            fill: None,
            pos: (1, 1),
            control: Control::Refuse,
        }
    }

    /// Whether a present payload value goes to the layout as its text (a payload path with
    /// no modifier before the layout): the render fast path.
    #[inline]
    pub fn is_plain(&self) -> bool {
        matches!(self.source, Source::Path(_))
            && !self.count
            && !self.trim
            && self.map.is_none()
            && self.date.is_none()
            && self.case.is_none()
            && self.fill.is_none()
    }

    /// Whether the field only formats a payload date (`path | format:...`): the render fast
    /// path for dates, see [`Field::date_into`].
    #[inline]
    pub fn is_plain_date(&self) -> bool {
        matches!(self.source, Source::Path(_))
            && self.date.is_some()
            && !self.count
            && !self.trim
            && self.map.is_none()
            && self.case.is_none()
            && self.fill.is_none()
    }

    /// A plain date field's text for the payload string `s`, formatted into `buf` without
    /// an allocation; `None` when the pattern needs chrono's formatter (then the general
    /// pipeline runs).
    pub fn date_into<'b>(
        &self,
        s: &str,
        tz: Tz,
        buf: &'b mut [u8; 32],
    ) -> Option<Result<&'b str, String>> {
        let (items, pattern) = self.date.as_ref()?;
        if let Some(n) = utc_digits(s, tz, pattern, buf) {
            // Only ASCII was written.
            return Some(Ok(std::str::from_utf8(&buf[..n]).unwrap_or_default()));
        }
        let t = if super::decode::pattern_has_date(items) {
            parse_time(s, tz)
        } else {
            parse_time_of_day(s, tz)
        };
        let t = match t {
            Ok(t) => t,
            Err(e) => return Some(Err(e)),
        };
        let n = digits_into(&t, pattern, buf)?;
        // Only ASCII was written.
        Some(Ok(std::str::from_utf8(&buf[..n]).unwrap_or_default()))
    }

    /// Whether the value goes out untouched (JSON keeps its type then).
    pub fn is_passthrough(&self) -> bool {
        !self.count
            && !self.trim
            && self.map.is_none()
            && self.date.is_none()
            && self.case.is_none()
            && !matches!(self.control, Control::Replace(_))
            && matches!(self.kind, Kind::Text { width: None, .. })
    }

    /// The source's value for `event`, with SPEC §4's fallback rule.
    pub fn resolve<'a>(
        &'a self,
        event: &'a Event,
        payload: &'a Map<String, Value>,
    ) -> Result<Raw<'a>, String> {
        let value = match &self.source {
            Source::Path(p) => lookup(payload, p),
            _ => None,
        };
        self.resolve_found(event, value)
    }

    /// [`Field::resolve`] with the payload value already looked up ([`lookup_all`]).
    pub fn resolve_found<'a>(
        &'a self,
        event: &'a Event,
        value: Option<&'a Value>,
    ) -> Result<Raw<'a>, String> {
        let found = match &self.source {
            Source::Path(p) => value.map(|v| match v {
                Value::Number(n) => Raw::Number(sent_number(event, p, n)),
                v => Raw::Json(v),
            }),
            Source::Const(c) => Some(Raw::Str(Cow::Borrowed(c))),
            Source::Seq => Some(Raw::Int(event.seq)),
            Source::Type => Some(Raw::Str(Cow::Borrowed(&event.event_type))),
            Source::Key => Some(Raw::Str(Cow::Borrowed(&event.key))),
            Source::TraceId => Some(Raw::Str(Cow::Borrowed(&event.trace_id))),
            Source::ReceivedAt => Some(Raw::Time(event.received_at)),
            Source::Ts => event.ts.map(Raw::Time),
            Source::Blank => Some(Raw::Blank),
            // Resolved to a constant by the compiler.
            Source::Cond(c) => {
                return Err(format!(
                    "$88:{c} was not resolved when the map was compiled"
                ));
            }
            // Refused by the compiler outside header/trailer.
            Source::Count | Source::Sum(_) | Source::Date | Source::FirstSeq | Source::LastSeq => {
                return Err(
                    "control sources ($count, $sum, $date...) belong in header/trailer".into(),
                );
            }
        };
        if let Some(v) = found {
            if self.count {
                return match v {
                    Raw::Json(Value::Array(a)) => Ok(Raw::Int(a.len() as u64)),
                    _ => Err(format!(
                        "{} is not a list, so `count` cannot count its elements",
                        self.source_text()
                    )),
                };
            }
            return Ok(v);
        }
        if self.source.is_updated_at() && !self.count {
            return Ok(Raw::Time(event.ts.unwrap_or(event.received_at)));
        }
        match &self.default {
            Some(d) => Ok(Raw::Default(d)),
            None => Err(format!(
                "{} is missing from the event (add `| default:V` to the field if that is normal)",
                self.source_text()
            )),
        }
    }

    /// A control-record source's value for a batch.
    pub fn resolve_control<'a>(&'a self, batch: &Batch) -> Result<Raw<'a>, String> {
        Ok(match &self.source {
            Source::Const(c) => Raw::Str(Cow::Borrowed(c)),
            Source::Count => Raw::Int(batch.count),
            Source::FirstSeq => Raw::Int(batch.first_seq),
            Source::LastSeq => Raw::Int(batch.last_seq),
            Source::Date => match batch.date {
                Some(d) => Raw::Time(d.with_timezone(&Utc)),
                None => return Err("$date has no batch time".into()),
            },
            Source::Sum(f) => {
                let sum = batch.sums.iter().find(|(n, _)| n == f).map(|(_, d)| *d).unwrap_or(Decimal::ZERO);
                Raw::Str(Cow::Owned(sum.to_string()))
            }
            Source::Blank => Raw::Blank,
            _ => return Err("header/trailer fields take constants and $count, $sum:FIELD, $date, $first_seq, $last_seq".into()),
        })
    }

    fn source_text(&self) -> String {
        match &self.source {
            Source::Path(p) => {
                let mut s = String::new();
                for seg in p {
                    match seg {
                        PathSeg::Key(k) if s.is_empty() => s.push_str(k),
                        PathSeg::Key(k) => {
                            s.push('.');
                            s.push_str(k);
                        }
                        PathSeg::Index(i) => {
                            let _ = write!(s, "[{i}]");
                        }
                        PathSeg::Each => s.push_str("[*]"),
                    }
                }
                format!("payload.{s}")
            }
            Source::Ts => "$ts".into(),
            other => format!("{other:?}"),
        }
    }

    /// The text pipeline: trim, map, format, case. `None` for a blank. Borrows from the
    /// event or the map where it can: this is the per-field hot path.
    pub fn text<'a>(&'a self, raw: &Raw<'a>, tz: Tz) -> Result<Option<Cow<'a, str>>, String> {
        let mut text: Cow<'a, str> = match raw {
            Raw::Blank => return Ok(None),
            Raw::Default(d) => return Ok(Some(self.apply_case(Cow::Borrowed(d)))),
            Raw::Time(t) => match &self.date {
                Some((items, pattern)) => {
                    return format_time(&t.with_timezone(&tz), items, pattern)
                        .map(|s| Some(Cow::Owned(s)));
                }
                None => Cow::Owned(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
            },
            Raw::Int(n) => Cow::Owned(n.to_string()),
            Raw::Str(s) => s.clone(),
            Raw::Json(Value::String(s)) => Cow::Borrowed(s.as_str()),
            Raw::Number(n) => Cow::Borrowed(n),
            Raw::Json(Value::Number(n)) => Cow::Borrowed(n.as_str()),
            Raw::Json(Value::Bool(b)) => Cow::Borrowed(if *b { "true" } else { "false" }),
            Raw::Json(Value::Null) => Cow::Borrowed(""),
            Raw::Json(v @ (Value::Array(_) | Value::Object(_))) => {
                let what = if v.is_array() { "a list" } else { "an object" };
                let src = self.source_text();
                let path = src.trim_start_matches("payload.");
                return Err(format!(
                    "{src} is {what}, not a single value; name an element (e.g. `{path}[0]` or `{path}.code`)"
                ));
            }
        };
        if self.trim {
            text = match text {
                Cow::Borrowed(b) => Cow::Borrowed(b.trim()),
                Cow::Owned(o) if o.trim().len() != o.len() => Cow::Owned(o.trim().to_string()),
                owned => owned,
            };
        }
        if let Some(map) = &self.map {
            match map.iter().find(|(k, _)| *k == text) {
                Some((_, v)) => text = Cow::Borrowed(v),
                None => match &self.default {
                    Some(d) => text = Cow::Borrowed(d),
                    None => {
                        let keys: Vec<&str> = map.iter().map(|(k, _)| k.as_str()).collect();
                        return Err(format!(
                            "value is not in the map ({}); add it, or a `default:`",
                            keys.join(", ")
                        ));
                    }
                },
            }
        }
        if let Some((items, pattern)) = &self.date {
            let t = if super::decode::pattern_has_date(items) {
                parse_time(&text, tz)?
            } else {
                parse_time_of_day(&text, tz)?
            };
            text = Cow::Owned(format_time(&t, items, pattern)?);
        }
        Ok(Some(self.apply_case(text)))
    }

    fn apply_case<'a>(&self, text: Cow<'a, str>) -> Cow<'a, str> {
        match self.case {
            None => text,
            Some(Case::Upper) => Cow::Owned(text.to_uppercase()),
            Some(Case::Lower) => Cow::Owned(text.to_lowercase()),
        }
    }

    /// The value as it may go into a record, by `control:` (SPEC: no control character
    /// reaches a record unless the map says so). `strict` (fixed-width, CSV): a control
    /// character refuses the event unless the field allows or replaces it; otherwise (JSON,
    /// SOAP, which escape) only `replace` changes the text. The message names the
    /// character's code point and position, never the value.
    #[inline]
    pub fn screen<'t>(&self, text: &'t str, strict: bool) -> Result<Cow<'t, str>, String> {
        let Some(at) = first_control(text) else {
            return Ok(Cow::Borrowed(text));
        };
        match self.control {
            Control::Allow => Ok(Cow::Borrowed(text)),
            Control::Refuse if !strict => Ok(Cow::Borrowed(text)),
            Control::Refuse => {
                let (pos, c) = text
                    .char_indices()
                    .enumerate()
                    .find(|(_, (i, _))| *i == at)
                    .map(|(n, (_, c))| (n + 1, c))
                    .unwrap_or((0, '\0'));
                Err(format!(
                    "the value holds a control character (U+{:04X}, character {pos}), which could break or forge a record; add `| control:replace:\" \"` or `| control:allow` to the field if that is expected",
                    u32::from(c)
                ))
            }
            Control::Replace(r) => Ok(Cow::Owned(
                text.chars()
                    .map(|c| if c.is_control() { r } else { c })
                    .collect(),
            )),
        }
    }

    /// Lays the text out per the field's kind and appends it, encoded, to `out`.
    pub fn write(
        &self,
        text: Option<&str>,
        enc: Encoding,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        if let Some(fill) = &self.fill {
            out.extend_from_slice(fill);
            return Ok(());
        }
        // Characters go into the record only past the control-character rule; numbers are
        // refused by their own parser.
        let screened;
        let text = match (text, &self.kind) {
            (Some(t), Kind::Text { .. } | Kind::National { .. }) => {
                screened = self.screen(t, true)?;
                Some(&*screened)
            }
            (t, _) => t,
        };
        // A small dispatcher over one function per kind: the hot kinds (text, zoned,
        // packed) stay cheap to call.
        match &self.kind {
            Kind::Text {
                width: Some(w),
                align,
                pad,
            } => self.write_text(text.unwrap_or(""), *w, *align, *pad, enc, out),
            Kind::Text { width: None, .. } => enc
                .encode_into(text.unwrap_or(""), out)
                .map_err(|c| unmappable(c, enc)),
            Kind::National { chars, align } => {
                self.write_national(text.unwrap_or(""), *chars, *align, out)
            }
            Kind::Zoned {
                pic,
                sign,
                blank_zero,
            } => {
                let (neg, v) = self.stored(text, *pic)?;
                if *blank_zero && v == 0 {
                    let w = self.kind.width().unwrap_or(0);
                    out.resize(out.len() + w, enc.space());
                    return Ok(());
                }
                write_zoned(v, neg, *pic, *sign, enc, out);
                Ok(())
            }
            Kind::Packed { pic } => {
                let (neg, v) = self.stored(text, *pic)?;
                write_packed(v, neg, *pic, out);
                Ok(())
            }
            Kind::Binary {
                pic,
                bytes,
                native,
                little,
            } => self.write_binary(text, *pic, *bytes, *native, *little, out),
            Kind::Float(f) => f.encode(text.unwrap_or("0"), out),
        }
    }

    /// Text padded to `w` characters, encoded straight into the record (the hot path).
    #[inline(never)]
    fn write_text(
        &self,
        text: &str,
        w: usize,
        align: Align,
        pad: char,
        enc: Encoding,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        let n = if text.is_ascii() {
            text.len()
        } else {
            text.chars().count()
        };
        if n > w {
            let laid = self.layout_text(Some(text))?;
            return enc.encode_into(&laid, out).map_err(|c| unmappable(c, enc));
        }
        let pad_byte = enc.byte(pad).ok_or_else(|| unmappable(pad, enc))?;
        let fill = w - n;
        if align == Align::Right {
            out.resize(out.len() + fill, pad_byte);
        }
        enc.encode_into(text, out).map_err(|c| unmappable(c, enc))?;
        if align == Align::Left {
            out.resize(out.len() + fill, pad_byte);
        }
        Ok(())
    }

    /// COMP / COMP-5: two's complement of `bytes` bytes.
    #[inline(never)]
    fn write_binary(
        &self,
        text: Option<&str>,
        pic: NumPic,
        bytes: usize,
        native: bool,
        little: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        let (neg, v) = if native {
            // COMP-5 holds what its storage holds, whatever the picture's digits.
            let d = match text {
                None => Decimal::ZERO,
                Some(t) => Decimal::parse(t)?,
            };
            let v = d.to_stored(38, pic.scale, false)?;
            let neg = d.is_negative() && v != 0;
            if neg && !pic.signed {
                return Err(NEGATIVE_UNSIGNED.into());
            }
            (neg, v)
        } else {
            self.stored(text, pic)?
        };
        let bits = 8 * bytes as u32;
        let fits = if pic.signed {
            let lim = 1u128 << (bits - 1);
            if neg { v <= lim } else { v < lim }
        } else {
            v < (1u128 << bits)
        };
        if !fits {
            return Err(format!(
                "value does not fit in {bytes} bytes of {}",
                if native { "COMP-5" } else { "binary" }
            ));
        }
        // |v| < 2^64 here (at most 8 bytes), so the i128 arithmetic is exact.
        let signed = if neg { -(v as i128) } else { v as i128 };
        let be = signed.to_be_bytes();
        let tail = &be[16 - bytes..];
        if little {
            out.extend(tail.iter().rev());
        } else {
            out.extend_from_slice(tail);
        }
        Ok(())
    }

    fn write_national(
        &self,
        text: &str,
        chars: usize,
        align: Align,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        let n = text.encode_utf16().count();
        let units: Vec<u16> = if n > chars {
            if !self.truncate {
                return Err(format!(
                    "value is {n} UTF-16 characters, longer than PIC N({chars}) (set `overflow: truncate` to cut)"
                ));
            }
            // Cut at a character boundary so no half of a surrogate pair is written.
            let mut u = Vec::with_capacity(chars);
            for c in text.chars() {
                let mut buf = [0u16; 2];
                let e = c.encode_utf16(&mut buf);
                if u.len() + e.len() > chars {
                    break;
                }
                u.extend_from_slice(e);
            }
            u
        } else {
            text.encode_utf16().collect()
        };
        let fill = chars - units.len();
        let space = [0x00, 0x20];
        if align == Align::Right {
            (0..fill).for_each(|_| out.extend_from_slice(&space));
        }
        for u in units {
            out.extend_from_slice(&u.to_be_bytes());
        }
        if align == Align::Left {
            (0..fill).for_each(|_| out.extend_from_slice(&space));
        }
        Ok(())
    }

    /// The field as characters (text and zoned kinds): padded, aligned, sign placed.
    pub fn layout_text<'t>(&self, text: Option<&'t str>) -> Result<Cow<'t, str>, String> {
        match &self.kind {
            Kind::Text { width, align, pad } => {
                let text = text.unwrap_or("");
                let Some(w) = *width else {
                    return Ok(Cow::Borrowed(text));
                };
                let n = text.chars().count();
                if n == w {
                    return Ok(Cow::Borrowed(text));
                }
                if n > w {
                    if !self.truncate {
                        return Err(format!(
                            "value is {n} characters, longer than width {w} (set `overflow: truncate` to cut)"
                        ));
                    }
                    let cut: String = match align {
                        Align::Left => text.chars().take(w).collect(),
                        Align::Right => text.chars().skip(n - w).collect(),
                    };
                    return Ok(Cow::Owned(cut));
                }
                let mut s = String::with_capacity(w);
                let fill = w - n;
                if *align == Align::Right {
                    s.extend(std::iter::repeat_n(*pad, fill));
                }
                s.push_str(text);
                if *align == Align::Left {
                    s.extend(std::iter::repeat_n(*pad, fill));
                }
                Ok(Cow::Owned(s))
            }
            Kind::Zoned {
                pic,
                sign,
                blank_zero,
            } => {
                let (neg, v) = self.stored(text, *pic)?;
                let mut out = Vec::new();
                if *blank_zero && v == 0 {
                    out.resize(self.kind.width().unwrap_or(0), b' ');
                } else {
                    write_zoned(v, neg, *pic, *sign, Encoding::Ascii, &mut out);
                }
                // Zoned text in ASCII is ASCII bytes only.
                Ok(Cow::Owned(String::from_utf8(out).unwrap_or_default()))
            }
            _ => Err("a binary field has no text form".into()),
        }
    }

    /// Sign and the integer a numeric picture stores for a value (`None`: zero). The sign
    /// of a negative zero (`-0.00`) is kept for signed pictures.
    fn stored(&self, text: Option<&str>, pic: NumPic) -> Result<(bool, u128), String> {
        let Some(t) = text else {
            return Ok((false, 0));
        };
        if let Some(fast) = stored_fast(t, pic) {
            return Ok(fast);
        }
        let d = Decimal::parse(t)?;
        let v = d.to_stored(pic.digits, pic.scale, self.truncate)?;
        let minus = t.trim_start().starts_with('-');
        if minus && v != 0 && !pic.signed {
            return Err(NEGATIVE_UNSIGNED.into());
        }
        Ok((minus && pic.signed, v))
    }
}

/// Powers of ten that fit a u64.
const POW10: [u64; 20] = {
    let mut p = [1u64; 20];
    let mut i = 1;
    while i < 20 {
        p[i] = p[i - 1] * 10;
        i += 1;
    }
    p
};

/// [`Field::stored`] for the common value: `[-]digits[.digits]`, at most 19 digits, that
/// fits the picture as it is. Anything else (and every error) takes the general path, which
/// says what is wrong.
#[inline]
fn stored_fast(t: &str, pic: NumPic) -> Option<(bool, u128)> {
    let b = t.as_bytes();
    let (neg, digits) = match b.first()? {
        b'-' => (true, &b[1..]),
        _ => (false, b),
    };
    if digits.is_empty() || digits.len() > 20 || pic.scale < 0 || pic.scale > 19 || pic.digits > 19
    {
        return None;
    }
    // 20 characters are 19 digits only with a point (no more fit a u64 exactly).
    if digits.len() == 20 && !digits.contains(&b'.') {
        return None;
    }
    // One pass: digits into `m`, the point's position remembered.
    let (mut m, mut point) = (0u64, usize::MAX);
    for (k, &c) in digits.iter().enumerate() {
        let d = c.wrapping_sub(b'0');
        if d < 10 {
            m = m * 10 + u64::from(d);
        } else if c == b'.' && point == usize::MAX {
            point = k;
        } else {
            return None;
        }
    }
    let n = digits.len() - usize::from(point != usize::MAX);
    if n == 0 || n > 19 {
        return None;
    }
    // At most 19 digits, checked above.
    let frac = if point == usize::MAX {
        0
    } else {
        (digits.len() - point - 1) as i32
    };
    let m = if frac > pic.scale {
        let div = POW10[(frac - pic.scale) as usize];
        if m % div != 0 {
            return None;
        }
        m / div
    } else {
        m.checked_mul(POW10[(pic.scale - frac) as usize])?
    };
    if m >= POW10[pic.digits as usize] || (neg && m != 0 && !pic.signed) {
        return None;
    }
    Some((neg && pic.signed, u128::from(m)))
}

const NEGATIVE_UNSIGNED: &str =
    "value is negative but the picture has no sign (write S9... to allow it)";

/// Byte offset of the first control character (Unicode `Cc`: U+0000–U+001F, U+007F–U+009F)
/// in `s`. The hot path: a byte scan; C1 characters are `C2 80`–`C2 9F` in UTF-8.
#[inline]
pub fn first_control(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    (0..b.len()).find(|&i| {
        let x = b[i];
        x < 0x20
            || x == 0x7f
            || (x == 0xc2 && b.get(i + 1).is_some_and(|n| (0x80..0xa0).contains(n)))
    })
}

pub fn unmappable(c: char, enc: Encoding) -> String {
    format!(
        "a character (U+{:04X}) cannot be written in {}",
        u32::from(c),
        enc.name()
    )
}

/// ASCII images of the EBCDIC overpunch zones: `{`, `A`..`I` are C0..C9 (positive), `}`,
/// `J`..`R` are D0..D9 (negative), as IBM's ASCII transfers and GnuCOBOL's `-fsign=EBCDIC`
/// write them.
const OVER_POS: &[u8; 10] = b"{ABCDEFGHI";
const OVER_NEG: &[u8; 10] = b"}JKLMNOPQR";

/// The byte of digit `d` with an overpunched sign.
fn overpunch(d: u8, neg: bool, enc: Encoding) -> u8 {
    match enc {
        // The sign is a zone nibble, whatever character the code page puts there.
        Encoding::Ebcdic(_) => (if neg { 0xD0 } else { 0xC0 }) | d,
        _ => (if neg { OVER_NEG } else { OVER_POS })[usize::from(d)],
    }
}

/// Writes the `n` low decimal digits of `v` into `buf` as `digit(d)` bytes, right-aligned.
#[inline]
fn fill_digits(mut v: u128, buf: &mut [u8], digit: impl Fn(u8) -> u8) {
    let mut i = buf.len();
    if let Ok(mut small) = u64::try_from(v) {
        while i >= 2 {
            let pair = (small % 100) as u8;
            small /= 100;
            buf[i - 1] = digit(pair % 10);
            buf[i - 2] = digit(pair / 10);
            i -= 2;
        }
        if i == 1 {
            buf[0] = digit((small % 10) as u8);
        }
        return;
    }
    while i > 0 {
        i -= 1;
        buf[i] = digit((v % 10) as u8);
        v /= 10;
    }
}

/// Zoned decimal bytes, sign per `sign` (digits 0xF0–0xF9 in EBCDIC, '0'–'9' otherwise).
fn write_zoned(v: u128, neg: bool, pic: NumPic, sign: SignMode, enc: Encoding, out: &mut Vec<u8>) {
    let n = pic.digits as usize;
    let sep = |neg: bool| enc.byte(if neg { '-' } else { '+' }).unwrap_or(b'+');
    if pic.signed && sign == SignMode::LeadingSeparate {
        out.push(sep(neg));
    }
    let start = out.len();
    out.resize(start + n, 0);
    fill_digits(v, &mut out[start..], |d| enc.digit(d));
    if pic.signed {
        let digit_of = |b: u8| match enc {
            Encoding::Ebcdic(_) => b & 0x0F,
            _ => b - b'0',
        };
        match sign {
            SignMode::TrailingOverpunch => {
                let last = start + n - 1;
                out[last] = overpunch(digit_of(out[last]), neg, enc);
            }
            SignMode::LeadingOverpunch => out[start] = overpunch(digit_of(out[start]), neg, enc),
            SignMode::LeadingSeparate => {}
            SignMode::TrailingSeparate => out.push(sep(neg)),
        }
    }
}

/// 0..=99 as a packed-decimal byte (two digit nibbles).
const BCD: [u8; 100] = {
    let mut t = [0u8; 100];
    let mut i = 0;
    while i < 100 {
        t[i] = (((i / 10) << 4) | (i % 10)) as u8;
        i += 1;
    }
    t
};

/// Packed decimal: an odd number of digit nibbles plus the sign nibble (C +, D -, F unsigned).
fn write_packed(v: u128, neg: bool, pic: NumPic, out: &mut Vec<u8>) {
    let sign = match (pic.signed, neg) {
        (false, _) => 0xF,
        (true, false) => 0xC,
        (true, true) => 0xD,
    };
    // 2w - 1 digit nibbles (a leading 0 pads an even digit count), then the sign: from the
    // right, the last digit with the sign, then two digits a byte.
    let w = pic.digits as usize / 2 + 1;
    let start = out.len();
    out.resize(start + w, 0);
    let buf = &mut out[start..];
    // u64 arithmetic where the value allows (every picture up to 19 digits): u128
    // division is a library call.
    match u64::try_from(v) {
        Ok(x) => packed_digits(x, sign, buf),
        Err(_) => packed_digits(v, sign, buf),
    }
}

fn packed_digits<T>(mut x: T, sign: u8, buf: &mut [u8])
where
    T: Copy + From<u8> + std::ops::Rem<Output = T> + std::ops::Div<Output = T> + TryInto<u8>,
{
    let (ten, hundred) = (T::from(10), T::from(100));
    let w = buf.len();
    // Remainders below 100 always fit a u8.
    let low = |x: T, m: T| (x % m).try_into().unwrap_or(0);
    buf[w - 1] = (low(x, ten) << 4) | sign;
    x = x / ten;
    for byte in buf[..w - 1].iter_mut().rev() {
        *byte = BCD[usize::from(low(x, hundred))];
        x = x / hundred;
    }
}

/// Why one field's bytes are not a value: the byte (within the field) and the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadBytes {
    pub at: usize,
    pub message: String,
}

fn bad(at: usize, message: impl Into<String>) -> BadBytes {
    BadBytes {
        at,
        message: message.into(),
    }
}

impl Kind {
    /// Reads the value in `bytes` (exactly [`Kind::width`] long) and appends it to `out`:
    /// text without its padding, or a number with the picture's scale (`12.50`, `-0.00`).
    pub fn decode(&self, bytes: &[u8], enc: Encoding, out: &mut String) -> Result<(), BadBytes> {
        match self {
            Kind::Text { align, pad, .. } => {
                let start = out.len();
                enc.decode_into(bytes, out).map_err(|i| {
                    bad(
                        i,
                        format!(
                            "byte 0x{:02X} is not a character in {}",
                            bytes[i],
                            enc.name()
                        ),
                    )
                })?;
                strip_pad(out, start, *pad, *align);
                Ok(())
            }
            Kind::National { align, .. } => {
                let start = out.len();
                let units = bytes
                    .chunks_exact(2)
                    .map(|p| u16::from_be_bytes([p[0], p[1]]));
                for (i, c) in char::decode_utf16(units).enumerate() {
                    match c {
                        Ok(c) => out.push(c),
                        Err(_) => {
                            return Err(bad(
                                2 * i,
                                "an unpaired UTF-16 surrogate (not a character)",
                            ));
                        }
                    }
                }
                strip_pad(out, start, ' ', *align);
                Ok(())
            }
            Kind::Zoned {
                pic,
                sign,
                blank_zero,
            } => {
                let (neg, v) = read_zoned(bytes, *pic, *sign, *blank_zero, enc)?;
                push_number(out, neg, v, pic.scale);
                Ok(())
            }
            Kind::Packed { pic } => {
                let (neg, v) = read_packed(bytes, *pic)?;
                push_number(out, neg, v, pic.scale);
                Ok(())
            }
            Kind::Binary {
                pic,
                native,
                little,
                ..
            } => {
                let mut u: u64 = 0;
                let mut push = |b: u8| u = (u << 8) | u64::from(b);
                if *little {
                    bytes.iter().rev().for_each(|&b| push(b));
                } else {
                    bytes.iter().for_each(|&b| push(b));
                }
                let bits = 8 * bytes.len() as u32;
                let (neg, v) = if pic.signed && bits > 0 && (u >> (bits - 1)) & 1 == 1 {
                    // Two's complement: the magnitude of a negative value.
                    let mag = if bits == 64 {
                        u.wrapping_neg()
                    } else {
                        (1u64 << bits) - u
                    };
                    (true, u128::from(mag))
                } else {
                    (false, u128::from(u))
                };
                if !native && v >= 10u128.pow(pic.digits) {
                    return Err(bad(
                        0,
                        format!(
                            "the binary value has more digits than its picture's {} (written with TRUNC(BIN)? declare the field COMP-5)",
                            pic.digits
                        ),
                    ));
                }
                push_number(out, neg, v, pic.scale);
                Ok(())
            }
            Kind::Float(f) => f.decode(bytes, out).map_err(|m| bad(0, m)),
        }
    }
}

/// Removes the padding `decode_into` appended after `start`.
fn strip_pad(out: &mut String, start: usize, pad: char, align: Align) {
    match align {
        Align::Left => {
            let keep = out[start..].trim_end_matches(pad).len();
            out.truncate(start + keep);
        }
        Align::Right => {
            let lead = out[start..].len() - out[start..].trim_start_matches(pad).len();
            out.replace_range(start..start + lead, "");
        }
    }
}

/// Appends `±v × 10^-scale` with exactly the picture's decimals (`-0.00` kept).
pub fn push_number(out: &mut String, neg: bool, v: u128, scale: i32) {
    // The digits right-aligned in a buffer of zeros (so leading zeros of a fraction are
    // already there), then the point and the sign put in place: one append.
    const END: usize = 48;
    let mut buf = [b'0'; END];
    let mut i = END;
    match u64::try_from(v) {
        // u64 arithmetic where the value allows: u128 division is a library call.
        Ok(mut x) => {
            while x >= 100 {
                let d = (x % 100) as usize * 2;
                x /= 100;
                i -= 2;
                buf[i..i + 2].copy_from_slice(&PAIRS[d..d + 2]);
            }
            if x >= 10 {
                let d = x as usize * 2;
                i -= 2;
                buf[i..i + 2].copy_from_slice(&PAIRS[d..d + 2]);
            } else {
                i -= 1;
                buf[i] = b'0' + x as u8;
            }
        }
        Err(_) => {
            let mut x = v;
            while x != 0 {
                i -= 1;
                buf[i] = b'0' + (x % 10) as u8;
                x /= 10;
            }
        }
    }
    let mut start = i;
    if scale > 0 {
        // Pictures have at most 31 decimals, values at most 38 digits: it all fits.
        let scale = scale as usize;
        start = start.min(END - scale - 1);
        let point = END - scale;
        buf.copy_within(start..point, start - 1);
        start -= 1;
        buf[point - 1] = b'.';
    }
    if neg {
        start -= 1;
        buf[start] = b'-';
    }
    // Only ASCII digits, '-' and '.' are in `buf`.
    out.push_str(std::str::from_utf8(&buf[start..]).unwrap_or("0"));
    if scale < 0 && v != 0 {
        (0..-scale).for_each(|_| out.push('0'));
    }
}

/// "00" to "99".
const PAIRS: &[u8; 200] = b"\
0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// A zoned decimal's sign and stored digits. Accepts the preferred signs ESS writes and the
/// others COBOL accepts: zones C/A/E/F positive and D/B negative in EBCDIC; `{A-I` / `}J-R`
/// and `p`–`y` (negative, Micro Focus style) in ASCII; a plain digit is positive.
fn read_zoned(
    bytes: &[u8],
    pic: NumPic,
    sign: SignMode,
    blank_zero: bool,
    enc: Encoding,
) -> Result<(bool, u128), BadBytes> {
    let ebcdic = matches!(enc, Encoding::Ebcdic(_));
    if blank_zero && bytes.iter().all(|&b| b == enc.space()) {
        return Ok((false, 0));
    }
    let sep = pic.signed && matches!(sign, SignMode::LeadingSeparate | SignMode::TrailingSeparate);
    let (digits, sign_byte, sign_at) = if sep {
        match sign {
            SignMode::LeadingSeparate => (&bytes[1..], Some(bytes[0]), 0),
            _ => (
                &bytes[..bytes.len() - 1],
                Some(bytes[bytes.len() - 1]),
                bytes.len() - 1,
            ),
        }
    } else {
        (bytes, None, 0)
    };
    let mut neg = false;
    if let Some(b) = sign_byte {
        neg = match enc.char_of(b) {
            Some('-') => true,
            Some('+') => false,
            _ => return Err(bad(sign_at, "the separate sign is neither + nor -")),
        };
    }
    let base = if sep && sign == SignMode::LeadingSeparate {
        1
    } else {
        0
    };
    let over_at = match (pic.signed && !sep, sign) {
        (true, SignMode::LeadingOverpunch) => Some(0),
        (true, _) => Some(digits.len() - 1),
        (false, _) => None,
    };
    let mut v: u128 = 0;
    for (i, &b) in digits.iter().enumerate() {
        let d = if ebcdic {
            let (zone, d) = (b >> 4, b & 0x0F);
            let zone_ok = if over_at == Some(i) {
                match zone {
                    0xC | 0xA | 0xE | 0xF => true,
                    0xD | 0xB => {
                        neg = true;
                        true
                    }
                    _ => false,
                }
            } else {
                zone == 0xF || (!pic.signed && i == digits.len() - 1 && zone == 0xC)
            };
            if !zone_ok || d > 9 {
                return Err(bad(
                    base + i,
                    format!("byte 0x{b:02X} is not a zoned-decimal digit"),
                ));
            }
            d
        } else if b.is_ascii_digit() {
            b - b'0'
        } else if over_at == Some(i) {
            if let Some(p) = OVER_POS.iter().position(|&x| x == b) {
                p as u8
            } else if let Some(p) = OVER_NEG.iter().position(|&x| x == b) {
                neg = true;
                p as u8
            } else if (b'p'..=b'y').contains(&b) {
                neg = true;
                b - b'p'
            } else {
                return Err(bad(
                    base + i,
                    format!("byte 0x{b:02X} is not a zoned-decimal digit or sign"),
                ));
            }
        } else {
            return Err(bad(
                base + i,
                format!("byte 0x{b:02X} is not a zoned-decimal digit"),
            ));
        };
        v = v * 10 + u128::from(d);
    }
    Ok((neg, v))
}

/// A packed decimal's sign and digits. Sign nibbles C/A/E/F are positive, D/B negative; an
/// unsigned picture takes F or C.
fn read_packed(bytes: &[u8], pic: NumPic) -> Result<(bool, u128), BadBytes> {
    let n = bytes.len();
    let mut v: u128 = 0;
    let even = pic.digits % 2 == 0;
    for (i, &b) in bytes.iter().enumerate() {
        let (hi, lo) = (b >> 4, b & 0x0F);
        if i == 0 && even {
            if hi != 0 {
                return Err(bad(0, "the packed value has more digits than its picture"));
            }
        } else if hi > 9 {
            return Err(bad(
                i,
                format!("nibble {hi:X} of byte 0x{b:02X} is not a packed-decimal digit"),
            ));
        } else {
            v = v * 10 + u128::from(hi);
        }
        if i + 1 < n {
            if lo > 9 {
                return Err(bad(
                    i,
                    format!("nibble {lo:X} of byte 0x{b:02X} is not a packed-decimal digit"),
                ));
            }
            v = v * 10 + u128::from(lo);
        } else {
            let neg = match lo {
                0xD | 0xB if pic.signed => true,
                0xC | 0xA | 0xE | 0xF => false,
                0xD | 0xB => return Err(bad(i, "a negative sign in an unsigned packed field")),
                _ => {
                    return Err(bad(
                        i,
                        format!("nibble {lo:X} of byte 0x{b:02X} is not a packed-decimal sign"),
                    ));
                }
            };
            return Ok((neg, v));
        }
    }
    Ok((false, v))
}

/// One payload path a record reads, for [`lookup_all`]: its field, its first key and the
/// rest of the path (kept apart from the fields so that looking up touches only these).
#[derive(Debug, Clone)]
pub struct Lookup {
    pub field: usize,
    pub key: String,
    pub rest: Vec<PathSeg>,
}

/// Every payload value a record reads, in one pass: `out[i]` (`out` is as long as the
/// fields) is field `i`'s value (`None` when missing or not a payload path). `order` is
/// [`lookup_order`]'s. With a payload much larger than the map reads, one lookup per field
/// is cheaper, and that is what is done.
pub fn lookup_all<'a>(
    payload: &'a Map<String, Value>,
    order: &[Lookup],
    out: &mut [Option<&'a Value>],
) {
    out.fill(None);
    if !map_is_sorted() || payload.len() > 8 * order.len().max(1) {
        for l in order {
            out[l.field] = payload.get(&l.key).and_then(|v| lookup_in(v, &l.rest));
        }
        return;
    }
    // `order` is sorted by first key, as the payload's keys iterate. One comparison per
    // step: the payload's key against the next wanted one.
    let mut entries = payload.iter();
    let mut entry = entries.next();
    for l in order {
        while let Some((k, v)) = entry {
            match cmp_key(k.as_bytes(), l.key.as_bytes()) {
                std::cmp::Ordering::Less => entry = entries.next(),
                std::cmp::Ordering::Equal => {
                    out[l.field] = lookup_in(v, &l.rest);
                    break;
                }
                std::cmp::Ordering::Greater => break,
            }
        }
        if entry.is_none() {
            break;
        }
    }
}

/// [`lookup_all`] over the payload's JSON text, without building a tree: `out[i]` is the
/// text of field `i`'s first path key (`None` when missing), borrowed from `text`. The rest
/// of a nested path is followed by the caller ([`lookup_in`] on that value alone). The
/// values no field reads are skipped, not built; duplicate keys: the last, as the tree
/// keeps it. `Err` when `text` is not a JSON object.
pub fn lookup_raw<'a>(
    text: &'a str,
    order: &[Lookup],
    out: &mut [Option<&'a RawValue>],
) -> Result<(), serde_json::Error> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};

    struct Walk<'o, 'l, 'de> {
        order: &'l [Lookup],
        out: &'o mut [Option<&'de RawValue>],
    }
    impl<'de> Visitor<'de> for Walk<'_, '_, 'de> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let order = self.order;
            // Where the next wanted key usually is: payloads made by programs list their
            // keys sorted, as `order` is; else a binary search finds it.
            let mut next = 0;
            while let Some(key) = map.next_key_seed(KeySeed)? {
                let key = key.as_bytes();
                let at = match order.get(next) {
                    Some(l) if l.key.as_bytes() == key => next,
                    _ => order.partition_point(|l| cmp_key(l.key.as_bytes(), key).is_lt()),
                };
                let wanted = &order[at..];
                let n = wanted
                    .iter()
                    .take_while(|l| l.key.as_bytes() == key)
                    .count();
                if n == 0 {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
                let v: &'de RawValue = map.next_value()?;
                for l in &wanted[..n] {
                    self.out[l.field] = Some(v);
                }
                next = at + n;
            }
            Ok(())
        }
    }

    out.fill(None);
    let mut de = serde_json::Deserializer::from_str(text);
    de.deserialize_map(Walk { order, out })?;
    de.end()
}

/// A key, borrowed unless it holds escapes.
struct KeySeed;
impl<'de> serde::de::DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}
impl<'de> serde::de::Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a key")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
}

/// The value at `rest` inside the JSON text `raw` (the rest of a nested path, after
/// [`lookup_raw`] found its first key), borrowed: what [`lookup_in`] finds in the tree,
/// `None` when missing or `null`. `Err` only when `raw` is not JSON.
pub fn raw_in<'a>(
    mut raw: &'a RawValue,
    rest: &[PathSeg],
) -> Result<Option<&'a RawValue>, serde_json::Error> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

    /// The value of one key of an object (the last, if given twice).
    struct Key<'k>(&'k str);
    impl<'de> Visitor<'de> for Key<'_> {
        type Value = Option<&'de RawValue>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut found = None;
            while let Some(key) = map.next_key_seed(KeySeed)? {
                if key == self.0 {
                    found = Some(map.next_value()?);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(found)
        }
    }
    /// One element of an array.
    struct Index(usize);
    impl<'de> Visitor<'de> for Index {
        type Value = Option<&'de RawValue>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an array")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut found = None;
            let mut i = 0;
            while found.is_none() && i <= self.0 {
                match seq.next_element::<&'de RawValue>()? {
                    Some(v) if i == self.0 => found = Some(v),
                    Some(_) => i += 1,
                    None => return Ok(None),
                }
            }
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(found)
        }
    }

    for seg in rest {
        // Only an object has keys and only an array has elements: anything else is
        // missing there, as in the tree.
        let text = raw.get().trim_start();
        let mut de = serde_json::Deserializer::from_str(text);
        let next = match (seg, text.as_bytes().first()) {
            (PathSeg::Key(k), Some(b'{')) => de.deserialize_map(Key(k))?,
            (PathSeg::Index(i), Some(b'[')) => de.deserialize_seq(Index(*i))?,
            _ => None,
        };
        match next {
            Some(v) => raw = v,
            None => return Ok(None),
        }
    }
    Ok((raw.get() != "null").then_some(raw))
}

/// `a.cmp(b)` inline: payload keys are short, and a call to `memcmp` costs more than
/// comparing them here.
#[inline]
fn cmp_key(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    // Eight bytes at a time while both have them (read big-endian, a u64 orders like the
    // bytes), then byte by byte. Keys of one payload often share long prefixes.
    let (mut a, mut b) = (a, b);
    while let (Some((x, ra)), Some((y, rb))) =
        (a.split_first_chunk::<8>(), b.split_first_chunk::<8>())
    {
        if x != y {
            return u64::from_be_bytes(*x).cmp(&u64::from_be_bytes(*y));
        }
        (a, b) = (ra, rb);
    }
    for (x, y) in a.iter().zip(b) {
        if x != y {
            return x.cmp(y);
        }
    }
    a.len().cmp(&b.len())
}

/// Whether `serde_json::Map` iterates in key order (a BTreeMap; not with serde_json's
/// `preserve_order` feature, which another crate could switch on).
fn map_is_sorted() -> bool {
    static SORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SORTED.get_or_init(|| {
        let mut m = Map::new();
        m.insert("b".into(), Value::Null);
        m.insert("a".into(), Value::Null);
        m.keys().next().is_some_and(|k| k == "a")
    })
}

/// The payload paths of `fields`, sorted by first key (then field), for [`lookup_all`].
pub fn lookup_order(fields: &[Field]) -> Vec<Lookup> {
    let mut out: Vec<Lookup> = fields
        .iter()
        .enumerate()
        .filter_map(|(i, f)| match &f.source {
            Source::Path(p) => match p.split_first() {
                Some((PathSeg::Key(k), rest)) => Some(Lookup {
                    field: i,
                    key: k.clone(),
                    rest: rest.to_vec(),
                }),
                _ => None,
            },
            _ => None,
        })
        .collect();
    out.sort_by(|a, b| a.key.cmp(&b.key).then(a.field.cmp(&b.field)));
    out
}

pub(crate) fn lookup_in<'a>(mut v: &'a Value, rest: &[PathSeg]) -> Option<&'a Value> {
    for seg in rest {
        v = match seg {
            PathSeg::Key(k) => v.as_object()?.get(k)?,
            PathSeg::Index(i) => v.as_array()?.get(*i)?,
            // A record field holds one value; the compiler refuses `[*]` in field sources.
            PathSeg::Each => return None,
        };
    }
    (!v.is_null()).then_some(v)
}

/// Follows a payload path; `null` counts as missing.
pub fn lookup<'a>(payload: &'a Map<String, Value>, path: &[PathSeg]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let PathSeg::Key(k) = first else { return None };
    lookup_in(payload.get(k)?, rest)
}

/// RFC 3339, or a local `YYYY-MM-DDTHH:MM:SS` / `YYYY-MM-DD` read in `tz`.
/// The characters `n` (the value at `path`) was sent with: serde_json's tree prints an
/// exponent as `e+N`, so the number is read from the payload's text (checked to be the same
/// number, in case a transform changed the value).
pub fn sent_number<'a>(event: &'a Event, path: &[PathSeg], n: &'a Number) -> &'a str {
    let shown = n.as_str();
    if !shown.contains('e') {
        return shown;
    }
    match raw_at(event.payload.text(), path) {
        Some(raw) if raw.parse::<Number>().is_ok_and(|m| m == *n) => raw,
        _ => shown,
    }
}

/// The JSON text at `path` in the JSON text `json`, borrowed (duplicate keys: the last, as
/// serde_json's tree keeps it).
fn raw_at<'a>(json: &'a str, path: &[PathSeg]) -> Option<&'a str> {
    use serde_json::value::RawValue;
    let mut at: &'a str = json;
    for seg in path {
        let next: &'a RawValue = match seg {
            PathSeg::Key(k) => {
                let m: std::collections::HashMap<Cow<'a, str>, &'a RawValue> =
                    serde_json::from_str(at).ok()?;
                m.get(k.as_str())?
            }
            PathSeg::Index(i) => {
                let v: Vec<&'a RawValue> = serde_json::from_str(at).ok()?;
                v.get(*i)?
            }
            PathSeg::Each => return None,
        };
        at = next.get();
    }
    Some(at.trim())
}

pub fn parse_time(text: &str, tz: Tz) -> Result<DateTime<Tz>, String> {
    let t = text.trim();
    if let Some(d) = rfc3339_seconds(t) {
        return Ok(d.with_timezone(&tz));
    }
    if let Ok(d) = DateTime::parse_from_rfc3339(t) {
        return Ok(d.with_timezone(&tz));
    }
    let local = NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f"))
        .ok()
        .or_else(|| {
            NaiveDate::parse_from_str(t, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
        });
    match local {
        Some(l) => tz.from_local_datetime(&l).earliest().ok_or_else(|| {
            format!("the local time does not exist in {tz} (skipped by a daylight-saving change)")
        }),
        None => Err(
            "value is not a date or time (expected RFC 3339 such as 2025-04-12T10:03:00Z, or 2025-04-12)"
                .to_string(),
        ),
    }
}

/// `%Y %m %d %H %M %S` and plain ASCII, written directly (the patterns legacy records use;
/// chrono's formatter is several times slower). `None` for anything else.
fn format_digits(t: &DateTime<Tz>, pattern: &str) -> Option<String> {
    let mut buf = [0u8; 32];
    let n = digits_into(t, pattern, &mut buf)?;
    // Only ASCII was written.
    std::str::from_utf8(&buf[..n]).ok().map(str::to_string)
}

/// [`format_digits`] into a buffer: its length, or `None` (another pattern, or too long).
fn digits_into(t: &DateTime<Tz>, pattern: &str, buf: &mut [u8; 32]) -> Option<usize> {
    use chrono::{Datelike, Timelike};
    let l = t.naive_local();
    let mut n = 0;
    let mut put = |b: u8| -> Option<()> {
        *buf.get_mut(n)? = b;
        n += 1;
        Some(())
    };
    let mut it = pattern.bytes();
    while let Some(b) = it.next() {
        if b != b'%' {
            if !b.is_ascii() {
                return None;
            }
            put(b)?;
            continue;
        }
        let (v, w) = match it.next()? {
            b'Y' => (l.year(), 4),
            b'm' => (l.month() as i32, 2),
            b'd' => (l.day() as i32, 2),
            b'H' => (l.hour() as i32, 2),
            b'M' => (l.minute() as i32, 2),
            b'S' => (l.second() as i32, 2),
            _ => return None,
        };
        if !(0..=9999).contains(&v) {
            return None;
        }
        // 0..=9999 in `w` (2 or 4) digits.
        let v = v as u32;
        if w == 4 {
            put(b'0' + (v / 1000) as u8)?;
            put(b'0' + (v / 100 % 10) as u8)?;
        }
        put(b'0' + (v / 10 % 10) as u8)?;
        put(b'0' + (v % 10) as u8)?;
    }
    Some(n)
}

/// [`digits_into`] for the commonest date of all, `YYYY-MM-DDTHH:MM:SSZ` formatted in UTC:
/// the local fields are the text's own, so they are copied from it once the date and time
/// are checked as [`rfc3339_seconds`] checks them. `None` for anything else (another form,
/// an offset, another timezone, a pattern [`digits_into`] does not write).
fn utc_digits(text: &str, tz: Tz, pattern: &str, buf: &mut [u8; 32]) -> Option<usize> {
    if tz != chrono_tz::UTC && tz != chrono_tz::Etc::UTC {
        return None;
    }
    let b = text.trim().as_bytes();
    let shape = b.len() == 20
        && b.iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            10 => c == b'T',
            13 | 16 => c == b':',
            19 => c == b'Z',
            _ => c.is_ascii_digit(),
        });
    if !shape {
        return None;
    }
    let num =
        |r: std::ops::Range<usize>| b[r].iter().fold(0u32, |a, &c| a * 10 + u32::from(c - b'0'));
    // As chrono checks them: a real day of the calendar, 00:00:00 to 23:59:59.
    NaiveDate::from_ymd_opt(num(0..4) as i32, num(5..7), num(8..10))?.and_hms_opt(
        num(11..13),
        num(14..16),
        num(17..19),
    )?;
    let mut n = 0;
    let mut it = pattern.bytes();
    while let Some(c) = it.next() {
        let from: &[u8] = if c != b'%' {
            if !c.is_ascii() {
                return None;
            }
            std::slice::from_ref(&c)
        } else {
            match it.next()? {
                b'Y' => &b[0..4],
                b'm' => &b[5..7],
                b'd' => &b[8..10],
                b'H' => &b[11..13],
                b'M' => &b[14..16],
                b'S' => &b[17..19],
                _ => return None,
            }
        };
        buf.get_mut(n..n + from.len())?.copy_from_slice(from);
        n += from.len();
    }
    Some(n)
}

/// The common RFC 3339 form, `YYYY-MM-DDTHH:MM:SSZ` (or `±HH:MM`), read directly; anything
/// else (fractions, lower-case, odd spacing) goes to chrono's parser.
fn rfc3339_seconds(t: &str) -> Option<DateTime<Utc>> {
    let b = t.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        b[r].iter().try_fold(0u32, |a, &c| {
            c.is_ascii_digit().then(|| a * 10 + u32::from(c - b'0'))
        })
    };
    let offset_secs: i32 = match &b[19..] {
        [b'Z'] => 0,
        [s @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let d = |x: &u8| x.is_ascii_digit().then(|| i32::from(x - b'0'));
            let v = (d(h1)? * 10 + d(h2)?) * 3600 + (d(m1)? * 10 + d(m2)?) * 60;
            if *s == b'-' { -v } else { v }
        }
        _ => return None,
    };
    let date = NaiveDate::from_ymd_opt(num(0..4)? as i32, num(5..7)?, num(8..10)?)?;
    let local = date.and_hms_opt(num(11..13)?, num(14..16)?, num(17..19)?)?;
    let utc = local.checked_sub_signed(chrono::TimeDelta::seconds(i64::from(offset_secs)))?;
    Some(Utc.from_utc_datetime(&utc))
}

/// For a pattern without a date (`%H%M%S`): also a bare `HH:MM:SS` (what decoding such a
/// field gives back), read as that time of 2000-01-01 in `tz`.
fn parse_time_of_day(text: &str, tz: Tz) -> Result<DateTime<Tz>, String> {
    match chrono::NaiveTime::parse_from_str(text.trim(), "%H:%M:%S%.f") {
        Ok(t) => NaiveDate::from_ymd_opt(2000, 1, 1)
            .map(|d| d.and_time(t))
            .and_then(|l| tz.from_local_datetime(&l).earliest())
            .ok_or_else(|| format!("the local time does not exist in {tz}")),
        Err(_) => parse_time(text, tz),
    }
}

fn format_time(t: &DateTime<Tz>, items: &[Item<'static>], pattern: &str) -> Result<String, String> {
    if let Some(s) = format_digits(t, pattern) {
        return Ok(s);
    }
    let mut s = String::new();
    // A pattern that needs something the value lacks makes Display fail; report, never panic.
    write!(s, "{}", t.format_with_items(items.iter()))
        .map_err(|_| format!("format {pattern:?} cannot format this time"))?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The UTC shortcut of [`Field::date_into`] writes what the general path writes, and
    /// declines whatever the general path would read differently or refuse.
    #[test]
    fn a_utc_date_copied_from_its_text_is_the_date_chrono_formats() {
        let patterns = [
            "%Y%m%d%H%M%S",
            "%Y-%m-%d",
            "%H%M%S",
            "%d/%m/%Y %H:%M",
            "%y%m%d",
            "%j",
        ];
        let texts = [
            "2025-04-12T10:03:00Z",
            " 2025-04-12T10:03:00Z ",
            "2024-02-29T23:59:59Z",
            "2023-02-29T10:00:00Z",
            "2025-04-12T24:00:00Z",
            "2025-04-12T10:60:00Z",
            "2025-04-12T10:03:60Z",
            "2025-13-01T00:00:00Z",
            "2025-00-10T00:00:00Z",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59Z",
            "2025-04-12T10:03:00z",
            "2025-04-12t10:03:00Z",
            "2025-04-12T10:03:00+00:00",
            "2025-04-12T10:03:00.5Z",
            "2025-04-12T10:03:00Z",
            "+025-04-12T10:03:00Z",
            "2025-04-12T10:03:0٣Z",
        ];
        for tz in [
            chrono_tz::UTC,
            chrono_tz::Etc::UTC,
            chrono_tz::America::New_York,
        ] {
            for pattern in patterns {
                for text in texts {
                    let mut fast = [0u8; 32];
                    let Some(n) = utc_digits(text, tz, pattern, &mut fast) else {
                        continue;
                    };
                    assert!(tz != chrono_tz::America::New_York, "{text}: UTC only");
                    let t = parse_time(text, tz).unwrap_or_else(|e| panic!("{text}: {e}"));
                    let mut general = [0u8; 32];
                    let m = digits_into(&t, pattern, &mut general).expect("a digits pattern");
                    assert_eq!(&fast[..n], &general[..m], "{text} as {pattern} in {tz}");
                }
            }
        }
        // The shortcut is taken where it matters, and declines the rest.
        let mut buf = [0u8; 32];
        let n = utc_digits(
            "2025-04-12T10:03:00Z",
            chrono_tz::UTC,
            "%Y%m%d%H%M%S",
            &mut buf,
        );
        assert_eq!(n.map(|n| &buf[..n]), Some(&b"20250412100300"[..]));
        for bad in ["2023-02-29T10:00:00Z", "2025-04-12T24:00:00Z"] {
            assert_eq!(
                utc_digits(bad, chrono_tz::UTC, "%Y", &mut buf),
                None,
                "{bad}"
            );
            assert!(
                parse_time(bad, chrono_tz::UTC).is_err(),
                "{bad} is refused either way"
            );
        }
        // A leap second is chrono's to read (RFC 3339 allows it): declined here.
        assert_eq!(
            utc_digits("2016-12-31T23:59:60Z", chrono_tz::UTC, "%S", &mut buf),
            None
        );
    }

    #[test]
    fn numbers_are_read_with_the_characters_they_were_sent_with() {
        let sent = r#"{"a": 1E2, "b": {"c": [5, -2.50E-3]}, "d": 1e5, "a": 7E1, "s": "1E2"}"#;
        let event = Event {
            seq: 1,
            event_type: "T".into(),
            payload: crate::event::Payload::parse(sent).unwrap(),
            key: "k".into(),
            trace_id: "t".into(),
            ts: None,
            received_at: Utc::now(),
        };
        let path = |p: &str| match Source::parse(p).unwrap() {
            Source::Path(p) => p,
            _ => unreachable!(),
        };
        let tree = event.payload.tree().unwrap();
        let at = |p: &str| {
            let v = lookup(tree, &path(p)).unwrap();
            sent_number(&event, &path(p), v.as_number().unwrap()).to_string()
        };
        // Duplicate keys: the last one, as the tree keeps it.
        assert_eq!(at("a"), "7E1");
        assert_eq!(at("b.c[1]"), "-2.50E-3");
        assert_eq!(at("b.c[0]"), "5");
        assert_eq!(at("d"), "1e5");
        // A value the tree no longer holds as sent (a transform changed it) is the tree's.
        let mut changed = tree.clone();
        changed.insert("d".into(), serde_json::from_str("3e+1").unwrap());
        let v = lookup(&changed, &path("d")).unwrap();
        assert_eq!(
            sent_number(&event, &path("d"), v.as_number().unwrap()),
            "3e+1"
        );
    }

    #[test]
    fn values_are_found_in_the_text_as_in_the_tree() {
        let order = |keys: &[(&str, usize)]| {
            let mut v: Vec<Lookup> = keys
                .iter()
                .map(|&(k, field)| Lookup {
                    field,
                    key: k.into(),
                    rest: Vec::new(),
                })
                .collect();
            v.sort_by(|a, b| a.key.cmp(&b.key));
            v
        };
        // Keys out of order, an escaped key, a duplicate (the last counts), a nested
        // object skipped, two fields reading one key, a key no field reads.
        let text = r#"{"z": 1E2, "\u0061b": "x\ny", "n": {"deep": [1, {"q": 2}]}, "m": "first",
                      "m": "last", "other": [true, null]}"#;
        let order = order(&[
            ("ab", 0),
            ("m", 1),
            ("n", 2),
            ("z", 3),
            ("z", 4),
            ("gone", 5),
        ]);
        let mut out = [None; 6];
        lookup_raw(text, &order, &mut out).unwrap();
        let got: Vec<Option<&str>> = out.iter().map(|r| r.map(RawValue::get)).collect();
        assert_eq!(
            got,
            [
                Some(r#""x\ny""#),
                Some(r#""last""#),
                Some(r#"{"deep": [1, {"q": 2}]}"#),
                Some("1E2"),
                Some("1E2"),
                None
            ]
        );
        // What the tree says of the same text, for each field.
        let tree: Map<String, Value> = serde_json::from_str(text).unwrap();
        for l in &order {
            let from_text = out[l.field].map(|r| serde_json::from_str::<Value>(r.get()).unwrap());
            assert_eq!(from_text.as_ref(), tree.get(&l.key), "{}", l.key);
        }
        // Nested paths: what the tree finds, borrowed from the text.
        let n = out[2].unwrap();
        let p = |s: &str| match Source::parse(s).unwrap() {
            Source::Path(p) => p,
            _ => unreachable!(),
        };
        for (path, want) in [
            ("n.deep[1].q", Some("2")),
            ("n.deep[0]", Some("1")),
            ("n.deep[2]", None),
            ("n.deep.q", None),
            ("n.deep[1].q.r", None),
            ("n.nothing", None),
        ] {
            let rest = &p(path)[1..];
            assert_eq!(raw_in(n, rest).unwrap().map(RawValue::get), want, "{path}");
            let in_tree = lookup(&tree, &p(path)).map(|v| v.to_string());
            assert_eq!(in_tree.as_deref(), want, "{path}");
        }
        let null: &RawValue = serde_json::from_str(r#"{"a": null, "b": [null]}"#).unwrap();
        assert!(raw_in(null, &p("a")).unwrap().is_none());
        assert!(raw_in(null, &p("b[0]")).unwrap().is_none());
        // Not an object, or not JSON at all: an error, never a half answer.
        for bad in ["[1, 2]", "\"s\"", "{\"a\": 1", "{\"a\": 1} x", ""] {
            assert!(lookup_raw(bad, &order, &mut out).is_err(), "{bad}");
        }
    }

    fn field(kind: Kind) -> Field {
        Field::plain("F", Source::Blank, kind)
    }

    fn bytes(kind: Kind, text: &str, enc: Encoding) -> Vec<u8> {
        let mut out = Vec::new();
        field(kind).write(Some(text), enc, &mut out).unwrap();
        out
    }

    fn back(kind: Kind, b: &[u8], enc: Encoding) -> String {
        let mut s = String::new();
        kind.decode(b, enc, &mut s).unwrap();
        s
    }

    #[test]
    fn overpunch_and_packed() {
        let pic = NumPic::new(true, 3, 2);
        let zoned = |sign| Kind::Zoned {
            pic,
            sign,
            blank_zero: false,
        };
        let a = Encoding::Ascii;
        assert_eq!(
            bytes(zoned(SignMode::TrailingOverpunch), "19.99", a),
            b"0199I"
        );
        assert_eq!(
            bytes(zoned(SignMode::TrailingOverpunch), "-19.90", a),
            b"0199}"
        );
        assert_eq!(
            bytes(zoned(SignMode::LeadingSeparate), "-19.9", a),
            b"-01990"
        );
        let e273 = Encoding::parse("ebcdic-273").unwrap();
        // The sign is a zone nibble on every code page (273 puts `{` elsewhere).
        assert_eq!(
            bytes(zoned(SignMode::TrailingOverpunch), "-1", e273),
            [0xF0, 0xF0, 0xF1, 0xF0, 0xD0]
        );
        assert_eq!(bytes(Kind::Packed { pic }, "-19.99", a), [0x01, 0x99, 0x9D]);
        assert_eq!(
            bytes(
                Kind::Packed {
                    pic: NumPic::new(false, 4, 0)
                },
                "1234",
                a
            ),
            [0x01, 0x23, 0x4F]
        );
        assert_eq!(bytes(Kind::Packed { pic }, "-0", a), [0x00, 0x00, 0x0D]);
        assert_eq!(back(Kind::Packed { pic }, &[0x00, 0x00, 0x0D], a), "-0.00");
        assert_eq!(
            back(zoned(SignMode::TrailingOverpunch), b"0123t", a),
            "-12.34"
        );
    }

    #[test]
    fn decoding_undoes_encoding() {
        let a = Encoding::Ascii;
        let e = Encoding::parse("ebcdic-037").unwrap();
        let cases: Vec<(Kind, &str)> = vec![
            (
                Kind::Zoned {
                    pic: NumPic::new(true, 5, 2),
                    sign: SignMode::LeadingOverpunch,
                    blank_zero: false,
                },
                "-12345.67",
            ),
            (
                Kind::Zoned {
                    pic: NumPic::new(true, 5, 2),
                    sign: SignMode::TrailingSeparate,
                    blank_zero: false,
                },
                "0.05",
            ),
            (
                Kind::Zoned {
                    pic: NumPic::new(false, 3, 0),
                    sign: SignMode::TrailingOverpunch,
                    blank_zero: true,
                },
                "0",
            ),
            (
                Kind::Zoned {
                    pic: NumPic {
                        signed: false,
                        digits: 3,
                        scale: -3,
                    },
                    sign: SignMode::TrailingOverpunch,
                    blank_zero: false,
                },
                "123000",
            ),
            (
                Kind::Packed {
                    pic: NumPic {
                        signed: true,
                        digits: 3,
                        scale: 6,
                    },
                },
                "-0.000456",
            ),
            (
                Kind::Binary {
                    pic: NumPic::new(true, 4, 0),
                    bytes: 2,
                    native: false,
                    little: false,
                },
                "-9999",
            ),
            (
                Kind::Binary {
                    pic: NumPic::new(true, 4, 0),
                    bytes: 2,
                    native: true,
                    little: true,
                },
                "-32768",
            ),
            (
                Kind::Binary {
                    pic: NumPic::new(false, 18, 0),
                    bytes: 8,
                    native: true,
                    little: false,
                },
                "18446744073709551615",
            ),
            (
                Kind::National {
                    chars: 3,
                    align: Align::Left,
                },
                "é€",
            ),
            (
                Kind::Text {
                    width: Some(5),
                    align: Align::Right,
                    pad: ' ',
                },
                "ab",
            ),
        ];
        for (kind, text) in cases {
            for enc in [a, e] {
                let b = bytes(kind.clone(), text, enc);
                assert_eq!(Some(b.len()), kind.width(), "{kind:?}");
                assert_eq!(back(kind.clone(), &b, enc), text, "{kind:?} {enc:?}");
            }
        }
        let bwz = Kind::Zoned {
            pic: NumPic::new(false, 3, 0),
            sign: SignMode::TrailingOverpunch,
            blank_zero: true,
        };
        assert_eq!(bytes(bwz, "0", a), b"   ");
    }

    #[test]
    fn bad_bytes_name_their_place() {
        let pic = NumPic::new(true, 5, 0);
        let mut s = String::new();
        let e = Kind::Packed { pic }
            .decode(&[0x12, 0x3A, 0x5C], Encoding::Ascii, &mut s)
            .unwrap_err();
        assert_eq!(e.at, 1);
        assert!(e.message.contains("not a packed-decimal digit"), "{e:?}");
        let e = Kind::Packed { pic }
            .decode(&[0x12, 0x34, 0x57], Encoding::Ascii, &mut s)
            .unwrap_err();
        assert!(e.message.contains("sign"), "{e:?}");
        let bin = Kind::Binary {
            pic: NumPic::new(false, 4, 0),
            bytes: 2,
            native: false,
            little: false,
        };
        assert!(
            bin.decode(&[0x27, 0x10], Encoding::Ascii, &mut s)
                .unwrap_err()
                .message
                .contains("COMP-5")
        );
        let nat = Kind::National {
            chars: 1,
            align: Align::Left,
        };
        assert!(nat.decode(&[0xD8, 0x00], Encoding::Ascii, &mut s).is_err());
    }

    #[test]
    fn the_fast_number_path_agrees_with_the_general_one() {
        let texts = [
            "0",
            "-0",
            "-0.00",
            "5",
            "5.",
            ".5",
            "19.99",
            "-19.990",
            "1234567.5678",
            "00012",
            "9999999999999999999",
            "99999999999999999999",
            "1.000000000000000000",
            "12345678901234567890",
            "-",
            ".",
            "1..2",
            "1e3",
            " 1",
            "+1",
            "1,0",
            "0.001234",
            "123000",
        ];
        let pics = [
            NumPic::new(true, 7, 2),
            NumPic::new(false, 3, 0),
            NumPic::new(true, 18, 1),
            NumPic::new(false, 19, 0),
            NumPic {
                signed: true,
                digits: 3,
                scale: 6,
            },
            NumPic {
                signed: false,
                digits: 3,
                scale: -3,
            },
        ];
        for t in texts {
            for pic in pics {
                let general =
                    Decimal::parse(t).and_then(|d| d.to_stored(pic.digits, pic.scale, false));
                if let Some((neg, v)) = stored_fast(t, pic) {
                    assert_eq!(general, Ok(v), "{t} {pic:?}");
                    assert_eq!(neg, pic.signed && t.starts_with('-'), "{t} {pic:?}");
                }
            }
        }
    }

    #[test]
    fn comp5_range_is_the_storage() {
        let k = Kind::Binary {
            pic: NumPic::new(true, 4, 0),
            bytes: 2,
            native: true,
            little: false,
        };
        assert_eq!(bytes(k.clone(), "32767", Encoding::Ascii), [0x7F, 0xFF]);
        let mut out = Vec::new();
        assert!(
            field(k)
                .write(Some("32768"), Encoding::Ascii, &mut out)
                .unwrap_err()
                .contains("2 bytes")
        );
        let comp = Kind::Binary {
            pic: NumPic::new(true, 4, 0),
            bytes: 2,
            native: false,
            little: false,
        };
        assert!(
            field(comp)
                .write(Some("10000"), Encoding::Ascii, &mut out)
                .unwrap_err()
                .contains("4 integer digits")
        );
    }
}
