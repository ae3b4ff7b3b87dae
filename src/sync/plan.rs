//! The pure core of extip-sync: which allocations to make or release, which desired
//! keys Services ask for, and which etcd writes turn what is into what should be.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::model::{DesiredValue, ServiceAllocation, Source, MANAGED_BY_SYNC};
use crate::pools::{pool_for, Pool};

use super::family::slot;
use super::free_ip::name_hash;
use super::service::{refuse, Stack};
pub use super::service::{Refusal, ServiceView};
use super::{sharing, traffic};

/// Annotation naming the IP a LoadBalancer Service wants.
pub const ANNOTATION_IP: &str = "extip.io/ip";
/// Annotation naming the pool to allocate from.
pub const ANNOTATION_POOL: &str = "extip.io/pool";
/// Annotation overriding `replicas` of the Service's IPs.
pub const ANNOTATION_REPLICAS: &str = "extip.io/replicas";
/// Annotation overriding `interface` of the Service's IPs.
pub const ANNOTATION_INTERFACE: &str = "extip.io/interface";

/// A change to the allocation records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllocationStep {
    /// Give the Service this IP (asked for, its own released one back, or the one
    /// its sharing group holds).
    Take {
        service: String,
        ip: IpAddr,
        pool: Option<String>,
        requested: bool,
        sharing_key: Option<String>,
    },
    /// Give the Service the first free IP of `pool`.
    Allocate {
        service: String,
        pool: String,
        sharing_key: Option<String>,
    },
    /// The Service is gone or no longer a LoadBalancer: keep its IP for the
    /// retention window, then let it go.
    Release { service: String },
}

/// Settings the plan needs.
pub struct Policy<'a> {
    /// Pools by name.
    pub pools: &'a BTreeMap<String, Pool>,
    /// CIDRs `spec.externalIPs` may use (CVE-2020-8554).
    pub allow_external: &'a [IpNet],
}

fn parse_ip(text: &str) -> Option<IpAddr> {
    text.trim().parse().ok()
}

/// The pool a LoadBalancer Service allocates from: the one its annotation names (of its
/// family, when the annotation lists one pool per family), else the first pool (by name)
/// of its family with `auto_assign`.
fn pool_of<'a>(svc: &ServiceView, policy: &Policy<'a>) -> Result<&'a str, Refusal> {
    let of_family = |p: &Pool| svc.family.is_none_or(|f| f.holds(p.cidr.addr()));
    if let Some(names) = &svc.pool {
        let mut named = names.split(',').map(str::trim).filter(|n| !n.is_empty());
        let missing = named.clone().find(|n| !policy.pools.contains_key(*n));
        if let Some(name) = missing {
            return Err(refuse(
                &svc.name,
                "PoolNotFound",
                format!("annotation {ANNOTATION_POOL} names pool `{name}`, which does not exist"),
            ));
        }
        let found = named.find_map(|n| policy.pools.get_key_value(n).filter(|(_, p)| of_family(p)));
        // No named pool of this family: an auto-assign one of it.
        if let Some((name, _)) = found {
            return Ok(name);
        }
    }
    let family = svc
        .family
        .map_or(String::new(), |f| format!(" of family {}", f.name()));
    policy
        .pools
        .iter()
        .find(|(_, p)| p.auto_assign && of_family(p))
        .map(|(n, _)| n.as_str())
        .ok_or_else(|| {
            refuse(
                &svc.name,
                "NoPool",
                format!(
                    "no pool{family} has auto_assign, so no IP can be allocated; create one \
                     with `extip pool add NAME CIDR --auto-assign` or annotate the Service"
                ),
            )
        })
}

/// Where a LoadBalancer Service's IP comes from.
enum Wanted {
    Ip(IpAddr),
    Pool(String),
}

/// The IP `svc` asks for: for a view of one family, the one of that family among those
/// listed (comma-separated), else the first.
fn requested(svc: &ServiceView) -> Option<&str> {
    let mut listed = svc.requested_ip.as_deref()?.split(',').map(str::trim);
    match svc.family {
        None => listed.next(),
        Some(f) => listed.find(|t| parse_ip(t).is_none_or(|ip| f.holds(ip))),
    }
}

