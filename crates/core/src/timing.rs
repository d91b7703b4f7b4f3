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

/// A point on a lease holder's own clock: milliseconds in the simulation,
/// an [`std::time::Instant`] in the product. The rules below are written once
/// for both.
pub trait LocalTime: Copy + Ord {
    /// `self + d`, saturating.
    fn later_by(self, d: Duration) -> Self;
    /// `self - d`, if the clock goes back that far.
    fn earlier_by(self, d: Duration) -> Option<Self>;
}

impl LocalTime for u64 {
    fn later_by(self, d: Duration) -> u64 {
        self.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
    fn earlier_by(self, d: Duration) -> Option<u64> {
        self.checked_sub(u64::try_from(d.as_millis()).ok()?)
    }
}

impl LocalTime for std::time::Instant {
    fn later_by(self, d: Duration) -> Self {
        self + d
    }
    fn earlier_by(self, d: Duration) -> Option<Self> {
        self.checked_sub(d)
    }
}

/// Until when a successful read of the store sent at `sent` lets a proxy
/// route: if it cannot read for `proxy_ttl`, the sentinel may be promoting
/// someone else.
pub fn read_valid_until<T: LocalTime>(sent: T, proxy_ttl: Duration) -> T {
    sent.later_by(proxy_ttl)
}

/// Until when a proxy routes: the earlier of its read deadline
/// ([`read_valid_until`]) and its lease's local validity less the
/// [`fencing_margin`], so that routing stops before etcd could expire the
/// lease (after which the sentinel no longer waits for this proxy). `None`:
/// not at all.
///
/// While etcd elects a leader (`electing`), reads fail but the lease is
/// proven alive, and the read deadline follows the lease: the sentinel cannot
/// promote anyone before this proxy has acknowledged the change or its lease
/// has expired, so routing on the last status read stays safe.
pub fn routing_deadline<T: LocalTime>(
    read_until: Option<T>,
    lease_valid_until: Option<T>,
    electing: bool,
    proxy_ttl: Duration,
) -> Option<T> {
    let lease_until = lease_valid_until?.earlier_by(fencing_margin(proxy_ttl))?;
    if electing {
        return Some(lease_until);
    }
    Some(read_until?.min(lease_until))
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

    #[test]
    fn a_proxy_routes_until_the_earlier_of_its_read_and_lease_deadlines() {
        let ttl = Duration::from_secs(3);
        let read = Some(read_valid_until(1_000u64, ttl));
        assert_eq!(read, Some(4_000));
        // The lease, less a sixth of the TTL, comes first.
        assert_eq!(routing_deadline(read, Some(4_000), false, ttl), Some(3_500));
        // The read comes first.
        assert_eq!(routing_deadline(read, Some(9_000), false, ttl), Some(4_000));
        // Electing: the lease alone.
        assert_eq!(routing_deadline(read, Some(9_000), true, ttl), Some(8_500));
        // No lease, or no read yet: no routing.
        assert_eq!(routing_deadline(read, None, false, ttl), None);
        assert_eq!(routing_deadline(None, Some(9_000), false, ttl), None);
        assert_eq!(routing_deadline(read, Some(100), false, ttl), None);
    }
}
