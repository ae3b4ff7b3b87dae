//! The etcd adapter: one connection to one endpoint, leases, paged lists, watches, txns.
//!
//! The client talks to a single endpoint at a time and the caller rotates on failure:
//! a dead member in a balanced channel made a share of requests fail, while one
//! endpoint at a time with a timeout on every call never stalls on a dead member.

mod batch;
mod endpoint;
mod security;
mod stream;
mod vouch;
pub use batch::MAX_BATCH;
pub use endpoint::{endpoint_addresses, endpoint_host};
pub use security::{EtcdAuth, EtcdAuthSettings, Password, Tls};
pub use stream::{Dialer, LeaseKeepAlive, Watch};
pub use vouch::{RecordExpect, RecordWrite, RevocationTxn};

use std::future::Future;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, PutOptions, SortOrder,
    SortTarget, Txn, TxnOp, WatchOptions,
};
use thiserror::Error;

/// Keys per page when listing: bounds the size of one response.
const LIST_PAGE: i64 = 500;
/// Largest response accepted; values are at most 1.5 MiB in etcd, pages hold 500 keys.
const MAX_MESSAGE_BYTES: usize = 1024 * 1024 * 1024;

/// Why an etcd operation failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// No endpoint in the list answered.
    #[error("no etcd endpoint answered (tried {tried}): {last}")]
    Unreachable { tried: String, last: String },
    /// One request failed.
    #[error("etcd {op} failed: {source}")]
    Request {
        op: &'static str,
        source: etcd_client::Error,
    },
    /// One request took longer than the request timeout.
    #[error("etcd {op} timed out after {0:?}", .timeout)]
    Timeout { op: &'static str, timeout: Duration },
    /// A stream (watch or keepalive) ended or was cancelled by the server.
    #[error("etcd {op} stream ended: {reason}")]
    StreamEnded { op: &'static str, reason: String },
    /// etcd no longer knows the lease (it expired or was revoked).
    #[error("etcd lease {0:x} not found (expired or revoked)")]
    LeaseNotFound(i64),
    /// The watch start revision was compacted away.
    #[error("etcd watch start revision compacted (oldest is {0})")]
    Compacted(i64),
    /// An answer that does not fit the request.
    #[error("etcd answer does not fit the request: {0}")]
    Unexpected(String),
}

/// One key-value pair, decoupled from the client library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawKv {
    /// The key as text (non-UTF-8 bytes replaced).
    pub key: String,
    /// The value bytes.
    pub value: Vec<u8>,
    /// Lease the key hangs on, 0 for none.
    pub lease: i64,
    /// Revision of the last change.
    pub mod_revision: i64,
    /// Revision the key was created at (equal to `mod_revision` for a new key).
    pub create_revision: i64,
}

impl From<&etcd_client::KeyValue> for RawKv {
    fn from(kv: &etcd_client::KeyValue) -> Self {
        RawKv {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            value: kv.value().to_vec(),
            lease: kv.lease(),
            mod_revision: kv.mod_revision(),
            create_revision: kv.create_revision(),
        }
    }
}

/// How many keys a prefix holds and its newest change: enough to tell whether a view
/// kept by watching it has missed anything, without listing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixSummary {
    /// Number of keys under the prefix.
    pub count: i64,
    /// The highest `mod_revision` among them (0 when there are none).
    pub newest: i64,
}

/// A consistent list of a prefix at one revision.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The store revision the list was taken at.
    pub revision: i64,
    /// Every key under the prefix.
    pub kvs: Vec<RawKv>,
}

/// A change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Created or updated.
    Put(RawKv),
    /// Deleted (by a client or by lease expiry) at `revision`.
    Delete { key: String, revision: i64 },
}

/// The result of a create-if-absent transaction.
#[derive(Debug, Clone)]
pub struct CreateOutcome {
    /// Whether this call created the key.
    pub created: bool,
    /// Store revision after the transaction.
    pub revision: i64,
    /// The key as it is now, when someone else holds it.
    pub existing: Option<RawKv>,
}

