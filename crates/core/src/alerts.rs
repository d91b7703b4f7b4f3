//! Threshold alerts with hysteresis, evaluated by the leader sentinel once
//! per round and delivered as events with ids.
//!
//! [`evaluate`] is pure: given the alert definitions, the previous
//! [`AlertState`] (read from the store's `alerts` key), what this round
//! measured, the status history and `now`, it returns the next state and
//! the transitions. Everything it remembers lives in that state, including
//! the outbox of notifications not yet delivered to each receiver, so a
//! newly elected sentinel carries on exactly where the old one stopped: it
//! neither loses nor repeats a transition. The sentinel writes the state
//! back with a compare-and-swap guarded by its election key, the same
//! fencing the status uses.

mod builtins;
mod config;
mod measure;
mod metric;
pub mod prometheus;
mod time;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use builtins::{BUILTIN_NAMES, DEFAULT_RPO_SECONDS};
pub use config::{
    definitions, Alert, AlertKind, AlertReceiver, AlertRule, Condition, ReceiverKind, Severity,
    Threshold,
};
pub use measure::{measure, Facts, Measured};
pub use metric::{Metric, Scope};
pub use time::rfc3339;

use crate::status::HistoryEntry;

/// The alert state format this build writes and understands.
pub const ALERTS_FORMAT_VERSION: u32 = 1;
/// How many past transitions the state keeps for `ctl alerts` and `/alerts`.
pub const RECENT_LEN: usize = 50;
/// Most notifications waiting for delivery; past it the oldest are dropped
/// (and counted), so that a receiver down for days cannot grow the store
/// key without bound.
pub const OUTBOX_LEN: usize = 200;

/// Firing or resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertStatus {
    /// The condition holds (or, for an event, it happened).
    Firing,
    /// The condition cleared.
    Resolved,
}

impl AlertStatus {
    /// `firing` or `resolved`.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Firing => "firing",
            AlertStatus::Resolved => "resolved",
        }
    }
}

/// One transition, as every receiver gets it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// The event id: unique in the cluster and increasing. A receiver that
    /// sees an id twice (delivered, then the sentinel died before it could
    /// record that) drops the second copy.
    pub id: u64,
    /// The alert's name.
    pub name: String,
    /// Firing or resolved.
    pub state: AlertStatus,
    /// critical, warning or info.
    pub severity: Severity,
    /// The cluster's name.
    pub cluster: String,
    /// The member, for per-member alerts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// The measured value at the transition (`None`: not measured, e.g. the
    /// member left the cluster, or an event).
    pub value: Option<f64>,
    /// The firing threshold (`None` for events).
    pub threshold: Option<f64>,
    /// When this state began (RFC 3339, UTC).
    pub since: String,
    /// The same, in milliseconds since the Unix epoch.
    pub since_ms: u64,
    /// One line for people.
    pub summary: String,
    /// `failover` only: the primary before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_primary: Option<String>,
    /// `failover` only: the primary after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_primary: Option<String>,
    /// `failover` only: why (failover or switchover, and the decision's reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Where a live alert instance stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The condition holds, not yet for `for`.
    Pending,
    /// Fired; waits for the value to clear.
    Firing,
}

/// One alert for one member (or the cluster) that is pending or firing.
/// Inactive instances are not stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    /// The alert.
    pub name: String,
    /// The member, for per-member alerts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// Pending or firing.
    pub phase: Phase,
    /// When it entered this phase (ms since epoch).
    pub since_ms: u64,
    /// The value that moved it into this phase.
    pub value: Option<f64>,
    /// The firing threshold.
    pub threshold: f64,
    /// Severity at firing.
    pub severity: Severity,
    /// The event id of the firing notification (0 while pending).
    pub id: u64,
}

/// A notification some receivers have not confirmed yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outgoing {
    /// The notification.
    pub notification: Notification,
    /// Receivers still to deliver it to.
    pub receivers: Vec<String>,
}

