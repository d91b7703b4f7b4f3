//! One read of the whole cluster, as every role takes it: a single range
//! read, so a role never mixes a new status with older reports.

use std::collections::BTreeMap;

use pgwarden_core::{keys, KeeperReport, Spec, Status};

use crate::store::{MemStore, Value};

/// The cluster at one store revision.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The spec (the simulation always initialises it).
    pub spec: Spec,
    /// The status, default when never written.
    pub status: Status,
    /// The status key's mod revision (0 when absent).
    pub status_revision: i64,
    /// Reports of keepers whose report lease holds.
    pub keepers: BTreeMap<String, KeeperReport>,
    /// The uid under the primary key.
    pub primary_holder: Option<String>,
    /// Live proxies' applied generations.
    pub proxies: BTreeMap<String, u64>,
}

impl Snapshot {
    /// Reads everything.
    pub fn read(store: &MemStore) -> Snapshot {
        let mut snap = Snapshot {
            spec: Spec::default(),
            status: Status::default(),
            status_revision: 0,
            keepers: BTreeMap::new(),
            primary_holder: None,
            proxies: BTreeMap::new(),
        };
        for (key, entry) in store.entries() {
            match (&entry.value, key.as_str()) {
                (Value::Spec(s), keys::SPEC) => snap.spec = (**s).clone(),
                (Value::Status(s), keys::STATUS) => {
                    snap.status = (**s).clone();
                    snap.status_revision = entry.mod_revision;
                }
                (Value::Text(uid), keys::PRIMARY) => snap.primary_holder = Some(uid.clone()),
                (Value::Report(r), k) if k.strip_prefix(keys::KEEPERS_PREFIX) == Some(&r.uid) => {
                    snap.keepers.insert(r.uid.clone(), (**r).clone());
                }
                (Value::Text(g), k) => {
                    if let (Some(id), Ok(g)) = (k.strip_prefix(keys::PROXIES_PREFIX), g.parse()) {
                        snap.proxies.insert(id.to_string(), g);
                    }
                }
                _ => {}
            }
        }
        snap
    }
}
