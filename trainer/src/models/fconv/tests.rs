//! Tests of the ConvS2S model: parity with fairseq 0.12.2 (encoder outputs, forward, gradients
//! through weight normalisation and GradMultiply, incremental decoding with a beam reorder),
//! fairseq's names and initialisation, the tied output embedding, cached versus full decoding,
//! independence from batching and padding, beam search, dropout, 16-bit kinds and a few
//! training steps.

use std::collections::BTreeMap;

use seqforge_runtime::decoding::{IncrementalDecoder, LogProbs};
use seqforge_runtime::search::{GenerationOptions, generate};
use tch::nn::{OptimizerConfig, VarStore};
use tch::{Device, Kind, Tensor};

use super::*;
use crate::models::TorchDecoder;
use crate::models::testing::Tokens;

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;
type Res<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const EOS: u32 = 2;
const PAD: i64 = 1;
/// Outputs compared with fairseq, or cached with uncached, must agree to this.
const TOL: f64 = 1e-5;

/// A small config with every kind of layer: an even encoder kernel, residual projections, a
/// layer without residual, a residual two layers back, a 1×1 decoder layer, attention in some
/// decoder layers only.
fn tiny() -> FConvConfig {
    FConvConfig {
        dropout: 0.2,
        encoder_embed_dim: 10,
        encoder_layers: "[(12, 3)] * 2 + [(16, 2)] + [(16, 1, 0)]".into(),
        decoder_embed_dim: 10,
        decoder_layers: "[(12, 3), (12, 2)] + [(16, 3, 2)] + [(16, 1)]".into(),
        decoder_out_embed_dim: 8,
        decoder_attention: "[True, False, True, True]".into(),
        max_source_positions: 64,
        max_target_positions: 64,
        ..FConvConfig::default().with_vocab(30, 36)
    }
}

/// Variants covering the optional modules.
fn variants() -> Vec<(&'static str, FConvConfig)> {
    vec![
        ("mixed layers, partial attention", tiny()),
        (
            "shared output embedding, wide kernels",
            FConvConfig {
                encoder_embed_dim: 12,
                encoder_layers: "[(14, 5)]".into(),
                decoder_embed_dim: 12,
                decoder_layers: "[(12, 4)] * 2".into(),
                decoder_out_embed_dim: 12,
                decoder_attention: "True".into(),
                share_input_output_embed: true,
                ..tiny()
            },
        ),
    ]
}

/// Builds a model and perturbs every parameter away from its initial value.
fn build(config: &FConvConfig) -> Res<(VarStore, FConv)> {
    let vs = VarStore::new(Device::Cpu);
    let model = FConv::new(&vs.root(), config)?;
    let _guard = tch::no_grad_guard();
    for (_, mut t) in vs.variables() {
        let noise = t.f_randn_like()?.f_mul_scalar(0.2)?;
        let _ = t.f_add_(&noise)?;
    }
    Ok((vs, model))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Res<f64> {
    Ok(a.f_sub(b)?.f_abs()?.f_max()?.f_double_value(&[])?)
}

fn max_abs_diff_slices(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| f64::from((x - y).abs())).fold(0.0, f64::max)
}

/// Pads sentences into a `[batch, len]` tensor, on the left (sources) or right (targets).
fn padded(rows: &[Vec<u32>], left: bool) -> Res<Tensor> {
    let len = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut data = Vec::new();
    for r in rows {
        let pads = std::iter::repeat_n(PAD, len - r.len());
        let ids = r.iter().map(|&t| i64::from(t));
        if left {
            data.extend(pads.chain(ids));
        } else {
            data.extend(ids.chain(pads));
        }
    }
    Ok(Tensor::f_from_slice(&data)?.f_reshape([rows.len() as i64, len as i64])?)
}

fn lengths(rows: &[Vec<u32>]) -> Res<Tensor> {
    Ok(Tensor::f_from_slice(&rows.iter().map(|s| s.len() as i64).collect::<Vec<_>>())?)
}

// ---------------------------------------------------------------------------------------
// Configuration, names, initialisation.

