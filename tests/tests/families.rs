//! The recurrent and convolutional families end to end across crates, the way the Transformer
//! is proven: a model built by the trainer's registry, briefly trained on a copy task (peaked
//! distributions, no near-ties), saved with the trainer's checkpoint writer, exported by the
//! exporter's family graphs in fp32 and fp16, and searched by the runtime with no
//! family-specific code: beam 5 through libtorch and through ONNX Runtime must give identical
//! hypotheses, ONNX results must not depend on the batch a sentence is in, and fp16 must agree
//! with fp32 on most sentences.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Result, ensure};
use seqforge_exporter::{ExportOptions, export};
use seqforge_runtime::onnx::{ModelDir, OnnxDecoder, RuntimeOptions};
use seqforge_runtime::search::{GenerationOptions, generate};
use seqforge_schemas::contract::Dtype;
use seqforge_trainer::models::TorchDecoder;
use seqforge_trainer::train::model::Model;
use tch::nn;

mod common;
use common::{same_hypotheses as same, sources, write_dict};

const VOCAB: usize = 32;

struct Fixture {
    _dir: tempfile::TempDir,
    _vs: nn::VarStore,
    model: Box<dyn Model>,
    fp32: PathBuf,
    fp16: PathBuf,
}

/// A registry model of `arch` with `overrides`, trained on the copy task for `updates` steps
/// at learning rate `lr`, saved and exported in fp32 and fp16.
fn fixture(arch: &str, overrides: serde_json::Value, updates: usize, lr: f64) -> Result<Fixture> {
    tch::manual_seed(21);
    let (vs, model, config) = common::registry_model(arch, overrides, VOCAB)?;
    common::train_copy_task(&vs, model.as_ref(), updates, lr, VOCAB)?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    write_dict(&data.join("dict.de.txt"), VOCAB, "w", |i| 1000 - i)?;
    write_dict(&data.join("dict.en.txt"), VOCAB, "w", |i| 1000 - i)?;
    let checkpoint = dir.path().join("checkpoint_last");
    common::save_model(&checkpoint, model.as_ref(), config, arch, &data, 1, updates as u64)?;
    let fp32 = dir.path().join("model");
    export(&ExportOptions::new(&checkpoint, &data, &fp32))?;
    let fp16 = dir.path().join("model-fp16");
    export(&ExportOptions::new(&checkpoint, &data, &fp16).with_dtype(Dtype::Fp16))?;
    Ok(Fixture { _dir: dir, _vs: vs, model, fp32, fp16 })
}

fn onnx(dir: &Path) -> Result<OnnxDecoder> {
    let options = RuntimeOptions { threads: 1, ..RuntimeOptions::default() };
    Ok(OnnxDecoder::new(Arc::new(ModelDir::open(dir, &options)?))?)
}

/// Beam 5 through libtorch and ONNX Runtime (identical hypotheses, scores within 1e-4), each
/// sentence alone vs batched, and fp16 vs fp32 on at least 5 of the 6 sentences.
fn search_agrees(family: &str, f: &Fixture) -> Result<()> {
    let step_model = f.model.step_model().ok_or_else(|| anyhow::anyhow!("no step model"))?;
    let _guard = tch::no_grad_guard();
    let beam = GenerationOptions { beam: 5, nbest: 5, max_len_b: 16, ..Default::default() };
    let torch = generate(&mut TorchDecoder::new(step_model), &sources(), &beam)?;
    let mut ort = onnx(&f.fp32)?;
    let batched = generate(&mut ort, &sources(), &beam)?;
    let worst = same("beam 5", &torch, &batched, 1e-4)?;
    let n: usize = torch.iter().map(Vec::len).sum();
    println!("{family} beam 5: {n} hypotheses identical, max score difference {worst:.2e}");
    for (i, s) in sources().into_iter().enumerate() {
        let alone = generate(&mut ort, &[s], &beam)?;
        same(&format!("sentence {i} alone vs batched"), &alone, &batched[i..=i], 1e-5)?;
    }
    let half = generate(&mut onnx(&f.fp16)?, &sources(), &beam)?;
    let agree = half.iter().zip(&batched).filter(|(a, b)| a[0].tokens == b[0].tokens).count();
    println!("{family} fp16 vs fp32: {agree} of 6 best hypotheses identical");
    ensure!(agree >= 5, "{family}: fp16 agrees with fp32 on only {agree} of 6 sentences");
    Ok(())
}

/// A bidirectional 2-layer encoder (its 48 outputs ≠ the decoder's 32 hidden units: both
/// initial-state projections), attention, `decoder_out_embed_dim` ≠ hidden (`additional_fc`).
#[test]
fn lstm_beam_search_over_onnx_equals_libtorch_and_does_not_depend_on_the_batch() -> Result<()> {
    let overrides = serde_json::json!({
        "encoder_embed_dim": 24, "encoder_hidden_size": 24, "encoder_layers": 2,
        "encoder_bidirectional": true, "decoder_embed_dim": 24, "decoder_hidden_size": 32,
        "decoder_layers": 2, "decoder_out_embed_dim": 24, "dropout": 0.0
    });
    search_agrees("lstm", &fixture("lstm_wiseman_iwslt_de_en", overrides, 150, 1e-2)?)
}

/// ConvS2S with an even encoder kernel, residual projections, a residual two layers back, a
/// 1×1 decoder layer (no window), attention in some decoder layers.
#[test]
fn fconv_beam_search_over_onnx_equals_libtorch_and_does_not_depend_on_the_batch() -> Result<()> {
    let overrides = serde_json::json!({
        "encoder_embed_dim": 24, "decoder_embed_dim": 24, "decoder_out_embed_dim": 16,
        "encoder_layers": "[(32, 3)] * 2 + [(48, 2)]",
        "decoder_layers": "[(32, 3)] * 2 + [(48, 3, 2)] + [(48, 1)]",
        "decoder_attention": "[True, False, True, True]", "dropout": 0.0
    });
    search_agrees("fconv", &fixture("fconv_iwslt_de_en", overrides, 150, 1e-2)?)
}
