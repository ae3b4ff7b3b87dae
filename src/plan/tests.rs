//! Unit tests of single plans, and a simulation of several agents sharing one etcd.

use super::*;
use crate::observed::Holder;

static NONE: BTreeSet<IpAddr> = BTreeSet::new();
static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();
/// The one interface of most tests: `lo`, index 1, up.
static LO: std::sync::LazyLock<[Link; 1]> = std::sync::LazyLock::new(|| {
    [Link {
        name: "lo".into(),
        ifindex: 1,
        up: true,
    }]
});
use crate::model::{DesiredIp, NodeValue, Replicas};

mod simulation;

/// [`plan`] as it was before it skipped IPs: every desired IP planned. The simulation
/// checks that skipping changes no plan.
fn plan_every_ip(me: &Me, world: &World) -> Vec<Action> {
    let mut actions = Vec::new();
    for (&ip, desired) in world.desired {
        plan_ip(me, world, world.assignment, ip, desired, &mut actions);
    }
    plan_strays(me, world, &mut actions);
    actions.sort();
    actions.dedup();
    actions
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn allowed() -> Vec<IpNet> {
    vec![
        "198.51.100.0/24".parse().unwrap(),
        "2001:db8::/32".parse().unwrap(),
    ]
}

fn me(lease: LeaseId, allowed: &[IpNet]) -> Me<'_> {
    Me {
        node: "h1",
        lease: Some(lease),
        links: &LO[..],
        allowed,
        mode: Mode::Serve,
        keep_shared_when_fenced: false,
        draining: false,
        give_away: &NONE,
        conflicts: &NONE,
        labels: &NO_LABELS,
    }
}

fn exclusive() -> DesiredIp {
    DesiredIp::exclusive()
}

fn addr(s: &str, len: u8) -> LocalAddress {
    LocalAddress {
        ifindex: 1,
        ip: ip(s),
        prefix_len: len,
    }
}

fn held_by(lease: LeaseId) -> Holder {
    Holder {
        node: Some(format!("n{lease}")),
        lease,
    }
}

struct Case {
    desired: BTreeMap<IpAddr, DesiredIp>,
    claims: Claims,
    owned: BTreeSet<LocalAddress>,
    nodes: BTreeMap<String, NodeValue>,
    overdue: BTreeSet<(IpAddr, u32)>,
}

/// A live node that can serve anything on `lo`.
fn node_record(name: &str) -> NodeValue {
    NodeValue::new(name, &["lo"])
}

impl Case {
    fn new() -> Self {
        Case {
            desired: BTreeMap::new(),
            claims: Claims::new(),
            owned: BTreeSet::new(),
            nodes: [("h1".to_string(), node_record("h1"))].into(),
            overdue: BTreeSet::new(),
        }
    }
    fn node(mut self, name: &str) -> Self {
        self.nodes.insert(name.into(), node_record(name));
        self
    }
    fn want(mut self, s: &str, d: DesiredIp) -> Self {
        self.desired.insert(ip(s), d);
        self
    }
    fn claim(mut self, s: &str, slot: u32, lease: LeaseId) -> Self {
        self.claims
            .entry(ip(s))
            .or_default()
            .insert(slot, held_by(lease));
        self
    }
    fn owns(mut self, a: LocalAddress) -> Self {
        self.owned.insert(a);
        self
    }
    fn plan(&self, me: &Me) -> Vec<Action> {
        let ideal = crate::placement::Ideal::new(&self.desired, &self.nodes);
        let assignment = crate::placement::assign(&ideal, &self.claims, &self.nodes);
        let world = World {
            desired: &self.desired,
            claims: &self.claims,
            owned: &self.owned,
            nodes: &self.nodes,
            overdue: &self.overdue,
            assignment: &assignment,
        };
        let actions = plan(me, &world);
        assert_eq!(
            actions,
            plan_every_ip(me, &world),
            "skipping IPs changed the plan"
        );
        actions
    }
}

#[test]
fn unclaimed_desired_ip_is_claimed_on_slot_zero() {
    let a = allowed();
    let case = Case::new().want("198.51.100.10", exclusive());
    assert_eq!(
        case.plan(&me(7, &a)),
        vec![Action::Claim {
            ip: ip("198.51.100.10"),
            slot: 0
        }]
    );
}

