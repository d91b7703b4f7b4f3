//! Carrying out the plan's actions on postgres: initdb, clones, rewinds,
//! starts and stops, slots and roles.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use pgwarden_core::rewind::{
    classify_rewind_failure, reclone_step, rewind_retry_after, RecloneStep, RewindFailure,
};
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
                if self.require_ssl_unmet(spec) {
                    tracing::error!("spec pg_require_ssl = true, but this keeper has no --pg-ssl-cert-file/--pg-ssl-key-file/--pg-ssl-ca-file: postgres runs without TLS and still accepts clients in clear; restart this keeper with the three flags");
                }
                clean_auto_conf(&dir)?;
                if standby {
                    pgwarden_pg::set_standby_signal(&dir, true)?;
                }
                tracing::info!(standby, "postgres: configuration written");
            }
            PgAction::Start => {
                clean_auto_conf(&dir)?;
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
            PgAction::SetAside => self.set_aside(spec).await?,
            PgAction::Wipe => {
                tracing::info!(
                    "postgres: emptying the data directory to clone it again (operator request)"
                );
                clear_dir(&dir)?;
                self.system_id = None;
                self.last_position = None;
                self.unrewindable = false;
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

    /// pg_rewind onto `host:port`. Only pg_rewind's own "cannot be rewound"
    /// leads to a new copy (see [`pgwarden_core::rewind`]), which this
    /// records as an observation for plan; any other failure is retried with
    /// a growing pause and leaves the directory untouched.
    pub(super) async fn rewind(
        &mut self,
        spec: &Spec,
        host: &str,
        port: u16,
    ) -> anyhow::Result<()> {
        let now = tokio::time::Instant::now();
        if let Some((at, why)) = &self.rewind_retry {
            if now < *at {
                bail!(
                    "pg_rewind onto {host}:{port} failed ({why}); next attempt in {}s; the data directory is untouched",
                    at.saturating_duration_since(now).as_secs().max(1)
                );
            }
        }
        // Rewinding onto a source still being promoted is pointless: wait
        // until it is on a newer timeline than this node's data.
        let own = pgwarden_pg::controldata(&self.bins, &self.cfg.data_dir)
            .await
            .context("read this node's control data before pg_rewind")?
            .timeline;
        // Bounded as a whole: a source that accepts TCP but never answers
        // (its postmaster stopped) would hold the keeper loop forever.
        let params = self.conn_params(host, port);
        let theirs = tokio::time::timeout(SOURCE_CHECK_TIMEOUT, async {
            let c = PgClient::connect(&params).await?;
            c.query_one_string("SELECT timeline_id::text FROM pg_control_checkpoint()")
                .await
        })
        .await
        .map_err(|_| format!("no answer within {}s", SOURCE_CHECK_TIMEOUT.as_secs()))
        .and_then(|r| r.map_err(|e| e.to_string()));
        match theirs.map(|t| t.and_then(|t| t.parse::<u32>().ok())) {
            Ok(Some(t)) if t > own => {}
            Ok(t) => bail!(
                "pg_rewind onto {host}:{port} waits: the source is on timeline {}, not past this node's {own} yet (still being promoted)",
                t.map_or("?".to_string(), |t| t.to_string())
            ),
            Err(e) => {
                let why = format!("cannot reach the source: {e}");
                return Err(self.rewind_retry_later(why));
            }
        }
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
        let e = match result {
            Ok(()) => {
                self.rewind_failures = 0;
                self.rewind_retry = None;
                return Ok(());
            }
            Err(e) => e,
        };
        if classify_rewind_failure(&e.to_string()) == RewindFailure::Retry {
            return Err(self.rewind_retry_later(e.to_string()));
        }
        // pg_rewind's own verdict: an observed fact, which plan turns into
        // a new copy (SetAside, BaseBackup) where the spec allows.
        self.unrewindable = true;
        self.rewind_failures = 0;
        self.rewind_retry = None;
        if spec.reclone_on_rewind_failure {
            Err(e).context(
                "pg_rewind cannot rewind this data directory: cloning it again from the primary",
            )
        } else {
            Err(e).context("pg_rewind cannot rewind this data directory (re-cloning is off in the spec: set reclone_on_rewind_failure=true, or re-clone with `pgwarden ctl reinit`)")
        }
    }

    /// Makes room for a new copy of a directory pg_rewind cannot rewind:
    /// moves it aside when the filesystem has room, deletes it only when
    /// the spec allows ([`reclone_step`]).
    async fn set_aside(&mut self, spec: &Spec) -> anyhow::Result<()> {
        let dir = self.cfg.data_dir.clone();
        let step = match room_for_a_copy(&dir) {
            Ok(room) => reclone_step(room, spec.reclone_may_destroy_data),
            Err(why) => {
                tracing::warn!("{why}");
                reclone_step(false, spec.reclone_may_destroy_data)
            }
        };
        match step {
            RecloneStep::MoveAside => match move_aside(&dir) {
                Ok(aside) => tracing::warn!(
                    aside = %aside.display(),
                    "pg_rewind cannot rewind this data directory: moved it aside (the only copy kept; delete it once not needed) and re-cloning from the primary"
                ),
                Err(why) if spec.reclone_may_destroy_data => {
                    tracing::warn!("pg_rewind cannot rewind this data directory and it cannot be moved aside ({why:#}): deleting it (spec reclone_may_destroy_data) and re-cloning");
                    clear_dir(&dir)?;
                }
                Err(why) => bail!(
                    "pg_rewind cannot rewind this data directory, and it cannot be moved aside to keep it ({why:#}): nothing deleted; free space or allow deletion with `pgwarden ctl spec set reclone_may_destroy_data=true`"
                ),
            },
            RecloneStep::Destroy => {
                tracing::warn!("pg_rewind cannot rewind this data directory and there is no room to keep it: deleting it (spec reclone_may_destroy_data) and re-cloning");
                clear_dir(&dir)?;
            }
            RecloneStep::Refuse(why) => {
                bail!("pg_rewind cannot rewind this data directory; not re-cloning: {why}")
            }
        }
        self.last_position = None;
        self.system_id = None;
        self.unrewindable = false;
        Ok(())
    }

    /// Schedules the next rewind attempt after a retryable failure.
    fn rewind_retry_later(&mut self, why: String) -> anyhow::Error {
        self.rewind_failures = self.rewind_failures.saturating_add(1);
        let pause = rewind_retry_after(self.rewind_failures);
        self.rewind_retry = Some((tokio::time::Instant::now() + pause, why.clone()));
        anyhow::anyhow!(
            "pg_rewind failed ({why}); retrying in {}s; the data directory is untouched",
            pause.as_secs()
        )
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

/// Removes the parameters pgwarden manages from postgresql.auto.conf, before
/// every start and every reload of a new configuration: `ALTER SYSTEM` must
/// not override them (listen_addresses, port, primary_conninfo,
/// synchronous_standby_names...) behind pgwarden's back.
fn clean_auto_conf(dir: &Path) -> Result<(), pgwarden_pg::PgError> {
    let auto = dir.join("postgresql.auto.conf");
    let Ok(text) = std::fs::read_to_string(&auto) else {
        return Ok(());
    };
    let (kept, removed) = pgwarden_pg::strip_managed_auto_conf(&text);
    if !removed.is_empty() {
        pgwarden_pg::write_file_atomic(&auto, &kept, 0o600)?;
        tracing::warn!(?removed, "postgres: removed parameters pgwarden manages from postgresql.auto.conf (ALTER SYSTEM cannot override them; set the others in the cluster spec)");
    }
    Ok(())
}

/// How long the check of the rewind source's timeline may take.
const SOURCE_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Where an unrewindable data directory is kept: next to it, one copy.
fn aside_path(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".pgwarden-old");
    dir.with_file_name(name)
}

/// Whether the filesystem holding `dir` has room for a second copy of it.
fn room_for_a_copy(dir: &Path) -> Result<bool, String> {
    let parent = dir.parent().unwrap_or(Path::new("/"));
    let stat = nix::sys::statvfs::statvfs(parent)
        .map_err(|e| format!("cannot tell the free space under {}: {e}", parent.display()))?;
    let free = stat.blocks_available().saturating_mul(stat.fragment_size());
    let used = dir_size(dir);
    // An older kept copy is replaced, so its space counts as free.
    let old = dir_size(&aside_path(dir));
    Ok(free.saturating_add(old) > used.saturating_add(used / 10))
}

fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Renames `dir` to its aside path (replacing an older kept copy) and
/// re-creates it empty with mode 0700; returns the aside path.
fn move_aside(dir: &Path) -> anyhow::Result<PathBuf> {
    let aside = aside_path(dir);
    if aside.exists() {
        std::fs::remove_dir_all(&aside)
            .with_context(|| format!("remove the older kept copy {}", aside.display()))?;
    }
    std::fs::rename(dir, &aside)
        .with_context(|| format!("rename {} to {}", dir.display(), aside.display()))?;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("create an empty {}", dir.display()))?;
    Ok(aside)
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
