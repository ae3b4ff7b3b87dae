//! The witness's side: acknowledge heartbeats (each a promise), suspect a silent
//! holder, and vote against it only once every promise to it has run out.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{promise, restart_wait, Timing, MAX_WINDOW};
use crate::model::VouchRecord;

/// A holder's record as a witness reads it.
#[derive(Debug, Clone, Copy)]
pub struct HolderRecord<'a> {
    /// The lease the record hangs on.
    pub lease: i64,
    /// Its `mod_revision`.
    pub revision: i64,
    /// Its vouching part.
    pub vouch: Option<&'a VouchRecord>,
    /// The holder is stopping (addresses already gone): nothing to vote about.
    pub leaving: bool,
}

/// Why a heartbeat was not acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DropReason {
    /// No record of the sender in etcd (as far as this witness has read).
    UnknownSender,
    /// The heartbeat names a lease that is not the one of the sender's record.
    StaleLease,
    /// A sequence number at or below one already seen: a replay or a reordering.
    Replayed,
    /// This witness voted against the sender at the revision its record still has.
    Voted,
}

/// What to do with one heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Acknowledge it, granting this window.
    Ack(Duration),
    /// Drop it, for this reason.
    Drop(DropReason),
}

/// A vote to write: against `holder`'s `lease` at its record's `revision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vote {
    /// The holder voted against.
    pub holder: String,
    /// Its lease.
    pub lease: i64,
    /// The revision of its record.
    pub revision: i64,
}

/// What a witness remembers of one holder (one lease of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    /// The lease heard or read.
    pub lease: i64,
    /// Since when this witness knows the holder with this lease.
    pub since: Instant,
    /// The last fresh, authentic heartbeat.
    pub last_heard: Option<Instant>,
    /// No vote against the holder before this instant (the promises given).
    pub promised_until: Option<Instant>,
    /// The highest sequence number seen.
    pub highest_seq: u64,
    /// The record revision this witness voted against, if it did.
    pub voted: Option<i64>,
}

/// One witness's state over every holder it hears or reads.
#[derive(Debug, Clone)]
pub struct Witness {
    me: String,
    timing: Timing,
    started: Instant,
    holders: BTreeMap<String, Watched>,
    /// Test hook: a broken rule that votes this much inside its promise.
    #[cfg(test)]
    pub(crate) promise_cut: Duration,
}

impl Witness {
    /// A witness named `me` whose process started at `started`.
    pub fn new(me: &str, timing: Timing, started: Instant) -> Self {
        Witness {
            me: me.to_string(),
            timing,
            started,
            holders: BTreeMap::new(),
            #[cfg(test)]
            promise_cut: Duration::ZERO,
        }
    }

    /// This witness's name.
    pub fn name(&self) -> &str {
        &self.me
    }

    fn promise(&self, window: Duration) -> Duration {
        #[cfg(test)]
        return promise(window).saturating_sub(self.promise_cut);
        #[cfg(not(test))]
        promise(window)
    }

    fn watched(&mut self, holder: &str, lease: i64, now: Instant) -> &mut Watched {
        let entry = self
            .holders
            .entry(holder.to_string())
            .or_insert_with(|| Watched::new(lease, now));
        if entry.lease != lease {
            // A new lease is a new holder, but a promise is a promise whatever lease.
            let promised_until = entry.promised_until;
            *entry = Watched::new(lease, now);
            entry.promised_until = promised_until;
        }
        entry
    }

    /// A vote of this witness found in etcd (after a restart): refuse the holder again.
    pub fn restore_vote(&mut self, now: Instant, holder: &str, lease: i64, revision: i64) {
        self.watched(holder, lease, now).voted = Some(revision);
    }

    /// Judge one authentic heartbeat of `from` (lease, sequence, window asked for),
    /// given `from`'s record as this witness has read it. An acknowledgement is a
    /// promise, recorded before it is sent.
    pub fn heartbeat(
        &mut self,
        now: Instant,
        from: &str,
        lease: i64,
        seq: u64,
        window: Duration,
        record: Option<HolderRecord<'_>>,
    ) -> Verdict {
        let Some(record) = record else {
            return Verdict::Drop(DropReason::UnknownSender);
        };
        if record.lease != lease {
            return Verdict::Drop(DropReason::StaleLease);
        }
        let granted = window.min(MAX_WINDOW);
        let promise = self.promise(granted);
        let entry = self.watched(from, lease, now);
        if seq <= entry.highest_seq {
            return Verdict::Drop(DropReason::Replayed);
        }
        entry.highest_seq = seq;
        entry.last_heard = Some(now);
        match entry.voted {
            Some(revision) if revision == record.revision => {
                return Verdict::Drop(DropReason::Voted);
            }
            // The record moved on: that vote can no longer count.
            Some(_) => entry.voted = None,
            None => {}
        }
        let until = now + promise;
        entry.promised_until = Some(entry.promised_until.map_or(until, |u| u.max(until)));
        Verdict::Ack(granted)
    }

