//! Tests of the LSTM: parity with fairseq 0.12.2 (forward, encoder output, incremental
//! decoding with a beam reorder), fairseq's names, initialisation and tied embeddings, cached
//! versus full decoding, independence from batching and padding, beam search, dropout,
//! 16-bit kinds and a few training steps.

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

/// A small config: bidirectional 2-layer encoder, 2-layer decoder with attention, both
/// projections (encoder width 2 × 10 != 16, out_embed_dim 8 != 16).
fn tiny() -> LstmConfig {
    LstmConfig {
        encoder_embed_dim: 12,
        encoder_hidden_size: Some(10),
        encoder_layers: 2,
        encoder_bidirectional: true,
        decoder_embed_dim: 14,
        decoder_hidden_size: Some(16),
        decoder_layers: 2,
        decoder_out_embed_dim: 8,
        max_source_positions: 64,
        max_target_positions: 64,
        ..LstmConfig::default().with_vocab(30, 36)
    }
}

/// Variants covering the optional modules.
fn variants() -> Vec<(&'static str, LstmConfig)> {
    vec![
        ("bidirectional, projections, attention", tiny()),
        (
            "unidirectional, no attention, shared output",
            LstmConfig {
                encoder_bidirectional: false,
                encoder_hidden_size: Some(16),
                decoder_attention: false,
                decoder_embed_dim: 8,
                share_decoder_input_output_embed: true,
                ..tiny()
            },
        ),
        (
            "all embeddings shared, no projections",
            LstmConfig {
                encoder_embed_dim: 16,
                encoder_hidden_size: None,
                encoder_bidirectional: false,
                decoder_embed_dim: 16,
                decoder_hidden_size: None,
                decoder_out_embed_dim: 16,
                share_all_embeddings: true,
                ..tiny().with_vocab(32, 32)
            },
        ),
    ]
}

/// Builds a model and perturbs every parameter away from its initial value.
fn build(config: &LstmConfig) -> Res<(VarStore, Lstm)> {
    let vs = VarStore::new(Device::Cpu);
    let model = Lstm::new(&vs.root(), config)?;
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
    assert_eq!(PRESETS, ["lstm", "lstm_wiseman_iwslt_de_en", "lstm_luong_wmt_en_de"]);
    // (name, embed, hidden, layers, out_embed, (enc in, enc out), (dec in, dec out))
    let expected = [
        ("lstm", 512, 512, 1, 512, (0.1, 0.1), (0.1, 0.1)),
        ("lstm_wiseman_iwslt_de_en", 256, 256, 1, 256, (0.0, 0.0), (0.0, 0.1)),
        ("lstm_luong_wmt_en_de", 1000, 1000, 4, 1000, (0.1, 0.0), (0.1, 0.0)),
    ];
    for (name, embed, hidden, layers, out, enc, dec) in expected {
        let c = LstmConfig::from_preset(name)?;
        assert_eq!((c.encoder_embed_dim, c.decoder_embed_dim), (embed, embed), "{name}");
        assert_eq!((c.encoder_hidden(), c.decoder_hidden()), (hidden, hidden), "{name}");
        assert_eq!(
            (c.encoder_layers, c.decoder_layers, c.decoder_out_embed_dim),
            (layers, layers, out)
        );
        assert_eq!((c.encoder_dropouts(), c.decoder_dropouts()), (enc, dec), "{name}");
        assert!(c.decoder_attention && !c.encoder_bidirectional, "{name}");
        c.with_vocab(40, 40).validate()?;
    }
    // fairseq's build_model: the decoder starts from the encoder's layers one to one.
    let bad = LstmConfig { decoder_layers: 3, ..tiny() };
    assert!(bad.validate().is_err());
    let vs = VarStore::new(Device::Cpu);
    assert!(Lstm::new(&vs.root(), &bad).is_err());
    let bad = LstmConfig { share_decoder_input_output_embed: true, ..tiny() }; // 14 != 8
    assert!(bad.validate().is_err());
    Ok(())
}