/// Everything the alerts remember, stored under the `alerts` key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AlertState {
    /// Format of this document.
    pub format_version: u32,
    /// The next event id.
    pub next_id: u64,
    /// Pending and firing instances, by [`instance_key`].
    pub instances: BTreeMap<String, Instance>,
    /// The status generation up to which failovers were turned into events;
    /// `None` before the first evaluation (then history is not replayed).
    pub events_seen_generation: Option<u64>,
    /// The last transitions, oldest first.
    pub recent: Vec<Notification>,
    /// Transitions waiting for delivery, oldest first.
    pub outbox: Vec<Outgoing>,
    /// Notifications dropped from a full outbox, ever.
    pub dropped: u64,
}

impl Default for AlertState {
    fn default() -> Self {
        AlertState {
            format_version: ALERTS_FORMAT_VERSION,
            next_id: 1,
            instances: BTreeMap::new(),
            events_seen_generation: None,
            recent: Vec::new(),
            outbox: Vec::new(),
            dropped: 0,
        }
    }
}

/// The key of an instance in [`AlertState::instances`].
pub fn instance_key(name: &str, member: Option<&str>) -> String {
    match member {
        Some(m) => format!("{name}/{m}"),
        None => name.to_string(),
    }
}

impl AlertState {
    /// JSON for the store.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses the stored state.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The firing instances.
    pub fn firing(&self) -> impl Iterator<Item = &Instance> {
        self.instances.values().filter(|i| i.phase == Phase::Firing)
    }

    /// Records that `receiver` has notification `id`; true when that changed
    /// anything (it was still owed).
    pub fn delivered(&mut self, id: u64, receiver: &str) -> bool {
        let Some(pos) = self.outbox.iter().position(|o| o.notification.id == id) else {
            return false;
        };
        let before = self.outbox[pos].receivers.len();
        self.outbox[pos].receivers.retain(|r| r != receiver);
        let changed = self.outbox[pos].receivers.len() != before;
        if self.outbox[pos].receivers.is_empty() {
            self.outbox.remove(pos);
        }
        changed
    }

    /// The oldest notification still owed to `receiver`.
    pub fn next_for(&self, receiver: &str) -> Option<&Notification> {
        self.outbox
            .iter()
            .find(|o| o.receivers.iter().any(|r| r == receiver))
            .map(|o| &o.notification)
    }

    /// Drops receivers that no longer exist from the outbox.
    fn forget_receivers(&mut self, known: &[String]) {
        for o in &mut self.outbox {
            o.receivers.retain(|r| known.contains(r));
        }
        self.outbox.retain(|o| !o.receivers.is_empty());
    }
}

/// What one round's evaluation needs besides the state.
#[derive(Debug, Clone, Copy)]
pub struct Round<'a> {
    /// Wall-clock now (ms since epoch).
    pub now_ms: u64,
    /// The cluster's name.
    pub cluster: &'a str,
    /// The definitions ([`definitions`]).
    pub alerts: &'a [Alert],
    /// Every receiver's name, in the spec's order.
    pub receivers: &'a [String],
    /// This round's values.
    pub measured: &'a Measured,
    /// The status generation.
    pub generation: u64,
    /// The status history (for failover events).
    pub history: &'a [HistoryEntry],
}

/// The result of [`evaluate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluated {
    /// The state to store.
    pub next: AlertState,
    /// The transitions of this round, in id order (already in `next`'s
    /// outbox and recent list).
    pub transitions: Vec<Notification>,
}

impl Evaluated {
    /// Whether `next` differs from the state evaluated.
    pub fn changed(&self, before: &AlertState) -> bool {
        self.next != *before
    }
}

/// One round: moves every instance through pending → firing → resolved on
/// this round's values and turns new failovers into events.
pub fn evaluate(state: &AlertState, round: &Round<'_>) -> Evaluated {
    let mut next = state.clone();
    let mut transitions = Vec::new();
    let mut live = std::collections::BTreeSet::new();
    for alert in round.alerts.iter().filter(|a| a.enabled) {
        let AlertKind::Threshold { metric, condition } = alert.kind else {
            continue;
        };
        for ((m, member), value) in round.measured.range((metric, None)..) {
            if *m != metric {
                break;
            }
            let key = instance_key(&alert.name, member.as_deref());
            live.insert(key.clone());
            step_instance(
                &mut next,
                &mut transitions,
                round,
                alert,
                condition,
                key,
                member,
                *value,
            );
        }
    }
    // Instances whose member left, whose alert was turned off or removed,
    // or whose value is no longer measured at all: resolve what fired.
    let gone: Vec<String> = next
        .instances
        .keys()
        .filter(|k| !live.contains(*k))
        .cloned()
        .collect();
    for key in gone {
        if let Some(inst) = next.instances.remove(&key) {
            if inst.phase == Phase::Firing {
                let alert = round.alerts.iter().find(|a| a.name == inst.name);
                let n = notification(
                    &mut next,
                    round,
                    &inst.name,
                    AlertStatus::Resolved,
                    inst.severity,
                    inst.member.clone(),
                    None,
                    Some(inst.threshold),
                    format!(
                        "{} resolved: no longer measured",
                        describe(&inst.name, inst.member.as_deref())
                    ),
                );
                push(&mut next, &mut transitions, n, alert, round.receivers);
            }
        }
    }
    failover_events(&mut next, &mut transitions, round);
    next.forget_receivers(round.receivers);
    Evaluated { next, transitions }
}

