//! The agent's copy of the cluster state, fed by lists and watch changes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use tracing::{debug, warn};

use super::tally::KeyTally;
use crate::model::{
    self, DesiredIp, KeyKind, Keys, MemberAddresses, NodeValue, ParsedDesired, Refusal,
};
use crate::observed::{Claims, Holder};
use crate::pools::{self, Pool};
use crate::store::{Change, PrefixSummary, RawKv, Snapshot};

/// How soon a watched change needs a reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Relevance {
    /// It cannot change what this agent should do: a holder history, a conflict record,
    /// or a change the view already had.
    None,
    /// Another node claimed a slot of an IP this node holds nothing of: it only fills a
    /// slot, so reconciling can wait for the next batch. During a burst (a lost host's
    /// IPs claimed by every survivor) each agent reconciles a few times, not once per
    /// other agent's transaction, and leaves the CPU to those still claiming.
    Soon,
    /// Anything else: a free slot, a desired IP, a node, a drain, this node's claims.
    Now,
}

/// What a witness or a revocation compares of a node record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMeta {
    /// The lease the record hangs on.
    pub lease: i64,
    /// Its `mod_revision`.
    pub revision: i64,
}

/// Desired IPs, claims and nodes as last seen in etcd.
pub struct ClusterView {
    keys: Keys,
    /// Valid desired IPs that no agent refuses, with their pool's settings applied.
    pub desired: BTreeMap<IpAddr, DesiredIp>,
    /// Valid desired IPs that every agent refuses, and why.
    pub refused: BTreeMap<IpAddr, Refusal>,
    /// The members' own addresses (host addresses, etcd endpoints), from the node
    /// records and this agent's own, possibly not yet published, record.
    members: MemberAddresses,
    /// This agent's record as it is now.
    local: Option<NodeValue>,
    /// True while a list is being loaded: derived state is computed once at its end.
    loading: bool,
    /// Nodes seen leaving (addresses already removed), and when.
    leaving: HashMap<String, std::time::Instant>,
    /// IPs whose claim a leaving node gave up, and when: taken without a probe.
    pub handed_over: HashMap<IpAddr, std::time::Instant>,
    /// Each desired IP's own value, before pools.
    own: BTreeMap<IpAddr, ParsedDesired>,
    /// Valid pools.
    pub pools: BTreeMap<String, Pool>,
    /// Claims, valid or not: an existing claim key takes its slot whatever its value.
    pub claims: Claims,
    /// Claim keys written without a lease (by hand): nobody's claim, so they are
    /// deleted; with the value and revision that the delete compares against.
    pub leaseless: BTreeMap<(IpAddr, u32), RawKv>,
    /// Live nodes.
    pub nodes: BTreeMap<String, NodeValue>,
    /// Each node record's lease and `mod_revision`, what witnesses and revocations
    /// compare against.
    pub records: BTreeMap<String, RecordMeta>,
    /// Node records deleted by a watched change since the agent last looked, with the
    /// revision of the deletion: its own one means it was revoked.
    node_deletions: BTreeMap<String, i64>,
    /// Votes against each holder, by voter.
    pub votes: BTreeMap<String, BTreeMap<String, crate::vouch::SeenVote>>,
    /// The last revocation of each node: the lease it names.
    pub revoked: BTreeMap<String, i64>,
    /// Nodes an operator drained.
    pub drains: BTreeSet<String>,
    /// Each IP's recent holders and the revision of that record.
    pub history: BTreeMap<IpAddr, (Vec<model::HistoryEntry>, i64)>,
    /// Changes at or below this revision are already in the view.
    revision: i64,
    /// Bad keys already reported, with the revision reported, so each is logged once.
    reported: HashMap<String, i64>,
    /// Bumped whenever desired IPs, nodes, drains or pools change (not claims): what
    /// the ideal placement depends on.
    pub generation: u64,
    /// Bumped whenever `desired` changes: an ideal placement computed at the same
    /// version was computed from the same desired IPs.
    pub desired_version: u64,
    /// The revision this view last learned for a key from this agent's own
    /// transactions: a watch event at or below it is older news and must not undo it.
    known: HashMap<String, i64>,
    /// Key count and newest revision seen, to check against etcd cheaply.
    tally: KeyTally,
}

