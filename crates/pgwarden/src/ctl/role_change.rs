//! `ctl switchover` and `ctl failover`: write the request into the spec, then
//! follow the sentinel carrying it out (decide() is the one code path that
//! changes roles), reporting progress and the outcome.

use std::time::Duration;

use anyhow::{bail, Context};
use pgwarden_core::spec::{RequestKind, RoleRequest};
use pgwarden_core::status::RequestOutcome;
use pgwarden_core::{Assignment, ObservedRole};
use pgwarden_store::Store;

use super::{confirm, load_initialised, update_spec};
use crate::view::Snapshot;

/// What the operator asked for.
#[derive(Debug)]
pub struct Ask {
    pub kind: RequestKind,
    pub to: Option<String>,
    pub force: bool,
    pub yes: bool,
    pub timeout: Duration,
}

fn kind_name(kind: RequestKind) -> &'static str {
    match kind {
        RequestKind::Switchover => "switchover",
        RequestKind::Failover => "failover",
    }
}

/// The standbys and their state, for the confirmation prompt.
fn describe(snap: &Snapshot) -> String {
    let primary_lsn = snap
        .status
        .primary
        .as_ref()
        .and_then(|p| snap.keepers.get(p))
        .and_then(|r| r.current_lsn);
    let mut lines = vec![format!(
        "primary: {}",
        snap.status.primary.as_deref().unwrap_or("(none)")
    )];
    for (uid, a) in &snap.status.members {
        if !matches!(a, Assignment::Standby { .. }) {
            continue;
        }
        let line = match snap.keepers.get(uid) {
            Some(r) if r.healthy && r.role == ObservedRole::Standby => {
                let lag = match (r.received_lsn(), primary_lsn) {
                    (Some(l), Some(p)) => format!("{} bytes behind", l.lag_behind(p)),
                    _ => "lag unknown".into(),
                };
                format!(
                    "  standby {uid}: healthy, {lag}{}",
                    if r.nofailover { ", nofailover" } else { "" }
                )
            }
            Some(_) => format!("  standby {uid}: not healthy"),
            None => format!("  standby {uid}: keeper not running"),
        };
        lines.push(line);
    }
    lines.join("\n")
}

/// Requests the role change and follows it to its outcome.
pub async fn run(store: &Store, ask: Ask) -> anyhow::Result<()> {
    let kind = kind_name(ask.kind);
    let snap = load_initialised(store).await?;
    if let Some(to) = &ask.to {
        if !snap.status.members.contains_key(to) {
            let known: Vec<&str> = snap.status.members.keys().map(String::as_str).collect();
            bail!(
                "unknown member {to:?}: the members are {}",
                known.join(", ")
            );
        }
        if snap.status.primary.as_deref() == Some(to.as_str()) {
            bail!("{to} is already the primary: nothing to do");
        }
    }
    eprintln!("{}", describe(&snap));
    let target = ask.to.as_deref().unwrap_or("the best standby");
    confirm(&format!("{kind} to {target}?"), ask.yes)?;
    let id = crate::clock::now_ms().max(snap.status.handled_request + 1);
    update_spec(store, |s| {
        s.request = Some(RoleRequest {
            id,
            kind: ask.kind,
            to: ask.to.clone(),
            force: ask.force,
        });
        Ok(())
    })
    .await?;
    eprintln!("{kind} requested; waiting for the sentinel");
    follow(store, id, kind, ask.timeout).await
}

async fn follow(store: &Store, id: u64, kind: &str, timeout: Duration) -> anyhow::Result<()> {
    let started = tokio::time::Instant::now();
    let mut last_said = String::new();
    loop {
        let snap = crate::view::load(store).await.context("read the cluster")?;
        let st = &snap.status;
        let outcome = st
            .request_outcome
            .as_ref()
            .filter(|_| st.handled_request >= id);
        if let Some(RequestOutcome::Refused { why }) = outcome {
            bail!("{kind} refused: {why}");
        }
        if let Some(RequestOutcome::Failed { why }) = outcome {
            bail!("{kind} failed: {why}");
        }
        if let Some(RequestOutcome::Done { .. }) = outcome {
            // Done in the status; report once the new primary accepts writes.
            if let Some(p) = &st.primary {
                if snap.primary_holder.as_deref() == Some(p)
                    && snap
                        .keepers
                        .get(p)
                        .is_some_and(|r| r.healthy && r.role == ObservedRole::Primary)
                {
                    println!(
                        "{kind} done: {p} is the primary (generation {}) after {:.1}s",
                        st.generation,
                        started.elapsed().as_secs_f64()
                    );
                    return Ok(());
                }
            }
        }
        let progress = match (&st.deposed, &st.target, &st.primary) {
            _ if outcome.is_none() => "waiting for the sentinel to take the request".to_string(),
            (Some(old), Some(t), _) => format!("{old} deposed, promoting {t}"),
            (_, _, Some(p)) => format!("{p} named primary, waiting for it to accept writes"),
            _ => outcome.map(ToString::to_string).unwrap_or_default(),
        };
        if progress != last_said {
            eprintln!("  {progress}");
            last_said = progress;
        }
        if started.elapsed() > timeout {
            bail!(
                "{kind} not finished after {}s ({last_said}); it goes on: follow it with `pgwarden ctl status`",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
