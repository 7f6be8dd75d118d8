//! Shared parts of the tests that drive pickup sources in-process: a source's map file
//! compiled (every problem in the panic message), and a feed in memory.
#![allow(dead_code)]

use std::path::Path;

use ess::feed::Store;
use ess::source::SourceSpec;

/// Every problem, one a line.
pub(crate) fn problems<E: ToString>(e: &[E]) -> String {
    e.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The source map file at `path`, compiled (timezone UTC); panics with its problems.
pub(crate) fn compile(path: &Path) -> SourceSpec {
    ess::source::load_one(path, chrono_tz::UTC).unwrap_or_else(|e| panic!("{}", problems(&e)))
}

/// A feed (and ledger) in memory.
pub(crate) fn memory_store() -> Store {
    Store::in_memory().unwrap()
}
