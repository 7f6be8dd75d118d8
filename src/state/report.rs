//! Building [`ConnectorReport`]s and the feed's figures from one [`View`] and the feed.

use chrono::{DateTime, Utc};

use super::{
    ActionReport, Condition, ConnectorInfo, ConnectorReport, ConnectorState, Error, ErrorReport,
    FeedStatus, PauseReport, Reader, RetryReport, rfc3339, rfc3339_micros,
};
use crate::config::connector::DeliverSpec;
use crate::connector::{ConnectorSpec, Phase};
use crate::event::Seq;
use crate::feed::guarded;
use crate::ledger::view::View;

/// Where a connector delivers, in words: `file /srv/out/permit.txt (append)`,
/// `sftp cobol@10.0.0.7:22 /inbox/PERMIT.DAT (batch)`, `POST https://docket/api`.
pub(super) fn destination(spec: &ConnectorSpec) -> String {
    let mode = |m: &Option<String>| m.clone().unwrap_or_else(|| "append".into());
    match &spec.deliver {
        DeliverSpec::File(f) => {
            let dir = crate::config::resolve_path(&spec.base_dir, &f.dir);
            format!("file {} ({})", dir.join(&f.file).display(), mode(&f.mode))
        }
        DeliverSpec::Sftp(s) => format!(
            "sftp {}@{}:{} {}/{} ({})",
            s.user,
            s.host,
            s.port.unwrap_or(22),
            s.dir.trim_end_matches('/'),
            s.file,
            mode(&s.mode)
        ),
        DeliverSpec::Http(h) => format!(
            "{} {}",
            h.method.as_deref().unwrap_or("POST").to_uppercase(),
            h.url
        ),
    }
}

fn state_of(info: &ConnectorInfo) -> ConnectorState {
    let Some(live) = &info.live else {
        return ConnectorState::NotRunning;
    };
    match &live.phase {
        Phase::Idle | Phase::Delivering => ConnectorState::Ok,
        Phase::Retrying => ConnectorState::Retrying,
        Phase::Blocked => ConnectorState::Blocked,
        Phase::OutsideSchedule => ConnectorState::OutsideSchedule {
            next_open: live.next_open.map(rfc3339),
        },
        Phase::Paused => ConnectorState::Paused,
        Phase::Corrupted { seq } => ConnectorState::Corrupted {
            corrupted_seq: *seq,
        },
    }
}

/// The headline: what holds the connector back first, then dead letters, then the rest.
fn condition(state: &ConnectorState, dead_letters: u64) -> Condition {
    match state {
        ConnectorState::Corrupted { .. } => Condition::Corrupted,
        ConnectorState::Blocked => Condition::Blocked,
        ConnectorState::Retrying => Condition::Retrying,
        _ if dead_letters > 0 => Condition::DeadLetters,
        ConnectorState::NotRunning => Condition::NotRunning,
        ConnectorState::Paused => Condition::Paused,
        ConnectorState::OutsideSchedule { .. } => Condition::OutsideSchedule,
        ConnectorState::Ok => Condition::Ok,
    }
}

fn seconds_since(earlier: DateTime<Utc>, now: DateTime<Utc>) -> f64 {
    ((now - earlier).num_milliseconds() as f64 / 1000.0).max(0.0)
}

impl Reader {
    /// Reports for `infos`, all from one read transaction, as of `now`.
    pub fn reports(
        &self,
        infos: &[ConnectorInfo],
        feed: &FeedStatus,
        now: DateTime<Utc>,
    ) -> Result<Vec<ConnectorReport>, Error> {
        let view = self.view()?;
        let reports = infos
            .iter()
            .map(
                |i| match guarded("ledger", || self.report(&view, i, feed, now)) {
                    // A damaged value this connector's row needs: the row says so, and the
                    // page, `/api/status` and the other connectors' rows still answer.
                    Err(e) if e.is_corrupt() => Ok(damaged_report(i, &e, now)),
                    other => other,
                },
            )
            .collect::<Result<Vec<_>, _>>()?;
        let lowest = reports
            .iter()
            .map(|r| r.cursor)
            .min()
            .unwrap_or(feed.last_seq);
        self.lag_index().forget_below(lowest);
        Ok(reports)
    }

