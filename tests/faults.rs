//! Safety under faults, in the lab: 3 hosts, 20 exclusive IPs, `--lease-ttl 3s`.
//! Holders are counted in two views throughout each scenario: a client asking for
//! every IP by ARP (the wire: two answering hosts fail the test) and the hosts'
//! address tables (reported: a killed or frozen host keeps its fenced addresses until
//! the backstop lifetime ends, but does not answer for them).

mod lab;

use std::time::{Duration, Instant};

use lab::fleet::{self, all_served, busiest, held_by, live, placement, vips};
use lab::holders::HolderMonitor;
use lab::monitor::{AddressEvents, OverlapMonitor};
use lab::{wait_for, Lab};

const TTL: &str = "3s";
const TTL_SECS: u64 = 3;
/// A backstop lifetime shorter than the default (60 s) so the tests can watch it work.
const LIFETIME_SECS: u64 = 10;

fn lab_with_vips(hosts: usize) -> Lab {
    let lifetime = format!("{LIFETIME_SECS}s");
    fleet::lab_with_vips_and(
        hosts,
        1,
        &["--lease-ttl", TTL, "--address-lifetime", &lifetime],
    )
}

/// The kernel lifetimes (valid_life_time, seconds) of the lab's VIPs on host 0.
fn vip_lifetimes(lab: &Lab) -> Vec<u64> {
    let out = lab::run(
        "ip",
        &["-n", &lab.hosts[0].ns, "-j", "addr", "show", "dev", "lo"],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| {
            a["local"]
                .as_str()
                .is_some_and(|l| l.starts_with("198.51.100."))
        })
        .map(|a| a["valid_life_time"].as_u64().unwrap())
        .collect()
}

#[test]
fn exclusive_addresses_carry_a_backstop_lifetime_that_is_kept_fresh() {
    let lab = lab_with_vips(1);
    let backstop = LIFETIME_SECS;
    let first = vip_lifetimes(&lab);
    assert_eq!(first.len(), 20);
    // A slow backstop behind the fence: far beyond the lease, never forever.
    assert!(
        first
            .iter()
            .all(|&l| (2 * TTL_SECS..=backstop).contains(&l)),
        "lifetimes {first:?}, backstop {backstop} s"
    );
    // Over more than half a lifetime nothing expires and nothing falls below half:
    // the agent refreshes them (a round when the oldest is half used).
    let events = AddressEvents::start(&lab.hosts[0].ns);
    let mut lowest = u64::MAX;
    let started = Instant::now();
    let until = started + Duration::from_secs(backstop / 2 + 3);
    let mut last = first.clone();
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(500));
        last = vip_lifetimes(&lab);
        lowest = lowest.min(last.iter().copied().min().unwrap_or(0));
    }
    let deleted = events.deletions("198.51.100.");
    assert!(
        deleted.is_empty(),
        "addresses expired while held: {deleted:?}"
    );
    assert_eq!(last.len(), 20, "{last:?}");
    assert!(lowest + 2 >= backstop / 2, "a lifetime fell to {lowest} s");
    // Unrefreshed, each would have lost the seconds that passed.
    let unrefreshed = first.iter().copied().max().unwrap() + 1 - started.elapsed().as_secs();
    assert!(
        last.iter().all(|&l| l > unrefreshed),
        "not refreshed: {first:?} then {last:?}"
    );
}

#[test]
fn sigkill_with_the_host_up_never_overlaps_and_recovers_within_ttl_plus_1s() {
    let mut lab = lab_with_vips(3);
    let victim = busiest(&lab, 3);
    let had = held_by(&lab, victim);
    let monitor = HolderMonitor::start(&mut lab, &[0, 1, 2], &vips());
    let start = Instant::now();
    lab.kill(victim); // the host and its link stay up
    let others = live(3, Some(victim));
    let took = wait_for(Duration::from_secs(TTL_SECS + 5), || {
        all_served(&lab, &others)
    });
    std::thread::sleep(Duration::from_millis(300));
    // The dead host lists its fenced addresses until the backstop lifetime ends; what
    // must never happen is two hosts answering.
    monitor.stop().assert_one_answering("SIGKILL");
    let took = took.expect("all IPs served again");
    eprintln!("SIGKILL: {} IPs moved in {took:?}", had.len());
    assert!(
        took <= Duration::from_secs(TTL_SECS + 1),
        "recovery took {took:?}"
    );
    assert!(
        start.elapsed() > Duration::from_secs(1),
        "moved before the lease could expire"
    );
    // The backstop: the kernel removes the dead agent's addresses by itself.
    let backstop = Duration::from_secs(LIFETIME_SECS);
    let gone = wait_for(backstop + Duration::from_secs(3), || {
        held_by(&lab, victim).is_empty()
    });
    assert!(
        gone.is_some(),
        "the kernel did not expire the dead agent's addresses within {backstop:?}"
    );
    eprintln!(
        "SIGKILL: the dead host's addresses left its table {:?} after the kill (backstop {backstop:?})",
        start.elapsed()
    );
}

