//! When a lease is provably still alive although it cannot be renewed: etcd
//! is electing a leader.
//!
//! An etcd lease expires only when a leader revokes it, and a revocation
//! commits only with a quorum's acknowledgement. A new leader starts every
//! lease's TTL afresh when it takes office (etcd's lessor promotion, which
//! also adds an election timeout; measured here: a 3 s lease whose leader was
//! killed vanished 3.8-4.4 s after the new leader appeared). So while
//! renewals fail because there is no leader, the lease cannot expire, and the
//! holder may keep acting on it; fencing then would turn every etcd leader
//! election into a failover.
//!
//! The proof the holder needs: a quorum of voting members answered, each
//! "no leader", all in the same raft term T, and T is later than the term of
//! the holder's last successful renewal. Then, for any leader X that could
//! revoke after those answers:
//! - X is of a term below T: a quorum is past X's term and never again
//!   acknowledges it, so X commits nothing;
//! - X is of term T or later: to commit anything X needs an acknowledgement
//!   from a member of that quorum, and each of them, when it answered, had
//!   not acknowledged a leader in term T (it would have named it) nor seen a
//!   later term. So X takes office after the question was sent, and the
//!   lease lives at least a TTL from then.
//!
//! Before the answers no revocation could happen either, as long as they
//! arrived while the lease was still valid by the holder's last proof. Hence
//! the holder may extend its local validity to (send time of the question) +
//! TTL, and repeat while the election lasts. Requiring the *same* term
//! matters: a member in term T without a leader may still come to follow
//! term T's leader, so answers from mixed terms prove nothing.
//!
//! The assumption this rests on: etcd's lease checkpointing is off (the
//! default up to 3.6), or its interval is longer than the TTL; otherwise a
//! new leader may restore a shorter remaining TTL.

use crate::failover::MemberState;

/// The raft term in which at least a quorum of `voters` members reported no
/// leader, among `states` (one answer per member). `None` when there is no
/// such term, or the member count is unknown (0).
pub(crate) fn leaderless_term(states: &[MemberState], voters: usize) -> Option<u64> {
    if voters == 0 {
        return None;
    }
    let quorum = voters / 2 + 1;
    let mut terms: Vec<u64> = states
        .iter()
        .filter(|s| s.leader == 0)
        .map(|s| s.term)
        .collect();
    terms.sort_unstable();
    terms
        .chunk_by(|a, b| a == b)
        .find(|same| same.len() >= quorum)
        .map(|same| same[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(member: u64, leader: u64, term: u64) -> MemberState {
        MemberState {
            member,
            leader,
            term,
        }
    }

    #[test]
    fn a_quorum_without_a_leader_in_one_term_is_found() {
        let states = [member(1, 0, 7), member(2, 0, 7)];
        assert_eq!(leaderless_term(&states, 3), Some(7));
    }

    #[test]
    fn one_leaderless_member_of_three_proves_nothing() {
        // The other two may have a leader this member cannot see.
        let states = [member(1, 0, 7), member(2, 3, 6), member(3, 3, 6)];
        assert_eq!(leaderless_term(&states, 3), None);
        assert_eq!(leaderless_term(&[member(1, 0, 7)], 3), None);
    }

    #[test]
    fn leaderless_members_in_different_terms_prove_nothing() {
        let states = [member(1, 0, 7), member(2, 0, 8)];
        assert_eq!(leaderless_term(&states, 3), None);
    }

    #[test]
    fn a_member_that_follows_a_leader_does_not_count() {
        let states = [member(1, 0, 7), member(2, 1, 7)];
        assert_eq!(leaderless_term(&states, 3), None);
    }

    #[test]
    fn the_quorum_is_of_the_voting_members_not_of_the_answers() {
        // Two answers of a five-member cluster are no quorum.
        let states = [member(1, 0, 7), member(2, 0, 7)];
        assert_eq!(leaderless_term(&states, 5), None);
        let three = [member(1, 0, 7), member(2, 0, 7), member(4, 0, 7)];
        assert_eq!(leaderless_term(&three, 5), Some(7));
        // A lone member is its own quorum.
        assert_eq!(leaderless_term(&[member(1, 0, 2)], 1), Some(2));
    }

    #[test]
    fn an_unknown_member_count_proves_nothing() {
        let states = [member(1, 0, 7), member(2, 0, 7)];
        assert_eq!(leaderless_term(&states, 0), None);
    }
}