    pub(super) fn lag_index(&self) -> std::sync::MutexGuard<'_, super::lag::LagIndex> {
        // A panic while counting leaves at worst a block not cached: still usable.
        self.lag.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One connector's report from `view`.
    pub fn report(
        &self,
        view: &View,
        info: &ConnectorInfo,
        feed: &FeedStatus,
        now: DateTime<Utc>,
    ) -> Result<ConnectorReport, Error> {
        let name = &info.name;
        let cursor = view.cursor(name)?;
        let cursor_seq = match &cursor {
            Some(c) => c.seq,
            None if info.start_latest => feed.last_seq,
            None => 0,
        };
        let retry = view.retry(name)?;
        let dead = view.dead_summary(name)?;
        let (queued, requeued) = view.requeued(name, 1)?;
        let after = cursor_seq.max(feed.first_seq.map_or(0, |f| f.saturating_sub(1)));
        let selects = |t: &str| info.selects(t);
        let pending = self
            .lag_index()
            .pending(self, &selects, after, feed.last_seq)?;
        let mut oldest = pending.first.map(|e| e.received_at);
        if let Some(seq) = queued.first() {
            if let Some(e) = self.get(*seq)? {
                oldest = Some(oldest.map_or(e.received_at, |o| o.min(e.received_at)));
            }
        }
        let state = state_of(info);
        let last_error = last_error(view, name, retry.as_ref(), dead.newest.as_ref())?;
        Ok(ConnectorReport {
            name: name.clone(),
            destination: info.destination.clone(),
            condition: condition(&state, dead.count),
            state,
            since: info.live.as_ref().and_then(|l| l.since).map(rfc3339),
            cursor: cursor_seq,
            lag_events: pending.count,
            requeued,
            oldest_pending_secs: oldest.map(|t| seconds_since(t, now)),
            delivered: cursor.as_ref().map_or(0, |c| c.delivered),
            retry: retry.as_ref().map(|r| RetryReport {
                seq: r.seq,
                attempts: r.attempts,
                max_tries: info.max_tries,
                next_at: rfc3339(r.next_at()),
            }),
            last_success: cursor
                .and_then(|c| c.last_success_micros)
                .map(rfc3339_micros),
            last_error,
            dead_letters: dead.count,
            dead_by_reason: dead.by_reason,
            paused: view.pause(name)?.map(|p| PauseReport {
                at: rfc3339_micros(p.at_micros),
                by: p.by,
                reason: p.reason,
            }),
        })
    }

    /// The newest `limit` operator actions, newest first.
    pub fn recent_actions(&self, limit: usize) -> Result<Vec<ActionReport>, Error> {
        let actions = guarded("actions", || self.view()?.actions(None, limit));
        Ok(actions?
            .into_iter()
            .map(|(id, a)| ActionReport {
                id,
                at: rfc3339_micros(a.at_micros),
                by: a.by,
                target: a.connector,
                action: a.action,
                detail: a.detail,
            })
            .collect())
    }

