//! Every redb table of `ess.redb`, in one place, with its key and value encoding, and the
//! codec of every ledger value.
//!
//! ## Values (format version 2)
//! A ledger value (cursor, retry state, dead letter, a target checkpoint, and whatever other
//! modules store with [`encode`]) is
//!
//! ```text
//! [0]        VALUE_VERSION (2)
//! [1..n-4]   postcard encoding of the struct
//! [n-4..n]   crc32c(binding ‖ bytes[0..n-4]), little endian
//! ```
//!
//! The *binding* is empty for [`encode`]/[`decode`]; the ledger's own tables bind each value
//! to its table and key ([`encode_bound`]), so a value that lands under another key (a
//! flipped bit in a key, a misdirected page) fails its checksum instead of being believed.
//! Events have a codec of their own ([`super::codec`]), bound to their seq.
//!
//! Every read goes through [`decode`] / [`decode_bound`], which verify the checksum first: a
//! damaged value is an error, never data.
//!
//! ## Version log
//! - 1 (first release): `VALUE_VERSION` 1 + postcard, no checksum; events as postcard
//!   structs with the payload re-serialised; `keys` held whole idempotency keys.
//! - 2: checksums on every value (bound to table and key where the ledger writes), events in
//!   their own layout holding the payload bytes as received (optionally sealed), and the
//!   dedupe index `key_index` holding each key bounded to 33 bytes ([`super::IndexKey`]). A version 1 file is
//!   migrated in place, in one transaction, on the first writable open
//!   ([`super::migrate`]).
//! - 2, with pickup sources: three more tables (`source_files`, `source_bad`,
//!   `source_totals`), same value codec. Not a new format: a file without them is a feed
//!   without sources, read and written as before, and the tables appear at the first
//!   pickup; the migration of a version 1 file neither needs nor touches them.

use redb::TableDefinition;

/// seq -> event ([`super::codec`]). Append-only but for compaction.
pub const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// [`super::IndexKey`] of the idempotency key -> seq. Written in the same transaction as the
/// event.
pub const KEYS: TableDefinition<&[u8], u64> = TableDefinition::new("key_index");
/// The version 1 dedupe index (whole key -> seq); only the migration reads it, then deletes it.
pub(crate) const KEYS_V1: TableDefinition<&str, u64> = TableDefinition::new("keys");
/// Database-wide numbers: `format_version`, `last_seq` (survives compaction of the tail) and
/// `last_seq_check` (a checksum of `last_seq`, so a damaged one is refused, not reused).
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// connector -> [`crate::ledger::CursorState`], bound to `cursors` and the connector.
pub const CURSORS: TableDefinition<&str, &[u8]> = TableDefinition::new("cursors");
/// connector -> [`crate::ledger::RetryState`] of its head event, bound like cursors.
pub const RETRIES: TableDefinition<&str, &[u8]> = TableDefinition::new("retries");
/// (connector, seq) -> [`crate::ledger::DeadLetter`] (message sealed when encryption is on),
/// bound to `dead`, the connector and the seq.
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

/// (source, file key) -> [`crate::ledger::sources::SourceFile`]: one legacy file a pickup
/// source took (or is taking, or holds back), with its checkpoint; bound to the table, the
/// source and the file key. Written in the same transaction as the file's events.
pub const SOURCE_FILES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("source_files");
/// (source, file key, record index) -> [`crate::ledger::sources::BadRecord`]: a record that
/// could not be read (its dead letter), bound to all three.
pub const SOURCE_BAD: TableDefinition<(&str, &str, u64), &[u8]> =
    TableDefinition::new("source_bad");
/// source -> [`crate::ledger::sources::SourceTotals`]: files, records and bad records since
/// the source began (kept when file rows expire).
pub const SOURCE_TOTALS: TableDefinition<&str, &[u8]> = TableDefinition::new("source_totals");

/// The name of every table this build writes (a backup copies exactly these and refuses a
/// file holding another).
pub const TABLES: [&str; 15] = [
    "events",
    "key_index",
    "meta",
    "cursors",
    "retries",
    "dead",
    "requeue",
    "pauses",
    "settled",
    "actions",
    "errors",
    "intents",
    "source_files",
    "source_bad",
    "source_totals",
];

/// The on-disk format this build writes. Bumped on any incompatible change to a value.
pub const FORMAT_VERSION: u64 = 2;
/// The leading byte of every ledger value this build writes.
pub const VALUE_VERSION: u8 = 2;
/// The leading byte of a version 1 value (no checksum); read by the migration only.
pub(crate) const VALUE_VERSION_1: u8 = 1;

/// Why a stored value could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty stored value")]
    Empty,
    #[error("stored value has format version {0}; this build reads {VALUE_VERSION}")]
    Version(u8),
    #[error("stored value is too short to hold its checksum")]
    Truncated,
    #[error("checksum mismatch (the stored bytes were altered)")]
    Checksum,
    #[error("stored value does not decode: {0}")]
    Body(#[source] postcard::Error),
}

/// `VALUE_VERSION`, the postcard encoding of `value`, and its checksum.
pub fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    encode_bound(&[], value)
}

