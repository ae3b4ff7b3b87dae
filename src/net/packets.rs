//! Ethernet frames for announcing and probing an IP: gratuitous ARP, unsolicited
//! neighbour advertisement, ARP probe (RFC 5227) and DAD-style neighbour solicitation,
//! and the reading of answers. Pure: bytes in, bytes out.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// EtherType of ARP.
pub const ETH_P_ARP: u16 = 0x0806;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;

const ICMPV6: u8 = 58;
const NEIGHBOR_SOLICITATION: u8 = 135;
const NEIGHBOR_ADVERTISEMENT: u8 = 136;
/// Override flag of a neighbour advertisement: replace the cached link-layer address.
const NA_OVERRIDE: u8 = 0x20;
const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;

/// A link-layer (Ethernet) address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

const BROADCAST: Mac = Mac([0xff; 6]);

fn ethernet(dst: Mac, src: Mac, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + payload.len());
    frame.extend_from_slice(&dst.0);
    frame.extend_from_slice(&src.0);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

fn arp(op: u16, sha: Mac, spa: Ipv4Addr, tha: Mac, tpa: Ipv4Addr) -> Vec<u8> {
    let mut p = Vec::with_capacity(28);
    p.extend_from_slice(&1u16.to_be_bytes()); // Ethernet
    p.extend_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    p.extend_from_slice(&[6, 4]);
    p.extend_from_slice(&op.to_be_bytes());
    p.extend_from_slice(&sha.0);
    p.extend_from_slice(&spa.octets());
    p.extend_from_slice(&tha.0);
    p.extend_from_slice(&tpa.octets());
    ethernet(BROADCAST, sha, ETH_P_ARP, &p)
}

/// Gratuitous ARP, request form (what keepalived sends): `ip` is at `mac`.
pub fn gratuitous_arp_request(mac: Mac, ip: Ipv4Addr) -> Vec<u8> {
    arp(ARP_REQUEST, mac, ip, Mac([0; 6]), ip)
}

/// Gratuitous ARP, reply form (`arping -A`): some stacks update only on replies.
pub fn gratuitous_arp_reply(mac: Mac, ip: Ipv4Addr) -> Vec<u8> {
    arp(ARP_REPLY, mac, ip, mac, ip)
}

/// RFC 5227 ARP probe: "who has `ip`?" from sender address 0.0.0.0, so no cache learns
/// anything from it; an owner answers with a reply.
pub fn arp_probe(mac: Mac, ip: Ipv4Addr) -> Vec<u8> {
    arp(ARP_REQUEST, mac, Ipv4Addr::UNSPECIFIED, Mac([0; 6]), ip)
}

/// The ICMPv6 checksum over the pseudo-header and `body` (checksum field zero).
fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, body: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let hi = u32::from(pair[0]) << 8;
            sum += hi | pair.get(1).map_or(0, |&b| u32::from(b));
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(body.len() as u32).to_be_bytes());
    add(&[0, 0, 0, ICMPV6]);
    add(body);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn icmpv6_frame(
    dst_mac: Mac,
    src_mac: Mac,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    body: Vec<u8>,
) -> Vec<u8> {
    let mut body = body;
    let checksum = icmpv6_checksum(src, dst, &body);
    body[2..4].copy_from_slice(&checksum.to_be_bytes());
    let mut packet = Vec::with_capacity(40 + body.len());
    packet.extend_from_slice(&[0x60, 0, 0, 0]);
    packet.extend_from_slice(&(body.len() as u16).to_be_bytes());
    packet.extend_from_slice(&[ICMPV6, 255]); // hop limit 255: required by RFC 4861
    packet.extend_from_slice(&src.octets());
    packet.extend_from_slice(&dst.octets());
    packet.extend_from_slice(&body);
    ethernet(dst_mac, src_mac, ETH_P_IPV6, &packet)
}

const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// Unsolicited neighbour advertisement to all nodes, override flag set: `ip` is at `mac`.
pub fn unsolicited_na(mac: Mac, ip: Ipv6Addr) -> Vec<u8> {
    let mut body = vec![NEIGHBOR_ADVERTISEMENT, 0, 0, 0, NA_OVERRIDE, 0, 0, 0];
    body.extend_from_slice(&ip.octets());
    body.extend_from_slice(&[2, 1]); // option: target link-layer address, 8 bytes
    body.extend_from_slice(&mac.0);
    let all_nodes_mac = Mac([0x33, 0x33, 0, 0, 0, 1]);
    icmpv6_frame(all_nodes_mac, mac, ip, ALL_NODES, body)
}

/// Duplicate-address-detection style solicitation for `ip` (source `::`): an owner
/// answers with an advertisement to all nodes.
pub fn dad_solicitation(mac: Mac, ip: Ipv6Addr) -> Vec<u8> {
    let o = ip.octets();
    let group = Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    );
    let group_mac = Mac([0x33, 0x33, 0xff, o[13], o[14], o[15]]);
    let mut body = vec![NEIGHBOR_SOLICITATION, 0, 0, 0, 0, 0, 0, 0];
    body.extend_from_slice(&ip.octets());
    icmpv6_frame(group_mac, mac, Ipv6Addr::UNSPECIFIED, group, body)
}

/// Whether `frame` shows a host other than `me` using `ip`: an ARP packet from it
/// (reply, or a request with `ip` as sender), or a neighbour advertisement for it.
/// Returns that host's link-layer address. Our own frames (seen outgoing) are ignored.
pub fn foreign_owner(frame: &[u8], ip: std::net::IpAddr, me: Mac) -> Option<Mac> {
    let src = Mac(frame.get(6..12)?.try_into().ok()?);
    if src == me {
        return None;
    }
    let ethertype = u16::from_be_bytes(frame.get(12..14)?.try_into().ok()?);
    let payload = &frame[14..];
    match (ip, ethertype) {
        (std::net::IpAddr::V4(ip), ETH_P_ARP) => arp_sender_of(payload, ip),
        (std::net::IpAddr::V6(ip), ETH_P_IPV6) => advertiser_of(payload, ip).or(
            // An advertisement without the target link-layer option: the frame's sender.
            advertises(payload, ip).then_some(src),
        ),
        _ => None,
    }
}

fn arp_sender_of(p: &[u8], ip: Ipv4Addr) -> Option<Mac> {
    if p.len() < 28 || p[0..6] != [0, 1, 8, 0, 6, 4] {
        return None;
    }
    let spa = Ipv4Addr::new(p[14], p[15], p[16], p[17]);
    (spa == ip).then(|| Mac(p[8..14].try_into().expect("6 bytes")))
}

/// Whether an IPv6 packet is a neighbour advertisement for `ip`.
fn advertises(p: &[u8], ip: Ipv6Addr) -> bool {
    p.len() >= 64 && p[6] == ICMPV6 && p[40] == NEIGHBOR_ADVERTISEMENT && p[48..64] == ip.octets()
}

/// The target link-layer address of a neighbour advertisement for `ip`, if it has one.
fn advertiser_of(p: &[u8], ip: Ipv6Addr) -> Option<Mac> {
    if !advertises(p, ip) {
        return None;
    }
    let mut options = &p[64..];
    while options.len() >= 8 {
        let len = usize::from(options[1]) * 8;
        if len == 0 || len > options.len() {
            return None;
        }
        if options[0] == 2 {
            return Some(Mac(options[2..8].try_into().expect("6 bytes")));
        }
        options = &options[len..];
    }
    None
}

#[cfg(test)]
mod tests;
