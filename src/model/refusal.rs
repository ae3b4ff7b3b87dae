//! IPs that no agent takes, whatever `--allowed-cidr` says: special-purpose addresses,
//! and addresses that already belong to a member of the cluster (a host's own address,
//! an etcd endpoint). Adding one of those on a real network cuts a member off.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

use super::NodeValue;

/// Why every agent refuses a desired IP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Refusal {
    /// An address of a special-purpose class (loopback, multicast, ...).
    SpecialPurpose {
        /// The class, as the log and `extip status` say it.
        class: &'static str,
    },
    /// An address the host of this node has configured itself (not added by extip).
    HostAddress {
        /// The node whose host has the address.
        node: String,
    },
    /// The address of an etcd endpoint that this node's agent uses.
    EtcdEndpoint {
        /// The node whose agent uses the endpoint.
        node: String,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::SpecialPurpose { class } => write!(f, "special-purpose address ({class})"),
            Refusal::HostAddress { node } => write!(f, "an own address of host {node}"),
            Refusal::EtcdEndpoint { node } => {
                write!(f, "the address of an etcd endpoint (used by {node})")
            }
        }
    }
}

/// The special-purpose class of `ip`, if it is one that must never be a service IP.
pub fn special_purpose(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(ip) => special_purpose_v4(ip),
        IpAddr::V6(ip) => special_purpose_v6(ip),
    }
}

fn special_purpose_v4(ip: Ipv4Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.octets()[0] == 0 {
        // 0.0.0.0/8 means "this host on this network" (RFC 1122); never a destination.
        Some("this network, 0.0.0.0/8")
    } else if ip.is_broadcast() {
        Some("limited broadcast")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_link_local() {
        Some("link-local")
    } else {
        None
    }
}

fn special_purpose_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if first & 0xffc0 == 0xfe80 {
        Some("link-local")
    } else if ip.to_ipv4_mapped().is_some() {
        Some("IPv4-mapped IPv6")
    } else {
        None
    }
}

/// Every member's address, indexed: each node's host addresses and etcd endpoints.
/// Built again when the nodes change; looked up per desired IP.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberAddresses {
    owners: HashMap<IpAddr, Refusal>,
}

impl MemberAddresses {
    /// Index the addresses the given node records publish.
    pub fn of<'a>(nodes: impl IntoIterator<Item = &'a NodeValue>) -> Self {
        let mut owners = HashMap::new();
        for node in nodes {
            for &ip in &node.etcd_addresses {
                owners.entry(ip).or_insert_with(|| Refusal::EtcdEndpoint {
                    node: node.node.clone(),
                });
            }
            for &ip in &node.host_addresses {
                owners.entry(ip).or_insert_with(|| Refusal::HostAddress {
                    node: node.node.clone(),
                });
            }
        }
        MemberAddresses { owners }
    }

    /// Every address indexed.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.owners.keys().copied()
    }

    /// Why no agent may take `ip`; `None` when it may be served.
    pub fn refusal(&self, ip: IpAddr) -> Option<Refusal> {
        if let Some(class) = special_purpose(ip) {
            return Some(Refusal::SpecialPurpose { class });
        }
        self.owners.get(&ip).cloned()
    }
}

/// Whether a host address is worth publishing: special-purpose ones are refused anyway.
pub fn publishable_host_address(ip: IpAddr) -> bool {
    special_purpose(ip).is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn every_special_purpose_class_is_refused() {
        let cases = [
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "this network, 0.0.0.0/8"),
            ("255.255.255.255", "limited broadcast"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("127.0.0.5", "loopback"),
            ("169.254.1.1", "link-local"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("ff02::1", "multicast"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("::ffff:198.51.100.1", "IPv4-mapped IPv6"),
        ];
        for (text, class) in cases {
            assert_eq!(special_purpose(ip(text)), Some(class), "{text}");
        }
        for ok in [
            "198.51.100.1",
            "203.0.113.255",
            "2001:db8::1",
            "fec0::1",
            "10.0.0.1",
        ] {
            assert_eq!(special_purpose(ip(ok)), None, "{ok}");
        }
    }

    #[test]
    fn member_addresses_name_their_owner() {
        let mut h1 = NodeValue::new("h1", &["lo"]);
        h1.host_addresses = vec![ip("192.0.2.1")];
        h1.etcd_addresses = vec![ip("192.0.2.250")];
        let mut h2 = NodeValue::new("h2", &["lo"]);
        h2.host_addresses = vec![ip("192.0.2.2"), ip("2001:db8::2")];
        let members = MemberAddresses::of([&h1, &h2]);
        assert_eq!(
            members.refusal(ip("192.0.2.2")),
            Some(Refusal::HostAddress { node: "h2".into() })
        );
        assert_eq!(
            members.refusal(ip("192.0.2.250")),
            Some(Refusal::EtcdEndpoint { node: "h1".into() })
        );
        assert_eq!(members.refusal(ip("198.51.100.7")), None);
        assert_eq!(
            members.refusal(ip("127.0.0.1")).map(|r| r.to_string()),
            Some("special-purpose address (loopback)".into())
        );
    }
}
