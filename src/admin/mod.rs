//! Operator commands on a live appliance — `ess list`, `replay`, `stats`, `show`, `backup`
//! and the actions `dead ack|discard`, `retry`, `pause`, `resume`, `skip` (also as
//! `essctl`) — and the admin unix socket they talk through.
//!
//! ## Shape
//! [`AdminBackend`] is what a command needs answered. The daemon serves [`backend::Admin`]
//! on `admin.socket` ([`server::serve`], JSON over HTTP/1.1 on a unix socket, mode 0600),
//! answering from its running generation of maps; the CLI asks through [`client`]. When no
//! daemon answers (socket missing or connection refused) the read-only commands (and
//! `replay`) use an offline [`backend::Admin`] on the database file; actions need the
//! daemon, because only a connector's own task may change its head.
//!
//! Architecture invariant: the socket is never reachable by anyone but its owner: it is
//! bound inside a fresh 0700 folder, set to 0600 and only then renamed into place. Every
//! answer comes from the state module; every change is one ledger transaction.

pub mod act;
pub mod backend;
pub mod cli;
pub mod client;
pub mod server;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::connector::command::ActionError;
use crate::event::Seq;
use crate::ledger::actions::Settle;
use crate::state::backup::BackupError;

pub use crate::state::Snapshot;
pub use crate::state::backup::BackupReport;
pub use crate::state::list::{EventReport, ListEntry, ListKind};
pub use act::{ActArgs, DeadArgs, SkipArgs, TargetArgs};
pub use cli::{BackupArgs, ListArgs, ReplayArgs, ShowArgs, StatsArgs};

/// A usage or validation error (exit code 2): the same type `ess`'s other commands use, so
/// [`crate::cli::exit_code`] maps it.
pub use crate::cli::UsageError;

/// Why an admin request failed. [`AdminError::is_usage`] decides the exit code.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("no connector named {name:?} ({})", if known.is_empty() { "maps_dir has no connectors".to_owned() } else { format!("known: {}", known.join(", ")) })]
    UnknownTarget { name: String, known: Vec<String> },
    /// The request does not make sense (empty range, seq 0...).
    #[error("{0}")]
    BadRequest(String),
    #[error("no event {0} in the feed (never received, or compacted)")]
    NoEvent(String),
    #[error(transparent)]
    Action(#[from] ActionError),
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error("cannot read or write the ledger")]
    State(#[from] crate::feed::Error),
    #[error(transparent)]
    Open(#[from] crate::state::OpenError),
    #[error(
        "{what} needs the running daemon (only a connector's own task may act on it), and none answers on {socket}: start it (systemctl start ess)"
    )]
    NeedsDaemon {
        what: String,
        socket: std::path::PathBuf,
    },
    /// The daemon's answer to a request that failed there.
    #[error("{message}")]
    Remote { usage: bool, message: String },
}

impl AdminError {
    /// The operator asked for something wrong (exit code 2), rather than something failing.
    pub fn is_usage(&self) -> bool {
        match self {
            AdminError::UnknownTarget { .. }
            | AdminError::BadRequest(_)
            | AdminError::NoEvent(_) => true,
            AdminError::Action(e) => e.is_usage(),
            AdminError::Backup(e) => e.is_usage(),
            AdminError::Remote { usage, .. } => *usage,
            AdminError::State(_) | AdminError::Open(_) | AdminError::NeedsDaemon { .. } => false,
        }
    }

    /// The error as it travels over the socket: its kind and its whole message chain.
    pub fn to_wire(&self) -> WireError {
        let mut message = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            message.push_str(&format!(": {s}"));
            source = s.source();
        }
        WireError {
            kind: if self.is_usage() { "usage" } else { "runtime" }.into(),
            error: message,
        }
    }
}

/// An error on the wire: `{"kind": "usage" | "runtime", "error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    pub kind: String,
    pub error: String,
}

impl From<WireError> for AdminError {
    fn from(w: WireError) -> Self {
        AdminError::Remote {
            usage: w.kind == "usage",
            message: w.error,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListRequest {
    /// One connector, or all.
    pub target: Option<String>,
    pub kind: ListKind,
    /// Most entries per connector.
    pub limit: usize,
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
    /// Deliver again the events received in `[since, until)` (`until`: up to the cursor).
    Since {
        target: String,
        since: DateTime<Utc>,
        until: Option<DateTime<Utc>>,
    },
    /// Re-queue the connector's dead letters.
    Dead { target: String },
}

impl ReplayRequest {
    pub fn target(&self) -> &str {
        match self {
            ReplayRequest::Range { target, .. }
            | ReplayRequest::Since { target, .. }
            | ReplayRequest::Dead { target } => target,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayResponse {
    pub target: String,
    /// Events newly queued for delivery.
    pub requeued: u64,
    /// Anything the operator should know about what was not queued.
    pub note: Option<String>,
}

/// `ess show`: one of the two.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShowRequest {
    pub seq: Option<Seq>,
    pub key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRequest {
    /// Absolute path of the new file; must not exist.
    pub to: std::path::PathBuf,
}

/// An operator action, as sent over the socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum ActionRequest {
    Pause {
        reason: String,
    },
    Resume,
    Retry,
    Skip {
        seq: Seq,
        reason: String,
    },
    Settle {
        how: SettleHow,
        seq: Option<Seq>,
        reason: String,
    },
}

/// `ess dead ack` or `ess dead discard`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SettleHow {
    Ack,
    Discard,
}

impl From<SettleHow> for Settle {
    fn from(h: SettleHow) -> Settle {
        match h {
            SettleHow::Ack => Settle::Ack,
            SettleHow::Discard => Settle::Discard,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActRequest {
    pub target: String,
    /// Who asks (the client's user; the socket is owner-only).
    pub by: String,
    #[serde(flatten)]
    pub action: ActionRequest,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActResponse {
    pub target: String,
    /// What was done, in a sentence.
    pub done: String,
}

/// What the admin commands need answered: by the daemon on its socket, or offline on the
/// database file ([`backend::Admin`] both).
pub trait AdminBackend: Send + Sync {
    fn list(&self, req: &ListRequest) -> Result<ListResponse, AdminError>;
    fn replay(&self, req: &ReplayRequest, by: &str) -> Result<ReplayResponse, AdminError>;
    fn stats(&self) -> Result<Snapshot, AdminError>;
    fn show(&self, req: &ShowRequest) -> Result<EventReport, AdminError>;
    fn backup(&self, req: &BackupRequest) -> Result<BackupReport, AdminError>;
    fn act(&self, req: &ActRequest) -> Result<ActResponse, AdminError>;
}
