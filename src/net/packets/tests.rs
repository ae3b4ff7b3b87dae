use super::*;
use std::net::IpAddr;

const ME: Mac = Mac([0x02, 0, 0, 0, 0, 0x01]);
const OTHER: Mac = Mac([0x02, 0, 0, 0, 0, 0x02]);

fn v4() -> Ipv4Addr {
    "198.51.100.10".parse().unwrap()
}

fn v6() -> Ipv6Addr {
    "2001:db8:6::10".parse().unwrap()
}

/// Sum of 16-bit words with the checksum in place: 0 when the checksum is right.
fn verify_icmpv6(frame: &[u8]) -> u16 {
    let ip = &frame[14..];
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).unwrap());
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).unwrap());
    icmpv6_checksum(src, dst, &ip[40..])
}

#[test]
fn gratuitous_arp_has_the_ip_as_sender_and_target() {
    let f = gratuitous_arp_request(ME, v4());
    assert_eq!(f.len(), 42);
    assert_eq!(&f[0..6], &[0xff; 6]);
    assert_eq!(&f[12..14], &[0x08, 0x06]);
    assert_eq!(&f[20..22], &[0, 1], "request");
    assert_eq!(&f[22..28], &ME.0);
    assert_eq!(&f[28..32], &v4().octets());
    assert_eq!(&f[38..42], &v4().octets());
    let r = gratuitous_arp_reply(ME, v4());
    assert_eq!(&r[20..22], &[0, 2], "reply");
    assert_eq!(&r[32..38], &ME.0);
}

#[test]
fn arp_probe_has_no_sender_address() {
    let f = arp_probe(ME, v4());
    assert_eq!(&f[28..32], &[0, 0, 0, 0]);
    assert_eq!(&f[38..42], &v4().octets());
}

#[test]
fn neighbour_frames_carry_valid_checksums_and_hop_limit_255() {
    let na = unsolicited_na(ME, v6());
    assert_eq!(verify_icmpv6(&na), 0);
    assert_eq!(na[14 + 7], 255);
    assert_eq!(na[14 + 40], 136);
    assert_eq!(na[14 + 44] & 0x20, 0x20, "override flag");
    assert_eq!(&na[0..6], &[0x33, 0x33, 0, 0, 0, 1]);
    let ns = dad_solicitation(ME, v6());
    assert_eq!(verify_icmpv6(&ns), 0);
    assert_eq!(&ns[0..6], &[0x33, 0x33, 0xff, 0, 0, 0x10]);
    assert_eq!(&ns[14 + 8..14 + 24], &[0; 16], "source ::");
}

#[test]
fn answers_from_another_host_name_it_and_our_own_frames_do_not() {
    let ip4 = IpAddr::V4(v4());
    let ip6 = IpAddr::V6(v6());
    assert_eq!(
        foreign_owner(&gratuitous_arp_reply(OTHER, v4()), ip4, ME),
        Some(OTHER)
    );
    assert_eq!(
        foreign_owner(&gratuitous_arp_reply(ME, v4()), ip4, ME),
        None
    );
    // A probe (sender 0.0.0.0) from someone else is not an owner.
    assert_eq!(foreign_owner(&arp_probe(OTHER, v4()), ip4, ME), None);
    let other_ip: Ipv4Addr = "198.51.100.11".parse().unwrap();
    assert_eq!(
        foreign_owner(&gratuitous_arp_reply(OTHER, other_ip), ip4, ME),
        None
    );
    assert_eq!(
        foreign_owner(&unsolicited_na(OTHER, v6()), ip6, ME),
        Some(OTHER)
    );
    assert_eq!(foreign_owner(&dad_solicitation(OTHER, v6()), ip6, ME), None);
    assert_eq!(foreign_owner(&unsolicited_na(OTHER, v6()), ip4, ME), None);
    assert_eq!(foreign_owner(&[0u8; 10], ip4, ME), None);
}

#[test]
fn mac_prints_like_ip_link() {
    assert_eq!(OTHER.to_string(), "02:00:00:00:00:02");
}
