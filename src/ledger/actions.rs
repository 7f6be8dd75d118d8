//! What an operator does to a connector's ledger (`ess dead ack|discard`, `ess retry`,
//! `ess pause` / `ess resume`, `ess skip`, `ess replay`), and the connector's last error.
//!
//! ## On disk
//! `pauses` (connector -> [`Pause`]), `settled` ((connector, seq) -> [`Settled`]),
//! `actions` (id -> [`ActionRecord`], ids 1, 2, ... in commit order, the newest
//! [`KEEP_ACTIONS`] kept) and `errors` (connector -> [`ErrorNote`]); values are versioned
//! postcard with a checksum bound to their table and key ([`super::encode_named`],
//! [`super::encode_keyed`]), tables declared in [`crate::feed::schema`]. A settled dead
//! letter keeps the dead letter's own stored bytes (sealed, when sealing is on).
//!
//! Architecture invariant: every action is one durable transaction through
//! `Ledger::write` that makes the change *and* appends its [`ActionRecord`], so the log
//! never shows an action that did not happen, nor misses one that did. The connector task
//! calls the ones that touch its head (skip, retry, pause, settle) between two rounds, so
//! none races a delivery (see `connector::command`).

use chrono::{DateTime, Utc};
use redb::{ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{
    CursorState, DeadLetter, Ledger, RetryState, connector_value, cursor_in, decode_dead,
    decode_keyed, encode_cursor, encode_dead, encode_keyed, encode_named, encode_retry,
};
use crate::event::Seq;
use crate::feed::Error;
use crate::feed::schema::{ACTIONS, CURSORS, DEAD, ERRORS, PAUSES, REQUEUE, RETRIES, SETTLED};

/// How many action records are kept (older ones are dropped as new ones come).
pub const KEEP_ACTIONS: u64 = 10_000;

/// A connector held by `ess pause`; kept across restarts until `ess resume`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    pub at_micros: i64,
    pub by: String,
    pub reason: String,
}

/// How a dead letter was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Settle {
    /// Handled outside ESS (say, typed into the legacy system by hand).
    Ack,
    /// Must never be delivered.
    Discard,
}

impl Settle {
    pub fn as_str(self) -> &'static str {
        match self {
            Settle::Ack => "ack",
            Settle::Discard => "discard",
        }
    }
}

/// A dead letter an operator settled: it leaves `dead` (no longer replayable, no longer
/// counted, no longer holding retention back) and is kept here with why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settled {
    pub letter: DeadLetter,
    pub how: Settle,
    pub reason: String,
    pub by: String,
    pub at_micros: i64,
}

/// [`Settled`] as stored: the dead letter as it was stored in `dead` (checksummed, its
/// message sealed when sealing is on), and the settlement.
#[derive(Serialize, Deserialize)]
struct StoredSettled {
    letter: Vec<u8>,
    how: Settle,
    reason: String,
    by: String,
    at_micros: i64,
}

/// Verifies and decodes a settled dead letter stored under (`connector`, `seq`).
pub(crate) fn decode_settled(connector: &str, seq: Seq, bytes: &[u8]) -> Result<Settled, Error> {
    let stored: StoredSettled = decode_keyed("settled", connector, seq, bytes)?;
    Ok(Settled {
        letter: decode_dead(connector, seq, &stored.letter)?,
        how: stored.how,
        reason: stored.reason,
        by: stored.by,
        at_micros: stored.at_micros,
    })
}

/// The binding of an action record's checksum: its table and id.
pub(crate) const ACTIONS_TABLE: &str = "actions";

/// One operator action, as the page and `ess show` list it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionRecord {
    pub at_micros: i64,
    /// Who asked (the admin client's user, as it said; the socket is owner-only).
    pub by: String,
    pub connector: String,
    /// `pause`, `resume`, `retry`, `skip`, `ack`, `discard`, `replay`.
    pub action: String,
    /// What exactly, in words: seqs, reason.
    pub detail: String,
}

/// A connector's last delivery error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorNote {
    pub seq: Seq,
    pub message: String,
    pub at_micros: i64,
}

