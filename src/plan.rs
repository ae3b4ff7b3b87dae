//! The pure core: from what etcd says and what the host has, decide what to do.
//!
//! No I/O, no clock, no root. The agent calls [`plan`] after every change and executes
//! the actions in the order given; then it plans again. Safety comes from two rules
//! that every plan obeys:
//! - an address is added only while this agent's lease holds a valid claim slot;
//! - a claim is released only once this agent holds no address for that IP.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::model::{max_prefix_len, DesiredIp, NodeValue, Replicas};
use crate::placement;

use crate::observed::{Claims, Holder, LeaseId, LocalAddress};

/// Whether this agent may hold addresses right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Lease valid: claim, hold and release normally.
    Serve,
    /// Lease may be expiring (or shutting down): drop every address, leave claims alone.
    Fenced,
}

/// An interface this agent serves, as last read from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface name, as configured.
    pub name: String,
    /// Kernel interface index.
    pub ifindex: u32,
    /// Up with carrier: when not, its IPs go elsewhere.
    pub up: bool,
}

/// This agent's identity and settings.
#[derive(Debug, Clone)]
pub struct Me<'a> {
    /// Node name.
    pub node: &'a str,
    /// The agent's lease; `None` before one is granted.
    pub lease: Option<LeaseId>,
    /// Interfaces this agent serves; the first takes IPs that name no interface.
    pub links: &'a [Link],
    /// CIDRs this agent may configure.
    pub allowed: &'a [IpNet],
    /// Serve or fenced.
    pub mode: Mode,
    /// When fenced, keep addresses of shared IPs (replicas > 1): `--on-etcd-loss keep`.
    pub keep_shared_when_fenced: bool,
    /// An operator drained this node: hand everything over, claim nothing.
    pub draining: bool,
    /// IPs this agent hands over to rebalance: drop the address, then the claim.
    pub give_away: &'a BTreeSet<IpAddr>,
    /// IPs another host on the segment answers for: release, do not claim.
    pub conflicts: &'a BTreeSet<IpAddr>,
    /// This node's labels, for `node_selector`.
    pub labels: &'a BTreeMap<String, String>,
}

/// The cluster as this agent sees it.
#[derive(Debug, Clone, Copy)]
pub struct World<'a> {
    /// Valid desired IPs.
    pub desired: &'a BTreeMap<IpAddr, DesiredIp>,
    /// Current claims.
    pub claims: &'a Claims,
    /// Addresses on this host that carry extip's mark.
    pub owned: &'a BTreeSet<LocalAddress>,
    /// Live nodes, for placement.
    pub nodes: &'a BTreeMap<String, NodeValue>,
    /// Free slots left unclaimed past the grace period: anyone eligible may take them.
    pub overdue: &'a BTreeSet<(IpAddr, u32)>,
    /// Which node should claim each free slot ([`placement::assign`]): computed once
    /// per reconcile, since a slot claimed meanwhile shows in `claims` anyway.
    pub assignment: &'a placement::Assignment,
}

/// One step for the agent to execute. Variants are ordered as they must run.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// Delete an address this agent added.
    RemoveAddress(LocalAddress),
    /// Delete this agent's claim on a slot.
    Release { ip: IpAddr, slot: u32 },
    /// Try to create the claim key for a slot.
    Claim { ip: IpAddr, slot: u32 },
    /// Add an address (with the ownership mark).
    AddAddress(LocalAddress),
    /// Tell the segment the address just added is here now (gratuitous ARP / NA);
    /// skipped when the add before it did not happen.
    Announce(LocalAddress),
}

/// Why this agent will not serve a desired IP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ineligible {
    /// The IP is outside every `--allowed-cidr`.
    OutsideAllowedCidrs,
    /// The IP asks for an interface this agent does not serve.
    OtherInterface(String),
    /// The interface is down or has no carrier.
    InterfaceDown,
    /// An operator drained this node.
    Draining,
    /// The node lacks a label the IP's `node_selector` asks for.
    NotSelected,
    /// The IP's `nodes` does not list this node (no ready endpoint here).
    NotListed,
    /// Another host on the segment answers for the IP (conflict probe).
    Conflict,
}

