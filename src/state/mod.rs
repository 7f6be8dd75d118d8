//! One model of delivery state: every read of what the ledger and the feed hold about a
//! connector or an event goes through here, and comes out as typed values —
//! [`DeliveryState`] for one event at one connector, [`ConnectorReport`] for a connector,
//! [`Snapshot`] for the appliance. Receipts (`GET /v1/events/{key}`), the status page,
//! `/api/status`, `/metrics`, `ess list`, `ess stats`, `ess show` and `ess backup` all ask
//! this module, so they can never disagree.
//!
//! The reads go through the ledger's [`View`] (one read transaction) and the feed's read
//! functions ([`crate::feed::read_after`], [`crate::feed::get_by_key`]) on a [`Reader`]: the
//! daemon's open database, or the file opened read-only by the CLI when no daemon runs.
//! What only the running daemon knows (a connector's live phase, its map generation) comes
//! in as [`ConnectorInfo`].
//!
//! Architecture invariant: read-only, except [`backup`] (which writes a new file, never
//! the live one). Besides `feed` and `ledger`, this is the only module that opens redb.

pub mod backup;
mod lag;
pub mod list;
mod reader;
mod report;
mod running;

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::connector::{ConnectorSpec, Live};
use crate::event::{Event, Seq};
use crate::ledger::view::View;
use crate::map::Mapping;

pub use reader::{OpenError, Reader};
pub use report::feed_status;
pub use running::{Connectors, Running};

/// Failures of a read: the database could not be read, or holds what this build cannot
/// decode.
pub type Error = crate::feed::Error;

/// Where one event stands for one connector (receipts, `ess show`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Passed to the target (or, at or below the cursor, filtered out by nothing).
    Delivered,
    /// Not yet delivered: after the cursor, or queued again by `ess replay`.
    Pending,
    /// The head of a connector whose last attempt failed.
    Retrying,
    /// Parked as a dead letter (also once an operator acknowledged or discarded it).
    Dead,
    /// The connector's `events:` does not take this type.
    Filtered,
}

impl DeliveryState {
    /// The word receipts use (SPEC §5).
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Delivered => "delivered",
            DeliveryState::Pending => "pending",
            DeliveryState::Retrying => "retrying",
            DeliveryState::Dead => "dead",
            DeliveryState::Filtered => "filtered",
        }
    }
}

/// What a connector is doing. Flattened into its report's JSON as `"state": "..."`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ConnectorState {
    /// Delivering, or caught up and waiting for events.
    Ok,
    /// The head failed and is retried with back-off; later events wait.
    Retrying,
    /// The head failed past `max_tries` (or permanently) with `on_failure: block`: later
    /// events are held until it succeeds or an operator acts (`ess retry`, `ess skip`).
    Blocked,
    /// The `schedule:` window is closed; events wait in the feed.
    OutsideSchedule { next_open: Option<String> },
    /// Held by `ess pause` until `ess resume`.
    Paused,
    /// A stored value failed its checksum; the connector stopped (at that seq, when the
    /// damage is in an event; else in one of its ledger rows).
    Corrupted { corrupted_seq: Option<Seq> },
    /// No task runs it: no daemon answers, or no map file names it any more.
    NotRunning,
}

/// The one word an operator reads first for a connector, worst first. Serialised as
/// `"condition"` in the report, so `/api/status` says what the page's badge says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    Corrupted,
    Blocked,
    Retrying,
    DeadLetters,
    NotRunning,
    Paused,
    OutsideSchedule,
    Ok,
}

impl Condition {
    /// The label the page shows (and its CSS class, with spaces as dashes).
    pub fn label(self) -> &'static str {
        match self {
            Condition::Corrupted => "corrupted",
            Condition::Blocked => "blocked",
            Condition::Retrying => "retrying",
            Condition::DeadLetters => "dead letters",
            Condition::Paused => "paused",
            Condition::NotRunning => "not running",
            Condition::OutsideSchedule => "outside schedule",
            Condition::Ok => "ok",
        }
    }

    /// Whether an operator should look at this connector. (A connector that is not running
    /// is not counted: either the whole daemon is down, which the page says first, or its
    /// map was removed on purpose; with dead letters left it reads "dead letters".)
    pub fn needs_attention(self) -> bool {
        matches!(
            self,
            Condition::Corrupted
                | Condition::Blocked
                | Condition::Retrying
                | Condition::DeadLetters
        )
    }
}

/// The head's retry state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryReport {
    pub seq: Seq,
    pub attempts: u32,
    pub max_tries: u32,
    /// When the next attempt is due, RFC 3339.
    pub next_at: String,
}

/// The last delivery problem: a message about the failure, never the record or payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorReport {
    pub message: String,
    /// RFC 3339; `None` when only the retry state knows it (an older ledger).
    pub at: Option<String>,
    pub seq: Option<Seq>,
}

/// `ess pause`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PauseReport {
    pub at: String,
    pub by: String,
    pub reason: String,
}

/// One operator action from the ledger's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionReport {
    pub id: u64,
    pub at: String,
    pub by: String,
    pub target: String,
    pub action: String,
    pub detail: String,
}

/// One connector, as the ledger, the feed and its task see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectorReport {
    /// The connector's `target:` name.
    pub name: String,
    /// Where it delivers, in words (`None`: no map file names it any more).
    pub destination: Option<String>,
    #[serde(flatten)]
    pub state: ConnectorState,
    pub condition: Condition,
    /// Since when it is in `state`, RFC 3339 (known while its task runs).
    pub since: Option<String>,
    /// Every event with seq <= cursor is done: delivered, filtered out or parked.
    pub cursor: Seq,
    /// Events after the cursor that this connector selects (its `events:`).
    pub lag_events: u64,
    /// Events queued again by `ess replay`.
    pub requeued: u64,
    /// Age of the oldest event it has still to deliver; `None` when none waits.
    pub oldest_pending_secs: Option<f64>,
    pub delivered: u64,
    pub retry: Option<RetryReport>,
    pub last_success: Option<String>,
    pub last_error: Option<ErrorReport>,
    /// Dead letters not settled yet.
    pub dead_letters: u64,
    pub dead_by_reason: BTreeMap<String, u64>,
    pub paused: Option<PauseReport>,
}

