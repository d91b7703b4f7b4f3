//! Tests for `route`, written with a small builder so each case reads as the
//! cluster it describes, and each asserts the whole `Routes`.

use super::*;

const PRIMARY_LSN: u64 = 0x5000_0000;
const MAX_LAG: u64 = 1024;

struct Cluster {
    status: Status,
    keepers: BTreeMap<String, KeeperReport>,
    holder: Option<String>,
    spec: Spec,
}

/// Generation 7; no members, no reports, nobody holds the lease.
fn cluster() -> Cluster {
    Cluster {
        status: Status {
            generation: 7,
            ..Status::default()
        },
        keepers: BTreeMap::new(),
        holder: None,
        spec: Spec {
            max_lag_bytes: MAX_LAG,
            ..Spec::default()
        },
    }
}

fn port_of(uid: &str) -> u16 {
    5400 + u16::from(uid.as_bytes()[0] - b'a')
}

fn backend(uid: &str) -> Backend {
    Backend {
        uid: uid.into(),
        host: format!("host-{uid}"),
        port: port_of(uid),
    }
}

fn report(uid: &str, role: ObservedRole) -> KeeperReport {
    let mut r = KeeperReport::new(uid, &format!("host-{uid}"), port_of(uid), "http://x");
    r.role = role;
    r.healthy = matches!(role, ObservedRole::Primary | ObservedRole::Standby);
    r
}

impl Cluster {
    /// `uid` is the assigned primary, reports itself primary at PRIMARY_LSN and
    /// holds the lease.
    fn primary(self, uid: &str) -> Self {
        self.assigned_primary(uid).primary_report(uid).lease(uid)
    }

    fn assigned_primary(mut self, uid: &str) -> Self {
        self.status.primary = Some(uid.into());
        self.status.members.insert(uid.into(), Assignment::Primary);
        self
    }

    fn primary_report(mut self, uid: &str) -> Self {
        let mut r = report(uid, ObservedRole::Primary);
        r.current_lsn = Some(Lsn(PRIMARY_LSN));
        self.keepers.insert(uid.into(), r);
        self
    }

    fn lease(mut self, uid: &str) -> Self {
        self.holder = Some(uid.into());
        self
    }

    /// `uid` is assigned to stream from `a`.
    fn assigned_standby(mut self, uid: &str) -> Self {
        self.status.members.insert(
            uid.into(),
            Assignment::Standby {
                follow: "a".into(),
                host: "host-a".into(),
                port: port_of("a"),
            },
        );
        self
    }

    /// `uid` is an assigned, healthy standby `lag` bytes behind PRIMARY_LSN.
    fn standby(self, uid: &str, lag: u64) -> Self {
        self.assigned_standby(uid).standby_report(uid, lag)
    }

    fn standby_report(mut self, uid: &str, lag: u64) -> Self {
        let mut r = report(uid, ObservedRole::Standby);
        r.replay_lsn = Some(Lsn(PRIMARY_LSN - lag));
        r.receive_lsn = r.replay_lsn;
        r.streaming = true;
        self.keepers.insert(uid.into(), r);
        self
    }

    fn edit(mut self, uid: &str, f: impl FnOnce(&mut KeeperReport)) -> Self {
        if let Some(r) = self.keepers.get_mut(uid) {
            f(r);
        }
        self
    }

    fn without_report(mut self, uid: &str) -> Self {
        self.keepers.remove(uid);
        self
    }

    fn route(&self) -> Routes {
        route(
            &self.status,
            &self.keepers,
            self.holder.as_deref(),
            &self.spec,
        )
    }
}

fn routes(primary: Result<&str, NoPrimary>, read_only: &[&str]) -> Routes {
    let (primary, no_primary) = match primary {
        Ok(uid) => (Some(backend(uid)), None),
        Err(why) => (None, Some(why)),
    };
    Routes {
        generation: 7,
        primary,
        no_primary,
        read_only: read_only.iter().map(|u| backend(u)).collect(),
    }
}

#[test]
fn healthy_cluster_routes_to_the_primary_and_every_standby() {
    let c = cluster().primary("a").standby("b", 0).standby("c", 10);
    assert_eq!(c.route(), routes(Ok("a"), &["b", "c"]));
}

#[test]
fn an_empty_store_routes_nowhere() {
    assert_eq!(cluster().route(), routes(Err(NoPrimary::NotAssigned), &[]));
}

#[test]
fn no_assigned_primary_means_no_primary_route_even_with_a_lease_holder() {
    // During a failover the status has no primary while the old keeper may
    // still hold its lease for a moment: it must not be routed to.
    let mut c = cluster().standby("b", 0).standby("c", 0).lease("a");
    c = c.primary_report("a");
    assert_eq!(
        c.route(),
        routes(Err(NoPrimary::NotAssigned), &["b", "c"]),
        "standbys keep serving reads, measured against the primary's report"
    );
}

#[test]
fn assigned_primary_without_the_lease_is_not_routed_to() {
    let c = cluster()
        .assigned_primary("a")
        .primary_report("a")
        .standby("b", 0);
    assert_eq!(
        c.route(),
        routes(
            Err(NoPrimary::LeaseNotHeld {
                assigned: "a".into()
            }),
            &["b"]
        )
    );
}

#[test]
fn lease_held_by_another_keeper_is_not_routed_to_at_all() {
    let c = cluster()
        .assigned_primary("a")
        .primary_report("a")
        .lease("b")
        .standby("b", 0);
    assert_eq!(
        c.route(),
        routes(
            Err(NoPrimary::LeaseHeldByOther {
                assigned: "a".into(),
                holder: "b".into()
            }),
            &["b"]
        )
    );
}

