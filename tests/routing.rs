//! Routing end to end: agents with `--export-routes`, BIRD on every host announcing
//! exactly what extip holds, a BIRD router installing ECMP routes, a client behind it.
//! Checked on the router with `ip -j route`, never with extip's own code.

mod lab;

use std::time::{Duration, Instant};

use lab::routing::{holder_gateways, lost_pings, ping, wait_routes_match_holders, CLIENT};
use lab::{wait_for, Lab};

const TTL: &str = "3s";
/// A killed agent's exported route leaves with its address when the backstop address
/// lifetime ends: by default with `--export-routes`, two TTLs (6 s here).
const ARGS: [&str; 2] = ["--lease-ttl", TTL];

fn routed_lab() -> (Lab, String, String) {
    Lab::routed(3, &ARGS)
}

#[test]
fn the_router_learns_exactly_the_holders_and_follows_every_change() {
    let (mut lab, router, client) = routed_lab();
    lab.exec(0, &["ip", "addr", "add", "198.51.100.99/32", "dev", "lo"]);
    let shared = "198.51.100.30";
    lab.put(&format!("/extip/ips/{shared}"), r#"{"replicas":2}"#);
    assert!(
        wait_routes_match_holders(&lab, &router, shared, 2).is_some(),
        "replicas 2: {:?}",
        lab.router_next_hops(&router, shared)
    );
    let all = "198.51.100.31";
    lab.put(&format!("/extip/ips/{all}"), r#"{"replicas":"all"}"#);
    assert!(
        wait_routes_match_holders(&lab, &router, all, 3).is_some(),
        "all: {:?}",
        lab.router_next_hops(&router, all)
    );

    // Graceful stop of a holder of the shared IP while the client pings it.
    let stopping = lab.holders(shared)[0];
    let pinger = ping(&client, shared, 300);
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    lab.signal(stopping, "TERM");
    let dropped = wait_for(Duration::from_secs(10), || {
        !lab.router_next_hops(&router, shared)
            .contains(&format!("192.0.2.{}", stopping + 1))
    });
    let failed = lost_pings(pinger);
    let dropped = dropped.expect("the router dropped the stopped host");
    eprintln!(
        "graceful stop: next hop dropped after {:?}, {failed} of 300 pings lost",
        start.elapsed().min(dropped)
    );
    assert_eq!(failed, 0, "pings lost during a graceful stop");
    let retaken = wait_routes_match_holders(&lab, &router, shared, 2);
    assert!(
        retaken.is_some(),
        "a third host did not take the slot: holders {:?}, router {:?}",
        holder_gateways(&lab, shared),
        lab.router_next_hops(&router, shared)
    );

    // An exclusive IP moves when its holder dies; the router follows.
    assert_eq!(lab.wait_exit(stopping, Duration::from_secs(5)), Some(0));
    lab.start_agent(stopping, &[&ARGS[..], &["--export-routes"]].concat());
    let single = "198.51.100.32";
    lab.put(&format!("/extip/ips/{single}"), "{}");
    assert!(wait_routes_match_holders(&lab, &router, single, 1).is_some());
    let old = lab.holders(single)[0];
    let start = Instant::now();
    lab.kill(old);
    let old_hop = format!("192.0.2.{}", old + 1);
    let new_hop = wait_for(Duration::from_secs(15), || {
        lab.router_next_hops(&router, single)
            .iter()
            .any(|h| *h != old_hop)
    });
    let followed = wait_for(Duration::from_secs(15), || {
        let hops = lab.router_next_hops(&router, single);
        hops.len() == 1 && hops[0] != old_hop
    });
    let new_hop = new_hop.expect("the new holder's route reached the router");
    let gone = start.elapsed();
    followed.unwrap_or_else(|| {
        let table = lab.exec(old, &["ip", "route", "show", "proto", "88"]);
        panic!(
            "router did not follow: hops {:?}, holders {:?}, old host's routes: {table}",
            lab.router_next_hops(&router, single),
            holder_gateways(&lab, single)
        )
    });
    eprintln!(
        "exclusive move after SIGKILL: new holder's route at the router after {new_hop:?}, \
         the dead agent's route gone after {gone:?} (TTL {TTL}, address lifetime 6s)"
    );
    // Lease expiry, then the address lifetime (renewed at half use) plus the kernel's
    // one-second check: generous bounds, not timing goals.
    assert!(
        new_hop < Duration::from_secs(6),
        "new route after {new_hop:?}"
    );
    assert!(
        gone < Duration::from_secs(10),
        "old route gone after {gone:?}"
    );

    // Nothing but extip's IPs: not the hand-added /32, not loopback, not link addresses.
    let learned: Vec<String> = lab
        .router_destinations(&router)
        .into_iter()
        .filter(|d| !d.starts_with("192.0.2."))
        .collect();
    for d in &learned {
        assert!(
            [shared, all, single].contains(&d.as_str()),
            "router learned {d}: {learned:?}"
        );
    }
    assert!(!learned
        .iter()
        .any(|d| d.contains("198.51.100.99") || d.starts_with("127.")));
}

#[test]
fn with_bfd_the_router_drops_a_lost_host_within_about_a_second() {
    let (lab, router, _client) = routed_lab();
    let all = "198.51.100.31";
    lab.put(&format!("/extip/ips/{all}"), r#"{"replicas":"all"}"#);
    assert!(wait_routes_match_holders(&lab, &router, all, 3).is_some());
    let start = Instant::now();
    lab.cut(1);
    let dropped = wait_for(Duration::from_secs(10), || {
        !lab.router_next_hops(&router, all)
            .contains(&"192.0.2.2".to_string())
    });
    let dropped = dropped.expect("the router dropped the lost host");
    eprintln!("host loss: router dropped the next hop after {dropped:?}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "BFD did not act: {dropped:?}"
    );
    let _ = CLIENT;
}
