//! The etcd contract of peer vouching: the part of a node record that says how its
//! holder may be revoked, the votes of its witnesses, and the record of a revocation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{ContractError, Keys, MAX_VALUE_BYTES};

impl Keys {
    /// `<prefix>/votes/<holder>/<voter>`.
    pub fn vote(&self, holder: &str, voter: &str) -> String {
        format!("{}{holder}/{voter}", self.votes_root())
    }

    /// `<prefix>/votes/<holder>/`: every vote against `holder`.
    pub fn votes(&self, holder: &str) -> String {
        format!("{}{holder}/", self.votes_root())
    }

    /// `<prefix>/votes/`.
    pub fn votes_root(&self) -> String {
        format!("{}votes/", self.root())
    }

    /// `<prefix>/revoked/<node>`.
    pub fn revoked(&self, node: &str) -> String {
        format!("{}revoked/{node}", self.root())
    }

    /// `<prefix>/secret`: the cluster secret that signs heartbeats, unless a file has it.
    pub fn secret(&self) -> String {
        format!("{}secret", self.root())
    }
}

/// How a holder's exclusive IPs stay lit, as its node record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VouchMode {
    /// Lit only while the lease lives and an acknowledgement quorum of the listed
    /// witnesses vouches for it; a vote quorum of them may revoke its lease.
    Peers,
    /// Lit while the lease lives; nobody may vote against it (no witness, or its
    /// acknowledgement quorum was lost, e.g. a split peer network).
    LeaseOnly,
}

/// The vouching part of a node record: `{"mode":"peers","witnesses":["h2","h3"]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VouchRecord {
    /// Peers or lease only.
    pub mode: VouchMode,
    /// The holder's witnesses, in ring order; their quorums are counted over this list.
    pub witnesses: Vec<String>,
}

impl VouchRecord {
    /// Whether a vote quorum of the witnesses may revoke the holder's lease.
    pub fn revocable(&self) -> bool {
        self.mode == VouchMode::Peers && !self.witnesses.is_empty()
    }
}

/// `<prefix>/votes/<holder>/<voter>`: a witness that stopped hearing `holder` and
/// whose promise has run out votes against the lease at the record revision it saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteValue {
    /// The holder's lease, hexadecimal as etcdctl prints it.
    pub lease: String,
    /// The `mod_revision` of the holder's node record the vote is against.
    pub revision: i64,
    /// When the vote was cast, RFC 3339 (for people; never compared).
    #[serde(default)]
    pub since: String,
}

/// `<prefix>/revoked/<node>`: the last revocation of a node's lease by its witnesses.
/// Any agent that sees it while the lease still holds keys revokes the lease again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedValue {
    /// The revoked lease, hexadecimal.
    pub lease: String,
    /// The node record revision the votes were against.
    pub revision: i64,
    /// The witnesses whose votes made the quorum.
    pub voters: Vec<String>,
    /// The agent that ran the revocation.
    pub by: String,
    /// When, RFC 3339.
    #[serde(default)]
    pub since: String,
}

/// A lease as the vouching keys write it.
pub fn lease_hex(lease: i64) -> String {
    format!("{lease:x}")
}

/// The lease of a vouching key's value.
pub fn parse_lease_hex(text: &str) -> Result<i64, ContractError> {
    i64::from_str_radix(text, 16).map_err(|_| ContractError::BadField {
        field: "lease",
        reason: format!("`{text}` is not a hexadecimal lease ID"),
    })
}

fn parse_json<T: serde::de::DeserializeOwned>(raw: &[u8]) -> Result<T, ContractError> {
    if raw.len() > MAX_VALUE_BYTES {
        return Err(ContractError::TooLarge(raw.len()));
    }
    serde_json::from_slice(raw).map_err(|e| ContractError::BadJson(e.to_string()))
}

/// Parse a vote; its lease must be readable.
pub fn parse_vote(raw: &[u8]) -> Result<(VoteValue, i64), ContractError> {
    let vote: VoteValue = parse_json(raw)?;
    let lease = parse_lease_hex(&vote.lease)?;
    Ok((vote, lease))
}

/// Parse a revocation record; its lease must be readable.
pub fn parse_revoked(raw: &[u8]) -> Result<(RevokedValue, i64), ContractError> {
    let revoked: RevokedValue = parse_json(raw)?;
    let lease = parse_lease_hex(&revoked.lease)?;
    Ok((revoked, lease))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vouch_keys_round_trip() {
        use crate::model::KeyKind;
        let keys = Keys::new("/extip");
        let vote = keys.vote("h1", "h2");
        assert_eq!(vote, "/extip/votes/h1/h2");
        assert_eq!(
            keys.parse(&vote),
            Ok(Some(KeyKind::Vote("h1".into(), "h2".into())))
        );
        assert_eq!(
            keys.parse("/extip/revoked/h1"),
            Ok(Some(KeyKind::Revoked("h1".into())))
        );
        assert_eq!(keys.parse("/extip/votes/h1"), Ok(Some(KeyKind::Other)));
        assert_eq!(keys.parse(&keys.secret()), Ok(Some(KeyKind::Other)));
    }

    #[test]
    fn vouch_values_read_as_documented() {
        let record: VouchRecord =
            serde_json::from_str(r#"{"mode":"peers","witnesses":["h2","h3"]}"#).unwrap();
        assert!(record.revocable());
        let lease_only: VouchRecord =
            serde_json::from_str(r#"{"mode":"lease-only","witnesses":["h2"]}"#).unwrap();
        assert!(!lease_only.revocable());
        let (vote, lease) =
            parse_vote(br#"{"lease":"694d9a4f3c1a2b05","revision":42,"since":"x"}"#).unwrap();
        assert_eq!(lease, 0x694d9a4f3c1a2b05);
        assert_eq!(vote.revision, 42);
        assert!(parse_vote(br#"{"lease":"zz","revision":1}"#).is_err());
        assert!(parse_vote(b"{").is_err());
        assert_eq!(lease_hex(0x2a), "2a");
    }
}

/// What an agent's `/peers` endpoint answers: ages in milliseconds at the time of asking.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PeersView {
    /// As a witness: how long ago each holder's last heartbeat arrived.
    pub heard_ms: BTreeMap<String, u64>,
    /// As a holder: how long ago each witness last acknowledged one.
    pub acked_ms: BTreeMap<String, u64>,
    /// How much longer the peers vouch for this host (`None`: they do not).
    pub vouched_for_ms: Option<u64>,
}
