//! Export routes: for every address extip holds, a host route in the main table,
//! marked with route protocol [`OWNER_PROTO`] and with the address as preferred source.
//! Forwarding is unchanged (the local table already routes the address to this host);
//! a routing daemon selects exactly these routes (BIRD: `krt_source = 88`) and
//! announces them. Only routes with the mark are touched.
//!
//! Why the main table: when the kernel removes an IPv4 address (a killed agent's
//! lifetime ran out), it flushes main-table routes whose preferred source was that
//! address, so the announcement dies with the address. It does so for no other table.
//! IPv6 keeps the route and only clears its preferred source (`rt6_remove_prefsrc`),
//! and a route on `lo` keeps no expiry: so an IPv6 export route also carries its address
//! as preferred source, and the routing daemon exports only routes whose preferred
//! source is still their own address (BIRD: `krt_prefsrc = net.ip`, with a table
//! rescan every second to notice the change, which the kernel does not announce).
//!
//! Routes of fenced IPs carry metric [`FENCED_METRIC`], so a routing daemon can send
//! them over the BGP session the fence cuts (`--fenced-router`) and the others over one
//! it leaves alone.

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::RouteMessageBuilder;

use super::{errno, errno_kind, NetError, Netlink, OWNER_PROTO};
use crate::model::max_prefix_len;

/// A host route for an address on interface `ifindex`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ExportRoute {
    /// The address, announced as /32 or /128.
    pub ip: IpAddr,
    /// The interface the address is on.
    pub ifindex: u32,
    /// Its preferred source is the address itself. An IPv6 route loses it when the
    /// address goes (and is then no longer announced), so one without it is replaced.
    pub sourced: bool,
    /// The address is behind the fence: the route has metric [`FENCED_METRIC`].
    pub fenced: bool,
}

/// The metric of fenced IPs' export routes, which a routing daemon exports over the
/// session to the fenced router only (BIRD: `krt_metric = 88`).
pub const FENCED_METRIC: u32 = 88;

/// The kernel's metric for an IPv6 route added without one: named when such a route is
/// removed, or the kernel would remove the first route of any metric (a fenced one).
const IPV6_DEFAULT_METRIC: u32 = 1024;

impl ExportRoute {
    /// The route that announces `ip` on `ifindex`, fenced or not.
    pub fn of(ip: IpAddr, ifindex: u32, fenced: bool) -> Self {
        ExportRoute {
            ip,
            ifindex,
            sourced: true,
            fenced,
        }
    }

    /// What the kernel tells routes apart by: two routes with one key cannot coexist.
    fn kernel_key(&self) -> (IpAddr, bool) {
        (self.ip, self.fenced)
    }
}

/// The changes that turn the routes `have` into `wanted`, in order: routes to add first,
/// routes to remove, then routes to add. A route that changes only its metric (the IP
/// went behind the fence or out of it) is added before the old one goes, so the router
/// always has a path; one that must replace a route of the same key can only follow it.
pub fn route_changes(
    have: &BTreeSet<ExportRoute>,
    wanted: &BTreeSet<ExportRoute>,
) -> (Vec<ExportRoute>, Vec<ExportRoute>, Vec<ExportRoute>) {
    let removals: Vec<ExportRoute> = have.difference(wanted).copied().collect();
    let (then_adds, first_adds): (Vec<ExportRoute>, Vec<ExportRoute>) = wanted
        .difference(have)
        .copied()
        .partition(|add| removals.iter().any(|r| r.kernel_key() == add.kernel_key()));
    (first_adds, removals, then_adds)
}

/// The main routing table.
const MAIN: u32 = 254;

fn route_message(route: ExportRoute) -> RouteMessage {
    let builder = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(route.ip, max_prefix_len(route.ip))
        .expect("address and prefix length of one family")
        .output_interface(route.ifindex)
        .table_id(MAIN)
        .protocol(RouteProtocol::Other(OWNER_PROTO));
    // The address as preferred source: when the kernel removes the address (its
    // lifetime ran out because the agent died), it flushes an IPv4 route with it and
    // clears an IPv6 route's source (see the module comment).
    let builder = if route.sourced {
        builder
            .pref_source(route.ip)
            .expect("a source of the route's own family")
    } else {
        builder
    };
    let builder = match (route.fenced, route.ip) {
        (true, _) => builder.priority(FENCED_METRIC),
        (false, IpAddr::V6(_)) => builder.priority(IPV6_DEFAULT_METRIC),
        // IPv4's default metric is 0, which in a removal means any metric; the
        // kernel keeps a prefix's routes by ascending metric, so 0 is found first.
        (false, IpAddr::V4(_)) => builder,
    };
    match route.ip {
        IpAddr::V4(_) => builder.scope(RouteScope::Link).build(),
        IpAddr::V6(_) => builder.build(),
    }
}

