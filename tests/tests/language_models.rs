//! Language models end to end across crates: a `transformer_lm` trained by the trainer's loop
//! (`--task language_modeling`) on a toy corpus, exported in fp32 and fp16 by the exporter's
//! decoder-only graphs, then
//! - scored by eval-lm through ONNX Runtime (the runtime's `OnnxDecoder` as `LmScorer`) and
//!   through libtorch (`seqforge-train eval-lm`): the same tokens counted, the same perplexity,
//!   with and without a context window;
//! - continued by beam 5 through libtorch and through ONNX Runtime: identical hypotheses and
//!   scores within 1e-4, the same with each prompt alone; seeded sampling reproducible and
//!   equal on both backends; fp16 agreeing with fp32.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Result, ensure};
use seqforge_exporter::{ExportOptions, export};
use seqforge_runtime::lm::{EvalLmOptions, evaluate, samples_of_items};
use seqforge_runtime::onnx::{ModelDir, OnnxDecoder, RuntimeOptions};
use seqforge_runtime::search::{GenerationOptions, Strategy, generate};
use seqforge_schemas::contract::{Dtype, Task};
use seqforge_trainer::checkpoint;
use seqforge_trainer::data::IndexedDataset;
use seqforge_trainer::eval_lm::{EvalLmArgs, run as eval_lm};
use seqforge_trainer::models::TorchDecoder;
use seqforge_trainer::registry::Registry;
use seqforge_trainer::train::model::{ModelContext, load_checkpoint_model};
use seqforge_trainer::train::{self, TrainConfig};

mod common;
use common::same_hypotheses as same;

#[path = "../../trainer/tests/common/lm_corpus.rs"]
mod lm_corpus;

/// The trainer tests' counting corpus, from another seed.
fn corpus(dir: &Path) -> Result<PathBuf> {
    lm_corpus::counting_lm_data(dir, 0x2545_f491_4f6c_dd1d)
}

fn onnx(dir: &Path) -> Result<OnnxDecoder> {
    let options = RuntimeOptions { threads: 1, ..RuntimeOptions::default() };
    Ok(OnnxDecoder::new(Arc::new(ModelDir::open(dir, &options)?))?)
}