/// A connection to one etcd endpoint.
pub struct Store {
    client: Client,
    endpoint: String,
    timeout: Duration,
    dialer: Dialer,
    /// Nested transactions per batch: [`MAX_BATCH`], halved while etcd refuses as many.
    batch: usize,
}

fn end_of_prefix(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// An error and its sources, for a log line that shows the root cause (a TLS
/// handshake error is several levels down in tonic's transport error). When the root
/// cause is an OS error (connection refused, no route), that alone says it plainly;
/// otherwise each level is said once (gRPC errors repeat their sources in their text).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut levels = vec![e];
    while let Some(level) = levels.last().and_then(|l| deeper(*l)) {
        levels.push(level);
    }
    if let Some(io) = levels
        .iter()
        .find_map(|l| l.downcast_ref::<std::io::Error>())
    {
        return plain_io_error(io);
    }
    let mut text = String::new();
    for level in levels {
        let said = level.to_string();
        if !text.contains(&said) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&said);
        }
    }
    text
}

/// The source of an error; etcd-client's gRPC status error hides its status' source.
fn deeper<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a (dyn std::error::Error + 'static)> {
    match e.downcast_ref::<etcd_client::Error>() {
        Some(etcd_client::Error::GRpcStatus(status)) => std::error::Error::source(status),
        _ => e.source(),
    }
}

/// "connection refused" rather than "Connection refused (os error 111)".
fn plain_io_error(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = text.split(" (os error").next().unwrap_or(&text);
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text.to_string(),
    }
}

impl Store {
    /// Connect to the first endpoint that answers, starting at `start`; returns its index.
    /// `connect` bounds connecting and the first read, `timeout` every later request.
    pub async fn connect_any(
        endpoints: &[String],
        start: usize,
        connect: Duration,
        timeout: Duration,
        auth: &EtcdAuth,
        probe_key: &str,
    ) -> Result<(Store, usize), StoreError> {
        let mut last = String::from("no endpoint");
        for i in 0..endpoints.len() {
            let idx = (start + i) % endpoints.len();
            match Store::connect(&endpoints[idx], connect, timeout, auth, probe_key).await {
                Ok(store) => return Ok((store, idx)),
                Err(e) => {
                    let text = error_chain(&e);
                    last = match auth.explain(&text) {
                        Some(why) => format!("{}: {why} ({text})", endpoints[idx]),
                        None => format!("{}: {text}", endpoints[idx]),
                    };
                }
            }
        }
        Err(StoreError::Unreachable {
            tried: endpoints.join(","),
            last,
        })
    }

    /// Connect to one endpoint and check it serves linearizable reads (has a leader) by
    /// counting `probe_key`: a key under the prefix, so a user restricted to the prefix
    /// may read it.
    pub async fn connect(
        endpoint: &str,
        connect: Duration,
        timeout: Duration,
        auth: &EtcdAuth,
        probe_key: &str,
    ) -> Result<Store, StoreError> {
        // etcd refuses gRPC pings more often than every 5 s by default.
        let options = ConnectOptions::new()
            .with_connect_timeout(connect)
            .with_keep_alive(Duration::from_secs(10), timeout)
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        let options = auth.apply(options);
        let client = within(
            connect,
            "connect",
            Client::connect([endpoint], Some(options.clone())),
        )
        .await?;
        let store = Store {
            client,
            endpoint: endpoint.to_string(),
            timeout,
            batch: MAX_BATCH,
            dialer: Dialer {
                endpoint: endpoint.to_string(),
                options,
                connect,
                timeout,
            },
        };
        let probe = GetOptions::new().with_count_only();
        let mut kv = store.client.kv_client();
        within(connect, "connect", kv.get(probe_key, Some(probe))).await?;
        Ok(store)
    }

    /// How to open another connection like this one.
    pub fn dialer(&self) -> Dialer {
        self.dialer.clone()
    }

    /// The endpoint this connection talks to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Seconds `lease` has left, `None` when etcd no longer has it.
    pub async fn lease_ttl_left(&mut self, lease: i64) -> Result<Option<i64>, StoreError> {
        let resp = within(
            self.timeout,
            "lease time-to-live",
            self.client.lease_time_to_live(lease, None),
        )
        .await?;
        Ok((resp.ttl() >= 0).then(|| resp.ttl()))
    }

