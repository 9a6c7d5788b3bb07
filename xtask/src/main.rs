//! `cargo xtask`: the project's automation. `setup` bootstraps the native dependencies into
//! `.deps/` from the package registries, `test` runs every test the project has.

mod bench;
mod bench_ddp;
mod bench_generate;
mod bench_peers;
mod demo;
mod demo_lm;
mod fuzz;
mod gpu_check;
mod pipeline;
mod setup;
mod test;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

/// seqforge project automation.
#[derive(Parser)]
#[command(name = "cargo xtask", about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install libtorch 2.11.0 (CPU, assembled from PyPI wheels) and ONNX Runtime 1.31.1 into
    /// `.deps/`. Idempotent: a second run only verifies what is there.
    Setup(setup::SetupArgs),
    /// Run setup, then the whole workspace's tests (cargo-nextest when installed, else
    /// `cargo test`), then the Python-side checks.
    Test(test::TestArgs),
    /// The main job: Bible corpus → BPE → train a small Transformer on CPU for a bounded time →
    /// export FP32 and FP16 ONNX → translate the test set (beam 5) → BLEU/chrF, throughput and
    /// sample translations; `--task lm`: English corpus → BPE → train a transformer_lm → eval-lm
    /// perplexity (libtorch and ONNX Runtime) → sampled continuations. Resumes where it stopped.
    Demo(demo::DemoArgs),
    /// Training words/s of seqforge next to an equivalent PyTorch eager loop (same batches,
    /// same threads) on the Bible data, with peak memory and the ratio.
    BenchTrain(bench::BenchTrainArgs),
    /// Beam-5 generation through the trainer's libtorch model vs ONNX Runtime (FP32, FP16
    /// exports) on the demo's checkpoint and Bible test set: sentences/s, tokens/s, ratios,
    /// identical-hypotheses count, per-step cost at position 10 vs 200.
    BenchGenerate(bench_generate::BenchGenerateArgs),
    /// seqforge vs CTranslate2 (from PyPI) on the same weights, token ids, beam, lengths and
    /// threads: the demo model and a base-size (6+6 × 512) model, batch 1 and --max-tokens
    /// 4096, 1 and 2 threads, FP32 and INT8; medians over alternating rounds, ratios and the
    /// share of identical hypotheses.
    BenchPeers(bench_peers::BenchPeersArgs),
    /// Data-parallel training time per update split into compute and communication: one
    /// process with --update-freq 2 vs 2 Gloo ranks on 127.0.0.1, all-reduce after backward
    /// (legacy_ddp) vs overlapped with it (c10d).
    BenchDdp(bench_ddp::BenchDdpArgs),
    /// The GPU machine's checks: CUDA training throughput in fp32/fp16/bf16, NCCL (one rank;
    /// two ranks vs --update-freq 2 with two GPUs), fp16 vs fp32 beam search through the
    /// trainer's libtorch decoder. `--bundle DIR` builds them against a CUDA torch for a GPU
    /// machine without Rust (`bash DIR/run.sh` there).
    GpuCheck(gpu_check::GpuCheckArgs),
    /// Coverage-guided fuzzing of every loader with AFL++ (cargo-afl, stable Rust): builds the
    /// harness `fuzz/afl`, runs each target `--minutes` (`--jobs` at once), copies crashes and
    /// hangs to `fuzz/regressions/<target>/` and prints execs, corpus, crashes, hangs.
    Fuzz(fuzz::FuzzArgs),
}

/// The workspace root (the parent of this crate's folder).
fn workspace_root() -> Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).context("xtask's manifest directory has no parent folder")
}

fn main() -> ExitCode {
    seqforge_cli_support::finish(run())
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root()?;
    match cli.command {
        Command::Setup(args) => setup::run(&root, &args).map(|_| ()),
        Command::Test(args) => test::run(&root, &args),
        Command::Demo(args) => demo::run_demo(&root, &args),
        Command::BenchTrain(args) => bench::run(&root, &args),
        Command::BenchGenerate(args) => bench_generate::run(&root, &args),
        Command::BenchPeers(args) => bench_peers::run(&root, &args),
        Command::BenchDdp(args) => bench_ddp::run(&root, &args),
        Command::GpuCheck(args) => gpu_check::run(&root, &args),
        Command::Fuzz(args) => fuzz::run(&root, &args),
    }
}