#[test]
fn presets_follow_fairseq_and_validate() -> TestResult {
    assert_eq!(
        PRESETS,
        ["fconv", "fconv_iwslt_de_en", "fconv_wmt_en_ro", "fconv_wmt_en_de", "fconv_wmt_en_fr"]
    );
    // (name, embed, encoder layers, decoder layers, out_embed)
    let expected = [
        ("fconv", 512, 20, 20, 256),
        ("fconv_iwslt_de_en", 256, 4, 3, 256),
        ("fconv_wmt_en_ro", 512, 20, 20, 512),
        ("fconv_wmt_en_de", 768, 15, 15, 512),
        ("fconv_wmt_en_fr", 768, 15, 15, 512),
    ];
    for (name, embed, enc, dec, out) in expected {
        let c = FConvConfig::from_preset(name)?;
        assert_eq!((c.encoder_embed_dim, c.decoder_embed_dim), (embed, embed), "{name}");
        assert_eq!(c.encoder_convolutions()?.len(), enc, "{name}");
        assert_eq!(c.decoder_convolutions()?.len(), dec, "{name}");
        assert_eq!((c.decoder_out_embed_dim, c.dropout), (out, 0.1), "{name}");
        c.with_vocab(40, 40).validate()?;
    }
    let vs = VarStore::new(Device::Cpu);
    let bad = FConvConfig { decoder_layers: "[(512,)] * 2".into(), ..tiny() };
    let e = FConv::new(&vs.root(), &bad).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("[(512,)] * 2") && e.contains("expected 2 or 3 parameters"), "{e}");
    Ok(())
}

#[test]
fn parameters_have_fairseq_names_and_init() -> TestResult {
    let config = FConvConfig { dropout: 0.2, ..FConvConfig::from_preset("fconv_iwslt_de_en")? }
        .with_vocab(500, 600);
    tch::manual_seed(5);
    let vs = VarStore::new(Device::Cpu);
    let model = FConv::new(&vs.root(), &config)?;
    let sd: BTreeMap<String, Tensor> = model.fairseq_state_dict().into_iter().collect();
    let size = |n: &str| sd.get(n).map(Tensor::size);
    assert_eq!(size("encoder.embed_positions.weight"), Some(vec![1024, 256]));
    assert_eq!(size("encoder.convolutions.3.weight_v"), Some(vec![3, 256, 512]));
    assert_eq!(size("encoder.convolutions.3.weight_g"), Some(vec![1, 1, 512]));
    assert_eq!(size("encoder.fc1.weight_g"), Some(vec![256, 1]));
    assert_eq!(size("decoder.attention.2.in_projection.weight_v"), Some(vec![256, 256]));
    assert_eq!(size("decoder.fc3.weight_v"), Some(vec![600, 256]));
    assert_eq!(size("decoder.version"), Some(vec![1]));
    assert!(!vs.variables().contains_key("decoder.version"), "a buffer, not a parameter");
    // weight_g starts as ‖weight_v‖; v is normal with σ √(4(1−p)/(k·in)) for convolutions and
    // √((1−p)/in) for linears (p only where dropout precedes the layer); biases zero;
    // embeddings σ 0.1 with a zero padding row.
    let std = |t: &Tensor| -> Res<f64> { Ok(t.f_std(false)?.f_double_value(&[])?) };
    let v = &sd["encoder.convolutions.3.weight_v"];
    let want = (4.0f64 * 0.8 / (3.0 * 256.0)).sqrt();
    assert!((std(v)? / want - 1.0).abs() < 0.05, "conv σ {} vs {want}", std(v)?);
    let norm = Tensor::f_norm_except_dim(v, 2, 2)?;
    assert!(max_abs_diff(&norm, &sd["encoder.convolutions.3.weight_g"])? < 1e-5);
    let fc1 = &sd["decoder.fc1.weight_v"];
    let want = (0.8f64 / 256.0).sqrt();
    assert!((std(fc1)? / want - 1.0).abs() < 0.05, "fc1 σ {} vs {want}", std(fc1)?);
    let fc2 = &sd["encoder.fc2.weight_v"];
    let want = (1.0f64 / 256.0).sqrt();
    assert!((std(fc2)? / want - 1.0).abs() < 0.05, "fc2 σ {} vs {want}", std(fc2)?);
    assert_eq!(sd["decoder.fc3.bias"].f_abs()?.f_sum(Kind::Float)?.f_double_value(&[])?, 0.0);
    let emb = &sd["decoder.embed_tokens.weight"];
    assert!((std(emb)? - 0.1).abs() < 0.01);
    assert_eq!(emb.f_select(0, PAD)?.f_abs()?.f_sum(Kind::Float)?.f_double_value(&[])?, 0.0);
    Ok(())
}

