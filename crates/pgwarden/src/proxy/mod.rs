//! `pgwarden proxy`: clients connect to one address and land on the current
//! primary (or, on the read-only port, on a caught-up standby).
//!
//! A byte-level (layer 4) proxy: past the client's first packet, which it
//! reads and checks before opening a backend, it never parses the postgres
//! protocol, so SSL, GSS encryption and cancel requests pass through
//! untouched. Three parts, each in its own file:
//!
//! - `control`: reads the cluster, asks the pure
//!   [`pgwarden_core::route::route`] where connections go, replaces the
//!   routing table, cuts withdrawn routes and acknowledges the generation;
//! - `accept`: one accept loop per port, picking a target from the current
//!   table or closing the client at once; `login` reads the client's first
//!   packet before a backend is opened, so only a client that speaks the
//!   protocol costs postgres a backend process;
//! - `relay`: the byte pump between a client and its backend.
//!
//! `table` is what the control loop hands to the accept loops; `metrics`
//! counts what they do and, with `--metrics-listen`, serves the counts.

mod accept;
mod control;
mod login;
mod metrics;
mod relay;
mod stats;
mod table;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use pgwarden_core::{keys, HumanDuration};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use self::accept::Shared;
use self::control::Control;
use self::relay::RelayMode;
use self::table::{Port, Table};
use crate::StoreArgs;

/// Default limit of open client connections, across both ports.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1000;
/// How long shutdown waits for the accept loops to finish.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
/// File descriptors beyond the connections: listeners, etcd, the metrics
/// endpoint, logs, the runtime's own.
const FILES_SPARE: u64 = 64;

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
    /// How long a new client may take to send its first packet before it is
    /// dropped; no postgres backend is opened before that packet.
    #[arg(long, value_name = "DURATION", default_value_t = HumanDuration(accept::DEFAULT_LOGIN_TIMEOUT))]
    pub client_login_timeout: HumanDuration,
    /// How bytes move between client and postgres: `copy` (read and write
    /// through a buffer) or `splice` (splice(2) through a pipe per
    /// direction, four more open files per connection). See
    /// docs/benchmarks.md for what each costs.
    #[arg(long, value_enum, default_value_t = RelayMode::Copy)]
    pub relay: RelayMode,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics; off when absent.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<SocketAddr>,
}

/// Runs a proxy until `cancel`.
pub async fn run(args: ProxyArgs, cancel: CancellationToken) -> anyhow::Result<()> {
    let store = args.store.open().await?;
    let id = match args.id {
        Some(id) if keys::valid_uid(&id) => id,
        Some(id) => bail!("invalid proxy id {id:?}: use letters, digits, '-' and '_' (at most 48)"),
        None => default_id(),
    };
    if args.max_connections == 0 {
        bail!("--max-connections must be at least 1");
    }
    if args.client_login_timeout.0.is_zero() {
        bail!("--client-login-timeout must be more than 0s (e.g. 10s)");
    }
    raise_open_files(args.max_connections, args.relay)?;
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
            client_login_timeout = %args.client_login_timeout,
            "proxy listening"
        );
        crate::notify::ready();
        let (table_tx, table_rx) = watch::channel(Arc::new(Table::stopped(
            0,
            "the cluster has not been read yet",
        )));
        let shared = Arc::new(
            Shared::new(args.max_connections, args.client_login_timeout.0).relaying(args.relay),
        );
        let root = cancel.child_token();
        let mut listeners = vec![(primary, Port::Primary)];
        listeners.extend(read_only.map(|l| (l, Port::ReadOnly)));
        let relay_thread = spawn_relay_thread(listeners, table_rx, shared.clone(), root.clone())?;
        let tracker = TaskTracker::new();
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
        let stopped = async {
            tracker.wait().await;
            let _ = tokio::task::spawn_blocking(move || relay_thread.join()).await;
        };
        if tokio::time::timeout(SHUTDOWN_WAIT, stopped).await.is_err() {
            tracing::warn!("accept loops did not stop in time");
        }
        result
    }
    .instrument(span)
    .await
}

/// Runs the accept loops, and so every relay they start, on a thread of
/// their own with a single-threaded runtime until `root` is cancelled.
///
/// Why not on the multi-threaded runtime the control loop uses: a relay is
/// a few syscalls per message, and on the shared runtime each wakeup may
/// land on the other worker (a futex wake, a cache miss, work stealing).
/// One thread that does nothing but epoll and relay spends less CPU per
/// query, and CPU is what the proxy competes for with postgres and the
/// clients on the same cores. The control loop only swaps the routing table
/// (a `watch`) and cancels tokens, which cross threads as they are.
fn spawn_relay_thread(
    listeners: Vec<(TcpListener, Port)>,
    table: watch::Receiver<Arc<Table>>,
    shared: Arc<Shared>,
    root: CancellationToken,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    // Registered with this runtime's reactor; moved to the relay thread's.
    let listeners = listeners
        .into_iter()
        .map(|(l, port)| Ok((l.into_std()?, port)))
        .collect::<std::io::Result<Vec<_>>>()
        .context("hand the listening sockets to the relay thread")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the relay runtime")?;
    let span = tracing::Span::current();
    std::thread::Builder::new()
        .name("pgwarden-relay".into())
        .spawn(move || {
            runtime.block_on(
                async move {
                    let tracker = TaskTracker::new();
                    for (listener, port) in listeners {
                        match TcpListener::from_std(listener) {
                            Ok(l) => {
                                tracker.spawn(
                                    accept::serve(l, port, table.clone(), shared.clone(), root.clone())
                                        .in_current_span(),
                                );
                            }
                            Err(e) => {
                                tracing::error!(port = %port, error = %e, "cannot accept on this port");
                                root.cancel();
                            }
                        }
                    }
                    tracker.close();
                    tracker.wait().await;
                }
                .instrument(span),
            );
            // Dropping the runtime drops every relay still open: the routes
            // were cut by `root` already.
        })
        .context("start the relay thread")
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

/// Raises the soft limit of open files to the hard one, so that
/// `--max-connections` is not cut short by a default of 1024; fails, naming
/// both fixes, when even the hard limit is too low.
fn raise_open_files(max_connections: usize, relay: RelayMode) -> anyhow::Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("read RLIMIT_NOFILE")?;
    let needed = files_needed(max_connections, relay);
    if hard < needed {
        bail!(
            "--max-connections {max_connections} needs up to {needed} open files, but their hard limit (RLIMIT_NOFILE) is {hard}: raise it (LimitNOFILE= in the systemd unit, ulimit -Hn) or lower --max-connections"
        );
    }
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("raise RLIMIT_NOFILE")?;
    }
    Ok(())
}

/// Open files a proxy with `max_connections` may hold at once.
fn files_needed(max_connections: usize, relay: RelayMode) -> u64 {
    (max_connections as u64)
        .saturating_mul(relay.files_per_connection())
        .saturating_add(FILES_SPARE)
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

    #[test]
    fn open_files_are_raised_to_the_hard_limit_or_refused_when_it_is_too_low() {
        use nix::sys::resource::{getrlimit, Resource};
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        raise_open_files(10, RelayMode::Copy).unwrap();
        assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap(), (hard, hard));
        let too_many = usize::try_from(hard / RelayMode::Copy.files_per_connection() + 1)
            .unwrap_or(usize::MAX);
        let err = raise_open_files(too_many, RelayMode::Copy)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("--max-connections {too_many} needs up to "))
                && err.contains(&format!("hard limit (RLIMIT_NOFILE) is {hard}")),
            "{err}"
        );
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
