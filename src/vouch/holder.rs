//! The holder's side: heartbeats out, acknowledgements in, and from them the fence
//! deadline and the vouching configuration its record should carry.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::{ack_quorum, Timing, MAX_WINDOW, RETURN_HOLD};
use crate::model::{VouchMode, VouchRecord};

/// Heartbeats remembered for matching acknowledgements: older ones vouch for nothing.
const SENT_KEPT: usize = 256;

/// What the holder knows of the configuration etcd holds for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Not known (a process that has not read its record yet): stay dark.
    Unknown,
    /// The record says this (`None`: no vouching part, or no record of this lease yet).
    Known(Option<VouchRecord>),
}

/// What one acknowledgement did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckVerdict {
    /// It vouches for the holder until the instant given.
    Vouches(Instant),
    /// It names a lease that is not the holder's current one.
    StaleLease,
    /// It names a heartbeat this holder did not send (or forgot).
    UnknownHeartbeat,
}

/// One holder's vouching state.
#[derive(Debug, Clone)]
pub struct Holder {
    timing: Timing,
    lease: Option<i64>,
    next_seq: u64,
    sent: VecDeque<(u64, Instant)>,
    /// Per witness: until when its freshest acknowledgement vouches.
    vouched: BTreeMap<String, Instant>,
    /// What etcd holds, as far as this holder knows.
    standing: Standing,
    /// What it is writing now (`Some(None)`: a record without vouching).
    pending: Option<Option<VouchRecord>>,
    /// The witnesses it should have; `None` when vouching is off.
    ideal: Option<Vec<String>>,
    /// Since when `ideal` has vouched for it without a break.
    healthy_since: Option<Instant>,
    /// Whether it fell back to the lease alone on this lease: only then does a return
    /// to the peers wait [`RETURN_HOLD`] (a fresh agent is vouched for at once).
    fell_back: bool,
    /// Test hook: a broken rule that forgets the configuration being written.
    #[cfg(test)]
    pub(crate) ignore_pending: bool,
}

impl Holder {
    /// A holder whose first heartbeat has sequence `first_seq` (unique per process: a
    /// re-executed agent keeps its lease, so witnesses must see its numbers go up).
    pub fn new(timing: Timing, first_seq: u64) -> Self {
        Holder {
            timing,
            lease: None,
            next_seq: first_seq,
            sent: VecDeque::new(),
            vouched: BTreeMap::new(),
            standing: Standing::Unknown,
            pending: None,
            ideal: None,
            healthy_since: None,
            fell_back: false,
            #[cfg(test)]
            ignore_pending: false,
        }
    }

    /// The timing this holder asks for.
    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// The lease now held (`None`: none): acknowledgements of another lease vouch for
    /// nothing, and a new lease starts with no configuration in etcd.
    pub fn set_lease(&mut self, lease: Option<i64>, standing: Standing) {
        if self.lease != lease {
            self.sent.clear();
            self.vouched.clear();
            self.healthy_since = None;
            self.fell_back = false;
        }
        self.lease = lease;
        self.standing = standing;
        self.pending = None;
    }

    /// The lease heartbeats name.
    pub fn lease(&self) -> Option<i64> {
        self.lease
    }

    /// The witnesses this holder should have (`None`: vouching off).
    pub fn set_ideal(&mut self, ideal: Option<Vec<String>>) {
        if self.ideal != ideal {
            self.ideal = ideal;
            self.healthy_since = None;
        }
    }

    /// What etcd holds for this holder, as far as it knows.
    pub fn standing(&self) -> &Standing {
        &self.standing
    }

    /// The configuration being written, if any.
    pub fn pending(&self) -> Option<&Option<VouchRecord>> {
        self.pending.as_ref()
    }

    /// A heartbeat to send now: its sequence number and the window it asks for.
    pub fn heartbeat(&mut self, now: Instant) -> Option<(u64, Duration)> {
        self.lease?;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.sent.push_back((seq, now));
        while self.sent.len() > SENT_KEPT {
            self.sent.pop_front();
        }
        self.note_health(now);
        Some((seq, self.timing.window))
    }

    /// Who heartbeats go to: every witness of what etcd holds, of what is being
    /// written and of the ideal set.
    pub fn targets(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .configurations()
            .flat_map(|c| c.witnesses.clone())
            .collect();
        all.extend(self.ideal.iter().flatten().cloned());
        all.sort_unstable();
        all.dedup();
        all
    }

    fn configurations(&self) -> impl Iterator<Item = &VouchRecord> {
        let known = match &self.standing {
            Standing::Known(Some(c)) => Some(c),
            _ => None,
        };
        #[cfg(test)]
        let pending = self
            .pending
            .iter()
            .flatten()
            .filter(|_| !self.ignore_pending);
        #[cfg(not(test))]
        let pending = self.pending.iter().flatten();
        known.into_iter().chain(pending)
    }

