//! Cost of one planning pass at scale: `cargo bench --bench plan` (no root needed).
//! M desired IPs over N nodes, as one agent sees them: nothing claimed yet (initial
//! placement) and everything claimed (steady state). The agent plans a few times per
//! reconcile, so this bounds how fast a large cluster can converge.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};
use std::time::Instant;

use extip::model::{DesiredIp, NodeValue};
use extip::observed::{Claims, Holder};
use extip::placement;
use extip::plan::{plan, Link, Me, Mode, World};

fn main() {
    let none = BTreeSet::new();
    let labels = BTreeMap::new();
    let allowed = vec!["2001:db8::/32".parse().unwrap()];
    println!("| IPs | nodes | Ideal::new + assign, nothing claimed | plan (ideal cached), nothing claimed | plan, all claimed |");
    println!("|---|---|---|---|---|");
    for (ips, nodes) in [(1_000, 3), (10_000, 10)] {
        let desired: BTreeMap<IpAddr, DesiredIp> = (0..ips)
            .map(|i| {
                let ip = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, (i >> 16) as u16, i as u16);
                (IpAddr::V6(ip), DesiredIp::exclusive())
            })
            .collect();
        let names: Vec<String> = (1..=nodes).map(|n| format!("h{n}")).collect();
        let node_map: BTreeMap<String, NodeValue> = names
            .iter()
            .map(|n| (n.clone(), NodeValue::new(n, &["lo"])))
            .collect();
        let t = Instant::now();
        let ideal = placement::Ideal::new(&desired, &node_map);
        let assignment = placement::assign(&ideal, &Claims::new(), &node_map);
        let assign_ms = t.elapsed().as_secs_f64() * 1e3;
        let mut full = Claims::new();
        for (&(ip, slot), node) in &assignment {
            // Lease n for node hn: h1 (this agent) holds lease 1.
            let lease = node[1..].parse().unwrap_or(0);
            let holder = Holder {
                node: Some(node.clone()),
                lease,
            };
            full.entry(ip).or_default().insert(slot, holder);
        }
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
        let mut timings = Vec::new();
        for claims in [Claims::new(), full] {
            let owned = BTreeSet::new();
            let overdue = BTreeSet::new();
            let world = World {
                desired: &desired,
                claims: &claims,
                owned: &owned,
                nodes: &node_map,
                overdue: &overdue,
                assignment: &Default::default(),
            };
            let t = Instant::now();
            let assignment = extip::placement::assign(&ideal, &claims, &node_map);
            let world = World {
                assignment: &assignment,
                ..world
            };
            let actions = plan(&me, &world);
            timings.push((t.elapsed().as_secs_f64() * 1e3, actions.len()));
        }
        println!(
            "| {ips} | {nodes} | {assign_ms:.1} ms | {:.1} ms ({} actions) | {:.1} ms ({} actions) |",
            timings[0].0, timings[0].1, timings[1].0, timings[1].1
        );
    }
}
