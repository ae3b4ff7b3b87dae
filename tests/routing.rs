//! Routing end to end: agents with `--export-routes`, BIRD on every host announcing
//! exactly what extip holds, a BIRD router installing ECMP routes, a client behind it.
//! Checked on the router with `ip -j route`, never with extip's own code.

mod lab;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lab::routing::CLIENT;
use lab::{wait_for, Lab};

const TTL: &str = "3s";

/// A lab whose 3 hosts run agents with export routes and BIRD, plus router and client.
fn routed_lab() -> (Lab, String, String) {
    let mut lab = Lab::new(3);
    let (router, client) = lab.add_router();
    lab.start_router_bird(&router);
    for i in 0..3 {
        lab.start_agent(i, &["--lease-ttl", TTL, "--export-routes"]);
        lab.start_host_bird(i);
    }
    (lab, router, client)
}

/// The hosts' bridge addresses that hold `ip` on `lo`, as the router would name them.
fn holder_gateways(lab: &Lab, ip: &str) -> Vec<String> {
    let mut gw: Vec<String> = lab
        .holders(ip)
        .into_iter()
        .map(|h| format!("192.0.2.{}", h + 1))
        .collect();
    gw.sort();
    gw
}

fn wait_routes_match_holders(lab: &Lab, router: &str, ip: &str, count: usize) -> Option<Duration> {
    wait_for(Duration::from_secs(20), || {
        let holders = holder_gateways(lab, ip);
        holders.len() == count && lab.router_next_hops(router, ip) == holders
    })
}

/// Ping `ip` from the client every 10 ms, `count` times, in the background.
fn ping(client: &str, ip: &str, count: u32) -> Child {
    Command::new("ip")
        .args([
            "netns", "exec", client, "ping", "-n", "-q", "-i", "0.01", "-W", "1",
        ])
        .args(["-c", &count.to_string(), ip])
        .stdout(Stdio::piped())
        .spawn()
        .expect("ping")
}

fn lost(ping: Child) -> u32 {
    let out = String::from_utf8_lossy(&ping.wait_with_output().expect("ping").stdout).into_owned();
    let line = out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .expect(&out)
        .to_string();
    let nums: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    nums[0] - nums[1]
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
    let failed = lost(pinger);
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
    lab.start_agent(stopping, &["--lease-ttl", TTL, "--export-routes"]);
    let single = "198.51.100.32";
    lab.put(&format!("/extip/ips/{single}"), "{}");
    assert!(wait_routes_match_holders(&lab, &router, single, 1).is_some());
    let old = lab.holders(single)[0];
    let start = Instant::now();
    lab.kill(old);
    let followed = wait_for(Duration::from_secs(15), || {
        let hops = lab.router_next_hops(&router, single);
        hops.len() == 1 && hops[0] != format!("192.0.2.{}", old + 1)
    });
    let followed = followed.unwrap_or_else(|| {
        let table = lab.exec(old, &["ip", "route", "show", "proto", "88"]);
        panic!(
            "router did not follow: hops {:?}, holders {:?}, old host's routes: {table}",
            lab.router_next_hops(&router, single),
            holder_gateways(&lab, single)
        )
    });
    eprintln!("exclusive move after SIGKILL: router follows in {followed:?} (TTL {TTL})");
    assert!(start.elapsed() < Duration::from_secs(15));

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
