//! Peer vouching in the lab: agents with `--peers on`, nft rules in a host namespace
//! that drop its heartbeats, and one fault run watched on the wire (who answers ARP).

use std::collections::BTreeMap;
use std::time::Duration;

use super::fence::nft;
use super::fleet::{self, placement, vips};
use super::holders::{HolderMonitor, Holders};
use super::{run, wait_for, Lab};

/// The agents' heartbeat port (`--peer-port` default).
pub const PEER_PORT: u16 = 9480;

/// The flags of every peer lab: peers on at their defaults, the lab's 2 s TTL.
pub const PEER_FLAGS: [&str; 4] = ["--peers", "on", "--lease-ttl", "2s"];

/// Which heartbeats a host loses.
#[derive(Debug, Clone, Copy)]
pub enum Direction {
    /// Datagrams arriving at the host (the acks for its heartbeats, its peers' heartbeats).
    Into,
    /// Datagrams the host sends.
    OutOf,
    /// Both.
    Both,
}

/// A lab of `hosts` agents with peers on, an etcd of `members`, the 20 fault IPs placed
/// and every host vouched for by its peers.
pub fn lab_with_peers(hosts: usize, members: usize) -> Lab {
    let lab = fleet::lab_with_vips_and(hosts, members, &PEER_FLAGS);
    lab.wait_vouched(&(0..hosts).collect::<Vec<_>>());
    lab
}

impl Lab {
    /// The `vouch.mode` host `i` published in its node record, as etcdctl shows it.
    pub fn published_mode(&self, i: usize) -> Option<String> {
        let value = self.get(&format!("/extip/nodes/{}", self.hosts[i].name))?;
        let v: serde_json::Value = serde_json::from_str(&value).expect("node record is JSON");
        v["vouch"]["mode"].as_str().map(str::to_string)
    }

    /// Wait until every one of `hosts` publishes mode `peers` (its peers acknowledge it).
    pub fn wait_vouched(&self, hosts: &[usize]) {
        let vouched = wait_for(Duration::from_secs(10), || {
            hosts
                .iter()
                .all(|&i| self.published_mode(i).as_deref() == Some("peers"))
        });
        let modes: Vec<_> = hosts.iter().map(|&i| self.published_mode(i)).collect();
        assert!(
            vouched.is_some(),
            "not every host is vouched for: {modes:?}"
        );
    }

    /// Drop host `i`'s heartbeat datagrams in `direction` (a table of the lab's own in
    /// the host's namespace: to extip it is foreign and must survive the run).
    pub fn drop_heartbeats(&self, i: usize, direction: Direction) {
        let ns = &self.hosts[i].ns;
        nft(ns, "add table inet labcut");
        let (input, output) = match direction {
            Direction::Into => (true, false),
            Direction::OutOf => (false, true),
            Direction::Both => (true, true),
        };
        for (on, hook) in [(input, "input"), (output, "output")] {
            if on {
                nft(
                    ns,
                    &format!(
                        "add chain inet labcut {hook} {{ type filter hook {hook} priority -5; }}"
                    ),
                );
                // Heartbeats and acks both leave from and arrive at the peer port.
                for port in ["dport", "sport"] {
                    nft(
                        ns,
                        &format!("add rule inet labcut {hook} udp {port} {PEER_PORT} drop"),
                    );
                }
            }
        }
    }

    /// Split the peer network into `groups` of hosts: each host drops heartbeats to and
    /// from every host outside its group (etcd and clients stay reachable for all).
    pub fn split_peers(&self, groups: &[&[usize]]) {
        for group in groups {
            for &i in *group {
                let ns = &self.hosts[i].ns;
                nft(ns, "add table inet labcut");
                for hook in ["input", "output"] {
                    nft(
                        ns,
                        &format!(
                            "add chain inet labcut {hook} {{ type filter hook {hook} priority -5; }}"
                        ),
                    );
                }
                let others = (0..self.hosts.len()).filter(|j| !group.contains(j));
                for j in others {
                    // Host j's eth0 address, as the lab gives it.
                    let addr = format!("192.0.2.{}", j + 1);
                    for (hook, side) in [("input", "saddr"), ("output", "daddr")] {
                        nft(
                            ns,
                            &format!(
                                "add rule inet labcut {hook} ip {side} {addr} udp dport {PEER_PORT} drop"
                            ),
                        );
                    }
                }
            }
        }
    }

