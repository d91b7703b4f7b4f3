//! `pgwarden proxy`: clients connect to one address and land on the current
//! primary (or, on the read-only port, on a caught-up standby).
//!
//! A byte-level (layer 4) proxy: it never parses the postgres protocol, so
//! SSL, GSS encryption and cancel requests pass through untouched. Three
//! parts, each in its own file:
//!
//! - `control`: reads the cluster, asks the pure
//!   [`pgwarden_core::route::route`] where connections go, replaces the
//!   routing table, cuts withdrawn routes and acknowledges the generation;
//! - `accept`: one accept loop per port, picking a target from the current
//!   table or closing the client at once;
//! - `relay`: the byte pump between a client and its backend.
//!
//! `table` is what the control loop hands to the accept loops; `metrics`
//! counts what they do and, with `--metrics-listen`, serves the counts.

mod accept;
mod control;
mod metrics;
mod relay;
mod table;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use pgwarden_core::keys;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use self::accept::Shared;
use self::control::Control;
use self::table::{Port, Table};
use crate::StoreArgs;

/// Default limit of open client connections, across both ports.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1000;
/// How long shutdown waits for the accept loops to finish.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// `pgwarden proxy` flags.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Address to accept client connections on.
    #[arg(long)]
    pub listen_address: String,
    /// Port routed to the primary.
    #[arg(long)]
    pub port: u16,
    /// Port balanced over the standbys (round robin); none when absent.
    #[arg(long)]
    pub read_only_port: Option<u16>,
    /// Name of this proxy under `proxies/` in etcd (default: host name and pid).
    #[arg(long)]
    pub id: Option<String>,
    /// Most client connections open at once, across both ports; more are closed at once.
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics; off when absent.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<SocketAddr>,
}

/// Runs a proxy until `cancel`.
pub async fn run(args: ProxyArgs, cancel: CancellationToken) -> anyhow::Result<()> {
    let store = crate::ctl::open_store(&args.store)?;
    let id = match args.id {
        Some(id) if keys::valid_uid(&id) => id,
        Some(id) => bail!("invalid proxy id {id:?}: use letters, digits, '-' and '_' (at most 48)"),
        None => default_id(),
    };
    if args.max_connections == 0 {
        bail!("--max-connections must be at least 1");
    }
    if args
        .read_only_port
        .is_some_and(|p| p == args.port && p != 0)
    {
        bail!("--read-only-port must differ from --port ({})", args.port);
    }
    let primary = bind(&args.listen_address, args.port, "--port").await?;
    let read_only = match args.read_only_port {
        Some(port) => Some(bind(&args.listen_address, port, "--read-only-port").await?),
        None => None,
    };
    let metrics_listener = match args.metrics_listen {
        Some(addr) => Some(bind(&addr.ip().to_string(), addr.port(), "--metrics-listen").await?),
        None => None,
    };
    let span = tracing::info_span!("proxy", cluster = store.cluster(), id = id.as_str());
    async move {
        tracing::info!(
            primary_port = %local(&primary),
            read_only_port = read_only.as_ref().map(local).unwrap_or_default(),
            max_connections = args.max_connections,
            "proxy listening"
        );
        crate::notify::ready();
        let (table_tx, table_rx) = watch::channel(Arc::new(Table::stopped(
            0,
            "the cluster has not been read yet",
        )));
        let shared = Arc::new(Shared::new(args.max_connections));
        let root = cancel.child_token();
        let tracker = TaskTracker::new();
        tracker.spawn(
            accept::serve(
                primary,
                Port::Primary,
                table_rx.clone(),
                shared.clone(),
                root.clone(),
            )
            .in_current_span(),
        );
        if let Some(listener) = read_only {
            tracker.spawn(
                accept::serve(
                    listener,
                    Port::ReadOnly,
                    table_rx,
                    shared.clone(),
                    root.clone(),
                )
                .in_current_span(),
            );
        }
        if let Some(listener) = metrics_listener {
            tracker.spawn(
                metrics::serve(
                    listener,
                    store.cluster().to_string(),
                    id.clone(),
                    shared.clone(),
                    table_tx.subscribe(),
                    root.clone(),
                )
                .in_current_span(),
            );
        }
        tracker.close();
        let result = Control::new(store, &id, table_tx, root.clone())
            .run(&cancel)
            .await;
        // Stop accepting and cut whatever is still open (on an error at start-up).
        root.cancel();
        if tokio::time::timeout(SHUTDOWN_WAIT, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("accept loops did not stop in time");
        }
        result
    }
    .instrument(span)
    .await
}

/// Binds `address:port`, with a one-line error naming the flag to change.
async fn bind(address: &str, port: u16, flag: &str) -> anyhow::Result<TcpListener> {
    let shown = if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    };
    match TcpListener::bind((address, port)).await {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => bail!(
            "proxy address {shown} is already in use by another process: stop it or pass another {flag}"
        ),
        Err(e) => Err(e).with_context(|| {
            format!("listen on {shown} (check --listen-address and {flag})")
        }),
    }
}

fn local(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .map(|a: SocketAddr| a.to_string())
        .unwrap_or_default()
}

/// Host name and pid, reduced to the characters a key component may hold.
fn default_id() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "proxy".into());
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(32)
        .collect();
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_id_is_a_valid_key_component() {
        assert!(keys::valid_uid(&default_id()), "{}", default_id());
    }

    #[tokio::test]
    async fn a_port_in_use_is_one_line_naming_the_address_and_the_flag() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = taken.local_addr().unwrap().port();
        let err = bind("127.0.0.1", port, "--read-only-port")
            .await
            .unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            format!("proxy address 127.0.0.1:{port} is already in use by another process: stop it or pass another --read-only-port")
        );
    }
}