#[test]
fn primary_without_a_report_has_no_address() {
    let c = cluster().primary("a").without_report("a").standby("b", 0);
    assert_eq!(
        c.route(),
        routes(
            Err(NoPrimary::NoReport {
                assigned: "a".into()
            }),
            // No primary report: lag is measured against the most advanced standby.
            &["b"]
        )
    );
}

#[test]
fn a_primary_holding_the_lease_is_routed_to_only_once_it_serves() {
    // The keeper takes the lease before it starts or promotes postgres.
    for (role, healthy) in [
        (ObservedRole::Standby, true),
        (ObservedRole::Stopped, false),
        (ObservedRole::Initializing, false),
        (ObservedRole::Primary, false),
    ] {
        let c = cluster()
            .primary("a")
            .edit("a", |r| {
                r.role = role;
                r.healthy = healthy;
            })
            .standby("b", 0);
        assert_eq!(
            c.route(),
            routes(
                Err(NoPrimary::NotServing {
                    assigned: "a".into(),
                    role,
                    healthy
                }),
                &["b"]
            ),
            "{role:?}"
        );
    }
}

#[test]
fn lag_up_to_the_maximum_is_accepted_and_beyond_it_refused() {
    let c = cluster()
        .primary("a")
        .standby("b", MAX_LAG)
        .standby("c", MAX_LAG + 1)
        .standby("d", 0);
    assert_eq!(c.route(), routes(Ok("a"), &["b", "d"]));
}

#[test]
fn lag_is_replay_lag_not_receive_lag() {
    let c = cluster()
        .primary("a")
        .standby("b", MAX_LAG * 4)
        .edit("b", |r| r.receive_lsn = Some(Lsn(PRIMARY_LSN)));
    assert_eq!(c.route(), routes(Ok("a"), &[]));
}

#[test]
fn a_standby_ahead_of_the_primary_report_counts_as_caught_up() {
    // Reports are written at different instants: a standby may show a
    // position the primary's older report does not show yet.
    let c = cluster()
        .primary("a")
        .standby("b", 0)
        .edit("b", |r| r.replay_lsn = Some(Lsn(PRIMARY_LSN + 500)));
    assert_eq!(c.route(), routes(Ok("a"), &["b"]));
}

#[test]
fn unhealthy_stopped_initializing_or_silent_standbys_are_skipped() {
    let c = cluster()
        .primary("a")
        .standby("b", 0)
        .edit("b", |r| r.healthy = false)
        .standby("c", 0)
        .edit("c", |r| r.role = ObservedRole::Stopped)
        .standby("d", 0)
        .edit("d", |r| r.role = ObservedRole::Initializing)
        .standby("e", 0)
        .edit("e", |r| r.replay_lsn = None)
        .standby("f", 0)
        .without_report("f")
        .standby("g", 0);
    assert_eq!(c.route(), routes(Ok("a"), &["g"]));
}

#[test]
fn only_assigned_standbys_serve_reads() {
    // "b" runs as a standby but the sentinel has not assigned it (a newcomer);
    // "c" is assigned standby but still runs as a primary (a deposed primary
    // that has not stepped down yet).
    let c = cluster()
        .primary("a")
        .standby_report("b", 0)
        .assigned_standby("c")
        .primary_report("c")
        .standby("d", 0);
    assert_eq!(c.route(), routes(Ok("a"), &["d"]));
}

#[test]
fn without_a_primary_report_lag_is_measured_against_the_most_advanced_standby() {
    let c = cluster()
        .standby("b", 0)
        .standby("c", MAX_LAG)
        .standby("d", MAX_LAG + 1)
        // Received more than it replayed: the reference is what it received.
        .edit("b", |r| r.receive_lsn = Some(Lsn(PRIMARY_LSN + 10)));
    assert_eq!(
        c.route(),
        routes(Err(NoPrimary::NotAssigned), &["b"]),
        "c is MAX_LAG + 10 behind what b received"
    );
}

#[test]
fn nothing_to_measure_against_means_no_read_only_route() {
    let c = cluster().standby("b", 0).edit("b", |r| {
        r.replay_lsn = None;
        r.receive_lsn = None;
    });
    assert_eq!(c.route(), routes(Err(NoPrimary::NotAssigned), &[]));
}

#[test]
fn the_generation_is_carried_through() {
    let mut c = cluster().primary("a");
    c.status.generation = 42;
    let r = c.route();
    assert_eq!(
        r,
        Routes {
            generation: 42,
            ..routes(Ok("a"), &[])
        }
    );
}

#[test]
fn reasons_and_backends_print_for_the_log() {
    assert_eq!(backend("a").to_string(), "a at host-a:5400");
    let v6 = Backend {
        uid: "b".into(),
        host: "::1".into(),
        port: 5,
    };
    assert_eq!(v6.to_string(), "b at [::1]:5");
    assert_eq!(NoPrimary::NotAssigned.to_string(), "no primary is assigned");
    assert_eq!(
        NoPrimary::LeaseHeldByOther {
            assigned: "a".into(),
            holder: "b".into()
        }
        .to_string(),
        "primary a is assigned but b holds the primary lease"
    );
    assert_eq!(
        NoPrimary::NotServing {
            assigned: "a".into(),
            role: ObservedRole::Standby,
            healthy: true
        }
        .to_string(),
        "primary a holds the lease but its postgres is not serving as primary yet (reported standby, healthy)"
    );
}
