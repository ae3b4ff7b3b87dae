//! Pools: `<prefix>/pools/<name>` records, and how a desired IP inherits mask, interface
//! and replicas from the most specific pool that contains it (its own settings win).

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::model::{
    self, max_prefix_len, parse_replicas, validate_interface, ContractError, DesiredIp,
    ParsedDesired, Replicas, MAX_VALUE_BYTES,
};

/// A validated pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pool {
    /// Addresses of the pool.
    pub cidr: IpNet,
    /// Mask its IPs are configured with, unless they set their own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix_len: Option<u8>,
    /// Interface its IPs go on, unless they set their own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Replicas of its IPs, unless they set their own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<Replicas>,
    /// Whether extip-sync may allocate from it for LoadBalancer Services.
    #[serde(default)]
    pub auto_assign: bool,
    /// Labels a node must carry to serve its IPs, unless they set their own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// `extip-sync` when an IpPool object is its source: edits come from Kubernetes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_by: Option<String>,
}

#[derive(Deserialize)]
struct PoolValue {
    cidr: String,
    #[serde(default)]
    prefix_len: Option<serde_json::Value>,
    #[serde(default)]
    interface: Option<String>,
    #[serde(default)]
    replicas: Option<serde_json::Value>,
    #[serde(default)]
    auto_assign: bool,
    #[serde(default)]
    node_selector: BTreeMap<String, String>,
    #[serde(default)]
    managed_by: Option<String>,
    #[serde(flatten)]
    unknown: BTreeMap<String, serde_json::Value>,
}

/// Validate a pool value; unknown fields are returned so the caller can report them.
pub fn parse_pool(raw: &[u8]) -> Result<(Pool, Vec<String>), ContractError> {
    if raw.len() > MAX_VALUE_BYTES {
        return Err(ContractError::TooLarge(raw.len()));
    }
    let value: PoolValue =
        serde_json::from_slice(raw).map_err(|e| ContractError::BadJson(e.to_string()))?;
    let cidr: IpNet = value.cidr.parse().map_err(|_| ContractError::BadField {
        field: "cidr",
        reason: format!("`{}` is not a CIDR", value.cidr),
    })?;
    let max = max_prefix_len(cidr.addr());
    let prefix_len = match value.prefix_len {
        None => None,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=u64::from(max)).contains(&n) => Some(n as u8),
            _ => {
                return Err(ContractError::BadField {
                    field: "prefix_len",
                    reason: format!("{v} is not a number from 1 to {max}"),
                })
            }
        },
    };
    let pool = Pool {
        cidr: cidr.trunc(),
        prefix_len,
        interface: value.interface.map(validate_interface).transpose()?,
        replicas: value.replicas.as_ref().map(parse_replicas).transpose()?,
        auto_assign: value.auto_assign,
        node_selector: value.node_selector,
        managed_by: value.managed_by,
    };
    Ok((pool, value.unknown.into_keys().collect()))
}

/// The most specific pool containing `ip` (longest prefix; the first name on a tie).
pub fn pool_for(ip: IpAddr, pools: &BTreeMap<String, Pool>) -> Option<(&str, &Pool)> {
    pools
        .iter()
        .filter(|(_, p)| p.cidr.contains(&ip))
        .max_by(|a, b| {
            a.1.cidr
                .prefix_len()
                .cmp(&b.1.cidr.prefix_len())
                .then(b.0.cmp(a.0))
        })
        .map(|(name, p)| (name.as_str(), p))
}

/// What the agents serve for `ip`: its own settings, else its pool's, else the defaults.
pub fn resolve(ip: IpAddr, parsed: &ParsedDesired, pools: &BTreeMap<String, Pool>) -> DesiredIp {
    let mut desired = parsed.desired.clone();
    let Some((name, pool)) = pool_for(ip, pools) else {
        return desired;
    };
    // A pool mask only fits IPs of its own family.
    if desired.prefix_len.is_none() && pool.cidr.addr().is_ipv4() == ip.is_ipv4() {
        desired.prefix_len = pool.prefix_len;
    }
    if desired.interface.is_none() {
        desired.interface = pool.interface.clone();
    }
    if desired.node_selector.is_empty() {
        desired.node_selector = pool.node_selector.clone();
    }
    if !parsed.explicit_replicas {
        desired.replicas = pool.replicas.unwrap_or(model::Replicas::EXCLUSIVE);
    }
    desired.pool.get_or_insert_with(|| name.to_string());
    desired
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parse_desired;

    fn pools(entries: &[(&str, &str)]) -> BTreeMap<String, Pool> {
        entries
            .iter()
            .map(|(name, raw)| (name.to_string(), parse_pool(raw.as_bytes()).unwrap().0))
            .collect()
    }

    #[test]
    fn an_ip_inherits_from_its_most_specific_pool_and_its_own_settings_win() {
        let p = pools(&[
            (
                "wide",
                r#"{"cidr":"198.51.100.0/24","prefix_len":24,"replicas":2}"#,
            ),
            ("narrow", r#"{"cidr":"198.51.100.0/28","interface":"eth0"}"#),
        ]);
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        let plain = parse_desired(ip, b"{}").unwrap();
        let d = resolve(ip, &plain, &p);
        assert_eq!(d.interface.as_deref(), Some("eth0"));
        assert_eq!(d.pool.as_deref(), Some("narrow"));
        assert_eq!(d.prefix_len, None);
        let far: IpAddr = "198.51.100.77".parse().unwrap();
        let d = resolve(far, &parse_desired(far, b"{}").unwrap(), &p);
        assert_eq!((d.prefix_len, d.replicas), (Some(24), Replicas::Count(2)));
        let own = parse_desired(far, br#"{"prefix_len":32,"replicas":1}"#).unwrap();
        let d = resolve(far, &own, &p);
        assert_eq!((d.prefix_len, d.replicas), (Some(32), Replicas::Count(1)));
    }

    #[test]
    fn bad_pools_name_their_field() {
        for (raw, field) in [
            (r#"{"cidr":"nope"}"#, "cidr"),
            (
                r#"{"cidr":"198.51.100.0/24","prefix_len":40}"#,
                "prefix_len",
            ),
            (
                r#"{"cidr":"198.51.100.0/24","replicas":"many"}"#,
                "replicas",
            ),
            (r#"{"prefix_len":24}"#, "cidr"),
        ] {
            let err = parse_pool(raw.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(field), "{err} should name {field}");
        }
    }
}
