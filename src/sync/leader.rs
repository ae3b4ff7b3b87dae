//! Leader election among extip-sync replicas, and keeping a lease alive.
//!
//! The leader key `<prefix>/sync/leader` hangs on a short election lease; the desired
//! keys hang on each replica's long data lease. A standby that wins the election
//! re-attaches every key to its own data lease in its first reconcile, long before the
//! dead leader's data lease can expire, so no key disappears during a handover.

use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::store::{Change, Store, StoreError, Watch};

use super::connector::Connector;

/// Keep `lease` alive every `ttl / 3` until it is lost; returns why.
/// `lost_after`: how long without a renewal counts as lost (the holder must stop
/// acting on the lease before etcd could expire it).
pub async fn keep_alive(
    store: &mut Store,
    lease: i64,
    ttl: Duration,
    lost_after: Duration,
) -> StoreError {
    let mut stream = match store.keep_alive(lease).await {
        Ok(s) => s,
        Err(e) => return e,
    };
    let mut last_ok = Instant::now();
    let mut tick = tokio::time::interval(ttl / 3);
    loop {
        tick.tick().await;
        let renewed = async {
            stream.send().await?;
            stream.recv().await
        };
        match tokio::time::timeout(ttl / 3, renewed).await {
            Ok(Ok(0)) => return StoreError::LeaseNotFound(lease),
            Ok(Ok(_)) => last_ok = Instant::now(),
            Ok(Err(e)) => warn!(error = %e, lease = format!("{lease:x}"), "lease renewal failed"),
            Err(_) => warn!(lease = format!("{lease:x}"), "lease renewal timed out"),
        }
        if last_ok.elapsed() >= lost_after {
            return StoreError::LeaseNotFound(lease);
        }
    }
}

/// Campaign for leadership forever; `leading` is true exactly while this replica may write.
/// With `assume` (tests only) it leads without an election.
/// On `shutdown` the election lease is revoked, so a standby takes over at once.
pub async fn run(
    connector: Connector,
    identity: String,
    ttl: Duration,
    assume: bool,
    leading: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    if assume {
        warn!("--assume-leader: leading without an election (for tests: two such replicas race)");
        let _ = leading.send(true);
        return;
    }
    let key = connector.keys.sync_leader();
    let retry = (ttl / 4).min(Duration::from_secs(1));
    let mut connection: Option<Store> = None;
    // The election lease of a leadership lost only because etcd was out of reach.
    let mut last_lease: Option<i64> = None;
    loop {
        let mut store = match connection.take() {
            Some(s) => s,
            None => match connector.connect().await {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "election: cannot reach etcd");
                    tokio::time::sleep(retry).await;
                    continue;
                }
            },
        };
        // Watch before campaigning: a leader key deleted in between is still seen.
        let watch = store.watch(&key, 0).await;
        let attempt = match last_lease.take() {
            Some(lease) if still_leader(&mut store, &key, lease).await => Ok(Some(lease)),
            _ => campaign(&mut store, &key, &identity, ttl).await,
        };
        match attempt {
            Ok(Some(lease)) => {
                let stop = &mut shutdown;
                if !lead(&mut store, lease, ttl, &leading, stop, &connector).await {
                    return;
                }
                last_lease = Some(lease);
            }
            // Someone leads: campaign again as soon as the leader key goes.
            Ok(None) => {
                if let Ok(w) = watch {
                    connection = Some(store);
                    until_vacant(w, ttl).await;
                } else {
                    tokio::time::sleep(retry).await;
                }
            }
            Err(e) => {
                warn!(error = %e, "election: etcd request failed");
                tokio::time::sleep(retry).await;
            }
        }
    }
}

/// Wait until the leader key is deleted (resigned or expired), or one TTL in case
/// the watch missed it.
async fn until_vacant(mut watch: Watch, ttl: Duration) {
    let deleted = async {
        loop {
            match watch.next().await {
                Ok((_, changes)) if changes.iter().any(|c| matches!(c, Change::Delete { .. })) => {
                    return
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    };
    let _ = tokio::time::timeout(ttl, deleted).await;
}

/// Lead on `lease` until it can no longer be renewed (true: campaign on) or shutdown
/// (false: resigned).
async fn lead(
    store: &mut Store,
    lease: i64,
    ttl: Duration,
    leading: &watch::Sender<bool>,
    shutdown: &mut watch::Receiver<bool>,
    connector: &Connector,
) -> bool {
    info!("leading: this replica writes the desired keys");
    let _ = leading.send(true);
    // Stop writing a third of the TTL before etcd could hand the key to another.
    tokio::select! {
        why = keep_alive(store, lease, ttl, ttl * 2 / 3) => {
            let _ = leading.send(false);
            warn!(error = %why, "lost leadership");
            true
        }
        _ = shutdown.changed() => {
            let _ = leading.send(false);
            resign(connector, lease).await;
            false
        }
    }
}

/// After etcd was out of reach: the leader key still hangs on `lease` and the lease
/// can be renewed, so nobody else can have led meanwhile and this replica leads on (an
/// etcd restart gives leases a fresh TTL; without this the replica would wait for its
/// own old lease to run out before campaigning).
async fn still_leader(store: &mut Store, key: &str, lease: i64) -> bool {
    let on_lease = Txn::new().when([Compare::lease(key, CompareOp::Equal, lease)]);
    if !matches!(store.txn("election check", on_lease).await, Ok(Some(_))) {
        return false;
    }
    let renewed = async {
        let mut stream = store.keep_alive(lease).await?;
        stream.send().await?;
        stream.recv().await
    };
    let alive = matches!(renewed.await, Ok(ttl) if ttl > 0);
    if alive {
        info!(
            lease = format!("{lease:x}"),
            "etcd reachable again and the leader key is still ours"
        );
    }
    alive
}

/// One attempt: the election lease when this replica now holds the leader key.
async fn campaign(
    store: &mut Store,
    key: &str,
    identity: &str,
    ttl: Duration,
) -> Result<Option<i64>, StoreError> {
    let lease = store.grant(ttl.as_secs().max(1) as i64).await?;
    let value = serde_json::json!({
        "identity": identity,
        "since": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    });
    let txn = Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key,
            value.to_string(),
            Some(PutOptions::new().with_lease(lease)),
        )]);
    if store.txn("election txn", txn).await?.is_some() {
        return Ok(Some(lease));
    }
    store.revoke(lease).await?;
    Ok(None)
}

/// Give up leadership at shutdown so a standby takes over at once.
async fn resign(connector: &Connector, lease: i64) {
    match connector.connect().await {
        Ok(mut store) => match store.revoke(lease).await {
            Ok(()) => info!("resigned leadership"),
            Err(e) => {
                warn!(error = %e, "could not resign; a standby leads once the election lease expires")
            }
        },
        Err(e) => {
            warn!(error = %e, "could not resign; a standby leads once the election lease expires")
        }
    }
}