fn exported(message: &RouteMessage) -> Option<ExportRoute> {
    let table = MAIN;
    if message.header.protocol != RouteProtocol::Other(OWNER_PROTO) {
        return None;
    }
    let mut in_table = u32::from(message.header.table) == table;
    let (mut ip, mut ifindex, mut source, mut metric) = (None, None, None, None);
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Table(t) => in_table = *t == table,
            RouteAttribute::Destination(RouteAddress::Inet(a)) => ip = Some(IpAddr::V4(*a)),
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => ip = Some(IpAddr::V6(*a)),
            RouteAttribute::PrefSource(RouteAddress::Inet(a)) => source = Some(IpAddr::V4(*a)),
            RouteAttribute::PrefSource(RouteAddress::Inet6(a)) => source = Some(IpAddr::V6(*a)),
            RouteAttribute::Oif(i) => ifindex = Some(*i),
            RouteAttribute::Priority(m) => metric = Some(*m),
            _ => {}
        }
    }
    let ip = ip?;
    let host = message.header.destination_prefix_length == max_prefix_len(ip);
    (in_table && host).then_some(ExportRoute {
        ip,
        ifindex: ifindex?,
        sourced: source == Some(ip),
        fenced: metric == Some(FENCED_METRIC),
    })
}

impl Netlink {
    /// The marked host routes, IPv4 and IPv6.
    pub async fn export_routes(&self) -> Result<BTreeSet<ExportRoute>, NetError> {
        let mut found = BTreeSet::new();
        let dumps = [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ];
        for query in dumps {
            let routes: Vec<RouteMessage> = self
                .handle
                .route()
                .get(query)
                .execute()
                .try_collect()
                .await
                .map_err(|source| NetError::Request {
                    op: "list routes",
                    target: "main table".into(),
                    source,
                })?;
            found.extend(routes.iter().filter_map(exported));
        }
        Ok(found)
    }

    /// Add the export route for an address; one that exists already is fine.
    pub async fn add_export_route(&self, route: ExportRoute) -> Result<(), NetError> {
        let request = self.handle.route().add(route_message(route));
        match request.execute().await {
            Err(e) if errno_kind(&e) == Some(io::ErrorKind::AlreadyExists) => Ok(()),
            other => other.map_err(|source| NetError::Request {
                op: "add export route",
                target: route.ip.to_string(),
                source,
            }),
        }
    }

    /// Remove an export route; one that is gone already is fine.
    pub async fn remove_export_route(&self, route: ExportRoute) -> Result<(), NetError> {
        let request = self.handle.route().del(route_message(route));
        match request.execute().await {
            // ESRCH: the kernel flushed it with its address already.
            Err(e) if errno_kind(&e) == Some(io::ErrorKind::NotFound) || errno(&e) == Some(3) => {
                Ok(())
            }
            other => other.map_err(|source| NetError::Request {
                op: "remove export route",
                target: route.ip.to_string(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(ip: &str, fenced: bool) -> ExportRoute {
        ExportRoute::of(ip.parse().unwrap(), 7, fenced)
    }

    fn set(routes: &[ExportRoute]) -> BTreeSet<ExportRoute> {
        routes.iter().copied().collect()
    }

    #[test]
    fn an_ip_going_behind_the_fence_gets_its_new_route_before_the_old_one_goes() {
        let have = set(&[route("198.51.100.1", false)]);
        let wanted = set(&[route("198.51.100.1", true)]);
        let (first, remove, then) = route_changes(&have, &wanted);
        assert_eq!(first, [route("198.51.100.1", true)]);
        assert_eq!(remove, [route("198.51.100.1", false)]);
        assert!(then.is_empty());
    }

    #[test]
    fn a_route_that_lost_its_source_is_removed_before_it_is_added_again() {
        let mut stale = route("2001:db8::1", true);
        stale.sourced = false;
        let (first, remove, then) =
            route_changes(&set(&[stale]), &set(&[route("2001:db8::1", true)]));
        assert!(first.is_empty());
        assert_eq!(remove, [stale]);
        assert_eq!(then, [route("2001:db8::1", true)]);
    }

    #[test]
    fn held_routes_stay_and_new_ones_are_added_first() {
        let have = set(&[route("198.51.100.1", true), route("198.51.100.2", false)]);
        let wanted = set(&[route("198.51.100.1", true), route("198.51.100.3", true)]);
        let (first, remove, then) = route_changes(&have, &wanted);
        assert_eq!(first, [route("198.51.100.3", true)]);
        assert_eq!(remove, [route("198.51.100.2", false)]);
        assert!(then.is_empty());
    }
}
