//! How long may etcd freeze before a host drops an address? `cargo bench --bench blip`
//! (as root), or `scripts/bench-blip`.
//!
//! Three hosts, the 20 exclusive IPs of the fault tests. etcd is frozen (SIGSTOP, then
//! SIGCONT) for growing durations in 100 ms steps; `ip monitor address` on every host
//! records any VIP address removed during the freeze and the second after it. The
//! longest freeze that removed nothing is found by bisection over the 100 ms grid; a
//! duration counts as survived only when every one of its runs removed nothing (the
//! phase of the freeze against the keepalive timer moves the edge by up to one
//! keepalive interval). TTLs: `EXTIP_BENCH_TTLS` (default `2,3,5,10`); runs per step:
//! `EXTIP_BENCH_RUNS` (default 2). Then, per TTL, `EXTIP_BENCH_LEADER_RUNS` times
//! (default 5; 0 skips it) the leader of a 3-member etcd is SIGKILLed and the same
//! removals are counted until the cluster serves again. Prints Markdown tables.

#[path = "../tests/lab/mod.rs"]
mod lab;

use std::time::Duration;

use lab::fleet::{self, all_served, vips};
use lab::monitor::AddressEvents;
use lab::{wait_for, Lab};

const STEP_MS: u64 = 100;
const HOSTS: usize = 3;

/// Freeze etcd for `ms`; how many VIP addresses were removed on any host.
fn removals_after_freeze(lab: &Lab, ms: u64) -> usize {
    let events: Vec<AddressEvents> = lab
        .hosts
        .iter()
        .map(|h| AddressEvents::start(&h.ns))
        .collect();
    lab.signal_member(0, "STOP");
    std::thread::sleep(Duration::from_millis(ms));
    lab.signal_member(0, "CONT");
    // Kernel lifetimes are checked about once a second: give a late expiry its chance.
    std::thread::sleep(Duration::from_millis(1500));
    events
        .into_iter()
        .map(|e| e.deletions("198.51.100.").len())
        .sum()
}

/// Let the fleet settle: every IP served, and a quiet second.
fn settle(lab: &Lab) {
    let all: Vec<usize> = (0..HOSTS).collect();
    let served = wait_for(Duration::from_secs(30), || all_served(lab, &all));
    assert!(served.is_some(), "the IPs were not served again");
    std::thread::sleep(Duration::from_secs(1));
}

/// Whether a freeze of `ms` removed nothing in each of `runs` runs.
fn survives(lab: &Lab, ms: u64, runs: usize, log: &mut Vec<String>) -> bool {
    for run in 1..=runs {
        let removed = removals_after_freeze(lab, ms);
        log.push(format!("{ms} ms (run {run}): {removed} removed"));
        settle(lab);
        if removed > 0 {
            return false;
        }
    }
    true
}

/// The longest freeze (multiple of [`STEP_MS`], below the TTL) that removed nothing.
fn longest_survived(ttl_secs: u64, runs: usize) -> (u64, Vec<String>) {
    let lab = fleet::lab_with_vips(HOSTS, 1, &format!("{ttl_secs}s"));
    assert_eq!(vips().len(), 20);
    settle(&lab);
    let mut log = Vec::new();
    // Invariant: `good` survived (0 trivially), `bad` did not (a whole TTL cannot).
    let (mut good, mut bad) = (0, ttl_secs * 1000 / STEP_MS);
    while bad - good > 1 {
        let mid = (good + bad) / 2;
        if survives(&lab, mid * STEP_MS, runs, &mut log) {
            good = mid;
        } else {
            bad = mid;
        }
    }
    drop(lab);
    (good * STEP_MS, log)
}

/// Kill the leader of a 3-member etcd `runs` times; per run, the VIP addresses removed
/// on any host and how long etcd had no leader.
fn leader_losses(ttl_secs: u64, runs: usize) -> Vec<(usize, f64)> {
    let mut lab = fleet::lab_with_vips(HOSTS, 3, &format!("{ttl_secs}s"));
    settle(&lab);
    let mut results = Vec::new();
    for _ in 0..runs {
        let leader = lab.leader().expect("a leader");
        let events: Vec<AddressEvents> = lab
            .hosts
            .iter()
            .map(|h| AddressEvents::start(&h.ns))
            .collect();
        let killed = std::time::Instant::now();
        lab.kill_member(leader);
        let elected = wait_for(Duration::from_secs(10), || lab.leader().is_some());
        let leaderless = elected.map_or(10.0, |_| killed.elapsed().as_secs_f64());
        std::thread::sleep(Duration::from_millis(1500));
        let removed = events
            .into_iter()
            .map(|e| e.deletions("198.51.100.").len())
            .sum();
        results.push((removed, leaderless));
        lab.start_member(leader);
        let healthy = wait_for(Duration::from_secs(20), || {
            lab.etcdctl(&["endpoint", "health", "--cluster"]).is_ok()
        });
        assert!(healthy.is_some(), "etcd did not become healthy again");
        settle(&lab);
    }
    results
}

fn main() {
    let ttls: Vec<u64> = std::env::var("EXTIP_BENCH_TTLS")
        .unwrap_or_else(|_| "2,3,5,10".into())
        .split(',')
        .map(|t| t.trim().parse().expect("EXTIP_BENCH_TTLS: whole seconds"))
        .collect();
    let runs: usize = std::env::var("EXTIP_BENCH_RUNS")
        .ok()
        .map_or(2, |r| r.parse().expect("EXTIP_BENCH_RUNS"));
    let mut rows = Vec::new();
    for ttl in ttls {
        let (longest, log) = longest_survived(ttl, runs);
        eprintln!("--lease-ttl {ttl}s: {}", log.join("; "));
        rows.push((ttl, longest, log));
    }
    let leader_runs: usize = std::env::var("EXTIP_BENCH_LEADER_RUNS")
        .ok()
        .map_or(5, |r| r.parse().expect("EXTIP_BENCH_LEADER_RUNS"));
    let ttls: Vec<u64> = rows.iter().map(|r| r.0).collect();
    println!("| `--lease-ttl` | longest etcd freeze that removed no address | freezes tried (runs each: {runs}) |");
    println!("|---|---|---|");
    for (ttl, longest, log) in rows {
        let tried: Vec<&str> = log.iter().map(String::as_str).collect();
        println!(
            "| `{ttl}s` | {:.1} s | {} |",
            longest as f64 / 1000.0,
            tried.join("; ")
        );
    }
    if leader_runs == 0 {
        return;
    }
    println!();
    println!("| `--lease-ttl` | etcd leader SIGKILLed (3 members): runs that removed an address | addresses removed per run | no leader for (s, per run) |");
    println!("|---|---|---|---|");
    for ttl in ttls {
        let results = leader_losses(ttl, leader_runs);
        let bad = results.iter().filter(|r| r.0 > 0).count();
        let removed: Vec<String> = results.iter().map(|r| r.0.to_string()).collect();
        let gaps: Vec<String> = results.iter().map(|r| format!("{:.2}", r.1)).collect();
        println!(
            "| `{ttl}s` | {bad} of {leader_runs} | {} | {} |",
            removed.join(", "),
            gaps.join(", ")
        );
    }
}
