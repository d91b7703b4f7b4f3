//! Reading the whole cluster from the store in one consistent snapshot.
//!
//! Every role needs the same picture (spec, status, keeper reports, primary
//! lease, proxies). A single range read over the cluster prefix returns it at
//! one store revision, so a role never mixes a new status with old reports.
//!
//! A spec or status that cannot be used (it does not parse, or a newer
//! pgwarden wrote it) does not fail the read: the snapshot names the problem
//! and every role carries on with its last good copy ([`LastGood`]), so a
//! bad `etcdctl put` never stops the primary, the proxies or failover.

use std::collections::BTreeMap;

use pgwarden_core::status::STATUS_FORMAT_VERSION;
use pgwarden_core::{keys, KeeperReport, Lsn, ObservedRole, Spec, SpecError, Status};
use pgwarden_store::{Store, StoreError};

/// The cluster as the store shows it at one revision.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The spec, `None` when the cluster was never initialised.
    pub spec: Option<Spec>,
    /// The status (default when no sentinel wrote one yet).
    pub status: Status,
    /// The status key's mod revision (0 when absent), for compare-and-swap.
    pub status_revision: i64,
    /// Live keepers' reports.
    pub keepers: BTreeMap<String, KeeperReport>,
    /// The keeper holding the primary lease.
    pub primary_holder: Option<String>,
    /// Live proxies and the generation each has applied.
    pub proxies: BTreeMap<String, u64>,
    /// The spec key exists but cannot be used; `spec` is then `None` (or
    /// the last good copy, once [`LastGood::patch`] filled it in).
    pub spec_problem: Option<Unreadable>,
    /// The status key exists but cannot be used; `status` is then the
    /// default (or the last good copy).
    pub status_problem: Option<Unreadable>,
}

/// A spec or status in the store that this pgwarden cannot use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// The key, relative to the cluster prefix (`spec`, `status`).
    pub key: &'static str,
    /// Why it cannot be used.
    pub cause: String,
    /// A newer pgwarden wrote it: never overwrite it.
    pub newer: bool,
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fix = match (self.key, self.newer) {
            (_, true) => "upgrade pgwarden on every node",
            (keys::SPEC, false) => {
                "repair it with `pgwarden ctl spec set KEY=VALUE` or `pgwarden ctl init --force --spec FILE`"
            }
            _ => {
                "the leader sentinel rewrites it from its last good copy; if none has one, `pgwarden ctl init --force` resets the roles"
            }
        };
        write!(
            f,
            "the cluster {} in etcd (key {}) cannot be used: {}; {fix}",
            self.key, self.key, self.cause
        )
    }
}

impl Snapshot {
    /// The assigned primary's last published write position: the reference
    /// for standbys' lag.
    pub fn primary_lsn(&self) -> Option<Lsn> {
        let primary = self.status.primary.as_deref()?;
        self.keepers
            .get(primary)
            .filter(|r| r.role == ObservedRole::Primary)
            .and_then(|r| r.current_lsn)
    }
}

/// Why a snapshot could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// The store did not answer.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Reads the cluster.
pub async fn load(store: &Store) -> Result<Snapshot, ViewError> {
    let entries = store.get_prefix("").await?;
    let mut snap = Snapshot {
        spec: None,
        status: Status::default(),
        status_revision: 0,
        keepers: BTreeMap::new(),
        primary_holder: None,
        proxies: BTreeMap::new(),
        spec_problem: None,
        status_problem: None,
    };
    for (key, v) in entries {
        if key == keys::SPEC {
            match Spec::from_json(&v.value) {
                Ok(spec) => snap.spec = Some(spec),
                Err(e) => {
                    snap.spec_problem = Some(Unreadable {
                        key: keys::SPEC,
                        newer: matches!(e, SpecError::UnsupportedVersion { .. }),
                        cause: e.to_string(),
                    })
                }
            }
        } else if key == keys::STATUS {
            snap.status_revision = v.mod_revision;
            match Status::from_json(&v.value) {
                Ok(status) if status.format_version > STATUS_FORMAT_VERSION => {
                    snap.status_problem = Some(Unreadable {
                        key: keys::STATUS,
                        cause: format!(
                            "status format_version {} is not supported by this pgwarden (it understands {STATUS_FORMAT_VERSION})",
                            status.format_version
                        ),
                        newer: true,
                    })
                }
                Ok(status) => snap.status = status,
                Err(e) => {
                    snap.status_problem = Some(Unreadable {
                        key: keys::STATUS,
                        cause: format!("malformed status: {e}"),
                        newer: false,
                    })
                }
            }
        } else if key == keys::PRIMARY {
            snap.primary_holder = String::from_utf8(v.value).ok();
        } else if let Some(uid) = key.strip_prefix(keys::KEEPERS_PREFIX) {
            match KeeperReport::from_json(&v.value) {
                Ok(r) if r.uid == uid => {
                    snap.keepers.insert(uid.to_string(), r);
                }
                Ok(r) => tracing::warn!(
                    key,
                    uid = r.uid,
                    "keeper report under another uid's key: ignored"
                ),
                Err(e) => tracing::warn!(key, error = %e, "keeper report does not parse: ignored"),
            }
        } else if let Some(id) = key.strip_prefix(keys::PROXIES_PREFIX) {
            if let Some(generation) = std::str::from_utf8(&v.value)
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                snap.proxies.insert(id.to_string(), generation);
            }
        }
    }
    Ok(snap)
}

