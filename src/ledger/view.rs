//! A consistent read of the ledger: one redb read transaction, so every answer built from
//! one [`View`] (a receipt, a status row, a list) sees one committed state — an event parked
//! and the cursor moved past it in one commit are never seen half.
//!
//! Works on any redb handle (the daemon's database, or a read-only one opened by the CLI
//! while no daemon runs). A table that does not exist yet (an older file, read-only) reads
//! as empty.

use std::collections::BTreeMap;

use redb::{ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition};

use super::actions::{ACTIONS_TABLE, ActionRecord, ErrorNote, Pause, Settled, decode_settled};
use super::{CursorState, DeadLetter, RetryState, decode_dead, decode_keyed};
use crate::event::Seq;
use crate::feed::schema::{
    ACTIONS, CURSORS, DEAD, ERRORS, INTENTS, PAUSES, REQUEUE, RETRIES, SETTLED,
};
use crate::feed::{Error, guarded};

/// One read transaction over the ledger tables.
pub struct View {
    tx: ReadTransaction,
}

/// A connector's dead letters in short: how many, by reason, and the newest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadSummary {
    pub count: u64,
    pub by_reason: BTreeMap<String, u64>,
    /// The most recently parked one.
    pub newest: Option<(Seq, DeadLetter)>,
}

/// Opens `def`; redb panics on some damaged table definitions: contained and reported as
/// damage ([`guarded`]), so a CLI reading a damaged file answers instead of crashing.
fn open<K: redb::Key + 'static, V: redb::Value + 'static>(
    tx: &ReadTransaction,
    def: TableDefinition<K, V>,
) -> Result<Option<ReadOnlyTable<K, V>>, Error> {
    guarded(super::table_name(&def), || match tx.open_table(def) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    })
}

impl View {
    pub fn open<D: ReadableDatabase>(db: &D) -> Result<View, Error> {
        Ok(View {
            tx: db.begin_read()?,
        })
    }

    /// Every pickup source the ledger knows, as the status reports it.
    pub fn sources(&self) -> Result<Vec<super::sources::SourceReport>, Error> {
        super::sources::reports_at(&self.tx)
    }

    /// The row `connector` of a connector-keyed table, verified against its binding
    /// (the table's name and the connector).
    fn by_name<T: serde::de::DeserializeOwned>(
        &self,
        def: TableDefinition<&'static str, &'static [u8]>,
        name: &'static str,
        connector: &str,
    ) -> Result<Option<T>, Error> {
        let Some(t) = open(&self.tx, def)? else {
            return Ok(None);
        };
        super::connector_value(&t, name, connector)
    }

    /// Every connector the ledger knows (it has a cursor), by name.
    pub fn connectors(&self) -> Result<Vec<String>, Error> {
        let Some(t) = open(&self.tx, CURSORS)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for row in t.iter()? {
            out.push(row?.0.value().to_owned());
        }
        Ok(out)
    }

    pub fn cursor(&self, connector: &str) -> Result<Option<CursorState>, Error> {
        self.by_name(CURSORS, "cursors", connector)
    }

    pub fn retry(&self, connector: &str) -> Result<Option<RetryState>, Error> {
        self.by_name(RETRIES, "retries", connector)
    }

    /// The delivery under way (committed before its first byte), if any.
    pub fn intent(&self, connector: &str) -> Result<Option<super::intent::Intent>, Error> {
        self.by_name(INTENTS, "intents", connector)
    }

    pub fn pause(&self, connector: &str) -> Result<Option<Pause>, Error> {
        self.by_name(PAUSES, "pauses", connector)
    }

    pub fn last_error(&self, connector: &str) -> Result<Option<ErrorNote>, Error> {
        self.by_name(ERRORS, "errors", connector)
    }

