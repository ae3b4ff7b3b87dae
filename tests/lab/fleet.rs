//! A fleet of exclusive IPs over the lab hosts: placing them and reading where they are.

use std::collections::BTreeMap;
use std::time::Duration;

use super::monitor::has_ip;
use super::{wait_for, Lab};

/// The 20 exclusive IPs of the fault scenarios.
pub fn vips() -> Vec<String> {
    (100..120).map(|i| format!("198.51.100.{i}")).collect()
}

/// A lab with `hosts` agents at `ttl`, an etcd of `members`, and the 20 IPs placed.
pub fn lab_with_vips(hosts: usize, members: usize, ttl: &str) -> Lab {
    lab_with_vips_and(hosts, members, &["--lease-ttl", ttl])
}

/// The same with the agents' flags `args`.
pub fn lab_with_vips_and(hosts: usize, members: usize, args: &[&str]) -> Lab {
    let mut lab = Lab::with_cluster(hosts, members);
    for i in 0..hosts {
        lab.start_agent(i, args);
    }
    let registered = wait_for(Duration::from_secs(10), || {
        (1..=hosts).all(|h| lab.get(&format!("/extip/nodes/h{h}")).is_some())
    });
    assert!(registered.is_some(), "agents did not register");
    // One transaction: every agent sees the whole set at once and places it balanced,
    // so no rebalancing follows later in a test.
    let pairs: Vec<(String, String)> = vips()
        .iter()
        .map(|ip| (format!("/extip/ips/{ip}"), "{}".into()))
        .collect();
    lab.put_many(&pairs);
    let all: Vec<usize> = (0..hosts).collect();
    assert!(
        wait_for(Duration::from_secs(10), || all_served(&lab, &all)).is_some(),
        "the IPs were not placed"
    );
    lab
}

/// Every host but `except`.
pub fn live(hosts: usize, except: Option<usize>) -> Vec<usize> {
    (0..hosts).filter(|&h| Some(h) != except).collect()
}

/// Which of `hosts` has each IP on `lo`, read with `ip -j addr`.
pub fn placement(lab: &Lab, hosts: &[usize]) -> BTreeMap<String, Vec<usize>> {
    let seen: Vec<(usize, Vec<String>)> =
        hosts.iter().map(|&h| (h, lab.addresses(h, "lo"))).collect();
    vips()
        .into_iter()
        .map(|ip| {
            let on = seen
                .iter()
                .filter(|(_, a)| has_ip(a, &ip))
                .map(|(h, _)| *h)
                .collect();
            (ip, on)
        })
        .collect()
}

/// Each IP on exactly one of `hosts`.
pub fn all_served(lab: &Lab, hosts: &[usize]) -> bool {
    placement(lab, hosts).values().all(|on| on.len() == 1)
}

/// The IPs on `host`.
pub fn held_by(lab: &Lab, host: usize) -> Vec<String> {
    placement(lab, &[host])
        .into_iter()
        .filter(|(_, on)| !on.is_empty())
        .map(|(ip, _)| ip)
        .collect()
}

/// The host holding the most IPs (so a fault on it moves something).
pub fn busiest(lab: &Lab, hosts: usize) -> usize {
    (0..hosts).max_by_key(|&h| held_by(lab, h).len()).unwrap()
}

/// The lease each claim hangs on, read with `etcdctl -w fields`.
pub fn claim_leases(lab: &Lab) -> BTreeMap<String, i64> {
    let out = lab
        .etcdctl(&["get", "--prefix", "-w", "fields", "/extip/claims/"])
        .expect("etcdctl get");
    let mut leases = BTreeMap::new();
    let mut key = String::new();
    for line in out.lines() {
        if let Some(k) = line.strip_prefix("\"Key\" : ") {
            key = k.trim_matches('"').to_string();
        } else if let Some(l) = line.strip_prefix("\"Lease\" : ") {
            leases.insert(key.clone(), l.trim().parse().unwrap_or_default());
        }
    }
    leases
}
