//! The long-lived streams of an etcd connection: the lease keepalive (on a connection of
//! its own, opened with a [`Dialer`]) and the watch.

use std::time::Duration;

use etcd_client::{
    Client, ConnectOptions, EventType, LeaseKeepAliveStream, LeaseKeeper, WatchStream,
};

use super::{within, Change, RawKv, Store, StoreError};

/// How to open another connection to a store's endpoint, with the same options and
/// credentials: the lease keepalive runs on one of its own.
#[derive(Debug, Clone)]
pub struct Dialer {
    pub(super) endpoint: String,
    pub(super) options: ConnectOptions,
    pub(super) connect: Duration,
    pub(super) timeout: Duration,
}

impl Dialer {
    /// A keepalive stream for `lease` on a new connection, made in the calling runtime
    /// (its I/O runs there); opening it renews the lease once.
    pub async fn keep_alive(&self, lease: i64) -> Result<LeaseKeepAlive, StoreError> {
        let connect = Client::connect([self.endpoint.as_str()], Some(self.options.clone()));
        let client = within(self.connect, "connect", connect).await?;
        let mut store = Store {
            client,
            endpoint: self.endpoint.clone(),
            timeout: self.timeout,
            dialer: self.clone(),
            batch: super::MAX_BATCH,
        };
        store.keep_alive(lease).await
    }
}

/// A lease keepalive stream: send a request, read the TTL etcd granted.
pub struct LeaseKeepAlive {
    pub(super) keeper: LeaseKeeper,
    pub(super) stream: LeaseKeepAliveStream,
    /// The connection the stream runs on, kept open as long as the stream.
    pub(super) _connection: Client,
}

impl LeaseKeepAlive {
    /// Ask etcd to renew the lease.
    pub async fn send(&mut self) -> Result<(), StoreError> {
        self.keeper
            .keep_alive()
            .await
            .map_err(|source| StoreError::Request {
                op: "lease keepalive",
                source,
            })
    }

    /// The next renewal answer: the TTL in seconds, 0 when the lease is gone.
    pub async fn recv(&mut self) -> Result<i64, StoreError> {
        match self.stream.message().await {
            Ok(Some(resp)) => Ok(resp.ttl()),
            Ok(None) => Err(StoreError::StreamEnded {
                op: "lease keepalive",
                reason: "closed by server".into(),
            }),
            Err(source) => Err(StoreError::Request {
                op: "lease keepalive",
                source,
            }),
        }
    }
}

/// A watch on a prefix.
pub struct Watch {
    pub(super) stream: WatchStream,
}

impl Watch {
    /// The next batch of changes; empty for progress and creation notices.
    pub async fn next(&mut self) -> Result<(i64, Vec<Change>), StoreError> {
        let resp = match self.stream.message().await {
            Ok(Some(resp)) => resp,
            Ok(None) => {
                return Err(StoreError::StreamEnded {
                    op: "watch",
                    reason: "closed by server".into(),
                })
            }
            Err(source) => {
                return Err(StoreError::Request {
                    op: "watch",
                    source,
                })
            }
        };
        if resp.compact_revision() > 0 {
            return Err(StoreError::Compacted(resp.compact_revision()));
        }
        if resp.canceled() {
            return Err(StoreError::StreamEnded {
                op: "watch",
                reason: resp.cancel_reason().to_string(),
            });
        }
        let revision = resp.header().map_or(0, |h| h.revision());
        let changes = resp
            .events()
            .iter()
            .filter_map(|ev| {
                let kv = ev.kv()?;
                Some(match ev.event_type() {
                    EventType::Put => Change::Put(RawKv::from(kv)),
                    EventType::Delete => Change::Delete {
                        key: String::from_utf8_lossy(kv.key()).into_owned(),
                        revision: kv.mod_revision(),
                    },
                })
            })
            .collect();
        Ok((revision, changes))
    }
}
