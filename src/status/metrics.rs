//! Prometheus metrics, recorded with the `prometheus-client` crate and rendered in the
//! Prometheus text format (version 0.0.4) for `/metrics`.
//!
//! Two kinds of series. Counters and histograms of things that happen (events accepted,
//! deliveries, latencies) are recorded by the hot paths through [`Metrics`], a cloneable
//! handle whose methods are atomic increments (histograms take a short, uncontended lock
//! inside the crate). The per-target methods look the label up in a read-locked map and
//! allocate its key; a connector task that records per event takes a [`TargetMetrics`]
//! once ([`Metrics::for_target`]) and records without either. Gauges of state (lag, retries, dead letters, feed size) are not kept
//! up to date by anyone: they are filled from a fresh [`Snapshot`] at scrape time, so they
//! can never drift from what the ledger says.
//!
//! Invariant: label values come from connector names and a fixed set of rejection reasons,
//! never from event contents, so the number of series stays bounded.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use super::Snapshot;

/// The reasons `ess_ingest_rejected_total{reason}` is broken down by; each starts at 0 so
/// that dashboards and alerts see the series before the first rejection.
pub const REJECT_REASONS: [&str; 10] = [
    "bad_request",
    "too_large",
    "unsupported_media_type",
    "forbidden",
    "unavailable",
    "internal",
    "timeout",
    "tls",
    "handshake_dropped",
    "busy",
];

/// `Content-Type` of the `/metrics` answer.
pub(super) const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabel {
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    target: String,
    state: String,
}

/// Every value of `ess_connector_state{state}`: a connector has each series, 1 for its
/// state and 0 for the others, so an alert can watch `state="blocked"` from the start.
pub const STATES: [&str; 7] = [
    "ok",
    "retrying",
    "blocked",
    "outside_schedule",
    "paused",
    "corrupted",
    "not_running",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: String,
}

type U64Gauge = Gauge<u64, AtomicU64>;
type F64Gauge = Gauge<f64, AtomicU64>;

/// Cheap, cloneable handle to the appliance's metrics. Clone it into every task that
/// records something; all clones share one registry.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

struct Inner {
    /// Held while a scrape refills the state gauges and encodes, so that two concurrent
    /// scrapes do not interleave one snapshot's gauges with another's.
    registry: Mutex<Registry>,

    ingest_events: Counter,
    ingest_duplicates: Counter,
    ingest_rejected: Family<ReasonLabel, Counter>,
    ingest_latency: Histogram,
    success: Family<TargetLabel, Counter>,
    delivery_failures: Family<TargetLabel, Counter>,
    delivery_latency: Family<TargetLabel, Histogram, fn() -> Histogram>,
    drop_ambiguous: Family<TargetLabel, Counter>,

    // Filled from a Snapshot at scrape time.
    retry_pending: Family<TargetLabel, U64Gauge>,
    dead_letters: Family<TargetLabel, U64Gauge>,
    source_files: Family<SourceLabel, U64Gauge>,
    source_records: Family<SourceLabel, U64Gauge>,
    source_bad: Family<SourceLabel, U64Gauge>,
    source_held: Family<SourceLabel, U64Gauge>,
    source_oldest: Family<SourceLabel, U64Gauge>,
    lag_events: Family<TargetLabel, U64Gauge>,
    oldest_pending: Family<TargetLabel, F64Gauge>,
    connector_state: Family<StateLabel, U64Gauge>,
    process: super::process::ProcessMetrics,
    /// The connectors of the last scrape, so the series of one removed by a reload go.
    targets: Mutex<std::collections::BTreeSet<String>>,
    feed_last_seq: U64Gauge,
    feed_size: U64Gauge,
    free_disk: U64Gauge,
    min_free_disk: U64Gauge,
    uptime: U64Gauge,
}

/// Ingest latency (request read to 202, fsync included): 0.5 ms to ~16 s.
fn ingest_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0005, 2.0, 16)
}

