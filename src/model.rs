//! The etcd contract: key layout, JSON values and their validation.
//!
//! Users script against these keys with `etcdctl`, so everything here is public
//! interface: change it only in a backwards-compatible way.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

mod allocation;
mod desired;
mod keys;
mod refusal;
#[cfg(test)]
mod tests;
mod vouch;
pub use allocation::{
    parse_allocation_key, AllocationKey, IpAllocation, ServiceAllocation, MANAGED_BY_SYNC,
};
pub use desired::{
    max_prefix_len, parse_desired, parse_node_list, parse_replicas, validate_interface, DesiredIp,
    DesiredValue, ParsedDesired, Replicas, Source, KUBERNETES_NODE_LABEL, MAX_NODES_LISTED,
};
pub use keys::{parse_canonical_ip, KeyKind, Keys};
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
