//! What a client on the segment sees: pings every 10 ms with their gaps, its neighbour
//! cache, and frames captured with tcpdump.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use super::run;

/// Give the client an on-link route to the virtual IPs, so it resolves them with ARP/NDP,
/// and wait until its link-local address (its IPv6 source) has passed DAD.
pub fn route_vips_on_link(client: &str) {
    let ready = super::wait_for(Duration::from_secs(5), || {
        run(
            "ip",
            &[
                "-n",
                client,
                "-6",
                "addr",
                "show",
                "dev",
                "eth0",
                "tentative",
            ],
        )
        .is_empty()
    });
    assert!(
        ready.is_some(),
        "the client's link-local address stays tentative"
    );
    run(
        "ip",
        &[
            "-n",
            client,
            "route",
            "add",
            "198.51.100.0/24",
            "dev",
            "eth0",
        ],
    );
    run(
        "ip",
        &[
            "-n",
            client,
            "-6",
            "route",
            "add",
            "2001:db8::/32",
            "dev",
            "eth0",
        ],
    );
}

/// The MAC address of `dev` in namespace `ns`.
pub fn mac_of(ns: &str, dev: &str) -> String {
    let out = run("ip", &["-n", ns, "-j", "link", "show", "dev", dev]);
    let links: serde_json::Value = serde_json::from_str(&out).expect("ip -j link");
    links[0]["address"].as_str().expect("address").to_string()
}

/// The MAC the client's neighbour cache holds for `ip`, if any.
pub fn neighbour_mac(ns: &str, ip: &str) -> Option<String> {
    let out = run("ip", &["-n", ns, "-j", "neigh", "show", "to", ip]);
    let entries: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    entries
        .as_array()?
        .iter()
        .find_map(|e| e["lladdr"].as_str().map(str::to_string))
}

fn epoch_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// What a pinger saw.
#[derive(Debug)]
pub struct PingReport {
    /// Echo requests sent.
    pub sent: u64,
    /// Replies received.
    pub received: u64,
    /// Longest time between two consecutive replies.
    pub longest_gap: Duration,
}

/// `ping -D` from a namespace (every 10 ms unless told), until stopped.
pub struct Pinger {
    child: Child,
    started: f64,
    reader: JoinHandle<PingLines>,
}

/// What ping printed: reply times, requests sent, duplicate replies (two hosts answered).
struct PingLines {
    stamps: Vec<f64>,
    sent: u64,
    dups: usize,
}

impl Pinger {
    /// Ping `ip` from namespace `ns` every 10 ms.
    pub fn start(ns: &str, ip: &str) -> Self {
        Self::start_every(ns, ip, "0.01")
    }

