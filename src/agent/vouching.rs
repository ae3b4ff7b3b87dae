//! The main loop's side of peer vouching: this node's record, written only over the
//! revision it last saw (so a revocation and any write of ours never both commit), the
//! detection of its own revocation, the directory the heartbeat thread works from, and
//! the hand-over of what etcd holds to a re-executed process.

use std::sync::Arc;
use std::time::Instant;

use tracing::{error, info, warn};

use super::fence_clock;
use super::peers::{Directory, Member};
use super::Agent;
use crate::model::{self, VouchMode, VouchRecord};
use crate::store::{RecordExpect, RecordWrite, Store, StoreError};
use crate::vouch::{witnesses_of, Standing};

/// The environment variable a re-executing agent hands its record's state over in:
/// `<lease hex> <revision> <vouch JSON>`.
pub const HANDOFF_ENV: &str = "EXTIP_VOUCH_HANDOFF";

/// What a re-executed process inherits: the lease, its record's revision and vouching
/// part, written by the process before it and known to be committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handoff {
    /// The lease.
    pub lease: i64,
    /// The record's revision.
    pub revision: i64,
    /// Its vouching part.
    pub vouch: Option<VouchRecord>,
}

impl Handoff {
    /// Read and remove the hand-over from the environment (a later exec must not see it).
    pub fn take() -> Option<Handoff> {
        let text = std::env::var(HANDOFF_ENV).ok()?;
        std::env::remove_var(HANDOFF_ENV);
        Handoff::parse(&text)
    }

    fn parse(text: &str) -> Option<Handoff> {
        let mut parts = text.splitn(3, ' ');
        let lease = model::parse_lease_hex(parts.next()?).ok()?;
        let revision = parts.next()?.parse().ok()?;
        let vouch = serde_json::from_str(parts.next()?).ok()?;
        Some(Handoff {
            lease,
            revision,
            vouch,
        })
    }

    fn render(&self) -> String {
        let vouch = serde_json::to_string(&self.vouch).expect("vouch serializes");
        format!("{} {} {vouch}", model::lease_hex(self.lease), self.revision)
    }
}

impl Agent {
    /// Bind the heartbeat socket (a busy port stops the start, naming the flag) and
    /// start the heartbeat thread, when peer vouching is on.
    pub(super) fn start_peers(
        &mut self,
        events: tokio::sync::mpsc::UnboundedSender<super::peers::PeerEvent>,
    ) -> anyhow::Result<()> {
        use anyhow::Context;
        let Some(peers) = self.cfg.peers.clone() else {
            self.metrics.peers.set_mode("off");
            return Ok(());
        };
        // Without --peer-address the socket takes every address and the record names
        // the one towards etcd, looked up at each connection: at boot the route to etcd
        // may not exist yet, and a start must not fail for it.
        let bind_ip = peers
            .address
            .unwrap_or_else(|| unspecified_like(self.etcd_addresses.first()));
        if bind_ip.is_loopback() {
            warn!(ip = %bind_ip, "heartbeats on a loopback address reach no other host; set --peer-address");
        }
        let addr = std::net::SocketAddr::new(bind_ip, peers.port);
        let socket = std::net::UdpSocket::bind(addr)
            .with_context(|| format!("--peer-port {} (--peer-address {bind_ip})", peers.port))?;
        let (directory, reader) = tokio::sync::watch::channel(Arc::new(Directory::default()));
        let report = Arc::new(std::sync::Mutex::new(super::peers::PeerReport::default()));
        let task = super::peers::spawn(super::peers::PeersSetup {
            me: self.cfg.node.clone(),
            timing: peers.timing,
            socket,
            fence: self.fence_clock.clone(),
            directory: reader,
            events,
            metrics: self.metrics.clone(),
            report: report.clone(),
            started: Instant::now(),
        })
        .context("the heartbeat thread")?;
        info!(%addr, interval = ?peers.timing.interval, window = ?peers.timing.window, "heartbeats on");
        self.refresh_peer_addr();
        self.peers = Some(super::PeersRuntime {
            directory,
            report,
            _task: task,
        });
        Ok(())
    }

