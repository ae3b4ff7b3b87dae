//! The agent's side of the precise fence ([`crate::net::fence`]): which IPs stand
//! behind it, and renewing its timeout with the lease.

use std::collections::BTreeSet;
use std::net::IpAddr;

use tracing::{error, warn};

use super::Agent;
use crate::config::EtcdLossPolicy;
use crate::model::Replicas;

impl Agent {
    /// Whether `ip` must go dark with the lease: every IP but a shared one kept
    /// through an etcd outage (`--on-etcd-loss keep`).
    pub(super) fn fenced_ip(&self, ip: IpAddr) -> bool {
        let shared = self
            .view
            .desired
            .get(&ip)
            .is_some_and(|d| d.replicas != Replicas::EXCLUSIVE);
        !(shared && self.cfg.on_etcd_loss == EtcdLossPolicy::Keep)
    }

    /// Let the fenced IPs pass until the fence deadline (the lease's, bounded by the
    /// peers' vouching); fence now when it has passed. Cheap (one netlink batch): done
    /// at every renewal.
    pub(super) fn arm_fence(&mut self) {
        // Unrenewed, the fence closes by itself: the safe direction.
        if let Err(e) = super::fence_clock::lock(&self.fence_clock).open() {
            error!(error = %e, "cannot renew the fence");
        }
    }

    /// Renew the fence if the lease deadline moved since it was last armed.
    pub(super) fn arm_fence_if_renewed(&mut self) {
        let renewed = super::fence_clock::lock(&self.fence_clock).lease_moved();
        if renewed {
            self.arm_fence();
        }
    }

    /// Close the fence at once and keep it closed (deadline passed, lease lost,
    /// stopping with addresses left).
    pub(super) fn close_fence(&mut self) {
        if let Err(e) = super::fence_clock::lock(&self.fence_clock).shut() {
            error!(error = %e, "cannot close the fence");
        }
    }

    /// Make the fence hold exactly the fenced IPs among `owned`: all at once the first
    /// time (the fence may hold a previous run's IPs), then by difference.
    pub(super) fn sync_fence(&mut self, owned: &BTreeSet<IpAddr>) {
        let wanted: BTreeSet<IpAddr> = owned
            .iter()
            .copied()
            .filter(|&ip| self.fenced_ip(ip))
            .collect();
        if !self.fence_synced {
            match self.fence.replace(&wanted) {
                Ok(()) => {
                    self.fenced_ips = wanted;
                    self.fence_synced = true;
                }
                Err(e) => warn!(error = %e, "cannot set the fenced IPs"),
            }
            return;
        }
        let missing: BTreeSet<IpAddr> = wanted.difference(&self.fenced_ips).copied().collect();
        let extra: BTreeSet<IpAddr> = self.fenced_ips.difference(&wanted).copied().collect();
        let added = self.fence.add(&missing);
        let removed = self.fence.remove(&extra);
        match (added, removed) {
            (Ok(()), Ok(())) => self.fenced_ips = wanted,
            (Err(e), _) | (_, Err(e)) => {
                // Start over with one atomic replace at the next reconcile.
                warn!(error = %e, "cannot update the fenced IPs");
                self.fence_synced = false;
            }
        }
    }
}
