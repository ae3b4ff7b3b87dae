//! `externalTrafficPolicy: Local`: which nodes may serve a Service's IP. Pure.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::service::{refuse, Refusal, ServiceView};

/// Where the IP shared by `svcs` may be served: `Some(None)` anywhere, `Some(Some(n))`
/// only on nodes `n`, `None` nowhere (withdrawn, with a refusal per Service).
/// Services with `externalTrafficPolicy: Local` confine it to the nodes of their ready
/// endpoints; a `Cluster` Service on the same IP is served from those nodes too (kube-proxy
/// forwards it from any node), and keeps the IP up anywhere while the Local ones have none.
pub fn serving_nodes(
    ip: IpAddr,
    svcs: &[&ServiceView],
    refusals: &mut Vec<Refusal>,
) -> Option<Option<BTreeSet<String>>> {
    let local: Vec<&&ServiceView> = svcs.iter().filter(|s| s.local_traffic).collect();
    if local.is_empty() {
        return Some(None);
    }
    let ready: BTreeSet<String> = local
        .iter()
        .flat_map(|s| s.ready_nodes.iter().cloned())
        .collect();
    if !ready.is_empty() {
        return Some(Some(ready));
    }
    if local.len() < svcs.len() {
        return Some(None);
    }
    for svc in local {
        refusals.push(refuse(
            &svc.name,
            "NoReadyEndpoints",
            format!(
                "externalTrafficPolicy is Local and no node has a ready endpoint: IP {ip} \
                 is withdrawn until one is ready"
            ),
        ));
    }
    None
}