impl ClusterView {
    /// An empty view for keys under `keys`.
    pub fn new(keys: Keys) -> Self {
        ClusterView {
            keys,
            desired: BTreeMap::new(),
            refused: BTreeMap::new(),
            members: MemberAddresses::default(),
            local: None,
            loading: false,
            leaving: HashMap::new(),
            handed_over: HashMap::new(),
            own: BTreeMap::new(),
            pools: BTreeMap::new(),
            claims: Claims::new(),
            leaseless: BTreeMap::new(),
            nodes: BTreeMap::new(),
            records: BTreeMap::new(),
            node_deletions: BTreeMap::new(),
            votes: BTreeMap::new(),
            revoked: BTreeMap::new(),
            drains: BTreeSet::new(),
            history: BTreeMap::new(),
            revision: 0,
            reported: HashMap::new(),
            known: HashMap::new(),
            generation: 0,
            desired_version: 0,
            tally: KeyTally::default(),
        }
    }

    /// Replace everything with a fresh list.
    pub fn replace(&mut self, snapshot: &Snapshot) {
        self.clear_desired();
        self.own.clear();
        self.pools.clear();
        self.claims.clear();
        self.leaseless.clear();
        self.nodes.clear();
        self.records.clear();
        self.node_deletions.clear();
        self.votes.clear();
        self.revoked.clear();
        self.drains.clear();
        self.history.clear();
        self.known.retain(|_, rev| *rev > snapshot.revision);
        self.loading = true;
        for kv in &snapshot.kvs {
            self.put(kv);
        }
        self.loading = false;
        self.resolve_all();
        self.revision = snapshot.revision;
        self.tally = KeyTally::listed(snapshot);
    }

    /// Whether etcd's `summary` of the prefix shows nothing this view has missed.
    pub fn matches_store(&self, summary: PrefixSummary) -> bool {
        self.tally.matches(summary)
    }

    /// Apply one watched change; changes the view already has are skipped: those
    /// below the last list, and those older than what our own transactions told us.
    /// Returns how soon the change needs a reconcile (see [`Relevance`]).
    pub fn apply(&mut self, change: &Change) -> Relevance {
        self.tally.observe(change);
        let (key, revision) = match change {
            Change::Put(kv) => (&kv.key, kv.mod_revision),
            Change::Delete { key, revision } => (key, *revision),
        };
        let known = self.known.get(key).copied().unwrap_or(0);
        if revision <= self.revision.max(known) {
            return Relevance::None;
        }
        let kind = self.keys.parse(key);
        let held_here = match &kind {
            Ok(Some(KeyKind::Claim(ip, _))) => self.held_here(*ip),
            _ => true,
        };
        match change {
            Change::Put(kv) => self.put(kv),
            Change::Delete { key, revision } => {
                if let Ok(Some(KeyKind::Node(name))) = &kind {
                    self.node_deletions.insert(name.clone(), *revision);
                }
                self.delete(key)
            }
        }
        match (kind, change) {
            (Ok(Some(KeyKind::History(_) | KeyKind::Conflict(_))), _) => Relevance::None,
            (Ok(Some(KeyKind::Claim(ip, _))), Change::Put(_))
                if !held_here && !self.held_here(ip) =>
            {
                Relevance::Soon
            }
            _ => Relevance::Now,
        }
    }

    /// Whether this node (as its record names it) holds a slot of `ip`; true while the
    /// view does not know its own node yet.
    fn held_here(&self, ip: IpAddr) -> bool {
        let Some(me) = self.local.as_ref().map(|l| l.node.as_str()) else {
            return true;
        };
        self.claims
            .get(&ip)
            .is_some_and(|slots| slots.values().any(|h| h.node.as_deref() == Some(me)))
    }

    /// Whether a leaving node gave `ip` up within `within`: it had removed its address
    /// first, so no probe is needed. Old entries are forgotten here.
    pub fn just_handed_over(&mut self, ip: IpAddr, within: std::time::Duration) -> bool {
        let now = std::time::Instant::now();
        self.leaving
            .retain(|_, at| now.duration_since(*at) < within * 10);
        self.handed_over
            .retain(|_, at| now.duration_since(*at) < within);
        self.handed_over.contains_key(&ip)
    }

