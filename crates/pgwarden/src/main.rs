//! The one pgwarden binary: each role is a subcommand.
//!
//! main parses flags (with the sentinel's and proxy's `--config` file turned
//! into flags first, see config_file.rs), sets up logging and the root
//! cancellation token (SIGINT and SIGTERM cancel it), and hands over to the
//! role. Roles are thin loops over the pure decisions in pgwarden-core.

mod alerts;
mod api;
mod clock;
mod config_file;
mod ctl;
mod demo;
mod docs;
mod exposition;
mod http;
mod keeper;
mod local_state;
mod notify;
mod proxy;
mod read_model;
mod sentinel;
mod shutdown;
mod store_args;
mod view;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// High-availability manager for PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "pgwarden", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

pub use store_args::StoreArgs;

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
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(docs::CompletionsArgs),
    /// Print the man page, or write one page per command with --dir.
    Man(docs::ManArgs),
    /// Internal: the keeper's out-of-process fencer (see keeper/watchdog.rs).
    #[command(hide = true)]
    FenceWatchdog,
}

/// The whole command line as clap sees it: the derived definition plus the
/// sentinel's and proxy's `--config`. Parsing, completions and man pages all
/// start from here.
pub fn cli_command() -> clap::Command {
    config_file::add_flag(Cli::command())
}

fn main() -> ExitCode {
    notify::take_socket_from_env();
    let argv = match config_file::expand(std::env::args_os().collect(), &cli_command()) {
        Ok(argv) => argv,
        Err(e) => {
            eprintln!("error: {:#}", anyhow::Error::from(e));
            return ExitCode::from(2);
        }
    };
    let cli =
        Cli::from_arg_matches(&cli_command().get_matches_from(argv)).unwrap_or_else(|e| e.exit());
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
            Command::Completions(args) => docs::completions(args),
            Command::Man(args) => docs::man(args),
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
        Command::Ctl(_) | Command::Completions(_) | Command::Man(_) => "warn",
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
