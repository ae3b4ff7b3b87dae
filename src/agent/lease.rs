//! When may etcd expire this agent's lease? Pure time arithmetic on monotonic instants.
//!
//! etcd renews a lease when the leader handles a keepalive, which is after we sent it;
//! so "send time + granted TTL" is a deadline etcd cannot beat. The agent drops its
//! addresses a margin before that deadline unless a newer renewal moved it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Tracks the earliest moment etcd may expire the lease.
#[derive(Debug, Clone)]
pub struct LeaseDeadline {
    margin: Duration,
    deadline: Option<Instant>,
    in_flight: VecDeque<Instant>,
}

/// What a keepalive answer said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// The lease lives on, until the new deadline.
    Renewed,
    /// etcd no longer knows the lease: every claim on it is gone.
    Expired,
}

impl LeaseDeadline {
    /// A clock that fences `margin` before each deadline.
    pub fn new(ttl: Duration) -> Self {
        LeaseDeadline {
            margin: fence_margin(ttl),
            deadline: None,
            in_flight: VecDeque::new(),
        }
    }

    /// A lease was granted by a request sent at `sent`.
    pub fn granted(&mut self, sent: Instant, ttl_secs: i64) {
        self.in_flight.clear();
        self.deadline = Some(sent + secs(ttl_secs));
    }

    /// A keepalive was sent at `at`.
    pub fn sent(&mut self, at: Instant) {
        self.in_flight.push_back(at);
    }

    /// A keepalive answer arrived; answers come in the order requests were sent.
    pub fn answered(&mut self, ttl_secs: i64) -> Renewal {
        let sent = self.in_flight.pop_front();
        if ttl_secs <= 0 {
            self.forget();
            return Renewal::Expired;
        }
        if let Some(sent) = sent {
            let candidate = sent + secs(ttl_secs);
            self.deadline = Some(self.deadline.map_or(candidate, |d| d.max(candidate)));
        }
        Renewal::Renewed
    }

    /// The share of a `ttl_secs` lease left before the current deadline at `now` (0 when
    /// it has passed): how close a renewal arriving now came to the deadline.
    pub fn headroom(&self, now: Instant, ttl_secs: i64) -> Option<f64> {
        let left = self.deadline?.saturating_duration_since(now);
        (ttl_secs > 0).then(|| left.as_secs_f64() / secs(ttl_secs).as_secs_f64())
    }

    /// When the oldest unanswered keepalive was sent.
    pub fn oldest_unanswered(&self) -> Option<Instant> {
        self.in_flight.front().copied()
    }

    /// Requests in flight are lost with their stream; they renew nothing.
    pub fn stream_lost(&mut self) {
        self.in_flight.clear();
    }

    /// No lease any more.
    pub fn forget(&mut self) {
        self.deadline = None;
        self.in_flight.clear();
    }

    /// The earliest moment etcd may expire the lease, if known.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// When addresses must be gone unless the lease is renewed first.
    pub fn fence_at(&self) -> Option<Instant> {
        self.deadline
            .map(|d| d.checked_sub(self.margin).unwrap_or(d))
    }

    /// Whether holding addresses is safe at `now`.
    pub fn is_safe(&self, now: Instant) -> bool {
        self.fence_at().is_some_and(|f| now < f)
    }
}

fn secs(ttl_secs: i64) -> Duration {
    Duration::from_secs(u64::try_from(ttl_secs).unwrap_or(0))
}

/// How long before the deadline the host goes dark (the nftables fence closes and the
/// agent drops its exclusive addresses): a twentieth of the TTL, between 100 and 250 ms.
/// The fence closes within a few milliseconds of its timeout (measured: worst +6 ms),
/// and nobody else may claim before the deadline, so this only has to cover that
/// precision; before the fence it was a quarter of the TTL, at least 500 ms, the time
/// the agent needed to remove its addresses itself.
pub fn fence_margin(ttl: Duration) -> Duration {
    (ttl / 20).clamp(Duration::from_millis(100), Duration::from_millis(250))
}