#[allow(clippy::too_many_arguments)]
fn step_instance(
    next: &mut AlertState,
    transitions: &mut Vec<Notification>,
    round: &Round<'_>,
    alert: &Alert,
    condition: Condition,
    key: String,
    member: &Option<String>,
    value: Option<f64>,
) {
    let now = round.now_ms;
    let current = next.instances.get(&key).cloned();
    let Some(v) = value else {
        // Not known this round: hold whatever state there is.
        return;
    };
    match current {
        None if condition.fires(v) => {
            let pending = Instance {
                name: alert.name.clone(),
                member: member.clone(),
                phase: Phase::Pending,
                since_ms: now,
                value: Some(v),
                threshold: condition.threshold(),
                severity: alert.severity,
                id: 0,
            };
            next.instances.insert(key.clone(), pending);
            maybe_fire(next, transitions, round, alert, condition, &key, v);
        }
        None => {}
        Some(inst) if inst.phase == Phase::Pending => {
            if condition.fires(v) {
                maybe_fire(next, transitions, round, alert, condition, &key, v);
            } else {
                next.instances.remove(&key);
            }
        }
        Some(inst) if condition.clears(v) => {
            next.instances.remove(&key);
            let n = notification(
                next,
                round,
                &alert.name,
                AlertStatus::Resolved,
                inst.severity,
                member.clone(),
                Some(v),
                Some(condition.threshold()),
                format!(
                    "{} resolved: {} is {} ({})",
                    describe(&alert.name, member.as_deref()),
                    metric_name(alert),
                    fmt_value(v),
                    clear_text(condition)
                ),
            );
            push(next, transitions, n, Some(alert), round.receivers);
        }
        Some(_) => {}
    }
}

/// Fires a pending instance once it has held for `for`.
fn maybe_fire(
    next: &mut AlertState,
    transitions: &mut Vec<Notification>,
    round: &Round<'_>,
    alert: &Alert,
    condition: Condition,
    key: &str,
    v: f64,
) {
    let Some(inst) = next.instances.get(key) else {
        return;
    };
    if round.now_ms.saturating_sub(inst.since_ms) < alert.for_ms {
        return;
    }
    let member = inst.member.clone();
    let n = notification(
        next,
        round,
        &alert.name,
        AlertStatus::Firing,
        alert.severity,
        member.clone(),
        Some(v),
        Some(condition.threshold()),
        format!(
            "{} firing: {} is {} ({})",
            describe(&alert.name, member.as_deref()),
            metric_name(alert),
            fmt_value(v),
            fire_text(condition)
        ),
    );
    let id = n.id;
    if let Some(inst) = next.instances.get_mut(key) {
        inst.phase = Phase::Firing;
        inst.since_ms = round.now_ms;
        inst.value = Some(v);
        inst.severity = alert.severity;
        inst.id = id;
    }
    push(next, transitions, n, Some(alert), round.receivers);
}

