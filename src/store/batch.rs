//! Many guarded writes in one etcd transaction: each is a nested transaction with its
//! own compare, so one key that exists (or changed) costs only its own write.

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};

use super::{within, CreateOutcome, RawKv, Store, StoreError};

/// Most keys one batched transaction creates: etcd refuses a transaction with more
/// operations than its `--max-txn-ops` (128 by default), and gives each nested
/// transaction what the outer one leaves of it (ours take one). 120 holds a survivor's
/// share of a lost host with 1,000 IPs among 10 in one round trip, where 100 took two.
pub const MAX_BATCH: usize = 120;

impl Store {
    /// Run `txns` as nested transactions of one transaction per [`MAX_BATCH`]: each
    /// compares and acts on its own, so one failing compare costs only its own write.
    /// One response per transaction, in order, and the store revision after each batch.
    async fn run_nested(
        &mut self,
        txns: Vec<Txn>,
        what: &'static str,
    ) -> Result<Vec<(etcd_client::TxnResponse, i64)>, StoreError> {
        let mut out = Vec::with_capacity(txns.len());
        let mut start = 0;
        while start < txns.len() {
            let end = (start + self.batch).min(txns.len());
            let ops: Vec<TxnOp> = txns[start..end].iter().cloned().map(TxnOp::txn).collect();
            let sent = ops.len();
            let request = self.client.txn(Txn::new().and_then(ops));
            let resp = match within(self.timeout, what, request).await {
                // etcd runs with a --max-txn-ops below our batch: smaller batches.
                Err(StoreError::Request { source, .. })
                    if self.batch > 1 && source.to_string().contains("too many operations") =>
                {
                    self.batch /= 2;
                    tracing::warn!(
                        batch = self.batch,
                        "etcd refused the batch (its --max-txn-ops is lower); smaller batches"
                    );
                    continue;
                }
                other => other?,
            };
            let revision = resp.header().map_or(0, |h| h.revision());
            let inner: Vec<_> = resp
                .op_responses()
                .into_iter()
                .filter_map(|r| match r {
                    etcd_client::TxnOpResponse::Txn(t) => Some((t, revision)),
                    _ => None,
                })
                .collect();
            if inner.len() != sent {
                return Err(StoreError::Unexpected(format!(
                    "{what}: {sent} nested transactions, {} answers",
                    inner.len()
                )));
            }
            out.extend(inner);
            start = end;
        }
        Ok(out)
    }

    /// Create each `(key, value)` on `lease` only if that key does not exist, many to a
    /// transaction ([`Store::run_nested`]): every key wins or loses on its own.
    /// Outcomes in the order of `entries`.
    pub async fn create_many_if_absent(
        &mut self,
        entries: &[(String, Vec<u8>)],
        lease: i64,
    ) -> Result<Vec<CreateOutcome>, StoreError> {
        let txns = entries
            .iter()
            .map(|(key, value)| {
                Txn::new()
                    .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(
                        key.as_str(),
                        value.as_slice(),
                        Some(PutOptions::new().with_lease(lease)),
                    )])
                    .or_else([TxnOp::get(key.as_str(), None)])
            })
            .collect();
        let answers = self.run_nested(txns, "claim batch txn").await?;
        Ok(answers
            .into_iter()
            .map(|(inner, revision)| CreateOutcome {
                created: inner.succeeded(),
                revision,
                existing: inner.op_responses().into_iter().find_map(|r| match r {
                    etcd_client::TxnOpResponse::Get(g) => g.kvs().first().map(RawKv::from),
                    _ => None,
                }),
            })
            .collect())
    }

    /// Put each `(key, value)` only if the key's last change is still its `mod_revision`
    /// (0: absent), many to a transaction; whether each was written, in order.
    pub async fn put_many_if_unchanged(
        &mut self,
        entries: &[(String, Vec<u8>, i64)],
    ) -> Result<Vec<bool>, StoreError> {
        let txns = entries
            .iter()
            .map(|(key, value, revision)| {
                Txn::new()
                    .when([Compare::mod_revision(
                        key.as_str(),
                        CompareOp::Equal,
                        *revision,
                    )])
                    .and_then([TxnOp::put(key.as_str(), value.as_slice(), None)])
            })
            .collect();
        let answers = self.run_nested(txns, "history batch txn").await?;
        Ok(answers.into_iter().map(|(t, _)| t.succeeded()).collect())
    }
}
