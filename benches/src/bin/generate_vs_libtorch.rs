//! End-to-end generation throughput: the same beam search over the same checkpoint through the
//! trainer's libtorch model and through its ONNX export in ONNX Runtime (FP32 and FP16).
//!
//! `generate_vs_libtorch --checkpoint CKPT_DIR --data DATA_BIN [--sentences 200] [--threads 2]
//! [--beam 5]`:
//!
//! 1. exports CKPT_DIR with the exporter library into a temporary folder, once in FP32 and once
//!    in FP16 (or takes `--model-dir` / `--model-dir-fp16`, already exported);
//! 2. takes the first N sentences of DATA_BIN's test split (the binarized source ids, read
//!    through the trainer's dataset API: both backends get the very same ids);
//! 3. runs [`generate`] with one [`GenerationOptions`] through (a) the trainer's
//!    [`TorchDecoder`] (libtorch incremental decoding, `tch::set_num_threads`, no gradients, no
//!    dropout), (b) [`OnnxDecoder`] over the FP32 export and (c) over the FP16 export, with the
//!    same intra-op thread count on every side, at batch 1 and with token-budget batching
//!    (sentences sorted by source length, at most `--max-tokens` padded source tokens and
//!    `--max-sentences` sentences per batch). Every backend first decodes a few sentences
//!    untimed (warm-up). (a) and (b) must give identical hypotheses: the number of sentences
//!    whose hypotheses differ is printed (expected 0);
//! 4. times one beam step of `OnnxDecoder` at output position 10 and at 200 (one test sentence,
//!    beam rows reordered before every step, as `benches/decode_step.rs` does; median over
//!    `--step-passes` decodes) and prints the ratio (goal ≤ 1.5×);
//! 5. prints a table (backend, batching, sentences/s, target tokens/s, ONNX/libtorch and
//!    FP16/FP32 ratios; goal for ONNX/libtorch ≥ 3×) and one JSON line with everything.
//!
//! Nothing is asserted: it is a measurement (`cargo xtask bench-generate` runs it on the demo's
//! checkpoint). Target tokens are those of the best hypothesis, EOS included.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use serde_json::{Value, json};

use seqforge_exporter::{ExportOptions, export};
use seqforge_runtime::decoding::IncrementalDecoder;
use seqforge_runtime::onnx::{ModelDir, OnnxDecoder, RuntimeOptions};
use seqforge_runtime::search::{GenerationOptions, Hypothesis, generate};
use seqforge_schemas::contract::Dtype;
use seqforge_trainer::checkpoint;
use seqforge_trainer::models::TorchDecoder;
use seqforge_trainer::models::transformer::{Transformer, TransformerConfig};
use seqforge_trainer::train::{infer_language_pair, load_split};
use tch::{Device, nn};

#[derive(Parser, Debug)]
#[command(
    about = "Beam search through libtorch vs ONNX Runtime (FP32, FP16): same search, same ids"
)]
struct Cli {
    /// Trainer checkpoint directory (`model.safetensors` + `config.json`).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Binarized data folder (dictionaries and the test split).
    #[arg(long)]
    data: PathBuf,
    /// An FP32 export of the checkpoint (default: exported into a temporary folder).
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// An FP16 export of the checkpoint (default: exported into a temporary folder).
    #[arg(long)]
    model_dir_fp16: Option<PathBuf>,
    /// The split whose first sentences are translated.
    #[arg(long, default_value = "test")]
    split: String,
    /// Number of sentences (the first N of the split).
    #[arg(long, default_value_t = 200)]
    sentences: usize,
    /// Intra-op threads on every side (libtorch and ONNX Runtime).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Beam size.
    #[arg(long, default_value_t = 5)]
    beam: usize,
    /// Token budget of a batch (padded source tokens) for the batched runs.
    #[arg(long, default_value_t = 4096)]
    max_tokens: usize,
    /// Most sentences in a batch for the batched runs.
    #[arg(long, default_value_t = 32)]
    max_sentences: usize,
    /// Force every output to this many tokens + EOS (`min_len = max_len_b = N`), so that the
    /// work does not depend on the weights; default: fairseq's lengths (`max_len_b` 200).
    #[arg(long)]
    force_len: Option<usize>,
    /// Untimed warm-up sentences per backend.
    #[arg(long, default_value_t = 4)]
    warmup: usize,
    /// Decodes of 211 steps over which the per-step cost is measured (median of all passes).
    #[arg(long, default_value_t = 3)]
    step_passes: usize,
    /// Skip the batch-1 runs (the slowest part).
    #[arg(long)]
    no_batch1: bool,
    /// Decode only the first N sentences in the batch-1 runs (default: all `--sentences`).
    #[arg(long)]
    batch1_sentences: Option<usize>,
}

