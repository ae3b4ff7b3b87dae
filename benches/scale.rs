//! Scale: `scripts/bench-scale [HOSTS] [IPS]` (as root; default 10 hosts, 10,000 IPs).
//! Time to place every IP, spread, a lost host and its return, idle CPU and memory of
//! the agents, and `ip -batch` adding the same addresses on one host for comparison.
//! IPv6 /128s on `lo` (10,000 IPv4 addresses do not fit the documentation ranges).
//! `EXTIP_SCALE_LOG` sets the agents' log filter (`info,extip=debug` logs every
//! reconcile's duration), `EXTIP_SCALE_KEEP=DIR` keeps their logs.

#[path = "../tests/lab/mod.rs"]
mod lab;

use std::collections::BTreeMap;
use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use lab::{wait_every, wait_for, Lab};

/// How often the placement and the host loss are polled: a poll lists every host's
/// addresses (a fork and a JSON document of ~1,000 addresses per host), which every
/// 5 ms would take a core from the agents being measured. Their times come from `ip
/// monitor` stamps and the agents' logs instead.
const QUIET_POLL: Duration = Duration::from_millis(250);

/// Agent flags; the lease TTL comes from `EXTIP_SCALE_TTL` (default: the agent's).
fn args(ttl: &str) -> Vec<&str> {
    let mut args = vec!["--allowed-cidr", "2001:db8::/32", "--stabilization", "10s"];
    if ttl != "default" {
        args.extend(["--lease-ttl", ttl]);
    }
    args
}

fn ips(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, (i >> 16) as u16, i as u16).to_string()
        })
        .collect()
}

/// Holder of every IP among `hosts`, from one `ip -j addr` per host.
fn placement(lab: &Lab, hosts: &[usize]) -> BTreeMap<String, Vec<usize>> {
    let mut on: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for &h in hosts {
        for a in lab.addresses(h, "lo") {
            if let Some(ip) = a
                .strip_suffix("/128")
                .filter(|ip| ip.starts_with("2001:db8:100:"))
            {
                // A dump of a changing table can list an address twice.
                let holders = on.entry(ip.to_string()).or_default();
                if !holders.contains(&h) {
                    holders.push(h);
                }
            }
        }
    }
    on
}

fn spread(p: &BTreeMap<String, Vec<usize>>, hosts: &[usize]) -> (usize, usize) {
    let mut count: BTreeMap<usize, usize> = hosts.iter().map(|&h| (h, 0)).collect();
    for on in p.values() {
        for h in on {
            *count.entry(*h).or_default() += 1;
        }
    }
    (
        *count.values().min().unwrap_or(&0),
        *count.values().max().unwrap_or(&0),
    )
}

/// IPs a sample saw on two hosts that the first of them still holds when read again:
/// both held it at the same instant (hosts are read one after another).
fn confirmed_overlaps(lab: &Lab, p: &BTreeMap<String, Vec<usize>>) -> Vec<(String, Vec<usize>)> {
    p.iter()
        .filter(|(_, on)| on.len() > 1)
        .filter(|(ip, on)| lab::monitor::has_ip(&lab.addresses(on[0], "lo"), ip))
        .map(|(ip, on)| (ip.clone(), on.clone()))
        .collect()
}

fn served_once(p: &BTreeMap<String, Vec<usize>>, total: usize) -> bool {
    p.len() == total && p.values().all(|on| on.len() == 1)
}

/// Reconciles an agent has run and the seconds they took, from its /metrics.
fn reconciles(lab: &Lab, h: usize) -> (f64, f64) {
    let text = lab.exec(h, &["curl", "-s", "http://127.0.0.1:9478/metrics"]);
    let metric = |name: &str| lab::sample_value(&text, name).unwrap_or(0.0);
    (
        metric("extip_reconcile_duration_seconds_count"),
        metric("extip_reconcile_duration_seconds_sum"),
    )
}

/// etcd's received gRPC messages so far: (lease keepalives, everything else), read from
/// its /metrics through host `h`'s namespace.
fn etcd_messages(lab: &Lab, h: usize) -> (f64, f64) {
    let url = format!("http://{}:2379/metrics", lab.etcd[0].addr);
    let text = lab.exec(h, &["curl", "-s", &url]);
    let (mut keepalive, mut other) = (0.0, 0.0);
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("grpc_server_msg_received_total{") else {
            continue;
        };
        let value: f64 = rest
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        if rest.contains("grpc_method=\"LeaseKeepAlive\"") {
            keepalive += value;
        } else {
            other += value;
        }
    }
    (keepalive, other)
}

