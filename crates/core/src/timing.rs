//! Lease timing: how often a lease is renewed and how long before its local
//! validity ends its holder stops acting on it. Named once here, used by the
//! keeper, the proxy and the simulation.
//!
//! The arithmetic (docs/failover.md has it in full): at etcd's default timing
//! a leader election takes 1.0-2.7 s (measured here), and no renewal succeeds
//! meanwhile. A holder that fences at (last renewal sent) + TTL - margin,
//! renewing every interval, survives an election of up to TTL - margin -
//! interval: 3 s - 0.5 s - 0.2 s = 2.3 s with the defaults. Longer elections
//! are covered by the store's proof that a quorum has no leader (the lease
//! cannot expire before a new leader takes office), which etcd gives at most
//! 2 election timeouts (2 s) after the leader died. A host-loss failover still
//! waits only for the TTL: etcd revokes the dead holder's lease then.

use std::time::Duration;

/// Renewals per TTL. Each is one cheap request to every member; frequent
/// renewals keep the last successful one close to any moment the store
/// fails, so that the whole margin is left for an election.
pub const RENEWALS_PER_TTL: u32 = 15;

/// How often a lease of `ttl` is renewed.
pub fn renewal_interval(ttl: Duration) -> Duration {
    ttl / RENEWALS_PER_TTL
}

/// How long before its lease's local validity ends the primary fences
/// postgres, and a proxy stops routing: a sixth of the TTL (0.5 s of 3 s).
/// It covers scheduling delay in the holder and the kill itself; etcd starts
/// the TTL when it receives a renewal, later than we sent it, and revokes
/// only after the TTL has passed on its own clock.
pub fn fencing_margin(ttl: Duration) -> Duration {
    ttl / 6
}

/// How long before the lease's local validity ends the fencing watchdog (a
/// separate process, for a frozen keeper) kills postgres: half the fencing
/// margin, so that a renewal landing right at the in-process deadline never
/// races its news to the watchdog.
pub fn watchdog_margin(ttl: Duration) -> Duration {
    fencing_margin(ttl) / 2
}

/// The per-request timeout of the store client a lease holder renews
/// through: a member that hangs (a host that drops packets) must not hold a
/// renewal round longer than this.
pub fn renewal_request_timeout(ttl: Duration) -> Duration {
    ttl / 6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_lease_survives_a_two_second_election() {
        let ttl = Duration::from_secs(3);
        let survives = ttl - fencing_margin(ttl) - renewal_interval(ttl);
        assert_eq!(survives, Duration::from_millis(2300));
        assert!(watchdog_margin(ttl) < fencing_margin(ttl));
        assert!(renewal_request_timeout(ttl) < ttl - fencing_margin(ttl));
    }
}
