//! `cargo xtask bench-train`: seqforge's training words/s next to an equivalent PyTorch eager
//! loop on the Bible data, same batches, same threads (see `benches/src/bin/train_vs_pytorch.rs`).

use std::path::Path;
use std::process::Command;

use anyhow::Result;

use crate::pipeline;
use crate::setup::{self, SetupArgs};

/// Options of `cargo xtask bench-train`.
#[derive(clap::Args, Debug)]
pub struct BenchTrainArgs {
    #[command(flatten)]
    setup: SetupArgs,
    /// Architectures to measure.
    #[arg(long, value_delimiter = ',', default_value = "transformer_tiny,transformer_iwslt_de_en")]
    arch: Vec<String>,
    /// Timed updates per architecture (after 3 warm-up updates).
    #[arg(long, default_value_t = 30)]
    updates: usize,
    /// Token budget per batch.
    #[arg(long, default_value_t = 4096)]
    max_tokens: usize,
    /// Threads on both sides.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Work folder (shared with `cargo xtask demo`: the data is prepared once).
    #[arg(long, default_value = "demo")]
    work: String,
}

/// The PyPI torch the Python side imports (the libtorch `tch` 0.24 binds).
const TORCH: &str = "torch==2.11.0";

/// Prepares data and torch, builds the bench binary and runs it for each architecture.
pub fn run(root: &Path, args: &BenchTrainArgs) -> Result<()> {
    setup::run(root, &args.setup)?;
    let bins = pipeline::build_bins(root)?;
    let work = root.join(&args.work);
    let (_, data) = pipeline::prepare_bible(root, &work, &bins)?;
    // About 4.7 GB with its CUDA wheels, which the CPU run loads but does not use.
    let pythonpath =
        pipeline::pip_install_once(root, &args.setup.python, "bench-python", &[TORCH, "numpy"])?;
    let bench = pipeline::build_bench(root, "train_vs_pytorch")?;
    for arch in &args.arch {
        pipeline::run(
            Command::new(&bench)
                .arg("--data")
                .arg(&data)
                .args(["--arch", arch, "--updates", &args.updates.to_string()])
                .args(["--max-tokens", &args.max_tokens.to_string()])
                .args(["--threads", &args.threads.to_string(), "--python", &args.setup.python])
                .env("PYTHONPATH", &pythonpath),
            &format!("train_vs_pytorch --arch {arch}"),
        )?;
    }
    Ok(())
}