fn main() {
    let n: usize = std::env::var("EXTIP_SCALE_HOSTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let m: usize = std::env::var("EXTIP_SCALE_IPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let ttl = std::env::var("EXTIP_SCALE_TTL").unwrap_or_else(|_| "default".into());
    let agent_args = args(&ttl);
    println!("| {n} hosts × {m} IPs, `--lease-ttl {ttl}` | | |");
    // The last host runs no agent: the ip -batch reference.
    let mut lab = Lab::new(n + 1);
    if ttl == "default" {
        lab.agent_ttl = None;
    }
    // EXTIP_SCALE_LOG=extip=debug: the agents' log filter (timings of each reconcile);
    // EXTIP_SCALE_KEEP=DIR: keep their logs there.
    if let Ok(filter) = std::env::var("EXTIP_SCALE_LOG") {
        lab.agent_env.push(("EXTIP_LOG".into(), filter));
    }
    let hosts: Vec<usize> = (0..n).collect();
    for &h in &hosts {
        lab.start_agent(h, &agent_args);
    }
    let up = wait_for(Duration::from_secs(30), || {
        (1..=n).all(|h| lab.get(&format!("/extip/nodes/h{h}")).is_some())
    });
    up.expect("agents registered");
    let all = ips(m);
    let pairs: Vec<(String, String)> = all
        .iter()
        .map(|ip| (format!("/extip/ips/{ip}"), "{}".into()))
        .collect();
    let monitors: Vec<_> = hosts
        .iter()
        .map(|&h| lab::monitor::AddressEvents::start_timestamped(&lab.hosts[h].ns))
        .collect();
    let start = Instant::now();
    lab.put_many(&pairs);
    let written = start.elapsed();
    let written_at = std::time::SystemTime::now();
    let polled = wait_every(QUIET_POLL, Duration::from_secs(600), || {
        served_once(&placement(&lab, &hosts), m)
    })
    .expect("all placed");
    let (lo, hi) = spread(&placement(&lab, &hosts), &hosts);
    let every_ip: std::collections::BTreeSet<&String> = all.iter().collect();
    let placed = last_first_addition(monitors, &every_ip, written_at).unwrap_or(polled);
    println!("| {m} IPs on {n} hosts placed | {:.1} s after the last key write (ip monitor; writing the keys: {:.1} s) | per host {lo}–{hi} |", placed.as_secs_f64(), written.as_secs_f64());

    // Keys arrive in batches, so the first placement is uneven; after the stabilization
    // window rebalancing evens it out. Wait for that before measuring idle costs.
    let avg = m as f64 / n as f64;
    let even = |lab: &Lab| {
        let p = placement(lab, &hosts);
        let (lo, hi) = spread(&p, &hosts);
        served_once(&p, m) && lo as f64 >= avg * 0.9 && hi as f64 <= avg * 1.1
    };
    let settled = wait_for(Duration::from_secs(300), || even(&lab));
    let (lo, hi) = spread(&placement(&lab, &hosts), &hosts);
    match settled {
        Some(d) => println!(
            "| rebalanced to ±10 % | {:.1} s after placement | per host {lo}–{hi} |",
            d.as_secs_f64()
        ),
        None => println!("| not rebalanced to ±10 % within 300 s | | per host {lo}–{hi} |"),
    }

    // The kernel's own pace: ip -batch adding the same addresses on one host.
    let batch: String = all
        .iter()
        .map(|ip| format!("address add {ip}/128 dev lo\n"))
        .collect();
    let file = std::env::temp_dir().join(format!("extip-scale-{}", std::process::id()));
    std::fs::write(&file, batch).expect("batch file");
    let t = Instant::now();
    lab::run(
        "ip",
        &["-n", &lab.hosts[n].ns, "-batch", &file.to_string_lossy()],
    );
    println!(
        "| `ip -batch` adding the same {m} addresses on one host | {:.1} s | |",
        t.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_file(&file);

    // Idle: CPU and memory of every agent over 20 s, and any address that vanished
    // meanwhile (a lifetime refresh that came too late).
    let pids: Vec<u32> = hosts.iter().filter_map(|&h| lab.agent_pid(h)).collect();
    let watchers: Vec<_> = hosts
        .iter()
        .map(|&h| lab::monitor::AddressEvents::start(&lab.hosts[h].ns))
        .collect();
    let before: Vec<f64> = pids
        .iter()
        .map(|&p| lab::monitor::process_usage(p).0)
        .collect();
    let reconciles_before: Vec<(f64, f64)> = hosts.iter().map(|&h| reconciles(&lab, h)).collect();
    let etcd_before = etcd_messages(&lab, 0);
    std::thread::sleep(Duration::from_secs(20));
    let etcd_after = etcd_messages(&lab, 0);
    let blinked: usize = watchers
        .into_iter()
        .map(|w| w.deletions("2001:db8:100:").len())
        .sum();
    let after: Vec<(f64, u64)> = pids
        .iter()
        .map(|&p| lab::monitor::process_usage(p))
        .collect();
    let (runs, took) = hosts
        .iter()
        .zip(&reconciles_before)
        .map(|(&h, b)| {
            let a = reconciles(&lab, h);
            (a.0 - b.0, a.1 - b.1)
        })
        .fold((0.0, 0.0), |m: (f64, f64), r| (m.0.max(r.0), m.1.max(r.1)));
    let idle_cpu = after
        .iter()
        .zip(&before)
        .map(|(a, b)| (a.0 - b) / 20.0 * 100.0)
        .fold(0.0, f64::max);
    let rss = after.iter().map(|a| a.1).max().unwrap_or(0);
    println!(
        "| idle agent CPU (worst of {n}) | {idle_cpu:.2} % | peak RSS {} MiB; addresses removed while idle: {blinked} |",
        rss / 1024
    );
    println!(
        "| reconciles while idle (20 s, most of one agent) | {runs:.0} | {:.0} ms of reconciling (most of one agent) |",
        took * 1e3
    );
    println!(
        "| etcd requests while idle (20 s, {n} agents) | {:.1}/s lease keepalives | {:.1}/s everything else (watch, resync lists) |",
        (etcd_after.0 - etcd_before.0) / 20.0,
        (etcd_after.1 - etcd_before.1) / 20.0
    );

    // A host is lost.
    let before = placement(&lab, &hosts);
    let victim = 1;
    let survivors: Vec<usize> = hosts.iter().copied().filter(|&h| h != victim).collect();
    let lost = before.values().filter(|on| on[0] == victim).count();
    let monitors: Vec<_> = survivors
        .iter()
        .map(|&h| lab::monitor::AddressEvents::start_timestamped(&lab.hosts[h].ns))
        .collect();
    let revoked = RecordDeletion::start(&lab, &format!("/extip/nodes/h{}", victim + 1));
    let killed_at = std::time::SystemTime::now();
    lab.kill(victim);
    lab.cut(victim);
    let took = wait_every(QUIET_POLL, Duration::from_secs(120), || {
        served_once(&placement(&lab, &survivors), m)
    })
    .expect("re-placed");
    let revoked = revoked
        .stop()
        .and_then(|at| at.duration_since(killed_at).ok());
    let after = placement(&lab, &survivors);
    let moved = before
        .iter()
        .filter(|(ip, on)| on[0] != victim && after.get(*ip) != Some(*on))
        .count();
    // Served again: when the last of the lost IPs was added on a survivor, from the
    // survivors' logs ("address added" is written once the kernel has acknowledged the
    // add, so it is never early). `ip -ts monitor` stamps a change when `ip` reads it,
    // and on this loaded machine that lagged the logs by up to 0.4 s: shown beside.
    let lost_ips: std::collections::BTreeSet<&String> = before
        .iter()
        .filter(|(_, on)| on[0] == victim)
        .map(|(ip, _)| ip)
        .collect();
    let stamped = last_first_addition(monitors, &lost_ips, killed_at).unwrap_or(took);
    let offsets = |what: &str| log_offsets(&lab, &survivors, what, killed_at);
    let (claims, adds) = (offsets("claim won"), offsets("address added"));
    let served = adds.1;
    println!(
        "| host lost ({lost} IPs) | served again after {served:.2} s (the last one added, survivors' logs; `ip -ts monitor`: {:.2} s) | survivor IPs moved: {moved} |",
        stamped.as_secs_f64(),
    );
    if let Some(revoked) = revoked {
        println!(
            "| etcd revoked its lease (node record deleted, `etcdctl watch`) | {:.2} s after the kill | served {:.2} s after the revocation |",
            revoked.as_secs_f64(),
            served - revoked.as_secs_f64()
        );
    }
    println!(
        "| after the loss, survivors' logs | first / last claim won {:.2} / {:.2} s | first address added {:.2} s |",
        claims.0, claims.1, adds.0
    );

    // It returns: rebalancing after the stabilization window. Its old addresses are
    // still listed (fenced, not answering) until its new agent removes them at start:
    // overlaps are sampled from then on, each confirmed by reading the first host again.
    // Every claim won meanwhile is one move (the agents' logs).
    lab.reconnect(victim);
    let returned_at = std::time::SystemTime::now();
    lab.start_agent(victim, &agent_args);
    let t = Instant::now();
    let stale = wait_for(Duration::from_secs(10), || {
        let held = lab.addresses(victim, "lo");
        !lost_ips.iter().any(|ip| lab::monitor::has_ip(&held, ip))
    });
    let mut seen_twice = Vec::new();
    let balanced = wait_for(Duration::from_secs(300), || {
        let p = placement(&lab, &hosts);
        seen_twice.extend(confirmed_overlaps(&lab, &p));
        let (lo, hi) = spread(&p, &hosts);
        served_once(&p, m) && lo as f64 >= avg * 0.9 && hi as f64 <= avg * 1.1
    });
    let end = placement(&lab, &hosts);
    let moved = end
        .iter()
        .filter(|(ip, on)| after.get(*ip).is_some_and(|a| a != *on))
        .count();
    let (lo, hi) = spread(&end, &hosts);
    match balanced {
        Some(_) => println!("| host returns | balanced after {:.1} s (window 10 s) | {moved} IPs moved; per host {lo}–{hi} |", t.elapsed().as_secs_f64()),
        None => println!("| host returns | not balanced after {:.0} s | {moved} IPs moved; per host {lo}–{hi} |", t.elapsed().as_secs_f64()),
    }
    let overlaps = seen_twice.len();
    // What the agents logged about the first few IPs seen on two hosts, to stderr.
    for (ip, on) in seen_twice.iter().take(3) {
        eprintln!("---- {ip} seen on hosts {on:?}");
        print_log_lines(&lab, &hosts, ip);
    }
    print_log_lines(&lab, &hosts, "etcd connection lost");
    eprintln!(
        "kill at {}, return at {}",
        humantime::format_rfc3339_micros(killed_at),
        humantime::format_rfc3339_micros(returned_at)
    );
    let wins = claims_won_since(&lab, &hosts, returned_at);
    let twice = wins.values().filter(|&&n| n > 1).count();
    for ip in wins
        .iter()
        .filter(|(_, &n)| n > 1)
        .map(|(ip, _)| ip)
        .take(2)
    {
        eprintln!("---- {ip} claimed more than once since the return");
        print_log_lines(&lab, &hosts, ip);
    }
    for &h in &hosts {
        let log = lab.agent_log(h);
        let lines: Vec<&str> = log.lines().collect();
        if let Some(k) = lines
            .iter()
            .position(|l| l.contains("lease deadline reached"))
        {
            eprintln!("---- h{} before its first missed deadline", h + 1);
            let from = k.saturating_sub(25);
            for l in lines[from..(k + 3).min(lines.len())]
                .iter()
                .filter(|l| !l.contains("address added"))
            {
                eprintln!("h{}: {l}", h + 1);
            }
        }
    }
    println!(
        "| while it returned | {} claims won ({} IPs), {twice} IPs moved more than once | overlap samples (an IP on two hosts, confirmed): {overlaps}; its old addresses listed for {:.1} s after it started |",
        wins.values().sum::<usize>(),
        wins.len(),
        stale.map_or(f64::NAN, |d| d.as_secs_f64())
    );
    print_log_counts(&lab, &hosts);
    if let Ok(keep) = std::env::var("EXTIP_SCALE_KEEP") {
        keep_logs(&lab, std::path::Path::new(&keep));
    }
}

/// When the last of `ips` was first added on any host watched by `monitors` after
/// `since`, as `ip -ts monitor` stamped it (None when one of them was never added).
fn last_first_addition(
    monitors: Vec<lab::monitor::AddressEvents>,
    ips: &std::collections::BTreeSet<&String>,
    since: std::time::SystemTime,
) -> Option<Duration> {
    let mut first_add: BTreeMap<String, std::time::SystemTime> = BTreeMap::new();
    for monitor in monitors {
        for (at, address) in monitor.timed_additions("2001:db8:100:") {
            let ip = address.trim_end_matches("/128").to_string();
            if ips.contains(&ip) && at > since {
                let e = first_add.entry(ip).or_insert(at);
                *e = (*e).min(at);
            }
        }
    }
    if first_add.len() < ips.len() {
        return None;
    }
    first_add
        .values()
        .filter_map(|at| at.duration_since(since).ok())
        .max()
}

/// When etcd deleted a key, as an `etcdctl watch` started before saw it.
struct RecordDeletion {
    child: std::process::Child,
    seen: std::thread::JoinHandle<Option<std::time::SystemTime>>,
}

impl RecordDeletion {
    /// Watch `key` from now on.
    fn start(lab: &Lab, key: &str) -> Self {
        use std::io::BufRead;
        let mut child = lab
            .etcdctl_command(&["watch", key])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("etcdctl watch");
        let out = std::io::BufReader::new(child.stdout.take().expect("piped"));
        let seen = std::thread::spawn(move || {
            out.lines()
                .map_while(Result::ok)
                .find(|l| l == "DELETE")
                .map(|_| std::time::SystemTime::now())
        });
        // Let the watch start before the caller acts.
        std::thread::sleep(Duration::from_millis(300));
        RecordDeletion { child, seen }
    }

    /// Stop watching; when the deletion was seen, if it was.
    fn stop(mut self) -> Option<std::time::SystemTime> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.seen.join().ok().flatten()
    }
}

/// Every line of the agents of `hosts` that mentions `needle`, to stderr.
fn print_log_lines(lab: &Lab, hosts: &[usize], needle: &str) {
    for &h in hosts {
        for line in lab.agent_log(h).lines().filter(|l| l.contains(needle)) {
            eprintln!("h{}: {line}", h + 1);
        }
    }
}

/// Copy the agents' logs out of the lab before it is removed.
fn keep_logs(lab: &Lab, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("log directory");
    for entry in std::fs::read_dir(lab.dir())
        .expect("lab directory")
        .flatten()
    {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "log") {
            let name = path.file_name().expect("file name");
            std::fs::copy(&path, to.join(name)).expect("copy log");
        }
    }
}

