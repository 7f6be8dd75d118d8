//! Operator commands on a live appliance: `ess list`, `ess replay`, `ess stats`,
//! `ess backup` (also as `essctl`), and the admin unix socket they talk through.
//!
//! ## Shape
//! [`AdminBackend`] is what a command needs answered: list, replay, stats, backup. The
//! daemon serves it on `admin.socket` ([`server::serve`], JSON over HTTP/1.1 on a unix
//! socket, mode 0600); the CLI asks it through [`client`]. When no daemon answers (socket
//! missing or connection refused) the CLI opens the database itself through
//! [`direct::DirectBackend`], the same implementation the daemon serves, so both paths give
//! the same answers.
//!
//! Architecture invariant: the socket is never reachable by anyone but its owner: it is
//! bound inside a fresh 0700 folder, set to 0600 and only then renamed into place. Only
//! `replay` and `backup` change anything, and `backup` only creates a new file.

pub mod cli;
pub mod client;
pub mod direct;
pub mod server;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::event::Seq;

pub use cli::{
    BackupArgs, ListArgs, ReplayArgs, StatsArgs, run_backup, run_list, run_replay, run_stats,
};

/// A usage or validation error (exit code 2): the same type `ess`'s other commands use, so
/// [`crate::cli::exit_code`] maps it.
pub use crate::cli::UsageError;

/// Why an admin request failed, as the caller must branch on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", content = "error", rename_all = "lowercase")]
pub enum AdminError {
    /// The request is wrong: unknown target, bad range, existing backup file...
    #[error("{0}")]
    Usage(String),
    /// The request was fine but could not be done.
    #[error("{0}")]
    Runtime(String),
}

impl From<crate::feed::Error> for AdminError {
    fn from(e: crate::feed::Error) -> Self {
        AdminError::Runtime(e.to_string())
    }
}

/// Which ledger entries `ess list` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ListKind {
    /// Pending (with the retrying head and queued replays) and dead.
    #[default]
    All,
    /// Events the connector has still to deliver: queued replays, then after the cursor.
    Pending,
    /// Dead letters.
    Dead,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListRequest {
    /// One connector, or all.
    pub target: Option<String>,
    pub kind: ListKind,
    /// Most entries per connector.
    pub limit: usize,
}

/// One line of `ess list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListEntry {
    pub target: String,
    pub seq: Seq,
    /// `pending`, `retrying` (the head, after a failed attempt), `requeued` or `dead`.
    pub state: String,
    /// `None` when the event is no longer in the feed.
    pub event_type: Option<String>,
    pub key: Option<String>,
    /// RFC 3339, UTC.
    pub received_at: Option<String>,
    pub attempts: Option<u32>,
    /// Dead letters: `map`, `compliance`, `permanent`, `retries`.
    pub reason: Option<String>,
    /// Last error or dead-letter message.
    pub message: Option<String>,
    /// Dead letters: when parked; retrying: when the next attempt is due. RFC 3339, UTC.
    pub at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListResponse {
    pub entries: Vec<ListEntry>,
    /// Some connector had more entries than `limit`.
    pub truncated: bool,
}

/// `ess replay`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "what", rename_all = "lowercase")]
pub enum ReplayRequest {
    /// Deliver `from..=to` again (`to` defaults to the cursor).
    Range {
        target: String,
        from: Seq,
        to: Option<Seq>,
    },
    /// Re-queue the connector's dead letters.
    Dead { target: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayResponse {
    pub target: String,
    /// Events newly queued for delivery.
    pub requeued: u64,
    /// Anything the operator should know about what was not queued.
    pub note: Option<String>,
}

/// The retry state of a connector's head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryInfo {
    pub seq: Seq,
    pub attempts: u32,
    /// RFC 3339, UTC.
    pub next_at: String,
    pub last_error: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectorStats {
    pub target: String,
    /// `false` for a connector the ledger knows but no map file names any more.
    pub has_map: bool,
    /// `None`: never ran.
    pub cursor: Option<Seq>,
    /// Feed events after the cursor (before the `events:` filter).
    pub lag: u64,
    pub delivered: u64,
    pub retrying: Option<RetryInfo>,
    pub dead: u64,
    pub requeued: u64,
    /// RFC 3339, UTC.
    pub last_success: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedStats {
    pub last_seq: Seq,
    /// The oldest event still in the feed (after compaction).
    pub first_seq: Option<Seq>,
    pub events: u64,
    pub file_bytes: u64,
    pub free_disk_bytes: Option<u64>,
    pub received_last_minute: u64,
    pub received_last_hour: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsResponse {
    pub feed: FeedStats,
    pub connectors: Vec<ConnectorStats>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRequest {
    /// Absolute path of the new file; must not exist.
    pub to: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupResponse {
    pub path: PathBuf,
    /// Rows copied per table.
    pub tables: BTreeMap<String, u64>,
    pub bytes: u64,
}

/// What the admin commands need answered; served by the daemon, or by
/// [`direct::DirectBackend`] on the database file when no daemon runs.
pub trait AdminBackend: Send + Sync {
    fn list(&self, req: &ListRequest) -> Result<ListResponse, AdminError>;
    fn replay(&self, req: &ReplayRequest) -> Result<ReplayResponse, AdminError>;
    fn stats(&self) -> Result<StatsResponse, AdminError>;
    fn backup(&self, req: &BackupRequest) -> Result<BackupResponse, AdminError>;
}
