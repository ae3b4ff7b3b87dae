//! extip-sync's etcd side: read pools, allocations and desired keys; run the
//! allocation transactions; write desired keys on the sync's lease.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use tracing::warn;

use crate::model::{
    parse_allocation_key, AllocationKey, IpAllocation, KeyKind, Keys, ServiceAllocation,
};
use crate::pools::{parse_pool, Pool};
use crate::store::{Store, StoreError};

use super::connector::Connector;
use super::free_ip::free_ip;
use super::plan::{AllocationStep, ExistingKey, KeyWrite, Refusal};

/// Attempts at one allocation before giving up for this round (each loses a race).
const ALLOCATION_TRIES: usize = 64;

/// What etcd holds that the sync works from.
#[derive(Debug, Default)]
pub struct EtcdState {
    /// Valid pools by name.
    pub pools: BTreeMap<String, Pool>,
    /// `<ns>/<name>` → its allocation and the key's mod revision.
    pub services: BTreeMap<String, (ServiceAllocation, i64)>,
    /// IP → its record (the Service keeping it, the sharing key) and the key's mod revision.
    pub ips: BTreeMap<IpAddr, (IpAllocation, i64)>,
    /// Desired keys, parsed enough to diff.
    pub desired: BTreeMap<IpAddr, ExistingKey>,
    /// Allocation transactions that lost a race since this state was read.
    pub races: u64,
    /// Records that could not be read, as (key, what is wrong): skipped, and the
    /// reconciler logs each once.
    pub bad: Vec<(String, String)>,
}

impl EtcdState {
    /// Service → allocation, without revisions.
    pub fn allocations(&self) -> BTreeMap<String, ServiceAllocation> {
        self.services
            .iter()
            .map(|(k, (a, _))| (k.clone(), a.clone()))
            .collect()
    }
}

/// Read pools, allocations and desired keys; bad records are logged with their key and skipped.
pub async fn read_state(store: &mut Store, keys: &Keys) -> Result<EtcdState, StoreError> {
    let mut state = EtcdState::default();
    for kv in store.list(&keys.pools()).await?.kvs {
        let name = kv.key.trim_start_matches(&keys.pools()).to_string();
        match parse_pool(&kv.value) {
            Ok((pool, _)) => {
                state.pools.insert(name, pool);
            }
            Err(e) => state
                .bad
                .push((kv.key.clone(), format!("bad pool, skipped: {e}"))),
        }
    }
    read_allocations(store, keys, &mut state).await?;
    for kv in store.list(&keys.desired_root()).await?.kvs {
        let Ok(Some(KeyKind::Desired(ip))) = keys.parse(&kv.key) else {
            continue;
        };
        // An unparsable value is not ours (we write JSON): it stays as it is, and a
        // Service asking for its IP does not overwrite it.
        let value = serde_json::from_slice(&kv.value).unwrap_or_else(|e| {
            let why = format!("desired value is not JSON, left alone: {e}");
            state.bad.push((kv.key.clone(), why));
            serde_json::Value::Null
        });
        let existing = ExistingKey {
            value,
            lease: kv.lease,
            mod_revision: kv.mod_revision,
        };
        state.desired.insert(ip, existing);
    }
    Ok(state)
}

async fn read_allocations(
    store: &mut Store,
    keys: &Keys,
    state: &mut EtcdState,
) -> Result<(), StoreError> {
    state.services.clear();
    state.ips.clear();
    let root = keys.allocations();
    for kv in store.list(&root).await?.kvs {
        let rest = &kv.key[root.len()..];
        let parsed = match parse_allocation_key(rest) {
            Some(AllocationKey::Service(svc)) => {
                serde_json::from_slice::<ServiceAllocation>(&kv.value).map(|a| {
                    state.services.insert(svc, (a, kv.mod_revision));
                })
            }
            Some(AllocationKey::Ip(ip)) => {
                serde_json::from_slice::<IpAllocation>(&kv.value).map(|a| {
                    state.ips.insert(ip, (a, kv.mod_revision));
                })
            }
            None => Ok(()),
        };
        if let Err(e) = parsed {
            let why = format!("bad allocation record, skipped: {e}");
            state.bad.push((kv.key.clone(), why));
        }
    }
    Ok(())
}

