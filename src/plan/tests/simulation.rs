//! Several agents with stale, independent views run `plan` against one shared etcd.
//!
//! Random interleavings of agent steps, view refreshes, desired-key edits, crashes and
//! restarts must never put an exclusive IP on two live hosts, and once the dust settles
//! every desired IP is held by exactly one live host.

use proptest::prelude::*;

use super::*;

static NONE: BTreeSet<IpAddr> = BTreeSet::new();
static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

const IPS: [&str; 3] = ["198.51.100.1", "198.51.100.2", "2001:db8::3"];
const AGENTS: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    /// Agent `a` refreshes its view of etcd (a watch event batch arrives).
    Refresh(usize),
    /// Agent `a` executes the first action of its current plan.
    Step(usize),
    /// Someone writes or deletes a desired key, or changes its mask.
    SetDesired(usize, Option<u8>),
    DeleteDesired(usize),
    /// Agent `a`'s process dies and its lease expires; its host is gone too.
    Crash(usize),
    /// Agent `a` starts again with a new lease on a host that still has its old addresses.
    Restart(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let a = 0..AGENTS;
    let i = 0..IPS.len();
    prop_oneof![
        4 => a.clone().prop_map(Op::Refresh),
        8 => a.clone().prop_map(Op::Step),
        2 => (i.clone(), prop::option::of(prop::sample::select(vec![24u8, 32]))).prop_map(|(i, l)| Op::SetDesired(i, l)),
        1 => i.prop_map(Op::DeleteDesired),
        1 => a.clone().prop_map(Op::Crash),
        1 => a.prop_map(Op::Restart),
    ]
}

#[derive(Default, Clone)]
struct Etcd {
    desired: BTreeMap<IpAddr, DesiredIp>,
    claims: Claims,
    nodes: BTreeMap<String, crate::model::NodeValue>,
}

fn name(a: usize) -> String {
    format!("a{a}")
}

fn record(a: usize) -> crate::model::NodeValue {
    crate::model::NodeValue::new(&name(a), &["lo"])
}

struct Agent {
    lease: LeaseId,
    alive: bool,
    view: Etcd,
    owned: BTreeSet<LocalAddress>,
}

struct Sim {
    etcd: Etcd,
    agents: Vec<Agent>,
    next_lease: LeaseId,
    allowed: Vec<IpNet>,
}

impl Sim {
    fn new() -> Self {
        let agents = (0..AGENTS)
            .map(|i| Agent {
                lease: i as LeaseId + 1,
                alive: true,
                view: Etcd::default(),
                owned: BTreeSet::new(),
            })
            .collect();
        let etcd = Etcd {
            nodes: (0..AGENTS).map(|a| (name(a), record(a))).collect(),
            ..Etcd::default()
        };
        Sim {
            etcd,
            agents,
            next_lease: AGENTS as LeaseId + 1,
            allowed: allowed(),
        }
    }

    fn plan_for(&self, a: usize) -> Vec<Action> {
        let agent = &self.agents[a];
        let node = name(a);
        let me = Me {
            node: &node,
            lease: Some(agent.lease),
            links: &LO[..],
            allowed: &self.allowed,
            mode: Mode::Serve,
            keep_shared_when_fenced: false,
            draining: false,
            give_away: &NONE,
            conflicts: &NONE,
            labels: &NO_LABELS,
        };
        let assignment = crate::placement::assign(
            &crate::placement::Ideal::new(&agent.view.desired, &agent.view.nodes),
            &agent.view.claims,
            &agent.view.nodes,
        );
        let world = World {
            desired: &agent.view.desired,
            claims: &agent.view.claims,
            owned: &agent.owned,
            nodes: &agent.view.nodes,
            overdue: &BTreeSet::new(),
            assignment: &assignment,
        };
        let actions = plan(&me, &world);
        assert_eq!(
            actions,
            super::plan_every_ip(&me, &world),
            "skipping IPs changed the plan"
        );
        actions
    }

