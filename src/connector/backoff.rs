//! Retry policy (placeholder until the operations branch lands: fixed defaults).

use std::path::Path;
use std::time::Duration;

use crate::config::Diagnostic;
use crate::config::connector::RetrySpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    Block,
    Park,
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max_delay: Duration,
    pub max_tries: u32,
    pub on_failure: OnFailure,
}

impl RetryPolicy {
    pub fn from_spec(
        spec: Option<&RetrySpec>,
        _file: &Path,
    ) -> Result<RetryPolicy, Vec<Diagnostic>> {
        let mut p = RetryPolicy {
            base: Duration::from_secs(2),
            max_delay: Duration::from_secs(900),
            max_tries: 20,
            on_failure: OnFailure::Block,
        };
        if let Some(s) = spec {
            if let Some(b) = &s.base {
                p.base = crate::config::parse_duration(&b.value).unwrap_or(p.base);
            }
            if let Some(m) = s.max_tries {
                p.max_tries = m;
            }
            if s.on_failure.as_ref().is_some_and(|o| o.value == "park") {
                p.on_failure = OnFailure::Park;
            }
        }
        Ok(p)
    }

    pub fn delay(&self, attempts: u32, jitter: f64) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
        exp.min(self.max_delay).mul_f64(0.5 + jitter / 2.0)
    }
}