    /// An acknowledgement from `witness` of heartbeat `seq` of `lease`, granting `granted`.
    pub fn acknowledged(
        &mut self,
        now: Instant,
        witness: &str,
        lease: i64,
        seq: u64,
        granted: Duration,
    ) -> AckVerdict {
        if self.lease != Some(lease) {
            return AckVerdict::StaleLease;
        }
        let Some(&(_, sent)) = self.sent.iter().find(|(s, _)| *s == seq) else {
            return AckVerdict::UnknownHeartbeat;
        };
        let until = sent + granted.min(self.timing.window).min(MAX_WINDOW);
        let best = self.vouched.entry(witness.to_string()).or_insert(until);
        *best = (*best).max(until);
        let best = *best;
        self.note_health(now);
        AckVerdict::Vouches(best)
    }

    /// Until when `witnesses` vouch for this holder: the k-th latest of their
    /// acknowledgements; `None` when fewer than k vouch (or there is no witness).
    pub fn vouched_until(&self, witnesses: &[String]) -> Option<Instant> {
        let k = ack_quorum(witnesses.len());
        if k == 0 {
            return None;
        }
        let mut untils: Vec<Instant> = witnesses
            .iter()
            .filter_map(|w| self.vouched.get(w).copied())
            .collect();
        untils.sort_unstable_by(|a, b| b.cmp(a));
        untils.get(k - 1).copied()
    }

    /// Until when the peers vouch for what etcd may hold (the earliest over revocable
    /// configurations), or, when nothing revocable is held, for the ideal witnesses.
    pub fn vouched_until_current(&self) -> Option<Instant> {
        let revocable: Vec<&VouchRecord> =
            self.configurations().filter(|c| c.revocable()).collect();
        if revocable.is_empty() {
            return self.vouched_until(self.ideal.as_deref()?);
        }
        revocable
            .iter()
            .map(|c| self.vouched_until(&c.witnesses))
            .collect::<Option<Vec<Instant>>>()?
            .into_iter()
            .min()
    }

    /// The vouching part to write now: what is being written (a retry), what
    /// [`Holder::wanted`] asks for, or what etcd holds; lease-only over the ideal set for
    /// a process that does not know yet (its first write proves what etcd holds).
    pub fn to_write(&mut self, now: Instant) -> Option<VouchRecord> {
        if let Some(pending) = &self.pending {
            return pending.clone();
        }
        if self.standing == Standing::Unknown {
            return self.ideal.as_ref().map(|ideal| VouchRecord {
                mode: VouchMode::LeaseOnly,
                witnesses: ideal.clone(),
            });
        }
        if let Some(wanted) = self.wanted(now) {
            return wanted;
        }
        match &self.standing {
            Standing::Known(current) => current.clone(),
            Standing::Unknown => None,
        }
    }

    /// The fence deadline: the lease's, and no later than what vouches for every
    /// configuration etcd may hold that lets witnesses revoke (rule 1).
    pub fn fence_deadline(&self, lease_fence_at: Option<Instant>) -> Option<Instant> {
        let mut deadline = lease_fence_at?;
        if self.standing == Standing::Unknown {
            return None;
        }
        for config in self.configurations().filter(|c| c.revocable()) {
            deadline = deadline.min(self.vouched_until(&config.witnesses)?);
        }
        Some(deadline)
    }

    /// Whether the fence is held by the peers now (a revocable configuration), not by
    /// the lease alone.
    pub fn revocable(&self) -> bool {
        self.standing == Standing::Unknown || self.configurations().any(VouchRecord::revocable)
    }

    /// Whether `witnesses` vouch for at least half a window more.
    fn healthy(&self, witnesses: &[String], now: Instant) -> bool {
        self.vouched_until(witnesses)
            .is_some_and(|until| until >= now + self.timing.window / 2)
    }

    fn note_health(&mut self, now: Instant) {
        let healthy = self
            .ideal
            .as_deref()
            .is_some_and(|ideal| !ideal.is_empty() && self.healthy(ideal, now));
        if !healthy {
            self.healthy_since = None;
        } else if self.healthy_since.is_none() {
            self.healthy_since = Some(now);
        }
    }

