//! The connected loop: wait for whatever comes first (a watch batch, a lease renewal or
//! expiry, a timer, a signal, an address change) and reconcile when it matters.

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::{mpsc, watch};
use tokio::time::{interval_at, Instant};
use tracing::warn;

use super::peers::PeerEvent;
use super::view::Relevance;
use super::{keepalive, sleep_until_some, Agent, Connection, Signal, Stop};
use crate::net::AddressEvents;
use crate::store::{Change, Store, StoreError, Watch};

/// How long a change that can wait ([`Relevance::Soon`]) may wait for its reconcile:
/// short next to the placement grace, long enough to gather a burst of other agents'
/// claim transactions into one reconcile.
const RECONCILE_SOON: Duration = Duration::from_millis(100);

impl Agent {
    /// etcd dropped the lease: every claim on it is gone, so are our rights to addresses.
    pub(super) async fn lease_lost(&mut self) {
        warn!(lease = ?self.lease.map(|l| format!("{l:x}")), "lease expired in etcd");
        self.lease = None;
        self.record_rev = None;
        super::fence_clock::lock(&self.fence_clock)
            .holder
            .set_lease(None, crate::vouch::Standing::Unknown);
        self.close_fence();
        self.conflicts.lease_lost();
        self.clock().forget();
        self.drop_addresses("lease expired", false).await;
    }

    /// The connected loop; returns on shutdown or when the connection must be rebuilt.
    /// `/readyz` says ready from the first reconcile until it returns.
    pub(super) async fn serve(
        &mut self,
        conn: Connection,
        events: &mut AddressEvents,
        signals: &mut watch::Receiver<Signal>,
        peer_events: &mut mpsc::UnboundedReceiver<PeerEvent>,
    ) -> Stop {
        let stop = self
            .serve_connected(conn, events, signals, peer_events)
            .await;
        self.metrics.ready.store(false, Ordering::Relaxed);
        stop
    }

    pub(super) async fn serve_connected(
        &mut self,
        mut conn: Connection,
        events: &mut AddressEvents,
        signals: &mut watch::Receiver<Signal>,
        peer_events: &mut mpsc::UnboundedReceiver<PeerEvent>,
    ) -> Stop {
        let first = Instant::now() + resync_phase(&self.cfg.node, self.cfg.resync);
        let mut resync = interval_at(first, self.cfg.resync);
        if let Err(e) = self.reconcile(Some(&mut conn.store)).await {
            return Stop::Lost(e.to_string());
        }
        self.systemd
            .ready("serving: lease held, addresses reconciled");
        self.metrics.ready.store(true, Ordering::Relaxed);
        loop {
            let fence_at = self.fence_timer();
            let refresh_due = self.refresh_due;
            let overdue_at = [self.next_overdue(), self.next_rebalance()]
                .into_iter()
                .flatten()
                .map(Instant::from_std)
                .chain(self.conflicts.next_expiry())
                .min();
            let announce_at = self.announce_refresh_at;
            let watchdog_at = self.systemd.next_ping();
            let wake: Result<bool, String> = tokio::select! {
                _ = sleep_until_some(watchdog_at) => {
                    self.systemd.ping();
                    Ok(false)
                }
                _ = sleep_until_some(overdue_at) => Ok(true),
                _ = sleep_until_some(self.reconcile_soon) => Ok(true),
                _ = sleep_until_some(self.history_at) => {
                    self.publish_history(&mut conn.store).await.map(|()| false).map_err(|e| e.to_string())
                }
                _ = sleep_until_some(announce_at) => {
                    self.announce_all().await;
                    Ok(false)
                }
                _ = sleep_until_some(refresh_due) => {
                    self.refresh_lifetimes().await;
                    Ok(false)
                }
                _ = signals.changed() => return Stop::Signal(*signals.borrow(), Box::new(conn)),
                _ = sleep_until_some(fence_at) => {
                    self.fence().await;
                    return Stop::Lost("lease not renewed before its deadline".into());
                }
                r = conn.watch.next() => self.apply_watch(r, &mut conn.watch),
                Some(event) = conn.lease_events.recv() => self.lease_event(event).await,
                _ = resync.tick() => self.resync(&mut conn.store).await.map(|()| true).map_err(|e| e.to_string()),
                Some(()) = events.changed() => {
                    self.host_addresses_stale = true;
                    Ok(true)
                }
                Some(event) = peer_events.recv() => self.peer_event(&mut conn.store, event).await,
            };
            match wake {
                Ok(true) => {
                    if let Err(e) = self.reconcile(Some(&mut conn.store)).await {
                        return Stop::Lost(e.to_string());
                    }
                }
                Ok(false) => {}
                Err(reason) => return Stop::Lost(reason),
            }
        }
    }

