//! Observing postgres for the plan and for the report.

use pgwarden_core::plan::DataState;
use pgwarden_core::{Assignment, Observed, Spec, Status};
use pgwarden_pg::{DataDirState, PgClient, PgStatus};

use super::{Node, Observation};

impl Node {
    /// Observes postgres for `plan`.
    pub(super) async fn observe(
        &mut self,
        spec: &Spec,
        status: &Status,
        assignment: Option<&Assignment>,
    ) -> anyhow::Result<Observation> {
        if let Some(info) = self.postmaster.as_ref().and_then(|pm| pm.has_exited()) {
            tracing::warn!("postgres is not running: {info}");
            self.crashed_at = Some(tokio::time::Instant::now());
            self.postmaster = None;
            self.set_postmaster_pid(0);
            self.client = None;
            self.role_ready = false;
        }
        let data = match pgwarden_pg::inspect_data_dir(&self.cfg.data_dir)? {
            DataDirState::Missing => DataState::Missing,
            DataDirState::Empty => DataState::Empty,
            DataDirState::Foreign => DataState::Foreign,
            DataDirState::Postgres { .. } => {
                let sid = match self.system_id {
                    Some(sid) => sid,
                    None => {
                        pgwarden_pg::controldata(&self.bins, &self.cfg.data_dir)
                            .await?
                            .system_identifier
                    }
                };
                self.system_id = Some(sid);
                DataState::Postgres { system_id: sid }
            }
        };
        if matches!(data, DataState::Missing | DataState::Empty) {
            self.system_id = None;
            self.last_position = None;
            self.unrewindable = false;
        }
        let running = self.postmaster.is_some();
        let pg = if running { self.probe().await } else { None };
        let in_recovery = pg.as_ref().map(|s| s.in_recovery);
        let slots = match (&self.client, in_recovery) {
            (Some(c), Some(_)) => c
                .replication_slots()
                .await
                .ok()
                .map(|v| v.into_iter().collect()),
            _ => None,
        };
        let config_current = match data {
            DataState::Postgres { .. } => self.config_matches(spec, status, assignment),
            _ => false,
        };
        let diverged = match (assignment, &self.client) {
            (Some(Assignment::Standby { follow, host, port }), Some(own)) => {
                let follows_primary = status.primary.as_deref() == Some(follow.as_str());
                let upstream = self.conn_params(host, *port);
                self.divergence
                    .diverged(follows_primary, pg.as_ref(), own, upstream)
                    .await
            }
            _ => {
                self.divergence.reset();
                false
            }
        };
        Ok(Observation {
            plan_input: Observed {
                data,
                running,
                in_recovery,
                standby_signal: self.cfg.data_dir.join("standby.signal").exists(),
                config_current,
                slots,
                replication_role_ready: self.role_ready,
                diverged,
                unrewindable: self.unrewindable,
            },
            pg,
        })
    }

    /// Queries postgres over a cached connection, reconnecting once.
    /// Queries postgres and remembers its position. The timeline only ever
    /// rises for one data directory; a standby whose upstream died reports
    /// its last checkpoint's (older) timeline, so the highest seen is kept.
    pub(super) async fn probe(&mut self) -> Option<PgStatus> {
        let mut status = self.query_status().await?;
        self.undo_alter_system().await;
        status.timeline = status.timeline.max(self.known_timeline());
        let position = status
            .current_lsn
            .or(status.receive_lsn.max(status.replay_lsn));
        if let Some(lsn) = position {
            self.last_position = Some((lsn, status.timeline));
        }
        Some(status)
    }

    /// Resets managed parameters an `ALTER SYSTEM` put into
    /// postgresql.auto.conf, and reloads (see `pgwarden_pg::auto_conf`): the
    /// start-time strip alone would let `ALTER SYSTEM` plus a reload apply
    /// until the next start.
    async fn undo_alter_system(&self) {
        let Some(client) = &self.client else { return };
        match pgwarden_pg::reset_managed_auto_conf(client).await {
            Ok(reset) if !reset.is_empty() => tracing::warn!(
                ?reset,
                "postgres: ALTER SYSTEM had set parameters pgwarden manages; reset them and reloaded (set other parameters in the cluster spec)"
            ),
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "could not check postgresql.auto.conf for managed parameters"),
        }
    }

    pub(super) fn known_timeline(&self) -> u32 {
        self.last_position.map_or(0, |(_, tl)| tl)
    }

    pub(super) async fn query_status(&mut self) -> Option<PgStatus> {
        if let Some(c) = &self.client {
            if let Ok(s) = c.status().await {
                return Some(s);
            }
            self.client = None;
        }
        let params = self.conn_params(&self.cfg.pg_advertise_address, self.cfg.pg_port);
        let client = PgClient::connect(&params).await.ok()?;
        let status = client.status().await.ok()?;
        self.client = Some(client);
        Some(status)
    }

    /// On a writable primary: what synchronous replication is in effect.
    /// The order matters (see decide::sync): the setting first, then the
    /// write position, then each standby's flush position.
    pub(super) async fn observe_sync(&mut self, pg: Option<&PgStatus>) -> Option<SyncObserved> {
        if pg.is_none_or(|s| s.in_recovery) {
            return None;
        }
        let client = self.client.as_ref()?;
        let applied = client
            .query_one_string("SHOW synchronous_standby_names")
            .await
            .ok()??;
        let lsn = client
            .query_one_string("SELECT pg_current_wal_lsn()::text")
            .await
            .ok()??
            .parse()
            .ok()?;
        let peers = client.replication_stats().await.ok()?;
        let streaming = |p: &&pgwarden_pg::ReplicationPeer| p.state == "streaming";
        let mut candidates: Vec<String> = peers
            .iter()
            .filter(|p| matches!(p.sync_state.as_str(), "sync" | "quorum" | "potential"))
            .map(|p| p.application_name.clone())
            .collect();
        candidates.sort();
        let mut streaming_names: Vec<String> = peers
            .iter()
            .filter(streaming)
            .map(|p| p.application_name.clone())
            .collect();
        streaming_names.sort();
        let flush = peers
            .iter()
            .filter_map(|p| p.flush_lsn.map(|f| (p.application_name.clone(), f)))
            .collect();
        Some(SyncObserved {
            applied,
            lsn,
            candidates,
            streaming: streaming_names,
            flush,
        })
    }
}

/// What a primary shows of synchronous replication, for its report.
#[derive(Debug, Clone)]
pub(super) struct SyncObserved {
    /// synchronous_standby_names in effect.
    pub(super) applied: String,
    /// Write position read after `applied`.
    pub(super) lsn: pgwarden_core::Lsn,
    /// Standbys the WAL senders treat as synchronous candidates.
    pub(super) candidates: Vec<String>,
    /// Standbys streaming.
    pub(super) streaming: Vec<String>,
    /// Each standby's flush position.
    pub(super) flush: std::collections::BTreeMap<String, pgwarden_core::Lsn>,
}
