//! The wire side of a takeover: announcing an IP (gratuitous ARP, unsolicited NA) and
//! probing for another owner first, through AF_PACKET sockets (needs CAP_NET_RAW).
//! No external `arping`: one process, errors we can log and count.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::unix::AsyncFd;
use tokio::time::{sleep, timeout_at, Instant};

use super::packets::{self, Mac, ETH_P_ARP, ETH_P_IPV6};

/// An Ethernet interface announcements and probes go out on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// Interface name, for logs.
    pub name: String,
    /// Kernel interface index.
    pub ifindex: u32,
    /// Its link-layer address: the one clients learn.
    pub mac: Mac,
}

/// Counts of announcement packets (the agent's metrics hold the same counters).
#[derive(Debug, Default, Clone)]
pub struct AnnounceCounters {
    /// Packets sent.
    pub sent: Counter,
    /// Packets the kernel refused.
    pub failed: Counter,
}

/// An AF_PACKET socket bound to one interface and one EtherType (0: send only).
struct PacketSocket {
    fd: AsyncFd<OwnedFd>,
}

impl PacketSocket {
    fn open(ifindex: u32, ethertype: u16) -> io::Result<Self> {
        let protocol = i32::from(ethertype.to_be());
        // SAFETY: plain socket(2); the result is checked before it is wrapped.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid start.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ethertype.to_be();
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: `addr` is a valid sockaddr_ll and the length matches it.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is owned by the AsyncFd from here on and stays open while it lives.
        let fd = unsafe { AsyncFd::register(fd) }?;
        Ok(PacketSocket { fd })
    }

    fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: `frame` is valid for its length; the socket is bound to one interface.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        match n {
            n if n < 0 => Err(io::Error::last_os_error()),
            n if n as usize != frame.len() => Err(io::Error::other("short send")),
            _ => Ok(()),
        }
    }

    async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut ready = self.fd.readable().await?;
            // SAFETY: `buf` is valid for writes of its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock {
                return Err(e);
            }
            ready.clear_ready();
        }
    }
}

/// The frames that tell a segment `ip` is now at `mac`.
pub fn announcement(mac: Mac, ip: IpAddr) -> Vec<Vec<u8>> {
    match ip {
        IpAddr::V4(ip) => vec![
            packets::gratuitous_arp_request(mac, ip),
            packets::gratuitous_arp_reply(mac, ip),
        ],
        IpAddr::V6(ip) => vec![packets::unsolicited_na(mac, ip)],
    }
}

/// Send one announcement of `ip` on `port`.
pub fn announce_once(port: &Port, ip: IpAddr, counters: &AnnounceCounters) -> io::Result<()> {
    let socket = PacketSocket::open(port.ifindex, 0)?;
    for frame in announcement(port.mac, ip) {
        if let Err(e) = socket.send(&frame) {
            counters.failed.inc();
            return Err(e);
        }
        counters.sent.inc();
    }
    Ok(())
}

/// Announce `ip` on every port `count` times, `interval` apart, in the background; the
/// first round goes out before this returns, so clients move at once.
pub fn announce_burst(
    ports: Vec<Port>,
    ip: IpAddr,
    count: u32,
    interval: Duration,
    counters: Arc<AnnounceCounters>,
) {
    let round = move |ports: &[Port]| {
        for port in ports {
            if let Err(e) = announce_once(port, ip, &counters) {
                tracing::error!(%ip, interface = %port.name, error = %e, "announcement not sent");
            }
        }
    };
    if count == 0 || ports.is_empty() {
        return;
    }
    round(&ports);
    if count > 1 {
        tokio::spawn(async move {
            for _ in 1..count {
                sleep(interval).await;
                round(&ports);
            }
        });
    }
}

/// Ask the segment behind `port` who has `ip` and listen for `wait`: the link-layer
/// address of another owner, or `None`. Two probes, at the start and half-way.
pub async fn probe(port: &Port, ip: IpAddr, wait: Duration) -> io::Result<Option<Mac>> {
    let (ethertype, frame) = match ip {
        IpAddr::V4(v4) => (ETH_P_ARP, packets::arp_probe(port.mac, v4)),
        IpAddr::V6(v6) => (ETH_P_IPV6, packets::dad_solicitation(port.mac, v6)),
    };
    let socket = PacketSocket::open(port.ifindex, ethertype)?;
    let start = Instant::now();
    let deadline = start + wait;
    let mut second_probe = Some(start + wait / 2);
    socket.send(&frame)?;
    let mut buf = [0u8; 1514];
    loop {
        let until = second_probe.unwrap_or(deadline);
        match timeout_at(until, socket.recv(&mut buf)).await {
            Ok(received) => {
                let n = received?;
                if let Some(owner) = packets::foreign_owner(&buf[..n], ip, port.mac) {
                    return Ok(Some(owner));
                }
            }
            Err(_) if second_probe.take().is_some() => socket.send(&frame)?,
            Err(_) => return Ok(None),
        }
    }
}