/// Delivery latency (received_at to delivered): 10 ms to ~12 h, since a schedule window
/// or a target outage can hold events for hours.
fn delivery_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 4.0, 12))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every ESS series registered.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let inner = Inner {
            registry: Mutex::new(Registry::default()),
            ingest_events: Counter::default(),
            ingest_duplicates: Counter::default(),
            ingest_rejected: Family::default(),
            ingest_latency: Histogram::new(ingest_buckets()),
            success: Family::default(),
            delivery_failures: Family::default(),
            delivery_latency: Family::new_with_constructor(delivery_histogram),
            drop_ambiguous: Family::default(),
            retry_pending: Family::default(),
            dead_letters: Family::default(),
            source_files: Family::default(),
            source_records: Family::default(),
            source_bad: Family::default(),
            source_held: Family::default(),
            source_oldest: Family::default(),
            lag_events: Family::default(),
            oldest_pending: Family::default(),
            connector_state: Family::default(),
            process: super::process::ProcessMetrics::default(),
            targets: Mutex::new(std::collections::BTreeSet::new()),
            feed_last_seq: U64Gauge::default(),
            feed_size: U64Gauge::default(),
            free_disk: U64Gauge::default(),
            min_free_disk: U64Gauge::default(),
            uptime: U64Gauge::default(),
        };
        // The text encoder appends `_total` to counters and the unit to names registered
        // with one: `ess_ingest_events` is scraped as `ess_ingest_events_total`.
        registry.register(
            "ess_ingest_events",
            "Events accepted and committed to the feed (duplicates not counted)",
            inner.ingest_events.clone(),
        );
        registry.register(
            "ess_ingest_duplicates",
            "Events whose idempotency key was already in the feed",
            inner.ingest_duplicates.clone(),
        );
        registry.register(
            "ess_ingest_rejected",
            "Ingest requests refused, by reason",
            inner.ingest_rejected.clone(),
        );
        registry.register_with_unit(
            "ess_ingest_latency",
            "Time from request to 202, commit and fsync included",
            Unit::Seconds,
            inner.ingest_latency.clone(),
        );
        registry.register(
            "ess_success",
            "Events delivered to the target",
            inner.success.clone(),
        );
        registry.register(
            "ess_delivery_failures",
            "Failed delivery attempts",
            inner.delivery_failures.clone(),
        );
        registry.register_with_unit(
            "ess_delivery_latency",
            "Time from an event's received_at to its delivery",
            Unit::Seconds,
            inner.delivery_latency.clone(),
        );
        registry.register(
            "ess_drop_ambiguous",
            "Deliveries to a file drop sent again although an interrupted attempt may have reached the legacy side (the file it wrote to was moved, emptied or replaced before its commit): at least once, not exactly once",
            inner.drop_ambiguous.clone(),
        );
        registry.register(
            "ess_retry_pending",
            "Failed attempts at the event waiting for a retry (0: none waits)",
            inner.retry_pending.clone(),
        );
        registry.register(
            "ess_dead_letters",
            "Events parked as dead letters and not yet replayed",
            inner.dead_letters.clone(),
        );
        registry.register(
            "ess_source_files_taken",
            "Files a pickup source took whole into the feed",
            inner.source_files.clone(),
        );
        registry.register(
            "ess_source_records",
            "Events a pickup source's records became",
            inner.source_records.clone(),
        );
        registry.register(
            "ess_source_bad_records",
            "Records a pickup source could not read (dead letters)",
            inner.source_bad.clone(),
        );
        registry.register(
            "ess_source_files_held",
            "Files a pickup source holds back (held, parked, refused)",
            inner.source_held.clone(),
        );
        registry.register(
            "ess_source_oldest_unread_seconds",
            "Age of the oldest file waiting in a pickup source's folder (0: none)",
            inner.source_oldest.clone(),
        );
        registry.register(
            "ess_lag_events",
            "Events after the connector's cursor that it selects (its events: filter)",
            inner.lag_events.clone(),
        );
        registry.register_with_unit(
            "ess_oldest_pending",
            "Age of the oldest event the connector has still to deliver (0: none waits)",
            Unit::Seconds,
            inner.oldest_pending.clone(),
        );
        registry.register(
            "ess_connector_state",
            "1 for the connector's current state, 0 for the others",
            inner.connector_state.clone(),
        );
        inner.process.register(&mut registry);
        registry.register(
            "ess_feed_last_seq",
            "Newest committed seq",
            inner.feed_last_seq.clone(),
        );
        registry.register_with_unit(
            "ess_feed_size",
            "Size of the feed database file",
            Unit::Bytes,
            inner.feed_size.clone(),
        );
        registry.register_with_unit(
            "ess_free_disk",
            "Free space on the file system of the data directory",
            Unit::Bytes,
            inner.free_disk.clone(),
        );
        registry.register_with_unit(
            "ess_min_free_disk",
            "retention.min_free_disk: below it the ingest refuses events",
            Unit::Bytes,
            inner.min_free_disk.clone(),
        );
        registry.register_with_unit(
            "ess_uptime",
            "Time since the daemon started",
            Unit::Seconds,
            inner.uptime.clone(),
        );
        registry.register(
            "ess_build",
            "Version of the running ess",
            Info::new(VersionLabel {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            }),
        );
        for reason in REJECT_REASONS {
            drop(inner.ingest_rejected.get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            }));
        }
        // Move the filled registry in; the placeholder above was only there so that the
        // struct could be built before registration borrowed its fields.
        *lock(&inner.registry) = registry;
        Metrics {
            inner: Arc::new(inner),
        }
    }

    /// `n` events were accepted and committed (after fsync).
    pub fn ingest_accepted(&self, n: u64) {
        self.inner.ingest_events.inc_by(n);
    }

    /// `n` events of a request were duplicates of events already in the feed.
    pub fn ingest_duplicates(&self, n: u64) {
        self.inner.ingest_duplicates.inc_by(n);
    }

    /// A request was refused; `reason` is one of [`REJECT_REASONS`].
    pub fn ingest_rejected(&self, reason: &str) {
        self.inner
            .ingest_rejected
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// One ingest request took `secs` from start to 202.
    pub fn observe_ingest_latency(&self, secs: f64) {
        self.inner.ingest_latency.observe(secs);
    }

    /// `n` events were delivered to `target`.
    pub fn delivered(&self, target: &str, n: u64) {
        self.inner.success.get_or_create(&label(target)).inc_by(n);
    }

    /// An event reached `target` `secs` after its `received_at`.
    pub fn observe_delivery_latency(&self, target: &str, secs: f64) {
        self.inner
            .delivery_latency
            .get_or_create(&label(target))
            .observe(secs);
    }

    /// A delivery attempt to `target` failed (transient or permanent).
    pub fn delivery_failed(&self, target: &str) {
        self.inner
            .delivery_failures
            .get_or_create(&label(target))
            .inc();
    }

    /// A delivery to `target` went out again, possibly doubling what an interrupted
    /// attempt handed over.
    pub fn drop_ambiguous(&self, target: &str) {
        self.inner
            .drop_ambiguous
            .get_or_create(&label(target))
            .inc();
    }

    /// The handles of one target's delivery series, looked up once: a connector task keeps
    /// it and records with plain atomic operations, no label lookup or allocation.
    pub fn for_target(&self, target: &str) -> TargetMetrics {
        let l = label(target);
        TargetMetrics {
            success: self.inner.success.get_or_create_owned(&l),
            failures: self.inner.delivery_failures.get_or_create_owned(&l),
            latency: self.inner.delivery_latency.get_or_create_owned(&l),
        }
    }

    /// Fills the state gauges from `snapshot` and renders every series in the Prometheus
    /// text format.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let inner = &*self.inner;
        let registry = lock(&inner.registry);
        // Connectors removed by a reload must not linger as stale series.
        inner.retry_pending.clear();
        inner.dead_letters.clear();
        inner.lag_events.clear();
        inner.oldest_pending.clear();
        inner.connector_state.clear();
        for f in [
            &inner.source_files,
            &inner.source_records,
            &inner.source_bad,
            &inner.source_held,
            &inner.source_oldest,
        ] {
            f.clear();
        }
        for src in &snapshot.sources {
            let l = SourceLabel {
                source: src.name.clone(),
            };
            inner.source_files.get_or_create(&l).set(src.files_taken);
            inner.source_records.get_or_create(&l).set(src.records);
            inner.source_bad.get_or_create(&l).set(src.bad_records);
            inner
                .source_held
                .get_or_create(&l)
                .set(src.files_held.len() as u64);
            inner
                .source_oldest
                .get_or_create(&l)
                .set(src.oldest_unread_age_secs.unwrap_or(0));
        }
        for c in &snapshot.connectors {
            let l = label(&c.name);
            inner
                .retry_pending
                .get_or_create(&l)
                .set(c.retry.as_ref().map_or(0, |r| u64::from(r.attempts)));
            inner.dead_letters.get_or_create(&l).set(c.dead_letters);
            inner
                .lag_events
                .get_or_create(&l)
                .set(c.lag_events + c.requeued);
            inner
                .oldest_pending
                .get_or_create(&l)
                .set(c.oldest_pending_secs.unwrap_or(0.0));
            let now = state_name(&c.state);
            for state in STATES {
                let key = StateLabel {
                    target: c.name.clone(),
                    state: state.to_owned(),
                };
                inner
                    .connector_state
                    .get_or_create(&key)
                    .set(u64::from(state == now));
            }
            // Counters and histograms exist from the start, at 0.
            drop(inner.success.get_or_create(&l));
            drop(inner.delivery_failures.get_or_create(&l));
            drop(inner.delivery_latency.get_or_create(&l));
        }
        let now: std::collections::BTreeSet<String> =
            snapshot.connectors.iter().map(|c| c.name.clone()).collect();
        let mut known = inner.targets.lock().unwrap_or_else(|p| p.into_inner());
        for gone in known.difference(&now) {
            let l = label(gone);
            inner.success.remove(&l);
            inner.delivery_failures.remove(&l);
            inner.delivery_latency.remove(&l);
        }
        *known = now;
        drop(known);
        inner.process.refresh();
        inner.feed_last_seq.set(snapshot.feed.last_seq);
        inner.feed_size.set(snapshot.feed.size_bytes);
        inner.free_disk.set(snapshot.free_disk_bytes);
        inner.min_free_disk.set(snapshot.min_free_disk_bytes);
        inner.uptime.set(snapshot.uptime_secs.unwrap_or(0));
        let mut out = String::new();
        // Writing into a String cannot fail, and every metric type registered above has
        // an encoder; an Err here would be a bug in the crate, so render what we have.
        if let Err(e) = prometheus_text::encode(&mut out, &registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// One target's delivery series (see [`Metrics::for_target`]); the same series as
/// [`Metrics::delivered`] and friends record into.
#[derive(Clone, Debug)]
pub struct TargetMetrics {
    success: Counter,
    failures: Counter,
    latency: Histogram,
}

impl TargetMetrics {
    /// `n` events were delivered.
    pub fn delivered(&self, n: u64) {
        self.success.inc_by(n);
    }

    /// An event was delivered `secs` after its `received_at`.
    pub fn observe_delivery_latency(&self, secs: f64) {
        self.latency.observe(secs);
    }

    /// A delivery attempt failed.
    pub fn delivery_failed(&self) {
        self.failures.inc();
    }
}

/// The `state` label of a connector state (its JSON name).
fn state_name(state: &crate::state::ConnectorState) -> &'static str {
    use crate::state::ConnectorState as S;
    match state {
        S::Ok => "ok",
        S::Retrying => "retrying",
        S::Blocked => "blocked",
        S::OutsideSchedule { .. } => "outside_schedule",
        S::Paused => "paused",
        S::Corrupted { .. } => "corrupted",
        S::NotRunning => "not_running",
    }
}

fn label(target: &str) -> TargetLabel {
    TargetLabel {
        target: target.to_owned(),
    }
}

/// A poisoned lock only means a scrape panicked half-way; the registry is still usable.
fn lock(m: &Mutex<Registry>) -> std::sync::MutexGuard<'_, Registry> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