    /// The heartbeat address to publish: `--peer-address`, else the one the kernel
    /// uses towards etcd now (kept when no route is there; unset until one is).
    pub(super) fn refresh_peer_addr(&mut self) {
        let Some(peers) = &self.cfg.peers else { return };
        let ip = peers
            .address
            .or_else(|| address_towards(&self.etcd_addresses))
            .or(self.peer_addr.map(|a| a.ip()));
        match ip {
            Some(ip) => self.peer_addr = Some(std::net::SocketAddr::new(ip, peers.port)),
            None => warn!("no route towards etcd yet: heartbeats' address unpublished"),
        }
    }

    /// Start the holder on `lease`: a fresh lease has no record yet; an inherited one
    /// (a restart) is unknown until a write of ours proves what etcd holds, unless the
    /// process before handed it over.
    pub(super) fn holder_on_lease(&mut self, lease: i64, fresh: bool) {
        let mut fence = fence_clock::lock(&self.fence_clock);
        if fence.holder.lease() == Some(lease) {
            return;
        }
        let standing = match self.handoff.take() {
            _ if fresh => Standing::Known(None),
            Some(h) if h.lease == lease => {
                self.record_rev = Some(h.revision);
                Standing::Known(h.vouch)
            }
            _ => Standing::Unknown,
        };
        if fresh {
            self.record_rev = None;
        }
        fence.holder.set_lease(Some(lease), standing);
    }

    /// After a list: our record must be there if we wrote or inherited one; the
    /// revision to compare against when we have not written yet.
    pub(super) fn check_own_record_listed(&mut self) -> Result<(), StoreError> {
        let Some(lease) = self.lease else {
            return Ok(());
        };
        let meta = self.view.records.get(&self.cfg.node).copied();
        let unknown = fence_clock::lock(&self.fence_clock).holder.standing() == &Standing::Unknown;
        match meta {
            Some(m) if m.lease == lease => {
                if unknown || self.record_rev.is_none() {
                    self.record_rev = Some(m.revision);
                }
                Ok(())
            }
            _ if self.record_rev.is_some() || unknown => Err(StoreError::LeaseNotFound(lease)),
            _ => Ok(()),
        }
    }

    /// Whether a watched deletion of our record (not our own leave) says we were
    /// revoked.
    pub(super) fn revoked_in_watch(&mut self) -> bool {
        let deletions = self.view.take_node_deletions();
        let Some(&at) = deletions.get(&self.cfg.node) else {
            return false;
        };
        !self.leaving && self.lease.is_some() && self.record_rev.is_some_and(|r| at > r)
    }

    /// Our witnesses voted us out (or our record is gone): drop everything on the
    /// lease, revoke it ourselves so its claims go now, and start over.
    pub(super) async fn revoked(&mut self, store: Option<&mut Store>) {
        let lease = self.lease;
        error!(
            lease = ?lease.map(model::lease_hex),
            "this host's record is gone: its witnesses revoked it (they did not hear it for a \
             whole window); its IPs have moved, starting over with a new lease"
        );
        self.lease_lost().await;
        if let (Some(store), Some(lease)) = (store, lease) {
            if let Err(e) = store.revoke(lease).await {
                warn!(error = %e, "cannot revoke the old lease; etcd expires it");
            }
        }
        self.lease_file.clear();
    }

