//! Tests of the Transformer language model: parity with fairseq 0.12.2 (features,
//! full-vocabulary log-probabilities, `adaptive_loss`/`cross_entropy` values and gradients,
//! incremental decoding after a prefilled prompt with a beam reorder) on plain, shared,
//! adaptive (tied weights and projections, tied weights only, untied) models; fairseq's names;
//! cached versus full decoding; batching; dropout; training; 16-bit kinds; registration.

use std::collections::BTreeSet;

use tch::nn::{OptimizerConfig, VarStore};
use tch::{Device, Kind, Tensor};

use super::*;
use crate::criterions::{AdaptiveLoss, Criterion, CriterionContext, CrossEntropy};
use crate::models::TorchDecoder;
use crate::models::testing::{
    EOS, FairseqFixture, PAD, Res, TOL, Tokens, check_dropout_only_in_train_mode, max_abs_diff,
    max_abs_diff_slices, padded, perturb,
};
use seqforge_runtime::decoding::IncrementalDecoder;
use seqforge_schemas::arch::transformer::KvCache;

type TestResult = Res<()>;

/// A small adaptive model: adaptive input and softmax tied (weights and projections), pre-norm,
/// learned positions, bands 0..8, 8..20, 20..40.
fn adaptive() -> TransformerLmConfig {
    TransformerLmConfig {
        decoder_embed_dim: 16,
        decoder_ffn_embed_dim: 24,
        decoder_layers: 2,
        decoder_attention_heads: 4,
        decoder_learned_pos: true,
        adaptive_input: true,
        adaptive_input_cutoff: Some(vec![8, 20]),
        adaptive_softmax_cutoff: Some(vec![8, 20]),
        adaptive_softmax_dropout: 0.1,
        tie_adaptive_weights: true,
        tie_adaptive_proj: true,
        tokens_per_sample: 64,
        ..TransformerLmConfig::from_preset("transformer_lm_tiny").unwrap_or_default()
    }
    .with_vocab(40)
}

/// Variants covering the optional modules.
fn variants() -> Vec<(&'static str, TransformerLmConfig)> {
    let plain = TransformerLmConfig {
        adaptive_input: false,
        adaptive_input_cutoff: None,
        adaptive_softmax_cutoff: None,
        tie_adaptive_weights: false,
        tie_adaptive_proj: false,
        ..adaptive()
    };
    vec![
        ("adaptive, tied", adaptive()),
        (
            "plain, shared, sinusoidal",
            TransformerLmConfig {
                share_decoder_input_output_embed: true,
                decoder_learned_pos: false,
                ..plain.clone()
            },
        ),
        (
            "untied adaptive softmax, projections in and out",
            TransformerLmConfig {
                decoder_input_dim: Some(12),
                decoder_output_dim: Some(12),
                adaptive_softmax_cutoff: Some(vec![10]),
                adaptive_softmax_factor: 2.0,
                ..plain
            },
        ),
    ]
}

fn build(config: &TransformerLmConfig) -> Res<(VarStore, TransformerLm)> {
    let vs = VarStore::new(Device::Cpu);
    let model = TransformerLm::new(&vs.root(), config)?;
    perturb(&vs)?;
    Ok((vs, model))
}

/// Full-vocabulary log-probabilities `[rows, len, vocab]` of the model on right-padded `rows`.
fn full_lprobs(model: &TransformerLm, rows: &[Vec<u32>]) -> Res<Tensor> {
    let prev = padded(rows, false)?;
    let out = tch::no_grad(|| model.forward(&prev, &Tensor::from_slice(&[0i64]), &prev, false))?;
    Ok(model.get_normalized_probs(&out, true)?)
}

// ---------------------------------------------------------------------------------------
// Parity with fairseq.

#[derive(Debug)]
struct Parity {
    forward: f64,
    lprobs: f64,
    loss: f64,
    gradient: f64,
    incremental: f64,
}

