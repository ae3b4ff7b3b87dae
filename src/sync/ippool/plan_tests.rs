use super::*;

fn ippool(name: &str, created: &str, spec: Value) -> IpPoolObject {
    IpPoolObject {
        name: name.into(),
        uid: None,
        created: created.into(),
        generation: Some(1),
        spec: serde_json::from_value(spec).map_err(|e| e.to_string()),
        status: Value::Null,
    }
}

fn pools(list: &[IpPoolObject]) -> BTreeMap<String, IpPoolObject> {
    list.iter().map(|p| (p.name.clone(), p.clone())).collect()
}

fn etcd_pool(raw: &str, mod_revision: i64) -> EtcdPool {
    EtcdPool {
        pool: Some(parse_pool(raw.as_bytes()).unwrap().0),
        mod_revision,
    }
}

#[test]
fn a_new_ippool_is_written_with_its_fields_renamed_and_marked_managed() {
    let p = ippool(
        "lb",
        "2026-01-01T00:00:00Z",
        json!({"cidr": "198.51.100.0/28", "mask": 32, "replicas": 2, "nodeSelector": {"zone": "a"}}),
    );
    let (verdicts, writes) = plan_pools(&pools(&[p]), &BTreeMap::new(), &[], true);
    assert!(verdicts["lb"].refusals.is_empty());
    let [PoolWrite::Put {
        name,
        value,
        mod_revision: 0,
    }] = writes.as_slice()
    else {
        panic!("one create: {writes:?}");
    };
    assert_eq!(name, "lb");
    let v: Value = serde_json::from_slice(value).unwrap();
    assert_eq!(v["prefix_len"], 32);
    assert_eq!(v["replicas"], 2);
    assert_eq!(v["node_selector"]["zone"], "a");
    assert_eq!(v["auto_assign"], true, "the CRD's default");
    assert_eq!(v["managed_by"], MANAGED_BY_SYNC);
}

#[test]
fn an_unchanged_pool_is_not_rewritten_and_an_edit_is_guarded_by_its_revision() {
    let p = ippool("lb", "t", json!({"cidr": "198.51.100.0/28", "mask": 32}));
    let (_, raw) = etcd_value(p.spec.as_ref().unwrap()).unwrap();
    let etcd = BTreeMap::from([(
        "lb".to_string(),
        etcd_pool(std::str::from_utf8(&raw).unwrap(), 7),
    )]);
    assert!(
        plan_pools(&pools(std::slice::from_ref(&p)), &etcd, &[], true)
            .1
            .is_empty()
    );
    let edited = ippool("lb", "t", json!({"cidr": "198.51.100.0/28", "mask": 30}));
    let (_, writes) = plan_pools(&pools(&[edited]), &etcd, &[], true);
    assert!(matches!(
        writes.as_slice(),
        [PoolWrite::Put {
            mod_revision: 7,
            ..
        }]
    ));
}

