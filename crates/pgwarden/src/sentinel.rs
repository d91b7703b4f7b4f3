//! The sentinel: one of possibly several, elected leader through an etcd
//! lease; the leader runs [`pgwarden_core::decide`] on every change and writes
//! the result.
//!
//! Leadership is an optimisation, not the safety mechanism: every write of
//! `status` is a transaction that compares the status revision the decision
//! was based on *and* the create revision of this sentinel's election key. A
//! deposed sentinel (its key expired and someone else created one) therefore
//! cannot write, however late its write arrives.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use pgwarden_core::{decide, keys, ClusterView, Decision, Spec};
use pgwarden_store::{CasOutcome, Guard, LeaseKeeper, Store};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{view, StoreArgs};

/// How often the leader re-decides without a store event.
const TICK: Duration = Duration::from_millis(1000);

/// `pgwarden sentinel` flags.
#[derive(Debug, Args)]
pub struct SentinelArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Name of this sentinel (default: host name and pid).
    #[arg(long)]
    pub id: Option<String>,
}

/// Runs a sentinel until `cancel`.
pub async fn run(args: SentinelArgs, cancel: CancellationToken) -> anyhow::Result<()> {
    let store = args.store.open().await?;
    let id = args.id.unwrap_or_else(default_id);
    let span = tracing::info_span!("sentinel", cluster = store.cluster(), id = id.as_str());
    crate::notify::ready();
    run_sentinel(store, id, cancel).instrument(span).await;
    Ok(())
}

fn default_id() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "sentinel".into());
    format!("{host}-{}", std::process::id())
}

/// The sentinel loop: campaign, lead while the election key holds, repeat.
pub async fn run_sentinel(store: Store, id: String, cancel: CancellationToken) {
    let ttl = spec_or_default(&store).await.sentinel_lease_ttl.0;
    let lease = LeaseKeeper::spawn(store.clone(), ttl, cancel.child_token());
    let mut lease_state = lease.state();
    let mut changes = store.watch_prefix("", cancel.child_token());
    let mut warned_unreachable = false;
    // Kept across terms of leadership: the spec and status last read whole.
    let mut last_good = view::LastGood::default();
    while !cancel.is_cancelled() {
        let Some(lease_id) = lease_state.borrow().id else {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = lease_state.changed() => continue,
            }
        };
        match store
            .create(
                keys::SENTINEL_LEADER,
                id.clone().into_bytes(),
                Some(lease_id),
            )
            .await
        {
            Ok(Some(revision)) => {
                warned_unreachable = false;
                tracing::info!(revision, "elected leader");
                lead(
                    &store,
                    revision,
                    lease_id,
                    &mut lease_state,
                    &mut changes,
                    &cancel,
                    &mut last_good,
                )
                .await;
                if !cancel.is_cancelled() {
                    tracing::warn!("lost leadership");
                }
            }
            Ok(None) => {
                warned_unreachable = false;
                // Someone else leads; wait for the key to change hands.
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = changes.recv() => {}
                    _ = tokio::time::sleep(TICK) => {}
                }
            }
            Err(e) => {
                if !warned_unreachable {
                    tracing::warn!(error = %e, "cannot campaign for leadership; retrying");
                    warned_unreachable = true;
                }
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(TICK) => {}
                }
            }
        }
    }
    lease.release().await;
}

async fn spec_or_default(store: &Store) -> Spec {
    match view::load(store).await {
        Ok(snap) => snap.spec.unwrap_or_default(),
        Err(_) => Spec::default(),
    }
}

