//! How extip-sync's tasks reach etcd: below the rest of `src/sync/`, so the election,
//! the reconciler and the pool watch share it without importing the module root.

use std::time::Duration;

use crate::model::Keys;
use crate::store::{EtcdAuth, Store, StoreError};

/// Bound on connecting to etcd and on every request.
pub const ETCD_TIMEOUT: Duration = Duration::from_secs(5);

/// How to reach etcd; each task opens its own connection.
#[derive(Clone)]
pub struct Connector {
    /// Endpoints, tried in order.
    pub endpoints: Vec<String>,
    /// Credentials.
    pub auth: EtcdAuth,
    /// The key layout.
    pub keys: Keys,
}

impl Connector {
    /// A connection to the first endpoint that answers.
    pub async fn connect(&self) -> Result<Store, StoreError> {
        let probe = self.keys.sync_leader();
        Store::connect_any(
            &self.endpoints,
            0,
            ETCD_TIMEOUT,
            ETCD_TIMEOUT,
            &self.auth,
            &probe,
        )
        .await
        .map(|(store, _)| store)
    }
}
