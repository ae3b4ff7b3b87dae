//! extip-sync's Prometheus metrics, served with `/healthz` and `/readyz` on `--listen`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Label of [`SyncMetrics::reconciles`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `ok` or `error`.
    pub result: &'static str,
}

/// Every metric extip-sync exports (prefix `extip_sync_`).
pub struct SyncMetrics {
    /// 1 while this replica leads.
    pub leader: Gauge,
    /// Services in the watched namespaces.
    pub services: Gauge,
    /// Desired keys the Services ask for, after the last reconcile.
    pub desired_keys: Gauge,
    /// LoadBalancer Services with an IP, after the last reconcile.
    pub allocations: Gauge,
    /// Things refused right now (externalIPs outside the allowlist, exhausted pools, …).
    pub refusals: Gauge,
    /// Allocation transactions that lost a race with another writer and were retried.
    pub allocation_races: Counter,
    /// Reconciles by result.
    pub reconciles: Family<ResultLabel, Counter>,
    /// Seconds one reconcile took.
    pub reconcile_duration: Histogram,
    /// Every watched namespace listed, and (when leading) the last reconcile succeeded.
    pub ready: AtomicBool,
    registry: Registry,
}

impl Default for SyncMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl SyncMetrics {
    /// Create and register every metric.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("extip_sync");
        let m = SyncMetrics {
            leader: Gauge::default(),
            services: Gauge::default(),
            desired_keys: Gauge::default(),
            allocations: Gauge::default(),
            refusals: Gauge::default(),
            allocation_races: Counter::default(),
            reconciles: Family::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            ready: AtomicBool::new(false),
            registry: Registry::default(),
        };
        r.register("leader", "1 while this replica leads", m.leader.clone());
        r.register(
            "services",
            "Services in the watched namespaces",
            m.services.clone(),
        );
        r.register(
            "desired_keys",
            "Desired keys the Services ask for",
            m.desired_keys.clone(),
        );
        r.register(
            "allocations",
            "LoadBalancer Services with an IP",
            m.allocations.clone(),
        );
        r.register("refusals", "Requests refused right now", m.refusals.clone());
        r.register(
            "allocation_races",
            "Allocation transactions that lost a race and were retried",
            m.allocation_races.clone(),
        );
        r.register("reconciles", "Reconciles by result", m.reconciles.clone());
        r.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            m.reconcile_duration.clone(),
        );
        SyncMetrics { registry: r, ..m }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Serve the metrics on `addr` (bound now: a busy port fails the start).
pub async fn serve(addr: std::net::SocketAddr, metrics: Arc<SyncMetrics>) -> std::io::Result<()> {
    let m = metrics.clone();
    let ready = move || {
        metrics
            .ready
            .load(Ordering::Relaxed)
            .then_some(())
            .ok_or("not ready: Services not listed yet, or the last reconcile failed\n")
    };
    crate::metrics::serve_endpoints(addr, move || m.render(), ready, axum::Router::new()).await
}
