//! One compiled field: where its value comes from, the text pipeline it goes through
//! (trim, map, date format, case) and how it is laid out (padded text, zoned decimal,
//! packed decimal, big-endian binary).
//!
//! The order, fixed so that a map reads the same way to everyone:
//! 1. source: payload path, constant or `$` metadata; when missing, `updated_at` falls back
//!    to `$ts` then `$received_at`, anything else to `default:` (which skips steps 2–4),
//!    else the event is refused;
//! 2. `trim`; 3. `map` (an unknown value takes `default:`, else is refused);
//! 4. `format` (the value read as a date/time, written in the configured timezone);
//! 5. `upper` / `lower`; 6. layout: `width`/`align`/`pad`, or the number picture.
//!
//! Invariant: a field with a width always renders to exactly that many bytes or fails; the
//! record's length therefore never depends on the data.

use std::borrow::Cow;
use std::fmt::Write as _;

use chrono::format::Item;
use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde_json::{Map, Value};

use super::decimal::{Decimal, Digits};
use super::encoding::Encoding;
use super::spec::{Align, Case, NumPic, PathSeg, SignMode, Source};
use crate::event::Event;

/// How a field's bytes are laid out.
#[derive(Debug, Clone)]
pub enum Kind {
    /// Characters, padded to `width` (when given).
    Text {
        width: Option<usize>,
        align: Align,
        pad: char,
    },
    /// DISPLAY numeric: one character per digit, sign per `sign` when the picture is signed.
    Zoned { pic: NumPic, sign: SignMode },
    /// COMP-3: two digits a byte, sign in the last nibble.
    Packed { pic: NumPic },
    /// COMP / BINARY: big-endian two's complement of `bytes` bytes.
    Binary { pic: NumPic, bytes: usize },
}

impl Kind {
    /// Bytes this field occupies, if fixed.
    pub fn width(&self) -> Option<usize> {
        match self {
            Kind::Text { width, .. } => *width,
            Kind::Zoned { pic, sign } => {
                let sep = matches!(sign, SignMode::LeadingSeparate | SignMode::TrailingSeparate)
                    && pic.signed;
                Some(pic.digits() as usize + usize::from(sep))
            }
            Kind::Packed { pic } => Some(pic.digits() as usize / 2 + 1),
            Kind::Binary { bytes, .. } => Some(*bytes),
        }
    }

    /// Whether this field writes raw bytes rather than characters.
    pub fn is_binary(&self) -> bool {
        matches!(self, Kind::Packed { .. } | Kind::Binary { .. })
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
    /// Line and column of the definition in the map file, for diagnostics.
    pub pos: (u64, u64),
}

/// A source's value before the text pipeline.
#[derive(Debug)]
pub enum Raw<'a> {
    Json(&'a Value),
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
            pos: (1, 1),
        }
    }

    /// Whether the value goes out untouched (JSON keeps its type then).
    pub fn is_passthrough(&self) -> bool {
        !self.trim
            && self.map.is_none()
            && self.date.is_none()
            && self.case.is_none()
            && matches!(self.kind, Kind::Text { width: None, .. })
    }

    /// The source's value for `event`, with SPEC §4's fallback rule.
    pub fn resolve<'a>(
        &'a self,
        event: &'a Event,
        payload: &'a Map<String, Value>,
    ) -> Result<Raw<'a>, String> {
        let found = match &self.source {
            Source::Path(p) => lookup(payload, p).map(Raw::Json),
            Source::Const(c) => Some(Raw::Str(Cow::Borrowed(c))),
            Source::Seq => Some(Raw::Int(event.seq)),
            Source::Type => Some(Raw::Str(Cow::Borrowed(&event.event_type))),
            Source::Key => Some(Raw::Str(Cow::Borrowed(&event.key))),
            Source::TraceId => Some(Raw::Str(Cow::Borrowed(&event.trace_id))),
            Source::ReceivedAt => Some(Raw::Time(event.received_at)),
            Source::Ts => event.ts.map(Raw::Time),
            Source::Blank => Some(Raw::Blank),
            // Refused by the compiler outside header/trailer.
            Source::Count | Source::Sum(_) | Source::Date | Source::FirstSeq | Source::LastSeq => {
                return Err(
                    "control sources ($count, $sum, $date...) belong in header/trailer".into(),
                );
            }
        };
        if let Some(v) = found {
            return Ok(v);
        }
        if self.source.is_updated_at() {
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
            let t = parse_time(&text, tz)?;
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

    /// Lays the text out per the field's kind and appends it, encoded, to `out`.
    pub fn write(
        &self,
        text: Option<&str>,
        enc: Encoding,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        match &self.kind {
            Kind::Text {
                width: Some(w),
                align,
                pad,
            } => {
                // Encode the value and the padding straight into the record (hot path).
                let text = text.unwrap_or("");
                let n = text.chars().count();
                if n > *w {
                    let laid = self.layout_text(Some(text))?;
                    return enc.encode_into(&laid, out).map_err(|c| unmappable(c, enc));
                }
                let mut pad_byte = Vec::with_capacity(1);
                enc.encode_into(pad.encode_utf8(&mut [0; 4]), &mut pad_byte)
                    .map_err(|c| unmappable(c, enc))?;
                let fill = std::iter::repeat_n(pad_byte.first().copied().unwrap_or(b' '), *w - n);
                if *align == Align::Right {
                    out.extend(fill.clone());
                }
                enc.encode_into(text, out).map_err(|c| unmappable(c, enc))?;
                if *align == Align::Left {
                    out.extend(fill);
                }
                Ok(())
            }
            Kind::Text { .. } | Kind::Zoned { .. } => {
                let laid = self.layout_text(text)?;
                enc.encode_into(&laid, out).map_err(|c| unmappable(c, enc))
            }
            Kind::Packed { pic } => {
                let (neg, digits) = self.digits(text, *pic)?;
                write_packed(&digits, neg, pic.signed, out);
                Ok(())
            }
            Kind::Binary { pic, bytes } => {
                let (neg, digits) = self.digits(text, *pic)?;
                // At most 18 digits for a binary field (checked by the compiler), fits i64.
                let v: i128 = digits.parse::<i128>().map_err(|e| e.to_string())?;
                let v = if neg { -v } else { v };
                let be = v.to_be_bytes();
                out.extend_from_slice(&be[be.len() - bytes..]);
                Ok(())
            }
        }
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
            Kind::Zoned { pic, sign } => {
                let (neg, digits) = self.digits(text, *pic)?;
                Ok(Cow::Owned(zoned(&digits, neg, *pic, *sign)))
            }
            Kind::Packed { .. } | Kind::Binary { .. } => {
                Err("a binary field has no text form".into())
            }
        }
    }

    /// Sign and exactly `pic.digits()` digits of a numeric value.
    fn digits(&self, text: Option<&str>, pic: NumPic) -> Result<(bool, Digits), String> {
        let d = match text {
            None => Decimal::ZERO,
            Some(t) => Decimal::parse(t)?,
        };
        let digits = d.to_digits(pic.int_digits, pic.frac_digits, self.truncate)?;
        let neg = d.is_negative() && digits.bytes().any(|b| b != b'0');
        if neg && !pic.signed {
            return Err(
                "value is negative but the picture has no sign (write S9... to allow it)".into(),
            );
        }
        Ok((neg, digits))
    }
}

