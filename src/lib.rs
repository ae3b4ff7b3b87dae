//! extip: IP mobility for bare-metal hosts, coordinated through etcd.

pub mod model;
pub mod plan;