    /// Apply a watch batch and every batch already waiting behind it, so a burst of
    /// changes (other agents claiming hundreds of IPs) costs one reconcile, not hundreds;
    /// whether a reconcile is needed at all.
    pub(super) fn apply_watch(
        &mut self,
        first: Result<(i64, Vec<Change>), StoreError>,
        watch: &mut Watch,
    ) -> Result<bool, String> {
        let mut next = Some(first);
        let mut relevance = Relevance::None;
        while let Some(batch) = next {
            let (revision, changes) = batch.map_err(|e| e.to_string())?;
            tracing::debug!(revision, changes = changes.len(), "watch batch");
            for change in &changes {
                relevance = relevance.max(self.view.apply(change));
            }
            next = watch.next().now_or_never();
        }
        if relevance == Relevance::Soon {
            self.reconcile_soon
                .get_or_insert_with(|| Instant::now() + RECONCILE_SOON);
        }
        Ok(relevance == Relevance::Now)
    }

    /// What the heartbeat thread asks: a vote to write, a record to rewrite.
    async fn peer_event(&mut self, store: &mut Store, event: PeerEvent) -> Result<bool, String> {
        let done = match event {
            PeerEvent::Vote(vote) => self.cast_vote(store, vote).await,
            PeerEvent::Rewrite => self.publish_node(store).await,
        };
        done.map(|()| false).map_err(|e| e.to_string())
    }

    /// A report of the keepalive task: a renewal re-arms the fence; an
    /// expiry ends the lease; a failure means reconnecting.
    pub(super) async fn lease_event(
        &mut self,
        event: keepalive::LeaseEvent,
    ) -> Result<bool, String> {
        match event {
            keepalive::LeaseEvent::Renewed => {
                self.arm_fence();
                Ok(false)
            }
            keepalive::LeaseEvent::Expired => {
                self.lease_lost().await;
                Err("lease expired".into())
            }
            keepalive::LeaseEvent::Failed(reason) => Err(reason),
        }
    }

    /// Between the actions of a long reconcile: renew the fence if the lease was
    /// renewed, and refresh lifetimes if a round is due; the main loop gets to its
    /// timers only after the reconcile.
    pub(super) async fn refresh_if_urgent(&mut self) {
        self.arm_fence_if_renewed();
        if self.refresh_due.is_some_and(|at| at <= Instant::now()) {
            self.refresh_lifetimes().await;
        }
    }

    /// The periodic check against missed watch events; lists the prefix only when
    /// etcd's key count or newest change disagrees with the view.
    pub(super) async fn resync(&mut self, store: &mut Store) -> Result<(), StoreError> {
        self.host_addresses_stale = true;
        let root = self.keys.root();
        let summary = store.summary(&root).await?;
        if self.view.matches_store(summary) {
            return Ok(());
        }
        tracing::debug!(
            ?summary,
            "view and etcd differ (or events are on their way): listing"
        );
        let snapshot = store.list(&root).await?;
        self.view.replace(&snapshot);
        Ok(())
    }

    /// Count a watch started; every one after the first is a restart.
    pub(super) fn count_watch(&mut self) {
        if self.watches > 0 {
            self.metrics.watch_restarts.inc();
        }
        self.watches += 1;
    }
}

/// When in the resync period this node's resync falls: agents started together would
/// otherwise ask etcd at the same instant, and etcd answers the summary by reading the
/// whole prefix (a sorted range): ten agents at once stalled it past the lease margin on
/// the loaded lab machine. A stable spread by node name, within one period.
fn resync_phase(node: &str, period: Duration) -> Duration {
    use std::hash::Hasher;
    let mut h = fnv::FnvHasher::default();
    h.write(node.as_bytes());
    let millis = period.as_millis().max(1) as u64;
    period + Duration::from_millis(h.finish() % millis)
}