    fn step(&mut self, a: usize) {
        if !self.agents[a].alive {
            return;
        }
        let Some(action) = self.plan_for(a).into_iter().next() else {
            return;
        };
        let lease = self.agents[a].lease;
        let agent = &mut self.agents[a];
        match action {
            Action::AddAddress(x) => {
                agent.owned.insert(x);
            }
            Action::Announce(_) => {}
            Action::RemoveAddress(x) => {
                agent.owned.remove(&x);
            }
            Action::Claim { ip, slot } => {
                let slots = self.etcd.claims.entry(ip).or_default();
                // The txn: create only if absent. Either way the agent learns the truth.
                slots.entry(slot).or_insert_with(|| Holder {
                    node: Some(name(a)),
                    lease,
                });
                let truth = slots[&slot].clone();
                agent.view.claims.entry(ip).or_default().insert(slot, truth);
            }
            Action::Release { ip, slot } => {
                let slots = self.etcd.claims.entry(ip).or_default();
                if slots.get(&slot).is_some_and(|h| h.lease == lease) {
                    slots.remove(&slot);
                }
                if let Some(v) = agent.view.claims.get_mut(&ip) {
                    v.remove(&slot);
                }
            }
        }
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Refresh(a) => self.agents[a].view = self.etcd.clone(),
            Op::Step(a) => self.step(a),
            Op::SetDesired(i, len) => {
                let mut d = exclusive();
                d.prefix_len = len;
                self.etcd.desired.insert(ip(IPS[i]), d);
            }
            Op::DeleteDesired(i) => {
                self.etcd.desired.remove(&ip(IPS[i]));
            }
            Op::Crash(a) => {
                let lease = self.agents[a].lease;
                for slots in self.etcd.claims.values_mut() {
                    slots.retain(|_, h| h.lease != lease);
                }
                self.agents[a].alive = false;
                self.etcd.nodes.remove(&name(a));
            }
            Op::Restart(a) => {
                if self.agents[a].alive {
                    return;
                }
                // Startup cleanup runs before the agent joins: plan with no lease.
                let agent = &mut self.agents[a];
                let me = Me {
                    node: "restarting",
                    lease: None,
                    links: &LO[..],
                    allowed: &self.allowed,
                    mode: Mode::Serve,
                    keep_shared_when_fenced: false,
                    draining: false,
                    give_away: &NONE,
                    conflicts: &NONE,
                    labels: &NO_LABELS,
                };
                let empty = Etcd::default();
                let world = World {
                    desired: &empty.desired,
                    claims: &empty.claims,
                    owned: &agent.owned,
                    nodes: &empty.nodes,
                    overdue: &BTreeSet::new(),
                    assignment: &Default::default(),
                };
                for action in plan(&me, &world) {
                    let Action::RemoveAddress(x) = action else {
                        panic!("startup plan may only remove, got {action:?}");
                    };
                    agent.owned.remove(&x);
                }
                agent.alive = true;
                agent.lease = self.next_lease;
                agent.view = Etcd::default();
                self.next_lease += 1;
                self.etcd.nodes.insert(name(a), record(a));
            }
        }
    }

    fn live_holders(&self, ip: IpAddr) -> usize {
        self.agents
            .iter()
            .filter(|a| a.alive && a.owned.iter().any(|x| x.ip == ip))
            .count()
    }

    fn settle(&mut self) {
        for _ in 0..50 {
            for a in 0..AGENTS {
                self.apply(&Op::Refresh(a));
                for _ in 0..10 {
                    self.step(a);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn exclusive_ip_is_never_on_two_live_hosts(ops in prop::collection::vec(op(), 1..120)) {
        let mut sim = Sim::new();
        for op in &ops {
            sim.apply(op);
            for s in IPS {
                prop_assert!(sim.live_holders(ip(s)) <= 1, "{s} on two live hosts after {op:?}");
            }
        }
        sim.settle();
        let any_alive = sim.agents.iter().any(|a| a.alive);
        for s in IPS {
            let want = usize::from(any_alive && sim.etcd.desired.contains_key(&ip(s)));
            prop_assert_eq!(sim.live_holders(ip(s)), want, "{} after settling", s);
        }
        for agent in sim.agents.iter().filter(|a| a.alive) {
            for x in &agent.owned {
                let d = &sim.etcd.desired[&x.ip];
                prop_assert_eq!(Some(x.prefix_len), Some(d.prefix_len.unwrap_or(max_prefix_len(x.ip))));
            }
        }
    }
}
