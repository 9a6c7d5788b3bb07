//! `seqforge-train`: make corpora, preprocess them into fairseq-compatible binarized datasets,
//! and train models on libtorch.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// seqforge's training tool: corpus → preprocess → train.
#[derive(Parser)]
#[command(name = "seqforge-train", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    // SUBCOMMANDS: one variant per subcommand, each with its args struct from the library.
    /// Make a corpus from registry packages (`corpus bible --out DIR`, `corpus english --out DIR`).
    #[command(subcommand)]
    Corpus(seqforge_trainer::corpus::CorpusCommand),
    /// Learn a byte-level BPE (tokenizer.json) on training text; lossless on NFC text.
    LearnBpe(seqforge_trainer::bpe::LearnBpeArgs),
    /// Build vocabularies and binarize text into fairseq-compatible datasets (fairseq-preprocess).
    Preprocess(seqforge_trainer::data::PreprocessArgs),
    /// Train a model on a preprocessed data folder (fairseq-train's flags; `train --help`
    /// lists those of the chosen --arch, --criterion, --optimizer and --lr-scheduler).
    Train(seqforge_trainer::train::TrainCommand),
    /// Perplexity of a language model on a split of its data folder (fairseq-eval-lm):
    /// context window, word-level perplexity with --remove-bpe, word probabilities/statistics.
    EvalLm(seqforge_trainer::eval_lm::EvalLmArgs),
    /// Export a checkpoint to ONNX (seqforge-export), then check the graphs against the
    /// libtorch model on validation sentences; a mismatch fails the export.
    Export(seqforge_trainer::export_check::ExportArgs),
    /// Convert a fairseq checkpoint (`.pt`) into a seqforge checkpoint directory that
    /// `export` and `seqforge-export` take (no Python; nothing written on error).
    ImportFairseq(seqforge_trainer::import_fairseq::ImportFairseqArgs),
}

fn main() -> ExitCode {
    seqforge_cli_support::init_logging("info");
    seqforge_cli_support::finish(run())
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        // DISPATCH: one arm per subcommand.
        Command::Corpus(cmd) => Ok(cmd.execute()?),
        Command::LearnBpe(args) => {
            let report = seqforge_trainer::bpe::run(&args)?;
            println!(
                "learn-bpe: {} pieces in {}{}",
                report.vocab_size,
                report.out.display(),
                if report.lines_checked > 0 {
                    format!(
                        "; round trip exact on {} lines ({} pieces)",
                        report.lines_checked, report.pieces
                    )
                } else {
                    String::new()
                }
            );
            Ok(())
        }
        Command::Preprocess(args) => {
            seqforge_trainer::data::preprocess::run(&args)?;
            Ok(())
        }
        Command::Train(cmd) => {
            let registry = seqforge_trainer::registry::Registry::with_builtins()?;
            match cmd.run(&registry) {
                Err(seqforge_trainer::train::Error::Args(e)) => e.exit(),
                Err(e) => Err(e.into()),
                Ok(seqforge_trainer::train::TrainOutcome::Trained(summary)) => {
                    println!("{}", summary.to_json());
                    Ok(())
                }
                Ok(seqforge_trainer::train::TrainOutcome::Launched { world_size }) => {
                    eprintln!("all {world_size} workers finished");
                    Ok(())
                }
            }
        }
        Command::EvalLm(args) => {
            let bar = indicatif::ProgressBar::new(0).with_style(
                indicatif::ProgressStyle::with_template(
                    "eval-lm {bar:30} {pos}/{len} samples {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            }
            let s = seqforge_trainer::eval_lm::run(&args, |done, total| {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            })?;
            bar.finish_and_clear();
            for (id, words) in &s.report.word_probs {
                let line: Vec<String> =
                    words.iter().map(|(w, p)| format!("{w} [{p:.6}]")).collect();
                println!("{id} {}", line.join("\t"));
            }
            for w in &s.report.word_stats {
                println!("{w}");
            }
            println!(
                "Evaluated {} tokens in {:.1}s ({:.2} tokens/s)",
                s.report.tokens, s.seconds, s.tokens_per_second
            );
            println!("{}", s.report.summary());
            Ok(())
        }
        Command::ImportFairseq(args) => {
            let report = seqforge_trainer::import_fairseq::run(&args)?;
            println!("{}", report.render());
            Ok(())
        }
        Command::Export(args) => {
            let r = seqforge_trainer::export_check::run(&args)?;
            println!("{}", r.summary.render());
            println!(
                "check: {} sentences × {} steps (reordered, then pruned to {} rows), max |diff| \
                 log_probs {:.2e} (tolerance {:.0e}); beam 5: {} of {} best hypotheses identical \
                 to libtorch fp32; in {:.1}s",
                r.samples,
                r.steps,
                r.final_rows,
                r.log_probs_diff,
                r.tolerance,
                r.identical_hypotheses.0,
                r.identical_hypotheses.1,
                r.check_seconds
            );
            Ok(())
        }
    }
}
