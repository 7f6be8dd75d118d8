//! What an operator and a monitoring system can see of a running appliance: the status page
//! (`/`), Prometheus metrics (`/metrics`), `/healthz` and `/api/status`, served with
//! tiny_http on `status.listen` on threads of their own, so that the page keeps answering
//! even when the async runtime is saturated.
//!
//! The data flows one way. A [`StatusSource`] ([`DaemonStatus`] in the daemon) reads the
//! feed, the ledger and the connectors' live state into a [`Snapshot`]; every page, JSON
//! answer and scrape renders one fresh snapshot. Counters and histograms that only the hot
//! paths know (events accepted, delivery latency...) are recorded through the cheap,
//! cloneable [`Metrics`] handle, which is also the ingest's and the connectors' hooks.
//!
//! Invariant: `status` never writes. The HTTP side reaches the state only through
//! [`StatusSource`]; [`DaemonStatus`] shares the daemon's `Feed` and `Ledger` handles but
//! calls only their read functions (`last_seq`, `read_after`, `read_cursor`, `read_retry`,
//! `read_dead_letters`). It never shows payload contents: a [`Snapshot`] has no field that
//! could hold one, and `last_error` must be a message about the failure, not the record.

mod hooks;
mod metrics;
mod page;
mod server;
mod source;
mod text;

pub use metrics::{Metrics, REJECT_REASONS, TargetMetrics};
pub use server::{StatusServer, serve};
pub use source::{DaemonStatus, connector_status};
pub use text::render_text;

use serde::{Deserialize, Serialize};

use crate::event::Seq;

/// Where the status data comes from: implemented by the daemon over the feed and the ledger.
///
/// Both methods are called on the status server's threads for every request, so they must
/// be quick (read-only transactions, no waiting on the async runtime) and must not panic.
pub trait StatusSource: Send + Sync + 'static {
    /// The current state of the appliance.
    fn snapshot(&self) -> Snapshot;
    /// `true` while the appliance is serving (`/healthz` answers 200), `false` while it is
    /// starting, shutting down or cannot take events (503).
    fn healthy(&self) -> bool;
}

/// Everything the status page shows, at one instant. Serialised as-is, it is the
/// `/api/status` JSON; a client (`ess stats` over the admin socket) can deserialise it back
/// and print it with [`render_text`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The `ess` version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
    pub feed: FeedStatus,
    /// Free bytes on the file system holding the data directory.
    pub free_disk_bytes: u64,
    /// `retention.min_free_disk`: below it the ingest refuses events with 503.
    pub min_free_disk_bytes: u64,
    /// One entry per connector, in the order the page should list them.
    pub connectors: Vec<ConnectorStatus>,
}

impl Snapshot {
    /// Free disk is below `min_free_disk`, so the ingest refuses events.
    pub fn disk_low(&self) -> bool {
        self.free_disk_bytes < self.min_free_disk_bytes
    }
}

/// The feed as a whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedStatus {
    /// The newest committed `seq` (0 while the feed is empty).
    pub last_seq: Seq,
    /// Size of the database file.
    pub size_bytes: u64,
    /// Events accepted per second, averaged over the last minute or so.
    pub ingest_rate_per_sec: f64,
}

/// One connector (map + target), as the ledger sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectorStatus {
    /// The connector's target name (`target:` in its map file).
    pub name: String,
    /// What the connector is doing now. Flattened into the JSON object:
    /// `"state": "ok" | "retrying" | "blocked" | "outside_schedule"`, plus `"next_open"`
    /// for `outside_schedule`.
    #[serde(flatten)]
    pub state: ConnectorState,
    /// The last `seq` this connector has passed (delivered, filtered out or parked).
    pub cursor: Seq,
    /// Events in the feed after the cursor: `feed.last_seq - cursor`.
    pub lag_events: u64,
    /// How old the oldest event not yet passed is, in seconds; `None` when caught up.
    pub lag_secs: Option<f64>,
    /// Events delivered by this connector since it was created.
    pub delivered: u64,
    /// Failed attempts so far at the event now waiting for a retry; 0 when none waits.
    pub retry_pending: u32,
    /// When the next attempt is due, RFC 3339.
    pub next_retry_at: Option<String>,
    /// When the last delivery succeeded, RFC 3339.
    pub last_success: Option<String>,
    /// The last delivery error: a message about the failure, never the record or payload.
    pub last_error: Option<String>,
    /// Events parked as dead letters and not yet replayed.
    pub dead_letters: u64,
}

/// What a connector is doing. Dead letters are not a state of their own: a connector goes
/// on past a parked event, so "dead letters present" is `dead_letters > 0` on top of any
/// state (see [`ConnectorStatus::condition`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ConnectorState {
    /// Delivering, or caught up and waiting for events.
    Ok,
    /// The event at the head failed and is retried with back-off; later events wait.
    Retrying,
    /// The event at the head failed past its retry limit (or permanently) with
    /// `on_failure: block`: later events are held until an operator acts (`ess replay`).
    Blocked,
    /// The connector's schedule window is closed; events wait in the feed.
    OutsideSchedule {
        /// When the window opens next, RFC 3339.
        next_open: Option<String>,
    },
}

/// The one word an operator reads first for a connector, worst condition first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Condition {
    Blocked,
    Retrying,
    DeadLetters,
    OutsideSchedule,
    Ok,
}

impl Condition {
    /// The label the page shows (and the CSS class, with spaces as dashes).
    pub fn label(self) -> &'static str {
        match self {
            Condition::Ok => "ok",
            Condition::Retrying => "retrying",
            Condition::Blocked => "blocked",
            Condition::OutsideSchedule => "outside schedule",
            Condition::DeadLetters => "dead letters",
        }
    }

    /// Whether an operator should look at this connector.
    pub fn needs_attention(self) -> bool {
        matches!(
            self,
            Condition::Blocked | Condition::Retrying | Condition::DeadLetters
        )
    }
}

impl ConnectorStatus {
    /// The headline condition: the state, except that an otherwise healthy connector with
    /// parked events reads "dead letters" (blocked and retrying stay the headline because
    /// they hold the connector back; the page shows the dead-letter count beside them).
    pub fn condition(&self) -> Condition {
        match self.state {
            ConnectorState::Blocked => Condition::Blocked,
            ConnectorState::Retrying => Condition::Retrying,
            _ if self.dead_letters > 0 => Condition::DeadLetters,
            ConnectorState::OutsideSchedule { .. } => Condition::OutsideSchedule,
            ConnectorState::Ok => Condition::Ok,
        }
    }
}
