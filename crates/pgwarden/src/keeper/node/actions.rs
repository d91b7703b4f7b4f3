//! Carrying out the plan's actions on postgres: initdb, clones, rewinds,
//! starts and stops, slots and roles.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use pgwarden_core::{Assignment, ObservedRole, PgAction, Spec};
use pgwarden_pg::{PgClient, Postmaster};

use super::{Node, START_TIMEOUT, STOP_TIMEOUT};
use crate::keeper::alive::alive_during;

impl Node {
    pub(super) async fn execute(
        &mut self,
        action: &PgAction,
        spec: &Spec,
        assignment: Option<&Assignment>,
    ) -> anyhow::Result<()> {
        let dir = self.cfg.data_dir.clone();
        match action {
            PgAction::InitDb => {
                tracing::info!("postgres: initdb (new cluster, data checksums on)");
                self.begin_long_action();
                let r = alive_during(
                    &self.local,
                    pgwarden_pg::initdb(
                        &self.bins,
                        &dir,
                        &self.cfg.su_username,
                        &self.cfg.su_password_file,
                    ),
                )
                .await;
                self.initializing = false;
                r.context("initdb")?;
            }
            PgAction::BaseBackup { host, port } => {
                tracing::info!("postgres: cloning from {host}:{port} with pg_basebackup");
                self.clone_from(host, *port)
                    .await
                    .context("pg_basebackup")?;
            }
            PgAction::Rewind { host, port } => self.rewind(spec, host, *port).await?,
            PgAction::WriteConfig => {
                self.check_parameters(spec).await;
                let standby = matches!(assignment, Some(Assignment::Standby { .. }));
                let conf = pgwarden_pg::render_postgresql_conf(&self.pg_conf(spec, assignment));
                pgwarden_pg::write_file_atomic(&dir.join("postgresql.conf"), &conf, 0o600)?;
                pgwarden_pg::write_file_atomic(&dir.join("pg_hba.conf"), &self.hba(spec), 0o600)?;
                if standby {
                    pgwarden_pg::set_standby_signal(&dir, true)?;
                }
                tracing::info!(standby, "postgres: configuration written");
            }
            PgAction::Start => {
                tracing::info!("postgres: starting");
                let pm = Postmaster::spawn(&self.bins, &dir, None)?;
                self.set_postmaster_pid(pm.pid());
                self.postmaster = Some(pm);
                self.crashed_at = None;
                self.role_ready = false;
                self.wait_until_ready().await?;
            }
            PgAction::Stop => {
                tracing::info!("postgres: stopping (fast)");
                if let Some(pm) = self.postmaster.take() {
                    pm.stop(STOP_TIMEOUT).await?;
                }
                self.set_postmaster_pid(0);
                self.client = None;
                // The end of WAL after a clean shutdown is its shutdown
                // checkpoint: a switchover target must have received past it.
                if let Ok(cd) = pgwarden_pg::controldata(&self.bins, &dir).await {
                    let timeline = cd.timeline.max(self.known_timeline());
                    self.last_position = Some((cd.checkpoint_lsn, timeline));
                }
            }
            PgAction::Reload => {
                tracing::info!("postgres: reloading configuration");
                if let Some(pm) = &self.postmaster {
                    pm.reload()?;
                }
            }
            PgAction::Promote => {
                tracing::info!("postgres: promoting to primary");
                let client = self.client().await?;
                client.promote().await?;
                // pg_rewind of the old primary reads the new timeline from
                // this node's control file, which a checkpoint updates.
                client.execute("CHECKPOINT").await?;
            }
            PgAction::EnsureReplicationRole => {
                let (user, password) = (
                    self.cfg.repl_username.clone(),
                    self.cfg.repl_password.clone(),
                );
                self.client()
                    .await?
                    .ensure_replication_role(&user, &password)
                    .await?;
                tracing::info!(
                    role = self.cfg.repl_username.as_str(),
                    "postgres: replication role ready"
                );
                self.role_ready = true;
            }
            PgAction::CreateSlot(name) => {
                // On a standby the slot is made ahead of a promotion: it must
                // not hold WAL back until somebody uses it.
                let reserve = matches!(assignment, Some(Assignment::Primary));
                self.client()
                    .await?
                    .create_physical_slot(name, reserve)
                    .await?;
                tracing::info!(slot = name.as_str(), "postgres: replication slot created");
            }
            PgAction::DropSlot(name) => {
                self.client().await?.drop_slot(name).await?;
                tracing::info!(slot = name.as_str(), "postgres: replication slot dropped");
            }
            PgAction::Wipe => {
                tracing::info!(
                    "postgres: emptying the data directory to clone it again (operator request)"
                );
                clear_dir(&dir)?;
                self.system_id = None;
                self.last_position = None;
            }
        }
        Ok(())
    }