fn fairseq_parity(name: &str) -> Res<Parity> {
    let fixture = FairseqFixture::load("transformer_lm", name)?;
    let get = |n: &str| fixture.get(n);
    let config: TransformerLmConfig = serde_json::from_value(fixture.config.clone())?;
    let mut vs = VarStore::new(Device::Cpu);
    let model = TransformerLm::new(&vs.root(), &config)?;
    let buffers = [
        "decoder.version",
        "decoder.embed_tokens._float_tensor",
        "decoder.embed_positions._float_tensor",
        "decoder.adaptive_softmax.version",
        "decoder.adaptive_softmax.head._float_tensor",
    ];
    fixture.load_into(&mut vs, &model, &buffers)?;
    let prev = get("__prev_output_tokens")?;
    let out = model.forward(prev, prev, prev, false)?;
    let forward = max_abs_diff(&out.f_detach()?, get("__features")?)?;
    let lprobs =
        max_abs_diff(&model.get_normalized_probs(&out.f_detach()?, true)?, get("__lprobs")?)?;
    let ctx = CriterionContext::default();
    let criterion: Box<dyn Criterion> = if config.has_adaptive_softmax() {
        Box::new(AdaptiveLoss::new(&ctx))
    } else {
        Box::new(CrossEntropy::new(&ctx))
    };
    let target = get("__target")?;
    let result = criterion.compute_for(&model, &out, target, PAD, false)?;
    assert_eq!(result.ntokens as i64, get("__ntokens")?.f_int64_value(&[0])?);
    let want = get("__loss")?.f_double_value(&[0])?;
    let loss = (result.nll_loss - want).abs() / want.abs().max(1.0);
    result.loss.backward();
    let mut gradient = 0f64;
    for (param, t) in model.parameters() {
        let want = get(&format!("__grad.{param}"))?;
        let scale = want.f_abs()?.f_max()?.f_double_value(&[])?.max(1.0);
        gradient = gradient.max(max_abs_diff(&t.grad(), want)? / scale);
    }
    let incremental = tch::no_grad(|| incremental_diff(&model, &fixture))?;
    Ok(Parity { forward, lprobs, loss, gradient, incremental })
}

/// fairseq's incremental decoding of `__step_tokens` replayed with a 3-token prompt: the
/// prefill's log-probabilities for the prompt positions, then the steps through
/// [`TorchDecoder`] (rows reordered with `__reorder` before step `__reorder_step`).
fn incremental_diff(model: &TransformerLm, fixture: &FairseqFixture) -> Res<f64> {
    const PROMPT: i64 = 3;
    let tokens = fixture.get("__step_tokens")?;
    let want = fixture.get("__step_lprobs")?;
    let order: Vec<usize> =
        Vec::<i64>::try_from(fixture.get("__reorder")?)?.into_iter().map(|i| i as usize).collect();
    let reorder_step = fixture.get("__reorder_step")?.f_int64_value(&[0])?;
    assert!(reorder_step >= PROMPT);
    let prompt = tokens.f_narrow(1, 0, PROMPT)?;
    let (prefill, _) = model.prefill(&prompt)?;
    let mut worst = max_abs_diff(&prefill, &want.f_narrow(1, 0, PROMPT)?)?;
    let mut decoder = TorchDecoder::new(model);
    let prompts: Vec<Vec<u32>> = (0..prompt.size()[0])
        .map(|i| {
            Ok(Vec::<i64>::try_from(prompt.f_select(0, i)?)?
                .into_iter()
                .map(|t| t as u32)
                .collect())
        })
        .collect::<Res<_>>()?;
    let encoded = decoder.encode(&as_sources(&prompts))?;
    let mut state = decoder.init_state(&encoded, 1)?;
    // Step 0 returns the prefill's last position (the fed EOS is ignored).
    let lp = decoder.step(&vec![EOS; prompts.len()], &mut state)?;
    let column = |t: i64| -> Res<Tensor> { Ok(want.f_select(1, t)?) };
    let check = |lp: &seqforge_runtime::decoding::LogProbs, t: i64| -> Res<f64> {
        let mut worst = 0f64;
        for row in 0..lp.rows {
            let w: Vec<f32> = Vec::try_from(column(t)?.f_select(0, row as i64)?)?;
            worst = worst.max(max_abs_diff_slices(lp.row(row), &w));
        }
        Ok(worst)
    };
    worst = worst.max(check(&lp, PROMPT - 1)?);
    for t in PROMPT..tokens.size()[1] {
        if t == reorder_step {
            decoder.reorder(&mut state, &order)?;
        }
        let fed: Vec<u32> =
            Vec::<i64>::try_from(tokens.f_select(1, t)?)?.into_iter().map(|x| x as u32).collect();
        let lp = decoder.step(&fed, &mut state)?;
        worst = worst.max(check(&lp, t)?);
    }
    Ok(worst)
}

