//! A linearizable etcd for the simulation: records, votes and claims with revisions,
//! leases that expire in a sweep, compare-and-put transactions.

use std::collections::BTreeMap;
use std::rc::Rc;

use crate::model::VouchRecord;
use crate::vouch::Revocation;

/// A node record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rec {
    pub lease: i64,
    pub mod_rev: i64,
    pub vouch: Option<VouchRecord>,
}

/// A vote key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoteKey {
    pub lease: i64,
    pub revision: i64,
    pub mod_rev: i64,
    /// The voter's own lease the key hangs on.
    pub on_lease: i64,
}

/// A claim key of one IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimKey {
    pub node: usize,
    pub lease: i64,
    pub mod_rev: i64,
}

/// What a watcher sees: everything, at one revision.
#[derive(Debug, Clone, Default)]
pub struct Snap {
    pub rev: i64,
    pub records: BTreeMap<usize, Rec>,
    /// (holder, voter) to the vote.
    pub votes: BTreeMap<(usize, usize), VoteKey>,
    pub claims: BTreeMap<usize, ClaimKey>,
}

/// What a node record write compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The record is at this revision.
    ModRev(i64),
    /// The record does not hang on this lease (absent, or an older lease's).
    NotLease(i64),
}

/// A request to etcd.
#[derive(Debug, Clone)]
pub enum Req {
    /// With the requester's local send time, echoed back.
    Grant(std::time::Instant),
    KeepAlive(i64),
    PutRecord {
        lease: i64,
        expect: Expect,
        vouch: Option<VouchRecord>,
        write: u64,
    },
    Vote {
        holder: usize,
        lease: i64,
        revision: i64,
        voter_lease: i64,
    },
    Revoke(Revocation),
    LeaseRevoke(i64),
    Claim {
        ip: usize,
        lease: i64,
    },
}

/// Its answer.
#[derive(Debug, Clone)]
pub enum Reply {
    Granted(i64, std::time::Instant),
    Alive(i64, bool),
    Put {
        write: u64,
        result: Result<i64, Option<Rec>>,
    },
    Voted,
    Revoked(Option<i64>),
    LeaseRevoked,
    Claimed(usize, Option<i64>),
}

/// The store.
#[derive(Debug, Default)]
pub struct Etcd {
    pub state: Snap,
    /// Lease to its expiry (real µs).
    pub leases: BTreeMap<i64, u64>,
    next_lease: i64,
    pub ttl_us: u64,
}

impl Etcd {
    pub fn new(ttl_us: u64) -> Self {
        Etcd {
            next_lease: 0x1000,
            ttl_us,
            ..Default::default()
        }
    }

    pub fn snap(&self) -> Rc<Snap> {
        Rc::new(self.state.clone())
    }

    fn bump(&mut self) -> i64 {
        self.state.rev += 1;
        self.state.rev
    }

    fn alive(&self, lease: i64) -> bool {
        self.leases.contains_key(&lease)
    }

    /// Handle one request from `node` at real time `now`; whether the state changed.
    pub fn handle(&mut self, node: usize, req: Req, now: u64) -> (Reply, bool) {
        match req {
            Req::Grant(sent) => {
                self.next_lease += 1;
                self.leases.insert(self.next_lease, now + self.ttl_us);
                (Reply::Granted(self.next_lease, sent), false)
            }
            Req::KeepAlive(lease) => {
                let alive = self.alive(lease);
                if alive {
                    self.leases.insert(lease, now + self.ttl_us);
                }
                (Reply::Alive(lease, alive), false)
            }
            Req::PutRecord {
                lease,
                expect,
                vouch,
                write,
            } => {
                let current = self.state.records.get(&node).cloned();
                let holds = match expect {
                    Expect::ModRev(r) => current.as_ref().is_some_and(|c| c.mod_rev == r),
                    Expect::NotLease(l) => current.as_ref().is_none_or(|c| c.lease != l),
                };
                if !holds || !self.alive(lease) {
                    return (
                        Reply::Put {
                            write,
                            result: Err(current),
                        },
                        false,
                    );
                }
                let rev = self.bump();
                self.state.records.insert(
                    node,
                    Rec {
                        lease,
                        mod_rev: rev,
                        vouch,
                    },
                );
                (
                    Reply::Put {
                        write,
                        result: Ok(rev),
                    },
                    true,
                )
            }
            Req::Vote {
                holder,
                lease,
                revision,
                voter_lease,
            } => {
                let at = self.state.records.get(&holder).map(|r| r.mod_rev);
                if at != Some(revision) || !self.alive(voter_lease) {
                    return (Reply::Voted, false);
                }
                let rev = self.bump();
                let key = VoteKey {
                    lease,
                    revision,
                    mod_rev: rev,
                    on_lease: voter_lease,
                };
                self.state.votes.insert((holder, node), key);
                (Reply::Voted, true)
            }
            Req::Revoke(r) => self.revoke(r),
            Req::LeaseRevoke(lease) => {
                let changed = self.drop_lease(lease);
                (Reply::LeaseRevoked, changed)
            }
            Req::Claim { ip, lease } => {
                if self.state.claims.contains_key(&ip) || !self.alive(lease) {
                    return (Reply::Claimed(ip, None), false);
                }
                let rev = self.bump();
                let claim = ClaimKey {
                    node,
                    lease,
                    mod_rev: rev,
                };
                self.state.claims.insert(ip, claim);
                (Reply::Claimed(ip, Some(rev)), true)
            }
        }
    }

    /// The revocation transaction: the record and every counted vote unchanged.
    fn revoke(&mut self, r: Revocation) -> (Reply, bool) {
        let holder: usize = r.holder[1..].parse().expect("node name n<i>");
        let record_ok = self
            .state
            .records
            .get(&holder)
            .is_some_and(|rec| rec.mod_rev == r.record_revision);
        let votes_ok = r.votes.iter().all(|(voter, mod_rev)| {
            let voter: usize = voter[1..].parse().expect("node name");
            self.state
                .votes
                .get(&(holder, voter))
                .is_some_and(|v| v.mod_rev == *mod_rev)
        });
        if !(record_ok && votes_ok) {
            return (Reply::Revoked(None), false);
        }
        self.bump();
        self.state.records.remove(&holder);
        self.state.votes.retain(|(h, _), _| *h != holder);
        (Reply::Revoked(Some(r.lease)), true)
    }

    /// Delete a lease and every key on it; whether anything went.
    pub fn drop_lease(&mut self, lease: i64) -> bool {
        if self.leases.remove(&lease).is_none() {
            return false;
        }
        let s = &mut self.state;
        let before = s.records.len() + s.votes.len() + s.claims.len();
        s.records.retain(|_, r| r.lease != lease);
        s.votes.retain(|_, v| v.on_lease != lease);
        s.claims.retain(|_, c| c.lease != lease);
        let changed = before != s.records.len() + s.votes.len() + s.claims.len();
        if changed {
            self.bump();
        }
        changed
    }

    /// The expiry sweep: every lease past its time goes; whether anything changed.
    pub fn sweep(&mut self, now: u64) -> bool {
        let expired: Vec<i64> = self
            .leases
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(l, _)| *l)
            .collect();
        let mut changed = false;
        for lease in expired {
            changed |= self.drop_lease(lease);
        }
        changed
    }
}
