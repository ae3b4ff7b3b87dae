//! Failover timings in the lab: `cargo bench --bench failover` (as root).
//!
//! Three hosts, `--lease-ttl 2s`, one exclusive IP on `lo`. Each run measures the time
//! from the fault to the moment another host has the address (read with `ip -j addr`,
//! polled every ~3 ms), while the dual-holder monitor watches every live host.
//! Runs: `EXTIP_BENCH_RUNS` (default 7). Prints a Markdown table for docs/benchmarks.md.

#[path = "../tests/lab/mod.rs"]
mod lab;

use std::time::{Duration, Instant};

use lab::monitor::{has_ip, OverlapMonitor};
use lab::{wait_for, Lab};

const VIP: &str = "198.51.100.10";

#[derive(Clone, Copy)]
enum Fault {
    /// SIGKILL the holder's agent and take its host off the bridge.
    HostLoss,
    /// SIGTERM the holder's agent.
    GracefulStop,
}

struct Sample {
    took: Duration,
    overlaps: usize,
}

fn holder(lab: &Lab) -> usize {
    let found = wait_for(Duration::from_secs(10), || lab.holders(VIP).len() == 1);
    found.expect("one holder");
    lab.holders(VIP)[0]
}

fn one_run(lab: &mut Lab, fault: Fault) -> Sample {
    let old = holder(lab);
    let others: Vec<usize> = (0..lab.hosts.len()).filter(|&i| i != old).collect();
    let watched = match fault {
        Fault::HostLoss => others.clone(),
        Fault::GracefulStop => (0..lab.hosts.len()).collect(),
    };
    let monitor = OverlapMonitor::start(lab.namespaces(&watched), vec![VIP.into()]);
    let start = Instant::now();
    match fault {
        Fault::HostLoss => {
            lab.signal(old, "KILL");
            lab.cut(old);
        }
        Fault::GracefulStop => lab.signal(old, "TERM"),
    }
    let moved = |lab: &Lab| others.iter().any(|&i| has_ip(&lab.addresses(i, "lo"), VIP));
    while !moved(lab) {
        assert!(start.elapsed() < Duration::from_secs(10), "no takeover");
    }
    let took = start.elapsed();
    std::thread::sleep(Duration::from_millis(200));
    let overlaps = monitor.stop().overlaps.len();
    lab.wait_exit(old, Duration::from_secs(5))
        .expect("old agent exits");
    lab.reconnect(old);
    lab.start_agent(old, &[]);
    let name = format!("/extip/nodes/{}", lab.hosts[old].name);
    wait_for(Duration::from_secs(10), || lab.get(&name).is_some()).expect("agent back");
    Sample { took, overlaps }
}

fn summary(name: &str, samples: &mut [Sample]) -> String {
    samples.sort_by_key(|s| s.took);
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    let overlaps: usize = samples.iter().map(|s| s.overlaps).sum();
    format!(
        "| {name} | {} | {} | {} | {} | {overlaps} |",
        samples.len(),
        ms(samples[samples.len() / 2].took),
        ms(samples[0].took),
        ms(samples[samples.len() - 1].took),
    )
}

fn main() {
    let runs: usize = std::env::var("EXTIP_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let mut lab = Lab::new(3);
    lab.start_all();
    lab.put(&format!("/extip/ips/{VIP}"), "{}");
    let mut rows = Vec::new();
    for (name, fault) in [
        ("graceful stop (SIGTERM)", Fault::GracefulStop),
        ("host loss (SIGKILL + link down)", Fault::HostLoss),
    ] {
        let mut samples: Vec<Sample> = (0..runs).map(|_| one_run(&mut lab, fault)).collect();
        rows.push(summary(name, &mut samples));
    }
    println!("| fault (3 hosts, lease TTL 2s) | runs | median | min | max | overlap samples |");
    println!("|---|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
}