#[test]
fn a_hand_written_pool_keeps_its_name_and_its_range() {
    let etcd = BTreeMap::from([(
        "lb".to_string(),
        etcd_pool(r#"{"cidr":"203.0.113.0/24"}"#, 3),
    )]);
    let same_name = ippool("lb", "t", json!({"cidr": "198.51.100.0/28"}));
    let inside = ippool("web", "t", json!({"cidr": "203.0.113.16/28"}));
    let (verdicts, writes) = plan_pools(&pools(&[same_name, inside]), &etcd, &[], true);
    assert!(writes.is_empty(), "{writes:?}");
    assert_eq!(verdicts["lb"].refusals[0].reason, "NameTaken");
    assert_eq!(verdicts["web"].refusals[0].reason, "Overlapping");
    assert!(verdicts["web"].refusals[0].message.contains("`lb`"));
}

#[test]
fn of_two_overlapping_ippools_the_older_wins() {
    let old = ippool(
        "b-old",
        "2026-01-01T00:00:00Z",
        json!({"cidr": "198.51.100.0/24"}),
    );
    let new = ippool(
        "a-new",
        "2026-02-01T00:00:00Z",
        json!({"cidr": "198.51.100.64/26"}),
    );
    let (verdicts, writes) = plan_pools(&pools(&[old, new]), &BTreeMap::new(), &[], true);
    assert!(verdicts["b-old"].accepted.is_some());
    assert_eq!(verdicts["a-new"].refusals[0].reason, "Overlapping");
    assert_eq!(writes.len(), 1);
}

#[test]
fn a_refused_edit_leaves_the_pool_in_etcd_and_only_a_deletion_removes_it() {
    let etcd = BTreeMap::from([(
        "lb".to_string(),
        etcd_pool(r#"{"cidr":"198.51.100.0/28","managed_by":"extip-sync"}"#, 5),
    )]);
    let bad = ippool("lb", "t", json!({"cidr": "198.51.100.0/28", "mask": 33}));
    let (verdicts, writes) = plan_pools(&pools(&[bad]), &etcd, &[], true);
    assert!(writes.is_empty());
    let why = &verdicts["lb"].refusals[0];
    assert_eq!(why.reason, "InvalidSpec");
    assert!(why.message.contains("spec.mask"), "{}", why.message);
    // Gone from Kubernetes: deleted, but only once the list is known to be whole.
    assert!(plan_pools(&BTreeMap::new(), &etcd, &[], false).1.is_empty());
    assert_eq!(
        plan_pools(&BTreeMap::new(), &etcd, &[], true).1,
        vec![PoolWrite::Delete {
            name: "lb".into(),
            mod_revision: 5
        }]
    );
    // A hand-written pool without an IpPool is not ours to delete.
    let hand = BTreeMap::from([(
        "x".to_string(),
        etcd_pool(r#"{"cidr":"203.0.113.0/24"}"#, 2),
    )]);
    assert!(plan_pools(&BTreeMap::new(), &hand, &[], true).1.is_empty());
}

#[test]
fn a_pool_no_node_may_serve_is_written_and_flagged() {
    let mut node = NodeValue::new("h1", &["eth0"]);
    node.allowed_cidrs = vec!["203.0.113.0/24".parse().unwrap()];
    let p = ippool("lb", "t", json!({"cidr": "198.51.100.0/28"}));
    let (verdicts, writes) = plan_pools(
        &pools(std::slice::from_ref(&p)),
        &BTreeMap::new(),
        &[node.clone()],
        true,
    );
    assert_eq!(writes.len(), 1);
    assert_eq!(verdicts["lb"].refusals[0].reason, "OutsideAllowlist");
    // An older agent that publishes no allowlist is no evidence.
    let older = NodeValue::new("h2", &["eth0"]);
    let (verdicts, _) = plan_pools(&pools(&[p]), &BTreeMap::new(), &[node, older], true);
    assert!(verdicts["lb"].refusals.is_empty());
}

#[test]
fn status_counts_live_ips_and_keeps_transition_times() {
    let mut p = ippool("lb", "t", json!({"cidr": "198.51.100.0/28", "mask": 32}));
    let (verdicts, _) = plan_pools(
        &pools(std::slice::from_ref(&p)),
        &BTreeMap::new(),
        &[],
        true,
    );
    let ips: BTreeSet<IpAddr> = ["198.51.100.3", "203.0.113.1"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let status = pool_status(&p, &verdicts["lb"], &ips, "2026-12-01T00:00:00Z");
    assert_eq!(status["allocated"], 1);
    assert_eq!(
        status["free"], 13,
        "16 addresses less network, broadcast and the one"
    );
    assert_eq!(status["conditions"][0]["type"], "Ready");
    assert_eq!(status["conditions"][0]["status"], "True");
    p.status = status;
    let later = pool_status(&p, &verdicts["lb"], &ips, "2026-12-02T00:00:00Z");
    assert_eq!(later, p.status, "nothing changed: nothing to write");
}
