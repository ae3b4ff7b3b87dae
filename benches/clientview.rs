//! Failover as a client sees it: `scripts/bench-failover` (as root).
//!
//! Three hosts on one bridge with a client; the virtual IP 198.51.100.10/32 on the
//! hosts' `eth0`; a TCP server on port 8080 on every host. The client pings the IP every
//! 5 ms and opens a TCP connection to it every 10 ms while the holder (a) stops
//! gracefully, (b) is lost as a host (killed and cut off), (c) is SIGKILLed with its
//! host up, (d) is SIGSTOPped (frozen) with its host up. Reported: the longest time
//! without a reply and the probes lost, median (min–max) over `EXTIP_BENCH_RUNS` runs
//! (default 5), for extip at its defaults (peers vouching, lease TTL 10 s), extip with
//! `--peers off` (the lease alone, TTL 2 s), keepalived at its defaults (VRRPv2,
//! advert_int 1 s) and keepalived tuned (VRRPv3, advert_int 0.1 s) when keepalived is
//! installed. More systems by name in `EXTIP_BENCH_SYSTEMS` (comma separated): "extip
//! (announcements off)", "extip (IP on lo)", "extip (fast etcd)" (etcd
//! `--heartbeat-interval 50 --election-timeout 500`, `--peers off --lease-ttl 1s`).
//! A gap is cut off at [`CAP`]: without announcements a client can wait for minutes.
//! Throughout every run the client also asks for the IP by ARP every ~10 ms (the wire
//! view): a request that two hosts answered is counted, and so is a run where the old
//! holder still answered after the new one had started.
//! Last, the peer link: the holder's VRRP adverts (keepalived) or heartbeats (extip)
//! are dropped for 3 s while etcd and the client still reach every host; the table
//! counts the ARP rounds two hosts answered.

#[path = "../tests/lab/mod.rs"]
mod lab;

use std::time::{Duration, Instant};

use lab::l2::{self, PingReport, Pinger, TcpProbe, TcpServer};
use lab::monitor::has_ip;
use lab::wire::WireMonitor;
use lab::{wait_for, Lab};

const VIP: &str = "198.51.100.10";
/// Longest a run waits for the client to get answers again.
const CAP: Duration = Duration::from_secs(15);

#[derive(Clone, Copy, PartialEq, Debug)]
enum System {
    /// extip at its defaults: peers vouch, lease TTL 10 s.
    Extip,
    /// `--peers off`: the lease alone (TTL 2 s), as before peer vouching.
    ExtipPeersOff,
    ExtipNoAnnounce,
    /// The IP on `lo`, announced through `--announce-interface eth0`.
    ExtipOnLo,
    /// The fast etcd profile: 1 s leases, peers off.
    ExtipFastEtcd,
    Keepalived,
    /// VRRPv3, advert_int 0.1.
    KeepalivedTuned,
}

/// etcd timers that let it grant 1 s leases (its minimum is 1.5 election timeouts).
const FAST_ETCD: [&str; 4] = ["--heartbeat-interval", "50", "--election-timeout", "500"];

const ALL: [System; 7] = [
    System::Extip,
    System::ExtipPeersOff,
    System::Keepalived,
    System::KeepalivedTuned,
    System::ExtipNoAnnounce,
    System::ExtipOnLo,
    System::ExtipFastEtcd,
];

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
            System::Extip => "extip",
            System::ExtipPeersOff => "extip --peers off",
            System::ExtipNoAnnounce => "extip (announcements off)",
            System::ExtipOnLo => "extip (IP on lo)",
            System::ExtipFastEtcd => "extip (fast etcd)",
            System::Keepalived => "keepalived",
            System::KeepalivedTuned => "keepalived tuned",
        }
    }

    fn is_keepalived(self) -> bool {
        matches!(self, System::Keepalived | System::KeepalivedTuned)
    }

    /// The agent's flags beyond the lab's.
    fn agent_args(self) -> Vec<&'static str> {
        let mut args = vec![
            "--interface",
            self.dev(),
            "--announce-interface",
            "eth0",
            "--allowed-cidr",
            "198.51.100.0/24",
        ];
        match self {
            System::ExtipNoAnnounce => args.extend(["--announce-count", "0"]),
            System::ExtipPeersOff => args.extend(["--peers", "off"]),
            System::ExtipFastEtcd => args.extend(["--peers", "off", "--lease-ttl", "1s"]),
            _ => {}
        }
        args
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Fault {
    Graceful,
    HostLoss,
    Kill,
    Freeze,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Graceful => "graceful stop",
            Fault::HostLoss => "host lost",
            Fault::Kill => "SIGKILL, host up",
            Fault::Freeze => "SIGSTOP, host up",
        }
    }
}