#[test]
fn sigstop_for_three_ttls_never_overlaps_and_the_thawed_agent_adds_nothing_stale() {
    let mut lab = lab_with_vips(3);
    let victim = busiest(&lab, 3);
    let monitor = HolderMonitor::start(&mut lab, &[0, 1, 2], &vips());
    lab.signal(victim, "STOP");
    let others = live(3, Some(victim));
    let took = wait_for(Duration::from_secs(TTL_SECS + 5), || {
        all_served(&lab, &others)
    });
    std::thread::sleep(Duration::from_secs(3 * TTL_SECS).saturating_sub(took.unwrap_or_default()));
    lab.signal(victim, "CONT");
    std::thread::sleep(Duration::from_secs(2));
    let holders = monitor.stop();
    holders.assert_one_answering("SIGSTOP");
    let took = took.expect("all IPs served while the agent was frozen");
    assert!(
        took <= Duration::from_secs(TTL_SECS + 1),
        "recovery took {took:?}"
    );
    // Whatever the thawed agent holds now, etcd says it holds.
    for ip in held_by(&lab, victim) {
        let claim = lab
            .get(&format!("/extip/claims/{ip}/0"))
            .unwrap_or_default();
        assert!(
            claim.contains(&format!("\"{}\"", lab.hosts[victim].name)),
            "{ip} added without its claim: {claim}"
        );
    }
    assert!(
        all_served(&lab, &[0, 1, 2]),
        "{:?}",
        placement(&lab, &[0, 1, 2])
    );
    eprintln!(
        "SIGSTOP: recovered in {took:?} ({} samples)",
        holders.table.rounds
    );
}

/// The lease ID a claim key hangs on, read with `etcdctl -w json`.
fn claim_lease(lab: &Lab, ip: &str) -> i64 {
    let out = lab
        .etcdctl(&["get", "-w", "json", &format!("/extip/claims/{ip}/0")])
        .expect("etcdctl get");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    v["kvs"][0]["lease"].as_i64().expect("claim has a lease")
}

#[test]
fn upgrade_by_sighup_loses_no_ping_and_removes_no_address() {
    let mut lab = Lab::new(3);
    for i in 0..3 {
        lab.start_agent(i, &["--lease-ttl", TTL]);
    }
    let vip = "198.51.100.10";
    lab.put(&format!("/extip/ips/{vip}"), "{}");
    let holder = wait_for(Duration::from_secs(5), || lab.holders(vip).len() == 1)
        .map(|_| lab.holders(vip)[0])
        .expect("placed");
    let lease_before = claim_lease(&lab, vip);
    let client = lab.add_client();
    let via = format!("192.0.2.{}", holder + 1);
    lab::run(
        "ip",
        &[
            "-n",
            &client,
            "route",
            "add",
            &format!("{vip}/32"),
            "via",
            &via,
        ],
    );
    let events = AddressEvents::start(&lab.hosts[holder].ns);
    let ping = std::process::Command::new("ip")
        .args([
            "netns", "exec", &client, "ping", "-n", "-q", "-i", "0.01", "-c", "400", "-W", "1", vip,
        ])
        .output();
    // The documented upgrade: replace the binary, then `systemctl reload extip-agent`,
    // which sends SIGHUP. Two upgrades while the ping runs.
    std::thread::sleep(Duration::from_millis(1000));
    lab.signal(holder, "HUP");
    std::thread::sleep(Duration::from_millis(1500));
    lab.signal(holder, "HUP");
    let ping = ping.expect("ping");
    let deleted = events.deletions(vip);
    let summary = String::from_utf8_lossy(&ping.stdout).into_owned();
    assert!(
        summary.contains("400 packets transmitted, 400 received"),
        "{summary}"
    );
    assert!(deleted.is_empty(), "an address was removed: {deleted:?}");
    assert_eq!(lab.holders(vip), vec![holder]);
    assert_eq!(
        claim_lease(&lab, vip),
        lease_before,
        "the claim moved to a new lease"
    );
    let restarted = wait_for(Duration::from_secs(5), || {
        lab.agent_log(holder)
            .matches("extip agent starting")
            .count()
            == 3
    });
    let log = lab.agent_log(holder);
    assert!(restarted.is_some(), "not re-executed twice:\n{log}");
}

#[test]
fn a_down_data_interface_hands_its_ips_over_at_once_and_rejoins() {
    let mut lab = Lab::new(3);
    lab.add_data_plane();
    for i in 0..3 {
        lab.start_agent(i, &["--lease-ttl", TTL, "--interface", "eth1"]);
    }
    let vip = "198.51.100.10";
    lab.put(&format!("/extip/ips/{vip}"), "{}");
    let on_eth1 = |lab: &Lab| -> Vec<usize> {
        (0..3)
            .filter(|&h| lab::monitor::has_ip(&lab.addresses(h, "eth1"), vip))
            .collect()
    };
    assert!(wait_for(Duration::from_secs(5), || on_eth1(&lab).len() == 1).is_some());
    let holder = on_eth1(&lab)[0];
    let monitor = OverlapMonitor::start(lab.namespaces(&[0, 1, 2]), vec![vip.into()]);
    lab.exec(holder, &["ip", "link", "set", "eth1", "down"]);
    let took = wait_for(Duration::from_secs(TTL_SECS + 2), || {
        let on = on_eth1(&lab);
        on.len() == 1 && on[0] != holder
    });
    std::thread::sleep(Duration::from_millis(200));
    let report = monitor.stop();
    assert!(
        report.overlaps.is_empty(),
        "overlaps: {:?}",
        report.overlaps
    );
    let took = took.expect("another host serves the IP");
    eprintln!("eth1 down: moved in {took:?}");
    assert!(took <= Duration::from_secs(TTL_SECS + 1), "took {took:?}");
    lab.exec(holder, &["ip", "link", "set", "eth1", "up"]);
    std::thread::sleep(Duration::from_millis(500));
    let node = format!("/extip/nodes/{}", lab.hosts[holder].name);
    assert!(lab.get(&node).is_some(), "the host left the cluster");
    assert!(lab.agent_log(holder).contains("interface state changed"));
}
