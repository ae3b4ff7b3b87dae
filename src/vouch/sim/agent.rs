//! The agent in the simulation: lease and keepalives, its record, heartbeats,
//! acknowledgements, votes, revocations and claims, with the real state machines.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::etcd::{Expect, Reply, Req, Snap};
use super::{Ev, Params, World};
use crate::agent::LeaseDeadline;
use crate::model::VouchRecord;
use crate::vouch::wire::{Kind, Packet};
use crate::vouch::{witnesses_of, Holder, HolderRecord, Standing, Vote, Witness};

/// One agent process.
pub struct Proc {
    pub id: u64,
    pub lease: Option<i64>,
    /// The lease of the last run, tried before a new grant.
    pub(super) reattach: Option<i64>,
    pub(super) reattached: bool,
    pub(super) clock: LeaseDeadline,
    pub holder: Holder,
    pub(super) witness: Witness,
    pub(super) view: Option<Rc<Snap>>,
    pub(super) record_rev: Option<i64>,
    /// The record write in flight: its number, what it compares, what it writes, when.
    pub(super) write: Option<(u64, Expect, Option<VouchRecord>, u64)>,
    pub(super) writes: u64,
    /// A grant on its way: when it was sent (real µs).
    pub(super) granting: Option<u64>,
    pub(super) claiming: BTreeMap<usize, u64>,
    pub(super) claim_rev: BTreeMap<usize, i64>,
    pub(super) votes_out: BTreeMap<(usize, i64), (Vote, u64)>,
    pub(super) revoking: BTreeMap<(usize, i64), u64>,
    pub(super) restored: bool,
    pub(super) small_quorum: bool,
}

pub(super) fn name(i: usize) -> String {
    format!("n{i}")
}

pub(super) fn index(name: &str) -> usize {
    name[1..].parse().expect("n<i>")
}

impl Proc {
    pub fn new(i: usize, id: u64, started: Instant, params: &Params) -> Self {
        let mut holder = Holder::new(params.timing, id << 40);
        holder.ignore_pending = params.breakage.ignore_pending;
        let mut witness = Witness::new(&name(i), params.timing, started);
        witness.promise_cut = params.breakage.promise_cut;
        Proc {
            id,
            lease: None,
            reattach: None,
            reattached: false,
            clock: LeaseDeadline::new(Duration::from_secs(params.ttl_secs as u64)),
            holder,
            witness,
            view: None,
            record_rev: None,
            write: None,
            writes: 0,
            granting: None,
            claiming: BTreeMap::new(),
            claim_rev: BTreeMap::new(),
            votes_out: BTreeMap::new(),
            revoking: BTreeMap::new(),
            restored: false,
            small_quorum: params.breakage.small_vote_quorum,
        }
    }
}

pub(super) fn records(snap: &Snap) -> impl Iterator<Item = (String, HolderRecord<'_>)> {
    snap.records.iter().map(|(i, r)| {
        (
            name(*i),
            HolderRecord {
                lease: r.lease,
                revision: r.mod_rev,
                vouch: r.vouch.as_ref(),
                leaving: false,
            },
        )
    })
}

impl World {
    pub(super) fn proc(&mut self, i: usize) -> &mut Proc {
        self.hosts[i].proc.as_mut().expect("running process")
    }

    /// A new process: re-attach to the last lease if etcd still has it, else grant.
    pub(super) fn begin(&mut self, i: usize) {
        let lease = self.hosts[i].state_lease;
        let now = self.local(i);
        let p = self.proc(i);
        p.reattach = lease;
        let id = p.id;
        match lease {
            Some(lease) => {
                p.clock.sent(now);
                self.send_etcd(i, id, Req::KeepAlive(lease));
            }
            None => self.grant(i),
        }
    }

    pub(super) fn grant(&mut self, i: usize) {
        let now_real = self.now;
        let sent = self.local(i);
        let p = self.proc(i);
        p.granting = Some(now_real);
        let id = p.id;
        self.send_etcd(i, id, Req::Grant(sent));
    }

