//! Failover as a client sees it: `scripts/bench-failover` (as root).
//!
//! Three hosts on one bridge with a client; the virtual IP 198.51.100.10/32 on the
//! hosts' `eth0`; a TCP server on port 8080 on every host. The client pings the IP every
//! 5 ms and opens a TCP connection to it every 10 ms while the holder (a) stops
//! gracefully, (b) is lost as a host (killed and cut off), (c) is SIGKILLed with its
//! host up. Reported: the longest time without a reply and the probes lost, median
//! (min–max) over `EXTIP_BENCH_RUNS` runs (default 5), for extip with announcements on
//! and off (IP on eth0), extip with the IP on `lo` announced through eth0, extip with
//! the fast etcd profile (etcd `--heartbeat-interval 50 --election-timeout 500`, agents
//! `--lease-ttl 1s`), and keepalived (VRRP, advert_int 1 s) when it is installed. extip
//! runs at its defaults otherwise (lease TTL 2 s). A gap is cut off at [`CAP`]: without
//! announcements a client can wait for minutes. Throughout every run the client also
//! asks for the IP by ARP every ~10 ms (the wire view): a request that two hosts
//! answered is counted; any is a failure of the system under test.
//! `EXTIP_BENCH_SYSTEMS="extip,extip (IP on lo)"` limits the systems compared.

#[path = "../tests/lab/mod.rs"]
mod lab;

use std::time::{Duration, Instant};

use lab::l2::{self, PingReport, Pinger, TcpProbe, TcpServer};
use lab::monitor::has_ip;
use lab::wire::WireMonitor;
use lab::{wait_for, Lab};

const VIP: &str = "198.51.100.10";
/// Longest a run waits for the client to get answers again.
const CAP: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, PartialEq)]
enum System {
    Extip {
        announce: bool,
    },
    /// The IP on `lo`, announced through `--announce-interface eth0`.
    ExtipOnLo,
    /// The fast etcd profile: 1 s leases.
    ExtipFastEtcd,
    Keepalived,
}

/// etcd timers that let it grant 1 s leases (its minimum is 1.5 election timeouts).
const FAST_ETCD: [&str; 4] = ["--heartbeat-interval", "50", "--election-timeout", "500"];

impl System {
    /// Where the virtual IP lives on a holder.
    fn dev(self) -> &'static str {
        match self {
            System::ExtipOnLo => "lo",
            _ => "eth0",
        }
    }

    fn name(self) -> &'static str {
        match self {
            System::Extip { announce: true } => "extip",
            System::Extip { announce: false } => "extip (announcements off)",
            System::ExtipOnLo => "extip (IP on lo)",
            System::ExtipFastEtcd => "extip (fast etcd)",
            System::Keepalived => "keepalived",
        }
    }
}

#[derive(Clone, Copy)]
enum Fault {
    Graceful,
    HostLoss,
    Kill,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Graceful => "graceful stop",
            Fault::HostLoss => "host lost",
            Fault::Kill => "SIGKILL, host up",
        }
    }
}

struct Sample {
    ping: PingReport,
    tcp: PingReport,
    /// Whether the old holder still listed the IP when the run ended.
    left_behind: bool,
    /// ARP requests for the IP that two hosts answered.
    answered_twice: usize,
}

/// h1 holds the VIP; h2 and h3 stand by.
fn start(system: System, lab: &mut Lab) -> Vec<usize> {
    match system {
        System::Extip { .. } | System::ExtipOnLo | System::ExtipFastEtcd => {
            let mut args = vec![
                "--interface",
                system.dev(),
                "--announce-interface",
                "eth0",
                "--allowed-cidr",
                "198.51.100.0/24",
            ];
            if system == (System::Extip { announce: false }) {
                args.extend(["--announce-count", "0"]);
            }
            if system == System::ExtipFastEtcd {
                args.extend(["--lease-ttl", "1s"]);
            }
            lab.start_agent(0, &args);
            lab.put(&format!("/extip/ips/{VIP}"), "{}");
            let held = wait_for(Duration::from_secs(10), || on(lab, 0, system));
            held.expect("h1 holds the IP");
            lab.start_agent(1, &args);
            lab.start_agent(2, &args);
            let up = wait_for(Duration::from_secs(10), || {
                (2..=3).all(|h| lab.get(&format!("/extip/nodes/h{h}")).is_some())
            });
            up.expect("h2 and h3 registered");
            Vec::new()
        }
        System::Keepalived => {
            let daemons = [150, 100, 50]
                .iter()
                .enumerate()
                .map(|(i, &prio)| lab.start_keepalived(i, prio, VIP))
                .collect();
            let held = wait_for(Duration::from_secs(15), || on(lab, 0, system));
            held.expect("keepalived on h1 holds the IP");
            // Let the backups settle as backups.
            std::thread::sleep(Duration::from_secs(1));
            daemons
        }
    }
}

fn on(lab: &Lab, h: usize, system: System) -> bool {
    has_ip(&lab.addresses(h, system.dev()), VIP)
}

