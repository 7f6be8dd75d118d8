pub mod config;
pub mod event;
pub mod feed;
pub mod ledger;
pub mod map;
pub mod notify;
pub mod target;
