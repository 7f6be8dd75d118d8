//! Retry back-off of a connector (`retry:` in a map file): how long to wait before the next
//! attempt at the head event, and what to do once `max_tries` attempts have failed.
//!
//! Invariant: [`RetryPolicy::delay`] is a pure function of the attempt count and a jitter
//! value the caller draws, never above `max_delay` and never below half the un-jittered
//! delay, so a restarted daemon computing the same inputs gets the same answer and tests
//! need no randomness.

use std::path::Path;
use std::time::Duration;

use crate::config::connector::RetrySpec;
use crate::config::{Diagnostic, parse_duration};

/// What a connector does with an event that failed `max_tries` times or was refused
/// permanently by its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Keep retrying (at `max_delay`) and hold every later event, so order is kept.
    Block,
    /// Move the event to the dead letters and go on with the next one.
    Park,
}

/// A connector's validated `retry:` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay before the second attempt; doubles with every further failure.
    pub base: Duration,
    /// Upper bound of any single delay.
    pub max_delay: Duration,
    /// Attempts (the first one included) before `on_failure` applies.
    pub max_tries: u32,
    pub on_failure: OnFailure,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_secs(2),
            max_delay: Duration::from_secs(15 * 60),
            max_tries: 20,
            on_failure: OnFailure::Block,
        }
    }
}

impl RetryPolicy {
    /// Validates a map file's `retry:` block (`None`: the defaults). Every problem is
    /// returned, each at the value to fix.
    pub fn from_spec(
        spec: Option<&RetrySpec>,
        file: &Path,
    ) -> Result<RetryPolicy, Vec<Diagnostic>> {
        let mut policy = RetryPolicy::default();
        let Some(spec) = spec else { return Ok(policy) };
        let mut errs = Vec::new();
        if let Some(base) = &spec.base {
            match parse_duration(&base.value) {
                Ok(d) if d.is_zero() => {
                    errs.push(Diagnostic::at(file, base, "retry.base must be more than 0"))
                }
                Ok(d) => policy.base = d,
                Err(e) => errs.push(Diagnostic::at(file, base, format!("retry.base: {e}"))),
            }
        }
        if let Some(max) = &spec.max_delay {
            match parse_duration(&max.value) {
                Ok(d) if d.is_zero() => errs.push(Diagnostic::at(
                    file,
                    max,
                    "retry.max_delay must be more than 0",
                )),
                Ok(d) => {
                    policy.max_delay = d;
                    if errs.is_empty() && d < policy.base {
                        errs.push(Diagnostic::at(
                            file,
                            max,
                            format!(
                                "retry.max_delay ({}) is shorter than retry.base ({})",
                                max.value,
                                fmt_secs(policy.base)
                            ),
                        ));
                    }
                }
                Err(e) => errs.push(Diagnostic::at(file, max, format!("retry.max_delay: {e}"))),
            }
        }
        match spec.max_tries {
            // The raw schema keeps no position for a plain number; point at the file.
            Some(0) => errs.push(Diagnostic::new(
                file,
                1,
                1,
                "retry.max_tries must be at least 1",
            )),
            Some(n) => policy.max_tries = n,
            None => {}
        }
        if let Some(on) = &spec.on_failure {
            match on.value.as_str() {
                "block" => policy.on_failure = OnFailure::Block,
                "park" => policy.on_failure = OnFailure::Park,
                other => errs.push(Diagnostic::at(
                    file,
                    on,
                    format!("retry.on_failure must be block or park, not {other:?}"),
                )),
            }
        }
        if errs.is_empty() {
            Ok(policy)
        } else {
            Err(errs)
        }
    }

    /// The wait after the `attempts`-th failed attempt (1 = the first failure), with
    /// **equal jitter**: the exponential delay `d = min(base * 2^(attempts-1), max_delay)`
    /// is split in half, one half always waited and the other scaled by `jitter`
    /// (in `[0, 1)`, drawn by the caller; values outside are clamped). So the result lies in
    /// `[d/2, d)`: connectors that failed together spread out, and none retries sooner than
    /// half its back-off.
    pub fn delay(&self, attempts: u32, jitter: f64) -> Duration {
        let exp = attempts.saturating_sub(1).min(63);
        let factor = 1u64 << exp;
        let d = u32::try_from(factor)
            .ok()
            .and_then(|f| self.base.checked_mul(f))
            .map_or(self.max_delay, |d| d.min(self.max_delay));
        let jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let half = d / 2;
        half + (d - half).mul_f64(jitter).min(d - half)
    }

