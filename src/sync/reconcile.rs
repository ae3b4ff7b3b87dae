//! One reconcile of the leader: allocations, desired keys, Service status, Events.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ::kube::Client;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::store::{Store, StoreError};

use super::config::SyncConfig;
use super::connector::Connector;
use super::etcd::{read_state, run_step, write_keys};
use super::family::{per_family, service_of};
use super::ippool::{IpPoolMap, PoolSync};
use super::kube::{
    endpoint_nodes, ingress_ips, is_load_balancer, post_event, set_ingress, view_of, EventType,
    ServiceMap, SliceMap,
};
use super::leader;
use super::metrics::{ResultLabel, SyncMetrics};
use super::plan::{
    allocation_steps, desired_values, key_writes, order_for_replica, Policy, Refusal, ServiceView,
};

/// The data lease and the task that keeps it alive.
struct DataLease {
    id: i64,
    keeper: JoinHandle<()>,
}

/// The leader's working state between reconciles.
pub struct Reconciler {
    connector: Connector,
    client: Client,
    store: Option<Store>,
    lease: Option<DataLease>,
    lease_ttl: Duration,
    retention: Duration,
    allow_external: Vec<ipnet::IpNet>,
    identity: String,
    /// Refusals already reported, so each gets one Event and one log line.
    reported: BTreeSet<Refusal>,
    /// Bad records in etcd already logged (key and reason), so each is logged once.
    bad_logged: BTreeSet<(String, String)>,
    /// IpPools into etcd pools, their status and Events.
    pools: PoolSync,
    metrics: Arc<SyncMetrics>,
}

impl Reconciler {
    /// A reconciler for `cfg`; connects lazily.
    pub fn new(
        connector: Connector,
        client: Client,
        cfg: &SyncConfig,
        metrics: Arc<SyncMetrics>,
    ) -> Self {
        Reconciler {
            connector,
            client,
            store: None,
            lease: None,
            lease_ttl: cfg.lease_ttl,
            retention: cfg.retention,
            allow_external: cfg.allow_external.clone(),
            identity: cfg.identity.clone(),
            reported: BTreeSet::new(),
            bad_logged: BTreeSet::new(),
            pools: PoolSync::default(),
            metrics,
        }
    }

