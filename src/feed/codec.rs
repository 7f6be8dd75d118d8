//! The stored form of one event (format version 2), written once and read by every
//! connector: compact, checksummed and bound to its seq, with the payload bytes exactly as
//! the producer sent them.
//!
//! ```text
//! [0]       EVENT_VERSION (2)
//! [1]       flags: 1 = ts present, 2 = trace id as 16 bytes, 4 = payload sealed
//! [2..10]   received_at, microseconds since the epoch, i64 little endian
//! varint    length of type, then its bytes
//! varint    length of idempotency key, then its bytes
//! trace id  16 bytes (flag 2: it was 32 lowercase hex digits), else varint length + bytes
//! varint    ts, microseconds since the epoch, zigzag (flag 1 only)
//! payload   the rest: the JSON object as received, or its sealed form (flag 4, [`super::seal`])
//! [n-4..n]  crc32c(seq as 8 bytes big endian ‖ bytes[0..n-4]), little endian
//! ```
//!
//! The encoding is made before the seq is known (in the request's own task, while the
//! committer is busy with the previous group): `received_at` and the checksum are patched
//! in by the committer ([`finish`]), and sealing, whose associated data is the seq, happens
//! there too ([`finish_sealed`]).

use std::borrow::Cow;

use super::seal;
use crate::event::{Event, Seq};

/// The leading byte of an event value.
pub(crate) const EVENT_VERSION: u8 = 2;
const F_TS: u8 = 1;
const F_TRACE_BIN: u8 = 2;
const F_SEALED: u8 = 4;
const RECEIVED_AT: std::ops::Range<usize> = 2..10;
const CRC_LEN: usize = 4;

/// Where one encoded event sits in a buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slot {
    pub start: usize,
    /// Offset of the payload from `start`.
    pub payload_start: usize,
    /// One past the checksum.
    pub end: usize,
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn hex_trace(trace_id: &str) -> Option<[u8; 16]> {
    let b = trace_id.as_bytes();
    if b.len() != 32 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 16];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

impl Trace<'_> {
    pub(crate) fn of(trace_id: &str) -> Trace<'_> {
        hex_trace(trace_id).map_or(Trace::Text(trace_id), Trace::Bin)
    }
}

/// Appends one event (received_at zero, checksum slot reserved) to `out`.
pub(crate) fn encode_into(
    out: &mut Vec<u8>,
    event_type: &str,
    key: &str,
    trace_id: &str,
    ts_micros: Option<i64>,
    payload: &[u8],
) -> Slot {
    encode_trace_into(
        out,
        event_type,
        key,
        Trace::of(trace_id),
        ts_micros,
        payload,
    )
}

/// [`encode_into`] with the trace id already in its stored form.
pub(crate) fn encode_trace_into(
    out: &mut Vec<u8>,
    event_type: &str,
    key: &str,
    trace: Trace<'_>,
    ts_micros: Option<i64>,
    payload: &[u8],
) -> Slot {
    let start = out.len();
    let mut flags = 0;
    if ts_micros.is_some() {
        flags |= F_TS;
    }
    let trace_len = match trace {
        Trace::Bin(_) => {
            flags |= F_TRACE_BIN;
            16
        }
        Trace::Text(t) => t.len(),
    };
    out.reserve(10 + 3 * 4 + event_type.len() + key.len() + trace_len + payload.len() + CRC_LEN);
    out.push(EVENT_VERSION);
    out.push(flags);
    out.extend_from_slice(&[0u8; 8]);
    put_varint(out, event_type.len() as u64);
    out.extend_from_slice(event_type.as_bytes());
    put_varint(out, key.len() as u64);
    out.extend_from_slice(key.as_bytes());
    match trace {
        Trace::Bin(t) => out.extend_from_slice(&t),
        Trace::Text(t) => {
            put_varint(out, t.len() as u64);
            out.extend_from_slice(t.as_bytes());
        }
    }
    if let Some(ts) = ts_micros {
        put_varint(out, zigzag(ts));
    }
    let payload_start = out.len();
    out.extend_from_slice(payload);
    out.extend_from_slice(&[0u8; CRC_LEN]);
    Slot {
        start,
        payload_start: payload_start - start,
        end: out.len(),
    }
}

fn checksum(seq: Seq, body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&seq.to_be_bytes()), body)
}

/// Completes an event encoded by [`encode_into`] in place: its `received_at` and its
/// checksum bound to `seq`. `value` is the whole slot, checksum slot included.
pub(crate) fn finish(value: &mut [u8], seq: Seq, received_at_micros: i64) {
    value[RECEIVED_AT].copy_from_slice(&received_at_micros.to_le_bytes());
    let n = value.len() - CRC_LEN;
    let crc = checksum(seq, &value[..n]);
    value[n..].copy_from_slice(&crc.to_le_bytes());
}

/// The associated data of a sealed payload: it opens only as the payload of this seq.
pub(crate) fn payload_aad(seq: Seq) -> [u8; 19] {
    let mut aad = [0u8; 19];
    aad[..11].copy_from_slice(b"ess-payload");
    aad[11..].copy_from_slice(&seq.to_be_bytes());
    aad
}

