//! Cost of planning at scale: `cargo bench --bench plan` (no root needed).
//! M desired IPs over N nodes, as one agent sees them: the ideal placement, the free-slot
//! assignment with nothing claimed (initial placement), one planning pass then, a pass
//! with everything claimed (steady state), and the assignment after a host is lost. Up
//! to 100 nodes × 100,000 IPs: the size docs/benchmarks.md plans for, on paper and here.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};
use std::time::Instant;

use extip::model::{DesiredIp, NodeValue};
use extip::observed::{Claims, Holder};
use extip::placement::{self, Assignment, Ideal};
use extip::plan::{plan, Link, Me, Mode, World};

/// Resident memory of this process, KiB, from /proc.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn millis(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// `ips` exclusive IPv6 IPs and nodes h1..h`nodes`.
fn cluster(ips: u32, nodes: usize) -> (BTreeMap<IpAddr, DesiredIp>, BTreeMap<String, NodeValue>) {
    let desired = (0..ips)
        .map(|i| {
            let ip = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, (i >> 16) as u16, i as u16);
            (IpAddr::V6(ip), DesiredIp::exclusive())
        })
        .collect();
    let node_map = (1..=nodes)
        .map(|n| {
            let name = format!("h{n}");
            (name.clone(), NodeValue::new(&name, &["lo"]))
        })
        .collect();
    (desired, node_map)
}

/// The claims once every free slot went where `assignment` says; node hN holds lease N.
fn claimed(assignment: &Assignment) -> Claims {
    let mut full = Claims::new();
    for (&(ip, slot), node) in assignment {
        let holder = Holder {
            node: Some(node.clone()),
            lease: node[1..].parse().unwrap_or(0),
        };
        full.entry(ip).or_default().insert(slot, holder);
    }
    full
}

/// Lowest and highest count of slots per node in `assignment`.
fn spread(assignment: &Assignment) -> (usize, usize) {
    let mut per: BTreeMap<&str, usize> = BTreeMap::new();
    for node in assignment.values() {
        *per.entry(node).or_default() += 1;
    }
    let min = per.values().copied().min().unwrap_or(0);
    (min, per.values().copied().max().unwrap_or(0))
}

fn main() {
    let none = BTreeSet::new();
    let labels = BTreeMap::new();
    let allowed = vec!["2001:db8::/32".parse().unwrap()];
    let lo = [Link {
        name: "lo".into(),
        ifindex: 1,
        up: true,
    }];
    let me = Me {
        node: "h1",
        lease: Some(1),
        links: &lo,
        allowed: &allowed,
        mode: Mode::Serve,
        keep_shared_when_fenced: true,
        draining: false,
        give_away: &none,
        conflicts: &none,
        labels: &labels,
    };
    println!("| IPs | nodes | Ideal::new | assign, nothing claimed (per node) | plan, nothing claimed | assign + plan, all claimed | host lost: derived ideal + assign (its IPs per survivor) | memory |");
    println!("|---|---|---|---|---|---|---|---|");
    for (ips, nodes) in [(1_000, 3), (10_000, 10), (100_000, 100)] {
        let rss = rss_kib();
        let (desired, node_map) = cluster(ips, nodes);
        let t = Instant::now();
        let ideal = Ideal::new(&desired, &node_map);
        let ideal_ms = millis(t);
        let t = Instant::now();
        let assignment = placement::assign(&ideal, &Claims::new(), &node_map);
        let assign_ms = millis(t);
        let (lo_n, hi_n) = spread(&assignment);
        let (owned, overdue) = (BTreeSet::new(), BTreeSet::new());
        let empty = Claims::new();
        let world = World {
            desired: &desired,
            claims: &empty,
            owned: &owned,
            nodes: &node_map,
            overdue: &overdue,
            assignment: &assignment,
        };
        let t = Instant::now();
        let first = plan(&me, &world);
        let plan_ms = millis(t);
        let full = claimed(&assignment);
        let t = Instant::now();
        let none_free = placement::assign(&ideal, &full, &node_map);
        let steady = plan(
            &me,
            &World {
                claims: &full,
                assignment: &none_free,
                ..world
            },
        );
        let steady_ms = millis(t);
        // h2 is lost: its claims vanish with its lease, and it leaves the node records.
        let mut survivors = node_map.clone();
        survivors.remove("h2");
        let mut after = full.clone();
        after.retain(|_, slots| slots.values().all(|h| h.node.as_deref() != Some("h2")));
        let t = Instant::now();
        // What a survivor computes: the placement derived without the lost node.
        let survivors_ideal = ideal.without(&survivors).expect("only h2 went");
        let refill = placement::assign(&survivors_ideal, &after, &survivors);
        let lost_ms = millis(t);
        let (lo_r, hi_r) = spread(&refill);
        let memory = rss_kib().saturating_sub(rss) / 1024;
        println!(
            "| {ips} | {nodes} | {ideal_ms:.1} ms | {assign_ms:.1} ms ({lo_n}-{hi_n}) | \
             {plan_ms:.1} ms ({} actions) | {steady_ms:.1} ms ({} actions) | \
             {lost_ms:.1} ms ({} IPs: {lo_r}-{hi_r}) | {memory} MiB |",
            first.len(),
            steady.len(),
            refill.len()
        );
    }
}
