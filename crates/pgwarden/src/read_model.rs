//! The status read model: the cluster as people (`ctl status`'s table) and
//! scripts (the JSON of the CLI contract, also the API's `/cluster` and the
//! source of its metrics) see it. Both are pure functions of a snapshot.

use std::collections::BTreeSet;
use std::fmt::Write;

use pgwarden_core::{Assignment, KeeperReport, ObservedRole, Status};
use serde::Serialize;

use crate::view::Snapshot;

/// `ctl status --output json`: the contract's fields, plus extras that never
/// rename or remove them.
#[derive(Debug, Serialize)]
pub struct StatusJson {
    pub cluster: String,
    pub generation: u64,
    pub primary: Option<String>,
    pub paused: bool,
    pub members: Vec<MemberJson>,
    pub proxies: Vec<ProxyJson>,
    pub system_id: Option<String>,
    pub timeline: u32,
    pub history: Vec<pgwarden_core::status::HistoryEntry>,
    /// The primary being replaced, during a failover or switchover.
    pub deposed: Option<String>,
    /// The node being promoted, during a switchover or manual failover.
    pub target: Option<String>,
    /// What became of the last switchover/failover request.
    pub request_outcome: Option<String>,
    /// off, on or strict.
    pub sync_mode: pgwarden_core::spec::SyncMode,
    /// Standbys that may be promoted without losing a commit (sync modes).
    pub sync_standbys: Vec<String>,
    /// Strict mode and no synchronous standby confirms commits: they wait.
    pub writes_blocked: bool,
    /// A spec or status in etcd that cannot be used (every role carries on
    /// with its last good copy): what is wrong and how to fix it.
    pub store_problems: Vec<String>,
}

/// One keeper in `ctl status --output json`.
#[derive(Debug, Serialize)]
pub struct MemberJson {
    pub uid: String,
    /// Assigned role: primary, standby, or none when unassigned.
    pub role: String,
    pub healthy: bool,
    pub timeline: u32,
    pub lsn: Option<String>,
    pub lag_bytes: Option<u64>,
    pub api_url: Option<String>,
    /// What the keeper reports postgres is doing (absent when the keeper is gone).
    pub state: Option<ObservedRole>,
    pub pg_address: Option<String>,
    pub applied_generation: Option<u64>,
    pub error: Option<String>,
    /// Parameters changed that need a restart of this node's postgres.
    pub pending_restart: bool,
}

/// One proxy in `ctl status --output json`.
#[derive(Debug, Serialize)]
pub struct ProxyJson {
    pub id: String,
    pub generation: u64,
}

fn assigned_role(status: &Status, uid: &str) -> &'static str {
    match status.members.get(uid) {
        Some(Assignment::Primary) => "primary",
        Some(Assignment::Standby { .. }) => "standby",
        None => "none",
    }
}

/// Builds the JSON object of the CLI contract.
pub fn to_json(cluster: &str, snap: &Snapshot) -> StatusJson {
    let reference = snap.primary_lsn();
    let uids: BTreeSet<&String> = snap
        .status
        .members
        .keys()
        .chain(snap.keepers.keys())
        .collect();
    let members = uids
        .into_iter()
        .map(|uid| {
            let report: Option<&KeeperReport> = snap.keepers.get(uid);
            let lsn = report.and_then(|r| r.lsn());
            MemberJson {
                uid: uid.clone(),
                role: assigned_role(&snap.status, uid).to_string(),
                healthy: report.is_some_and(|r| r.healthy),
                timeline: report.map_or(0, |r| r.timeline),
                lsn: lsn.map(|l| l.to_string()),
                lag_bytes: match (lsn, reference) {
                    (Some(l), Some(p)) => Some(l.lag_behind(p)),
                    _ => None,
                },
                api_url: report.map(|r| r.api_url.clone()),
                state: report.map(|r| r.role),
                pg_address: report.map(|r| format!("{}:{}", r.pg_host, r.pg_port)),
                applied_generation: report.map(|r| r.applied_generation),
                error: report.and_then(|r| r.error.clone()),
                pending_restart: report.is_some_and(|r| r.pending_restart),
            }
        })
        .collect();
    StatusJson {
        cluster: cluster.to_string(),
        generation: snap.status.generation,
        primary: snap.status.primary.clone(),
        paused: snap.spec.as_ref().is_some_and(|s| s.paused),
        members,
        proxies: snap
            .proxies
            .iter()
            .map(|(id, g)| ProxyJson {
                id: id.clone(),
                generation: *g,
            })
            .collect(),
        system_id: snap.status.system_id.map(|s| s.to_string()),
        timeline: snap.status.timeline,
        history: snap.status.history.clone(),
        deposed: snap.status.deposed.clone(),
        target: snap.status.target.clone(),
        request_outcome: snap
            .status
            .request_outcome
            .as_ref()
            .map(ToString::to_string),
        sync_mode: snap.spec.as_ref().map(|s| s.sync_mode).unwrap_or_default(),
        sync_standbys: snap.status.sync_standbys.clone(),
        writes_blocked: snap.spec.as_ref().is_some_and(|spec| {
            pgwarden_core::decide::sync::writes_blocked(spec, &snap.status, &snap.keepers)
        }),
        store_problems: [&snap.spec_problem, &snap.status_problem]
            .into_iter()
            .flatten()
            .map(|p| p.to_string())
            .collect(),
    }
}