fn wanted(svc: &ServiceView, policy: &Policy) -> Result<Wanted, Refusal> {
    let Some(text) = requested(svc) else {
        return pool_of(svc, policy).map(|p| Wanted::Pool(p.to_string()));
    };
    let ip = parse_ip(text).ok_or_else(|| {
        refuse(
            &svc.name,
            "InvalidIP",
            format!("requested IP `{text}` is not an IP address"),
        )
    })?;
    let allowed = pool_for(ip, policy.pools).is_some()
        || policy.allow_external.iter().any(|n| n.contains(&ip));
    if !allowed {
        return Err(refuse(
            &svc.name,
            "IPNotAllowed",
            format!("requested IP {ip} is in no pool and not in --allow-external-ip"),
        ));
    }
    Ok(Wanted::Ip(ip))
}

/// What one LoadBalancer Service needs from allocation now.
enum Next {
    /// This change.
    Step(AllocationStep),
    /// Nothing it could have: why.
    Refused(Refusal),
    /// Its sharing group's IP, being allocated in this pass.
    Wait,
    /// It has what it asks for.
    Nothing,
}

/// The allocation step of one LoadBalancer Service. `allocating` gathers the sharing
/// groups that get a new IP in this pass.
fn next_for(
    svc: &ServiceView,
    have: Option<&ServiceAllocation>,
    policy: &Policy,
    by_ip: &BTreeMap<IpAddr, Vec<&ServiceView>>,
    allocations: &BTreeMap<String, ServiceAllocation>,
    allocating: &mut sharing::Allocating,
) -> Next {
    let take = |ip: IpAddr, pool: Option<String>, requested: bool| {
        Next::Step(AllocationStep::Take {
            service: slot(svc),
            ip,
            pool,
            requested,
            sharing_key: svc.sharing_key.clone(),
        })
    };
    let live = have.filter(|a| a.released_at.is_none());
    match wanted(svc, policy) {
        // PreferDualStack: no IP of the second family is no reason to complain.
        Err(_) if svc.secondary && svc.stack == Stack::Prefer => Next::Nothing,
        // Its pool was deleted: the IP it has stays (allocations outlive pools), so a
        // "cannot allocate" Warning would contradict what the operator sees. A bad
        // annotation (`PoolNotFound`) is still reported.
        Err(r) if r.reason == "NoPool" && live.is_some_and(|a| !a.requested) => Next::Nothing,
        Err(r) => Next::Refused(r),
        Ok(Wanted::Ip(ip)) if live.is_some_and(|a| a.ip == ip) => Next::Nothing,
        Ok(Wanted::Ip(ip)) => {
            let on_ip = by_ip.get(&ip).map_or(&[][..], Vec::as_slice);
            match sharing::join_refusal(svc, ip, on_ip) {
                Some(r) => Next::Refused(r),
                None => take(
                    ip,
                    pool_for(ip, policy.pools).map(|(n, _)| n.to_string()),
                    true,
                ),
            }
        }
        Ok(Wanted::Pool(_)) if live.is_some_and(|a| !a.requested) => Next::Nothing,
        Ok(Wanted::Pool(_)) if have.is_some_and(|a| !a.requested) => {
            let a = have.expect("checked");
            take(a.ip, a.pool.clone(), false)
        }
        Ok(Wanted::Pool(pool)) => {
            match svc.sharing_key.as_ref().map(|_| sharing::place(svc, by_ip)) {
                Some(sharing::Sharing::Join(ip)) => {
                    let pool = by_ip[&ip]
                        .iter()
                        .find_map(|o| allocations.get(&o.name))
                        .and_then(|a| a.pool.clone());
                    take(ip, pool, false)
                }
                Some(sharing::Sharing::Collides(r)) => Next::Refused(r),
                Some(sharing::Sharing::First) | None => {
                    if sharing::group_of(svc).is_some_and(|g| !allocating.insert(g)) {
                        return Next::Wait;
                    }
                    Next::Step(AllocationStep::Allocate {
                        service: slot(svc),
                        pool,
                        sharing_key: svc.sharing_key.clone(),
                    })
                }
            }
        }
    }
}