    /// Drop everything of the lease (lost, expired, revoked) and start over.
    pub(super) fn lease_lost(&mut self, i: usize) {
        self.log(|| format!("n{i} lease lost"));
        self.hosts[i].addresses.clear();
        self.hosts[i].state_lease = None;
        let p = self.proc(i);
        p.lease = None;
        p.reattached = false;
        p.clock.forget();
        p.holder.set_lease(None, Standing::Unknown);
        p.record_rev = None;
        p.write = None;
        p.claiming.clear();
        p.claim_rev.clear();
        self.grant(i);
    }

    /// Arm the fence from the holder's rule (atomic here: see the residual in the
    /// module docs); the kernel closes up to 10 ms late.
    pub(super) fn arm(&mut self, i: usize) {
        let Some(p) = self.hosts[i].proc.as_ref() else {
            return;
        };
        let deadline = p.holder.fence_deadline(p.clock.fence_at());
        let late = self.rng.between(0, 10_000);
        let until = deadline.map(|d| self.real_of(i, d) + late);
        let was_open = self.hosts[i].fence_until.is_some_and(|u| u > self.now);
        self.hosts[i].fence_until = until.filter(|u| *u > self.now);
        if !was_open && self.hosts[i].fence_until.is_some() {
            let p = self.hosts[i].proc.as_ref().expect("running");
            let what = format!(
                "n{i} fence opens until {:?} standing {:?} pending {:?} lease {:?}",
                until.map(|u| (u - self.now) / 1000),
                p.holder.standing(),
                p.holder.pending(),
                p.lease
            );
            self.log(|| what);
        }
    }

    pub(super) fn agent(&mut self, i: usize, ev: Ev) {
        match ev {
            Ev::Tick(_, id) => {
                self.round(i);
                let every = self.params.timing.interval.as_micros() as u64;
                let next = self.now + every + self.rng.between(0, every / 10);
                self.at(next, Ev::Tick(i, id));
            }
            Ev::Keepalive(_, id) => {
                let now = self.local(i);
                if let Some(lease) = self.proc(i).lease {
                    self.proc(i).clock.sent(now);
                    self.send_etcd(i, id, Req::KeepAlive(lease));
                }
                let every = crate::agent::keepalive_interval(Duration::from_secs(
                    self.params.ttl_secs as u64,
                ));
                self.at(self.now + every.as_micros() as u64, Ev::Keepalive(i, id));
            }
            Ev::Udp(_, packet) => self.packet(i, packet),
            Ev::Reply(_, _, reply) => self.reply(i, reply),
            Ev::View(_, _, snap) => self.view(i, snap),
            _ => unreachable!("not an agent event"),
        }
    }

    /// One heartbeat round and the periodic decisions.
    pub(super) fn round(&mut self, i: usize) {
        let now = self.local(i);
        if self.proc(i).clock.fence_at().is_some_and(|f| f <= now) {
            self.lease_lost(i);
            return;
        }
        let lease = self.proc(i).lease;
        if let Some((seq, window)) = self.proc(i).holder.heartbeat(now) {
            let targets = self.proc(i).holder.targets();
            for to in targets {
                let packet = Packet {
                    kind: Kind::Heartbeat,
                    from: name(i),
                    to: to.clone(),
                    lease: lease.expect("heartbeats need a lease"),
                    seq,
                    window,
                };
                self.send_udp(i, index(&to), packet);
            }
        }
        self.vote(i, now);
        self.revoke(i);
        self.rewrite_record(i, now);
        self.claim(i);
        if self
            .proc(i)
            .granting
            .is_some_and(|at| at + 500_000 < self.now)
        {
            self.grant(i);
        }
    }

    pub(super) fn rewrite_record(&mut self, i: usize, now: Instant) {
        let id = self.proc(i).id;
        let real = self.now;
        let p = self.proc(i);
        let Some(lease) = p.lease else { return };
        if let Some((write, expect, vouch, sent)) = p.write.clone() {
            // Unanswered: the same write again settles it (the first cannot commit after).
            if sent + 500_000 <= real {
                p.write = Some((write, expect, vouch.clone(), real));
                self.send_etcd(
                    i,
                    id,
                    Req::PutRecord {
                        lease,
                        expect,
                        vouch,
                        write,
                    },
                );
            }
            return;
        }
        let expect = match p.record_rev {
            Some(rev) => Expect::ModRev(rev),
            None if p.holder.standing() == &Standing::Known(None) => Expect::NotLease(lease),
            None => return,
        };
        let Some(wanted) = p.holder.wanted(now) else {
            return;
        };
        p.holder.propose(wanted.clone());
        p.writes += 1;
        let write = p.writes;
        p.write = Some((write, expect, wanted.clone(), real));
        self.arm(i);
        self.log(|| format!("n{i} writes record {wanted:?} expecting {expect:?}"));
        let req = Req::PutRecord {
            lease,
            expect,
            vouch: wanted,
            write,
        };
        self.send_etcd(i, id, req);
    }

