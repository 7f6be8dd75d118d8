pub mod backoff;
pub mod schedule;
