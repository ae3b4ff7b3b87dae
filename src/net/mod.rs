//! The netlink adapter: the one place where addresses are listed, added and removed.
//!
//! Ownership: every address extip adds carries the address protocol (`IFA_PROTO`,
//! Linux 5.18+) [`OWNER_PROTO`]. The mark lives in the kernel next to the address, so it
//! survives an agent restart and cannot drift from reality the way a state file can,
//! and it works for IPv4 and IPv6 alike (IPv4 labels do not exist for IPv6). An address
//! without the mark is never removed or changed, even when its IP is desired.

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

use futures::channel::mpsc::UnboundedReceiver;
use futures::{StreamExt, TryStreamExt};
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage, CacheInfo};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags};
use rtnetlink::{AddressMessageBuilder, Handle, MulticastGroup};
use thiserror::Error;

use crate::observed::LocalAddress;

pub mod announce;
pub mod fence;
mod nft;
pub mod packets;
mod routes;
pub use routes::{route_changes, ExportRoute, FENCED_METRIC};

/// The `IFA_PROTO` value that marks extip's addresses, and the route protocol of its
/// export routes: 88, ASCII `X`. iproute2 6.3+ shows `proto 0x58` in `ip -d addr`;
/// `ip route show table N proto 88` lists the export routes.
pub const OWNER_PROTO: u8 = 88;

/// Why a netlink operation failed.
#[derive(Debug, Error)]
pub enum NetError {
    /// The netlink socket could not be opened.
    #[error("cannot open netlink socket: {0}")]
    Socket(io::Error),
    /// No interface has this name.
    #[error("interface {0} does not exist")]
    NoInterface(String),
    /// The kernel refused a request.
    #[error("{op} {target}: {source}")]
    Request {
        op: &'static str,
        target: String,
        source: rtnetlink::Error,
    },
}

/// The kernel's "forever" lifetime.
const INFINITE: u32 = u32::MAX;

/// An owned address and how long the kernel keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnedAddress {
    /// The address.
    pub address: LocalAddress,
    /// Whole seconds of valid lifetime left; `None` when it never expires.
    pub valid_left: Option<u32>,
}

/// An interface as last read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkState {
    /// Kernel interface index.
    pub ifindex: u32,
    /// Up with carrier: it can carry traffic.
    pub up: bool,
    /// The Ethernet address of a broadcast interface that does ARP; `None` for `lo` and
    /// point-to-point links, where there is nothing to announce.
    pub mac: Option<packets::Mac>,
}

/// A handle on the kernel's address tables.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

/// Notifications that some address changed on this host.
pub struct AddressEvents {
    messages: UnboundedReceiver<(
        rtnetlink::packet_core::NetlinkMessage<rtnetlink::packet_route::RouteNetlinkMessage>,
        rtnetlink::sys::SocketAddr,
    )>,
}

impl AddressEvents {
    /// Wait for a change that needs a reconcile; `None` when the socket closed. Our own
    /// adds and lifetime refreshes (new addresses with our mark) need none: on a host
    /// refreshing a thousand lifetimes every half second they would wake one constantly.
    /// A burst is drained at once so that it costs one reconcile, not one per message.
    pub async fn changed(&mut self) -> Option<()> {
        loop {
            let (message, _) = self.messages.next().await?;
            let mut relevant = needs_reconcile(&message.payload);
            while let Ok((message, _)) = self.messages.try_recv() {
                relevant |= needs_reconcile(&message.payload);
            }
            if relevant {
                return Some(());
            }
        }
    }
}

/// Everything but a new address carrying our own mark: deletions (maybe by hand),
/// foreign addresses, link changes, and anything we cannot read.
fn needs_reconcile(
    payload: &rtnetlink::packet_core::NetlinkPayload<rtnetlink::packet_route::RouteNetlinkMessage>,
) -> bool {
    use rtnetlink::packet_core::NetlinkPayload;
    use rtnetlink::packet_route::RouteNetlinkMessage;
    match payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(message)) => {
            owned_address(message).is_none()
        }
        _ => true,
    }
}

fn errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg.to_io().raw_os_error(),
        _ => None,
    }
}

fn errno_kind(err: &rtnetlink::Error) -> Option<io::ErrorKind> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => Some(msg.to_io().kind()),
        _ => None,
    }
}

