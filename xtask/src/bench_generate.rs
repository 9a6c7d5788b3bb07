//! `cargo xtask bench-generate`: beam search through the trainer's libtorch model next to the
//! ONNX Runtime decoder (FP32 and FP16 exports) on the demo's checkpoint and Bible test set, same
//! search, same ids, same threads (see `benches/src/bin/generate_vs_libtorch.rs`).

use std::path::Path;
use std::process::Command;

use anyhow::{Result, bail};

use crate::pipeline;

/// Options of `cargo xtask bench-generate`.
#[derive(clap::Args, Debug)]
pub struct BenchGenerateArgs {
    /// Work folder of `cargo xtask demo` (its `checkpoints/checkpoint_best` and `bible-bin`).
    #[arg(long, default_value = "demo")]
    work: String,
    /// Number of test sentences (the first N).
    #[arg(long, default_value_t = 200)]
    sentences: usize,
    /// Intra-op threads on both sides.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Beam size.
    #[arg(long, default_value_t = 5)]
    beam: usize,
    /// Force every output to N tokens + EOS (the work then does not depend on the weights).
    #[arg(long)]
    force_len: Option<usize>,
    /// Skip the batch-1 runs.
    #[arg(long)]
    no_batch1: bool,
    /// Decode only the first N sentences in the batch-1 runs (the slow part).
    #[arg(long)]
    batch1_sentences: Option<usize>,
}

/// Builds the bench binary and runs it on the demo's checkpoint and data.
pub fn run(root: &Path, args: &BenchGenerateArgs) -> Result<()> {
    let work = root.join(&args.work);
    let checkpoint = work.join("checkpoints/checkpoint_best");
    let data = work.join("bible-bin");
    for needed in [&checkpoint, &data] {
        if !needed.is_dir() {
            bail!("{} does not exist: run cargo xtask demo first", needed.display());
        }
    }
    pipeline::run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(root)
            .args(["build", "--release", "--quiet", "-p", "seqforge-benches"])
            .args(["--bin", "generate_vs_libtorch"]),
        "cargo build generate_vs_libtorch",
    )?;
    let mut cmd = Command::new(root.join("target/release/generate_vs_libtorch"));
    cmd.arg("--checkpoint")
        .arg(&checkpoint)
        .arg("--data")
        .arg(&data)
        .args(["--sentences", &args.sentences.to_string()])
        .args(["--threads", &args.threads.to_string()])
        .args(["--beam", &args.beam.to_string()]);
    if let Some(len) = args.force_len {
        cmd.args(["--force-len", &len.to_string()]);
    }
    if args.no_batch1 {
        cmd.arg("--no-batch1");
    }
    if let Some(n) = args.batch1_sentences {
        cmd.args(["--batch1-sentences", &n.to_string()]);
    }
    pipeline::run(&mut cmd, "generate_vs_libtorch")
}