    pub fn dead_letter(&self, connector: &str, seq: Seq) -> Result<Option<DeadLetter>, Error> {
        let Some(t) = open(&self.tx, DEAD)? else {
            return Ok(None);
        };
        t.get((connector, seq))?
            .map(|v| decode_dead(connector, seq, v.value()))
            .transpose()
    }

    pub fn settled(&self, connector: &str, seq: Seq) -> Result<Option<Settled>, Error> {
        let Some(t) = open(&self.tx, SETTLED)? else {
            return Ok(None);
        };
        t.get((connector, seq))?
            .map(|v| decode_settled(connector, seq, v.value()))
            .transpose()
    }

    /// Up to `limit` dead letters with seq > `after`, in seq order.
    pub fn dead_letters(
        &self,
        connector: &str,
        after: Seq,
        limit: usize,
    ) -> Result<Vec<(Seq, DeadLetter)>, Error> {
        let Some(t) = open(&self.tx, DEAD)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let from = (connector, after.saturating_add(1));
        for row in t.range(from..=(connector, u64::MAX))?.take(limit) {
            let (k, v) = row?;
            let seq = k.value().1;
            out.push((seq, decode_dead(connector, seq, v.value())?));
        }
        Ok(out)
    }

    /// Counts the connector's dead letters by reason (one pass over them).
    pub fn dead_summary(&self, connector: &str) -> Result<DeadSummary, Error> {
        let mut summary = DeadSummary::default();
        let Some(t) = open(&self.tx, DEAD)? else {
            return Ok(summary);
        };
        for row in t.range((connector, 0)..=(connector, u64::MAX))? {
            let (k, v) = row?;
            let letter = decode_dead(connector, k.value().1, v.value())?;
            summary.count += 1;
            *summary.by_reason.entry(letter.reason.clone()).or_default() += 1;
            let newer = summary
                .newest
                .as_ref()
                .is_none_or(|(_, n)| letter.at_micros >= n.at_micros);
            if newer {
                summary.newest = Some((k.value().1, letter));
            }
        }
        Ok(summary)
    }

    pub fn is_requeued(&self, connector: &str, seq: Seq) -> Result<bool, Error> {
        let Some(t) = open(&self.tx, REQUEUE)? else {
            return Ok(false);
        };
        Ok(t.get((connector, seq))?.is_some())
    }

    /// Up to `limit` of the connector's queued seqs, lowest first, and how many there are.
    pub fn requeued(&self, connector: &str, limit: usize) -> Result<(Vec<Seq>, u64), Error> {
        let Some(t) = open(&self.tx, REQUEUE)? else {
            return Ok((Vec::new(), 0));
        };
        let (mut seqs, mut n) = (Vec::new(), 0);
        for row in t.range((connector, 0)..=(connector, u64::MAX))? {
            let seq = row?.0.value().1;
            if seqs.len() < limit {
                seqs.push(seq);
            }
            n += 1;
        }
        Ok((seqs, n))
    }

    /// The newest `limit` action records (of one connector, or all), newest first, with
    /// their ids.
    pub fn actions(
        &self,
        connector: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(u64, ActionRecord)>, Error> {
        let Some(t) = open(&self.tx, ACTIONS)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for row in t.iter()?.rev() {
            if out.len() >= limit {
                break;
            }
            let (k, v) = row?;
            // A damaged record is shown as such rather than hiding the whole log (or the
            // status page that lists it); the others still read.
            let id = k.value();
            let decoded = decode_keyed::<ActionRecord>(ACTIONS_TABLE, "", id, v.value());
            let record = decoded.unwrap_or_else(|e| ActionRecord {
                at_micros: 0,
                by: "?".into(),
                connector: "?".into(),
                action: "damaged".into(),
                detail: format!("action record {} cannot be read: {e}", k.value()),
            });
            let damaged = record.action == "damaged" && record.connector == "?";
            if connector.is_none_or(|c| c == record.connector) || damaged {
                out.push((k.value(), record));
            }
        }
        Ok(out)
    }
}
