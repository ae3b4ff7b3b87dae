//! Turning plans into netlink and etcd calls.

use std::time::{Instant, SystemTime};

use tracing::{error, info, warn};

use super::Agent;
use crate::model::ClaimValue;
use crate::plan::{eligibility, plan, Action, Holder, Me, Mode, World};
use crate::store::{Store, StoreError};

/// Plan and execute at most this many times per wake-up: claim then add needs two,
/// a failing netlink call must not spin.
const MAX_ROUNDS: usize = 4;

impl Agent {
    fn me(&self, mode: Mode) -> Me<'_> {
        Me {
            node: &self.cfg.node,
            lease: self.lease,
            ifindex: self.ifindex,
            interface: &self.cfg.interface,
            allowed: &self.cfg.allowed,
            mode,
        }
    }

    fn current_mode(&self) -> Mode {
        if self.lease.is_some() && self.clock.is_safe(Instant::now()) {
            Mode::Serve
        } else {
            Mode::Fenced
        }
    }

    /// Remove every address this agent added, without touching etcd.
    pub(super) async fn drop_addresses(&mut self, why: &str) {
        let owned = match self.net.owned_addresses().await {
            Ok(owned) => owned,
            Err(e) => return error!(error = %e, "cannot list addresses to drop them"),
        };
        if !owned.is_empty() {
            warn!(count = owned.len(), why, "removing extip addresses");
        }
        let world = World {
            desired: &self.view.desired,
            claims: &self.view.claims,
            owned: &owned,
        };
        for action in plan(&self.me(Mode::Fenced), &world) {
            if let Action::RemoveAddress(a) = action {
                self.remove_address(a, why).await;
            }
        }
    }

    /// Plan and execute until converged (or [`MAX_ROUNDS`]).
    pub(super) async fn reconcile(
        &mut self,
        mut store: Option<&mut Store>,
    ) -> Result<(), StoreError> {
        self.report_ineligible();
        for _ in 0..MAX_ROUNDS {
            let owned = match self.net.owned_addresses().await {
                Ok(owned) => owned,
                Err(e) => {
                    error!(error = %e, "cannot list addresses; retrying at the next event");
                    return Ok(());
                }
            };
            let world = World {
                desired: &self.view.desired,
                claims: &self.view.claims,
                owned: &owned,
            };
            let actions = plan(&self.me(self.current_mode()), &world);
            if actions.is_empty() {
                return Ok(());
            }
            for action in actions {
                self.execute(action, store.as_deref_mut()).await?;
            }
        }
        Ok(())
    }

    async fn execute(
        &mut self,
        action: Action,
        store: Option<&mut Store>,
    ) -> Result<(), StoreError> {
        match action {
            Action::RemoveAddress(a) => self.remove_address(a, "not held").await,
            Action::AddAddress(a) => match self.net.add(a).await {
                Ok(()) => info!(address = %a, interface = %self.cfg.interface, "address added"),
                Err(e) => error!(error = %e, "cannot add address"),
            },
            Action::Claim { ip, slot } => {
                if let (Some(store), Some(lease)) = (store, self.lease) {
                    self.claim(store, ip, slot, lease).await?;
                }
            }
            Action::Release { ip, slot } => {
                if let (Some(store), Some(lease)) = (store, self.lease) {
                    store
                        .delete_if_lease(&self.keys.claim(ip, slot), lease)
                        .await?;
                    self.view.remove_claim(ip, slot);
                    info!(%ip, slot, "claim released");
                }
            }
        }
        Ok(())
    }

    async fn remove_address(&mut self, a: crate::plan::LocalAddress, why: &str) {
        match self.net.remove(a).await {
            Ok(()) => info!(address = %a, why, "address removed"),
            Err(e) => error!(error = %e, "cannot remove address"),
        }
    }

    async fn claim(
        &mut self,
        store: &mut Store,
        ip: std::net::IpAddr,
        slot: u32,
        lease: i64,
    ) -> Result<(), StoreError> {
        let value = ClaimValue {
            node: self.cfg.node.clone(),
            since: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        };
        let value = serde_json::to_vec(&value).expect("claim value serializes");
        let outcome = store
            .create_if_absent(&self.keys.claim(ip, slot), &value, lease)
            .await?;
        if outcome.created {
            info!(%ip, slot, "claim won");
            let holder = Holder {
                node: Some(self.cfg.node.clone()),
                lease,
            };
            self.view.set_claim(ip, slot, holder);
        } else if let Some(existing) = outcome.existing {
            let holder = self.view.holder_of(&existing);
            self.view.set_claim(ip, slot, holder);
        }
        Ok(())
    }

    /// Log once why a desired IP is not served here.
    fn report_ineligible(&mut self) {
        let me = self.me(Mode::Serve);
        let mut now_ineligible = std::collections::HashMap::new();
        for (&ip, desired) in &self.view.desired {
            if let Err(reason) = eligibility(&me, ip, desired) {
                if self.ineligible.get(&ip) != Some(&reason) {
                    warn!(%ip, reason = %reason, "desired IP not served by this agent");
                }
                now_ineligible.insert(ip, reason);
            }
        }
        self.ineligible = now_ineligible;
    }
}
