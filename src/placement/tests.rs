use super::*;
use crate::model::Replicas;
use crate::observed::Holder;

/// `assign` with the ideal computed from the same inputs.
fn assign_fresh(
    desired: &BTreeMap<IpAddr, DesiredIp>,
    claims: &Claims,
    nodes: &BTreeMap<String, NodeValue>,
) -> BTreeMap<(IpAddr, u32), String> {
    assign(&Ideal::new(desired, nodes), claims, nodes)
}

/// `handovers` with the ideal computed from the same inputs.
fn handovers_fresh(
    desired: &BTreeMap<IpAddr, DesiredIp>,
    claims: &Claims,
    nodes: &BTreeMap<String, NodeValue>,
    me: &str,
    stable: &BTreeSet<String>,
) -> Vec<IpAddr> {
    handovers(&Ideal::new(desired, nodes), claims, nodes, me, stable)
}

fn node(name: &str) -> NodeValue {
    let mut node = NodeValue::new(name, &["lo"]);
    node.allowed_cidrs = vec![
        "198.51.100.0/24".parse().unwrap(),
        "203.0.113.0/24".parse().unwrap(),
    ];
    node
}

fn nodes(names: &[&str]) -> BTreeMap<String, NodeValue> {
    names.iter().map(|n| (n.to_string(), node(n))).collect()
}

fn exclusive() -> DesiredIp {
    DesiredIp::exclusive()
}

/// `count` exclusive IPs from the two /24 documentation ranges for VIPs.
fn ips(count: usize) -> BTreeMap<IpAddr, DesiredIp> {
    (0..count)
        .map(|i| {
            let ip: IpAddr = if i < 250 {
                format!("198.51.100.{}", i + 1)
            } else {
                format!("203.0.113.{}", i - 249)
            }
            .parse()
            .unwrap();
            (ip, exclusive())
        })
        .collect()
}

fn as_claims(assignment: &BTreeMap<(IpAddr, u32), String>) -> Claims {
    let mut claims = Claims::new();
    for (&(ip, slot), node) in assignment {
        let holder = Holder {
            node: Some(node.clone()),
            lease: 1,
        };
        claims.entry(ip).or_default().insert(slot, holder);
    }
    claims
}

fn per_node(assignment: &BTreeMap<(IpAddr, u32), String>) -> BTreeMap<String, usize> {
    let mut count = BTreeMap::new();
    for node in assignment.values() {
        *count.entry(node.clone()).or_default() += 1;
    }
    count
}

#[test]
fn three_hundred_ips_spread_within_ninety_to_one_hundred_ten() {
    let desired = ips(300);
    let a = assign_fresh(&desired, &Claims::new(), &nodes(&["h1", "h2", "h3"]));
    assert_eq!(a.len(), 300);
    for (node, n) in per_node(&a) {
        assert!((90..=110).contains(&n), "{node} got {n}");
    }
}

/// `count` exclusive IPv6 IPs, as many as a test needs.
fn ipv6s(count: usize) -> Vec<IpAddr> {
    (0..count)
        .map(|i| format!("2001:db8:100::{:x}", i + 1).parse().unwrap())
        .collect()
}

#[test]
fn ips_arriving_in_batches_are_placed_within_ten_percent() {
    // Desired keys come in transactions of 100 and every batch is placed before the
    // next: held slots stay where they are, so each batch must even out the loads.
    let names = ["h1", "h2", "h3", "h4", "h5", "h6", "h7", "h8", "h9", "h10"];
    let mut all = nodes(&names);
    for node in all.values_mut() {
        node.allowed_cidrs.push("2001:db8::/32".parse().unwrap());
    }
    let mut desired = BTreeMap::new();
    let mut claims = Claims::new();
    for batch in ipv6s(3000).chunks(100) {
        desired.extend(batch.iter().map(|&ip| (ip, exclusive())));
        let free = assign_fresh(&desired, &claims, &all);
        for (ip, slots) in as_claims(&free) {
            claims.entry(ip).or_default().extend(slots);
        }
    }
    let per_node = per_node(&claims_as_assignment(&claims));
    let (lo, hi) = (per_node.values().min(), per_node.values().max());
    assert!(
        per_node.len() == 10 && per_node.values().all(|&n| (270..=330).contains(&n)),
        "{lo:?}-{hi:?}: {per_node:?}"
    );
}

