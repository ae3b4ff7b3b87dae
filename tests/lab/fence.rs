//! The precise fence as a client sees it: a 2 ms pinger, the fence deadline read from a
//! host's nftables set, and one fault run (shared by tests/fence.rs and benches/fence.rs).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::l2::Pinger;
use super::monitor::OverlapMonitor;
use super::wire::WireMonitor;
use super::{run, wait_for, Lab};

pub const VIP: &str = "198.51.100.10";

/// Now, in seconds since the epoch: the clock nft's deadlines are compared with.
pub fn epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

/// `1s832ms`, `832ms`, `2s` as nft prints them, in seconds.
fn nft_duration(text: &str) -> f64 {
    let (mut total, mut number) = (0.0, String::new());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while chars.peek().is_some_and(|c| c.is_ascii_alphabetic()) {
            unit.push(chars.next().unwrap());
        }
        let n: f64 = number.parse().unwrap_or(0.0);
        number.clear();
        total += n * match unit.as_str() {
            "d" => 86400.0,
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            other => panic!("unit {other} in {text}"),
        };
    }
    total
}

/// Run `nft` with one command line in namespace `ns`; its output.
pub fn nft(ns: &str, command: &str) -> String {
    run("ip", &["netns", "exec", ns, "nft", command])
}

/// When (epoch seconds) the fence of namespace `ns` closes: now + the `expires` of its
/// `alive` element, read with `nft`.
pub fn fence_deadline(ns: &str) -> f64 {
    try_fence_deadline(ns).unwrap_or_else(|| {
        let out = nft(ns, "list set inet extip alive");
        panic!("no expiring alive element in:\n{out}")
    })
}

/// The same; `None` once the element is gone (the fence closed).
pub fn try_fence_deadline(ns: &str) -> Option<f64> {
    let before = epoch();
    let out = nft(ns, "list set inet extip alive");
    let after = epoch();
    let expires = out
        .split("expires ")
        .nth(1)
        .and_then(|rest| rest.split([' ', ',', '}', '\n']).next())?;
    Some((before + after) / 2.0 + nft_duration(expires))
}

/// A client pinging `ip` every 2 ms.
pub fn fast_ping(client: &str, ip: &str) -> Pinger {
    Pinger::start_every(client, ip, "0.002")
}

#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// SIGSTOP the holder's agent.
    Freeze,
    /// SIGKILL it.
    Kill,
    /// Blackhole its routes to etcd.
    CutFromEtcd,
}

/// What one fault run saw.
#[derive(Debug, Clone, Copy)]
pub struct FaultRun {
    /// Seconds from the fence deadline to the old holder's last reply (negative: before).
    pub dark: f64,
    /// Seconds from the fence deadline to the new holder's first reply.
    pub taken: f64,
    /// ARP rounds the wire monitor made (no round saw two MACs: asserted).
    pub wire_rounds: usize,
    /// Samples where both hosts listed the address (a fenced host may: dark, not a holder).
    pub listed_overlaps: usize,
}

/// One run: how long after its fence deadline the old holder's last reply came (negative:
/// before), and how long after the deadline the new holder's first reply came.
pub fn one_run(fault: Fault) -> FaultRun {
    let mut lab = Lab::new(2);
    let client = lab.add_client();
    super::l2::route_vips_on_link(&client);
    // IPs on lo, announced on eth0: the client learns the new holder at once.
    for i in 0..2 {
        lab.start_agent(i, &["--announce-interface", "eth0"]);
    }
    lab.put(&format!("/extip/ips/{VIP}"), "{}");
    assert!(wait_for(Duration::from_secs(10), || lab.holders(VIP).len() == 1).is_some());
    let old = lab.holders(VIP)[0];
    let ping = fast_ping(&client, VIP);
    let wire = WireMonitor::start(&client, &[VIP]);
    let listed = OverlapMonitor::start(lab.namespaces(&[0, 1]), vec![VIP.into()]);
    std::thread::sleep(Duration::from_millis(300));
    let ns = lab.hosts[old].ns.clone();
    match fault {
        Fault::Freeze => lab.signal(old, "STOP"),
        Fault::Kill => lab.signal(old, "KILL"),
        Fault::CutFromEtcd => lab.isolate_from_etcd(old),
    }
    // The deadline that counts is the last one the fence got: renewals may go on after
    // the fault (with peers, acknowledgements keep a holder cut from etcd lit until its
    // lease deadline), so it is read until the element is gone.
    let mut deadline = fence_deadline(&ns);
    let other = 1 - old;
    let moved = wait_for(Duration::from_secs(10), || {
        if let Some(d) = try_fence_deadline(&ns) {
            deadline = d;
        }
        lab.holders(VIP).contains(&other)
    });
    assert!(moved.is_some(), "{fault:?}: the IP did not move");
    std::thread::sleep(Duration::from_millis(300));
    let (stamps, dups) = ping.stop_stamps();
    let wire = wire.stop();
    let listed = listed.stop();
    assert_eq!(dups, 0, "{fault:?}: two hosts answered");
    assert!(
        wire.overlaps.is_empty(),
        "{fault:?}: two hosts answered ARP: {wire:?}"
    );
    let macs = wire
        .answered_by
        .get(&VIP.parse().expect("IPv4"))
        .map_or(0, |m| m.len());
    assert_eq!(
        macs, 2,
        "{fault:?}: the monitor did not see both holders: {wire:?}"
    );
    // The old holder's last reply is the one before the long gap of the takeover.
    let gap = stamps
        .windows(2)
        .position(|w| w[1] - w[0] > 0.1)
        .unwrap_or_else(|| {
            let last = stamps.last().map_or(0.0, |l| l - deadline);
            panic!(
                "{fault:?}: no gap in {} replies, the last {last:+.3} s from the deadline",
                stamps.len()
            )
        });
    let (last_old, first_new) = (stamps[gap], stamps[gap + 1]);
    if std::env::var_os("EXTIP_TEST_VERBOSE").is_some() {
        eprintln!(
            "deadline {deadline:.3}, last old {last_old:.3}, first new {first_new:.3}\n{}",
            lab.agent_log(other)
        );
    }
    if let Fault::Freeze = fault {
        lab.signal(old, "CONT");
    }
    FaultRun {
        dark: last_old - deadline,
        taken: first_new - deadline,
        wire_rounds: wire.rounds,
        listed_overlaps: listed.overlaps.len(),
    }
}

