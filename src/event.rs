//! The vocabulary every module shares: an [`Event`] as it sits in the feed, its [`Seq`],
//! its idempotency key, and the [`Record`] bytes a map makes of it.
//!
//! Invariant: an `Event` handed out by the feed is immutable; `seq` is gap-free and
//! increasing, assigned once at commit.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

/// Position of an event in the feed: gap-free, increasing, starting at 1.
pub type Seq = u64;

/// Longest idempotency key the ingest accepts (SPEC §5).
pub const MAX_KEY_LEN: usize = 256;

/// One event, as committed to the feed.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub seq: Seq,
    /// `type` on the wire: 1–128 chars of `[A-Za-z0-9_.-]`.
    pub event_type: String,
    /// The payload object, numbers kept exactly as sent (`arbitrary_precision`).
    pub payload: Map<String, Value>,
    /// The given idempotency key, else the SHA-256 of the canonical (type, payload, ts).
    pub key: String,
    /// From the event, else the request's `traceparent`, else generated at ingest.
    pub trace_id: String,
    /// The source time, RFC 3339, if the producer gave one.
    pub ts: Option<DateTime<Utc>>,
    /// When the feed committed it.
    pub received_at: DateTime<Utc>,
    /// The payload's JSON text as it was sent, kept only when `payload` would print one of
    /// its numbers with other characters (serde_json reads `1E2` as `1e+2`): the map writes
    /// numbers as sent from it. `None` for the common payload.
    pub sent_payload: Option<Box<str>>,
}

/// Whether a JSON text may hold a number serde_json's tree prints differently: a digit then
/// an exponent written `E`, or `e` without a sign (`1E2`, `1E-2`, `1e2`; `1e+2` and `1e-2`
/// print as sent). Cheap and conservative: a string holding `A1E2` counts too.
pub fn numbers_may_reprint(json: &[u8]) -> bool {
    json.windows(3).any(|w| {
        w[0].is_ascii_digit()
            && match w[1] {
                b'E' => w[2].is_ascii_digit() || w[2] == b'+' || w[2] == b'-',
                b'e' => w[2].is_ascii_digit(),
                _ => false,
            }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn numbers_that_would_be_reprinted_are_noticed() {
        for (json, reprints) in [
            (r#"{"a":1E2}"#, true),
            (r#"{"a":-2.5E-3}"#, true),
            (r#"{"a":1E+2}"#, true),
            (r#"{"a":1e2}"#, true),
            (r#"{"a":1e+2,"b":1e-2}"#, false),
            (
                r#"{"name":"ABCDEFG","updated_at":"2025-04-12T10:03:00Z"}"#,
                false,
            ),
            (r#"{"a":19.990}"#, false),
        ] {
            assert_eq!(
                super::numbers_may_reprint(json.as_bytes()),
                reprints,
                "{json}"
            );
        }
    }
}

/// The bytes a connector's map made of one event: one fixed-width line, one CSV row, one
/// JSON object, one SOAP body... including its line end and already in the target encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: Seq,
    pub bytes: Vec<u8>,
}
