//! The ledger: per connector, how far it got (cursor + target checkpoint), the retry state of
//! the event at its head, and its dead letters. Same redb file as the feed.
//!
//! ## On disk
//! `cursors` (connector -> [`CursorState`]), `retries` (connector -> [`RetryState`]),
//! `dead` ((connector, seq) -> [`DeadLetter`], its message sealed when encryption at rest is
//! on); values are [`crate::feed::schema::encode_bound`], their checksums bound to table and
//! key, so a value under a damaged key is refused ([`Error::Corrupt`]) instead of read as
//! another connector's or another seq's.
//!
//! ## Writes
//! Every write goes through [`Ledger::write`], which runs in the store's one write slot
//! ([`crate::feed::Store::write`]): the appends queued at that moment commit in the same
//! transaction, at the same fsync.
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
pub mod sources;
pub mod view;

use chrono::{DateTime, TimeZone, Utc};
use redb::{ReadTransaction, ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use crate::event::Seq;
use crate::feed::schema::{self, CURSORS, DEAD, RETRIES};
use crate::feed::{Error, Store, guarded, seal};

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
    store: Store,
}

/// What one delivery commit writes ([`Ledger::commit_delivery`]).
struct DeliveryRows<'a> {
    /// The cursor's new seq (none for a replay).
    new_seq: Option<Seq>,
    /// Re-delivered seqs to take off the queue and the dead letters.
    requeued: &'a [Seq],
    checkpoint: Vec<u8>,
    n_delivered: u64,
    parked: &'a [(Seq, DeadLetter)],
    now: DateTime<Utc>,
}

impl Ledger {
    /// The ledger in `db` (the daemon passes the feed's [`Store`], so ledger writes share
    /// its write slot; a bare database works too, for tools and tests).
    pub fn new(db: impl Into<Store>) -> Ledger {
        Ledger { store: db.into() }
    }

    /// The store this ledger writes to.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Runs `f` in one durable write transaction and commits it. Every ledger write goes
    /// through here, so how ledger commits reach the disk is decided in one place: the
    /// store's write slot, together with the appends queued meanwhile. A panic inside redb
    /// (a damaged page) is contained and becomes [`Error::Corrupt`].
    pub(crate) fn write<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, Error>,
    ) -> Result<T, Error> {
        self.store.write(f)
    }

    /// The connector's cursor; `None` if it never ran.
    pub fn cursor(&self, connector: &str) -> Result<Option<CursorState>, Error> {
        read_cursor(&self.store, connector)
    }

    /// Creates the connector's cursor at `seq` if it has none (a new connector's `start:`).
    ///
    /// A connector without a cursor first checks every other cursor row: one whose key was
    /// damaged would otherwise look like a connector that never ran, and start it over.
    pub fn ensure_cursor(&self, connector: &str, seq: Seq) -> Result<CursorState, Error> {
        self.write(|tx| {
            let mut t = tx.open_table(CURSORS)?;
            if let Some(s) = cursor_in(&t, connector)? {
                return Ok(s);
            }
            for row in t.iter()? {
                let (k, v) = row?;
                let name = k.value();
                schema::decode_bound::<CursorState>(
                    &schema::connector_binding("cursors", name),
                    v.value(),
                )
                .map_err(|e| Error::corrupt("cursors", None, Some(name), e))?;
            }
            let s = CursorState {
                seq,
                ..CursorState::default()
            };
            t.insert(connector, encode_cursor(connector, &s).as_slice())?;
            Ok(s)
        })
    }

    /// The retry state of the connector's head, if its last attempt failed.
    pub fn retry_state(&self, connector: &str) -> Result<Option<RetryState>, Error> {
        read_retry(&self.store, connector)
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
        let rows = DeliveryRows {
            new_seq,
            requeued,
            checkpoint,
            n_delivered,
            parked,
            now,
        };
        self.write(|tx| self.delivery_in(tx, connector, rows))
    }

    /// [`Ledger::commit_progress`] for a plain delivery (nothing parked, no replay, no
    /// retry or intent to clear) whose target repairs a lost commit from its own checkpoint
    /// ([`crate::target::Target::repairs_lost_commits`]), or for a round that handed nothing
    /// over (it only passed over other types; lost, they are passed over again): committed
    /// without waiting for an fsync ([`crate::feed::Store::write_deferred`]), durable with
    /// the next durable commit and at the latest [`crate::feed::store::DEFER_DURABLE`]
    /// later. A power cut before then moves the cursor back to an earlier delivery; the
    /// target's next attempt from that delivery's checkpoint cuts what the later ones
    /// appended and writes it again, so nothing is lost or doubled.
    pub fn commit_progress_deferred(
        &self,
        connector: &str,
        new_seq: Seq,
        checkpoint: Vec<u8>,
        n_delivered: u64,
        now: DateTime<Utc>,
    ) -> Result<CursorState, Error> {
        let rows = DeliveryRows {
            new_seq: Some(new_seq),
            requeued: &[],
            checkpoint,
            n_delivered,
            parked: &[],
            now,
        };
        self.store
            .write_deferred(|tx| self.delivery_in(tx, connector, rows))
    }

    /// The rows of one delivery commit, written in `tx`.
    fn delivery_in(
        &self,
        tx: &redb::WriteTransaction,
        connector: &str,
        rows: DeliveryRows<'_>,
    ) -> Result<CursorState, Error> {
        let mut cursors = tx.open_table(CURSORS)?;
        let mut state: CursorState = cursor_in(&cursors, connector)?.unwrap_or_default();
        if let Some(seq) = rows.new_seq {
            state.seq = state.seq.max(seq);
            state.pinned = None;
        }
        state.record_delivery(rows.checkpoint, rows.n_delivered, rows.now);
        cursors.insert(connector, encode_cursor(connector, &state).as_slice())?;
        let mut dead = tx.open_table(DEAD)?;
        if !rows.requeued.is_empty() {
            let mut requeue = tx.open_table(schema::REQUEUE)?;
            for &seq in rows.requeued {
                requeue.remove((connector, seq))?;
                dead.remove((connector, seq))?;
            }
        }
        let sealer = self.store.sealing_key();
        for (seq, letter) in rows.parked {
            let bytes = encode_dead(connector, *seq, letter, sealer.as_deref());
            dead.insert((connector, *seq), bytes.as_slice())?;
        }
        tx.open_table(RETRIES)?.remove(connector)?;
        tx.open_table(schema::INTENTS)?.remove(connector)?;
        Ok(state)
    }

    /// Durably pins the range of the delivery about to start: (cursor, `last`].
    pub fn pin(&self, connector: &str, last: Seq) -> Result<(), Error> {
        self.write(|tx| {
            let mut cursors = tx.open_table(CURSORS)?;
            let mut state: CursorState = cursor_in(&cursors, connector)?.unwrap_or_default();
            state.pinned = Some(last);
            cursors.insert(connector, encode_cursor(connector, &state).as_slice())?;
            Ok(())
        })
    }

    /// Durably records a failed attempt, so the retry schedule survives a restart.
    pub fn record_failure(&self, connector: &str, retry: &RetryState) -> Result<(), Error> {
        self.write(|tx| {
            tx.open_table(RETRIES)?
                .insert(connector, encode_retry(connector, retry).as_slice())?;
            Ok(())
        })
    }

    /// The connector's dead letters, in seq order.
    pub fn dead_letters(&self, connector: &str) -> Result<Vec<(Seq, DeadLetter)>, Error> {
        read_dead_letters(&self.store, connector)
    }
}

