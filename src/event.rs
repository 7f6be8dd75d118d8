//! The vocabulary every module shares: an [`Event`] as it sits in the feed, its [`Seq`],
//! its idempotency key, and the [`Record`] bytes a map makes of it.
//!
//! Invariant: an `Event` handed out by the feed is immutable; `seq` is gap-free and
//! increasing, assigned once at commit.

use chrono::{DateTime, Utc};
use std::sync::OnceLock;

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
    /// The payload object: its JSON text as sent, and its tree when something needs one.
    pub payload: Payload,
    /// The given idempotency key, else the SHA-256 of the canonical (type, payload, ts).
    pub key: String,
    /// From the event, else the request's `traceparent`, else generated at ingest.
    pub trace_id: String,
    /// The source time, RFC 3339, if the producer gave one.
    pub ts: Option<DateTime<Utc>>,
    /// When the feed committed it.
    pub received_at: DateTime<Utc>,
}

/// An event's payload: the JSON object's text exactly as it was sent, and its tree, parsed
/// the first time something asks for it.
///
/// A map renders most records from the text alone ([`crate::map::Mapping::render`] borrows
/// the values it reads), so a connector draining a backlog builds no tree, and numbers keep
/// the characters they were sent with (`1E2` stays `1E2`; serde_json's tree prints `1e+2`).
#[derive(Debug, Clone)]
pub struct Payload {
    text: Box<str>,
    tree: OnceLock<Result<Map<String, Value>, PayloadError>>,
}

/// The stored text of a payload is not a JSON object: a bug or a damaged feed, since the
/// feed stores only what ingest validated, under a checksum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the payload is not a JSON object: {0}")]
pub struct PayloadError(pub String);

impl Payload {
    /// The payload of a tree (a pickup source's record, a test's event): its text is the
    /// tree's JSON.
    pub fn from_map(map: Map<String, Value>) -> Payload {
        // A map with string keys always serializes (serde_json fails only on non-string
        // keys and on a failing writer; a `String` does not fail).
        let text = Value::Object(map).to_string();
        Payload::from_text(text.into())
    }

    /// A payload from its JSON text, checked to be an object.
    pub fn parse(text: &str) -> Result<Payload, PayloadError> {
        let p = Payload::from_text(text.into());
        p.tree()?;
        Ok(p)
    }

    /// A payload whose text is not checked here: the feed's stored payloads, validated by
    /// ingest when they arrived and read back under a checksum. Should it not be an object
    /// after all, [`Payload::tree`] says so, and so does the map that reads it.
    pub(crate) fn from_text(text: Box<str>) -> Payload {
        Payload {
            text,
            tree: OnceLock::new(),
        }
    }

    /// The JSON text, as sent.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The parsed object (numbers keep their digits: `arbitrary_precision`).
    pub fn tree(&self) -> Result<&Map<String, Value>, PayloadError> {
        self.tree
            .get_or_init(|| {
                serde_json::from_str(&self.text).map_err(|e| PayloadError(e.to_string()))
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

/// The empty object.
impl Default for Payload {
    fn default() -> Payload {
        Payload::from_map(Map::new())
    }
}

/// Two payloads are the same when their texts are: the text is what was sent.
impl PartialEq for Payload {
    fn eq(&self, other: &Payload) -> bool {
        self.text == other.text
    }
}

/// The bytes a connector's map made of one event: one fixed-width line, one CSV row, one
/// JSON object, one SOAP body... including its line end and already in the target encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: Seq,
    pub bytes: Vec<u8>,
}