/// Turns each completed failover or switchover in the history since the
/// last round into one `failover` event.
fn failover_events(next: &mut AlertState, transitions: &mut Vec<Notification>, round: &Round<'_>) {
    let Some(seen) = next.events_seen_generation else {
        next.events_seen_generation = Some(round.generation);
        return;
    };
    if round.generation <= seen {
        if round.generation < seen {
            // A reset cluster (`ctl init --force`): start counting again.
            next.events_seen_generation = Some(round.generation);
        }
        return;
    }
    next.events_seen_generation = Some(round.generation);
    let alert = round
        .alerts
        .iter()
        .find(|a| a.enabled && matches!(a.kind, AlertKind::Failover));
    let Some(alert) = alert else { return };
    for (i, entry) in round.history.iter().enumerate() {
        if entry.generation <= seen || entry.kind != "promoted" {
            continue;
        }
        // The deposal or the operator's request that started this one.
        let start = round.history[..i]
            .iter()
            .rev()
            .take_while(|e| e.kind != "promoted")
            .find(|e| e.kind == "deposed" || e.kind == "role_change_started");
        let old = start
            .and_then(|s| s.old_primary.clone())
            .or_else(|| entry.old_primary.clone());
        let kind = match start {
            Some(s) if s.reason.starts_with("switchover ") => "switchover",
            _ => "failover",
        };
        let why = start.map_or(entry.reason.as_str(), |s| s.reason.as_str());
        let new = entry.new_primary.clone();
        let summary = format!(
            "{kind}: {} -> {}: {why}",
            old.as_deref().unwrap_or("none"),
            new.as_deref().unwrap_or("none")
        );
        let mut n = notification(
            next,
            round,
            &alert.name,
            AlertStatus::Firing,
            alert.severity,
            new.clone(),
            None,
            None,
            summary,
        );
        n.since_ms = entry.at_ms;
        n.since = rfc3339(entry.at_ms);
        n.old_primary = old;
        n.new_primary = new;
        n.reason = Some(format!("{kind}: {why}"));
        push(next, transitions, n, Some(alert), round.receivers);
    }
}

#[allow(clippy::too_many_arguments)]
fn notification(
    next: &mut AlertState,
    round: &Round<'_>,
    name: &str,
    state: AlertStatus,
    severity: Severity,
    member: Option<String>,
    value: Option<f64>,
    threshold: Option<f64>,
    summary: String,
) -> Notification {
    let id = next.next_id;
    next.next_id += 1;
    Notification {
        id,
        name: name.to_string(),
        state,
        severity,
        cluster: round.cluster.to_string(),
        member,
        value,
        threshold,
        since: rfc3339(round.now_ms),
        since_ms: round.now_ms,
        summary: format!("{}: {summary}", round.cluster),
        old_primary: None,
        new_primary: None,
        reason: None,
    }
}

/// Records a transition: recent list, outbox (to the alert's receivers).
fn push(
    next: &mut AlertState,
    transitions: &mut Vec<Notification>,
    n: Notification,
    alert: Option<&Alert>,
    all: &[String],
) {
    next.recent.push(n.clone());
    if next.recent.len() > RECENT_LEN {
        let extra = next.recent.len() - RECENT_LEN;
        next.recent.drain(..extra);
    }
    let receivers: Vec<String> = match alert.and_then(|a| a.receivers.as_ref()) {
        Some(r) => all.iter().filter(|a| r.contains(a)).cloned().collect(),
        None => all.to_vec(),
    };
    if !receivers.is_empty() {
        next.outbox.push(Outgoing {
            notification: n.clone(),
            receivers,
        });
        if next.outbox.len() > OUTBOX_LEN {
            let extra = next.outbox.len() - OUTBOX_LEN;
            next.outbox.drain(..extra);
            next.dropped += extra as u64;
        }
    }
    transitions.push(n);
}

fn describe(name: &str, member: Option<&str>) -> String {
    match member {
        Some(m) => format!("{name} on {m}"),
        None => name.to_string(),
    }
}

fn metric_name(alert: &Alert) -> &'static str {
    match alert.kind {
        AlertKind::Threshold { metric, .. } => metric.name(),
        AlertKind::Failover => "failover",
    }
}

fn fire_text(c: Condition) -> String {
    match c {
        Condition::Above { fire, .. } => format!("above {}", fmt_value(fire)),
        Condition::Below { fire, .. } => format!("below {}", fmt_value(fire)),
    }
}

fn clear_text(c: Condition) -> String {
    match c {
        Condition::Above { clear, .. } => format!("at or below {}", fmt_value(clear)),
        Condition::Below { clear, .. } => format!("at or above {}", fmt_value(clear)),
    }
}

/// A value as people read it: whole numbers without a fraction.
pub fn fmt_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests;
