//! The routing table the accept loops read and the control loop replaces.
//!
//! Each backend a port routes to is a [`Target`]: the backend plus a
//! cancellation token and a task tracker shared by every relay opened to it
//! through that port. Withdrawing a route is then one `cancel()`, and the
//! control loop can wait for the relays to be gone before it tells the
//! store it applied the new generation. A connection picks its target (and
//! so its token) when it is accepted, so a connection racing with a route
//! change is cut as soon as its relay starts.
//!
//! A target survives a table change only while the same backend keeps the
//! same role: a generation bump that leaves the primary alone does not
//! disturb its sessions.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use pgwarden_core::route::{Backend, NoPrimary, Routes};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long the control loop waits for cut relays to finish. Dropping a
/// socket takes microseconds; this bounds a pathological scheduler stall.
const CUT_WAIT: Duration = Duration::from_secs(1);

/// Which listening port a connection arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// Routed to the primary.
    Primary,
    /// Balanced over the standbys.
    ReadOnly,
}

impl std::fmt::Display for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Port::Primary => "primary",
            Port::ReadOnly => "read-only",
        })
    }
}

/// One backend a port routes to, with what it takes to cut its connections.
#[derive(Debug, Clone)]
pub struct Target {
    /// Where connections go.
    pub backend: Backend,
    /// Fires when connections to this backend through this port must close.
    pub cut: CancellationToken,
    /// The relays open to this backend through this port.
    pub relays: TaskTracker,
}

impl Target {
    fn new(backend: Backend, parent: &CancellationToken) -> Target {
        Target {
            backend,
            cut: parent.child_token(),
            relays: TaskTracker::new(),
        }
    }
}

/// Where new connections go right now.
#[derive(Debug, Clone)]
pub struct Table {
    /// The status generation this table carries out.
    pub generation: u64,
    /// Why the proxy routes nothing at all, when it does not.
    pub stopped: Option<String>,
    /// Until when the proxy may route without hearing from the store again.
    pub valid_until: Option<Instant>,
    /// Target of the primary port.
    pub primary: Option<Target>,
    /// Why there is no primary target, when routing.
    pub no_primary: Option<NoPrimary>,
    /// Targets of the read-only port.
    pub read_only: Vec<Target>,
}

impl Table {
    /// A table that routes nothing, for `why`.
    pub fn stopped(generation: u64, why: impl Into<String>) -> Table {
        Table {
            generation,
            stopped: Some(why.into()),
            valid_until: None,
            primary: None,
            no_primary: None,
            read_only: Vec::new(),
        }
    }

    /// Whether the table routes anything.
    pub fn routing(&self) -> bool {
        self.stopped.is_none()
    }

    /// The table that carries out `routes` until `valid_until`, keeping this
    /// table's targets for backends that keep their role, and the targets to
    /// cut. New targets' tokens are children of `parent`.
    pub fn follow(
        &self,
        routes: &Routes,
        valid_until: Instant,
        parent: &CancellationToken,
    ) -> (Table, Vec<Target>) {
        let mut cut = Vec::new();
        let primary = match (&self.primary, &routes.primary) {
            (Some(old), Some(new)) if old.backend == *new => Some(old.clone()),
            (old, new) => {
                cut.extend(old.clone());
                new.as_ref().map(|b| Target::new(b.clone(), parent))
            }
        };
        let read_only = routes
            .read_only
            .iter()
            .map(|b| {
                self.read_only
                    .iter()
                    .find(|t| t.backend == *b)
                    .cloned()
                    .unwrap_or_else(|| Target::new(b.clone(), parent))
            })
            .collect();
        cut.extend(
            self.read_only
                .iter()
                .filter(|t| !routes.read_only.contains(&t.backend))
                .cloned(),
        );
        let next = Table {
            generation: routes.generation,
            stopped: None,
            valid_until: Some(valid_until),
            primary,
            no_primary: routes.no_primary.clone(),
            read_only,
        };
        (next, cut)
    }

    /// The table that routes nothing, for `why`, and every target to cut.
    pub fn stop(&self, why: impl Into<String>) -> (Table, Vec<Target>) {
        let cut = self
            .primary
            .iter()
            .chain(&self.read_only)
            .cloned()
            .collect();
        (Table::stopped(self.generation, why), cut)
    }

    /// Where a new connection on `port` goes at `now`, or why it is refused.
    /// `turn` rotates over the read-only targets.
    pub fn pick(&self, port: Port, turn: &AtomicUsize, now: Instant) -> Result<Target, String> {
        if let Some(why) = &self.stopped {
            return Err(format!("not routing: {why}"));
        }
        if self.valid_until.is_none_or(|t| now >= t) {
            return Err("not routing: no word from etcd in time".into());
        }
        match port {
            Port::Primary => self.primary.clone().ok_or_else(|| {
                self.no_primary
                    .as_ref()
                    .map_or_else(|| "no primary".to_string(), ToString::to_string)
            }),
            Port::ReadOnly if self.read_only.is_empty() => {
                Err("no standby is healthy and within the maximum lag".into())
            }
            Port::ReadOnly => {
                let i = turn.fetch_add(1, Ordering::Relaxed) % self.read_only.len();
                Ok(self.read_only[i].clone())
            }
        }
    }
}

