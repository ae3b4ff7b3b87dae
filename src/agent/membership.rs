//! This agent's node record: what other agents need to place IPs (and `extip status`
//! shows). Published on the lease and again whenever it changes.

use std::time::{Duration, Instant};

use super::Agent;
use crate::model::NodeValue;
use crate::placement;
use crate::store::{Store, StoreError};

/// How long a free slot may wait for the host placement prefers before any eligible
/// host takes it (that host may be unable to serve it, or its agent may be stuck).
pub const PLACEMENT_GRACE: Duration = Duration::from_secs(1);

impl Agent {
    /// The record as it should be now.
    pub(super) fn node_record(&self) -> NodeValue {
        let interfaces = if self.interface_up {
            vec![self.cfg.interface.clone()]
        } else {
            Vec::new()
        };
        NodeValue {
            node: self.cfg.node.clone(),
            interfaces,
            allowed_cidrs: self.cfg.allowed.clone(),
            labels: Default::default(),
            draining: self.draining(),
            version: env!("CARGO_PKG_VERSION").into(),
            started: self.started.clone(),
        }
    }

    /// Whether an operator drained this node (`extip node drain`).
    pub(super) fn draining(&self) -> bool {
        self.view.drains.contains(&self.cfg.node)
    }

    /// Put the record on the lease if it changed since it was last put.
    pub(super) async fn publish_node(&mut self, store: &mut Store) -> Result<(), StoreError> {
        let Some(lease) = self.lease else {
            return Ok(());
        };
        let record = self.node_record();
        if self.published.as_ref() == Some(&record) {
            return Ok(());
        }
        let value = serde_json::to_vec(&record).expect("node value serializes");
        store
            .put(&self.keys.node(&self.cfg.node), &value, Some(lease))
            .await?;
        self.published = Some(record);
        Ok(())
    }
}

impl Agent {
    /// Note since when each slot has been free; those free past the grace are overdue.
    pub(super) fn track_free_slots(&mut self) {
        let now = Instant::now();
        let nodes = self.view.placement_nodes();
        let free = placement::assign(&self.view.desired, &self.view.claims, &nodes);
        self.free_since.retain(|slot, _| free.contains_key(slot));
        for slot in free.keys() {
            self.free_since.entry(*slot).or_insert(now);
        }
        self.overdue = self
            .free_since
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= PLACEMENT_GRACE)
            .map(|(slot, _)| *slot)
            .collect();
    }

    /// When the next free slot becomes overdue, to plan again then.
    pub(super) fn next_overdue(&self) -> Option<Instant> {
        self.free_since
            .iter()
            .filter(|(slot, _)| !self.overdue.contains(slot))
            .map(|(_, since)| *since + PLACEMENT_GRACE)
            .min()
    }
}
