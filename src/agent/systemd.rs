//! systemd integration (`Type=notify`): READY once the lease is held and the first
//! reconcile is done, WATCHDOG pings from the event loop itself, so a wedged loop is
//! restarted. Without `$NOTIFY_SOCKET` (not under systemd) all of this does nothing.

use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

/// What the agent tells systemd, and when the watchdog wants the next ping.
#[derive(Debug)]
pub struct Systemd {
    ready_sent: bool,
    /// Half of `WatchdogSec`: ping at least this often.
    ping_every: Option<Duration>,
    next_ping: Option<Instant>,
}

impl Systemd {
    /// Read `$NOTIFY_SOCKET` and `$WATCHDOG_USEC` as systemd set them.
    pub fn from_env() -> Self {
        let ping_every = watchdog_period(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
        );
        Systemd {
            ready_sent: false,
            ping_every,
            next_ping: ping_every.map(|_| Instant::now()),
        }
    }

    /// The agent serves: send READY once (again after a re-exec: a new process).
    pub fn ready(&mut self, status: &str) {
        if self.ready_sent {
            return;
        }
        self.ready_sent = true;
        let states = [
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(status),
        ];
        if let Err(e) = sd_notify::notify(false, &states) {
            warn!(error = %e, "cannot tell systemd the agent is ready");
        }
    }

    /// When the event loop must ping the watchdog next; `None` without a watchdog.
    pub fn next_ping(&self) -> Option<Instant> {
        self.next_ping
    }

    /// Ping the watchdog from the event loop.
    pub fn ping(&mut self) {
        if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]) {
            warn!(error = %e, "cannot ping the systemd watchdog");
        }
        self.next_ping = self.ping_every.map(|every| Instant::now() + every);
    }
}

/// Half the watchdog period systemd asks for; like sd_watchdog_enabled(3), a missing
/// `WATCHDOG_PID` means "this process" (sd-notify's own check insists on it).
fn watchdog_period(usec: Option<&str>, pid: Option<&str>) -> Option<Duration> {
    let usec: u64 = usec?.parse().ok().filter(|&u| u > 0)?;
    let for_us = pid.is_none_or(|p| p.parse() == Ok(std::process::id()));
    for_us.then(|| Duration::from_micros(usec) / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_is_ours_unless_another_pid_is_named() {
        let me = std::process::id().to_string();
        let half = Some(Duration::from_millis(500));
        assert_eq!(watchdog_period(Some("1000000"), None), half);
        assert_eq!(watchdog_period(Some("1000000"), Some(&me)), half);
        assert_eq!(watchdog_period(Some("1000000"), Some("1")), None);
        assert_eq!(watchdog_period(None, None), None);
        assert_eq!(watchdog_period(Some("0"), None), None);
    }
}