/// Seconds from `since` to the first and the last log line containing `what` written
/// after it by the agents of `hosts` (their timestamps, RFC 3339 UTC).
fn log_offsets(lab: &Lab, hosts: &[usize], what: &str, since: std::time::SystemTime) -> (f64, f64) {
    let mut seen: Vec<f64> = Vec::new();
    for &h in hosts {
        for line in lab.agent_log(h).lines().filter(|l| l.contains(what)) {
            let stamp = line.split_whitespace().next().unwrap_or("");
            if let Ok(at) = humantime::parse_rfc3339(stamp) {
                if let Ok(d) = at.duration_since(since) {
                    seen.push(d.as_secs_f64());
                }
            }
        }
    }
    let first = seen.iter().copied().fold(f64::INFINITY, f64::min);
    (first, seen.iter().copied().fold(0.0, f64::max))
}

/// Claims won per IP by the agents of `hosts` since `since`, from their logs.
fn claims_won_since(
    lab: &Lab,
    hosts: &[usize],
    since: std::time::SystemTime,
) -> BTreeMap<String, usize> {
    let mut wins: BTreeMap<String, usize> = BTreeMap::new();
    for &h in hosts {
        for line in lab.agent_log(h).lines().filter(|l| l.contains("claim won")) {
            let stamp = line.split_whitespace().next().unwrap_or("");
            let after = humantime::parse_rfc3339(stamp).is_ok_and(|at| at >= since);
            let ip = line.split_whitespace().find_map(|w| w.strip_prefix("ip="));
            if let (true, Some(ip)) = (after, ip) {
                *wins.entry(ip.to_string()).or_default() += 1;
            }
        }
    }
    wins
}

/// How often the agents logged the lines that say the lease or etcd was in trouble,
/// over the whole run: a busy agent that misses its deadline shows here.
fn print_log_counts(lab: &Lab, hosts: &[usize]) {
    let patterns = [
        "lease deadline reached",
        "keepalive task ran late",
        "lease expired",
        "etcd connection lost",
        "cannot use etcd",
        "socket buffer",
        "removing extip addresses",
    ];
    for pattern in patterns {
        let per_host: Vec<usize> = hosts
            .iter()
            .map(|&h| lab.agent_log(h).matches(pattern).count())
            .collect();
        println!(
            "| agent log lines \"{pattern}\" | {} | per host {per_host:?} |",
            per_host.iter().sum::<usize>()
        );
    }
}
