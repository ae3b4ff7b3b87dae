//! No false failover: `scripts/bench-soak [SECONDS]` (as root; default 600 per phase).
//!
//! Five hosts at the agent's defaults (peers vouching, lease TTL 10 s) with the 20
//! exclusive IPs of the fault lab, first idle, then with every core busy (two spinning
//! processes per core, not niced, in the root namespace). Per phase: revocations and
//! votes cast (read from every agent's metrics with curl), revoked markers in etcd,
//! acknowledgements missed, falls back to lease-only, IPs that moved (read with `ip`),
//! the heartbeat round trip at the 99th percentile, and each agent's CPU over the phase.
//! Goal (issue 26): nothing revoked, nothing moved, in both phases.

#[path = "../tests/lab/mod.rs"]
mod lab;

use std::collections::BTreeMap;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use lab::fleet::{placement, vips};
use lab::{sample_value, wait_for, Lab};

const HOSTS: usize = 5;

/// Every agent's metrics, read with curl inside its namespace.
fn scrape(lab: &Lab) -> Vec<String> {
    (0..HOSTS)
        .map(|i| {
            lab.exec(
                i,
                &["curl", "-s", "-m", "2", "http://127.0.0.1:9478/metrics"],
            )
        })
        .collect()
}

/// The sum of one sample over every agent.
fn total(scrapes: &[String], name: &str) -> f64 {
    scrapes
        .iter()
        .map(|s| sample_value(s, name).unwrap_or(0.0))
        .sum()
}

/// CPU seconds (user + system) of a process, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    lab::monitor::process_usage(pid).0
}

/// The 99th percentile of the heartbeat round trip over all agents, from the
/// histogram's buckets (the upper bound of the bucket it falls in).
fn rtt_p99(scrapes: &[String]) -> String {
    let mut buckets: BTreeMap<String, f64> = BTreeMap::new();
    for s in scrapes {
        for line in s
            .lines()
            .filter(|l| l.starts_with("extip_peer_heartbeat_rtt_seconds_bucket"))
        {
            let le = line.split("le=\"").nth(1).and_then(|r| r.split('"').next());
            let value = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
            if let (Some(le), Some(v)) = (le, value) {
                *buckets.entry(le.to_string()).or_default() += v;
            }
        }
    }
    let mut sorted: Vec<(f64, f64)> = buckets
        .iter()
        .map(|(le, v)| (le.parse().unwrap_or(f64::INFINITY), *v))
        .collect();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let count = sorted.last().map_or(0.0, |b| b.1);
    sorted
        .iter()
        .find(|(_, v)| *v >= count * 0.99)
        .map_or("n/a".into(), |(le, _)| format!("≤ {:.1} ms", le * 1000.0))
}

/// Spinning processes, two per core, until dropped.
struct Load(Vec<Child>);

impl Load {
    fn start() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let spin = || {
            Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .spawn()
                .expect("sh")
        };
        Load((0..cores * 2).map(|_| spin()).collect())
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One phase of `secs` seconds; a Markdown row.
fn phase(lab: &Lab, name: &str, secs: u64) -> String {
    let all: Vec<usize> = (0..HOSTS).collect();
    let before = placement(lab, &all);
    let start = scrape(lab);
    let pids: Vec<u32> = (0..HOSTS).filter_map(|i| lab.agent_pid(i)).collect();
    let cpu_before: Vec<f64> = pids.iter().map(|&p| cpu_seconds(p)).collect();
    let began = Instant::now();
    let mut moved = 0;
    while began.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(5));
        moved += placement(lab, &all)
            .iter()
            .filter(|(ip, on)| before.get(*ip) != Some(*on))
            .count();
    }
    let elapsed = began.elapsed().as_secs_f64();
    let end = scrape(lab);
    let delta = |metric: &str| total(&end, metric) - total(&start, metric);
    let cpu = pids
        .iter()
        .zip(&cpu_before)
        .map(|(&p, b)| (cpu_seconds(p) - b) / elapsed * 100.0)
        .fold(0.0, f64::max);
    let sent = delta("extip_peer_heartbeats_sent_total");
    format!(
        "| {name} | {secs} s | {} | {} | {} | {} | {moved} | {} | {:.0} | {cpu:.2} % |",
        delta("extip_peer_revocations_total"),
        delta("extip_peer_votes_total"),
        lab.revoked().len(),
        delta("extip_peer_acks_missed_total"),
        rtt_p99(&end),
        sent / HOSTS as f64 / elapsed,
    )
}

fn main() {
    let secs: u64 = std::env::var("EXTIP_SOAK_SECS")
        .ok()
        .map_or(600, |s| s.parse().expect("EXTIP_SOAK_SECS: seconds"));
    let mut lab = Lab::new(HOSTS);
    lab.agent_ttl = None;
    for i in 0..HOSTS {
        lab.start_agent(i, &[]);
    }
    let pairs: Vec<(String, String)> = vips()
        .iter()
        .map(|ip| (format!("/extip/ips/{ip}"), "{}".into()))
        .collect();
    lab.put_many(&pairs);
    let all: Vec<usize> = (0..HOSTS).collect();
    let placed = wait_for(Duration::from_secs(30), || {
        lab::fleet::all_served(&lab, &all)
    });
    placed.expect("the IPs were placed");
    lab.wait_vouched(&all);
    // Past the stabilization (10 s) IPs move to the hosts that started later: wait until
    // the placement has not changed for 6 s.
    let mut last = placement(&lab, &all);
    let mut same_since = Instant::now();
    let settling = Instant::now();
    while same_since.elapsed() < Duration::from_secs(6)
        || settling.elapsed() < Duration::from_secs(12)
    {
        std::thread::sleep(Duration::from_secs(1));
        let now = placement(&lab, &all);
        if now != last {
            last = now;
            same_since = Instant::now();
        }
    }
    println!("| phase | length | revocations | votes | revoked markers | acks missed | IPs moved (5 s samples) | heartbeat RTT p99 | heartbeats sent per host per s | agent CPU (worst of 5) |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    println!("{}", phase(&lab, "idle", secs));
    let load = Load::start();
    println!("{}", phase(&lab, "every core busy", secs));
    drop(load);
}
