//! Adding addresses: where the agent puts an IP on this host. Many at a time (a
//! takeover of a lost host's share is hundreds), fenced first in one nftables batch,
//! then sent to the kernel [`ADDS_IN_FLIGHT`] at a time.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Instant;

use futures::StreamExt;
use tracing::{error, info, warn};

use super::Agent;
use crate::observed::LocalAddress;

/// Netlink add requests in flight at once; also how many go between two checks that
/// the lease deadline has not passed.
const ADDS_IN_FLIGHT: usize = 64;

impl Agent {
    /// Add `batch` (the ones in conflict are skipped); those that are there now go to
    /// `added_now`, for their announcement.
    pub(super) async fn add_addresses(&mut self, batch: &[LocalAddress]) {
        for chunk in batch.chunks(ADDS_IN_FLIGHT) {
            if !self.clock().is_safe(Instant::now()) {
                // A long reconcile can outlast the lease deadline it was planned under.
                warn!(
                    count = chunk.len(),
                    "lease deadline passed; not adding the addresses"
                );
                return;
            }
            let wanted: Vec<LocalAddress> = chunk
                .iter()
                .copied()
                .filter(|a| !self.conflicts.ips.contains(&a.ip))
                .collect();
            let fenced = self.fence_before_adding_all(&wanted);
            let sends: Vec<(LocalAddress, Option<u32>)> = wanted
                .into_iter()
                .filter(|a| fenced.contains(&a.ip))
                .map(|a| (a, self.lifetime_for(a.ip)))
                .collect();
            let net = &self.net;
            let results: Vec<_> = futures::stream::iter(sends)
                .map(|(a, lifetime)| async move { (a, lifetime, net.add(a, lifetime).await) })
                .buffer_unordered(ADDS_IN_FLIGHT)
                .collect()
                .await;
            for (a, lifetime, result) in results {
                match result {
                    Ok(()) => self.note_added(a, lifetime),
                    Err(e) => error!(error = %e, "cannot add address"),
                }
            }
        }
    }

    /// Book an address the kernel took: log, metrics, lifetime, announcement.
    fn note_added(&mut self, a: LocalAddress, lifetime: Option<u32>) {
        info!(address = %a, interface = self.link_name(a.ifindex), lifetime, "address added");
        self.metrics.takeovers.inc();
        if let Some(claimed) = self.claimed_at.remove(&a.ip) {
            let took = claimed.elapsed().as_secs_f64();
            self.metrics.claim_to_address.observe(took);
        }
        self.note_lifetime(lifetime, Instant::now());
        self.added_now.insert(a);
    }

    /// Put the fenced ones among `addresses` into the fence, in one batch; the IPs that
    /// may be added now (all of them, unless the fence refused).
    fn fence_before_adding_all(&mut self, addresses: &[LocalAddress]) -> BTreeSet<IpAddr> {
        let ips: BTreeSet<IpAddr> = addresses.iter().map(|a| a.ip).collect();
        let new: BTreeSet<IpAddr> = ips
            .iter()
            .copied()
            .filter(|&ip| self.fenced_ip(ip) && !self.fenced_ips.contains(&ip))
            .collect();
        if new.is_empty() {
            return ips;
        }
        match self.fence.add(&new) {
            Ok(()) => {
                self.fenced_ips.extend(&new);
                ips
            }
            Err(e) => {
                error!(count = new.len(), error = %e, "cannot fence the IPs; not adding them");
                ips.difference(&new).copied().collect()
            }
        }
    }
}
