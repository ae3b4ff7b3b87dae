//! Routing end to end: agents with `--export-routes`, BIRD on every host announcing
//! exactly what extip holds, a BIRD router installing ECMP routes, a client behind it.
//! Checked on the router with `ip -j route`, never with extip's own code.

mod lab;

use std::time::{Duration, Instant};

use lab::routing::{
    holder_gateways, lost_pings, ping, wait_routes_match_holders, RouterDaemon, Routing, Sessions,
    CLIENT, ROUTED_ARGS,
};
use lab::{wait_for, Lab};

const TTL: &str = "3s";
/// A killed agent's exported route leaves with its address when the backstop address
/// lifetime ends: by default with `--export-routes`, two TTLs (6 s here).
const ARGS: [&str; 2] = ["--lease-ttl", TTL];

/// Every scenario runs twice: BIRD on the router (`bird::…`) and FRR (`frr::…`).
macro_rules! on_both_routers {
    ($($scenario:ident),* $(,)?) => {
        mod bird {
            $(#[test]
            fn $scenario() {
                super::$scenario(super::RouterDaemon::Bird)
            })*
        }
        mod frr {
            $(#[test]
            fn $scenario() {
                super::$scenario(super::RouterDaemon::Frr)
            })*
        }
    };
}

on_both_routers!(
    the_router_learns_exactly_the_holders_and_follows_every_change,
    ipv6_is_routed_like_ipv4_and_a_killed_agents_routes_leave_with_its_addresses,
    a_killed_agents_fenced_routes_leave_the_router_when_its_fence_closes,
    with_bfd_the_router_drops_a_lost_host_within_about_a_second,
);

fn routing(sessions: Sessions, router: RouterDaemon) -> Routing {
    Routing { sessions, router }
}

fn routed_lab(router: RouterDaemon) -> (Lab, String, String) {
    Lab::routed_with(3, &ARGS, routing(Sessions::Two, router))
}

