//! The ledger: per connector, how far it got (cursor + target checkpoint), the retry state of
//! the event at its head, and its dead letters. Same redb file as the feed.
//!
//! ## On disk
//! `cursors` (connector -> [`CursorState`]), `retries` (connector -> [`RetryState`]),
//! `dead` ((connector, seq) -> [`DeadLetter`]); values are versioned postcard
//! ([`crate::feed::schema::encode`]).
//!
//! ## Commit points
//! A delivery is committed by [`Ledger::commit_progress`]: one durable transaction moves the
//! cursor, stores the target's new checkpoint, parks the events that could not be mapped,
//! and clears the retry state. The target has already made its bytes durable (file fsynced,
//! remote renamed, 2xx received) before this is called, so a crash leaves either the old
//! cursor with bytes the target can recognise through the old checkpoint, or the new cursor.
//!
//! A cursor means "every event with seq <= cursor is done for this connector": delivered,
//! filtered out by `events:`, or parked as a dead letter.

pub mod actions;
pub mod intent;
pub mod replay;
pub mod view;

use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use redb::{Database, ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use crate::event::Seq;
use crate::feed::Error;
use crate::feed::schema::{self, CURSORS, DEAD, RETRIES};

/// How far one connector got.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CursorState {
    /// Every event with seq <= this is done for this connector.
    pub seq: Seq,
    /// The target's checkpoint after the delivery that moved the cursor here.
    pub checkpoint: Vec<u8>,
    /// Events delivered so far (not counting filtered or parked ones).
    pub delivered: u64,
    /// Time of the last successful delivery, microseconds since the epoch.
    pub last_success_micros: Option<i64>,
    /// For targets that name outputs after their batch: the last seq of the delivery under
    /// way, pinned before it starts, so a retry after a crash takes exactly the same events.
    pub pinned: Option<Seq>,
}

/// The retry state of a connector's head event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryState {
    /// The first seq of the delivery that failed.
    pub seq: Seq,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due, microseconds since the epoch.
    pub next_at_micros: i64,
    /// The last error, as the target described it (never payload contents).
    pub last_error: String,
}

impl CursorState {
    /// A delivery of `n_delivered` events succeeded, leaving the target at `checkpoint`.
    pub fn record_delivery(&mut self, checkpoint: Vec<u8>, n_delivered: u64, now: DateTime<Utc>) {
        self.checkpoint = checkpoint;
        self.delivered += n_delivered;
        if n_delivered > 0 {
            self.last_success_micros = Some(now.timestamp_micros());
        }
    }
}

impl RetryState {
    pub fn next_at(&self) -> DateTime<Utc> {
        Utc.timestamp_micros(self.next_at_micros)
            .single()
            .unwrap_or_default()
    }
}

/// An event this connector gave up on, with why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// `map`, `compliance`, `permanent` (target refused) or `retries` (max_tries reached).
    pub reason: String,
    pub message: String,
    pub at_micros: i64,
    pub attempts: u32,
}

/// Handle to the ledger tables.
#[derive(Clone)]
pub struct Ledger {
    db: Arc<Database>,
}

impl Ledger {
    pub fn new(db: Arc<Database>) -> Ledger {
        Ledger { db }
    }

    /// Runs `f` in one durable write transaction and commits it. Every ledger write goes
    /// through here, so how ledger commits reach the disk is decided in one place.
    pub(crate) fn write<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let tx = self.db.begin_write()?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// The connector's cursor; `None` if it never ran.
    pub fn cursor(&self, connector: &str) -> Result<Option<CursorState>, Error> {
        read_cursor(&*self.db, connector)
    }

    /// Creates the connector's cursor at `seq` if it has none (a new connector's `start:`).
    pub fn ensure_cursor(&self, connector: &str, seq: Seq) -> Result<CursorState, Error> {
        self.write(|tx| {
            let mut t = tx.open_table(CURSORS)?;
            if let Some(s) = decoded(&t, connector)? {
                return Ok(s);
            }
            let s = CursorState {
                seq,
                ..CursorState::default()
            };
            t.insert(connector, schema::encode(&s).as_slice())?;
            Ok(s)
        })
    }

    /// The retry state of the connector's head, if its last attempt failed.
    pub fn retry_state(&self, connector: &str) -> Result<Option<RetryState>, Error> {
        read_retry(&*self.db, connector)
    }