/// The longest time between two replies.
pub fn longest_gap(stamps: &[f64]) -> f64 {
    stamps.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max)
}

/// Stop the holder gracefully `rounds` times (a new IP each time, the last one
/// withdrawn, the stopped agent started again); the longest gap between replies of each round, pinging every 2 ms.
pub fn graceful_stop_gaps(rounds: usize) -> Vec<f64> {
    let mut lab = Lab::new(2);
    let client = lab.add_client();
    super::l2::route_vips_on_link(&client);
    if std::env::var("EXTIP_TEST_VERBOSE").is_ok() {
        lab.agent_env.push((
            "EXTIP_LOG".into(),
            "debug,h2=info,hyper=info,tonic=info,tower=info".into(),
        ));
    }
    for i in 0..2 {
        lab.start_agent(i, &["--announce-interface", "eth0"]);
    }
    let mut gaps = Vec::new();
    for round in 0..rounds {
        let vip = format!("198.51.100.{}", 20 + round);
        lab.put(&format!("/extip/ips/{vip}"), "{}");
        assert!(wait_for(Duration::from_secs(10), || lab.holders(&vip).len() == 1).is_some());
        let old = lab.holders(&vip)[0];
        let ping = fast_ping(&client, &vip);
        std::thread::sleep(Duration::from_millis(300));
        lab.signal(old, "TERM");
        let moved = wait_for(Duration::from_secs(5), || lab.holders(&vip) == [1 - old]);
        assert!(moved.is_some(), "{vip} did not move");
        std::thread::sleep(Duration::from_millis(300));
        let (stamps, dups) = ping.stop_stamps();
        assert_eq!(dups, 0, "two hosts answered");
        assert!(stamps.len() > 100, "only {} replies", stamps.len());
        let gap = longest_gap(&stamps);
        println!(
            "graceful stop of h{}: longest ping gap {:.1} ms",
            old + 1,
            gap * 1000.0
        );
        gaps.push(gap);
        let taker = lab.agent_log(1 - old);
        if std::env::var("EXTIP_TEST_VERBOSE").is_ok() {
            // Both agents' lines from the SIGTERM on (ISO timestamps sort as text).
            let old_log = lab.agent_log(old);
            let stop = old_log
                .lines()
                .rev()
                .find(|l| l.contains("SIGTERM"))
                .unwrap_or("");
            let since = stop.get(..27).unwrap_or("").to_string();
            let mut lines: Vec<String> = old_log
                .lines()
                .map(|l| format!("old {l}"))
                .chain(taker.lines().map(|l| format!("new {l}")))
                .filter(|l| l.get(4..31).is_some_and(|t| t >= since.as_str()))
                .collect();
            lines.sort_by(|a, b| a.get(4..31).cmp(&b.get(4..31)));
            println!(
                "{}",
                lines.into_iter().take(40).collect::<Vec<_>>().join("\n")
            );
        }
        assert!(
            taker.contains(&format!("address added address={vip}/32")),
            "{taker}"
        );
        let unprobed = format!("a stopping peer handed the IP over: no conflict probe ip={vip}");
        assert!(taker.contains(&unprobed), "the taker probed:\n{taker}");
        assert_eq!(lab.wait_exit(old, Duration::from_secs(5)), Some(0));
        // One IP moves per stop, as with a VRRP instance: this one goes.
        lab.del(&format!("/extip/ips/{vip}"));
        lab.start_agent(old, &["--announce-interface", "eth0"]);
        assert!(wait_for(Duration::from_secs(10), || {
            lab.get(&format!("/extip/nodes/h{}", old + 1)).is_some()
        })
        .is_some());
    }
    gaps
}