#[test]
fn holder_adds_full_length_mask_by_default() {
    let a = allowed();
    let case = Case::new()
        .want("198.51.100.10", exclusive())
        .want("2001:db8::10", exclusive())
        .claim("198.51.100.10", 0, 7)
        .claim("2001:db8::10", 0, 7);
    assert_eq!(
        case.plan(&me(7, &a)),
        vec![
            Action::AddAddress(addr("198.51.100.10", 32)),
            Action::AddAddress(addr("2001:db8::10", 128)),
            Action::Announce(addr("198.51.100.10", 32)),
            Action::Announce(addr("2001:db8::10", 128)),
        ]
    );
}

#[test]
fn nothing_to_do_when_converged() {
    let a = allowed();
    let case = Case::new()
        .want("198.51.100.10", exclusive())
        .claim("198.51.100.10", 0, 7)
        .owns(addr("198.51.100.10", 32));
    assert!(case.plan(&me(7, &a)).is_empty());
}

#[test]
fn non_holder_never_adds_and_drops_what_it_has() {
    let a = allowed();
    let case = Case::new()
        .want("198.51.100.10", exclusive())
        .claim("198.51.100.10", 0, 9);
    assert!(case.plan(&me(7, &a)).is_empty());
    let case = case.owns(addr("198.51.100.10", 32));
    assert_eq!(
        case.plan(&me(7, &a)),
        vec![Action::RemoveAddress(addr("198.51.100.10", 32))]
    );
}

#[test]
fn release_waits_until_the_address_is_gone() {
    let a = allowed();
    let case = Case::new()
        .claim("198.51.100.10", 0, 7)
        .owns(addr("198.51.100.10", 32));
    assert_eq!(
        case.plan(&me(7, &a)),
        vec![Action::RemoveAddress(addr("198.51.100.10", 32))]
    );
    let case = Case::new().claim("198.51.100.10", 0, 7);
    assert_eq!(
        case.plan(&me(7, &a)),
        vec![Action::Release {
            ip: ip("198.51.100.10"),
            slot: 0
        }]
    );
}

#[test]
fn ip_outside_allowed_cidrs_is_never_claimed_nor_added() {
    let a = allowed();
    let case = Case::new().want("203.0.113.10", exclusive());
    assert!(case.plan(&me(7, &a)).is_empty());
    let m = me(7, &a);
    assert_eq!(
        eligibility(&m, ip("203.0.113.10"), &exclusive()),
        Err(Ineligible::OutsideAllowedCidrs)
    );
    // Even a claim someone wrote for us by hand does not make us add it.
    let case = case.claim("203.0.113.10", 0, 7);
    assert_eq!(
        case.plan(&m),
        vec![Action::Release {
            ip: ip("203.0.113.10"),
            slot: 0
        }]
    );
}

#[test]
fn ip_for_another_interface_is_not_served() {
    let a = allowed();
    let mut d = exclusive();
    d.interface = Some("eth1".into());
    let case = Case::new().want("198.51.100.10", d);
    assert!(case.plan(&me(7, &a)).is_empty());
}

#[test]
fn each_ip_goes_on_its_own_interface_and_a_down_one_gives_only_its_ips_away() {
    let a = allowed();
    let mut links = vec![
        LO[0].clone(),
        Link {
            name: "eth0".into(),
            ifindex: 2,
            up: true,
        },
    ];
    let mut on_eth0 = exclusive();
    on_eth0.interface = Some("eth0".into());
    let case = Case::new()
        .want("198.51.100.10", exclusive())
        .want("198.51.100.11", on_eth0)
        .claim("198.51.100.10", 0, 7)
        .claim("198.51.100.11", 0, 7);
    let on = |ifindex, s| LocalAddress {
        ifindex,
        ip: ip(s),
        prefix_len: 32,
    };
    let mut m = me(7, &a);
    m.links = &links;
    assert_eq!(
        case.plan(&m),
        vec![
            Action::AddAddress(on(1, "198.51.100.10")),
            Action::AddAddress(on(2, "198.51.100.11")),
            Action::Announce(on(1, "198.51.100.10")),
            Action::Announce(on(2, "198.51.100.11")),
        ]
    );
    links[1].up = false;
    let mut m = me(7, &a);
    m.links = &links;
    let case = case.owns(on(1, "198.51.100.10"));
    assert_eq!(
        case.plan(&m),
        vec![Action::Release {
            ip: ip("198.51.100.11"),
            slot: 0
        }]
    );
}

