//! extip: IP mobility for bare-metal hosts, coordinated through etcd.

pub mod agent;
pub mod cli;
pub mod commands;
pub mod config;
pub mod metrics;
pub mod model;
pub mod net;
pub mod observed;
pub mod placement;
pub mod plan;
pub mod pools;
pub mod sorted;
pub mod store;
#[cfg(feature = "sync")]
pub mod sync;
pub mod vouch;
