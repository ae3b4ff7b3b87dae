//! Core acceptance in the lab: 3 hosts, `--lease-ttl 2s`, `--interface lo`,
//! `--allowed-cidr 198.51.100.0/24`. Checked with `ip -j addr` and `etcdctl` only.

mod lab;

use std::time::Duration;

use lab::holders::{lose_host, HolderMonitor};
use lab::monitor::has_ip;
use lab::{wait_for, Lab};

const VIP: &str = "198.51.100.10";

fn node_of_claim(lab: &Lab, ip: &str) -> Option<String> {
    let value = lab.get(&format!("/extip/claims/{ip}/0"))?;
    let v: serde_json::Value = serde_json::from_str(&value).expect("claim is JSON");
    v["node"].as_str().map(str::to_string)
}

/// Start all agents and wait until every one has registered.
fn lab_with_agents(hosts: usize) -> Lab {
    let mut lab = Lab::new(hosts);
    lab.start_all();
    let all_up = wait_for(Duration::from_secs(10), || {
        (1..=hosts).all(|i| lab.get(&format!("/extip/nodes/h{i}")).is_some())
    });
    assert!(all_up.is_some(), "agents did not register");
    lab
}

fn wait_single_holder(lab: &Lab, ip: &str, timeout: Duration) -> (usize, Duration) {
    let took = wait_for(timeout, || lab.holders(ip).len() == 1)
        .unwrap_or_else(|| panic!("{ip} not on exactly one host: {:?}", lab.holders(ip)));
    (lab.holders(ip)[0], took)
}

#[test]
fn desired_ip_lands_on_exactly_one_host_and_its_claim_names_it() {
    let mut lab = lab_with_agents(3);
    let monitor = HolderMonitor::start(&mut lab, &[0, 1, 2], &[VIP.into()]);
    lab.put(&format!("/extip/ips/{VIP}"), "{}");
    let (holder, took) = wait_single_holder(&lab, VIP, Duration::from_secs(1));
    assert!(lab.addresses(holder, "lo").contains(&format!("{VIP}/32")));
    assert_eq!(
        node_of_claim(&lab, VIP),
        Some(lab.hosts[holder].name.clone())
    );
    // It stays put: no flapping over a few keepalive periods.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(lab.holders(VIP), vec![holder]);
    monitor.stop().assert_one_holder("claim");
    eprintln!("claimed in {took:?}");
}

#[test]
fn host_loss_moves_the_ip_without_two_live_holders() {
    let mut lab = lab_with_agents(3);
    lab.put(&format!("/extip/ips/{VIP}"), "{}");
    let (holder, _) = wait_single_holder(&lab, VIP, Duration::from_secs(1));
    let (took, _, holders) = lose_host(&mut lab, holder, VIP);
    let took = took.expect("a surviving host holds the IP within 3 s");
    holders.assert_one_holder("host loss");
    let new_holder = lab.holders(VIP).into_iter().find(|h| *h != holder).unwrap();
    assert_eq!(
        node_of_claim(&lab, VIP),
        Some(lab.hosts[new_holder].name.clone())
    );
    eprintln!("host loss: moved in {took:?}");
}

#[test]
fn sigterm_hands_over_at_once_and_never_overlaps() {
    let mut lab = lab_with_agents(3);
    lab.put(&format!("/extip/ips/{VIP}"), "{}");
    let (holder, _) = wait_single_holder(&lab, VIP, Duration::from_secs(1));
    // The old holder's host stays alive, so all three are watched.
    let monitor = HolderMonitor::start(&mut lab, &[0, 1, 2], &[VIP.into()]);
    lab.signal(holder, "TERM");
    let took = wait_for(Duration::from_secs(3), || {
        let h = lab.holders(VIP);
        h.len() == 1 && h[0] != holder
    });
    std::thread::sleep(Duration::from_millis(200));
    let holders = monitor.stop();
    let report = &holders.table;
    let took = took.expect("another host holds the IP");
    assert!(took < Duration::from_millis(500), "handover took {took:?}");
    holders.assert_one_holder("SIGTERM");
    assert_eq!(lab.wait_exit(holder, Duration::from_secs(5)), Some(0));
    let rounds_per_sec = report.rounds as f64 / 0.2_f64.max(took.as_secs_f64() + 0.2);
    assert!(
        rounds_per_sec >= 50.0,
        "monitor sampled too slowly: {report:?}"
    );
    eprintln!(
        "SIGTERM: handed over in {took:?}, {} samples",
        report.rounds
    );
}

