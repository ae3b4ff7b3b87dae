//! The simulated agent as a witness: heartbeats and acknowledgements received, votes
//! cast, revocations sent once a vote quorum stands, with the real state machines.

use std::time::Instant;

use super::agent::{index, name, records};
use super::etcd::Req;
use super::World;
use crate::vouch::revocation::revocation_with;
use crate::vouch::wire::{Kind, Packet};
use crate::vouch::{vote_quorum, HolderRecord, SeenVote, Verdict, Vote};

impl World {
    pub(super) fn vote(&mut self, i: usize, now: Instant) {
        let id = self.proc(i).id;
        let Some(snap) = self.proc(i).view.clone() else {
            return;
        };
        let listed: Vec<(String, HolderRecord<'_>)> = records(&snap).collect();
        let real = self.now;
        let p = self.proc(i);
        let due = p
            .witness
            .due_votes(now, listed.iter().map(|(n, r)| (n.as_str(), *r)));
        for vote in &due {
            self.log(|| format!("n{i} votes {vote:?}"));
        }
        let p = self.proc(i);
        for vote in due {
            p.votes_out
                .insert((index(&vote.holder), vote.revision), (vote, 0));
        }
        let Some(my_lease) = p.lease else { return };
        let resend: Vec<Vote> = p
            .votes_out
            .values_mut()
            .filter(|(_, sent)| *sent + 200_000 <= real)
            .map(|(v, sent)| {
                *sent = real;
                v.clone()
            })
            .collect();
        for v in resend {
            let req = Req::Vote {
                holder: index(&v.holder),
                lease: v.lease,
                revision: v.revision,
                voter_lease: my_lease,
            };
            self.send_etcd(i, id, req);
        }
    }

    pub(super) fn revoke(&mut self, i: usize) {
        let id = self.proc(i).id;
        let Some(snap) = self.proc(i).view.clone() else {
            return;
        };
        let quorum: fn(usize) -> usize = if self.proc(i).small_quorum {
            |w| vote_quorum(w).saturating_sub(1).max(1)
        } else {
            vote_quorum
        };
        for (holder, record) in records(&snap) {
            let h = index(&holder);
            let votes: Vec<SeenVote> = snap
                .votes
                .iter()
                .filter(|((hh, _), _)| *hh == h)
                .map(|((_, voter), v)| SeenVote {
                    voter: name(*voter),
                    lease: v.lease,
                    revision: v.revision,
                    mod_revision: v.mod_rev,
                })
                .collect();
            let Some(plan) = revocation_with(&holder, record, &votes, quorum) else {
                continue;
            };
            let key = (h, plan.record_revision);
            let real = self.now;
            let sent = self.proc(i).revoking.entry(key).or_insert(0);
            if *sent + 200_000 <= real {
                *sent = real;
                self.send_etcd(i, id, Req::Revoke(plan));
            }
        }
    }

    pub(super) fn packet(&mut self, i: usize, packet: Packet) {
        let now = self.local(i);
        if packet.to != name(i) {
            return;
        }
        match packet.kind {
            Kind::Heartbeat => {
                let Some(snap) = self.proc(i).view.clone() else {
                    return;
                };
                let from = index(&packet.from);
                let record = snap.records.get(&from).map(|r| HolderRecord {
                    lease: r.lease,
                    revision: r.mod_rev,
                    vouch: r.vouch.as_ref(),
                    leaving: false,
                });
                let p = self.proc(i);
                let verdict = p.witness.heartbeat(
                    now,
                    &packet.from,
                    packet.lease,
                    packet.seq,
                    packet.window,
                    record,
                );
                if let Verdict::Ack(granted) = verdict {
                    let ack = Packet {
                        kind: Kind::Ack,
                        from: name(i),
                        to: packet.from.clone(),
                        window: granted,
                        ..packet
                    };
                    self.send_udp(i, from, ack);
                }
            }
            Kind::Ack => {
                let p = self.proc(i);
                let _ = p.holder.acknowledged(
                    now,
                    &packet.from,
                    packet.lease,
                    packet.seq,
                    packet.window,
                );
            }
        }
    }
}