/// Who acts, and when.
#[derive(Debug, Clone, Copy)]
pub struct Actor<'a> {
    pub by: &'a str,
    pub at: DateTime<Utc>,
}

/// Appends the action record inside `tx`; returns its id.
fn log(
    tx: &WriteTransaction,
    connector: &str,
    action: &str,
    detail: String,
    who: &Actor<'_>,
) -> Result<u64, Error> {
    let mut t = tx.open_table(ACTIONS)?;
    let id = t.last()?.map_or(0, |(k, _)| k.value()) + 1;
    let record = ActionRecord {
        at_micros: who.at.timestamp_micros(),
        by: who.by.to_owned(),
        connector: connector.to_owned(),
        action: action.to_owned(),
        detail,
    };
    t.insert(id, encode_keyed(ACTIONS_TABLE, "", id, &record).as_slice())?;
    if id > KEEP_ACTIONS {
        t.remove(id - KEEP_ACTIONS)?;
    }
    Ok(id)
}

impl Ledger {
    /// Holds the connector; `false` (and nothing written) if it was paused already.
    pub fn pause(&self, connector: &str, reason: &str, who: &Actor<'_>) -> Result<bool, Error> {
        self.write(|tx| {
            let mut t = tx.open_table(PAUSES)?;
            if t.get(connector)?.is_some() {
                return Ok(false);
            }
            let pause = Pause {
                at_micros: who.at.timestamp_micros(),
                by: who.by.to_owned(),
                reason: reason.to_owned(),
            };
            t.insert(
                connector,
                encode_named("pauses", connector, &pause).as_slice(),
            )?;
            log(tx, connector, "pause", reason.to_owned(), who)?;
            Ok(true)
        })
    }

    /// Releases the connector; `false` (and nothing written) if it was not paused.
    pub fn resume(&self, connector: &str, who: &Actor<'_>) -> Result<bool, Error> {
        self.write(|tx| {
            let removed = tx.open_table(PAUSES)?.remove(connector)?.is_some();
            if removed {
                log(tx, connector, "resume", String::new(), who)?;
            }
            Ok(removed)
        })
    }

    /// Makes the head's next attempt due now; `None` (nothing written) when no attempt
    /// is waiting.
    pub fn retry_now(&self, connector: &str, who: &Actor<'_>) -> Result<Option<RetryState>, Error> {
        self.write(|tx| {
            let mut t = tx.open_table(RETRIES)?;
            let Some(mut retry): Option<RetryState> = connector_value(&t, "retries", connector)?
            else {
                return Ok(None);
            };
            retry.next_at_micros = who.at.timestamp_micros();
            t.insert(connector, encode_retry(connector, &retry).as_slice())?;
            let detail = format!("seq {} after {} attempt(s)", retry.seq, retry.attempts);
            log(tx, connector, "retry", detail, who)?;
            Ok(Some(retry))
        })
    }

    /// Parks the head `seq` as a dead letter with reason `skipped` and clears its retry
    /// state. A head after the cursor moves the cursor to it (the caller has checked that
    /// no selected event lies between, and that no batch is pinned); a re-queued head
    /// (`queued`) leaves the queue instead. The target checkpoint is kept as it is.
    pub fn skip(
        &self,
        connector: &str,
        seq: Seq,
        queued: bool,
        reason: &str,
        who: &Actor<'_>,
    ) -> Result<(), Error> {
        self.write(|tx| {
            let retry: Option<RetryState> =
                connector_value(&tx.open_table(RETRIES)?, "retries", connector)?;
            if queued {
                tx.open_table(REQUEUE)?.remove((connector, seq))?;
            } else {
                let mut cursors = tx.open_table(CURSORS)?;
                let mut state: CursorState = cursor_in(&cursors, connector)?.unwrap_or_default();
                state.seq = state.seq.max(seq);
                cursors.insert(connector, encode_cursor(connector, &state).as_slice())?;
            }
            let letter = DeadLetter {
                reason: "skipped".into(),
                message: if reason.is_empty() {
                    format!("skipped by {}", who.by)
                } else {
                    format!("skipped by {}: {reason}", who.by)
                },
                at_micros: who.at.timestamp_micros(),
                attempts: retry
                    .as_ref()
                    .filter(|r| r.seq == seq)
                    .map_or(0, |r| r.attempts),
            };
            let sealer = self.store.sealing_key();
            let bytes = encode_dead(connector, seq, &letter, sealer.as_deref());
            tx.open_table(DEAD)?
                .insert((connector, seq), bytes.as_slice())?;
            tx.open_table(RETRIES)?.remove(connector)?;
            let detail = if reason.is_empty() {
                format!("seq {seq}")
            } else {
                format!("seq {seq}: {reason}")
            };
            log(tx, connector, "skip", detail, who)?;
            Ok(())
        })
    }