/// Allocation changes that make every LoadBalancer Service have one IP and free the
/// IPs of Services that are gone. The flag says that a Service waits for its sharing
/// group's IP, allocated by a step of this pass: plan again after running them.
pub fn allocation_steps(
    services: &[ServiceView],
    allocations: &BTreeMap<String, ServiceAllocation>,
    policy: &Policy,
) -> (Vec<AllocationStep>, Vec<Refusal>, bool) {
    let mut steps = Vec::new();
    let mut refusals = Vec::new();
    let mut balancers = BTreeSet::new();
    let by_ip = sharing::services_by_ip(services, allocations);
    let mut allocating = sharing::Allocating::new();
    let mut deferred = false;
    // RequireDualStack: a family that cannot be had keeps the whole Service pending.
    let pending: BTreeSet<&str> = services
        .iter()
        .filter(|s| s.load_balancer && s.stack == Stack::Require && s.family.is_some())
        .filter(|s| wanted(s, policy).is_err())
        .map(|s| s.name.as_str())
        .collect();
    for svc in services.iter().filter(|s| s.load_balancer) {
        balancers.insert(slot(svc));
        let have = allocations.get(&slot(svc));
        if pending.contains(svc.name.as_str()) {
            refusals.extend(wanted(svc, policy).err());
            continue;
        }
        match next_for(svc, have, policy, &by_ip, allocations, &mut allocating) {
            Next::Step(step) => steps.push(step),
            Next::Refused(r) => refusals.push(r),
            Next::Wait => deferred = true,
            Next::Nothing => {}
        }
    }
    for (service, a) in allocations {
        if a.released_at.is_none() && !balancers.contains(service) {
            steps.push(AllocationStep::Release {
                service: service.clone(),
            });
        }
    }
    (steps, refusals, deferred)
}

/// Order `steps` by a hash of this replica's identity and the Service: replicas that
/// race (a split brain, or `--assume-leader`) work through the Services in different
/// orders instead of contending for the same one at every step.
pub fn order_for_replica(steps: &mut [AllocationStep], identity: &str) {
    steps.sort_by_key(|step| {
        let service = match step {
            AllocationStep::Take { service, .. }
            | AllocationStep::Allocate { service, .. }
            | AllocationStep::Release { service } => service,
        };
        name_hash(&format!("{identity}\n{service}"))
    });
}

/// The desired keys the Services ask for, and the IPs refused with the reason.
/// `lb_ips` are the LoadBalancer IPs allocated (after [`allocation_steps`] ran).
pub fn desired_values(
    services: &[ServiceView],
    lb_ips: &BTreeMap<String, IpAddr>,
    policy: &Policy,
) -> (BTreeMap<IpAddr, DesiredValue>, Vec<Refusal>) {
    let mut users: BTreeMap<IpAddr, Vec<&ServiceView>> = BTreeMap::new();
    let mut refusals = Vec::new();
    for svc in services {
        for text in &svc.external_ips {
            match parse_ip(text) {
                Some(ip) if policy.allow_external.iter().any(|n| n.contains(&ip)) => {
                    users.entry(ip).or_default().push(svc);
                }
                Some(ip) => refusals.push(refuse(
                    &svc.name,
                    "ExternalIPRefused",
                    format!(
                        "externalIP {ip} is outside --allow-external-ip, so extip does not \
                         serve it (an unchecked externalIP can hijack traffic: CVE-2020-8554)"
                    ),
                )),
                None => refusals.push(refuse(
                    &svc.name,
                    "InvalidIP",
                    format!("externalIP `{text}` is not an IP address"),
                )),
            }
        }
        if let Some(ip) = lb_ips.get(&slot(svc)).filter(|_| svc.load_balancer) {
            users.entry(*ip).or_default().push(svc);
        }
    }
    let mut desired = BTreeMap::new();
    for (ip, mut svcs) in users {
        svcs.sort_by(|a, b| a.name.cmp(&b.name));
        svcs.dedup_by(|a, b| a.name == b.name);
        let Some(nodes) = traffic::serving_nodes(ip, &svcs, &mut refusals) else {
            continue;
        };
        let mut value = desired_value(ip, &svcs, policy, &mut refusals);
        value.nodes = nodes.map(|n| serde_json::json!(n));
        desired.insert(ip, value);
    }
    (desired, refusals)
}