struct Sample {
    ping: PingReport,
    tcp: PingReport,
    /// ARP requests for the IP that two hosts answered.
    answered_twice: usize,
    /// Whether the old holder's last ARP answer came before the new one's first.
    in_order: bool,
}

/// h1 holds the VIP; h2 and h3 stand by. The keepalived daemons' indices.
fn start(system: System, lab: &mut Lab) -> Vec<usize> {
    if system.is_keepalived() {
        let tuned = system == System::KeepalivedTuned;
        let daemons = [150, 100, 50]
            .iter()
            .enumerate()
            .map(|(i, &prio)| lab.start_keepalived_tuned(i, prio, VIP, tuned))
            .collect();
        let held = wait_for(Duration::from_secs(15), || on(lab, 0, system));
        held.expect("keepalived on h1 holds the IP");
        // Let the backups settle as backups.
        std::thread::sleep(Duration::from_secs(1));
        return daemons;
    }
    // The agent's own default TTL (10 s with peers, 2 s without), not the lab's 2 s.
    lab.agent_ttl = None;
    let args = system.agent_args();
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
    if !matches!(system, System::ExtipPeersOff | System::ExtipFastEtcd) {
        lab.wait_vouched(&[0, 1, 2]);
        // A witness process may vote only a full promise (about 1 s) after its start:
        // hosts that have been up a while, as in production.
        std::thread::sleep(Duration::from_millis(1200));
    }
    Vec::new()
}

fn on(lab: &Lab, h: usize, system: System) -> bool {
    has_ip(&lab.addresses(h, system.dev()), VIP)
}

/// Every process in host `i`'s namespace, children first (higher PIDs): keepalived's
/// VRRP child would otherwise see its parent die and stop gracefully.
fn host_pids(lab: &Lab, i: usize) -> Vec<u32> {
    let pids = lab::run("ip", &["netns", "pids", &lab.hosts[i].ns]);
    let mut pids: Vec<u32> = pids
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    pids.sort_unstable_by(|a, b| b.cmp(a));
    pids
}

fn signal_pids(pids: &[u32], signal: &str) {
    for pid in pids {
        let _ = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status();
    }
}

fn inject(lab: &mut Lab, system: System, fault: Fault, daemons: &[usize]) -> Vec<u32> {
    match fault {
        Fault::Graceful if system.is_keepalived() => lab.signal_daemon(daemons[0], "TERM"),
        Fault::Graceful => lab.signal(0, "TERM"),
        Fault::HostLoss | Fault::Kill => {
            // Off the wire first: a dying keepalived must not get a last advert out.
            if fault == Fault::HostLoss {
                lab.cut(0);
            }
            signal_pids(&host_pids(lab, 0), "KILL");
        }
        Fault::Freeze => {
            // The TCP server stays up: only the failover daemon freezes.
            let frozen: Vec<u32> = if system.is_keepalived() {
                let all = lab::run("pgrep", &["-f", "keepalived-h1"]);
                all.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            } else {
                lab.agent_pid(0).into_iter().collect()
            };
            signal_pids(&frozen, "STOP");
            return frozen;
        }
    }
    Vec::new()
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
    let frozen = inject(&mut lab, system, fault, &daemons);
    let fault_at = Instant::now();
    let moved = wait_for(CAP, || on(&lab, 1, system) || on(&lab, 2, system));
    moved.unwrap_or_else(|| panic!("{} {}: the IP did not move", system.name(), fault.name()));
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
    let wire = wire.stop();
    let sample = Sample {
        ping: ping.stop(),
        tcp: tcp.stop(),
        answered_twice: wire.overlaps.len(),
        in_order: wire.handed_over_in_order(VIP.parse().expect("IPv4")),
    };
    signal_pids(&frozen, "CONT");
    if std::env::var_os("EXTIP_BENCH_DEBUG").is_some() && system.is_keepalived() {
        for h in 1..=3 {
            eprintln!("---- h{h}\n{}", lab.file(&format!("keepalived-h{h}.log")));
        }
    }
    drop(lab);
    sample
}

