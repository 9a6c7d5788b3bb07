//! Per-step decoding cost through the ONNX `OnnxDecoder` at output position 200 vs 10, for beam
//! 5 over one sentence (5 rows) with a beam reorder before every step. With the cache a step
//! recomputes nothing of the prefix; what still grows with the past is attention over it and the
//! graph's in-graph reorder (`Gather`) and append (`Concat`) of the cache, so the ratio stays
//! small for a realistic model (goal: ≤ 1.5×); prints both medians and the ratio.
//!
//! Run: `cargo bench -p seqforge-benches --bench decode_step` (a synthetic post-norm Transformer
//! of base size: 512 dims, 6+6 layers, 8 heads, FFN 2048, vocabulary 8,000, exported to a
//! temporary folder), or point `SEQFORGE_BENCH_MODEL` at an exported model directory (a folder
//! without `manifest.json` receives the synthetic model, kept for later runs).
//! `SEQFORGE_BENCH_THREADS` sets the intra-op threads (default 1: with 2 threads on a busy
//! 2-core machine, ONNX Runtime's intra-op barriers wait for descheduled threads, and as more
//! operators are split across threads when the past grows, that noise can dominate the ratio).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use seqforge_exporter::testing::{SyntheticCheckpoint, numbered_dictionary};
use seqforge_runtime::decoding::IncrementalDecoder;
use seqforge_runtime::onnx::{ModelDir, OnnxDecoder, RuntimeOptions};

const DIM: usize = 512;
const FFN: usize = 2048;
const LAYERS: usize = 6;
const VOCAB: usize = 8000;
const BEAM: usize = 5;

/// Writes a synthetic checkpoint and exports it; returns the model directory.
fn synthetic_model(root: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(root)?;
    let ckpt = root.join("checkpoint_last");
    let data = root.join("data");
    std::fs::create_dir_all(&ckpt)?;
    std::fs::create_dir_all(&data)?;
    let dict = numbered_dictionary(VOCAB, "w");
    std::fs::write(data.join("dict.de.txt"), &dict)?;
    std::fs::write(data.join("dict.en.txt"), &dict)?;
    SyntheticCheckpoint {
        arch: "transformer".into(),
        embed_dim: DIM,
        ffn_dim: FFN,
        layers: LAYERS,
        heads: 8,
        max_positions: 1024,
        weight_divisor: 200.0,
        ..SyntheticCheckpoint::tiny(VOCAB, VOCAB)
    }
    .write(&ckpt, &data)?;
    let model = root.join("model");
    seqforge_exporter::export(&seqforge_exporter::ExportOptions::new(&ckpt, &data, &model))?;
    Ok(model)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing useful either way.
    let tmp = tempfile::tempdir()?;
    let model_dir = match std::env::var_os("SEQFORGE_BENCH_MODEL").map(PathBuf::from) {
        Some(dir) if dir.join("manifest.json").is_file() => dir,
        // A folder kept from an earlier run, or one that receives the synthetic model now.
        Some(dir) if dir.join("model/manifest.json").is_file() => dir.join("model"),
        Some(dir) => synthetic_model(&dir)?,
        None => synthetic_model(tmp.path())?,
    };
    let threads: usize = std::env::var("SEQFORGE_BENCH_THREADS")
        .ok()
        .map(|t| t.parse())
        .transpose()
        .context("SEQFORGE_BENCH_THREADS")?
        .unwrap_or(1);
    let options = RuntimeOptions { threads, ..RuntimeOptions::default() };
    let model = Arc::new(ModelDir::open(&model_dir, &options)?);
    let c = model.contract().clone();
    ensure!(
        c.max_target_positions > 215,
        "the model decodes only {} positions",
        c.max_target_positions
    );
    let mut decoder = OnnxDecoder::new(model)?;

    let vocab = c.tgt_vocab_size as u32;
    let source: Vec<u32> =
        (0..24).map(|i| 4 + (i * 37) % (vocab - 4)).chain([c.special.eos]).collect();
    let encoded = decoder.encode(&[source])?;
    let mut state = decoder.init_state(&encoded, 1)?;
    let mut tokens = vec![c.special.eos];
    let mut times: BTreeMap<usize, f64> = BTreeMap::new();
    for position in 0..=210 {
        let start = Instant::now();
        let out = decoder.step(&tokens, &mut state)?;
        times.insert(position, start.elapsed().as_secs_f64());
        ensure!(out.rows == tokens.len(), "rows");
        // A beam reorder inside the sentence (rotate), as search does every step.
        let order: Vec<usize> =
            if position == 0 { vec![0; BEAM] } else { (0..BEAM).map(|k| (k + 1) % BEAM).collect() };
        decoder.reorder(&mut state, &order)?;
        tokens = (0..BEAM).map(|k| 4 + ((position * 13 + k * 7) as u32) % (vocab - 4)).collect();
    }
    let early = median((10..20).map(|p| times[&p]).collect());
    let late = median((200..210).map(|p| times[&p]).collect());
    let ratio = late / early;
    println!(
        "decode_step: {} ({}, {} state tensors, vocab {}), beam {BEAM}, {threads} threads",
        model_dir.display(),
        c.arch,
        c.state.tensors.len(),
        c.tgt_vocab_size
    );
    println!(
        "decode_step: median step at position 10: {:.3} ms, at position 200: {:.3} ms, ratio {ratio:.2} ({})",
        early * 1e3,
        late * 1e3,
        if ratio <= 1.5 { "cache works: ≤ 1.5×" } else { "ABOVE 1.5×" }
    );
    println!("decode_step: per-sentence inputs built {} times in 211 steps", state.regathers());
    Ok(())
}