    /// Put our record if it changed or its vouching part should change; every write
    /// compares the revision we last saw, so a revocation in between makes it fail.
    pub(super) async fn publish_node(&mut self, store: &mut Store) -> Result<(), StoreError> {
        let Some(lease) = self.lease else {
            return Ok(());
        };
        let mut record = self.node_record();
        let settled = {
            let mut fence = fence_clock::lock(&self.fence_clock);
            record.vouch = match &self.force_vouch {
                Some(v) => Some(v.clone()),
                None => fence.holder.to_write(Instant::now()),
            };
            fence.holder.pending().is_none() && fence.holder.standing() != &Standing::Unknown
        };
        if settled && self.published.as_ref() == Some(&record) {
            return Ok(());
        }
        let expect = match self.record_rev {
            Some(r) => RecordExpect::Revision(r),
            None => RecordExpect::NotOnLease(lease),
        };
        self.propose(record.vouch.clone());
        let value = serde_json::to_vec(&record).expect("node value serializes");
        let key = self.keys.node(&self.cfg.node);
        match store.put_record(&key, &value, lease, expect).await? {
            RecordWrite::Written(revision) => {
                self.record_rev = Some(revision);
                self.settle(None);
                self.published = Some(record);
                Ok(())
            }
            RecordWrite::Refused(Some(kv)) if kv.lease == lease => {
                // Only this node writes its record: an earlier write of ours committed
                // (its answer was lost), or the last process's did (then, unknown still).
                self.record_rev = Some(kv.mod_revision);
                let found = model::parse_node(&kv.value).ok().and_then(|n| n.vouch);
                self.settle(Some(found));
                self.published = None;
                self.reconcile_soon = Some(tokio::time::Instant::now());
                Ok(())
            }
            RecordWrite::Refused(_) => {
                self.revoked(Some(store)).await;
                Err(StoreError::LeaseNotFound(lease))
            }
        }
    }

    /// A record write is on its way: the fence obeys the old and the new part.
    fn propose(&mut self, vouch: Option<VouchRecord>) {
        let mut fence = fence_clock::lock(&self.fence_clock);
        fence.holder.propose(vouch);
        if let Err(e) = fence.arm() {
            error!(error = %e, "cannot renew the fence");
        }
    }

    /// The write committed (`None`), or etcd holds `Some(found)` instead.
    fn settle(&mut self, refused: Option<Option<VouchRecord>>) {
        let mut fence = fence_clock::lock(&self.fence_clock);
        let before = fence.holder.standing().clone();
        match refused {
            None => fence.holder.committed(),
            Some(_) if before == Standing::Unknown => fence.holder.refused(Standing::Unknown),
            Some(found) => fence.holder.refused(Standing::Known(found)),
        }
        let after = fence.holder.standing().clone();
        if let Err(e) = fence.arm() {
            error!(error = %e, "cannot renew the fence");
        }
        drop(fence);
        if before != after {
            log_mode(&before, &after);
        }
        self.metrics
            .peers
            .set_mode(mode_name(&after, self.cfg.peers.is_some()));
    }

    /// Recompute the ideal witnesses and tell the heartbeat thread what etcd holds.
    pub(super) fn publish_directory(&mut self) {
        let Some(peers) = &self.peers else { return };
        let me = self.cfg.node.as_str();
        let members: Vec<&str> = self
            .view
            .nodes
            .iter()
            .filter(|(_, n)| n.peer.is_some() && !n.leaving)
            .map(|(name, _)| name.as_str())
            .collect();
        let ideal = witnesses_of(me, members);
        fence_clock::lock(&self.fence_clock)
            .holder
            .set_ideal(Some(ideal));
        let directory = Directory {
            members: self
                .view
                .nodes
                .iter()
                .filter_map(|(name, node)| {
                    let meta = self.view.records.get(name)?;
                    let member = Member {
                        addr: node.peer,
                        lease: meta.lease,
                        revision: meta.revision,
                        vouch: node.vouch.clone(),
                        leaving: node.leaving,
                    };
                    Some((name.clone(), member))
                })
                .collect(),
            my_votes: self
                .view
                .votes
                .iter()
                .filter_map(|(holder, votes)| {
                    let v = votes.get(me)?;
                    Some((holder.clone(), v.lease, v.revision))
                })
                .collect(),
            secret: self.secret.clone(),
        };
        peers.directory.send_replace(Arc::new(directory));
    }

