//! Every redb table of `ess.redb`, in one place, with its key and value encoding.
//!
//! Values that are structs are stored as one format-version byte followed by the postcard
//! encoding of the struct, so a later release can read what an earlier one wrote (and
//! refuse, with a clear message, what it does not understand).

use redb::TableDefinition;

/// seq -> versioned postcard [`super::StoredEvent`]. Append-only but for compaction.
pub const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// idempotency key -> seq. Written in the same transaction as the event.
pub const KEYS: TableDefinition<&str, u64> = TableDefinition::new("keys");
/// Database-wide numbers: `format_version`, `last_seq` (survives compaction of the tail).
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// connector -> versioned postcard [`crate::ledger::CursorState`].
pub const CURSORS: TableDefinition<&str, &[u8]> = TableDefinition::new("cursors");
/// connector -> versioned postcard [`crate::ledger::RetryState`] of its head event.
pub const RETRIES: TableDefinition<&str, &[u8]> = TableDefinition::new("retries");
/// (connector, seq) -> versioned postcard [`crate::ledger::DeadLetter`].
pub const DEAD: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("dead");

/// (connector, seq) -> (): events to deliver again, ahead of the cursor (`ess replay`).
/// Removed in the same transaction that commits their re-delivery.
pub const REQUEUE: TableDefinition<(&str, u64), ()> = TableDefinition::new("requeue");

/// connector -> versioned postcard [`crate::ledger::actions::Pause`]: held by `ess pause`.
pub const PAUSES: TableDefinition<&str, &[u8]> = TableDefinition::new("pauses");
/// (connector, seq) -> versioned postcard [`crate::ledger::actions::Settled`]: dead letters
/// an operator acknowledged or discarded (`ess dead ack|discard`), moved out of `dead`.
pub const SETTLED: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("settled");
/// id (1, 2, ...) -> versioned postcard [`crate::ledger::actions::ActionRecord`]: who did
/// what, written in the same transaction as the action itself.
pub const ACTIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("actions");
/// connector -> versioned postcard [`crate::ledger::actions::ErrorNote`]: its last delivery
/// error and when it happened (kept after the event is parked or delivered).
pub const ERRORS: TableDefinition<&str, &[u8]> = TableDefinition::new("errors");
/// connector -> versioned postcard [`crate::ledger::intent::Intent`]: the delivery under
/// way, committed before its first byte; removed with the delivery's commit.
pub const INTENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("intents");

/// The on-disk format this build writes. Bumped on any incompatible change to a value.
pub const FORMAT_VERSION: u64 = 1;
/// The leading byte of every versioned value.
pub const VALUE_VERSION: u8 = 1;

/// `VALUE_VERSION` followed by the postcard encoding of `value`.
pub fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![VALUE_VERSION];
    // Serializing into a Vec cannot fail for the plain structs stored here (no maps with
    // non-string keys, no unsupported serde types), so the error arm is unreachable.
    out.extend(postcard::to_stdvec(value).expect("postcard encodes plain structs into a Vec"));
    out
}

/// Inverse of [`encode`]; a clear error for an unknown version or corrupt bytes.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match bytes.split_first() {
        Some((&VALUE_VERSION, rest)) => {
            postcard::from_bytes(rest).map_err(|e| format!("corrupt stored value: {e}"))
        }
        Some((v, _)) => Err(format!(
            "stored value has format version {v}; this build reads {VALUE_VERSION}"
        )),
        None => Err("empty stored value".into()),
    }
}
