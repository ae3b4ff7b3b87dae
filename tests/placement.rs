//! Placement in the lab: IPs spread evenly, a lost host moves only its own IPs, and a
//! drained host hands everything over. Checked with `ip -j addr` and the real CLI.

mod lab;

use std::collections::BTreeMap;
use std::time::Duration;

use lab::holders::HolderMonitor;
use lab::monitor::has_ip;
use lab::{wait_for, Lab};

const ALLOWED: &str = "198.51.100.0/24,203.0.113.0/24";
const AGENT_ARGS: [&str; 6] = [
    "--lease-ttl",
    "3s",
    "--allowed-cidr",
    ALLOWED,
    "--stabilization",
    "2s",
];

/// `count` exclusive IPs from the two documentation ranges for virtual IPs.
fn ips(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| match i {
            0..250 => format!("198.51.100.{}", i + 1),
            _ => format!("203.0.113.{}", i - 249),
        })
        .collect()
}

/// Write the desired keys of `ips` in one transaction per hundred.
fn desire(lab: &Lab, ips: &[String]) {
    let pairs: Vec<(String, String)> = ips
        .iter()
        .map(|ip| (format!("/extip/ips/{ip}"), "{}".into()))
        .collect();
    lab.put_many(&pairs);
}

/// Agents on every host, all registered before any IP is desired.
fn lab_with_agents(hosts: usize) -> Lab {
    let mut lab = Lab::new(hosts);
    for h in 0..hosts {
        lab.start_agent(h, &AGENT_ARGS);
    }
    let up = wait_for(Duration::from_secs(10), || {
        (1..=hosts).all(|h| lab.get(&format!("/extip/nodes/h{h}")).is_some())
    });
    assert!(up.is_some(), "agents did not register");
    lab
}

/// Which host holds each IP (hosts in `among`), from one `ip -j addr` per host.
fn placement(lab: &Lab, ips: &[String], among: &[usize]) -> BTreeMap<String, Vec<usize>> {
    let seen: Vec<(usize, Vec<String>)> =
        among.iter().map(|&h| (h, lab.addresses(h, "lo"))).collect();
    ips.iter()
        .map(|ip| {
            let on = seen
                .iter()
                .filter(|(_, a)| has_ip(a, ip))
                .map(|(h, _)| *h)
                .collect();
            (ip.clone(), on)
        })
        .collect()
}

fn each_once(p: &BTreeMap<String, Vec<usize>>) -> bool {
    p.values().all(|on| on.len() == 1)
}

fn per_host(p: &BTreeMap<String, Vec<usize>>) -> BTreeMap<usize, usize> {
    let mut count = BTreeMap::new();
    for on in p.values() {
        for h in on {
            *count.entry(*h).or_default() += 1;
        }
    }
    count
}

#[test]
fn three_hundred_ips_spread_evenly_and_a_lost_host_moves_only_its_own() {
    let mut lab = lab_with_agents(3);
    let all = ips(300);
    desire(&lab, &all);
    let placed = wait_for(Duration::from_secs(30), || {
        each_once(&placement(&lab, &all, &[0, 1, 2]))
    });
    assert!(placed.is_some(), "not every IP on exactly one host");
    let before = placement(&lab, &all, &[0, 1, 2]);
    let spread = per_host(&before);
    eprintln!("300 IPs placed in {placed:?}: {spread:?}");
    for (h, n) in &spread {
        assert!((90..=110).contains(n), "h{} holds {n}", h + 1);
    }

    let victim = 1;
    let survivors = [0, 2];
    let monitor = HolderMonitor::start(&mut lab, &survivors, &all);
    lab.kill(victim);
    lab.cut(victim);
    let moved = wait_for(Duration::from_secs(10), || {
        each_once(&placement(&lab, &all, &survivors))
    });
    monitor.stop().assert_one_holder("host loss");
    let moved = moved.expect("the lost host's IPs served again");
    let after = placement(&lab, &all, &survivors);
    for (ip, on) in &before {
        if on[0] != victim {
            assert_eq!(&after[ip], on, "{ip} moved although its host survived");
        }
    }
    eprintln!(
        "host loss: {} IPs moved in {moved:?}, now {:?}",
        spread[&victim],
        per_host(&after)
    );
    assert!(moved <= Duration::from_secs(5), "took {moved:?}");
}

