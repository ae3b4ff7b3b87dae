//! The agent's copy of the cluster state, fed by lists and watch changes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use tracing::{debug, warn};

use crate::model::{self, DesiredIp, KeyKind, Keys, NodeValue};
use crate::plan::{Claims, Holder};
use crate::store::{Change, RawKv, Snapshot};

/// Desired IPs, claims and nodes as last seen in etcd.
pub struct ClusterView {
    keys: Keys,
    /// Valid desired IPs.
    pub desired: BTreeMap<IpAddr, DesiredIp>,
    /// Claims, valid or not: an existing claim key takes its slot whatever its value.
    pub claims: Claims,
    /// Live nodes.
    pub nodes: BTreeMap<String, NodeValue>,
    /// Nodes an operator drained.
    pub drains: BTreeSet<String>,
    /// Changes at or below this revision are already in the view.
    revision: i64,
    /// Bad keys already reported, with the revision reported, so each is logged once.
    reported: HashMap<String, i64>,
}

impl ClusterView {
    /// An empty view for keys under `keys`.
    pub fn new(keys: Keys) -> Self {
        ClusterView {
            keys,
            desired: BTreeMap::new(),
            claims: Claims::new(),
            nodes: BTreeMap::new(),
            drains: BTreeSet::new(),
            revision: 0,
            reported: HashMap::new(),
        }
    }

    /// Replace everything with a fresh list.
    pub fn replace(&mut self, snapshot: &Snapshot) {
        self.desired.clear();
        self.claims.clear();
        self.nodes.clear();
        self.drains.clear();
        for kv in &snapshot.kvs {
            self.put(kv);
        }
        self.revision = snapshot.revision;
    }

    /// Apply one watched change; changes the view already has are skipped.
    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::Put(kv) if kv.mod_revision > self.revision => self.put(kv),
            Change::Delete { key, revision } if *revision > self.revision => self.delete(key),
            _ => {}
        }
    }

    /// Live nodes as placement sees them: a drain key drains a node even if its
    /// agent has not said so yet.
    pub fn placement_nodes(&self) -> BTreeMap<String, NodeValue> {
        let mut nodes = self.nodes.clone();
        for (name, node) in nodes.iter_mut() {
            node.draining |= self.drains.contains(name);
        }
        nodes
    }

    /// Record the outcome of this agent's own claim transaction.
    pub fn set_claim(&mut self, ip: IpAddr, slot: u32, holder: Holder) {
        self.claims.entry(ip).or_default().insert(slot, holder);
    }

    /// Record that a claim key is gone.
    pub fn remove_claim(&mut self, ip: IpAddr, slot: u32) {
        if let Some(slots) = self.claims.get_mut(&ip) {
            slots.remove(&slot);
            if slots.is_empty() {
                self.claims.remove(&ip);
            }
        }
    }

    /// Holder of a claim key as written in etcd.
    pub fn holder_of(&mut self, kv: &RawKv) -> Holder {
        let node = match model::parse_claim(&kv.value) {
            Ok(claim) => Some(claim.node),
            Err(e) => {
                self.report(kv, &e.to_string());
                None
            }
        };
        Holder {
            node,
            lease: kv.lease,
        }
    }

    fn put(&mut self, kv: &RawKv) {
        match self.keys.parse(&kv.key) {
            Ok(Some(KeyKind::Desired(ip))) => match model::parse_desired(ip, &kv.value) {
                Ok(parsed) => {
                    if !parsed.ignored_fields.is_empty() {
                        let fields = parsed.ignored_fields.join(", ");
                        self.report(kv, &format!("ignoring unknown fields: {fields}"));
                    }
                    self.desired.insert(ip, parsed.desired);
                }
                // Keep the last good value: a typo in a write must not withdraw the IP.
                Err(e) => self.report(kv, &e.to_string()),
            },
            Ok(Some(KeyKind::Claim(ip, slot))) => {
                let holder = self.holder_of(kv);
                self.set_claim(ip, slot, holder);
            }
            Ok(Some(KeyKind::Node(name))) => match model::parse_node(&kv.value) {
                Ok(node) => {
                    self.nodes.insert(name, node);
                }
                Err(e) => self.report(kv, &e.to_string()),
            },
            Ok(Some(KeyKind::Drain(name))) => {
                self.drains.insert(name);
            }
            Ok(Some(KeyKind::Other)) | Ok(None) => {}
            Err(e) => self.report(kv, &e.to_string()),
        }
    }

    fn delete(&mut self, key: &str) {
        self.reported.remove(key);
        match self.keys.parse(key) {
            Ok(Some(KeyKind::Desired(ip))) => {
                self.desired.remove(&ip);
            }
            Ok(Some(KeyKind::Claim(ip, slot))) => self.remove_claim(ip, slot),
            Ok(Some(KeyKind::Node(name))) => {
                self.nodes.remove(&name);
            }
            Ok(Some(KeyKind::Drain(name))) => {
                self.drains.remove(&name);
            }
            _ => {}
        }
    }

    fn report(&mut self, kv: &RawKv, problem: &str) {
        if self.reported.get(&kv.key) == Some(&kv.mod_revision) {
            debug!(key = %kv.key, problem, "bad data in etcd, still skipped");
            return;
        }
        self.reported.insert(kv.key.clone(), kv.mod_revision);
        warn!(key = %kv.key, revision = kv.mod_revision, problem, "bad data in etcd: skipped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, rev: i64) -> RawKv {
        RawKv {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            lease: 5,
            mod_revision: rev,
        }
    }

    #[test]
    fn bad_data_is_skipped_and_good_data_kept() {
        let mut view = ClusterView::new(Keys::new("/extip"));
        let snap = Snapshot {
            revision: 10,
            kvs: vec![
                kv("/extip/ips/198.51.100.11", "not json", 3),
                kv("/extip/ips/198.51.100.12", "{}", 4),
                kv("/extip/ips/not-an-ip", "{}", 5),
                kv("/extip/claims/198.51.100.12/0", "garbage", 6),
                kv("/extip/nodes/h1", r#"{"node":"h1","interfaces":["lo"]}"#, 7),
            ],
        };
        view.replace(&snap);
        let ips: Vec<String> = view.desired.keys().map(|i| i.to_string()).collect();
        assert_eq!(ips, vec!["198.51.100.12"]);
        let ip: IpAddr = "198.51.100.12".parse().unwrap();
        assert_eq!(
            view.claims[&ip][&0].node, None,
            "unreadable claim still takes the slot"
        );
        assert!(view.nodes.contains_key("h1"));
    }

    #[test]
    fn changes_already_in_the_snapshot_are_ignored() {
        let mut view = ClusterView::new(Keys::new("/extip"));
        view.replace(&Snapshot {
            revision: 10,
            kvs: vec![],
        });
        view.apply(&Change::Put(kv("/extip/ips/198.51.100.1", "{}", 9)));
        assert!(view.desired.is_empty());
        view.apply(&Change::Put(kv("/extip/ips/198.51.100.1", "{}", 11)));
        assert_eq!(view.desired.len(), 1);
        view.apply(&Change::Delete {
            key: "/extip/ips/198.51.100.1".into(),
            revision: 12,
        });
        assert!(view.desired.is_empty());
    }

    #[test]
    fn a_bad_overwrite_keeps_the_last_good_value() {
        let mut view = ClusterView::new(Keys::new("/extip"));
        view.apply(&Change::Put(kv("/extip/ips/198.51.100.1", "{}", 1)));
        view.apply(&Change::Put(kv("/extip/ips/198.51.100.1", "{", 2)));
        assert_eq!(view.desired.len(), 1);
    }
}