/// A role's last good spec and status, used while the store holds copies it
/// cannot read, with each new problem logged once.
#[derive(Debug, Default)]
pub struct LastGood {
    spec: Option<Spec>,
    status: Option<Status>,
    logged: Vec<Unreadable>,
}

impl LastGood {
    /// Fills the unusable parts of `snap` in from the last good copies (and
    /// remembers the good parts). False when a part is unusable and there is
    /// no good copy of it: the role must wait.
    pub fn patch(&mut self, snap: &mut Snapshot) -> bool {
        let problems: Vec<Unreadable> = [&snap.spec_problem, &snap.status_problem]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        for p in &problems {
            if !self.logged.contains(p) {
                tracing::error!("{p}; carrying on with the last good copy");
            }
        }
        if problems.is_empty() && !self.logged.is_empty() {
            tracing::info!("the cluster spec and status in etcd are readable again");
        }
        self.logged = problems;
        let mut complete = true;
        match (&snap.spec_problem, &snap.spec) {
            (Some(_), _) => {
                snap.spec = self.spec.clone();
                complete &= snap.spec.is_some();
            }
            (None, Some(spec)) => self.spec = Some(spec.clone()),
            (None, None) => {}
        }
        if snap.status_problem.is_some() {
            match &self.status {
                Some(status) => snap.status = status.clone(),
                None => complete = false,
            }
        } else {
            self.status = Some(snap.status.clone());
        }
        complete
    }

    /// Records a status this role wrote itself (the sentinel's decision).
    pub fn wrote_status(&mut self, status: &Status) {
        self.status = Some(status.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        Snapshot {
            spec: Some(Spec::default()),
            status: Status {
                generation: 7,
                ..Status::default()
            },
            status_revision: 3,
            keepers: BTreeMap::new(),
            primary_holder: None,
            proxies: BTreeMap::new(),
            spec_problem: None,
            status_problem: None,
        }
    }

    fn bad(key: &'static str) -> Unreadable {
        Unreadable {
            key,
            cause: "malformed".into(),
            newer: false,
        }
    }

    #[test]
    fn an_unreadable_spec_and_status_are_replaced_by_the_last_good_copies() {
        let mut good = LastGood::default();
        let mut first = snapshot();
        first.spec.as_mut().unwrap().paused = true;
        assert!(good.patch(&mut first));
        let mut broken = snapshot();
        broken.spec = None;
        broken.spec_problem = Some(bad(keys::SPEC));
        broken.status = Status::default();
        broken.status_problem = Some(bad(keys::STATUS));
        broken.status_revision = 9;
        assert!(good.patch(&mut broken));
        assert!(broken.spec.as_ref().unwrap().paused, "the last good spec");
        assert_eq!(broken.status.generation, 7, "the last good status");
        assert_eq!(
            broken.status_revision, 9,
            "the bad key's revision stays, for a repair by compare-and-swap"
        );
    }

    #[test]
    fn without_a_good_copy_the_role_waits() {
        let mut good = LastGood::default();
        let mut broken = snapshot();
        broken.spec = None;
        broken.spec_problem = Some(bad(keys::SPEC));
        assert!(!good.patch(&mut broken));
        assert!(broken.spec.is_none());
        let mut good = LastGood::default();
        let mut broken = snapshot();
        broken.status_problem = Some(bad(keys::STATUS));
        assert!(!good.patch(&mut broken));
    }

    #[test]
    fn the_message_names_the_key_and_the_fix() {
        let text = bad(keys::SPEC).to_string();
        assert!(text.contains("key spec"), "{text}");
        assert!(text.contains("pgwarden ctl spec set"), "{text}");
        let newer = Unreadable {
            newer: true,
            ..bad(keys::STATUS)
        };
        assert!(newer.to_string().contains("upgrade pgwarden"));
    }
}