#[test]
fn shared_output_embedding_is_one_tensor_with_its_own_bias() -> TestResult {
    let (_, config) = variants().remove(1);
    let vs = VarStore::new(Device::Cpu);
    let model = FConv::new(&vs.root(), &config)?;
    assert_eq!(
        model.tied_parameters(),
        [("decoder.fc3.weight".to_string(), "decoder.embed_tokens.weight".to_string())]
    );
    let sd: BTreeMap<String, Tensor> = model.fairseq_state_dict().into_iter().collect();
    assert_eq!(sd["decoder.fc3.weight"].data_ptr(), sd["decoder.embed_tokens.weight"].data_ptr());
    assert!(vs.variables().contains_key("decoder.fc3.bias"));
    // nn.Linear's bias initialisation: uniform in ±1/√in, not zero.
    let bias = &sd["decoder.fc3.bias"];
    let bound = 1.0 / 12f64.sqrt();
    assert!(bias.f_abs()?.f_max()?.f_double_value(&[])? <= bound);
    assert!(bias.f_abs()?.f_sum(Kind::Float)?.f_double_value(&[])? > 0.0);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Parity with fairseq 0.12.2 itself (fixtures made by `testdata/make_fixture.py`).

struct Parity {
    encoder: f64,
    forward: f64,
    gradient: f64,
    incremental: f64,
}

/// Loads a fixture: fairseq's weights into a fresh model, then compares our encoder outputs,
/// eval-mode forward, parameter gradients and incremental decoding (with fairseq's mid-way
/// reorder) with fairseq's.
fn fairseq_parity(name: &str) -> Res<Parity> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/models/fconv/testdata")
        .join(format!("fairseq_parity_{name}.safetensors"));
    let bytes = std::fs::read(&path)?;
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes)?;
    let meta = metadata.metadata().as_ref().ok_or("no metadata")?;
    let config: FConvConfig = serde_json::from_str(meta.get("config").ok_or("no config")?)?;
    let keys: Vec<String> = serde_json::from_str(meta.get("state_dict_keys").ok_or("no keys")?)?;
    let tensors: BTreeMap<String, Tensor> = Tensor::read_safetensors(&path)?.into_iter().collect();
    let get = |n: &str| tensors.get(n).ok_or_else(|| format!("{name}: no {n}"));

    let mut vs = VarStore::new(Device::Cpu);
    let model = FConv::new(&vs.root(), &config)?;
    // Our state dict lists fairseq's keys in fairseq's order; the var store holds the
    // fixture's parameters (tied ones once; `decoder.version` is a buffer).
    let ours: Vec<String> = model.fairseq_state_dict().into_iter().map(|(n, _)| n).collect();
    assert_eq!(ours, keys, "{name}");
    let stored: Vec<&String> =
        tensors.keys().filter(|n| !n.starts_with("__") && *n != "decoder.version").collect();
    assert_eq!(stored.len(), vs.variables().len(), "{name}");
    vs.load(&path)?;

    let src = get("__src_tokens")?;
    let prev = get("__prev_output_tokens")?;
    let encoded = tch::no_grad(|| model.encode(src, false))?;
    let encoder = max_abs_diff(&encoded.a, get("__encoder_a")?)?
        .max(max_abs_diff(&encoded.b, get("__encoder_b")?)?);
    let lengths = get("__src_lengths")?;
    let logits = model.forward(src, lengths, prev, false)?;
    let forward = max_abs_diff(&logits.f_detach()?, get("__logits")?)?;
    logits.f_mul(get("__grad_weights")?)?.f_sum(Kind::Float)?.backward();
    let mut gradient = 0f64;
    for (param, t) in model.parameters() {
        let want = get(&format!("__grad.{param}"))?;
        // Relative to the gradient's scale (sums over many positions).
        let scale = want.f_abs()?.f_max()?.f_double_value(&[])?.max(1.0);
        gradient = gradient.max(max_abs_diff(&t.grad(), want)? / scale);
    }

    let want = get("__step_lprobs")?;
    let order: Vec<usize> =
        Vec::<i64>::try_from(get("__reorder")?)?.into_iter().map(|i| i as usize).collect();
    let reorder_step = get("__reorder_step")?.f_int64_value(&[0])?;
    let mut decoder = TorchDecoder::new(&model);
    let sources: Vec<Vec<u32>> = (0..src.size()[0])
        .map(|i| {
            let row: Vec<i64> = Vec::try_from(src.f_select(0, i)?)?;
            Ok(row.into_iter().filter(|&t| t != PAD).map(|t| t as u32).collect())
        })
        .collect::<Res<_>>()?;
    let encoded = decoder.encode(&sources)?;
    let mut state = decoder.init_state(&encoded, 1)?;
    let mut incremental = 0f64;
    for t in 0..prev.size()[1] {
        if t == reorder_step {
            decoder.reorder(&mut state, &order)?;
        }
        // Past a row's end fairseq feeds (and we compare) padding, as its forward pass does.
        let tokens: Vec<u32> =
            Vec::<i64>::try_from(prev.f_select(1, t)?)?.into_iter().map(|x| x as u32).collect();
        let lp = decoder.step(&tokens, &mut state)?;
        for row in 0..sources.len() {
            let w: Vec<f32> = Vec::try_from(want.f_select(0, row as i64)?.f_select(0, t)?)?;
            incremental = incremental.max(max_abs_diff_slices(lp.row(row), &w));
        }
    }
    Ok(Parity { encoder, forward, gradient, incremental })
}