    /// Moves dead letters (`Some(seq)`: that one; `None`: all of the connector's) to
    /// `settled` with `how` and `reason`; returns the seqs settled (none: nothing written).
    pub fn settle_dead(
        &self,
        connector: &str,
        seq: Option<Seq>,
        how: Settle,
        reason: &str,
        who: &Actor<'_>,
    ) -> Result<Vec<Seq>, Error> {
        self.write(|tx| {
            let mut dead = tx.open_table(DEAD)?;
            let range = match seq {
                Some(s) => (connector, s)..=(connector, s),
                None => (connector, 0)..=(connector, u64::MAX),
            };
            let mut letters = Vec::new();
            for row in dead.range(range)? {
                let (k, v) = row?;
                let s = k.value().1;
                // Verified before it moves: a damaged letter is not settled blindly.
                decode_dead(connector, s, v.value())?;
                letters.push((s, v.value().to_vec()));
            }
            if letters.is_empty() {
                return Ok(Vec::new());
            }
            let mut settled = tx.open_table(SETTLED)?;
            let mut seqs = Vec::with_capacity(letters.len());
            for (s, letter) in letters {
                dead.remove((connector, s))?;
                let entry = StoredSettled {
                    letter,
                    how,
                    reason: reason.to_owned(),
                    by: who.by.to_owned(),
                    at_micros: who.at.timestamp_micros(),
                };
                let bytes = encode_keyed("settled", connector, s, &entry);
                settled.insert((connector, s), bytes.as_slice())?;
                seqs.push(s);
            }
            let detail = format!("{} {}: {reason}", seqs.len(), seq_list(&seqs));
            log(tx, connector, how.as_str(), detail, who)?;
            Ok(seqs)
        })
    }

    /// `ess replay --from/--since`: [`Ledger::requeue_range`] and its log entry (with
    /// `asked`, the range as the operator gave it) in one transaction.
    pub fn replay_range(
        &self,
        connector: &str,
        from: Seq,
        to: Seq,
        asked: &str,
        who: &Actor<'_>,
    ) -> Result<u64, Error> {
        self.write(|tx| {
            let n = super::replay::requeue_range_in(tx, connector, from, to)?;
            let detail = format!("{asked}: seqs {from}..={to}, {n} queued");
            log(tx, connector, "replay", detail, who)?;
            Ok(n)
        })
    }

    /// `ess replay --dead`: [`Ledger::requeue_dead`] and its log entry in one transaction.
    pub fn replay_dead(&self, connector: &str, who: &Actor<'_>) -> Result<u64, Error> {
        self.write(|tx| {
            let n = super::replay::requeue_dead_in(tx, connector)?;
            log(
                tx,
                connector,
                "replay",
                format!("{n} dead letter(s) queued"),
                who,
            )?;
            Ok(n)
        })
    }

    /// Keeps the connector's last delivery error (and when), for the page and `ess stats`.
    pub fn note_error(&self, connector: &str, note: &ErrorNote) -> Result<(), Error> {
        self.write(|tx| {
            tx.open_table(ERRORS)?.insert(
                connector,
                encode_named("errors", connector, note).as_slice(),
            )?;
            Ok(())
        })
    }
}