fn one_run(system: System, fault: Fault) -> Sample {
    let mut lab = match system {
        System::ExtipFastEtcd => Lab::with_etcd_flags(3, 1, &FAST_ETCD),
        _ => Lab::new(3),
    };
    let client = lab.add_client();
    l2::route_vips_on_link(&client);
    let _servers: Vec<TcpServer> = (0..3).map(|h| TcpServer::start(&lab.hosts[h].ns)).collect();
    let daemons = start(system, &mut lab);
    let wire = WireMonitor::start(&client, &[VIP]);
    let ping = Pinger::start_every(&client, VIP, "0.005");
    let tcp = TcpProbe::start(&client, VIP);
    std::thread::sleep(Duration::from_millis(300));
    match (fault, system) {
        (Fault::Graceful, System::Keepalived) => lab.signal_daemon(daemons[0], "TERM"),
        (Fault::Graceful, _) => lab.signal(0, "TERM"),
        (Fault::HostLoss | Fault::Kill, _) => {
            // Off the wire first: a dying keepalived must not get a last advert out.
            if matches!(fault, Fault::HostLoss) {
                lab.cut(0);
            }
            // Children first (higher PIDs): keepalived's VRRP child would otherwise see
            // its parent die and stop gracefully.
            let pids = lab::run("ip", &["netns", "pids", &lab.hosts[0].ns]);
            let mut pids: Vec<u32> = pids
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect();
            pids.sort_unstable_by(|a, b| b.cmp(a));
            for pid in pids {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
    let fault_at = Instant::now();
    let moved = wait_for(CAP, || on(&lab, 1, system) || on(&lab, 2, system));
    moved.expect("the IP moved");
    // The client is back once its neighbour entry points at the new holder.
    let new_mac = |lab: &Lab| {
        let holder = if on(lab, 1, system) { 1 } else { 2 };
        l2::mac_of(&lab.hosts[holder].ns, "eth0")
    };
    let remaining = CAP.saturating_sub(fault_at.elapsed());
    let _ = wait_for(remaining, || {
        l2::neighbour_mac(&client, VIP) == Some(new_mac(&lab))
    });
    std::thread::sleep(Duration::from_millis(300));
    let sample = Sample {
        ping: ping.stop(),
        tcp: tcp.stop(),
        left_behind: on(&lab, 0, system),
        answered_twice: wire.stop().overlaps.len(),
    };
    if std::env::var_os("EXTIP_BENCH_DEBUG").is_some() {
        for h in 1..=3 {
            eprintln!("---- h{h}\n{}", lab.file(&format!("keepalived-h{h}.log")));
        }
    }
    drop(lab);
    sample
}

fn median_min_max(mut v: Vec<Duration>) -> String {
    v.sort();
    let ms = |d: Duration| {
        if d >= CAP {
            format!(">= {} s", CAP.as_secs())
        } else {
            format!("{} ms", d.as_millis())
        }
    };
    format!(
        "{} ({}–{})",
        ms(v[v.len() / 2]),
        ms(v[0]),
        ms(v[v.len() - 1])
    )
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    assert!(
        std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout == b"0\n"),
        "scripts/bench-failover needs root"
    );
    let runs: usize = std::env::var("EXTIP_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let keepalived = std::process::Command::new("keepalived")
        .arg("--version")
        .output()
        .is_ok();
    let mut systems = vec![
        System::Extip { announce: true },
        System::Extip { announce: false },
        System::ExtipOnLo,
        System::ExtipFastEtcd,
    ];
    if keepalived {
        systems.push(System::Keepalived);
    } else {
        eprintln!("keepalived is not installed: extip only");
    }
    if let Ok(only) = std::env::var("EXTIP_BENCH_SYSTEMS") {
        systems.retain(|s| only.split(',').any(|o| s.name() == o));
    }
    println!("| fault | system | ping: longest gap | pings lost | TCP: longest gap | connects lost | runs with two hosts answering (ARP) | old holder still lists the IP |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut medians = Vec::new();
    for fault in [Fault::Graceful, Fault::HostLoss, Fault::Kill] {
        for &system in &systems {
            let samples: Vec<Sample> = (0..runs).map(|_| one_run(system, fault)).collect();
            let ping_gaps: Vec<Duration> = samples.iter().map(|s| s.ping.longest_gap).collect();
            let tcp_gaps: Vec<Duration> = samples.iter().map(|s| s.tcp.longest_gap).collect();
            let ping_lost = samples
                .iter()
                .map(|s| s.ping.sent - s.ping.received)
                .collect();
            let tcp_lost = samples
                .iter()
                .map(|s| s.tcp.sent - s.tcp.received)
                .collect();
            let left = samples.iter().filter(|s| s.left_behind).count();
            let twice = samples.iter().filter(|s| s.answered_twice > 0).count();
            let mut sorted = ping_gaps.clone();
            sorted.sort();
            medians.push((fault.name(), system, sorted[sorted.len() / 2]));
            println!(
                "| {} | {} | {} | {} | {} | {} | {twice} of {runs} | {left} of {runs} |",
                fault.name(),
                system.name(),
                median_min_max(ping_gaps),
                median(ping_lost),
                median_min_max(tcp_gaps),
                median(tcp_lost),
            );
        }
    }
    if systems.contains(&System::Keepalived) {
        println!();
        println!("| fault | median ping gap, keepalived / extip |");
        println!("|---|---|");
        for (fault, system, gap) in &medians {
            if *system != (System::Extip { announce: true }) {
                continue;
            }
            let theirs = medians
                .iter()
                .find(|(f, s, _)| f == fault && *s == System::Keepalived)
                .map(|(_, _, g)| *g)
                .expect("keepalived ran");
            println!(
                "| {fault} | {:.1}x |",
                theirs.as_secs_f64() / gap.as_secs_f64().max(0.001)
            );
        }
    }
}
