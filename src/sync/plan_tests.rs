use super::*;
use crate::sync::free_ip::free_ip;

fn pools(entries: &[(&str, &str, bool)]) -> BTreeMap<String, Pool> {
    entries
        .iter()
        .map(|(name, cidr, auto)| {
            let raw = format!(r#"{{"cidr":"{cidr}","auto_assign":{auto}}}"#);
            (
                name.to_string(),
                crate::pools::parse_pool(raw.as_bytes()).unwrap().0,
            )
        })
        .collect()
}

fn lb(name: &str) -> ServiceView {
    ServiceView {
        name: name.into(),
        load_balancer: true,
        ..Default::default()
    }
}

fn external(name: &str, ips: &[&str]) -> ServiceView {
    ServiceView {
        name: name.into(),
        external_ips: ips.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn allocation(addr: &str, released: bool) -> ServiceAllocation {
    ServiceAllocation {
        ip: ip(addr),
        pool: Some("lb".into()),
        requested: false,
        released_at: released.then(|| "2026-11-26T16:00:00Z".into()),
    }
}

#[test]
fn a_new_load_balancer_allocates_from_the_first_auto_assign_pool() {
    let p = pools(&[
        ("a-manual", "203.0.113.0/28", false),
        ("lb", "198.51.100.0/28", true),
    ]);
    let policy = Policy {
        pools: &p,
        allow_external: &[],
    };
    let (steps, refused, _) = allocation_steps(&[lb("default/web")], &BTreeMap::new(), &policy);
    assert!(refused.is_empty());
    assert_eq!(
        steps,
        vec![AllocationStep::Allocate {
            service: "default/web".into(),
            pool: "lb".into(),
            sharing_key: None,
        }]
    );
}

#[test]
fn a_recreated_service_takes_its_released_ip_back_and_a_gone_one_releases() {
    let p = pools(&[("lb", "198.51.100.0/28", true)]);
    let policy = Policy {
        pools: &p,
        allow_external: &[],
    };
    let allocations = BTreeMap::from([
        ("default/web".to_string(), allocation("198.51.100.5", true)),
        ("default/old".to_string(), allocation("198.51.100.6", false)),
        (
            "default/kept".to_string(),
            allocation("198.51.100.7", false),
        ),
    ]);
    let services = [lb("default/web"), lb("default/kept")];
    let (steps, _, _) = allocation_steps(&services, &allocations, &policy);
    assert_eq!(
        steps,
        vec![
            AllocationStep::Take {
                service: "default/web".into(),
                ip: ip("198.51.100.5"),
                pool: Some("lb".into()),
                requested: false,
                sharing_key: None,
            },
            AllocationStep::Release {
                service: "default/old".into()
            },
        ]
    );
}

#[test]
fn a_requested_ip_outside_pools_and_allowlist_is_refused() {
    let p = pools(&[("lb", "198.51.100.0/28", true)]);
    let policy = Policy {
        pools: &p,
        allow_external: &[],
    };
    let mut svc = lb("default/web");
    svc.requested_ip = Some("192.0.2.9".into());
    let (steps, refused, _) = allocation_steps(&[svc], &BTreeMap::new(), &policy);
    assert!(steps.is_empty());
    assert_eq!(refused[0].reason, "IPNotAllowed");
}

#[test]
fn no_auto_assign_pool_is_a_refusal_that_says_what_to_do() {
    let p = pools(&[("manual", "198.51.100.0/28", false)]);
    let policy = Policy {
        pools: &p,
        allow_external: &[],
    };
    let (_, refused, _) = allocation_steps(&[lb("default/web")], &BTreeMap::new(), &policy);
    assert!(refused[0].message.contains("auto_assign"), "{refused:?}");
    // A Service that already has its IP keeps it without complaint when its pool goes.
    let have = BTreeMap::from([("default/web".to_string(), allocation("198.51.100.5", false))]);
    let (steps, refused, _) = allocation_steps(&[lb("default/web")], &have, &policy);
    assert!(
        steps.is_empty() && refused.is_empty(),
        "{steps:?} {refused:?}"
    );
    // An annotation naming a pool that does not exist is reported all the same.
    let named = ServiceView {
        pool: Some("gone".into()),
        ..lb("default/web")
    };
    let (_, refused, _) = allocation_steps(&[named], &have, &policy);
    assert_eq!(refused[0].reason, "PoolNotFound", "{refused:?}");
    // A released one has nothing to keep: the refusal stands.
    let gone = BTreeMap::from([("default/web".to_string(), allocation("198.51.100.5", true))]);
    let (_, refused, _) = allocation_steps(&[lb("default/web")], &gone, &policy);
    assert_eq!(refused.len(), 1, "{refused:?}");
}

#[test]
fn free_ip_skips_network_broadcast_and_taken_and_spreads_services() {
    let p = pools(&[("lb", "198.51.100.0/30", true)]);
    let usable = [ip("198.51.100.1"), ip("198.51.100.2")];
    let first = free_ip(&p["lb"], &BTreeSet::new(), "default/web").unwrap();
    assert!(usable.contains(&first), "{first}");
    let other = free_ip(&p["lb"], &BTreeSet::from([first]), "default/web").unwrap();
    assert!(usable.contains(&other) && other != first);
    assert_eq!(
        free_ip(&p["lb"], &BTreeSet::from(usable), "default/web"),
        None
    );
    let single = pools(&[("one", "198.51.100.9/32", true)]);
    assert_eq!(
        free_ip(&single["one"], &BTreeSet::new(), "x/y"),
        Some(ip("198.51.100.9"))
    );
    let wide = pools(&[("v6", "2001:db8:7::/64", true)]);
    let a = free_ip(&wide["v6"], &BTreeSet::new(), "default/a").unwrap();
    assert!(wide["v6"].cidr.contains(&a));
    let spread: BTreeSet<IpAddr> = (0..50)
        .filter_map(|i| {
            free_ip(
                &pools(&[("lb", "198.51.100.0/24", true)])["lb"],
                &BTreeSet::new(),
                &format!("ns/s{i}"),
            )
        })
        .collect();
    assert!(
        spread.len() > 30,
        "{} distinct starting points for 50 names",
        spread.len()
    );
}

#[test]
fn external_ips_outside_the_allowlist_are_refused_and_shared_ones_list_every_service() {
    let p = BTreeMap::new();
    let allow: Vec<IpNet> = vec!["198.51.100.0/24".parse().unwrap()];
    let policy = Policy {
        pools: &p,
        allow_external: &allow,
    };
    let services = [
        external("b/web", &["198.51.100.20", "203.0.113.9"]),
        external("a/api", &["198.51.100.20", "not-an-ip"]),
    ];
    let (desired, refused) = desired_values(&services, &BTreeMap::new(), &policy);
    assert_eq!(desired.len(), 1);
    let value = &desired[&ip("198.51.100.20")];
    assert_eq!(
        value.source,
        Some(Source::Many(vec!["a/api".into(), "b/web".into()]))
    );
    assert_eq!(value.managed_by.as_deref(), Some(MANAGED_BY_SYNC));
    let reasons: Vec<_> = refused
        .iter()
        .map(|r| (r.service.as_str(), r.reason))
        .collect();
    assert_eq!(
        reasons,
        vec![("b/web", "ExternalIPRefused"), ("a/api", "InvalidIP")]
    );
    assert!(refused[0].message.contains("CVE-2020-8554"));
}

#[test]
fn annotations_override_replicas_and_interface_and_bad_ones_are_reported() {
    let p = pools(&[("lb", "198.51.100.0/28", true)]);
    let policy = Policy {
        pools: &p,
        allow_external: &[],
    };
    let mut svc = lb("default/web");
    svc.replicas = Some("all".into());
    svc.interface = Some("eth0".into());
    let mut bad = lb("default/bad");
    bad.replicas = Some("many".into());
    let lb_ips = BTreeMap::from([
        ("default/web".to_string(), ip("198.51.100.1")),
        ("default/bad".to_string(), ip("198.51.100.2")),
    ]);
    let (desired, refused) = desired_values(&[svc, bad], &lb_ips, &policy);
    let web = &desired[&ip("198.51.100.1")];
    assert_eq!(web.replicas, Some(serde_json::json!("all")));
    assert_eq!(web.interface.as_deref(), Some("eth0"));
    assert_eq!(web.pool.as_deref(), Some("lb"));
    assert_eq!(desired[&ip("198.51.100.2")].replicas, None);
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].reason, "InvalidAnnotation");
}

#[test]
fn local_traffic_confines_the_ip_to_ready_nodes_and_withdraws_it_when_none_is_left() {
    let p = pools(&[("lb", "198.51.100.0/28", true)]);
    let policy = Policy {
        pools: &p,
        allow_external: &[],
    };
    let local = |ready: &[&str]| ServiceView {
        local_traffic: true,
        ready_nodes: ready.iter().map(|n| n.to_string()).collect(),
        ..lb("default/web")
    };
    let lb_ips = BTreeMap::from([("default/web".to_string(), ip("198.51.100.1"))]);
    let nodes_of = |svcs: &[ServiceView]| {
        let (desired, refused) = desired_values(svcs, &lb_ips, &policy);
        let nodes = desired.get(&ip("198.51.100.1")).map(|v| v.nodes.clone());
        (nodes, refused)
    };
    let (nodes, refused) = nodes_of(&[local(&["k1", "k3"])]);
    assert_eq!(nodes, Some(Some(serde_json::json!(["k1", "k3"]))));
    assert!(refused.is_empty());
    // No ready endpoint: no desired key at all, and one refusal that says why.
    let (nodes, refused) = nodes_of(&[local(&[])]);
    assert_eq!(nodes, None);
    assert_eq!(refused.len(), 1);
    assert_eq!(
        (refused[0].service.as_str(), refused[0].reason),
        ("default/web", "NoReadyEndpoints")
    );
    // A rolling update: the old endpoints terminate but still serve, no new one is ready
    // yet; their nodes keep the IP (KEP-1669) instead of it being withdrawn.
    let rolling = |ready: &[&str]| ServiceView {
        terminating_nodes: ["k1".to_string()].into(),
        ..local(ready)
    };
    let (nodes, refused) = nodes_of(&[rolling(&[])]);
    assert_eq!(nodes, Some(Some(serde_json::json!(["k1"]))));
    assert!(refused.is_empty(), "{refused:?}");
    // Once a new endpoint is ready elsewhere, the IP goes there only.
    assert_eq!(
        nodes_of(&[rolling(&["k2"])]).0,
        Some(Some(serde_json::json!(["k2"])))
    );
    // Cluster policy: anywhere, whatever the endpoints.
    let cluster = ServiceView {
        local_traffic: false,
        ..local(&["k1"])
    };
    assert_eq!(nodes_of(std::slice::from_ref(&cluster)).0, Some(None));
    // A Cluster Service sharing the IP: served where the Local one's endpoints are, and
    // anywhere while it has none (kube-proxy forwards Cluster traffic from any node).
    let sharing = |local_svc: ServiceView| {
        let mut other = cluster.clone();
        other.name = "default/api".into();
        let ips = BTreeMap::from([
            ("default/web".to_string(), ip("198.51.100.1")),
            ("default/api".to_string(), ip("198.51.100.1")),
        ]);
        desired_values(&[local_svc, other], &ips, &policy).0[&ip("198.51.100.1")]
            .nodes
            .clone()
    };
    assert_eq!(sharing(local(&["k2"])), Some(serde_json::json!(["k2"])));
    assert_eq!(sharing(local(&[])), None);
}

fn existing(value: serde_json::Value, lease: i64) -> ExistingKey {
    ExistingKey {
        value,
        lease,
        mod_revision: 7,
    }
}

#[test]
fn writes_reattach_to_our_lease_delete_only_our_keys_and_leave_foreign_ones() {
    let ours = DesiredValue {
        managed_by: Some(MANAGED_BY_SYNC.into()),
        ..Default::default()
    };
    let ours_json = serde_json::to_value(&ours).unwrap();
    let desired = BTreeMap::from([
        (ip("198.51.100.6"), ours.clone()),
        (ip("198.51.100.1"), ours.clone()),
        (ip("198.51.100.2"), ours.clone()),
        (ip("198.51.100.3"), ours),
    ]);
    let have = BTreeMap::from([
        (ip("198.51.100.1"), existing(ours_json.clone(), 11)),
        (ip("198.51.100.2"), existing(ours_json.clone(), 99)),
        (ip("198.51.100.3"), existing(serde_json::json!({}), 0)),
        (ip("198.51.100.4"), existing(ours_json.clone(), 11)),
        (
            ip("198.51.100.5"),
            existing(serde_json::json!({"source": "ops"}), 0),
        ),
        // Not JSON at all (read as null): someone else's, left alone like the others.
        (ip("198.51.100.6"), existing(serde_json::Value::Null, 0)),
    ]);
    let writes = key_writes(&desired, &have, 11);
    assert_eq!(
        writes,
        vec![
            KeyWrite::Put {
                ip: ip("198.51.100.2"),
                value: ours_json,
                mod_revision: 7
            },
            KeyWrite::Delete {
                ip: ip("198.51.100.4"),
                mod_revision: 7
            },
        ]
    );
}

#[test]
fn services_with_one_sharing_key_get_one_ip_and_a_port_collision_stays_pending() {
    let p = pools(&[("lb", "198.51.100.0/28", true)]);
    let policy = Policy {
        pools: &p,
        allow_external: &[],
    };
    let shared = |name: &str, port: i32| ServiceView {
        sharing_key: Some("front".into()),
        ports: [("TCP".to_string(), port)].into(),
        ..lb(name)
    };
    let services = [
        shared("shop/http", 80),
        shared("shop/https", 443),
        shared("shop/again", 80),
    ];
    // Nothing allocated yet: the group's first Service allocates, the others wait.
    let (steps, refused, deferred) = allocation_steps(&services, &BTreeMap::new(), &policy);
    assert!(refused.is_empty() && deferred);
    assert_eq!(steps.len(), 1, "{steps:?}");
    // Once it holds an IP, 443 joins it and the second 80 is refused.
    let allocations =
        BTreeMap::from([("shop/http".to_string(), allocation("198.51.100.3", false))]);
    let (steps, refused, deferred) = allocation_steps(&services, &allocations, &policy);
    assert!(!deferred);
    assert_eq!(
        steps,
        vec![AllocationStep::Take {
            service: "shop/https".into(),
            ip: ip("198.51.100.3"),
            pool: Some("lb".into()),
            requested: false,
            sharing_key: Some("front".into()),
        }]
    );
    assert_eq!(refused.len(), 1);
    assert_eq!(
        (refused[0].service.as_str(), refused[0].reason),
        ("shop/again", "PortCollision")
    );
    // Asking for the shared IP by name does not get round the port check.
    let mut asking = shared("shop/asking", 80);
    asking.requested_ip = Some("198.51.100.3".into());
    let (steps, refused, _) =
        allocation_steps(&[services[0].clone(), asking], &allocations, &policy);
    assert!(steps.is_empty(), "{steps:?}");
    assert_eq!(refused[0].reason, "PortCollision");
}

#[test]
fn a_dual_stack_service_gets_one_ip_per_family_or_waits_when_it_requires_both() {
    use crate::sync::family::{per_family, Family, Stack};
    let dual = |stack: Stack| {
        per_family(vec![ServiceView {
            stack,
            families: vec![Family::V4, Family::V6],
            ..lb("shop/web")
        }])
    };
    let v4_only = pools(&[("lb", "198.51.100.0/28", true)]);
    let both = pools(&[
        ("lb", "198.51.100.0/28", true),
        ("lb6", "2001:db8::/120", true),
    ]);
    let policy = |pools| Policy {
        pools,
        allow_external: &[],
    };
    let allocate = |service: &str, pool: &str| AllocationStep::Allocate {
        service: service.into(),
        pool: pool.into(),
        sharing_key: None,
    };
    let (steps, refused, _) =
        allocation_steps(&dual(Stack::Require), &BTreeMap::new(), &policy(&both));
    assert!(refused.is_empty());
    assert_eq!(
        steps,
        vec![allocate("shop/web", "lb"), allocate("shop/web/ipv6", "lb6")]
    );
    // RequireDualStack without an IPv6 pool: nothing allocated, the reason given.
    let (steps, refused, _) =
        allocation_steps(&dual(Stack::Require), &BTreeMap::new(), &policy(&v4_only));
    assert!(steps.is_empty(), "{steps:?}");
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].reason, "NoPool");
    assert!(
        refused[0].message.contains("IPv6"),
        "{}",
        refused[0].message
    );
    // PreferDualStack: the family it can have, without complaint.
    let (steps, refused, _) =
        allocation_steps(&dual(Stack::Prefer), &BTreeMap::new(), &policy(&v4_only));
    assert!(refused.is_empty());
    assert_eq!(steps, vec![allocate("shop/web", "lb")]);
    // Both IPs become desired keys naming the one Service.
    let lb_ips = BTreeMap::from([
        ("shop/web".to_string(), ip("198.51.100.3")),
        ("shop/web/ipv6".to_string(), ip("2001:db8::3")),
    ]);
    let (desired, _) = desired_values(&dual(Stack::Require), &lb_ips, &policy(&both));
    let sources: Vec<_> = desired.values().map(|v| v.source.clone()).collect();
    assert_eq!(desired.len(), 2);
    assert!(sources
        .iter()
        .all(|s| *s == Some(Source::One("shop/web".into()))));
}
