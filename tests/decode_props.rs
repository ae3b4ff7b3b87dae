//! Property tests of everything that decodes what etcd holds: keys, desired values,
//! claims, node records, and the agent's view that applies them. Arbitrary bytes must
//! never panic, and junk written to one key must never disturb another IP.
//! Bounded (a few thousand cases each) so `scripts/test` runs them every time.

use std::net::IpAddr;

use extip::agent::ClusterView;
use extip::model::{self, KeyKind, Keys, Replicas};
use extip::store::{Change, RawKv};
use proptest::prelude::*;

fn kv(key: String, value: Vec<u8>, rev: i64) -> RawKv {
    RawKv {
        key,
        value,
        lease: 0,
        mod_revision: rev,
        create_revision: rev,
    }
}

/// Keys that look like ours often enough to reach every branch.
fn key_under_prefix() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        Just("ips/".to_string()),
        Just("claims/".to_string()),
        Just("nodes/".to_string()),
        Just("pools/".to_string()),
        "[a-z/]{0,8}",
    ];
    let tail = prop_oneof![
        any::<IpAddr>().prop_map(|ip| ip.to_string()),
        any::<IpAddr>().prop_map(|ip| format!("{ip}/{}", 0u8)),
        ".{0,40}",
    ];
    (segment, tail).prop_map(|(s, t)| format!("/extip/{s}{t}"))
}

/// Values that are JSON-ish often enough to reach the field checks.
fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        Just(b"{}".to_vec()),
        (any::<i64>(), ".{0,10}").prop_map(|(n, s)| format!(
            r#"{{"prefix_len":{n},"replicas":"{s}","interface":"{s}"}}"#
        )
        .into_bytes()),
        (0u64..200, 0u64..2000).prop_map(|(l, r)| format!(
            r#"{{"prefix_len":{l},"replicas":{r},"extra":[1,2]}}"#
        )
        .into_bytes()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn decoders_never_panic_on_arbitrary_input(key in key_under_prefix(), raw in value()) {
        let keys = Keys::new("/extip");
        let _ = keys.parse(&key);
        let _ = model::parse_claim(&raw);
        let _ = model::parse_node(&raw);
        for ip in ["198.51.100.1", "2001:db8::1"] {
            let _ = model::parse_desired(ip.parse().unwrap(), &raw);
        }
        let mut view = ClusterView::new(keys);
        view.apply(&Change::Put(kv(key.clone(), raw, 1)));
        view.apply(&Change::Delete { key, revision: 2 });
    }

    #[test]
    fn every_ip_round_trips_through_its_keys(ip in any::<IpAddr>(), slot in 0u32..100) {
        let keys = Keys::new("/extip");
        prop_assert_eq!(keys.parse(&keys.desired(ip)).unwrap(), Some(KeyKind::Desired(ip)));
        prop_assert_eq!(keys.parse(&keys.claim(ip, slot)).unwrap(), Some(KeyKind::Claim(ip, slot)));
    }

    #[test]
    fn accepted_values_are_within_their_ranges(ip in any::<IpAddr>(), raw in value()) {
        if let Ok(parsed) = model::parse_desired(ip, &raw) {
            let d = parsed.desired;
            if let Some(len) = d.prefix_len {
                prop_assert!((1..=model::max_prefix_len(ip)).contains(&len));
            }
            if let Replicas::Count(n) = d.replicas {
                prop_assert!((1..=model::MAX_REPLICAS).contains(&n));
            }
            if let Some(i) = d.interface {
                prop_assert!(!i.is_empty() && i.len() <= 15 && !i.contains('/'));
            }
        }
    }

    #[test]
    fn junk_elsewhere_never_disturbs_a_good_ip(
        writes in prop::collection::vec((key_under_prefix(), value()), 1..40)
    ) {
        let keys = Keys::new("/extip");
        let good: IpAddr = "198.51.100.10".parse().unwrap();
        let good_key = keys.desired(good);
        let mut view = ClusterView::new(keys);
        view.apply(&Change::Put(kv(good_key.clone(), br#"{"prefix_len":24}"#.to_vec(), 1)));
        let before = view.desired[&good].clone();
        for (rev, (key, raw)) in writes.into_iter().enumerate() {
            if key == good_key {
                continue;
            }
            view.apply(&Change::Put(kv(key, raw, rev as i64 + 2)));
        }
        prop_assert_eq!(&view.desired[&good], &before);
    }
}