    /// Counts events received at or after `since`. The feed is a contiguous run of seqs
    /// (compaction only removes a prefix) stamped in commit order, so a binary search on
    /// `received_at` finds the first one in O(log n) reads, whatever the load.
    fn received_since(&self, first: Seq, last: Seq, since: DateTime<Utc>) -> Result<u64, Error> {
        let (mut lo, mut hi) = (first, last + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            // A damaged event counts as older: the figure is an estimate, the page answers.
            let recent = match self.get(mid) {
                Ok(e) => e.is_some_and(|e| e.received_at >= since),
                Err(e) if e.is_corrupt() => false,
                Err(e) => return Err(e),
            };
            if recent {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Ok(last + 1 - lo)
    }

    /// The first seq received at or after `at`, if any (`ess replay --since`).
    pub fn first_received_at_or_after(&self, at: DateTime<Utc>) -> Result<Option<Seq>, Error> {
        let Some(first) = self.read_after(0, 1)?.first().map(|e| e.seq) else {
            return Ok(None);
        };
        let last = self.last_seq()?;
        let n = self.received_since(first, last, at)?;
        Ok((n > 0).then(|| last + 1 - n))
    }
}

/// The row of a connector whose stored state could not be read because a value failed its
/// checksum: what is known (its name, where it delivers) and the damage as its last error.
fn damaged_report(info: &ConnectorInfo, e: &Error, now: DateTime<Utc>) -> ConnectorReport {
    let state = ConnectorState::Corrupted {
        corrupted_seq: e.corrupt_seq(),
    };
    ConnectorReport {
        name: info.name.clone(),
        destination: info.destination.clone(),
        condition: condition(&state, 0),
        state,
        since: info.live.as_ref().and_then(|l| l.since).map(rfc3339),
        cursor: 0,
        lag_events: 0,
        requeued: 0,
        oldest_pending_secs: None,
        delivered: 0,
        retry: None,
        last_success: None,
        last_error: Some(ErrorReport {
            message: e.to_string(),
            at: Some(rfc3339(now)),
            seq: e.corrupt_seq(),
        }),
        dead_letters: 0,
        dead_by_reason: Default::default(),
        paused: None,
    }
}

/// The newest of: the last delivery error the connector noted, and its newest dead letter.
fn last_error(
    view: &View,
    name: &str,
    retry: Option<&crate::ledger::RetryState>,
    newest_dead: Option<&(Seq, crate::ledger::DeadLetter)>,
) -> Result<Option<ErrorReport>, Error> {
    let noted = view.last_error(name)?.map(|n| {
        (
            n.at_micros,
            ErrorReport {
                message: n.message,
                at: Some(rfc3339_micros(n.at_micros)),
                seq: Some(n.seq),
            },
        )
    });
    let parked = newest_dead.map(|(seq, d)| {
        (
            d.at_micros,
            ErrorReport {
                message: format!("seq {seq} parked ({}): {}", d.reason, d.message),
                at: Some(rfc3339_micros(d.at_micros)),
                seq: Some(*seq),
            },
        )
    });
    let newest = match (noted, parked) {
        (Some(a), Some(b)) => Some(if b.0 > a.0 { b.1 } else { a.1 }),
        (a, b) => a.or(b).map(|(_, e)| e),
    };
    Ok(newest.or_else(|| {
        retry.map(|r| ErrorReport {
            message: r.last_error.clone(),
            at: None,
            seq: Some(r.seq),
        })
    }))
}

/// The feed's figures; `last_seq` is the feed's own (daemon) or read from the events (CLI).
pub fn feed_status(
    store: &Reader,
    last_seq: Option<Seq>,
    now: DateTime<Utc>,
) -> Result<FeedStatus, Error> {
    // redb may panic on a damaged page: contained here as a damage report.
    guarded("events", || feed_status_unguarded(store, last_seq, now))
}

fn feed_status_unguarded(
    store: &Reader,
    last_seq: Option<Seq>,
    now: DateTime<Utc>,
) -> Result<FeedStatus, Error> {
    // A damaged first event still tells its seq; the feed's figures stay readable.
    let first_seq = match store.read_after(0, 1) {
        Ok(events) => events.first().map(|e| e.seq),
        Err(e) if e.is_corrupt() && e.corrupt_seq().is_some() => e.corrupt_seq(),
        Err(e) => return Err(e),
    };
    let last_seq = match last_seq {
        Some(s) => s,
        None => store.last_seq()?,
    };
    let (events, minute, hour) = match first_seq {
        Some(first) if first <= last_seq => (
            last_seq - first + 1,
            store.received_since(first, last_seq, now - chrono::Duration::minutes(1))?,
            store.received_since(first, last_seq, now - chrono::Duration::hours(1))?,
        ),
        _ => (0, 0, 0),
    };
    Ok(FeedStatus {
        first_seq,
        last_seq,
        events,
        size_bytes: std::fs::metadata(store.path()).map_or(0, |m| m.len()),
        received_last_minute: minute,
        received_last_hour: hour,
    })
}
