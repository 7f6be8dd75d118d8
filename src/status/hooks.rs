//! [`Metrics`] as the hooks the ingest and the connector tasks report through, so wiring
//! metrics into the daemon is `hooks: Arc::new(metrics.clone())` in both places.
//!
//! Invariant: recording only: these hooks never block on I/O or fail the caller.

use std::time::Duration;

use chrono::Utc;

use super::Metrics;
use crate::event::{Event, Record};
use crate::target::DeliveryError;

impl crate::ingest::IngestHooks for Metrics {
    fn accepted(&self, accepted: u64, duplicates: u64, latency: Duration) {
        self.ingest_accepted(accepted);
        self.ingest_duplicates(duplicates);
        self.observe_ingest_latency(latency.as_secs_f64());
    }

    fn rejected(&self, reason: &str) {
        self.ingest_rejected(reason);
    }
}

impl crate::connector::Hooks for Metrics {
    fn delivered(&self, connector: &str, events: &[(Event, Record)]) {
        let target = self.for_target(connector);
        target.delivered(events.len() as u64);
        let now = Utc::now();
        for (event, _) in events {
            let secs = (now - event.received_at)
                .num_microseconds()
                .unwrap_or(i64::MAX);
            target.observe_delivery_latency(secs.max(0) as f64 / 1e6);
        }
    }

    fn failed(&self, connector: &str, _error: &DeliveryError) {
        self.delivery_failed(connector);
    }

    fn ambiguous(&self, connector: &str) {
        self.drop_ambiguous(connector);
    }
}
