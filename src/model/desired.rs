//! The desired IP (`<prefix>/ips/<ip>`): replicas, mask, interface and node lists, and
//! their validation.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{ContractError, MAX_REPLICAS, MAX_VALUE_BYTES};

/// How many hosts hold an IP at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replicas {
    /// Exactly this many hosts; 1 (the default) is an exclusive, failover IP.
    Count(u32),
    /// Every live eligible host.
    All,
}

impl Replicas {
    /// The default: one exclusive holder.
    pub const EXCLUSIVE: Replicas = Replicas::Count(1);
}

impl Serialize for Replicas {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Replicas::Count(n) => s.serialize_u32(*n),
            Replicas::All => s.serialize_str("all"),
        }
    }
}

impl fmt::Display for Replicas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Replicas::Count(n) => write!(f, "{n}"),
            Replicas::All => f.write_str("all"),
        }
    }
}

/// `source` is one `namespace/name` or a list of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Source {
    /// A single writer.
    One(String),
    /// Several writers share the IP.
    Many(Vec<String>),
}

/// The value of `<prefix>/ips/<ip>` after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredIp {
    /// Mask configured with the address; `None` means /32 or /128.
    pub prefix_len: Option<u8>,
    /// How many hosts hold it.
    pub replicas: Replicas,
    /// Interface to put it on; `None` means the agent's own.
    pub interface: Option<String>,
    /// Pool the IP belongs to, for display.
    pub pool: Option<String>,
    /// Who asked for it, for display.
    pub source: Option<Source>,
    /// Labels a node must carry (all of them) to serve it; empty: any node.
    pub node_selector: BTreeMap<String, String>,
    /// The only nodes that may serve it, by node name or [`KUBERNETES_NODE_LABEL`];
    /// `None`: any node. Written by extip-sync for `externalTrafficPolicy: Local`.
    pub nodes: Option<BTreeSet<String>>,
}

impl DesiredIp {
    /// `{}`: an exclusive IP with every default.
    pub fn exclusive() -> Self {
        DesiredIp {
            prefix_len: None,
            replicas: Replicas::EXCLUSIVE,
            interface: None,
            pool: None,
            source: None,
            node_selector: BTreeMap::new(),
            nodes: None,
        }
    }
}

/// The raw JSON shape of a desired value; unknown fields are collected, not fatal.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DesiredValue {
    /// See [`DesiredIp::prefix_len`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_len: Option<serde_json::Value>,
    /// See [`DesiredIp::replicas`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<serde_json::Value>,
    /// See [`DesiredIp::interface`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// See [`DesiredIp::pool`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// See [`DesiredIp::source`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
    /// See [`DesiredIp::node_selector`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// See [`DesiredIp::nodes`]; checked by hand so that an error names the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<serde_json::Value>,
    /// `"extip-sync"` on keys extip-sync wrote: the only keys it ever changes or removes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_by: Option<String>,
    /// Fields this version does not know; reported, then ignored.
    #[serde(flatten, skip_serializing)]
    pub unknown: BTreeMap<String, serde_json::Value>,
}

/// A validated desired value plus the names of fields this version ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedDesired {
    /// The validated value.
    pub desired: DesiredIp,
    /// Whether the value set `replicas` itself (else its pool's applies).
    pub explicit_replicas: bool,
    /// Unknown fields, so the caller can warn once.
    pub ignored_fields: Vec<String>,
}