    /// Grant a lease of `ttl` seconds.
    pub async fn grant(&mut self, ttl: i64) -> Result<i64, StoreError> {
        Ok(self.grant_ttl(ttl).await?.0)
    }

    /// Grant a lease of `ttl` seconds: its id and the TTL etcd granted, which is more
    /// when etcd's minimum (1.5 election timeouts) is above what was asked.
    pub async fn grant_ttl(&mut self, ttl: i64) -> Result<(i64, i64), StoreError> {
        let resp = within(
            self.timeout,
            "lease grant",
            self.client.lease_grant(ttl, None),
        )
        .await?;
        Ok((resp.id(), resp.ttl()))
    }

    /// Open a keepalive stream for `lease` (this renews it once).
    pub async fn keep_alive(&mut self, lease: i64) -> Result<LeaseKeepAlive, StoreError> {
        let open = self.client.lease_keep_alive(lease);
        match within(self.timeout, "lease keepalive", open).await {
            Ok((keeper, stream)) => Ok(LeaseKeepAlive {
                keeper,
                stream,
                _connection: self.client.clone(),
            }),
            // The client reports a TTL of 0 on the first answer as this error.
            Err(StoreError::Request {
                source: etcd_client::Error::LeaseKeepAliveError(msg),
                ..
            }) if msg.contains("not found") => Err(StoreError::LeaseNotFound(lease)),
            Err(e) => Err(e),
        }
    }

    /// Revoke `lease`: every key on it is deleted at once.
    pub async fn revoke(&mut self, lease: i64) -> Result<(), StoreError> {
        within(
            self.timeout,
            "lease revoke",
            self.client.lease_revoke(lease),
        )
        .await?;
        Ok(())
    }

