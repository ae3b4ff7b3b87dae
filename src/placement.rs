//! Which live node should claim each free slot: rendezvous hashing with bounded loads.
//!
//! Pure and deterministic: every agent computes the same assignment from the same etcd
//! state (desired IPs, claims, node records), so hosts rarely race for a slot. Held
//! slots are never reassigned here, so a membership change moves only the IPs whose
//! holder went away. The claim transaction stays the lock: a wrong or stale assignment
//! can only delay a claim, never put an IP on two hosts.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::Hasher;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::model::{DesiredIp, NodeValue, Replicas, KUBERNETES_NODE_LABEL};
use crate::observed::Claims;

/// Load bound: a node above `ceil(average × 1.05)` passes a slot to its next-ranked node.
const LOAD_FACTOR: f64 = 1.05;

/// The rendezvous weight of `node` for `ip`: FNV-1a over both, then a 64-bit finalizer
/// for good mixing. Stable across versions and platforms, unlike std's hashers.
pub fn weight(ip: IpAddr, node: &str) -> u64 {
    let mut h = fnv::FnvHasher::default();
    h.write(ip.to_string().as_bytes());
    h.write(&[0]);
    h.write(node.as_bytes());
    let mut x = h.finish();
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// Whether the node described by `node` can serve `ip` as `desired` asks.
pub fn node_can_serve(node: &NodeValue, ip: IpAddr, desired: &DesiredIp) -> bool {
    if node.draining || node.interfaces.is_empty() {
        return false;
    }
    let allowed =
        node.allowed_cidrs.is_empty() || node.allowed_cidrs.iter().any(|c: &IpNet| c.contains(&ip));
    let interface = match desired
        .interface
        .as_ref()
        .or(node.default_interface.as_ref())
    {
        Some(i) => node.interfaces.iter().any(|n| n == i),
        None => true,
    };
    allowed
        && interface
        && selects(&desired.node_selector, &node.labels)
        && lists(desired.nodes.as_ref(), &node.node, &node.labels)
}

/// Whether the node `name` (with `labels`) is among `nodes`, by its name or by the
/// Kubernetes node name its [`KUBERNETES_NODE_LABEL`] gives; `None` lists every node.
pub fn lists(
    nodes: Option<&BTreeSet<String>>,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    nodes.is_none_or(|listed| {
        let kubernetes = labels.get(KUBERNETES_NODE_LABEL).map(String::as_str);
        listed.contains(kubernetes.unwrap_or(name))
    })
}

/// Whether `labels` carry every pair of `selector`.
pub fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Nodes that can serve `ip`, best-ranked first.
pub fn ranking<'a>(
    ip: IpAddr,
    desired: &DesiredIp,
    nodes: &'a BTreeMap<String, NodeValue>,
) -> Vec<&'a str> {
    let mut ranked: Vec<(u64, &str)> = nodes
        .iter()
        .filter(|(_, n)| node_can_serve(n, ip, desired))
        .map(|(name, _)| (weight(ip, name), name.as_str()))
        .collect();
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    ranked.into_iter().map(|(_, n)| n).collect()
}

/// How many slots an IP wants given how many nodes can serve it.
fn wanted_slots(replicas: Replicas, candidates: usize) -> usize {
    match replicas {
        Replicas::Count(n) => (n as usize).min(candidates),
        Replicas::All => candidates,
    }
}

/// Current loads: held slots per live node.
fn loads<'a>(claims: &'a Claims, nodes: &BTreeMap<String, NodeValue>) -> BTreeMap<&'a str, usize> {
    let mut load: BTreeMap<&str, usize> = BTreeMap::new();
    for slots in claims.values() {
        for h in slots.values() {
            if let Some(node) = h.node.as_deref().filter(|n| nodes.contains_key(*n)) {
                *load.entry(node).or_default() += 1;
            }
        }
    }
    load
}

/// The load bound for `total` slots over the nodes that can serve.
fn capacity(total: usize, nodes: &BTreeMap<String, NodeValue>) -> usize {
    let serving = nodes
        .values()
        .filter(|n| !n.draining && !n.interfaces.is_empty())
        .count();
    let bound = (total as f64 / serving.max(1) as f64) * LOAD_FACTOR;
    (bound - ROUNDING).ceil() as usize
}

