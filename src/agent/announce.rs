//! Takeovers on the wire: the probe for another owner before an exclusive IP is added,
//! the announcement after, and the conflict records in etcd that `extip status` shows.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tracing::{error, info, warn};

use super::Agent;
use crate::model::{ConflictValue, Replicas};
use crate::net::announce::{self, Port};
use crate::net::packets::Mac;
use crate::observed::LocalAddress;
use crate::plan::Action;
use crate::store::{Store, StoreError};

/// How long an agent stays away from an IP another host answered for; then it may
/// probe again (the foreign host may have been fixed).
pub const CONFLICT_BACKOFF: Duration = Duration::from_secs(30);

/// How long after a stopping peer gave an IP up it may be taken without a probe.
const HANDED_OVER_FRESH: std::time::Duration = std::time::Duration::from_secs(2);

/// A foreign owner seen by this agent's probe.
#[derive(Debug, Clone)]
pub struct Conflict {
    /// Who answered.
    pub mac: Mac,
    /// When, for the record in etcd.
    pub since: SystemTime,
    /// When this agent may try the IP again.
    pub until: Instant,
}

/// Conflicts this agent saw, and which of them are recorded in etcd.
#[derive(Debug, Default)]
pub struct Conflicts {
    /// Current conflicts by IP.
    pub seen: BTreeMap<IpAddr, Conflict>,
    /// The IPs of `seen`, for the planner.
    pub ips: BTreeSet<IpAddr>,
    /// IPs whose record this agent put in etcd.
    published: BTreeSet<IpAddr>,
}

impl Conflicts {
    /// Forget conflicts whose back-off is over.
    pub fn expire(&mut self, now: Instant) {
        self.seen.retain(|_, c| c.until > now);
        self.ips = self.seen.keys().copied().collect();
    }

    /// The lease is gone, and with it every record this agent put.
    pub fn lease_lost(&mut self) {
        self.published.clear();
    }

    /// When the next back-off ends.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.seen.values().map(|c| c.until).min()
    }
}

impl Agent {
    /// Where an address is announced and probed: its own interface when that speaks
    /// ARP, else (`lo`) the `--announce-interface`s.
    fn ports_for(&self, ifindex: u32) -> Vec<Port> {
        match self.ports.get(&ifindex) {
            Some(port) => vec![port.clone()],
            None => self.announce_ports.clone(),
        }
    }

    /// Remember a served interface's MAC, if it speaks ARP (called per link check).
    pub(super) fn note_port(&mut self, name: &str, state: crate::net::LinkState) {
        match state.mac {
            Some(mac) => {
                let port = Port {
                    name: name.to_string(),
                    ifindex: state.ifindex,
                    mac,
                };
                self.ports.insert(state.ifindex, port);
            }
            None => {
                self.ports.remove(&state.ifindex);
            }
        }
    }

    /// Re-read the `--announce-interface`s; a problem is logged when it first shows.
    pub(super) async fn check_announce_ports(&mut self) {
        let mut ports = Vec::new();
        let mut unusable = BTreeSet::new();
        for name in &self.cfg.announce.interfaces {
            let problem = match self.net.link_state(name).await {
                Ok(state) => match state.mac {
                    Some(mac) => {
                        ports.push(Port {
                            name: name.clone(),
                            ifindex: state.ifindex,
                            mac,
                        });
                        continue;
                    }
                    None => "it has no Ethernet address".to_string(),
                },
                Err(e) => e.to_string(),
            };
            if !self.unusable_announce_ports.contains(name) {
                warn!(interface = %name, problem, "--announce-interface unusable");
            }
            unusable.insert(name.clone());
        }
        self.announce_ports = ports;
        self.unusable_announce_ports = unusable;
    }

    /// Whether adding `a` needs a probe first: exclusive IPs, when probing is on, unless
    /// an extip peer handed the IP over while stopping (it removed its address first).
    fn needs_probe(&mut self, a: &LocalAddress) -> bool {
        let exclusive = self
            .view
            .desired
            .get(&a.ip)
            .is_some_and(|d| d.replicas == Replicas::EXCLUSIVE);
        if !exclusive || self.cfg.announce.probe.is_none() {
            return false;
        }
        if self.view.just_handed_over(a.ip, HANDED_OVER_FRESH) {
            info!(ip = %a.ip, "a stopping peer handed the IP over: no conflict probe");
            return false;
        }
        true
    }

