//! `<prefix>/history/<ip>`: the last holders of each IP, for `extip status`. Written
//! after the reconcile that won the claims (never between a claim and its address), or
//! [`HISTORY_DELAY`] later for a big takeover; one compare-and-put per IP this agent
//! won, many to a transaction; a race with another writer loses one entry, never the IP.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use tracing::debug;

use super::Agent;
use crate::model::{push_history, HistoryEntry};
use crate::store::{Store, StoreError, MAX_BATCH};

/// How long the history of a big takeover waits: when a host with many IPs is lost,
/// the survivors done first sent their history writes (one per IP taken) and their
/// watch events to etcd while the slower survivors' claims still waited for it.
pub const HISTORY_DELAY: Duration = Duration::from_secs(1);

/// A takeover of at most this many IPs writes its history at once, as an operator
/// watching `extip status` expects (and a holder that dies a moment later still leaves
/// its entry); a bigger one waits [`HISTORY_DELAY`].
pub const HISTORY_AT_ONCE: usize = 16;

impl Agent {
    /// Append this node to the history of every IP it won since the last call.
    pub(super) async fn publish_history(&mut self, store: &mut Store) -> Result<(), StoreError> {
        self.history_at = None;
        let since = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let due: Vec<IpAddr> = std::mem::take(&mut self.history_due).into_iter().collect();
        let entries: Vec<(String, Vec<u8>, i64)> = due
            .iter()
            .map(|&ip| {
                let (history, revision) = self.view.history.get(&ip).cloned().unwrap_or_default();
                let entry = HistoryEntry {
                    node: self.cfg.node.clone(),
                    since: since.clone(),
                };
                let value =
                    serde_json::to_vec(&push_history(history, entry)).expect("history serializes");
                (self.keys.history(ip), value, revision)
            })
            .collect();
        for (chunk, ips) in entries.chunks(MAX_BATCH).zip(due.chunks(MAX_BATCH)) {
            let written = store.put_many_if_unchanged(chunk).await?;
            for (ip, _) in ips.iter().zip(written).filter(|(_, w)| !w) {
                debug!(%ip, "history changed meanwhile; this takeover is not recorded");
            }
            // A thousand writes after a big takeover must not starve the lifetimes.
            self.refresh_if_urgent().await;
        }
        Ok(())
    }
}
