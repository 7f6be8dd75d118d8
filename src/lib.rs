pub mod config;
pub mod connector;
pub mod event;
pub mod feed;
pub mod ledger;
pub mod map;
pub mod target;
pub mod admin;
