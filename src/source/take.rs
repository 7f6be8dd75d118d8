//! Taking one file, without I/O: the check before anything is taken (trailer count and hash
//! totals, `on_bad_record: hold`), and the file's records as chunks of events and bad
//! records, in file order, from any record index on (a resumed file).

use serde_json::{Map, Value};

use super::{OnBad, SourceSpec};
use crate::feed::Batch;
use crate::ledger::sources::BadRecord;
use crate::map::decimal::Decimal;
use crate::map::frame::{Frame, Split};
use crate::map::{DecodeScratch, View};

/// The verdict on a whole file before any of it is taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Take it.
    Take,
    /// `ready: trailer` and its last record is not (yet) the trailer: wait.
    NotReady(String),
    /// Failed its trailer, or does not split into records: nothing of it is taken.
    Park(String),
    /// `on_bad_record: hold` and a record is bad: nothing of it is taken.
    Hold(String),
}

/// A record's fate.
enum Rec {
    /// Becomes an event with this payload (JSON object text).
    Event(String),
    /// A control record (header, trailer, a type that makes no event).
    Skip,
    Bad(BadRecord),
}

/// Decodes records of one file for one source.
pub struct Reader<'s> {
    spec: &'s SourceSpec,
    file: String,
    scratch: DecodeScratch,
    json: String,
    now_micros: i64,
}

fn number_of(v: &Value) -> Option<Decimal> {
    match v {
        Value::Number(n) => Decimal::parse(&n.to_string()).ok(),
        Value::String(s) => Decimal::parse(s).ok(),
        _ => None,
    }
}

