//! Draining the outbox: one loop per receiver, oldest notification first,
//! retried with exponential backoff while the receiver is down.
//!
//! A notification leaves the outbox for a receiver only once that
//! receiver accepted it *and* the store recorded so (compare-and-swap under
//! the leader's election key). If the sentinel dies between the two, the
//! next leader sends it again with the same event id: receivers see each
//! transition at least once, and exactly once when they drop repeated ids
//! (Alertmanager merges repeats by their labels). docs/alerts.md says so.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use pgwarden_core::alerts::{AlertReceiver, AlertState};
use pgwarden_core::{keys, Spec};
use pgwarden_store::{Guard, Store};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::receivers;

/// First retry delay after a failed delivery.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// How often a receiver loop looks for work without being woken.
const POLL: Duration = Duration::from_secs(1);
/// How often firing alerts are posted to an Alertmanager again: it ends an
/// alert that is not re-posted within its `resolve_timeout` (5m by default).
const ALERTMANAGER_REFRESH: Duration = Duration::from_secs(60);
/// Attempts to record a delivery before giving up (the next pass retries,
/// by sending again).
const MARK_ATTEMPTS: usize = 10;

/// Runs a loop per configured receiver until `cancel`; `wake` is notified
/// when a round queued something.
pub async fn run(store: Store, guard: Vec<Guard>, wake: Arc<Notify>, cancel: CancellationToken) {
    let mut loops: BTreeMap<String, (AlertReceiver, JoinHandle<()>, CancellationToken)> =
        BTreeMap::new();
    loop {
        let receivers = match store.get(keys::SPEC).await {
            Ok(Some(v)) => Spec::from_json(&v.value).ok().map(|s| s.alert_receivers),
            _ => None,
        };
        if let Some(receivers) = receivers {
            loops.retain(|name, (r, _, c)| {
                let keep = receivers.iter().any(|n| n == r && &n.name == name);
                if !keep {
                    c.cancel();
                }
                keep
            });
            for r in receivers {
                if loops.contains_key(&r.name) {
                    continue;
                }
                let child = cancel.child_token();
                let handle = tokio::spawn(receiver_loop(
                    store.clone(),
                    guard.clone(),
                    r.clone(),
                    wake.clone(),
                    child.clone(),
                ));
                loops.insert(r.name.clone(), (r, handle, child));
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(POLL * 5) => {}
        }
    }
    for (_, (_, handle, c)) in loops {
        c.cancel();
        let _ = handle.await;
    }
}

async fn receiver_loop(
    store: Store,
    guard: Vec<Guard>,
    receiver: AlertReceiver,
    wake: Arc<Notify>,
    cancel: CancellationToken,
) {
    let Some(kind) = receiver.kind() else { return };
    let name = receiver.name.as_str();
    let mut backoff = BACKOFF_MIN;
    let mut failing_since: Option<Instant> = None;
    let mut last_refresh = Instant::now();
    let is_alertmanager = matches!(kind, pgwarden_core::alerts::ReceiverKind::Alertmanager(_));
    while !cancel.is_cancelled() {
        let next = match super::load(&store).await {
            Ok(s) => s.state.next_for(name).cloned().map(|n| (n, s.state)),
            Err(e) => {
                tracing::debug!(
                    receiver = name,
                    error = format!("{e:#}"),
                    "cannot read the alert outbox"
                );
                None
            }
        };
        let Some((n, state)) = next else {
            if is_alertmanager && last_refresh.elapsed() >= ALERTMANAGER_REFRESH {
                last_refresh = Instant::now();
                refresh(&kind, &store, name).await;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
            continue;
        };
        drop(state);
        let sent = tokio::select! {
            _ = cancel.cancelled() => return,
            r = receivers::send(&kind, &n) => r,
        };
        match sent {
            Ok(()) => {
                if let Some(since) = failing_since.take() {
                    tracing::info!(
                        receiver = name,
                        down_for_s = since.elapsed().as_secs(),
                        "alert receiver accepts notifications again"
                    );
                }
                backoff = BACKOFF_MIN;
                mark(&store, &guard, n.id, name).await;
                tracing::info!(
                    receiver = name,
                    id = n.id,
                    alert = n.name.as_str(),
                    state = n.state.as_str(),
                    "alert delivered"
                );
            }
            Err(e) => {
                if failing_since.is_none() {
                    failing_since = Some(Instant::now());
                    tracing::warn!(
                        receiver = name,
                        id = n.id,
                        error = e,
                        "alert delivery failed; retrying with backoff"
                    );
                } else {
                    tracing::debug!(
                        receiver = name,
                        id = n.id,
                        error = e,
                        "alert delivery failed again"
                    );
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Records that `receiver` has notification `id`.
async fn mark(store: &Store, guard: &[Guard], id: u64, receiver: &str) {
    for _ in 0..MARK_ATTEMPTS {
        let stored = match super::load(store).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(
                    receiver,
                    id,
                    error = format!("{e:#}"),
                    "cannot record an alert delivery; it may be sent again"
                );
                return;
            }
        };
        let mut state: AlertState = stored.state;
        if !state.delivered(id, receiver) {
            return;
        }
        match super::store_state(store, &state, stored.revision, guard).await {
            Ok(true) => return,
            // The round wrote in between; or leadership moved, in which
            // case the new leader sends it again (same id).
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!(
                    receiver,
                    id,
                    error = format!("{e:#}"),
                    "cannot record an alert delivery; it may be sent again"
                );
                return;
            }
        }
    }
}

/// Posts every firing alert routed to this Alertmanager again (it merges
/// them by labels), so that its resolve_timeout never ends one that still
/// fires.
async fn refresh(kind: &pgwarden_core::alerts::ReceiverKind<'_>, store: &Store, name: &str) {
    let Ok(stored) = super::load(store).await else {
        return;
    };
    let defs = match store.get(keys::SPEC).await {
        Ok(Some(v)) => Spec::from_json(&v.value)
            .ok()
            .and_then(|s| pgwarden_core::alerts::definitions(&s).ok()),
        _ => None,
    };
    let Some(defs) = defs else { return };
    let routed = |alert: &str| {
        defs.iter().any(|d| {
            d.name == alert
                && d.receivers
                    .as_ref()
                    .is_none_or(|r| r.iter().any(|r| r == name))
        })
    };
    for n in super::view(store.cluster(), &stored.state).firing {
        if !routed(&n.name) {
            continue;
        }
        if let Err(e) = receivers::send(kind, &n).await {
            tracing::debug!(
                receiver = name,
                error = e,
                "refreshing a firing alert failed"
            );
        }
    }
}