    pub(super) async fn client(&mut self) -> anyhow::Result<&PgClient> {
        if self.client.is_none() {
            let c = PgClient::connect(
                &self.conn_params(&self.cfg.pg_advertise_address, self.cfg.pg_port),
            )
            .await?;
            self.client = Some(c);
        }
        self.client.as_ref().context("connect to postgres")
    }

    pub(super) async fn wait_until_ready(&mut self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if let Some(info) = self.postmaster.as_ref().and_then(|pm| pm.has_exited()) {
                self.postmaster = None;
                anyhow::bail!(
                    "postgres exited during start-up: {info}; see the postgres lines above"
                );
            }
            if self.probe().await.is_some() {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "postgres did not accept connections within {}s",
                    START_TIMEOUT.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Rewinds onto the primary's timeline; when that fails and the spec
    /// allows, re-clones (the data is this cluster's: plan checked the system
    /// identifier).
    pub(super) async fn rewind(
        &mut self,
        spec: &Spec,
        host: &str,
        port: u16,
    ) -> anyhow::Result<()> {
        let source = format!(
            "host={} port={} user={} dbname=postgres connect_timeout=5",
            host, port, self.cfg.su_username
        );
        tracing::info!("postgres: rewinding onto {host}:{port} with pg_rewind");
        self.begin_long_action();
        let result = alive_during(
            &self.local,
            pgwarden_pg::rewind(
                &self.bins,
                &self.cfg.data_dir,
                &source,
                &self.cfg.su_password,
            ),
        )
        .await;
        self.initializing = false;
        match result {
            Ok(()) => Ok(()),
            Err(e) if spec.reclone_on_rewind_failure => {
                tracing::warn!(error = %e, "pg_rewind failed: re-cloning from the primary (spec reclone_on_rewind_failure)");
                clear_dir(&self.cfg.data_dir)?;
                self.last_position = None;
                self.system_id = None;
                self.clone_from(host, port)
                    .await
                    .context("pg_basebackup after a failed rewind")
            }
            Err(e) => Err(e).context("pg_rewind (re-cloning is off in the spec)"),
        }
    }

    /// pg_basebackup from `host:port` into the (empty) data directory.
    async fn clone_from(&mut self, host: &str, port: u16) -> Result<(), pgwarden_pg::PgError> {
        self.begin_long_action();
        let r = alive_during(
            &self.local,
            pgwarden_pg::basebackup(
                &self.bins,
                &self.cfg.data_dir,
                host,
                port,
                &self.cfg.repl_username,
                &self.cfg.repl_password,
            ),
        )
        .await;
        self.initializing = false;
        r
    }

    /// Marks the node initializing (initdb, base backup, rewind), also in
    /// what the API shows, before an action that blocks the loop.
    pub(super) fn begin_long_action(&mut self) {
        self.initializing = true;
        self.local.send_modify(|state| {
            if let Some(s) = state {
                s.report.role = ObservedRole::Initializing;
            }
        });
    }
}

/// Empties a data directory (keeping the directory, its owner and mode).
fn clear_dir(dir: &PathBuf) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        }
        .with_context(|| format!("remove {}", path.display()))?;
    }
    Ok(())
}