fn the_router_learns_exactly_the_holders_and_follows_every_change(daemon: RouterDaemon) {
    let (mut lab, router, client) = routed_lab(daemon);
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
    lab.start_agent(stopping, &[&ARGS[..], &ROUTED_ARGS[..]].concat());
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
        .filter(|d| {
            !d.starts_with("192.0.2.")
                && !d.starts_with("2001:db8:ffff::")
                && !d.starts_with("fe80::")
        })
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

fn ipv6_is_routed_like_ipv4_and_a_killed_agents_routes_leave_with_its_addresses(
    daemon: RouterDaemon,
) {
    // `withdraw`: shared IPs are fenced and get the backstop lifetime like exclusive
    // ones (with the default `keep` a dead agent's shared IPs stay, by design).
    let dual = [
        &ARGS[..],
        &["--allowed-cidr", "198.51.100.0/24,2001:db8::/32"],
        &["--on-etcd-loss", "withdraw"],
    ]
    .concat();
    // One session: the kernel's removal of the addresses is what is tested here, not
    // the fence cutting the session of fenced routes (the test after this one).
    let (mut lab, router, _client) = Lab::routed_with(3, &dual, routing(Sessions::One, daemon));
    // Added by hand, in the range the router accepts: never announced.
    lab.exec(0, &["ip", "addr", "add", "2001:db8:5::99/128", "dev", "lo"]);
    let (v4, v6) = ("198.51.100.40", "2001:db8:5::40");
    for ip in [v4, v6] {
        lab.put(&format!("/extip/ips/{ip}"), r#"{"replicas":"all"}"#);
        assert!(
            wait_routes_match_holders(&lab, &router, ip, 3).is_some(),
            "{ip}: router {:?}, holders {:?}",
            lab.router_next_hops(&router, ip),
            holder_gateways(&lab, ip)
        );
    }
    let learned = lab.router_destinations(&router);
    assert!(learned.contains(&v6.to_string()), "{learned:?}");
    assert!(
        !learned.iter().any(|d| d.contains("2001:db8:5::99")),
        "{learned:?}"
    );

    // An IPv6 address removed by hand: the kernel keeps its route but clears the
    // route's source; the agent adds the address back and must renew the route too,
    // or the host would stay unannounced.
    lab.exec(2, &["ip", "addr", "del", &format!("{v6}/128"), "dev", "lo"]);
    let sourced = format!("src {v6}");
    let renewed = wait_for(Duration::from_secs(10), || {
        lab.exec(2, &["ip", "-6", "route", "show", "proto", "88"])
            .contains(&sourced)
            && lab.router_next_hops(&router, v6).len() == 3
            && lab.holders(v6).len() == 3
    });
    renewed.unwrap_or_else(|| {
        let table = lab.exec(2, &["ip", "-6", "route", "show", "proto", "88"]);
        panic!(
            "not renewed: {table}, router {:?}",
            lab.router_next_hops(&router, v6)
        )
    });

    // SIGKILL: the agent cannot withdraw anything; its addresses run out (two TTLs)
    // and each family's route must leave the router with them.
    let start = Instant::now();
    lab.kill(1);
    // When each address left the dead host, and when its route left the router.
    let (mut gone, mut unaddressed) = ([None, None], [None, None]);
    wait_for(Duration::from_secs(15), || {
        let on_host = lab.addresses(1, "lo");
        for (k, ip) in [v4, v6].iter().enumerate() {
            let hop = lab::routing::gateway(1, ip);
            if unaddressed[k].is_none() && !lab::monitor::has_ip(&on_host, ip) {
                unaddressed[k] = Some(start.elapsed());
            }
            if gone[k].is_none() && !lab.router_next_hops(&router, ip).contains(&hop) {
                gone[k] = Some(start.elapsed());
            }
        }
        gone.iter().all(Option::is_some)
    });
    let gone4 = gone[0].unwrap_or_else(|| {
        let addrs = lab.exec(1, &["ip", "addr", "show", "dev", "lo"]);
        let table = lab.exec(1, &["ip", "route", "show", "proto", "88"]);
        panic!(
            "the killed agent's IPv4 route stayed: router {:?}; its lo: {addrs}; its routes: {table}",
            lab.router_next_hops(&router, v4)
        )
    });
    let gone6 = gone[1].unwrap_or_else(|| {
        let table = lab.exec(1, &["ip", "-6", "route", "show", "proto", "88"]);
        panic!("the killed agent's IPv6 route stayed; its table: {table}")
    });
    eprintln!(
        "SIGKILL: the dead agent's IPv4 address left its host after {:?} and its route the \
         router after {gone4:?}; IPv6: {:?} and {gone6:?} (TTL {TTL}, address lifetime 6s)",
        unaddressed[0], unaddressed[1]
    );
    // The IPv4 bound of the test above: address lifetime, renewal at half use, the
    // kernel's check, BIRD's scan. Generous, not a timing goal.
    assert!(
        gone6 < Duration::from_secs(10),
        "IPv6 route gone after {gone6:?}"
    );
    for ip in [v4, v6] {
        assert_eq!(lab.router_next_hops(&router, ip).len(), 2, "{ip}");
    }
}

fn a_killed_agents_fenced_routes_leave_the_router_when_its_fence_closes(daemon: RouterDaemon) {
    fenced_routes_leave_with_the_fence(routing(Sessions::Two, daemon));
}

/// Exclusive IPv4 and IPv6 IPs pinned to h1 and shared IPs of both families on every
/// host; h1's agent is killed and the fenced routes must leave with its fence.
fn fenced_routes_leave_with_the_fence(setup: Routing) {
    // Addresses that outlive the test: only the fence can take the routes away.
    let args = [
        &ARGS[..],
        &["--allowed-cidr", "198.51.100.0/24,2001:db8::/32"],
        &["--address-lifetime", "60s"],
    ]
    .concat();
    let (mut lab, router, client) = Lab::routed_with(3, &args, setup);
    // Added by hand, in the ranges the router accepts: never announced.
    lab.exec(0, &["ip", "addr", "add", "198.51.100.99/32", "dev", "lo"]);
    let (v4, v6) = ("198.51.100.60", "2001:db8:6::60");
    let (shared, shared6) = ("198.51.100.61", "2001:db8:6::61");
    for ip in [v4, v6] {
        lab.put(&format!("/extip/ips/{ip}"), r#"{"nodes":["h1"]}"#);
        assert!(
            wait_routes_match_holders(&lab, &router, ip, 1).is_some(),
            "{ip}: router {:?}, holders {:?}; router's sessions:\n{}\nh1's routes:\n{}",
            lab.router_next_hops(&router, ip),
            holder_gateways(&lab, ip),
            lab.router_sessions(&router, setup.router),
            lab.birdc("h1", "show protocols all fenced"),
        );
        assert_eq!(lab.holders(ip), [0], "{ip} is pinned to h1");
    }
    for ip in [shared, shared6] {
        lab.put(&format!("/extip/ips/{ip}"), r#"{"replicas":"all"}"#);
        assert!(
            wait_routes_match_holders(&lab, &router, ip, 3).is_some(),
            "{ip}: router {:?}",
            lab.router_next_hops(&router, ip)
        );
    }
    let learned = lab.router_destinations(&router);
    assert!(
        !learned.iter().any(|d| d.starts_with("198.51.100.99")),
        "a hand-added address was announced: {learned:?}"
    );

    // The client's view: h1 answers for the exclusive IP through the router.
    assert_eq!(
        lost_pings(ping(&client, v4, 20)),
        0,
        "{v4} unreachable before"
    );
    let ns = lab.hosts[0].ns.clone();
    lab.kill(0);
    // No renewal after the kill: the element's expiry is when the fence closes.
    let dark_at = lab::fence::try_fence_deadline(&ns).unwrap_or_else(lab::fence::epoch);
    let gone = wait_for(Duration::from_secs(15), || {
        [v4, v6]
            .iter()
            .all(|ip| lab.router_next_hops(&router, ip).is_empty())
    });
    let gone_at = lab::fence::epoch();
    let on_host = lab.addresses(0, "lo");
    gone.unwrap_or_else(|| {
        panic!(
            "the fenced routes stayed: {v4} via {:?}, {v6} via {:?}; h1's lo {on_host:?}",
            lab.router_next_hops(&router, v4),
            lab.router_next_hops(&router, v6)
        )
    });
    let after_dark = gone_at - dark_at;
    eprintln!("SIGKILL: fenced routes left the router {after_dark:.3} s after the fence closed");
    // Listed on h1 and still unanswered: no host holds it on the wire (it is pinned to h1).
    assert_eq!(
        lost_pings(ping(&client, v4, 20)),
        20,
        "{v4} answered after the kill"
    );
    for ip in [v4, v6] {
        assert!(
            lab::monitor::has_ip(&on_host, ip),
            "{ip} left h1's address table: the fence, not the kernel, must withdraw it"
        );
    }
    assert_eq!(
        holder_gateways(&lab, shared).len(),
        3,
        "the dead agent's shared IP stays on its host (--on-etcd-loss keep)"
    );
    for ip in [shared, shared6] {
        assert_eq!(
            lab.router_next_hops(&router, ip).len(),
            3,
            "{ip}: the shared session is untouched by the fence"
        );
    }
    // BFD's 300 ms and BIRD's processing: a generous bound, not the timing goal.
    assert!(after_dark < 3.0, "routes gone {after_dark:.3} s after dark");
}

fn with_bfd_the_router_drops_a_lost_host_within_about_a_second(daemon: RouterDaemon) {
    let (lab, router, _client) = routed_lab(daemon);
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
