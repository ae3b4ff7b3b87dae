//! Dual-stack LoadBalancer Services: `RequireDualStack` gets an IPv4 and an IPv6 IP
//! from pools of those families, both in `kubectl get svc -o json` and both on hosts;
//! without an IPv6 pool it stays pending with a Warning Event, and gets both IPs as
//! soon as one is added. Checked with kubectl, etcdctl and `ip -j addr`.

// The lab and the stand-in API server both include the one-function tests/common/netns.rs.
#![allow(clippy::duplicate_mod)]

mod kube;
mod lab;
mod synclab;

use std::net::IpAddr;
use std::time::Duration;

use lab::{wait_for, Lab};
use synclab::{service, wait_leader, SyncLab};

/// Agents allowed both the IPv4 and the IPv6 documentation ranges.
const DUAL_CIDRS: [&str; 4] = [
    "--allowed-cidr",
    "198.51.100.0/24",
    "--allowed-cidr",
    "2001:db8::/32",
];

/// The ingress IPs of Service `name` as `kubectl get svc -o json` shows them.
fn ingress_ips(s: &SyncLab, name: &str) -> Vec<IpAddr> {
    let json = s.api.kubectl(&["get", "svc", name, "-o", "json"]);
    let svc: serde_json::Value = serde_json::from_str(&json).expect("kubectl JSON");
    svc["status"]["loadBalancer"]["ingress"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["ip"].as_str()?.parse().ok())
        .collect()
}

/// A lab of `hosts` dual-stack agents, the API server and a leading sync.
fn dual_lab(hosts: usize) -> (SyncLab, synclab::SyncReplica) {
    let mut lab = Lab::new(hosts);
    for i in 0..hosts {
        lab.start_agent(i, &DUAL_CIDRS);
    }
    let s = SyncLab::on(lab);
    let sync = s.sync("s1", &[]);
    wait_leader(&s);
    (s, sync)
}

#[test]
fn require_dual_stack_waits_for_an_ipv6_pool_then_gets_both_families_on_hosts() {
    let (s, _sync) = dual_lab(2);
    let spec =
        "  type: LoadBalancer\n  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n";
    s.api.apply(&service("web", spec));
    let warned = wait_for(Duration::from_secs(10), || {
        let events = s.api.events_of("web");
        events.contains("NoPool") && events.contains("IPv6")
    });
    warned.unwrap_or_else(|| panic!("no NoPool Event: {}", s.api.events_of("web")));
    assert!(ingress_ips(&s, "web").is_empty(), "half a dual stack");
    let listed = s
        .lab
        .etcdctl(&["get", "--prefix", "/extip/allocations/", "--keys-only"]);
    assert!(
        listed.unwrap_or_default().trim().is_empty(),
        "something was allocated"
    );

    s.lab
        .extip(&["pool", "add", "lb6", "2001:db8:5::/120", "--auto-assign"]);
    let both = wait_for(Duration::from_secs(15), || {
        ingress_ips(&s, "web").len() == 2
    });
    both.unwrap_or_else(|| panic!("ingress {:?}", ingress_ips(&s, "web")));
    let ips = ingress_ips(&s, "web");
    assert!(
        ips[0].is_ipv4() && ips[1].is_ipv6(),
        "{ips:?}: IPv4 first, as ipFamilies"
    );
    assert!(ips[1].to_string().starts_with("2001:db8:5::"), "{ips:?}");
    for ip in &ips {
        let text = ip.to_string();
        wait_for(Duration::from_secs(10), || s.lab.holders(&text).len() == 1)
            .unwrap_or_else(|| panic!("{ip} on {:?}", s.lab.holders(&text)));
        let desired = s.lab.get(&format!("/extip/ips/{ip}")).expect("desired key");
        assert!(desired.contains("\"default/web\""), "{desired}");
    }
    let v6_record = s
        .lab
        .get("/extip/allocations/default/web/ipv6")
        .expect("IPv6 record");
    assert!(v6_record.contains(&ips[1].to_string()), "{v6_record}");

    // Deleted: both IPs leave the hosts.
    s.api.kubectl(&["delete", "svc", "web"]);
    let gone = wait_for(Duration::from_secs(15), || {
        ips.iter()
            .all(|ip| s.lab.holders(&ip.to_string()).is_empty())
    });
    gone.expect("both IPs withdrawn");
}

