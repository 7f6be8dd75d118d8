//! Operator actions on a running connector (`ess pause`, `resume`, `retry`, `skip`,
//! `dead ack|discard`), carried out by the connector's own task between two rounds.
//!
//! The admin socket's thread sends a [`Command`] through the connector's [`Handle`] and
//! waits for the answer; the task takes it when its round is over (it wakes from a back-off
//! or a wait for events at once), does the ledger transaction, and answers.
//!
//! Architecture invariant: an action never races a delivery. The task is the only writer of
//! its cursor, retry state and head, and it runs actions only between rounds, so a skip can
//! never park a head that is being delivered at that moment, and a retry-now or a pause
//! takes effect at the next round boundary, never in the middle of one.

use std::time::Duration;

use chrono::Utc;
use tokio::sync::mpsc;

use super::{Phase, Runner, blocking};
use crate::event::Seq;
use crate::ledger::actions::{Actor, Settle};
use crate::ledger::view::View;

/// Commands waiting for a busy connector; more are refused rather than queued forever.
const QUEUE: usize = 16;

/// What an operator asks a connector to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Pause {
        reason: String,
    },
    Resume,
    /// Make the head's next attempt due now.
    RetryNow,
    /// Park the head (`seq`, which must be the head) as a dead letter, reason `skipped`.
    Skip {
        seq: Seq,
        reason: String,
    },
    /// Settle one dead letter (`Some(seq)`) or all of them.
    Settle {
        seq: Option<Seq>,
        how: Settle,
        reason: String,
    },
}

/// An action, who asked, and where the answer goes.
#[derive(Debug)]
pub struct Command {
    pub action: Action,
    pub by: String,
    pub reply: std::sync::mpsc::SyncSender<Result<String, ActionError>>,
}

/// Why an action was not done. [`ActionError::is_usage`] tells the operator's mistakes
/// (exit code 2) from failures (exit code 1).
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("{target}: seq {seq} is not the head; {}", head.map_or("nothing is waiting to be delivered".to_owned(), |h| format!("the head is seq {h}")))]
    NotHead {
        target: String,
        seq: Seq,
        head: Option<Seq>,
    },
    #[error(
        "{target}: the head belongs to a batch file already started (seqs {first}..={last}); \
         skipping one event would make that file differ from the ledger. Fix the target and \
         `ess retry`, or wait for the batch to go through"
    )]
    Pinned {
        target: String,
        first: Seq,
        last: Seq,
    },
    #[error("{target}: nothing is waiting for a retry (the connector is not retrying)")]
    NothingToRetry { target: String },
    #[error("{target}: seq {seq} is not a dead letter (see `ess list --dead --target {target}`)")]
    NotDead { target: String, seq: Seq },
    #[error("{target}: the ledger could not be read or written")]
    Store {
        target: String,
        #[source]
        source: crate::feed::Error,
    },
    #[error("{target} is not running right now (a reload or shutdown is under way); try again")]
    NotRunning { target: String },
    #[error("{target} has {QUEUE} actions waiting already; try again when they are done")]
    Busy { target: String },
    #[error(
        "{target} did not take the action within {waited:?} (a slow delivery under way?); it may still be carried out"
    )]
    Timeout { target: String, waited: Duration },
}

impl ActionError {
    /// The operator asked for something that does not apply (exit code 2).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            ActionError::NotHead { .. }
                | ActionError::Pinned { .. }
                | ActionError::NothingToRetry { .. }
                | ActionError::NotDead { .. }
        )
    }
}

/// Sends actions to one running connector. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Handle {
    target: String,
    tx: mpsc::Sender<Command>,
}

/// A connector's command channel.
pub(super) fn channel(target: &str) -> (Handle, mpsc::Receiver<Command>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (
        Handle {
            target: target.to_owned(),
            tx,
        },
        rx,
    )
}

impl Handle {
    /// Asks the connector to carry out `action` for `by` and waits up to `timeout` for its
    /// answer (a sentence saying what was done). Blocking: call it from a thread of its own
    /// (the admin socket's), never from the async runtime.
    pub fn act(&self, action: Action, by: &str, timeout: Duration) -> Result<String, ActionError> {
        let target = self.target.clone();
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        let cmd = Command {
            action,
            by: by.to_owned(),
            reply,
        };
        self.tx.try_send(cmd).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ActionError::Busy {
                target: target.clone(),
            },
            mpsc::error::TrySendError::Closed(_) => ActionError::NotRunning {
                target: target.clone(),
            },
        })?;
        match answer.recv_timeout(timeout) {
            Ok(r) => r,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(ActionError::Timeout {
                target,
                waited: timeout,
            }),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                Err(ActionError::NotRunning { target })
            }
        }
    }
}

impl Runner {
    /// Carries out one command and answers it (the asker may have given up: then the
    /// answer is dropped, the action is done all the same).
    pub(super) fn execute(&mut self, cmd: Command) {
        // An action may move the cursor or change what the next round takes.
        self.ahead = None;
        let answer = self.act(&cmd.action, &cmd.by);
        match &answer {
            Ok(done) => {
                tracing::info!(connector = %self.spec.name, by = %cmd.by, "operator action: {done}")
            }
            Err(e) => {
                tracing::warn!(connector = %self.spec.name, by = %cmd.by, "operator action refused: {e}")
            }
        }
        let _ = cmd.reply.try_send(answer);
    }

