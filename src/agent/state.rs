//! The agent's state file: the lease it holds, so that a restarted or re-executed
//! agent re-attaches to it (and keeps its claims and addresses) while etcd still has it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use super::Agent;

#[derive(Debug, Serialize, Deserialize)]
struct LeaseRecord {
    node: String,
    lease: i64,
}

/// `<state-dir>/lease.json`.
pub struct LeaseFile {
    path: PathBuf,
}

impl LeaseFile {
    /// The lease file in `dir`.
    pub fn new(dir: &Path) -> Self {
        LeaseFile {
            path: dir.join("lease.json"),
        }
    }

    /// The lease a previous run of `node` held, if it left one.
    pub fn load(&self, node: &str) -> Option<i64> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        match serde_json::from_str::<LeaseRecord>(&text) {
            Ok(r) if r.node == node => Some(r.lease),
            Ok(r) => {
                warn!(path = %self.path.display(), other = %r.node, "lease file of another node ignored");
                None
            }
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, "unreadable lease file ignored");
                None
            }
        }
    }

    /// Remember `lease`; written to a temporary file and renamed, so never half written.
    pub fn save(&self, node: &str, lease: i64) {
        let record = LeaseRecord {
            node: node.to_string(),
            lease,
        };
        let tmp = self.path.with_extension("json.tmp");
        let written = std::fs::create_dir_all(self.path.parent().unwrap_or(Path::new(".")))
            .and_then(|()| std::fs::write(&tmp, serde_json::to_vec(&record).expect("record")))
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            warn!(path = %self.path.display(), error = %e, "cannot save the lease; a restart will move IPs");
        }
    }

    /// Forget the lease (it was revoked).
    pub fn clear(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Agent {
    /// At start: keep the addresses of a previous run if its lease may still live
    /// (checked with etcd before anything is added); else remove them, unbacked.
    pub(super) async fn adopt_or_clean(&mut self) {
        match self.lease_file.load(&self.cfg.node) {
            Some(lease) => {
                info!(
                    lease = format!("{lease:x}"),
                    "found the previous run's lease; re-attaching"
                );
                self.lease = Some(lease);
            }
            None => self.drop_addresses("startup: no lease yet", true).await,
        }
    }

    /// Replace this process with the binary at the path it started from (an upgrade).
    /// Addresses stay, the lease file lets the new image re-attach, and what etcd holds
    /// of our record goes along (a revocable record turns lease-only first, with etcd at
    /// hand), so the new process keeps the fence open. Returns on failure.
    pub(super) async fn reexec(&mut self, store: Option<&mut crate::store::Store>) {
        use std::os::unix::process::CommandExt;
        let Some(exe) = self.exe.clone() else {
            return error!("cannot re-execute: own path unknown");
        };
        if let Some(lease) = self.lease {
            self.lease_file.save(&self.cfg.node, lease);
        }
        let handoff = match store {
            Some(store) => self.prepare_handoff(store).await,
            None => None,
        };
        let mut command = std::process::Command::new(&exe);
        command.args(&self.args);
        if let Some(handoff) = handoff {
            command.env(super::HANDOFF_ENV, handoff);
        }
        let err = command.exec();
        error!(exe = %exe.display(), error = %err, "re-execute failed; running on");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_lease_is_loaded_only_for_the_same_node() {
        let dir = std::env::temp_dir().join(format!("extip-state-{}", std::process::id()));
        let file = LeaseFile::new(&dir);
        assert_eq!(file.load("h1"), None);
        file.save("h1", 0x1234);
        assert_eq!(file.load("h1"), Some(0x1234));
        assert_eq!(file.load("h2"), None);
        file.clear();
        assert_eq!(file.load("h1"), None);
        std::fs::write(dir.join("lease.json"), "garbage").unwrap();
        assert_eq!(file.load("h1"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