    /// List every key under `prefix` at one revision, page by page.
    pub async fn list(&mut self, prefix: &str) -> Result<Snapshot, StoreError> {
        let end = end_of_prefix(prefix);
        let mut kv = self
            .client
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let mut from = prefix.as_bytes().to_vec();
        let mut revision = 0;
        let mut kvs = Vec::new();
        loop {
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(LIST_PAGE);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let resp = within(self.timeout, "list", kv.get(from.clone(), Some(options))).await?;
            if revision == 0 {
                revision = resp.header().map_or(0, |h| h.revision());
            }
            kvs.extend(resp.kvs().iter().map(RawKv::from));
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        Ok(Snapshot { revision, kvs })
    }

    /// Count the keys under `prefix` and find its newest change, in one request that
    /// returns one key name: etcd sorts by modification, the client parses nothing.
    pub async fn summary(&mut self, prefix: &str) -> Result<PrefixSummary, StoreError> {
        let options = GetOptions::new()
            .with_range(end_of_prefix(prefix))
            .with_sort(SortTarget::Mod, SortOrder::Descend)
            .with_limit(1)
            .with_keys_only();
        let resp = within(
            self.timeout,
            "summary",
            self.client.kv_client().get(prefix, Some(options)),
        )
        .await?;
        Ok(PrefixSummary {
            count: resp.count(),
            newest: resp.kvs().first().map_or(0, |kv| kv.mod_revision()),
        })
    }

    /// Watch `prefix` from `revision` (inclusive).
    pub async fn watch(&mut self, prefix: &str, revision: i64) -> Result<Watch, StoreError> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision);
        let mut client = self
            .client
            .watch_client()
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let stream = within(self.timeout, "watch", client.watch(prefix, Some(options))).await?;
        Ok(Watch { stream })
    }

    /// Delete `key` only while it hangs on `lease`; the revision of the deletion, or
    /// `None` when the key was not on that lease.
    pub async fn delete_if_lease(
        &mut self,
        key: &str,
        lease: i64,
    ) -> Result<Option<i64>, StoreError> {
        let txn = Txn::new()
            .when([Compare::lease(key, CompareOp::Equal, lease)])
            .and_then([TxnOp::delete(key, None)]);
        let resp = within(self.timeout, "release txn", self.client.txn(txn)).await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        Ok(resp.succeeded().then_some(revision))
    }

    /// Delete `key` only if it still holds `value`, written at `mod_revision`, on no
    /// lease; the revision of the deletion, or `None` when the key changed meanwhile.
    pub async fn delete_if_unchanged_leaseless(
        &mut self,
        key: &str,
        value: &[u8],
        mod_revision: i64,
    ) -> Result<Option<i64>, StoreError> {
        let txn = Txn::new()
            .when([
                Compare::mod_revision(key, CompareOp::Equal, mod_revision),
                Compare::value(key, CompareOp::Equal, value),
                Compare::lease(key, CompareOp::Equal, 0),
            ])
            .and_then([TxnOp::delete(key, None)]);
        self.txn("forged claim delete txn", txn).await
    }

    /// A stopping agent's last words, before it revokes its lease: put its record
    /// (`leaving`) and delete its claims in the same transactions, so other agents learn
    /// both at once and take over without waiting for the revoke. Each claim is deleted
    /// only while it still hangs on `lease`; etcd's limit of 128 operations per
    /// transaction splits a long list.
    pub async fn put_and_release(
        &mut self,
        record_key: &str,
        record: &[u8],
        lease: i64,
        claims: &[String],
    ) -> Result<(), StoreError> {
        let put = TxnOp::put(
            record_key,
            record,
            Some(PutOptions::new().with_lease(lease)),
        );
        let mut batches: Vec<&[String]> = claims.chunks(100).collect();
        if batches.is_empty() {
            batches.push(&[]);
        }
        for (i, batch) in batches.into_iter().enumerate() {
            let compares = batch
                .iter()
                .map(|k| Compare::lease(k.as_str(), CompareOp::Equal, lease));
            let mut ops: Vec<TxnOp> = batch
                .iter()
                .map(|k| TxnOp::delete(k.as_str(), None))
                .collect();
            if i == 0 {
                ops.insert(0, put.clone());
            }
            let txn = Txn::new().when(compares.collect::<Vec<_>>()).and_then(ops);
            if self.txn("leave txn", txn).await?.is_none() {
                // Some claim is no longer ours: release the rest one by one.
                for key in batch {
                    self.delete_if_lease(key, lease).await?;
                }
            }
        }
        Ok(())
    }

    /// Run a transaction built by the caller; its revision when its comparisons held.
    pub async fn txn(&mut self, op: &'static str, txn: Txn) -> Result<Option<i64>, StoreError> {
        self.txn_within(self.timeout, op, txn).await
    }

    /// The same, waiting at most `timeout`.
    pub(crate) async fn txn_within(
        &mut self,
        timeout: Duration,
        op: &'static str,
        txn: Txn,
    ) -> Result<Option<i64>, StoreError> {
        let resp = within(timeout, op, self.client.txn(txn)).await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        Ok(resp.succeeded().then_some(revision))
    }

    /// Put `key`, on `lease` when given.
    pub async fn put(
        &mut self,
        key: &str,
        value: &[u8],
        lease: Option<i64>,
    ) -> Result<(), StoreError> {
        let options = lease.map(|l| PutOptions::new().with_lease(l));
        within(self.timeout, "put", self.client.put(key, value, options)).await?;
        Ok(())
    }

    /// Delete `key`; true when it existed.
    pub async fn delete(&mut self, key: &str) -> Result<bool, StoreError> {
        let resp = within(
            self.timeout,
            "delete",
            self.client.delete(key, None::<DeleteOptions>),
        )
        .await?;
        Ok(resp.deleted() > 0)
    }
}

async fn within<T>(
    timeout: Duration,
    op: &'static str,
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(StoreError::Request { op, source }),
        Err(_) => Err(StoreError::Timeout { op, timeout }),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn prefix_end_is_the_next_key_after_every_key_under_it() {
        assert_eq!(super::end_of_prefix("/extip/"), b"/extip0".to_vec());
        assert_eq!(super::end_of_prefix("ab"), b"ac".to_vec());
    }
}
