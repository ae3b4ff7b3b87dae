//! IpPool objects (`kubectl apply`-able pools): the leader copies them into etcd pool keys.
//!
//! etcd stays the agents' only input: an IpPool becomes `<prefix>/pools/<name>` marked
//! `"managed_by": "extip-sync"`, written in guarded transactions; the rules are in
//! [`plan`]. Each reconcile runs [`PoolSync::write`] before the Services are planned (so a
//! new pool serves them in the same pass) and [`PoolSync::report`] after (so the counts
//! include what that pass allocated).

pub mod etcd;
pub mod kube;
pub mod plan;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ::kube::Client;
use tracing::{info, warn};

use crate::model::Keys;
use crate::store::{Store, StoreError};

use plan::{plan_pools, pool_status, IpPoolObject, PoolRefusal, PoolWrite, Verdict};

/// The IpPools known to the watch, keyed by name.
pub type IpPoolMap = BTreeMap<String, IpPoolObject>;

/// What the leader remembers about IpPools between reconciles.
#[derive(Default)]
pub struct PoolSync {
    /// Refusals already posted as Events, so each gets one.
    reported: BTreeSet<PoolRefusal>,
}

impl PoolSync {
    /// Bring the etcd pools in line with `ippools`; the verdict on each IpPool.
    pub async fn write(
        &self,
        store: &mut Store,
        keys: &Keys,
        ippools: &IpPoolMap,
    ) -> Result<BTreeMap<String, Verdict>, StoreError> {
        let (etcd, nodes) = etcd::read_pools(store, keys).await?;
        let (verdicts, writes) = plan_pools(ippools, &etcd, &nodes, true);
        let raced = etcd::write_pools(store, keys, &writes).await?;
        for w in &writes {
            match w {
                PoolWrite::Put { name, .. } => info!(pool = %name, "IpPool written to etcd"),
                PoolWrite::Delete { name, .. } => {
                    info!(pool = %name, "IpPool deleted: its etcd pool removed; allocated IPs stay with their Services")
                }
            }
        }
        if raced > 0 {
            warn!(
                raced,
                "etcd pools changed while IpPools were written; the next reconcile retries"
            );
        }
        Ok(verdicts)
    }

    /// Write each IpPool's status where it changed and post an Event per new refusal.
    pub async fn report(
        &mut self,
        client: &Client,
        identity: &str,
        ippools: &IpPoolMap,
        verdicts: &BTreeMap<String, Verdict>,
        live_ips: &BTreeSet<IpAddr>,
    ) {
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let mut refusals = BTreeSet::new();
        for (name, ippool) in ippools {
            let Some(verdict) = verdicts.get(name) else {
                continue;
            };
            refusals.extend(verdict.refusals.iter().cloned());
            let status = pool_status(ippool, verdict, live_ips, &now);
            if status != ippool.status {
                if let Err(e) = kube::set_status(client, name, &status).await {
                    warn!(pool = %name, error = %e, "cannot write IpPool status");
                }
            }
        }
        for r in refusals.difference(&self.reported) {
            warn!(pool = %r.pool, reason = r.reason, "{}", r.message);
            if let Some(ippool) = ippools.get(&r.pool) {
                let event = (r.reason, r.message.as_str());
                if let Err(e) = kube::warn_on(client, ippool, event, identity).await {
                    warn!(pool = %r.pool, error = %e, "cannot post Event");
                }
            }
        }
        self.reported = refusals;
    }
}
