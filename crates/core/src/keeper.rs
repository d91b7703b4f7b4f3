//! The keeper's rules for one tick, as a pure step: what the status asks of
//! this node, when to take and give up the primary lease, when a crashed
//! primary waits for the sentinel's verdict, how many plan rounds a tick
//! runs, when an operator's node request counts as carried out, and which
//! failures disqualify the node.
//!
//! The real keeper (`crates/pgwarden/src/keeper/node.rs`) and the
//! simulation's keeper both observe their postgres, call [`Tick::step`] and
//! carry out what it returns; neither holds a copy of these rules or of the
//! constants that shape the keeper's timing. A tick is:
//!
//! 1. [`Tick::new`] from the spec and status just read (`Err(Stale)`: the
//!    status is older than the one carried out; do nothing);
//! 2. take the primary lease when [`Tick::takes_primary_lease`];
//! 3. observe, [`Tick::step`], execute its actions, and again, until the
//!    step has no actions or an action fails;
//! 4. give the lease up when the last step says [`KeeperStep::release_primary_lease`].

use std::collections::BTreeSet;

use crate::decide::sync::render_sync_names;
use crate::plan::{plan, slot_name, Observed, PgAction, PlanError, Target};
use crate::report::ErrorKind;
use crate::spec::{NodeAction, NodeRequest, OnPostgresCrash, Spec};
use crate::status::{Assignment, Status};

/// The keeper's loop period without events, in milliseconds.
pub const LOOP_MS: u64 = 1000;
/// The loop period while a failover or switchover is between its two steps
/// (the sentinel waits on this node's report).
pub const FAST_LOOP_MS: u64 = 50;
/// Plan/execute rounds per tick: enough to converge within one tick when
/// each step's outcome makes the next possible (initdb, start, then the
/// replication role), so a node is never published as a ready primary
/// half-way through; bounded so that a tick always ends.
pub const MAX_PLAN_ROUNDS: usize = 4;
/// How long a keeper whose primary postgres crashed waits for the sentinel's
/// verdict before restarting it in place. The sentinel reacts to the report
/// within milliseconds; this bounds the outage when no standby is eligible.
pub const CRASH_VERDICT_WAIT_MS: u64 = 2000;

/// The status is older than the one this keeper already carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stale {
    /// The status read.
    pub generation: u64,
    /// The generation carried out.
    pub applied: u64,
}

/// What the store asks of this keeper for one tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tick<'a> {
    uid: &'a str,
    spec: &'a Spec,
    status: &'a Status,
    /// This node's assignment.
    pub assignment: Option<&'a Assignment>,
    /// `synchronous_standby_names` the status asks of this node as primary.
    pub sync_names: String,
    /// Slots this node must hold: on the primary one per standby following
    /// it; on a standby one per other standby, made ahead of a promotion.
    /// Not for members gone past `member_slots_ttl` or removed.
    pub wanted_slots: BTreeSet<String>,
    /// The operator's restart or re-clone request not carried out yet.
    pub node_request: Option<NodeRequest>,
    /// How long until the next tick without an event, in milliseconds.
    pub period_ms: u64,
    /// Re-clone this tick because the upstream no longer has our WAL (see
    /// [`Tick::reclone_for_lost_wal`]).
    lost_wal: bool,
}

/// How many times the walreceiver must hear "requested WAL segment ... has
/// already been removed" before the standby re-clones. One answer is the
/// primary's word already; the second (postgres retries every
/// `wal_retrieve_retry_interval`, 5 s) rules out a reply from a primary
/// that is itself about to be replaced.
pub const LOST_WAL_REPORTS: u32 = 2;

/// Whether a standby must be re-cloned because the WAL it needs is gone from
/// its upstream (its slot was dropped while it was away, and the primary
/// recycled the segments): streaming can never catch up, so without this a
/// human would have to run `ctl reinit`. Only a standby that follows the
/// current primary: mid-failover the answer may come from a dying upstream.
pub fn lost_wal_reclone(
    assignment: Option<&Assignment>,
    upstream_is_primary: bool,
    wal_gone_reports: u32,
) -> bool {
    matches!(assignment, Some(Assignment::Standby { .. }))
        && upstream_is_primary
        && wal_gone_reports >= LOST_WAL_REPORTS
}

/// One round's observation of postgres.
#[derive(Debug, Clone, Copy)]
pub struct Round<'a> {
    /// What the keeper sees of postgres now.
    pub observed: &'a Observed,
    /// This keeper holds the primary lease (taken this tick).
    pub holds_primary_lease: bool,
    /// How long ago postgres died without being asked to, if it did.
    pub crashed_ms_ago: Option<u64>,
    /// Rounds already carried out this tick.
    pub round: usize,
}

/// What one round of the tick does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeeperStep {
    /// Carry these out in order, stopping at the first failure. Empty: the
    /// tick is over.
    pub actions: Vec<PgAction>,
    /// The primary's postgres crashed: publish the report and do nothing
    /// else this tick, so that the sentinel can fail over.
    pub await_crash_verdict: bool,
    /// Give the primary lease up (if held), at the end of the tick: this node
    /// is not assigned primary and its postgres cannot accept writes.
    pub release_primary_lease: bool,
}

