//! `ess map preview` and `ess map from-copybook`: the map engine for a person at a terminal.
//!
//! This is the one part of `map` that reads files (the map, through the compiler its
//! copybook); it returns text and leaves printing and exit codes to the caller.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde_json::Value;

use super::copybook::Copybook;
use super::field::Kind;
use super::{Format, MapContext, Mapping};
use crate::config::Diagnostics;
use crate::config::connector;
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
            payload,
            key: str_of(&obj, "idempotency_key").unwrap_or_else(|| format!("preview-{seq}")),
            trace_id: str_of(&obj, "trace_id").unwrap_or_else(|| "preview".into()),
            ts,
            received_at: Utc::now(),
        });
    }
    Ok(Event {
        seq,
        event_type: default_type.to_string(),
        payload: obj,
        key: format!("preview-{seq}"),
        trace_id: "preview".into(),
        ts: None,
        received_at: Utc::now(),
    })
}

/// Appends one record: as text (with a ruler and column legend for fixed records) when it
/// reads as text, else as a hex dump.
fn show(m: &Mapping, bytes: &[u8], is_record: bool, out: &mut String) {
    let binary = m.fields.iter().any(|f| f.kind.is_binary());
    let body = bytes.strip_suffix(m.line_end.as_bytes()).unwrap_or(bytes);
    if m.encoding.is_ascii_compatible() && !binary {
        let text: String = body.iter().map(|&b| m.encoding.decode_byte(b)).collect();
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
        hex_dump(m, bytes, is_record, out);
    }
    if is_record {
        legend(m, out);
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

/// Offsets, hex, and the bytes read as characters of the encoding; bytes of packed and
/// binary fields show as `.` (read as characters they would only mislead).
fn hex_dump(m: &Mapping, bytes: &[u8], is_record: bool, out: &mut String) {
    let mut binary = vec![false; bytes.len()];
    if is_record && m.format == Format::Fixed {
        let mut at = 0;
        for f in &m.fields {
            let w = f.kind.width().unwrap_or(0);
            if f.kind.is_binary() {
                binary.iter_mut().skip(at).take(w).for_each(|b| *b = true);
            }
            at += w;
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

fn legend(m: &Mapping, out: &mut String) {
    if m.format != Format::Fixed {
        return;
    }
    let mut col = 1;
    for f in &m.fields {
        let w = f.kind.width().unwrap_or(0);
        let kind = match &f.kind {
            Kind::Text { .. } => "",
            Kind::Zoned { .. } => " zoned",
            Kind::Packed { .. } => " packed",
            Kind::Binary { .. } => " binary",
        };
        let _ = writeln!(out, "  {:>4}-{:<4} {}{kind}", col, col + w - 1, f.name);
        col += w;
    }
}

/// A commented map skeleton for the copybook `copybook_text`; `name` is the copybook's
/// file name as it will sit next to the map (it becomes `layout:`; `.cpy` is added when
/// it has no extension).
pub fn from_copybook(copybook_text: &str, name: &str) -> anyhow::Result<String> {
    let file_name = if Path::new(name).extension().is_some() {
        name.to_string()
    } else {
        format!("{name}.cpy")
    };
    let name = file_name.as_str();
    let cb = Copybook::parse(copybook_text).map_err(|errs| {
        let lines: Vec<String> = errs
            .iter()
            .map(|e| format!("{name}:{}: {}", e.line, e.message))
            .collect();
        anyhow::anyhow!("{}", lines.join("\n"))
    })?;
    let stem = Path::new(name)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("copybook");
    let record = cb
        .record_name
        .clone()
        .unwrap_or_else(|| stem.to_ascii_uppercase());
    let target = snake(&record);
    let binary = cb.fields.iter().any(|f| f.kind.is_binary());
    let n_fields = cb.fields.iter().filter(|f| !f.filler).count();
    let mut y = String::new();
    writeln!(
        y,
        "# Map skeleton made by `ess map from-copybook` from {name}."
    )?;
    writeln!(
        y,
        "# Record {record}: {} bytes, {n_fields} fields. Widths and types come from the copybook;",
        cb.len
    )?;
    writeln!(
        y,
        "# each field below maps a copybook name to a source in the event: a payload path"
    )?;
    writeln!(
        y,
        "# (`id`, `address.zip`, `items[0].code`), a quoted constant ('\"A\"'), or $seq, $type,"
    )?;
    writeln!(
        y,
        "# $key, $trace_id, $received_at, $ts. Modifiers (| trim, | upper, | map:{{..}},"
    )?;
    writeln!(
        y,
        "# | format:%Y%m%d, | default:V) still apply. FILLER and fields you delete are sent"
    )?;
    writeln!(
        y,
        "# blank: spaces, or zeros if numeric. Check the guessed sources before use."
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
        "  encoding: ebcdic-037          # or ebcdic-1047, latin1, ascii"
    )?;
    if binary {
        writeln!(
            y,
            "  line_end: \"\"                  # required: COMP/COMP-3 bytes can look like line ends"
        )?;
    } else {
        writeln!(
            y,
            "  line_end: \"\"                  # fixed-length records; \"\\n\" for a line-sequential file"
        )?;
    }
    writeln!(y, "fields:")?;
    let entries: Vec<Option<String>> = cb
        .fields
        .iter()
        .map(|f| {
            (!f.filler).then(|| {
                format!(
                    "{}: {}{}",
                    yaml_key(&f.name),
                    source_guess(&f.name),
                    date_hint(f)
                )
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
        let (entry, note) = match entry {
            Some(e) => (e.as_str(), format!("PIC {}", f.pic)),
            None => ("# FILLER", format!("PIC {}, sent blank", f.pic)),
        };
        writeln!(
            y,
            "  {entry:<pad$}  # {note:<28} offset {:>5}, {w} bytes",
            f.offset
        )?;
    }
    writeln!(y, "deliver:")?;
    writeln!(y, "  kind: file")?;
    writeln!(
        y,
        "  dir: ../out                   # relative to this map file"
    )?;
    writeln!(y, "  file: {target}_{{{{date}}}}.dat")?;
    writeln!(
        y,
        "  mode: batch                   # one whole file per batch"
    )?;
    Ok(y)
}

/// `9(8)` fields named like dates and `9(6)` named like times usually hold one.
fn date_hint(f: &super::copybook::CopyField) -> &'static str {
    let Kind::Zoned { pic, .. } = f.kind else {
        return "";
    };
    let n = f.name.to_ascii_uppercase();
    match (pic.signed, pic.int_digits, pic.frac_digits) {
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
