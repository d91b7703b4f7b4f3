//! The sentinel's decisions as this keeper saw them: counters by reason,
//! failovers and switchovers, and how long the last ones took.
//!
//! The status keeps only its last [`pgwarden_core::status::HISTORY_LEN`]
//! decisions, so counters cannot be read off it: this keeper follows the
//! status (a watch, plus every snapshot `/metrics` reads) and counts each
//! history entry newer than the generation it had seen. Counting starts at
//! the first status it reads, like any Prometheus counter starting with its
//! process. Durations, on the other hand, are read off the history as it
//! stands, so every keeper reports the same ones.
//!
//! A history entry records its kind ([`pgwarden_core::decide::Reason::label`]);
//! entries written by an older sentinel have only the reason's text, which
//! [`reason_label`] maps back to the variant (a test goes through every
//! variant so that a reworded reason cannot silently fall into `other`).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use pgwarden_core::status::HistoryEntry;
use pgwarden_core::{keys, Status};
use pgwarden_store::Store;
use tokio_util::sync::CancellationToken;

/// Re-read the status this often even without a watch event.
const RESYNC: Duration = Duration::from_secs(10);
/// Wait after a failed read of the status.
const RETRY: Duration = Duration::from_secs(1);

/// Reasons that change the generation, so that each has a series from the
/// start (a counter that appears only on its first increment hides that
/// increment from `rate()`).
pub const RECORDED_REASONS: [&str; 7] = [
    "initial_primary",
    "adopted_existing_data",
    "assigned_standbys",
    "deposed",
    "role_change_started",
    "promoted",
    "reinstated",
];

/// How a new primary came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleChange {
    /// The old primary failed (or the operator forced `ctl failover`).
    Failover,
    /// The operator's `ctl switchover`.
    Switchover,
}

/// What this keeper counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// The newest generation taken in; `None` before the first status.
    seen: Option<u64>,
    /// History entries counted, by [`reason_label`].
    pub by_reason: BTreeMap<&'static str, u64>,
    /// Promotions that completed a failover.
    pub failovers: u64,
    /// Promotions that completed a switchover.
    pub switchovers: u64,
}

impl Counts {
    /// Counts the entries of `status.history` newer than what was seen. The
    /// first status only sets the starting point.
    pub fn observe(&mut self, status: &Status) {
        let Some(seen) = self.seen else {
            self.seen = Some(status.generation);
            return;
        };
        if status.generation <= seen {
            return;
        }
        for (i, entry) in status.history.iter().enumerate() {
            if entry.generation <= seen {
                continue;
            }
            let reason = label_of(entry);
            *self.by_reason.entry(reason).or_default() += 1;
            if reason == "promoted" {
                match role_change(&status.history[..i]) {
                    RoleChange::Failover => self.failovers += 1,
                    RoleChange::Switchover => self.switchovers += 1,
                }
            }
        }
        self.seen = Some(status.generation);
    }
}

/// The counts, shared by the follower task and the request handlers.
#[derive(Debug, Default)]
pub struct Decisions(Mutex<Counts>);