#[test]
fn prefer_dual_stack_without_an_ipv6_pool_gets_its_ipv4_ip_quietly() {
    let (s, _sync) = dual_lab(1);
    let spec = "  type: LoadBalancer\n  ipFamilyPolicy: PreferDualStack\n";
    s.api.apply(&service("web", spec));
    wait_for(Duration::from_secs(15), || {
        ingress_ips(&s, "web").len() == 1
    })
    .expect("an IP");
    assert!(ingress_ips(&s, "web")[0].is_ipv4());
    assert!(
        !s.api.events_of("web").contains("Warning"),
        "{}",
        s.api.events_of("web")
    );
}

#[test]
fn routed_both_families_reach_the_router_and_leave_it_when_their_holder_is_killed() {
    use lab::routing::{gateway, wait_routes_match_holders};
    use std::time::Instant;
    let args = [&["--lease-ttl", "3s"][..], &DUAL_CIDRS[..]].concat();
    let (lab, router, _client) = Lab::routed(3, &args);
    let mut s = SyncLab::on(lab);
    s.lab
        .extip(&["pool", "add", "lb6", "2001:db8:5::/120", "--auto-assign"]);
    let _sync = s.sync("s1", &[]);
    wait_leader(&s);
    let spec = "  type: LoadBalancer\n  ipFamilyPolicy: RequireDualStack\n";
    s.api.apply(&service("web", spec));
    wait_for(Duration::from_secs(15), || {
        ingress_ips(&s, "web").len() == 2
    })
    .expect("two IPs");
    let ips: Vec<String> = ingress_ips(&s, "web")
        .iter()
        .map(ToString::to_string)
        .collect();
    for ip in &ips {
        wait_routes_match_holders(&s.lab, &router, ip, 1)
            .unwrap_or_else(|| panic!("{ip}: router {:?}", s.lab.router_next_hops(&router, ip)));
    }
    // SIGKILL every holder (one host, or two when the families landed apart).
    let dead: Vec<usize> = {
        let mut d: Vec<usize> = ips.iter().map(|ip| s.lab.holders(ip)[0]).collect();
        d.dedup();
        d
    };
    let start = Instant::now();
    for &h in &dead {
        s.lab.kill(h);
    }
    let mut left = vec![None; ips.len()];
    let mut moved = vec![None; ips.len()];
    wait_for(Duration::from_secs(20), || {
        for (k, ip) in ips.iter().enumerate() {
            let hops = s.lab.router_next_hops(&router, ip);
            let dead_hops = dead.iter().map(|&h| gateway(h, ip)).collect::<Vec<_>>();
            if left[k].is_none() && !hops.iter().any(|h| dead_hops.contains(h)) {
                left[k] = Some(start.elapsed());
            }
            if moved[k].is_none() && hops.iter().any(|h| !dead_hops.contains(h)) {
                moved[k] = Some(start.elapsed());
            }
        }
        left.iter().chain(&moved).all(Option::is_some)
    });
    for (k, ip) in ips.iter().enumerate() {
        let (gone, new) = (left[k], moved[k]);
        eprintln!(
            "{ip}: the killed holder's route left the router after {gone:?}; a new holder's \
             reached it after {new:?} (TTL 3s; {} host(s) killed)",
            dead.len()
        );
        assert!(gone.is_some(), "{ip}: the dead holder's route stayed");
        assert!(new.is_some(), "{ip}: no new holder's route");
    }
}
