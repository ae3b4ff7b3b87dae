//! Reaching etcd: connect with backoff, set up the store, watch and lease, and take the
//! previous run's lease back when it is still alive.

use std::time::Duration;

use tokio::time::{sleep, timeout, Instant};
use tracing::{info, warn};

use super::{keepalive, keepalive_interval, sleep_until_some, Agent, Connection, Renewal};
use crate::store::{LeaseKeepAlive, Store, StoreError};

impl Agent {
    /// Connect, retrying every endpoint with backoff; fences while etcd stays away.
    pub(super) async fn connect(&mut self) -> Connection {
        let mut backoff = Duration::from_millis(50);
        loop {
            let fence_at = self.fence_timer();
            let refresh_at = self.refresh_due;
            let watchdog_at = self.systemd.next_ping();
            let attempt = tokio::select! {
                r = self.establish() => r,
                _ = sleep_until_some(watchdog_at) => {
                    self.systemd.ping();
                    continue;
                }
                _ = sleep_until_some(fence_at) => {
                    self.fence().await;
                    continue;
                }
                _ = sleep_until_some(refresh_at) => {
                    self.refresh_lifetimes().await;
                    continue;
                }
            };
            match attempt {
                Ok(conn) => return conn,
                Err(e) => warn!(error = %e, retry_in = ?backoff, "cannot use etcd"),
            }
            tokio::select! {
                _ = sleep(backoff) => {}
                _ = sleep_until_some(self.systemd.next_ping()) => self.systemd.ping(),
                _ = sleep_until_some(self.fence_timer()) => self.fence().await,
                _ = sleep_until_some(self.refresh_due) => self.refresh_lifetimes().await,
            }
            backoff = (backoff * 2).min(Duration::from_millis(250));
        }
    }

    /// Connect to one endpoint, attach the lease, register, list and watch.
    pub(super) async fn establish(&mut self) -> Result<Connection, StoreError> {
        let (mut store, idx) = Store::connect_any(
            &self.cfg.etcd,
            self.endpoint,
            self.connect_timeout(),
            self.request_timeout(),
            &self.cfg.etcd_auth,
            &self.keys.root(),
        )
        .await?;
        self.endpoint = idx;
        self.refresh_peer_addr();
        let attached = self.attach_lease(&mut store).await?;
        self.arm_fence();
        // Addresses a previous process left (SIGHUP) get their lifetimes looked at.
        self.refresh_due.get_or_insert_with(Instant::now);
        let lease = self.lease.unwrap_or_default();
        self.load_secret(&mut store).await?;
        let snapshot = store.list(&self.keys.root()).await?;
        self.view.replace(&snapshot);
        if let Err(e) = self.check_own_record_listed() {
            self.revoked(Some(&mut store)).await;
            return Err(e);
        }
        self.publish_directory();
        self.published = None;
        self.publish_node(&mut store).await?;
        // The first reconcile must see our own record (it makes us a member); the first
        // list had to come before the write to check the record another process left.
        let snapshot = store.list(&self.keys.root()).await?;
        self.view.replace(&snapshot);
        let watch = store
            .watch(&self.keys.root(), snapshot.revision + 1)
            .await?;
        info!(
            endpoint = store.endpoint(),
            lease = format!("{lease:x}"),
            "connected to etcd"
        );
        self.count_watch();
        let (task, lease_events) = keepalive::spawn(keepalive::Renewing {
            dialer: store.dialer(),
            lease,
            clock: self.clock.clone(),
            every: keepalive_interval(self.cfg.lease_ttl),
            answer_timeout: self.answer_timeout(),
            metrics: self.metrics.clone(),
        });
        // The stream that attached the lease: the keepalive has its own from here on.
        drop(attached);
        Ok(Connection {
            store,
            _keepalive: task,
            lease_events,
            watch,
        })
    }

    /// Keep using the current lease if etcd still has it, else grant a new one.
    pub(super) async fn attach_lease(
        &mut self,
        store: &mut Store,
    ) -> Result<LeaseKeepAlive, StoreError> {
        let ttl_secs = self.cfg.lease_ttl.as_secs() as i64;
        if let Some(lease) = self.lease {
            match self.renew_existing(store, lease).await {
                Ok(Some(keepalive)) => return Ok(keepalive),
                Ok(None) | Err(StoreError::LeaseNotFound(_)) => self.lease_lost().await,
                Err(e) => return Err(e),
            }
        }
        let sent = std::time::Instant::now();
        let (lease, granted) = store.grant_ttl(ttl_secs).await?;
        if granted > ttl_secs {
            warn!(
                lease_ttl = ttl_secs,
                granted,
                "etcd granted a longer lease than asked: its election timeout is too long for \
                 this TTL (see the fast etcd profile in the README); failover takes the longer one"
            );
        }
        // The smaller one until keepalive answers say more: the safe direction.
        self.clock().granted(sent, granted.min(ttl_secs));
        self.metrics.lease_ttl.set(granted.min(ttl_secs));
        self.lease = Some(lease);
        self.lease_file.save(&self.cfg.node, lease);
        self.fenced = false;
        self.holder_on_lease(lease, true);
        store.keep_alive(lease).await
    }

    /// Renew `lease` on a new stream; `None` when etcd says it is gone.
    pub(super) async fn renew_existing(
        &mut self,
        store: &mut Store,
        lease: i64,
    ) -> Result<Option<LeaseKeepAlive>, StoreError> {
        let mut keepalive = store.keep_alive(lease).await?;
        self.clock().sent(std::time::Instant::now());
        keepalive.send().await?;
        let answer = timeout(self.request_timeout(), keepalive.recv()).await;
        let ttl = answer.map_err(|_| StoreError::Timeout {
            op: "lease keepalive",
            timeout: self.request_timeout(),
        })??;
        if self.clock().answered(ttl) == Renewal::Renewed {
            self.fenced = false;
            self.holder_on_lease(lease, false);
            return Ok(Some(keepalive));
        }
        Ok(None)
    }
}