    /// When this witness may vote against a holder with `record` at the earliest
    /// (`None`: it may not: not its witness, lease-only, leaving, voted already).
    fn vote_at(&mut self, now: Instant, holder: &str, record: HolderRecord<'_>) -> Option<Instant> {
        let vouch = record.vouch.filter(|v| v.revocable())?;
        if record.leaving || !vouch.witnesses.contains(&self.me) {
            return None;
        }
        let silence = self.promise(self.timing.window);
        let earliest = self.started + restart_wait();
        let entry = self.watched(holder, record.lease, now);
        if entry.voted == Some(record.revision) {
            return None;
        }
        let quiet_since = entry.last_heard.map_or(entry.since, |h| h.max(entry.since));
        let mut at = earliest.max(quiet_since + silence);
        if let Some(promised) = entry.promised_until {
            at = at.max(promised);
        }
        Some(at)
    }

    /// Votes due at `now` over the records read (holder name, record); each is
    /// recorded as cast before it is returned, so nothing is acknowledged after it.
    /// Holders no longer in `records` are forgotten, save for their promises.
    pub fn due_votes<'a>(
        &mut self,
        now: Instant,
        records: impl IntoIterator<Item = (&'a str, HolderRecord<'a>)>,
    ) -> Vec<Vote> {
        let mut votes = Vec::new();
        for (holder, record) in records {
            if self
                .vote_at(now, holder, record)
                .is_some_and(|at| at <= now)
            {
                self.watched(holder, record.lease, now).voted = Some(record.revision);
                votes.push(Vote {
                    holder: holder.to_string(),
                    lease: record.lease,
                    revision: record.revision,
                });
            }
        }
        votes
    }

    /// The next instant a vote may fall due over `records`, for the caller's timer.
    pub fn next_vote_at<'a>(
        &mut self,
        now: Instant,
        records: impl IntoIterator<Item = (&'a str, HolderRecord<'a>)>,
    ) -> Option<Instant> {
        records
            .into_iter()
            .filter_map(|(holder, record)| self.vote_at(now, holder, record))
            .min()
    }

    /// Forget holders whose promises ran out and that no record names any more.
    pub fn forget_gone(&mut self, now: Instant, live: impl Fn(&str) -> bool) {
        self.holders
            .retain(|name, w| live(name) || w.promised_until.is_some_and(|until| until > now));
    }

    /// What this witness remembers of `holder`.
    pub fn watching(&self, holder: &str) -> Option<&Watched> {
        self.holders.get(holder)
    }
}