/// A cursor as stored under `connector`.
pub(crate) fn encode_cursor(connector: &str, state: &CursorState) -> Vec<u8> {
    schema::encode_bound(&schema::connector_binding("cursors", connector), state)
}

/// A retry state as stored under `connector`.
pub(crate) fn encode_retry(connector: &str, state: &RetryState) -> Vec<u8> {
    schema::encode_bound(&schema::connector_binding("retries", connector), state)
}

/// A dead letter as stored: its message sealed under `seal`, if given.
#[derive(Serialize, Deserialize)]
struct StoredDeadLetter {
    reason: String,
    /// The message, or its sealed form.
    message: Vec<u8>,
    sealed: bool,
    at_micros: i64,
    attempts: u32,
}

fn dead_aad(connector: &str, seq: Seq) -> Vec<u8> {
    schema::connector_seq_binding("ess-dead", connector, seq)
}

/// A dead letter as stored under (`connector`, `seq`).
pub(crate) fn encode_dead(
    connector: &str,
    seq: Seq,
    letter: &DeadLetter,
    seal: Option<&seal::Key>,
) -> Vec<u8> {
    let (message, sealed) = match seal {
        None => (letter.message.as_bytes().to_vec(), false),
        Some(key) => {
            let mut out = Vec::new();
            key.seal_into(
                &dead_aad(connector, seq),
                letter.message.as_bytes(),
                &mut out,
            );
            (out, true)
        }
    };
    let stored = StoredDeadLetter {
        reason: letter.reason.clone(),
        message,
        sealed,
        at_micros: letter.at_micros,
        attempts: letter.attempts,
    };
    schema::encode_bound(
        &schema::connector_seq_binding("dead", connector, seq),
        &stored,
    )
}

