//! The host agent: one event loop over the etcd watch, the lease keepalive, netlink
//! address events, a periodic resync, the lease deadline and shutdown signals.

mod adding;
mod announce;
mod connection;
mod fencing;
mod history;
mod keepalive;
mod lease;
mod membership;
mod reconcile;
mod reports;
mod serve;
mod state;
mod systemd;
mod tally;
mod view;

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};
use tracing::{error, info, warn};

use crate::config::AgentConfig;
use crate::model::{Keys, NodeValue};
use crate::net::Netlink;
use crate::plan::Ineligible;
use crate::store::{Store, StoreError, Watch};

pub use lease::{backstop_lifetime, fence_margin, keepalive_interval, LeaseDeadline, Renewal};
pub use view::ClusterView;

/// A working connection: the store, the keepalive task and its reports, the watch.
struct Connection {
    store: Store,
    _keepalive: keepalive::KeepaliveTask,
    lease_events: tokio::sync::mpsc::UnboundedReceiver<keepalive::LeaseEvent>,
    watch: Watch,
}

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    /// Nothing yet.
    None,
    /// SIGTERM or SIGINT: hand everything over and exit.
    Stop,
    /// SIGHUP: re-execute the binary in place (upgrade), keeping lease and addresses.
    Reexec,
}

/// Why the serve loop ended.
enum Stop {
    /// A signal: stop or re-execute.
    Signal(Signal, Box<Connection>),
    /// The connection or the lease failed: reconnect.
    Lost(String),
}

/// The agent's state across reconnects.
pub struct Agent {
    cfg: AgentConfig,
    keys: Keys,
    net: Netlink,
    /// The served interfaces, in `--interface` order, as last read.
    links: Vec<crate::plan::Link>,
    view: ClusterView,
    lease: Option<i64>,
    clock: keepalive::SharedDeadline,
    /// True once addresses were dropped for a passed deadline, until a renewal.
    fenced: bool,
    /// When the earliest backstop lifetime this agent set runs out; `None`: unknown.
    lifetimes_end: Option<std::time::Instant>,
    /// When to refresh backstop lifetimes next, connected or not.
    refresh_due: Option<Instant>,
    ineligible: HashMap<IpAddr, Ineligible>,
    /// What `ineligible` was last computed from (desired version, draining,
    /// conflicts): the same inputs give the same answers, so it is not redone.
    ineligible_from: Option<(u64, bool, std::collections::BTreeSet<IpAddr>)>,
    endpoint: usize,
    started: String,
    lease_file: state::LeaseFile,
    /// The node record last put in etcd.
    published: Option<NodeValue>,
    /// This host's own addresses (without extip's mark), as last read.
    host_addresses: Vec<IpAddr>,
    /// Whether an address event came since `host_addresses` was read.
    host_addresses_stale: bool,
    /// The addresses of the etcd endpoints this agent uses.
    etcd_addresses: Vec<IpAddr>,
    /// extip's nftables tables: fenced IPs go dark when the lease is not renewed.
    fence: crate::net::fence::Fence,
    /// The IPs behind the fence, as last written.
    fenced_ips: std::collections::BTreeSet<IpAddr>,
    /// Whether `fenced_ips` was written whole since the start.
    fence_synced: bool,
    /// The lease deadline the fence was last armed for.
    armed_for: Option<std::time::Instant>,
    /// Stopping: addresses are gone, the record says so before the lease is revoked.
    leaving: bool,
    /// Since when each free slot has been free, for the placement grace.
    free_since: std::collections::BTreeMap<(IpAddr, u32), std::time::Instant>,
    /// Free slots past the grace: any eligible host may claim them.
    overdue: std::collections::BTreeSet<(IpAddr, u32)>,
    /// Since when each desired IP has had no claim at all (for the metric).
    unclaimed_since: std::collections::BTreeMap<IpAddr, std::time::Instant>,
    /// The per-IP series of `extip_ip_held` now exported.
    held_series: std::collections::BTreeSet<crate::metrics::HeldLabel>,
    /// When this agent first saw each live node, for the stabilization window.
    first_seen: std::collections::BTreeMap<String, std::time::Instant>,
    /// IPs being handed over to rebalance.
    giving_away: std::collections::BTreeSet<IpAddr>,
    /// Ethernet interfaces among the served ones, by index: they announce their own IPs.
    ports: std::collections::BTreeMap<u32, crate::net::announce::Port>,
    /// `--announce-interface`s: they announce IPs held on `lo`.
    announce_ports: Vec<crate::net::announce::Port>,
    /// `--announce-interface`s unusable at the last look, so each problem is logged once.
    unusable_announce_ports: std::collections::BTreeSet<String>,
    /// Foreign owners seen by the conflict probe.
    conflicts: announce::Conflicts,
    /// Announcement packets sent and failed.
    announce_counters: std::sync::Arc<crate::net::announce::AnnounceCounters>,
    /// When `--announce-refresh` announces everything again.
    announce_refresh_at: Option<Instant>,
    /// Addresses added in the current planning round, so only they are announced.
    added_now: std::collections::BTreeSet<crate::observed::LocalAddress>,
    /// Prometheus metrics and readiness.
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// When each claim was won, for the claim-to-address histogram.
    claimed_at: HashMap<IpAddr, std::time::Instant>,
    /// IPs won since the history was last written.
    history_due: std::collections::BTreeSet<IpAddr>,
    /// When to write them: [`history::HISTORY_DELAY`] after the first.
    history_at: Option<Instant>,
    /// Watches started so far (every one after the first is a restart).
    watches: u64,
    /// READY and watchdog pings for systemd.
    systemd: systemd::Systemd,
    /// IPs this agent handed over, and when: it does not take them back as overdue.
    handed_over: std::collections::BTreeMap<IpAddr, std::time::Instant>,
    /// When the last hand-over batch started, for the rate limit.
    last_handover: Option<std::time::Instant>,
    /// The ideal placement and the view it was computed from.
    ideal: membership::CurrentIdeal,
    /// Who should claim each free slot, from the last reconcile's view.
    assignment: crate::placement::Assignment,
    /// When to reconcile for changes that can wait ([`view::Relevance::Soon`]).
    reconcile_soon: Option<Instant>,
    /// The binary and arguments this process started with, for SIGHUP.
    exe: Option<PathBuf>,
    args: Vec<OsString>,
}