impl fmt::Display for Ineligible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ineligible::OutsideAllowedCidrs => f.write_str("outside every --allowed-cidr"),
            Ineligible::OtherInterface(i) => write!(f, "wants interface {i}, not served here"),
            Ineligible::InterfaceDown => f.write_str("the interface is down"),
            Ineligible::Draining => f.write_str("this node is drained"),
            Ineligible::Conflict => f.write_str("another host on the segment answers for it"),
            Ineligible::NotSelected => {
                f.write_str("node_selector does not match this node's labels")
            }
            Ineligible::NotListed => f.write_str("its `nodes` list does not name this node"),
        }
    }
}

/// Whether this agent may serve `ip` at all.
pub fn eligibility(me: &Me, ip: IpAddr, desired: &DesiredIp) -> Result<(), Ineligible> {
    if !me.allowed.iter().any(|net| net.contains(&ip)) {
        return Err(Ineligible::OutsideAllowedCidrs);
    }
    if !placement::selects(&desired.node_selector, me.labels) {
        return Err(Ineligible::NotSelected);
    }
    if !placement::lists(desired.nodes.as_ref(), me.node, me.labels) {
        return Err(Ineligible::NotListed);
    }
    let link = serving_link(me, desired)?;
    if !link.up {
        return Err(Ineligible::InterfaceDown);
    }
    if me.draining {
        return Err(Ineligible::Draining);
    }
    if me.conflicts.contains(&ip) {
        return Err(Ineligible::Conflict);
    }
    Ok(())
}

/// The interface a desired IP goes on here: its own, else this agent's first.
fn serving_link<'a>(me: &Me<'a>, desired: &DesiredIp) -> Result<&'a Link, Ineligible> {
    let Some(name) = desired.interface.as_deref() else {
        return me.links.first().ok_or(Ineligible::InterfaceDown);
    };
    me.links
        .iter()
        .find(|l| l.name == name)
        .ok_or_else(|| Ineligible::OtherInterface(name.to_string()))
}

/// The address this agent configures for a desired IP; `None` when no served interface fits.
pub fn wanted_address(me: &Me, ip: IpAddr, desired: &DesiredIp) -> Option<LocalAddress> {
    let link = serving_link(me, desired).ok()?;
    Some(LocalAddress {
        ifindex: link.ifindex,
        ip,
        prefix_len: desired.prefix_len.unwrap_or_else(|| max_prefix_len(ip)),
    })
}

/// Whether holding `slot` counts towards serving an IP with `replicas`.
fn slot_is_valid(replicas: Replicas, slot: u32) -> bool {
    match replicas {
        Replicas::Count(n) => slot < n,
        Replicas::All => true,
    }
}

/// Which free slot of `ip` this agent should claim: the one placement assigns it, else
/// one left unclaimed past the grace period.
fn slot_to_claim(
    me: &Me,
    world: &World,
    assignment: &placement::Assignment,
    ip: IpAddr,
    replicas: Replicas,
) -> Option<u32> {
    let assigned = assignment
        .range((ip, 0)..=(ip, u32::MAX))
        .find(|(_, node)| node.as_str() == me.node)
        .map(|(&(_, slot), _)| slot);
    let taken = world.claims.get(&ip);
    let overdue = world
        .overdue
        .range((ip, 0)..=(ip, u32::MAX))
        .map(|&(_, slot)| slot)
        .find(|&s| slot_is_valid(replicas, s) && taken.is_none_or(|t| !t.contains_key(&s)));
    assigned.or(overdue)
}

/// Decide the next actions. Run them in order, then plan again until nothing is left.
pub fn plan(me: &Me, world: &World) -> Vec<Action> {
    let mut actions = Vec::new();
    for ip in ips_to_plan(me, world) {
        if let Some(desired) = world.desired.get(&ip) {
            plan_ip(me, world, world.assignment, ip, desired, &mut actions);
        }
    }
    plan_strays(me, world, &mut actions);
    actions.sort();
    actions.dedup();
    actions
}

