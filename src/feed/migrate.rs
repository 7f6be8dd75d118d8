//! Opening a feed: the format check, and the in-place migration of a file the first
//! release wrote (format version 1) to this build's version 2 ([`super::schema`] has the
//! version log).
//!
//! The migration runs in one write transaction before anything else uses the file: every
//! event is rewritten in the new layout (its payload, JSON text the first release
//! re-serialised, kept as it is, and sealed if encryption is configured), the `keys` index
//! becomes `key_index`, every cursor, retry state and dead letter gets its checksum (the
//! target checkpoints inside cursors are re-wrapped the same way), and `meta.format_version`
//! becomes 2. A crash before the commit leaves the version 1 file untouched, and the next
//! open migrates again; after it, the file is version 2 throughout. Tables the migration
//! does not know are left as they are. A version 1 event that does not even decode (damaged
//! before the upgrade) is kept as it is, and the version 2 reader reports it as damaged.

use redb::{Database, ReadableTable, WriteTransaction};
use serde::Deserialize;

use super::schema::{self, CURSORS, DEAD, EVENTS, KEYS, KEYS_V1, META, RETRIES};
use super::{Error, IndexKey, codec, guarded, seal};
use crate::event::Seq;
use crate::ledger::{self, CursorState, DeadLetter, RetryState};

/// Rows moved between two reads of a table while migrating it.
const CHUNK: usize = 10_000;

/// Checks (and if needed migrates) the file's format, creates missing tables, and returns
/// `meta.last_seq` after checking it against its check value and the events.
pub(crate) fn prepare(db: &Database, seal: Option<&seal::Key>) -> Result<Seq, Error> {
    guarded("meta", || {
        let tx = db.begin_write()?;
        let version = tx
            .open_table(META)?
            .get("format_version")?
            .map(|v| v.value());
        match version {
            None | Some(schema::FORMAT_VERSION) => {}
            Some(1) => migrate_v1(&tx, seal)?,
            Some(found) => return Err(Error::FormatVersion { found }),
        }
        {
            let mut meta = tx.open_table(META)?;
            meta.insert("format_version", schema::FORMAT_VERSION)?;
            // The key last sealed with must still open what it sealed.
            let recorded = meta
                .get("seal_key_id")?
                .and_then(|v| u32::try_from(v.value()).ok());
            seal::check_recorded(recorded, seal.map(seal::Key::id)).map_err(|source| {
                Error::Seal {
                    what: "ess.redb".into(),
                    source,
                }
            })?;
            if let Some(key) = seal {
                meta.insert("seal_key_id", u64::from(key.id()))?;
            }
        }
        tx.open_table(EVENTS)?;
        tx.open_table(KEYS)?;
        tx.open_table(CURSORS)?;
        tx.open_table(RETRIES)?;
        tx.open_table(DEAD)?;
        tx.open_table(schema::REQUEUE)?;
        tx.open_table(schema::INTENTS)?;
        tx.open_table(schema::PAUSES)?;
        tx.open_table(schema::SETTLED)?;
        tx.open_table(schema::ACTIONS)?;
        tx.open_table(schema::ERRORS)?;
        let last_seq = checked_last_seq(&tx)?;
        tx.commit()?;
        Ok(last_seq)
    })
}

/// `meta.last_seq`, refused if its check value disagrees or an intact event lies beyond it:
/// a damaged `last_seq` would otherwise hand out seqs that are taken.
fn checked_last_seq(tx: &WriteTransaction) -> Result<Seq, Error> {
    let meta = tx.open_table(META)?;
    let last = meta.get("last_seq")?.map(|v| v.value());
    let check = meta.get("last_seq_check")?.map(|v| v.value());
    let events = tx.open_table(EVENTS)?;
    let max = events.last()?.map(|(k, v)| (k.value(), v.value().to_vec()));
    let last = match (last, check) {
        (None, None) => 0,
        (Some(l), Some(c)) if c == schema::last_seq_check(l) => l,
        _ => {
            return Err(Error::corrupt(
                "meta",
                None,
                Some("last_seq"),
                "last_seq does not match its check value",
            ));
        }
    };
    if let Some((seq, bytes)) = max {
        if seq > last {
            if codec::EventView::decode(seq, &bytes).is_ok() {
                return Err(Error::corrupt(
                    "meta",
                    Some(seq),
                    Some("last_seq"),
                    format!("an intact event has seq {seq}, beyond last_seq {last}"),
                ));
            }
            // A damaged key that sorts last: readers report it; seqs go on from last_seq.
            tracing::error!(
                seq,
                last_seq = last,
                "the last row of events is damaged; run `ess verify`"
            );
        }
    }
    Ok(last)
}

#[derive(Deserialize)]
struct EventV1 {
    event_type: String,
    payload: String,
    key: String,
    trace_id: String,
    ts_micros: Option<i64>,
    received_at_micros: i64,
}

#[derive(Deserialize)]
struct CursorV1 {
    seq: Seq,
    checkpoint: Vec<u8>,
    delivered: u64,
    last_success_micros: Option<i64>,
    pinned: Option<Seq>,
}

#[derive(Deserialize)]
struct RetryV1 {
    seq: Seq,
    attempts: u32,
    next_at_micros: i64,
    last_error: String,
}

#[derive(Deserialize)]
struct DeadV1 {
    reason: String,
    message: String,
    at_micros: i64,
    attempts: u32,
}