#[test]
fn transformer_lm_scores_and_generates_alike_on_libtorch_and_onnx_runtime() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let bin = corpus(dir.path())?;
    let save = dir.path().join("ckpt");
    let flags: Vec<String> = [
        bin.to_str().unwrap_or_default(),
        "--task",
        "language_modeling",
        "--tokens-per-sample",
        "32",
        "--arch",
        "transformer_lm_tiny",
        "--decoder-embed-dim",
        "32",
        "--decoder-attention-heads",
        "4",
        "--adaptive-input",
        "--adaptive-input-cutoff",
        "6,10",
        "--adaptive-input-factor",
        "2",
        "--adaptive-softmax-cutoff",
        "6,10",
        "--adaptive-softmax-factor",
        "2",
        "--tie-adaptive-weights",
        "--tie-adaptive-proj",
        "--criterion",
        "adaptive_loss",
        "--dropout",
        "0.0",
        "--optimizer",
        "adam",
        "--lr",
        "0.005",
        "--max-tokens",
        "256",
        "--max-update",
        "100",
        "--cpu",
        "--threads",
        "1",
        "--no-progress-bar",
        "--save-dir",
        save.to_str().unwrap_or_default(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let registry = Registry::with_builtins()?;
    train::run(&TrainConfig::from_args(flags, &registry)?, &registry)?;
    let ckpt = save.join("checkpoint_last");
    let fp32 = dir.path().join("model");
    export(&ExportOptions::new(&ckpt, &bin, &fp32))?;
    let fp16 = dir.path().join("model-fp16");
    export(&ExportOptions::new(&ckpt, &bin, &fp16).with_dtype(Dtype::Fp16))?;
    let manifest = seqforge_schemas::contract::Manifest::load(&fp32)?;
    ensure!(manifest.contract.task == Task::LanguageModeling);

    // eval-lm: libtorch (the trainer's command) and ONNX Runtime on the same items.
    let items: Vec<Vec<u32>> =
        IndexedDataset::open(bin.join("valid"))?.iter().collect::<Result<_, _>>()?;
    for context_window in [0, 12] {
        let args = EvalLmArgs {
            data: bin.clone(),
            path: ckpt.clone(),
            gen_subset: "valid".into(),
            context_window,
            tokens_per_sample: None,
            sample_break_mode: None,
            batch_size: Some(3),
            max_tokens: 36_000,
            remove_bpe: None,
            output_word_probs: false,
            output_word_stats: false,
            cpu: true,
            threads: Some(1),
        };
        let torch = eval_lm(&args, |_, _| {})?.report;
        let options = EvalLmOptions {
            tokens_per_sample: 32,
            context_window,
            max_sentences: Some(5),
            ..EvalLmOptions::default()
        };
        let samples = samples_of_items(&items, &options, 2, 1)?;
        let ort = evaluate(&mut onnx(&fp32)?, &samples, &options, 1, &|t| t.to_string(), |_| {})?;
        println!(
            "eval-lm (context {context_window}): libtorch {:.6}, ONNX Runtime {:.6} over {} tokens",
            torch.loss, ort.loss, ort.count
        );
        ensure!(torch.count == ort.count, "{} vs {} tokens", torch.count, ort.count);
        ensure!((torch.loss - ort.loss).abs() <= 1e-4, "{} vs {}", torch.loss, ort.loss);
    }

    // Generation from prompts of one length (a decoder state has one position).
    let ckpt_data = checkpoint::load(&ckpt)?;
    let ctx = ModelContext { src_vocab_size: 16, tgt_vocab_size: 16, pad_index: 1 };
    let (_vs, model) = load_checkpoint_model(&ckpt_data, &registry, &ctx, tch::Device::Cpu)?;
    let step_model = model.step_model().ok_or_else(|| anyhow::anyhow!("no step model"))?;
    let prompts: Vec<Vec<u32>> = items
        .iter()
        .filter(|s| s.len() >= 4)
        .take(4)
        .map(|s| {
            let mut p = s[..3].to_vec();
            p.push(2);
            p
        })
        .collect();
    ensure!(prompts.len() == 4);
    let _guard = tch::no_grad_guard();
    let beam = GenerationOptions { beam: 5, nbest: 5, max_len_b: 12, ..Default::default() };
    let torch = generate(&mut TorchDecoder::new(step_model), &prompts, &beam)?;
    let mut ort = onnx(&fp32)?;
    let batched = generate(&mut ort, &prompts, &beam)?;
    let worst = same("beam 5", &torch, &batched, 1e-4)?;
    println!("beam 5: libtorch and ONNX Runtime identical, max score difference {worst:.2e}");
    for (i, p) in prompts.iter().enumerate() {
        let alone = generate(&mut ort, std::slice::from_ref(p), &beam)?;
        same(&format!("prompt {i} alone vs batched"), &alone, &batched[i..=i], 1e-5)?;
    }
    let sampling = GenerationOptions {
        beam: 3,
        nbest: 3,
        max_len_b: 12,
        strategy: Strategy::Sampling { top_k: Some(5), top_p: None, temperature: 1.0, seed: 9 },
        ..Default::default()
    };
    let a = generate(&mut ort, &prompts, &sampling)?;
    let b = generate(&mut onnx(&fp32)?, &prompts, &sampling)?;
    same("sampling, seed 9, twice", &a, &b, 0.0)?;
    let t = generate(&mut TorchDecoder::new(step_model), &prompts, &sampling)?;
    same("sampling: libtorch vs ONNX Runtime", &t, &a, 1e-4)?;
    let half = generate(&mut onnx(&fp16)?, &prompts, &beam)?;
    let agree = half.iter().zip(&batched).filter(|(x, y)| x[0].tokens == y[0].tokens).count();
    println!("fp16 vs fp32: {agree} of 4 best continuations identical");
    ensure!(agree >= 3, "fp16 agrees with fp32 on only {agree} of 4 prompts");
    Ok(())
}
