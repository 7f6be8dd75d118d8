//! `ess map preview`, `ess map decode` and `ess map from-copybook`: the map engine for a
//! person at a terminal.
//!
//! This is the one part of `map` that reads files (the map, through the compiler its
//! copybook); it returns text and leaves printing and exit codes to the caller.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde_json::Value;

use super::copybook::{CondValue, CopyField, Copybook, Literal, Node};
use super::field::Kind;
use super::frame::Framing;
use super::{DecodeScratch, Format, MapContext, Mapping, View};
use crate::config::connector;
use crate::config::{Diagnostic, Diagnostics};
use crate::event::Event;

/// The record(s) `map_path` makes from `event_json` (one event object, a bare payload
/// object, or a JSON array of either), with a column ruler for fixed-width text and a hex
/// dump for EBCDIC or binary records. A map's header/trailer are shown around them.
pub fn preview(map_path: &Path, event_json: &str, timezone: Tz) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(map_path)
        .with_context(|| format!("cannot read map {}", map_path.display()))?;
    let conn = connector::parse(map_path, &text).map_err(|d| Diagnostics(vec![d]))?;
    let mapping = Mapping::compile(&conn, &MapContext { timezone }).map_err(Diagnostics)?;
    let json: Value = serde_json::from_str(event_json).context("the event is not valid JSON")?;
    let items = match json {
        Value::Array(a) => a,
        other => vec![other],
    };
    let default_type = conn
        .file
        .events
        .as_ref()
        .and_then(|e| e.first().cloned())
        .unwrap_or_else(|| "PREVIEW".into());
    let mut out = String::new();
    let mut batch = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let event = to_event(i as u64 + 1, item, &default_type)
            .with_context(|| format!("event {}", i + 1))?;
        if !mapping.selects(&event.event_type) {
            writeln!(
                out,
                "event {}: type {} is not in this map's `events:`; it would be skipped",
                i + 1,
                event.event_type
            )?;
            continue;
        }
        let record = mapping.render(&event).map_err(|e| {
            anyhow::anyhow!(
                "event {} would be parked (reason {}): {e}",
                i + 1,
                e.reason()
            )
        })?;
        batch.push((event, record));
    }
    let now = Utc::now().with_timezone(&timezone);
    let header = mapping.batch_header(&batch, now)?;
    let trailer = mapping.batch_trailer(&batch, now)?;
    if !header.is_empty() {
        out.push_str("header:\n");
        show(&mapping, &header, false, &mut out);
    }
    for (i, (_, r)) in batch.iter().enumerate() {
        if batch.len() > 1 || !header.is_empty() {
            writeln!(out, "record {}:", i + 1)?;
        }
        show(
            &mapping,
            &r.bytes,
            mapping.format == Format::Fixed,
            &mut out,
        );
    }
    if !trailer.is_empty() {
        out.push_str("trailer:\n");
        show(&mapping, &trailer, false, &mut out);
    }
    Ok(out)
}

fn to_event(seq: u64, v: Value, default_type: &str) -> anyhow::Result<Event> {
    let Value::Object(mut obj) = v else {
        bail!("an event is a JSON object")
    };
    let str_of = |o: &serde_json::Map<String, Value>, k: &str| {
        o.get(k).and_then(Value::as_str).map(str::to_string)
    };
    if let Some(Value::Object(payload)) = obj.remove("payload") {
        let ts = match str_of(&obj, "ts") {
            Some(t) => Some(
                t.parse::<DateTime<Utc>>()
                    .with_context(|| format!("ts {t:?} is not RFC 3339"))?,
            ),
            None => None,
        };
        return Ok(Event {
            seq,
            event_type: str_of(&obj, "type").unwrap_or_else(|| default_type.to_string()),
            payload: crate::event::Payload::from_map(payload),
            key: str_of(&obj, "idempotency_key").unwrap_or_else(|| format!("preview-{seq}")),
            trace_id: str_of(&obj, "trace_id")
                .unwrap_or_else(|| "preview".into())
                .into(),
            ts,
            received_at: Utc::now(),
        });
    }
    Ok(Event {
        seq,
        event_type: default_type.to_string(),
        payload: crate::event::Payload::from_map(obj),
        key: format!("preview-{seq}"),
        trace_id: "preview".into(),
        ts: None,
        received_at: Utc::now(),
    })
}