#[test]
fn a_drained_host_hands_everything_over_without_overlap() {
    let mut lab = lab_with_agents(3);
    let some = ips(30);
    desire(&lab, &some);
    assert!(wait_for(Duration::from_secs(10), || each_once(&placement(
        &lab,
        &some,
        &[0, 1, 2]
    )))
    .is_some());
    let monitor = HolderMonitor::start(&mut lab, &[0, 1, 2], &some);
    lab.extip(&["node", "drain", "h1"]);
    let emptied = wait_for(Duration::from_secs(2), || {
        let p = placement(&lab, &some, &[0, 1, 2]);
        each_once(&p) && !per_host(&p).contains_key(&0)
    });
    monitor.stop().assert_one_holder("drain");
    let emptied = emptied.expect("h1 handed everything over within 2 s");
    eprintln!("drain: h1 emptied in {emptied:?}");
    let status = lab.extip(&["status"]);
    let h1 = status
        .lines()
        .find(|l| l.starts_with("h1 "))
        .expect("h1 in status");
    assert!(
        h1.contains("yes"),
        "status does not show h1 draining: {status}"
    );
    lab.extip(&["node", "undrain", "h1"]);
    let share = wait_for(Duration::from_secs(10), || {
        let p = placement(&lab, &some, &[0, 1, 2]);
        each_once(&p) && per_host(&p).get(&0).copied().unwrap_or(0) >= 8
    });
    assert!(share.is_some(), "undrained h1 did not get its share back");
    eprintln!("undrain: h1 got its share back in {share:?}");
    // And it takes new IPs.
    let fresh: Vec<String> = (200..230).map(|i| format!("198.51.100.{i}")).collect();
    desire(&lab, &fresh);
    let back = wait_for(Duration::from_secs(5), || {
        let mine = lab.addresses(0, "lo");
        fresh.iter().any(|ip| has_ip(&mine, ip))
    });
    assert!(back.is_some(), "undrained h1 takes no new IP");
}