#[test]
fn prefix_change_replaces_the_address() {
    let a = allowed();
    let mut d = exclusive();
    d.prefix_len = Some(24);
    let case = Case::new()
        .want("198.51.100.10", d)
        .claim("198.51.100.10", 0, 7)
        .owns(addr("198.51.100.10", 32));
    assert_eq!(
        case.plan(&me(7, &a)),
        vec![
            Action::RemoveAddress(addr("198.51.100.10", 32)),
            Action::AddAddress(addr("198.51.100.10", 24)),
            Action::Announce(addr("198.51.100.10", 24)),
        ]
    );
}

#[test]
fn fenced_agent_drops_addresses_and_keeps_claims() {
    let a = allowed();
    let mut m = me(7, &a);
    m.mode = Mode::Fenced;
    let case = Case::new()
        .want("198.51.100.10", exclusive())
        .claim("198.51.100.10", 0, 7)
        .owns(addr("198.51.100.10", 32))
        .owns(addr("198.51.100.11", 32));
    assert_eq!(
        case.plan(&m),
        vec![
            Action::RemoveAddress(addr("198.51.100.10", 32)),
            Action::RemoveAddress(addr("198.51.100.11", 32)),
        ]
    );
}

#[test]
fn stale_marked_addresses_are_removed_at_start() {
    let a = allowed();
    let case = Case::new()
        .want("198.51.100.10", exclusive())
        .claim("198.51.100.10", 0, 3)
        .owns(addr("198.51.100.10", 32))
        .owns(addr("198.51.100.12", 32));
    let mut m = me(7, &a);
    m.lease = None;
    assert_eq!(
        case.plan(&m),
        vec![
            Action::RemoveAddress(addr("198.51.100.10", 32)),
            Action::RemoveAddress(addr("198.51.100.12", 32)),
        ]
    );
}

#[test]
fn replicas_fill_free_slots_and_shrink_safely() {
    let a = allowed();
    let mut two = exclusive();
    two.replicas = Replicas::Count(2);
    let case = Case::new()
        .node("n9")
        .want("198.51.100.10", two.clone())
        .claim("198.51.100.10", 0, 9);
    assert_eq!(
        case.plan(&me(7, &a)),
        vec![Action::Claim {
            ip: ip("198.51.100.10"),
            slot: 1
        }]
    );
    // Back to one replica: the holder of slot 1 drops its address, then its claim.
    let case = Case::new()
        .want("198.51.100.10", exclusive())
        .claim("198.51.100.10", 0, 9)
        .claim("198.51.100.10", 1, 7)
        .owns(addr("198.51.100.10", 32));
    assert_eq!(
        case.plan(&me(7, &a)),
        vec![Action::RemoveAddress(addr("198.51.100.10", 32))]
    );
}

#[test]
fn all_replicas_take_the_lowest_free_slot() {
    let a = allowed();
    let mut all = exclusive();
    all.replicas = Replicas::All;
    let case = Case::new()
        .node("n9")
        .node("n8")
        .node("n6")
        .want("198.51.100.10", all)
        .claim("198.51.100.10", 0, 9)
        .claim("198.51.100.10", 1, 8)
        .claim("198.51.100.10", 3, 6);
    assert_eq!(
        case.plan(&me(7, &a)),
        vec![Action::Claim {
            ip: ip("198.51.100.10"),
            slot: 2
        }]
    );
}

/// An agent that may not serve (link down, drained) drops its address, then its claim,
/// and claims nothing new.
fn assert_gives_everything_away(m: &Me) {
    let case = Case::new()
        .want("198.51.100.10", exclusive())
        .want("198.51.100.11", exclusive())
        .claim("198.51.100.10", 0, 7)
        .owns(addr("198.51.100.10", 32));
    assert_eq!(
        case.plan(m),
        vec![Action::RemoveAddress(addr("198.51.100.10", 32))]
    );
    let case = Case::new()
        .want("198.51.100.10", exclusive())
        .claim("198.51.100.10", 0, 7);
    assert_eq!(
        case.plan(m),
        vec![Action::Release {
            ip: ip("198.51.100.10"),
            slot: 0
        }]
    );
}

#[test]
fn an_ip_in_conflict_is_released_and_not_claimed() {
    let a = allowed();
    let conflicts: BTreeSet<IpAddr> = [ip("198.51.100.10"), ip("198.51.100.11")].into();
    let mut m = me(7, &a);
    m.conflicts = &conflicts;
    assert_gives_everything_away(&m);
    let unclaimed = Case::new().want("198.51.100.11", exclusive());
    assert!(unclaimed.plan(&m).is_empty());
}

#[test]
fn a_down_interface_gives_its_ips_away() {
    let a = allowed();
    let mut m = me(7, &a);
    let down = [Link {
        up: false,
        ..LO[0].clone()
    }];
    m.links = &down;
    assert_gives_everything_away(&m);
}

