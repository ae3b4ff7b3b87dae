//! The host agent: one event loop over the etcd watch, the lease keepalive, netlink
//! address events, a periodic resync, the lease deadline and shutdown signals.

mod adding;
mod announce;
mod connection;
mod fence_clock;
mod fencing;
mod history;
mod keepalive;
mod lease;
mod membership;
mod own_thread;
mod peers;
mod reconcile;
mod reports;
mod serve;
mod state;
mod systemd;
mod tally;
mod view;
mod votes;
mod vouching;

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
pub use vouching::{mode_name, HANDOFF_ENV};

/// A working connection: the store, the keepalive task and its reports, the watch.
struct Connection {
    store: Store,
    _keepalive: keepalive::KeepaliveTask,
    lease_events: tokio::sync::mpsc::UnboundedReceiver<keepalive::LeaseEvent>,
    watch: Watch,
}

/// The heartbeat thread and the directory it reads.
struct PeersRuntime {
    directory: watch::Sender<std::sync::Arc<peers::Directory>>,
    report: std::sync::Arc<std::sync::Mutex<peers::PeerReport>>,
    _task: peers::PeersTask,
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
    /// The fence's timeout and the holder state deciding it, shared with the
    /// heartbeat thread.
    fence_clock: fence_clock::SharedFence,
    /// Our record's `mod_revision` as last written or read (`None`: none on this lease).
    record_rev: Option<i64>,
    /// What the process before this one handed over (a re-execution).
    handoff: Option<vouching::Handoff>,
    /// The heartbeat thread and what it reads, when peer vouching is on.
    peers: Option<PeersRuntime>,
    /// Where heartbeats are received, published in the record.
    peer_addr: Option<std::net::SocketAddr>,
    /// The key that signs heartbeats, once known.
    secret: Option<crate::vouch::wire::Secret>,
    /// A vouching part to write instead of what the holder wants (before a re-exec).
    force_vouch: Option<crate::model::VouchRecord>,
    /// Votes cast but not yet answered by etcd, by holder (written on the next pass).
    unwritten_votes: std::collections::BTreeMap<String, crate::vouch::Vote>,
    /// Revocations tried lately, by holder and record revision.
    revoking: std::collections::BTreeMap<(String, i64), std::time::Instant>,
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
    let mut fence = crate::net::fence::Fence::install().context("the fence (nftables)")?;
    fence
        .set_routers(&cfg.fenced_routers)
        .context("the fenced routers (nftables)")?;
    let arming = crate::net::fence::Fence::open().context("the fence (nftables)")?;
    let mut agent = Agent::new(cfg, net, links, fence, arming, metrics.clone());
    agent.etcd_addresses = crate::store::endpoint_addresses(&agent.cfg.etcd).await;
    let (peer_tx, mut peer_events) = tokio::sync::mpsc::unbounded_channel();
    agent.start_peers(peer_tx)?;
    if let Some(addr) = agent.cfg.listen {
        let report = agent.peers.as_ref().map(|p| p.report.clone());
        let scrape = std::sync::Arc::new(LeaseScrape(agent.clock.clone(), report));
        crate::metrics::serve(addr, metrics, scrape)
            .await
            .with_context(|| format!("--listen {addr}"))?;
    }
    info!(node = %agent.cfg.node, interfaces = ?agent.cfg.interfaces, "extip agent starting");
    agent.adopt_or_clean().await;
    loop {
        let conn = tokio::select! {
            conn = agent.connect() => conn,
            _ = signals.changed() => {
                let signal = *signals.borrow();
                match signal {
                    Signal::Reexec => { agent.reexec(None).await; continue }
                    _ => break,
                }
            }
        };
        match agent
            .serve(conn, &mut events, &mut signals, &mut peer_events)
            .await
        {
            Stop::Signal(Signal::Reexec, conn) => {
                let mut store = conn.store;
                agent.reexec(Some(&mut store)).await
            }
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
struct LeaseScrape(
    keepalive::SharedDeadline,
    Option<std::sync::Arc<std::sync::Mutex<peers::PeerReport>>>,
);

impl crate::metrics::Scrape for LeaseScrape {
    fn lease_deadline_seconds(&self) -> Option<f64> {
        let deadline = keepalive::lock(&self.0).deadline()?;
        let now = std::time::Instant::now();
        Some(match deadline.checked_duration_since(now) {
            Some(left) => left.as_secs_f64(),
            None => -now.duration_since(deadline).as_secs_f64(),
        })
    }

    fn peers_json(&self) -> String {
        let view = match &self.1 {
            Some(report) => report
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .view(std::time::Instant::now()),
            None => crate::model::PeersView::default(),
        };
        serde_json::to_string(&view).unwrap_or_default()
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
        arming: crate::net::fence::Fence,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) -> Self {
        let clock = std::sync::Arc::new(std::sync::Mutex::new(LeaseDeadline::new(cfg.lease_ttl)));
        let timing = cfg.peers.as_ref().map(|p| p.timing).unwrap_or_default();
        // Sequence numbers go up across re-executions, which keep the lease.
        let first_seq = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        let holder = crate::vouch::Holder::new(timing, first_seq);
        let fence_clock = std::sync::Arc::new(std::sync::Mutex::new(fence_clock::FenceClock::new(
            arming,
            clock.clone(),
            holder,
        )));
        Agent {
            keys: Keys::new(&cfg.prefix),
            view: ClusterView::new(Keys::new(&cfg.prefix)),
            clock,
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
            fence_clock,
            record_rev: None,
            handoff: vouching::Handoff::take(),
            peers: None,
            peer_addr: None,
            secret: None,
            force_vouch: None,
            unwritten_votes: Default::default(),
            revoking: Default::default(),
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
