//! The etcd contract: key layout, JSON values and their validation.
//!
//! Users script against these keys with `etcdctl`, so everything here is public
//! interface: change it only in a backwards-compatible way.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

mod allocation;
mod refusal;
mod vouch;
pub use allocation::{
    parse_allocation_key, AllocationKey, IpAllocation, ServiceAllocation, MANAGED_BY_SYNC,
};
pub use refusal::{publishable_host_address, special_purpose, MemberAddresses, Refusal};
pub use vouch::{
    lease_hex, parse_lease_hex, parse_revoked, parse_vote, PeersView, RevokedValue, VoteValue,
    VouchMode, VouchRecord,
};

/// Largest value the agent accepts under the prefix; anything bigger is bad data.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// Largest `replicas` count accepted; a bigger number is almost certainly a typo.
pub const MAX_REPLICAS: u32 = 1024;

/// Why a key or a value under the prefix was rejected.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ContractError {
    /// The IP part of a key does not parse.
    #[error("`{0}` is not an IP address")]
    BadIp(String),
    /// The IP parses but is not written the canonical way, so two keys could name one IP.
    #[error("`{given}` is not canonical IP text; use `{canonical}`")]
    NotCanonical { given: String, canonical: String },
    /// A slot segment that is not a small non-negative number.
    #[error("claim slot `{0}` is not a number")]
    BadSlot(String),
    /// The value is larger than [`MAX_VALUE_BYTES`].
    #[error("value is {0} bytes, the limit is {MAX_VALUE_BYTES}")]
    TooLarge(usize),
    /// The value is not the expected JSON.
    #[error("value is not valid JSON for this key: {0}")]
    BadJson(String),
    /// A field has a value outside its range.
    #[error("field `{field}`: {reason}")]
    BadField { field: &'static str, reason: String },
}

/// What a key under the prefix names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    /// `<prefix>/ips/<ip>`: a desired address.
    Desired(IpAddr),
    /// `<prefix>/claims/<ip>/<slot>`: a holder of one slot of an IP.
    Claim(IpAddr, u32),
    /// `<prefix>/nodes/<node>`: a live agent.
    Node(String),
    /// `<prefix>/drains/<node>`: an operator asked this node to hand everything over.
    Drain(String),
    /// `<prefix>/pools/<name>`: a pool of IPs with shared settings.
    Pool(String),
    /// `<prefix>/conflicts/<ip>`: a foreign host answers for this IP.
    Conflict(IpAddr),
    /// `<prefix>/history/<ip>`: the last holders of an IP.
    History(IpAddr),
    /// `<prefix>/votes/<holder>/<voter>`: a witness's vote against a holder.
    Vote(String, String),
    /// `<prefix>/revoked/<node>`: the last revocation of a node by its witnesses.
    Revoked(String),
    /// Any other key: pools, allocations and keys of later versions.
    Other,
}