/// The feed as a whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedStatus {
    /// The oldest event still kept (after compaction); `None` when empty.
    pub first_seq: Option<Seq>,
    /// The newest committed seq (0 while the feed is empty).
    pub last_seq: Seq,
    /// Events kept.
    pub events: u64,
    pub size_bytes: u64,
    pub received_last_minute: u64,
    pub received_last_hour: u64,
}

/// Whether the ingest takes events, and what else needs an operator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthStatus {
    /// `None`: events are taken; else why ingest answers 503.
    pub refusal: Option<String>,
    /// Connectors blocked for longer than `status.blocked_alarm`, in words.
    pub degraded: Vec<String>,
}

/// The last SIGHUP reload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadReport {
    pub at: String,
    pub ok: bool,
    /// Connectors running after it.
    pub connectors: usize,
    /// Problems of a refused set: how many, and the first (`file:line:col: message`).
    pub n_problems: usize,
    pub first_problem: Option<String>,
}

/// Everything the status page shows, at one instant. Serialised as-is it is `/api/status`
/// and `ess stats --json` (same names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: String,
    /// A daemon answered; `false`: `ess stats` read the database itself.
    pub running: bool,
    /// Seconds since the daemon started.
    pub uptime_secs: Option<u64>,
    pub feed: FeedStatus,
    /// Events accepted per second, over about the last minute (daemon only).
    pub ingest_rate_per_sec: Option<f64>,
    pub free_disk_bytes: u64,
    /// `retention.min_free_disk`: below it the ingest refuses events.
    pub min_free_disk_bytes: u64,
    pub health: HealthStatus,
    pub last_reload: Option<ReloadReport>,
    pub connectors: Vec<ConnectorReport>,
    /// The newest operator actions, newest first.
    pub recent_actions: Vec<ActionReport>,
    /// Pickup sources (legacy files into the feed).
    #[serde(default)]
    pub sources: Vec<crate::ledger::sources::SourceReport>,
}

impl Snapshot {
    /// Free disk is below `min_free_disk`, so the ingest refuses events.
    pub fn disk_low(&self) -> bool {
        self.free_disk_bytes < self.min_free_disk_bytes
    }
}

/// What the state module needs to know about a connector beyond the ledger.
#[derive(Debug, Clone)]
pub struct ConnectorInfo {
    pub name: String,
    /// Its compiled map (`None`: the ledger knows it but no map file does).
    pub mapping: Option<Arc<Mapping>>,
    pub max_tries: u32,
    pub start_latest: bool,
    pub destination: Option<String>,
    /// Its task's live state (`None`: not running).
    pub live: Option<Live>,
}

impl ConnectorInfo {
    /// A connector of the running generation (or of map files read by the CLI).
    pub fn of_spec(spec: &ConnectorSpec, live: Option<Live>) -> ConnectorInfo {
        ConnectorInfo {
            name: spec.name.clone(),
            mapping: Some(spec.mapping.clone()),
            max_tries: spec.policy.max_tries,
            start_latest: spec.start == crate::connector::Start::Latest,
            destination: Some(report::destination(spec)),
            live,
        }
    }

    /// A connector only the ledger knows.
    pub fn ledger_only(name: &str) -> ConnectorInfo {
        ConnectorInfo {
            name: name.to_owned(),
            mapping: None,
            max_tries: u32::MAX,
            start_latest: false,
            destination: None,
            live: None,
        }
    }

    fn selects(&self, event_type: &str) -> bool {
        self.mapping.as_ref().is_none_or(|m| m.selects(event_type))
    }
}

/// Where `event` stands for the connector `info`, from one consistent `view`.
pub fn delivery_state(
    view: &View,
    info: &ConnectorInfo,
    event: &Event,
) -> Result<DeliveryState, Error> {
    let name = &info.name;
    if !info.selects(&event.event_type) {
        return Ok(DeliveryState::Filtered);
    }
    if view.dead_letter(name, event.seq)?.is_some() || view.settled(name, event.seq)?.is_some() {
        return Ok(DeliveryState::Dead);
    }
    let retrying = view.retry(name)?.is_some_and(|r| r.seq == event.seq);
    if retrying {
        return Ok(DeliveryState::Retrying);
    }
    if view.is_requeued(name, event.seq)? {
        return Ok(DeliveryState::Pending);
    }
    let cursor = view.cursor(name)?.map_or(0, |c| c.seq);
    Ok(if event.seq <= cursor {
        DeliveryState::Delivered
    } else {
        DeliveryState::Pending
    })
}

/// `connector -> state` for a receipt, every connector from one read transaction.
pub fn receipt(
    store: &Reader,
    infos: &[ConnectorInfo],
    event: &Event,
) -> Result<BTreeMap<String, DeliveryState>, Error> {
    let view = store.view()?;
    infos
        .iter()
        .map(|i| Ok((i.name.clone(), delivery_state(&view, i, event)?)))
        .collect()
}

/// RFC 3339 in UTC, to the second.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// RFC 3339 of a stored time (microseconds since the epoch).
pub fn rfc3339_micros(micros: i64) -> String {
    rfc3339(Utc.timestamp_micros(micros).single().unwrap_or_default())
}

#[cfg(test)]
mod tests;