/// The balanced placement from scratch, and what it was computed from. It depends only
/// on the desired IPs and the nodes, so an agent computes it once per change of either,
/// not on every planning pass; it ignores claims: free slots and rebalancing steer to it.
#[derive(Debug, Clone, Default)]
pub struct Ideal {
    /// For each IP its ideal holders, best first.
    pub holders: BTreeMap<IpAddr, Vec<String>>,
    /// For each IP every node that can serve it, best-ranked first.
    rankings: BTreeMap<IpAddr, Vec<String>>,
    /// The load bound.
    cap: usize,
    /// Slots per serving node.
    average: f64,
    /// Slots wanted in all.
    total: usize,
}

impl Ideal {
    /// Rank every IP and place it under the load bound.
    pub fn new(desired: &BTreeMap<IpAddr, DesiredIp>, nodes: &BTreeMap<String, NodeValue>) -> Self {
        let rankings: BTreeMap<IpAddr, Vec<String>> = desired
            .iter()
            .map(|(&ip, d)| {
                (
                    ip,
                    ranking(ip, d, nodes)
                        .into_iter()
                        .map(str::to_string)
                        .collect(),
                )
            })
            .collect();
        let total: usize = desired
            .iter()
            .map(|(ip, d)| wanted_slots(d.replicas, rankings[ip].len()))
            .sum();
        let cap = capacity(total, nodes);
        let serving = nodes
            .values()
            .filter(|n| !n.draining && !n.interfaces.is_empty())
            .count()
            .max(1);
        let mut load: BTreeMap<&str, usize> = BTreeMap::new();
        let mut holders = BTreeMap::new();
        for (&ip, d) in desired {
            let ranked = &rankings[&ip];
            let wanted = wanted_slots(d.replicas, ranked.len());
            let mut chosen: Vec<&str> = Vec::new();
            for _ in 0..wanted {
                let open = || {
                    ranked
                        .iter()
                        .map(String::as_str)
                        .filter(|n| !chosen.contains(n))
                };
                let pick = open()
                    .find(|n| load.get(n).copied().unwrap_or(0) < cap)
                    .or_else(|| open().next());
                let Some(node) = pick else { break };
                chosen.push(node);
                *load.entry(node).or_default() += 1;
            }
            holders.insert(ip, chosen.into_iter().map(str::to_string).collect());
        }
        Ideal {
            holders,
            rankings,
            cap,
            average: total as f64 / serving as f64,
            total,
        }
    }
}

/// Free slots and the node that should claim each.
pub type Assignment = BTreeMap<(IpAddr, u32), String>;

/// For every free slot, the node that should claim it: an ideal holder of the IP
/// that holds no slot of it yet, else the best-ranked node under the load bound.
pub fn assign(ideal: &Ideal, claims: &Claims, nodes: &BTreeMap<String, NodeValue>) -> Assignment {
    let cap = ideal.cap;
    let mut load = loads(claims, nodes);
    let mut out = BTreeMap::new();
    for (&ip, ranked) in &ideal.rankings {
        let held = claims.get(&ip);
        let wanted = ideal.holders[&ip].len();
        let missing = wanted.saturating_sub(held.map_or(0, |h| h.len()));
        // The common case at rest: every slot taken. Nothing to allocate for it.
        if missing == 0 {
            continue;
        }
        let ranked: Vec<&str> = ranked.iter().map(String::as_str).collect();
        let mut holders: BTreeSet<&str> = held
            .map(|s| s.values().filter_map(|h| h.node.as_deref()).collect())
            .unwrap_or_default();
        let free = (0u32..).filter(|s| held.is_none_or(|h| !h.contains_key(s)));
        for slot in free.take(missing) {
            let open: Vec<&str> = ranked
                .iter()
                .copied()
                .filter(|n| !holders.contains(n))
                .collect();
            let preferred = ideal.holders[&ip]
                .iter()
                .find_map(|n| open.iter().copied().find(|o| o == n));
            let bounded = open
                .iter()
                .copied()
                .find(|n| load.get(n).copied().unwrap_or(0) < cap);
            let Some(node) = preferred.or(bounded).or(open.first().copied()) else {
                break;
            };
            holders.insert(node);
            *load.entry(node).or_default() += 1;
            out.insert((ip, slot), node.to_string());
        }
    }
    out
}

