//! The ideal placement: every desired IP ranked over the nodes and given holders under
//! the load bound. Rankings and holders of all IPs lie in two shared lists (nodes as
//! indices), so 100,000 IPs over 100 nodes take two allocations, not two per IP.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::{ip_hash, node_can_serve, serves_at_all, weight_after, LOAD_FACTOR, ROUNDING};
use crate::model::{DesiredIp, NodeValue, Replicas};
use crate::observed::{Claims, Holder};

/// A node's position in [`Ideal`]'s node list, which is sorted by name: index order is
/// name order, the rankings' tie-break.
pub(super) type NodeIndex = u32;

/// How many slots an IP wants given how many nodes can serve it.
fn wanted_slots(replicas: Replicas, candidates: usize) -> usize {
    match replicas {
        Replicas::Count(n) => (n as usize).min(candidates),
        Replicas::All => candidates,
    }
}

/// How many nodes can serve at all: not draining, with an interface.
fn serving(nodes: &BTreeMap<String, NodeValue>) -> usize {
    nodes.values().filter(|n| serves_at_all(n)).count()
}

/// One IP in the ideal placement: where its ranking and holders lie in the shared lists.
#[derive(Debug, Clone, PartialEq)]
struct IdealIp {
    ip: IpAddr,
    /// How many holders it asks for.
    replicas: Replicas,
    /// Its ranking: `Ideal::rankings[ranking.0..ranking.1]`.
    ranking: (u32, u32),
    /// Its ideal holders: `Ideal::holders[holders.0..holders.1]`.
    holders: (u32, u32),
}

/// One IP's ranking and ideal holders, as [`Ideal::entries`] yields them.
pub(super) struct IdealEntry<'a> {
    /// Every node that can serve the IP, best-ranked first.
    pub ranking: &'a [NodeIndex],
    /// Its ideal holders, best first.
    pub holders: &'a [NodeIndex],
}

/// The balanced placement from scratch, and what it was computed from. It depends only
/// on the desired IPs and the nodes, so an agent computes it once per change of either,
/// not on every planning pass; it ignores claims. Rebalancing steers to it; free slots
/// go to it once every node is at the average (see [`super::assign`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ideal {
    /// The nodes it was computed for, sorted by name.
    names: Vec<String>,
    /// Those nodes' records, which [`Ideal::without`] checks a smaller set against.
    nodes: BTreeMap<String, NodeValue>,
    /// Every desired IP, sorted.
    ips: Vec<IdealIp>,
    /// Every IP's ranking, one after another.
    rankings: Vec<NodeIndex>,
    /// Every IP's ideal holders, one after another.
    holders: Vec<NodeIndex>,
    /// The load bound.
    pub(super) cap: usize,
    /// Slots per serving node.
    pub(super) average: f64,
    /// Slots wanted in all.
    pub(super) total: usize,
}

impl Ideal {
    /// Rank every IP and place it under the load bound.
    pub fn new(desired: &BTreeMap<IpAddr, DesiredIp>, nodes: &BTreeMap<String, NodeValue>) -> Self {
        let (ips, rankings) = rank_all(desired, nodes);
        Ideal::place(ips, rankings, nodes)
    }

    /// The same as [`Ideal::new`] over `nodes` when `nodes` are some of this
    /// placement's nodes, unchanged, and the desired IPs did not change (the caller's
    /// part); `None` otherwise. A node's weights do not depend on the others, so each
    /// ranking only loses the nodes that went: no hashing, no eligibility checks. This
    /// is what survivors compute when a host is lost, before they claim its IPs.
    pub fn without(&self, nodes: &BTreeMap<String, NodeValue>) -> Option<Self> {
        let kept = nodes.len() < self.nodes.len()
            && nodes
                .iter()
                .all(|(name, n)| self.nodes.get(name) == Some(n));
        if !kept {
            return None;
        }
        // Old index to new: the kept names stay in name order.
        let mut next = 0;
        let renumbered: Vec<Option<NodeIndex>> = self
            .names
            .iter()
            .map(|name| {
                nodes.contains_key(name).then(|| {
                    next += 1;
                    next - 1
                })
            })
            .collect();
        let mut rankings = Vec::with_capacity(self.ips.len() * nodes.len());
        let ips = self
            .ips
            .iter()
            .map(|e| {
                let start = rankings.len() as u32;
                let old = &self.rankings[e.ranking.0 as usize..e.ranking.1 as usize];
                rankings.extend(old.iter().filter_map(|&i| renumbered[i as usize]));
                IdealIp {
                    ranking: (start, rankings.len() as u32),
                    ..e.clone()
                }
            })
            .collect();
        Some(Ideal::place(ips, rankings, nodes))
    }

    /// Choose every IP's ideal holders from its ranking, in IP order, under the load
    /// bound.
    fn place(
        mut ips: Vec<IdealIp>,
        rankings: Vec<NodeIndex>,
        nodes: &BTreeMap<String, NodeValue>,
    ) -> Self {
        let ranked = |e: &IdealIp| &rankings[e.ranking.0 as usize..e.ranking.1 as usize];
        let total: usize = ips
            .iter()
            .map(|e| wanted_slots(e.replicas, ranked(e).len()))
            .sum();
        let serving = serving(nodes).max(1);
        let bound = (total as f64 / serving as f64) * LOAD_FACTOR;
        let cap = (bound - ROUNDING).ceil() as usize;
        let mut load = vec![0usize; nodes.len()];
        let mut holders = Vec::with_capacity(total);
        for e in &mut ips {
            let start = holders.len();
            let wanted = wanted_slots(e.replicas, ranked(e).len());
            choose_holders(ranked(e), wanted, cap, &mut load, &mut holders);
            e.holders = (start as u32, holders.len() as u32);
        }
        Ideal {
            names: nodes.keys().cloned().collect(),
            nodes: nodes.clone(),
            ips,
            rankings,
            holders,
            cap,
            average: total as f64 / serving as f64,
            total,
        }
    }