/// Cuts every connection of `targets` and waits (bounded) until their relays
/// ended. Returns how many connections were open.
pub async fn cut(targets: Vec<Target>) -> usize {
    let mut open = 0;
    for t in &targets {
        open += t.relays.len();
        t.cut.cancel();
        t.relays.close();
    }
    for t in targets {
        if tokio::time::timeout(CUT_WAIT, t.relays.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                backend = %t.backend,
                still_open = t.relays.len(),
                "connections did not close within {CUT_WAIT:?} of being cut"
            );
        }
    }
    open
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(uid: &str) -> Backend {
        Backend {
            uid: uid.into(),
            host: "127.0.0.1".into(),
            port: 5000,
        }
    }

    fn routes(generation: u64, primary: Option<&str>, read_only: &[&str]) -> Routes {
        Routes {
            generation,
            primary: primary.map(b),
            no_primary: primary.is_none().then_some(NoPrimary::NotAssigned),
            read_only: read_only.iter().map(|u| b(u)).collect(),
        }
    }

    fn uids(targets: &[Target]) -> Vec<&str> {
        targets.iter().map(|t| t.backend.uid.as_str()).collect()
    }

    #[tokio::test]
    async fn a_primary_that_keeps_its_role_keeps_its_connections() {
        let root = CancellationToken::new();
        let later = Instant::now() + Duration::from_secs(5);
        let (t1, cut1) =
            Table::stopped(0, "start").follow(&routes(3, Some("a"), &["b"]), later, &root);
        assert!(cut1.is_empty());
        let (t2, cut2) = t1.follow(&routes(4, Some("a"), &["b", "c"]), later, &root);
        assert!(cut2.is_empty());
        assert_eq!(t2.generation, 4);
        let (p1, p2) = (t1.primary.unwrap(), t2.primary.unwrap());
        assert!(
            !p2.cut.is_cancelled() && p2.relays.is_empty() && p1.backend == p2.backend,
            "same target"
        );
        p1.cut.cancel();
        assert!(p2.cut.is_cancelled(), "the very same token");
        assert_eq!(uids(&t2.read_only), ["b", "c"]);
    }

    #[tokio::test]
    async fn a_changed_or_vanished_route_is_cut() {
        let root = CancellationToken::new();
        let later = Instant::now() + Duration::from_secs(5);
        let (t1, _) =
            Table::stopped(0, "start").follow(&routes(3, Some("a"), &["b", "c"]), later, &root);
        // a deposed, b promoted: a's primary target, and b's read-only one, go.
        let (t2, cut2) = t1.follow(&routes(4, Some("b"), &["c"]), later, &root);
        assert_eq!(uids(&cut2), ["a", "b"]);
        assert_eq!(
            t2.primary.as_ref().map(|t| t.backend.uid.as_str()),
            Some("b")
        );
        assert_eq!(uids(&t2.read_only), ["c"]);
        // No primary at all: b's target goes.
        let (t3, cut3) = t2.follow(&routes(5, None, &["c"]), later, &root);
        assert_eq!(uids(&cut3), ["b"]);
        assert!(t3.primary.is_none());
        assert_eq!(t3.no_primary, Some(NoPrimary::NotAssigned));
        // Stopping cuts everything and keeps the generation.
        let (t4, cut4) = t3.stop("etcd unreachable");
        assert_eq!(uids(&cut4), ["c"]);
        assert_eq!((t4.generation, t4.routing()), (5, false));
        // New targets descend from the root token.
        root.cancel();
        assert!(t3.read_only[0].cut.is_cancelled());
    }

    #[tokio::test]
    async fn pick_refuses_with_the_reason_and_rotates_read_only() {
        let root = CancellationToken::new();
        let now = Instant::now();
        let turn = AtomicUsize::new(0);
        let stopped = Table::stopped(1, "etcd unreachable");
        assert_eq!(
            stopped.pick(Port::Primary, &turn, now).unwrap_err(),
            "not routing: etcd unreachable"
        );
        let (t, _) = stopped.follow(
            &routes(2, None, &["b", "c"]),
            now + Duration::from_secs(1),
            &root,
        );
        assert_eq!(
            t.pick(Port::Primary, &turn, now).unwrap_err(),
            "no primary is assigned"
        );
        let picks: Vec<String> = (0..4)
            .map(|_| t.pick(Port::ReadOnly, &turn, now).unwrap().backend.uid)
            .collect();
        assert_eq!(picks, ["b", "c", "b", "c"]);
        // Past its validity the table routes nothing, whatever it holds.
        assert_eq!(
            t.pick(Port::ReadOnly, &turn, now + Duration::from_secs(1))
                .unwrap_err(),
            "not routing: no word from etcd in time"
        );
        let (t, _) = t.follow(
            &routes(3, Some("a"), &[]),
            now + Duration::from_secs(1),
            &root,
        );
        assert_eq!(t.pick(Port::Primary, &turn, now).unwrap().backend.uid, "a");
        assert_eq!(
            t.pick(Port::ReadOnly, &turn, now).unwrap_err(),
            "no standby is healthy and within the maximum lag"
        );
    }

    #[tokio::test]
    async fn cut_counts_and_waits_for_the_relays() {
        let root = CancellationToken::new();
        let target = Target::new(b("a"), &root);
        for _ in 0..3 {
            let token = target.cut.clone();
            target.relays.spawn(async move { token.cancelled().await });
        }
        assert_eq!(cut(vec![target.clone()]).await, 3);
        assert!(target.relays.is_empty());
    }
}