    fn act(&mut self, action: &Action, by: &str) -> Result<String, ActionError> {
        let name = self.spec.name.clone();
        let store = |source| ActionError::Store {
            target: name.clone(),
            source,
        };
        let who = Actor { by, at: Utc::now() };
        let ledger = self.env.ledger.clone();
        match action {
            Action::Pause { reason } => {
                let fresh = blocking(|| ledger.pause(&name, reason, &who)).map_err(store)?;
                self.paused = true;
                self.set_live(|l| l.set_phase(Phase::Paused, who.at));
                Ok(if fresh {
                    format!("{name} paused; it delivers nothing until `ess resume --target {name}`")
                } else {
                    format!("{name} was paused already")
                })
            }
            Action::Resume => {
                let was = blocking(|| ledger.resume(&name, &who)).map_err(store)?;
                self.paused = false;
                self.set_live(|l| l.set_phase(Phase::Idle, who.at));
                Ok(if was {
                    format!("{name} resumed")
                } else {
                    format!("{name} was not paused")
                })
            }
            Action::RetryNow => match blocking(|| ledger.retry_now(&name, &who)).map_err(store)? {
                Some(r) => Ok(format!(
                    "{name}: seq {} is retried now (attempt {})",
                    r.seq,
                    r.attempts + 1
                )),
                None => Err(ActionError::NothingToRetry { target: name }),
            },
            Action::Skip { seq, reason } => {
                let queued = self.check_head(*seq)?;
                blocking(|| ledger.skip(&name, *seq, queued, reason, &who)).map_err(store)?;
                self.set_live(|l| l.set_phase(Phase::Idle, who.at));
                Ok(format!(
                    "{name}: seq {seq} parked as a dead letter (reason skipped); the connector goes on"
                ))
            }
            Action::Settle { seq, how, reason } => {
                let done = blocking(|| ledger.settle_dead(&name, *seq, *how, reason, &who))
                    .map_err(store)?;
                let verb = match how {
                    Settle::Ack => "acknowledged",
                    Settle::Discard => "discarded",
                };
                match (seq, done.len()) {
                    (Some(s), 0) => Err(ActionError::NotDead {
                        target: name,
                        seq: *s,
                    }),
                    (None, 0) => Ok(format!("{name} has no dead letters")),
                    (_, n) => Ok(format!("{name}: {n} dead letter(s) {verb}")),
                }
            }
        }
    }

    /// Checks that `seq` is the connector's head: the retrying event, else the first
    /// re-queued one, else the first event after the cursor that `events:` selects.
    /// Returns whether it is a re-queued one.
    fn check_head(&self, seq: Seq) -> Result<bool, ActionError> {
        let name = &self.spec.name;
        let store = |source| ActionError::Store {
            target: name.clone(),
            source,
        };
        let db = self.env.feed.db().clone();
        let (cursor, retry, queued, intent) = blocking(|| {
            let view = View::open(&*db)?;
            Ok::<_, crate::feed::Error>((
                view.cursor(name)?.unwrap_or_default(),
                view.retry(name)?,
                view.requeued(name, 1)?.0.first().copied(),
                view.intent(name)?,
            ))
        })
        .map_err(store)?;
        // A batch whose range is pinned (by its intent, or by the release before intents)
        // may already be in its file: skipping one of its events could not be honoured.
        let pinned = match intent {
            Some(i) if i.exact => Some(i.last),
            _ => cursor.pinned.filter(|&last| last > cursor.seq),
        };
        if let Some(last) = pinned {
            return Err(ActionError::Pinned {
                target: name.clone(),
                first: cursor.seq + 1,
                last,
            });
        }
        let head = match (retry, queued) {
            (Some(r), _) => Some(r.seq),
            (None, Some(q)) => Some(q),
            (None, None) => self.first_selected(cursor.seq, seq).map_err(store)?,
        };
        if head != Some(seq) {
            return Err(ActionError::NotHead {
                target: name.clone(),
                seq,
                head,
            });
        }
        Ok(seq <= cursor.seq)
    }

    /// The first event after `after` the connector selects, looking no further than
    /// `upto` (the seq the operator named).
    fn first_selected(&self, after: Seq, upto: Seq) -> Result<Option<Seq>, crate::feed::Error> {
        const CHUNK: usize = 1024;
        let mut from = after;
        while from < upto {
            let events = blocking(|| self.env.feed.read_after(from, CHUNK))?;
            let Some(last) = events.last().map(|e| e.seq) else {
                return Ok(None);
            };
            if let Some(e) = events
                .iter()
                .find(|e| e.seq <= upto && self.spec.mapping.selects(&e.event_type))
            {
                return Ok(Some(e.seq));
            }
            from = last;
        }
        Ok(None)
    }
}
