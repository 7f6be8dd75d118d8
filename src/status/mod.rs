//! What an operator and a monitoring system can see of a running appliance: the status page
//! (`/`), Prometheus metrics (`/metrics`), `/healthz` and `/api/status`, served with
//! tiny_http on `status.listen` on threads of their own, so that the page keeps answering
//! even when the async runtime is saturated.
//!
//! The data flows one way. A [`StatusSource`] ([`DaemonStatus`] in the daemon) asks the
//! state module ([`crate::state`]) for a [`Snapshot`]; every page, JSON answer and scrape
//! renders one fresh snapshot. Counters and histograms that only the hot
//! paths know (events accepted, delivery latency...) are recorded through the cheap,
//! cloneable [`Metrics`] handle, which is also the ingest's and the connectors' hooks.
//!
//! Invariant: `status` never writes. The HTTP side reaches the state only through
//! [`StatusSource`], and [`DaemonStatus`] only through the state module's read functions.
//! It never shows payload contents: a [`Snapshot`] has no field that could hold one, and
//! `last_error` must be a message about the failure, not the record.

mod hooks;
mod metrics;
mod page;
mod process;
mod server;
mod source;
mod text;

pub use metrics::{Metrics, REJECT_REASONS, STATES, TargetMetrics};
pub use page::{human_bytes, human_duration};
pub use server::{StatusServer, serve};
pub use source::DaemonStatus;
pub use text::render_text;

pub use crate::state::{
    Condition, ConnectorReport, ConnectorState, FeedStatus, HealthStatus, Snapshot,
};

/// Where the status data comes from: implemented by the daemon over the state module.
///
/// Both methods are called on the status server's threads for every request, so they must
/// be quick (read-only transactions, no waiting on the async runtime) and must not panic.
pub trait StatusSource: Send + Sync + 'static {
    /// The current state of the appliance, or why it could not be read.
    fn snapshot(&self) -> Result<Snapshot, crate::state::Error>;
    /// Whether the ingest takes events (and if not, why), and which connectors have been
    /// blocked too long: what `/healthz` answers. Cheap: no database read.
    fn health(&self) -> HealthStatus;
}
