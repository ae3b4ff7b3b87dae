//! Turning plans into netlink and etcd calls.

use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use tracing::{debug, error, info, warn};

use super::lease::{backstop_due, backstop_lifetime, backstop_refresh_at};
use super::Agent;
use std::collections::BTreeSet;

use crate::config::EtcdLossPolicy;
use crate::model::ClaimValue;
use crate::net::{route_changes, ExportRoute};
use crate::observed::{Holder, LocalAddress};
use crate::plan::{plan, Action, Me, Mode, World};
use crate::store::{CreateOutcome, Store, StoreError};

/// Lifetime refreshes sent before waiting for their answers.
const REFRESHES_IN_FLIGHT: usize = 64;

/// Plan and execute at most this many times per wake-up: claim then add needs two,
/// a failing netlink call must not spin.
const MAX_ROUNDS: usize = 4;

/// How long a stopping agent waits between withdrawing its routes and removing its
/// addresses: BGP peers (BIRD sends updates at once) move traffic away meanwhile.
pub const EXPORT_DRAIN: Duration = Duration::from_millis(500);

impl Agent {
    pub(super) fn me(&self, mode: Mode) -> Me<'_> {
        Me {
            node: &self.cfg.node,
            lease: self.lease,
            links: &self.links,
            allowed: &self.cfg.allowed,
            mode,
            keep_shared_when_fenced: self.cfg.on_etcd_loss == EtcdLossPolicy::Keep,
            draining: self.draining(),
            give_away: &self.giving_away,
            conflicts: &self.conflicts.ips,
            labels: &self.cfg.labels,
        }
    }

    /// The cluster as the planner sees it, with this host's owned addresses.
    fn world<'a>(
        &'a self,
        owned: &'a BTreeSet<LocalAddress>,
        nodes: &'a std::collections::BTreeMap<String, crate::model::NodeValue>,
    ) -> World<'a> {
        World {
            desired: &self.view.desired,
            claims: &self.view.claims,
            owned,
            nodes,
            overdue: &self.overdue,
            assignment: &self.assignment,
        }
    }

    /// Re-read the interfaces: index (one may have been re-created) and link state.
    async fn check_interfaces(&mut self) {
        for i in 0..self.links.len() {
            let link = self.links[i].clone();
            let (ifindex, up) = match self.net.link_state(&link.name).await {
                Ok(state) => {
                    self.note_port(&link.name, state);
                    (state.ifindex, state.up)
                }
                Err(e) => {
                    if link.up {
                        error!(interface = %link.name, error = %e, "interface gone: giving its IPs away");
                    }
                    (link.ifindex, false)
                }
            };
            if up != link.up {
                warn!(interface = %link.name, up, "interface state changed");
            }
            self.links[i].ifindex = ifindex;
            self.links[i].up = up;
        }
    }

    /// The name of the served interface with this index, for logs.
    pub(super) fn link_name(&self, ifindex: u32) -> &str {
        self.links
            .iter()
            .find(|l| l.ifindex == ifindex)
            .map_or("?", |l| l.name.as_str())
    }

    fn current_mode(&self) -> Mode {
        if self.lease.is_some() && self.clock().is_safe(Instant::now()) {
            Mode::Serve
        } else {
            Mode::Fenced
        }
    }

    /// Without touching etcd, remove the addresses a fenced agent must not keep: all of
    /// them with `everything` (stop, start without a lease), else all but shared IPs
    /// under `--on-etcd-loss keep`.
    pub(super) async fn drop_addresses(&mut self, why: &str, everything: bool) {
        let owned = match self.net.owned_set().await {
            Ok(owned) => owned,
            Err(e) => return error!(error = %e, "cannot list addresses to drop them"),
        };
        if !owned.is_empty() {
            warn!(count = owned.len(), why, "removing extip addresses");
        }
        let nodes = self.view.placement_nodes();
        let world = self.world(&owned, &nodes);
        let mut me = self.me(Mode::Fenced);
        me.keep_shared_when_fenced &= !everything;
        for action in plan(&me, &world) {
            if let Action::RemoveAddress(a) = action {
                self.remove_address(a, why).await;
            }
        }
        self.sync_export_routes().await;
    }

    /// Converge addresses and claims, then mirror the addresses as export routes.
    pub(super) async fn reconcile(
        &mut self,
        mut store: Option<&mut Store>,
    ) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        // This pass sees every change applied so far, the ones that could wait too.
        self.reconcile_soon = None;
        if let Some(store) = store.as_deref_mut() {
            if self.revoked_in_watch() {
                self.revoked(Some(&mut *store)).await;
                return Err(StoreError::LeaseNotFound(self.lease.unwrap_or_default()));
            }
            self.publish_directory();
            self.try_revocations(store).await?;
            self.remove_leaseless_claims(store).await?;
        }
        let converged = self.converge(store.as_deref_mut()).await;
        self.sync_export_routes().await;
        if let Some(store) = store {
            self.publish_node(store).await?;
            self.publish_conflicts(store).await?;
            let due = self.history_due.len();
            if due > 0 && due <= super::history::HISTORY_AT_ONCE {
                self.publish_history(store).await?;
            }
        }
        let took = started.elapsed().as_secs_f64();
        tracing::debug!(took_ms = took * 1000.0, "reconciled");
        self.metrics.reconcile_duration.observe(took);
        converged
    }

    /// A claim key without a lease is nobody's claim (an agent's claims always hang on
    /// its lease) and would block its IP forever: delete it, unless it changed since read.
    async fn remove_leaseless_claims(&mut self, store: &mut Store) -> Result<(), StoreError> {
        let forged: Vec<_> = std::mem::take(&mut self.view.leaseless)
            .into_iter()
            .collect();
        for ((ip, slot), kv) in forged {
            let deleted = store
                .delete_if_unchanged_leaseless(&kv.key, &kv.value, kv.mod_revision)
                .await?;
            if deleted.is_some() {
                let value = String::from_utf8_lossy(&kv.value);
                warn!(key = %kv.key, %value, "claim without a lease deleted: no agent wrote it");
                self.view.released(ip, slot, deleted);
            }
        }
        Ok(())
    }

    /// Before a graceful stop: withdraw every export route and give the routing daemon
    /// and its peers [`EXPORT_DRAIN`] to stop sending traffic here, then drop addresses.
    pub(super) async fn withdraw_export_routes(&mut self) {
        if !self.cfg.export_routes {
            return;
        }
        let routes = match self.net.export_routes().await {
            Ok(routes) => routes,
            Err(e) => return error!(error = %e, "cannot list export routes"),
        };
        for &route in &routes {
            if let Err(e) = self.net.remove_export_route(route).await {
                error!(error = %e, "cannot remove export route");
            }
        }
        if !routes.is_empty() {
            info!(count = routes.len(), drain = ?EXPORT_DRAIN, "export routes withdrawn");
            tokio::time::sleep(EXPORT_DRAIN).await;
        }
    }

    /// Make the export routes (if enabled) mirror the owned addresses exactly.
    pub(super) async fn sync_export_routes(&mut self) {
        if !self.cfg.export_routes {
            return;
        }
        let (owned, have) = match (self.net.owned_set().await, self.net.export_routes().await) {
            (Ok(owned), Ok(have)) => (owned, have),
            (Err(e), _) | (_, Err(e)) => return error!(error = %e, "cannot sync export routes"),
        };
        let wanted: BTreeSet<ExportRoute> = owned
            .iter()
            .map(|a| ExportRoute::of(a.ip, a.ifindex, self.fenced_ip(a.ip)))
            .collect();
        // An IPv6 route whose address went and came back lost its source: it is in
        // neither set alike, so it is removed and added again, announced again.
        let (first_adds, removals, then_adds) = route_changes(&have, &wanted);
        for route in first_adds {
            self.add_export_route(route).await;
        }
        for route in removals {
            match self.net.remove_export_route(route).await {
                Ok(()) => info!(ip = %route.ip, fenced = route.fenced, "export route removed"),
                Err(e) => error!(error = %e, "cannot remove export route"),
            }
        }
        for route in then_adds {
            self.add_export_route(route).await;
        }
    }

    async fn add_export_route(&self, route: ExportRoute) {
        match self.net.add_export_route(route).await {
            Ok(()) => info!(ip = %route.ip, fenced = route.fenced, "export route added"),
            Err(e) => error!(error = %e, "cannot add export route"),
        }
    }

    /// Plan and execute until converged (or [`MAX_ROUNDS`]).
    async fn converge(&mut self, mut store: Option<&mut Store>) -> Result<(), StoreError> {
        // Round 0's time includes this preparation (the ideal placement, assignment).
        let mut round_started = std::time::Instant::now();
        self.check_interfaces().await;
        self.note_host_addresses().await;
        self.check_announce_ports().await;
        self.conflicts.expire(tokio::time::Instant::now());
        self.report_ineligible();
        self.track_free_slots();
        self.plan_handovers();
        // A round that only claimed or released left the address table as it was
        // listed: the next round plans from that listing. A fresh dump lists every
        // address here, and after a host loss it stood between each survivor's claims
        // and its adds.
        let mut unchanged = None;
        for round in 0..MAX_ROUNDS {
            let listed = match unchanged.take() {
                Some(owned) => Ok(owned),
                None => self.net.owned_set().await,
            };
            let owned = match listed {
                Ok(owned) => owned,
                Err(e) => {
                    error!(error = %e, "cannot list addresses; retrying at the next event");
                    return Ok(());
                }
            };
            let nodes = self.view.placement_nodes();
            let world = self.world(&owned, &nodes);
            let actions = plan(&self.me(self.current_mode()), &world);
            // Where a slow reconcile spends its time: listing, planning, or executing.
            debug!(
                round,
                actions = actions.len(),
                before_ms = round_started.elapsed().as_secs_f64() * 1000.0,
                "planned"
            );
            round_started = std::time::Instant::now();
            if actions.is_empty() {
                self.count_held(&owned);
                self.sync_fence(&owned.iter().map(|a| a.ip).collect());
                return Ok(());
            }
            let touches_addresses = actions
                .iter()
                .any(|a| matches!(a, Action::AddAddress(_) | Action::RemoveAddress(_)));
            self.added_now.clear();
            self.probe_before_adding(&actions).await;
            // Claims of distinct slots do not depend on each other nor on the other
            // actions: they go last, many to a transaction. Adds (sorted together, before
            // their announcements) go many at a time too.
            let mut claims = Vec::new();
            let mut adds = Vec::new();
            for action in actions {
                match action {
                    Action::Claim { ip, slot } => claims.push((ip, slot)),
                    Action::AddAddress(a) => adds.push(a),
                    other => {
                        self.add_addresses(&std::mem::take(&mut adds)).await;
                        self.execute(other, store.as_deref_mut()).await?;
                    }
                }
                self.refresh_if_urgent().await;
            }
            self.add_addresses(&adds).await;
            if let (Some(store), Some(lease), false) =
                (store.as_deref_mut(), self.lease, claims.is_empty())
            {
                self.claim(store, &claims, lease).await?;
            }
            unchanged = (!touches_addresses).then_some(owned);
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
            Action::AddAddress(a) => self.add_addresses(&[a]).await,
            Action::Announce(a) => {
                if self.added_now.remove(&a) {
                    self.announce(a);
                }
            }
            Action::Claim { ip, slot } => {
                if let (Some(store), Some(lease)) = (store, self.lease) {
                    self.claim(store, &[(ip, slot)], lease).await?;
                }
            }
            Action::Release { ip, slot } => {
                if let (Some(store), Some(lease)) = (store, self.lease) {
                    let deleted = store
                        .delete_if_lease(&self.keys.claim(ip, slot), lease)
                        .await?;
                    self.view.released(ip, slot, deleted);
                    self.metrics.releases.inc();
                    self.claimed_at.remove(&ip);
                    if self.giving_away.contains(&ip) {
                        self.handed_over.insert(ip, Instant::now());
                    }
                    info!(%ip, slot, "claim released");
                }
            }
        }
        Ok(())
    }

    /// Fenced IPs get the backstop kernel lifetime (whole seconds): if this agent is
    /// killed or frozen, the fence darkens them at once and the kernel removes them
    /// later. Shared IPs kept through etcd outages live until removed.
    pub(super) fn lifetime_for(&self, ip: IpAddr) -> Option<u32> {
        self.fenced_ip(ip)
            .then(|| u32::try_from(self.backstop().as_secs()).unwrap_or(u32::MAX))
    }

    /// The backstop lifetime: `--address-lifetime`, or the default for the lease TTL.
    fn backstop(&self) -> Duration {
        self.cfg
            .address_lifetime
            .unwrap_or_else(|| backstop_lifetime(self.cfg.lease_ttl, self.cfg.export_routes))
    }

    /// Give the backstop lifetime again to the held addresses that used a quarter of it,
    /// and make addresses that must not expire permanent. Only with a lease: without
    /// one, what is left is a previous run's, to be removed, not kept.
    pub(super) async fn refresh_lifetimes(&mut self) {
        self.lifetimes_end = None;
        self.refresh_due = None;
        if self.lease.is_none() {
            return;
        }
        let owned = match self.net.owned_addresses().await {
            Ok(owned) => owned,
            Err(e) => return error!(error = %e, "cannot list addresses to refresh them"),
        };
        let backstop = self.backstop();
        let mut due = Vec::new();
        let now = Instant::now();
        for o in &owned {
            let lifetime = self.lifetime_for(o.address.ip);
            let refresh = match lifetime {
                Some(_) => backstop_due(o.valid_left, backstop),
                None => o.valid_left.is_some(),
            };
            if refresh {
                due.push((o.address, lifetime));
            } else {
                // The kernel reports lifetime minus whole seconds of age: one less is safe.
                self.note_lifetime(o.valid_left.map(|l| l.saturating_sub(1)), now);
            }
        }
        // Many requests in flight at once: each is a netlink round trip through the
        // connection task on another thread, and waiting for each in turn cost a host
        // with a thousand addresses about 1 % of a core at a 20 s lifetime.
        let net = self.net.clone();
        let failed = futures::stream::iter(due.iter().copied())
            .map(|(address, lifetime)| {
                let net = net.clone();
                async move { net.refresh(address, lifetime).await.err() }
            })
            .buffer_unordered(REFRESHES_IN_FLIGHT)
            .filter_map(std::future::ready)
            .collect::<Vec<_>>()
            .await;
        if let Some(e) = failed.first() {
            error!(error = %e, failed = failed.len(), "cannot refresh address lifetimes");
        }
        for (_, lifetime) in &due {
            self.note_lifetime(*lifetime, now);
        }
        debug!(
            held = owned.len(),
            refreshed = due.len(),
            "backstop lifetimes refreshed"
        );
    }

    /// Remember the earliest end of a lifetime set on an owned address, and when the
    /// refresh round for it is due.
    pub(super) fn note_lifetime(&mut self, lifetime: Option<u32>, now: Instant) {
        let Some(secs) = lifetime else { return };
        let end = now + Duration::from_secs(secs.into());
        let earliest = self.lifetimes_end.map_or(end, |e| e.min(end));
        self.lifetimes_end = Some(earliest);
        let backstop = self.backstop();
        self.refresh_due = Some(tokio::time::Instant::from_std(backstop_refresh_at(
            earliest, backstop,
        )));
    }

    async fn remove_address(&mut self, a: LocalAddress, why: &str) {
        match self.net.remove(a).await {
            Ok(()) => info!(address = %a, why, "address removed"),
            Err(e) => error!(error = %e, "cannot remove address"),
        }
    }

    /// Try to create the claim keys of `slots` on `lease`, in batches.
    async fn claim(
        &mut self,
        store: &mut Store,
        slots: &[(IpAddr, u32)],
        lease: i64,
    ) -> Result<(), StoreError> {
        let value = ClaimValue {
            node: self.cfg.node.clone(),
            since: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        };
        let value = serde_json::to_vec(&value).expect("claim value serializes");
        let entries: Vec<(String, Vec<u8>)> = slots
            .iter()
            .map(|&(ip, slot)| (self.keys.claim(ip, slot), value.clone()))
            .collect();
        let outcomes = store.create_many_if_absent(&entries, lease).await?;
        for (&(ip, slot), outcome) in slots.iter().zip(outcomes) {
            self.note_claim(ip, slot, lease, outcome);
        }
        Ok(())
    }

    /// Record what a claim attempt found: won, or held by someone else.
    fn note_claim(&mut self, ip: IpAddr, slot: u32, lease: i64, outcome: CreateOutcome) {
        if outcome.created {
            info!(%ip, slot, "claim won");
            self.metrics.claims_won.inc();
            self.history_due.insert(ip);
            self.history_at
                .get_or_insert_with(|| tokio::time::Instant::now() + super::history::HISTORY_DELAY);
            self.claimed_at.insert(ip, std::time::Instant::now());
            let holder = Holder {
                node: Some(self.cfg.node.clone()),
                lease,
            };
            self.view.claimed(ip, slot, holder, outcome.revision);
        } else if let Some(existing) = outcome.existing {
            self.metrics.claims_lost.inc();
            let holder = self.view.holder_of(&existing);
            self.view.claimed(ip, slot, holder, existing.mod_revision);
        }
    }
}
