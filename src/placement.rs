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

use crate::model::{DesiredIp, NodeValue, KUBERNETES_NODE_LABEL};
use crate::observed::Claims;

mod ideal;
pub use ideal::Ideal;
use ideal::NodeIndex;

/// Load bound: a node above `ceil(average × 1.05)` passes a slot to its next-ranked node.
const LOAD_FACTOR: f64 = 1.05;

/// The rendezvous weight of `node` for `ip`: FNV-1a over both, then a 64-bit finalizer
/// for good mixing. Stable across versions and platforms, unlike std's hashers.
pub fn weight(ip: IpAddr, node: &str) -> u64 {
    weight_after(&ip_hash(ip), node)
}

/// FNV-1a's state after the IP's part of [`weight`], the same for every node: computed
/// once per IP (FNV-1a's whole state is this one word).
fn ip_hash(ip: IpAddr) -> u64 {
    let mut h = fnv::FnvHasher::default();
    h.write(ip.to_string().as_bytes());
    h.write(&[0]);
    h.finish()
}

/// [`weight`] finished for `node` from the IP's part.
fn weight_after(ip_hash: &u64, node: &str) -> u64 {
    let mut h = fnv::FnvHasher::with_key(*ip_hash);
    h.write(node.as_bytes());
    let mut x = h.finish();
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// Whether a node serves at all: not draining, with an interface up.
fn serves_at_all(node: &NodeValue) -> bool {
    !node.draining && !node.interfaces.is_empty()
}

/// Whether the node described by `node` can serve `ip` as `desired` asks.
pub fn node_can_serve(node: &NodeValue, ip: IpAddr, desired: &DesiredIp) -> bool {
    if !serves_at_all(node) {
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

/// Free slots and the node that should claim each.
pub type Assignment = BTreeMap<(IpAddr, u32), String>;

/// For every free slot, the node that should claim it: the best-ranked node below the
/// average load (held slots count), else an ideal holder of the IP that holds no slot
/// of it yet, else the best-ranked node under the load bound.
///
/// The average comes first because held slots never move here: when desired IPs
/// arrive over time (100 to a transaction), the ideal of the whole set keeps changing
/// and hands a node IPs that others already hold, while the new IPs go elsewhere; a
/// node short of the average then got nothing new (110 of an average of 300 in the
/// unit test). Filling up to the average keeps every batch level, and after a lost
/// host its IPs go to their best-ranked survivors below the new average.
pub fn assign(ideal: &Ideal, claims: &Claims, nodes: &BTreeMap<String, NodeValue>) -> Assignment {
    let cap = ideal.cap;
    let level = (ideal.average - ROUNDING).ceil() as usize;
    let mut load = ideal.loads(claims, nodes);
    let mut out = BTreeMap::new();
    // Both maps are sorted by IP: walk the claims alongside instead of searching them.
    for (ip, entry, held) in crate::sorted::alongside(ideal.entries(), claims) {
        let missing = entry
            .holders
            .len()
            .saturating_sub(held.map_or(0, |h| h.len()));
        // The common case at rest: every slot taken. Nothing to allocate for it.
        if missing == 0 {
            continue;
        }
        let mut holders = ideal.held(held);
        let free = (0u32..).filter(|s| held.is_none_or(|h| !h.contains_key(s)));
        for slot in free.take(missing) {
            let open = || {
                entry
                    .ranking
                    .iter()
                    .copied()
                    .filter(|n| !holders.contains(n))
            };
            let below_average = open().find(|&n| load[n as usize] < level);
            let preferred = || entry.holders.iter().copied().find(|n| !holders.contains(n));
            let bounded = || open().find(|&n| load[n as usize] < cap);
            let choice = below_average
                .or_else(preferred)
                .or_else(bounded)
                .or_else(|| open().next());
            let Some(node) = choice else {
                break;
            };
            holders.push(node);
            load[node as usize] += 1;
            out.insert((ip, slot), ideal.name(node).to_string());
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
        .filter(|(n, v)| stable.contains(*n) && serves_at_all(v))
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
    let mut load = ideal.loads(claims, nodes);
    let me_index = ideal.index(me);
    let mut mine = match me_index {
        Some(i) => load[i as usize],
        None => 0,
    };
    let is_stable: Vec<bool> = ideal.names().iter().map(|n| stable.contains(n)).collect();
    let mut out = Vec::new();
    for (ip, entry) in ideal.entries() {
        if mine as f64 <= underloaded_below {
            break;
        }
        let held_by_me = claims
            .get(&ip)
            .is_some_and(|s| s.values().any(|h| h.node.as_deref() == Some(me)));
        if !held_by_me || me_index.is_some_and(|i| entry.holders.contains(&i)) {
            continue;
        }
        let held = ideal.held(claims.get(&ip));
        let open = |n: &NodeIndex| !held.contains(n) && is_stable[*n as usize];
        let fill = entry.holders.iter().filter(|n| open(n)).find(|&&n| {
            let theirs = load[n as usize];
            (theirs as f64) < underloaded_below && mine > theirs + 1
        });
        // Overflow may go past the ideal holders, down the IP's ranking: the ideal
        // holders of an overloaded host's IPs can all be at the bound themselves.
        let overflow = (mine as f64 > overloaded_above)
            .then(|| {
                let down_the_ranking = entry.holders.iter().chain(entry.ranking.iter());
                down_the_ranking
                    .filter(|n| open(n))
                    .find(|&&n| load[n as usize] < cap)
            })
            .flatten();
        if let Some(&n) = fill.or(overflow) {
            load[n as usize] += 1;
            mine -= 1;
            out.push(ip);
        }
    }
    out
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod without_tests;
