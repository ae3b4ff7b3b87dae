//! The metrics of peer vouching: heartbeats, acknowledgements, drops, votes, modes.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Label of dropped packets: why.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// `bad_mac`, `malformed`, `replayed`, `stale_lease`, `unknown_sender`, …
    pub reason: &'static str,
}

/// Label of the vouching mode.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabel {
    /// `peers`, `lease-only`, `unknown` or `off`.
    pub mode: &'static str,
}

/// Every mode the gauges know, so each series exists from the start.
pub const MODES: [&str; 4] = ["peers", "lease-only", "unknown", "off"];

/// The peer metrics.
pub struct PeerMetrics {
    /// Seconds from a heartbeat sent to its acknowledgement.
    pub heartbeat_rtt: Histogram,
    /// Heartbeats sent (one per witness per interval).
    pub heartbeats_sent: Counter,
    /// Datagrams received on the heartbeat port.
    pub packets_received: Counter,
    /// Heartbeats a witness did not acknowledge within the window.
    pub acks_missed: Counter,
    /// Datagrams dropped, by reason.
    pub dropped_total: Family<ReasonLabel, Counter>,
    /// Votes this node cast against silent holders.
    pub votes: Counter,
    /// Leases this node revoked after a vote quorum.
    pub revocations: Counter,
    /// 1 for this node's vouching mode.
    pub mode: Family<ModeLabel, Gauge>,
    /// Exclusive IPs held, by the mode that keeps them lit.
    pub held_by_mode: Family<ModeLabel, Gauge>,
    /// Seconds the peers still vouch for this host (0: they do not).
    pub vouched_seconds: Gauge<f64, AtomicU64>,
}

impl Default for PeerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl PeerMetrics {
    /// Empty metrics with the usual buckets.
    pub fn new() -> Self {
        PeerMetrics {
            // 50 µs .. ~0.8 s
            heartbeat_rtt: Histogram::new(exponential_buckets(0.000_05, 2.0, 15)),
            heartbeats_sent: Counter::default(),
            packets_received: Counter::default(),
            acks_missed: Counter::default(),
            dropped_total: Family::default(),
            votes: Counter::default(),
            revocations: Counter::default(),
            mode: Family::default(),
            held_by_mode: Family::default(),
            vouched_seconds: Gauge::default(),
        }
    }

    /// Count a dropped datagram.
    pub fn dropped(&self, reason: &'static str) {
        self.dropped_total
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Say which mode this node is in.
    pub fn set_mode(&self, current: &'static str) {
        for mode in MODES {
            self.mode
                .get_or_create(&ModeLabel { mode })
                .set(i64::from(mode == current));
        }
    }

    /// Register under `extip_peer_*` / `extip_vouch_*`.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "peer_heartbeat_rtt_seconds",
            "Seconds from a heartbeat to its acknowledgement",
            self.heartbeat_rtt.clone(),
        );
        r.register(
            "peer_heartbeats_sent",
            "Heartbeats sent to witnesses",
            self.heartbeats_sent.clone(),
        );
        r.register(
            "peer_packets_received",
            "Datagrams received on the heartbeat port",
            self.packets_received.clone(),
        );
        r.register(
            "peer_acks_missed",
            "Heartbeats a witness did not acknowledge within the window",
            self.acks_missed.clone(),
        );
        r.register(
            "peer_packets_dropped",
            "Datagrams dropped, by reason",
            self.dropped_total.clone(),
        );
        r.register(
            "peer_votes",
            "Votes cast against silent holders",
            self.votes.clone(),
        );
        r.register(
            "peer_revocations",
            "Leases revoked after a vote quorum",
            self.revocations.clone(),
        );
        r.register(
            "vouch_mode",
            "1 for this node's vouching mode",
            self.mode.clone(),
        );
        r.register(
            "vouch_exclusive_ips",
            "Exclusive IPs held, by the mode that keeps them lit",
            self.held_by_mode.clone(),
        );
        r.register(
            "vouched_seconds",
            "Seconds the peers still vouch for this host (0: they do not)",
            self.vouched_seconds.clone(),
        );
        self.set_mode("unknown");
        for mode in MODES {
            self.held_by_mode.get_or_create(&ModeLabel { mode }).set(0);
        }
        for reason in [
            "bad_mac",
            "malformed",
            "replayed",
            "stale_lease",
            "unknown_sender",
        ] {
            let _ = self.dropped_total.get_or_create(&ReasonLabel { reason });
        }
    }
}
