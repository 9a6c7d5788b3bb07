//! `cargo xtask bench-ddp`: builds `seqforge-train` and `benches/src/bin/ddp_overlap.rs` in
//! release mode and runs the data-parallel timing (1 process vs 2 Gloo ranks, all-reduce after
//! backward vs overlapped with it).

use std::path::Path;
use std::process::Command;

use anyhow::Result;

use crate::pipeline;

/// Options of `cargo xtask bench-ddp`: passed to the bench as they are (`--updates`,
/// `--dim`, `--layers`, `--max-tokens`, `--bucket-cap-mb`; see `ddp_overlap --help`).
#[derive(clap::Args, Debug)]
pub struct BenchDdpArgs {
    /// Flags for `ddp_overlap`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

/// Builds both binaries and runs the bench.
pub fn run(root: &Path, args: &BenchDdpArgs) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    pipeline::run(
        Command::new(&cargo).current_dir(root).args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "seqforge-trainer",
            "-p",
            "seqforge-benches",
            "--bin",
            "seqforge-train",
            "--bin",
            "ddp_overlap",
        ]),
        "cargo build seqforge-train ddp_overlap",
    )?;
    pipeline::run(
        Command::new(root.join("target/release/ddp_overlap")).args(&args.args),
        "ddp_overlap",
    )
}
