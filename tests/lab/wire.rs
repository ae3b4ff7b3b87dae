//! Holders on the wire: a client on the segment asks "who has IP?" (a broadcast ARP
//! request, from its own raw socket, not extip's code) and counts the distinct MACs
//! that answer. A host that lists an address it no longer answers for (fenced) is no
//! holder here; two MACs answering one request is two holders at the same instant.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What a wire monitor saw.
#[derive(Debug, Default)]
pub struct WireReport {
    /// Requests sent per IP (one round asks for every IP).
    pub rounds: usize,
    /// Each request that two or more MACs answered: the IP and the MACs.
    pub overlaps: Vec<String>,
    /// Every MAC seen answering, per IP.
    pub answered_by: BTreeMap<Ipv4Addr, BTreeSet<String>>,
    /// The longest time each IP went unanswered, from the start to the stop.
    pub longest_silence: BTreeMap<Ipv4Addr, Duration>,
    /// Per IP and MAC: the first and the last round it answered in.
    pub answered_between: BTreeMap<(Ipv4Addr, String), (Instant, Instant)>,
}

impl WireReport {
    /// Whether every MAC that answered for `ip` stopped before the next one started
    /// (a handover in order: at no instant two answered, and none came back).
    pub fn handed_over_in_order(&self, ip: Ipv4Addr) -> bool {
        let mut spans: Vec<(Instant, Instant)> = self
            .answered_between
            .iter()
            .filter(|((i, _), _)| *i == ip)
            .map(|(_, span)| *span)
            .collect();
        spans.sort();
        spans.windows(2).all(|w| w[0].1 < w[1].0)
    }
}

/// Asks for `ips` from the client namespace every few milliseconds until stopped.
pub struct WireMonitor {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<WireReport>,
}

impl WireMonitor {
    /// Start asking from the lab's client namespace `client` (its `eth0` at
    /// [`super::CLIENT_IP`]).
    pub fn start(client: &str, ips: &[&str]) -> Self {
        let client_ip = super::CLIENT_IP;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let mac_text = super::l2::mac_of(client, "eth0");
        let client = client.to_string();
        let ips: Vec<Ipv4Addr> = ips.iter().map(|i| i.parse().expect("IPv4")).collect();
        let handle = std::thread::spawn(move || {
            super::netns::enter_namespace(&client);
            let socket = ArpSocket::open("eth0", &mac_text);
            let mut report = WireReport::default();
            let started = Instant::now();
            let mut last: BTreeMap<Ipv4Addr, Instant> =
                ips.iter().map(|ip| (*ip, started)).collect();
            while !flag.load(Ordering::SeqCst) {
                let answers = socket.who_has(client_ip, &ips, Duration::from_millis(10));
                let now = Instant::now();
                for (ip, macs) in answers {
                    if macs.len() > 1 {
                        report.overlaps.push(format!("{ip} answered by {macs:?}"));
                    }
                    for mac in &macs {
                        report
                            .answered_between
                            .entry((ip, mac.clone()))
                            .and_modify(|span| span.1 = now)
                            .or_insert((now, now));
                    }
                    report.answered_by.entry(ip).or_default().extend(macs);
                    note_silence(&mut report.longest_silence, &mut last, ip, now);
                }
                report.rounds += 1;
            }
            let now = Instant::now();
            for ip in &ips {
                note_silence(&mut report.longest_silence, &mut last, *ip, now);
            }
            report
        });
        WireMonitor { stop, handle }
    }

    /// Stop and return what was seen.
    pub fn stop(self) -> WireReport {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().expect("wire monitor thread")
    }
}

/// Record that `ip` was answered (or the watch ended) at `now`.
fn note_silence(
    longest: &mut BTreeMap<Ipv4Addr, Duration>,
    last: &mut BTreeMap<Ipv4Addr, Instant>,
    ip: Ipv4Addr,
    now: Instant,
) {
    let since = last.insert(ip, now).unwrap_or(now);
    let gap = longest.entry(ip).or_default();
    *gap = (*gap).max(now.duration_since(since));
}

/// An AF_PACKET socket bound to one interface for ARP (ethertype 0x0806).
struct ArpSocket {
    fd: i32,
    mac: [u8; 6],
}

impl Drop for ArpSocket {
    fn drop(&mut self) {
        // SAFETY: closing the descriptor this socket owns.
        unsafe { libc::close(self.fd) };
    }
}

const ETH_P_ARP: u16 = 0x0806;

impl ArpSocket {
    /// Open on `dev` of this thread's namespace (sysfs shows another namespace's
    /// devices, so the index comes from the kernel and the MAC from the caller).
    fn open(dev: &str, mac_text: &str) -> Self {
        let name = std::ffi::CString::new(dev).expect("device name");
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
        assert!(ifindex > 0, "no {dev}: {}", std::io::Error::last_os_error());
        let mut mac = [0u8; 6];
        for (byte, part) in mac.iter_mut().zip(mac_text.trim().split(':')) {
            *byte = u8::from_str_radix(part, 16).expect("mac byte");
        }
        // SAFETY: plain socket calls with valid arguments; errors are checked.
        unsafe {
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(ETH_P_ARP.to_be()),
            );
            assert!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = ETH_P_ARP.to_be();
            addr.sll_ifindex = ifindex;
            let rc = libc::bind(
                fd,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            ArpSocket { fd, mac }
        }
    }

    /// Broadcast "who has IP, tell `sender`" for every one of `targets` at once; the
    /// MACs that answer each within `wait`.
    fn who_has(
        &self,
        sender: Ipv4Addr,
        targets: &[Ipv4Addr],
        wait: Duration,
    ) -> BTreeMap<Ipv4Addr, BTreeSet<String>> {
        for target in targets {
            let frame = self.request(sender, *target);
            // SAFETY: sending a buffer of its own length on the bound socket.
            let sent = unsafe { libc::send(self.fd, frame.as_ptr().cast(), frame.len(), 0) };
            assert!(sent > 0, "send: {}", std::io::Error::last_os_error());
        }
        let deadline = Instant::now() + wait;
        let mut answers: BTreeMap<Ipv4Addr, BTreeSet<String>> = BTreeMap::new();
        let mut buf = [0u8; 128];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let mut pfd = libc::pollfd {
                fd: self.fd,
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().max(1) as i32;
            // SAFETY: polling one valid descriptor.
            if unsafe { libc::poll(&mut pfd, 1, ms) } <= 0 {
                break;
            }
            // SAFETY: reading into a buffer of the given length.
            let got = unsafe { libc::recv(self.fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if got < 42 || buf[20..22] != [0, 2] || buf[32..38] != self.mac {
                continue; // not a reply to us
            }
            let ip = Ipv4Addr::new(buf[28], buf[29], buf[30], buf[31]);
            if targets.contains(&ip) {
                let mac: Vec<String> = buf[22..28].iter().map(|b| format!("{b:02x}")).collect();
                answers.entry(ip).or_default().insert(mac.join(":"));
            }
        }
        answers
    }

    /// A broadcast ARP request for `target` from this interface.
    fn request(&self, sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
        let mut frame = Vec::with_capacity(42);
        frame.extend_from_slice(&[0xff; 6]);
        frame.extend_from_slice(&self.mac);
        frame.extend_from_slice(&ETH_P_ARP.to_be_bytes());
        frame.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]); // Ethernet, IPv4, request
        frame.extend_from_slice(&self.mac);
        frame.extend_from_slice(&sender.octets());
        frame.extend_from_slice(&[0; 6]);
        frame.extend_from_slice(&target.octets());
        frame
    }
}