/// The record's data without its framing (descriptor words, line end).
fn data_of<'b>(m: &Mapping, bytes: &'b [u8]) -> &'b [u8] {
    match m.framing() {
        Framing::Rdw { .. } => bytes.get(m.framing().prefix_len()..).unwrap_or(bytes),
        Framing::Lines(end) => bytes.strip_suffix(end.as_slice()).unwrap_or(bytes),
        Framing::Fixed(_) => bytes,
    }
}

/// Appends one record: as text (with a ruler and column legend for fixed records) when it
/// reads as text, else as a hex dump.
fn show(m: &Mapping, bytes: &[u8], is_record: bool, out: &mut String) {
    let binary = m.fields.iter().any(|f| f.kind.is_binary());
    let framed = matches!(m.framing(), Framing::Rdw { .. });
    let data = data_of(m, bytes);
    let spans = if is_record { m.spans(data) } else { None };
    if m.encoding.is_ascii_compatible() && !binary && !framed {
        let text: String = data.iter().map(|&b| m.encoding.decode_byte(b)).collect();
        if is_record {
            ruler(text.chars().count(), out);
        }
        out.push_str(&text);
        out.push_str(match m.line_end.as_str() {
            "\n" => "⏎\n",
            "\r\n" => "␍⏎\n",
            _ => "\n",
        });
    } else {
        let skip = bytes.len()
            - data.len()
            - if let Framing::Lines(e) = m.framing() {
                e.len()
            } else {
                0
            };
        hex_dump(m, bytes, spans.as_deref().map(|s| (s, skip)), out);
    }
    if let Some(s) = &spans {
        legend(m, s, out);
    }
}

fn ruler(len: usize, out: &mut String) {
    let tens: String = (1..=len)
        .map(|i| {
            if i % 10 == 0 {
                char::from(b'0' + ((i / 10) % 10) as u8)
            } else {
                ' '
            }
        })
        .collect();
    let ones: String = (1..=len)
        .map(|i| char::from(b'0' + (i % 10) as u8))
        .collect();
    out.push_str(tens.trim_end());
    out.push('\n');
    out.push_str(&ones);
    out.push('\n');
}

/// Offsets, hex, and the bytes read as characters of the encoding; bytes of packed,
/// binary and float fields (and descriptor words) show as `.` (read as characters they
/// would only mislead).
fn hex_dump(
    m: &Mapping,
    bytes: &[u8],
    spans: Option<(&[(usize, usize)], usize)>,
    out: &mut String,
) {
    let mut binary = vec![false; bytes.len()];
    if let Some((spans, skip)) = spans {
        binary.iter_mut().take(skip).for_each(|b| *b = true);
        for &(i, at) in spans {
            let f = &m.fields[i];
            if f.kind.is_binary() {
                let w = f.kind.width().unwrap_or(0);
                binary
                    .iter_mut()
                    .skip(skip + at)
                    .take(w)
                    .for_each(|b| *b = true);
            }
        }
    }
    let _ = writeln!(out, "{} bytes, {}:", bytes.len(), m.encoding.name());
    for (i, chunk) in bytes.chunks(16).enumerate() {
        let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02X}")).collect();
        let text: String = chunk
            .iter()
            .zip(&binary[i * 16..])
            .map(|(&b, &is_bin)| {
                let c = m.encoding.decode_byte(b);
                let unprintable = c.is_control() || (u32::from(c) >= 0x80 && u32::from(c) < 0xA0);
                if is_bin || unprintable { '.' } else { c }
            })
            .collect();
        let _ = writeln!(out, "{:06X}  {:<47}  |{text}|", i * 16, hex.join(" "));
    }
}

/// The columns each field of the record took (1-based, framing not counted).
fn legend(m: &Mapping, spans: &[(usize, usize)], out: &mut String) {
    for &(i, at) in spans {
        let f = &m.fields[i];
        let w = f.kind.width().unwrap_or(0);
        let kind = match f.kind.label() {
            "" => String::new(),
            l => format!(" {l}"),
        };
        let _ = writeln!(out, "  {:>4}-{:<4} {}{kind}", at + 1, at + w, f.name);
    }
}

/// What `ess map decode` found in a file.
#[derive(Debug, Default)]
pub struct Decoding {
    /// One JSON object per line, for each record that decoded.
    pub lines: String,
    /// One message per record that did not (and the framing error that ended the file).
    pub errors: Vec<String>,
}

