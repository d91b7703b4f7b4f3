//! `pgwarden completions SHELL` and `pgwarden man`: shell completion scripts
//! and man pages generated from the CLI definition itself, so the packaged
//! files cannot drift from the flags the binary takes.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

/// `pgwarden completions` flags.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// Shell to write the completion script for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `pgwarden man` flags.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write pgwarden.1 and one page per subcommand (pgwarden-keeper.1,
    /// pgwarden-ctl-status.1, ...) into DIR instead of printing pgwarden(1).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Prints the completion script to stdout.
pub fn completions(args: CompletionsArgs) -> anyhow::Result<()> {
    let mut cli = crate::cli_command();
    clap_complete::generate(args.shell, &mut cli, "pgwarden", &mut std::io::stdout());
    Ok(())
}

/// Prints pgwarden(1), or writes every page into `--dir`.
pub fn man(args: ManArgs) -> anyhow::Result<()> {
    let cli = crate::cli_command();
    match args.dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("create man page directory {}", dir.display()))?;
            clap_mangen::generate_to(cli, &dir)
                .with_context(|| format!("write man pages into {}", dir.display()))
        }
        None => clap_mangen::Man::new(cli)
            .render(&mut std::io::stdout())
            .context("write the man page to stdout"),
    }
}
