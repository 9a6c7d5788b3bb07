//! Training throughput of seqforge's trainer next to an equivalent PyTorch eager loop.
//!
//! `train_vs_pytorch --data DATA_BIN --arch transformer_tiny --python PYTHON` runs two child
//! processes over the *same* batches (the trainer's own batching of DATA_BIN's train split,
//! epoch 1 in the trainer's shuffled order):
//!
//! 1. `train_vs_pytorch rust …`: builds seqforge's [`Trainer`] (the `train` command's
//!    components: Adam, inverse_sqrt, label-smoothed cross-entropy 0.1), writes the batches and
//!    the resolved model config for the Python side, then times `--warmup` + `--updates`
//!    updates through [`Trainer::train_step`];
//! 2. `PYTHON benches/python/train_eager.py`: the same architecture written in plain PyTorch
//!    (fairseq's maths), the same optimizer, schedule, criterion and thread count, timed over the
//!    same batches.
//!
//! Each side reports target words/s over the timed updates (warm-up excluded) and its peak
//! resident memory; the parent prints both and the ratio. Nothing is asserted: it is a
//! measurement, run by `cargo xtask bench-train`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};

use seqforge_trainer::batching::{BatchConfig, EpochBatchIterator, IteratorConfig, Tokens2d};
use seqforge_trainer::registry::Registry;
use seqforge_trainer::train::{TrainConfig, Trainer, infer_language_pair, load_split};

#[derive(Parser, Debug)]
#[command(about = "Training words/s of seqforge vs an equivalent PyTorch eager loop, same batches")]
struct Cli {
    #[command(subcommand)]
    side: Option<Side>,
    #[command(flatten)]
    opts: Opts,
}