/// A store string made safe for a terminal: control characters (an
/// escape sequence, a newline forging a row) are shown escaped.
fn esc(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// Renders the table people read. Every string from the store goes
/// through [`esc`].
pub fn table(cluster: &str, snap: &Snapshot) -> String {
    let j = to_json(cluster, snap);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "cluster {}  generation {}  primary {}{}",
        esc(&j.cluster),
        j.generation,
        esc(j.primary.as_deref().unwrap_or("(none)")),
        if j.paused {
            "  PAUSED (no automatic failover)"
        } else {
            ""
        }
    );
    for problem in &j.store_problems {
        let _ = writeln!(out, "PROBLEM: {}", esc(problem));
    }
    let _ = writeln!(
        out,
        "{:<12} {:<8} {:<12} {:<8} {:>3} {:<14} {:>10}  {:<21} NOTE",
        "UID", "ROLE", "STATE", "HEALTHY", "TL", "LSN", "LAG", "ADDRESS"
    );
    for m in &j.members {
        let state = match m.state {
            Some(s) => serde_json::to_value(s)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            None => "gone".to_string(),
        };
        let _ = writeln!(
            out,
            "{:<12} {:<8} {:<12} {:<8} {:>3} {:<14} {:>10}  {:<21} {}",
            esc(&m.uid),
            m.role,
            state,
            if m.healthy { "yes" } else { "no" },
            m.timeline,
            m.lsn.as_deref().unwrap_or("-"),
            m.lag_bytes.map_or("-".to_string(), |l| l.to_string()),
            esc(m.pg_address.as_deref().unwrap_or("-")),
            match (&m.error, m.pending_restart) {
                (Some(e), _) => esc(e),
                (None, true) => "pending restart".to_string(),
                (None, false) => String::new(),
            }
        );
    }
    if !j.proxies.is_empty() {
        let _ = writeln!(
            out,
            "proxies: {}",
            j.proxies
                .iter()
                .map(|p| format!("{}@{}", esc(&p.id), p.generation))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let Some(old) = &j.deposed {
        let _ = writeln!(
            out,
            "FAILOVER IN PROGRESS: {} deposed, promoting {}",
            esc(old),
            esc(j.target.as_deref().unwrap_or("the best standby"))
        );
    }
    if j.sync_mode != pgwarden_core::spec::SyncMode::Off {
        let mode = serde_json::to_value(j.sync_mode)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "synchronous replication: {mode}, promotable [{}]",
            j.sync_standbys.join(", ")
        );
    }
    if j.writes_blocked {
        let _ = writeln!(
            out,
            "WRITES BLOCKED: no synchronous standby (strict mode): commits wait until one is back"
        );
    }
    if let Some(outcome) = &j.request_outcome {
        let _ = writeln!(out, "last request: {}", esc(outcome));
    }
    let recent: Vec<_> = snap.status.history.iter().rev().take(5).collect();
    if !recent.is_empty() {
        let _ = writeln!(out, "recent decisions (newest first):");
    }
    for h in recent {
        let _ = writeln!(
            out,
            "  {}  gen {:<4} {} -> {}  {}",
            format_time(h.at_ms),
            h.generation,
            esc(h.old_primary.as_deref().unwrap_or("-")),
            esc(h.new_primary.as_deref().unwrap_or("-")),
            esc(&h.reason)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwarden_core::Lsn;
    use std::collections::BTreeMap;

    fn snapshot() -> Snapshot {
        let mut status = Status {
            generation: 2,
            primary: Some("a".into()),
            system_id: Some(9),
            timeline: 1,
            ..Status::default()
        };
        status.members.insert("a".into(), Assignment::Primary);
        status.members.insert(
            "b".into(),
            Assignment::Standby {
                follow: "a".into(),
                host: "h".into(),
                port: 1,
            },
        );
        let mut a = KeeperReport::new("a", "127.0.0.1", 5432, "http://127.0.0.1:8008");
        a.role = ObservedRole::Primary;
        a.healthy = true;
        a.timeline = 1;
        a.current_lsn = Some(Lsn(1000));
        let mut b = KeeperReport::new("b", "127.0.0.1", 5433, "http://127.0.0.1:8009");
        b.role = ObservedRole::Standby;
        b.healthy = true;
        b.timeline = 1;
        b.replay_lsn = Some(Lsn(400));
        Snapshot {
            spec: Some(pgwarden_core::Spec::default()),
            status,
            status_revision: 5,
            keepers: BTreeMap::from([("a".into(), a), ("b".into(), b)]),
            primary_holder: Some("a".into()),
            proxies: BTreeMap::from([("p1".into(), 2)]),
            spec_problem: None,
            status_problem: None,
        }
    }

    #[test]
    fn json_has_the_contract_fields_and_lag_against_the_primary() {
        let v = serde_json::to_value(to_json("main", &snapshot())).unwrap();
        for field in [
            "cluster",
            "generation",
            "primary",
            "paused",
            "members",
            "proxies",
        ] {
            assert!(v.get(field).is_some(), "missing {field}");
        }
        assert_eq!(v["cluster"], "main");
        assert_eq!(v["generation"], 2);
        assert_eq!(v["primary"], "a");
        assert_eq!(v["paused"], false);
        let b = &v["members"][1];
        for field in [
            "uid",
            "role",
            "healthy",
            "timeline",
            "lsn",
            "lag_bytes",
            "api_url",
        ] {
            assert!(b.get(field).is_some(), "member missing {field}");
        }
        assert_eq!(b["uid"], "b");
        assert_eq!(b["role"], "standby");
        assert_eq!(b["lsn"], "0/190");
        assert_eq!(b["lag_bytes"], 600);
        assert_eq!(v["members"][0]["lag_bytes"], 0);
        assert_eq!(v["proxies"][0]["id"], "p1");
        assert_eq!(v["proxies"][0]["generation"], 2);
    }

    #[test]
    fn control_characters_from_the_store_are_escaped() {
        let mut snap = snapshot();
        let b = snap.keepers.get_mut("b").unwrap();
        b.error = Some("boom\x1b[2J\nFAKE primary yes".into());
        let text = table("main", &snap);
        assert!(!text.contains('\x1b'), "{text}");
        assert!(text.contains("boom\\u{1b}[2J\\nFAKE"), "{text}");
        assert!(!text.lines().any(|l| l.starts_with("FAKE")), "{text}");
    }

    #[test]
    fn a_gone_keeper_still_shows_as_a_member() {
        let mut snap = snapshot();
        snap.keepers.remove("b");
        let j = to_json("main", &snap);
        let b = &j.members[1];
        assert_eq!(
            (b.uid.as_str(), b.healthy, b.lag_bytes, b.state),
            ("b", false, None, None)
        );
        assert!(table("main", &snap).contains("gone"));
    }
}

/// `2026-11-21 09:14:05Z` from milliseconds since the epoch (UTC): core's
/// RFC 3339 rendering, with a space and without the milliseconds.
fn format_time(ms: u64) -> String {
    let t = pgwarden_core::alerts::rfc3339(ms);
    format!("{} {}Z", &t[..10], &t[11..19])
}

#[cfg(test)]
mod time_tests {
    #[test]
    fn formats_utc_times() {
        assert_eq!(super::format_time(0), "1970-01-01 00:00:00Z");
        assert_eq!(
            super::format_time(1_795_252_445_000),
            "2026-11-21 09:14:05Z"
        );
        assert_eq!(super::format_time(951_782_400_000), "2000-02-29 00:00:00Z");
    }
}