    /// What the record should say now, when that differs from what etcd holds and
    /// nothing is being written: fall back to the lease while the quorum is at risk
    /// (before the fence closes), go back to the peers once they vouched for
    /// [`RETURN_HOLD`], follow the ideal witness set.
    pub fn wanted(&mut self, now: Instant) -> Option<Option<VouchRecord>> {
        self.note_health(now);
        let Standing::Known(current) = &self.standing else {
            return None;
        };
        if self.pending.is_some() {
            return None;
        }
        let want = self.ideal.as_ref().map(|ideal| {
            let lease_only = VouchRecord {
                mode: VouchMode::LeaseOnly,
                witnesses: ideal.clone(),
            };
            let peers = VouchRecord {
                mode: VouchMode::Peers,
                witnesses: ideal.clone(),
            };
            match current {
                _ if ideal.is_empty() => lease_only,
                Some(c) if c.revocable() => {
                    if !self.healthy(&c.witnesses, now) {
                        lease_only
                    } else if c.witnesses != *ideal && self.healthy(ideal, now) {
                        peers
                    } else {
                        c.clone()
                    }
                }
                _ if self.healthy_since.is_some_and(|since| {
                    !self.fell_back || now.duration_since(since) >= RETURN_HOLD
                }) =>
                {
                    peers
                }
                _ => lease_only,
            }
        });
        (want.as_ref() != current.as_ref()).then_some(want)
    }

    /// A write of `record` is on its way: until its outcome is known, the fence obeys
    /// both the old and the new configuration.
    pub fn propose(&mut self, record: Option<VouchRecord>) {
        self.pending = Some(record);
    }

    /// The write committed: etcd holds what was proposed.
    pub fn committed(&mut self) {
        if let Some(record) = self.pending.take() {
            let was_revocable = matches!(&self.standing, Standing::Known(Some(r)) if r.revocable());
            self.fell_back |= was_revocable && !record.as_ref().is_some_and(|r| r.revocable());
            self.standing = Standing::Known(record);
        }
    }