/// Slack for the float products above: 100 × 1.1 is 110.00000000000001, whose ceiling
/// would let a host hold 111 of 300 IPs on 3 hosts without counting as overloaded.
const ROUNDING: f64 = 1e-9;

/// A node below this share of the average load receives IPs when rebalancing. The
/// spread goal is ±10 %: survivors of a lost node stay above it, a new, returning or
/// undrained node starts far below it.
const UNDERLOAD: f64 = 0.9;

/// A holder above this share of the average passes IPs to ideal holders below the load
/// bound. Above the bound yet within ±10 % is left alone: moving costs more.
const OVERLOAD: f64 = 1.1;

/// IPs `me` should hand over to rebalance, each to an ideal holder of the IP that is
/// `stable` (seen for the stabilization window) and holds no slot of it:
/// - fill: the receiver is under-loaded (below [`UNDERLOAD`] of the average) and `me`
///   holds more than one IP more than it; `me` never goes under-loaded itself. A holder
///   at the average must give too, or a returning node stays short when the IPs ranked
///   for it sit on hosts that are not above the average;
/// - overflow: `me` is above [`OVERLOAD`] of the average and the receiver below the
///   load bound: an ideal holder if one is, else the next node in the IP's ranking.
///
/// Survivors of a lost node stay within both, so nothing moves among them; a new,
/// returning or undrained node gets its share.
pub fn handovers(
    ideal: &Ideal,
    claims: &Claims,
    nodes: &BTreeMap<String, NodeValue>,
    me: &str,
    stable: &BTreeSet<String>,
) -> Vec<IpAddr> {
    // Loads are judged against the stable serving nodes only: a node back for less than
    // the stabilization window would lower the average at once and make the others
    // pass IPs among themselves, which then move again to it once it is stable.
    let stable_serving = nodes
        .iter()
        .filter(|(n, v)| stable.contains(*n) && !v.draining && !v.interfaces.is_empty())
        .count();
    let (average, cap) = match stable_serving {
        0 => (ideal.average, ideal.cap),
        k => {
            let average = ideal.total as f64 / k as f64;
            (average, (average * LOAD_FACTOR - ROUNDING).ceil() as usize)
        }
    };
    let underloaded_below = (average * UNDERLOAD + ROUNDING).floor();
    let overloaded_above = (average * OVERLOAD - ROUNDING).ceil();
    let mut load = loads(claims, nodes);
    let mut mine = load.get(me).copied().unwrap_or(0);
    let mut out = Vec::new();
    for (&ip, holders) in &ideal.holders {
        if mine as f64 <= underloaded_below {
            break;
        }
        let slots = claims.get(&ip);
        let held_by =
            |n: &str| slots.is_some_and(|s| s.values().any(|h| h.node.as_deref() == Some(n)));
        if !held_by(me) || holders.iter().any(|n| n == me) {
            continue;
        }
        let load_of = |n: &str, load: &BTreeMap<&str, usize>| load.get(n).copied().unwrap_or(0);
        let open = |n: &&String| !held_by(n) && stable.contains(*n);
        let fill = holders.iter().filter(open).find(|n| {
            let theirs = load_of(n, &load);
            (theirs as f64) < underloaded_below && mine > theirs + 1
        });
        // Overflow may go past the ideal holders, down the IP's ranking: the ideal
        // holders of an overloaded host's IPs can all be at the bound themselves.
        let overflow = (mine as f64 > overloaded_above)
            .then(|| {
                let ranked = ideal.rankings.get(&ip).into_iter().flatten();
                holders
                    .iter()
                    .chain(ranked)
                    .filter(open)
                    .find(|n| load_of(n, &load) < cap)
            })
            .flatten();
        let receiver = fill.or(overflow);
        if let Some(n) = receiver {
            *load.entry(n.as_str()).or_default() += 1;
            mine -= 1;
            out.push(ip);
        }
    }
    out
}

#[cfg(test)]
mod tests;