/// Validate the value of a desired key for `ip`.
pub fn parse_desired(ip: IpAddr, raw: &[u8]) -> Result<ParsedDesired, ContractError> {
    if raw.len() > MAX_VALUE_BYTES {
        return Err(ContractError::TooLarge(raw.len()));
    }
    let value: DesiredValue =
        serde_json::from_slice(raw).map_err(|e| ContractError::BadJson(e.to_string()))?;
    let desired = DesiredIp {
        prefix_len: value
            .prefix_len
            .as_ref()
            .map(|v| parse_prefix_len(ip, v))
            .transpose()?,
        replicas: value
            .replicas
            .as_ref()
            .map(parse_replicas)
            .transpose()?
            .unwrap_or(Replicas::EXCLUSIVE),
        interface: value.interface.map(validate_interface).transpose()?,
        pool: value.pool,
        source: value.source,
        node_selector: value.node_selector.unwrap_or_default(),
        nodes: value.nodes.as_ref().map(parse_node_list).transpose()?,
    };
    Ok(ParsedDesired {
        desired,
        explicit_replicas: value.replicas.is_some(),
        ignored_fields: value.unknown.into_keys().collect(),
    })
}

fn parse_prefix_len(ip: IpAddr, v: &serde_json::Value) -> Result<u8, ContractError> {
    let max = max_prefix_len(ip);
    match v.as_u64() {
        Some(n) if (1..=u64::from(max)).contains(&n) => Ok(n as u8),
        _ => Err(ContractError::BadField {
            field: "prefix_len",
            reason: format!("{v} is not a number from 1 to {max}"),
        }),
    }
}

/// Parse `replicas`: a count from 1 to [`MAX_REPLICAS`] or the string `"all"`.
pub fn parse_replicas(v: &serde_json::Value) -> Result<Replicas, ContractError> {
    if v.as_str() == Some("all") {
        return Ok(Replicas::All);
    }
    match v.as_u64() {
        Some(n) if (1..=u64::from(MAX_REPLICAS)).contains(&n) => Ok(Replicas::Count(n as u32)),
        _ => Err(ContractError::BadField {
            field: "replicas",
            reason: format!("{v} is neither \"all\" nor a number from 1 to {MAX_REPLICAS}"),
        }),
    }
}

/// Check an interface name the way the kernel would (1 to 15 bytes, no `/` or spaces).
pub fn validate_interface(name: String) -> Result<String, ContractError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && !name.contains(['/', ':'])
        && !name.chars().any(char::is_whitespace);
    if ok {
        Ok(name)
    } else {
        Err(ContractError::BadField {
            field: "interface",
            reason: format!("`{name}` is not a valid interface name"),
        })
    }
}

/// Agent label naming the Kubernetes node an agent runs on, when that differs from
/// its `--node` name: `nodes` lists Kubernetes node names (EndpointSlice `nodeName`).
pub const KUBERNETES_NODE_LABEL: &str = "extip.io/kubernetes-node";

/// Most names `nodes` may list: bounds a value written by hand.
pub const MAX_NODES_LISTED: usize = 1024;

/// Parse `nodes`: a list of node names (1-253 characters, no `/`, spaces or controls).
pub fn parse_node_list(v: &serde_json::Value) -> Result<BTreeSet<String>, ContractError> {
    let not_names = || ContractError::BadField {
        field: "nodes",
        reason: format!("{v} is not a list of node names"),
    };
    let names = v
        .as_array()
        .ok_or_else(not_names)?
        .iter()
        .map(|n| n.as_str().ok_or_else(not_names))
        .collect::<Result<Vec<&str>, _>>()?;
    if names.len() > MAX_NODES_LISTED {
        return Err(ContractError::BadField {
            field: "nodes",
            reason: format!("{} names, more than {MAX_NODES_LISTED}", names.len()),
        });
    }
    let bad = names.iter().find(|n| {
        n.is_empty()
            || n.len() > 253
            || n.contains('/')
            || n.chars().any(|c| c.is_whitespace() || c.is_control())
    });
    match bad {
        Some(n) => Err(ContractError::BadField {
            field: "nodes",
            reason: format!("`{n}` is not a node name (1-253 characters, no `/` or spaces)"),
        }),
        None => Ok(names.into_iter().map(str::to_string).collect()),
    }
}

/// The full-length mask for the address family: 32 or 128.
pub fn max_prefix_len(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}
