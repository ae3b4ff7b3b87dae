//! The heartbeat thread: sends this host's heartbeats to its witnesses, acknowledges
//! the heartbeats of the holders it witnesses, and renews the fence as acknowledgements
//! come in. A thread and runtime of its own, like the keepalive: a long reconcile never
//! delays a heartbeat, and a silent holder's witnesses notice within one window.
//! Everything it decides comes from the pure state machines in `crate::vouch`; what
//! needs etcd (votes, record writes) goes to the main loop as [`PeerEvent`]s.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::time::{interval, MissedTickBehavior};
use tracing::{debug, warn};

use super::fence_clock::{self, SharedFence};
use super::sleep_until_some;
use crate::metrics::Metrics;
use crate::model::VouchRecord;
use crate::vouch::holder::AckVerdict;
use crate::vouch::wire::{self, Kind, Packet, Secret, WireError};
use crate::vouch::{DropReason, HolderRecord, Timing, Verdict, Vote, Witness};

/// A member as the heartbeat thread needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Where it receives heartbeats.
    pub addr: Option<SocketAddr>,
    /// The lease its record hangs on.
    pub lease: i64,
    /// Its record's `mod_revision`.
    pub revision: i64,
    /// Its record's vouching part.
    pub vouch: Option<VouchRecord>,
    /// It is stopping.
    pub leaving: bool,
}

/// What the main loop tells the heartbeat thread, from etcd.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    /// Every member's record.
    pub members: BTreeMap<String, Member>,
    /// This node's own votes found in etcd: (holder, lease, revision).
    pub my_votes: Vec<(String, i64, i64)>,
    /// The key that signs and checks packets; nothing is sent or accepted without it.
    pub secret: Option<Secret>,
}

impl Directory {
    fn records(&self) -> impl Iterator<Item = (&str, HolderRecord<'_>)> {
        self.members.iter().map(|(name, m)| {
            let record = HolderRecord {
                lease: m.lease,
                revision: m.revision,
                vouch: m.vouch.as_ref(),
                leaving: m.leaving,
            };
            (name.as_str(), record)
        })
    }
}

/// What the heartbeat thread asks of the main loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    /// Write this vote (the witness counts it as cast already).
    Vote(Vote),
    /// The record's vouching part should change (quorum at risk, back, new witnesses).
    Rewrite,
}

/// What `extip status` and `/peers` show: when each peer was last heard.
#[derive(Debug, Clone, Default)]
pub struct PeerReport {
    /// As a witness: the last heartbeat of each holder.
    pub heard: BTreeMap<String, Instant>,
    /// As a holder: the last acknowledgement of each witness.
    pub acked: BTreeMap<String, Instant>,
    /// Until when the peers vouch for this host (`None`: they do not).
    pub vouched_until: Option<Instant>,
}

impl PeerReport {
    /// The report as `/peers` answers it, ages taken at `now`.
    pub fn view(&self, now: Instant) -> crate::model::PeersView {
        let ages = |m: &BTreeMap<String, Instant>| {
            m.iter()
                .map(|(k, at)| {
                    (
                        k.clone(),
                        now.saturating_duration_since(*at).as_millis() as u64,
                    )
                })
                .collect()
        };
        crate::model::PeersView {
            heard_ms: ages(&self.heard),
            acked_ms: ages(&self.acked),
            vouched_for_ms: self
                .vouched_until
                .and_then(|u| u.checked_duration_since(now))
                .map(|d| d.as_millis() as u64),
        }
    }
}

/// The running heartbeat thread; stopped when dropped.
pub type PeersTask = super::own_thread::OwnThread;

/// What the thread works with.
pub struct PeersSetup {
    /// This node's name.
    pub me: String,
    /// Heartbeat timing.
    pub timing: Timing,
    /// The bound socket.
    pub socket: std::net::UdpSocket,
    /// The fence and the holder state.
    pub fence: SharedFence,
    /// Records from etcd.
    pub directory: watch::Receiver<Arc<Directory>>,
    /// Votes and rewrites for the main loop.
    pub events: mpsc::UnboundedSender<PeerEvent>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// For status.
    pub report: Arc<Mutex<PeerReport>>,
    /// When this process started: a witness votes nothing before its restart wait.
    pub started: Instant,
}

/// Start the heartbeat thread.
pub fn spawn(setup: PeersSetup) -> std::io::Result<PeersTask> {
    setup.socket.set_nonblocking(true)?;
    super::own_thread::spawn(
        "extip-peers",
        move || async move {
            let socket = match tokio::net::UdpSocket::from_std(setup.socket) {
                Ok(socket) => socket,
                Err(e) => return warn!(error = %e, "heartbeat socket"),
            };
            let mut peers = Peers::new(setup.me, setup.timing, setup.fence, setup.started);
            let io = Io {
                socket,
                events: setup.events,
                metrics: setup.metrics,
                report: setup.report,
            };
            peers.run(io, setup.directory).await;
        },
        |e| warn!(error = %e, "heartbeat runtime; peers cannot vouch"),
    )
}