/// The etcd key layout under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (a trailing `/` is ignored).
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    /// The prefix every extip key starts with, ending in `/`.
    pub fn root(&self) -> String {
        format!("{}/", self.prefix)
    }

    /// `<prefix>/ips/<ip>`.
    pub fn desired(&self, ip: IpAddr) -> String {
        format!("{}/ips/{ip}", self.prefix)
    }

    /// `<prefix>/ips/`, the range of desired keys.
    pub fn desired_root(&self) -> String {
        format!("{}/ips/", self.prefix)
    }

    /// `<prefix>/claims/<ip>/<slot>`.
    pub fn claim(&self, ip: IpAddr, slot: u32) -> String {
        format!("{}/claims/{ip}/{slot}", self.prefix)
    }

    /// `<prefix>/nodes/<node>`.
    pub fn node(&self, node: &str) -> String {
        format!("{}/nodes/{node}", self.prefix)
    }

    /// `<prefix>/pools/<name>`.
    pub fn pool(&self, name: &str) -> String {
        format!("{}/pools/{name}", self.prefix)
    }

    /// `<prefix>/drains/<node>`.
    pub fn drain(&self, node: &str) -> String {
        format!("{}/drains/{node}", self.prefix)
    }

    /// `<prefix>/conflicts/<ip>`: another host on the segment answers for this IP.
    pub fn conflict(&self, ip: IpAddr) -> String {
        format!("{}/conflicts/{ip}", self.prefix)
    }

    /// `<prefix>/history/<ip>`: the last holders of an IP.
    pub fn history(&self, ip: IpAddr) -> String {
        format!("{}/history/{ip}", self.prefix)
    }

    /// `<prefix>/allocations/<ns>/<name>`: the IP allocated to a LoadBalancer Service.
    pub fn service_allocation(&self, service: &str) -> String {
        format!("{}/allocations/{service}", self.prefix)
    }

    /// `<prefix>/allocations/<ip>`: the Service an IP is allocated to.
    pub fn ip_allocation(&self, ip: IpAddr) -> String {
        format!("{}/allocations/{ip}", self.prefix)
    }

    /// `<prefix>/allocations/`.
    pub fn allocations(&self) -> String {
        format!("{}/allocations/", self.prefix)
    }

    /// `<prefix>/pools/`.
    pub fn pools(&self) -> String {
        format!("{}/pools/", self.prefix)
    }

    /// `<prefix>/sync/leader`: the extip-sync replica that writes, on its election lease.
    pub fn sync_leader(&self) -> String {
        format!("{}/sync/leader", self.prefix)
    }

    /// `<prefix>/conflicts/`.
    pub fn conflicts(&self) -> String {
        format!("{}/conflicts/", self.prefix)
    }

    /// Classify a key; `Ok(None)` when the key is outside the prefix.
    pub fn parse(&self, key: &str) -> Result<Option<KeyKind>, ContractError> {
        let Some(rest) = key
            .strip_prefix(&self.prefix)
            .and_then(|r| r.strip_prefix('/'))
        else {
            return Ok(None);
        };
        let kind = if let Some(ip) = rest.strip_prefix("ips/") {
            KeyKind::Desired(parse_canonical_ip(ip)?)
        } else if let Some(claim) = rest.strip_prefix("claims/") {
            let (ip, slot) = claim
                .rsplit_once('/')
                .ok_or_else(|| ContractError::BadSlot(String::new()))?;
            let slot = slot
                .parse::<u32>()
                .map_err(|_| ContractError::BadSlot(slot.to_string()))?;
            KeyKind::Claim(parse_canonical_ip(ip)?, slot)
        } else if let Some(node) = rest.strip_prefix("nodes/") {
            KeyKind::Node(node.to_string())
        } else if let Some(node) = rest.strip_prefix("drains/") {
            KeyKind::Drain(node.to_string())
        } else if let Some(name) = rest.strip_prefix("pools/") {
            KeyKind::Pool(name.to_string())
        } else if let Some(ip) = rest.strip_prefix("conflicts/") {
            KeyKind::Conflict(parse_canonical_ip(ip)?)
        } else if let Some(ip) = rest.strip_prefix("history/") {
            KeyKind::History(parse_canonical_ip(ip)?)
        } else if let Some(vote) = rest.strip_prefix("votes/") {
            match vote.split_once('/') {
                Some((holder, voter)) if !holder.is_empty() && !voter.is_empty() => {
                    KeyKind::Vote(holder.to_string(), voter.to_string())
                }
                _ => KeyKind::Other,
            }
        } else if let Some(node) = rest.strip_prefix("revoked/") {
            KeyKind::Revoked(node.to_string())
        } else {
            KeyKind::Other
        };
        Ok(Some(kind))
    }
}

/// Parse an IP and insist on the canonical text form (IPv6 compressed, no CIDR suffix).
pub fn parse_canonical_ip(text: &str) -> Result<IpAddr, ContractError> {
    let ip = IpAddr::from_str(text).map_err(|_| ContractError::BadIp(text.to_string()))?;
    let canonical = ip.to_string();
    if canonical != text {
        return Err(ContractError::NotCanonical {
            given: text.to_string(),
            canonical,
        });
    }
    Ok(ip)
}

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

/// The value of `<prefix>/claims/<ip>/<slot>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimValue {
    /// Node name of the holder.
    pub node: String,
    /// When the holder claimed it, RFC 3339.
    pub since: String,
}