    /// Before re-executing: a revocable record becomes lease-only first (the new
    /// process could not vouch for itself until its heartbeats run), and what etcd
    /// holds goes to the new process. `None`: nothing to hand over.
    pub(super) async fn prepare_handoff(&mut self, store: &mut Store) -> Option<String> {
        let lease = self.lease?;
        let revocable = fence_clock::lock(&self.fence_clock).holder.revocable();
        if revocable {
            let witnesses = self
                .published
                .as_ref()
                .and_then(|r| r.vouch.as_ref())
                .map(|v| v.witnesses.clone())
                .unwrap_or_default();
            self.force_vouch = Some(VouchRecord {
                mode: VouchMode::LeaseOnly,
                witnesses,
            });
            let written = self.publish_node(store).await;
            self.force_vouch = None;
            if let Err(e) = written {
                warn!(error = %e, "cannot go lease-only before re-executing; the new process starts dark");
                return None;
            }
        }
        let fence = fence_clock::lock(&self.fence_clock);
        let (Standing::Known(vouch), None) = (fence.holder.standing(), fence.holder.pending())
        else {
            return None;
        };
        let handoff = Handoff {
            lease,
            revision: self.record_rev?,
            vouch: vouch.clone(),
        };
        info!(
            revision = handoff.revision,
            "handing the record over to the new process"
        );
        Some(handoff.render())
    }
}

/// The local address the kernel picks towards the first etcd endpoint (no packet is
/// sent: a UDP socket is only connected).
/// The unspecified address of `like`'s family (IPv4 when unknown).
fn unspecified_like(like: Option<&std::net::IpAddr>) -> std::net::IpAddr {
    match like {
        Some(std::net::IpAddr::V6(_)) => std::net::Ipv6Addr::UNSPECIFIED.into(),
        _ => std::net::Ipv4Addr::UNSPECIFIED.into(),
    }
}

fn address_towards(etcd: &[std::net::IpAddr]) -> Option<std::net::IpAddr> {
    let target = *etcd.first()?;
    let any: std::net::IpAddr = if target.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    let socket = std::net::UdpSocket::bind((any, 0)).ok()?;
    socket.connect((target, 2379)).ok()?;
    socket.local_addr().ok().map(|a| a.ip())
}

/// The mode `extip_vouch_mode` and status show.
pub fn mode_name(standing: &Standing, enabled: bool) -> &'static str {
    match standing {
        Standing::Unknown => "unknown",
        Standing::Known(Some(v)) if v.revocable() => "peers",
        Standing::Known(Some(_)) => "lease-only",
        Standing::Known(None) if enabled => "lease-only",
        Standing::Known(None) => "off",
    }
}

/// Say a change of mode; a start in lease-only mode (peers not heard yet) is no news.
fn log_mode(before: &Standing, standing: &Standing) {
    let was_vouched = matches!(before, Standing::Known(Some(v)) if v.revocable());
    match standing {
        Standing::Known(Some(v)) if !v.revocable() && !was_vouched => info!(
            witnesses = ?v.witnesses,
            "lease only until the peers acknowledge this host"
        ),
        Standing::Known(Some(v)) if v.revocable() => info!(
            witnesses = ?v.witnesses,
            "vouched for by peers: a dead host's IPs move within the peer window"
        ),
        Standing::Known(Some(v)) => warn!(
            witnesses = ?v.witnesses,
            "lease only: too few peers acknowledge this host (or none exist); its IPs move \
             only when its lease expires"
        ),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handoff_round_trips() {
        let h = Handoff {
            lease: 0x694d_9a4f,
            revision: 42,
            vouch: Some(VouchRecord {
                mode: VouchMode::LeaseOnly,
                witnesses: vec!["h2".into()],
            }),
        };
        assert_eq!(Handoff::parse(&h.render()), Some(h));
        assert_eq!(Handoff::parse("zz 1 null"), None);
        let none = Handoff {
            lease: 1,
            revision: 2,
            vouch: None,
        };
        assert_eq!(Handoff::parse(&none.render()), Some(none));
    }
}
