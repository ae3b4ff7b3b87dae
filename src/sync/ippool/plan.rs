//! What extip-sync does with the IpPools it sees: which become etcd pools, which are
//! refused and why, which managed etcd pools go, and the status each IpPool shows. Pure.
//!
//! The rules, in the order they are checked (oldest IpPool first, then by name):
//! a spec the etcd contract refuses is `InvalidSpec`; a name an etcd pool written by
//! hand already has is `NameTaken` (that pool is never touched); a CIDR that overlaps a
//! hand-written pool or an older accepted IpPool is `Overlapping`. A refusal writes
//! nothing and removes nothing: an IpPool that was accepted before keeps its etcd pool
//! until it is fixed or deleted. Only deleting the IpPool deletes its etcd pool.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::model::{ContractError, NodeValue, MANAGED_BY_SYNC};
use crate::pools::{parse_pool, Pool};
use crate::sync::free_ip::usable_addresses;

/// The spec of an IpPool, named as Kubernetes users write it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpPoolSpec {
    /// Addresses of the pool.
    pub cidr: String,
    /// Prefix length its IPs are configured with.
    #[serde(default)]
    pub mask: Option<Value>,
    /// Interface its IPs go on.
    #[serde(default)]
    pub interface: Option<String>,
    /// Replicas of its IPs: a number or `"all"`.
    #[serde(default)]
    pub replicas: Option<Value>,
    /// Labels a node must carry to serve its IPs.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// Whether Services that name no pool get IPs from it (the CRD's default: true).
    #[serde(default = "default_auto_assign")]
    pub auto_assign: bool,
}

fn default_auto_assign() -> bool {
    true
}

/// One IpPool as the watch reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct IpPoolObject {
    /// `metadata.name`, also the etcd pool's name.
    pub name: String,
    /// `metadata.uid`, for Events.
    pub uid: Option<String>,
    /// `metadata.creationTimestamp`, RFC 3339: the older of two overlapping pools wins.
    pub created: String,
    /// `metadata.generation`, echoed as `observedGeneration`.
    pub generation: Option<i64>,
    /// The spec, or why it does not read.
    pub spec: Result<IpPoolSpec, String>,
    /// `status` as last written.
    pub status: Value,
}

/// A pool key under `<prefix>/pools/` as read from etcd.
#[derive(Debug, Clone, PartialEq)]
pub struct EtcdPool {
    /// The pool, `None` when its value is bad (it still holds the name).
    pub pool: Option<Pool>,
    /// Its last change, guarding writes and deletes.
    pub mod_revision: i64,
}

impl EtcdPool {
    /// Whether extip-sync wrote it for an IpPool.
    pub fn managed(&self) -> bool {
        self.pool
            .as_ref()
            .is_some_and(|p| p.managed_by.as_deref() == Some(MANAGED_BY_SYNC))
    }
}

/// A change to one etcd pool key.
#[derive(Debug, Clone, PartialEq)]
pub enum PoolWrite {
    /// Put `value` if the key is still at `mod_revision` (0: absent).
    Put {
        name: String,
        value: Vec<u8>,
        mod_revision: i64,
    },
    /// Delete the managed key of a deleted IpPool if it is still at `mod_revision`.
    Delete { name: String, mod_revision: i64 },
}

/// Why an IpPool is not (or not wholly) in service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PoolRefusal {
    /// The IpPool.
    pub pool: String,
    /// `InvalidSpec`, `NameTaken`, `Overlapping` or `OutsideAllowlist`.
    pub reason: &'static str,
    /// For the condition, the Event and the log.
    pub message: String,
}

/// The verdict on one IpPool.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The pool it is in etcd as, when accepted.
    pub accepted: Option<Pool>,
    /// What stands in its way (also for an accepted pool no node may serve).
    pub refusals: Vec<PoolRefusal>,
}

