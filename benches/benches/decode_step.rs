//! Per-step decoding cost through the ONNX `OnnxDecoder` at output position 200 vs 10, with the
//! self-attention cache appended (`--kv-cache append`: the graph gathers and concatenates the
//! past every step) and updated in place (`--kv-cache in-place`: `GroupQueryAttention` writes
//! into a buffer the runtime reorders on the host), side by side on the same weights.
//!
//! Beam 5 over one sentence (5 rows), a beam reorder (a rotation, so every row moves) before
//! every step, each step fetching the best 14 candidates per row as the beam search does
//! (`step_top`, 2·beam + 4). The variants alternate within each round; the medians over all
//! rounds of positions 10..20 and 200..210 are printed with their ratio (goal: ≤ 1.3×) and the
//! in-place/append speed-up at both positions. `SEQFORGE_BENCH_REORDER=none` keeps the rows in
//! place instead (isolating attention over the past from the cost of moving it).
//!
//! Run: `cargo bench -p seqforge-benches --bench decode_step`. Synthetic post-norm Transformers
//! exported to a temporary folder (`SEQFORGE_BENCH_SIZES`, default `demo,base`): `demo` is the
//! demo's shape (128 wide, 3+3 layers, 4 heads, FFN 512), `base` the base shape (512 wide, 6+6
//! layers, 8 heads, FFN 2048); both with a vocabulary of 8,000. `SEQFORGE_BENCH_THREADS` sets
//! the intra-op threads (default 1), `SEQFORGE_BENCH_ROUNDS` the rounds (default 5).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use seqforge_exporter::BuildOptions;
use seqforge_exporter::testing::{SyntheticCheckpoint, numbered_dictionary};
use seqforge_runtime::decoding::IncrementalDecoder;
use seqforge_runtime::onnx::{ModelDir, OnnxDecoder, RuntimeOptions};
use seqforge_schemas::arch::transformer::KvCache;

const VOCAB: usize = 8000;
const BEAM: usize = 5;
const STEPS: usize = 211;

