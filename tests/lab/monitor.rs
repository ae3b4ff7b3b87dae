//! Reading addresses with `ip -j addr`, and the dual-holder monitor.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Addresses (`ip/len`) in namespace `ns`, on `dev` or on every interface when `dev` is "".
pub fn addresses(ns: &str, dev: &str) -> Vec<String> {
    let mut args = vec!["-n", ns, "-j", "addr", "show"];
    if !dev.is_empty() {
        args.extend(["dev", dev]);
    }
    let out = Command::new("ip").args(&args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
    let mut found = Vec::new();
    for link in links.as_array().into_iter().flatten() {
        for a in link["addr_info"].as_array().into_iter().flatten() {
            if let (Some(ip), Some(len)) = (a["local"].as_str(), a["prefixlen"].as_u64()) {
                found.push(format!("{ip}/{len}"));
            }
        }
    }
    found
}

/// Whether `ip` (with any mask) is among `addresses`.
pub fn has_ip(addresses: &[String], ip: &str) -> bool {
    addresses.iter().any(|a| a.split('/').next() == Some(ip))
}

/// What a monitor saw.
#[derive(Debug)]
pub struct Report {
    /// Sample rounds taken (every host read once per round).
    pub rounds: usize,
    /// Longest time one round took.
    pub longest_round: Duration,
    /// Each confirmed overlap: which IP, on which namespaces.
    pub overlaps: Vec<String>,
}

/// Samples every host's addresses in a loop; flags an IP seen on two hosts at once.
pub struct OverlapMonitor {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Report>,
}

impl OverlapMonitor {
    /// Watch `ips` on the hosts in `namespaces` until [`OverlapMonitor::stop`].
    pub fn start(namespaces: Vec<String>, ips: Vec<String>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || sample_loop(&namespaces, &ips, &flag));
        OverlapMonitor { stop, handle }
    }

    /// Stop sampling and return what was seen.
    pub fn stop(self) -> Report {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().expect("monitor thread")
    }
}

fn sample_loop(namespaces: &[String], ips: &[String], stop: &AtomicBool) -> Report {
    let mut report = Report {
        rounds: 0,
        longest_round: Duration::ZERO,
        overlaps: Vec::new(),
    };
    while !stop.load(Ordering::SeqCst) {
        let start = Instant::now();
        let seen: Vec<Vec<String>> = namespaces.iter().map(|ns| addresses(ns, "")).collect();
        for ip in ips {
            let on: Vec<usize> = (0..seen.len()).filter(|&h| has_ip(&seen[h], ip)).collect();
            // Hosts are read one after another: confirm by reading the first holder
            // again. Still there after another host was seen with the IP means both
            // held it at the same instant.
            if on.len() >= 2 && has_ip(&addresses(&namespaces[on[0]], ""), ip) {
                let names: Vec<&str> = on.iter().map(|&h| namespaces[h].as_str()).collect();
                report.overlaps.push(format!("{ip} on {names:?}"));
            }
        }
        report.rounds += 1;
        report.longest_round = report.longest_round.max(start.elapsed());
    }
    report
}

/// `ip monitor address` in a namespace: every change, none missed by sampling.
pub struct AddressEvents {
    child: std::process::Child,
}

impl AddressEvents {
    /// Start watching address changes in namespace `ns`.
    pub fn start(ns: &str) -> Self {
        Self::spawn(&["-n", ns, "monitor", "address"])
    }

    /// The same, each event stamped by `ip` with the time it read it (UTC).
    pub fn start_timestamped(ns: &str) -> Self {
        Self::spawn(&["-n", ns, "-ts", "monitor", "address"])
    }

    fn spawn(args: &[&str]) -> Self {
        let child = Command::new("ip")
            .args(args)
            .env("TZ", "UTC")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("ip monitor");
        // Give ip a moment to subscribe before the caller acts.
        std::thread::sleep(Duration::from_millis(50));
        AddressEvents { child }
    }

    /// Stop and return the lines that report a deleted address matching `needle`.
    pub fn deletions(self, needle: &str) -> Vec<String> {
        self.lines(needle, true)
    }

    /// Stop and return the lines that report an added address matching `needle`.
    pub fn additions(self, needle: &str) -> Vec<String> {
        self.lines(needle, false)
    }

    /// Stop (a timestamped monitor) and return when each address matching `needle`
    /// was added, with the address as `ip/len`.
    pub fn timed_additions(self, needle: &str) -> Vec<(std::time::SystemTime, String)> {
        let mut out = Vec::new();
        for line in self.all_lines() {
            let Some((stamp, rest)) = line.strip_prefix('[').and_then(|l| l.split_once("] "))
            else {
                continue;
            };
            if rest.starts_with("Deleted") {
                continue;
            }
            let address = rest.split_whitespace().find(|w| w.contains(needle));
            let at = humantime::parse_rfc3339_weak(stamp).ok();
            if let (Some(at), Some(address)) = (at, address) {
                out.push((at, address.to_string()));
            }
        }
        out
    }

    fn all_lines(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let out = self.child.wait_with_output().expect("ip monitor output");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn lines(self, needle: &str, deleted: bool) -> Vec<String> {
        let mut lines = self.all_lines();
        lines.retain(|l| l.starts_with("Deleted") == deleted && l.contains(needle));
        lines
    }
}

/// CPU seconds (user + system) and peak RSS in KiB of a process.
pub fn process_usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| {
        f.iter().filter_map(|v| v.parse::<f64>().ok()).sum()
    });
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (ticks / 100.0, hwm)
}
