//! Routed failover: `cargo bench --bench routed` (as root). 3 hosts with agents
//! (`--export-routes`, TTL 3s) and BIRD, a BIRD router with ECMP and BFD, a client
//! pinging through the router every 10 ms. Each event runs `EXTIP_BENCH_RUNS` times
//! (default 5): time until the router's `ip -j route` reflects it, and probes lost.

#[path = "../tests/lab/mod.rs"]
mod lab;

use std::time::{Duration, Instant};

use lab::routing::{lost_pings, ping, wait_routes_match_holders};
use lab::{wait_for, Lab};

const TTL: &str = "3s";

struct Sample {
    converged: Duration,
    lost: u32,
}

fn gateway(host: usize) -> String {
    format!("192.0.2.{}", host + 1)
}

/// One of two holders of a shared IP stops gracefully.
fn graceful(lab: &mut Lab, router: &str, client: &str) -> Sample {
    let ip = "198.51.100.30";
    wait_routes_match_holders(lab, router, ip, 2).expect("two holders");
    let host = lab.holders(ip)[0];
    let probes = ping(client, ip, 200);
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    lab.signal(host, "TERM");
    let gone = || !lab.router_next_hops(router, ip).contains(&gateway(host));
    wait_for(Duration::from_secs(10), gone).expect("next hop dropped");
    let converged = start.elapsed();
    let lost = lost_pings(probes);
    lab.wait_exit(host, Duration::from_secs(5))
        .expect("stopped");
    lab.start_agent(host, &["--lease-ttl", TTL, "--export-routes"]);
    Sample { converged, lost }
}

/// One of three holders of an "all" IP loses its link; BFD tells the router.
fn host_loss(lab: &mut Lab, router: &str, client: &str) -> Sample {
    let ip = "198.51.100.31";
    wait_routes_match_holders(lab, router, ip, 3).expect("three holders");
    let probes = ping(client, ip, 200);
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    lab.cut(2);
    let gone = || !lab.router_next_hops(router, ip).contains(&gateway(2));
    wait_for(Duration::from_secs(10), gone).expect("next hop dropped");
    let converged = start.elapsed();
    let lost = lost_pings(probes);
    lab.reconnect(2);
    Sample { converged, lost }
}

/// The holder of an exclusive IP is SIGKILLed; the router follows the new holder.
fn exclusive_move(lab: &mut Lab, router: &str, client: &str) -> Sample {
    let ip = "198.51.100.32";
    wait_routes_match_holders(lab, router, ip, 1).expect("one holder");
    let old = lab.holders(ip)[0];
    let probes = ping(client, ip, 600);
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    lab.kill(old);
    let moved = || {
        let hops = lab.router_next_hops(router, ip);
        hops.len() == 1 && hops[0] != gateway(old)
    };
    wait_for(Duration::from_secs(15), moved).expect("router followed");
    let converged = start.elapsed();
    let lost = lost_pings(probes);
    lab.start_agent(old, &["--lease-ttl", TTL, "--export-routes"]);
    Sample { converged, lost }
}

fn summary(name: &str, mut samples: Vec<Sample>) -> String {
    samples.sort_by_key(|s| s.converged);
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    let lost: Vec<String> = samples.iter().map(|s| s.lost.to_string()).collect();
    format!(
        "| {name} | {} | {} | {} | {} | {} |",
        samples.len(),
        ms(samples[samples.len() / 2].converged),
        ms(samples[0].converged),
        ms(samples[samples.len() - 1].converged),
        lost.join(", ")
    )
}

type Event = fn(&mut Lab, &str, &str) -> Sample;

fn main() {
    let runs: usize = std::env::var("EXTIP_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let (mut lab, router, client) = Lab::routed(3, TTL);
    lab.put("/extip/ips/198.51.100.30", r#"{"replicas":2}"#);
    lab.put("/extip/ips/198.51.100.31", r#"{"replicas":"all"}"#);
    lab.put("/extip/ips/198.51.100.32", "{}");
    let events: [(&str, Event); 3] = [
        ("graceful stop, 1 of 2 holders", graceful),
        ("host loss (link down), BFD", host_loss),
        ("exclusive holder SIGKILLed, TTL 3s", exclusive_move),
    ];
    println!("| event | runs | router converged (median) | min | max | probes lost per run (10 ms apart) |");
    println!("|---|---|---|---|---|---|");
    for (name, event) in events {
        let samples = (0..runs)
            .map(|_| event(&mut lab, &router, &client))
            .collect();
        println!("{}", summary(name, samples));
    }
}
