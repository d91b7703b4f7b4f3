//! The in-memory twin of the etcd store, in simulated time.
//!
//! It keeps exactly what the safety arguments rely on and nothing else: a
//! global revision, per-key create and mod revisions, leases that expire at a
//! simulated instant and take their keys with them, compare-and-swap with
//! extra guards on other keys' create revisions (the sentinel's fencing
//! token), and create-if-absent. Values are typed rather than JSON bytes: the
//! simulation reads every key many times per simulated second, and decoding
//! JSON each time would make a debug run of hundreds of seeds too slow. The
//! status alone goes through its JSON form on every write (see the sentinel),
//! since losing a field there would make a new leader forget.
//!
//! Reachability is not modelled here: [`crate::ctx::Ctx::call`] decides
//! whether a request gets to the store at all and whether its answer gets back.

use std::collections::BTreeMap;

use pgwarden_core::{KeeperReport, Spec, Status};

/// An etcd lease id.
pub type LeaseId = i64;

/// What a key holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// The operator's policy.
    Spec(Box<Spec>),
    /// The sentinel's decision.
    Status(Box<Status>),
    /// A keeper's report.
    Report(Box<KeeperReport>),
    /// Anything written as plain text: the primary key's uid, the election
    /// key's sentinel id, a proxy's applied generation.
    Text(String),
}

/// One key's value and metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The value.
    pub value: Value,
    /// Revision of the write that created the key.
    pub create_revision: i64,
    /// Revision of the last write to the key.
    pub mod_revision: i64,
    /// The lease the key is attached to.
    pub lease: Option<LeaseId>,
}

/// A write referred to a lease the store does not know (expired or revoked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseNotFound;

/// A compare-and-swap outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cas {
    /// Written at this revision.
    Written(i64),
    /// A comparison failed; nothing was written.
    Conflict,
}

#[derive(Debug, Clone)]
struct Lease {
    ttl_ms: u64,
    expires_at: u64,
}

/// The store.
#[derive(Debug, Clone, Default)]
pub struct MemStore {
    revision: i64,
    kv: BTreeMap<String, Entry>,
    leases: BTreeMap<LeaseId, Lease>,
    next_lease: LeaseId,
}

impl MemStore {
    /// An empty store at revision 0.
    pub fn new() -> MemStore {
        MemStore {
            revision: 0,
            kv: BTreeMap::new(),
            leases: BTreeMap::new(),
            next_lease: 100,
        }
    }