/// The IPs [`plan_ip`] can act on: those with an address here, a slot on this agent's
/// lease, a free slot placement gives this node, or an overdue slot. For any other IP
/// it does nothing, and at 10,000 IPs looking at each of them was most of a plan.
fn ips_to_plan(me: &Me, world: &World) -> BTreeSet<IpAddr> {
    let owned = world.owned.iter().map(|a| a.ip);
    let held = world
        .claims
        .iter()
        .filter(|(_, slots)| slots.values().any(|h| on_my_lease(me, h)))
        .map(|(&ip, _)| ip);
    let assigned = world
        .assignment
        .iter()
        .filter(|(_, node)| node.as_str() == me.node)
        .map(|(&(ip, _), _)| ip);
    let overdue = world.overdue.iter().map(|&(ip, _)| ip);
    owned.chain(held).chain(assigned).chain(overdue).collect()
}

/// Whether a claim hangs on this agent's lease (none before one is granted).
fn on_my_lease(me: &Me, holder: &Holder) -> bool {
    me.lease == Some(holder.lease)
}

/// Slots of `ip` that hang on this agent's lease.
fn my_slots(me: &Me, claims: &Claims, ip: IpAddr) -> Vec<u32> {
    claims
        .get(&ip)
        .map(|slots| {
            slots
                .iter()
                .filter(|(_, h)| on_my_lease(me, h))
                .map(|(&s, _)| s)
                .collect()
        })
        .unwrap_or_default()
}

fn owned_for(world: &World, ip: IpAddr) -> Vec<LocalAddress> {
    let first = LocalAddress {
        ip,
        prefix_len: 0,
        ifindex: 0,
    };
    world
        .owned
        .range(first..)
        .take_while(|a| a.ip == ip)
        .copied()
        .collect()
}

fn plan_ip(
    me: &Me,
    world: &World,
    assignment: &placement::Assignment,
    ip: IpAddr,
    desired: &DesiredIp,
    out: &mut Vec<Action>,
) {
    let owned = owned_for(world, ip);
    if me.mode == Mode::Fenced {
        let shared = desired.replicas != Replicas::EXCLUSIVE;
        if !(shared && me.keep_shared_when_fenced) {
            out.extend(owned.into_iter().map(Action::RemoveAddress));
        }
        return;
    }
    let mine = my_slots(me, world.claims, ip);
    let eligible = eligibility(me, ip, desired).is_ok() && !me.give_away.contains(&ip);
    let wanted = wanted_address(me, ip, desired).filter(|_| eligible);
    let (valid, invalid): (Vec<u32>, Vec<u32>) = mine
        .iter()
        .partition(|&&s| slot_is_valid(desired.replicas, s));

    if let Some(wanted) = wanted.filter(|_| !valid.is_empty()) {
        out.extend(
            owned
                .iter()
                .filter(|a| **a != wanted)
                .map(|&a| Action::RemoveAddress(a)),
        );
        if !owned.contains(&wanted) {
            out.push(Action::AddAddress(wanted));
            out.push(Action::Announce(wanted));
        }
        // Still holding valid[0], so dropping duplicates and invalid slots is safe.
        let surplus = valid[1..].iter().chain(invalid.iter());
        out.extend(surplus.map(|&slot| Action::Release { ip, slot }));
        return;
    }
    if !owned.is_empty() {
        out.extend(owned.into_iter().map(Action::RemoveAddress));
        return;
    }
    if !mine.is_empty() {
        out.extend(mine.into_iter().map(|slot| Action::Release { ip, slot }));
        return;
    }
    if eligible && me.lease.is_some() {
        if let Some(slot) = slot_to_claim(me, world, assignment, ip, desired.replicas) {
            out.push(Action::Claim { ip, slot });
        }
    }
}

/// Addresses and claims for IPs that are no longer desired.
fn plan_strays(me: &Me, world: &World, out: &mut Vec<Action>) {
    let stray_addresses: Vec<LocalAddress> = world
        .owned
        .iter()
        .filter(|a| !world.desired.contains_key(&a.ip))
        .copied()
        .collect();
    if me.mode == Mode::Fenced {
        out.extend(stray_addresses.into_iter().map(Action::RemoveAddress));
        return;
    }
    for (&ip, _) in crate::sorted::missing_from(world.claims, world.desired) {
        if stray_addresses.iter().any(|a| a.ip == ip) {
            continue;
        }
        for slot in my_slots(me, world.claims, ip) {
            out.push(Action::Release { ip, slot });
        }
    }
    out.extend(stray_addresses.into_iter().map(Action::RemoveAddress));
}

#[cfg(test)]
mod tests;
