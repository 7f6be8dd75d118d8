//! Feed retention: compacts away events every connector has passed and that are older than
//! `retention.feed`, so `ess.redb` stops growing under steady load; and the free-disk probe
//! behind `retention.min_free_disk`.
//!
//! Compaction deletes an event's `events` row and its `keys` row together, in write
//! transactions of at most [`COMPACT_BATCH`] events, so the single writer (the ingest's
//! group commit) waits at most one small transaction. redb reuses the freed pages for new
//! data, which is what bounds the file size; it does not shrink the file.
//!
//! Invariant: an event is deleted only if its seq is at or below `keep_after_seq` (the
//! lowest connector cursor, passed by the caller) and below every dead letter and queued
//! replay of any connector (those must stay replayable), and it was received before
//! `older_than`. `meta.last_seq` is never touched, so seqs stay gap-free after compaction.
//! Idempotency keys of compacted events are forgotten with them: a re-send after the
//! retention period is accepted as new.

use std::path::Path;

use chrono::{DateTime, Utc};
use redb::{ReadableDatabase, ReadableTable};

use super::schema::{DEAD, EVENTS, KEYS, REQUEUE};
use super::{Error, EventView, IndexKey, Store, guarded};
use crate::event::Seq;

/// Most events deleted in one write transaction.
pub const COMPACT_BATCH: usize = 10_000;

/// What one [`compact`] run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CompactStats {
    /// Events (and their keys) deleted.
    pub deleted: u64,
    /// Write transactions used.
    pub transactions: u64,
    /// The highest seq deleted, if any.
    pub last_deleted: Option<Seq>,
    /// The bound actually used: `keep_after_seq`, lowered below any dead letter or replay.
    pub effective_bound: Seq,
}

/// The lowest seq any connector still needs as a dead letter or a queued replay. Dead
/// letters are verified: a damaged key must not let the event it held be compacted.
fn lowest_held<D: ReadableDatabase>(db: &D) -> Result<Option<Seq>, Error> {
    guarded("dead", || {
        let tx = db.begin_read()?;
        let mut low: Option<Seq> = None;
        for row in tx.open_table(DEAD)?.iter()? {
            let (k, v) = row?;
            let (connector, seq) = k.value();
            crate::ledger::decode_dead(connector, seq, v.value())?;
            low = Some(low.map_or(seq, |l| l.min(seq)));
        }
        for row in tx.open_table(REQUEUE)?.iter()? {
            let seq = row?.0.value().1;
            low = Some(low.map_or(seq, |l| l.min(seq)));
        }
        Ok(low)
    })
}

/// Deletes events with seq <= `keep_after_seq` received before `older_than` (see the
/// module invariant), oldest first, in transactions of [`COMPACT_BATCH`]. It stops at the
/// first event too young: `received_at` grows with seq (the committer stamps each group),
/// so a clock stepped backwards can only delay compaction, never remove a young event.
pub fn compact(
    db: &Store,
    keep_after_seq: u64,
    older_than: DateTime<Utc>,
) -> Result<CompactStats, Error> {
    let bound = match lowest_held(db)? {
        Some(held) => keep_after_seq.min(held.saturating_sub(1)),
        None => keep_after_seq,
    };
    let cutoff = older_than.timestamp_micros();
    let mut stats = CompactStats {
        effective_bound: bound,
        ..CompactStats::default()
    };
    loop {
        let (n, last, done) = db.write(|tx| {
            let mut events = tx.open_table(EVENTS)?;
            let mut keys = tx.open_table(KEYS)?;
            let mut victims: Vec<(Seq, IndexKey)> = Vec::new();
            let mut done = false;
            for row in events.range(..=bound)? {
                if victims.len() >= COMPACT_BATCH {
                    break;
                }
                let (k, v) = row?;
                let seq = k.value();
                let ev = EventView::decode(seq, v.value())
                    .map_err(|e| Error::corrupt("events", Some(seq), None, e))?;
                if ev.received_at_micros >= cutoff {
                    done = true;
                    break;
                }
                victims.push((seq, IndexKey::of(ev.key)));
            }
            if victims.len() < COMPACT_BATCH {
                done = true;
            }
            for (seq, index) in &victims {
                events.remove(*seq)?;
                // The index row points at this seq unless something is badly wrong; only
                // remove it if it does.
                if keys
                    .get(index.as_bytes())?
                    .is_some_and(|v| v.value() == *seq)
                {
                    keys.remove(index.as_bytes())?;
                }
            }
            Ok((victims.len() as u64, victims.last().map(|v| v.0), done))
        })?;
        if n == 0 {
            break;
        }
        stats.deleted += n;
        stats.transactions += 1;
        stats.last_deleted = last;
        if done {
            break;
        }
    }
    Ok(stats)
}

/// The `keep_after_seq` for [`compact`]: the lowest cursor among `connectors` (the ones
/// whose maps are loaded). A connector without a cursor yet holds everything (0).
/// Connectors the ledger knows but that are not named here (their map was removed) hold
/// nothing.
pub fn lowest_cursor<D: ReadableDatabase>(db: &D, connectors: &[&str]) -> Result<Seq, Error> {
    let mut low = u64::MAX;
    for name in connectors {
        let seq = crate::ledger::read_cursor(db, name)?.map_or(0, |c| c.seq);
        low = low.min(seq);
    }
    // No connector at all: nothing has passed anything, so nothing may go.
    Ok(if low == u64::MAX { 0 } else { low })
}

/// One retention pass as the daemon runs it: events every connector in `connectors` has
/// passed and received more than `retention` before `now` are compacted.
pub fn compact_passed(
    db: &Store,
    connectors: &[&str],
    retention: std::time::Duration,
    now: DateTime<Utc>,
) -> Result<CompactStats, Error> {
    let keep_after = lowest_cursor(db, connectors)?;
    let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    let older_than = now
        .checked_sub_signed(retention)
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    compact(db, keep_after, older_than)
}

/// Bytes available to an unprivileged user on the filesystem holding `path`.
pub fn free_disk_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains a NUL byte")
    })?;
    // SAFETY: statvfs only writes into the zeroed struct we own; c_path is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}
