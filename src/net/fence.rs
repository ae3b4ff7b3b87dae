//! The precise fence: extip's own nftables tables (`inet extip`, `arp extip`) drop every
//! packet to or from this host's fenced IPs, and ARP for them, unless the `alive` sets
//! hold an element whose timeout has not run out. The agent renews that timeout with
//! every lease renewal (one small netlink batch, whatever the number of IPs); when it
//! stops (killed, frozen, cut off, stuck), the kernel checks the timeout at every packet
//! lookup, so the host goes dark within milliseconds of the fence deadline, with no help
//! from the agent. Kernel address lifetimes are only a slow backstop behind it.
//! The same timeout cuts all traffic with the `--fenced-router` addresses: the BGP
//! session (and its BFD) that carries the fenced IPs' routes, so the router drops them
//! within its BFD time of the host going dark.
//!
//! Why nftables: the kernel checks set element timeouts at lookup time (a VIP went dark
//! 994-998 ms after a 1000 ms element), `arp` tables see ARP, and the tables are the
//! agent's own, so firewalld, ufw, kube-proxy or Cilium rules are never touched. The
//! tables are made once with `nft` (readable; `nft list table inet extip` shows them);
//! the hot path writes set elements over netlink ([`super::nft`]).

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::Duration;

use thiserror::Error;

use super::nft::{self, ElementOp, NFPROTO_ARP, NFPROTO_INET};

/// The name of extip's tables, in the `inet` and `arp` families.
pub const TABLE: &str = "extip";

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;

/// The tables. `meta protocol != @alive` is true once the element of the packet's
/// ether type has timed out (or was never set). Inbound at `raw - 10` (before conntrack,
/// so a fenced packet leaves no state); outbound catches replies, NAs (sent from the
/// target address) and ARP replies (sender IP = the VIP).
const TABLES: &str = r#"
table inet extip {
    comment "extip fence: traffic of this host's fenced IPs passes only while the extip agent's lease is fresh"
    set alive { type ether_type; flags timeout; }
    set fenced4 { type ipv4_addr; }
    set fenced6 { type ipv6_addr; }
    chain inbound {
        type filter hook prerouting priority raw - 10; policy accept;
        ip daddr @fenced4 meta protocol != @alive drop
        ip6 daddr @fenced6 meta protocol != @alive drop
    }
    chain outbound {
        type filter hook output priority raw - 10; policy accept;
        ip saddr @fenced4 meta protocol != @alive drop
        ip6 saddr @fenced6 meta protocol != @alive drop
    }
}
table arp extip {
    comment "extip fence: ARP for this host's fenced IPs only while the extip agent's lease is fresh"
    set alive { type ether_type; flags timeout; }
    set fenced4 { type ipv4_addr; }
    chain inbound {
        type filter hook input priority 0; policy accept;
        arp daddr ip @fenced4 meta protocol != @alive drop
    }
    chain outbound {
        type filter hook output priority 0; policy accept;
        arp saddr ip @fenced4 meta protocol != @alive drop
    }
}
"#;

/// The fenced routers (`--fenced-router`), whose BGP sessions and BFD go dark with the
/// fenced IPs: made with [`TABLES`] in one transaction, and added alone (one transaction,
/// the running fence and its timeout kept) to tables of a build that lacked them.
const ROUTERS: &str = r#"
add set inet extip routers4 { type ipv4_addr; }
add set inet extip routers6 { type ipv6_addr; }
add rule inet extip inbound ip saddr @routers4 meta protocol != @alive drop
add rule inet extip inbound ip6 saddr @routers6 meta protocol != @alive drop
add rule inet extip outbound ip daddr @routers4 meta protocol != @alive drop
add rule inet extip outbound ip6 daddr @routers6 meta protocol != @alive drop
"#;

