//! `extip-sync`: Kubernetes Services into etcd desired keys.
fn main() {}
