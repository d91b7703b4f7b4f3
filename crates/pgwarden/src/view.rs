//! Reading the whole cluster from the store in one consistent snapshot.
//!
//! Every role needs the same picture (spec, status, keeper reports, primary
//! lease, proxies). A single range read over the cluster prefix returns it at
//! one store revision, so a role never mixes a new status with old reports.

use std::collections::BTreeMap;

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
    /// The spec in the store is unusable.
    #[error("the cluster spec in etcd is invalid")]
    Spec(#[source] SpecError),
    /// The status in the store does not parse.
    #[error("the cluster status in etcd does not parse")]
    Status(#[source] serde_json::Error),
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
    };
    for (key, v) in entries {
        if key == keys::SPEC {
            snap.spec = Some(Spec::from_json(&v.value).map_err(ViewError::Spec)?);
        } else if key == keys::STATUS {
            snap.status = Status::from_json(&v.value).map_err(ViewError::Status)?;
            snap.status_revision = v.mod_revision;
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
