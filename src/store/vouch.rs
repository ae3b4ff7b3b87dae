//! The transactions of peer vouching: node records written only over what their writer
//! last saw, votes written only against the record they name, revocations that hold
//! only while the record and every counted vote are unchanged, the cluster secret.

use std::time::Duration;

use etcd_client::{Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp};

use super::{end_of_prefix, within, RawKv, Store, StoreError};

/// What a node record write compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordExpect {
    /// The record is at this `mod_revision` (the writer's last write, or what it read).
    Revision(i64),
    /// The record does not hang on this lease (absent, or a previous run's): the first
    /// write on a fresh lease.
    NotOnLease(i64),
}

/// How a guarded record write ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordWrite {
    /// Written at this revision.
    Written(i64),
    /// The compare failed; the record as it is now (`None`: absent).
    Refused(Option<RawKv>),
}

/// The compares and writes of one revocation.
#[derive(Debug, Clone)]
pub struct RevocationTxn<'a> {
    /// The holder's record key and the revision the votes are against.
    pub record: (&'a str, i64),
    /// Each counted vote key and its `mod_revision`.
    pub votes: Vec<(String, i64)>,
    /// Every vote against the holder, deleted with the record.
    pub votes_prefix: &'a str,
    /// Where the revocation is recorded, and the value.
    pub revoked: (&'a str, &'a [u8]),
}

/// The longest a vote or a revocation waits for etcd. Both are a few bytes and a
/// failover waits on them: on a dead member the connection is dropped after this long
/// (not the longer request timeout) and the agent tries them again on the next one.
const QUICK_TIMEOUT: Duration = Duration::from_secs(1);

impl Store {
    /// A transaction a failover waits on; its revision when the compares held.
    async fn quick_txn(&mut self, op: &'static str, txn: Txn) -> Result<Option<i64>, StoreError> {
        self.txn_within(self.timeout.min(QUICK_TIMEOUT), op, txn)
            .await
    }

    /// Put a node record on `lease` only if `expect` holds.
    pub async fn put_record(
        &mut self,
        key: &str,
        value: &[u8],
        lease: i64,
        expect: RecordExpect,
    ) -> Result<RecordWrite, StoreError> {
        let compare = match expect {
            RecordExpect::Revision(r) => Compare::mod_revision(key, CompareOp::Equal, r),
            RecordExpect::NotOnLease(l) => Compare::lease(key, CompareOp::NotEqual, l),
        };
        let put = TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease)));
        let txn = Txn::new()
            .when([compare])
            .and_then([put])
            .or_else([TxnOp::get(key, None)]);
        let resp = within(self.timeout, "node record txn", self.client.txn(txn)).await?;
        if resp.succeeded() {
            return Ok(RecordWrite::Written(
                resp.header().map_or(0, |h| h.revision()),
            ));
        }
        let current = resp.op_responses().into_iter().find_map(|r| match r {
            etcd_client::TxnOpResponse::Get(g) => Some(g.kvs().first().map(RawKv::from)),
            _ => None,
        });
        Ok(RecordWrite::Refused(current.flatten()))
    }

    /// Put a vote on the voter's `lease`, only while the holder's record is at
    /// `revision`; whether it was written.
    pub async fn put_vote(
        &mut self,
        vote_key: &str,
        value: &[u8],
        lease: i64,
        record_key: &str,
        revision: i64,
    ) -> Result<bool, StoreError> {
        let txn = Txn::new()
            .when([Compare::mod_revision(
                record_key,
                CompareOp::Equal,
                revision,
            )])
            .and_then([TxnOp::put(
                vote_key,
                value,
                Some(PutOptions::new().with_lease(lease)),
            )]);
        Ok(self.quick_txn("vote txn", txn).await?.is_some())
    }

    /// Delete a vote only while it is at `mod_revision` (it no longer counts).
    pub async fn delete_vote(&mut self, key: &str, mod_revision: i64) -> Result<(), StoreError> {
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, mod_revision)])
            .and_then([TxnOp::delete(key, None)]);
        self.txn("vote delete txn", txn).await.map(|_| ())
    }

    /// The revocation transaction; its revision when every compare held.
    pub async fn revoke_holder(
        &mut self,
        r: &RevocationTxn<'_>,
    ) -> Result<Option<i64>, StoreError> {
        let mut compares = vec![Compare::mod_revision(
            r.record.0,
            CompareOp::Equal,
            r.record.1,
        )];
        compares.extend(
            r.votes
                .iter()
                .map(|(key, rev)| Compare::mod_revision(key.as_str(), CompareOp::Equal, *rev)),
        );
        let delete_votes = DeleteOptions::new().with_range(end_of_prefix(r.votes_prefix));
        let ops = [
            TxnOp::delete(r.record.0, None),
            TxnOp::delete(r.votes_prefix, Some(delete_votes)),
            TxnOp::put(r.revoked.0, r.revoked.1, None),
        ];
        self.quick_txn("revocation txn", Txn::new().when(compares).and_then(ops))
            .await
    }

    /// The value at `key`, created from `fresh` if there was none (one transaction, so
    /// agents starting together agree on one value).
    pub async fn get_or_create(&mut self, key: &str, fresh: &[u8]) -> Result<Vec<u8>, StoreError> {
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, fresh, None)])
            .or_else([TxnOp::get(key, None::<GetOptions>)]);
        let resp = within(self.timeout, "secret txn", self.client.txn(txn)).await?;
        if resp.succeeded() {
            return Ok(fresh.to_vec());
        }
        resp.op_responses()
            .into_iter()
            .find_map(|r| match r {
                etcd_client::TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
                _ => None,
            })
            .ok_or_else(|| StoreError::Unexpected(format!("{key}: neither created nor found")))
    }
}