/// `ess map decode`: the JSON of each record of `file` as the map `map_path` reads it.
/// The event view makes NDJSON `ess send -` takes; the fields view shows each record's
/// index, byte offset, record type and fields by copybook name.
pub fn decode(map_path: &Path, file: &[u8], timezone: Tz, view: View) -> anyhow::Result<Decoding> {
    let text = std::fs::read_to_string(map_path)
        .with_context(|| format!("cannot read map {}", map_path.display()))?;
    let conn = connector::parse(map_path, &text).map_err(|d| Diagnostics(vec![d]))?;
    let mapping = Mapping::compile_layout(&conn, &MapContext { timezone }).map_err(Diagnostics)?;
    let mut out = Decoding::default();
    let mut scratch = DecodeScratch::default();
    let mut json = String::new();
    for frame in mapping.framing().split(file) {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                out.errors.push(e.to_string());
                break;
            }
        };
        json.clear();
        match mapping.decode_into(frame.bytes, frame.index, view, &mut scratch, &mut json) {
            Ok(record_type) => {
                if view == View::Fields {
                    let _ = write!(
                        out.lines,
                        "{{\"record\":{},\"offset\":{},\"type\":",
                        frame.index, frame.offset
                    );
                    match record_type {
                        Some(t) => super::decode::push_str(&mut out.lines, t),
                        None => out.lines.push_str("null"),
                    }
                    let _ = write!(out.lines, ",\"fields\":{json}}}");
                } else {
                    out.lines.push_str(&json);
                }
                out.lines.push('\n');
            }
            Err(e) => out
                .errors
                .push(format!("{e} (file offset {})", frame.offset + e.offset)),
        }
    }
    Ok(out)
}