/// [`encode`] with the checksum bound to `binding` (for instance table name and key): only
/// [`decode_bound`] with the same binding accepts the bytes.
pub fn encode_bound<T: serde::Serialize>(binding: &[u8], value: &T) -> Vec<u8> {
    // Serializing into a Vec cannot fail for the plain structs stored here (no maps with
    // non-string keys, no unsupported serde types), so the error arm is unreachable.
    let mut out = postcard::to_extend(value, vec![VALUE_VERSION])
        .expect("postcard encodes plain structs into a Vec");
    seal_checksum(binding, &mut out);
    out
}

/// Appends crc32c(binding ‖ out) to `out`.
pub(crate) fn seal_checksum(binding: &[u8], out: &mut Vec<u8>) {
    let crc = crc32c::crc32c_append(crc32c::crc32c(binding), out);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// The bytes of `stored` before its checksum, if the checksum (bound to `binding`) holds.
pub(crate) fn verified<'a>(binding: &[u8], stored: &'a [u8]) -> Result<&'a [u8], DecodeError> {
    if stored.len() < 5 {
        return Err(DecodeError::Truncated);
    }
    let (body, crc) = stored.split_at(stored.len() - 4);
    let want = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32c::crc32c_append(crc32c::crc32c(binding), body) != want {
        return Err(DecodeError::Checksum);
    }
    Ok(body)
}

/// Inverse of [`encode`]: verifies the checksum, then decodes.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    decode_bound(&[], bytes)
}

/// Inverse of [`encode_bound`] with the same `binding`.
pub fn decode_bound<T: serde::de::DeserializeOwned>(
    binding: &[u8],
    bytes: &[u8],
) -> Result<T, DecodeError> {
    match bytes.first() {
        None => Err(DecodeError::Empty),
        Some(&VALUE_VERSION) => {
            let body = verified(binding, bytes)?;
            postcard::from_bytes(&body[1..]).map_err(DecodeError::Body)
        }
        Some(&v) => Err(DecodeError::Version(v)),
    }
}

/// The binding of a connector-keyed ledger value: table name, NUL, connector name.
pub(crate) fn connector_binding(table: &str, connector: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(table.len() + 1 + connector.len());
    b.extend_from_slice(table.as_bytes());
    b.push(0);
    b.extend_from_slice(connector.as_bytes());
    b
}

/// The binding of a (connector, seq)-keyed ledger value.
pub(crate) fn connector_seq_binding(table: &str, connector: &str, seq: u64) -> Vec<u8> {
    let mut b = connector_binding(table, connector);
    b.push(0);
    b.extend_from_slice(&seq.to_be_bytes());
    b
}

/// The check value stored next to `meta.last_seq`.
pub(crate) fn last_seq_check(last_seq: u64) -> u64 {
    u64::from(crc32c::crc32c_append(
        crc32c::crc32c(b"meta\0last_seq"),
        &last_seq.to_le_bytes(),
    ))
}

/// Re-wraps a version 1 value (version byte + postcard) as version 2 without knowing its
/// type: the postcard body is the same, only the version byte and the checksum change.
pub(crate) fn upgrade_v1(binding: &[u8], v1: &[u8]) -> Option<Vec<u8>> {
    let (&VALUE_VERSION_1, body) = v1.split_first()? else {
        return None;
    };
    let mut out = Vec::with_capacity(v1.len() + 4);
    out.push(VALUE_VERSION);
    out.extend_from_slice(body);
    seal_checksum(binding, &mut out);
    Some(out)
}

/// Decodes a version 1 value (no checksum), for the migration.
pub(crate) fn decode_v1<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    match bytes.split_first() {
        None => Err(DecodeError::Empty),
        Some((&VALUE_VERSION_1, rest)) => postcard::from_bytes(rest).map_err(DecodeError::Body),
        Some((&v, _)) => Err(DecodeError::Version(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct S {
        a: u64,
        b: String,
    }

    #[test]
    fn every_single_bit_flip_is_refused() {
        let s = S {
            a: 7,
            b: "city_hall".into(),
        };
        let bytes = encode_bound(b"cursors\0c", &s);
        assert_eq!(decode_bound::<S>(b"cursors\0c", &bytes).unwrap(), s);
        assert!(decode_bound::<S>(b"cursors\0d", &bytes).is_err(), "bound");
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(decode_bound::<S>(b"cursors\0c", &b).is_err(), "bit {i}");
        }
    }

    #[test]
    fn a_v1_value_is_upgraded_without_knowing_its_type() {
        let s = S {
            a: 1,
            b: "x".into(),
        };
        let mut v1 = vec![VALUE_VERSION_1];
        v1.extend(postcard::to_stdvec(&s).unwrap());
        assert_eq!(decode_v1::<S>(&v1).unwrap(), s);
        assert!(matches!(decode::<S>(&v1), Err(DecodeError::Version(1))));
        let v2 = upgrade_v1(b"", &v1).unwrap();
        assert_eq!(decode::<S>(&v2).unwrap(), s);
    }
}
