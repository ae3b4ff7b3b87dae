//! Peer vouching, the pure part: holders and witnesses as state machines with time
//! passed in. Leases arbitrate, peers detect.
//!
//! # Why it cannot split
//!
//! Terms. A *holder* H has an etcd lease L and a node record at revision R whose
//! vouching part is a mode (`peers` or `lease-only`) and a list W of w *witnesses*.
//! `k = ack_quorum(w)`, `q = vote_quorum(w) = w − k + 1`, so any k members of W and any q
//! members of W share one (k + q > w). Durations are measured on one host's monotonic
//! clock only; every clock runs at a rate within `1 ± ρ` of real time
//! ([`CLOCK_RATE_MARGIN_PPM`]). A holder is *lit* for an IP while it has the address and
//! its nftables fence is open; the kernel closes the fence at the deadline the agent
//! last armed, within [`FENCE_PRECISION`] of it, whatever the agent is doing.
//!
//! Rules.
//! 1. *Holder.* H arms its fence for the earliest of: its lease deadline (as before:
//!    a margin before etcd may expire L), and, for each *revocable* configuration
//!    (mode `peers`) that etcd may hold for H right now, the instant `s + P` where `s`
//!    is the send time of the k-th freshest acknowledged heartbeat among that
//!    configuration's witnesses and P the window the witness granted. The
//!    configurations etcd may hold are the one H last wrote and saw committed, and the
//!    one it is writing (until it learns the outcome). A process on a lease it
//!    inherited (a restart) does not know: the last process may have a write still on
//!    its way to etcd, which can commit after any read. So it stays dark until a write
//!    of its own, comparing the revision it read, has committed (the simulation found
//!    this: a crashed agent's write, queued through an etcd outage, committed after its
//!    successor had read the record and trusted it).
//! 2. *Witness promise.* A witness that acknowledges a heartbeat granting window P at
//!    time r (read before the acknowledgement is sent, so r is after the heartbeat was
//!    sent) does not vote against H before `r + promise(P)` on its clock, where
//!    `promise(P) = P·(1+ρ)/(1−ρ) + ε`. A witness process that starts (or re-executes)
//!    remembers no promise, so it votes nothing for `promise(MAX_WINDOW)`, and it grants
//!    no window above [`MAX_WINDOW`].
//! 3. *Witness refusal.* Once it has voted against H at R, a witness acknowledges no
//!    heartbeat of H while H's record is at R; a restarted witness learns its votes from
//!    etcd (by key name) before it acknowledges anything, and acknowledges only senders
//!    whose record it has read, with the lease the heartbeat names.
//! 4. *Votes and revocation.* A vote is the key `votes/H/<witness>` naming L and R. The
//!    revocation is one etcd transaction: it succeeds only if H's record is still at R
//!    (mode `peers`, listing W) and q distinct members of W have votes naming L and R
//!    (each compared by its revision); it deletes H's record and the votes. Only after
//!    it committed is L revoked (which deletes H's claims).
//! 5. *Every change of H's configuration is a transaction* comparing the record's
//!    revision with the one H last saw, so a revocation at R and any write by H after
//!    R cannot both commit, and H can never write a record again once it was revoked.
//!    A lease whose record is gone (not by its own leave) counts as revoked.
//!
//! Argument. Let the revocation commit at real time T. By rule 5 the configuration H
//! knows or is writing is `peers(W)` at R from then on (its own later writes fail), so
//! by rule 1 H's fence needs k acknowledgements of W that are still valid. Take any k
//! witnesses that acknowledged; one of them, v, also voted (quorum intersection). v's
//! acknowledgement was sent at r ≤ τ, the time of v's vote (rule 3: none after), and
//! τ ≤ T (its vote key existed when T committed). By rule 2, real(τ) ≥ real(r) +
//! promise(P)/(1+ρ) ≥ real(s) + P/(1−ρ) + ε/(1+ρ), while H's fence for that
//! acknowledgement closed by real(s) + P/(1−ρ) plus the kernel's precision. So at T
//! H lacks its acknowledgement quorum: it is dark, and stays dark, since no voter
//! acknowledges it again while its record is at R, and the record never leaves R except
//! by deletion. The claims vanish only with L, after T; a new holder claims only then.
//! Two hosts are never lit for one exclusive IP. The lease path is unchanged.
//!
//! What it leaves to the lease: a holder that lost its acknowledgement quorum but still
//! reaches etcd writes `lease-only` (rule 5) before its fence closes (it starts when its
//! quorum is half a window old), and nobody may vote it out from then on; it asks for
//! `peers` again once a quorum has vouched for it for [`RETURN_HOLD`] (on a lease that
//! never fell back, at the first acknowledgement quorum: a fresh agent is vouched for
//! within a heartbeat, not a second later). Safety does not depend on the hold: every
//! change of mode is one record transaction, whatever its timing.
//!
//! Residual, stated: the fence timeout the agent writes is `deadline − now` read just
//! before the netlink send; if more than [`ARM_SLACK`] passed by the kernel's answer the
//! agent closes the fence at once. A freeze between that answer and the check could
//! leave the fence open by the length of the stall before the send; ε covers
//! [`ARM_SLACK`] and the kernel's precision, not an arbitrary stall at that instant.
//! A suspended host (or a paused VM) does not count the pause on its monotonic clock.

pub mod holder;
pub mod revocation;
pub mod wire;
pub mod witness;

#[cfg(test)]
mod sim;

use std::time::Duration;

pub use holder::{Holder, Standing};
pub use revocation::{revocation, Revocation, SeenVote};
pub use witness::{DropReason, HolderRecord, Verdict, Vote, Watched, Witness};