/// A commented map skeleton for the copybook `copybook_text`; `name` is the copybook's
/// file name as it will sit next to the map (it becomes `layout:`; `.cpy` is added when
/// it has no extension). The skeleton passes `ess check` as it is: every source is a guess
/// to review, not a placeholder to fill.
pub fn from_copybook(copybook_text: &str, name: &str) -> anyhow::Result<String> {
    let file_name = if Path::new(name).extension().is_some() {
        name.to_string()
    } else {
        format!("{name}.cpy")
    };
    let name = file_name.as_str();
    let cb = Copybook::parse(copybook_text).map_err(|errs| {
        Diagnostics(
            errs.iter()
                .map(|e| {
                    Diagnostic::new(
                        Path::new(name),
                        e.line as u64,
                        e.col as u64,
                        e.message.clone(),
                    )
                })
                .collect(),
        )
    })?;
    let stem = Path::new(name)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("copybook");
    // Several record types are one file: it goes by the copybook's name then.
    let several = cb.sets.iter().any(|s| s.records);
    let record = match (&cb.record_name, several) {
        (Some(r), false) => r.clone(),
        _ => stem.to_ascii_uppercase(),
    };
    let target = snake(&record);
    let rules = guess_rules(&cb);
    // Fields of alternatives no rule can pick are left commented out.
    let usable = |f: &CopyField| {
        f.alts.iter().all(|&(s, a)| {
            a == 0 && !rules.iter().any(|r| r.0 == s) || rules.iter().any(|r| r.0 == s && r.1 == a)
        })
    };
    let n_fields = cb.fields.iter().filter(|f| !f.filler).count();
    let variable = cb.len != cb.min_len;
    let mut y = String::new();
    writeln!(
        y,
        "# Map skeleton made by `ess map from-copybook` from {name}."
    )?;
    if variable {
        writeln!(
            y,
            "# Record {record}: {} to {} bytes, {n_fields} fields. Widths and types come from the copybook;",
            cb.min_len, cb.len
        )?;
    } else {
        writeln!(
            y,
            "# Record {record}: {} bytes, {n_fields} fields. Widths and types come from the copybook;",
            cb.len
        )?;
    }
    writeln!(
        y,
        "# each field below maps a copybook name to a source in the event: a payload path"
    )?;
    writeln!(
        y,
        "# (`id`, `address.zip`, `items[0].code`), a quoted constant ('\"A\"'), $88:CONDITION, or"
    )?;
    writeln!(
        y,
        "# $seq, $type, $key, $trace_id, $received_at, $ts. Modifiers (| trim, | upper, | map:{{..}},"
    )?;
    writeln!(
        y,
        "# | format:%Y%m%d, | default:V, | count) still apply. FILLER and fields you delete are"
    )?;
    writeln!(
        y,
        "# sent as their VALUE, else blank: spaces, or zeros if numeric. Check the guessed sources"
    )?;
    writeln!(
        y,
        "# before use; `ess map decode --map THIS FILE` shows what a file holds."
    )?;
    writeln!(y, "target: {target}")?;
    writeln!(
        y,
        "events: [{}]  # event types this connector takes; delete the line for all",
        record.replace('-', "_")
    )?;
    writeln!(y, "format: fixed")?;
    writeln!(y, "layout: {name}")?;
    writeln!(y, "record:")?;
    writeln!(
        y,
        "  encoding: ebcdic-037          # or ebcdic-1047, -500, -273, -285, -297, -1140..-1149, latin1, ascii"
    )?;
    if variable {
        writeln!(
            y,
            "  framing: rdw                  # variable-length records (RECFM=V/VB), each behind its RDW"
        )?;
    } else {
        writeln!(
            y,
            "  framing: fixed                # fixed-length records (RECFM=F/FB), no line ends"
        )?;
    }
    if cb.fields.iter().any(|f| matches!(f.kind, Kind::Float(_))) {
        writeln!(
            y,
            "  floats: hfp                   # COMP-1/COMP-2: IBM hexadecimal float; ieee for IEEE 754"
        )?;
    }
    if cb
        .fields
        .iter()
        .any(|f| matches!(f.kind, Kind::Float(_) | Kind::Binary { native: true, .. }))
    {
        writeln!(
            y,
            "  byte_order: big               # COMP-5/COMP-1/COMP-2 bytes: big on z/OS, little from x86"
        )?;
    }
    if !rules.is_empty() {
        writeln!(
            y,
            "layout_when:                    # which record type (REDEFINES alternative) each record is"
        )?;
        for (s, a, cond) in &rules {
            let alt = &cb.sets[*s].alts[*a];
            writeln!(y, "  {}: {cond}", yaml_key(&alt.name))?;
        }
    }
    for (s, set) in cb.sets.iter().enumerate() {
        if !rules.iter().any(|r| r.0 == s) && set.alts.len() > 1 {
            let others: Vec<&str> = set.alts[1..].iter().map(|a| a.name.as_str()).collect();
            writeln!(
                y,
                "# {} is mapped; {} share its bytes (REDEFINES): to use them, add a",
                set.alts[0].name,
                others.join(", ")
            )?;
            writeln!(
                y,
                "# `layout_when:` rule per alternative (e.g. `{}: {{REC-TYPE: \"D\"}}`) and uncomment their fields.",
                others[0]
            )?;
        }
    }
    writeln!(y, "fields:")?;
    let counts: Vec<(usize, String)> = cb
        .tables
        .iter()
        .map(|t| {
            let first = t
                .elems
                .first()
                .and_then(|e| first_field(e))
                .map_or("items".into(), |i| {
                    let g = source_guess(&cb.fields[i].name);
                    g.split('[').next().unwrap_or("items").to_string()
                });
            (t.object, first)
        })
        .collect();
    let entries: Vec<Option<String>> = cb
        .fields
        .iter()
        .enumerate()
        .map(|(i, f)| {
            (!f.filler).then(|| {
                let src = match counts.iter().find(|(o, _)| *o == i) {
                    Some((_, list)) => format!("{list} | count"),
                    None => format!("{}{}", source_guess(&f.name), date_hint(f)),
                };
                // A name such as 1ST-LINE makes a source YAML could read as a number.
                let src = if src.starts_with(|c: char| !c.is_ascii_alphabetic()) {
                    format!("'{src}'")
                } else {
                    src
                };
                format!("{}: {src}", yaml_key(&f.name))
            })
        })
        .collect();
    let pad = entries
        .iter()
        .flatten()
        .map(String::len)
        .max()
        .unwrap_or(0)
        .max(28);
    for (f, entry) in cb.fields.iter().zip(&entries) {
        let w = f.kind.width().unwrap_or(0);
        let at = if f.fixed_offset {
            format!("offset {:>5}, {w} bytes", f.offset)
        } else {
            format!("offset varies, {w} bytes")
        };
        // Floats have no picture: their usage is the whole description.
        let pic = if matches!(f.kind, Kind::Float(_)) {
            f.pic.clone()
        } else {
            format!("PIC {}", f.pic)
        };
        let (entry, note) = match (entry, &f.value) {
            (Some(e), _) if usable(f) => (e.clone(), pic),
            (Some(e), _) => (format!("# {e}"), format!("{pic}, another record type")),
            (None, Some(v)) => (
                "# FILLER".to_string(),
                format!("{pic}, sent as VALUE {}", literal_text(v)),
            ),
            (None, None) => ("# FILLER".to_string(), format!("{pic}, sent blank")),
        };
        writeln!(y, "  {entry:<pad$}  # {note:<28} {at}")?;
        if !f.conditions.is_empty() && usable(f) {
            writeln!(y, "  #   {}", conditions_note(f))?;
        }
    }
    writeln!(y, "deliver:")?;
    writeln!(y, "  kind: file")?;
    writeln!(
        y,
        "  dir: ../out                   # relative to this map file"
    )?;
    writeln!(y, "  file: {target}_{{{{date}}}}_{{{{seq}}}}.dat")?;
    writeln!(
        y,
        "  mode: batch                   # one whole file per batch, named by its first seq"
    )?;
    Ok(y)
}