/// Run the agent until SIGTERM or SIGINT.
pub async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    let net = Netlink::open()?;
    let mut links = Vec::with_capacity(cfg.interfaces.len());
    for name in &cfg.interfaces {
        let ifindex = net
            .interface_index(name)
            .await
            .with_context(|| format!("--interface {name}"))?;
        links.push(crate::plan::Link {
            name: name.clone(),
            ifindex,
            up: true,
        });
    }
    let mut events = Netlink::address_events()?;
    let mut signals = signal_channel()?;
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    let fence = crate::net::fence::Fence::install().context("the fence (nftables)")?;
    let mut agent = Agent::new(cfg, net, links, fence, metrics.clone());
    agent.etcd_addresses = crate::store::endpoint_addresses(&agent.cfg.etcd).await;
    if let Some(addr) = agent.cfg.listen {
        let scrape = std::sync::Arc::new(LeaseScrape(agent.clock.clone()));
        crate::metrics::serve(addr, metrics, scrape)
            .await
            .with_context(|| format!("--listen {addr}"))?;
    }
    info!(node = %agent.cfg.node, interfaces = ?agent.cfg.interfaces, "extip agent starting");
    agent.adopt_or_clean().await;
    loop {
        let conn = tokio::select! {
            conn = agent.connect() => conn,
            _ = signals.changed() => match *signals.borrow() {
                Signal::Reexec => { agent.reexec(); continue }
                _ => break,
            },
        };
        match agent.serve(conn, &mut events, &mut signals).await {
            Stop::Signal(Signal::Reexec, _) => agent.reexec(),
            Stop::Signal(_, conn) => {
                agent.leave(Some(conn.store)).await;
                return Ok(());
            }
            Stop::Lost(reason) => {
                warn!(
                    reason,
                    "etcd connection lost; reconnecting, next endpoint first"
                );
                agent.endpoint = (agent.endpoint + 1) % agent.cfg.etcd.len();
            }
        }
    }
    agent.leave(None).await;
    Ok(())
}

