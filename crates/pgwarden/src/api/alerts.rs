//! `GET /alerts` and the alert metrics: the leader sentinel's alert state
//! as JSON (`firing` and `recent`, the notification fields, the same as
//! `ctl alerts --json`), and `pgwarden_alert_firing{alert,member}` plus
//! this node's data disk space for `/metrics`.

use pgwarden_core::alerts::AlertState;
use pgwarden_store::Store;

use super::STORE_TIMEOUT;
use crate::exposition::{Exposition, Kind};

/// Reads the alert state within the API's store bound.
pub async fn load(store: &Store) -> Result<AlertState, String> {
    match tokio::time::timeout(STORE_TIMEOUT, crate::alerts::load(store)).await {
        Ok(Ok(s)) => Ok(s.state),
        Ok(Err(e)) => Err(format!("cannot read the alerts from etcd: {e:#}")),
        Err(_) => Err(format!(
            "cannot read the alerts from etcd within {}s",
            STORE_TIMEOUT.as_secs()
        )),
    }
}

/// The alert and disk metrics (appended to the rest of `/metrics`).
/// `state` is `None` when the store could not be read: the family is then
/// left empty rather than claiming that nothing fires.
pub fn metrics(
    cluster: &str,
    uid: &str,
    disk: Option<(u64, u64)>,
    state: Option<&AlertState>,
) -> String {
    let mut e = Exposition::new();
    let node = [("cluster", cluster), ("uid", uid)];
    e.gauge(
        "pgwarden_data_disk_free_bytes",
        "Free bytes on the file system of this node's data directory.",
        &node,
        disk.map(|d| d.0),
    );
    e.gauge(
        "pgwarden_data_disk_size_bytes",
        "Size of the file system of this node's data directory, in bytes.",
        &node,
        disk.map(|d| d.1),
    );
    e.family(
        "pgwarden_alert_firing",
        Kind::Gauge,
        "1 for each alert firing now, by alert and member (empty for cluster-wide alerts), per the leader sentinel.",
    );
    for i in state.into_iter().flat_map(|s| s.firing()) {
        e.sample(
            &[
                ("cluster", cluster),
                ("alert", i.name.as_str()),
                ("member", i.member.as_deref().unwrap_or("")),
            ],
            1,
        );
    }
    e.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwarden_core::alerts::{Instance, Phase, Severity};

    #[test]
    fn firing_instances_are_one_series_each() {
        let mut s = AlertState::default();
        for (key, member, phase) in [
            ("member_gone/b", Some("b"), Phase::Firing),
            ("writes_blocked", None, Phase::Firing),
            ("replication_lag/c", Some("c"), Phase::Pending),
        ] {
            s.instances.insert(
                key.into(),
                Instance {
                    name: key.split('/').next().unwrap_or_default().into(),
                    member: member.map(Into::into),
                    phase,
                    since_ms: 0,
                    value: Some(0.0),
                    threshold: 1.0,
                    severity: Severity::Warning,
                    id: 1,
                },
            );
        }
        let text = metrics("c", "a", Some((5, 10)), Some(&s));
        assert!(
            text.contains(
                "pgwarden_alert_firing{cluster=\"c\",alert=\"member_gone\",member=\"b\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "pgwarden_alert_firing{cluster=\"c\",alert=\"writes_blocked\",member=\"\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            !text.contains("replication_lag"),
            "pending is not firing: {text}"
        );
        assert!(
            text.contains("pgwarden_data_disk_free_bytes{cluster=\"c\",uid=\"a\"} 5\n"),
            "{text}"
        );
    }
}
