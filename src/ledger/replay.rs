//! Re-delivery on request (`ess replay`): the `requeue` table holds (connector, seq) pairs
//! a connector must deliver again before it goes on past its cursor.
//!
//! Invariant: only seqs at or below the connector's cursor that are still in the feed are
//! queued (events above the cursor are delivered anyway, so queueing them would deliver
//! them twice). `requeue_dead` moves dead letters to `requeue` in one transaction, so none
//! is lost between the two; a range replay may queue a dead event too, and
//! [`Ledger::commit_replayed`] removes its old dead letter once it is re-delivered (or
//! replaces it, if it is parked again). The queue entry goes in the same transaction as
//! the target's checkpoint, so a crash re-delivers (idempotently) rather than forgets.

use chrono::{DateTime, Utc};
use redb::ReadableTable;

use super::{CursorState, DeadLetter, Ledger};
use crate::event::{Event, Seq};
use crate::feed::Error;
use crate::feed::schema::{CURSORS, DEAD, EVENTS, REQUEUE};

impl Ledger {
    /// Queues every feed event with `from <= seq <= to` and seq at or below the connector's
    /// cursor for re-delivery; returns how many were newly queued. The connector re-checks
    /// its `events:` filter when it takes them.
    pub fn requeue_range(&self, connector: &str, from: Seq, to: Seq) -> Result<u64, Error> {
        self.write(|tx| requeue_range_in(tx, connector, from, to))
    }

    /// Moves all the connector's dead letters to the requeue, in one transaction; returns
    /// how many moved.
    pub fn requeue_dead(&self, connector: &str) -> Result<u64, Error> {
        self.write(|tx| requeue_dead_in(tx, connector))
    }

    /// The events behind up to `limit` of the connector's queued seqs, lowest first, and
    /// the queued seqs whose event is no longer in the feed (compaction keeps queued
    /// events, so only a hand-edited database has any; commit them to drop them).
    pub fn requeued_events(
        &self,
        connector: &str,
        limit: usize,
    ) -> Result<(Vec<Event>, Vec<Seq>), Error> {
        let seqs = self.requeued(connector, limit)?;
        let mut events = Vec::with_capacity(seqs.len());
        let mut missing = Vec::new();
        // Queued seqs are mostly runs (`replay --from --to`): read each run at once.
        let mut i = 0;
        while i < seqs.len() {
            let mut j = i + 1;
            while j < seqs.len() && seqs[j] == seqs[j - 1] + 1 {
                j += 1;
            }
            let run = crate::feed::read_after(&self.store, seqs[i].saturating_sub(1), j - i)?;
            let mut found = run.into_iter().filter(|e| e.seq <= seqs[j - 1]).peekable();
            for &seq in &seqs[i..j] {
                match found.next_if(|e| e.seq == seq) {
                    Some(e) => events.push(e),
                    None => missing.push(seq),
                }
            }
            i = j;
        }
        Ok((events, missing))
    }

    /// Commits a re-delivery of queued `seqs` in one durable transaction: stores the
    /// target's new `checkpoint`, counts `n_delivered`, parks `parked`, removes `seqs` from
    /// the queue and their old dead letters (unless parked again), and clears the retry
    /// state. The cursor and its pin do not move: these events were behind it already.
    pub fn commit_replayed(
        &self,
        connector: &str,
        seqs: &[Seq],
        checkpoint: Vec<u8>,
        n_delivered: u64,
        parked: &[(Seq, DeadLetter)],
        now: DateTime<Utc>,
    ) -> Result<CursorState, Error> {
        self.commit_delivery(connector, None, seqs, checkpoint, n_delivered, parked, now)
    }

    /// Up to `limit` of the connector's queued seqs, lowest first.
    pub fn requeued(&self, connector: &str, limit: usize) -> Result<Vec<Seq>, Error> {
        read_requeued(&self.store, connector, limit)
    }
}

/// [`Ledger::requeue_range`] inside the caller's write transaction (an operator action
/// commits its log entry in the same transaction).
pub(crate) fn requeue_range_in(
    tx: &redb::WriteTransaction,
    connector: &str,
    from: Seq,
    to: Seq,
) -> Result<u64, Error> {
    let mut n = 0;
    let cursor: Option<CursorState> = super::cursor_in(&tx.open_table(CURSORS)?, connector)?;
    let to = to.min(cursor.map_or(0, |c| c.seq));
    if from <= to {
        let events = tx.open_table(EVENTS)?;
        let mut requeue = tx.open_table(REQUEUE)?;
        for row in events.range(from..=to)? {
            let seq = row?.0.value();
            if requeue.insert((connector, seq), ())?.is_none() {
                n += 1;
            }
        }
    }
    Ok(n)
}

/// [`Ledger::requeue_dead`] inside the caller's write transaction.
pub(crate) fn requeue_dead_in(tx: &redb::WriteTransaction, connector: &str) -> Result<u64, Error> {
    let mut n = 0;
    let mut dead = tx.open_table(DEAD)?;
    let mut requeue = tx.open_table(REQUEUE)?;
    // Every letter is verified before it moves: a damaged key would queue the wrong seq.
    let rows: Vec<(Seq, Vec<u8>)> = dead
        .range((connector, 0)..=(connector, u64::MAX))?
        .map(|row| row.map(|(k, v)| (k.value().1, v.value().to_vec())))
        .collect::<Result<_, _>>()?;
    for (seq, bytes) in &rows {
        super::decode_dead(connector, *seq, bytes)?;
    }
    for (seq, _) in rows {
        dead.remove((connector, seq))?;
        requeue.insert((connector, seq), ())?;
        n += 1;
    }
    Ok(n)
}

/// Reads a connector's queued seqs through any redb handle (daemon or read-only CLI).
pub fn read_requeued<D: redb::ReadableDatabase>(
    db: &D,
    connector: &str,
    limit: usize,
) -> Result<Vec<Seq>, Error> {
    crate::feed::guarded("requeue", || {
        let tx = db.begin_read()?;
        let t = match tx.open_table(REQUEUE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for row in t.range((connector, 0)..=(connector, u64::MAX))?.take(limit) {
            out.push(row?.0.value().1);
        }
        Ok(out)
    })
}

/// Removes delivered seqs from the requeue inside the caller's write transaction (the one
/// that commits their re-delivery).
pub fn remove_requeued(
    tx: &redb::WriteTransaction,
    connector: &str,
    seqs: &[Seq],
) -> Result<(), Error> {
    let mut t = tx.open_table(REQUEUE)?;
    for &seq in seqs {
        t.remove((connector, seq))?;
    }
    Ok(())
}