    /// Whether `attempts` failures exhaust this policy (then `on_failure` applies).
    pub fn exhausted(&self, attempts: u32) -> bool {
        attempts >= self.max_tries
    }
}

fn fmt_secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::connector::parse;

    fn policy(retry_yaml: &str) -> Result<RetryPolicy, Vec<Diagnostic>> {
        let text =
            format!("target: t\ndeliver: {{kind: file, dir: out, file: a.txt}}\n{retry_yaml}");
        let conn = parse(Path::new("m.yml"), &text).unwrap();
        RetryPolicy::from_spec(conn.file.retry.as_ref(), Path::new("m.yml"))
    }

    #[test]
    fn defaults_when_absent() {
        assert_eq!(policy("").unwrap(), RetryPolicy::default());
        let d = RetryPolicy::default();
        assert_eq!(
            (d.base, d.max_delay, d.max_tries, d.on_failure),
            (
                Duration::from_secs(2),
                Duration::from_secs(900),
                20,
                OnFailure::Block
            )
        );
    }

    #[test]
    fn spec_is_read() {
        let p =
            policy("retry: {base: 1s, max_delay: 1m, max_tries: 3, on_failure: park}\n").unwrap();
        assert_eq!(
            p,
            RetryPolicy {
                base: Duration::from_secs(1),
                max_delay: Duration::from_secs(60),
                max_tries: 3,
                on_failure: OnFailure::Park
            }
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_position() {
        let errs = policy("retry:\n  base: 2 parsecs\n  max_delay: 0s\n  on_failure: explode\n")
            .unwrap_err();
        let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(shown.len(), 3, "{shown:?}");
        assert!(shown[0].starts_with("m.yml:4:9: retry.base"), "{shown:?}");
        assert!(
            shown[1].starts_with("m.yml:5:14: retry.max_delay must be more than 0"),
            "{shown:?}"
        );
        assert!(
            shown[2].starts_with("m.yml:6:15: retry.on_failure must be block or park"),
            "{shown:?}"
        );
        let errs = policy("retry: {base: 10m, max_delay: 1m, max_tries: 0}\n").unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs[0].message.contains("shorter than retry.base"),
            "{errs:?}"
        );
        assert!(
            errs[1].message.contains("max_tries must be at least 1"),
            "{errs:?}"
        );
    }

    #[test]
    fn delay_doubles_is_capped_and_jitter_stays_in_the_upper_half() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(1, 0.0), Duration::from_secs(1));
        assert_eq!(p.delay(1, 0.5), Duration::from_millis(1500));
        assert_eq!(p.delay(2, 0.0), Duration::from_secs(2));
        assert_eq!(p.delay(3, 0.0), Duration::from_secs(4));
        assert_eq!(p.delay(10, 0.0), Duration::from_secs(450)); // 2s*512 = 1024s, capped at 900s
        assert_eq!(p.delay(u32::MAX, 0.0), Duration::from_secs(450));
        assert!(p.delay(u32::MAX, 0.999_999) < Duration::from_secs(900));
        assert_eq!(p.delay(0, 0.0), Duration::from_secs(1));
        // Out-of-range jitter is clamped, never panics.
        assert_eq!(p.delay(1, -3.0), Duration::from_secs(1));
        assert_eq!(p.delay(1, f64::NAN), Duration::from_secs(1));
        assert_eq!(p.delay(1, 7.0), Duration::from_secs(2));
        for n in 1..40 {
            for j in [0.0, 0.25, 0.5, 0.99] {
                assert!(p.delay(n, j) <= p.max_delay);
                assert!(p.delay(n + 1, j) >= p.delay(n, j));
            }
        }
        assert!(!p.exhausted(19));
        assert!(p.exhausted(20));
    }
}