/// Room for the address events of a placement burst: every address this agent (or
/// anyone) adds is one notification of about 1 KiB of kernel memory, and a burst of
/// 10,000 while the agent is busy overran the default 208 KiB (the events were then
/// lost and the table re-read). Memory is taken only while events wait.
const EVENT_BUFFER: libc::c_int = 32 << 20;

/// Give the event socket [`EVENT_BUFFER`]: `SO_RCVBUFFORCE` passes `net.core.rmem_max`
/// (the agent has CAP_NET_ADMIN); without the capability, as much as the limit allows.
fn size_receive_buffer(fd: std::os::fd::RawFd) {
    let set = |option| {
        let size = EVENT_BUFFER;
        // SAFETY: a valid socket descriptor and a pointer to a c_int of the given size.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                std::ptr::addr_of!(size).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    if set(libc::SO_RCVBUFFORCE) != 0 && set(libc::SO_RCVBUF) != 0 {
        tracing::warn!(error = %io::Error::last_os_error(), "cannot size the netlink event buffer");
    }
}

impl Netlink {
    /// Open a netlink socket; the connection runs on the current tokio runtime.
    pub fn open() -> Result<Netlink, NetError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(NetError::Socket)?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    /// Subscribe to address and link changes (like `ip monitor address link`).
    pub fn address_events() -> Result<AddressEvents, NetError> {
        let groups = [
            MulticastGroup::Ipv4Ifaddr,
            MulticastGroup::Ipv6Ifaddr,
            MulticastGroup::Link,
        ];
        let (mut connection, _, messages) =
            rtnetlink::new_multicast_connection(&groups).map_err(NetError::Socket)?;
        size_receive_buffer(connection.socket_mut().as_raw_fd());
        tokio::spawn(connection);
        Ok(AddressEvents { messages })
    }

    /// Interface `name` as the kernel has it now.
    pub async fn link_state(&self, name: &str) -> Result<LinkState, NetError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(Some(link)) if has_name(&link.attributes, name) => {
                let flags = link.header.flags;
                let up = flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::LowerUp);
                let ethernet = !flags.contains(LinkFlags::Loopback)
                    && !flags.contains(LinkFlags::Noarp)
                    && flags.contains(LinkFlags::Broadcast);
                let mac = link.attributes.iter().find_map(|a| match a {
                    LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
                    _ => None,
                });
                Ok(LinkState {
                    ifindex: link.header.index,
                    up,
                    mac: mac.filter(|_| ethernet).map(packets::Mac),
                })
            }
            Ok(_) => Err(NetError::NoInterface(name.to_string())),
            Err(e) if errno_kind(&e) == Some(io::ErrorKind::NotFound) => {
                Err(NetError::NoInterface(name.to_string()))
            }
            Err(source) => Err(NetError::Request {
                op: "look up interface",
                target: name.to_string(),
                source,
            }),
        }
    }

    /// The kernel index of the interface called `name`.
    pub async fn interface_index(&self, name: &str) -> Result<u32, NetError> {
        self.link_state(name).await.map(|l| l.ifindex)
    }

    /// Every address on this host that carries extip's mark, on any interface.
    pub async fn owned_addresses(&self) -> Result<Vec<OwnedAddress>, NetError> {
        Ok(self
            .dump()
            .await?
            .iter()
            .filter_map(owned_address)
            .collect())
    }

    /// The host's own addresses: every address without extip's mark, on any interface.
    pub async fn host_addresses(&self) -> Result<BTreeSet<IpAddr>, NetError> {
        let dump = self.dump().await?;
        let foreign = dump.iter().filter(|m| owned_address(m).is_none());
        Ok(foreign.filter_map(address_of).collect())
    }

    async fn dump(&self) -> Result<Vec<AddressMessage>, NetError> {
        self.handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|source| NetError::Request {
                op: "list addresses",
                target: "all interfaces".into(),
                source,
            })
    }

    /// The owned addresses alone, as the planner wants them.
    pub async fn owned_set(&self) -> Result<BTreeSet<LocalAddress>, NetError> {
        let owned = self.owned_addresses().await?;
        Ok(owned.into_iter().map(|o| o.address).collect())
    }

    /// Add an address with extip's mark and a valid lifetime in seconds (`None`: forever).
    /// An address that is already there is left as it is: it may not be ours.
    pub async fn add(&self, address: LocalAddress, lifetime: Option<u32>) -> Result<(), NetError> {
        let mut request = self.handle.address().add(address.ifindex, address.ip, 0);
        *request.message_mut() = marked_message(address, lifetime);
        match request.execute().await {
            Err(e) if errno_kind(&e) == Some(io::ErrorKind::AlreadyExists) => Ok(()),
            other => other.map_err(|source| NetError::Request {
                op: "add address",
                target: address.to_string(),
                source,
            }),
        }
    }

    /// Set a new lifetime on an address this agent owns (like `ip addr change`).
    /// An address removed by hand just before this is added back: both the IPv4 and the
    /// IPv6 kernel code create a missing address whatever NLM_F_CREATE says. Only held
    /// addresses are refreshed, and reconcile would add a held one back anyway.
    pub async fn refresh(
        &self,
        address: LocalAddress,
        lifetime: Option<u32>,
    ) -> Result<(), NetError> {
        let mut request = self
            .handle
            .address()
            .add(address.ifindex, address.ip, 0)
            .replace();
        *request.message_mut() = marked_message(address, lifetime);
        request.execute().await.map_err(|source| NetError::Request {
            op: "refresh address",
            target: address.to_string(),
            source,
        })
    }

    /// Remove an address; one that is already gone is fine. Call only for owned addresses.
    pub async fn remove(&self, address: LocalAddress) -> Result<(), NetError> {
        let request = self.handle.address().del(build_message(address));
        match request.execute().await {
            Err(e) if errno_kind(&e) == Some(io::ErrorKind::AddrNotAvailable) => Ok(()),
            other => other.map_err(|source| NetError::Request {
                op: "remove address",
                target: address.to_string(),
                source,
            }),
        }
    }
}

