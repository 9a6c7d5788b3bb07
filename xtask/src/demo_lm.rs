//! `cargo xtask demo --task lm`: a language model end to end on real English text.
//!
//! setup → English corpus (two Bibles and three commentaries from Debian's SWORD packages,
//! split by book) → a 16k byte-level BPE + monolingual binarization (`preprocess
//! --only-source`) → train fairseq's `transformer_lm_gpt` at 4 × 256 (`--lm-variant adaptive`: adaptive input
//! and adaptive softmax with tied weights and `adaptive_loss`; `plain`: one shared embedding
//! and a full softmax) on CPU for a bounded time → perplexity of the valid and test splits with
//! `seqforge-train eval-lm` (libtorch) → export FP32 ONNX → test perplexity again with
//! `seqforge eval-lm` (ONNX Runtime) → three sampled continuations of fixed prompts. Every step
//! leaves a stamp, so an interrupted demo resumes where it stopped.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::demo::{DemoArgs, extend_training, last_valid};
use crate::pipeline::{self, clean, run, step};
use crate::setup;

/// Which `transformer_lm` the demo trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LmVariant {
    /// Adaptive input and adaptive softmax (Baevski & Auli, 2019), tied, with `adaptive_loss`.
    Adaptive,
    /// One shared input/output embedding and a full softmax, with `cross_entropy`.
    Plain,
}

impl LmVariant {
    fn name(self) -> &'static str {
        match self {
            LmVariant::Adaptive => "adaptive",
            LmVariant::Plain => "plain",
        }
    }

    fn flags(self) -> &'static [&'static str] {
        match self {
            LmVariant::Adaptive => ADAPTIVE_FLAGS,
            LmVariant::Plain => PLAIN_FLAGS,
        }
    }
}

/// The demo's decoder: fairseq's `transformer_lm_gpt` (pre-norm, GELU, attention dropout 0.1)
/// at 4 layers × 256, blocks of 256 tokens across sentence boundaries.
const LM_FLAGS: &[&str] = &[
    "--task",
    "language_modeling",
    "--tokens-per-sample",
    "256",
    "--sample-break-mode",
    "none",
    "--arch",
    "transformer_lm_gpt",
    "--decoder-layers",
    "4",
    "--decoder-embed-dim",
    "256",
    "--decoder-ffn-embed-dim",
    "1024",
    "--decoder-attention-heads",
    "4",
    "--dropout",
    "0.1",
];

/// Adaptive input and softmax over frequency bands 0–2k, 2k–8k, 8k–16k (each band's embedding
/// 4× narrower than the last), weights and projections tied between them.
const ADAPTIVE_FLAGS: &[&str] = &[
    "--adaptive-input",
    "--adaptive-input-factor",
    "4",
    "--adaptive-input-cutoff",
    "2000,8000",
    "--adaptive-softmax-cutoff",
    "2000,8000",
    "--adaptive-softmax-factor",
    "4",
    "--tie-adaptive-weights",
    "--tie-adaptive-proj",
    "--criterion",
    "adaptive_loss",
];

/// One embedding matrix for input and output, full softmax.
const PLAIN_FLAGS: &[&str] =
    &["--share-decoder-input-output-embed", "--criterion", "cross_entropy"];

/// Adam with an inverse-square-root schedule, clipped gradients; batching and checkpoints.
const LM_RUN_FLAGS: &[&str] = &[
    "--optimizer",
    "adam",
    "--adam-betas",
    "0.9,0.98",
    "--lr",
    "0.001",
    "--lr-scheduler",
    "inverse_sqrt",
    "--warmup-updates",
    "400",
    "--warmup-init-lr",
    "1e-07",
    "--clip-norm",
    "1.0",
    "--max-tokens",
    "4096",
    "--max-update",
    "1000000",
    "--save-interval-updates",
    "500",
    "--keep-interval-updates",
    "1",
    "--no-epoch-checkpoints",
    "--log-interval",
    "100",
    "--seed",
    "1",
];

/// The prompts the demo continues (not from the corpus).
const PROMPTS: [&str; 3] = [
    "In the beginning of the year the people",
    "And the king said unto his servants,",
    "The lesson of this chapter is that",
];

/// The English corpus, a 16k byte-level BPE and the binarized monolingual data.
const ENGLISH: pipeline::CorpusRecipe<'static> = pipeline::CorpusRecipe {
    corpus: "english",
    bpe_inputs: &["train.txt"],
    vocab_size: 16000,
    preprocess: &["--only-source"],
    splits: ["train.txt", "valid.txt", "test.txt"],
};