    /// Undo [`Lab::drop_heartbeats`] and [`Lab::split_peers`].
    pub fn restore_heartbeats(&self, i: usize) {
        let ns = &self.hosts[i].ns;
        if nft(ns, "list tables").contains("inet labcut") {
            nft(ns, "delete table inet labcut");
        }
    }

    /// The names under `<prefix>/revoked/`: hosts whose lease their witnesses revoked.
    pub fn revoked(&self) -> Vec<String> {
        let out = self
            .etcdctl(&["get", "--prefix", "--keys-only", "/extip/revoked/"])
            .expect("etcdctl get");
        out.lines()
            .filter_map(|l| l.strip_prefix("/extip/revoked/"))
            .map(str::to_string)
            .collect()
    }
}

/// An address and an nft table no agent was asked about, planted on every host.
pub struct ForeignState {
    hosts: Vec<usize>,
}

/// The foreign address: outside every allowed CIDR, on the hosts' `lo`.
const FOREIGN_ADDRESS: &str = "203.0.113.77/32";

impl ForeignState {
    /// Plant the foreign address and table on `hosts`.
    pub fn plant(lab: &Lab, hosts: &[usize]) -> Self {
        for &i in hosts {
            let ns = &lab.hosts[i].ns;
            run(
                "ip",
                &["-n", ns, "addr", "add", FOREIGN_ADDRESS, "dev", "lo"],
            );
            nft(ns, "add table inet foreign");
            nft(ns, "add chain inet foreign keep");
            nft(ns, "add rule inet foreign keep counter");
        }
        ForeignState {
            hosts: hosts.to_vec(),
        }
    }

    /// Fail unless every host still has both (and the lab's `labcut` table where one was).
    pub fn assert_untouched(&self, lab: &Lab, what: &str) {
        for &i in &self.hosts {
            let ns = &lab.hosts[i].ns;
            let ip = FOREIGN_ADDRESS.trim_end_matches("/32");
            assert!(
                super::monitor::has_ip(&lab.addresses(i, "lo"), ip),
                "{what}: the foreign address left host {i}"
            );
            let tables = nft(ns, "list tables");
            assert!(
                tables.contains("inet foreign"),
                "{what}: host {i} lost the foreign table: {tables}"
            );
            assert!(
                nft(ns, "list chain inet foreign keep").contains("counter"),
                "{what}: host {i}'s foreign rule changed"
            );
        }
    }
}

/// Watch `hosts` (address tables) and the 20 IPs (wire) while `fault` runs, until
/// `settled` holds (at most 15 s) and 500 ms more; what both views saw.
pub fn watch_fault(
    lab: &mut Lab,
    hosts: &[usize],
    fault: impl FnOnce(&mut Lab),
    mut settled: impl FnMut(&Lab) -> bool,
) -> Holders {
    let monitor = HolderMonitor::start(lab, hosts, &vips());
    std::thread::sleep(Duration::from_millis(300));
    fault(lab);
    let done = wait_for(Duration::from_secs(15), || settled(lab));
    std::thread::sleep(Duration::from_millis(500));
    let holders = monitor.stop();
    assert!(
        done.is_some(),
        "the fault did not settle: {:?}",
        placement(lab, &(0..lab.hosts.len()).collect::<Vec<_>>())
    );
    holders
}

/// Fail if two hosts answered for an IP, or if any IP went unanswered on the wire for
/// longer than `bound`; the silences go to the test's output either way.
pub fn assert_one_answering_and_served(holders: &Holders, what: &str, bound: Duration) {
    holders.assert_one_answering(what);
    let silences = &holders.wire.longest_silence;
    let longest: BTreeMap<String, u128> = silences
        .iter()
        .filter(|(_, d)| **d > Duration::from_millis(50))
        .map(|(ip, d)| (ip.to_string(), d.as_millis()))
        .collect();
    eprintln!("{what}: longest silence per IP over 50 ms (ms): {longest:?}");
    let worst = silences.values().max().copied().unwrap_or_default();
    assert!(
        worst <= bound,
        "{what}: an IP went unanswered for {worst:?} (bound {bound:?}): {longest:?}"
    );
}
