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
    // IPv4: network and broadcast; IPv6: the subnet-router anycast address.
    let (skip_first, skip_last) = match net {
        IpNet::V4(n) => (n.prefix_len() < 31, n.prefix_len() < 31),
        IpNet::V6(n) => (n.prefix_len() < 127, false),
    };
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

/// A stable hash of `name` (FNV-1a): the same on every replica and version.
pub fn name_hash(name: &str) -> u64 {
    use std::hash::Hasher;
    let mut h = fnv::FnvHasher::default();
    h.write(name.as_bytes());
    h.finish()
}
