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
}

impl ExportRoute {
    /// The route that announces `ip` on `ifindex`.
    pub fn of(ip: IpAddr, ifindex: u32) -> Self {
        ExportRoute {
            ip,
            ifindex,
            sourced: true,
        }
    }
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
    let (mut ip, mut ifindex, mut source) = (None, None, None);
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Table(t) => in_table = *t == table,
            RouteAttribute::Destination(RouteAddress::Inet(a)) => ip = Some(IpAddr::V4(*a)),
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => ip = Some(IpAddr::V6(*a)),
            RouteAttribute::PrefSource(RouteAddress::Inet(a)) => source = Some(IpAddr::V4(*a)),
            RouteAttribute::PrefSource(RouteAddress::Inet6(a)) => source = Some(IpAddr::V6(*a)),
            RouteAttribute::Oif(i) => ifindex = Some(*i),
            _ => {}
        }
    }
    let ip = ip?;
    let host = message.header.destination_prefix_length == max_prefix_len(ip);
    (in_table && host).then_some(ExportRoute {
        ip,
        ifindex: ifindex?,
        sourced: source == Some(ip),
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
