//! One live keeper per uid.
//!
//! Two keepers started with the same `--uid` would both publish under
//! `keepers/<uid>` and both act on the assignment of that uid: both can end up
//! writable. So a keeper claims its uid before it touches postgres, by
//! creating `keepers/<uid>` (create-if-absent) under its report lease, and
//! then only ever rewrites that key with compare-and-swap on the revision it
//! last wrote.
//!
//! Each run of a keeper has its own `instance` token in its report. Finding
//! the key held by another instance means one of two things:
//! - another keeper with this uid is alive: it republishes its report every
//!   tick and renews its lease, so the key changes or outlives the report
//!   lease's TTL; the newcomer refuses to start, naming where the other runs;
//! - an earlier run of this keeper died (SIGKILL, host restart) and its
//!   report lease has not expired yet: nothing rewrites the key and etcd
//!   deletes it within the TTL, after which the claim succeeds.
//!
//! So the newcomer waits at most the report TTL (plus a tick) for the key to
//! vanish, and refuses as soon as it sees the key rewritten.

use std::time::Duration;

use pgwarden_core::{keys, KeeperReport};
use pgwarden_store::{CasOutcome, LeaseId, Store, StoreError};
use tokio::time::Instant;

/// How often a waiting claim looks at the key again.
const POLL: Duration = Duration::from_millis(200);
/// Slack past the TTL for etcd to expire a lease (it checks about twice a
/// second) and for a live keeper's renewal to be late.
const EXPIRY_SLACK: Duration = Duration::from_secs(1);

/// Why this keeper may not run under its uid.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// Another live process publishes under this uid.
    #[error("uid {uid} is already used by a live keeper (postgres {pg_host}:{pg_port}, API {api_url}): give each keeper its own --uid, or stop the other one first")]
    Taken {
        /// The contested uid.
        uid: String,
        /// Where the other keeper's postgres listens.
        pg_host: String,
        /// Its port.
        pg_port: u16,
        /// Its HTTP API.
        api_url: String,
    },
    /// The store did not answer.
    #[error("claim uid {uid} in etcd")]
    Store {
        /// The uid being claimed.
        uid: String,
        /// The store's error.
        #[source]
        source: StoreError,
    },
}

/// The uid, as claimed by this process: the revision of the report it last
/// wrote, so that every later write is conditional on nobody else's.
#[derive(Debug)]
pub struct UidClaim {
    uid: String,
    instance: String,
    revision: i64,
}

/// What the key holds when it is not ours.
enum Holder {
    Absent,
    Ours(i64),
    Other(i64, Box<Option<KeeperReport>>),
}

impl UidClaim {
    /// Claims `uid` for `report` (which carries this run's instance token)
    /// under `lease`, waiting up to `report_ttl` for an earlier run's report
    /// to expire; refuses when another live keeper holds it.
    pub async fn claim(
        store: &Store,
        report: &KeeperReport,
        lease: LeaseId,
        report_ttl: Duration,
    ) -> Result<UidClaim, ClaimError> {
        let mut claim = UidClaim {
            uid: report.uid.clone(),
            instance: report.instance.clone(),
            revision: 0,
        };
        let deadline = Instant::now() + report_ttl + EXPIRY_SLACK;
        let mut first_seen: Option<i64> = None;
        let mut warned = false;
        let mut store_failures = 0u32;
        loop {
            // A store hiccup is retried, not a reason to exit: the keeper
            // was started to run.
            let attempt = async {
                let written = store
                    .create(&keys::keeper(&claim.uid), report.to_json(), Some(lease))
                    .await
                    .map_err(|source| claim.store_error(source))?;
                match written {
                    Some(revision) => Ok(Err(revision)),
                    None => claim.holder(store).await.map(Ok),
                }
            };
            let holder = match attempt.await {
                Ok(Err(revision)) => {
                    claim.revision = revision;
                    return Ok(claim);
                }
                Ok(Ok(holder)) => holder,
                Err(e) => {
                    store_failures += 1;
                    if store_failures == 1 {
                        tracing::warn!(error = %e, "cannot claim the uid in etcd yet; retrying");
                    }
                    tokio::time::sleep(POLL).await;
                    continue;
                }
            };
            match holder {
                Holder::Absent => continue,
                Holder::Ours(revision) => {
                    claim.revision = revision;
                    return Ok(claim);
                }
                Holder::Other(revision, other) => {
                    let rewritten = first_seen.is_some_and(|r| r != revision);
                    if rewritten || Instant::now() >= deadline {
                        return Err(claim.taken(*other));
                    }
                    first_seen.get_or_insert(revision);
                    if !warned {
                        tracing::info!(
                            uid = claim.uid,
                            wait = ?report_ttl,
                            "a report under this uid exists: waiting for it to expire (an earlier run of this keeper), or refusing if it is renewed (another live keeper)"
                        );
                        warned = true;
                    }
                    tokio::time::sleep(POLL).await;
                }
            }
        }
    }