fn migrate_v1(tx: &WriteTransaction, seal: Option<&seal::Key>) -> Result<(), Error> {
    let started = std::time::Instant::now();
    let n_events = migrate_events(tx, seal)?;
    let n_keys = migrate_keys(tx)?;
    let n_rows = migrate_ledger(tx, seal)?;
    {
        let mut meta = tx.open_table(META)?;
        let last = meta.get("last_seq")?.map_or(0, |v| v.value());
        meta.insert("last_seq_check", schema::last_seq_check(last))?;
    }
    tracing::info!(
        n_events,
        n_keys,
        n_ledger_rows = n_rows,
        duration_ms = started.elapsed().as_millis() as u64,
        "ess.redb migrated from feed format 1 to {}",
        schema::FORMAT_VERSION
    );
    Ok(())
}

fn migrate_events(tx: &WriteTransaction, seal: Option<&seal::Key>) -> Result<u64, Error> {
    let mut events = tx.open_table(EVENTS)?;
    let mut next: Seq = 0;
    let mut n = 0;
    loop {
        let chunk: Vec<(Seq, Vec<u8>)> = events
            .range(next..)?
            .take(CHUNK)
            .map(|r| r.map(|(k, v)| (k.value(), v.value().to_vec())))
            .collect::<Result<_, _>>()?;
        let Some(&(last, _)) = chunk.last() else {
            break;
        };
        for (seq, old) in chunk {
            let Ok(ev) = schema::decode_v1::<EventV1>(&old) else {
                tracing::error!(
                    seq,
                    "a version 1 event does not decode; kept as it is, and reported as damaged"
                );
                continue;
            };
            let mut buf = Vec::with_capacity(old.len() + 8);
            let slot = codec::encode_into(
                &mut buf,
                &ev.event_type,
                &ev.key,
                &ev.trace_id,
                ev.ts_micros,
                ev.payload.as_bytes(),
            );
            let value = match seal {
                None => {
                    codec::finish(&mut buf, seq, ev.received_at_micros);
                    buf
                }
                Some(key) => codec::finish_sealed(
                    &buf[slot.start..slot.end],
                    slot.payload_start,
                    seq,
                    ev.received_at_micros,
                    key,
                ),
            };
            events.insert(seq, value.as_slice())?;
            n += 1;
        }
        next = last + 1;
    }
    Ok(n)
}

fn migrate_keys(tx: &WriteTransaction) -> Result<u64, Error> {
    let mut n = 0;
    {
        let old = match tx.open_table(KEYS_V1) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        let mut keys = tx.open_table(KEYS)?;
        for row in old.iter()? {
            let (k, v) = row?;
            keys.insert(IndexKey::of(k.value()).as_bytes(), v.value())?;
            n += 1;
        }
    }
    tx.delete_table(KEYS_V1)?;
    Ok(n)
}

/// Re-wraps a target checkpoint the first release wrote (version 1 + postcard) as version 2.
fn upgrade_checkpoint(cp: Vec<u8>) -> Vec<u8> {
    match cp.first() {
        Some(&schema::VALUE_VERSION_1) => schema::upgrade_v1(&[], &cp).unwrap_or(cp),
        _ => cp,
    }
}

fn migrate_ledger(tx: &WriteTransaction, seal: Option<&seal::Key>) -> Result<u64, Error> {
    let mut n = 0;
    {
        let mut t = tx.open_table(CURSORS)?;
        let rows = all_rows(&t)?;
        for (name, old) in rows {
            let v1: CursorV1 = schema::decode_v1(&old)
                .map_err(|e| Error::corrupt("cursors", None, Some(&name), e))?;
            let state = CursorState {
                seq: v1.seq,
                checkpoint: upgrade_checkpoint(v1.checkpoint),
                delivered: v1.delivered,
                last_success_micros: v1.last_success_micros,
                pinned: v1.pinned,
            };
            t.insert(
                name.as_str(),
                ledger::encode_cursor(&name, &state).as_slice(),
            )?;
            n += 1;
        }
    }
    {
        let mut t = tx.open_table(RETRIES)?;
        let rows = all_rows(&t)?;
        for (name, old) in rows {
            let v1: RetryV1 = schema::decode_v1(&old)
                .map_err(|e| Error::corrupt("retries", None, Some(&name), e))?;
            let state = RetryState {
                seq: v1.seq,
                attempts: v1.attempts,
                next_at_micros: v1.next_at_micros,
                last_error: v1.last_error,
            };
            t.insert(
                name.as_str(),
                ledger::encode_retry(&name, &state).as_slice(),
            )?;
            n += 1;
        }
    }
    {
        let mut t = tx.open_table(DEAD)?;
        let rows: Vec<((String, Seq), Vec<u8>)> = t
            .iter()?
            .map(|r| r.map(|(k, v)| ((k.value().0.to_string(), k.value().1), v.value().to_vec())))
            .collect::<Result<_, _>>()?;
        for ((name, seq), old) in rows {
            let v1: DeadV1 = schema::decode_v1(&old)
                .map_err(|e| Error::corrupt("dead", Some(seq), Some(&name), e))?;
            let letter = DeadLetter {
                reason: v1.reason,
                message: v1.message,
                at_micros: v1.at_micros,
                attempts: v1.attempts,
            };
            let bytes = ledger::encode_dead(&name, seq, &letter, seal);
            t.insert((name.as_str(), seq), bytes.as_slice())?;
            n += 1;
        }
    }
    Ok(n)
}

fn all_rows(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Vec<(String, Vec<u8>)>, Error> {
    Ok(t.iter()?
        .map(|r| r.map(|(k, v)| (k.value().to_string(), v.value().to_vec())))
        .collect::<Result<_, _>>()?)
}