    /// The current revision.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// One key.
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.kv.get(key)
    }

    /// Every key, in key order.
    pub fn entries(&self) -> impl Iterator<Item = (&String, &Entry)> {
        self.kv.iter()
    }

    fn lease_ok(&self, lease: Option<LeaseId>) -> Result<(), LeaseNotFound> {
        match lease {
            Some(id) if !self.leases.contains_key(&id) => Err(LeaseNotFound),
            _ => Ok(()),
        }
    }

    fn write(&mut self, key: &str, value: Value, lease: Option<LeaseId>) -> i64 {
        self.revision += 1;
        let revision = self.revision;
        let create_revision = self.kv.get(key).map_or(revision, |e| e.create_revision);
        self.kv.insert(
            key.to_string(),
            Entry {
                value,
                create_revision,
                mod_revision: revision,
                lease,
            },
        );
        revision
    }

    /// Unconditional write.
    pub fn put(
        &mut self,
        key: &str,
        value: Value,
        lease: Option<LeaseId>,
    ) -> Result<i64, LeaseNotFound> {
        self.lease_ok(lease)?;
        Ok(self.write(key, value, lease))
    }

    /// Writes only when the key is absent: `Some(revision)` when written.
    pub fn create(
        &mut self,
        key: &str,
        value: Value,
        lease: Option<LeaseId>,
    ) -> Result<Option<i64>, LeaseNotFound> {
        self.lease_ok(lease)?;
        if self.kv.contains_key(key) {
            return Ok(None);
        }
        Ok(Some(self.write(key, value, lease)))
    }

    /// Writes only when `key`'s mod revision is `expected` (0: absent) and
    /// every `(guard_key, create_revision)` matches (a missing guard key has
    /// create revision 0).
    pub fn cas(
        &mut self,
        key: &str,
        value: Value,
        expected: i64,
        guards: &[(String, i64)],
        lease: Option<LeaseId>,
    ) -> Result<Cas, LeaseNotFound> {
        self.lease_ok(lease)?;
        let current = self.kv.get(key).map_or(0, |e| e.mod_revision);
        let guards_hold = guards
            .iter()
            .all(|(k, rev)| self.kv.get(k).map_or(0, |e| e.create_revision) == *rev);
        if current != expected || !guards_hold {
            return Ok(Cas::Conflict);
        }
        Ok(Cas::Written(self.write(key, value, lease)))
    }

    /// Deletes `key` if it is attached to `lease`; true when deleted.
    pub fn delete_if_lease(&mut self, key: &str, lease: LeaseId) -> bool {
        if self.kv.get(key).and_then(|e| e.lease) != Some(lease) {
            return false;
        }
        self.kv.remove(key);
        self.revision += 1;
        true
    }

    /// Grants a lease of `ttl_ms`, counted from `arrival` (when the request
    /// reached the store).
    pub fn grant(&mut self, ttl_ms: u64, arrival: u64) -> LeaseId {
        self.next_lease += 1;
        self.leases.insert(
            self.next_lease,
            Lease {
                ttl_ms,
                expires_at: arrival + ttl_ms,
            },
        );
        self.next_lease
    }

    /// Restarts the lease's TTL from `arrival`; false when the lease is gone
    /// (or would have expired before the request arrived).
    pub fn keep_alive(&mut self, id: LeaseId, arrival: u64) -> bool {
        match self.leases.get_mut(&id) {
            Some(l) if l.expires_at > arrival => {
                l.expires_at = arrival + l.ttl_ms;
                true
            }
            _ => false,
        }
    }

    /// Revokes a lease and deletes its keys (a missing lease is not an error).
    pub fn revoke(&mut self, id: LeaseId) {
        if self.leases.remove(&id).is_some() {
            self.drop_keys_of(id);
        }
    }

    /// Expires every lease whose time has come at `now`; returns the keys
    /// that vanished with them.
    pub fn expire(&mut self, now: u64) -> Vec<String> {
        let due: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, l)| l.expires_at <= now)
            .map(|(id, _)| *id)
            .collect();
        let mut gone = Vec::new();
        for id in due {
            self.leases.remove(&id);
            gone.extend(self.drop_keys_of(id));
        }
        gone
    }

    /// Until when a lease lives on the server, if it does.
    pub fn lease_expiry(&self, id: LeaseId) -> Option<u64> {
        self.leases.get(&id).map(|l| l.expires_at)
    }

    fn drop_keys_of(&mut self, id: LeaseId) -> Vec<String> {
        let keys: Vec<String> = self
            .kv
            .iter()
            .filter(|(_, e)| e.lease == Some(id))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &keys {
            self.kv.remove(k);
            self.revision += 1;
        }
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Value {
        Value::Text(s.into())
    }

    #[test]
    fn revisions_follow_etcd() {
        let mut s = MemStore::new();
        let r1 = s.put("a", text("1"), None).unwrap();
        let r2 = s.put("a", text("2"), None).unwrap();
        let e = s.get("a").unwrap();
        assert_eq!((e.create_revision, e.mod_revision), (r1, r2));
        assert!(r2 > r1);
        assert_eq!(s.create("a", text("3"), None), Ok(None));
        assert_eq!(s.get("a").unwrap().value, text("2"));
    }

    #[test]
    fn cas_compares_revision_and_guards() {
        let mut s = MemStore::new();
        let leader = s.create("leader", text("s1"), None).unwrap().unwrap();
        let guard = [("leader".to_string(), leader)];
        let Cas::Written(r) = s.cas("status", text("g1"), 0, &guard, None).unwrap() else {
            panic!("first write must succeed")
        };
        // Stale revision.
        assert_eq!(
            s.cas("status", text("g2"), 0, &guard, None),
            Ok(Cas::Conflict)
        );
        // Leader key recreated: the old token no longer matches.
        s.kv.remove("leader");
        s.create("leader", text("s2"), None).unwrap();
        assert_eq!(
            s.cas("status", text("g2"), r, &guard, None),
            Ok(Cas::Conflict)
        );
        assert_eq!(s.get("status").unwrap().value, text("g1"));
    }

    #[test]
    fn leases_expire_with_their_keys_and_refuse_late_renewals() {
        let mut s = MemStore::new();
        let id = s.grant(3000, 100);
        s.put("k", text("v"), Some(id)).unwrap();
        assert!(s.keep_alive(id, 2000));
        assert_eq!(s.lease_expiry(id), Some(5000));
        assert!(s.expire(4999).is_empty());
        assert_eq!(s.expire(5000), vec!["k".to_string()]);
        assert!(s.get("k").is_none());
        assert!(!s.keep_alive(id, 5001));
        assert_eq!(s.put("k", text("v"), Some(id)), Err(LeaseNotFound));
        // A renewal that arrives after the expiry instant does not revive it.
        let id2 = s.grant(1000, 0);
        assert!(!s.keep_alive(id2, 1000));
    }

    #[test]
    fn delete_if_lease_spares_other_holders() {
        let mut s = MemStore::new();
        let mine = s.grant(1000, 0);
        let theirs = s.grant(1000, 0);
        s.put("primary", text("b"), Some(theirs)).unwrap();
        assert!(!s.delete_if_lease("primary", mine));
        assert!(s.delete_if_lease("primary", theirs));
        s.put("x", text("1"), Some(mine)).unwrap();
        s.revoke(mine);
        assert!(s.get("x").is_none());
    }
}