/// The value of `<prefix>/conflicts/<ip>`, on the lease of the agent that saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictValue {
    /// The agent whose probe got the answer.
    pub node: String,
    /// The link-layer address that answered.
    pub mac: String,
    /// When, RFC 3339.
    pub since: String,
}

/// How many holders `<prefix>/history/<ip>` keeps: enough for "where was it last
/// night", bounded so a flapping IP cannot grow a key.
pub const MAX_HISTORY: usize = 5;

/// One entry of `<prefix>/history/<ip>` (a JSON list, oldest first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The node that won a claim on the IP.
    pub node: String,
    /// When, RFC 3339.
    pub since: String,
}

/// The history with `entry` appended, the oldest dropped beyond [`MAX_HISTORY`].
pub fn push_history(mut history: Vec<HistoryEntry>, entry: HistoryEntry) -> Vec<HistoryEntry> {
    history.push(entry);
    let excess = history.len().saturating_sub(MAX_HISTORY);
    history.drain(..excess);
    history
}

/// The value of `<prefix>/nodes/<node>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeValue {
    /// Node name, equal to the key's last segment.
    pub node: String,
    /// Interfaces this agent serves and that are up: empty while it can serve nothing.
    pub interfaces: Vec<String>,
    /// The interface for IPs that name none; absent from older agents (any interface).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_interface: Option<String>,
    /// CIDRs this agent may configure; empty means unknown (an older agent).
    #[serde(default)]
    pub allowed_cidrs: Vec<ipnet::IpNet>,
    /// Labels for IP placement.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// A draining node holds nothing.
    #[serde(default)]
    pub draining: bool,
    /// Version of the agent.
    #[serde(default)]
    pub version: String,
    /// When the agent started, RFC 3339.
    #[serde(default)]
    pub started: String,
    /// The host's own addresses (not added by extip): no agent takes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_addresses: Vec<IpAddr>,
    /// The addresses of the etcd endpoints this agent uses: no agent takes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub etcd_addresses: Vec<IpAddr>,
    /// The agent is stopping and has removed its addresses already: its IPs may be
    /// taken without a conflict probe (it held them until a moment ago).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leaving: bool,
    /// Where the agent receives heartbeats (`ip:port`); absent: peer vouching off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<std::net::SocketAddr>,
    /// How its exclusive IPs stay lit, and its witnesses; absent: by the lease alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vouch: Option<VouchRecord>,
}

impl NodeValue {
    /// A live node serving `interfaces`, eligible for any IP (allowed CIDRs unknown).
    pub fn new(node: &str, interfaces: &[&str]) -> Self {
        NodeValue {
            node: node.to_string(),
            interfaces: interfaces.iter().map(|i| i.to_string()).collect(),
            default_interface: None,
            allowed_cidrs: Vec::new(),
            labels: BTreeMap::new(),
            draining: false,
            version: String::new(),
            started: String::new(),
            host_addresses: Vec::new(),
            etcd_addresses: Vec::new(),
            leaving: false,
            peer: None,
            vouch: None,
        }
    }
}

/// Parse a claim value; claims are written by agents, but etcdctl can write anything.
pub fn parse_claim(raw: &[u8]) -> Result<ClaimValue, ContractError> {
    if raw.len() > MAX_VALUE_BYTES {
        return Err(ContractError::TooLarge(raw.len()));
    }
    serde_json::from_slice(raw).map_err(|e| ContractError::BadJson(e.to_string()))
}