/// Drop h1's VRRP adverts or heartbeats both ways for 3 s, etcd and the client still
/// reachable: the ARP rounds two hosts answered, of all rounds.
fn peer_link_cut(system: System) -> (usize, usize) {
    let mut lab = Lab::new(3);
    let client = lab.add_client();
    l2::route_vips_on_link(&client);
    start(system, &mut lab);
    let wire = WireMonitor::start(&client, &[VIP]);
    std::thread::sleep(Duration::from_millis(300));
    if system.is_keepalived() {
        let ns = &lab.hosts[0].ns;
        lab::fence::nft(ns, "add table inet labcut");
        for hook in ["input", "output"] {
            lab::fence::nft(
                ns,
                &format!("add chain inet labcut {hook} {{ type filter hook {hook} priority -5; }}"),
            );
            lab::fence::nft(
                ns,
                &format!("add rule inet labcut {hook} meta l4proto vrrp drop"),
            );
        }
    } else {
        lab.drop_heartbeats(0, lab::peers::Direction::Both);
    }
    std::thread::sleep(Duration::from_secs(3));
    let wire = wire.stop();
    (wire.overlaps.len(), wire.rounds)
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

/// The systems to compare: the default four (keepalived only when installed), or the
/// ones `EXTIP_BENCH_SYSTEMS` names.
fn systems() -> Vec<System> {
    let keepalived = std::process::Command::new("keepalived")
        .arg("--version")
        .output()
        .is_ok();
    if let Ok(only) = std::env::var("EXTIP_BENCH_SYSTEMS") {
        return ALL
            .into_iter()
            .filter(|s| only.split(',').any(|o| s.name() == o.trim()))
            .collect();
    }
    if !keepalived {
        eprintln!("keepalived is not installed: extip only");
    }
    ALL.into_iter()
        .take(4)
        .filter(|s| keepalived || !s.is_keepalived())
        .collect()
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
    let systems = systems();
    println!("| fault | system | ping: longest gap | pings lost | TCP: longest gap | connects lost | runs with two hosts answering (ARP) | runs where the old holder answered after the new one started |");
    println!("|---|---|---|---|---|---|---|---|");
    for fault in [Fault::HostLoss, Fault::Kill, Fault::Freeze, Fault::Graceful] {
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
            let twice = samples.iter().filter(|s| s.answered_twice > 0).count();
            let disorder = samples.iter().filter(|s| !s.in_order).count();
            println!(
                "| {} | {} | {} | {} | {} | {} | {twice} of {runs} | {disorder} of {runs} |",
                fault.name(),
                system.name(),
                median_min_max(ping_gaps),
                median(ping_lost),
                median_min_max(tcp_gaps),
                median(tcp_lost),
            );
        }
    }
    println!();
    println!("| peer link of the holder cut for 3 s (etcd and client reachable) | ARP rounds answered by two hosts |");
    println!("|---|---|");
    for system in systems.into_iter().filter(|s| {
        matches!(
            s,
            System::Extip | System::KeepalivedTuned | System::Keepalived
        )
    }) {
        let (twice, rounds) = peer_link_cut(system);
        println!("| {} | {twice} of {rounds} |", system.name());
    }
}