    /// Writes `report` over the one this process wrote last. When the key
    /// has vanished (our lease expired, e.g. while etcd was unreachable) it
    /// is re-created; when another keeper holds it now, this keeper has lost
    /// its uid and must stop.
    pub async fn publish(
        &mut self,
        store: &Store,
        report: &KeeperReport,
        lease: LeaseId,
    ) -> Result<(), ClaimError> {
        let key = keys::keeper(&self.uid);
        for _ in 0..2 {
            let outcome = store
                .cas(&key, report.to_json(), self.revision, &[], Some(lease))
                .await
                .map_err(|source| self.store_error(source))?;
            match outcome {
                CasOutcome::Written { revision } => {
                    self.revision = revision;
                    return Ok(());
                }
                CasOutcome::Conflict => match self.holder(store).await? {
                    Holder::Absent => self.revision = 0,
                    Holder::Ours(revision) => self.revision = revision,
                    Holder::Other(_, other) => return Err(self.taken(*other)),
                },
            }
        }
        Ok(())
    }

    /// Whether `keepers/<uid>` is held by this process right now: proof that
    /// no other live keeper runs under this uid.
    pub async fn still_ours(&self, store: &Store) -> bool {
        matches!(self.holder(store).await, Ok(Holder::Ours(_)))
    }

    async fn holder(&self, store: &Store) -> Result<Holder, ClaimError> {
        let current = store
            .get(&keys::keeper(&self.uid))
            .await
            .map_err(|source| self.store_error(source))?;
        Ok(match current {
            None => Holder::Absent,
            Some(v) => {
                let report = KeeperReport::from_json(&v.value).ok();
                match report {
                    Some(r) if r.instance == self.instance => Holder::Ours(v.mod_revision),
                    other => Holder::Other(v.mod_revision, Box::new(other)),
                }
            }
        })
    }

    fn taken(&self, other: Option<KeeperReport>) -> ClaimError {
        let other = other.unwrap_or_else(|| KeeperReport::new(&self.uid, "?", 0, "?"));
        ClaimError::Taken {
            uid: self.uid.clone(),
            pg_host: other.pg_host,
            pg_port: other.pg_port,
            api_url: other.api_url,
        }
    }

    fn store_error(&self, source: StoreError) -> ClaimError {
        ClaimError::Store {
            uid: self.uid.clone(),
            source,
        }
    }
}

/// Another member whose uid maps to the same replication slot name as `uid`
/// (slot names are lower case, with other characters replaced): the two
/// would share one slot, and each would drop or steal the other's WAL.
pub fn slot_collision<'a>(uid: &str, members: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let mine = pgwarden_pg::slot_name(uid);
    members
        .into_iter()
        .find(|m| *m != uid && pgwarden_pg::slot_name(m) == mine)
        .map(|other| {
            format!(
                "uid {uid} maps to the same replication slot name ({mine}) as member {other}: give this keeper a uid that differs in more than case and punctuation"
            )
        })
}

/// A token for this run of the process: its pid and start time, so that a
/// restarted keeper (same uid, same host) never mistakes its previous run's
/// report for its own.
pub fn new_instance() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{}-{nanos:x}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_that_share_a_slot_name_collide() {
        let why = slot_collision("db_1", ["db-1", "db2"]).unwrap();
        assert!(
            why.contains("db-1") && why.contains("pgwarden_db_1"),
            "{why}"
        );
        assert!(slot_collision("DB_1", ["db_1"]).is_some());
        assert_eq!(slot_collision("db_1", ["db_1", "db_2"]), None);
    }
}
