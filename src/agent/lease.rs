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

    /// Requests in flight are lost with their stream; they renew nothing.
    pub fn stream_lost(&mut self) {
        self.in_flight.clear();
    }

    /// No lease any more.
    pub fn forget(&mut self) {
        self.deadline = None;
        self.in_flight.clear();
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

/// A quarter of the TTL, at least 500 ms: room for one lost keepalive (sent every TTL/3)
/// before fencing, and time to remove addresses before the deadline.
pub fn fence_margin(ttl: Duration) -> Duration {
    (ttl / 4).max(Duration::from_millis(500))
}

/// How often to send keepalives: three chances per TTL.
pub fn keepalive_interval(ttl: Duration) -> Duration {
    ttl / 3
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
        assert_eq!(clock.fence_at(), Some(t0 + Duration::from_millis(1500)));
        assert!(clock.is_safe(t0 + Duration::from_millis(1499)));
        assert!(!clock.is_safe(t0 + Duration::from_millis(1500)));

        clock.sent(t0 + Duration::from_secs(1));
        assert_eq!(clock.answered(2), Renewal::Renewed);
        assert_eq!(clock.fence_at(), Some(t0 + Duration::from_millis(2500)));
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
        assert_eq!(clock.fence_at(), Some(t0 + Duration::from_millis(1500)));
    }
}