pub fn unmappable(c: char, enc: Encoding) -> String {
    format!(
        "a character (U+{:04X}) cannot be written in {}",
        u32::from(c),
        enc.name()
    )
}

/// Zoned decimal text. Overpunch letters are the ASCII images of the EBCDIC zone nibbles
/// (`{`=0xC0, `A`..`I`=0xC1..0xC9, `}`=0xD0, `J`..`R`=0xD1..0xD9), so the same text encoded
/// to EBCDIC gives the C/D sign zones a mainframe expects.
fn zoned(digits: &str, neg: bool, pic: NumPic, sign: SignMode) -> String {
    if !pic.signed {
        return digits.to_string();
    }
    let over = |d: u8| -> char {
        let i = usize::from(d - b'0');
        let table: &[u8; 10] = if neg { b"}JKLMNOPQR" } else { b"{ABCDEFGHI" };
        char::from(table[i])
    };
    let s = if neg { '-' } else { '+' };
    let b = digits.as_bytes();
    match sign {
        SignMode::TrailingOverpunch => {
            let mut out = digits[..b.len() - 1].to_string();
            out.push(over(b[b.len() - 1]));
            out
        }
        SignMode::LeadingOverpunch => {
            let mut out = String::with_capacity(b.len());
            out.push(over(b[0]));
            out.push_str(&digits[1..]);
            out
        }
        SignMode::LeadingSeparate => format!("{s}{digits}"),
        SignMode::TrailingSeparate => format!("{digits}{s}"),
    }
}

/// Packed decimal: an odd number of digit nibbles plus the sign nibble (C +, D -, F unsigned).
fn write_packed(digits: &str, neg: bool, signed: bool, out: &mut Vec<u8>) {
    let sign = match (signed, neg) {
        (false, _) => 0xF,
        (true, false) => 0xC,
        (true, true) => 0xD,
    };
    // Digits plus sign make an even number of nibbles once a leading 0 pads an even count.
    let mut pending: Option<u8> = (digits.len() % 2 == 0).then_some(0);
    for d in digits.bytes().map(|b| b - b'0') {
        match pending.take() {
            None => pending = Some(d),
            Some(hi) => out.push((hi << 4) | d),
        }
    }
    out.push((pending.unwrap_or(0) << 4) | sign);
}

/// Follows a payload path; `null` counts as missing.
pub fn lookup<'a>(payload: &'a Map<String, Value>, path: &[PathSeg]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let PathSeg::Key(k) = first else { return None };
    let mut v = payload.get(k)?;
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

/// RFC 3339, or a local `YYYY-MM-DDTHH:MM:SS` / `YYYY-MM-DD` read in `tz`.
pub fn parse_time(text: &str, tz: Tz) -> Result<DateTime<Tz>, String> {
    let t = text.trim();
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

fn format_time(t: &DateTime<Tz>, items: &[Item<'static>], pattern: &str) -> Result<String, String> {
    let mut s = String::new();
    // A pattern that needs something the value lacks makes Display fail; report, never panic.
    write!(s, "{}", t.format_with_items(items.iter()))
        .map_err(|_| format!("format {pattern:?} cannot format this time"))?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overpunch_and_packed() {
        let pic = NumPic {
            signed: true,
            int_digits: 3,
            frac_digits: 2,
        };
        assert_eq!(
            zoned("01999", false, pic, SignMode::TrailingOverpunch),
            "0199I"
        );
        assert_eq!(
            zoned("01990", true, pic, SignMode::TrailingOverpunch),
            "0199}"
        );
        assert_eq!(
            zoned("01990", true, pic, SignMode::LeadingSeparate),
            "-01990"
        );
        let mut out = Vec::new();
        write_packed("01999", true, true, &mut out);
        assert_eq!(out, [0x01, 0x99, 0x9D]);
        out.clear();
        write_packed("1234", false, false, &mut out);
        assert_eq!(out, [0x01, 0x23, 0x4F]);
    }
}