/// Like [`finish`], with the payload sealed under `key`; returns the new value.
pub(crate) fn finish_sealed(
    value: &[u8],
    payload_start: usize,
    seq: Seq,
    received_at_micros: i64,
    key: &seal::Key,
) -> Vec<u8> {
    let payload = &value[payload_start..value.len() - CRC_LEN];
    let mut out = Vec::with_capacity(value.len() + seal::OVERHEAD);
    out.extend_from_slice(&value[..payload_start]);
    out[1] |= F_SEALED;
    key.seal_into(&payload_aad(seq), payload, &mut out);
    out.extend_from_slice(&[0u8; CRC_LEN]);
    finish(&mut out, seq, received_at_micros);
    out
}

/// Why stored event bytes were refused.
#[derive(Debug, thiserror::Error)]
pub enum EventDecodeError {
    #[error("checksum mismatch (the stored bytes were altered, or belong to another seq)")]
    Checksum,
    #[error("stored event has format version {0}; this build reads {EVENT_VERSION}")]
    Version(u8),
    #[error("stored event is truncated")]
    Truncated,
    #[error("stored event holds text that is not UTF-8")]
    Utf8,
}

/// An event's trace id as stored: 16 bytes (read back as 32 lowercase hex digits), or any
/// other text as it is.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Trace<'a> {
    Bin([u8; 16]),
    Text(&'a str),
}

/// An event's payload as stored.
#[derive(Debug, Clone, Copy)]
pub enum StoredPayload<'a> {
    /// The JSON object as the producer sent it.
    Clear(&'a [u8]),
    /// Sealed ([`super::seal`]); [`EventView::payload`] opens it.
    Sealed(&'a [u8]),
}

/// A verified event, borrowed from its stored bytes: nothing is copied or parsed until asked.
#[derive(Debug, Clone, Copy)]
pub struct EventView<'a> {
    pub seq: Seq,
    pub event_type: &'a str,
    pub key: &'a str,
    trace: Trace<'a>,
    pub ts_micros: Option<i64>,
    pub received_at_micros: i64,
    pub stored_payload: StoredPayload<'a>,
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], EventDecodeError> {
        let end = self.at.checked_add(n).ok_or(EventDecodeError::Truncated)?;
        let s = self
            .b
            .get(self.at..end)
            .ok_or(EventDecodeError::Truncated)?;
        self.at = end;
        Ok(s)
    }

    fn varint(&mut self) -> Result<u64, EventDecodeError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.take(1)?.first().ok_or(EventDecodeError::Truncated)?;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(EventDecodeError::Truncated)
    }

    fn text(&mut self) -> Result<&'a str, EventDecodeError> {
        let n = usize::try_from(self.varint()?).map_err(|_| EventDecodeError::Truncated)?;
        std::str::from_utf8(self.take(n)?).map_err(|_| EventDecodeError::Utf8)
    }
}

impl<'a> EventView<'a> {
    /// Verifies `bytes` as the event stored under `seq` and borrows its fields.
    pub fn decode(seq: Seq, bytes: &'a [u8]) -> Result<EventView<'a>, EventDecodeError> {
        if bytes.len() < RECEIVED_AT.end + CRC_LEN {
            return Err(EventDecodeError::Truncated);
        }
        let (body, crc) = bytes.split_at(bytes.len() - CRC_LEN);
        if checksum(seq, body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
            return Err(EventDecodeError::Checksum);
        }
        if body[0] != EVENT_VERSION {
            return Err(EventDecodeError::Version(body[0]));
        }
        let flags = body[1];
        let mut r = Reader {
            b: body,
            at: RECEIVED_AT.end,
        };
        let mut received = [0u8; 8];
        received.copy_from_slice(&body[RECEIVED_AT]);
        let event_type = r.text()?;
        let key = r.text()?;
        let trace = if flags & F_TRACE_BIN != 0 {
            let mut t = [0u8; 16];
            t.copy_from_slice(r.take(16)?);
            Trace::Bin(t)
        } else {
            Trace::Text(r.text()?)
        };
        let ts_micros = if flags & F_TS != 0 {
            Some(unzigzag(r.varint()?))
        } else {
            None
        };
        let payload = &body[r.at..];
        Ok(EventView {
            seq,
            event_type,
            key,
            trace,
            ts_micros,
            received_at_micros: i64::from_le_bytes(received),
            stored_payload: if flags & F_SEALED != 0 {
                StoredPayload::Sealed(payload)
            } else {
                StoredPayload::Clear(payload)
            },
        })
    }

    /// The trace id, as it was given or generated.
    pub fn trace_id(&self) -> Cow<'a, str> {
        match self.trace {
            Trace::Text(t) => Cow::Borrowed(t),
            Trace::Bin(b) => Cow::Owned(crate::event::TraceId::from_bytes(&b).as_str().to_owned()),
        }
    }

