//! Shared LoadBalancer IPs (`extip.io/sharing-key`): Services of one namespace with the
//! same key share one IP as long as their ports do not collide. Pure decisions; the
//! allocation transaction (src/sync/etcd.rs) keeps them safe against racing syncs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::model::ServiceAllocation;

use super::family::slot;
use super::service::{Refusal, ServiceView};

/// Annotation: Services of one namespace with the same value share one IP.
pub const ANNOTATION_SHARING_KEY: &str = "extip.io/sharing-key";

/// Where a Service with a sharing key goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sharing {
    /// Join this IP, which Services of its group hold and none of their ports collide.
    Join(IpAddr),
    /// Its group holds IPs, but a port collides on each: it stays pending.
    Collides(Refusal),
    /// Its group holds no IP yet: allocate one.
    First,
}

/// The namespace of a `namespace/name`.
fn namespace(name: &str) -> &str {
    name.split('/').next().unwrap_or_default()
}

/// Whether `a` and `b` may share an IP: same namespace, same key.
pub fn same_group(a: &ServiceView, b: &ServiceView) -> bool {
    a.sharing_key.is_some()
        && a.sharing_key == b.sharing_key
        && namespace(&a.name) == namespace(&b.name)
}

/// The ports (protocol, port) that `a` and `b` both use.
fn collisions(a: &ServiceView, b: &ServiceView) -> Vec<String> {
    a.ports
        .intersection(&b.ports)
        .map(|(protocol, port)| format!("{port}/{protocol}"))
        .collect()
}

/// Live LoadBalancer IPs and the Services on each, from the allocations.
pub fn services_by_ip<'a>(
    services: &'a [ServiceView],
    allocations: &BTreeMap<String, ServiceAllocation>,
) -> BTreeMap<IpAddr, Vec<&'a ServiceView>> {
    let mut out: BTreeMap<IpAddr, Vec<&ServiceView>> = BTreeMap::new();
    for svc in services.iter().filter(|s| s.load_balancer) {
        if let Some(a) = allocations
            .get(&slot(svc))
            .filter(|a| a.released_at.is_none())
        {
            out.entry(a.ip).or_default().push(svc);
        }
    }
    out
}

/// A refusal unless `svc` can join the Services on `ip` (`on_ip`, itself excluded): all
/// of its group and no port shared.
pub fn join_refusal(svc: &ServiceView, ip: IpAddr, on_ip: &[&ServiceView]) -> Option<Refusal> {
    let others: Vec<&&ServiceView> = on_ip.iter().filter(|o| slot(o) != slot(svc)).collect();
    if others.is_empty() || !others.iter().all(|o| same_group(svc, o)) {
        return None; // not a sharing case: the allocation decides (IPInUse)
    }
    let clash: Vec<String> = others
        .iter()
        .flat_map(|o| {
            collisions(svc, o)
                .into_iter()
                .map(move |p| format!("{p} of {}", o.name))
        })
        .collect();
    (!clash.is_empty()).then(|| Refusal {
        service: svc.name.clone(),
        reason: "PortCollision",
        message: format!(
            "IP {ip} (sharing key `{}`) already serves {}: the Service stays pending",
            svc.sharing_key.as_deref().unwrap_or_default(),
            clash.join(", ")
        ),
    })
}

/// Where `svc` (with a sharing key, without an IP) goes, given the live IPs.
pub fn place(svc: &ServiceView, by_ip: &BTreeMap<IpAddr, Vec<&ServiceView>>) -> Sharing {
    let group: Vec<(&IpAddr, &Vec<&ServiceView>)> = by_ip
        .iter()
        .filter(|(ip, _)| svc.family.is_none_or(|f| f.holds(**ip)))
        .filter(|(_, on)| on.iter().any(|o| o.name != svc.name && same_group(svc, o)))
        .collect();
    let mut refusal = None;
    for (ip, on) in &group {
        match join_refusal(svc, **ip, on) {
            None => return Sharing::Join(**ip),
            Some(r) => refusal = refusal.or(Some(r)),
        }
    }
    refusal.map_or(Sharing::First, Sharing::Collides)
}

/// `(namespace, key)` of a Service's group, if it has a key.
pub fn group_of(svc: &ServiceView) -> Option<(String, String)> {
    let key = svc.sharing_key.clone()?;
    Some((namespace(&svc.name).to_string(), key))
}

/// Groups that got an IP allocated in this pass: later members join it next pass.
pub type Allocating = BTreeSet<(String, String)>;

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, key: Option<&str>, ports: &[i32]) -> ServiceView {
        ServiceView {
            name: name.into(),
            load_balancer: true,
            sharing_key: key.map(str::to_string),
            ports: ports.iter().map(|p| ("TCP".to_string(), *p)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_service_joins_its_groups_ip_unless_a_port_collides_or_the_group_differs() {
        let ip: IpAddr = "198.51.100.130".parse().unwrap();
        let http = svc("shop/http", Some("k"), &[80]);
        let by_ip = BTreeMap::from([(ip, vec![&http])]);
        assert_eq!(
            place(&svc("shop/https", Some("k"), &[443]), &by_ip),
            Sharing::Join(ip)
        );
        match place(&svc("shop/other", Some("k"), &[80]), &by_ip) {
            Sharing::Collides(r) => {
                assert_eq!(r.reason, "PortCollision");
                assert!(r.message.contains("80/TCP of shop/http"), "{}", r.message);
            }
            other => panic!("{other:?}"),
        }
        // Another key, or the same key in another namespace: a group of its own.
        assert_eq!(
            place(&svc("shop/x", Some("j"), &[443]), &by_ip),
            Sharing::First
        );
        assert_eq!(
            place(&svc("blog/x", Some("k"), &[443]), &by_ip),
            Sharing::First
        );
        // UDP 80 beside TCP 80 is no collision.
        let mut dns = svc("shop/dns", Some("k"), &[]);
        dns.ports.insert(("UDP".into(), 80));
        assert_eq!(place(&dns, &by_ip), Sharing::Join(ip));
    }
}
