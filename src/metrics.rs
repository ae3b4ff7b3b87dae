//! The agent's Prometheus metrics and health, served on `--listen`
//! (`/metrics`, `/healthz`, `/readyz`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, linear_buckets, Histogram};
use prometheus_client::registry::Registry;

mod peers;
pub use peers::{ModeLabel, PeerMetrics, ReasonLabel};

/// Label of [`Metrics::ips_held`]: `exclusive` (replicas 1) or `shared`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `exclusive` or `shared`.
    pub kind: &'static str,
}

/// Labels of [`Metrics::ip_held`]: one series per address this host holds.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct HeldLabel {
    /// The IP.
    pub ip: String,
    /// `exclusive` (replicas 1) or `shared`.
    pub kind: &'static str,
}

/// Every metric the agent exports.
pub struct Metrics {
    registry: Registry,
    /// Addresses this host holds, by kind.
    pub ips_held: Family<KindLabel, Gauge>,
    /// 1 for each IP this host holds: two hosts with one exclusive IP is an alert.
    pub ip_held: Family<HeldLabel, Gauge>,
    /// The lease TTL in use (granted by etcd), seconds.
    pub lease_ttl: Gauge,
    /// At each renewal, the share of the TTL that was left before the old deadline.
    pub lease_headroom: Histogram,
    /// Age of the oldest desired IP without any claim, set at each scrape.
    pub unclaimed_slot_age: Gauge<f64, AtomicU64>,
    /// Since when that IP has been without a claim (none: every IP is claimed).
    unclaimed_since: Mutex<Option<Instant>>,
    /// Claim transactions won.
    pub claims_won: Counter,
    /// Claim transactions that found the slot taken.
    pub claims_lost: Counter,
    /// Addresses added after a claim (takeovers).
    pub takeovers: Counter,
    /// Claims released (hand-overs, stops, ineligible IPs).
    pub releases: Counter,
    /// Seconds from a won claim to its address being configured.
    pub claim_to_address: Histogram,
    /// Seconds from a keepalive sent to its answer.
    pub keepalive_latency: Histogram,
    /// Keepalive streams that failed or went unanswered.
    pub keepalive_failures: Counter,
    /// Seconds until the lease deadline (negative: past it), set at each scrape.
    pub lease_deadline: Gauge<f64, AtomicU64>,
    /// Watches started after the first (reconnects, resyncs).
    pub watch_restarts: Counter,
    /// Announcement packets sent.
    pub announcements_sent: Counter,
    /// Announcement packets the kernel refused.
    pub announcements_failed: Counter,
    /// Conflicts found by the probe.
    pub conflicts: Counter,
    /// Seconds one reconcile took.
    pub reconcile_duration: Histogram,
    /// Lease held and watch running.
    pub ready: AtomicBool,
    /// Peer vouching.
    pub peers: PeerMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Create and register every metric under the `extip_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("extip");
        let m = Metrics {
            ips_held: Family::default(),
            ip_held: Family::default(),
            lease_ttl: Gauge::default(),
            lease_headroom: Histogram::new(linear_buckets(0.1, 0.1, 10)),
            unclaimed_slot_age: Gauge::default(),
            unclaimed_since: Mutex::new(None),
            claims_won: Counter::default(),
            claims_lost: Counter::default(),
            takeovers: Counter::default(),
            releases: Counter::default(),
            // 1 ms .. ~16 s: a probe is 50 ms, a busy agent takes seconds.
            claim_to_address: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            keepalive_latency: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            keepalive_failures: Counter::default(),
            lease_deadline: Gauge::default(),
            watch_restarts: Counter::default(),
            announcements_sent: Counter::default(),
            announcements_failed: Counter::default(),
            conflicts: Counter::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            ready: AtomicBool::new(false),
            peers: PeerMetrics::new(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        m.peers.register(r);
        r.register("ips_held", "Addresses this host holds", m.ips_held.clone());
        r.register(
            "ip_held",
            "1 for each IP this host holds",
            m.ip_held.clone(),
        );
        r.register(
            "lease_ttl_seconds",
            "The lease TTL etcd granted",
            m.lease_ttl.clone(),
        );
        r.register(
            "lease_headroom_ratio",
            "Share of the TTL left before the old deadline when a renewal arrived",
            m.lease_headroom.clone(),
        );
        r.register(
            "unclaimed_slot_age_seconds",
            "How long the oldest desired IP without a claim has had none (0: none)",
            m.unclaimed_slot_age.clone(),
        );
        r.register("claims_won", "Claim transactions won", m.claims_won.clone());
        r.register(
            "claims_lost",
            "Claims that found the slot taken",
            m.claims_lost.clone(),
        );
        r.register(
            "takeovers",
            "Addresses added after a claim",
            m.takeovers.clone(),
        );
        r.register("releases", "Claims released", m.releases.clone());
        r.register(
            "claim_to_address_seconds",
            "From a won claim to its address configured",
            m.claim_to_address.clone(),
        );
        r.register(
            "keepalive_latency_seconds",
            "From a lease keepalive sent to its answer",
            m.keepalive_latency.clone(),
        );
        r.register(
            "keepalive_failures",
            "Keepalive streams that failed or went unanswered",
            m.keepalive_failures.clone(),
        );
        r.register(
            "lease_deadline_seconds",
            "Seconds until the lease deadline; addresses go before it",
            m.lease_deadline.clone(),
        );
        r.register(
            "watch_restarts",
            "etcd watches started again",
            m.watch_restarts.clone(),
        );
        r.register(
            "announcements_sent",
            "Gratuitous ARP / unsolicited NA packets sent",
            m.announcements_sent.clone(),
        );
        r.register(
            "announcements_failed",
            "Announcement packets that could not be sent",
            m.announcements_failed.clone(),
        );
        r.register(
            "conflicts",
            "Foreign owners found by the probe",
            m.conflicts.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            m.reconcile_duration.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Note since when the oldest unclaimed desired IP has had no claim (`None`: none).
    pub fn note_unclaimed_since(&self, since: Option<Instant>) {
        *self
            .unclaimed_since
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = since;
    }

    /// Seconds the oldest unclaimed desired IP has been so at `now` (0 when none).
    pub fn unclaimed_age(&self, now: Instant) -> f64 {
        let since = *self
            .unclaimed_since
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        since.map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64())
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// What `/readyz` and `/metrics` need from the agent at scrape time.
pub trait Scrape: Send + Sync + 'static {
    /// Seconds until the lease deadline, if a lease is held.
    fn lease_deadline_seconds(&self) -> Option<f64>;
    /// The heartbeat report as JSON for `/peers` (`extip status` reads it).
    fn peers_json(&self) -> String;
}

/// Bind `addr` now (a busy port fails the start, naming the flag), then serve in the
/// background.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    scrape: Arc<dyn Scrape>,
) -> std::io::Result<()> {
    let m = metrics.clone();
    let scrape_peers = scrape.clone();
    let render = move || {
        m.lease_deadline
            .set(scrape.lease_deadline_seconds().unwrap_or(0.0));
        m.unclaimed_slot_age.set(m.unclaimed_age(Instant::now()));
        m.render()
    };
    let ready = move || {
        metrics
            .ready
            .load(Ordering::Relaxed)
            .then_some(())
            .ok_or("not ready: no lease or no watch\n")
    };
    let peers = axum::Router::new().route(
        "/peers",
        axum::routing::get(move || {
            let json = scrape_peers.peers_json();
            async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    json,
                )
            }
        }),
    );
    serve_endpoints(addr, render, ready, peers).await
}

/// Serve `/metrics` (what `render` returns), `/healthz` and `/readyz` (200, or 503 with
/// the reason `ready` gives) and the `extra` routes on `addr`, bound now, served in the
/// background.
pub async fn serve_endpoints(
    addr: SocketAddr,
    render: impl Fn() -> String + Clone + Send + Sync + 'static,
    ready: impl Fn() -> Result<(), &'static str> + Clone + Send + Sync + 'static,
    extra: axum::Router,
) -> std::io::Result<()> {
    use axum::http::StatusCode;
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let text = render();
                async move { text }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let status = match ready() {
                    Ok(()) => (StatusCode::OK, "ready\n"),
                    Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
                };
                async move { status }
            }),
        )
        .merge(extra);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok(())
}