    /// Durably moves the cursor to `new_seq` with `checkpoint`, counting `n_delivered`
    /// deliveries, parking `parked` and clearing the retry state, all in one transaction.
    pub fn commit_progress(
        &self,
        connector: &str,
        new_seq: Seq,
        checkpoint: Vec<u8>,
        n_delivered: u64,
        parked: &[(Seq, DeadLetter)],
        now: DateTime<Utc>,
    ) -> Result<CursorState, Error> {
        self.commit_delivery(
            connector,
            Some(new_seq),
            &[],
            checkpoint,
            n_delivered,
            parked,
            now,
        )
    }

    /// The one delivery commit behind [`Ledger::commit_progress`] and
    /// [`Ledger::commit_replayed`]: in one durable transaction, moves the cursor to
    /// `new_seq` (and drops its pin) if given, stores the checkpoint and counts, removes the
    /// re-delivered `requeued` seqs from the queue and from the dead letters, parks
    /// `parked`, and clears the retry state and the delivery's intent.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn commit_delivery(
        &self,
        connector: &str,
        new_seq: Option<Seq>,
        requeued: &[Seq],
        checkpoint: Vec<u8>,
        n_delivered: u64,
        parked: &[(Seq, DeadLetter)],
        now: DateTime<Utc>,
    ) -> Result<CursorState, Error> {
        self.write(|tx| {
            let mut cursors = tx.open_table(CURSORS)?;
            let mut state: CursorState = decoded(&cursors, connector)?.unwrap_or_default();
            if let Some(seq) = new_seq {
                state.seq = state.seq.max(seq);
                state.pinned = None;
            }
            state.record_delivery(checkpoint, n_delivered, now);
            cursors.insert(connector, schema::encode(&state).as_slice())?;
            let mut dead = tx.open_table(DEAD)?;
            if !requeued.is_empty() {
                let mut requeue = tx.open_table(schema::REQUEUE)?;
                for &seq in requeued {
                    requeue.remove((connector, seq))?;
                    dead.remove((connector, seq))?;
                }
            }
            for (seq, letter) in parked {
                dead.insert((connector, *seq), schema::encode(letter).as_slice())?;
            }
            tx.open_table(RETRIES)?.remove(connector)?;
            tx.open_table(schema::INTENTS)?.remove(connector)?;
            Ok(state)
        })
    }

    /// Durably pins the range of the delivery about to start: (cursor, `last`].
    pub fn pin(&self, connector: &str, last: Seq) -> Result<(), Error> {
        self.write(|tx| {
            let mut cursors = tx.open_table(CURSORS)?;
            let mut state: CursorState = decoded(&cursors, connector)?.unwrap_or_default();
            state.pinned = Some(last);
            cursors.insert(connector, schema::encode(&state).as_slice())?;
            Ok(())
        })
    }

    /// Durably records a failed attempt, so the retry schedule survives a restart.
    pub fn record_failure(&self, connector: &str, retry: &RetryState) -> Result<(), Error> {
        self.write(|tx| {
            tx.open_table(RETRIES)?
                .insert(connector, schema::encode(retry).as_slice())?;
            Ok(())
        })
    }

    /// The connector's dead letters, in seq order.
    pub fn dead_letters(&self, connector: &str) -> Result<Vec<(Seq, DeadLetter)>, Error> {
        read_dead_letters(&*self.db, connector)
    }
}

/// The versioned value stored under `connector` in a connector-keyed table, decoded.
pub(crate) fn decoded<T: serde::de::DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    connector: &str,
) -> Result<Option<T>, Error> {
    table
        .get(connector)?
        .map(|v| schema::decode(v.value()))
        .transpose()
        .map_err(Error::Format)
}

/// Reads a cursor through any redb handle (daemon or read-only CLI).
pub fn read_cursor<D: ReadableDatabase>(
    db: &D,
    connector: &str,
) -> Result<Option<CursorState>, Error> {
    let tx = db.begin_read()?;
    decoded(&tx.open_table(CURSORS)?, connector)
}

/// Reads a retry state through any redb handle.
pub fn read_retry<D: ReadableDatabase>(
    db: &D,
    connector: &str,
) -> Result<Option<RetryState>, Error> {
    let tx = db.begin_read()?;
    decoded(&tx.open_table(RETRIES)?, connector)
}

/// Reads a connector's dead letters through any redb handle.
pub fn read_dead_letters<D: ReadableDatabase>(
    db: &D,
    connector: &str,
) -> Result<Vec<(Seq, DeadLetter)>, Error> {
    let tx = db.begin_read()?;
    let t = tx.open_table(DEAD)?;
    let mut out = Vec::new();
    for row in t.range((connector, 0)..=(connector, u64::MAX))? {
        let (k, v) = row?;
        out.push((
            k.value().1,
            schema::decode(v.value()).map_err(Error::Format)?,
        ));
    }
    Ok(out)
}