#[test]
fn a_drained_host_gives_everything_away_and_claims_nothing() {
    let a = allowed();
    let mut m = me(7, &a);
    m.draining = true;
    assert_gives_everything_away(&m);
}

#[test]
fn fenced_agent_keeps_shared_ips_only_when_told_to() {
    let a = allowed();
    let mut m = me(7, &a);
    m.mode = Mode::Fenced;
    let mut two = exclusive();
    two.replicas = Replicas::Count(2);
    let case = Case::new()
        .want("198.51.100.10", exclusive())
        .want("198.51.100.20", two)
        .claim("198.51.100.10", 0, 7)
        .claim("198.51.100.20", 1, 7)
        .owns(addr("198.51.100.10", 32))
        .owns(addr("198.51.100.20", 32));
    assert_eq!(
        case.plan(&m),
        vec![
            Action::RemoveAddress(addr("198.51.100.10", 32)),
            Action::RemoveAddress(addr("198.51.100.20", 32)),
        ]
    );
    m.keep_shared_when_fenced = true;
    assert_eq!(
        case.plan(&m),
        vec![Action::RemoveAddress(addr("198.51.100.10", 32))]
    );
}

#[test]
fn a_host_claims_only_what_placement_gives_it_until_the_grace_runs_out() {
    let a = allowed();
    let mut case = Case::new().node("h2").node("h3");
    for i in 1..=30 {
        case = case.want(&format!("198.51.100.{i}"), exclusive());
    }
    let claims: Vec<Action> = case.plan(&me(7, &a));
    assert!(
        (5..=15).contains(&claims.len()),
        "h1 claims its share of 30, not all: {}",
        claims.len()
    );
    let skipped = (1..=30)
        .map(|i| ip(&format!("198.51.100.{i}")))
        .find(|x| {
            !claims
                .iter()
                .any(|c| matches!(c, Action::Claim { ip, .. } if ip == x))
        })
        .unwrap();
    case.overdue.insert((skipped, 0));
    let after = case.plan(&me(7, &a));
    assert!(after.contains(&Action::Claim {
        ip: skipped,
        slot: 0
    }));
}

#[test]
fn an_ip_whose_selector_this_node_lacks_is_not_served() {
    let a = allowed();
    let mut d = exclusive();
    d.node_selector.insert("zone".into(), "a".into());
    let case = Case::new().want("198.51.100.10", d.clone());
    let m = me(7, &a);
    assert_eq!(
        eligibility(&m, ip("198.51.100.10"), &d),
        Err(Ineligible::NotSelected)
    );
    assert!(case.plan(&m).is_empty());
    let labels: BTreeMap<String, String> = [("zone".to_string(), "a".to_string())].into();
    let mut m = me(7, &a);
    m.labels = &labels;
    let mut case = case;
    case.nodes.get_mut("h1").unwrap().labels = labels.clone();
    assert_eq!(
        case.plan(&m),
        vec![Action::Claim {
            ip: ip("198.51.100.10"),
            slot: 0
        }]
    );
}

#[test]
fn an_ip_whose_nodes_list_leaves_this_node_out_is_given_away_and_not_claimed() {
    let a = allowed();
    let m = me(7, &a);
    let mut elsewhere = exclusive();
    elsewhere.nodes = Some(["h2".to_string()].into());
    assert_eq!(
        eligibility(&m, ip("198.51.100.10"), &elsewhere),
        Err(Ineligible::NotListed)
    );
    let held = Case::new()
        .want("198.51.100.10", elsewhere.clone())
        .claim("198.51.100.10", 0, 7)
        .owns(addr("198.51.100.10", 32));
    assert_eq!(
        held.plan(&m),
        vec![Action::RemoveAddress(addr("198.51.100.10", 32))]
    );
    let mut here = exclusive();
    here.nodes = Some(["h1".to_string(), "h2".to_string()].into());
    assert_eq!(eligibility(&m, ip("198.51.100.10"), &here), Ok(()));
    assert_eq!(
        Case::new().want("198.51.100.10", here).plan(&m),
        vec![Action::Claim {
            ip: ip("198.51.100.10"),
            slot: 0
        }]
    );
    // An empty list: the IP is desired, yet no node may serve it.
    let mut nowhere = exclusive();
    nowhere.nodes = Some(BTreeSet::new());
    assert!(Case::new()
        .want("198.51.100.10", nowhere)
        .plan(&m)
        .is_empty());
}