impl Watched {
    fn new(lease: i64, now: Instant) -> Self {
        Watched {
            lease,
            since: now,
            last_heard: None,
            promised_until: None,
            highest_seq: 0,
            voted: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::VouchMode;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn record(vouch: &VouchRecord, revision: i64) -> HolderRecord<'_> {
        HolderRecord {
            lease: 7,
            revision,
            vouch: Some(vouch),
            leaving: false,
        }
    }

    fn peers() -> VouchRecord {
        VouchRecord {
            mode: VouchMode::Peers,
            witnesses: vec!["w".into(), "x".into()],
        }
    }

    #[test]
    fn a_witness_acknowledges_fresh_heartbeats_of_known_leases_only() {
        let t0 = Instant::now();
        let v = peers();
        let mut w = Witness::new("w", Timing::default(), t0);
        let hb = |w: &mut Witness, seq, rec| w.heartbeat(t0, "h", 7, seq, ms(200), rec);
        assert_eq!(
            hb(&mut w, 1, None),
            Verdict::Drop(DropReason::UnknownSender)
        );
        let other_lease = HolderRecord {
            lease: 8,
            ..record(&v, 5)
        };
        assert_eq!(
            hb(&mut w, 1, Some(other_lease)),
            Verdict::Drop(DropReason::StaleLease)
        );
        assert_eq!(hb(&mut w, 5, Some(record(&v, 5))), Verdict::Ack(ms(200)));
        assert_eq!(
            hb(&mut w, 5, Some(record(&v, 5))),
            Verdict::Drop(DropReason::Replayed)
        );
        assert_eq!(
            hb(&mut w, 4, Some(record(&v, 5))),
            Verdict::Drop(DropReason::Replayed)
        );
        let long = w.heartbeat(t0, "h", 7, 6, Duration::from_secs(9), Some(record(&v, 5)));
        assert_eq!(long, Verdict::Ack(MAX_WINDOW), "a window is capped");
    }

    #[test]
    fn a_vote_waits_for_the_restart_wait_the_promise_and_the_silence() {
        let t0 = Instant::now();
        let v = peers();
        let mut w = Witness::new("w", Timing::default(), t0);
        let rec = || [("h", record(&v, 5))];
        assert_eq!(w.next_vote_at(t0, rec()), Some(t0 + restart_wait()));
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(
            w.heartbeat(t1, "h", 7, 1, ms(200), Some(record(&v, 5))),
            Verdict::Ack(ms(200))
        );
        let at = w.next_vote_at(t1, rec()).unwrap();
        assert_eq!(at, t1 + promise(ms(200)));
        assert!(w.due_votes(at - ms(1), rec()).is_empty());
        let votes = w.due_votes(at, rec());
        assert_eq!(
            votes,
            [Vote {
                holder: "h".into(),
                lease: 7,
                revision: 5
            }]
        );
        assert!(w.due_votes(at + ms(10), rec()).is_empty(), "once");
        // Voted: refuse while the record is at 5, acknowledge again once it moved.
        let late = at + ms(20);
        assert_eq!(
            w.heartbeat(late, "h", 7, 2, ms(200), Some(record(&v, 5))),
            Verdict::Drop(DropReason::Voted)
        );
        assert_eq!(
            w.heartbeat(late, "h", 7, 3, ms(200), Some(record(&v, 6))),
            Verdict::Ack(ms(200))
        );
    }

    #[test]
    fn no_vote_for_lease_only_leaving_or_others_holders() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(60);
        let mut w = Witness::new("w", Timing::default(), t0);
        let lease_only = VouchRecord {
            mode: VouchMode::LeaseOnly,
            ..peers()
        };
        assert!(w
            .due_votes(later, [("h", record(&lease_only, 5))])
            .is_empty());
        let v = peers();
        let leaving = HolderRecord {
            leaving: true,
            ..record(&v, 5)
        };
        assert!(w.due_votes(later, [("h", leaving)]).is_empty());
        let not_mine = VouchRecord {
            mode: VouchMode::Peers,
            witnesses: vec!["x".into()],
        };
        assert!(w.due_votes(later, [("h", record(&not_mine, 5))]).is_empty());
        // First seen now: silent for a whole promise from now on.
        assert!(w.due_votes(later, [("h", record(&v, 5))]).is_empty());
        assert_eq!(
            w.due_votes(later + promise(ms(200)), [("h", record(&v, 5))])
                .len(),
            1
        );
    }

    #[test]
    fn a_restored_vote_refuses_and_a_new_lease_keeps_the_promise() {
        let t0 = Instant::now();
        let v = peers();
        let mut w = Witness::new("w", Timing::default(), t0);
        w.restore_vote(t0, "h", 7, 5);
        assert_eq!(
            w.heartbeat(t0, "h", 7, 1, ms(200), Some(record(&v, 5))),
            Verdict::Drop(DropReason::Voted)
        );
        assert_eq!(
            w.heartbeat(t0, "h", 7, 2, ms(200), Some(record(&v, 6))),
            Verdict::Ack(ms(200))
        );
        let promised = w.watching("h").unwrap().promised_until;
        let fresh = HolderRecord {
            lease: 9,
            ..record(&v, 8)
        };
        assert_eq!(
            w.heartbeat(t0, "h", 9, 1, ms(200), Some(fresh)),
            Verdict::Ack(ms(200))
        );
        assert_eq!(w.watching("h").unwrap().lease, 9);
        assert!(w.watching("h").unwrap().promised_until >= promised);
    }
}