#[derive(clap::Args, Debug, Clone)]
struct Opts {
    /// Binarized data folder (from `seqforge-train preprocess`).
    #[arg(long, default_value = "data/bible-bin", global = true)]
    data: PathBuf,
    /// Architecture preset.
    #[arg(long, default_value = "transformer_tiny", global = true)]
    arch: String,
    /// Token budget per batch.
    #[arg(long, default_value_t = 4096, global = true)]
    max_tokens: usize,
    /// Timed updates.
    #[arg(long, default_value_t = 30, global = true)]
    updates: usize,
    /// Untimed warm-up updates before them.
    #[arg(long, default_value_t = 3, global = true)]
    warmup: usize,
    /// Intra-op threads on both sides.
    #[arg(long, default_value_t = 2, global = true)]
    threads: usize,
    /// Python interpreter with torch 2.11 importable (PYTHONPATH is passed through).
    #[arg(long, default_value = "python3", global = true)]
    python: String,
    /// Work folder for the batch dump (default: a temporary folder).
    #[arg(long, global = true)]
    work: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Side {
    /// The seqforge side (a child process of the parent).
    Rust {
        /// Where to write the batches and the model config.
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    seqforge_cli_support::finish(run())
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    match &cli.side {
        Some(Side::Rust { out }) => rust_side(&cli.opts, out),
        None => parent(&cli.opts),
    }
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`).
fn peak_rss_mib() -> Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).context("no VmHWM")?;
    let kib: f64 = line.split_whitespace().nth(1).context("VmHWM value")?.parse()?;
    Ok(kib / 1024.0)
}

fn write_tokens(out: &mut impl Write, t: &Tokens2d) -> Result<()> {
    for &v in &t.data {
        out.write_all(&v.to_le_bytes())?;
    }
    Ok(())
}

fn rust_side(o: &Opts, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out)?;
    let save_dir = out.join("save");
    let args: Vec<String> = [
        &o.data.display().to_string(),
        "--arch",
        &o.arch,
        "--optimizer",
        "adam",
        "--adam-betas",
        "0.9,0.98",
        "--lr",
        "0.0005",
        "--lr-scheduler",
        "inverse_sqrt",
        "--warmup-updates",
        "4000",
        "--criterion",
        "label_smoothed_cross_entropy",
        "--label-smoothing",
        "0.1",
        "--max-tokens",
        &o.max_tokens.to_string(),
        "--threads",
        &o.threads.to_string(),
        "--cpu",
        "--no-save",
        "--disable-validation",
        "--no-progress-bar",
        "--save-dir",
        &save_dir.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let registry = Registry::with_builtins()?;
    let config = TrainConfig::from_args(&args, &registry)?;
    let mut trainer = Trainer::new(&config, &registry)?;

    // The same batches the trainer's loop draws in epoch 1.
    let pair = infer_language_pair(&o.data, None, None)?;
    let data = load_split(&o.data, "train", &pair)?;
    let (max_src, max_tgt) = trainer.model().max_positions();
    let plan = data.plan_batches(&BatchConfig {
        max_tokens: Some(o.max_tokens),
        max_sentences: None,
        required_batch_size_multiple: 8,
        max_source_positions: Some(max_src),
        max_target_positions: Some(max_tgt),
        skip_invalid_size_inputs: true,
        shuffle: true,
        seed: config.args.seed,
    })?;
    let mut itr = EpochBatchIterator::new(
        plan.batches,
        IteratorConfig { seed: config.args.seed, shuffle: true, ..IteratorConfig::default() },
    )?;
    itr.next_epoch_itr();
    let total = o.warmup + o.updates;
    let mut batches = Vec::with_capacity(total);
    while batches.len() < total {
        let Some(indices) = itr.next_batch() else {
            bail!("the train split has fewer than {total} batches at --max-tokens {}", o.max_tokens)
        };
        let indices = indices.to_vec();
        batches.push(data.batch(&indices)?);
    }

    // Batches and model config for the Python side.
    let mut bin = std::io::BufWriter::new(std::fs::File::create(out.join("batches.bin"))?);
    let mut index = Vec::new();
    for b in &batches {
        let prev = b.prev_output_tokens.as_ref().context("batch without targets")?;
        let target = b.target.as_ref().context("batch without targets")?;
        write_tokens(&mut bin, &b.src_tokens)?;
        write_tokens(&mut bin, prev)?;
        write_tokens(&mut bin, target)?;
        index.push(json!({
            "rows": b.src_tokens.rows, "src_len": b.src_tokens.cols,
            "tgt_len": target.cols, "ntokens": b.ntokens,
        }));
    }
    bin.flush()?;
    let mut model = config.model_config.clone();
    let dict_len = |lang: &str| -> Result<usize> {
        let path = o.data.join(format!("dict.{lang}.txt"));
        Ok(seqforge_trainer::data::Dictionary::load(&path)?.len())
    };
    model["src_vocab_size"] = json!(dict_len(&pair.src)?);
    model["tgt_vocab_size"] = json!(dict_len(&pair.tgt)?);
    let pad = model.get("pad_index").and_then(Value::as_u64).unwrap_or(1);
    std::fs::write(
        out.join("batches.json"),
        serde_json::to_string(&json!({
            "model": model, "pad": pad, "eos": 2, "batches": index,
            "lr": 0.0005, "warmup_updates": 4000, "warmup_init_lr": 1e-7,
            "betas": [0.9, 0.98], "eps": 1e-8, "label_smoothing": 0.1,
            "warmup": o.warmup, "threads": o.threads,
        }))?,
    )?;

    let mut words = 0usize;
    let mut secs = 0.0;
    let mut first_loss = None;
    let mut last_loss = 0.0;
    for (i, b) in batches.iter().enumerate() {
        let t0 = Instant::now();
        let out = trainer.train_step(std::slice::from_ref(b))?;
        let dt = t0.elapsed().as_secs_f64();
        let loss = out.logging.loss / out.logging.sample_size as f64 / std::f64::consts::LN_2;
        first_loss.get_or_insert(loss);
        last_loss = loss;
        if i >= o.warmup {
            words += b.ntokens;
            secs += dt;
        }
    }
    println!(
        "{}",
        json!({
            "side": "seqforge", "words": words, "seconds": secs, "wps": words as f64 / secs,
            "peak_rss_mib": peak_rss_mib()?, "first_loss": first_loss, "last_loss": last_loss,
            "params": trainer.parameters().iter().map(|(_, t)| t.numel()).sum::<usize>(),
        })
    );
    Ok(())
}

fn last_json_line(stdout: &[u8], who: &str) -> Result<Value> {
    let text = String::from_utf8_lossy(stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .with_context(|| format!("{who} printed no result line; its output was:\n{text}"))?;
    Ok(serde_json::from_str(line)?)
}

fn parent(o: &Opts) -> Result<()> {
    let tmp;
    let work = match &o.work {
        Some(w) => w.clone(),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let exe = std::env::current_exe()?;
    eprintln!("seqforge side: {} on {} ({} threads)…", o.arch, o.data.display(), o.threads);
    let rust = Command::new(&exe)
        .args(["--data", &o.data.display().to_string(), "--arch", &o.arch])
        .args(["--max-tokens", &o.max_tokens.to_string(), "--updates", &o.updates.to_string()])
        .args(["--warmup", &o.warmup.to_string(), "--threads", &o.threads.to_string()])
        .args(["rust", "--out", &work.display().to_string()])
        .env("RUST_LOG", "warn")
        .output()?;
    if !rust.status.success() {
        bail!("the seqforge side failed:\n{}", String::from_utf8_lossy(&rust.stderr));
    }
    let r = last_json_line(&rust.stdout, "the seqforge side")?;

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/train_eager.py");
    eprintln!("PyTorch eager side: {} {}…", o.python, script.display());
    let py = Command::new(&o.python)
        .arg(&script)
        .arg(&work)
        .env("OMP_NUM_THREADS", o.threads.to_string())
        .output()
        .with_context(|| format!("running {}", o.python))?;
    if !py.status.success() {
        bail!("the PyTorch side failed:\n{}", String::from_utf8_lossy(&py.stderr));
    }
    let p = last_json_line(&py.stdout, "the PyTorch side")?;

    let f = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let ratio = f(&r, "wps") / f(&p, "wps");
    println!(
        "{:<26} {:>10} {:>9} {:>12} {:>11} {:>11}",
        "train_vs_pytorch", "words/s", "words", "peak MiB", "loss first", "loss last"
    );
    for (name, v) in [("seqforge (libtorch/tch)", &r), ("PyTorch 2.11 eager", &p)] {
        println!(
            "{:<26} {:>10.0} {:>9} {:>12.0} {:>11.3} {:>11.3}",
            name,
            f(v, "wps"),
            f(v, "words"),
            f(v, "peak_rss_mib"),
            f(v, "first_loss"),
            f(v, "last_loss")
        );
    }
    println!(
        "ratio seqforge/pytorch words/s: {ratio:.3}  ({}, {} params, --max-tokens {}, {} timed \
         updates after {} warm-up, {} threads)",
        o.arch,
        f(&r, "params"),
        o.max_tokens,
        o.updates,
        o.warmup,
        o.threads
    );
    println!("{}", json!({"arch": o.arch, "ratio": ratio, "seqforge": r, "pytorch": p}));
    Ok(())
}