/// Why the fence could not be set up or changed.
#[derive(Debug, Error)]
pub enum FenceError {
    /// `nft` could not be run.
    #[error("cannot run nft ({0}); install the nftables package")]
    NoNft(io::Error),
    /// `nft` refused the tables.
    #[error("nft could not create the fence tables: {0}")]
    Nft(String),
    /// The netlink socket failed.
    #[error("nftables netlink: {0}")]
    Socket(io::Error),
    /// The kernel refused a change.
    #[error("nftables refused {what}: {}", io::Error::from_raw_os_error(-errno))]
    Refused { what: &'static str, errno: i32 },
}

/// A handle on extip's nftables tables.
pub struct Fence {
    socket: OwnedFd,
    seq: u32,
}

impl Fence {
    /// Create the tables unless they exist: an agent that re-executes (upgrade) or
    /// restarts keeps the running fence and its timeout, so no packet is dropped.
    pub fn install() -> Result<Fence, FenceError> {
        if !tables_exist()? {
            run_nft(&[TABLES, ROUTERS].concat())?;
        } else if !routers_sets_exist()? {
            run_nft(ROUTERS)?;
        }
        Ok(Fence {
            socket: open_socket().map_err(FenceError::Socket)?,
            seq: 1,
        })
    }

    /// A second handle on tables [`Fence::install`] made: its own netlink socket, so
    /// the thread that renews the timeout never waits on the one that changes members.
    pub fn open() -> Result<Fence, FenceError> {
        Ok(Fence {
            socket: open_socket().map_err(FenceError::Socket)?,
            seq: 1,
        })
    }

    /// Remove both tables (graceful stop): nothing of extip stays in the ruleset.
    pub fn uninstall() -> Result<(), FenceError> {
        if tables_exist()? {
            run_nft("delete table inet extip\ndelete table arp extip\n")?;
        }
        Ok(())
    }

    /// Let fenced IPs pass for `for_` from now, replacing the previous timeout.
    pub fn arm(&mut self, for_: Duration) -> Result<(), FenceError> {
        let alive = |family, keys: Vec<Vec<u8>>| {
            [
                flush(family, "alive"),
                ElementOp::Add {
                    family,
                    table: TABLE,
                    set: "alive",
                    keys,
                    timeout: Some(for_),
                },
            ]
        };
        let inet = alive(
            NFPROTO_INET,
            vec![
                nft::ether_type_key(ETH_P_IP),
                nft::ether_type_key(ETH_P_IPV6),
            ],
        );
        let arp = alive(NFPROTO_ARP, vec![nft::ether_type_key(ETH_P_ARP)]);
        self.send("the fence timeout", &[inet, arp].concat())
    }

    /// Fence every fenced IP now.
    pub fn disarm(&mut self) -> Result<(), FenceError> {
        let ops = [flush(NFPROTO_INET, "alive"), flush(NFPROTO_ARP, "alive")];
        self.send("the fence", &ops)
    }

    /// Put these IPs behind the fence (before their addresses are added).
    pub fn add(&mut self, ips: &BTreeSet<IpAddr>) -> Result<(), FenceError> {
        if ips.is_empty() {
            return Ok(());
        }
        self.send("fenced IPs", &member_ops(ips, true))
    }

    /// Take these IPs out of the fence (their addresses are gone); each must be in it.
    pub fn remove(&mut self, ips: &BTreeSet<IpAddr>) -> Result<(), FenceError> {
        if ips.is_empty() {
            return Ok(());
        }
        self.send("fenced IPs", &member_ops(ips, false))
    }

    /// Make the fenced IPs exactly `ips`, in one atomic change.
    pub fn replace(&mut self, ips: &BTreeSet<IpAddr>) -> Result<(), FenceError> {
        let mut ops = vec![
            flush(NFPROTO_INET, "fenced4"),
            flush(NFPROTO_INET, "fenced6"),
            flush(NFPROTO_ARP, "fenced4"),
        ];
        ops.extend(member_ops(ips, true));
        self.send("fenced IPs", &ops)
    }

    /// Make the fenced routers exactly `routers` (at start: the setting may have changed).
    pub fn set_routers(&mut self, routers: &[IpAddr]) -> Result<(), FenceError> {
        let mut ops = vec![
            flush(NFPROTO_INET, "routers4"),
            flush(NFPROTO_INET, "routers6"),
        ];
        for (set, v4) in [("routers4", true), ("routers6", false)] {
            let keys = family_keys(routers, v4);
            if !keys.is_empty() {
                ops.push(ElementOp::Add {
                    family: NFPROTO_INET,
                    table: TABLE,
                    set,
                    keys,
                    timeout: None,
                });
            }
        }
        self.send("fenced routers", &ops)
    }