#[test]
fn a_returning_host_gets_its_share_back_without_overlap_and_nothing_moves_twice() {
    let mut lab = lab_with_agents(3);
    let all = ips(300);
    desire(&lab, &all);
    assert!(wait_for(Duration::from_secs(30), || each_once(&placement(
        &lab,
        &all,
        &[0, 1, 2]
    )))
    .is_some());
    lab.signal(1, "TERM");
    assert_eq!(lab.wait_exit(1, Duration::from_secs(5)), Some(0));
    let served = wait_for(Duration::from_secs(10), || {
        each_once(&placement(&lab, &all, &[0, 2]))
    });
    assert!(served.is_some(), "h2's IPs not taken over");
    let monitor = HolderMonitor::start(&mut lab, &[0, 1, 2], &all);
    let mut last = placement(&lab, &all, &[0, 1, 2]);
    let mut moves: BTreeMap<String, usize> = BTreeMap::new();
    lab.start_agent(1, &AGENT_ARGS);
    let start = std::time::Instant::now();
    let mut balanced = None;
    // Generous: it takes 6-7 s, also under the whole suite's load. The bound was 60 s
    // while a slot every host refused (one the conflict probe found taken) held every
    // agent's hand-overs back for good; since a slot counts as being filled for 5 s only
    // (66f7c30), 20 runs in a row passed at 30 s.
    while start.elapsed() < Duration::from_secs(30) {
        let now = placement(&lab, &all, &[0, 1, 2]);
        for (ip, on) in &now {
            if on.len() == 1 && last[ip].len() == 1 && on != &last[ip] {
                *moves.entry(ip.clone()).or_default() += 1;
            }
            if on.len() == 1 {
                last.insert(ip.clone(), on.clone());
            }
        }
        let spread = per_host(&now);
        if each_once(&now) && spread.values().all(|n| (90..=110).contains(n)) && spread.len() == 3 {
            balanced = Some(start.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    monitor.stop().assert_one_holder("return");
    let balanced = balanced.unwrap_or_else(|| {
        panic!(
            "not rebalanced: {:?}",
            per_host(&placement(&lab, &all, &[0, 1, 2]))
        )
    });
    let twice: Vec<_> = moves.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "moved more than once: {twice:?}");
    eprintln!(
        "return: balanced after {balanced:?} (window 2s), {} IPs moved once, spread {:?}",
        moves.len(),
        per_host(&placement(&lab, &all, &[0, 1, 2]))
    );
}

#[test]
fn replicas_two_replace_a_lost_holder_and_all_grows_with_a_joining_host() {
    let mut lab = Lab::new(4);
    for h in 0..3 {
        lab.start_agent(h, &AGENT_ARGS);
    }
    let up = wait_for(Duration::from_secs(10), || {
        (1..=3).all(|h| lab.get(&format!("/extip/nodes/h{h}")).is_some())
    });
    assert!(up.is_some());
    let two = "198.51.100.40";
    let every = "198.51.100.41";
    lab.put(&format!("/extip/ips/{two}"), r#"{"replicas":2}"#);
    lab.put(&format!("/extip/ips/{every}"), r#"{"replicas":"all"}"#);
    assert!(wait_for(Duration::from_secs(5), || lab.holders(two).len() == 2).is_some());
    assert!(wait_for(Duration::from_secs(5), || lab.holders(every).len() == 3).is_some());

    let lost = lab.holders(two)[0];
    let keeper = lab.holders(two)[1];
    lab.kill(lost);
    lab.cut(lost);
    let live: Vec<usize> = (0..3).filter(|&h| h != lost).collect();
    let replaced = wait_for(Duration::from_secs(6), || {
        live.iter()
            .filter(|&&h| has_ip(&lab.addresses(h, "lo"), two))
            .count()
            == 2
    });
    let replaced = replaced.expect("a third host took the lost holder's place");
    eprintln!("replicas 2: lost holder replaced in {replaced:?}");
    assert!(replaced <= Duration::from_secs(4), "took {replaced:?}");
    assert!(
        has_ip(&lab.addresses(keeper, "lo"), two),
        "the surviving holder moved"
    );

    // A host that joins takes its place in "all".
    lab.start_agent(3, &AGENT_ARGS);
    let joined = wait_for(Duration::from_secs(5), || {
        has_ip(&lab.addresses(3, "lo"), every)
    });
    assert!(joined.is_some(), "the new host did not join the \"all\" IP");
    let on = live
        .iter()
        .chain([3].iter())
        .filter(|&&h| has_ip(&lab.addresses(h, "lo"), every))
        .count();
    assert_eq!(on, 3, "\"all\" is on every live host");
}

#[test]
fn a_pool_gives_its_mask_to_its_ips_unless_they_set_their_own() {
    let lab = lab_with_agents(2);
    lab.extip(&[
        "pool",
        "add",
        "web",
        "198.51.100.0/24",
        "--prefix-len",
        "24",
    ]);
    let listed = lab.extip(&["pool", "ls"]);
    assert!(listed.contains("web") && listed.contains("/24"), "{listed}");
    lab.put("/extip/ips/198.51.100.7", "{}");
    lab.put("/extip/ips/198.51.100.8", r#"{"prefix_len":32}"#);
    let with_mask = |ip: &str, mask: &str| {
        (0..2).any(|h| lab.addresses(h, "lo").contains(&format!("{ip}/{mask}")))
    };
    let done = wait_for(Duration::from_secs(5), || {
        with_mask("198.51.100.7", "24") && with_mask("198.51.100.8", "32")
    });
    assert!(
        done.is_some(),
        "pool mask not applied: {:?} {:?}",
        lab.addresses(0, "lo"),
        lab.addresses(1, "lo")
    );
    let status = lab.extip(&["status"]);
    let row = status
        .lines()
        .find(|l| l.starts_with("198.51.100.7 "))
        .unwrap_or("");
    assert!(
        row.contains(" /24 "),
        "status does not show the pool mask: {status}"
    );
    // Removing the pool gives the IP its default mask back.
    lab.extip(&["pool", "rm", "web"]);
    let back = wait_for(Duration::from_secs(5), || with_mask("198.51.100.7", "32"));
    assert!(back.is_some(), "pool removal not applied");
}

#[test]
fn a_node_selector_keeps_an_ip_on_matching_hosts_only() {
    let mut lab = Lab::new(3);
    let labelled = [AGENT_ARGS.as_slice(), &["--label", "zone=a"]].concat();
    lab.start_agent(0, &AGENT_ARGS);
    lab.start_agent(1, &labelled);
    lab.start_agent(2, &labelled);
    let up = wait_for(Duration::from_secs(10), || {
        (1..=3).all(|h| lab.get(&format!("/extip/nodes/h{h}")).is_some())
    });
    assert!(up.is_some());
    let ip = "198.51.100.50";
    lab.put(
        &format!("/extip/ips/{ip}"),
        r#"{"node_selector":{"zone":"a"}}"#,
    );
    assert!(wait_for(Duration::from_secs(5), || lab.holders(ip).len() == 1).is_some());
    let first = lab.holders(ip)[0];
    assert_ne!(first, 0, "placed on a host without the label");
    lab.signal(first, "TERM");
    let moved = wait_for(Duration::from_secs(5), || {
        lab.holders(ip) == vec![3 - first]
    });
    assert!(
        moved.is_some(),
        "not moved to the other labelled host: {:?}",
        lab.holders(ip)
    );
    lab.wait_exit(first, Duration::from_secs(5))
        .expect("stopped");
    let other = 3 - first;
    lab.signal(other, "TERM");
    lab.wait_exit(other, Duration::from_secs(5))
        .expect("stopped");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        lab.holders(ip).is_empty(),
        "an unlabelled host took it: {:?}",
        lab.holders(ip)
    );
}

/// Hosts with `ip` on `dev`, and whether any of those copies is still tentative (DAD).
fn holders_on(lab: &Lab, ip: &str, dev: &str, hosts: &[usize]) -> (Vec<usize>, bool) {
    let on: Vec<usize> = hosts
        .iter()
        .copied()
        .filter(|&h| has_ip(&lab.addresses(h, dev), ip))
        .collect();
    let tentative = on.iter().any(|&h| {
        let out = lab.exec(h, &["ip", "-6", "addr", "show", "dev", dev, "tentative"]);
        out.contains(ip)
    });
    (on, tentative)
}

#[test]
fn ipv6_on_lo_and_on_eth0_fail_over_like_ipv4_on_one_agent_serving_both() {
    let mut lab = Lab::new(3);
    let args = [
        "--lease-ttl",
        "3s",
        "--allowed-cidr",
        "198.51.100.0/24,2001:db8::/32",
        "--interface",
        "lo,eth0",
    ];
    for h in 0..3 {
        lab.start_agent(h, &args);
    }
    let v6_lo = "2001:db8:5::10";
    let v6_eth0 = "2001:db8:6::10";
    let v4_eth0 = "198.51.100.60";
    lab.put(&format!("/extip/ips/{v6_lo}"), "{}");
    lab.put(&format!("/extip/ips/{v6_eth0}"), r#"{"interface":"eth0"}"#);
    lab.put(&format!("/extip/ips/{v4_eth0}"), r#"{"interface":"eth0"}"#);
    let wanted = [(v6_lo, "lo"), (v6_eth0, "eth0"), (v4_eth0, "eth0")];
    let all = [0, 1, 2];
    // A takeover must not wait for DAD: no sample may catch a copy still tentative.
    let saw_tentative = std::cell::Cell::new(false);
    let served_once = |lab: &Lab, hosts: &[usize]| {
        wanted.iter().all(|(ip, dev)| {
            let (on, tentative) = holders_on(lab, ip, dev, hosts);
            saw_tentative.set(saw_tentative.get() || tentative);
            on.len() == 1
        })
    };
    let placed = wait_for(Duration::from_secs(10), || served_once(&lab, &all));
    assert!(
        placed.is_some(),
        "not each IP once on its interface: {:?}",
        (0..3).map(|h| lab.addresses(h, "")).collect::<Vec<_>>()
    );
    // An IP never lands on the other interface.
    for (ip, dev) in wanted {
        let other = if dev == "lo" { "eth0" } else { "lo" };
        assert!(
            holders_on(&lab, ip, other, &all).0.is_empty(),
            "{ip} on {other}"
        );
    }

    let victim = holders_on(&lab, v6_eth0, "eth0", &all).0[0];
    let survivors: Vec<usize> = all.into_iter().filter(|&h| h != victim).collect();
    let wanted_ips: Vec<String> = wanted.iter().map(|(ip, _)| ip.to_string()).collect();
    let monitor = HolderMonitor::start(&mut lab, &survivors, &wanted_ips);
    lab.kill(victim);
    lab.cut(victim);
    let moved = wait_for(Duration::from_secs(10), || served_once(&lab, &survivors));
    monitor.stop().assert_one_holder("IPv6 host loss");
    let moved = moved.expect("every IP served again on a survivor, none tentative");
    eprintln!("IPv6 on lo and eth0: served again {moved:?} after the host loss");
    assert!(
        !saw_tentative.get(),
        "an address was tentative (DAD) after a takeover"
    );
    assert!(moved <= Duration::from_secs(5), "took {moved:?} (TTL 3s)");
}