impl Decisions {
    /// Takes in a status read from the store.
    pub fn observe(&self, status: &Status) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(status);
    }

    /// The counts so far.
    pub fn counts(&self) -> Counts {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Follows the status until `cancel`: reads it at start, on every change,
/// and every [`RESYNC`].
pub async fn follow(store: Store, decisions: &Decisions, cancel: CancellationToken) {
    let mut changes = store.watch_prefix(keys::STATUS, cancel.child_token());
    loop {
        let wait = match read_status(&store).await {
            Ok(status) => {
                decisions.observe(&status);
                RESYNC
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the cluster status for the decision counters");
                RETRY
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = changes.recv() => {
                if changed.is_none() {
                    return;
                }
                // One read for a burst of changes.
                while changes.try_recv().is_ok() {}
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn read_status(store: &Store) -> Result<Status, String> {
    match store.get(keys::STATUS).await {
        Ok(Some(v)) => Status::from_json(&v.value).map_err(|e| format!("parse the status: {e}")),
        Ok(None) => Ok(Status::default()),
        Err(e) => Err(e.to_string()),
    }
}

/// The last promotion of each kind in the status history and how long it
/// took, in the sentinel's clock: from the decision that deposed the old
/// primary to the moment the sentinel saw the new one hold the primary
/// lease (accept writes). For an older promotion, or one not confirmed yet,
/// the end is the promotion decision itself.
pub fn last_durations(status: &Status) -> Vec<(RoleChange, Duration)> {
    let history = &status.history;
    let newest_promotion = history.iter().rposition(|e| label_of(e) == "promoted");
    let mut out: Vec<(RoleChange, Duration)> = Vec::new();
    for (i, entry) in history.iter().enumerate().rev() {
        if label_of(entry) != "promoted" {
            continue;
        }
        let kind = role_change(&history[..i]);
        if out.iter().any(|(k, _)| *k == kind) {
            continue;
        }
        let started = deposal(&history[..i]).map_or(entry.at_ms, |d| d.at_ms);
        let confirmed = Some(i) == newest_promotion
            && status.primary_confirmed
            && status.primary == entry.new_primary
            && status.primary_confirmed_ms >= entry.at_ms;
        let ended = if confirmed {
            status.primary_confirmed_ms
        } else {
            entry.at_ms
        };
        out.push((kind, Duration::from_millis(ended.saturating_sub(started))));
    }
    out
}

/// What kind of decision `entry` was: its recorded kind, or (history of an
/// older sentinel) what its text says.
pub fn label_of(entry: &HistoryEntry) -> &'static str {
    if entry.kind.is_empty() {
        return reason_label(&entry.reason);
    }
    pgwarden_core::Reason::LABELS
        .into_iter()
        .find(|l| *l == entry.kind)
        .unwrap_or("other")
}

/// The decision that deposed the primary a promotion following `before`
/// replaced: the newest deposal since the last change of primary, if any.
fn deposal(before: &[HistoryEntry]) -> Option<&HistoryEntry> {
    for entry in before.iter().rev() {
        match label_of(entry) {
            "deposed" | "role_change_started" => return Some(entry),
            "promoted" | "reinstated" | "initial_primary" | "adopted_existing_data" => return None,
            _ => {}
        }
    }
    None
}

/// Whether a promotion following `before` completed a switchover. A
/// promotion in the same decision as its deposal, or whose deposal fell out
/// of the history, counts as a failover: a switchover always waits for the
/// old primary to give its lease up, so it takes two decisions.
fn role_change(before: &[HistoryEntry]) -> RoleChange {
    match deposal(before) {
        Some(d) if d.reason.starts_with("switchover ") => RoleChange::Switchover,
        _ => RoleChange::Failover,
    }
}

/// The [`pgwarden_core::decide::Reason`] variant, in snake case, whose text
/// `reason` is; `other` for text no variant writes.
///
/// Uids contain no spaces, so a reason that starts with one is split at the
/// first space; free text (a deposal's or a refusal's cause) only ever comes
/// last and is never matched against.
pub fn reason_label(reason: &str) -> &'static str {
    let exact = [
        ("no change", "unchanged"),
        (
            "waiting for a keeper that can become the first primary",
            "waiting_for_keepers",
        ),
        ("member health changed", "health_changed"),
        (
            "waiting for the synchronous standbys to report positions read after the deposition",
            "waiting_for_positions",
        ),
    ];
    if let Some((_, label)) = exact.iter().find(|(text, _)| *text == reason) {
        return label;
    }
    if let Some(rest) = reason.strip_prefix("primary ") {
        let after_uid = rest.split_once(' ').map_or("", |(_, r)| r);
        if after_uid.starts_with("deposed: ") {
            return "deposed";
        }
        if after_uid == "failed and no standby is eligible: waiting" {
            return "no_candidate";
        }
    }
    if let Some(rest) = reason.strip_prefix("request ") {
        if let Some((id, tail)) = rest.split_once(' ') {
            if id.bytes().all(|b| b.is_ascii_digit()) && tail.starts_with("refused: ") {
                return "request_refused";
            }
        }
    }
    if (reason.starts_with("switchover from ") || reason.starts_with("failover from "))
        && reason.ends_with(" started")
    {
        return "role_change_started";
    }
    if reason.starts_with("the cluster's data is system ") {
        return "recorded_system_id";
    }
    if reason.starts_with("synchronous standbys: listed [") {
        return "sync_set_changed";
    }
    if let Some(rest) = reason.strip_prefix("waiting for ") {
        if rest.starts_with("proxies ") && rest.ends_with(" to stop routing to the old primary") {
            return "waiting_for_proxies";
        }
        if rest.ends_with(" to give up the primary lease") {
            return "waiting_for_lease";
        }
        if rest.ends_with(" to receive all the old primary wrote") {
            return "waiting_for_catch_up";
        }
    }
    let after_uid = reason.split_once(' ').map_or("", |(_, r)| r);
    if after_uid == "chosen as the first primary: it will create the cluster" {
        return "initial_primary";
    }
    if after_uid.starts_with("chosen as the first primary: it already holds data of system ") {
        return "adopted_existing_data";
    }
    if after_uid.starts_with("promoted to primary (was ") && after_uid.ends_with(')') {
        return "promoted";
    }
    if after_uid == "reinstated as primary: no standby could take over" {
        return "reinstated";
    }
    if reason.ends_with(" assigned to stream from the primary") {
        return "assigned_standbys";
    }
    "other"
}

#[cfg(test)]
mod tests;