#[test]
fn deleting_the_desired_key_removes_the_ip_everywhere() {
    let lab = lab_with_agents(3);
    lab.put(&format!("/extip/ips/{VIP}"), "{}");
    wait_single_holder(&lab, VIP, Duration::from_secs(1));
    lab.del(&format!("/extip/ips/{VIP}"));
    let gone = wait_for(Duration::from_secs(1), || lab.holders(VIP).is_empty());
    assert!(gone.is_some(), "still on {:?}", lab.holders(VIP));
    let released = wait_for(Duration::from_secs(1), || {
        node_of_claim(&lab, VIP).is_none()
    });
    assert!(released.is_some(), "claim key left behind");
}

#[test]
fn address_removed_by_hand_is_put_back() {
    let lab = lab_with_agents(3);
    lab.put(&format!("/extip/ips/{VIP}"), "{}");
    let (holder, _) = wait_single_holder(&lab, VIP, Duration::from_secs(1));
    lab.exec(
        holder,
        &["ip", "addr", "del", &format!("{VIP}/32"), "dev", "lo"],
    );
    let back = wait_for(Duration::from_secs(1), || lab.holders(VIP) == vec![holder]);
    assert!(back.is_some(), "not restored: {:?}", lab.holders(VIP));
}

#[test]
fn hand_added_address_survives_start_stop_resync_and_delete() {
    let mut lab = Lab::new(1);
    let hand = "198.51.100.99/32";
    lab.exec(0, &["ip", "addr", "add", hand, "dev", "lo"]);
    lab.start_agent(0, &["--resync", "1s"]);
    assert!(wait_for(Duration::from_secs(10), || lab
        .get("/extip/nodes/h1")
        .is_some())
    .is_some());
    // Desired by etcd too: it is the host's own address, so every agent refuses it
    // (claiming it would let another host take an address this host already has).
    lab.put("/extip/ips/198.51.100.99", "{}");
    lab.put(&format!("/extip/ips/{VIP}"), "{}");
    lab.put("/extip/ips/198.51.100.30", r#"{"replicas":2}"#);
    assert!(wait_for(Duration::from_secs(2), || lab.holders(VIP) == vec![0]).is_some());
    let shared = wait_for(Duration::from_secs(2), || {
        lab.holders("198.51.100.30") == vec![0]
    });
    assert!(shared.is_some());
    assert_eq!(node_of_claim(&lab, "198.51.100.99"), None);
    assert!(
        lab.agent_log(0)
            .contains("key=/extip/ips/198.51.100.99 reason=an own address of host h1"),
        "{}",
        lab.agent_log(0)
    );
    std::thread::sleep(Duration::from_millis(2500)); // two resyncs
    assert!(lab.addresses(0, "lo").contains(&hand.to_string()));
    lab.del("/extip/ips/198.51.100.99");
    assert!(wait_for(Duration::from_secs(2), || node_of_claim(
        &lab,
        "198.51.100.99"
    )
    .is_none())
    .is_some());
    assert!(
        lab.addresses(0, "lo").contains(&hand.to_string()),
        "desired-key delete removed it"
    );
    lab.signal(0, "TERM");
    assert_eq!(lab.wait_exit(0, Duration::from_secs(5)), Some(0));
    let left = lab.addresses(0, "lo");
    assert!(
        left.contains(&hand.to_string()),
        "agent stop removed it: {left:?}"
    );
    assert!(
        !has_ip(&left, VIP),
        "agent stop left its own address: {left:?}"
    );
    assert!(
        !has_ip(&left, "198.51.100.30"),
        "agent stop left a shared address: {left:?}"
    );
    lab.start_agent(0, &[]);
    assert!(wait_for(Duration::from_secs(2), || lab.holders(VIP) == vec![0]).is_some());
    assert!(
        lab.addresses(0, "lo").contains(&hand.to_string()),
        "agent start removed it"
    );
}

#[test]
fn ip_outside_allowed_cidrs_is_never_added_and_the_log_says_why() {
    let lab = lab_with_agents(3);
    lab.put("/extip/ips/203.0.113.10", "{}");
    lab.put(&format!("/extip/ips/{VIP}"), "{}");
    // The later, allowed IP being served proves the agents processed the first one.
    wait_single_holder(&lab, VIP, Duration::from_secs(1));
    std::thread::sleep(Duration::from_millis(500));
    assert!(lab.holders("203.0.113.10").is_empty());
    assert!(
        lab.get("/extip/claims/203.0.113.10/0").is_none(),
        "claimed anyway"
    );
    for i in 0..3 {
        let log = lab.agent_log(i);
        assert!(
            log.contains("ip=203.0.113.10") && log.contains("outside every --allowed-cidr"),
            "h{} log does not say why:\n{log}",
            i + 1
        );
    }
}

#[test]
fn bad_data_is_logged_with_its_key_and_skipped() {
    let mut lab = lab_with_agents(3);
    lab.put("/extip/ips/198.51.100.11", "not json");
    lab.put("/extip/ips/198.51.100.14", r#"{"replicas":"many"}"#);
    lab.put("/extip/ips/not-an-ip", "{}");
    lab.put("/extip/claims/198.51.100.20/zero", "{}");
    lab.put_stdin("/extip/ips/198.51.100.15", &vec![b'x'; 1024 * 1024]);
    lab.put("/extip/ips/198.51.100.12", "{}");
    wait_single_holder(&lab, "198.51.100.12", Duration::from_secs(1));
    for bad in ["198.51.100.11", "198.51.100.14", "198.51.100.15"] {
        assert!(lab.holders(bad).is_empty(), "{bad} was configured");
    }
    for i in 0..3 {
        assert!(lab.wait_exit(i, Duration::ZERO).is_none(), "agent {i} died");
        let log = lab.agent_log(i);
        for key in [
            "key=/extip/ips/198.51.100.11",
            "key=/extip/ips/198.51.100.14",
            "key=/extip/ips/not-an-ip",
            "key=/extip/ips/198.51.100.15",
            "key=/extip/claims/198.51.100.20/zero",
        ] {
            assert!(log.contains(key), "h{} log lacks {key}:\n{log}", i + 1);
        }
    }
}

#[test]
fn a_dead_endpoint_first_in_the_list_does_not_stall_the_agent() {
    let mut lab = Lab::new(1);
    // 192.0.2.249 is on the lab bridge but nobody answers there.
    let endpoints = format!("http://192.0.2.249:2379,{}", lab.etcd_url());
    lab.start_agent(0, &["--etcd", &endpoints]);
    lab.put(&format!("/extip/ips/{VIP}"), "{}");
    let took = wait_for(Duration::from_secs(5), || lab.holders(VIP) == vec![0]);
    assert!(took.is_some(), "not served with a dead first endpoint");
}

#[test]
fn the_overlap_monitor_catches_an_ip_on_two_hosts() {
    // The monitor is what makes the overlap assertions above meaningful: prove that
    // both of its views can fail.
    let mut lab = Lab::new(2);
    let monitor = HolderMonitor::start(&mut lab, &[0, 1], &[VIP.into()]);
    lab.exec(0, &["ip", "addr", "add", &format!("{VIP}/32"), "dev", "lo"]);
    lab.exec(1, &["ip", "addr", "add", &format!("{VIP}/32"), "dev", "lo"]);
    std::thread::sleep(Duration::from_millis(200));
    let holders = monitor.stop();
    assert!(
        !holders.table.overlaps.is_empty(),
        "the address tables missed a real overlap: {:?}",
        holders.table
    );
    assert!(
        !holders.wire.overlaps.is_empty(),
        "the wire missed two hosts answering: {}",
        holders.summary()
    );
}

#[test]
fn a_changed_mask_is_applied_and_ipv6_works_the_same() {
    let mut lab = Lab::new(2);
    for i in 0..2 {
        lab.start_agent(i, &["--allowed-cidr", "198.51.100.0/24,2001:db8::/32"]);
    }
    lab.put(&format!("/extip/ips/{VIP}"), "{}");
    let (holder, _) = wait_single_holder(&lab, VIP, Duration::from_secs(2));
    lab.put(&format!("/extip/ips/{VIP}"), r#"{"prefix_len":24}"#);
    let changed = wait_for(Duration::from_secs(1), || {
        let a = lab.addresses(holder, "lo");
        a.contains(&format!("{VIP}/24")) && !a.contains(&format!("{VIP}/32"))
    });
    assert!(
        changed.is_some(),
        "mask not applied: {:?}",
        lab.addresses(holder, "lo")
    );
    assert_eq!(lab.holders(VIP), vec![holder], "the change moved the IP");

    let v6 = "2001:db8:5::10";
    lab.put(&format!("/extip/ips/{v6}"), "{}");
    let (holder6, _) = wait_single_holder(&lab, v6, Duration::from_secs(2));
    assert!(lab.addresses(holder6, "lo").contains(&format!("{v6}/128")));
    lab.signal(holder6, "TERM");
    let moved = wait_for(Duration::from_secs(1), || {
        lab.holders(v6) == vec![1 - holder6]
    });
    assert!(moved.is_some(), "IPv6 did not move: {:?}", lab.holders(v6));
    // The old holder reaches the IP where it now is: no route of the old address is
    // left behind pointing into its own loopback.
    let left = lab.exec(holder6, &["ip", "-6", "route", "show", "table", "all", v6]);
    assert!(
        left.trim().is_empty(),
        "left behind on the old holder: {left}"
    );
}