/// Every held slot as an assignment, to count per node.
fn claims_as_assignment(claims: &Claims) -> BTreeMap<(IpAddr, u32), String> {
    claims
        .iter()
        .flat_map(|(&ip, slots)| {
            slots
                .iter()
                .map(move |(&slot, h)| ((ip, slot), h.node.clone().unwrap()))
        })
        .collect()
}

#[test]
fn losing_a_node_moves_only_its_ips_and_stays_bounded() {
    let desired = ips(300);
    let all = nodes(&["h1", "h2", "h3"]);
    let first = assign_fresh(&desired, &Claims::new(), &all);
    let mut claims = as_claims(&first);
    for slots in claims.values_mut() {
        slots.retain(|_, h| h.node.as_deref() != Some("h2"));
    }
    let survivors = nodes(&["h1", "h3"]);
    let second = assign_fresh(&desired, &claims, &survivors);
    let lost: BTreeSet<IpAddr> = first
        .iter()
        .filter(|(_, n)| n.as_str() == "h2")
        .map(|((ip, _), _)| *ip)
        .collect();
    let moved: BTreeSet<IpAddr> = second.keys().map(|(ip, _)| *ip).collect();
    assert_eq!(moved, lost, "only the lost node's IPs get new holders");
    let mut total = per_node(&first);
    total.remove("h2");
    for (node, n) in per_node(&second) {
        *total.get_mut(&node).unwrap() += n;
    }
    for (node, n) in total {
        assert!((140..=160).contains(&n), "{node} ends with {n}");
    }
}

#[test]
fn replicas_pick_distinct_nodes_and_all_means_every_node() {
    let mut desired = BTreeMap::new();
    let two: IpAddr = "198.51.100.20".parse().unwrap();
    let every: IpAddr = "198.51.100.21".parse().unwrap();
    let mut d = exclusive();
    d.replicas = Replicas::Count(2);
    desired.insert(two, d.clone());
    d.replicas = Replicas::All;
    desired.insert(every, d);
    let a = assign_fresh(&desired, &Claims::new(), &nodes(&["h1", "h2", "h3"]));
    let on = |ip: IpAddr| -> BTreeSet<String> {
        a.iter()
            .filter(|((i, _), _)| *i == ip)
            .map(|(_, n)| n.clone())
            .collect()
    };
    assert_eq!(on(two).len(), 2);
    assert_eq!(on(every).len(), 3);
}

#[test]
fn draining_ineligible_and_down_nodes_get_nothing() {
    let mut all = nodes(&["h1", "h2", "h3", "h4"]);
    all.get_mut("h1").unwrap().draining = true;
    all.get_mut("h2").unwrap().allowed_cidrs = vec!["192.0.2.0/24".parse().unwrap()];
    all.get_mut("h3").unwrap().interfaces.clear();
    let a = assign_fresh(&ips(20), &Claims::new(), &all);
    assert_eq!(a.len(), 20);
    assert!(a.values().all(|n| n == "h4"), "{a:?}");
}

#[test]
fn the_ranking_is_deterministic_and_differs_per_ip() {
    let all = nodes(&["h1", "h2", "h3"]);
    let ip1: IpAddr = "198.51.100.1".parse().unwrap();
    let ip2: IpAddr = "198.51.100.2".parse().unwrap();
    assert_eq!(
        ranking(ip1, &exclusive(), &all),
        ranking(ip1, &exclusive(), &all)
    );
    let firsts: BTreeSet<&str> = (1..40)
        .map(|i| {
            let ip: IpAddr = format!("198.51.100.{i}").parse().unwrap();
            ranking(ip, &exclusive(), &all)[0]
        })
        .collect();
    assert_eq!(firsts.len(), 3, "every node ranks first for some IP");
    assert_eq!(weight(ip1, "h1"), weight(ip1, "h1"));
    assert_ne!(weight(ip1, "h1"), weight(ip2, "h1"));
}