    /// The write did not commit, and etcd holds `found` (read after the failure).
    pub fn refused(&mut self, found: Standing) {
        self.pending = None;
        self.standing = found;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn peers(w: &[&str]) -> VouchRecord {
        VouchRecord {
            mode: VouchMode::Peers,
            witnesses: w.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn holder(record: Option<VouchRecord>) -> Holder {
        let mut h = Holder::new(Timing::default(), 1);
        h.set_lease(Some(7), Standing::Known(record));
        h.set_ideal(Some(vec!["h2".into(), "h3".into()]));
        h
    }

    #[test]
    fn the_fence_follows_the_kth_acknowledgement_and_the_lease() {
        let t0 = Instant::now();
        let lease_at = Some(t0 + Duration::from_secs(9));
        let mut h = holder(Some(peers(&["h2", "h3", "h4", "h5"])));
        assert_eq!(h.fence_deadline(lease_at), None, "no acknowledgement yet");
        let (seq, window) = h.heartbeat(t0).unwrap();
        assert_eq!(window, ms(200));
        let v = h.acknowledged(t0 + ms(1), "h2", 7, seq, window);
        assert_eq!(v, AckVerdict::Vouches(t0 + ms(200)));
        assert_eq!(h.fence_deadline(lease_at), None, "k = 2 of 4");
        let (seq2, _) = h.heartbeat(t0 + ms(50)).unwrap();
        h.acknowledged(t0 + ms(51), "h3", 7, seq2, window);
        assert_eq!(
            h.fence_deadline(lease_at),
            Some(t0 + ms(200)),
            "the 2nd latest"
        );
        h.acknowledged(t0 + ms(51), "h2", 7, seq2, window);
        assert_eq!(h.fence_deadline(lease_at), Some(t0 + ms(250)));
        assert_eq!(h.fence_deadline(Some(t0 + ms(100))), Some(t0 + ms(100)));
        assert_eq!(h.fence_deadline(None), None, "no lease, dark");
        assert_eq!(
            h.acknowledged(t0, "h2", 8, seq2, window),
            AckVerdict::StaleLease
        );
        assert_eq!(
            h.acknowledged(t0, "h2", 7, 999, window),
            AckVerdict::UnknownHeartbeat
        );
        // A witness cannot stretch the window past what the holder asked for.
        let (seq3, _) = h.heartbeat(t0 + ms(100)).unwrap();
        h.acknowledged(t0 + ms(101), "h4", 7, seq3, Duration::from_secs(5));
        h.acknowledged(t0 + ms(101), "h5", 7, seq3, Duration::from_secs(5));
        assert_eq!(h.fence_deadline(lease_at), Some(t0 + ms(300)));
    }

    #[test]
    fn lease_only_is_held_by_the_lease_and_unknown_is_dark() {
        let t0 = Instant::now();
        let lease_at = Some(t0 + Duration::from_secs(9));
        let lease_only = VouchRecord {
            mode: VouchMode::LeaseOnly,
            witnesses: vec!["h2".into()],
        };
        let h = holder(Some(lease_only));
        assert_eq!(h.fence_deadline(lease_at), lease_at);
        assert!(!h.revocable());
        let mut h = Holder::new(Timing::default(), 1);
        h.set_lease(Some(7), Standing::Unknown);
        assert_eq!(h.fence_deadline(lease_at), None);
        h.set_lease(Some(7), Standing::Known(None));
        assert_eq!(h.fence_deadline(lease_at), lease_at, "no vouching part");
    }

    #[test]
    fn a_pending_write_binds_the_fence_to_both_configurations() {
        let t0 = Instant::now();
        let lease_at = Some(t0 + Duration::from_secs(9));
        let lease_only = VouchRecord {
            mode: VouchMode::LeaseOnly,
            witnesses: vec!["h2".into()],
        };
        let mut h = holder(Some(lease_only));
        h.propose(Some(peers(&["h2"])));
        assert_eq!(h.fence_deadline(lease_at), None, "peers pending: needs h2");
        let (seq, w) = h.heartbeat(t0).unwrap();
        h.acknowledged(t0, "h2", 7, seq, w);
        assert_eq!(h.fence_deadline(lease_at), Some(t0 + ms(200)));
        h.committed();
        assert_eq!(h.standing(), &Standing::Known(Some(peers(&["h2"]))));
        // Back to the lease: until the write is known to have committed, still peers.
        h.propose(Some(VouchRecord {
            mode: VouchMode::LeaseOnly,
            witnesses: vec!["h2".into()],
        }));
        assert_eq!(h.fence_deadline(lease_at), Some(t0 + ms(200)));
        h.committed();
        assert_eq!(h.fence_deadline(lease_at), lease_at);
    }

    #[test]
    fn wanted_enters_peers_at_once_falls_back_before_the_fence_closes_and_returns_after_the_hold() {
        let t0 = Instant::now();
        let mut h = holder(None);
        let ideal = vec!["h2".to_string(), "h3".to_string()];
        let lease_only = Some(VouchRecord {
            mode: VouchMode::LeaseOnly,
            witnesses: ideal.clone(),
        });
        assert_eq!(h.wanted(t0), Some(lease_only.clone()), "start lease-only");
        h.propose(lease_only.clone().unwrap().into());
        assert_eq!(h.wanted(t0), None, "one write at a time");
        h.committed();
        // A fresh agent: the first acknowledgement is enough.
        let (seq, w) = h.heartbeat(t0).unwrap();
        h.acknowledged(t0, "h2", 7, seq, w);
        let want = h.wanted(t0).expect("peers at once");
        assert_eq!(want, Some(peers(&["h2", "h3"])));
        h.propose(want);
        h.committed();
        assert_eq!(h.wanted(t0), None);
        // Silence: at risk once the quorum is half a window old, before it closes.
        let last = h.vouched_until(&ideal).unwrap();
        assert_eq!(h.wanted(last - ms(101)), None);
        assert_eq!(h.wanted(last - ms(99)), lease_only.clone().map(Some));
        assert!(h.fence_deadline(Some(t0 + Duration::from_secs(9))) > Some(last - ms(99)));
        h.propose(lease_only.clone());
        h.committed();
        // Having fallen back, it returns only after a second of acknowledgements.
        let t1 = last + ms(500);
        let mut t = t1;
        while t < t1 + RETURN_HOLD - ms(100) {
            let (seq, w) = h.heartbeat(t).unwrap();
            h.acknowledged(t, "h2", 7, seq, w);
            assert_eq!(h.wanted(t), None, "held back at {:?}", t - t1);
            t += ms(50);
        }
        while t < t1 + RETURN_HOLD + ms(50) {
            let (seq, w) = h.heartbeat(t).unwrap();
            h.acknowledged(t, "h2", 7, seq, w);
            t += ms(50);
        }
        assert_eq!(
            h.wanted(t),
            Some(Some(peers(&["h2", "h3"]))),
            "back to peers"
        );
    }

    #[test]
    fn the_ideal_set_replaces_a_set_with_a_dead_witness_once_it_vouches() {
        let t0 = Instant::now();
        let mut h = holder(Some(peers(&["h1", "h3"])));
        h.set_ideal(Some(vec!["h3".into()]));
        let fallback = VouchRecord {
            mode: VouchMode::LeaseOnly,
            witnesses: vec!["h3".into()],
        };
        assert_eq!(
            h.wanted(t0),
            Some(Some(fallback)),
            "no acknowledgement: at risk"
        );
        let (seq, w) = h.heartbeat(t0).unwrap();
        h.acknowledged(t0, "h3", 7, seq, w);
        assert_eq!(h.wanted(t0), Some(Some(peers(&["h3"]))));
        assert_eq!(h.targets(), ["h1", "h3"]);
        h.set_ideal(Some(vec![]));
        let want = h.wanted(t0).unwrap().unwrap();
        assert_eq!(want.mode, VouchMode::LeaseOnly, "the last host alone");
        h.set_ideal(None);
        assert_eq!(h.wanted(t0), Some(None), "vouching off: no vouching part");
    }
}
