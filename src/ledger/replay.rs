//! Re-delivery on request (`ess replay`): the `requeue` table holds (connector, seq) pairs
//! a connector must deliver again before it goes on past its cursor.
//!
//! Invariant: only seqs at or below the connector's cursor that are still in the feed are
//! queued (events above the cursor are delivered anyway, so queueing them would deliver
//! them twice). Dead letters move to `requeue` and leave `dead` in one transaction, so an
//! event is never both dead and queued, nor lost between the two.

use redb::ReadableTable;

use super::Ledger;
use crate::event::Seq;
use crate::feed::Error;
use crate::feed::schema::{self, CURSORS, DEAD, EVENTS, REQUEUE};
use crate::ledger::CursorState;

impl Ledger {
    /// Queues every feed event with `from <= seq <= to` and seq at or below the connector's
    /// cursor for re-delivery; returns how many were newly queued. The connector re-checks
    /// its `events:` filter when it takes them.
    pub fn requeue_range(&self, connector: &str, from: Seq, to: Seq) -> Result<u64, Error> {
        let tx = self.db.begin_write()?;
        let mut n = 0;
        {
            let cursor: Option<CursorState> = tx
                .open_table(CURSORS)?
                .get(connector)?
                .map(|v| schema::decode(v.value()))
                .transpose()
                .map_err(Error::Format)?;
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
        }
        tx.commit()?;
        Ok(n)
    }

    /// Moves all the connector's dead letters to the requeue, in one transaction; returns
    /// how many moved.
    pub fn requeue_dead(&self, connector: &str) -> Result<u64, Error> {
        let tx = self.db.begin_write()?;
        let mut n = 0;
        {
            let mut dead = tx.open_table(DEAD)?;
            let mut requeue = tx.open_table(REQUEUE)?;
            let seqs: Vec<Seq> = dead
                .range((connector, 0)..=(connector, u64::MAX))?
                .map(|row| row.map(|(k, _)| k.value().1))
                .collect::<Result<_, _>>()?;
            for seq in seqs {
                dead.remove((connector, seq))?;
                requeue.insert((connector, seq), ())?;
                n += 1;
            }
        }
        tx.commit()?;
        Ok(n)
    }

    /// Up to `limit` of the connector's queued seqs, lowest first.
    pub fn requeued(&self, connector: &str, limit: usize) -> Result<Vec<Seq>, Error> {
        read_requeued(&*self.db, connector, limit)
    }
}

/// Reads a connector's queued seqs through any redb handle (daemon or read-only CLI).
pub fn read_requeued<D: redb::ReadableDatabase>(
    db: &D,
    connector: &str,
    limit: usize,
) -> Result<Vec<Seq>, Error> {
    let tx = db.begin_read()?;
    let t = tx.open_table(REQUEUE)?;
    let mut out = Vec::new();
    for row in t.range((connector, 0)..=(connector, u64::MAX))?.take(limit) {
        out.push(row?.0.value().1);
    }
    Ok(out)
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
