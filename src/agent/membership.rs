//! This agent's node record: what other agents need to place IPs (and `extip status`
//! shows). Published on the lease and again whenever it changes.

use std::time::{Duration, Instant};

use super::Agent;
use crate::model::NodeValue;
use crate::placement;

/// How long a free slot may wait for the host placement prefers before any eligible
/// host takes it (that host may be unable to serve it, or its agent may be stuck).
pub const PLACEMENT_GRACE: Duration = Duration::from_secs(1);

/// Rebalancing pace per agent: at most this many hand-overs per [`HANDOVER_PERIOD`],
/// so a cluster never moves everything at once.
pub const HANDOVER_BATCH: usize = 5;
/// See [`HANDOVER_BATCH`].
pub const HANDOVER_PERIOD: Duration = Duration::from_millis(500);

/// How long a free slot counts as being filled, which holds rebalancing back. A slot
/// free for longer is stuck (every eligible host refuses it, say for an address
/// conflict on the segment) and must not stop rebalancing everywhere for good.
pub const FILLING_WINDOW: Duration = Duration::from_secs(5);

/// Until when free slots are still being filled (those free for less than
/// [`FILLING_WINDOW`]); `None` when none is.
pub fn filling_until<'a>(
    free_since: impl IntoIterator<Item = &'a Instant>,
    now: Instant,
) -> Option<Instant> {
    free_since
        .into_iter()
        .map(|since| *since + FILLING_WINDOW)
        .filter(|until| *until > now)
        .max()
}

/// The ideal placement and the view it was computed from.
#[derive(Debug, Default)]
pub(super) struct CurrentIdeal {
    /// The placement.
    pub ideal: placement::Ideal,
    /// The view's generation then; `u64::MAX` before the first.
    pub generation: u64,
    /// The view's desired version then.
    pub desired_version: u64,
}

impl CurrentIdeal {
    /// None yet: the first reconcile computes it.
    pub fn none() -> Self {
        CurrentIdeal {
            generation: u64::MAX,
            ..Default::default()
        }
    }
}

/// How long an agent leaves an IP it handed over to its receiver, even when the slot
/// is overdue: a busy receiver must not make the IP bounce back (and then move again).
/// Other hosts still take it after [`PLACEMENT_GRACE`] if the receiver never does.
pub const HANDBACK_HOLDOFF: Duration = Duration::from_secs(10);

impl Agent {
    /// The record as it should be now.
    pub(super) fn node_record(&self) -> NodeValue {
        let interfaces = self.links.iter().filter(|l| l.up);
        NodeValue {
            node: self.cfg.node.clone(),
            interfaces: interfaces.map(|l| l.name.clone()).collect(),
            default_interface: self.links.first().map(|l| l.name.clone()),
            allowed_cidrs: self.cfg.allowed.clone(),
            labels: self.cfg.labels.clone(),
            draining: self.draining() || self.leaving,
            version: env!("CARGO_PKG_VERSION").into(),
            started: self.started.clone(),
            host_addresses: self.host_addresses.clone(),
            etcd_addresses: self.etcd_addresses.clone(),
            leaving: self.leaving,
            peer: self.peer_addr,
            // What was last written: publish_node decides what to write next.
            vouch: self.published.as_ref().and_then(|r| r.vouch.clone()),
        }
    }

    /// Read the host's own addresses again if they may have changed, and let the view
    /// refuse them (and the etcd endpoints) before etcd echoes this node's record.
    pub(super) async fn note_host_addresses(&mut self) {
        if self.host_addresses_stale {
            match self.net.host_addresses().await {
                Ok(found) => {
                    self.host_addresses = found
                        .into_iter()
                        .filter(|&ip| crate::model::publishable_host_address(ip))
                        .collect();
                    self.host_addresses_stale = false;
                }
                Err(e) => tracing::error!(error = %e, "cannot list the host's own addresses"),
            }
        }
        self.view.set_local(self.node_record());
    }

    /// Whether an operator drained this node (`extip node drain`).
    pub(super) fn draining(&self) -> bool {
        self.view.drains.contains(&self.cfg.node)
    }
}