/// The first field of a table element.
fn first_field(nodes: &[Node]) -> Option<usize> {
    nodes.iter().find_map(|n| match n {
        Node::Field(i) => Some(*i),
        _ => None,
    })
}

/// Per REDEFINES set, a rule for every alternative when each has a level-88 condition on
/// a field of its own at a fixed place (the record-type byte of header/detail/trailer
/// records): (set, alternative, condition name).
fn guess_rules(cb: &Copybook) -> Vec<(usize, usize, String)> {
    let mut out = Vec::new();
    for (s, set) in cb.sets.iter().enumerate() {
        let mut rules = Vec::new();
        for a in 0..set.alts.len() {
            let cond = cb.fields.iter().find_map(|f| {
                (f.alts.last() == Some(&(s, a)) && f.fixed_offset)
                    .then(|| f.conditions.first().map(|c| c.name.clone()))
                    .flatten()
            });
            match cond {
                Some(c) => rules.push((s, a, c)),
                None => break,
            }
        }
        if rules.len() == set.alts.len() {
            out.extend(rules);
        }
    }
    out
}

fn conditions_note(f: &CopyField) -> String {
    if f.conditions.is_empty() {
        return String::new();
    }
    let names: Vec<String> = f
        .conditions
        .iter()
        .map(|c| match &c.values[0] {
            CondValue::One(v) => format!("$88:{} = {}", c.name, literal_text(v)),
            CondValue::Range(a, b) => format!(
                "$88:{} = {} THRU {}",
                c.name,
                literal_text(a),
                literal_text(b)
            ),
        })
        .collect();
    format!("values: {}", names.join(", "))
}

fn literal_text(v: &Literal) -> String {
    match v {
        Literal::Text(t) => format!("'{t}'"),
        Literal::Number(n) => n.clone(),
        Literal::Hex(b) => format!(
            "X'{}'",
            b.iter().map(|b| format!("{b:02X}")).collect::<String>()
        ),
        Literal::Figurative(f) => format!("{f:?}").to_ascii_uppercase(),
        Literal::All(t) => format!("ALL '{t}'"),
    }
}

/// `9(8)` fields named like dates and `9(6)` named like times usually hold one.
fn date_hint(f: &CopyField) -> &'static str {
    let Kind::Zoned { pic, .. } = f.kind else {
        return "";
    };
    let n = f.name.to_ascii_uppercase();
    match (pic.signed, pic.digits, pic.scale) {
        (false, 8, 0) if n.contains("DATE") || n.ends_with("-DT") => " | format:%Y%m%d",
        (false, 6, 0) if n.contains("TIME") => " | format:%H%M%S",
        _ => "",
    }
}

fn snake(cobol: &str) -> String {
    cobol.to_ascii_lowercase().replace('-', "_")
}

/// `ITEM-CODE(2)` → `item_code[1]`: a guess at the payload path.
fn source_guess(name: &str) -> String {
    match name.split_once('(') {
        None => snake(name),
        Some((base, subs)) => {
            let mut s = snake(base);
            for k in subs.trim_end_matches(')').split(',') {
                let k: usize = k.trim().parse().unwrap_or(1);
                let _ = write!(s, "[{}]", k.saturating_sub(1));
            }
            s
        }
    }
}

fn yaml_key(name: &str) -> String {
    if name.contains(['(', ',', ':', '#']) {
        format!("\"{name}\"")
    } else {
        name.to_string()
    }
}
