//! Routed failover: `cargo bench --bench routed` (as root). 3 hosts with agents
//! (`--export-routes`, default TTL 2s) and BIRD, a BIRD router with ECMP and BFD, a
//! client pinging through the router every 10 ms. Each event runs `EXTIP_BENCH_RUNS`
//! times (default 5): time until the router's `ip -j route` reflects it, and probes
//! lost. The events where an agent dies or freezes but its host and BIRD stay up also
//! report when the router dropped the old holder's route, and how long after its fence
//! closed (read from nft): with the two-session setup (`--fenced-router`, the default
//! here) the fence cuts the session of fenced routes and BFD tells the router; with
//! `EXTIP_BENCH_SESSIONS=one` only the backstop address lifetime removes the route
//! (`--address-lifetime`, or `EXTIP_BENCH_LIFETIME`).

#[path = "../tests/lab/mod.rs"]
mod lab;

use std::time::{Duration, Instant};

use lab::routing::{lost_pings, ping, wait_routes_match_holders, RouterDaemon, Routing, Sessions};
use lab::{wait_for, Lab};

struct Sample {
    converged: Duration,
    /// When the router dropped the old holder's route, where that differs.
    old_gone: Option<Duration>,
    /// Seconds from the old holder's fence closing to its route leaving the router.
    after_dark: Option<f64>,
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
    lab.start_agent(host, &as_strs(&agent_args()));
    Sample {
        converged,
        old_gone: None,
        after_dark: None,
        lost,
    }
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
    Sample {
        converged,
        old_gone: None,
        after_dark: None,
        lost,
    }
}

/// The holder of an exclusive IP is SIGKILLed (`signal` "KILL") or frozen ("STOP");
/// its host and its BIRD stay up. Converged: the new holder's route is at the router;
/// old_gone: the old one's left it (when the backstop lifetime removed the address).
fn exclusive_agent_fault(lab: &mut Lab, router: &str, client: &str, signal: &str) -> Sample {
    let ip = "198.51.100.32";
    wait_for(Duration::from_secs(30), || {
        lab.router_next_hops(router, ip).len() == 1 && lab.holders(ip).len() == 1
    })
    .expect("one holder");
    // Steady state: every host's sessions and BFD are up again after the last run's
    // restart (a session still coming back has no BFD to lose: see the README).
    let daemon = router_daemon();
    let settled = Instant::now();
    wait_for(Duration::from_secs(60), || {
        lab.router_sessions_up(router, daemon)
    })
    .unwrap_or_else(|| panic!("sessions not up:\n{}", lab.router_sessions(router, daemon)));
    eprintln!(
        "sessions up {:?} after the holder was seen",
        settled.elapsed()
    );
    let old = lab.holders(ip)[0];
    let old_hop = gateway(old);
    let probes = ping(client, ip, 600);
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    match signal {
        "KILL" => lab.kill(old),
        _ => lab.signal(old, signal),
    }
    // Nothing renews the fence now: its element's expiry is when the host goes dark.
    let ns = lab.hosts[old].ns.clone();
    let dark_at = lab::fence::try_fence_deadline(&ns).unwrap_or_else(lab::fence::epoch);
    // Both ends in one loop: the old route may leave before the new one arrives.
    let (mut arrived, mut gone) = (None, None);
    let mut gone_at = 0.0;
    wait_for(Duration::from_secs(60), || {
        let hops = lab.router_next_hops(router, ip);
        if arrived.is_none() && hops.iter().any(|h| *h != old_hop) {
            arrived = Some(start.elapsed());
        }
        if gone.is_none() && !hops.contains(&old_hop) {
            gone = Some(start.elapsed());
            gone_at = lab::fence::epoch();
        }
        arrived.is_some() && gone.is_some()
    });
    let converged = arrived.expect("the new holder's route");
    let old_gone = gone;
    let after_dark = old_gone.map(|_| gone_at - dark_at);
    let lost = lost_pings(probes);
    if signal == "STOP" {
        lab.signal(old, "CONT");
        std::thread::sleep(Duration::from_secs(1));
        lab.signal(old, "TERM");
        lab.wait_exit(old, Duration::from_secs(5)).expect("stopped");
    }
    lab.start_agent(old, &as_strs(&agent_args()));
    Sample {
        converged,
        old_gone,
        after_dark,
        lost,
    }
}