    /// Probe for every exclusive address about to be added, all at once (a failover of
    /// a hundred IPs waits one probe time, not a hundred). A foreign answer becomes a
    /// conflict: the add is skipped and the planner releases the claim.
    pub(super) async fn probe_before_adding(&mut self, actions: &[Action]) {
        let Some(wait) = self.cfg.announce.probe else {
            return;
        };
        let adds: Vec<LocalAddress> = actions
            .iter()
            .filter_map(|action| match action {
                Action::AddAddress(a) => Some(*a),
                _ => None,
            })
            .collect();
        let probes: Vec<LocalAddress> = adds.into_iter().filter(|a| self.needs_probe(a)).collect();
        let probes = probes
            .into_iter()
            .flat_map(|a| self.ports_for(a.ifindex).into_iter().map(move |p| (a, p)));
        let answers = futures::future::join_all(probes.map(|(a, port)| async move {
            let answer = announce::probe(&port, a.ip, wait).await;
            (a, port, answer)
        }))
        .await;
        for (a, port, answer) in answers {
            match answer {
                Ok(None) => {}
                Ok(Some(mac)) => {
                    error!(ip = %a.ip, interface = %port.name, %mac, backoff = ?CONFLICT_BACKOFF,
                        "another host answers for this IP: not adding it, releasing the claim");
                    let conflict = Conflict {
                        mac,
                        since: SystemTime::now(),
                        until: Instant::now() + CONFLICT_BACKOFF,
                    };
                    self.conflicts.seen.insert(a.ip, conflict);
                    self.metrics.conflicts.inc();
                    self.conflicts.ips.insert(a.ip);
                }
                Err(e) => {
                    error!(ip = %a.ip, interface = %port.name, error = %e, "conflict probe failed; adding anyway")
                }
            }
        }
    }

    /// Announce an address this agent just added.
    pub(super) fn announce(&self, a: LocalAddress) {
        let cfg = &self.cfg.announce;
        announce::announce_burst(
            self.ports_for(a.ifindex),
            a.ip,
            cfg.count,
            cfg.interval,
            self.announce_counters.clone(),
        );
    }

    /// `--announce-refresh`: one more announcement of every address held.
    pub(super) async fn announce_all(&mut self) {
        let owned = match self.net.owned_set().await {
            Ok(owned) => owned,
            Err(e) => return error!(error = %e, "cannot list addresses to announce them"),
        };
        for a in owned {
            announce::announce_burst(
                self.ports_for(a.ifindex),
                a.ip,
                1,
                Duration::ZERO,
                self.announce_counters.clone(),
            );
        }
        self.announce_refresh_at = self.cfg.announce.refresh.map(|r| Instant::now() + r);
    }

    /// Mirror this agent's conflicts into `<prefix>/conflicts/<ip>` on its lease.
    pub(super) async fn publish_conflicts(&mut self, store: &mut Store) -> Result<(), StoreError> {
        let Some(lease) = self.lease else {
            return Ok(());
        };
        let new: Vec<IpAddr> = self
            .conflicts
            .ips
            .difference(&self.conflicts.published)
            .copied()
            .collect();
        for ip in new {
            let c = &self.conflicts.seen[&ip];
            let value = ConflictValue {
                node: self.cfg.node.clone(),
                mac: c.mac.to_string(),
                since: humantime::format_rfc3339_seconds(c.since).to_string(),
            };
            let value = serde_json::to_vec(&value).expect("conflict value serializes");
            store
                .put(&self.keys.conflict(ip), &value, Some(lease))
                .await?;
            self.conflicts.published.insert(ip);
        }
        let gone: Vec<IpAddr> = self
            .conflicts
            .published
            .difference(&self.conflicts.ips)
            .copied()
            .collect();
        for ip in gone {
            store
                .delete_if_lease(&self.keys.conflict(ip), lease)
                .await?;
            self.conflicts.published.remove(&ip);
            info!(%ip, "conflict back-off over: the IP may be tried again");
        }
        Ok(())
    }
}
