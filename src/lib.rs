//! ESS — External System Sync: a durable, exactly-once courier from a modern platform to
//! legacy systems.
//!
//! One event's path, in the order the modules are listed:
//!
//! 1. [`ingest`] accepts `POST /v1/events` over mutual TLS and validates the batch;
//! 2. [`feed`] appends it to the redb feed in a group commit and fsyncs; then ingest says 202;
//! 3. [`connector`] (one task per map file) reads the feed from its cursor, in `seq` order;
//! 4. [`map`] turns each selected event into record bytes (fixed-width, CSV, JSON, SOAP);
//! 5. [`target`] delivers the records (file, SFTP, HTTP) idempotently;
//! 6. [`ledger`] commits cursor, target checkpoint, retries and dead letters in the same file;
//! 7. [`state`] answers every question about where an event or a connector stands (receipts,
//!    [`status`] page and metrics, [`admin`] commands), from the ledger and the feed;
//! 8. [`serve`] runs it all as a daemon; [`cli`], `send`, [`init`], `check` and
//!    `maptest` are the commands (private: only [`cli`] calls them).

pub mod admin;
mod check;
pub mod cli;
pub mod client;
pub mod config;
pub mod connector;
pub mod event;
pub mod fault;
pub mod feed;
pub mod health;
pub mod ingest;
pub mod init;
pub mod ledger;
mod logging;
pub mod map;
mod maptest;
mod notify;
mod send;
pub mod serve;
pub mod source;
pub mod state;
pub mod status;
pub mod target;