    pub(super) fn claim(&mut self, i: usize) {
        let id = self.proc(i).id;
        let real = self.now;
        let ips = self.params.ips;
        let coin = self.rng.chance(0.5);
        let p = self.proc(i);
        let (Some(lease), Some(snap)) = (p.lease, p.view.clone()) else {
            return;
        };
        if p.holder.standing() == &Standing::Unknown || !coin {
            return;
        }
        for ip in 0..ips {
            let pending = p.claiming.get(&ip).is_some_and(|at| at + 300_000 > real);
            if snap.claims.contains_key(&ip) || pending {
                continue;
            }
            p.claiming.insert(ip, real);
            self.send_etcd(i, id, Req::Claim { ip, lease });
            return;
        }
    }

    pub(super) fn reply(&mut self, i: usize, reply: Reply) {
        let ttl_secs = self.params.ttl_secs;
        match reply {
            Reply::Granted(lease, sent) => {
                let p = self.proc(i);
                if p.lease.is_some() || p.granting.is_none() {
                    return;
                }
                p.granting = None;
                p.lease = Some(lease);
                p.clock.granted(sent, ttl_secs);
                p.holder.set_lease(Some(lease), Standing::Known(None));
                p.holder.set_ideal(Some(Vec::new()));
                self.hosts[i].state_lease = Some(lease);
                self.hosts[i].addresses.clear();
            }
            Reply::Alive(lease, alive) => {
                self.log(|| format!("n{i} keepalive {lease:x} alive {alive}"));
                let p = self.proc(i);
                if p.reattach == Some(lease) && p.lease.is_none() {
                    p.reattach = None;
                    if alive {
                        p.clock.answered(ttl_secs);
                        p.lease = Some(lease);
                        p.reattached = true;
                        p.holder.set_lease(Some(lease), Standing::Unknown);
                    } else {
                        p.clock.forget();
                        self.hosts[i].addresses.clear();
                        self.grant(i);
                    }
                    return;
                }
                if p.lease != Some(lease) {
                    return;
                }
                let ttl = if alive { ttl_secs } else { 0 };
                if p.clock.answered(ttl) == crate::agent::Renewal::Expired {
                    self.lease_lost(i);
                }
            }
            Reply::Put { write, result } => self.record_written(i, write, result),
            Reply::Voted | Reply::LeaseRevoked => {}
            Reply::Revoked(Some(lease)) => {
                self.log(|| format!("n{i} revoked lease {lease:x}"));
                let id = self.proc(i).id;
                self.send_etcd(i, id, Req::LeaseRevoke(lease));
            }
            Reply::Revoked(None) => {}
            Reply::Claimed(ip, rev) => {
                let p = self.proc(i);
                p.claiming.remove(&ip);
                if let Some(rev) = rev {
                    let lease = p.lease;
                    p.claim_rev.insert(ip, rev);
                    self.log(|| format!("n{i} claimed ip {ip} at {rev} on {lease:?}"));
                    self.hosts[i].addresses.insert(ip);
                }
            }
        }
    }