    /// The node records it was computed for.
    pub fn nodes(&self) -> &BTreeMap<String, NodeValue> {
        &self.nodes
    }

    /// Every IP with its ranking and ideal holders, in IP order.
    pub(super) fn entries(&self) -> impl Iterator<Item = (IpAddr, IdealEntry<'_>)> {
        self.ips.iter().map(|e| (e.ip, self.entry_of(e)))
    }

    /// The ranking and ideal holders of `ip`, if it is desired.
    pub(super) fn entry(&self, ip: IpAddr) -> Option<IdealEntry<'_>> {
        let found = self.ips.binary_search_by(|e| e.ip.cmp(&ip)).ok()?;
        Some(self.entry_of(&self.ips[found]))
    }

    fn entry_of(&self, e: &IdealIp) -> IdealEntry<'_> {
        IdealEntry {
            ranking: &self.rankings[e.ranking.0 as usize..e.ranking.1 as usize],
            holders: &self.holders[e.holders.0 as usize..e.holders.1 as usize],
        }
    }

    /// The ideal holders of `ip`, best first (none for an IP not desired).
    pub fn holders(&self, ip: IpAddr) -> Vec<&str> {
        self.entry(ip)
            .map(|e| e.holders.iter().map(|&i| self.name(i)).collect())
            .unwrap_or_default()
    }

    /// The nodes it was computed for, by index.
    pub(super) fn names(&self) -> &[String] {
        &self.names
    }

    /// The name of the node at `index`.
    pub(super) fn name(&self, index: NodeIndex) -> &str {
        &self.names[index as usize]
    }

    /// The index of the node `name`, if the placement was computed with it.
    pub(super) fn index(&self, name: &str) -> Option<NodeIndex> {
        let found = self.names.binary_search_by(|n| n.as_str().cmp(name));
        found.ok().map(|i| i as NodeIndex)
    }

    /// Held slots per node index, counting only holders among `nodes` (the live ones).
    pub(super) fn loads(&self, claims: &Claims, nodes: &BTreeMap<String, NodeValue>) -> Vec<usize> {
        // One hash of a short name per claim, not two searches comparing strings.
        let live: fnv::FnvHashMap<&str, usize> = (self.names.iter().enumerate())
            .filter(|(_, name)| nodes.contains_key(*name))
            .map(|(i, name)| (name.as_str(), i))
            .collect();
        let mut load = vec![0usize; self.names.len()];
        let holders = claims.values().flat_map(|slots| slots.values());
        for node in holders.filter_map(|h| h.node.as_deref()) {
            if let Some(&i) = live.get(node) {
                load[i] += 1;
            }
        }
        load
    }

    /// The indices of the nodes holding one of `slots` (those the placement knows).
    pub(super) fn held(&self, slots: Option<&BTreeMap<u32, Holder>>) -> Vec<NodeIndex> {
        let holders = slots.into_iter().flat_map(|s| s.values());
        holders
            .filter_map(|h| h.node.as_deref().and_then(|n| self.index(n)))
            .collect()
    }
}

/// Every desired IP's ranking over the nodes that can serve it, in one list. The IP's
/// part of the weight is hashed once and one buffer is reused: this is the planner's
/// hot loop (IPs × nodes weights).
fn rank_all(
    desired: &BTreeMap<IpAddr, DesiredIp>,
    nodes: &BTreeMap<String, NodeValue>,
) -> (Vec<IdealIp>, Vec<NodeIndex>) {
    let mut weighted: Vec<(u64, NodeIndex)> = Vec::with_capacity(nodes.len());
    let mut rankings = Vec::with_capacity(desired.len() * nodes.len());
    let ips = desired
        .iter()
        .map(|(&ip, d)| {
            let ip_part = ip_hash(ip);
            weighted.clear();
            for (i, (name, node)) in nodes.iter().enumerate() {
                if node_can_serve(node, ip, d) {
                    weighted.push((weight_after(&ip_part, name), i as NodeIndex));
                }
            }
            weighted.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            let start = rankings.len() as u32;
            rankings.extend(weighted.iter().map(|&(_, i)| i));
            IdealIp {
                ip,
                replicas: d.replicas,
                ranking: (start, rankings.len() as u32),
                holders: (0, 0),
            }
        })
        .collect();
    (ips, rankings)
}

/// Push the first `wanted` nodes of `ranking` under the load bound `cap` (a full one
/// only when every node is) onto `out`, counted into `load`.
fn choose_holders(
    ranking: &[NodeIndex],
    wanted: usize,
    cap: usize,
    load: &mut [usize],
    out: &mut Vec<NodeIndex>,
) {
    let start = out.len();
    for _ in 0..wanted {
        let chosen = &out[start..];
        let open = || ranking.iter().copied().filter(|n| !chosen.contains(n));
        let pick = open()
            .find(|&n| load[n as usize] < cap)
            .or_else(|| open().next());
        let Some(node) = pick else { break };
        out.push(node);
        load[node as usize] += 1;
    }
}