    /// The data lease, granted anew when the old one was lost.
    async fn lease(&mut self, store: &mut Store) -> Result<i64, StoreError> {
        if let Some(l) = self.lease.as_ref().filter(|l| !l.keeper.is_finished()) {
            return Ok(l.id);
        }
        let ttl = self.lease_ttl;
        let id = store.grant(ttl.as_secs() as i64).await?;
        info!(
            lease = format!("{id:x}"),
            ?ttl,
            "desired keys hang on this lease"
        );
        let connector = self.connector.clone();
        let keeper = tokio::spawn(async move {
            loop {
                match connector.connect().await {
                    Ok(mut s) => {
                        let why = leader::keep_alive(&mut s, id, ttl, ttl / 2).await;
                        if matches!(why, StoreError::LeaseNotFound(_)) {
                            warn!(error = %why, "data lease lost; the next reconcile puts the keys on a new one");
                            return;
                        }
                    }
                    Err(e) => warn!(error = %e, "data lease: cannot reach etcd"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        self.lease = Some(DataLease { id, keeper });
        Ok(id)
    }

    /// Bring etcd and the Services' status in line with `services` and their endpoints,
    /// and the etcd pools with `ippools` (`None` while they are not listed whole).
    pub async fn reconcile(
        &mut self,
        services: &ServiceMap,
        slices: &SliceMap,
        ippools: Option<&IpPoolMap>,
    ) -> anyhow::Result<()> {
        let mut store = match self.store.take() {
            Some(s) => s,
            None => self.connector.connect().await?,
        };
        let started = std::time::Instant::now();
        let result = self
            .reconcile_with(&mut store, services, slices, ippools)
            .await;
        let m = &self.metrics;
        m.reconcile_duration
            .observe(started.elapsed().as_secs_f64());
        let label = ResultLabel {
            result: if result.is_ok() { "ok" } else { "error" },
        };
        m.reconciles.get_or_create(&label).inc();
        if result.is_ok() {
            self.store = Some(store);
        }
        result
    }

    async fn reconcile_with(
        &mut self,
        store: &mut Store,
        services: &ServiceMap,
        slices: &SliceMap,
        ippools: Option<&IpPoolMap>,
    ) -> anyhow::Result<()> {
        let keys = self.connector.keys.clone();
        let lease = self.lease(store).await?;
        let verdicts = match ippools {
            Some(p) => Some(self.pools.write(store, &keys, p).await?),
            None => None,
        };
        let mut state = read_state(store, &keys).await?;
        let bad: BTreeSet<(String, String)> = std::mem::take(&mut state.bad).into_iter().collect();
        for (key, why) in bad.difference(&self.bad_logged) {
            warn!(%key, "bad data in etcd: {why}");
        }
        self.bad_logged = bad;
        let endpoints = endpoint_nodes(slices);
        let views: Vec<ServiceView> =
            per_family(services.values().map(|s| view_of(s, &endpoints)).collect());
        let pools = state.pools.clone();
        let policy = Policy {
            pools: &pools,
            allow_external: &self.allow_external,
        };
        let mut refusals = Vec::new();
        // A Service waiting for its sharing group's new IP joins it in the next pass.
        for _pass in 0..3 {
            let (mut steps, more, deferred) =
                allocation_steps(&views, &state.allocations(), &policy);
            refusals = more;
            order_for_replica(&mut steps, &self.identity);
            for step in &steps {
                debug!(?step, "allocation");
                refusals.extend(run_step(store, &keys, &mut state, step, self.retention).await?);
            }
            if !deferred {
                break;
            }
        }
        let lb_ips: BTreeMap<String, IpAddr> = state
            .services
            .iter()
            .filter(|(_, (a, _))| a.released_at.is_none())
            .map(|(svc, (a, _))| (svc.clone(), a.ip))
            .collect();
        self.metrics
            .allocation_races
            .inc_by(std::mem::take(&mut state.races));
        self.metrics.allocations.set(lb_ips.len() as i64);
        let (desired, more) = desired_values(&views, &lb_ips, &policy);
        self.metrics.desired_keys.set(desired.len() as i64);
        refusals.extend(more);
        let writes = key_writes(&desired, &state.desired, lease);
        let raced = write_keys(store, &keys, &writes, lease).await?;
        if !writes.is_empty() {
            info!(
                writes = writes.len(),
                raced,
                desired = desired.len(),
                "desired keys written"
            );
        }
        self.update_status(services, &lb_ips).await;
        if let (Some(p), Some(v)) = (ippools, &verdicts) {
            let live: BTreeSet<IpAddr> = lb_ips.values().copied().collect();
            self.pools
                .report(&self.client, &self.identity, p, v, &live)
                .await;
        }
        self.report(services, refusals).await;
        anyhow::ensure!(
            raced == 0,
            "{raced} desired keys changed while being written"
        );
        Ok(())
    }

    /// Write each LoadBalancer Service's IPs (one per family, its own record's first)
    /// into `status.loadBalancer.ingress`.
    async fn update_status(&self, services: &ServiceMap, lb_ips: &BTreeMap<String, IpAddr>) {
        let mut by_service: BTreeMap<&str, Vec<IpAddr>> = BTreeMap::new();
        for (slot, ip) in lb_ips {
            let ips = by_service.entry(service_of(slot)).or_default();
            if slot.as_str() == service_of(slot) {
                ips.insert(0, *ip);
            } else {
                ips.push(*ip);
            }
        }
        for (name, svc) in services {
            if is_load_balancer(svc) {
                let want = by_service.get(name.as_str()).cloned().unwrap_or_default();
                let have = ingress_ips(svc);
                if have != want.iter().map(ToString::to_string).collect::<Vec<_>>() {
                    match set_ingress(&self.client, svc, &want).await {
                        Ok(()) => {
                            info!(service = %name, ips = ?want, "load-balancer status updated");
                            if !want.is_empty() {
                                let list: Vec<String> =
                                    want.iter().map(ToString::to_string).collect();
                                let text = format!(
                                    "IP {} allocated; written to status.loadBalancer.ingress",
                                    list.join(" and ")
                                );
                                let event = ("IPAllocated", text.as_str(), EventType::Normal);
                                if let Err(e) =
                                    post_event(&self.client, svc, event, &self.identity).await
                                {
                                    warn!(service = %name, error = %e, "cannot post Event");
                                }
                            }
                        }
                        Err(e) => {
                            warn!(service = %name, error = %e, "cannot update load-balancer status")
                        }
                    }
                }
            }
        }
    }

    /// Log and post an Event for each refusal not reported yet; forget solved ones.
    async fn report(&mut self, services: &ServiceMap, refusals: Vec<Refusal>) {
        let now: BTreeSet<Refusal> = refusals.into_iter().collect();
        for r in now.difference(&self.reported) {
            warn!(service = %r.service, reason = r.reason, "{}", r.message);
            if let Some(svc) = services.get(&r.service) {
                let event = (r.reason, r.message.as_str(), EventType::Warning);
                if let Err(e) = post_event(&self.client, svc, event, &self.identity).await {
                    warn!(service = %r.service, error = %e, "cannot post Event");
                }
            }
        }
        self.metrics.refusals.set(now.len() as i64);
        self.reported = now;
    }
}
