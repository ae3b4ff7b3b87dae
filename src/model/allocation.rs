//! extip-sync's allocation records under `<prefix>/allocations/`.
//!
//! Two keys per allocation, written together in one transaction that succeeds only if
//! neither exists: `<ns>/<name>` says which IP a Service has, `<ip>` says which Service
//! an IP belongs to. The first makes a Service get one IP however many syncs race; the
//! second makes an IP go to one Service. A namespace cannot contain `.` or `:`, so one
//! path segment is an IP and two are a Service; a dual-stack Service's second family
//! has a third, `ipv4` or `ipv6`.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// `managed_by` of the desired keys extip-sync writes.
pub const MANAGED_BY_SYNC: &str = "extip-sync";

/// `<prefix>/allocations/<ns>/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceAllocation {
    /// The IP.
    pub ip: IpAddr,
    /// Pool it came from; `None` for an IP the Service asked for outside any pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// The Service named this IP (`spec.loadBalancerIP` or `extip.io/ip`).
    #[serde(default)]
    pub requested: bool,
    /// When the Service went away (RFC 3339); the record then lives on a lease of the
    /// retention window so a Service re-created under the same name gets the IP back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_at: Option<String>,
}

/// `<prefix>/allocations/<ip>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpAllocation {
    /// `namespace/name` of the Service that keeps the record (one of them, when shared).
    pub service: String,
    /// `extip.io/sharing-key` of the Services that share the IP: others of that
    /// namespace with the same key may join it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sharing_key: Option<String>,
}

impl IpAllocation {
    /// Whether `service`, with sharing key `key`, may join the IP this record keeps.
    pub fn shareable_by(&self, service: &str, key: Option<&str>) -> bool {
        let namespace = |name: &str| name.split('/').next().unwrap_or_default().to_string();
        key.is_some()
            && self.sharing_key.as_deref() == key
            && namespace(&self.service) == namespace(service)
    }
}

/// What a key under `<prefix>/allocations/` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllocationKey {
    /// `<ns>/<name>`.
    Service(String),
    /// `<ip>`.
    Ip(IpAddr),
}

/// Classify the part of a key after `<prefix>/allocations/`; `None` for anything else.
pub fn parse_allocation_key(rest: &str) -> Option<AllocationKey> {
    match rest.split('/').collect::<Vec<_>>().as_slice() {
        [ip] => ip.parse().ok().map(AllocationKey::Ip),
        [ns, name] if !ns.is_empty() && !name.is_empty() => {
            Some(AllocationKey::Service(rest.to_string()))
        }
        // A dual-stack Service's second family.
        [ns, name, "ipv4" | "ipv6"] if !ns.is_empty() && !name.is_empty() => {
            Some(AllocationKey::Service(rest.to_string()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_segment_is_an_ip_two_are_a_service() {
        assert_eq!(
            parse_allocation_key("198.51.100.7"),
            Some(AllocationKey::Ip("198.51.100.7".parse().unwrap()))
        );
        assert_eq!(
            parse_allocation_key("2001:db8::7"),
            Some(AllocationKey::Ip("2001:db8::7".parse().unwrap()))
        );
        assert_eq!(
            parse_allocation_key("default/web"),
            Some(AllocationKey::Service("default/web".into()))
        );
        assert_eq!(
            parse_allocation_key("default/web/ipv6"),
            Some(AllocationKey::Service("default/web/ipv6".into()))
        );
        assert_eq!(parse_allocation_key("default"), None);
        assert_eq!(parse_allocation_key("a/b/c"), None);
    }

    #[test]
    fn a_released_allocation_reads_back_with_its_time() {
        let a = ServiceAllocation {
            ip: "198.51.100.7".parse().unwrap(),
            pool: Some("lb".into()),
            requested: false,
            released_at: Some("2026-11-26T16:00:00Z".into()),
        };
        let text = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<ServiceAllocation>(&text).unwrap(), a);
    }
}