fn desired_value(
    ip: IpAddr,
    svcs: &[&ServiceView],
    policy: &Policy,
    refusals: &mut Vec<Refusal>,
) -> DesiredValue {
    let names: Vec<String> = svcs.iter().map(|s| s.name.clone()).collect();
    let source = match names.as_slice() {
        [one] => Source::One(one.clone()),
        _ => Source::Many(names),
    };
    let mut value = DesiredValue {
        pool: pool_for(ip, policy.pools).map(|(n, _)| n.to_string()),
        source: Some(source),
        managed_by: Some(MANAGED_BY_SYNC.to_string()),
        ..Default::default()
    };
    // Several Services on one IP: the first (by name) that sets an override wins.
    if let Some(svc) = svcs.iter().find(|s| s.replicas.is_some()) {
        let text = svc.replicas.as_deref().unwrap_or_default();
        let v = text
            .parse::<u64>()
            .map(serde_json::Value::from)
            .unwrap_or_else(|_| serde_json::Value::from(text));
        match crate::model::parse_replicas(&v) {
            Ok(_) => value.replicas = Some(v),
            Err(e) => refusals.push(refuse(
                &svc.name,
                "InvalidAnnotation",
                format!("annotation {ANNOTATION_REPLICAS}: {e}; the IP keeps its default"),
            )),
        }
    }
    if let Some(svc) = svcs.iter().find(|s| s.interface.is_some()) {
        let text = svc.interface.clone().unwrap_or_default();
        match crate::model::validate_interface(text) {
            Ok(i) => value.interface = Some(i),
            Err(e) => refusals.push(refuse(
                &svc.name,
                "InvalidAnnotation",
                format!("annotation {ANNOTATION_INTERFACE}: {e}; the IP keeps its default"),
            )),
        }
    }
    value
}

/// A desired key as it is in etcd.
#[derive(Debug, Clone, PartialEq)]
pub struct ExistingKey {
    /// Its value, parsed.
    pub value: serde_json::Value,
    /// Lease it hangs on (0: none).
    pub lease: i64,
    /// Its last change, for a guarded write.
    pub mod_revision: i64,
}

impl ExistingKey {
    /// Whether extip-sync wrote it (and so may change or delete it).
    pub fn managed(&self) -> bool {
        self.value["managed_by"] == MANAGED_BY_SYNC
    }
}

/// One guarded write of a desired key.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyWrite {
    /// Write the value on the sync's lease if the key is still at `mod_revision` (0:
    /// absent): new, changed, or still on another replica's lease.
    Put {
        ip: IpAddr,
        value: serde_json::Value,
        mod_revision: i64,
    },
    /// Delete if still at `mod_revision`: no Service uses the IP any more.
    Delete { ip: IpAddr, mod_revision: i64 },
}

/// The writes that make etcd hold `desired` on `lease`. Keys the sync did not write
/// (`extip ip add`, etcdctl) are never changed or deleted.
pub fn key_writes(
    desired: &BTreeMap<IpAddr, DesiredValue>,
    existing: &BTreeMap<IpAddr, ExistingKey>,
    lease: i64,
) -> Vec<KeyWrite> {
    let mut writes = Vec::new();
    for (ip, value) in desired {
        let value = serde_json::to_value(value).unwrap_or_default();
        match existing.get(ip) {
            None => writes.push(KeyWrite::Put {
                ip: *ip,
                value,
                mod_revision: 0,
            }),
            Some(k) if !k.managed() => {}
            Some(k) if k.value == value && k.lease == lease => {}
            Some(k) => writes.push(KeyWrite::Put {
                ip: *ip,
                value,
                mod_revision: k.mod_revision,
            }),
        }
    }
    for (ip, k) in existing {
        if k.managed() && !desired.contains_key(ip) {
            writes.push(KeyWrite::Delete {
                ip: *ip,
                mod_revision: k.mod_revision,
            });
        }
    }
    writes
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