/// Runs a command, keeps its stdout in `out` (and stderr next to it), fails on a non-zero exit.
fn capture(cmd: &mut Command, out: &Path, what: &str) -> Result<String> {
    let o = cmd.output().with_context(|| format!("starting {what}"))?;
    let err_path = out.with_extension("log");
    std::fs::write(&err_path, &o.stderr)
        .with_context(|| format!("writing {}", err_path.display()))?;
    if !o.status.success() {
        bail!("{what} failed:\n{}", String::from_utf8_lossy(&o.stderr));
    }
    std::fs::write(out, &o.stdout).with_context(|| format!("writing {}", out.display()))?;
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// The `Loss (base 2): …, Perplexity: …` line of an eval-lm output.
fn perplexity_line(text: &str) -> String {
    text.lines().rev().find(|l| l.contains("Perplexity")).unwrap_or("?").to_string()
}

/// Runs the language-model demo.
pub fn run_demo(root: &Path, args: &DemoArgs, variant: LmVariant) -> Result<()> {
    let start = Instant::now();
    setup::run(root, &args.setup)?;
    let bins = pipeline::build_bins(root)?;
    let work = root.join(match &args.work {
        Some(w) => w.clone(),
        None => format!("demo-lm-{}", variant.name()),
    });
    let (text, data) = pipeline::prepare_corpus(root, &work, &bins, &ENGLISH)?;
    let threads = args.threads.to_string();
    let ckpt = work.join("checkpoints");
    extend_training(&work, args.minutes)?;
    step(&work, "train", || {
        println!(
            "train: transformer_lm ({}) for {:.1} minutes of CPU training ({} threads); resumes \
             from {} if interrupted",
            variant.name(),
            args.minutes,
            args.threads,
            ckpt.join("checkpoint_last").display()
        );
        run(
            Command::new(&bins.train)
                .arg("train")
                .arg(&data)
                .args(LM_FLAGS)
                .args(variant.flags())
                .args(LM_RUN_FLAGS)
                .args(["--stop-time-hours", &format!("{}", args.minutes / 60.0)])
                .args(["--threads", &threads, "--cpu", "--save-dir"])
                .arg(&ckpt),
            "seqforge-train train --task language_modeling",
        )
    })?;

    let best = ckpt.join("checkpoint_best");
    let mut evals = Vec::new();
    for split in ["valid", "test"] {
        let out = work.join(format!("eval-lm.{split}.txt"));
        step(&work, &format!("eval-lm-{split}"), || {
            capture(
                Command::new(&bins.train)
                    .arg("eval-lm")
                    .arg(&data)
                    .arg("--path")
                    .arg(&best)
                    .args(["--gen-subset", split, "--context-window", "128", "--cpu"])
                    .args(["--threads", &threads]),
                &out,
                "seqforge-train eval-lm",
            )
            .map(|_| ())
        })?;
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        evals.push((split, perplexity_line(&text)));
    }

    let model = work.join("model-fp32");
    step(&work, "export-fp32", || {
        clean(&model)?;
        run(
            Command::new(&bins.export)
                .arg(&best)
                .arg("--data")
                .arg(&data)
                .arg("--out")
                .arg(&model)
                .args(["--dtype", "fp32"]),
            "seqforge-export --dtype fp32",
        )
    })?;
    let onnx_eval = work.join("eval-lm.test.onnx.txt");
    step(&work, "eval-lm-onnx", || {
        capture(
            Command::new(&bins.seqforge)
                .arg("eval-lm")
                .arg(&model)
                .arg("--input")
                .arg(text.join("test.txt"))
                .args(["--context-window", "128", "--threads", &threads]),
            &onnx_eval,
            "seqforge eval-lm",
        )
        .map(|_| ())
    })?;
    let prompts = work.join("prompts.txt");
    std::fs::write(&prompts, PROMPTS.join("\n") + "\n")
        .with_context(|| format!("writing {}", prompts.display()))?;
    let samples = work.join("samples.txt");
    step(&work, "generate", || {
        capture(
            Command::new(&bins.seqforge)
                .arg("generate")
                .arg(&model)
                .arg("--input")
                .arg(&prompts)
                .args(["--sampling", "--sampling-topk", "10", "--beam", "1", "--seed", "7"])
                .args(["--max-len-b", "40", "--threads", &threads])
                .args(["--output-format", "plain"]),
            &samples,
            "seqforge generate (sampling)",
        )
        .map(|_| ())
    })?;

    println!();
    println!(
        "============ seqforge demo: English language model ({}) ============",
        variant.name()
    );
    if let Some(last) = last_valid(&ckpt.join("train_log.jsonl")) {
        println!("training: {last}");
    }
    for (split, line) in &evals {
        println!("eval-lm {split} (libtorch, context window 128): {line}");
    }
    let onnx = std::fs::read_to_string(&onnx_eval).unwrap_or_default();
    println!("eval-lm test (ONNX Runtime fp32, context window 128): {}", perplexity_line(&onnx));
    println!("--- three sampled continuations (top-k 10, seed 7) ---");
    let cont = std::fs::read_to_string(&samples).unwrap_or_default();
    for (p, c) in PROMPTS.iter().zip(cont.lines()) {
        println!("{p} ‖ {c}");
    }
    println!(
        "demo: finished in {:.1} min this run (train {:.1} min); work folder {}",
        start.elapsed().as_secs_f64() / 60.0,
        pipeline::step_seconds(&work, "train").unwrap_or(0.0) / 60.0,
        work.display()
    );
    Ok(())
}