fn json(value: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// Compare that `key` is still at `mod_revision` (0: absent).
fn unchanged(key: &str, mod_revision: i64) -> Compare {
    Compare::mod_revision(key, CompareOp::Equal, mod_revision)
}

/// Run one allocation step. `Ok(Some(refusal))` when the Service cannot have what it asks.
pub async fn run_step(
    store: &mut Store,
    keys: &Keys,
    state: &mut EtcdState,
    step: &AllocationStep,
    retention: Duration,
) -> Result<Option<Refusal>, StoreError> {
    match step {
        AllocationStep::Take {
            service,
            ip,
            pool,
            requested,
            sharing_key,
        } => {
            let wanted = ServiceAllocation {
                ip: *ip,
                pool: pool.clone(),
                requested: *requested,
                released_at: None,
            };
            let key = sharing_key.as_deref();
            let refused = take(store, keys, state, (service, key), wanted).await?;
            // A returning Service whose kept IP was meanwhile asked for by another
            // (explicitly): it gets a new one from its pool instead.
            match (refused, pool) {
                (Some(r), Some(pool)) if !requested && r.reason == "IPInUse" => {
                    allocate(store, keys, state, (service, key), pool).await
                }
                (refused, _) => Ok(refused),
            }
        }
        AllocationStep::Allocate {
            service,
            pool,
            sharing_key,
        } => allocate(store, keys, state, (service, sharing_key.as_deref()), pool).await,
        AllocationStep::Release { service } => release(store, keys, state, service, retention)
            .await
            .map(|()| None),
    }
}

/// A Service (`namespace/name`) and its sharing key.
type Claimant<'a> = (&'a str, Option<&'a str>);

/// Whether `service` holds `ip` now (not released).
fn lives_on(state: &EtcdState, service: &str, ip: IpAddr) -> bool {
    state
        .services
        .get(service)
        .is_some_and(|(a, _)| a.released_at.is_none() && a.ip == ip)
}

/// Give `service` the IP in `wanted` unless another live Service has it and may not
/// share it with `service`.
async fn take(
    store: &mut Store,
    keys: &Keys,
    state: &mut EtcdState,
    (service, key): Claimant<'_>,
    wanted: ServiceAllocation,
) -> Result<Option<Refusal>, StoreError> {
    for _ in 0..ALLOCATION_TRIES {
        if let Some((record, _)) = state
            .ips
            .get(&wanted.ip)
            .filter(|(r, _)| r.service != service)
        {
            let owner = &record.service;
            if lives_on(state, owner, wanted.ip) && !record.shareable_by(service, key) {
                return Ok(Some(Refusal {
                    service: service.to_string(),
                    reason: "IPInUse",
                    message: format!("IP {} is allocated to Service {owner}", wanted.ip),
                }));
            }
        }
        if commit(store, keys, state, (service, key), &wanted).await? {
            return Ok(None);
        }
    }
    Ok(None)
}

/// Give `service` the first free IP of `pool`, racing other syncs safely.
async fn allocate(
    store: &mut Store,
    keys: &Keys,
    state: &mut EtcdState,
    (service, key): Claimant<'_>,
    pool: &str,
) -> Result<Option<Refusal>, StoreError> {
    for _ in 0..ALLOCATION_TRIES {
        if state
            .services
            .get(service)
            .is_some_and(|(a, _)| a.released_at.is_none() && !a.requested)
        {
            return Ok(None); // another sync allocated it meanwhile
        }
        let Some(p) = state.pools.get(pool) else {
            return Ok(None);
        };
        let taken: BTreeSet<IpAddr> = state.ips.keys().copied().collect();
        let Some(ip) = free_ip(p, &taken, service) else {
            return Ok(Some(Refusal {
                service: service.to_string(),
                reason: "PoolExhausted",
                message: format!("pool `{pool}` ({}) has no free IP", p.cidr),
            }));
        };
        let wanted = ServiceAllocation {
            ip,
            pool: Some(pool.to_string()),
            requested: false,
            released_at: None,
        };
        if commit(store, keys, state, (service, key), &wanted).await? {
            return Ok(None);
        }
    }
    Ok(None)
}

/// Write both allocation keys (no lease: they stay while the Service does) if nothing
/// changed since `state` was read; frees the Service's previous IP in the same txn.
/// Joining an IP that another live Service of its sharing group keeps writes only the
/// Service's key, the IP's record unchanged (and compared, so a concurrent release
/// cannot slip between). `state` is updated in place on success and re-read on a lost
/// race, so a reconcile of many Services reads the allocations once, not once per Service.
async fn commit(
    store: &mut Store,
    keys: &Keys,
    state: &mut EtcdState,
    (service, key): Claimant<'_>,
    wanted: &ServiceAllocation,
) -> Result<bool, StoreError> {
    let svc_key = keys.service_allocation(service);
    let ip_key = keys.ip_allocation(wanted.ip);
    let svc_rev = state.services.get(service).map_or(0, |(_, r)| *r);
    let ip_rev = state.ips.get(&wanted.ip).map_or(0, |(_, r)| *r);
    let mut compares = vec![unchanged(&svc_key, svc_rev), unchanged(&ip_key, ip_rev)];
    let kept_by_another = state
        .ips
        .get(&wanted.ip)
        .map(|(r, _)| r.clone())
        .filter(|r| r.service != service && lives_on(state, &r.service, wanted.ip));
    let record = kept_by_another.clone().unwrap_or(IpAllocation {
        service: service.to_string(),
        sharing_key: key.map(str::to_string),
    });
    let mut ops = vec![TxnOp::put(svc_key, json(wanted), None)];
    if kept_by_another.is_none() {
        ops.push(TxnOp::put(ip_key, json(&record), None));
    }
    let previous = state
        .services
        .get(service)
        .map(|(a, _)| a.ip)
        .filter(|ip| *ip != wanted.ip);
    let kept_old = previous.filter(|old| {
        state
            .ips
            .get(old)
            .is_some_and(|(r, _)| r.service == service)
    });
    let mut freed = None;
    let passed = kept_old.is_some();
    if let Some(old) = kept_old {
        // Leaving a shared IP hands its record on; leaving one's own IP frees it.
        match heir(state, service, old) {
            Some(h) => {
                let (more, op) = pass_record(keys, state, old, &h);
                compares.extend(more);
                ops.push(op);
            }
            None => {
                let old_key = keys.ip_allocation(old);
                compares.push(unchanged(&old_key, state.ips[&old].1));
                ops.push(TxnOp::delete(old_key, None));
                freed = Some(old);
            }
        }
    }
    match store
        .txn("allocation txn", Txn::new().when(compares).and_then(ops))
        .await?
    {
        Some(rev) => {
            if let Some(old) = freed {
                state.ips.remove(&old);
            }
            state
                .services
                .insert(service.to_string(), (wanted.clone(), rev));
            let ip_rev = if kept_by_another.is_some() {
                ip_rev
            } else {
                rev
            };
            state.ips.insert(wanted.ip, (record, ip_rev));
            if passed && freed.is_none() {
                read_allocations(store, keys, state).await?; // the old record changed hands
            }
            Ok(true)
        }
        None => {
            tracing::debug!(service, ip = %wanted.ip, "allocation lost a race; re-reading");
            state.races += 1;
            read_allocations(store, keys, state).await?;
            Ok(false)
        }
    }
}

/// Another Service living on `ip` than `service`, with its key's revision: the heir of
/// the IP's record when `service` leaves a shared IP.
fn heir(state: &EtcdState, service: &str, ip: IpAddr) -> Option<(String, i64)> {
    state
        .services
        .iter()
        .find(|(other, (a, _))| other.as_str() != service && a.released_at.is_none() && a.ip == ip)
        .map(|(other, (_, rev))| (other.clone(), *rev))
}

/// Hand the record of `ip`, kept by `service`, to `heir`: compares and the put.
fn pass_record(
    keys: &Keys,
    state: &EtcdState,
    ip: IpAddr,
    (heir, heir_rev): &(String, i64),
) -> (Vec<Compare>, TxnOp) {
    let ip_key = keys.ip_allocation(ip);
    let (record, rev) = state.ips[&ip].clone();
    let compares = vec![
        unchanged(&ip_key, rev),
        unchanged(&keys.service_allocation(heir), *heir_rev),
    ];
    let record = IpAllocation {
        service: heir.clone(),
        ..record
    };
    (compares, TxnOp::put(ip_key, json(&record), None))
}

/// Keep a gone Service's IP for `retention` on a lease of that length, so the same
/// namespace/name gets it back; etcd removes both keys when the lease runs out.
async fn release(
    store: &mut Store,
    keys: &Keys,
    state: &mut EtcdState,
    service: &str,
    retention: Duration,
) -> Result<(), StoreError> {
    let Some((a, svc_rev)) = state.services.get(service).cloned() else {
        return Ok(());
    };
    let lease = store.grant(retention.as_secs().max(1) as i64).await?;
    let released = ServiceAllocation {
        released_at: Some(
            humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        ),
        ..a.clone()
    };
    let svc_key = keys.service_allocation(service);
    let on_lease = || Some(PutOptions::new().with_lease(lease));
    let mut compares = vec![unchanged(&svc_key, svc_rev)];
    let mut ops = vec![TxnOp::put(svc_key, json(&released), on_lease())];
    if let Some((record, rev)) = state.ips.get(&a.ip).filter(|(r, _)| r.service == service) {
        // A shared IP outlives this Service: its record passes to one still on it.
        match heir(state, service, a.ip) {
            Some(h) => {
                let (more, op) = pass_record(keys, state, a.ip, &h);
                compares.extend(more);
                ops.push(op);
            }
            None => {
                let ip_key = keys.ip_allocation(a.ip);
                compares.push(unchanged(&ip_key, *rev));
                ops.push(TxnOp::put(ip_key, json(record), on_lease()));
            }
        }
    }
    if store
        .txn("release txn", Txn::new().when(compares).and_then(ops))
        .await?
        .is_some()
    {
        tracing::info!(service, ip = %a.ip, ?retention, "Service gone: its IP is kept for it for the retention window");
    } else {
        store.revoke(lease).await?;
    }
    read_allocations(store, keys, state).await
}

/// Apply desired-key writes on `lease`, each guarded by the revision it was planned from.
/// Returns how many were skipped because the key changed meanwhile.
pub async fn write_keys(
    store: &mut Store,
    keys: &Keys,
    writes: &[KeyWrite],
    lease: i64,
) -> Result<usize, StoreError> {
    let mut raced = 0;
    for w in writes {
        let (key, rev, op) = match w {
            KeyWrite::Put {
                ip,
                value,
                mod_revision,
            } => {
                let key = keys.desired(*ip);
                let op = TxnOp::put(
                    key.clone(),
                    json(value),
                    Some(PutOptions::new().with_lease(lease)),
                );
                (key, *mod_revision, op)
            }
            KeyWrite::Delete { ip, mod_revision } => {
                let key = keys.desired(*ip);
                (key.clone(), *mod_revision, TxnOp::delete(key, None))
            }
        };
        let txn = Txn::new().when([unchanged(&key, rev)]).and_then([op]);
        if store.txn("desired key txn", txn).await?.is_none() {
            raced += 1;
        }
    }
    Ok(raced)
}

/// Send on `changed` whenever a pool is written or removed (and after each (re)start of
/// the watch, which may have missed some): a Service waiting for a pool gets its IP at
/// once instead of at the next resync.
pub async fn watch_pools(connector: Connector, changed: tokio::sync::mpsc::Sender<()>) {
    loop {
        let Err(why) = pool_changes(&connector, &changed).await;
        warn!(error = %why, "pool watch ended; restarting");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn pool_changes(
    connector: &Connector,
    changed: &tokio::sync::mpsc::Sender<()>,
) -> Result<std::convert::Infallible, StoreError> {
    let mut store = connector.connect().await?;
    let mut watch = store.watch(&connector.keys.pools(), 0).await?;
    let _ = changed.try_send(());
    loop {
        let (_, changes) = watch.next().await?;
        if !changes.is_empty() {
            let _ = changed.try_send(());
        }
    }
}