#[test]
fn the_weights_are_the_ones_every_version_computes() {
    // Agents of different versions must rank alike during an upgrade: pin the values
    // (FNV-1a over "ip\0node", then the finalizer), computed outside Rust.
    let v4: IpAddr = "198.51.100.1".parse().unwrap();
    let v6: IpAddr = "2001:db8::7".parse().unwrap();
    assert_eq!(weight(v4, "h1"), 0x01d3_3274_d96f_1f51);
    assert_eq!(weight(v6, "node-a"), 0x0a45_3750_2188_cd69);
}

#[test]
fn the_ideal_ranks_every_ip_as_ranking_does() {
    let mut all = nodes(&["a", "h1", "h10", "h2", "h3", "z"]);
    all.get_mut("h2").unwrap().allowed_cidrs = vec!["203.0.113.0/24".parse().unwrap()];
    all.get_mut("h3").unwrap().draining = true;
    all.get_mut("a")
        .unwrap()
        .labels
        .insert("rack".into(), "r1".into());
    // Settings that differ between IPs: a nodes list, an interface no node serves, a
    // node selector.
    let mut desired = ips(400);
    for (i, d) in desired.values_mut().enumerate() {
        match i % 4 {
            1 => d.nodes = Some(["h1".to_string(), "z".to_string()].into()),
            2 if i % 3 == 0 => d.interface = Some("eth9".into()),
            3 => d.node_selector = [("rack".to_string(), "r1".to_string())].into(),
            _ => {}
        }
    }
    let ideal = Ideal::new(&desired, &all);
    for (&ip, d) in &desired {
        let by_index: Vec<&str> = ideal
            .entry(ip)
            .unwrap()
            .ranking
            .iter()
            .map(|&i| ideal.name(i))
            .collect();
        assert_eq!(by_index, ranking(ip, d, &all), "{ip}");
        assert_eq!(ideal.holders(ip).len(), by_index.len().min(1), "{ip}");
    }
}

