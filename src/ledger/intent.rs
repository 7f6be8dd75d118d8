//! Delivery intents: what a delivery is about to do, committed durably before its first
//! byte goes to a place the committed checkpoint does not describe (a new file, a new date,
//! a file someone else changed, a batch file still to be named).
//!
//! `intents` (connector -> versioned postcard [`Intent`]) holds at most one per connector.
//! [`Ledger::set_intent`] commits it (one durable transaction, through [`Ledger::write`]);
//! [`Ledger::commit_delivery`] removes it in the same transaction that moves the cursor
//! and stores the checkpoint the delivery returned, so a crash leaves either the intent
//! (the retry starts from it: same file, same offset, and for batches the same range and
//! name) or the committed delivery, never neither.

use redb::{ReadableDatabase, TableError};
use serde::{Deserialize, Serialize};

use super::Ledger;
use crate::event::Seq;
use crate::feed::Error;
use crate::feed::schema::INTENTS;

/// One connector's delivery under way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// The delivery's first and last seq.
    pub first: Seq,
    pub last: Seq,
    /// A re-delivery of queued events (`ess replay`) rather than events after the cursor.
    pub replay: bool,
    /// The retry must take exactly this range (the target names its output after it).
    pub exact: bool,
    /// The target's checkpoint to deliver from: where the delivery writes.
    pub checkpoint: Vec<u8>,
}

impl Ledger {
    /// The connector's intent, if a delivery was under way when it last stopped or failed.
    pub fn intent(&self, connector: &str) -> Result<Option<Intent>, Error> {
        crate::feed::guarded("intents", || {
            let tx = self.store.begin_read()?;
            let table = match tx.open_table(INTENTS) {
                Ok(t) => t,
                // A database from before intents: none is under way.
                Err(TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            super::connector_value(&table, "intents", connector)
        })
    }

    /// Durably records the connector's intent (replacing an older one).
    pub fn set_intent(&self, connector: &str, intent: &Intent) -> Result<(), Error> {
        self.write(|tx| {
            tx.open_table(INTENTS)?.insert(
                connector,
                super::encode_named("intents", connector, intent).as_slice(),
            )?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn an_intent_lasts_until_the_delivery_commits() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(crate::feed::open_database(&dir.path().join("ess.redb")).unwrap());
        let ledger = Ledger::new(db);
        assert_eq!(ledger.intent("c").unwrap(), None, "no table yet");
        let intent = Intent {
            first: 3,
            last: 7,
            replay: false,
            exact: true,
            checkpoint: vec![2, 9],
        };
        ledger.set_intent("c", &intent).unwrap();
        ledger.set_intent("other", &intent).unwrap();
        assert_eq!(ledger.intent("c").unwrap(), Some(intent.clone()));
        // A failure keeps it; the commit of the delivery drops it with the cursor move.
        ledger
            .record_failure(
                "c",
                &crate::ledger::RetryState {
                    seq: 3,
                    attempts: 1,
                    next_at_micros: 0,
                    last_error: "x".into(),
                },
            )
            .unwrap();
        assert_eq!(ledger.intent("c").unwrap(), Some(intent.clone()));
        ledger
            .commit_progress("c", 7, vec![2, 1], 5, &[], chrono::Utc::now())
            .unwrap();
        assert_eq!(ledger.intent("c").unwrap(), None);
        assert_eq!(ledger.cursor("c").unwrap().unwrap().checkpoint, vec![2, 1]);
        assert_eq!(ledger.intent("other").unwrap(), Some(intent));
    }
}
