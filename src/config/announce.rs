//! Settings of the announcer: bursts of gratuitous ARP / unsolicited NA, and the probe.

use std::time::Duration;

use super::{invalid, parse_duration, AgentSettings, ConfigError};

/// Default rounds per takeover: keepalived sends 5 gratuitous ARPs at once, MetalLB a
/// few; 3 rounds 100 ms apart survive a lost frame and are done in 200 ms.
pub const DEFAULT_ANNOUNCE_COUNT: u32 = 3;
/// Default time between rounds.
pub const DEFAULT_ANNOUNCE_INTERVAL: Duration = Duration::from_millis(100);
/// Default probe time: a host on the segment answers ARP in well under a millisecond
/// (the kernel replies in softirq context); 30 ms, with a second probe half-way, leaves
/// room for a busy one and keeps a graceful failover well under 100 ms as clients see it
/// (50 ms measured 88-96 ms medians). RFC 5227's 1–2 s would more than double the
/// host-loss failover time.
pub const DEFAULT_CONFLICT_PROBE: Duration = Duration::from_millis(30);
/// Longest probe: it delays every takeover.
const MAX_CONFLICT_PROBE: Duration = Duration::from_secs(2);

/// Announcement and probe settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceConfig {
    /// Rounds per takeover; 0: announcements off.
    pub count: u32,
    /// Time between rounds.
    pub interval: Duration,
    /// Periodic re-announcement of every held IP; `None`: never.
    pub refresh: Option<Duration>,
    /// Ethernet interfaces that announce IPs held on non-ARP interfaces such as `lo`.
    pub interfaces: Vec<String>,
    /// Probe time before adding an exclusive IP; `None`: no probe.
    pub probe: Option<Duration>,
}

impl AnnounceConfig {
    /// Validate the announcement settings.
    pub fn from_settings(s: &AgentSettings) -> Result<Self, ConfigError> {
        let interval = match s.announce_interval.as_deref() {
            None => DEFAULT_ANNOUNCE_INTERVAL,
            Some(text) => parse_duration("announce-interval", text)?,
        };
        let refresh = match s.announce_refresh.as_deref() {
            None => None,
            Some(text) => Some(parse_duration("announce-refresh", text)?),
        };
        if refresh.is_some_and(|r| !r.is_zero() && r < Duration::from_secs(1)) {
            return Err(invalid(
                "announce-refresh",
                "must be 0s (off) or at least 1s",
            ));
        }
        let probe = match s.conflict_probe.as_deref() {
            None => Some(DEFAULT_CONFLICT_PROBE),
            Some(text) => Some(parse_duration("conflict-probe", text)?),
        };
        if probe.is_some_and(|p| p > MAX_CONFLICT_PROBE) {
            return Err(invalid(
                "conflict-probe",
                "must be at most 2s: it delays every takeover",
            ));
        }
        let mut interfaces = Vec::new();
        for name in s.announce_interface.clone().unwrap_or_default() {
            let name = crate::model::validate_interface(name)
                .map_err(|e| invalid("announce-interface", e.to_string()))?;
            if !interfaces.contains(&name) {
                interfaces.push(name);
            }
        }
        Ok(AnnounceConfig {
            count: s.announce_count.unwrap_or(DEFAULT_ANNOUNCE_COUNT),
            interval,
            refresh: refresh.filter(|r| !r.is_zero()),
            interfaces,
            probe: probe.filter(|p| !p.is_zero()),
        })
    }
}
