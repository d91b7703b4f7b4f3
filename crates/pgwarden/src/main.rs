//! The one pgwarden binary: each role is a subcommand.
//!
//! main parses flags, sets up logging and the root cancellation token (SIGINT
//! and SIGTERM cancel it), and hands over to the role. Roles are thin loops
//! over the pure decisions in pgwarden-core.

mod api;
mod ctl;
mod demo;
mod keeper;
mod proxy;
mod sentinel;
mod shutdown;
mod view;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// High-availability manager for PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "pgwarden", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Flags every role that talks to the store shares.
#[derive(Debug, Clone, Default, Args)]
pub struct StoreArgs {
    /// Name of the cluster (its keys live under /pgwarden/NAME/).
    #[arg(long, env = "PGWARDEN_CLUSTER_NAME", global = true)]
    pub cluster_name: Option<String>,
    /// Comma-separated etcd v3 endpoints.
    #[arg(
        long,
        env = "PGWARDEN_STORE_ENDPOINTS",
        global = true,
        value_delimiter = ','
    )]
    pub store_endpoints: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The operator's command line: init, status, spec, pause/resume.
    Ctl(ctl::CtlArgs),
    /// Run and reconfigure the local postgres; one per node.
    Keeper(Box<keeper::config::KeeperArgs>),
    /// Watch the keepers and decide who is primary; one or more, one leads.
    Sentinel(sentinel::SentinelArgs),
    /// Route clients to the current primary (and, on a second port, to standbys).
    Proxy(proxy::ProxyArgs),
    /// A local 3-node cluster with etcd and a sentinel, on loopback.
    Demo(demo::DemoArgs),
    /// Internal: the keeper's out-of-process fencer (see keeper/watchdog.rs).
    #[command(hide = true)]
    FenceWatchdog,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::FenceWatchdog = cli.command {
        // Plain threads, no runtime: it must stay small and independent.
        return match keeper::watchdog::run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    init_logging(&cli.command);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let cancel = CancellationToken::new();
        shutdown::cancel_on_signals(cancel.clone());
        match cli.command {
            Command::Ctl(args) => ctl::run(args).await,
            Command::Keeper(args) => keeper::run(*args, cancel).await,
            Command::Sentinel(args) => sentinel::run(args, cancel).await,
            Command::Proxy(args) => proxy::run(args, cancel).await,
            Command::Demo(args) => demo::run(args, cancel).await,
            Command::FenceWatchdog => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the outermost context, then each cause.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Daemons log at info by default; ctl only shows warnings so its output stays
/// readable by scripts. RUST_LOG overrides both.
fn init_logging(command: &Command) {
    let default = match command {
        Command::Ctl(_) => "warn",
        _ => "info",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
