//! Mistaken or hostile etcd data, in the lab: under an allowlist of everything
//! (`0.0.0.0/0` + `::/0`), special-purpose addresses, another member's own address and
//! the etcd endpoint's address are never added on any host; a claim written without a
//! lease does not block its IP.

mod lab;

use std::time::{Duration, Instant};

use lab::monitor::AddressEvents;
use lab::{wait_for, Lab};

const ALLOW_ALL: [&str; 4] = ["--allowed-cidr", "0.0.0.0/0", "--allowed-cidr", "::/0"];

/// The addresses (without mask) that `ip monitor address` reported as added.
fn added_addresses(events: AddressEvents) -> Vec<String> {
    events
        .additions("inet")
        .iter()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|w| *w == "inet" || *w == "inet6")?;
            Some(words.next()?.split('/').next()?.to_string())
        })
        .collect()
}

#[test]
fn special_and_member_addresses_are_refused_everywhere_and_a_valid_ip_is_served() {
    let mut lab = Lab::new(3);
    let events: Vec<AddressEvents> = lab
        .hosts
        .iter()
        .map(|h| AddressEvents::start(&h.ns))
        .collect();
    for i in 0..3 {
        lab.start_agent(i, &ALLOW_ALL);
    }
    let up = wait_for(Duration::from_secs(10), || {
        (1..=3).all(|h| lab.get(&format!("/extip/nodes/h{h}")).is_some())
    });
    assert!(up.is_some(), "agents did not register");
    let etcd_addr = lab.etcd[0].addr.clone();
    // (IP as written, what the reason must say)
    let refused: Vec<(String, &str)> = [
        ("0.0.0.0", "unspecified"),
        ("255.255.255.255", "limited broadcast"),
        ("224.0.0.5", "multicast"),
        ("127.0.0.5", "loopback"),
        ("169.254.1.1", "link-local"),
        ("::", "unspecified"),
        ("::1", "loopback"),
        ("ff02::1", "multicast"),
        ("fe80::1", "link-local"),
        ("::ffff:198.51.100.9", "IPv4-mapped"),
        ("192.0.2.2", "own address of host h2"),
        (etcd_addr.as_str(), "etcd endpoint"),
    ]
    .into_iter()
    .map(|(ip, why)| (ip.to_string(), why))
    .collect();
    for (ip, _) in &refused {
        lab.put(&format!("/extip/ips/{ip}"), "{}");
    }
    let valid = "198.51.100.70";
    let written = Instant::now();
    lab.put(&format!("/extip/ips/{valid}"), "{}");
    let served = wait_for(Duration::from_secs(10), || lab.holders(valid).len() == 1);
    assert!(served.is_some(), "the valid IP was not served");
    println!("valid IP served {:?} after its key", written.elapsed());

    // Every agent says, once per key, why it refuses each one.
    let logged = wait_for(Duration::from_secs(5), || {
        (0..3).all(|i| {
            let log = lab.agent_log(i);
            refused
                .iter()
                .all(|(ip, _)| log.contains(&format!("key=/extip/ips/{ip} ")))
        })
    });
    // Nothing refused was ever added, on any interface of any host.
    for (i, events) in events.into_iter().enumerate() {
        let added = added_addresses(events);
        for (ip, _) in &refused {
            assert!(
                !added.contains(ip),
                "h{}: {ip} was added ({added:?})",
                i + 1
            );
        }
    }
    for i in 0..3 {
        let log = lab.agent_log(i);
        for (ip, _) in &refused {
            let lines = log
                .lines()
                .filter(|l| l.contains("refused") && l.contains(&format!("key=/extip/ips/{ip} ")))
                .count();
            assert_eq!(
                lines,
                1,
                "h{}: refusal of {ip} logged {lines} times:\n{log}",
                i + 1
            );
        }
    }
    assert!(logged.is_some());

    let status: serde_json::Value =
        serde_json::from_str(&lab.extip(&["status", "-o", "json"])).expect("status JSON");
    let ips = status["ips"].as_array().expect("ips");
    for (ip, why) in &refused {
        let entry = ips.iter().find(|e| e["ip"] == ip.as_str()).expect(ip);
        let reason = entry["refused"].as_str().unwrap_or_default();
        assert!(
            reason.contains(why),
            "{ip}: refused = {reason:?}, want {why:?}"
        );
        assert!(entry["holders"].as_array().unwrap().is_empty(), "{entry}");
    }
    let valid_entry = ips.iter().find(|e| e["ip"] == valid).expect("valid IP");
    assert!(valid_entry["refused"].is_null(), "{valid_entry}");

    // ... and the member's own address is still only where it was.
    for i in [0, 2] {
        let all = lab::monitor::addresses(&lab.hosts[i].ns, "");
        assert!(
            !lab::monitor::has_ip(&all, "192.0.2.2"),
            "h{}: {all:?}",
            i + 1
        );
    }
}

#[test]
fn a_claim_without_a_lease_is_deleted_and_its_ip_served() {
    let mut lab = Lab::new(2);
    // Written before any agent runs: served within 2 s of the agents' start.
    let early = "198.51.100.61";
    lab.put(&format!("/extip/claims/{early}/0"), "h1");
    lab.put(&format!("/extip/ips/{early}"), "{}");
    let started = Instant::now();
    lab.start_all();
    let served = wait_for(Duration::from_secs(10), || lab.holders(early).len() == 1);
    let took = started.elapsed();
    assert!(
        served.is_some(),
        "{early} never served:\n{}",
        lab.agent_log(0)
    );
    println!("{early}: served {took:?} after the agents started");
    assert!(took <= Duration::from_secs(2), "took {took:?}");

    // Written while agents run: the desired key after the forged claim.
    let late = "198.51.100.60";
    let written = Instant::now();
    lab.put(&format!("/extip/claims/{late}/0"), "h1");
    lab.put(&format!("/extip/ips/{late}"), "{}");
    let served = wait_for(Duration::from_secs(10), || lab.holders(late).len() == 1);
    let took = written.elapsed();
    assert!(served.is_some(), "{late} never served");
    println!("{late}: served {took:?} after the forged claim was written");
    assert!(took <= Duration::from_secs(2), "took {took:?}");

    // The forged keys are gone: each claim key now is an agent's, on its lease.
    let leases = lab::fleet::claim_leases(&lab);
    for ip in [early, late] {
        let key = format!("/extip/claims/{ip}/0");
        let lease = leases.get(&key).copied().unwrap_or_default();
        assert_ne!(lease, 0, "{key} has no lease: {leases:?}");
        let value = lab.get(&key).expect("claim");
        assert!(value.starts_with('{'), "{key} = {value}");
    }
    let logs = lab.agent_log(0) + &lab.agent_log(1);
    for ip in [early, late] {
        assert!(
            logs.contains(&format!("key=/extip/claims/{ip}/0"))
                && logs.contains("claim without a lease deleted"),
            "no warning for {ip}:\n{logs}"
        );
    }
}