/// How far any host's monotonic clock may run from real time: 1 %, in parts per
/// million. Crystal clocks drift tens of ppm and NTP slews at most 500 ppm.
pub const CLOCK_RATE_MARGIN_PPM: u64 = 10_000;

/// The kernel closes the fence within a few milliseconds of its timeout (measured: 4 ms
/// early to 6 ms late); with [`ARM_SLACK`] this is what a witness adds to its wait.
pub const FENCE_PRECISION: Duration = Duration::from_millis(20);

/// The most time that may pass between reading the clock for a fence timeout and the
/// kernel's answer; beyond it the agent closes the fence at once.
pub const ARM_SLACK: Duration = Duration::from_millis(5);

/// The longest window a witness grants; a witness process that starts waits
/// `promise(MAX_WINDOW)` before it votes, so it cannot break a promise it forgot.
pub const MAX_WINDOW: Duration = Duration::from_secs(1);

/// Witnesses per holder at most: heartbeats per host stay flat however big the cluster.
pub const MAX_WITNESSES: usize = 4;

/// How long a holder that fell back to the lease must have been vouched for before it
/// asks for peers again: a flapping peer network does not make it write its record
/// every heartbeat.
pub const RETURN_HOLD: Duration = Duration::from_secs(1);

/// Heartbeat timing of one agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Time between heartbeats.
    pub interval: Duration,
    /// The window a heartbeat asks for: how long an acknowledgement vouches for the
    /// holder, and about how long a silent holder goes unsuspected.
    pub window: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            interval: Duration::from_millis(50),
            window: Duration::from_millis(200),
        }
    }
}

/// How long a witness keeps its promise after acknowledging a heartbeat that was
/// granted `window`: the window as the slowest clock may measure it against the fastest,
/// plus [`FENCE_PRECISION`].
pub fn promise(window: Duration) -> Duration {
    let ppm = u128::from(CLOCK_RATE_MARGIN_PPM);
    let nanos = window.as_nanos() * (1_000_000 + ppm) / (1_000_000 - ppm) + 1;
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)) + FENCE_PRECISION
}

/// How long a witness process that just started waits before it votes.
pub fn restart_wait() -> Duration {
    promise(MAX_WINDOW)
}

/// Acknowledgements a holder with `witnesses` needs: half of them, rounded up; 0 for
/// none (such a holder is lease-only). Losing one witness never takes a holder with
/// two or more below it.
pub fn ack_quorum(witnesses: usize) -> usize {
    witnesses.div_ceil(2)
}

/// Votes that revoke a holder with `witnesses`: every set of acknowledgers shares a
/// witness with every set of voters.
pub fn vote_quorum(witnesses: usize) -> usize {
    witnesses + 1 - ack_quorum(witnesses)
}

/// The witnesses of `me` among `members` (the live nodes that listen for heartbeats,
/// `me` among them or not): the next [`MAX_WITNESSES`] after `me` in name order,
/// wrapping around. Every node witnesses as many holders as it has witnesses, and a
/// node that joins or leaves changes the sets of its neighbours only.
pub fn witnesses_of<'a>(me: &str, members: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut ring: Vec<&str> = members.into_iter().filter(|m| *m != me).collect();
    ring.sort_unstable();
    ring.dedup();
    let start = ring.partition_point(|m| *m < me);
    let count = ring.len().min(MAX_WITNESSES);
    (0..count)
        .map(|i| ring[(start + i) % ring.len()].to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ack_quorum_meets_every_vote_quorum_and_one_loss_keeps_the_acks() {
        assert_eq!(ack_quorum(0), 0);
        for w in 1..=MAX_WITNESSES {
            let (k, q) = (ack_quorum(w), vote_quorum(w));
            assert!(k >= 1 && q >= 1 && q <= w, "w {w}");
            assert!(k + q > w, "w {w}: quorums must intersect");
            if w >= 2 {
                assert!(k < w, "w {w}: one lost witness must leave k");
            }
        }
        assert_eq!((ack_quorum(2), vote_quorum(2)), (1, 2));
        assert_eq!((ack_quorum(4), vote_quorum(4)), (2, 3));
    }

    #[test]
    fn the_promise_covers_the_window_on_any_clock_pair() {
        let ms = Duration::from_millis;
        let p = promise(ms(200));
        // The holder's 200 ms may be 200/0.99 of real time; the witness's wait at least
        // p/1.01: the wait must be longer by the precision.
        let holder_real = 200.0 / 0.99;
        let witness_real = p.as_secs_f64() * 1000.0 / 1.01;
        assert!(witness_real >= holder_real + 19.8, "{p:?}");
        assert!(p < ms(230));
        assert!(restart_wait() > MAX_WINDOW);
    }

    #[test]
    fn witnesses_are_the_next_names_on_the_ring() {
        let all = ["h1", "h2", "h3"];
        assert_eq!(witnesses_of("h1", all), ["h2", "h3"]);
        assert_eq!(witnesses_of("h3", all), ["h1", "h2"]);
        assert_eq!(witnesses_of("h1", ["h1"]), Vec::<String>::new());
        let many: Vec<String> = (1..=10).map(|i| format!("n{i:02}")).collect();
        let names = || many.iter().map(String::as_str);
        assert_eq!(witnesses_of("n09", names()), ["n10", "n01", "n02", "n03"]);
        // Every node is the witness of exactly MAX_WITNESSES holders.
        for m in names() {
            let holders = names().filter(|h| witnesses_of(h, names()).iter().any(|w| w == m));
            assert_eq!(holders.count(), MAX_WITNESSES);
        }
        // A member not in the list still gets witnesses (its record is not in yet).
        assert_eq!(witnesses_of("h0", ["h1", "h2"]), ["h1", "h2"]);
    }
}