#[test]
fn outputs_losses_and_gradients_match_fairseq() -> TestResult {
    for name in ["shared", "adaptive", "adaptive_tied_noproj", "sinusoidal"] {
        let p = fairseq_parity(name)?;
        eprintln!("fairseq parity, {name}: {p:?}");
        assert!(p.forward <= TOL, "{name}: {p:?}");
        assert!(p.lprobs <= TOL, "{name}: {p:?}");
        assert!(p.loss <= TOL, "{name}: {p:?}");
        assert!(p.gradient <= TOL, "{name}: {p:?}");
        assert!(p.incremental <= TOL, "{name}: {p:?}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Names and tying.

#[test]
fn adaptive_parameters_have_fairseq_names_and_tying() -> TestResult {
    let vs = VarStore::new(Device::Cpu);
    let model = TransformerLm::new(&vs.root(), &adaptive())?;
    let tied = model.tied_parameters();
    let e = |i: usize, j: usize| format!("decoder.embed_tokens.embeddings.{i}.{j}.weight");
    let a = |s: &str| format!("decoder.adaptive_softmax.{s}");
    assert_eq!(
        tied,
        [
            (a("head.word_proj.weight"), e(0, 0)),
            (a("tail.0.0.weight"), e(1, 1)),
            (a("tail.0.2.weight"), e(1, 0)),
            (a("tail.1.0.weight"), e(2, 1)),
            (a("tail.1.2.weight"), e(2, 0)),
        ]
    );
    let sizes: std::collections::BTreeMap<String, Vec<i64>> =
        model.fairseq_state_dict().into_iter().map(|(n, t)| (n, t.size())).collect();
    assert_eq!(sizes[&e(1, 0)], [12, 4]);
    assert_eq!(sizes[&e(2, 1)], [16, 1]);
    assert_eq!(sizes[&a("head.class_proj.weight")], [2, 16]);
    // Band 0's padding row starts at zero; every band's row `pad` is zeroed as fairseq does.
    let band0 = vs.variables().remove(&e(0, 0)).ok_or("no band 0")?;
    let row = band0.f_select(0, PAD)?;
    assert_eq!(row.f_abs()?.f_sum(Kind::Float)?.f_double_value(&[])?, 0.0);
    // Untied: own head and tails.
    let (_, untied) = variants().remove(2);
    let vs = VarStore::new(Device::Cpu);
    let model = TransformerLm::new(&vs.root(), &untied)?;
    assert!(model.tied_parameters().is_empty());
    let names: Vec<String> = model.parameters().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"decoder.project_in_dim.weight".to_string()));
    assert!(names.contains(&"decoder.adaptive_softmax.head.weight".to_string()));
    assert!(names.contains(&"decoder.adaptive_softmax.tail.0.2.weight".to_string()));
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Incremental decoding.

#[test]
fn prefill_and_cached_steps_equal_the_full_forward() -> TestResult {
    for (name, config) in variants() {
        let (_, model) = build(&config)?;
        let _guard = tch::no_grad_guard();
        let mut rng = Tokens(7);
        let mut rows: Vec<Vec<u32>> = (0..3)
            .map(|_| std::iter::once(EOS).chain((0..3).map(|_| rng.next(40))).collect())
            .collect();
        let mut decoder = TorchDecoder::new(&model);
        let encoded = decoder.encode(&as_sources(&rows))?;
        let mut state = decoder.init_state(&encoded, 1)?;
        let mut cached = vec![decoder.step(&[EOS; 3], &mut state)?];
        for _ in 0..8 {
            let tokens: Vec<u32> = (0..3).map(|_| rng.next(40)).collect();
            for (r, &t) in rows.iter_mut().zip(&tokens) {
                r.push(t);
            }
            cached.push(decoder.step(&tokens, &mut state)?);
        }
        let names: BTreeSet<String> = state.tensors().keys().cloned().collect();
        let declared: BTreeSet<String> =
            config.decoder_state(KvCache::Append).tensors.into_iter().map(|t| t.name).collect();
        assert_eq!(names, declared, "{name}");
        let full = full_lprobs(&model, &rows)?;
        let mut worst = 0f64;
        for (k, step) in cached.iter().enumerate() {
            let want: Vec<f32> = Vec::try_from(full.f_select(1, 3 + k as i64)?.f_reshape([-1])?)?;
            worst = worst.max(max_abs_diff_slices(&step.data, &want));
        }
        let prompt = padded(&rows, false)?.f_narrow(1, 0, 4)?;
        let (prefill, cache) = model.prefill(&prompt)?;
        assert_eq!(cache.len(), 4);
        worst = worst.max(max_abs_diff(&prefill, &full.f_narrow(1, 0, 4)?)?);
        eprintln!("cached vs full, {name}: {worst:e}");
        assert!(worst <= TOL, "{name}: {worst}");
        // A padded prompt is refused.
        assert!(model.prefill(&padded(&[vec![EOS, 5], vec![EOS]], false)?).is_err());
    }
    Ok(())
}

#[test]
fn batching_and_padding_do_not_change_results() -> TestResult {
    for (name, config) in variants() {
        let (_, model) = build(&config)?;
        let mut rng = Tokens(3);
        let rows: Vec<Vec<u32>> = [4, 9, 6]
            .iter()
            .map(|&n| std::iter::once(EOS).chain((1..n).map(|_| rng.next(40))).collect())
            .collect();
        let batched = full_lprobs(&model, &rows)?;
        for (i, row) in rows.iter().enumerate() {
            let alone = full_lprobs(&model, std::slice::from_ref(row))?;
            let part = batched.f_select(0, i as i64)?.f_narrow(0, 0, row.len() as i64)?;
            let diff = max_abs_diff(&part, &alone.f_select(0, 0)?)?;
            assert!(diff <= TOL, "{name}, row {i}: {diff}");
        }
    }
    Ok(())
}

#[test]
fn dropout_only_in_train_mode() -> TestResult {
    for (_, config) in variants() {
        let (_, model) = build(&TransformerLmConfig { dropout: 0.3, ..config })?;
        check_dropout_only_in_train_mode(&model)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Criterion and training.

/// `(prev_output_tokens, target)` of four sequences an LM can memorise.
fn lm_batch() -> Res<(Tensor, Tensor)> {
    let mut rng = Tokens(11);
    let seqs: Vec<Vec<u32>> = [6, 4, 8, 5].iter().map(|&n| rng.sentence(n, 40)).collect();
    let prev: Vec<Vec<u32>> = seqs
        .iter()
        .map(|s| std::iter::once(EOS).chain(s[..s.len() - 1].iter().copied()).collect())
        .collect();
    Ok((padded(&prev, false)?, padded(&seqs, false)?))
}

#[test]
fn training_with_adaptive_loss_lowers_the_loss() -> TestResult {
    for (name, config) in variants() {
        let (vs, model) = build(&config)?;
        let ctx = CriterionContext::default();
        let criterion: Box<dyn Criterion> = if config.has_adaptive_softmax() {
            Box::new(AdaptiveLoss::new(&ctx))
        } else {
            Box::new(CrossEntropy::new(&ctx))
        };
        let (prev, target) = lm_batch()?;
        let loss = |train: bool| -> Res<(Tensor, u64)> {
            let out = model.forward(&prev, &prev, &prev, train)?;
            let r = criterion.compute_for(&model, &out, &target, PAD, train)?;
            Ok((r.loss, r.ntokens))
        };
        let before = tch::no_grad(|| loss(false))?.0.f_double_value(&[])?;
        let mut opt = tch::nn::Adam::default().build(&vs, 1e-2)?;
        for _ in 0..30 {
            let (l, n) = loss(true)?;
            opt.backward_step(&l.f_div_scalar(n as f64)?);
        }
        let after = tch::no_grad(|| loss(false))?.0.f_double_value(&[])?;
        eprintln!("{name}: training loss {before} → {after}");
        assert!(after < before * 0.7, "{name}: {before} → {after}");
    }
    Ok(())
}

#[test]
fn adaptive_loss_equals_cross_entropy_of_the_full_distribution() -> TestResult {
    // With no token at in-band id `pad` of a tail, the adaptive loss is the NLL of
    // get_log_prob's distribution.
    let (_, model) = build(&adaptive())?;
    let (prev, target) = lm_batch()?;
    let target = target
        .f_where_scalarother(&target.f_ne(8 + PAD)?.f_logical_and(&target.f_ne(20 + PAD)?)?, 4)?;
    let out = model.forward(&prev, &prev, &prev, false)?;
    let ctx = CriterionContext::default();
    let adaptive = AdaptiveLoss::new(&ctx).compute_for(&model, &out, &target, PAD, false)?;
    let ce = CrossEntropy::new(&ctx).compute_for(&model, &out, &target, PAD, false)?;
    assert!(
        (adaptive.nll_loss - ce.nll_loss).abs() < 1e-4,
        "{} vs {}",
        adaptive.nll_loss,
        ce.nll_loss
    );
    // Probabilities sum to one over the whole vocabulary.
    let p = model.get_normalized_probs(&out, false)?.f_sum_dim_intlist(-1, false, Kind::Float)?;
    assert!(max_abs_diff(&p, &p.f_ones_like()?)? < 1e-5);
    // adaptive_loss needs an adaptive softmax.
    let (_, plain) = build(&variants().remove(1).1)?;
    let out = plain.forward(&prev, &prev, &prev, false)?;
    let e = AdaptiveLoss::new(&ctx).compute_for(&plain, &out, &target, PAD, false);
    let msg = e.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(msg.contains("no adaptive softmax"), "{msg}");
    Ok(())
}

#[test]
fn bf16_and_fp16_train_and_decode() -> TestResult {
    let (vs32, model32) = build(&adaptive())?;
    let (prev, target) = lm_batch()?;
    let ctx = CriterionContext::default();
    let loss_of = |m: &TransformerLm| -> Res<f64> {
        let out = m.forward(&prev, &prev, &prev, false)?;
        Ok(AdaptiveLoss::new(&ctx).compute_for(m, &out, &target, PAD, false)?.nll_loss)
    };
    let want = tch::no_grad(|| loss_of(&model32))?;
    for kind in [Kind::BFloat16, Kind::Half] {
        let mut vs = VarStore::new(Device::Cpu);
        vs.set_kind(kind);
        let model = TransformerLm::new(&vs.root(), &adaptive())?;
        vs.copy(&vs32)?;
        let out = model.forward(&prev, &prev, &prev, true)?;
        AdaptiveLoss::new(&ctx).compute_for(&model, &out, &target, PAD, true)?.loss.backward();
        let grad = vs.variables()["decoder.embed_tokens.embeddings.0.0.weight"].grad();
        assert_eq!(grad.kind(), kind);
        let got = tch::no_grad(|| loss_of(&model))?;
        assert!((got - want).abs() / want < 0.02, "{kind:?}: {got} vs {want}");
        let mut decoder = TorchDecoder::new(&model);
        let encoded = decoder.encode(&[vec![5, 6, EOS], vec![7, 8, EOS]])?;
        let mut state = decoder.init_state(&encoded, 2)?;
        for _ in 0..3 {
            let lp = decoder.step(&[9; 4], &mut state)?;
            assert!(lp.data.iter().all(|x| x.is_finite()));
        }
        assert_eq!(state.get("self_key.0")?.kind(), kind);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Registration.

#[test]
fn flags_override_presets_as_fairseq() -> TestResult {
    let f = factory();
    let cmd = (f.augment_args)(clap::Command::new("t").no_binary_name(true));
    let m = cmd.try_get_matches_from([
        "--adaptive-input",
        "--adaptive-input-cutoff",
        "1000,5000",
        "--adaptive-softmax-cutoff",
        "1000,5000",
        "--tie-adaptive-weights",
        "--decoder-embed-dim",
        "256",
        "--activation-fn",
        "gelu",
    ])?;
    let preset = serde_json::to_value(preset("transformer_lm_big").ok_or("no preset")?)?;
    let v = (f.apply_args)(&m, preset)?;
    let c: TransformerLmConfig = serde_json::from_value(v)?;
    assert_eq!(c.adaptive_softmax_cutoff, Some(vec![1000, 5000]));
    assert!(c.adaptive_input && c.tie_adaptive_weights);
    assert_eq!((c.decoder_embed_dim, c.input_dim(), c.output_dim()), (256, 256, 256));
    assert_eq!(c.decoder_layers, 12);
    c.with_vocab(6000).validate()?;
    let vs = VarStore::new(Device::Cpu);
    let ctx =
        crate::train::model::ModelContext { src_vocab_size: 40, tgt_vocab_size: 48, pad_index: 1 };
    let tiny = serde_json::to_value(adaptive())?;
    let e = (f.build)(&vs.root(), &tiny, &ctx).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("one dictionary"), "{e}");
    let ctx = crate::train::model::ModelContext { tgt_vocab_size: 40, ..ctx };
    let model = (f.build)(&vs.root(), &tiny, &ctx)?;
    assert!(model.adaptive_softmax().is_some());
    assert_eq!(model.max_positions(), (64, 64));
    Ok(())
}

/// The sources a search is given for model inputs `[EOS, p₁, …]`: the prompts `[p₁, …, EOS]`
/// (the decoder feeds `[EOS] + prompt`, as the runtime does).
fn as_sources(inputs: &[Vec<u32>]) -> Vec<Vec<u32>> {
    inputs.iter().map(|r| r[1..].iter().copied().chain([EOS]).collect()).collect()
}

#[test]
fn beam_search_continues_the_prompt() -> TestResult {
    use seqforge_runtime::search::{GenerationOptions, generate};
    let (_, model) = build(&adaptive())?;
    let prompts = vec![vec![EOS, 5, 9, 7], vec![EOS, 13, 6, 30]];
    let options = GenerationOptions { beam: 3, nbest: 3, max_len_b: 6, ..Default::default() };
    let results = generate(&mut TorchDecoder::new(&model), &as_sources(&prompts), &options)?;
    let mut worst = 0f64;
    for (prompt, hypotheses) in prompts.iter().zip(&results) {
        assert_eq!(hypotheses.len(), 3);
        for h in hypotheses {
            let mut input = prompt.clone();
            input.extend_from_slice(&h.tokens[..h.tokens.len() - 1]);
            let full = full_lprobs(&model, &[input])?;
            for (t, (&token, &score)) in h.tokens.iter().zip(&h.positional_scores).enumerate() {
                let position = (prompt.len() - 1 + t) as i64;
                let want = full.f_double_value(&[0, position, i64::from(token)])?;
                worst = worst.max((f64::from(score) - want).abs());
            }
        }
    }
    eprintln!("beam positional scores vs full model: {worst:e}");
    assert!(worst <= 1e-4, "{worst}");
    Ok(())
}

/// The prompt scores the decoder hands the search (fairseq counts the prompt in a hypothesis's
/// score) are the full forward's log-probabilities of the prompt tokens, summed; an empty
/// prompt (EOS alone) scores 0 over 0 tokens.
#[test]
fn prompt_scores_sum_the_prompts_log_probabilities() -> TestResult {
    let (_vs, model) = build(&adaptive())?;
    let row: Vec<u32> = vec![EOS, 5, 17, 30, 9];
    let full = full_lprobs(&model, std::slice::from_ref(&row))?;
    let mut want = 0f64;
    for (j, &next) in row.iter().enumerate().skip(1) {
        want += full.f_double_value(&[0, (j - 1) as i64, i64::from(next)])?;
    }
    let mut decoder = TorchDecoder::new(&model);
    let encoded = decoder.encode(&as_sources(std::slice::from_ref(&row)))?;
    let got = decoder.prompt_scores(&encoded).ok_or("no prompt scores")?;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, row.len() - 1);
    assert!((f64::from(got[0].0) - want).abs() < 1e-4, "{} vs {want}", got[0].0);
    let encoded = decoder.encode(&[vec![EOS]])?;
    assert_eq!(decoder.prompt_scores(&encoded), Some(vec![(0.0, 0)]));
    Ok(())
}
