//! `cargo xtask bench-peers`: seqforge next to CTranslate2 (installed from PyPI) on the same
//! weights, token ids, beam, lengths and threads, for the demo model and a base-size model (see
//! `benches/src/bin/vs_ctranslate2.rs`, which prints each model's table).
//!
//! The demo model is the demo's trained checkpoint (the demo is run first when it is missing);
//! the base model is fairseq's `transformer` (6+6 layers × 512) trained for one update on the
//! Bible data (its outputs are forced to a fixed length, so that the work does not depend on
//! its weights).

use std::path::Path;
use std::process::Command;

use anyhow::Result;

use crate::pipeline::{self, step};
use crate::setup::{self, SetupArgs};

/// Options of `cargo xtask bench-peers`.
#[derive(clap::Args, Debug)]
pub struct BenchPeersArgs {
    #[command(flatten)]
    setup: SetupArgs,
    /// Rounds per configuration (every engine once per round, in turn); medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Models to measure: `demo`, `base` or both.
    #[arg(long, value_delimiter = ',', default_value = "demo,base")]
    models: Vec<String>,
    /// Thread counts to compare.
    #[arg(long, default_value = "1,2")]
    threads: String,
    /// Work folder of the demo (its checkpoint and data are reused).
    #[arg(long, default_value = "demo")]
    work: String,
}

/// The CTranslate2 release the bench installs.
const CTRANSLATE2: &str = "ctranslate2==4.8.5";

/// Builds what is needed and runs `vs_ctranslate2` for each model.
pub fn run(root: &Path, args: &BenchPeersArgs) -> Result<()> {
    setup::run(root, &args.setup)?;
    let work = root.join(&args.work);
    let demo_ckpt = work.join("checkpoints/checkpoint_best");
    if !demo_ckpt.join("model.safetensors").is_file() {
        println!("bench-peers: no demo checkpoint at {}: running the demo", demo_ckpt.display());
        crate::demo::run_default(root, &args.setup, &args.work)?;
    }
    let bins = pipeline::build_bins(root)?;
    let (_, data) = pipeline::prepare_bible(root, &work, &bins)?;
    let base_dir = work.join("bench-base");
    let base_ckpt = base_dir.join("checkpoint_best");
    if args.models.iter().any(|m| m == "base") {
        step(&work, "bench-base", || {
            pipeline::clean(&base_dir)?;
            pipeline::run(
                Command::new(&bins.train)
                    .arg("train")
                    .arg(&data)
                    .args(["--arch", "transformer", "--share-all-embeddings"])
                    .args(["--max-update", "1", "--max-tokens", "1024"])
                    .args(["--optimizer", "adam", "--lr", "0.0001", "--seed", "1"])
                    .args(["--no-epoch-checkpoints", "--threads", "2", "--cpu", "--save-dir"])
                    .arg(&base_dir),
                "seqforge-train train (base model, 1 update)",
            )
        })?;
    }
    let pythonpath =
        pipeline::pip_install_once(root, &args.setup.python, "bench-ct2", &[CTRANSLATE2, "numpy"])?;
    let bench = pipeline::build_bench(root, "vs_ctranslate2")?;
    for model in &args.models {
        let (ckpt, sizes): (&Path, &[&str]) = match model.as_str() {
            "demo" => (&demo_ckpt, &["--sentences", "1000", "--batch1-sentences", "300"]),
            "base" => (
                &base_ckpt,
                &["--sentences", "200", "--batch1-sentences", "40", "--force-len", "30"],
            ),
            other => anyhow::bail!("unknown model `{other}` (expected demo or base)"),
        };
        pipeline::run(
            Command::new(&bench)
                .arg("--checkpoint")
                .arg(ckpt)
                .arg("--data")
                .arg(&data)
                .args(["--name", model, "--rounds", &args.rounds.to_string()])
                .args(["--threads", &args.threads])
                .args(sizes)
                .args(["--python", &args.setup.python])
                .arg("--peer")
                .arg(root.join("benches/python/ct2_peer.py"))
                .arg("--work")
                .arg(work.join(format!("bench-peers-{model}")))
                .env("PYTHONPATH", &pythonpath),
            &format!("vs_ctranslate2 ({model})"),
        )?;
    }
    Ok(())
}