/// The etcd value an IpPool spec asks for, or the spec field that is wrong.
pub fn etcd_value(spec: &IpPoolSpec) -> Result<(Pool, Vec<u8>), String> {
    let mut value =
        json!({"cidr": spec.cidr, "auto_assign": spec.auto_assign, "managed_by": MANAGED_BY_SYNC});
    let fields = [
        ("prefix_len", spec.mask.clone()),
        ("interface", spec.interface.clone().map(Value::from)),
        ("replicas", spec.replicas.clone()),
    ];
    for (field, v) in fields {
        if let Some(v) = v {
            value[field] = v;
        }
    }
    if !spec.node_selector.is_empty() {
        value["node_selector"] = json!(spec.node_selector);
    }
    let raw = serde_json::to_vec(&value).unwrap_or_default();
    match parse_pool(&raw) {
        Ok((pool, _)) => Ok((pool, raw)),
        Err(ContractError::BadField { field, reason }) => {
            Err(format!("spec.{}: {reason}", spec_field(field)))
        }
        Err(e) => Err(format!("spec: {e}")),
    }
}

/// The IpPool field an etcd pool field comes from.
fn spec_field(etcd_field: &str) -> &str {
    match etcd_field {
        "prefix_len" => "mask",
        "node_selector" => "nodeSelector",
        "auto_assign" => "autoAssign",
        other => other,
    }
}

/// Verdicts on every IpPool, and the etcd writes they call for. `complete` says the
/// IpPool list is whole: only then may the pool of a deleted IpPool be deleted.
pub fn plan_pools(
    ippools: &BTreeMap<String, IpPoolObject>,
    etcd: &BTreeMap<String, EtcdPool>,
    nodes: &[NodeValue],
    complete: bool,
) -> (BTreeMap<String, Verdict>, Vec<PoolWrite>) {
    let mut order: Vec<&IpPoolObject> = ippools.values().collect();
    order.sort_by(|a, b| (&a.created, &a.name).cmp(&(&b.created, &b.name)));
    // Hand-written pools are fixed; accepted IpPools join as they are accepted.
    let mut taken: Vec<(String, IpNet)> = etcd
        .iter()
        .filter(|(_, e)| !e.managed())
        .filter_map(|(n, e)| e.pool.as_ref().map(|p| (n.clone(), p.cidr)))
        .collect();
    let mut verdicts = BTreeMap::new();
    let mut writes = Vec::new();
    for ippool in order {
        let verdict = judge(ippool, etcd, &taken, nodes);
        if let Some(pool) = &verdict.accepted {
            taken.push((ippool.name.clone(), pool.cidr));
            let have = etcd.get(&ippool.name);
            if have.and_then(|e| e.pool.as_ref()) != Some(pool) {
                let (_, value) =
                    etcd_value(ippool.spec.as_ref().expect("accepted")).expect("valid");
                writes.push(PoolWrite::Put {
                    name: ippool.name.clone(),
                    value,
                    mod_revision: have.map_or(0, |e| e.mod_revision),
                });
            }
        }
        verdicts.insert(ippool.name.clone(), verdict);
    }
    if complete {
        for (name, e) in etcd {
            if e.managed() && !ippools.contains_key(name) {
                writes.push(PoolWrite::Delete {
                    name: name.clone(),
                    mod_revision: e.mod_revision,
                });
            }
        }
    }
    (verdicts, writes)
}