impl<'a> Tick<'a> {
    /// What `status` asks of keeper `uid`, which carried out generation
    /// `applied` and node request `handled_request` last.
    pub fn new(
        uid: &'a str,
        spec: &'a Spec,
        status: &'a Status,
        applied: u64,
        handled_request: u64,
    ) -> Result<Tick<'a>, Stale> {
        if status.generation < applied {
            return Err(Stale {
                generation: status.generation,
                applied,
            });
        }
        Ok(Tick {
            uid,
            spec,
            status,
            assignment: status.members.get(uid),
            sync_names: render_sync_names(
                &status.sync_names,
                spec.min_sync_standbys,
                spec.sync_mode,
            ),
            wanted_slots: status.slot_holders(uid).map(slot_name).collect(),
            node_request: spec
                .node_requests
                .get(uid)
                .filter(|r| r.id > handled_request)
                .copied(),
            period_ms: if status.deposed.is_some() {
                FAST_LOOP_MS
            } else {
                LOOP_MS
            },
            lost_wal: false,
        })
    }

    /// Asks for a re-clone this tick when [`lost_wal_reclone`] says so, given
    /// how often the running postgres heard its WAL is gone; returns whether
    /// it did. An operator's request still goes first.
    pub fn reclone_for_lost_wal(&mut self, wal_gone_reports: u32) -> bool {
        self.lost_wal = self.node_request.is_none()
            && lost_wal_reclone(
                self.assignment,
                self.upstream_is_primary(),
                wal_gone_reports,
            );
        self.lost_wal
    }

    fn upstream_is_primary(&self) -> bool {
        match self.assignment {
            Some(Assignment::Standby { follow, .. }) => {
                self.status.primary.as_deref() == Some(follow.as_str())
            }
            _ => true,
        }
    }

    /// The status assigns this node the primary role.
    pub fn wants_primary(&self) -> bool {
        matches!(self.assignment, Some(Assignment::Primary))
    }

    /// Take (or keep) the primary lease before anything else this tick:
    /// postgres starts or is promoted as primary only under it.
    pub fn takes_primary_lease(&self) -> bool {
        self.wants_primary()
    }

    /// What `plan` is asked to reach.
    pub fn target(&self, holds_primary_lease: bool) -> Target<'a> {
        Target {
            assignment: self.assignment,
            cluster_system_id: self.status.system_id,
            wanted_slots: self.wanted_slots.clone(),
            holds_primary_lease,
            upstream_is_primary: self.upstream_is_primary(),
            node_request: self
                .node_request
                .map(|r| r.action)
                .or(self.lost_wal.then_some(NodeAction::Reinit)),
            reclone_on_rewind_failure: self.spec.reclone_on_rewind_failure,
        }
    }

    /// One round: the actions that move postgres towards the assignment.
    /// A `PlanError` is fatal: the keeper stops (a human must act).
    pub fn step(&self, round: &Round<'_>) -> Result<KeeperStep, PlanError> {
        let observed = round.observed;
        let writable = observed.running && observed.in_recovery != Some(true);
        let release_primary_lease = !self.wants_primary() && !writable;
        let await_crash_verdict = round.round == 0
            && self.wants_primary()
            && self.spec.on_postgres_crash == OnPostgresCrash::Failover
            && !observed.running
            && round
                .crashed_ms_ago
                .is_some_and(|ago| ago < CRASH_VERDICT_WAIT_MS);
        let actions = if await_crash_verdict || round.round >= MAX_PLAN_ROUNDS {
            Vec::new()
        } else {
            plan(&self.target(round.holds_primary_lease), observed)?
        };
        Ok(KeeperStep {
            actions,
            await_crash_verdict,
            release_primary_lease,
        })
    }

    /// Records that `done` was carried out; returns the node request it
    /// completes, if any (a restart by its start, a re-clone by its base
    /// backup). The request is not planned again this tick.
    pub fn carried_out(&mut self, done: &PgAction) -> Option<NodeRequest> {
        if matches!(done, PgAction::BaseBackup { .. }) {
            self.lost_wal = false;
        }
        let request = self.node_request?;
        let completes = matches!(
            (request.action, done),
            (NodeAction::Restart, PgAction::Start)
                | (NodeAction::Reinit, PgAction::BaseBackup { .. })
        );
        if completes {
            self.node_request = None;
            Some(request)
        } else {
            None
        }
    }

    /// The keeper's uid.
    pub fn uid(&self) -> &str {
        self.uid
    }
}

/// Why an action failed, as far as the decisions care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureCause {
    /// The postgres binaries are missing or unusable.
    UnusableBinaries,
    /// A directory that a fresh copy was to go into is not empty.
    DirectoryNotEmpty,
    /// Anything else: a config write, a connection, a timeout, a promotion
    /// racing a crash.
    Other,
}

/// Whether a failed action disqualifies the node from promotion: only when
/// no retry can fix it (a human must act). Every other failure is reported
/// but never blocks a failover.
pub fn error_kind(cause: FailureCause) -> ErrorKind {
    match cause {
        FailureCause::UnusableBinaries | FailureCause::DirectoryNotEmpty => ErrorKind::Fatal,
        FailureCause::Other => ErrorKind::Transient,
    }
}

#[cfg(test)]
mod tests;