/// A batching policy: its name, its (max tokens, max sentences) budget (none: batch 1) and the
/// number of sentences it decodes.
type Batching = (&'static str, Option<(usize, usize)>, usize);

/// One timed run of one backend over all sentences.
struct Run {
    backend: &'static str,
    batching: &'static str,
    secs: f64,
    sentences: usize,
    tokens: usize,
    hypotheses: Vec<Vec<Hypothesis>>,
}

impl Run {
    fn sentences_per_s(&self) -> f64 {
        self.sentences as f64 / self.secs
    }
    fn tokens_per_s(&self) -> f64 {
        self.tokens as f64 / self.secs
    }
}

/// Batches of sentence indices: batch 1 in order, or sorted by source length with at most
/// `max_sentences` sentences and `longest × sentences ≤ max_tokens` (a longer single sentence
/// is a batch of its own).
fn plan(sources: &[Vec<u32>], token_budget: Option<(usize, usize)>) -> Vec<Vec<usize>> {
    let Some((max_tokens, max_sentences)) = token_budget else {
        return (0..sources.len()).map(|i| vec![i]).collect();
    };
    let mut order: Vec<usize> = (0..sources.len()).collect();
    order.sort_by_key(|&i| (sources[i].len(), i));
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut longest = 0;
    for i in order {
        let new_longest = longest.max(sources[i].len());
        if !current.is_empty()
            && (current.len() + 1 > max_sentences || new_longest * (current.len() + 1) > max_tokens)
        {
            batches.push(std::mem::take(&mut current));
            longest = 0;
        }
        longest = longest.max(sources[i].len());
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// Runs `generate` over `batches` (untimed warm-up first) and puts the results back in order.
fn timed<D: IncrementalDecoder>(
    decoder: &mut D,
    sources: &[Vec<u32>],
    batches: &[Vec<usize>],
    options: &GenerationOptions,
    warmup: usize,
) -> Result<(f64, Vec<Vec<Hypothesis>>)> {
    if warmup > 0 {
        generate(decoder, &sources[..warmup.min(sources.len())], options)?;
    }
    let mut out: Vec<Vec<Hypothesis>> = vec![Vec::new(); sources.len()];
    let start = Instant::now();
    for batch in batches {
        let input: Vec<Vec<u32>> = batch.iter().map(|&i| sources[i].clone()).collect();
        for (&i, hyps) in batch.iter().zip(generate(decoder, &input, options)?) {
            out[i] = hyps;
        }
    }
    Ok((start.elapsed().as_secs_f64(), out))
}

/// Sentences whose hypotheses differ in tokens, and the largest score difference among the
/// others.
fn compare(a: &[Vec<Hypothesis>], b: &[Vec<Hypothesis>]) -> (usize, f32) {
    let mut differing = 0;
    let mut worst = 0f32;
    for (x, y) in a.iter().zip(b) {
        if x.len() != y.len() || x.iter().zip(y).any(|(h, g)| h.tokens != g.tokens) {
            differing += 1;
            continue;
        }
        for (h, g) in x.iter().zip(y) {
            if h.score.is_finite() && g.score.is_finite() {
                worst = worst.max((h.score - g.score).abs());
            }
        }
    }
    (differing, worst)
}

/// Target tokens of the best hypotheses (EOS included).
fn target_tokens(hyps: &[Vec<Hypothesis>]) -> usize {
    hyps.iter().filter_map(|h| h.first()).map(|h| h.tokens.len()).sum()
}

/// The 1, 5 and 15 minute load averages (Linux), as text.
fn loadavg() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median beam step (ms) of `decoder` at output positions 10..20 and 200..210 over `passes`
/// decodes of one sentence, beam rows rotated before every step (the step's work does not
/// depend on the tokens).
fn step_cost(
    decoder: &mut OnnxDecoder,
    source: &[u32],
    beam: usize,
    eos: u32,
    passes: usize,
) -> Result<(f64, f64)> {
    let vocab = {
        let encoded = decoder.encode(&[source.to_vec()])?;
        let mut state = decoder.init_state(&encoded, 1)?;
        decoder.step(&[eos], &mut state)?.vocab as u32
    };
    let (mut early, mut late) = (Vec::new(), Vec::new());
    for _ in 0..passes.max(1) {
        let encoded = decoder.encode(&[source.to_vec()])?;
        let mut state = decoder.init_state(&encoded, 1)?;
        let mut tokens = vec![eos];
        for position in 0..=210usize {
            let start = Instant::now();
            decoder.step(&tokens, &mut state)?;
            let secs = start.elapsed().as_secs_f64();
            if (10..20).contains(&position) {
                early.push(secs);
            } else if (200..210).contains(&position) {
                late.push(secs);
            }
            let order: Vec<usize> = if position == 0 {
                vec![0; beam]
            } else {
                (0..beam).map(|k| (k + 1) % beam).collect()
            };
            decoder.reorder(&mut state, &order)?;
            tokens =
                (0..beam).map(|k| 4 + ((position * 13 + k * 7) as u32) % (vocab - 4)).collect();
        }
    }
    Ok((median(early) * 1e3, median(late) * 1e3))
}

/// The checkpoint's libtorch model over the export's vocabulary sizes and padding id.
fn torch_model(ckpt_dir: &Path, model: &ModelDir) -> Result<(nn::VarStore, Transformer)> {
    let c = model.contract();
    let ckpt = checkpoint::load(ckpt_dir)?;
    let config: TransformerConfig = serde_json::from_value(ckpt.config.model.clone())
        .with_context(|| format!("model config of {}", ckpt_dir.display()))?;
    let mut config = config.with_vocab(c.src_vocab_size, c.tgt_vocab_size);
    config.pad_index = c.special.pad as usize;
    let vs = nn::VarStore::new(Device::Cpu);
    let transformer = Transformer::new(&vs.root(), &config)?;
    ckpt.load_model_into(&transformer.fairseq_state_dict())?;
    Ok((vs, transformer))
}

/// `given`, or the checkpoint exported into `tmp/name` in `dtype`.
fn model_dir(
    given: Option<&PathBuf>,
    cli: &Cli,
    tmp: &Path,
    name: &str,
    dtype: Dtype,
) -> Result<PathBuf> {
    if let Some(dir) = given {
        return Ok(dir.clone());
    }
    let out = tmp.join(name);
    let start = Instant::now();
    export(&ExportOptions::new(&cli.checkpoint, &cli.data, &out).with_dtype(dtype))
        .with_context(|| format!("exporting {} ({name})", cli.checkpoint.display()))?;
    println!("exported {name} in {:.1} s", start.elapsed().as_secs_f64());
    Ok(out)
}

fn onnx(dir: &Path, threads: usize, expect: Dtype) -> Result<OnnxDecoder> {
    let options = RuntimeOptions { threads, ..RuntimeOptions::default() };
    let model = Arc::new(ModelDir::open(dir, &options)?);
    ensure!(
        model.contract().dtype == expect,
        "{} is a {:?} export, expected {expect:?}",
        dir.display(),
        model.contract().dtype
    );
    Ok(OnnxDecoder::new(model)?)
}

fn main() -> std::process::ExitCode {
    seqforge_cli_support::finish(run())
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    ensure!(cli.sentences > 0 && cli.threads > 0 && cli.beam > 0, "counts must be positive");
    let tmp = tempfile::tempdir()?;
    let fp32_dir = model_dir(cli.model_dir.as_ref(), &cli, tmp.path(), "model-fp32", Dtype::Fp32)?;
    let fp16_dir =
        model_dir(cli.model_dir_fp16.as_ref(), &cli, tmp.path(), "model-fp16", Dtype::Fp16)?;

    tch::set_num_threads(cli.threads as i32);
    let _no_grad = tch::no_grad_guard();
    let mut ort32 = onnx(&fp32_dir, cli.threads, Dtype::Fp32)?;
    let mut ort16 = onnx(&fp16_dir, cli.threads, Dtype::Fp16)?;
    let probe = ModelDir::open(&fp32_dir, &RuntimeOptions { threads: 1, ..Default::default() })?;
    let c = probe.contract().clone();
    let (_vs, transformer) = torch_model(&cli.checkpoint, &probe)?;
    drop(probe);

    // The first N sentences of the split, as binarized (EOS included), within the model's
    // source positions.
    let pair = infer_language_pair(&cli.data, None, None)?;
    let data = load_split(&cli.data, &cli.split, &pair)?;
    let n = cli.sentences.min(data.len());
    if n < cli.sentences {
        println!("the {} split has only {n} sentences", cli.split);
    }
    let mut sources = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = data.get(i)?.source;
        if s.len() > c.max_source_positions {
            s.truncate(c.max_source_positions - 1);
            s.push(c.special.eos);
        }
        sources.push(s);
    }
    if sources.is_empty() {
        bail!("no sentences in the {} split of {}", cli.split, cli.data.display());
    }
    let source_tokens: usize = sources.iter().map(Vec::len).sum();

    let mut options = GenerationOptions { beam: cli.beam, ..GenerationOptions::default() };
    if let Some(len) = cli.force_len {
        options = options.with_forced_length(len);
    }
    options.validate()?;

    println!(
        "generate_vs_libtorch: {} ({}, {} state tensors, vocab {}/{}), {n} {} sentences \
         ({:.1} source tokens each), beam {}, {} threads",
        cli.checkpoint.display(),
        c.arch,
        c.state.tensors.len(),
        c.src_vocab_size,
        c.tgt_vocab_size,
        cli.split,
        source_tokens as f64 / n as f64,
        cli.beam,
        cli.threads
    );

    // (name, token budget, sentences decoded).
    let mut batchings: Vec<Batching> = Vec::new();
    if !cli.no_batch1 {
        let b1 = cli.batch1_sentences.unwrap_or(n).clamp(1, n);
        batchings.push(("batch 1", None, b1));
    }
    batchings.push(("max-tokens", Some((cli.max_tokens, cli.max_sentences)), n));

    let load_start = loadavg();
    let mut runs: Vec<Run> = Vec::new();
    for (batching, budget, count) in &batchings {
        let sources = &sources[..*count];
        let batches = plan(sources, *budget);
        let mut torch = TorchDecoder::new(&transformer);
        for backend in ["libtorch", "onnx-fp32", "onnx-fp16"] {
            let (secs, hypotheses) = match backend {
                "libtorch" => timed(&mut torch, sources, &batches, &options, cli.warmup)?,
                "onnx-fp32" => timed(&mut ort32, sources, &batches, &options, cli.warmup)?,
                _ => timed(&mut ort16, sources, &batches, &options, cli.warmup)?,
            };
            let run = Run {
                backend,
                batching,
                secs,
                sentences: *count,
                tokens: target_tokens(&hypotheses),
                hypotheses,
            };
            println!(
                "  {backend:<10} {batching:<10} {:>7.2} s  {:>8.2} sentences/s  {:>9.1} tokens/s",
                run.secs,
                run.sentences_per_s(),
                run.tokens_per_s()
            );
            runs.push(run);
        }
    }

    let find = |backend: &str, batching: &str| {
        runs.iter().find(|r| r.backend == backend && r.batching == batching)
    };
    let mut table = Vec::new();
    let mut parity = Vec::new();
    println!();
    println!(
        "| backend | batching | sentences | sentences/s | target tokens/s | ONNX/libtorch | FP16/FP32 |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (batching, budget, count) in &batchings {
        let torch = find("libtorch", batching).context("libtorch run")?;
        let fp32 = find("onnx-fp32", batching).context("fp32 run")?;
        let fp16 = find("onnx-fp16", batching).context("fp16 run")?;
        let (differ, worst) = compare(&torch.hypotheses, &fp32.hypotheses);
        let (differ16, _) = compare(&fp32.hypotheses, &fp16.hypotheses);
        parity.push(json!({
            "batching": batching,
            "sentences": count,
            "libtorch_vs_onnx_fp32_differing_sentences": differ,
            "libtorch_vs_onnx_fp32_max_score_diff": worst,
            "onnx_fp16_vs_fp32_differing_sentences": differ16,
        }));
        let batches = plan(&sources[..*count], *budget).len();
        for run in [torch, fp32, fp16] {
            let vs_torch = run.sentences_per_s() / torch.sentences_per_s();
            let vs_fp32 = run.sentences_per_s() / fp32.sentences_per_s();
            println!(
                "| {} | {} | {} ({batches} batches) | {:.2} | {:.1} | {} | {} |",
                run.backend,
                run.batching,
                run.sentences,
                run.sentences_per_s(),
                run.tokens_per_s(),
                if run.backend == "libtorch" { "1.00".into() } else { format!("{vs_torch:.2}") },
                if run.backend == "onnx-fp16" { format!("{vs_fp32:.2}") } else { "".into() },
            );
            table.push(json!({
                "backend": run.backend,
                "batching": run.batching,
                "batches": batches,
                "secs": run.secs,
                "sentences": run.sentences,
                "target_tokens": run.tokens,
                "sentences_per_s": run.sentences_per_s(),
                "tokens_per_s": run.tokens_per_s(),
                "ratio_vs_libtorch": vs_torch,
                "ratio_vs_onnx_fp32": vs_fp32,
            }));
        }
    }
    println!();
    for p in &parity {
        println!(
            "{}: libtorch vs ONNX FP32: {} of {} sentences with different hypotheses (max score \
             difference among the others {:.2e}); ONNX FP16 vs FP32: {} differ",
            p["batching"].as_str().unwrap_or_default(),
            p["libtorch_vs_onnx_fp32_differing_sentences"],
            p["sentences"],
            p["libtorch_vs_onnx_fp32_max_score_diff"].as_f64().unwrap_or_default(),
            p["onnx_fp16_vs_fp32_differing_sentences"]
        );
    }

    // Per-step decoder cost at output position 10 vs 200.
    let mut steps: Vec<Value> = Vec::new();
    if c.max_target_positions > 215 {
        for (name, decoder) in [("onnx-fp32", &mut ort32), ("onnx-fp16", &mut ort16)] {
            let (early, late) =
                step_cost(decoder, &sources[0], cli.beam, c.special.eos, cli.step_passes)?;
            let ratio = late / early;
            println!(
                "{name}: beam-{} step at output position 10: {early:.3} ms, at 200: {late:.3} ms, \
                 ratio {ratio:.2} ({})",
                cli.beam,
                if ratio <= 1.5 { "≤ 1.5×" } else { "ABOVE 1.5×" }
            );
            steps.push(json!({"backend": name, "position_10_ms": early, "position_200_ms": late, "ratio": ratio}));
        }
    } else {
        println!("step cost: skipped, the model decodes only {} positions", c.max_target_positions);
    }
    let load_end = loadavg();
    println!("load average: {load_start} at the start, {load_end} at the end");
    println!(
        "{}",
        json!({
            "bench": "generate_vs_libtorch",
            "checkpoint": cli.checkpoint.display().to_string(),
            "arch": c.arch,
            "sentences": n,
            "source_tokens": source_tokens,
            "beam": cli.beam,
            "threads": cli.threads,
            "max_tokens": cli.max_tokens,
            "max_sentences": cli.max_sentences,
            "force_len": cli.force_len,
            "runs": table,
            "parity": parity,
            "step_cost": steps,
            "loadavg_start": load_start,
            "loadavg_end": load_end,
        })
    );
    Ok(())
}
