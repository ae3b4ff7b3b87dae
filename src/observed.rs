//! What the agent observes, shared by the pure core and the adapters below it: claims
//! as read from etcd, marked addresses as read from the kernel. Nothing here decides.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

/// An etcd lease ID.
pub type LeaseId = i64;

/// An address on this host that carries extip's ownership mark.
/// Ordered by IP first, so the addresses of one IP are one range of a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LocalAddress {
    /// The address.
    pub ip: IpAddr,
    /// Its mask length.
    pub prefix_len: u8,
    /// Kernel interface index.
    pub ifindex: u32,
}

impl fmt::Display for LocalAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ip, self.prefix_len)
    }
}

/// Who holds one claim slot, as seen in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Node name from the claim value; `None` when the value is unreadable.
    pub node: Option<String>,
    /// The lease the claim key hangs on (0: none).
    pub lease: LeaseId,
}

/// Claims per IP, per slot.
pub type Claims = BTreeMap<IpAddr, BTreeMap<u32, Holder>>;