    /// The payload as the producer sent it (opened if sealed).
    pub fn payload(&self) -> Result<Cow<'a, [u8]>, seal::SealError> {
        match self.stored_payload {
            StoredPayload::Clear(p) => Ok(Cow::Borrowed(p)),
            StoredPayload::Sealed(s) => seal::open(&payload_aad(self.seq), s).map(Cow::Owned),
        }
    }

    pub fn is_sealed(&self) -> bool {
        matches!(self.stored_payload, StoredPayload::Sealed(_))
    }

    /// When the feed committed it.
    pub fn received_at(&self) -> chrono::DateTime<chrono::Utc> {
        micros(self.received_at_micros).unwrap_or_default()
    }
}

pub(crate) fn micros(us: i64) -> Option<chrono::DateTime<chrono::Utc>> {
    use chrono::TimeZone;
    chrono::Utc.timestamp_micros(us).single()
}

/// Why a stored event could not become an [`Event`].
#[derive(Debug, thiserror::Error)]
pub enum ToEventError {
    #[error(transparent)]
    Seal(#[from] seal::SealError),
    #[error("stored payload is not UTF-8: {0}")]
    Utf8(#[source] std::str::Utf8Error),
}

impl EventView<'_> {
    /// The owned [`Event`], its payload the stored text (opened if sealed), not parsed: a
    /// map reads what it needs from the text ([`crate::event::Payload`]).
    pub fn to_event(&self) -> Result<Event, ToEventError> {
        let text = match self.payload()? {
            Cow::Borrowed(b) => std::str::from_utf8(b).map(Box::from),
            Cow::Owned(b) => String::from_utf8(b)
                .map(String::into_boxed_str)
                .map_err(|e| e.utf8_error()),
        }
        .map_err(ToEventError::Utf8)?;
        Ok(Event {
            seq: self.seq,
            event_type: self.event_type.to_string(),
            payload: crate::event::Payload::from_text(text),
            key: self.key.to_string(),
            trace_id: match self.trace {
                Trace::Bin(b) => crate::event::TraceId::from_bytes(&b),
                Trace::Text(t) => t.into(),
            },
            ts: self.ts_micros.and_then(micros),
            received_at: self.received_at(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(trace: &str, ts: Option<i64>) -> Vec<u8> {
        let mut buf = b"junk".to_vec();
        let slot = encode_into(
            &mut buf,
            "PERMIT_STATUS",
            "k-1",
            trace,
            ts,
            br#"{"id": "BP-1", "fee": 1E2}"#,
        );
        let mut v = buf[slot.start..slot.end].to_vec();
        assert_eq!(slot.payload_start, v.len() - 4 - 26);
        finish(&mut v, 42, 1_700_000_000_000_001);
        v
    }

    #[test]
    fn round_trip_keeps_the_payload_bytes_as_sent() {
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        for (t, ts) in [(trace, Some(-5)), ("mine", None)] {
            let v = encoded(t, ts);
            let view = EventView::decode(42, &v).unwrap();
            assert_eq!(view.event_type, "PERMIT_STATUS");
            assert_eq!(view.key, "k-1");
            assert_eq!(view.trace_id(), t);
            assert_eq!(view.ts_micros, ts);
            assert_eq!(view.received_at_micros, 1_700_000_000_000_001);
            assert_eq!(&*view.payload().unwrap(), br#"{"id": "BP-1", "fee": 1E2}"#);
            // The event keeps the text as stored (`1E2`); its tree has serde_json's own
            // spelling of the number.
            let ev = view.to_event().unwrap();
            assert_eq!(ev.payload.text(), r#"{"id": "BP-1", "fee": 1E2}"#);
            assert_eq!(ev.payload.tree().unwrap()["fee"].to_string(), "1e+2");
        }
        // A 32-hex-digit trace id is kept as 16 bytes instead of 1 + 32.
        assert_eq!(
            encoded(trace, None).len() + 17,
            encoded(&"x".repeat(32), None).len()
        );
    }

    #[test]
    fn any_flipped_bit_or_another_seq_is_refused() {
        let v = encoded("t", Some(3));
        assert!(matches!(
            EventView::decode(43, &v),
            Err(EventDecodeError::Checksum)
        ));
        for i in 0..v.len() * 8 {
            let mut b = v.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(EventView::decode(42, &b).is_err(), "bit {i}");
        }
        for n in 0..v.len() {
            assert!(EventView::decode(42, &v[..n]).is_err());
        }
    }

    #[test]
    fn a_sealed_payload_opens_only_at_its_seq() {
        let key = seal::register(seal::Key::from_bytes(&[3u8; 32]));
        let mut buf = Vec::new();
        let slot = encode_into(&mut buf, "T", "k", "t", None, br#"{"ssn":"1"}"#);
        let v = finish_sealed(&buf[slot.start..slot.end], slot.payload_start, 7, 9, &key);
        let view = EventView::decode(7, &v).unwrap();
        assert!(view.is_sealed());
        assert!(!v.windows(3).any(|w| w == b"ssn"), "no clear text at rest");
        assert_eq!(&*view.payload().unwrap(), br#"{"ssn":"1"}"#);
        // The same bytes under another seq fail the checksum; re-checksummed, they fail to open.
        let mut moved = v.clone();
        finish(&mut moved, 8, 9);
        let view = EventView::decode(8, &moved).unwrap();
        assert!(view.payload().is_err());
    }
}