fn exclusive_kill(lab: &mut Lab, router: &str, client: &str) -> Sample {
    exclusive_agent_fault(lab, router, client, "KILL")
}

fn exclusive_freeze(lab: &mut Lab, router: &str, client: &str) -> Sample {
    exclusive_agent_fault(lab, router, client, "STOP")
}

/// Flags beyond the defaults: `EXTIP_BENCH_LIFETIME` as `--address-lifetime`.
fn extra_args() -> Vec<String> {
    match std::env::var("EXTIP_BENCH_LIFETIME") {
        Ok(lifetime) => vec!["--address-lifetime".into(), lifetime],
        Err(_) => Vec::new(),
    }
}

/// The hosts' BGP sessions: two (`--fenced-router`) unless `EXTIP_BENCH_SESSIONS=one`.
fn sessions() -> Sessions {
    match std::env::var("EXTIP_BENCH_SESSIONS").as_deref() {
        Ok("one") => Sessions::One,
        _ => Sessions::Two,
    }
}

/// The router's daemon: BIRD unless `EXTIP_BENCH_ROUTER=frr`.
fn router_daemon() -> RouterDaemon {
    match std::env::var("EXTIP_BENCH_ROUTER").as_deref() {
        Ok("frr") => RouterDaemon::Frr,
        _ => RouterDaemon::Bird,
    }
}

/// The agents' flags, as [`Lab::routed_with`] starts them.
fn agent_args() -> Vec<String> {
    let routed = sessions().agent_args().iter().map(|a| a.to_string());
    extra_args().into_iter().chain(routed).collect()
}

/// Flags as the lab takes them.
fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

fn summary(name: &str, mut samples: Vec<Sample>) -> String {
    samples.sort_by_key(|s| s.converged);
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    let lost: Vec<String> = samples.iter().map(|s| s.lost.to_string()).collect();
    let mut gone: Vec<Duration> = samples.iter().filter_map(|s| s.old_gone).collect();
    gone.sort();
    let gone = match (gone.first(), gone.last()) {
        (Some(min), Some(max)) => {
            format!("{} ({}–{})", ms(gone[gone.len() / 2]), ms(*min), ms(*max))
        }
        _ => "".into(),
    };
    let mut dark: Vec<f64> = samples.iter().filter_map(|s| s.after_dark).collect();
    dark.sort_by(f64::total_cmp);
    let dark = match (dark.first(), dark.last()) {
        (Some(min), Some(max)) => {
            let ms = |s: f64| format!("{:.0} ms", s * 1000.0);
            format!("{} ({}–{})", ms(dark[dark.len() / 2]), ms(*min), ms(*max))
        }
        _ => "".into(),
    };
    format!(
        "| {name} | {} | {} | {} | {} | {gone} | {dark} | {} |",
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
    let routing = Routing {
        sessions: sessions(),
        router: router_daemon(),
    };
    let (mut lab, router, client) = Lab::routed_with(3, &as_strs(&extra_args()), routing);
    lab.put("/extip/ips/198.51.100.30", r#"{"replicas":2}"#);
    lab.put("/extip/ips/198.51.100.31", r#"{"replicas":"all"}"#);
    lab.put("/extip/ips/198.51.100.32", "{}");
    let events: [(&str, Event); 4] = [
        ("graceful stop, 1 of 2 holders", graceful),
        ("host loss (link down), BFD", host_loss),
        ("exclusive holder's agent SIGKILLed", exclusive_kill),
        ("exclusive holder's agent frozen", exclusive_freeze),
    ];
    let lifetime = std::env::var("EXTIP_BENCH_LIFETIME").unwrap_or_else(|_| "default".into());
    println!(
        "Lease TTL and peers at their defaults, address lifetime {lifetime}, sessions {:?}, router {:?}.",
        routing.sessions, routing.router
    );
    println!();
    println!("| event | runs | router converged (median) | min | max | old holder's route gone: median (min–max) | gone after its fence closed: median (min–max) | probes lost per run (10 ms apart) |");
    println!("|---|---|---|---|---|---|---|---|");
    for (name, event) in events {
        let samples = (0..runs)
            .map(|_| event(&mut lab, &router, &client))
            .collect();
        println!("{}", summary(name, samples));
    }
}
