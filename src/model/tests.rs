//! The contract's keys and values, round trips and refusals.

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn keys_round_trip_through_parse() {
    let keys = Keys::new("/extip/");
    let v6 = ip("2001:db8::10");
    assert_eq!(keys.desired(v6), "/extip/ips/2001:db8::10");
    assert_eq!(
        keys.parse(&keys.desired(v6)).unwrap(),
        Some(KeyKind::Desired(v6))
    );
    assert_eq!(
        keys.parse(&keys.claim(v6, 3)).unwrap(),
        Some(KeyKind::Claim(v6, 3))
    );
    assert_eq!(
        keys.parse("/extip/nodes/h1").unwrap(),
        Some(KeyKind::Node("h1".into()))
    );
    assert_eq!(
        keys.parse("/extip/pools/a").unwrap(),
        Some(KeyKind::Pool("a".into()))
    );
    assert_eq!(
        keys.parse("/extip/allocations/a/b").unwrap(),
        Some(KeyKind::Other)
    );
    assert_eq!(keys.parse("/extipx/ips/1.2.3.4").unwrap(), None);
    assert_eq!(keys.parse("/other").unwrap(), None);
}

#[test]
fn non_canonical_and_bad_ips_are_rejected_with_the_fix() {
    let keys = Keys::new("/extip");
    assert_eq!(
        keys.parse("/extip/ips/2001:0db8::10"),
        Err(ContractError::NotCanonical {
            given: "2001:0db8::10".into(),
            canonical: "2001:db8::10".into()
        })
    );
    assert!(matches!(
        keys.parse("/extip/ips/198.51.100.10/32"),
        Err(ContractError::BadIp(_))
    ));
    assert!(matches!(
        keys.parse("/extip/claims/198.51.100.10/x"),
        Err(ContractError::BadSlot(_))
    ));
}

#[test]
fn empty_object_is_an_exclusive_ip() {
    let p = parse_desired(ip("198.51.100.10"), b"{}").unwrap();
    assert_eq!(p.desired.replicas, Replicas::Count(1));
    assert_eq!(p.desired.prefix_len, None);
    assert!(p.ignored_fields.is_empty());
}

#[test]
fn full_value_parses_and_unknown_fields_are_reported() {
    let raw = br#"{"prefix_len":24,"replicas":"all","interface":"eth0","pool":"p","source":["a/b","c/d"],"nodes":["h1","h3","h1"],"colour":"red"}"#;
    let p = parse_desired(ip("198.51.100.10"), raw).unwrap();
    assert_eq!(p.desired.prefix_len, Some(24));
    assert_eq!(p.desired.replicas, Replicas::All);
    assert_eq!(p.desired.interface.as_deref(), Some("eth0"));
    assert_eq!(p.desired.nodes, Some(["h1".into(), "h3".into()].into()));
    assert_eq!(p.ignored_fields, vec!["colour".to_string()]);
}

#[test]
fn bad_values_name_their_field() {
    let v4 = ip("198.51.100.10");
    let cases: [(&[u8], &str); 8] = [
        (b"not json", "not valid JSON"),
        (br#"{"prefix_len":33}"#, "prefix_len"),
        (br#"{"prefix_len":"24"}"#, "prefix_len"),
        (br#"{"replicas":"some"}"#, "replicas"),
        (br#"{"replicas":0}"#, "replicas"),
        (br#"{"interface":"a/b"}"#, "interface"),
        (br#"{"nodes":["h1","a b"]}"#, "nodes"),
        (br#"{"nodes":"h1"}"#, "nodes"),
    ];
    for (raw, needle) in cases {
        let err = parse_desired(v4, raw).unwrap_err().to_string();
        assert!(err.contains(needle), "{err} should mention {needle}");
    }
    assert!(parse_desired(ip("2001:db8::1"), br#"{"prefix_len":64}"#).is_ok());
}

#[test]
fn huge_values_are_rejected_before_parsing() {
    let big = vec![b' '; MAX_VALUE_BYTES + 1];
    assert_eq!(
        parse_desired(ip("198.51.100.10"), &big),
        Err(ContractError::TooLarge(MAX_VALUE_BYTES + 1))
    );
}

#[test]
fn history_keeps_the_last_holders_oldest_first() {
    let entry = |n: usize| HistoryEntry {
        node: format!("h{n}"),
        since: String::new(),
    };
    let mut history = Vec::new();
    for n in 1..=7 {
        history = push_history(history, entry(n));
    }
    let nodes: Vec<&str> = history.iter().map(|h| h.node.as_str()).collect();
    assert_eq!(nodes, ["h3", "h4", "h5", "h6", "h7"]);
}