/// fairseq 0.12.2's state-dict keys of the `tiny()` model (printed by fairseq itself for the
/// same shapes: `make_fixture.py`'s `bidir_attn`).
#[test]
fn parameters_have_fairseq_names_shapes_and_init() -> TestResult {
    let config = tiny();
    let vs = VarStore::new(Device::Cpu);
    let model = Lstm::new(&vs.root(), &config)?;
    let shapes: Vec<(String, Vec<i64>)> =
        model.fairseq_state_dict().into_iter().map(|(n, t)| (n, t.size())).collect();
    let mut expected: Vec<(String, Vec<i64>)> =
        vec![("encoder.embed_tokens.weight".into(), vec![30, 12])];
    for l in 0..2 {
        for suffix in ["", "_reverse"] {
            let input = if l == 0 { 12 } else { 20 };
            expected.push((format!("encoder.lstm.weight_ih_l{l}{suffix}"), vec![40, input]));
            expected.push((format!("encoder.lstm.weight_hh_l{l}{suffix}"), vec![40, 10]));
            expected.push((format!("encoder.lstm.bias_ih_l{l}{suffix}"), vec![40]));
            expected.push((format!("encoder.lstm.bias_hh_l{l}{suffix}"), vec![40]));
        }
    }
    expected.push(("decoder.embed_tokens.weight".into(), vec![36, 14]));
    for p in ["encoder_hidden_proj", "encoder_cell_proj"] {
        expected.push((format!("decoder.{p}.weight"), vec![16, 20]));
        expected.push((format!("decoder.{p}.bias"), vec![16]));
    }
    for l in 0..2 {
        let input = if l == 0 { 16 + 14 } else { 16 };
        expected.push((format!("decoder.layers.{l}.weight_ih"), vec![64, input]));
        expected.push((format!("decoder.layers.{l}.weight_hh"), vec![64, 16]));
        expected.push((format!("decoder.layers.{l}.bias_ih"), vec![64]));
        expected.push((format!("decoder.layers.{l}.bias_hh"), vec![64]));
    }
    expected.push(("decoder.attention.input_proj.weight".into(), vec![20, 16]));
    expected.push(("decoder.attention.output_proj.weight".into(), vec![16, 36]));
    expected.push(("decoder.additional_fc.weight".into(), vec![8, 16]));
    expected.push(("decoder.additional_fc.bias".into(), vec![8]));
    expected.push(("decoder.fc_out.weight".into(), vec![36, 8]));
    expected.push(("decoder.fc_out.bias".into(), vec![36]));
    assert_eq!(shapes, expected);
    // The var store holds exactly these names.
    let ours: BTreeMap<String, Vec<i64>> =
        vs.variables().into_iter().map(|(n, t)| (n, t.size())).collect();
    assert_eq!(ours, expected.iter().cloned().collect::<BTreeMap<_, _>>());

    // fairseq's init: everything uniform in ±0.1, padding embeddings zero.
    let mut all = Vec::new();
    for (name, t) in model.parameters() {
        let bound = t.f_abs()?.f_max()?.f_double_value(&[])?;
        assert!(bound <= 0.1, "{name}: max |w| = {bound}");
        all.push(t.f_flatten(0, -1)?);
        if name.ends_with("embed_tokens.weight") {
            assert_eq!(t.f_select(0, PAD)?.f_abs()?.f_sum(Kind::Float)?.f_double_value(&[])?, 0.0);
        }
    }
    // Uniform in ±0.1: mean |w| is 0.05 (thousands of values).
    let mean_abs = Tensor::f_cat(&all, 0)?.f_abs()?.f_mean(Kind::Float)?.f_double_value(&[])?;
    assert!((mean_abs - 0.05).abs() < 0.005, "mean |w| = {mean_abs}");
    Ok(())
}