/// Verifies and decodes a dead letter stored under (`connector`, `seq`).
pub fn decode_dead(connector: &str, seq: Seq, bytes: &[u8]) -> Result<DeadLetter, Error> {
    let stored: StoredDeadLetter = schema::decode_bound(
        &schema::connector_seq_binding("dead", connector, seq),
        bytes,
    )
    .map_err(|e| Error::corrupt("dead", Some(seq), Some(connector), e))?;
    let message = if stored.sealed {
        seal::open(&dead_aad(connector, seq), &stored.message).map_err(|source| Error::Seal {
            what: format!("dead letter {connector} {seq}"),
            source,
        })?
    } else {
        stored.message
    };
    Ok(DeadLetter {
        reason: stored.reason,
        message: String::from_utf8(message)
            .map_err(|e| Error::corrupt("dead", Some(seq), Some(connector), e))?,
        at_micros: stored.at_micros,
        attempts: stored.attempts,
    })
}

/// The cursor stored under `connector` in an open `cursors` table, verified.
pub(crate) fn cursor_in(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    connector: &str,
) -> Result<Option<CursorState>, Error> {
    connector_value(table, "cursors", connector)
}

/// A value stored under `connector` in table `table`, checksummed and bound to both (so a
/// value moved to another row or table by a damaged page fails its check).
pub(crate) fn encode_named<T: Serialize>(table: &str, connector: &str, value: &T) -> Vec<u8> {
    schema::encode_bound(&schema::connector_binding(table, connector), value)
}

/// A value stored under (`connector`, `seq`) in table `table`, bound to all three.
pub(crate) fn encode_keyed<T: Serialize>(
    table: &str,
    connector: &str,
    seq: Seq,
    value: &T,
) -> Vec<u8> {
    schema::encode_bound(&schema::connector_seq_binding(table, connector, seq), value)
}

/// Inverse of [`encode_keyed`]; a mismatch is [`Error::Corrupt`].
pub(crate) fn decode_keyed<T: serde::de::DeserializeOwned>(
    table: &'static str,
    connector: &str,
    seq: Seq,
    bytes: &[u8],
) -> Result<T, Error> {
    schema::decode_bound(&schema::connector_seq_binding(table, connector, seq), bytes)
        .map_err(|e| Error::corrupt(table, Some(seq), Some(connector), e))
}

/// Inverse of [`encode_named`] for the row `connector` of an open table named `name`.
pub(crate) fn connector_value<T: serde::de::DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    name: &'static str,
    connector: &str,
) -> Result<Option<T>, Error> {
    table
        .get(connector)?
        .map(|v| schema::decode_bound(&schema::connector_binding(name, connector), v.value()))
        .transpose()
        .map_err(|e| Error::corrupt(name, None, Some(connector), e))
}

/// The schema's own name of a table (`'static`, as [`guarded`] and errors want it).
pub(crate) fn table_name(def: &impl redb::TableHandle) -> &'static str {
    schema::TABLES
        .into_iter()
        .find(|t| *t == def.name())
        .unwrap_or("unknown table")
}

/// Reads a cursor inside a read transaction (consistent with other reads of the same one).
pub fn cursor_at(tx: &ReadTransaction, connector: &str) -> Result<Option<CursorState>, Error> {
    guarded("cursors", || match tx.open_table(CURSORS) {
        Ok(t) => cursor_in(&t, connector),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    })
}

/// Reads a retry state inside a read transaction.
pub fn retry_at(tx: &ReadTransaction, connector: &str) -> Result<Option<RetryState>, Error> {
    guarded("retries", || match tx.open_table(RETRIES) {
        Ok(t) => connector_value(&t, "retries", connector),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    })
}

/// Reads a connector's dead letters inside a read transaction, in seq order.
pub fn dead_letters_at(
    tx: &ReadTransaction,
    connector: &str,
) -> Result<Vec<(Seq, DeadLetter)>, Error> {
    guarded("dead", || {
        let t = match tx.open_table(DEAD) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for row in t.range((connector, 0)..=(connector, u64::MAX))? {
            let (k, v) = row?;
            let seq = k.value().1;
            out.push((seq, decode_dead(connector, seq, v.value())?));
        }
        Ok(out)
    })
}

/// Reads a cursor through any redb handle (daemon or read-only CLI).
pub fn read_cursor<D: ReadableDatabase>(
    db: &D,
    connector: &str,
) -> Result<Option<CursorState>, Error> {
    cursor_at(&db.begin_read()?, connector)
}

/// Reads a retry state through any redb handle.
pub fn read_retry<D: ReadableDatabase>(
    db: &D,
    connector: &str,
) -> Result<Option<RetryState>, Error> {
    retry_at(&db.begin_read()?, connector)
}

/// Reads a connector's dead letters through any redb handle.
pub fn read_dead_letters<D: ReadableDatabase>(
    db: &D,
    connector: &str,
) -> Result<Vec<(Seq, DeadLetter)>, Error> {
    dead_letters_at(&db.begin_read()?, connector)
}