fn judge(
    ippool: &IpPoolObject,
    etcd: &BTreeMap<String, EtcdPool>,
    taken: &[(String, IpNet)],
    nodes: &[NodeValue],
) -> Verdict {
    let refuse = |reason, message: String| Verdict {
        accepted: None,
        refusals: vec![PoolRefusal {
            pool: ippool.name.clone(),
            reason,
            message,
        }],
    };
    let parsed = ippool.spec.clone().and_then(|s| etcd_value(&s));
    let pool = match parsed {
        Ok((pool, _)) => pool,
        Err(why) => return refuse("InvalidSpec", format!("{why}; nothing written to etcd")),
    };
    if etcd.get(&ippool.name).is_some_and(|e| !e.managed()) {
        let text = format!(
            "etcd already has a pool `{}` that was not written for an IpPool (extip pool or \
             etcdctl); it is left alone and this IpPool is not used: rename one of them",
            ippool.name
        );
        return refuse("NameTaken", text);
    }
    if let Some((other, cidr)) = taken
        .iter()
        .find(|(_, c)| c.contains(&pool.cidr.network()) || pool.cidr.contains(&c.network()))
    {
        let text = format!(
            "{} overlaps pool `{other}` ({cidr}); nothing written to etcd for this IpPool",
            pool.cidr
        );
        return refuse("Overlapping", text);
    }
    let mut refusals = Vec::new();
    if outside_every_allowlist(pool.cidr, nodes) {
        refusals.push(PoolRefusal {
            pool: ippool.name.clone(),
            reason: "OutsideAllowlist",
            message: format!(
                "{} is outside the --allowed-cidr of every node, so no agent serves its IPs",
                pool.cidr
            ),
        });
    }
    Verdict {
        accepted: Some(pool),
        refusals,
    }
}

/// Whether every node publishes an allowlist and none of them covers `cidr`. Nodes of
/// an older agent (no allowlist published) and no nodes at all are no evidence.
fn outside_every_allowlist(cidr: IpNet, nodes: &[NodeValue]) -> bool {
    !nodes.is_empty()
        && nodes.iter().all(|n| !n.allowed_cidrs.is_empty())
        && !nodes
            .iter()
            .flat_map(|n| &n.allowed_cidrs)
            .any(|a| a.contains(&cidr))
}

/// The status an IpPool should show: allocated and free counts from the Services' live
/// IPs, and the conditions its verdict implies. Transition times of conditions that did
/// not change are kept from `old`.
pub fn pool_status(
    ippool: &IpPoolObject,
    verdict: &Verdict,
    live_ips: &BTreeSet<IpAddr>,
    now: &str,
) -> Value {
    let cidr = verdict
        .accepted
        .as_ref()
        .map(|p| p.cidr)
        .or_else(|| ippool.spec.as_ref().ok()?.cidr.parse::<IpNet>().ok());
    let allocated = cidr.map_or(0, |c| live_ips.iter().filter(|ip| c.contains(*ip)).count());
    let free = cidr.map_or(0, |c| usable_addresses(c).saturating_sub(allocated as u64));
    let refused = |reason: &str| verdict.refusals.iter().find(|r| r.reason == reason);
    let ready = match verdict.refusals.first() {
        None => (
            "True",
            "Accepted",
            format!("in etcd as pool `{}`", ippool.name),
        ),
        Some(r) => ("False", r.reason, r.message.clone()),
    };
    let flag = |reason: &str, clear: &str| match refused(reason) {
        Some(r) => ("True", reason.to_string(), r.message.clone()),
        None => ("False", clear.to_string(), String::new()),
    };
    let overlapping = flag("Overlapping", "NoOverlap");
    let outside = flag("OutsideAllowlist", "Allowed");
    let conditions = [
        ("Ready", ready.0, ready.1.to_string(), ready.2),
        ("Overlapping", overlapping.0, overlapping.1, overlapping.2),
        ("OutsideAllowlist", outside.0, outside.1, outside.2),
    ];
    let old = ippool.status["conditions"].as_array();
    let conditions: Vec<Value> = conditions
        .into_iter()
        .map(|(kind, status, reason, message)| {
            let since = old
                .into_iter()
                .flatten()
                .find(|c| c["type"] == kind && c["status"] == status)
                .and_then(|c| c["lastTransitionTime"].as_str())
                .unwrap_or(now);
            let mut c = json!({"type": kind, "status": status, "reason": reason,
                "message": message, "lastTransitionTime": since});
            if let Some(g) = ippool.generation {
                c["observedGeneration"] = json!(g);
            }
            c
        })
        .collect();
    let mut status = json!({"allocated": allocated, "free": free.min(i64::MAX as u64), "conditions": conditions});
    if let Some(g) = ippool.generation {
        status["observedGeneration"] = json!(g);
    }
    status
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
