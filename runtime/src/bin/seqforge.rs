//! `seqforge`: the deployment command line. Subcommands:
//!
//! - `score`: BLEU, chrF and chrF++ of a system output against references, printed exactly as
//!   sacreBLEU 2.6.0 prints them (see `seqforge_runtime::score`).

use std::io;

use anyhow::Result;
use clap::{Parser, Subcommand};
use seqforge_runtime::score::cli::{ScoreArgs, run as run_score};

/// seqforge: deploy and evaluate exported sequence-to-sequence models.
#[derive(Debug, Parser)]
#[command(name = "seqforge", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Score a system output against references (BLEU, chrF, chrF++) as sacreBLEU 2.6.0 does.
    Score(ScoreArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Score(args) => run_score(&args, io::stdin().lock(), io::stdout().lock())?,
    }
    Ok(())
}