/// `seq 7`, `seqs 3, 5, 9`, `seqs 3, 5, 9, ... (120)`.
fn seq_list(seqs: &[Seq]) -> String {
    const SHOWN: usize = 10;
    let shown: Vec<String> = seqs.iter().take(SHOWN).map(Seq::to_string).collect();
    match seqs.len() {
        1 => format!("seq {}", shown[0]),
        n if n <= SHOWN => format!("seqs {}", shown.join(", ")),
        n => format!("seqs {}, ... ({n})", shown.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ledger::view::View;

    fn ledger() -> (tempfile::TempDir, Ledger) {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::feed::open_database(&dir.path().join("ess.redb")).unwrap();
        (dir, Ledger::new(Arc::new(db)))
    }

    fn letter(reason: &str) -> DeadLetter {
        DeadLetter {
            reason: reason.into(),
            message: "field ID: too wide".into(),
            at_micros: 1,
            attempts: 1,
        }
    }

    fn who(at: i64) -> Actor<'static> {
        Actor {
            by: "alice",
            at: chrono::TimeZone::timestamp_opt(&Utc, at, 0).unwrap(),
        }
    }

    #[test]
    fn settling_moves_dead_letters_and_logs_in_one_transaction() {
        let (_d, l) = ledger();
        let parked = [(2, letter("map")), (5, letter("compliance"))];
        l.commit_progress("c", 6, vec![], 0, &parked, Utc::now())
            .unwrap();
        assert!(
            l.settle_dead("c", Some(3), Settle::Ack, "typed in", &who(10))
                .unwrap()
                .is_empty(),
            "seq 3 is not dead: nothing settled"
        );
        let done = l
            .settle_dead("c", Some(2), Settle::Ack, "typed in", &who(10))
            .unwrap();
        assert_eq!(done, [2]);
        let all = l
            .settle_dead("c", None, Settle::Discard, "obsolete", &who(11))
            .unwrap();
        assert_eq!(all, [5]);
        let view = View::open(&l.store).unwrap();
        assert!(view.dead_letter("c", 2).unwrap().is_none());
        let s = view.settled("c", 2).unwrap().unwrap();
        assert_eq!(
            (s.how, s.reason.as_str(), s.by.as_str()),
            (Settle::Ack, "typed in", "alice")
        );
        assert_eq!(s.letter.reason, "map");
        let actions = view.actions(None, 10).unwrap();
        assert_eq!(actions.len(), 2, "the no-op settle logged nothing");
        assert_eq!(actions[0].1.action, "discard");
        assert_eq!(actions[1].1.detail, "1 seq 2: typed in");
    }

    #[test]
    fn pause_resume_and_retry_now_are_kept_and_logged() {
        let (_d, l) = ledger();
        assert!(l.pause("c", "legacy maintenance", &who(1)).unwrap());
        assert!(!l.pause("c", "again", &who(2)).unwrap());
        let view = View::open(&l.store).unwrap();
        assert_eq!(
            view.pause("c").unwrap().unwrap().reason,
            "legacy maintenance"
        );
        drop(view);
        assert!(l.resume("c", &who(3)).unwrap());
        assert!(!l.resume("c", &who(4)).unwrap());
        assert_eq!(l.retry_now("c", &who(5)).unwrap(), None);
        let retry = RetryState {
            seq: 4,
            attempts: 7,
            next_at_micros: i64::MAX,
            last_error: "down".into(),
        };
        l.record_failure("c", &retry).unwrap();
        let now = l.retry_now("c", &who(6)).unwrap().unwrap();
        assert_eq!(now.next_at_micros, 6_000_000);
        let view = View::open(&l.store).unwrap();
        assert!(view.pause("c").unwrap().is_none());
        let names: Vec<String> = view
            .actions(Some("c"), 10)
            .unwrap()
            .into_iter()
            .map(|(_, a)| a.action)
            .collect();
        assert_eq!(names, ["retry", "resume", "pause"]);
    }

    #[test]
    fn skip_parks_the_head_moves_the_cursor_and_clears_the_retry() {
        let (_d, l) = ledger();
        l.commit_progress("c", 3, b"mark".to_vec(), 3, &[], Utc::now())
            .unwrap();
        let retry = RetryState {
            seq: 5,
            attempts: 20,
            next_at_micros: 0,
            last_error: "HTTP 400".into(),
        };
        l.record_failure("c", &retry).unwrap();
        l.skip("c", 5, false, "poison record", &who(9)).unwrap();
        let view = View::open(&l.store).unwrap();
        let cursor = view.cursor("c").unwrap().unwrap();
        assert_eq!(
            (cursor.seq, cursor.checkpoint.as_slice()),
            (5, &b"mark"[..])
        );
        assert!(view.retry("c").unwrap().is_none());
        let dead = view.dead_letter("c", 5).unwrap().unwrap();
        assert_eq!(
            (dead.reason.as_str(), dead.attempts, dead.message.as_str()),
            ("skipped", 20, "skipped by alice: poison record")
        );
    }

    #[test]
    fn the_log_keeps_only_the_newest_records() {
        let (_d, l) = ledger();
        l.write(|tx| {
            for i in 0..KEEP_ACTIONS + 5 {
                log(tx, "c", "pause", i.to_string(), &who(1))?;
            }
            Ok(())
        })
        .unwrap();
        let view = View::open(&l.store).unwrap();
        assert_eq!(
            view.actions(None, usize::MAX).unwrap().len() as u64,
            KEEP_ACTIONS
        );
        assert_eq!(view.actions(None, 1).unwrap()[0].0, KEEP_ACTIONS + 5);
    }

    #[test]
    fn an_action_is_all_there_after_a_power_cut_or_not_at_all() {
        use crate::fault::{CutMode, DiskFault, PowerCut};
        let open = |disk: &PowerCut| {
            let db = redb::Database::builder()
                .create_with_backend(disk.backend())
                .unwrap();
            Ledger::new(Arc::new(db))
        };
        for seed in 0..8 {
            let disk = PowerCut::new();
            let l = open(&disk);
            l.commit_progress("c", 3, vec![], 3, &[(2, letter("map"))], Utc::now())
                .unwrap();
            assert!(l.pause("c", "window", &who(1)).unwrap());
            // A full disk: the settle fails, and leaves nothing of itself.
            disk.inject(Some(DiskFault::NoSpace));
            assert!(
                l.settle_dead("c", Some(2), Settle::Ack, "x", &who(2))
                    .is_err()
            );
            disk.cut(CutMode::Scramble(seed));
            let disk = PowerCut::from_image(disk.image());
            let l = open(&disk);
            let view = View::open(&l.store).unwrap();
            assert!(
                view.pause("c").unwrap().is_some(),
                "the committed pause survives"
            );
            assert!(
                view.dead_letter("c", 2).unwrap().is_some(),
                "the failed settle left it dead"
            );
            assert!(view.settled("c", 2).unwrap().is_none());
            let log = view.actions(None, 10).unwrap();
            assert_eq!(
                log.len(),
                1,
                "only the pause is logged (seed {seed}): {log:?}"
            );
            assert_eq!(log[0].1.action, "pause");
        }
    }

    #[test]
    fn a_damaged_action_record_is_shown_as_such_and_the_others_still_read() {
        let (_d, l) = ledger();
        l.pause("c", "one", &who(1)).unwrap();
        l.write(|tx| {
            tx.open_table(ACTIONS)?
                .insert(2, &b"\x01\xff\xff garbage"[..])?;
            Ok(())
        })
        .unwrap();
        l.resume("c", &who(3)).unwrap();
        let view = View::open(&l.store).unwrap();
        let log = view.actions(None, 10).unwrap();
        let names: Vec<&str> = log.iter().map(|(_, a)| a.action.as_str()).collect();
        assert_eq!(names, ["resume", "damaged", "pause"]);
        assert!(
            log[1]
                .1
                .detail
                .starts_with("action record 2 cannot be read"),
            "{log:?}"
        );
    }

    #[test]
    fn seq_lists_stay_short() {
        assert_eq!(seq_list(&[7]), "seq 7");
        assert_eq!(seq_list(&[3, 5]), "seqs 3, 5");
        let many: Vec<Seq> = (1..=12).collect();
        assert_eq!(
            seq_list(&many),
            "seqs 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, ... (12)"
        );
    }
}
