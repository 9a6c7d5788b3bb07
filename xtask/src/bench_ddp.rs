//! `cargo xtask bench-ddp`: builds `seqforge-train` and `benches/src/bin/ddp_overlap.rs` in
//! release mode and runs the data-parallel timing (1 process vs 2 Gloo ranks, all-reduce after
//! backward vs overlapped with it).

use std::path::Path;
use std::process::Command;

use anyhow::Result;

use crate::pipeline;

/// Options of `cargo xtask bench-ddp` (passed on to the bench).
#[derive(clap::Args, Debug)]
pub struct BenchDdpArgs {
    /// Updates per configuration.
    #[arg(long, default_value_t = 30)]
    updates: u64,
    /// Model width.
    #[arg(long, default_value_t = 256)]
    dim: usize,
    /// Encoder and decoder layers.
    #[arg(long, default_value_t = 3)]
    layers: usize,
    /// Gradient bucket size in MiB.
    #[arg(long, default_value_t = 4.0)]
    bucket_cap_mb: f64,
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
            "--bins",
        ]),
        "cargo build seqforge-train",
    )?;
    pipeline::run(
        Command::new(&cargo).current_dir(root).args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "seqforge-benches",
            "--bin",
            "ddp_overlap",
        ]),
        "cargo build ddp_overlap",
    )?;
    pipeline::run(
        Command::new(root.join("target/release/ddp_overlap"))
            .args(["--updates", &args.updates.to_string()])
            .args(["--dim", &args.dim.to_string()])
            .args(["--layers", &args.layers.to_string()])
            .args(["--bucket-cap-mb", &args.bucket_cap_mb.to_string()]),
        "ddp_overlap",
    )
}