    pub(super) fn record_written(
        &mut self,
        i: usize,
        write: u64,
        result: Result<i64, Option<super::etcd::Rec>>,
    ) {
        let p = self.proc(i);
        let Some(lease) = p.lease else { return };
        if p.write.as_ref().map(|w| w.0) != Some(write) {
            return;
        }
        p.write = None;
        self.log(|| format!("n{i} record write {write}: {result:?}"));
        let p = self.proc(i);
        match result {
            Ok(rev) => {
                p.record_rev = Some(rev);
                p.holder.committed();
            }
            // On an inherited lease, only a write of our own proves what etcd holds:
            // the last process may have a write on its way still.
            Err(Some(found))
                if found.lease == lease && p.holder.standing() == &Standing::Unknown =>
            {
                p.holder.refused(Standing::Unknown);
                self.touch(i, found.mod_rev, found.vouch);
            }
            Err(Some(found)) if found.lease == lease => {
                p.record_rev = Some(found.mod_rev);
                p.holder.refused(Standing::Known(found.vouch));
            }
            Err(_) => self.lease_lost(i),
        }
    }

    /// Write the record as read, comparing its revision: once that commits, no older
    /// write (of a process before this one) can commit after it.
    pub(super) fn touch(&mut self, i: usize, revision: i64, vouch: Option<VouchRecord>) {
        let id = self.proc(i).id;
        let real = self.now;
        let p = self.proc(i);
        let Some(lease) = p.lease else { return };
        p.holder.propose(vouch.clone());
        p.writes += 1;
        let write = p.writes;
        let expect = Expect::ModRev(revision);
        p.write = Some((write, expect, vouch.clone(), real));
        self.log(|| format!("n{i} touches its record at {revision}"));
        self.send_etcd(
            i,
            id,
            Req::PutRecord {
                lease,
                expect,
                vouch,
                write,
            },
        );
    }

    pub(super) fn view(&mut self, i: usize, snap: Rc<Snap>) {
        let now = self.local(i);
        let me = i;
        let p = self.proc(i);
        if p.view.as_ref().is_some_and(|v| v.rev > snap.rev) {
            return;
        }
        p.view = Some(snap.clone());
        let reattached = p.reattached;
        let rr = p.record_rev;
        self.log(|| {
            format!(
                "n{i} view rev {} my record {:?} reattached {reattached} record_rev {rr:?}",
                snap.rev,
                snap.records.get(&me)
            )
        });
        let p = self.proc(i);
        if !p.restored {
            p.restored = true;
            for ((holder, voter), v) in &snap.votes {
                if *voter == me {
                    p.witness
                        .restore_vote(now, &name(*holder), v.lease, v.revision);
                }
            }
        }
        let members = snap.records.keys().map(|k| name(*k)).collect::<Vec<_>>();
        p.holder.set_ideal(Some(witnesses_of(
            &name(i),
            members.iter().map(String::as_str),
        )));
        let Some(lease) = p.lease else { return };
        let mine = snap.records.get(&me).filter(|r| r.lease == lease);
        let known = p.record_rev.is_some() || p.reattached;
        let fresh = p.record_rev.is_none_or(|r| snap.rev >= r);
        match mine {
            None if known && fresh => return self.lease_lost(i),
            None => {}
            Some(rec) if p.holder.standing() == &Standing::Unknown && p.write.is_none() => {
                let (rev, vouch) = (rec.mod_rev, rec.vouch.clone());
                self.touch(i, rev, vouch);
            }
            Some(_) if p.holder.standing() == &Standing::Unknown => {}
            Some(rec) => {
                // A record newer than the write compared, with what it writes: it
                // committed (only this process writes its lease's record).
                let committed = p.write.as_ref().is_some_and(|(_, expect, vouch, _)| {
                    let after = match expect {
                        Expect::ModRev(r) => *r,
                        Expect::NotLease(_) => 0,
                    };
                    rec.mod_rev > after && *vouch == rec.vouch
                });
                if committed && fresh {
                    p.write = None;
                    p.record_rev = Some(rec.mod_rev);
                    p.holder.committed();
                }
            }
        }
        let gone: BTreeSet<usize> = self.hosts[i]
            .addresses
            .iter()
            .copied()
            .filter(|ip| {
                let claim_rev = self.hosts[i]
                    .proc
                    .as_ref()
                    .and_then(|p| p.claim_rev.get(ip))
                    .copied();
                let mine = snap
                    .claims
                    .get(ip)
                    .is_some_and(|c| c.node == me && c.lease == lease);
                !mine && claim_rev.is_none_or(|r| snap.rev >= r)
            })
            .collect();
        for ip in gone {
            self.hosts[i].addresses.remove(&ip);
        }
    }
}