fn has_name(attributes: &[LinkAttribute], name: &str) -> bool {
    attributes
        .iter()
        .any(|a| matches!(a, LinkAttribute::IfName(n) if n == name))
}

/// An add/replace message: the address, extip's mark, its lifetime, and no DAD.
fn marked_message(address: LocalAddress, lifetime: Option<u32>) -> AddressMessage {
    let mut message = build_message(address);
    let attributes = &mut message.attributes;
    attributes.push(AddressAttribute::Protocol(OWNER_PROTO.into()));
    let lifetime = lifetime.unwrap_or(INFINITE);
    let mut lifetimes = CacheInfo::default();
    lifetimes.ifa_preferred = lifetime;
    lifetimes.ifa_valid = lifetime;
    attributes.push(AddressAttribute::CacheInfo(lifetimes));
    if address.ip.is_ipv6() {
        // A takeover must not wait for duplicate address detection. A full-length
        // address needs no prefix route, and the kernel would leave one behind when the
        // address goes (it cleans up only after addresses without a lifetime): on `lo`
        // that stale route would send this host's own traffic for the IP, served
        // elsewhere by then, into the loopback.
        let mut flags = AddressFlags::Nodad;
        if address.prefix_len == 128 {
            flags |= AddressFlags::Noprefixroute;
        }
        attributes.push(AddressAttribute::Flags(flags));
    }
    message
}

/// The address a dump entry is about. IFA_LOCAL is the address itself; IFA_ADDRESS is
/// the peer on point-to-point links, and the address itself elsewhere.
fn address_of(message: &AddressMessage) -> Option<IpAddr> {
    let local = message.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let address = message.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    });
    local.or(address)
}

fn build_message(address: LocalAddress) -> AddressMessage {
    match address.ip {
        IpAddr::V4(ip) => AddressMessageBuilder::<Ipv4Addr>::new()
            .index(address.ifindex)
            .address(ip, address.prefix_len)
            .build(),
        IpAddr::V6(ip) => AddressMessageBuilder::<Ipv6Addr>::new()
            .index(address.ifindex)
            .address(ip, address.prefix_len)
            .build(),
    }
}

/// The address in a dump entry, if it carries extip's mark.
fn owned_address(message: &AddressMessage) -> Option<OwnedAddress> {
    let marked = message
        .attributes
        .iter()
        .any(|a| matches!(a, AddressAttribute::Protocol(p) if u8::from(*p) == OWNER_PROTO));
    if !marked {
        return None;
    }
    let valid_left = message.attributes.iter().find_map(|a| match a {
        AddressAttribute::CacheInfo(c) if c.ifa_valid != INFINITE => Some(c.ifa_valid),
        _ => None,
    });
    Some(OwnedAddress {
        address: LocalAddress {
            ifindex: message.header.index,
            ip: address_of(message)?,
            prefix_len: message.header.prefix_len,
        },
        valid_left,
    })
}