fn stable(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// Place `desired` on `names` and return the claims, as if every agent had claimed.
fn placed(desired: &BTreeMap<IpAddr, DesiredIp>, names: &[&str]) -> Claims {
    as_claims(&assign_fresh(desired, &Claims::new(), &nodes(names)))
}

#[test]
fn a_returning_node_gets_its_share_once_stable_and_only_then() {
    let desired = ips(300);
    let claims = placed(&desired, &["h1", "h3"]);
    let all = nodes(&["h1", "h2", "h3"]);
    // h2 is back but not stable yet: nothing moves.
    for me in ["h1", "h3"] {
        assert!(handovers_fresh(&desired, &claims, &all, me, &stable(&["h1", "h3"])).is_empty());
    }
    // Stable: h1 and h3 together hand about a third over, all of it to h2.
    let ready = stable(&["h1", "h2", "h3"]);
    let mut moved = 0;
    let mut claims = claims;
    for me in ["h1", "h3"] {
        for ip in handovers_fresh(&desired, &claims, &all, me, &ready) {
            let slot = claims.get_mut(&ip).unwrap();
            assert_eq!(slot[&0].node.as_deref(), Some(me));
            slot.remove(&0);
            moved += 1;
        }
    }
    let refill = assign_fresh(&desired, &claims, &all);
    assert_eq!(refill.len(), moved, "every released IP gets a new holder");
    assert!(
        refill.values().filter(|n| n.as_str() == "h2").count() >= 85,
        "most released IPs go to h2"
    );
    let claims: Claims = {
        let mut c = claims;
        for (&(ip, slot), node) in &refill {
            c.entry(ip).or_default().insert(
                slot,
                Holder {
                    node: Some(node.clone()),
                    lease: 1,
                },
            );
        }
        c
    };
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for slots in claims.values() {
        for h in slots.values() {
            *count.entry(h.node.clone().unwrap()).or_default() += 1;
        }
    }
    for (node, n) in &count {
        assert!((90..=110).contains(n), "{node} ends with {n}: {count:?}");
    }
    // Balanced now: nothing more moves (no IP moves twice).
    for me in ["h1", "h2", "h3"] {
        assert!(
            handovers_fresh(&desired, &claims, &all, me, &ready).is_empty(),
            "{me} moves more"
        );
    }
}

#[test]
fn a_returning_node_not_yet_stable_moves_nothing_among_the_others() {
    // Nine nodes within ±10 % of their own average (50): one at 47, three at 51.
    let desired = ips(450);
    let names = ["h1", "h3", "h4", "h5", "h6", "h7", "h8", "h9", "h10"];
    let counts = [47, 51, 51, 51, 50, 50, 50, 50, 50];
    let owners = names
        .iter()
        .zip(counts)
        .flat_map(|(n, c)| std::iter::repeat_n(n.to_string(), c));
    let assignment: BTreeMap<(IpAddr, u32), String> = desired
        .keys()
        .zip(owners)
        .map(|(&ip, n)| ((ip, 0), n))
        .collect();
    let claims = as_claims(&assignment);
    // h2 is back (in the node records) but not stable: counting it would lower the
    // average to 45, put the nodes at 51 above the overload line and send their IPs
    // to h1, only for them to move again to h2 once it is stable.
    let mut all: Vec<&str> = names.to_vec();
    all.push("h2");
    let all = nodes(&all);
    let steady = stable(&names);
    for me in names {
        let moves = handovers_fresh(&desired, &claims, &all, me, &steady);
        assert!(moves.is_empty(), "{me} hands over {} IPs", moves.len());
    }
}

#[test]
fn losing_a_node_triggers_no_handover_among_survivors() {
    let desired = ips(300);
    let mut claims = placed(&desired, &["h1", "h2", "h3"]);
    for slots in claims.values_mut() {
        slots.retain(|_, h| h.node.as_deref() != Some("h2"));
    }
    let survivors = nodes(&["h1", "h3"]);
    let refill = assign_fresh(&desired, &claims, &survivors);
    for (&(ip, slot), node) in &refill {
        claims.entry(ip).or_default().insert(
            slot,
            Holder {
                node: Some(node.clone()),
                lease: 1,
            },
        );
    }
    for me in ["h1", "h3"] {
        let moves = handovers_fresh(&desired, &claims, &survivors, me, &stable(&["h1", "h3"]));
        assert!(moves.is_empty(), "{me} would move {} IPs", moves.len());
    }
}

#[test]
fn a_node_selector_limits_placement_to_matching_nodes() {
    let mut all = nodes(&["h1", "h2", "h3"]);
    all.get_mut("h2")
        .unwrap()
        .labels
        .insert("zone".into(), "a".into());
    let mut d = exclusive();
    d.node_selector.insert("zone".into(), "a".into());
    let desired: BTreeMap<IpAddr, DesiredIp> = (1..=10)
        .map(|i| (format!("198.51.100.{i}").parse().unwrap(), d.clone()))
        .collect();
    let a = assign_fresh(&desired, &Claims::new(), &all);
    assert_eq!(a.len(), 10);
    assert!(a.values().all(|n| n == "h2"), "{a:?}");
}

#[test]
fn a_nodes_list_limits_placement_and_the_kubernetes_label_names_a_node() {
    let mut all = nodes(&["h1", "h2", "h3"]);
    all.get_mut("h3")
        .unwrap()
        .labels
        .insert(KUBERNETES_NODE_LABEL.into(), "worker-3".into());
    let mut d = exclusive();
    d.nodes = Some(["h1".to_string(), "worker-3".to_string()].into());
    let desired: BTreeMap<IpAddr, DesiredIp> = (1..=20)
        .map(|i| (format!("198.51.100.{i}").parse().unwrap(), d.clone()))
        .collect();
    let a = assign_fresh(&desired, &Claims::new(), &all);
    assert_eq!(a.len(), 20);
    let used: BTreeSet<&str> = a.values().map(String::as_str).collect();
    assert_eq!(used, ["h1", "h3"].into(), "{a:?}");
    // h3 is `worker-3` to Kubernetes: its agent name alone does not list it.
    d.nodes = Some(["h3".to_string()].into());
    let desired: BTreeMap<IpAddr, DesiredIp> = [("198.51.100.1".parse().unwrap(), d)].into();
    assert!(assign_fresh(&desired, &Claims::new(), &all).is_empty());
}

/// The IPs whose slot 0 `node` holds.
fn held_by(claims: &Claims, node: &str) -> Vec<IpAddr> {
    claims
        .iter()
        .filter(|(_, s)| s[&0].node.as_deref() == Some(node))
        .map(|(ip, _)| *ip)
        .collect()
}

/// Give slot 0 of `ip` to `node`.
fn move_to(claims: &mut Claims, ip: IpAddr, node: &str) {
    claims.get_mut(&ip).unwrap().get_mut(&0).unwrap().node = Some(node.into());
}

#[test]
fn an_underloaded_node_gets_ips_from_a_holder_at_the_average() {
    let desired = ips(400);
    let names = ["h1", "h2", "h3", "h4"];
    let all = nodes(&names);
    let ideal = Ideal::new(&desired, &all);
    let mut claims = placed(&desired, &names);
    // 12 of h2's IPs sit on h1, and 12 of h1's own on h3 and h4: h1 is back at its
    // share, h3 and h4 a little above it, h2 under-loaded. Only h1 holds IPs for h2.
    let to_h1 = held_by(&claims, "h2");
    let away = held_by(&claims, "h1");
    for ip in to_h1.into_iter().take(12) {
        move_to(&mut claims, ip, "h1");
    }
    for ip in away.into_iter().take(12) {
        let lighter = ["h3", "h4"]
            .into_iter()
            .min_by_key(|n| held_by(&claims, n).len())
            .unwrap();
        move_to(&mut claims, ip, lighter);
    }
    let load = |n: &str| held_by(&claims, n).len();
    assert!(load("h2") < 90, "h2 holds {}", load("h2"));
    assert!(["h1", "h3", "h4"].iter().all(|n| load(n) <= 110));
    let ready = stable(&names);
    let moves = handovers(&ideal, &claims, &all, "h1", &ready);
    assert!(!moves.is_empty(), "h1 keeps h2's IPs although h2 is short");
    assert!(moves.iter().all(|ip| ideal.holders(*ip) == ["h2"]));
    assert!(load("h1") - moves.len() >= 90, "h1 gave itself short");
}

#[test]
fn a_host_above_110_percent_gives_even_when_the_float_product_rounds_up() {
    let desired = ips(300);
    let names = ["h1", "h2", "h3"];
    let all = nodes(&names);
    let ideal = Ideal::new(&desired, &all);
    let mut claims = placed(&desired, &names);
    // Move IPs of h1 and h2 (in turns) to h3 until h3 holds exactly 111 (100 × 1.1 =
    // 110.000…01).
    let mut from = held_by(&claims, "h1")
        .into_iter()
        .zip(held_by(&claims, "h2"))
        .flat_map(|(a, b)| [a, b]);
    while held_by(&claims, "h3").len() < 111 {
        let ip = from.next().unwrap();
        move_to(&mut claims, ip, "h3");
    }
    assert!(["h1", "h2"].iter().all(|n| held_by(&claims, n).len() >= 90));
    let moves = handovers(&ideal, &claims, &all, "h3", &stable(&names));
    assert!(!moves.is_empty(), "h3 at 111 of 300 keeps everything");
}

#[test]
fn an_overloaded_host_gives_down_the_ranking_when_the_ideal_holders_are_full() {
    let desired = ips(400);
    let names = ["h1", "h2", "h3", "h4"];
    let all = nodes(&names);
    let ideal = Ideal::new(&desired, &all);
    let mut claims = placed(&desired, &names);
    // h3 takes 12 of h4's IPs; h4 refills to the bound (105) from h1 and h2.
    for ip in held_by(&claims, "h4").into_iter().take(12) {
        move_to(&mut claims, ip, "h3");
    }
    let mut donors = held_by(&claims, "h1")
        .into_iter()
        .zip(held_by(&claims, "h2"))
        .flat_map(|(a, b)| [a, b]);
    while held_by(&claims, "h4").len() < ideal.cap {
        move_to(&mut claims, donors.next().unwrap(), "h4");
    }
    let load = |n: &str| held_by(&claims, n).len();
    assert!(
        load("h3") > 110 && load("h4") >= ideal.cap,
        "{:?}",
        names.map(load)
    );
    assert!(
        ["h1", "h2"]
            .iter()
            .all(|n| (90..ideal.cap).contains(&load(n))),
        "{:?}",
        names.map(load)
    );
    let moves = handovers(&ideal, &claims, &all, "h3", &stable(&names));
    assert!(
        !moves.is_empty(),
        "h3 stays overloaded: {:?}",
        names.map(load)
    );
}
