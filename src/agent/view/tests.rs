use super::*;

fn kv(key: &str, value: &str, rev: i64) -> RawKv {
    RawKv {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        lease: 5,
        mod_revision: rev,
        create_revision: rev,
    }
}

/// A view loaded from a list of these keys at revision 10.
fn loaded(kvs: Vec<RawKv>) -> ClusterView {
    let mut view = ClusterView::new(Keys::new("/extip"));
    view.replace(&Snapshot { revision: 10, kvs });
    view
}

#[test]
fn bad_data_is_skipped_and_good_data_kept() {
    let mut view = ClusterView::new(Keys::new("/extip"));
    let snap = Snapshot {
        revision: 10,
        kvs: vec![
            kv("/extip/ips/198.51.100.11", "not json", 3),
            kv("/extip/ips/198.51.100.12", "{}", 4),
            kv("/extip/ips/not-an-ip", "{}", 5),
            kv("/extip/claims/198.51.100.12/0", "garbage", 6),
            kv("/extip/nodes/h1", r#"{"node":"h1","interfaces":["lo"]}"#, 7),
        ],
    };
    view.replace(&snap);
    let ips: Vec<String> = view.desired.keys().map(|i| i.to_string()).collect();
    assert_eq!(ips, vec!["198.51.100.12"]);
    let ip: IpAddr = "198.51.100.12".parse().unwrap();
    assert_eq!(
        view.claims[&ip][&0].node, None,
        "unreadable claim still takes the slot"
    );
    assert!(view.nodes.contains_key("h1"));
}

#[test]
fn changes_already_in_the_snapshot_are_ignored() {
    let mut view = ClusterView::new(Keys::new("/extip"));
    view.replace(&Snapshot {
        revision: 10,
        kvs: vec![],
    });
    view.apply(&Change::Put(kv("/extip/ips/198.51.100.1", "{}", 9)));
    assert!(view.desired.is_empty());
    view.apply(&Change::Put(kv("/extip/ips/198.51.100.1", "{}", 11)));
    assert_eq!(view.desired.len(), 1);
    view.apply(&Change::Delete {
        key: "/extip/ips/198.51.100.1".into(),
        revision: 12,
    });
    assert!(view.desired.is_empty());
}

#[test]
fn a_bad_overwrite_keeps_the_last_good_value() {
    let mut view = ClusterView::new(Keys::new("/extip"));
    view.apply(&Change::Put(kv("/extip/ips/198.51.100.1", "{}", 1)));
    view.apply(&Change::Put(kv("/extip/ips/198.51.100.1", "{", 2)));
    assert_eq!(view.desired.len(), 1);
}

#[test]
fn a_late_watch_event_never_undoes_our_own_release_or_claim() {
    let keys = Keys::new("/extip");
    let mut view = ClusterView::new(keys.clone());
    let ip: IpAddr = "198.51.100.246".parse().unwrap();
    let mine = |rev| RawKv {
        key: keys.claim(ip, 0),
        value: br#"{"node":"h1","since":""}"#.to_vec(),
        lease: 7,
        mod_revision: rev,
        create_revision: rev,
    };
    let me = Holder {
        node: Some("h1".into()),
        lease: 7,
    };
    view.claimed(ip, 0, me, 5);
    view.released(ip, 0, Some(8));
    // The watch was slow: the put of our own claim (revision 5) arrives now.
    view.apply(&Change::Put(mine(5)));
    assert!(
        view.claims.is_empty(),
        "a stale event brought back a released claim"
    );
    // Newer news is applied: another host claimed at revision 9.
    let mut theirs = mine(9);
    theirs.value = br#"{"node":"h3","since":""}"#.to_vec();
    theirs.lease = 9;
    view.apply(&Change::Put(theirs));
    assert_eq!(view.claims[&ip][&0].node.as_deref(), Some("h3"));
    // And a stale delete never removes what we know to be newer.
    view.apply(&Change::Delete {
        key: keys.claim(ip, 0),
        revision: 7,
    });
    assert_eq!(view.claims[&ip][&0].lease, 9);
}

#[test]
fn another_nodes_claim_can_wait_unless_this_node_holds_the_ip() {
    let keys = Keys::new("/extip");
    let mut view = ClusterView::new(keys.clone());
    view.set_local(NodeValue::new("h1", &["lo"]));
    let (free, shared): (IpAddr, IpAddr) = (
        "198.51.100.1".parse().unwrap(),
        "198.51.100.2".parse().unwrap(),
    );
    let claim = |ip, slot, node: &str, rev| {
        let mut kv = kv(&keys.claim(ip, slot), "", rev);
        kv.value = format!(r#"{{"node":"{node}","since":""}}"#).into_bytes();
        kv.lease = 7;
        Change::Put(kv)
    };
    assert_eq!(view.apply(&claim(free, 0, "h2", 1)), Relevance::Soon);
    assert_eq!(view.apply(&claim(shared, 0, "h1", 2)), Relevance::Now);
    assert_eq!(view.apply(&claim(shared, 1, "h2", 3)), Relevance::Now);
    let freed = Change::Delete {
        key: keys.claim(free, 0),
        revision: 4,
    };
    assert_eq!(view.apply(&freed), Relevance::Now, "a free slot");
    let history = kv(&format!("/extip/history/{free}"), "[]", 5);
    assert_eq!(view.apply(&Change::Put(history)), Relevance::None);
}

#[test]
fn members_addresses_and_special_ones_are_refused_and_freed_again() {
    let h2 = r#"{"node":"h2","interfaces":["lo"],"host_addresses":["192.0.2.2"]}"#;
    let mut view = loaded(vec![
        kv("/extip/ips/127.0.0.5", "{}", 3),
        kv("/extip/ips/192.0.2.2", "{}", 4),
        kv("/extip/ips/198.51.100.1", "{}", 5),
        kv("/extip/nodes/h2", h2, 6),
    ]);
    fn ips<T>(m: &BTreeMap<IpAddr, T>) -> Vec<String> {
        m.keys().map(|i| i.to_string()).collect()
    }
    assert_eq!(ips(&view.desired), ["198.51.100.1"]);
    assert_eq!(ips(&view.refused), ["127.0.0.5", "192.0.2.2"]);
    // This agent's own address is refused before its record comes back from etcd.
    let mut me = NodeValue::new("h1", &["lo"]);
    me.etcd_addresses = vec!["198.51.100.1".parse().unwrap()];
    view.set_local(me);
    assert!(view.desired.is_empty());
    // h2 goes: its address is no longer a member's.
    view.apply(&Change::Delete {
        key: "/extip/nodes/h2".into(),
        revision: 11,
    });
    assert_eq!(ips(&view.desired), ["192.0.2.2"]);
}

#[test]
fn a_claim_without_a_lease_is_kept_for_deletion() {
    let mut view = ClusterView::new(Keys::new("/extip"));
    let mut forged = kv("/extip/claims/198.51.100.60/0", "h1", 3);
    forged.lease = 0;
    view.apply(&Change::Put(forged.clone()));
    let ip: IpAddr = "198.51.100.60".parse().unwrap();
    assert_eq!(view.leaseless.get(&(ip, 0)), Some(&forged));
    assert!(
        view.claims[&ip].contains_key(&0),
        "it takes its slot until deleted"
    );
    view.apply(&Change::Delete {
        key: forged.key.clone(),
        revision: 4,
    });
    assert!(view.leaseless.is_empty());
}

#[test]
fn a_claim_given_up_by_a_leaving_node_is_handed_over() {
    let mut view = ClusterView::new(Keys::new("/extip"));
    let ip: IpAddr = "198.51.100.7".parse().unwrap();
    let other: IpAddr = "198.51.100.8".parse().unwrap();
    let claim = |ip: IpAddr, node: &str, rev| {
        kv(
            &format!("/extip/claims/{ip}/0"),
            &format!(r#"{{"node":"{node}","since":""}}"#),
            rev,
        )
    };
    view.apply(&Change::Put(claim(ip, "h1", 1)));
    view.apply(&Change::Put(claim(other, "h2", 2)));
    let leaving = r#"{"node":"h1","interfaces":["lo"],"draining":true,"leaving":true}"#;
    view.apply(&Change::Put(kv("/extip/nodes/h1", leaving, 3)));
    for (ip, rev) in [(ip, 3), (other, 4)] {
        view.apply(&Change::Delete {
            key: format!("/extip/claims/{ip}/0"),
            revision: rev,
        });
    }
    let fresh = std::time::Duration::from_secs(2);
    assert!(view.just_handed_over(ip, fresh), "h1 left: no probe needed");
    assert!(
        !view.just_handed_over(other, fresh),
        "h2's claim vanished without a word (crash, expiry): probe"
    );
}

#[test]
fn the_desired_version_moves_with_the_desired_ips_only() {
    let h2 = r#"{"node":"h2","interfaces":["lo"],"host_addresses":["192.0.2.2"]}"#;
    let h3 = r#"{"node":"h3","interfaces":["lo"],"host_addresses":["192.0.2.3"]}"#;
    let mut view = loaded(vec![
        kv("/extip/ips/192.0.2.2", "{}", 4),
        kv("/extip/ips/198.51.100.1", "{}", 5),
        kv("/extip/nodes/h2", h2, 6),
        kv("/extip/nodes/h3", h3, 7),
    ]);
    let version = view.desired_version;
    let delete = |key: &str, revision| Change::Delete {
        key: key.into(),
        revision,
    };
    // Placement reuses its last result while the version stands: a node leaving, a
    // claim or a history changes no desired IP.
    view.apply(&delete("/extip/nodes/h3", 11));
    view.apply(&Change::Put(kv(
        "/extip/claims/198.51.100.1/0",
        r#"{"node":"h2"}"#,
        12,
    )));
    view.apply(&Change::Put(kv("/extip/history/198.51.100.1", "[]", 13)));
    assert_eq!(view.desired_version, version);
    // A node whose address was refused leaves: the IP becomes desired.
    view.apply(&delete("/extip/nodes/h2", 14));
    assert!(view.desired_version > version);
    let version = view.desired_version;
    view.apply(&Change::Put(kv("/extip/ips/198.51.100.2", "{}", 15)));
    assert!(view.desired_version > version);
    let version = view.desired_version;
    view.apply(&delete("/extip/ips/198.51.100.2", 16));
    assert!(view.desired_version > version);
}
