//! `cargo xtask demo`: the whole chain on real data, from a fresh clone. `--task lm` runs the
//! language-model demo instead ([`crate::demo_lm`]).
//!
//! setup → Bible corpus (Reina-Valera 1909 → KJV) → joint BPE + binarization → train a small
//! model of the chosen family (`--arch transformer` by default, `lstm` or `fconv`) on CPU for a bounded
//! time → export FP32 and FP16 ONNX models → translate the
//! test set with beam 5 through `seqforge generate` → BLEU and chrF, throughput and sample
//! translations. Every step leaves a stamp in the work folder, so an interrupted demo resumes
//! where it stopped (training itself resumes from `checkpoint_last`).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::demo_lm::LmVariant;
use crate::pipeline::{self, clean, run, step};
use crate::setup::{self, SetupArgs};

/// Options of `cargo xtask demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    #[command(flatten)]
    pub(crate) setup: SetupArgs,
    /// `translation` (Spanish → English Bible) or `lm` (an English language model).
    #[arg(long, default_value = "translation")]
    task: DemoTask,
    /// With `--task lm`: `adaptive` (adaptive input and softmax) or `plain` (full softmax).
    #[arg(long, default_value = "adaptive")]
    lm_variant: LmVariant,
    /// Training time budget in minutes (cumulative over resumes).
    #[arg(long, default_value_t = 15.0)]
    pub(crate) minutes: f64,
    /// The model family: `transformer` (3+3 layers × 128), `lstm` (fairseq's
    /// `lstm_wiseman_iwslt_de_en` with a bidirectional encoder) or `fconv` (fairseq's
    /// `fconv_iwslt_de_en` ConvS2S with its NAG recipe).
    #[arg(long, default_value = "transformer")]
    arch: DemoArch,
    /// Work folder (git-ignored; delete it to start over). Default: `demo` for the Transformer,
    /// `demo-{arch}` for another family, `demo-lm-{variant}` for a language model, so their
    /// results sit side by side.
    #[arg(long)]
    pub(crate) work: Option<String>,
    /// Threads for training and translation.
    #[arg(long, default_value_t = 2)]
    pub(crate) threads: usize,
}

/// What the demo trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoTask {
    /// A Spanish → English translation model (`--arch`).
    Translation,
    /// An English language model (`--lm-variant`), see [`crate::demo_lm`].
    Lm,
}

/// The model families the demo trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoArch {
    /// [`TRANSFORMER_FLAGS`].
    Transformer,
    /// [`LSTM_FLAGS`].
    Lstm,
    /// [`FCONV_FLAGS`] with [`FCONV_OPTIM_FLAGS`].
    Fconv,
}

impl DemoArch {
    fn name(self) -> &'static str {
        match self {
            DemoArch::Transformer => "transformer",
            DemoArch::Lstm => "lstm",
            DemoArch::Fconv => "fconv",
        }
    }

    /// The model's flags, its optimisation flags and its learning rate.
    fn flags(self) -> (&'static [&'static str], &'static [&'static str], &'static str) {
        match self {
            DemoArch::Transformer => (TRANSFORMER_FLAGS, OPTIM_FLAGS, "0.0015"),
            DemoArch::Lstm => (LSTM_FLAGS, OPTIM_FLAGS, "0.001"),
            DemoArch::Fconv => (FCONV_FLAGS, FCONV_OPTIM_FLAGS, "0.25"),
        }
    }
}

/// fairseq's IWSLT LSTM (Wiseman & Rush's setting: 256-wide embeddings and states) with a
/// bidirectional encoder, attention and input feeding, one embedding matrix for source, target
/// and output (joined BPE dictionary).
const LSTM_FLAGS: &[&str] =
    &["--arch", "lstm_wiseman_iwslt_de_en", "--encoder-bidirectional", "--share-all-embeddings"];

/// fairseq's IWSLT ConvS2S (`fconv_iwslt_de_en`: 256-wide embeddings, 4 encoder and 3 decoder
/// convolutions of width 3, attention in every decoder layer) with the recipe's dropout.
const FCONV_FLAGS: &[&str] = &["--arch", "fconv_iwslt_de_en", "--dropout", "0.2"];

/// fairseq's ConvS2S recipe (`examples/translation`: NAG at lr 0.25, gradient norm clipped to
/// 0.1, a fixed rate) and the label smoothing of [`OPTIM_FLAGS`].
const FCONV_OPTIM_FLAGS: &[&str] = &[
    "--optimizer",
    "nag",
    "--lr-scheduler",
    "fixed",
    "--criterion",
    "label_smoothed_cross_entropy",
    "--label-smoothing",
    "0.1",
    "--clip-norm",
    "0.1",
];

