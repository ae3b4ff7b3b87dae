//! Votes and revocations on the main loop: write the votes the heartbeat thread cast,
//! revoke a holder once a vote quorum of its witnesses stands in etcd (one transaction
//! that holds only while its record and every counted vote are unchanged), finish a
//! revocation whose lease still holds keys, and withdraw votes that no longer count.

use std::time::{Duration, Instant, SystemTime};

use tracing::{debug, info, warn};

use super::Agent;
use crate::model::{self, RevokedValue, VoteValue};
use crate::store::{RevocationTxn, Store, StoreError};
use crate::vouch::{revocation, HolderRecord, Vote};

/// How soon the same revocation is tried again when it did not commit.
const RETRY: Duration = Duration::from_millis(200);

fn now_text() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

impl Agent {
    /// Write a vote the heartbeat thread cast, then see whether it completes a quorum.
    /// Until etcd answers, the vote is kept and cast again after a reconnect: the
    /// heartbeat thread casts it only once, and a dead etcd member must not lose it.
    pub(super) async fn cast_vote(
        &mut self,
        store: &mut Store,
        vote: Vote,
    ) -> Result<(), StoreError> {
        self.unwritten_votes.insert(vote.holder.clone(), vote);
        self.try_revocations(store).await
    }

    /// Write the votes etcd has not answered yet (each against the record it names).
    async fn write_votes(&mut self, store: &mut Store) -> Result<(), StoreError> {
        let Some(lease) = self.lease else {
            return Ok(());
        };
        while let Some((holder, vote)) = self.unwritten_votes.pop_first() {
            let value = VoteValue {
                lease: model::lease_hex(vote.lease),
                revision: vote.revision,
                since: now_text(),
            };
            let bytes = serde_json::to_vec(&value).expect("vote serializes");
            let key = self.keys.vote(&holder, &self.cfg.node);
            let record = self.keys.node(&holder);
            match store
                .put_vote(&key, &bytes, lease, &record, vote.revision)
                .await
            {
                Ok(true) => {}
                Ok(false) => debug!(%holder, "vote not written: the holder's record moved on"),
                Err(e) => {
                    self.unwritten_votes.insert(holder, vote);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Revoke every holder whose votes make a quorum in the view; finish revocations
    /// whose lease still holds claims; withdraw our votes that no longer count.
    pub(super) async fn try_revocations(&mut self, store: &mut Store) -> Result<(), StoreError> {
        self.write_votes(store).await?;
        let now = Instant::now();
        self.revoking
            .retain(|_, at| now.duration_since(*at) < RETRY);
        let mut plans = Vec::new();
        for (holder, votes) in &self.view.votes {
            let (Some(node), Some(meta)) =
                (self.view.nodes.get(holder), self.view.records.get(holder))
            else {
                continue;
            };
            let record = HolderRecord {
                lease: meta.lease,
                revision: meta.revision,
                vouch: node.vouch.as_ref(),
                leaving: node.leaving,
            };
            let seen: Vec<_> = votes.values().cloned().collect();
            if let Some(plan) = revocation(holder, record, &seen) {
                plans.push(plan);
            }
        }
        for plan in plans {
            let key = (plan.holder.clone(), plan.record_revision);
            if self.revoking.contains_key(&key) {
                continue;
            }
            self.revoking.insert(key, now);
            self.revoke_holder(store, &plan).await?;
        }
        self.finish_revocations(store).await?;
        self.withdraw_stale_votes(store).await
    }

    async fn revoke_holder(
        &mut self,
        store: &mut Store,
        plan: &crate::vouch::Revocation,
    ) -> Result<(), StoreError> {
        let voters: Vec<String> = plan.votes.iter().map(|(v, _)| v.clone()).collect();
        let value = RevokedValue {
            lease: model::lease_hex(plan.lease),
            revision: plan.record_revision,
            voters: voters.clone(),
            by: self.cfg.node.clone(),
            since: now_text(),
        };
        let bytes = serde_json::to_vec(&value).expect("revoked value serializes");
        let record_key = self.keys.node(&plan.holder);
        let votes_prefix = self.keys.votes(&plan.holder);
        let revoked_key = self.keys.revoked(&plan.holder);
        let txn = RevocationTxn {
            record: (&record_key, plan.record_revision),
            votes: plan
                .votes
                .iter()
                .map(|(voter, rev)| (self.keys.vote(&plan.holder, voter), *rev))
                .collect(),
            votes_prefix: &votes_prefix,
            revoked: (&revoked_key, &bytes),
        };
        if store.revoke_holder(&txn).await?.is_none() {
            debug!(holder = %plan.holder, "revocation did not commit: its record or a vote changed");
            return Ok(());
        }
        match store.revoke(plan.lease).await {
            Ok(()) | Err(StoreError::LeaseNotFound(_)) => {}
            Err(e) => {
                warn!(error = %e, holder = %plan.holder, "lease not revoked yet; others finish it")
            }
        }
        self.metrics.peers.revocations.inc();
        warn!(
            holder = %plan.holder,
            lease = model::lease_hex(plan.lease),
            ?voters,
            "revoked a silent holder's lease: its witnesses voted, its IPs are free now"
        );
        Ok(())
    }

    /// A revocation recorded while its lease still holds claims: its revoker stopped
    /// between the transaction and the revoke. The transaction proved the holder dark.
    async fn finish_revocations(&mut self, store: &mut Store) -> Result<(), StoreError> {
        let unfinished: Vec<i64> = self
            .view
            .revoked
            .values()
            .copied()
            .filter(|lease| {
                self.view
                    .claims
                    .values()
                    .any(|slots| slots.values().any(|h| h.lease == *lease))
            })
            .filter(|lease| self.lease != Some(*lease))
            .collect();
        for lease in unfinished {
            let key = (format!("lease {lease:x}"), 0);
            if self.revoking.contains_key(&key) {
                continue;
            }
            self.revoking.insert(key, Instant::now());
            match store.revoke(lease).await {
                Ok(()) => info!(
                    lease = model::lease_hex(lease),
                    "finished a revocation: lease revoked"
                ),
                Err(StoreError::LeaseNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Our votes against a record that moved on (or went) count no more: delete them.
    async fn withdraw_stale_votes(&mut self, store: &mut Store) -> Result<(), StoreError> {
        let me = &self.cfg.node;
        let stale: Vec<(String, i64)> = self
            .view
            .votes
            .iter()
            .filter_map(|(holder, votes)| {
                let v = votes.get(me)?;
                let current = self.view.records.get(holder);
                let moot = current.is_none_or(|m| m.revision != v.revision || m.lease != v.lease);
                moot.then(|| (self.keys.vote(holder, me), v.mod_revision))
            })
            .collect();
        for (key, rev) in stale {
            store.delete_vote(&key, rev).await?;
        }
        Ok(())
    }

    /// The key that signs heartbeats: from the file, or created once under the prefix.
    pub(super) async fn load_secret(&mut self, store: &mut Store) -> Result<(), StoreError> {
        use crate::config::SecretSource;
        let Some(peers) = &self.cfg.peers else {
            return Ok(());
        };
        if self.secret.is_some() {
            return Ok(());
        }
        let bytes = match &peers.secret {
            SecretSource::File(path) => match crate::config::read_secret(path) {
                Ok(bytes) => bytes,
                Err(e) => {
                    warn!(error = %e, "no heartbeat secret: peers cannot vouch, lease only");
                    return Ok(());
                }
            },
            SecretSource::Etcd => {
                let mut fresh = [0u8; 32];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut fresh)
                    .map_err(|_| StoreError::Unexpected("no random bytes for the secret".into()))?;
                let hex: String = fresh.iter().map(|b| format!("{b:02x}")).collect();
                store
                    .get_or_create(&self.keys.secret(), hex.as_bytes())
                    .await?
            }
        };
        self.secret = Some(crate::vouch::wire::Secret::new(&bytes));
        Ok(())
    }
}
