//! [`Store`]: keys, compare-and-swap and leases under one cluster's prefix.
//!
//! Each method is one etcd request (or one transaction), run through the
//! endpoint failover in `failover`. Keys are relative to
//! `/pgwarden/<cluster>/` so callers never build absolute paths and two
//! clusters sharing an etcd cannot see each other's keys.

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, KeyValue, PutOptions, ResponseHeader, Txn,
    TxnOp, TxnOpResponse, TxnResponse,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::error::{is_lease_not_found, StoreError};
use crate::failover::Pool;
use crate::{CasOutcome, Guard, LeaseId, StoreOptions, Versioned, MEMBER_REFRESH_INTERVAL};

/// How long a read waits for the endpoint that last worked before asking the
/// others too: a member that hangs (cut off from its quorum but not yet aware
/// of it, or on a host that drops packets) then costs a read this much, not
/// a request timeout.
const READ_HEDGE_DELAY: Duration = Duration::from_millis(150);

/// A handle on one cluster's keys in etcd. Cheap to clone; clones share
/// connections.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    endpoints: Vec<String>,
    cluster: String,
    /// `/pgwarden/<cluster>/`
    prefix: String,
    pool: Pool,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("endpoints", &self.inner.endpoints)
            .field("cluster", &self.inner.cluster)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Creates a store for `cluster` over `endpoints`.
    ///
    /// Never fails for unreachable endpoints (connections are made lazily, on
    /// the first request); fails only for a malformed endpoint string or an
    /// empty list ([`StoreError::InvalidEndpoint`]). Endpoints may be given as
    /// `http://host:port` or `host:port`.
    pub fn new(
        endpoints: &[String],
        cluster: &str,
        options: StoreOptions,
    ) -> Result<Store, StoreError> {
        let pool = Pool::new(endpoints, options)?;
        let inner = Arc::new(Inner {
            endpoints: endpoints.to_vec(),
            cluster: cluster.to_owned(),
            prefix: format!("/pgwarden/{cluster}/"),
            pool,
        });
        // Follow etcd's membership while this store is in use; a store made
        // outside a runtime (none of ours) keeps the endpoints given.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(follow_members(Arc::downgrade(&inner)));
        }
        Ok(Store { inner })
    }

    /// The endpoints as given to [`Store::new`].
    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    /// The cluster name.
    pub fn cluster(&self) -> &str {
        &self.inner.cluster
    }

    /// The options this store was created with.
    pub fn options(&self) -> &StoreOptions {
        self.inner.pool.options()
    }

    /// The absolute etcd key for a key relative to the cluster prefix.
    pub fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.inner.prefix)
    }

    pub(crate) fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// Reads one key.
    pub async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let full = self.full_key(key);
        let mut resp = self
            .pool()
            .hedge("get", READ_HEDGE_DELAY, |mut c| {
                let full = full.clone();
                async move { c.get(full, None).await }
            })
            .await
            .map_err(|e| e.on_key(&full))?;
        Ok(resp.take_kvs().into_iter().next().map(versioned))
    }

    /// Every key under the relative prefix `key_prefix`, with relative keys,
    /// sorted by key.
    pub async fn get_prefix(
        &self,
        key_prefix: &str,
    ) -> Result<Vec<(String, Versioned)>, StoreError> {
        let full = self.full_key(key_prefix);
        let mut resp = self
            .pool()
            .hedge("get prefix", READ_HEDGE_DELAY, |mut c| {
                let full = full.clone();
                async move { c.get(full, Some(GetOptions::new().with_prefix())).await }
            })
            .await
            .map_err(|e| e.on_key(&full))?;
        let mut out = Vec::new();
        for kv in resp.take_kvs() {
            let relative = kv
                .key_str()
                .ok()
                .and_then(|k| k.strip_prefix(&self.inner.prefix))
                .map(str::to_owned);
            match relative {
                Some(key) => out.push((key, versioned(kv))),
                // Not written through this crate; reading on is more useful
                // than failing every read of the cluster.
                None => warn!(
                    key = %String::from_utf8_lossy(kv.key()),
                    "skipping etcd key that is not UTF-8"
                ),
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Writes `value` unconditionally; returns the store revision of the write.
    pub async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<i64, StoreError> {
        let full = self.full_key(key);
        let resp = self
            .pool()
            .run("put", |mut c| {
                let (full, value) = (full.clone(), value.clone());
                async move { c.put(full, value, Some(put_options(lease))).await }
            })
            .await
            .map_err(|e| lease_error(e, lease).on_key(&self.full_key(key)))?;
        header_revision("put", resp.header())
    }

    /// Writes `value` only when `key` is absent: `Some(revision)` when written,
    /// `None` when the key existed.
    pub async fn create(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Option<i64>, StoreError> {
        let full = self.full_key(key);
        let txn = Txn::new()
            .when([Compare::create_revision(full.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(full, value, Some(put_options(lease)))]);
        let resp = self
            .txn("create", txn)
            .await
            .map_err(|e| lease_error(e, lease).on_key(&self.full_key(key)))?;
        if resp.succeeded() {
            Ok(Some(header_revision("create", resp.header())?))
        } else {
            Ok(None)
        }
    }

    /// Writes `value` only if `key`'s mod_revision equals
    /// `expected_mod_revision` (0 = the key must be absent) and every guard
    /// holds, in one etcd transaction.
    pub async fn cas(
        &self,
        key: &str,
        value: Vec<u8>,
        expected_mod_revision: i64,
        guards: &[Guard],
        lease: Option<LeaseId>,
    ) -> Result<CasOutcome, StoreError> {
        let full = self.full_key(key);
        // An absent key compares as mod_revision 0, so one comparison covers
        // both "unchanged since I read it" and "still absent".
        let mut compares = vec![Compare::mod_revision(
            full.clone(),
            CompareOp::Equal,
            expected_mod_revision,
        )];
        for guard in guards {
            match guard {
                Guard::CreateRevision { key, revision } => compares.push(Compare::create_revision(
                    self.full_key(key),
                    CompareOp::Equal,
                    *revision,
                )),
            }
        }
        let txn =
            Txn::new()
                .when(compares)
                .and_then([TxnOp::put(full, value, Some(put_options(lease)))]);
        let resp = self
            .txn("compare-and-swap", txn)
            .await
            .map_err(|e| lease_error(e, lease).on_key(&self.full_key(key)))?;
        if resp.succeeded() {
            Ok(CasOutcome::Written {
                revision: header_revision("compare-and-swap", resp.header())?,
            })
        } else {
            Ok(CasOutcome::Conflict)
        }
    }

    /// Deletes `key` (no error when it is absent).
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let full = self.full_key(key);
        self.pool()
            .run("delete", |mut c| {
                let full = full.clone();
                async move { c.delete(full, None::<DeleteOptions>).await }
            })
            .await
            .map_err(|e| e.on_key(&full))?;
        Ok(())
    }

    /// Deletes `key` only if its mod_revision equals `expected_mod_revision`;
    /// true when a key was deleted.
    pub async fn delete_if(
        &self,
        key: &str,
        expected_mod_revision: i64,
    ) -> Result<bool, StoreError> {
        let full = self.full_key(key);
        let cmp = Compare::mod_revision(full.clone(), CompareOp::Equal, expected_mod_revision);
        self.delete_when("conditional delete", full, cmp).await
    }

    /// Deletes `key` only if it is attached to `lease`; true when deleted. A
    /// keeper releasing the primary key it holds uses this so that it never
    /// deletes a key another keeper has since taken.
    pub async fn delete_if_lease(&self, key: &str, lease: LeaseId) -> Result<bool, StoreError> {
        let full = self.full_key(key);
        let cmp = Compare::lease(full.clone(), CompareOp::Equal, lease);
        self.delete_when("conditional delete", full, cmp).await
    }

    async fn delete_when(
        &self,
        op: &'static str,
        full: String,
        cmp: Compare,
    ) -> Result<bool, StoreError> {
        let txn = Txn::new()
            .when([cmp])
            .and_then([TxnOp::delete(full.clone(), None)]);
        let resp = self.txn(op, txn).await.map_err(|e| e.on_key(&full))?;
        let deleted = resp.succeeded()
            && resp.op_responses().iter().any(|r| match r {
                TxnOpResponse::Delete(d) => d.deleted() > 0,
                _ => false,
            });
        Ok(deleted)
    }

    async fn txn(&self, op: &'static str, txn: Txn) -> Result<TxnResponse, StoreError> {
        self.pool()
            .run(op, |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await
    }

    /// Grants a lease of `ttl` (rounded up to whole seconds, at least 1 s).
    pub async fn grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        Ok(self.grant_with_ttl(ttl).await?.0)
    }

    /// Grants a lease; returns its id, the TTL the server granted and the raft
    /// term it was granted in.
    pub(crate) async fn grant_with_ttl(
        &self,
        ttl: Duration,
    ) -> Result<(LeaseId, Duration, u64), StoreError> {
        let secs = ttl_seconds(ttl);
        let resp = self
            .pool()
            .run("lease grant", |mut c| async move {
                c.lease_grant(secs, None).await
            })
            .await?;
        if !resp.error().is_empty() {
            return Err(StoreError::Etcd {
                op: "lease grant",
                source: etcd_client::Error::Internal(resp.error().to_owned()),
            });
        }
        let term = resp.header().map_or(0, |h| h.raft_term());
        Ok((resp.id(), seconds(resp.ttl()), term))
    }

    /// Revokes `lease`, deleting the keys attached to it. A lease that no
    /// longer exists counts as revoked.
    pub async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        let result = self
            .pool()
            .run("lease revoke", |mut c| async move {
                c.lease_revoke(lease).await
            })
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(StoreError::Etcd { source, .. }) if is_lease_not_found(&source) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Renews `lease` once: `Some(ttl granted)`, or `None` when the lease no
    /// longer exists on the server.
    pub async fn keep_alive_once(&self, lease: LeaseId) -> Result<Option<Duration>, StoreError> {
        Ok(self.keep_alive_hedged(lease).await?.map(|(ttl, _term)| ttl))
    }

    /// Renews `lease` through every endpoint at once (the first answer
    /// counts; a keep-alive is safe to apply twice): `Some((ttl granted, raft
    /// term of the answer))`, or `None` when the lease no longer exists.
    pub(crate) async fn keep_alive_hedged(
        &self,
        lease: LeaseId,
    ) -> Result<Option<(Duration, u64)>, StoreError> {
        let result = self
            .pool()
            .hedge("lease keep-alive", Duration::ZERO, |mut c| async move {
                // etcd-client's helper sends one keep-alive and checks the
                // answer but keeps its TTL to itself; ask once more on the
                // same stream to learn the TTL granted.
                let (mut keeper, mut stream) = c.lease_keep_alive(lease).await?;
                keeper.keep_alive().await?;
                Ok(stream.message().await?.map(|resp| {
                    let term = resp.header().map_or(0, |h| h.raft_term());
                    (resp.ttl(), term)
                }))
            })
            .await;
        match result {
            Ok(Some((ttl, term))) if ttl > 0 => Ok(Some((seconds(ttl), term))),
            Ok(Some(_)) => Ok(None),
            Ok(None) => Err(StoreError::MalformedResponse {
                op: "lease keep-alive",
                detail: "stream closed without an answer",
            }),
            Err(StoreError::Etcd { source, .. }) if is_lease_not_found(&source) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The raft term in which a quorum of etcd's voting members has no
    /// leader, as they answered within `timeout`; `None` when no quorum
    /// answered that way. See [`crate::quorum`] for what that proves.
    pub(crate) async fn leaderless_quorum(&self, timeout: Duration) -> Option<u64> {
        let (states, voters) = self.pool().member_states(timeout).await;
        crate::quorum::leaderless_term(&states, voters)
    }

    /// The client URLs of the etcd member that is raft leader now, as the
    /// members answer within `timeout`; empty when none knows a leader. For
    /// operators and tests: no decision rests on it.
    pub async fn etcd_leader(&self, timeout: Duration) -> Vec<String> {
        self.pool().leader_urls(timeout).await
    }

    /// How many etcd members (of the endpoints in use) do not answer a
    /// status request within `timeout`; for the `store_unreachable` alert.
    pub async fn unreachable_members(&self, timeout: Duration) -> usize {
        self.pool().unreachable_count(timeout).await
    }

    /// The endpoints in use now: the ones given, then the client URLs of
    /// members discovered in etcd's member list since.
    pub fn endpoints_in_use(&self) -> Vec<String> {
        self.pool().urls()
    }

    /// Re-reads etcd's member list now (it is also re-read every
    /// [`MEMBER_REFRESH_INTERVAL`] in the background).
    pub async fn refresh_members(&self) -> Result<(), StoreError> {
        self.pool().refresh_members().await
    }

    /// Notifies, with the store revision seen, whenever anything under the
    /// relative prefix `key_prefix` changes, and once when the watch is first
    /// established. Consumers should re-read what they need on each
    /// notification; bursts may be coalesced into one.
    ///
    /// Runs in its own task (so must be called within a tokio runtime) until
    /// `cancel` fires or the receiver is dropped. After an error or an
    /// endpoint dying it reconnects, another endpoint if needed, and resumes
    /// from the last revision seen + 1; if that revision was compacted it
    /// notifies anyway. It never stops on its own: the channel closes only
    /// after `cancel`.
    pub fn watch_prefix(&self, key_prefix: &str, cancel: CancellationToken) -> mpsc::Receiver<i64> {
        crate::watch::spawn(self.clone(), self.full_key(key_prefix), cancel)
    }
}

/// Re-reads etcd's member list every [`MEMBER_REFRESH_INTERVAL`] until the
/// store is dropped.
async fn follow_members(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(MEMBER_REFRESH_INTERVAL).await;
        let Some(inner) = inner.upgrade() else { return };
        if let Err(e) = inner.pool.refresh_members().await {
            debug!(error = %e, "cannot read etcd's member list; keeping the endpoints in use");
        }
    }
}

fn versioned(kv: KeyValue) -> Versioned {
    let (mod_revision, create_revision, lease) =
        (kv.mod_revision(), kv.create_revision(), kv.lease());
    let (_, value) = kv.into_key_value();
    Versioned {
        value,
        mod_revision,
        create_revision,
        lease,
    }
}

fn put_options(lease: Option<LeaseId>) -> PutOptions {
    match lease {
        Some(id) => PutOptions::new().with_lease(id),
        None => PutOptions::new(),
    }
}

/// Turns etcd's "lease not found" into [`StoreError::LeaseNotFound`].
fn lease_error(err: StoreError, lease: Option<LeaseId>) -> StoreError {
    match (err, lease) {
        (StoreError::Etcd { source, .. }, Some(lease)) if is_lease_not_found(&source) => {
            StoreError::LeaseNotFound { lease }
        }
        (err, _) => err,
    }
}

fn header_revision(op: &'static str, header: Option<&ResponseHeader>) -> Result<i64, StoreError> {
    header
        .map(ResponseHeader::revision)
        .ok_or(StoreError::MalformedResponse {
            op,
            detail: "response without header",
        })
}

/// etcd TTLs are whole seconds: round up, at least 1.
fn ttl_seconds(ttl: Duration) -> i64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

fn seconds(secs: i64) -> Duration {
    Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_is_shareable_across_tasks() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<Store>();
    }

    #[test]
    fn ttl_rounds_up_to_whole_seconds() {
        assert_eq!(ttl_seconds(Duration::from_millis(0)), 1);
        assert_eq!(ttl_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(ttl_seconds(Duration::from_secs(10)), 10);
    }

    #[test]
    fn keys_live_under_the_cluster_prefix() {
        let store =
            Store::new(&["127.0.0.1:1".to_owned()], "main", StoreOptions::default()).unwrap();
        assert_eq!(store.full_key("status"), "/pgwarden/main/status");
        assert_eq!(store.cluster(), "main");
        assert_eq!(store.endpoints(), ["127.0.0.1:1".to_owned()]);
    }
}
