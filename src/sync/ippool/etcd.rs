//! The etcd side of IpPools: read the pool keys and node records, write the pools of
//! accepted IpPools and delete those of deleted ones, each guarded by its revision.

use std::collections::BTreeMap;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};

use crate::model::{parse_node, Keys, NodeValue};
use crate::pools::parse_pool;
use crate::store::{Store, StoreError};

use super::plan::{EtcdPool, PoolWrite};

/// Every key under `<prefix>/pools/` (a bad value still holds its name) and every node
/// record that reads.
pub async fn read_pools(
    store: &mut Store,
    keys: &Keys,
) -> Result<(BTreeMap<String, EtcdPool>, Vec<NodeValue>), StoreError> {
    let mut pools = BTreeMap::new();
    for kv in store.list(&keys.pools()).await?.kvs {
        let name = kv.key.trim_start_matches(&keys.pools()).to_string();
        let pool = parse_pool(&kv.value).ok().map(|(p, _)| p);
        let mod_revision = kv.mod_revision;
        pools.insert(name, EtcdPool { pool, mod_revision });
    }
    let nodes = store
        .list(&keys.nodes())
        .await?
        .kvs
        .iter()
        .filter_map(|kv| parse_node(&kv.value).ok())
        .collect();
    Ok((pools, nodes))
}

/// Run `writes`, each in its own transaction; how many lost a race (the key changed
/// since it was read: the next reconcile plans again from what is there).
pub async fn write_pools(
    store: &mut Store,
    keys: &Keys,
    writes: &[PoolWrite],
) -> Result<usize, StoreError> {
    let mut raced = 0;
    for write in writes {
        let (key, revision, op) = match write {
            PoolWrite::Put {
                name,
                value,
                mod_revision,
            } => {
                let key = keys.pool(name);
                let op = TxnOp::put(key.as_str(), value.as_slice(), None);
                (key, *mod_revision, op)
            }
            PoolWrite::Delete { name, mod_revision } => {
                let key = keys.pool(name);
                let op = TxnOp::delete(key.as_str(), None);
                (key, *mod_revision, op)
            }
        };
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                revision,
            )])
            .and_then([op]);
        if store.txn("ippool txn", txn).await?.is_none() {
            raced += 1;
        }
    }
    Ok(raced)
}
