//! `externalTrafficPolicy: Local`: which nodes may serve a Service's IP. Pure.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::service::{refuse, Refusal, ServiceView};

/// Where the IP shared by `svcs` may be served: `Some(None)` anywhere, `Some(Some(n))`
/// only on nodes `n`, `None` nowhere (withdrawn, with a refusal per Service).
/// Services with `externalTrafficPolicy: Local` confine it to the nodes of their ready
/// endpoints; a `Cluster` Service on the same IP is served from those nodes too (kube-proxy
/// forwards it from any node), and keeps the IP up anywhere while the Local ones have none.
/// While no Local Service has a ready endpoint, nodes whose endpoints are terminating but
/// still serving keep the IP, as kube-proxy keeps sending them traffic (KEP-1669): a
/// rolling update's old pods hold it until a new one is ready somewhere.
pub fn serving_nodes(
    ip: IpAddr,
    svcs: &[&ServiceView],
    refusals: &mut Vec<Refusal>,
) -> Option<Option<BTreeSet<String>>> {
    let local: Vec<&&ServiceView> = svcs.iter().filter(|s| s.local_traffic).collect();
    if local.is_empty() {
        return Some(None);
    }
    let nodes_of = |pick: fn(&ServiceView) -> &BTreeSet<String>| -> BTreeSet<String> {
        local.iter().flat_map(|s| pick(s).iter().cloned()).collect()
    };
    // Ready endpoints first; terminating-but-serving ones only while none is ready.
    for nodes in [
        nodes_of(|s| &s.ready_nodes),
        nodes_of(|s| &s.terminating_nodes),
    ] {
        if !nodes.is_empty() {
            return Some(Some(nodes));
        }
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
