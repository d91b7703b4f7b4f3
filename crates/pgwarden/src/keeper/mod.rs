//! `pgwarden keeper`: runs and reconfigures the local postgres.
//!
//! The loop is thin: read the cluster, observe postgres, ask the pure
//! [`pgwarden_core::plan`] what to do, do it in order (stopping at the first
//! failure: the next tick is the retry), publish the report. It wakes on every
//! change of `status`, on postmaster exit, and once a second.

mod alive;
pub mod config;
mod divergence;
mod node;
mod primary_lease;
mod uid_claim;
pub mod watchdog;

use std::time::Duration;

use anyhow::{bail, Context};
use pgwarden_pg::{running_postmaster_pid, DataDirState, PgBins};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use self::config::{KeeperArgs, KeeperConfig};
use self::node::Node;

/// How often the keeper observes without a store event.
pub const TICK: Duration = Duration::from_millis(pgwarden_core::keeper::LOOP_MS);

/// Runs a keeper until `cancel`.
pub async fn run(args: KeeperArgs, cancel: CancellationToken) -> anyhow::Result<()> {
    let cfg = args.into_config()?;
    if nix::unistd::geteuid().is_root() {
        bail!(
            "pgwarden keeper must not run as root: postgres refuses to; run it as the unprivileged user that owns the data directory (e.g. `runuser -u postgres -- pgwarden keeper ...`)"
        );
    }
    let store = cfg.store.open().await?;
    let mut bins = PgBins::locate(cfg.pg_bin_dir.as_deref())?;
    if let Some(ssl) = &cfg.pg_ssl {
        // pg_basebackup and pg_rewind: TLS, the server checked against the CA.
        let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
        bins.libpq_env = vec![
            ("PGSSLMODE".into(), "verify-full".into()),
            ("PGSSLROOTCERT".into(), path(&ssl.ca_file)),
            ("PGSSLCERT".into(), path(&ssl.cert_file)),
            ("PGSSLKEY".into(), path(&ssl.key_file)),
        ];
    }
    // The keeper's own connections (probes, the divergence check): the same
    // verify-full as libpq's, read once so that a bad CA file stops us here.
    let pg_tls = match &cfg.pg_ssl {
        Some(ssl) => Some(pgwarden_pg::PgTls::from_ca_file(&ssl.ca_file)?),
        None => None,
    };
    preflight(&cfg).await?;
    let api_security = crate::api::ApiSecurity {
        tls: match &cfg.api_tls {
            Some((cert, key)) => Some(crate::api::tls::acceptor(
                cert,
                key,
                cfg.api_client_ca_file.as_deref(),
            )?),
            None => None,
        },
        auth_reads: cfg.api_auth_reads,
    };
    let api_listener = crate::api::bind(cfg.api_listen).await?;
    let span = tracing::info_span!("keeper", cluster = store.cluster(), uid = cfg.uid.as_str());
    let tracker = tokio_util::task::TaskTracker::new();
    // The HTTP API (Patroni-compatible health checks) reads what the node
    // publishes each tick.
    let (local, local_rx) = tokio::sync::watch::channel(None);
    tracker.spawn(
        crate::api::serve(
            api_listener,
            store.clone(),
            cfg.uid.clone(),
            cfg.api_password.clone(),
            api_security,
            local_rx,
            cancel.child_token(),
        )
        .instrument(tracing::info_span!(parent: &span, "api")),
    );
    if cfg.sentinel {
        let (store, id, cancel) = (
            store.clone(),
            format!("{}-sentinel", cfg.uid),
            cancel.child_token(),
        );
        tracker.spawn(
            crate::sentinel::run_sentinel(store, id, cancel)
                .instrument(tracing::info_span!("sentinel")),
        );
    }
    tracker.close();
    let watchdog =
        watchdog::Watchdog::start(&cfg.data_dir).context("start the fencing watchdog")?;
    crate::notify::ready();
    let result = Node::new(watchdog, cfg, store, bins, pg_tls, local)
        .run(cancel.clone())
        .instrument(span)
        .await;
    cancel.cancel();
    tracker.wait().await;
    result
}

/// Checks that stop the keeper before it touches anything: a directory that
/// is not ours to use, and a port someone else holds.
async fn preflight(cfg: &KeeperConfig) -> anyhow::Result<()> {
    let state =
        pgwarden_pg::inspect_data_dir(&cfg.data_dir).context("inspect the data directory")?;
    if state == DataDirState::Foreign {
        bail!(
            "data directory {} is not empty and is not a postgres data directory: refusing to touch it; point --data-dir at an empty or missing directory",
            cfg.data_dir.display()
        );
    }
    if let Some(pid) = running_postmaster_pid(&cfg.data_dir) {
        bail!(
            "a postgres (pid {pid}) from an earlier run still runs on {}: stop it (`pg_ctl stop -D {}`) and start the keeper again",
            cfg.data_dir.display(),
            cfg.data_dir.display()
        );
    }
    let addr = format!(
        "{}:{}",
        cfg.pg_listen_address
            .split(',')
            .next()
            .unwrap_or_default()
            .trim(),
        cfg.pg_port
    );
    match tokio::net::TcpListener::bind(&addr).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => bail!(
            "postgres port {addr} is already in use by another process: stop it or pass another --pg-port"
        ),
        Err(e) => Err(e).with_context(|| format!("check that postgres can listen on {addr} (--pg-listen-address/--pg-port)")),
    }
}
