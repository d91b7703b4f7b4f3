//! The sentinel model: `crates/pgwarden/src/sentinel.rs` around the real
//! [`decide()`].
//!
//! A sentinel campaigns by creating the election key under its own lease;
//! the leader reads a snapshot, decides, and writes the status with a
//! compare-and-swap on the status revision it read *and* the create revision
//! of its election key. A conflict makes it check whether it is still the
//! leader.
//!
//! The read-decide and the write are one step apart here (the real round
//! does both within milliseconds): a sentinel frozen between them sends its
//! write, decided on an old view, when it thaws. That is the deposed-leader
//! write the election guard exists for, and the simulation makes it common
//! instead of rare.

use pgwarden_core::{decide, keys, ClusterView, Reason, Status};

use crate::ctx::{CallError, Ctx};
use crate::events::{Event, Happening, StatusWrite};
use crate::lease::LeaseTask;
use crate::store::{Cas, LeaseId, Value};
use crate::view::Snapshot;

/// Wall-clock milliseconds at simulated time zero (`decide` takes epoch ms).
pub const EPOCH_MS: u64 = 1_700_000_000_000;

/// A decision waiting to be written.
#[derive(Debug, Clone)]
struct Pending {
    status_revision: i64,
    election_revision: i64,
    view: ClusterView,
    next: Status,
    reason: Reason,
}

/// One sentinel.
#[derive(Debug, Clone)]
pub struct Sentinel {
    /// Its id, the election key's value while it leads.
    pub id: String,
    /// Stopped (SIGSTOP): neither its loop nor its lease task runs.
    pub frozen: bool,
    /// Its wall clock's offset from true time, in ms.
    pub offset_ms: i64,
    lease: Option<LeaseTask>,
    /// While leading: the election key's create revision and the lease it
    /// was created under.
    leading: Option<(i64, LeaseId)>,
    pending: Option<Pending>,
}

impl Sentinel {
    /// A sentinel that has not run yet.
    pub fn new(id: &str, offset_ms: i64) -> Sentinel {
        Sentinel {
            id: id.to_string(),
            frozen: false,
            offset_ms,
            lease: None,
            leading: None,
            pending: None,
        }
    }

    /// Whether it believes it leads.
    pub fn leading(&self) -> bool {
        self.leading.is_some()
    }

    /// One scheduling slot.
    pub fn act(&mut self, ctx: &mut Ctx<'_>, guard: bool, sentinel_ttl_ms: u64) {
        if self.frozen {
            return;
        }
        let id = self.id.clone();
        let lease = self
            .lease
            .get_or_insert_with(|| LeaseTask::spawn(sentinel_ttl_ms, ctx.now));
        lease.poll(&id, ctx.now, ctx);
        let lease_id = lease.id;
        if let Some(p) = self.pending.take() {
            self.write(p, ctx, guard);
        }
        match self.leading {
            Some((_, held)) if lease_id != Some(held) => {
                ctx.note(&id, || "lost leadership: its lease is gone".into());
                self.leading = None;
            }
            Some((revision, _)) => self.decide(ctx, revision),
            None => {
                let Some(lease_id) = lease_id else { return };
                let me = Value::Text(id.clone());
                let created = ctx.call(&id, |s, _| {
                    s.create(keys::SENTINEL_LEADER, me, Some(lease_id))
                });
                if let Ok(Ok(Some(revision))) = created {
                    ctx.note(&id, || format!("elected leader (revision {revision})"));
                    ctx.happen(Happening::Elected(id.clone()));
                    self.leading = Some((revision, lease_id));
                    self.decide(ctx, revision);
                }
            }
        }
    }

    fn decide(&mut self, ctx: &mut Ctx<'_>, election_revision: i64) {
        let Ok(snap) = ctx.call(&self.id, |s, _| Snapshot::read(s)) else {
            return;
        };
        let now_ms = (EPOCH_MS + ctx.now).saturating_add_signed(self.offset_ms);
        let view = ClusterView {
            now_ms,
            spec: snap.spec,
            status: snap.status,
            keepers: snap.keepers,
            primary_lease_holder: snap.primary_holder,
            proxies: snap.proxies,
        };
        let decision = decide(&view);
        if !decision.changed(&view.status) {
            return;
        }
        self.pending = Some(Pending {
            status_revision: snap.status_revision,
            election_revision,
            next: decision.next,
            reason: decision.reason,
            view,
        });
    }

    fn write(&mut self, p: Pending, ctx: &mut Ctx<'_>, guard: bool) {
        let id = self.id.clone();
        // What the store holds is what the status serializes to: a field
        // lost on the way would make the next leader forget it.
        let stored = Status::from_json(&p.next.to_json()).unwrap_or_else(|_| p.next.clone());
        let guards = if guard {
            vec![(keys::SENTINEL_LEADER.to_string(), p.election_revision)]
        } else {
            Vec::new()
        };
        let value = Value::Status(Box::new(stored.clone()));
        let result = ctx.call(&id, |s, _| {
            let leader = s.get(keys::SENTINEL_LEADER).map(|e| match &e.value {
                Value::Text(holder) => (holder.clone(), e.create_revision),
                _ => (String::new(), e.create_revision),
            });
            (
                s.cas(keys::STATUS, value, p.status_revision, &guards, None),
                leader,
            )
        });
        let (outcome, leader_key, answered) = match result {
            Ok((outcome, leader)) => (outcome, leader, true),
            Err(CallError::LostReply((outcome, leader))) => (outcome, leader, false),
            Err(CallError::Unreachable) => return,
        };
        match outcome {
            Ok(Cas::Written(_)) => {
                ctx.note(&id, || {
                    format!(
                        "decision: generation {} primary {:?}: {}",
                        stored.generation, stored.primary, p.reason
                    )
                });
                ctx.stats.status_writes += 1;
                ctx.events.push(Event::StatusWritten(Box::new(StatusWrite {
                    by: id.clone(),
                    election_revision: p.election_revision,
                    leader_key,
                    before: p.view.status.clone(),
                    view: p.view,
                    after: stored,
                    reason: p.reason,
                })));
            }
            Ok(Cas::Conflict) if answered => {
                let still = ctx.call(&id, |s, _| {
                    s.get(keys::SENTINEL_LEADER).map(|e| e.create_revision)
                });
                if let Ok(current) = still {
                    if current != Some(p.election_revision) {
                        ctx.note(&id, || "status write refused: no longer the leader".into());
                        ctx.stats.refused_deposed_writes += 1;
                        self.leading = None;
                    }
                }
            }
            _ => {}
        }
    }
}
