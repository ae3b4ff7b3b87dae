//! [`Ideal::without`] must equal [`Ideal::new`] over the remaining nodes: agents that
//! derived the placement and agents that computed it afresh must assign alike.

use proptest::prelude::*;

use super::*;
use crate::model::Replicas;

/// A node with some of the settings placement reads, chosen by `shape`.
fn node(i: usize, shape: u8) -> (String, NodeValue) {
    let name = format!("h{i}");
    let mut node = NodeValue::new(&name, &["lo"]);
    node.allowed_cidrs = match shape % 3 {
        0 => vec![],
        1 => vec!["198.51.100.0/25".parse().unwrap()],
        _ => vec!["198.51.100.0/24".parse().unwrap()],
    };
    node.draining = shape % 7 == 6;
    if shape % 2 == 1 {
        node.labels.insert("rack".into(), "r1".into());
    }
    (name, node)
}

/// A desired IP with replicas and limits chosen by `shape`.
fn desired(shape: u8) -> DesiredIp {
    let mut d = DesiredIp::exclusive();
    d.replicas = match shape % 5 {
        0 => Replicas::Count(2),
        1 => Replicas::All,
        _ => Replicas::EXCLUSIVE,
    };
    match shape % 11 {
        3 => d.node_selector = [("rack".to_string(), "r1".to_string())].into(),
        4 => d.nodes = Some(["h0".to_string(), "h3".to_string()].into()),
        5 => d.interface = Some("eth9".into()),
        _ => {}
    }
    d
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn the_ideal_without_lost_nodes_is_the_ideal_computed_afresh(
        node_shapes in prop::collection::vec(any::<u8>(), 1..8),
        ip_shapes in prop::collection::vec(any::<u8>(), 0..120),
        lost in any::<u8>(),
    ) {
        let all: BTreeMap<String, NodeValue> = node_shapes
            .iter()
            .enumerate()
            .map(|(i, &shape)| node(i, shape))
            .collect();
        let wanted: BTreeMap<IpAddr, DesiredIp> = ip_shapes
            .iter()
            .enumerate()
            .map(|(i, &shape)| (format!("198.51.100.{}", i + 1).parse().unwrap(), desired(shape)))
            .collect();
        // Any subset but the whole set: bit i of `lost` loses node i.
        let kept: BTreeMap<String, NodeValue> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| lost & (1 << i) == 0)
            .map(|(_, (k, v))| (k.clone(), v.clone()))
            .collect();
        let before = Ideal::new(&wanted, &all);
        let derived = before.without(&kept);
        if kept.len() == all.len() {
            prop_assert!(derived.is_none(), "no node lost: nothing to derive");
        } else {
            prop_assert_eq!(derived, Some(Ideal::new(&wanted, &kept)));
        }
    }
}

#[test]
fn a_changed_or_new_node_cannot_be_derived() {
    let all: BTreeMap<String, NodeValue> = (0..3).map(|i| node(i, 0)).collect();
    let wanted: BTreeMap<IpAddr, DesiredIp> = (1..=20)
        .map(|i| (format!("198.51.100.{i}").parse().unwrap(), desired(2)))
        .collect();
    let ideal = Ideal::new(&wanted, &all);
    let mut changed = all.clone();
    changed.remove("h2");
    changed.get_mut("h1").unwrap().draining = true;
    assert_eq!(ideal.without(&changed), None, "h1 changed");
    let mut swapped = all.clone();
    swapped.remove("h2");
    swapped.extend([node(7, 0)]);
    assert_eq!(ideal.without(&swapped), None, "h7 is new");
}
