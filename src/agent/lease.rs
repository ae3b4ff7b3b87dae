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
/// agent drops its exclusive addresses): a tenth of the TTL, between 100 and 250 ms.
/// The fence closes within a few milliseconds of its timeout (measured: worst +6 ms),
/// and nobody else may claim before the deadline, so this only has to cover that
/// precision; before the fence it was a quarter of the TTL, at least 500 ms, the time
/// the agent needed to remove its addresses itself.
pub fn fence_margin(ttl: Duration) -> Duration {
    (ttl / 10).clamp(Duration::from_millis(100), Duration::from_millis(250))
}

/// How often to send keepalives: a tenth of the TTL, between 250 ms and 1 s. Addresses
/// outlive an etcd outage by about TTL - 1.3 s - this interval, so it is kept short.
pub fn keepalive_interval(ttl: Duration) -> Duration {
    (ttl / 10).clamp(Duration::from_millis(250), Duration::from_secs(1))
}

/// How late the kernel may remove an expired address: it checks lifetimes in whole
/// seconds, at least a second apart, with up to 250 ms of timer slack.
pub const KERNEL_EXPIRY_SLACK: Duration = Duration::from_millis(1300);

/// The smallest TTL for which exclusive addresses can carry a kernel lifetime: below
/// it, `deadline - now - slack` can fall under one whole second between keepalives.
pub const MIN_TTL_FOR_LIFETIMES: Duration = Duration::from_secs(3);

/// The valid lifetime (whole seconds) that makes the kernel remove an address before
/// etcd may expire the lease; `None` when the deadline is too close for one second.
pub fn address_lifetime(deadline: Option<Instant>, now: Instant) -> Option<u32> {
    let left = deadline?.checked_duration_since(now)?;
    let secs = left.checked_sub(KERNEL_EXPIRY_SLACK)?.as_secs();
    (secs >= 1).then(|| u32::try_from(secs).unwrap_or(u32::MAX))
}

/// When to refresh lifetimes so that the whole-second lifetime ends as close to the
/// safe bound (`deadline - slack`) as possible: just before the fraction runs out.
pub fn refresh_time(deadline: Option<Instant>, now: Instant) -> Option<Instant> {
    let deadline = deadline?;
    let available = deadline
        .checked_duration_since(now)?
        .checked_sub(KERNEL_EXPIRY_SLACK)?;
    let whole = Duration::from_secs(available.as_secs());
    if whole.is_zero() {
        return None;
    }
    let early = Duration::from_millis(20);
    let at = deadline.checked_sub(KERNEL_EXPIRY_SLACK + whole + early)?;
    Some(at.max(now))
}

/// Whether an address should get the new lifetime `new` (whole seconds), given the
/// `valid_left` the kernel reports and the keepalive `interval` until the next chance.
/// The kernel reports `lifetime - floor(age)`, so up to a second less may be left.
/// A host with few addresses refreshes whenever the lifetime can grow, for the longest
/// tolerance of etcd outages. With `many`, refresh once half is used up, or when it
/// could run out before the next chance: that bounds the cost of refreshing.
pub fn needs_refresh(valid_left: Option<u32>, new: u32, interval: Duration, many: bool) -> bool {
    let Some(left) = valid_left else {
        return true;
    };
    let worst = left.saturating_sub(1);
    let next_chance = interval + Duration::from_millis(500);
    new > worst && (!many || worst * 2 < new || Duration::from_secs(worst.into()) < next_chance)
}

/// Above this many addresses a host refreshes lifetimes only once half is used (about
/// 32 µs each): CPU stays bounded, at the price of less tolerance of etcd outages.
pub const MANY_ADDRESSES: usize = 1000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_follows_the_send_time_of_each_answered_keepalive() {
        let t0 = Instant::now();
        let mut clock = LeaseDeadline::new(Duration::from_secs(2));
        assert!(!clock.is_safe(t0), "no lease, not safe");
        clock.granted(t0, 2);
        assert_eq!(clock.fence_at(), Some(t0 + Duration::from_millis(1800)));
        assert!(clock.is_safe(t0 + Duration::from_millis(1799)));
        assert!(!clock.is_safe(t0 + Duration::from_millis(1800)));

        clock.sent(t0 + Duration::from_secs(1));
        assert_eq!(clock.answered(2), Renewal::Renewed);
        assert_eq!(clock.fence_at(), Some(t0 + Duration::from_millis(2800)));
    }

    #[test]
    fn lifetimes_end_before_the_deadline_and_are_refreshed_at_half_use() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(address_lifetime(Some(at(3000)), t0), Some(1));
        assert_eq!(address_lifetime(Some(at(2299)), t0), None);
        assert_eq!(address_lifetime(Some(at(30_000)), t0), Some(28));
        assert_eq!(address_lifetime(None, t0), None);
        assert_eq!(address_lifetime(Some(t0), at(1)), None);
        let second = Duration::from_secs(1);
        let half = Duration::from_millis(500);
        // TTL 3s: a one-second lifetime is renewed at every keepalive.
        assert!(needs_refresh(Some(1), 1, half, true));
        assert!(needs_refresh(Some(0), 1, half, true));
        // TTL 30s, many addresses: a 28 s lifetime is renewed once about half is gone.
        assert!(!needs_refresh(Some(28), 28, second, true));
        assert!(!needs_refresh(Some(15), 28, second, true));
        assert!(needs_refresh(Some(14), 28, second, true));
        // Few addresses: whenever it grows.
        assert!(needs_refresh(Some(28), 28, second, false));
        assert!(!needs_refresh(Some(29), 28, second, false));
        assert!(!needs_refresh(Some(5), 3, second, false), "never shortened");
        assert!(
            needs_refresh(None, 5, second, true),
            "forever becomes finite"
        );
    }

    #[test]
    fn refresh_is_timed_to_use_the_fraction_of_a_second() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // 1.7 s available: refresh 0.68 s later with 1 s, ending 1.32 s before the deadline.
        let at = refresh_time(Some(t0 + ms(3000)), t0).unwrap();
        assert_eq!(at, t0 + ms(680));
        assert_eq!(address_lifetime(Some(t0 + ms(3000)), at), Some(1));
        assert_eq!(refresh_time(Some(t0 + ms(2200)), t0), None);
        assert_eq!(refresh_time(Some(t0 + ms(2310)), t0), Some(t0));
    }

    #[test]
    fn every_ttl_from_the_minimum_keeps_a_lifetime_between_keepalives() {
        for secs in 3..=60 {
            let ttl = Duration::from_secs(secs);
            let t0 = Instant::now();
            // Worst case between two answered keepalives: one interval plus a slow answer.
            let late = t0 + keepalive_interval(ttl) + Duration::from_millis(100);
            let lft = address_lifetime(Some(t0 + ttl), late);
            assert!(lft.is_some(), "ttl {secs}s leaves no lifetime");
            assert!(Duration::from_secs(lft.unwrap().into()) > keepalive_interval(ttl));
        }
        let ttl = Duration::from_secs(2);
        let late = Instant::now() + keepalive_interval(ttl);
        assert_eq!(address_lifetime(Some(Instant::now() + ttl), late), None);
    }

    #[test]
    fn the_margin_covers_the_fence_precision_only() {
        let ms = Duration::from_millis;
        assert_eq!(fence_margin(Duration::from_secs(1)), ms(100));
        assert_eq!(fence_margin(Duration::from_secs(2)), ms(200));
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
        assert_eq!(clock.fence_at(), Some(t0 + Duration::from_millis(1800)));
    }
}