/// The demo's Transformer: a small post-norm Transformer sharing one embedding matrix (joined
/// BPE dictionary), sized so that a CPU run of a quarter of an hour gets somewhere.
const TRANSFORMER_FLAGS: &[&str] = &[
    "--arch",
    "transformer",
    "--encoder-layers",
    "3",
    "--decoder-layers",
    "3",
    "--encoder-embed-dim",
    "128",
    "--decoder-embed-dim",
    "128",
    "--encoder-ffn-embed-dim",
    "512",
    "--decoder-ffn-embed-dim",
    "512",
    "--encoder-attention-heads",
    "4",
    "--decoder-attention-heads",
    "4",
    "--share-all-embeddings",
    "--dropout",
    "0.1",
];

/// The optimisation flags (fairseq's usual recipe, scaled to a short run).
const OPTIM_FLAGS: &[&str] = &[
    "--optimizer",
    "adam",
    "--adam-betas",
    "0.9,0.98",
    "--lr-scheduler",
    "inverse_sqrt",
    "--warmup-updates",
    "500",
    "--warmup-init-lr",
    "1e-07",
    "--criterion",
    "label_smoothed_cross_entropy",
    "--label-smoothing",
    "0.1",
    "--clip-norm",
    "1.0",
];

/// Batching, checkpointing and logging, the same for every family.
const RUN_FLAGS: &[&str] = &[
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

/// Runs the demo with its default options (the Transformer, 15 minutes, 2 threads) in `work`.
pub fn run_default(root: &Path, setup: &SetupArgs, work: &str) -> Result<()> {
    let args = DemoArgs {
        setup: setup.clone(),
        task: DemoTask::Translation,
        lm_variant: LmVariant::Adaptive,
        minutes: 15.0,
        arch: DemoArch::Transformer,
        work: Some(work.to_string()),
        threads: 2,
    };
    run_demo(root, &args)
}

/// Runs the demo.
pub fn run_demo(root: &Path, args: &DemoArgs) -> Result<()> {
    let start = Instant::now();
    if args.minutes.is_nan() || args.minutes <= 0.0 {
        bail!("--minutes must be positive (got {})", args.minutes);
    }
    if args.task == DemoTask::Lm {
        return crate::demo_lm::run_demo(root, args, args.lm_variant);
    }
    setup::run(root, &args.setup)?;
    let bins = pipeline::build_bins(root)?;
    let work = root.join(match &args.work {
        Some(w) => w.clone(),
        None if args.arch == DemoArch::Transformer => "demo".to_string(),
        None => format!("demo-{}", args.arch.name()),
    });
    let (model_flags, optim_flags, lr) = args.arch.flags();
    let (text, data) = pipeline::prepare_bible(root, &work, &bins)?;
    let threads = args.threads.to_string();

    let ckpt = work.join("checkpoints");
    extend_training(&work, args.minutes)?;
    step(&work, "train", || {
        println!(
            "train: {} for {:.1} minutes of CPU training ({} threads); resumes from {} if \
             interrupted",
            args.arch.name(),
            args.minutes,
            args.threads,
            ckpt.join("checkpoint_last").display()
        );
        run(
            Command::new(&bins.train)
                .arg("train")
                .arg(&data)
                .args(model_flags)
                .args(optim_flags)
                .args(RUN_FLAGS)
                .args(["--lr", lr])
                .args(["--stop-time-hours", &format!("{}", args.minutes / 60.0)])
                .args(["--threads", &threads, "--cpu", "--save-dir"])
                .arg(&ckpt),
            "seqforge-train train",
        )
    })?;

    for dtype in ["fp32", "fp16"] {
        let out = work.join(format!("model-{dtype}"));
        step(&work, &format!("export-{dtype}"), || {
            clean(&out)?;
            run(
                Command::new(&bins.export)
                    .arg(ckpt.join("checkpoint_best"))
                    .arg("--data")
                    .arg(&data)
                    .arg("--out")
                    .arg(&out)
                    .args(["--dtype", dtype]),
                &format!("seqforge-export --dtype {dtype}"),
            )
        })?;
    }

    let mut results = Vec::new();
    for dtype in ["fp32", "fp16"] {
        let model = work.join(format!("model-{dtype}"));
        let hyp = work.join(format!("test.hyp.{dtype}.en"));
        let log = work.join(format!("generate.{dtype}.log"));
        step(&work, &format!("generate-{dtype}"), || {
            println!("generate: {dtype} model, beam 5, --max-tokens 4096, {threads} threads…");
            let out = Command::new(&bins.seqforge)
                .arg("generate")
                .arg(&model)
                .arg("--input")
                .arg(text.join("test.es"))
                .args(["--beam", "5", "--max-tokens", "4096", "--threads", &threads])
                .args(["--output-format", "plain"])
                .output()
                .context("starting seqforge generate")?;
            std::fs::write(&log, &out.stderr)
                .with_context(|| format!("writing {}", log.display()))?;
            if !out.status.success() {
                bail!("seqforge generate failed:\n{}", String::from_utf8_lossy(&out.stderr));
            }
            std::fs::write(&hyp, &out.stdout).with_context(|| format!("writing {}", hyp.display()))
        })?;
        let scores = Command::new(&bins.seqforge)
            .args(["score", "--metrics", "bleu,chrf", "--ref"])
            .arg(text.join("test.en"))
            .arg("--input")
            .arg(&hyp)
            .output()
            .context("starting seqforge score")?;
        if !scores.status.success() {
            bail!("seqforge score failed:\n{}", String::from_utf8_lossy(&scores.stderr));
        }
        let summary = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("sentences/s") || l.contains("tokens/s"))
            .collect::<Vec<_>>()
            .join("\n");
        results.push((dtype, String::from_utf8_lossy(&scores.stdout).into_owned(), summary));
    }

    println!();
    println!(
        "============ seqforge demo: Spanish → English (Bible), {} ============",
        args.arch.name()
    );
    let train_log = ckpt.join("train_log.jsonl");
    if let Some(last) = last_valid(&train_log) {
        println!("training: {last}");
    }
    for (dtype, scores, summary) in &results {
        println!("--- {dtype} model (beam 5) ---");
        print!("{scores}");
        if !summary.is_empty() {
            println!("{summary}");
        }
    }
    samples(&text.join("test.es"), &text.join("test.en"), &work.join("test.hyp.fp32.en"))?;
    println!(
        "demo: finished in {:.1} min this run (train {:.1} min); work folder {}",
        start.elapsed().as_secs_f64() / 60.0,
        pipeline::step_seconds(&work, "train").unwrap_or(0.0) / 60.0,
        work.display()
    );
    Ok(())
}