#[test]
fn outputs_and_gradients_match_fairseq() -> TestResult {
    for name in ["mixed", "shared", "iwslt_unpadded"] {
        let p = fairseq_parity(name)?;
        eprintln!(
            "fairseq parity {name}: encoder {:e}, forward {:e}, gradient (relative) {:e}, \
             incremental {:e}",
            p.encoder, p.forward, p.gradient, p.incremental
        );
        assert!(p.encoder <= TOL && p.forward <= TOL && p.incremental <= TOL, "{name}");
        assert!(p.gradient <= TOL, "{name}: gradient {:e}", p.gradient);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Cached decoding, batching and padding.

/// Log-probabilities `[rows, steps, vocab]` of the full model on `fed` (right-padded).
fn full_lprobs(model: &FConv, sources: &[Vec<u32>], fed: &[Vec<u32>]) -> Res<Tensor> {
    let (src, lengths, prev) = (padded(sources, true)?, lengths(sources)?, padded(fed, false)?);
    let logits = tch::no_grad(|| model.forward(&src, &lengths, &prev, false))?;
    Ok(model.get_normalized_probs(&logits, true)?)
}

#[test]
fn cached_decoding_equals_full_forward() -> TestResult {
    for (i, (name, config)) in variants().into_iter().enumerate() {
        let (_vs, model) = build(&config)?;
        let mut rng = Tokens(7 + i as u64);
        let (sv, tv) = (config.src_vocab_size, config.tgt_vocab_size);
        let sources = vec![rng.sentence(5, sv), rng.sentence(9, sv), rng.sentence(2, sv)];
        let mut decoder = TorchDecoder::new(&model);
        let encoded = decoder.encode(&sources)?;
        let mut state = decoder.init_state(&encoded, 1)?;
        let mut fed: Vec<Vec<u32>> = vec![Vec::new(); 3];
        let mut cached: Vec<LogProbs> = Vec::new();
        for _ in 0..12 {
            let tokens: Vec<u32> = if fed[0].is_empty() {
                vec![EOS; 3]
            } else {
                (0..3).map(|_| rng.next(tv)).collect()
            };
            for (f, &t) in fed.iter_mut().zip(&tokens) {
                f.push(t);
            }
            cached.push(decoder.step(&tokens, &mut state)?);
        }
        let names: std::collections::BTreeSet<String> = state.tensors().keys().cloned().collect();
        let declared = config.decoder_state()?.tensors.iter().map(|t| t.name.clone()).collect();
        assert_eq!(names, declared, "{name}");
        let full = full_lprobs(&model, &sources, &fed)?;
        let mut worst = 0f64;
        for (t, step) in cached.iter().enumerate() {
            let want: Vec<f32> = Vec::try_from(full.f_select(1, t as i64)?.f_reshape([-1])?)?;
            worst = worst.max(max_abs_diff_slices(&step.data, &want));
        }
        eprintln!("cached vs full, {name}: max |diff| = {worst:e}");
        assert!(worst <= TOL, "{name}: {worst}");
    }
    Ok(())
}

#[test]
fn batching_and_padding_do_not_change_results() -> TestResult {
    for (i, (name, config)) in variants().into_iter().enumerate() {
        let (_vs, model) = build(&config)?;
        let mut rng = Tokens(99 + i as u64);
        let (sv, tv) = (config.src_vocab_size, config.tgt_vocab_size);
        let sentence = rng.sentence(6, sv);
        let batch = vec![rng.sentence(3, sv), sentence.clone(), rng.sentence(13, sv)];
        let mut decoder = TorchDecoder::new(&model);
        let alone = decoder.encode(std::slice::from_ref(&sentence))?;
        let together = decoder.encode(&batch)?;
        let mut state_alone = decoder.init_state(&alone, 1)?;
        let mut state_batch = decoder.init_state(&together, 1)?;
        let (mut worst, mut token, mut history) = (0f64, EOS, Vec::new());
        for _ in 0..15 {
            let a = decoder.step(&[token], &mut state_alone)?;
            let b = decoder.step(&[rng.next(tv), token, rng.next(tv)], &mut state_batch)?;
            worst = worst.max(max_abs_diff_slices(a.row(0), b.row(1)));
            history.push(token);
            token = rng.next(tv);
        }
        eprintln!("alone vs batched (incremental), {name}: {worst:e}");
        assert!(worst <= TOL, "{name}: {worst}");

        // Teacher forcing, right-padded targets of different lengths.
        let short = history[..7].to_vec();
        let targets = [history[..3].to_vec(), short.clone(), history.clone()];
        let batched = full_lprobs(&model, &batch, &targets)?;
        let single = full_lprobs(&model, std::slice::from_ref(&sentence), &[short])?;
        let diff =
            max_abs_diff(&batched.f_select(0, 1)?.f_narrow(0, 0, 7)?, &single.f_select(0, 0)?)?;
        eprintln!("alone vs batched (teacher forcing), {name}: {diff:e}");
        assert!(diff <= TOL, "{name}: {diff}");
        // Right-padded sources (what the ONNX runtime feeds) give the same outputs.
        let (src, lengths, prev) =
            (padded(&batch, false)?, lengths(&batch)?, padded(&targets, false)?);
        let right = tch::no_grad(|| model.forward(&src, &lengths, &prev, false))?;
        let diff = max_abs_diff(&model.get_normalized_probs(&right, true)?, &batched)?;
        assert!(diff <= TOL, "{name}: left vs right source padding: {diff}");
    }
    Ok(())
}

#[test]
fn beam_search_scores_like_the_full_model() -> TestResult {
    let config = tiny();
    let (_vs, model) = build(&config)?;
    let sources = vec![vec![5, 9, 7, 11, EOS], vec![13, 6, EOS], vec![8, 8, 19, 4, 17, 10, EOS]];
    let options = GenerationOptions { beam: 4, nbest: 4, max_len_b: 10, ..Default::default() };
    let results = generate(&mut TorchDecoder::new(&model), &sources, &options)?;
    assert_eq!(results.len(), 3);
    let mut worst = 0f64;
    for (source, hypotheses) in sources.iter().zip(&results) {
        assert_eq!(hypotheses.len(), 4);
        for h in hypotheses {
            assert_eq!(h.tokens.last(), Some(&EOS));
            let mut fed = vec![EOS];
            fed.extend_from_slice(&h.tokens[..h.tokens.len() - 1]);
            let full = full_lprobs(&model, std::slice::from_ref(source), &[fed])?;
            for (t, (&token, &score)) in h.tokens.iter().zip(&h.positional_scores).enumerate() {
                let want = full.f_double_value(&[0, t as i64, i64::from(token)])?;
                worst = worst.max((f64::from(score) - want).abs());
            }
        }
    }
    eprintln!("beam positional scores vs full model: {worst:e}");
    assert!(worst <= 1e-4, "{worst}");
    // Bad inputs are errors, not panics; empty batches are fine.
    let mut decoder = TorchDecoder::new(&model);
    assert!(decoder.encode(&[vec![]]).is_err());
    assert!(decoder.encode(&[vec![1000, EOS]]).is_err());
    assert!(decoder.encode(&[vec![5; 63]]).is_err(), "64 rows hold 62 positions");
    let none = decoder.encode(&[])?;
    let mut empty = decoder.init_state(&none, 4)?;
    assert_eq!(decoder.step(&[], &mut empty)?.rows, 0);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Training: dropout, 16-bit kinds, the loss falls.

#[test]
fn dropout_only_in_train_mode() -> TestResult {
    let (_vs, model) = build(&tiny())?;
    let sources = [vec![5, 6, 7, EOS], vec![8, EOS]];
    let targets = [vec![EOS, 9, 10], vec![EOS, 11]];
    let run = |train| {
        tch::no_grad(|| -> Res<Tensor> {
            Ok(model.forward(
                &padded(&sources, true)?,
                &lengths(&sources)?,
                &padded(&targets, false)?,
                train,
            )?)
        })
    };
    assert_eq!(max_abs_diff(&run(false)?, &run(false)?)?, 0.0);
    assert!(max_abs_diff(&run(true)?, &run(true)?)? > 1e-4);
    assert!(max_abs_diff(&run(true)?, &run(false)?)? > 1e-4);
    Ok(())
}

/// Cross-entropy of `targets` (right-padded, padding ignored) given the sources.
fn loss(model: &FConv, sources: &[Vec<u32>], targets: &[Vec<u32>], train: bool) -> Res<Tensor> {
    let prev: Vec<Vec<u32>> = targets
        .iter()
        .map(|t| std::iter::once(EOS).chain(t[..t.len() - 1].iter().copied()).collect())
        .collect();
    let logits = model.forward(
        &padded(sources, true)?,
        &lengths(sources)?,
        &padded(&prev, false)?,
        train,
    )?;
    let lprobs = model.get_normalized_probs(&logits, true)?;
    let vocab = lprobs.size()[2];
    Ok(lprobs.f_reshape([-1, vocab])?.f_nll_loss(
        &padded(targets, false)?.f_reshape([-1])?,
        None::<Tensor>,
        tch::Reduction::Mean,
        PAD,
    )?)
}

#[test]
fn training_steps_lower_the_loss() -> TestResult {
    tch::manual_seed(3);
    let config = FConvConfig { dropout: 0.1, ..tiny() };
    let vs = VarStore::new(Device::Cpu);
    let model = FConv::new(&vs.root(), &config)?;
    let mut rng = Tokens(11);
    let sources: Vec<Vec<u32>> = [6, 4, 8, 3].iter().map(|&n| rng.sentence(n, 30)).collect();
    // Targets: each source reversed (EOS last), a learnable mapping.
    let targets: Vec<Vec<u32>> = sources
        .iter()
        .map(|s| s[..s.len() - 1].iter().rev().copied().chain([EOS]).collect())
        .collect();
    let before = tch::no_grad(|| loss(&model, &sources, &targets, false))?.f_double_value(&[])?;
    let mut opt = tch::nn::Adam::default().build(&vs, 1e-2)?;
    for _ in 0..30 {
        let l = loss(&model, &sources, &targets, true)?;
        opt.backward_step(&l);
    }
    let after = tch::no_grad(|| loss(&model, &sources, &targets, false))?.f_double_value(&[])?;
    eprintln!("training loss {before} → {after}");
    assert!(after < before * 0.7, "{before} → {after}");
    Ok(())
}

#[test]
fn runs_in_16_bit_kinds() -> TestResult {
    let config = tiny();
    let (vs32, model32) = build(&config)?;
    let sources = [vec![5, 6, 7, EOS], vec![8, EOS]];
    let targets = [vec![9, 10, EOS], vec![11, EOS]];
    let want = tch::no_grad(|| loss(&model32, &sources, &targets, false))?.f_double_value(&[])?;
    for kind in [Kind::BFloat16, Kind::Half] {
        let mut vs = VarStore::new(Device::Cpu);
        vs.set_kind(kind);
        let model = FConv::new(&vs.root(), &config)?;
        vs.copy(&vs32)?;
        let l = loss(&model, &sources, &targets, true)?;
        l.backward();
        let weight = vs.variables().remove("encoder.convolutions.0.weight_v").ok_or("no weight")?;
        let grad = weight.grad();
        assert_eq!(grad.kind(), kind);
        assert!(grad.f_abs()?.f_sum(Kind::Float)?.f_double_value(&[])? > 0.0);
        let got = tch::no_grad(|| loss(&model, &sources, &targets, false))?.f_double_value(&[])?;
        assert!((got - want).abs() < 0.05, "{kind:?}: {got} vs {want}");
        // Incremental decoding keeps the model's kind in its state and returns fp32.
        let mut decoder = TorchDecoder::new(&model);
        let encoded = decoder.encode(&sources)?;
        let mut state = decoder.init_state(&encoded, 2)?;
        let lp = decoder.step(&[EOS; 4], &mut state)?;
        assert!(lp.data.iter().all(|x| x.is_finite()));
        assert_eq!(state.get(&state_names::window(0))?.kind(), kind);
        assert_eq!(state.get(state_names::ENCODER_PADDING_MASK)?.kind(), Kind::Bool);
    }
    Ok(())
}
