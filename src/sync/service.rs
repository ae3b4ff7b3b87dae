//! What every part of the sync's plan shares about a Service: the view of it, its IP
//! families and stack, and a refusal. Below `plan`, `family`, `sharing` and `traffic`,
//! which all use it; it uses none of them.

use std::collections::BTreeSet;
use std::net::IpAddr;

/// What the sync needs to know of one Service.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceView {
    /// `namespace/name`.
    pub name: String,
    /// `type: LoadBalancer`.
    pub load_balancer: bool,
    /// `spec.externalIPs`, as written.
    pub external_ips: Vec<String>,
    /// `extip.io/ip`, else `spec.loadBalancerIP`.
    pub requested_ip: Option<String>,
    /// `extip.io/pool`.
    pub pool: Option<String>,
    /// `extip.io/replicas`.
    pub replicas: Option<String>,
    /// `extip.io/interface`.
    pub interface: Option<String>,
    /// `externalTrafficPolicy: Local`: only nodes with a ready endpoint may serve its IPs.
    pub local_traffic: bool,
    /// Kubernetes nodes with a ready endpoint of the Service (its EndpointSlices).
    pub ready_nodes: BTreeSet<String>,
    /// Nodes with an endpoint that is terminating but still serving: they serve a Local
    /// Service's IP while no node has a ready endpoint (a rolling update's old pods).
    pub terminating_nodes: BTreeSet<String>,
    /// `extip.io/sharing-key`: Services of the namespace with the same key share an IP.
    pub sharing_key: Option<String>,
    /// `spec.ports` as (protocol, port): sharing Services must not collide on one.
    pub ports: BTreeSet<(String, i32)>,
    /// `spec.ipFamilyPolicy`.
    pub stack: Stack,
    /// `spec.ipFamilies`, in order.
    pub families: Vec<Family>,
    /// The family this view allocates (a dual-stack Service has a view per family);
    /// `None`: its pool's.
    pub family: Option<Family>,
    /// The view of a dual-stack Service's second family.
    pub secondary: bool,
}

/// Something a Service asked for that the sync will not do, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Refusal {
    /// `namespace/name`.
    pub service: String,
    /// Kubernetes Event reason.
    pub reason: &'static str,
    /// One sentence for the Event and the log.
    pub message: String,
}

/// A refusal of `service`.
pub fn refuse(service: &str, reason: &'static str, message: String) -> Refusal {
    Refusal {
        service: service.to_string(),
        reason,
        message,
    }
}

/// An IP family, as `spec.ipFamilies` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// `IPv4`.
    V4,
    /// `IPv6`.
    V6,
}

impl Family {
    /// From `IPv4` / `IPv6`.
    pub fn parse(text: &str) -> Option<Family> {
        match text {
            "IPv4" => Some(Family::V4),
            "IPv6" => Some(Family::V6),
            _ => None,
        }
    }

    /// Whether `ip` is of this family.
    pub fn holds(self, ip: IpAddr) -> bool {
        ip.is_ipv4() == (self == Family::V4)
    }

    /// `IPv4` / `IPv6`.
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// The last segment of a second family's allocation record.
    pub(super) fn record_suffix(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }
}

/// `spec.ipFamilyPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stack {
    /// `SingleStack` or unset: one IP, of its pool's family.
    #[default]
    Single,
    /// `PreferDualStack`: both families where pools allow, else one.
    Prefer,
    /// `RequireDualStack`: both families, or pending.
    Require,
}

impl Stack {
    /// From `spec.ipFamilyPolicy`.
    pub fn parse(text: Option<&str>) -> Stack {
        match text {
            Some("PreferDualStack") => Stack::Prefer,
            Some("RequireDualStack") => Stack::Require,
            _ => Stack::Single,
        }
    }
}