/// The lease deadline as `/metrics` reports it.
struct LeaseScrape(keepalive::SharedDeadline);

impl crate::metrics::Scrape for LeaseScrape {
    fn lease_deadline_seconds(&self) -> Option<f64> {
        let deadline = keepalive::lock(&self.0).deadline()?;
        let now = std::time::Instant::now();
        Some(match deadline.checked_duration_since(now) {
            Some(left) => left.as_secs_f64(),
            None => -now.duration_since(deadline).as_secs_f64(),
        })
    }
}

/// A channel that says which signal arrived last: SIGTERM/SIGINT stop, SIGHUP re-executes.
fn signal_channel() -> anyhow::Result<watch::Receiver<Signal>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let (tx, rx) = watch::channel(Signal::None);
    tokio::spawn(async move {
        loop {
            let what = tokio::select! {
                _ = term.recv() => { info!("SIGTERM: handing over and exiting"); Signal::Stop }
                _ = int.recv() => { info!("SIGINT: handing over and exiting"); Signal::Stop }
                _ = hup.recv() => { info!("SIGHUP: re-executing in place, keeping every address"); Signal::Reexec }
            };
            if tx.send(what).is_err() || what == Signal::Stop {
                return;
            }
        }
    });
    Ok(rx)
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Agent {
    /// The lease deadline, locked briefly.
    fn clock(&self) -> std::sync::MutexGuard<'_, LeaseDeadline> {
        keepalive::lock(&self.clock)
    }

    fn new(
        cfg: AgentConfig,
        net: Netlink,
        links: Vec<crate::plan::Link>,
        fence: crate::net::fence::Fence,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) -> Self {
        Agent {
            keys: Keys::new(&cfg.prefix),
            view: ClusterView::new(Keys::new(&cfg.prefix)),
            clock: std::sync::Arc::new(std::sync::Mutex::new(LeaseDeadline::new(cfg.lease_ttl))),
            net,
            links,
            lease: None,
            fenced: false,
            lifetimes_end: None,
            refresh_due: None,
            ineligible: HashMap::new(),
            ineligible_from: None,
            endpoint: 0,
            started: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            lease_file: state::LeaseFile::new(&cfg.state_dir),
            published: None,
            host_addresses: Vec::new(),
            host_addresses_stale: true,
            etcd_addresses: Vec::new(),
            fence,
            fenced_ips: Default::default(),
            fence_synced: false,
            armed_for: None,
            leaving: false,
            free_since: Default::default(),
            overdue: Default::default(),
            unclaimed_since: Default::default(),
            held_series: Default::default(),
            first_seen: Default::default(),
            giving_away: Default::default(),
            handed_over: Default::default(),
            systemd: systemd::Systemd::from_env(),
            ports: Default::default(),
            announce_ports: Vec::new(),
            unusable_announce_ports: Default::default(),
            conflicts: Default::default(),
            announce_counters: std::sync::Arc::new(crate::net::announce::AnnounceCounters {
                sent: metrics.announcements_sent.clone(),
                failed: metrics.announcements_failed.clone(),
            }),
            metrics,
            claimed_at: Default::default(),
            watches: 0,
            history_due: Default::default(),
            history_at: None,
            announce_refresh_at: cfg.announce.refresh.map(|r| Instant::now() + r),
            reconcile_soon: None,
            added_now: Default::default(),
            last_handover: None,
            ideal: membership::CurrentIdeal::none(),
            assignment: Default::default(),
            exe: std::env::current_exe().ok(),
            args: std::env::args_os().skip(1).collect(),
            cfg,
        }
    }

    /// Connecting to a member on the LAN takes milliseconds; a silent one is skipped fast.
    fn connect_timeout(&self) -> Duration {
        Duration::from_millis(500)
    }

    /// How long a keepalive may stay unanswered before the member counts as dead.
    fn answer_timeout(&self) -> Duration {
        (keepalive_interval(self.cfg.lease_ttl) * 2).max(Duration::from_millis(500))
    }

    /// Per-request timeout: long enough for a slow fsync, short enough to fail over.
    fn request_timeout(&self) -> Duration {
        (self.cfg.lease_ttl / 2).clamp(Duration::from_secs(1), Duration::from_secs(5))
    }

    /// When the lease deadline forces addresses off, unless already done.
    fn fence_timer(&self) -> Option<Instant> {
        if self.fenced {
            return None;
        }
        self.clock().fence_at().map(Instant::from_std)
    }

    async fn fence(&mut self) {
        self.fenced = true;
        self.close_fence();
        self.drop_addresses("lease deadline reached without renewal", false)
            .await;
    }

    /// Tell the others that this agent's addresses are gone (its record, `leaving`), so
    /// they take its IPs without a conflict probe; then revoke the lease.
    async fn say_leaving(&mut self, store: &mut Store, lease: i64) -> Result<(), StoreError> {
        self.leaving = true;
        let record = serde_json::to_vec(&self.node_record()).expect("node value serializes");
        let mine: Vec<String> = self
            .view
            .claims
            .iter()
            .flat_map(|(&ip, slots)| {
                slots
                    .iter()
                    .filter(|(_, h)| h.lease == lease)
                    .map(move |(&slot, _)| (ip, slot))
            })
            .map(|(ip, slot)| self.keys.claim(ip, slot))
            .collect();
        let node_key = self.keys.node(&self.cfg.node);
        if let Err(e) = store
            .put_and_release(&node_key, &record, lease, &mine)
            .await
        {
            warn!(error = %e, "cannot hand over ahead of the revoke; others take over after it");
        }
        store.revoke(lease).await
    }

    /// Shutdown: addresses first, then the lease, so the next holder never overlaps.
    async fn leave(&mut self, store: Option<Store>) {
        self.withdraw_export_routes().await;
        self.drop_addresses("shutting down", true).await;
        // Takers skip the conflict probe only on our word that the addresses are gone,
        // and the fence may go only then: check, do not assume.
        let left = match self.net.owned_set().await {
            Ok(owned) => owned.len(),
            Err(e) => {
                error!(error = %e, "cannot list addresses after removing them");
                usize::MAX
            }
        };
        if left > 0 {
            error!(
                left,
                "addresses still here: stopping without a hand-over word, fence kept closed"
            );
            self.close_fence();
        }
        match (store, self.lease) {
            (Some(mut store), Some(lease)) if left == 0 => {
                match self.say_leaving(&mut store, lease).await {
                    Ok(()) => {
                        self.lease_file.clear();
                        info!("lease revoked; other hosts take over now")
                    }
                    Err(e) => {
                        error!(error = %e, "lease not revoked; other hosts take over when it expires")
                    }
                }
                // After the hand-over, which must not wait for bookkeeping.
                if let Err(e) = self.publish_history(&mut store).await {
                    warn!(error = %e, "cannot write the holder history of recent takeovers");
                }
            }
            (Some(mut store), Some(lease)) => match store.revoke(lease).await {
                Ok(()) => self.lease_file.clear(),
                Err(e) => error!(error = %e, "lease not revoked"),
            },
            _ => warn!("exiting without etcd; other hosts take over when the lease expires"),
        }
        if left > 0 {
            return;
        }
        match crate::net::fence::Fence::uninstall() {
            Ok(()) => info!("fence tables removed"),
            Err(e) => error!(error = %e, "cannot remove the fence tables"),
        }
    }
}
