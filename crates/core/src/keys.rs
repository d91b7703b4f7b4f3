//! The keys under `/pgwarden/<cluster>/`, named in one place so that every role
//! agrees on the layout described in docs/architecture.md.

/// The operator's policy.
pub const SPEC: &str = "spec";
/// The sentinel's decision.
pub const STATUS: &str = "status";
/// The primary lease: present only while the primary keeper renews it.
pub const PRIMARY: &str = "primary";
/// The sentinel election key.
pub const SENTINEL_LEADER: &str = "sentinels/leader";
/// Prefix of keeper reports.
pub const KEEPERS_PREFIX: &str = "keepers/";
/// Prefix of proxy acknowledgements.
pub const PROXIES_PREFIX: &str = "proxies/";

/// The alerts' state and outbox, written by the leader sentinel (and by its
/// delivery task, to mark notifications delivered).
pub const ALERTS: &str = "alerts";

/// Prefix of the last node request (restart, reinit) each keeper carried
/// out: kept without a lease, so that a restarted keeper never repeats one.
pub const HANDLED_PREFIX: &str = "handled/";

/// The handled-request key of one keeper.
pub fn handled(uid: &str) -> String {
    format!("{HANDLED_PREFIX}{uid}")
}

/// The report key of one keeper.
pub fn keeper(uid: &str) -> String {
    format!("{KEEPERS_PREFIX}{uid}")
}

/// Whether `uid` can be used as a key component and a postgres application name.
pub fn valid_uid(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= 48
        && uid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_restricted_to_safe_characters() {
        assert!(valid_uid("node-1_a"));
        for bad in ["", "a/b", "a b", "ü", &"x".repeat(49)] {
            assert!(!valid_uid(bad), "{bad:?}");
        }
    }
}