impl Agent {
    /// Note since when each slot has been free; those free past the grace are overdue.
    pub(super) fn track_free_slots(&mut self) {
        let now = Instant::now();
        self.refresh_ideal();
        let nodes = self.view.placement_nodes();
        self.assignment = placement::assign(&self.ideal.ideal, &self.view.claims, &nodes);
        let free = &self.assignment;
        self.free_since.retain(|slot, _| free.contains_key(slot));
        for slot in free.keys() {
            self.free_since.entry(*slot).or_insert(now);
        }
        self.handed_over
            .retain(|_, at| now.duration_since(*at) < HANDBACK_HOLDOFF);
        let handed_over = &self.handed_over;
        self.overdue = self
            .free_since
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= PLACEMENT_GRACE)
            .map(|(slot, _)| *slot)
            .filter(|(ip, _)| !handed_over.contains_key(ip))
            .collect();
        self.note_unclaimed(now);
    }

    /// Track desired IPs without any claim (whoever should take them) and publish
    /// since when the oldest has been so.
    fn note_unclaimed(&mut self, now: Instant) {
        let claims = &self.view.claims;
        let desired = &self.view.desired;
        self.unclaimed_since
            .retain(|ip, _| desired.contains_key(ip) && !claims.contains_key(ip));
        for (ip, _) in crate::sorted::missing_from(desired, claims) {
            self.unclaimed_since.entry(*ip).or_insert(now);
        }
        let oldest = self.unclaimed_since.values().min().copied();
        self.metrics.note_unclaimed_since(oldest);
    }

    /// Recompute the ideal placement if desired IPs, nodes, drains or pools changed;
    /// when only nodes went (a host lost), derive it from the last one instead.
    pub(super) fn refresh_ideal(&mut self) {
        let current = &self.ideal;
        if current.generation == self.view.generation {
            return;
        }
        let nodes = self.view.placement_nodes();
        let same_desired = current.desired_version == self.view.desired_version;
        let ideal = if same_desired && current.ideal.nodes() == &nodes {
            // A change placement ignores (a pool no desired IP uses, say).
            std::mem::take(&mut self.ideal.ideal)
        } else if let Some(derived) = same_desired
            .then(|| current.ideal.without(&nodes))
            .flatten()
        {
            derived
        } else {
            placement::Ideal::new(&self.view.desired, &nodes)
        };
        self.ideal = CurrentIdeal {
            ideal,
            generation: self.view.generation,
            desired_version: self.view.desired_version,
        };
    }

    /// When the next free slot becomes overdue, to plan again then.
    pub(super) fn next_overdue(&self) -> Option<Instant> {
        self.free_since
            .iter()
            .filter(|(slot, _)| !self.overdue.contains(slot))
            .map(|((ip, _), since)| {
                let held_off = self.handed_over.get(ip).map(|at| *at + HANDBACK_HOLDOFF);
                (*since + PLACEMENT_GRACE).max(held_off.unwrap_or(*since))
            })
            .min()
    }
}

impl Agent {
    /// Nodes seen for at least the stabilization window.
    fn stable_nodes(&mut self, now: Instant) -> std::collections::BTreeSet<String> {
        let live = &self.view.nodes;
        self.first_seen.retain(|name, _| live.contains_key(name));
        for name in live.keys() {
            self.first_seen.entry(name.clone()).or_insert(now);
        }
        let window = self.cfg.stabilization;
        self.first_seen
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= window)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Choose the next IPs to hand over, within the rate limit; forget finished ones.
    pub(super) fn plan_handovers(&mut self) {
        let now = Instant::now();
        let stable = self.stable_nodes(now);
        let me = self.cfg.node.clone();
        let claims = &self.view.claims;
        let still_mine = |ip: &std::net::IpAddr| {
            claims
                .get(ip)
                .is_some_and(|s| s.values().any(|h| h.node.as_deref() == Some(me.as_str())))
        };
        self.giving_away.retain(|ip| still_mine(ip));
        let paced = self
            .last_handover
            .is_some_and(|t| now.duration_since(t) < HANDOVER_PERIOD);
        // Rebalance only in a steady state: not while free slots are still being filled.
        let filling = filling_until(self.free_since.values(), now).is_some();
        if !self.giving_away.is_empty() || paced || filling || self.lease.is_none() {
            return;
        }
        let nodes = self.view.placement_nodes();
        let moves = placement::handovers(&self.ideal.ideal, claims, &nodes, &me, &stable);
        if moves.is_empty() {
            return;
        }
        let batch = moves.len().min(HANDOVER_BATCH);
        tracing::info!(
            batch,
            pending = moves.len(),
            "rebalancing: handing IPs over"
        );
        self.giving_away
            .extend(moves.into_iter().take(HANDOVER_BATCH));
        self.last_handover = Some(now);
    }

    /// When rebalancing may need another look: a node turning stable, the pace, or the
    /// last free slot no longer counting as being filled.
    pub(super) fn next_rebalance(&self) -> Option<Instant> {
        let now = Instant::now();
        let window = self.cfg.stabilization;
        let stabilizing = self
            .first_seen
            .values()
            .map(|since| *since + window)
            .filter(|at| *at > now);
        let paced = self
            .last_handover
            .map(|t| t + HANDOVER_PERIOD)
            .filter(|at| *at > now);
        let filled = filling_until(self.free_since.values(), now);
        stabilizing.chain(paced).chain(filled).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stuck_free_slot_stops_holding_rebalancing_back() {
        let now = Instant::now();
        let young = now - Duration::from_secs(1);
        let stuck = now - FILLING_WINDOW - Duration::from_secs(1);
        assert_eq!(
            filling_until([&young, &stuck], now),
            Some(young + FILLING_WINDOW)
        );
        assert_eq!(
            filling_until([&stuck], now),
            None,
            "a stuck slot is not being filled"
        );
        assert_eq!(filling_until([], now), None);
    }
}