impl<'s> Reader<'s> {
    pub fn new(spec: &'s SourceSpec, file: &str, now_micros: i64) -> Reader<'s> {
        Reader {
            spec,
            file: file.to_string(),
            scratch: DecodeScratch::default(),
            json: String::new(),
            now_micros,
        }
    }

    fn bad(
        &self,
        index: usize,
        offset: usize,
        field: String,
        at: usize,
        message: String,
    ) -> BadRecord {
        BadRecord {
            file: self.file.clone(),
            record_index: index as u64,
            offset: offset as u64,
            field,
            field_offset: at as u64,
            message,
            at_micros: self.now_micros,
        }
    }

    /// Decodes one record into `self.json`; its record type, or the bad record.
    fn decode(&mut self, frame: &Frame<'_>) -> Result<Option<String>, BadRecord> {
        self.json.clear();
        match self.spec.mapping.decode_into(
            frame.bytes,
            frame.index,
            View::Fields,
            &mut self.scratch,
            &mut self.json,
        ) {
            Ok(t) => Ok(t.map(str::to_string)),
            Err(e) => Err(self.bad(frame.index, frame.offset, e.field, e.offset, e.message)),
        }
    }

    fn is_trailer(&self, record_type: Option<&str>) -> bool {
        self.spec
            .trailer
            .as_ref()
            .is_some_and(|t| record_type == Some(t.record.as_str()))
    }

    fn makes_event(&self, record_type: Option<&str>) -> bool {
        if self.is_trailer(record_type) {
            return false;
        }
        match (&self.spec.records, record_type) {
            (None, _) => true,
            (Some(rs), Some(t)) => rs.iter().any(|r| r == t),
            (Some(_), None) => true,
        }
    }

    /// The column names of a CSV file with a header line.
    fn is_header_line(&self, frame: &Frame<'_>) -> bool {
        frame.index == 0 && self.spec.mapping.has_csv_header()
    }

    fn record(&mut self, frame: &Frame<'_>) -> Rec {
        if self.is_header_line(frame) {
            return Rec::Skip;
        }
        let record_type = match self.decode(frame) {
            Ok(t) => t,
            Err(b) => return Rec::Bad(b),
        };
        if !self.makes_event(record_type.as_deref()) {
            return Rec::Skip;
        }
        match &self.spec.payload {
            None => Rec::Event(self.json.clone()),
            Some(paths) => {
                let fields: Map<String, Value> = match serde_json::from_str(&self.json) {
                    Ok(m) => m,
                    Err(e) => {
                        return Rec::Bad(self.bad(
                            frame.index,
                            frame.offset,
                            "(record)".into(),
                            0,
                            format!("decoded record is not a JSON object: {e}"),
                        ));
                    }
                };
                let mut out = Map::new();
                for (path, field) in paths {
                    let v = fields.get(field).cloned().unwrap_or(Value::Null);
                    insert_at(&mut out, path, v);
                }
                Rec::Event(Value::Object(out).to_string())
            }
        }
    }

    /// The check before anything of the file is taken: the trailer (if configured) and,
    /// with `on_bad_record: hold`, every record.
    pub fn check(&mut self, split: Split<'_>) -> Check {
        let need_decode = self.spec.trailer.is_some() || self.spec.on_bad == OnBad::Hold;
        if !need_decode {
            return Check::Take;
        }
        let mut data = 0u64;
        let mut sums: Vec<Decimal> =
            vec![Decimal::ZERO; self.spec.trailer.as_ref().map_or(0, |t| t.sum.len())];
        let mut trailer: Option<(usize, Map<String, Value>)> = None;
        let mut n = 0usize;
        for frame in split {
            n += 1;
            let frame = match frame {
                Ok(f) => f,
                Err(e) => {
                    let why = format!(
                        "record {} at byte {} does not split: {}",
                        e.index, e.offset, e.message
                    );
                    return match self.spec.on_bad {
                        OnBad::Hold => Check::Hold(why),
                        OnBad::Park => Check::Park(why),
                    };
                }
            };
            if let Some((at, _)) = &trailer {
                return Check::Park(format!(
                    "the trailer (record {at}) is not the last record: record {} follows it",
                    frame.index
                ));
            }
            if self.is_header_line(&frame) {
                continue;
            }
            let record_type = match self.decode(&frame) {
                Ok(t) => t,
                Err(b) => {
                    if self.spec.on_bad == OnBad::Hold {
                        return Check::Hold(format!(
                            "record {} (byte {}), field {} at byte {}: {}",
                            b.record_index, b.offset, b.field, b.field_offset, b.message
                        ));
                    }
                    data += 1;
                    continue;
                }
            };
            if self.is_trailer(record_type.as_deref()) {
                let fields = serde_json::from_str(&self.json).unwrap_or_default();
                trailer = Some((frame.index, fields));
                continue;
            }
            if !self.makes_event(record_type.as_deref()) {
                continue;
            }
            data += 1;
            if let Some(t) = &self.spec.trailer
                && !t.sum.is_empty()
            {
                let fields: Map<String, Value> =
                    serde_json::from_str(&self.json).unwrap_or_default();
                for (i, (_, field)) in t.sum.iter().enumerate() {
                    if let Some(v) = fields.get(field).and_then(number_of) {
                        match sums[i].checked_add(v) {
                            Some(s) => sums[i] = s,
                            None => {
                                return Check::Park(format!(
                                    "the total of {field} has more than 38 digits"
                                ));
                            }
                        }
                    }
                }
            }
        }
        let Some(t) = &self.spec.trailer else {
            return Check::Take;
        };
        let Some((at, fields)) = trailer else {
            let why = format!("no trailer record ({}) after {n} records", t.record);
            return if self.spec.ready == super::Ready::Trailer {
                Check::NotReady(why)
            } else {
                Check::Park(why)
            };
        };
        if let Some(count) = &t.count {
            let said = fields.get(count).and_then(number_of);
            let have = Decimal {
                mantissa: i128::from(data),
                scale: 0,
            };
            if !same(said, have) {
                return Check::Park(format!(
                    "trailer (record {at}) {count} says {} records, the file has {data}",
                    said.map_or_else(|| "no number of".to_string(), show)
                ));
            }
        }
        for (i, (tf, field)) in t.sum.iter().enumerate() {
            let said = fields.get(tf).and_then(number_of);
            if !same(said, sums[i]) {
                return Check::Park(format!(
                    "trailer (record {at}) {tf} says {}, the records' {field} add up to {}",
                    said.map_or_else(|| "no number".to_string(), show),
                    show(sums[i])
                ));
            }
        }
        Check::Take
    }

    /// Takes up to `max` records from `split` (positioned at the next record): their events
    /// go into `batch` under their keys, bad ones into `bad`. Returns the records consumed
    /// and whether the file ended (after its last record, or after a framing error).
    pub fn chunk(
        &mut self,
        split: &mut Split<'_>,
        max: usize,
        key_prefix: &str,
        batch: &mut Batch,
        bad: &mut Vec<BadRecord>,
    ) -> (u64, Option<u64>, bool) {
        let mut taken = 0u64;
        let mut next_offset = None;
        while (taken as usize) < max {
            let Some(frame) = split.next() else {
                return (taken, next_offset, true);
            };
            taken += 1;
            match frame {
                Err(e) => {
                    bad.push(self.bad(e.index, e.offset, "(framing)".into(), 0, e.message));
                    return (taken, next_offset, true);
                }
                Ok(frame) => {
                    next_offset = Some((frame.offset + frame.bytes.len()) as u64);
                    match self.record(&frame) {
                        Rec::Event(payload) => {
                            let key = format!("{key_prefix}{}", frame.index);
                            let trace = trace_id_of(&key);
                            batch.push(
                                &self.spec.event_type,
                                &key,
                                &trace,
                                None,
                                payload.as_bytes(),
                            );
                        }
                        Rec::Skip => {}
                        Rec::Bad(b) => bad.push(b),
                    }
                }
            }
        }
        let ended = split.clone().next().is_none();
        (taken, next_offset, ended)
    }
}

/// A record's trace id: 32 hex digits of the SHA-256 of its idempotency key, the same
/// after any restart (W3C trace-id form, so logs and receipts follow it like an ingested
/// event's).
fn trace_id_of(key: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(key.as_bytes());
    d[..16].iter().map(|b| format!("{b:02x}")).collect()
}

fn negate(d: Decimal) -> Decimal {
    Decimal {
        mantissa: -d.mantissa,
        scale: d.scale,
    }
}

/// Whether `a` is the number `b` (whatever their scales).
fn same(a: Option<Decimal>, b: Decimal) -> bool {
    a.and_then(|a| a.checked_add(negate(b)))
        .is_some_and(|d| d.mantissa == 0)
}

fn show(d: Decimal) -> String {
    d.to_string()
}

/// Puts `v` at `path` in `obj`, making the objects on the way.
fn insert_at(obj: &mut Map<String, Value>, path: &[String], v: Value) {
    match path {
        [] => {}
        [last] => {
            obj.insert(last.clone(), v);
        }
        [first, rest @ ..] => {
            let entry = obj
                .entry(first.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            if let Value::Object(inner) = entry {
                insert_at(inner, rest, v);
            }
        }
    }
}
