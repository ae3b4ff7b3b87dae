//! When the votes against a holder make a quorum: the transaction that revokes it.

use super::vote_quorum;
use super::witness::HolderRecord;

/// A vote as read from etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenVote {
    /// The witness that cast it (the key's last segment).
    pub voter: String,
    /// The lease it names.
    pub lease: i64,
    /// The record revision it names.
    pub revision: i64,
    /// The vote key's own `mod_revision`, which the transaction compares.
    pub mod_revision: i64,
}

/// The compares of one revocation transaction: the holder's record still at
/// `record_revision` and each counted vote key still at its revision. On success it
/// deletes the record and the votes; the caller revokes `lease` after it committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// The holder.
    pub holder: String,
    /// Its lease, revoked after the transaction.
    pub lease: i64,
    /// Its record's revision the votes are against.
    pub record_revision: i64,
    /// The votes counted: (voter, the vote key's `mod_revision`).
    pub votes: Vec<(String, i64)>,
}

/// The revocation the votes allow, if they make a quorum of the witnesses `record`
/// lists: only votes naming the record's lease and revision count, one per witness.
pub fn revocation(
    holder: &str,
    record: HolderRecord<'_>,
    votes: &[SeenVote],
) -> Option<Revocation> {
    revocation_with(holder, record, votes, vote_quorum)
}

/// [`revocation`] with the quorum rule given (tests break it on purpose).
pub(crate) fn revocation_with(
    holder: &str,
    record: HolderRecord<'_>,
    votes: &[SeenVote],
    quorum: fn(usize) -> usize,
) -> Option<Revocation> {
    let vouch = record.vouch.filter(|v| v.revocable())?;
    if record.leaving {
        return None;
    }
    let mut counted: Vec<(String, i64)> = votes
        .iter()
        .filter(|v| v.lease == record.lease && v.revision == record.revision)
        .filter(|v| vouch.witnesses.contains(&v.voter))
        .map(|v| (v.voter.clone(), v.mod_revision))
        .collect();
    counted.sort();
    counted.dedup_by(|a, b| a.0 == b.0);
    let needed = quorum(vouch.witnesses.len());
    (counted.len() >= needed).then(|| {
        counted.truncate(needed);
        Revocation {
            holder: holder.to_string(),
            lease: record.lease,
            record_revision: record.revision,
            votes: counted,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{VouchMode, VouchRecord};

    fn vote(voter: &str, lease: i64, revision: i64) -> SeenVote {
        SeenVote {
            voter: voter.into(),
            lease,
            revision,
            mod_revision: 100,
        }
    }

    #[test]
    fn a_quorum_of_listed_witnesses_at_the_record_revision_revokes() {
        let vouch = VouchRecord {
            mode: VouchMode::Peers,
            witnesses: ["a", "b", "c", "d"].map(String::from).to_vec(),
        };
        let record = HolderRecord {
            lease: 7,
            revision: 5,
            vouch: Some(&vouch),
            leaving: false,
        };
        let two = [vote("a", 7, 5), vote("b", 7, 5)];
        assert_eq!(revocation("h", record, &two), None, "3 of 4 needed");
        let stale = [vote("a", 7, 5), vote("b", 7, 5), vote("c", 7, 4)];
        assert_eq!(revocation("h", record, &stale), None, "an older revision");
        let other = [vote("a", 7, 5), vote("b", 7, 5), vote("x", 7, 5)];
        assert_eq!(revocation("h", record, &other), None, "x is no witness");
        let lease = [vote("a", 7, 5), vote("b", 7, 5), vote("c", 8, 5)];
        assert_eq!(revocation("h", record, &lease), None, "another lease");
        let twice = [vote("a", 7, 5), vote("b", 7, 5), vote("b", 7, 5)];
        assert_eq!(
            revocation("h", record, &twice),
            None,
            "one vote per witness"
        );
        let three = [
            vote("c", 7, 5),
            vote("a", 7, 5),
            vote("b", 7, 5),
            vote("d", 7, 5),
        ];
        let r = revocation("h", record, &three).unwrap();
        assert_eq!(r.votes.len(), 3);
        assert_eq!((r.lease, r.record_revision), (7, 5));
        let lease_only = VouchRecord {
            mode: VouchMode::LeaseOnly,
            ..vouch.clone()
        };
        let record = HolderRecord {
            vouch: Some(&lease_only),
            ..record
        };
        assert_eq!(revocation("h", record, &three), None, "lease-only");
    }
}
