//! Alerts in the sentinel: evaluate once per round, store the result, and
//! deliver the outbox.
//!
//! The rules are pure ([`pgwarden_core::alerts::evaluate`]); this module
//! reads the `alerts` key, runs them on what the round already read, and
//! writes the new state back with a compare-and-swap on the key's revision
//! *and* the sentinel's election key. A deposed sentinel therefore cannot
//! write an alert state, and a new leader starts from exactly the state
//! (and outbox) the old one stored: no transition is lost or repeated.
//! Delivery ([`deliver`]) is a separate task that drains the stored outbox
//! and marks each notification delivered under the same guard.

pub mod deliver;
mod receivers;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pgwarden_core::alerts::{
    self, AlertState, AlertStatus, Facts, Instance, Notification, Round, ALERTS_FORMAT_VERSION,
};
use pgwarden_core::{keys, Spec};
use pgwarden_store::{CasOutcome, Guard, Store};
use serde::Serialize;

/// How often the leader probes each etcd member for `store_unreachable`.
pub const STORE_PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// Bound on one member's answer to that probe.
const STORE_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// "Not probed yet" in [`StoreProbe`].
const UNPROBED: u64 = u64::MAX;

/// The stored alert state and the revision to compare against.
#[derive(Debug, Clone, Default)]
pub struct Stored {
    /// The state (default when the key is absent).
    pub state: AlertState,
    /// The key's mod revision (0 when absent).
    pub revision: i64,
}

/// Reads the `alerts` key. A state this pgwarden cannot read is an error:
/// the sentinel then leaves it alone rather than overwrite a newer format.
pub async fn load(store: &Store) -> anyhow::Result<Stored> {
    let Some(v) = store
        .get(keys::ALERTS)
        .await
        .context("read the alert state")?
    else {
        return Ok(Stored::default());
    };
    let state = AlertState::from_json(&v.value).context("parse the alert state (key alerts)")?;
    if state.format_version > ALERTS_FORMAT_VERSION {
        anyhow::bail!(
            "the alert state (key alerts) has format_version {}, newer than this pgwarden's {ALERTS_FORMAT_VERSION}: upgrade pgwarden",
            state.format_version
        );
    }
    Ok(Stored {
        state,
        revision: v.mod_revision,
    })
}

/// Writes `state` if the key is still at `revision` and the guards hold;
/// false on a conflict.
pub async fn store_state(
    store: &Store,
    state: &AlertState,
    revision: i64,
    guard: &[Guard],
) -> anyhow::Result<bool> {
    let outcome = store
        .cas(keys::ALERTS, state.to_json(), revision, guard, None)
        .await
        .context("write the alert state")?;
    Ok(matches!(outcome, CasOutcome::Written { .. }))
}

/// The etcd members the leader could not reach at its last probe, shared
/// between the probing task and the rounds.
#[derive(Debug, Clone)]
pub struct StoreProbe(Arc<AtomicU64>);

impl Default for StoreProbe {
    fn default() -> Self {
        StoreProbe(Arc::new(AtomicU64::new(UNPROBED)))
    }
}

impl StoreProbe {
    /// The last count, `None` before the first probe.
    pub fn get(&self) -> Option<u64> {
        Some(self.0.load(Ordering::Relaxed)).filter(|n| *n != UNPROBED)
    }

    /// Probes every [`STORE_PROBE_INTERVAL`] until `cancel`. Kept out of the
    /// round so that a hung member never delays a decision.
    pub async fn run(self, store: Store, cancel: tokio_util::sync::CancellationToken) {
        loop {
            let n = store.unreachable_members(STORE_PROBE_TIMEOUT).await;
            self.0.store(n as u64, Ordering::Relaxed);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(STORE_PROBE_INTERVAL) => {}
            }
        }
    }
}

/// One round's evaluation: read the state, run the rules on `snap`, write
/// the result if it changed. Returns whether anything new waits for
/// delivery.
pub async fn evaluate_round(
    store: &Store,
    guard: &[Guard],
    spec: &Spec,
    status: &pgwarden_core::Status,
    keepers: &BTreeMap<String, pgwarden_core::KeeperReport>,
    probe: &StoreProbe,
    now_ms: u64,
) -> anyhow::Result<bool> {
    let defs = alerts::definitions(spec).context("read the spec's alerts")?;
    let stored = load(store).await?;
    let measured = alerts::measure(&Facts {
        spec,
        status,
        keepers,
        store_unreachable_members: probe.get(),
        rpo_seconds: None,
    });
    let receivers: Vec<String> = spec
        .alert_receivers
        .iter()
        .map(|r| r.name.clone())
        .collect();
    let evaluated = alerts::evaluate(
        &stored.state,
        &Round {
            now_ms,
            cluster: store.cluster(),
            alerts: &defs,
            receivers: &receivers,
            measured: &measured,
            generation: status.generation,
            history: &status.history,
        },
    );
    if !evaluated.changed(&stored.state) {
        return Ok(false);
    }
    if !store_state(store, &evaluated.next, stored.revision, guard).await? {
        // Someone (the delivery task, or a new leader) wrote in between:
        // the next round evaluates again on the new state.
        return Ok(false);
    }
    for n in &evaluated.transitions {
        tracing::info!(
            id = n.id,
            alert = n.name.as_str(),
            member = n.member.as_deref().unwrap_or("-"),
            state = n.state.as_str(),
            "alert: {}",
            n.summary
        );
    }
    let dropped = evaluated.next.dropped - stored.state.dropped;
    if dropped > 0 {
        tracing::warn!(
            dropped,
            "alert outbox full: the oldest undelivered notifications were dropped; check the receivers"
        );
    }
    Ok(!evaluated.transitions.is_empty())
}

/// What `ctl alerts --json` and `GET /alerts` show: the firing alerts and
/// the recent transitions, each with the notification fields.
#[derive(Debug, Clone, Serialize)]
pub struct View {
    /// Firing now, one per alert and member.
    pub firing: Vec<Notification>,
    /// The last transitions, newest first.
    pub recent: Vec<Notification>,
    /// Notifications not yet confirmed by every receiver.
    pub undelivered: usize,
    /// Notifications dropped from a full outbox, ever.
    pub dropped: u64,
}

/// The view of `state`.
pub fn view(cluster: &str, state: &AlertState) -> View {
    let by_id: BTreeMap<u64, &Notification> = state.recent.iter().map(|n| (n.id, n)).collect();
    let firing = state
        .firing()
        .map(|i| match by_id.get(&i.id) {
            Some(n) => (*n).clone(),
            None => from_instance(cluster, i),
        })
        .collect();
    View {
        firing,
        recent: state.recent.iter().rev().cloned().collect(),
        undelivered: state.outbox.len(),
        dropped: state.dropped,
    }
}

/// A firing instance whose notification left the recent list.
fn from_instance(cluster: &str, i: &Instance) -> Notification {
    let on = i
        .member
        .as_deref()
        .map(|m| format!(" on {m}"))
        .unwrap_or_default();
    Notification {
        id: i.id,
        name: i.name.clone(),
        state: AlertStatus::Firing,
        severity: i.severity,
        cluster: cluster.to_string(),
        member: i.member.clone(),
        value: i.value,
        threshold: Some(i.threshold),
        since: alerts::rfc3339(i.since_ms),
        since_ms: i.since_ms,
        summary: format!("{cluster}: {}{on} firing", i.name),
        old_primary: None,
        new_primary: None,
        reason: None,
    }
}