    /// Ping `ip` from namespace `ns` every `interval` seconds (`ping -i`).
    pub fn start_every(ns: &str, ip: &str, interval: &str) -> Self {
        let started = epoch_seconds();
        let mut child = Command::new("ip")
            .args([
                "netns", "exec", ns, "ping", "-n", "-D", "-i", interval, "-W", "1", ip,
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("ping");
        let out = child.stdout.take().expect("stdout");
        let reader = std::thread::spawn(move || {
            let mut seen = PingLines {
                stamps: Vec::new(),
                sent: 0,
                dups: 0,
            };
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some((n, _)) = line.split_once(" packets transmitted") {
                    seen.sent = n.trim().parse().unwrap_or(0);
                }
                seen.dups += usize::from(line.contains("DUP!"));
                if line.contains("bytes from") {
                    let stamp = line.trim_start_matches('[').split(']').next().unwrap_or("");
                    if let Ok(t) = stamp.parse::<f64>() {
                        seen.stamps.push(t);
                    }
                }
            }
            seen
        });
        Pinger {
            child,
            started,
            reader,
        }
    }

    fn finish(self) -> (PingLines, f64, f64) {
        let now = epoch_seconds();
        run("kill", &["-INT", &self.child.id().to_string()]);
        let mut child = self.child;
        let _ = child.wait();
        let seen = self.reader.join().expect("ping reader");
        (seen, self.started, now)
    }

    /// Stop pinging; the reply times (epoch seconds) and how many replies were DUPs.
    pub fn stop_stamps(self) -> (Vec<f64>, usize) {
        let (seen, _, _) = self.finish();
        (seen.stamps, seen.dups)
    }

    /// Stop pinging; what the client saw. Silence up to the stop counts as a gap.
    pub fn stop(self) -> PingReport {
        let (seen, started, now) = self.finish();
        let received = seen.stamps.len() as u64;
        let mut stamps = seen.stamps;
        stamps.insert(0, started);
        stamps.push(now);
        let longest = stamps.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
        PingReport {
            sent: seen.sent,
            received,
            longest_gap: Duration::from_secs_f64(longest),
        }
    }
}

/// tcpdump on a namespace's `eth0`, with link-level headers, until stopped.
pub struct Capture {
    child: Child,
}

impl Capture {
    /// Capture ARP and ICMPv6 in namespace `ns`.
    pub fn start(ns: &str) -> Self {
        let child = Command::new("ip")
            .args([
                "netns", "exec", ns, "tcpdump", "-i", "eth0", "-n", "-e", "-l", "-U",
            ])
            .args(["arp or icmp6"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump");
        let mut capture = Capture { child };
        capture.wait_listening();
        capture
    }

    /// tcpdump says "listening on" on stderr once it captures.
    fn wait_listening(&mut self) {
        let err = self.child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(err).lines();
        let mut said = Vec::new();
        for line in lines.by_ref().map_while(Result::ok) {
            let listening = line.contains("listening on");
            said.push(line);
            if listening {
                std::thread::spawn(move || lines.for_each(drop));
                return;
            }
        }
        panic!("tcpdump did not start: {}", said.join("\n"));
    }

    /// Stop and return the captured lines.
    pub fn stop(self) -> Vec<String> {
        run("kill", &["-INT", &self.child.id().to_string()]);
        let out = self.child.wait_with_output().expect("tcpdump output");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// Captured broadcast gratuitous ARPs for `ip` from `mac`: (requests, replies).
pub fn gratuitous_arps(lines: &[String], mac: &str, ip: &str) -> (usize, usize) {
    let from = |l: &&String| l.contains(&format!("{mac} > ff:ff:ff:ff:ff:ff"));
    let requests = lines
        .iter()
        .filter(from)
        .filter(|l| l.contains(&format!("Request who-has {ip} tell {ip}")))
        .count();
    let replies = lines
        .iter()
        .filter(from)
        .filter(|l| l.contains(&format!("Reply {ip} is-at {mac}")))
        .count();
    (requests, replies)
}

/// Captured unsolicited neighbour advertisements for `ip` from `mac` to all nodes.
pub fn unsolicited_nas(lines: &[String], mac: &str, ip: &str) -> usize {
    lines
        .iter()
        .filter(|l| l.contains(&format!("{mac} > 33:33:00:00:00:01")))
        .filter(|l| l.contains(&format!("neighbor advertisement, tgt is {ip}")))
        .count()
}

/// A TCP server on port 8080 in a namespace that accepts and closes, until dropped.
pub struct TcpServer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TcpServer {
    /// Listen on every address of namespace `ns`, port 8080.
    pub fn start(ns: &str) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let ns = ns.to_string();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            super::netns::enter_namespace(&ns);
            let listener = std::net::TcpListener::bind("0.0.0.0:8080").expect("bind 8080");
            listener.set_nonblocking(true).expect("nonblocking");
            ready_tx.send(()).expect("ready");
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => drop(conn),
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        });
        ready_rx.recv().expect("server started");
        TcpServer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A TCP connect to `ip`:8080 every 10 ms from a namespace, until stopped.
pub struct TcpProbe {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: JoinHandle<(Vec<std::time::Instant>, u64)>,
    started: std::time::Instant,
}

impl TcpProbe {
    /// Start connecting from namespace `ns`.
    pub fn start(ns: &str, ip: &str) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let ns = ns.to_string();
        let target: std::net::SocketAddr = format!("{ip}:8080")
            .parse()
            .unwrap_or_else(|_| format!("[{ip}]:8080").parse().expect("address"));
        let thread = std::thread::spawn(move || {
            super::netns::enter_namespace(&ns);
            let (mut ok, mut tries) = (Vec::new(), 0);
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let at = std::time::Instant::now();
                tries += 1;
                let timeout = Duration::from_millis(100);
                if std::net::TcpStream::connect_timeout(&target, timeout).is_ok() {
                    ok.push(std::time::Instant::now());
                }
                std::thread::sleep(Duration::from_millis(10).saturating_sub(at.elapsed()));
            }
            (ok, tries)
        });
        TcpProbe {
            stop,
            thread,
            started: std::time::Instant::now(),
        }
    }

    /// Stop; what the client saw (a gap runs up to the stop when connects fail).
    pub fn stop(self) -> PingReport {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let end = std::time::Instant::now();
        let (ok, tries) = self.thread.join().expect("tcp probe");
        let mut stamps = vec![self.started];
        stamps.extend(ok.iter().copied());
        stamps.push(end);
        let longest = stamps
            .windows(2)
            .map(|w| w[1].duration_since(w[0]))
            .max()
            .unwrap_or_default();
        PingReport {
            sent: tries,
            received: ok.len() as u64,
            longest_gap: longest,
        }
    }
}
