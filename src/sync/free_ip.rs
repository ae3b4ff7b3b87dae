//! Where a new allocation looks in a pool: a free address, searched from a place given
//! by the Service's name. Pure.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::pools::Pool;

/// Addresses of a pool that allocation looks at; bounds the search in huge IPv6 pools.
const SEARCH_WINDOW: u128 = 1 << 16;

/// A free address of `pool` for `service`: the search starts at a place given by a hash
/// of the name, so racing syncs allocating different Services rarely reach for the same
/// IP, and a Service re-created after the retention window likely finds its old one.
pub fn free_ip(pool: &Pool, taken: &BTreeSet<IpAddr>, service: &str) -> Option<IpAddr> {
    let net = pool.cidr;
    let (base, bits) = match net {
        IpNet::V4(n) => (
            u128::from(u32::from(n.network())),
            32 - u32::from(n.prefix_len()),
        ),
        IpNet::V6(n) => (u128::from(n.network()), 128 - u32::from(n.prefix_len())),
    };
    let size = if bits >= 16 {
        SEARCH_WINDOW
    } else {
        1u128 << bits
    };
    let (skip_first, skip_last) = skipped_ends(net);
    let start = u128::from(name_hash(service)) % size;
    (0..size)
        .map(|k| (start + k) % size)
        .filter(|&k| !(skip_first && k == 0 || skip_last && k == size - 1))
        .map(|k| match net {
            IpNet::V4(_) => IpAddr::from(std::net::Ipv4Addr::from((base + k) as u32)),
            IpNet::V6(_) => IpAddr::from(std::net::Ipv6Addr::from(base + k)),
        })
        .find(|ip| !taken.contains(ip))
}

/// Which ends of `net` are never allocated: IPv4's network and broadcast addresses,
/// IPv6's subnet-router anycast address (none in a /31, /32, /127 or /128).
fn skipped_ends(net: IpNet) -> (bool, bool) {
    match net {
        IpNet::V4(n) => (n.prefix_len() < 31, n.prefix_len() < 31),
        IpNet::V6(n) => (n.prefix_len() < 127, false),
    }
}

/// How many addresses of `net` allocation may hand out (saturating at `u64::MAX`).
pub fn usable_addresses(net: IpNet) -> u64 {
    let bits = u32::from(net.max_prefix_len() - net.prefix_len());
    let all = if bits >= 64 { u64::MAX } else { 1u64 << bits };
    let (first, last) = skipped_ends(net);
    all - u64::from(first) - u64::from(last)
}

/// A stable hash of `name` (FNV-1a): the same on every replica and version.
pub fn name_hash(name: &str) -> u64 {
    use std::hash::Hasher;
    let mut h = fnv::FnvHasher::default();
    h.write(name.as_bytes());
    h.finish()
}
