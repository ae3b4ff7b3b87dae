//! Whether a view kept up to date by a watch still matches etcd, judged from a
//! [`PrefixSummary`] (key count and newest change) instead of a full list: an idle
//! agent at 10,000 IPs listed 20,000 keys every resync to learn that nothing changed.
//!
//! A missed creation or update leaves a key newer than anything the watch delivered; a
//! missed deletion leaves fewer keys than counted. Either shows in the summary.

use crate::store::{Change, PrefixSummary, Snapshot};

/// The key count and newest revision a view has seen, list plus watched changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyTally {
    /// Revision of the last full list: changes at or below it are in its count.
    listed_at: i64,
    /// Keys under the prefix as the view knows them.
    count: i64,
    /// Newest revision seen: the list's, or a later change's.
    newest: i64,
}

impl KeyTally {
    /// The tally of a fresh list.
    pub fn listed(snapshot: &Snapshot) -> Self {
        KeyTally {
            listed_at: snapshot.revision,
            count: snapshot.kvs.len() as i64,
            newest: snapshot.revision,
        }
    }

    /// Count one watched change (changes already in the list are skipped).
    pub fn observe(&mut self, change: &Change) {
        let revision = match change {
            Change::Put(kv) => kv.mod_revision,
            Change::Delete { revision, .. } => *revision,
        };
        if revision <= self.listed_at {
            return;
        }
        match change {
            Change::Put(kv) if kv.create_revision == kv.mod_revision => self.count += 1,
            Change::Put(_) => {}
            Change::Delete { .. } => self.count -= 1,
        }
        self.newest = self.newest.max(revision);
    }

    /// Whether etcd holds what the view holds: as many keys, none changed later.
    pub fn matches(&self, summary: PrefixSummary) -> bool {
        summary.count == self.count && summary.newest <= self.newest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RawKv;

    fn put(key: &str, created: i64, modified: i64) -> Change {
        Change::Put(RawKv {
            key: key.into(),
            value: vec![],
            lease: 0,
            mod_revision: modified,
            create_revision: created,
        })
    }

    fn listed(revision: i64, keys: &[(&str, i64)]) -> KeyTally {
        let kvs = keys
            .iter()
            .map(|&(k, rev)| match put(k, rev, rev) {
                Change::Put(kv) => kv,
                Change::Delete { .. } => unreachable!(),
            })
            .collect();
        KeyTally::listed(&Snapshot { revision, kvs })
    }

    fn summary(count: i64, newest: i64) -> PrefixSummary {
        PrefixSummary { count, newest }
    }

    #[test]
    fn an_untouched_list_matches_until_something_is_missed() {
        let tally = listed(10, &[("a", 3), ("b", 7)]);
        assert!(tally.matches(summary(2, 7)));
        assert!(!tally.matches(summary(2, 11)), "an update after the list");
        assert!(!tally.matches(summary(1, 7)), "a deletion after the list");
        assert!(!tally.matches(summary(3, 11)), "a creation after the list");
    }

    #[test]
    fn watched_creations_updates_and_deletions_are_counted() {
        let mut tally = listed(10, &[("a", 3), ("b", 7)]);
        tally.observe(&put("c", 11, 11));
        tally.observe(&put("a", 3, 12));
        tally.observe(&Change::Delete {
            key: "b".into(),
            revision: 13,
        });
        assert!(tally.matches(summary(2, 12)));
        assert!(!tally.matches(summary(2, 14)), "a missed change after 13");
        assert!(!tally.matches(summary(3, 12)), "the deletion was not seen");
    }

    #[test]
    fn changes_the_list_already_holds_are_not_counted_twice() {
        let mut tally = listed(10, &[("a", 3), ("c", 9)]);
        tally.observe(&put("c", 9, 9));
        tally.observe(&Change::Delete {
            key: "gone".into(),
            revision: 8,
        });
        assert!(tally.matches(summary(2, 9)));
    }

    #[test]
    fn a_recreated_key_counts_once_per_life() {
        let mut tally = listed(10, &[("a", 3)]);
        tally.observe(&Change::Delete {
            key: "a".into(),
            revision: 11,
        });
        tally.observe(&put("a", 12, 12));
        tally.observe(&put("a", 12, 13));
        assert!(tally.matches(summary(1, 13)));
    }
}