    /// Node records deleted since the last call, with the revision of each deletion.
    pub fn take_node_deletions(&mut self) -> BTreeMap<String, i64> {
        std::mem::take(&mut self.node_deletions)
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

    /// Record the outcome of this agent's own claim transaction at `revision`.
    pub fn claimed(&mut self, ip: IpAddr, slot: u32, holder: Holder, revision: i64) {
        self.known.insert(self.keys.claim(ip, slot), revision);
        self.set_claim(ip, slot, holder);
    }

    /// Record this agent's own release of a claim, deleted at `revision` (if known).
    pub fn released(&mut self, ip: IpAddr, slot: u32, revision: Option<i64>) {
        if let Some(revision) = revision {
            self.known.insert(self.keys.claim(ip, slot), revision);
        }
        self.remove_claim(ip, slot);
    }

    fn set_claim(&mut self, ip: IpAddr, slot: u32, holder: Holder) {
        self.claims.entry(ip).or_default().insert(slot, holder);
    }

    fn remove_claim(&mut self, ip: IpAddr, slot: u32) {
        self.leaseless.remove(&(ip, slot));
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
        self.bump(&kv.key);
        match self.keys.parse(&kv.key) {
            Ok(Some(KeyKind::Desired(ip))) => match model::parse_desired(ip, &kv.value) {
                Ok(parsed) => {
                    if !parsed.ignored_fields.is_empty() {
                        let fields = parsed.ignored_fields.join(", ");
                        self.report(kv, &format!("ignoring unknown fields: {fields}"));
                    }
                    self.own.insert(ip, parsed);
                    if !self.loading {
                        self.resolve(ip);
                    }
                }
                // Keep the last good value: a typo in a write must not withdraw the IP.
                Err(e) => self.report(kv, &e.to_string()),
            },
            Ok(Some(KeyKind::Claim(ip, slot))) => {
                let holder = self.holder_of(kv);
                self.set_claim(ip, slot, holder);
                if kv.lease == 0 {
                    self.leaseless.insert((ip, slot), kv.clone());
                } else {
                    self.leaseless.remove(&(ip, slot));
                }
            }
            Ok(Some(KeyKind::Node(name))) => match model::parse_node(&kv.value) {
                Ok(node) => {
                    let addresses_changed = self.nodes.get(&name).is_none_or(|old| {
                        old.host_addresses != node.host_addresses
                            || old.etcd_addresses != node.etcd_addresses
                    });
                    if node.leaving {
                        self.leaving.insert(name.clone(), std::time::Instant::now());
                    }
                    let meta = RecordMeta {
                        lease: kv.lease,
                        revision: kv.mod_revision,
                    };
                    self.records.insert(name.clone(), meta);
                    self.nodes.insert(name, node);
                    if addresses_changed {
                        self.resolve_members();
                    }
                }
                Err(e) => self.report(kv, &e.to_string()),
            },
            Ok(Some(KeyKind::Drain(name))) => {
                self.drains.insert(name);
            }
            Ok(Some(KeyKind::Vote(holder, voter))) => match model::parse_vote(&kv.value) {
                Ok((vote, lease)) => {
                    let seen = crate::vouch::SeenVote {
                        voter: voter.clone(),
                        lease,
                        revision: vote.revision,
                        mod_revision: kv.mod_revision,
                    };
                    self.votes.entry(holder).or_default().insert(voter, seen);
                }
                Err(e) => self.report(kv, &e.to_string()),
            },
            Ok(Some(KeyKind::Revoked(node))) => match model::parse_revoked(&kv.value) {
                Ok((_, lease)) => {
                    self.revoked.insert(node, lease);
                }
                Err(e) => self.report(kv, &e.to_string()),
            },
            Ok(Some(KeyKind::Pool(name))) => match pools::parse_pool(&kv.value) {
                Ok((pool, ignored)) => {
                    if !ignored.is_empty() {
                        let fields = ignored.join(", ");
                        self.report(kv, &format!("ignoring unknown fields: {fields}"));
                    }
                    self.pools.insert(name, pool);
                    self.resolve_all();
                }
                Err(e) => self.report(kv, &e.to_string()),
            },
            Ok(Some(KeyKind::History(ip))) => match serde_json::from_slice(&kv.value) {
                Ok(history) => {
                    self.history.insert(ip, (history, kv.mod_revision));
                }
                Err(e) => {
                    // Keep its revision: the next claim overwrites the bad value.
                    self.history.insert(ip, (Vec::new(), kv.mod_revision));
                    self.report(kv, &e.to_string());
                }
            },
            Ok(Some(KeyKind::Other | KeyKind::Conflict(_))) | Ok(None) => {}
            Err(e) => self.report(kv, &e.to_string()),
        }
    }

    /// Note a change that the ideal placement depends on.
    fn bump(&mut self, key: &str) {
        let placement_neutral = matches!(
            self.keys.parse(key),
            Ok(Some(
                KeyKind::Claim(..)
                    | KeyKind::History(_)
                    | KeyKind::Conflict(_)
                    | KeyKind::Vote(..)
                    | KeyKind::Revoked(_)
            ))
        );
        if !placement_neutral {
            self.generation += 1;
        }
    }

    /// Set this agent's own record: its addresses are refused before etcd echoes them.
    pub fn set_local(&mut self, record: NodeValue) {
        if self.local.as_ref() != Some(&record) {
            self.local = Some(record);
            self.resolve_members();
        }
    }

    /// Index the members' addresses again, then apply refusals and pools to every
    /// desired IP (a node's addresses or a pool changed). Each new refusal is logged once.
    fn resolve_all(&mut self) {
        if self.loading {
            return;
        }
        self.members = MemberAddresses::of(self.nodes.values().chain(self.local.as_ref()));
        let before = std::mem::take(&mut self.refused);
        self.clear_desired();
        for ip in self.own.keys().copied().collect::<Vec<_>>() {
            self.resolve_one(ip, &before);
        }
    }

    /// Index the members' addresses again after a node record changed them (or went),
    /// and resolve again only the IPs among the old or new addresses: a refusal depends
    /// on the IP alone, and re-resolving all 10,000 IPs when a host is lost delayed every
    /// survivor's claims.
    fn resolve_members(&mut self) {
        if self.loading {
            return;
        }
        let members = MemberAddresses::of(self.nodes.values().chain(self.local.as_ref()));
        let old = std::mem::replace(&mut self.members, members);
        let touched: BTreeSet<IpAddr> = old.addresses().chain(self.members.addresses()).collect();
        for ip in touched {
            self.resolve(ip);
        }
    }

    /// Forget every desired IP; the version moves on.
    fn clear_desired(&mut self) {
        self.desired.clear();
        self.desired_version += 1;
    }

    /// Forget one desired IP; the version moves on if it was there.
    fn remove_desired(&mut self, ip: IpAddr) {
        if self.desired.remove(&ip).is_some() {
            self.desired_version += 1;
        }
    }

    /// Apply refusals and pools to one desired IP.
    fn resolve(&mut self, ip: IpAddr) {
        let before: BTreeMap<IpAddr, Refusal> = self
            .refused
            .remove(&ip)
            .into_iter()
            .map(|r| (ip, r))
            .collect();
        self.remove_desired(ip);
        self.resolve_one(ip, &before);
    }

    fn resolve_one(&mut self, ip: IpAddr, before: &BTreeMap<IpAddr, Refusal>) {
        let Some(parsed) = self.own.get(&ip) else {
            return;
        };
        match self.members.refusal(ip) {
            Some(refusal) => {
                if before.get(&ip) != Some(&refusal) {
                    let key = self.keys.desired(ip);
                    warn!(%key, reason = %refusal, "desired IP refused by every agent: not served");
                }
                self.refused.insert(ip, refusal);
            }
            None => {
                let resolved = pools::resolve(ip, parsed, &self.pools);
                self.desired.insert(ip, resolved);
                self.desired_version += 1;
            }
        }
    }

    fn delete(&mut self, key: &str) {
        self.bump(key);
        self.reported.remove(key);
        match self.keys.parse(key) {
            Ok(Some(KeyKind::Desired(ip))) => {
                self.remove_desired(ip);
                self.refused.remove(&ip);
                self.own.remove(&ip);
            }
            Ok(Some(KeyKind::Pool(name))) => {
                self.pools.remove(&name);
                self.resolve_all();
            }
            Ok(Some(KeyKind::Claim(ip, slot))) => {
                let holder = self.claims.get(&ip).and_then(|s| s.get(&slot));
                let node = holder.and_then(|h| h.node.as_deref());
                if node.is_some_and(|n| self.leaving.contains_key(n)) {
                    self.handed_over.insert(ip, std::time::Instant::now());
                }
                self.remove_claim(ip, slot);
            }
            Ok(Some(KeyKind::Node(name))) => {
                self.records.remove(&name);
                let removed = self.nodes.remove(&name);
                if removed
                    .is_some_and(|n| !(n.host_addresses.is_empty() && n.etcd_addresses.is_empty()))
                {
                    self.resolve_members();
                }
            }
            Ok(Some(KeyKind::Drain(name))) => {
                self.drains.remove(&name);
            }
            Ok(Some(KeyKind::History(ip))) => {
                self.history.remove(&ip);
            }
            Ok(Some(KeyKind::Vote(holder, voter))) => {
                if let Some(votes) = self.votes.get_mut(&holder) {
                    votes.remove(&voter);
                    if votes.is_empty() {
                        self.votes.remove(&holder);
                    }
                }
            }
            Ok(Some(KeyKind::Revoked(node))) => {
                self.revoked.remove(&node);
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
mod tests;