/// Parse a node membership value.
pub fn parse_node(raw: &[u8]) -> Result<NodeValue, ContractError> {
    if raw.len() > MAX_VALUE_BYTES {
        return Err(ContractError::TooLarge(raw.len()));
    }
    serde_json::from_slice(raw).map_err(|e| ContractError::BadJson(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn keys_round_trip_through_parse() {
        let keys = Keys::new("/extip/");
        let v6 = ip("2001:db8::10");
        assert_eq!(keys.desired(v6), "/extip/ips/2001:db8::10");
        assert_eq!(
            keys.parse(&keys.desired(v6)).unwrap(),
            Some(KeyKind::Desired(v6))
        );
        assert_eq!(
            keys.parse(&keys.claim(v6, 3)).unwrap(),
            Some(KeyKind::Claim(v6, 3))
        );
        assert_eq!(
            keys.parse("/extip/nodes/h1").unwrap(),
            Some(KeyKind::Node("h1".into()))
        );
        assert_eq!(
            keys.parse("/extip/pools/a").unwrap(),
            Some(KeyKind::Pool("a".into()))
        );
        assert_eq!(
            keys.parse("/extip/allocations/a/b").unwrap(),
            Some(KeyKind::Other)
        );
        assert_eq!(keys.parse("/extipx/ips/1.2.3.4").unwrap(), None);
        assert_eq!(keys.parse("/other").unwrap(), None);
    }

    #[test]
    fn non_canonical_and_bad_ips_are_rejected_with_the_fix() {
        let keys = Keys::new("/extip");
        assert_eq!(
            keys.parse("/extip/ips/2001:0db8::10"),
            Err(ContractError::NotCanonical {
                given: "2001:0db8::10".into(),
                canonical: "2001:db8::10".into()
            })
        );
        assert!(matches!(
            keys.parse("/extip/ips/198.51.100.10/32"),
            Err(ContractError::BadIp(_))
        ));
        assert!(matches!(
            keys.parse("/extip/claims/198.51.100.10/x"),
            Err(ContractError::BadSlot(_))
        ));
    }

    #[test]
    fn empty_object_is_an_exclusive_ip() {
        let p = parse_desired(ip("198.51.100.10"), b"{}").unwrap();
        assert_eq!(p.desired.replicas, Replicas::Count(1));
        assert_eq!(p.desired.prefix_len, None);
        assert!(p.ignored_fields.is_empty());
    }

    #[test]
    fn full_value_parses_and_unknown_fields_are_reported() {
        let raw = br#"{"prefix_len":24,"replicas":"all","interface":"eth0","pool":"p","source":["a/b","c/d"],"nodes":["h1","h3","h1"],"colour":"red"}"#;
        let p = parse_desired(ip("198.51.100.10"), raw).unwrap();
        assert_eq!(p.desired.prefix_len, Some(24));
        assert_eq!(p.desired.replicas, Replicas::All);
        assert_eq!(p.desired.interface.as_deref(), Some("eth0"));
        assert_eq!(p.desired.nodes, Some(["h1".into(), "h3".into()].into()));
        assert_eq!(p.ignored_fields, vec!["colour".to_string()]);
    }

    #[test]
    fn bad_values_name_their_field() {
        let v4 = ip("198.51.100.10");
        let cases: [(&[u8], &str); 8] = [
            (b"not json", "not valid JSON"),
            (br#"{"prefix_len":33}"#, "prefix_len"),
            (br#"{"prefix_len":"24"}"#, "prefix_len"),
            (br#"{"replicas":"some"}"#, "replicas"),
            (br#"{"replicas":0}"#, "replicas"),
            (br#"{"interface":"a/b"}"#, "interface"),
            (br#"{"nodes":["h1","a b"]}"#, "nodes"),
            (br#"{"nodes":"h1"}"#, "nodes"),
        ];
        for (raw, needle) in cases {
            let err = parse_desired(v4, raw).unwrap_err().to_string();
            assert!(err.contains(needle), "{err} should mention {needle}");
        }
        assert!(parse_desired(ip("2001:db8::1"), br#"{"prefix_len":64}"#).is_ok());
    }

    #[test]
    fn huge_values_are_rejected_before_parsing() {
        let big = vec![b' '; MAX_VALUE_BYTES + 1];
        assert_eq!(
            parse_desired(ip("198.51.100.10"), &big),
            Err(ContractError::TooLarge(MAX_VALUE_BYTES + 1))
        );
    }

    #[test]
    fn history_keeps_the_last_holders_oldest_first() {
        let entry = |n: usize| HistoryEntry {
            node: format!("h{n}"),
            since: String::new(),
        };
        let mut history = Vec::new();
        for n in 1..=7 {
            history = push_history(history, entry(n));
        }
        let nodes: Vec<&str> = history.iter().map(|h| h.node.as_str()).collect();
        assert_eq!(nodes, ["h3", "h4", "h5", "h6", "h7"]);
    }
}