/// Decides while this sentinel's election key (created at `election_revision`
/// under `lease_id`) is still the current one.
async fn lead(
    store: &Store,
    election_revision: i64,
    lease_id: i64,
    lease_state: &mut tokio::sync::watch::Receiver<pgwarden_store::LeaseState>,
    changes: &mut tokio::sync::mpsc::Receiver<i64>,
    cancel: &CancellationToken,
    last_good: &mut view::LastGood,
) {
    let guard = [Guard::CreateRevision {
        key: keys::SENTINEL_LEADER.to_string(),
        revision: election_revision,
    }];
    // Alert delivery and the etcd member probe run beside the rounds, for
    // this term of leadership only.
    let term = cancel.child_token();
    let _stop_term = term.clone().drop_guard();
    let alerts = Alerts::default();
    tokio::spawn(alerts.probe.clone().run(store.clone(), term.clone()));
    tokio::spawn(crate::alerts::deliver::run(
        store.clone(),
        guard.to_vec(),
        alerts.wake.clone(),
        term.clone(),
    ));
    loop {
        if lease_state.borrow().id != Some(lease_id) {
            return;
        }
        match round(store, &guard, last_good, &alerts).await {
            Ok(RoundOutcome::Deposed) => return,
            Ok(RoundOutcome::Done) => {}
            Err(e) => tracing::warn!(error = format!("{e:#}"), "decision round failed; retrying"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = lease_state.changed() => {}
            _ = changes.recv() => {
                // Coalesce a burst of events into one round.
                while changes.try_recv().is_ok() {}
            }
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}

/// The leader's alert machinery shared by its rounds.
#[derive(Debug, Default)]
struct Alerts {
    probe: crate::alerts::StoreProbe,
    wake: std::sync::Arc<tokio::sync::Notify>,
}

#[derive(Debug, PartialEq, Eq)]
enum RoundOutcome {
    Done,
    Deposed,
}

/// One round: read, decide, write. Split in two ([`prepare`] and [`write`])
/// so that the tests can move the store between the read and the write, as
/// a racing sentinel or an operator does.
async fn round(
    store: &Store,
    guard: &[Guard],
    last_good: &mut view::LastGood,
    alerts: &Alerts,
) -> anyhow::Result<RoundOutcome> {
    match prepare(store, guard, last_good, alerts).await? {
        Some(pending) => write(store, guard, pending, last_good).await,
        None => Ok(RoundOutcome::Done),
    }
}

/// A decision to write, and the status it was decided from.
#[derive(Debug)]
struct Pending {
    decision: Decision,
    /// The status key's mod revision when it was read: the write succeeds
    /// only if nobody wrote the status since.
    based_on_revision: i64,
    /// The generation read, for the log line.
    based_on_generation: u64,
    /// The status read could not be used and is being rewritten.
    rewrites_unreadable: bool,
}

/// Reads the cluster and decides; `None` when there is nothing to write.
async fn prepare(
    store: &Store,
    guard: &[Guard],
    last_good: &mut view::LastGood,
    alerts: &Alerts,
) -> anyhow::Result<Option<Pending>> {
    let mut snap = view::load(store).await.context("read the cluster")?;
    // A spec or status that cannot be used: decide from the last good copy
    // (logged once by patch), or wait when this sentinel has none.
    if !last_good.patch(&mut snap) {
        return Ok(None);
    }
    if snap.status_problem.as_ref().is_some_and(|p| p.newer) {
        // A newer pgwarden's status: never overwrite it with an older format.
        return Ok(None);
    }
    let Some(spec) = snap.spec else {
        tracing::debug!("cluster not initialised yet: run `pgwarden ctl init`");
        return Ok(None);
    };
    // Alerts are evaluated on what this round read; their failure never
    // holds up a decision.
    match crate::alerts::evaluate_round(
        store,
        guard,
        &spec,
        &snap.status,
        &snap.keepers,
        &alerts.probe,
        crate::clock::now_ms(),
    )
    .await
    {
        Ok(true) => alerts.wake.notify_waiters(),
        Ok(false) => {}
        Err(e) => tracing::warn!(
            error = format!("{e:#}"),
            "alert evaluation failed; retrying next round"
        ),
    }
    let view = ClusterView {
        now_ms: crate::clock::now_ms(),
        spec,
        status: snap.status.clone(),
        keepers: snap.keepers,
        primary_lease_holder: snap.primary_holder,
        proxies: snap.proxies,
    };
    let decision = decide(&view);
    // An unparseable status is replaced by the decision made from the last
    // good copy, changed or not.
    if !decision.changed(&snap.status) && snap.status_problem.is_none() {
        return Ok(None);
    }
    Ok(Some(Pending {
        decision,
        based_on_revision: snap.status_revision,
        based_on_generation: snap.status.generation,
        rewrites_unreadable: snap.status_problem.is_some(),
    }))
}

/// Writes a decision with compare-and-swap on the status revision it was
/// based on and on this sentinel's election key.
async fn write(
    store: &Store,
    guard: &[Guard],
    pending: Pending,
    last_good: &mut view::LastGood,
) -> anyhow::Result<RoundOutcome> {
    let decision = pending.decision;
    match store
        .cas(
            keys::STATUS,
            decision.next.to_json(),
            pending.based_on_revision,
            guard,
            None,
        )
        .await
        .context("write the cluster status")?
    {
        CasOutcome::Written { .. } => {
            last_good.wrote_status(&decision.next);
            if pending.rewrites_unreadable {
                tracing::warn!(
                    "the unreadable cluster status was rewritten from the last good copy"
                );
            }
            let quiet = matches!(
                decision.reason,
                pgwarden_core::Reason::HealthChanged | pgwarden_core::Reason::Unchanged
            );
            if decision.next.generation != pending.based_on_generation || !quiet {
                tracing::info!(
                    generation = decision.next.generation,
                    primary = decision.next.primary.as_deref().unwrap_or("-"),
                    "decision: {}",
                    decision.reason
                );
            } else {
                tracing::debug!("status updated: {}", decision.reason);
            }
            Ok(RoundOutcome::Done)
        }
        CasOutcome::Conflict => {
            // Either the status moved (re-read next round) or our election key
            // is no longer the current one: find out which.
            let leader = store
                .get(keys::SENTINEL_LEADER)
                .await
                .context("read the election key")?;
            Ok(after_conflict(leader.map(|v| v.create_revision), guard))
        }
    }
}

/// What a lost compare-and-swap means, given the create revision of the
/// election key now (`None`: nobody holds it): while the key is still the
/// one this sentinel created, only the status moved and the next round
/// re-reads it; otherwise this sentinel was deposed and must stop leading.
fn after_conflict(leader_create_revision: Option<i64>, guard: &[Guard]) -> RoundOutcome {
    let still_leader = leader_create_revision.is_some_and(|current| {
        guard
            .iter()
            .all(|g| matches!(g, Guard::CreateRevision { revision, .. } if *revision == current))
    });
    if still_leader {
        RoundOutcome::Done
    } else {
        RoundOutcome::Deposed
    }
}

#[cfg(test)]
mod tests;
