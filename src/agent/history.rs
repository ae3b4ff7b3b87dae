//! `<prefix>/history/<ip>`: the last holders of each IP, for `extip status`. Written
//! [`HISTORY_DELAY`] after a takeover (never between a claim and its address), one
//! compare-and-put per IP this agent won, many to a transaction; a race with another
//! writer loses one entry, never the IP.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use tracing::debug;

use super::Agent;
use crate::model::{push_history, HistoryEntry};
use crate::store::{Store, StoreError, MAX_BATCH};

/// How long the history of a takeover waits: when a host is lost, every survivor's
/// history writes (one per IP taken) and their watch events went to etcd while the
/// slower survivors' claims were still waiting for it. An operator reading `extip
/// status` does not see a second.
pub const HISTORY_DELAY: Duration = Duration::from_secs(1);

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
