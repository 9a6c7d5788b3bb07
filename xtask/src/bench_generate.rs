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
    /// Flags for `generate_vs_libtorch`, passed as they are (`--sentences 200`, `--threads 2`,
    /// `--beam 5`, `--force-len N`, `--no-batch1`, `--batch1-sentences N`, ...; see its
    /// `--help`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
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
    let mut cmd = Command::new(pipeline::build_bench(root, "generate_vs_libtorch")?);
    cmd.arg("--checkpoint").arg(&checkpoint).arg("--data").arg(&data).args(&args.args);
    pipeline::run(&mut cmd, "generate_vs_libtorch")
}