    fn send(&mut self, what: &'static str, ops: &[ElementOp]) -> Result<(), FenceError> {
        let first = self.seq.wrapping_add(1);
        let bytes = nft::batch(ops, self.seq);
        self.seq = self.seq.wrapping_add(ops.len() as u32 + 2);
        let fd = self.socket.as_raw_fd();
        // SAFETY: a valid socket and a buffer of the given length.
        let sent = unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), 0) };
        if sent < 0 {
            return Err(FenceError::Socket(io::Error::last_os_error()));
        }
        let wanted = first..first.wrapping_add(ops.len() as u32);
        let mut acked = 0;
        let mut buf = vec![0u8; 65536];
        while acked < ops.len() {
            // SAFETY: as above; the buffer outlives the call.
            let got = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if got < 0 {
                return Err(FenceError::Socket(io::Error::last_os_error()));
            }
            for message in nft::messages(&buf[..got as usize]) {
                match nft::parse_ack(message) {
                    Some((seq, 0)) if wanted.contains(&seq) => acked += 1,
                    Some((seq, errno)) if wanted.contains(&seq) => {
                        return Err(FenceError::Refused { what, errno });
                    }
                    _ => {} // an answer to an older, failed batch
                }
            }
        }
        Ok(())
    }
}

/// Empty one of extip's sets.
fn flush(family: u8, set: &'static str) -> ElementOp {
    ElementOp::Flush {
        family,
        table: TABLE,
        set,
    }
}

/// The set keys of the IPv4 (`v4`) or IPv6 addresses among `ips`.
fn family_keys<'a>(ips: impl IntoIterator<Item = &'a IpAddr>, v4: bool) -> Vec<Vec<u8>> {
    ips.into_iter()
        .filter(|ip| ip.is_ipv4() == v4)
        .map(|&ip| nft::ip_key(ip))
        .collect()
}

/// Add or delete ops for `ips` in every set that holds them.
fn member_ops(ips: &BTreeSet<IpAddr>, add: bool) -> Vec<ElementOp> {
    let keys = |v4: bool| family_keys(ips, v4);
    let op = |family, set, keys: Vec<Vec<u8>>| match add {
        true => ElementOp::Add {
            family,
            table: TABLE,
            set,
            keys,
            timeout: None,
        },
        false => ElementOp::Delete {
            family,
            table: TABLE,
            set,
            keys,
        },
    };
    let (v4, v6) = (keys(true), keys(false));
    let mut ops = Vec::new();
    if !v4.is_empty() {
        ops.push(op(NFPROTO_INET, "fenced4", v4.clone()));
        ops.push(op(NFPROTO_ARP, "fenced4", v4));
    }
    if !v6.is_empty() {
        ops.push(op(NFPROTO_INET, "fenced6", v6));
    }
    ops
}

fn tables_exist() -> Result<bool, FenceError> {
    let out = Command::new("nft")
        .args(["list", "tables"])
        .stderr(Stdio::null())
        .output()
        .map_err(FenceError::NoNft)?;
    let listed = String::from_utf8_lossy(&out.stdout);
    let has = |family: &str| {
        listed
            .lines()
            .any(|l| l.trim() == format!("table {family} {TABLE}"))
    };
    match (has("inet"), has("arp")) {
        (true, true) => Ok(true),
        (false, false) => Ok(false),
        // Half a fence (someone deleted one table): start over.
        (true, false) => run_nft("delete table inet extip\n").map(|()| false),
        (false, true) => run_nft("delete table arp extip\n").map(|()| false),
    }
}

/// Whether the `inet extip` table has the routers sets (tables of an older build do not).
fn routers_sets_exist() -> Result<bool, FenceError> {
    let out = Command::new("nft")
        .args(["list", "set", "inet", TABLE, "routers4"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(FenceError::NoNft)?;
    Ok(out.success())
}

fn run_nft(script: &str) -> Result<(), FenceError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(FenceError::NoNft)?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(script.as_bytes())
        .map_err(FenceError::NoNft)?;
    let out = child.wait_with_output().map_err(FenceError::NoNft)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(FenceError::Nft(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

fn open_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket calls; the descriptor is owned from here on.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            nft::NETLINK_NETFILTER,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let socket = OwnedFd::from_raw_fd(fd);
        let mut address: libc::sockaddr_nl = std::mem::zeroed();
        address.nl_family = libc::AF_NETLINK as u16;
        let bound = libc::bind(
            fd,
            (&address as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        );
        if bound < 0 {
            return Err(io::Error::last_os_error());
        }
        // A lost answer must not hang the agent: the fence is on its hot path.
        let timeout = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        let set = libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
        if set < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(socket)
    }
}
