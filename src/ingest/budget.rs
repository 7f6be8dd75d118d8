//! The budget for request bodies in flight (`ingest.max_inflight_bytes`): the memory all
//! requests being read, parsed and committed may hold together, whatever the load.
//!
//! A request reserves its body's bytes before they are buffered (all of a declared
//! `Content-Length` at once; a chunked body as its buffer grows) and gives them back when
//! it has been answered. A reservation that does not fit is refused at once — the request
//! is answered 503 + `Retry-After` instead of waiting, so a flood of large bodies can
//! neither grow memory nor hold the connections of the requests that do fit.
//!
//! Invariant: the sum of live [`Reservation`]s never exceeds the budget's total.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes that request bodies may hold at once.
#[derive(Debug)]
pub struct BodyBudget {
    total: u64,
    used: AtomicU64,
}

/// Bytes one request holds; given back on drop.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<BodyBudget>,
    bytes: u64,
}

impl BodyBudget {
    pub fn new(total: u64) -> Arc<BodyBudget> {
        Arc::new(BodyBudget {
            total,
            used: AtomicU64::new(0),
        })
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// Bytes reserved now.
    pub fn in_use(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    fn take(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(n).filter(|&after| after <= self.total)
            })
            .is_ok()
    }

    /// `n` bytes, if they fit.
    pub fn reserve(self: &Arc<Self>, n: u64) -> Option<Reservation> {
        self.take(n).then(|| Reservation {
            budget: self.clone(),
            bytes: n,
        })
    }
}

impl Reservation {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Grows the reservation to `n` bytes (no-op if it holds that much); false if that does
    /// not fit, and then it keeps what it had.
    pub fn grow_to(&mut self, n: u64) -> bool {
        if n <= self.bytes {
            return true;
        }
        if self.budget.take(n - self.bytes) {
            self.bytes = n;
            true
        } else {
            false
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_fit_in_the_total_and_come_back_on_drop() {
        let budget = BodyBudget::new(100);
        let a = budget.reserve(60).unwrap();
        assert!(budget.reserve(41).is_none(), "over the total");
        let mut b = budget.reserve(0).unwrap();
        assert!(b.grow_to(40));
        assert!(!b.grow_to(41), "one byte too many");
        assert_eq!(b.bytes(), 40, "a refused growth keeps what it had");
        assert_eq!(budget.in_use(), 100);
        drop(a);
        assert_eq!(budget.in_use(), 40);
        assert!(b.grow_to(100));
        drop(b);
        assert_eq!(budget.in_use(), 0);
        assert!(budget.reserve(u64::MAX).is_none(), "no overflow");
    }
}
