pub mod config;
pub mod event;
pub mod feed;
pub mod ledger;
pub mod logging;
pub mod map;
pub mod status;
pub mod target;
