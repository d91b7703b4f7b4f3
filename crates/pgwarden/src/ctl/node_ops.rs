//! `ctl restart` and `ctl reinit`: per-node requests the keepers carry out,
//! and the rolling restart (standbys first, then a switchover, then the old
//! primary) that ctl orchestrates from them. `ctl remove`: forgetting a
//! member that is gone for good.

use std::time::Duration;

use anyhow::{bail, Context};
use pgwarden_core::spec::{NodeAction, NodeRequest, RequestKind};
use pgwarden_core::{keys, Assignment, ObservedRole};
use pgwarden_store::{CasOutcome, Store};

use super::role_change::{self, Ask};
use super::{confirm, load_initialised, update_spec};
use crate::clock::now_ms;
use crate::view::Snapshot;

/// How long one node may take to restart or re-clone before ctl gives up
/// following it.
const NODE_TIMEOUT: Duration = Duration::from_secs(300);

/// `ctl restart [--uid UID] [--pending]`.
pub async fn restart(
    store: &Store,
    uid: Option<String>,
    pending: bool,
    yes: bool,
) -> anyhow::Result<()> {
    let snap = load_initialised(store).await?;
    let mut nodes: Vec<String> = match &uid {
        Some(u) => {
            check_member(&snap, u)?;
            vec![u.clone()]
        }
        None => snap.status.members.keys().cloned().collect(),
    };
    if pending {
        nodes.retain(|u| snap.keepers.get(u).is_some_and(|r| r.pending_restart));
        if nodes.is_empty() {
            println!("no node has a restart pending");
            return Ok(());
        }
    }
    let primary = snap.status.primary.clone();
    // Standbys first; the primary last, after handing its role over.
    nodes.sort_by_key(|u| Some(u) == primary.as_ref());
    confirm(
        &format!(
            "restart postgres on {} (standbys first, the primary after a switchover)?",
            nodes.join(", ")
        ),
        yes,
    )?;
    for u in &nodes {
        if Some(u) == primary.as_ref() && snap.status.members.len() > 1 {
            eprintln!("switching the primary role away from {u} before restarting it");
            let ask = Ask {
                kind: RequestKind::Switchover,
                to: None,
                force: false,
                yes: true,
                timeout: Duration::from_secs(60),
            };
            role_change::run(store, ask)
                .await
                .context("switchover before restarting the primary")?;
        }
        request(store, u, NodeAction::Restart).await?;
        println!("{u} restarted");
    }
    Ok(())
}

/// `ctl reinit UID`.
pub async fn reinit(store: &Store, uid: String, yes: bool) -> anyhow::Result<()> {
    let snap = load_initialised(store).await?;
    check_member(&snap, &uid)?;
    if !matches!(
        snap.status.members.get(&uid),
        Some(Assignment::Standby { .. })
    ) {
        bail!("{uid} is the primary: only a standby can be re-cloned (switch over first)");
    }
    confirm(
        &format!("throw away the data of standby {uid} and clone it again from the primary?"),
        yes,
    )?;
    request(store, &uid, NodeAction::Reinit).await?;
    println!("{uid} re-cloned from the primary and streaming");
    Ok(())
}

/// `ctl remove UID`: forgets a member that is gone for good. It leaves
/// `ctl status`, and every node drops the replication slots kept for it.
/// Refused, changing nothing, for the primary and for a live member.
pub async fn remove(store: &Store, uid: String, yes: bool) -> anyhow::Result<()> {
    let mut asked = false;
    for _ in 0..5 {
        let snap = load_initialised(store).await?;
        let live_at = snap
            .keepers
            .get(&uid)
            .map(|r| format!("{}:{}", r.pg_host, r.pg_port));
        let next = snap.status.without_member(&uid, live_at.as_deref())?;
        if !asked {
            confirm(
                &format!("forget member {uid} and drop its replication slots on every node?"),
                yes,
            )?;
            asked = true;
        }
        match store
            .cas(
                keys::STATUS,
                next.to_json(),
                snap.status_revision,
                &[],
                None,
            )
            .await
            .context("write the cluster status")?
        {
            CasOutcome::Written { .. } => {
                let _ = store.delete(&keys::handled(&uid)).await;
                println!("{uid} removed: its replication slots are dropped on every node");
                return Ok(());
            }
            // The sentinel wrote meanwhile: check again on the new status.
            CasOutcome::Conflict => continue,
        }
    }
    bail!("the cluster status kept changing: {uid} not removed; try again")
}

fn check_member(snap: &Snapshot, uid: &str) -> anyhow::Result<()> {
    if !snap.status.members.contains_key(uid) {
        let known: Vec<&str> = snap.status.members.keys().map(String::as_str).collect();
        bail!(
            "unknown member {uid:?}: the members are {}",
            known.join(", ")
        );
    }
    if !snap.keepers.contains_key(uid) {
        bail!("{uid}'s keeper is not running: start it first");
    }
    Ok(())
}

/// Writes a node request, waits until the keeper carried it out and postgres
/// is healthy again, then removes the request so a restarted keeper does not
/// repeat it.
async fn request(store: &Store, uid: &str, action: NodeAction) -> anyhow::Result<()> {
    let id = now_ms();
    update_spec(store, |s| {
        s.node_requests
            .insert(uid.to_string(), NodeRequest { id, action });
        Ok(())
    })
    .await?;
    let started = tokio::time::Instant::now();
    loop {
        let snap = crate::view::load(store).await.context("read the cluster")?;
        let done = snap.keepers.get(uid).is_some_and(|r| {
            r.handled_node_request >= id
                && r.healthy
                && match snap.status.members.get(uid) {
                    Some(Assignment::Primary) => r.role == ObservedRole::Primary,
                    _ => r.role == ObservedRole::Standby && r.streaming,
                }
        });
        if done {
            break;
        }
        if started.elapsed() > NODE_TIMEOUT {
            bail!("{uid} did not finish within {}s: see its keeper's log; the request stays in the spec", NODE_TIMEOUT.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    update_spec(store, |s| {
        if s.node_requests.get(uid).is_some_and(|r| r.id == id) {
            s.node_requests.remove(uid);
        }
        Ok(())
    })
    .await
}