/// A synthetic model shape: name, width, FFN width, layers, heads.
type Size = (&'static str, usize, usize, usize, usize);
const SIZES: [Size; 2] = [("demo", 128, 512, 3, 4), ("base", 512, 2048, 6, 8)];

/// Writes a synthetic checkpoint of `size` under `root` and exports it with each cache layout.
fn synthetic_models(root: &Path, size: Size) -> Result<Vec<(KvCache, PathBuf)>> {
    let (name, dim, ffn, layers, heads) = size;
    let root = root.join(name);
    let ckpt = root.join("checkpoint_last");
    let data = root.join("data");
    std::fs::create_dir_all(&ckpt)?;
    std::fs::create_dir_all(&data)?;
    let dict = numbered_dictionary(VOCAB, "w");
    std::fs::write(data.join("dict.de.txt"), &dict)?;
    std::fs::write(data.join("dict.en.txt"), &dict)?;
    SyntheticCheckpoint {
        arch: "transformer".into(),
        embed_dim: dim,
        ffn_dim: ffn,
        layers,
        heads,
        max_positions: 1024,
        weight_divisor: 200.0,
        ..SyntheticCheckpoint::tiny(VOCAB, VOCAB)
    }
    .write(&ckpt, &data)?;
    let mut out = Vec::new();
    for cache in [KvCache::Append, KvCache::InPlace] {
        let model = root.join(format!("model-{cache}"));
        let mut options = seqforge_exporter::ExportOptions::new(&ckpt, &data, &model);
        options.build = BuildOptions { kv_cache: Some(cache), ..BuildOptions::default() };
        seqforge_exporter::export(&options)?;
        out.push((cache, model));
    }
    Ok(out)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One decode of [`STEPS`] steps; the time of each step (seconds). With `rotate`, every row
/// moves before every step (the worst case of a beam reorder); without, rows stay in place
/// (what remains is attention over the past).
fn decode(decoder: &mut OnnxDecoder, rotate: bool) -> Result<Vec<f64>> {
    let c = decoder.model().contract().clone();
    let vocab = c.tgt_vocab_size as u32;
    let source: Vec<u32> =
        (0..24).map(|i| 4 + (i * 37) % (vocab - 4)).chain([c.special.eos]).collect();
    let encoded = decoder.encode(&[source])?;
    let mut state = decoder.init_state(&encoded, 1)?;
    let mut tokens = vec![c.special.eos];
    let mut times = Vec::with_capacity(STEPS);
    let k = 2 * BEAM + 4;
    for position in 0..STEPS {
        let start = Instant::now();
        let rows = match decoder.step_top(&tokens, &mut state, k)? {
            Some(top) => top.rows,
            None => decoder.step(&tokens, &mut state)?.rows,
        };
        times.push(start.elapsed().as_secs_f64());
        ensure!(rows == tokens.len(), "step {position}: {rows} rows for {} tokens", tokens.len());
        // A beam reorder inside the sentence (rotate), as search does every step.
        let order: Vec<usize> = if position == 0 {
            vec![0; BEAM]
        } else {
            (0..BEAM).map(|k| if rotate { (k + 1) % BEAM } else { k }).collect()
        };
        decoder.reorder(&mut state, &order)?;
        tokens = (0..BEAM).map(|k| 4 + ((position * 13 + k * 7) as u32) % (vocab - 4)).collect();
    }
    Ok(times)
}

fn env_usize(name: &str, default: usize) -> Result<usize> {
    std::env::var(name)
        .ok()
        .map(|t| t.parse())
        .transpose()
        .context(name.to_string())
        .map(|v| v.unwrap_or(default))
}

fn main() -> std::process::ExitCode {
    seqforge_cli_support::finish(run())
}

fn run() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let threads = env_usize("SEQFORGE_BENCH_THREADS", 1)?;
    let rounds = env_usize("SEQFORGE_BENCH_ROUNDS", 5)?.max(1);
    let wanted = std::env::var("SEQFORGE_BENCH_SIZES").unwrap_or_else(|_| "demo,base".into());
    let rotate = match std::env::var("SEQFORGE_BENCH_REORDER").as_deref() {
        Ok("rotate") | Err(_) => true,
        Ok("none") => false,
        Ok(other) => bail!("SEQFORGE_BENCH_REORDER: `{other}` (expected rotate or none)"),
    };
    let options = RuntimeOptions { threads, ..RuntimeOptions::default() };
    println!(
        "decode_step: beam {BEAM}, top {} per row, {threads} threads, {rounds} rounds, rows {}",
        2 * BEAM + 4,
        if rotate { "rotated before every step" } else { "never moved" }
    );
    for name in wanted.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let Some(&size) = SIZES.iter().find(|s| s.0 == name) else {
            bail!("SEQFORGE_BENCH_SIZES: unknown size `{name}` (known: demo, base)");
        };
        let models = synthetic_models(tmp.path(), size)?;
        let mut decoders = Vec::new();
        for (cache, dir) in &models {
            let model = Arc::new(ModelDir::open(dir, &options)?);
            ensure!(model.contract().max_target_positions > STEPS, "too few target positions");
            decoders.push((*cache, OnnxDecoder::new(model)?, Vec::<Vec<f64>>::new()));
        }
        // Warm-up, then alternate the variants within each round.
        for (_, decoder, _) in &mut decoders {
            decode(decoder, rotate)?;
        }
        for _ in 0..rounds {
            for (_, decoder, runs) in &mut decoders {
                runs.push(decode(decoder, rotate)?);
            }
        }
        let at = |runs: &[Vec<f64>], from: usize| {
            median(runs.iter().flat_map(|t| t[from..from + 10].iter().copied()).collect())
        };
        let mut medians = Vec::new();
        for (cache, _, runs) in &decoders {
            let (early, late) = (at(runs, 10), at(runs, 200));
            println!(
                "decode_step: {name} ({} wide, {}+{} layers), cache {cache:<8}: position 10 {:.3} ms, \
                 position 200 {:.3} ms, ratio {:.2}",
                size.1,
                size.3,
                size.3,
                early * 1e3,
                late * 1e3,
                late / early
            );
            medians.push((early, late));
        }
        if let [(a10, a200), (i10, i200)] = medians[..] {
            println!(
                "decode_step: {name}: in-place is {:.2}× as fast as append at position 10, {:.2}× at 200",
                a10 / i10,
                a200 / i200
            );
        }
    }
    Ok(())
}