#[test]
fn shared_embeddings_are_one_tensor() -> TestResult {
    let [_, (_, decoder_shared), (_, all_shared)] =
        <[_; 3]>::try_from(variants()).map_err(|_| "three variants")?;
    // Decoder input = output: no fc_out, nothing to alias.
    let vs = VarStore::new(Device::Cpu);
    let model = Lstm::new(&vs.root(), &decoder_shared)?;
    let names: Vec<String> = model.parameters().into_iter().map(|(n, _)| n).collect();
    assert!(!names.iter().any(|n| n.contains("fc_out")), "{names:?}");
    assert!(model.tied_parameters().is_empty());
    // All shared: one variable, listed twice in the state dict.
    let vs = VarStore::new(Device::Cpu);
    let model = Lstm::new(&vs.root(), &all_shared)?;
    assert_eq!(
        model.tied_parameters(),
        [("decoder.embed_tokens.weight".to_string(), "encoder.embed_tokens.weight".to_string())]
    );
    assert!(!vs.variables().contains_key("decoder.embed_tokens.weight"));
    let sd: BTreeMap<String, Tensor> = model.fairseq_state_dict().into_iter().collect();
    let (enc, dec) = (&sd["encoder.embed_tokens.weight"], &sd["decoder.embed_tokens.weight"]);
    assert_eq!(enc.data_ptr(), dec.data_ptr());
    assert_eq!(sd.len(), model.parameters().len() + 1);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Parity with fairseq 0.12.2 itself (fixtures made by `testdata/make_fixture.py`).

struct Parity {
    encoder: f64,
    forward: f64,
    incremental: f64,
}

/// Loads a fixture: fairseq's weights into a fresh model, then compares our encoder output,
/// eval-mode forward and incremental decoding (with fairseq's mid-way reorder) with fairseq's.
fn fairseq_parity(name: &str) -> Res<Parity> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/models/lstm/testdata")
        .join(format!("fairseq_parity_{name}.safetensors"));
    let bytes = std::fs::read(&path)?;
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes)?;
    let meta = metadata.metadata().as_ref().ok_or("no metadata")?;
    let config: LstmConfig = serde_json::from_str(meta.get("config").ok_or("no config")?)?;
    let keys: Vec<String> = serde_json::from_str(meta.get("state_dict_keys").ok_or("no keys")?)?;
    let tensors: BTreeMap<String, Tensor> = Tensor::read_safetensors(&path)?.into_iter().collect();
    let get = |n: &str| tensors.get(n).ok_or_else(|| format!("{name}: no {n}"));

    let mut vs = VarStore::new(Device::Cpu);
    let model = Lstm::new(&vs.root(), &config)?;
    // Our state dict lists fairseq's keys in fairseq's order; the var store holds the
    // fixture's tensors (tied ones once).
    let ours: Vec<String> = model.fairseq_state_dict().into_iter().map(|(n, _)| n).collect();
    assert_eq!(ours, keys, "{name}");
    let stored: Vec<&String> = tensors.keys().filter(|n| !n.starts_with("__")).collect();
    assert_eq!(stored.len(), vs.variables().len(), "{name}");
    vs.load(&path)?;

    let src = get("__src_tokens")?;
    let prev = get("__prev_output_tokens")?;
    let encoded = tch::no_grad(|| model.encode(src, false))?;
    let encoder = max_abs_diff(&encoded.out, get("__encoder_out")?)?;
    let lengths = get("__src_lengths")?;
    let logits = tch::no_grad(|| model.forward(src, lengths, prev, false))?;
    let forward = max_abs_diff(&logits, get("__logits")?)?;

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
    Ok(Parity { encoder, forward, incremental })
}

#[test]
fn outputs_match_fairseq() -> TestResult {
    for name in ["bidir_attn", "uni_noattn_shared", "shared_all"] {
        let p = fairseq_parity(name)?;
        eprintln!(
            "fairseq parity {name}: encoder {:e}, forward {:e}, incremental {:e}",
            p.encoder, p.forward, p.incremental
        );
        assert!(p.encoder <= TOL && p.forward <= TOL && p.incremental <= TOL, "{name}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Cached decoding, batching and padding.

/// Log-probabilities `[rows, steps, vocab]` of the full model on `fed` (right-padded).
fn full_lprobs(model: &Lstm, sources: &[Vec<u32>], fed: &[Vec<u32>]) -> Res<Tensor> {
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
        let names: Vec<&String> = state.tensors().keys().collect();
        assert_eq!(
            names.into_iter().cloned().collect::<std::collections::BTreeSet<_>>(),
            config.decoder_state().tensors.iter().map(|t| t.name.clone()).collect(),
            "{name}"
        );
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
        // Unsorted lengths: the encoder sorts for packing and restores the order.
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
        // Right-padded sources are taken as they are (fairseq converts left to right).
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
    assert!(decoder.encode(&[vec![5; 65]]).is_err());
    let none = decoder.encode(&[])?;
    let mut empty = decoder.init_state(&none, 4)?;
    assert_eq!(decoder.step(&[], &mut empty)?.rows, 0);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Training: dropout, 16-bit kinds, the loss falls.

#[test]
fn dropout_only_in_train_mode() -> TestResult {
    let config = LstmConfig { dropout: 0.3, ..tiny() };
    let (_vs, model) = build(&config)?;
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
fn loss(model: &Lstm, sources: &[Vec<u32>], targets: &[Vec<u32>], train: bool) -> Res<Tensor> {
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
    let config = LstmConfig { dropout: 0.1, ..tiny() };
    let vs = VarStore::new(Device::Cpu);
    let model = Lstm::new(&vs.root(), &config)?;
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
        let model = Lstm::new(&vs.root(), &config)?;
        vs.copy(&vs32)?;
        let l = loss(&model, &sources, &targets, true)?;
        l.backward();
        let weight = vs.variables().remove("decoder.layers.0.weight_ih").ok_or("no weight")?;
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
        assert_eq!(state.get(state_names::INPUT_FEED)?.kind(), kind);
        assert_eq!(state.get(state_names::ENCODER_PADDING_MASK)?.kind(), Kind::Bool);
    }
    Ok(())
}