/// A larger `--minutes` than the finished training had: drop the stamps of training and of
/// everything after it, so training resumes from `checkpoint_last` (its time budget counts the
/// earlier runs) and the models are exported and evaluated again.
pub(crate) fn extend_training(work: &Path, minutes: f64) -> Result<()> {
    let stamps = work.join("stamps");
    let budget = stamps.join("train.minutes");
    let done: Option<f64> =
        std::fs::read_to_string(&budget).ok().and_then(|s| s.trim().parse().ok());
    if let Some(done) = done.filter(|&d| minutes > d) {
        println!("train: extending the earlier {done} minutes of training to {minutes}");
        for name in [
            "train",
            "export-fp32",
            "export-fp16",
            "generate-fp32",
            "generate-fp16",
            "eval-lm-valid",
            "eval-lm-test",
            "eval-lm-onnx",
            "generate",
        ] {
            let stamp = stamps.join(format!("{name}.done"));
            if stamp.exists() {
                std::fs::remove_file(&stamp)
                    .with_context(|| format!("removing {}", stamp.display()))?;
            }
        }
    }
    std::fs::create_dir_all(&stamps).with_context(|| format!("creating {}", stamps.display()))?;
    let keep = done.map_or(minutes, |d| d.max(minutes));
    std::fs::write(&budget, format!("{keep}\n"))
        .with_context(|| format!("writing {}", budget.display()))
}

/// The last validation line of the training log, compact.
pub(crate) fn last_valid(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().rev().find(|l| l.contains("\"tag\":\"valid\""))?;
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let g = |k: &str| v.get(k).map(|x| x.to_string()).unwrap_or_else(|| "?".into());
    Some(format!(
        "epoch {} | updates {} | valid loss {} | valid nll {} | valid ppl {}",
        g("epoch"),
        g("valid_num_updates"),
        g("valid_loss"),
        g("valid_nll_loss"),
        g("valid_ppl")
    ))
}

/// Prints five sample translations spread over the test set.
fn samples(src: &Path, reference: &Path, hyp: &Path) -> Result<()> {
    let read = |p: &Path| -> Result<Vec<String>> {
        Ok(std::fs::read_to_string(p)
            .with_context(|| format!("reading {}", p.display()))?
            .lines()
            .map(String::from)
            .collect())
    };
    let (s, r, h) = (read(src)?, read(reference)?, read(hyp)?);
    let n = s.len().min(r.len()).min(h.len());
    println!("--- five test sentences (source / reference / seqforge fp32) ---");
    for k in 0..5.min(n) {
        let i = k * n / 5;
        println!("[{i}] ES  {}", s[i]);
        println!("[{i}] REF {}", r[i]);
        println!("[{i}] HYP {}", h[i]);
    }
    Ok(())
}
