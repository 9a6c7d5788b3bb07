//! `seqforge`: the deployment command line. Subcommands:
//!
//! - `score`: BLEU, chrF and chrF++ of a system output against references, printed exactly as
//!   sacreBLEU 2.6.0 prints them (see `seqforge_runtime::score`).
//! - `generate`: translate a raw text file with an exported model (fairseq's S-/T-/H-/D-/P-
//!   lines or plain text), with a summary and, given references, BLEU (see
//!   `seqforge_runtime::cli::generate`).
//! - `interactive`: translate standard input as it arrives (see
//!   `seqforge_runtime::cli::interactive`).
//! - `serve`: an HTTP translation server with dynamic batching (see
//!   `seqforge_runtime::serve`).

use std::io;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
#[cfg(feature = "onnx")]
use seqforge_runtime::cli::{generate::GenerateArgs, interactive::InteractiveArgs};
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
    /// Translate a raw text file with an exported model: fairseq-generate's S-/T-/H-/D-/P-
    /// lines (or one plain translation per line), a speed summary, BLEU/chrF with --ref.
    #[cfg(feature = "onnx")]
    Generate(Box<GenerateArgs>),
    /// Translate standard input line by line with an exported model (one translation per
    /// line on stdout, flushed as each buffer of lines is done).
    #[cfg(feature = "onnx")]
    Interactive(Box<InteractiveArgs>),
    /// Serve an exported model over HTTP (POST /v1/translate, GET /healthz, GET /metrics)
    /// with dynamic batching, a bounded queue and graceful shutdown on SIGTERM.
    #[cfg(feature = "serve")]
    Serve(Box<seqforge_runtime::serve::ServeArgs>),
    /// Evaluate an exported language model on a raw text file as fairseq-eval-lm does
    /// (perplexity, token- or word-level, with a context window).
    #[cfg(feature = "onnx")]
    EvalLm(Box<seqforge_runtime::cli::eval_lm::EvalLmArgs>),
}

fn main() -> ExitCode {
    seqforge_cli_support::finish(run())
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Score(args) => run_score(&args, io::stdin().lock(), io::stdout().lock())?,
        #[cfg(feature = "onnx")]
        Command::Generate(args) => {
            seqforge_runtime::cli::generate::run(&args, &mut io::stdout().lock())?;
        }
        #[cfg(feature = "onnx")]
        Command::Interactive(args) => {
            seqforge_runtime::cli::interactive::run(
                &args,
                io::stdin().lock(),
                &mut io::stdout().lock(),
            )?;
        }
        #[cfg(feature = "serve")]
        Command::Serve(args) => seqforge_runtime::serve::run(&args)?,
        #[cfg(feature = "onnx")]
        Command::EvalLm(args) => {
            seqforge_runtime::cli::eval_lm::run(&args, &mut io::stdout().lock())?;
        }
    }
    Ok(())
}
