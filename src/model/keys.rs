//! The key layout under the prefix: what each key names, and the canonical IP text
//! keys must use.

use std::net::IpAddr;
use std::str::FromStr;

use super::ContractError;

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

    /// `<prefix>/nodes/`.
    pub fn nodes(&self) -> String {
        format!("{}/nodes/", self.prefix)
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