/// How often to send keepalives: a tenth of the TTL, between 100 ms and 1 s. An etcd
/// freeze is ridden out if it ends before `TTL - margin - interval` (1.7 s at TTL 2 s,
/// above the ~1.3 s of a leader election). Each renewal wakes the agent and renews the
/// fence: at TTL/20 the keepalives alone were most of an idle agent's CPU (one agent
/// with 1,000 IPs: 0.88 % of a core at 100 ms, 0.55 % at 200 ms).
pub fn keepalive_interval(ttl: Duration) -> Duration {
    (ttl / 10).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

/// The kernel lifetime of fenced addresses: a slow backstop behind the fence that
/// removes a killed or frozen agent's addresses (and, with them, its exported routes)
/// eventually. Four lease TTLs, at least 60 s: long enough that refreshing it costs
/// little (a round every half lifetime: 1,000 addresses every 30 s; at 20 s the rounds
/// were half of an idle agent's 1.3 % of a core) and that it never ends before the fence.
/// With exported routes, 4 s whatever the TTL: there the address is also what keeps a
/// route announced, and a frozen agent's route draws traffic the fence then drops (lab:
/// 12-20 s of it with the long default, 2.6-2.9 s with 4 s). A live agent refreshes
/// lifetimes with or without etcd, so one shorter than the TTL ends only for a frozen or
/// killed agent, and removing an address is always safe.
pub fn backstop_lifetime(ttl: Duration, export_routes: bool) -> Duration {
    if export_routes {
        Duration::from_secs(4)
    } else {
        (ttl * 4).max(Duration::from_secs(60))
    }
}

/// Whether an address whose kernel lifetime has `valid_left` whole seconds left (as the
/// kernel reports it; `None`: forever) should get the backstop `lifetime` again. Due once
/// a quarter is used, so one refresh round, started when the oldest is half used, takes
/// along everything added since: rounds come about once per half lifetime.
pub fn backstop_due(valid_left: Option<u32>, lifetime: Duration) -> bool {
    let Some(left) = valid_left else {
        return true;
    };
    // The kernel reports the lifetime minus whole seconds of age: up to 1 s less is left.
    let worst = u64::from(left.saturating_sub(1));
    worst * 4 <= lifetime.as_secs() * 3
}

/// When the next refresh round is due: when the earliest lifetime is half used.
pub fn backstop_refresh_at(earliest_end: Instant, lifetime: Duration) -> Instant {
    earliest_end
        .checked_sub(lifetime / 2)
        .unwrap_or(earliest_end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_follows_the_send_time_of_each_answered_keepalive() {
        let t0 = Instant::now();
        let mut clock = LeaseDeadline::new(Duration::from_secs(2));
        assert!(!clock.is_safe(t0), "no lease, not safe");
        clock.granted(t0, 2);
        assert_eq!(clock.fence_at(), Some(t0 + Duration::from_millis(1900)));
        assert!(clock.is_safe(t0 + Duration::from_millis(1899)));
        assert!(!clock.is_safe(t0 + Duration::from_millis(1900)));

        clock.sent(t0 + Duration::from_secs(1));
        assert_eq!(clock.answered(2), Renewal::Renewed);
        assert_eq!(clock.fence_at(), Some(t0 + Duration::from_millis(2900)));
    }

    #[test]
    fn the_backstop_outlives_the_fence_and_is_refreshed_after_a_quarter() {
        let s = Duration::from_secs;
        assert_eq!(backstop_lifetime(s(2), false), s(60));
        assert_eq!(backstop_lifetime(s(30), false), s(120));
        // With exported routes it is short whatever the TTL (a frozen agent's route).
        assert_eq!(backstop_lifetime(s(2), true), s(4));
        assert_eq!(backstop_lifetime(s(10), true), s(4));
        for ttl in 1..=120 {
            assert!(backstop_lifetime(s(ttl), false) > s(ttl) * 2, "ttl {ttl}s");
        }
        let lifetime = s(20);
        assert!(backstop_due(None, lifetime), "forever becomes finite");
        assert!(!backstop_due(Some(20), lifetime));
        assert!(!backstop_due(Some(17), lifetime));
        assert!(backstop_due(Some(16), lifetime), "15 s left at worst");
        assert!(backstop_due(Some(0), lifetime));
        let t0 = Instant::now();
        assert_eq!(backstop_refresh_at(t0 + s(20), lifetime), t0 + s(10));
    }

    #[test]
    fn headroom_is_the_share_of_the_ttl_left_before_the_deadline() {
        let t0 = Instant::now();
        let mut clock = LeaseDeadline::new(Duration::from_secs(2));
        assert_eq!(clock.headroom(t0, 2), None, "no lease yet");
        clock.granted(t0, 2);
        assert_eq!(
            clock.headroom(t0 + Duration::from_millis(500), 2),
            Some(0.75)
        );
        assert_eq!(clock.headroom(t0 + Duration::from_secs(3), 2), Some(0.0));
    }

    #[test]
    fn keepalives_leave_room_for_an_etcd_election() {
        let ms = Duration::from_millis;
        let ttl = Duration::from_secs(2);
        assert_eq!(keepalive_interval(ttl), ms(200));
        // The longest etcd freeze ridden out without a fence: 1.7 s at TTL 2 s.
        assert_eq!(ttl - fence_margin(ttl) - keepalive_interval(ttl), ms(1700));
        assert_eq!(keepalive_interval(Duration::from_secs(1)), ms(100));
        assert_eq!(keepalive_interval(Duration::from_secs(60)), ms(1000));
    }

    #[test]
    fn the_margin_covers_the_fence_precision_only() {
        let ms = Duration::from_millis;
        assert_eq!(fence_margin(Duration::from_secs(1)), ms(100));
        assert_eq!(fence_margin(Duration::from_secs(2)), ms(100));
        assert_eq!(fence_margin(Duration::from_secs(5)), ms(250));
        assert_eq!(fence_margin(Duration::from_secs(60)), ms(250));
    }

    #[test]
    fn lost_lease_is_never_safe() {
        let t0 = Instant::now();
        let mut clock = LeaseDeadline::new(Duration::from_secs(3));
        clock.granted(t0, 3);
        clock.sent(t0);
        assert_eq!(clock.answered(0), Renewal::Expired);
        assert!(!clock.is_safe(t0));
    }

    #[test]
    fn an_unsent_answer_does_not_extend_the_deadline() {
        let t0 = Instant::now();
        let mut clock = LeaseDeadline::new(Duration::from_secs(2));
        clock.granted(t0, 2);
        clock.sent(t0 + Duration::from_secs(1));
        clock.stream_lost();
        assert_eq!(clock.answered(2), Renewal::Renewed);
        assert_eq!(clock.fence_at(), Some(t0 + Duration::from_millis(1900)));
    }
}
