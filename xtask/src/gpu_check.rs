//! `cargo xtask gpu-check`: the GPU machine's checks in one go (see
//! `benches/src/bin/gpu_check.rs`): fp32/fp16/bf16 training throughput on CUDA, NCCL, and fp16
//! vs fp32 beam search through the trainer's libtorch decoder.
//!
//! On a GPU machine with a Rust toolchain (after `cargo xtask setup --libtorch-from-python`
//! with a CUDA torch 2.11) it builds and runs the check. `--bundle DIR` is for a GPU machine
//! without one: it builds here against the CUDA torch 2.11 named by `LIBTORCH` (its
//! `site-packages/torch` folder, e.g. from `pip install torch==2.11.0` in a venv), in
//! `target/gpu`, and writes `DIR/bin/{gpu_check,seqforge-train}` (stripped) and `DIR/run.sh`,
//! which finds the GPU machine's own torch 2.11 libraries through its `python3`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};

use crate::pipeline;
use crate::setup;

/// Options of `cargo xtask gpu-check`.
#[derive(clap::Args, Debug)]
pub struct GpuCheckArgs {
    /// Build a bundle for a GPU machine without Rust into DIR instead of running (needs
    /// `LIBTORCH` set to a CUDA torch 2.11 folder); there, run `bash DIR/run.sh`.
    #[arg(long, value_name = "DIR")]
    bundle: Option<PathBuf>,
    /// Flags for `gpu_check` (after `--`): `--device cpu`, `--updates N`, `--arch A`,
    /// `--sentences N`, `--json FILE`, …; see `gpu_check --help`.
    #[arg(last = true)]
    args: Vec<String>,
}

/// The script a bundle runs on the GPU machine.
const RUN_SH: &str = r#"#!/usr/bin/env bash
# Runs seqforge's GPU checks (training fp32/fp16/bf16, NCCL, fp16 beam search) with the torch 2.11
# CUDA libraries of this machine's python3 (PYTHON overrides it). Extra flags go to gpu_check.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-python3}
torch_lib=$("$py" -c 'import os, torch; assert torch.__version__.startswith("2.11"), torch.__version__; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$here/bin/gpu_check" --train-bin "$here/bin/seqforge-train" "$@"
"#;

/// Builds and runs the GPU checks, or writes a bundle.
pub fn run(root: &Path, args: &GpuCheckArgs) -> Result<()> {
    let Some(dir) = &args.bundle else {
        let deps = setup::run(root, &setup_args())?;
        build(root, &root.join("target"), None)?;
        let release = root.join("target/release");
        let mut cmd = Command::new(release.join("gpu_check"));
        cmd.arg("--train-bin").arg(release.join("seqforge-train")).args(&args.args);
        println!("gpu-check: libtorch {}", deps.libtorch.display());
        return pipeline::run(&mut cmd, "gpu_check");
    };
    let libtorch = std::env::var_os("LIBTORCH").map(PathBuf::from).context(
        "--bundle builds against a CUDA libtorch: set LIBTORCH to a torch 2.11 CUDA build's \
         folder (site-packages/torch of `pip install torch==2.11.0`)",
    )?;
    ensure!(
        libtorch.join("lib/libtorch_cuda.so").is_file(),
        "LIBTORCH={} is not a CUDA libtorch (no lib/libtorch_cuda.so)",
        libtorch.display()
    );
    let deps = root.join(".deps");
    setup::ensure_cuda_headers(&deps, &libtorch, &setup_args())?;
    let target = root.join("target/gpu");
    build(root, &target, Some(&libtorch))?;
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    for name in ["gpu_check", "seqforge-train"] {
        let from = target.join("release").join(name);
        let to = bin.join(name);
        let partial = bin.join(format!("{name}.partial"));
        fs::copy(&from, &partial)
            .with_context(|| format!("copying {} to {}", from.display(), partial.display()))?;
        let status = Command::new("strip").arg(&partial).status().context("running strip")?;
        ensure!(status.success(), "strip {} failed", partial.display());
        fs::rename(&partial, &to).with_context(|| format!("writing {}", to.display()))?;
        let size = fs::metadata(&to)?.len();
        println!("gpu-check: {} ({:.1} MB)", to.display(), size as f64 / 1e6);
    }
    let script = dir.join("run.sh");
    fs::write(&script, RUN_SH).with_context(|| format!("writing {}", script.display()))?;
    println!(
        "gpu-check: bundle ready; on the GPU machine: bash {}/run.sh [--updates N …]",
        dir.display()
    );
    Ok(())
}

/// Setup's defaults, as `cargo xtask setup` without flags has them.
fn setup_args() -> setup::SetupArgs {
    setup::SetupArgs { python: "python3".into(), ..setup::SetupArgs::default() }
}

/// `cargo build --release` of `gpu_check` and `seqforge-train` into `target`, against
/// `libtorch` when given (else the workspace's `.deps/libtorch`).
fn build(root: &Path, target: &Path, libtorch: Option<&Path>) -> Result<()> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root)
        .env("CARGO_TARGET_DIR", target)
        .args(["build", "--release", "--quiet"])
        .args(["-p", "seqforge-benches", "--bin", "gpu_check"])
        .args(["-p", "seqforge-trainer", "--bin", "seqforge-train"]);
    if let Some(dir) = libtorch {
        cmd.env("LIBTORCH", dir).env("SEQFORGE_DEPS", root.join(".deps"));
    }
    println!("gpu-check: building gpu_check and seqforge-train (release) in {}", target.display());
    pipeline::run(&mut cmd, "cargo build gpu_check")
}