struct Io {
    socket: tokio::net::UdpSocket,
    events: mpsc::UnboundedSender<PeerEvent>,
    metrics: Arc<Metrics>,
    report: Arc<Mutex<PeerReport>>,
}

/// Heartbeats sent and not yet acknowledged by every target.
struct InFlight {
    sent: Instant,
    waiting: BTreeSet<String>,
}

struct Peers {
    me: String,
    timing: Timing,
    fence: SharedFence,
    witness: Witness,
    directory: Arc<Directory>,
    in_flight: BTreeMap<u64, InFlight>,
    asked: Option<Option<VouchRecord>>,
}

impl Peers {
    fn new(me: String, timing: Timing, fence: SharedFence, started: Instant) -> Self {
        Peers {
            witness: Witness::new(&me, timing, started),
            me,
            timing,
            fence,
            directory: Arc::default(),
            in_flight: BTreeMap::new(),
            asked: None,
        }
    }

    async fn run(&mut self, io: Io, mut directory: watch::Receiver<Arc<Directory>>) {
        let mut tick = interval(self.timing.interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut buf = vec![0u8; wire::MAX_PACKET + 64];
        loop {
            let now = Instant::now();
            let vote_at = self.witness.next_vote_at(now, self.directory.records());
            let risk_at = self.risk_at();
            tokio::select! {
                _ = tick.tick() => self.round(&io).await,
                r = io.socket.recv_from(&mut buf) => match r {
                    Ok((len, from)) => self.packet(&io, &buf[..len], from).await,
                    Err(e) => debug!(error = %e, "heartbeat socket"),
                },
                r = directory.changed() => {
                    if r.is_err() {
                        return;
                    }
                    let update = directory.borrow_and_update().clone();
                    self.apply(update);
                }
                _ = sleep_until_some(vote_at.map(tokio::time::Instant::from_std)) => self.votes(&io),
                _ = sleep_until_some(risk_at.map(tokio::time::Instant::from_std)) => self.ask(&io),
            }
        }
    }

    /// When the record should change if no acknowledgement comes first: half a
    /// window before the vouching runs out.
    fn risk_at(&self) -> Option<Instant> {
        let fence = fence_clock::lock(&self.fence);
        let until = fence.holder.vouched_until_current()?;
        Some(until.checked_sub(self.timing.window / 2).unwrap_or(until) + Duration::from_millis(1))
    }

    fn apply(&mut self, directory: Arc<Directory>) {
        let now = Instant::now();
        for (holder, lease, revision) in &directory.my_votes {
            self.witness.restore_vote(now, holder, *lease, *revision);
        }
        self.witness
            .forget_gone(now, |name| directory.members.contains_key(name));
        self.directory = directory;
    }

    async fn round(&mut self, io: &Io) {
        let now = Instant::now();
        let (beat, targets, lease, until) = {
            let mut fence = fence_clock::lock(&self.fence);
            let beat = fence.holder.heartbeat(now);
            let lease = fence.holder.lease();
            if let Err(e) = fence.rearm_if_moved() {
                warn!(error = %e, "cannot renew the fence");
            }
            let until = fence.holder.vouched_until_current();
            (beat, fence.holder.targets(), lease, until)
        };
        self.expire(io, now);
        if let (Some((seq, window)), Some(lease), Some(secret)) =
            (beat, lease, self.directory.secret.clone())
        {
            let mut waiting = BTreeSet::new();
            for target in targets {
                let Some(addr) = self.directory.members.get(&target).and_then(|m| m.addr) else {
                    continue;
                };
                let packet = Packet {
                    kind: Kind::Heartbeat,
                    from: self.me.clone(),
                    to: target.clone(),
                    lease,
                    seq,
                    window,
                };
                if io
                    .socket
                    .send_to(&wire::encode(&packet, &secret), addr)
                    .await
                    .is_ok()
                {
                    io.metrics.peers.heartbeats_sent.inc();
                    waiting.insert(target);
                }
            }
            if !waiting.is_empty() {
                self.in_flight.insert(seq, InFlight { sent: now, waiting });
            }
        }
        let left = until.map_or(0.0, |u| u.saturating_duration_since(now).as_secs_f64());
        io.metrics.peers.vouched_seconds.set(left);
        lock(&io.report).vouched_until = until;
        self.votes(io);
        self.ask(io);
    }

    /// Heartbeats older than a window that some target never acknowledged.
    fn expire(&mut self, io: &Io, now: Instant) {
        let window = self.timing.window;
        let old: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, f)| now.duration_since(f.sent) > window)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in old {
            if let Some(f) = self.in_flight.remove(&seq) {
                io.metrics.peers.acks_missed.inc_by(f.waiting.len() as u64);
            }
        }
    }

    fn votes(&mut self, io: &Io) {
        let now = Instant::now();
        let due = self.witness.due_votes(now, self.directory.records());
        for vote in due {
            warn!(holder = %vote.holder, lease = format!("{:x}", vote.lease), revision = vote.revision,
                "voting against a silent holder: no heartbeat for a whole window");
            io.metrics.peers.votes.inc();
            let _ = io.events.send(PeerEvent::Vote(vote));
        }
    }

    /// Tell the main loop when the record should change, once per change.
    fn ask(&mut self, io: &Io) {
        let wanted = {
            let mut fence = fence_clock::lock(&self.fence);
            if let Err(e) = fence.rearm_if_moved() {
                warn!(error = %e, "cannot renew the fence");
            }
            fence.holder.wanted(Instant::now())
        };
        if wanted.is_some() && wanted != self.asked {
            let _ = io.events.send(PeerEvent::Rewrite);
        }
        self.asked = wanted;
    }

    async fn packet(&mut self, io: &Io, bytes: &[u8], from: SocketAddr) {
        io.metrics.peers.packets_received.inc();
        let Some(secret) = self.directory.secret.clone() else {
            return io.metrics.peers.dropped("no_secret_yet");
        };
        let packet = match wire::decode(bytes, &secret) {
            Ok(p) => p,
            Err(WireError::BadMac) => return io.metrics.peers.dropped("bad_mac"),
            Err(WireError::Malformed) => return io.metrics.peers.dropped("malformed"),
        };
        if packet.to != self.me {
            return io.metrics.peers.dropped("misaddressed");
        }
        match packet.kind {
            Kind::Heartbeat => self.heartbeat(io, packet, from, &secret).await,
            Kind::Ack => self.ack(io, packet),
        }
    }

    async fn heartbeat(&mut self, io: &Io, packet: Packet, from: SocketAddr, secret: &Secret) {
        let now = Instant::now();
        let record = self
            .directory
            .records()
            .find(|(name, _)| *name == packet.from)
            .map(|(_, r)| r);
        let verdict = self.witness.heartbeat(
            now,
            &packet.from,
            packet.lease,
            packet.seq,
            packet.window,
            record,
        );
        let granted = match verdict {
            Verdict::Ack(granted) => granted,
            Verdict::Drop(reason) => {
                return io.metrics.peers.dropped(match reason {
                    DropReason::UnknownSender => "unknown_sender",
                    DropReason::StaleLease => "stale_lease",
                    DropReason::Replayed => "replayed",
                    DropReason::Voted => "voted_against",
                });
            }
        };
        lock(&io.report).heard.insert(packet.from.clone(), now);
        let ack = Packet {
            kind: Kind::Ack,
            from: self.me.clone(),
            to: packet.from,
            window: granted,
            ..packet
        };
        if let Err(e) = io.socket.send_to(&wire::encode(&ack, secret), from).await {
            debug!(error = %e, %from, "cannot acknowledge a heartbeat");
        }
    }

    fn ack(&mut self, io: &Io, packet: Packet) {
        let now = Instant::now();
        let verdict = {
            let mut fence = fence_clock::lock(&self.fence);
            let verdict = fence.holder.acknowledged(
                now,
                &packet.from,
                packet.lease,
                packet.seq,
                packet.window,
            );
            if matches!(verdict, AckVerdict::Vouches(_)) {
                if let Err(e) = fence.rearm_if_moved() {
                    warn!(error = %e, "cannot renew the fence");
                }
            }
            verdict
        };
        match verdict {
            AckVerdict::Vouches(_) => {
                if let Some(f) = self.in_flight.get_mut(&packet.seq) {
                    if f.waiting.remove(&packet.from) {
                        let rtt = now.duration_since(f.sent).as_secs_f64();
                        io.metrics.peers.heartbeat_rtt.observe(rtt);
                    }
                }
                lock(&io.report).acked.insert(packet.from, now);
            }
            AckVerdict::StaleLease => io.metrics.peers.dropped("stale_lease"),
            AckVerdict::UnknownHeartbeat => io.metrics.peers.dropped("unknown_heartbeat"),
        }
    }
}

fn lock(report: &Mutex<PeerReport>) -> std::sync::MutexGuard<'_, PeerReport> {
    report.lock().unwrap_or_else(|p| p.into_inner())
}
