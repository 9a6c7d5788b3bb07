//! Tests of the criteria against hand computations and numbers printed by fairseq 0.12.2
//! (`label_smoothed_nll_loss` and `F.nll_loss` on the same inputs, float32).

use anyhow::Result;
use clap::{Args, FromArgMatches};
use tch::{Device, Kind, Tensor};

use super::*;

const PAD: i64 = 1;

/// Logits of a 1×2×4 batch.
const LOGITS: [[f64; 4]; 2] = [[1.0, 2.0, 0.5, -1.0], [0.0, 0.3, -0.2, 1.5]];

/// log_softmax in f64.
fn log_softmax(row: &[f64; 4]) -> [f64; 4] {
    let lse = row.iter().map(|x| x.exp()).sum::<f64>().ln();
    row.map(|x| x - lse)
}

/// The batch as (logits requiring grad, fp32 lprobs [1, 2, 4]).
fn batch() -> Result<(Tensor, Tensor)> {
    let flat: Vec<f32> = LOGITS.iter().flatten().map(|&x| x as f32).collect();
    let logits = Tensor::f_from_slice(&flat)?.f_reshape([1, 2, 4])?.set_requires_grad(true);
    let lprobs = logits.f_log_softmax(-1, Kind::Float)?;
    Ok((logits, lprobs))
}

fn target(t: [i64; 2]) -> Result<Tensor> {
    Ok(Tensor::f_from_slice(&t)?.f_reshape([1, 2])?)
}

fn loss_value(out: &CriterionOutput) -> Result<f64> {
    Ok(out.loss.f_detach()?.f_double_value(&[])?)
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + b.abs())
}

fn smoothed(eps: f64, cfg: LabelSmoothedCrossEntropyConfig) -> Result<LabelSmoothedCrossEntropy> {
    Ok(LabelSmoothedCrossEntropy::new(
        LabelSmoothedCrossEntropyConfig { label_smoothing: eps, ..cfg },
        &CriterionContext::default(),
    )?)
}

#[test]
fn label_smoothed_loss_by_hand_with_one_pad() -> Result<()> {
    // Target [2, <pad>]: only the first position counts.
    let (_, lprobs) = batch()?;
    let out = smoothed(0.1, Default::default())?.compute(&lprobs, &target([2, PAD])?, PAD)?;
    let lp = log_softmax(&LOGITS[0]);
    let nll = -lp[2];
    let smooth = -lp.iter().sum::<f64>();
    let (eps, eps_i) = (0.1, 0.1 / 3.0);
    let want = (1.0 - eps - eps_i) * nll + eps_i * smooth;
    assert!(close(loss_value(&out)?, want, 1e-6), "{} vs {want}", loss_value(&out)?);
    assert!(close(out.nll_loss, nll, 1e-6));
    // fairseq: label_smoothed_nll_loss(lprobs, target, 0.1, ignore_index=1)
    assert!(close(loss_value(&out)?, 1.9785152673721313, 1e-7));
    assert!(close(out.nll_loss, 1.995181918144226, 1e-7));
    assert_eq!((out.ntokens, out.nsentences, out.sample_size), (1, 1, 1));
    assert_eq!((out.n_correct, out.total), (None, None));
    // The same weights written as a smoothed target distribution: 1 - eps on the target,
    // eps / (V - 1) on each other class.
    let q: Vec<f64> = (0..4).map(|v| if v == 2 { 1.0 - eps } else { eps_i }).collect();
    let cross: f64 = -(0..4).map(|v| q[v] * lp[v]).sum::<f64>();
    assert!(close(want, cross, 1e-12));
    Ok(())
}

#[test]
fn label_smoothed_loss_without_pad_and_cross_entropy() -> Result<()> {
    let (_, lprobs) = batch()?;
    let t = target([2, 3])?;
    let out = smoothed(0.1, Default::default())?.compute(&lprobs, &t, PAD)?;
    // fairseq: label_smoothed_nll_loss(..., 0.1, ignore_index=1) and F.nll_loss(..., sum)
    assert!(close(loss_value(&out)?, 2.659924030303955, 1e-7));
    assert!(close(out.nll_loss, 2.529923915863037, 1e-7));
    assert_eq!((out.ntokens, out.sample_size), (2, 2));
    let ce = CrossEntropy::new(&CriterionContext::default()).compute(&lprobs, &t, PAD)?;
    assert!(close(loss_value(&ce)?, 2.529923915863037, 1e-7));
    assert_eq!(ce.nll_loss, loss_value(&ce)?);
    // Without smoothing the smoothed criterion is cross entropy.
    let plain = smoothed(0.0, Default::default())?.compute(&lprobs, &t, PAD)?;
    assert!(close(loss_value(&plain)?, loss_value(&ce)?, 1e-7));
    assert_eq!(plain.nll_loss.to_bits(), loss_value(&plain)?.to_bits());
    // Cross entropy by hand, with a pad.
    let ce = CrossEntropy::new(&CriterionContext::default()).compute(
        &lprobs,
        &target([2, PAD])?,
        PAD,
    )?;
    assert!(close(loss_value(&ce)?, -log_softmax(&LOGITS[0])[2], 1e-6));
    assert_eq!(ce.ntokens, 1);
    Ok(())
}

#[test]
fn gradients_are_softmax_minus_target_on_real_tokens() -> Result<()> {
    let (logits, lprobs) = batch()?;
    let out = CrossEntropy::new(&CriterionContext::default()).compute(
        &lprobs,
        &target([2, PAD])?,
        PAD,
    )?;
    out.loss.f_backward()?;
    let g = Vec::<f64>::try_from(&logits.f_grad()?.f_to_kind(Kind::Double)?.f_reshape([-1])?)?;
    let lp = log_softmax(&LOGITS[0]);
    for v in 0..4 {
        let want = lp[v].exp() - if v == 2 { 1.0 } else { 0.0 };
        assert!(close(g[v], want, 1e-6), "grad[{v}] = {} vs {want}", g[v]);
    }
    assert_eq!(&g[4..], &[0.0; 4], "the padded position gets no gradient");
    Ok(())
}

#[test]
fn prefix_and_accuracy() -> Result<()> {
    let (_, lprobs) = batch()?;
    let t = target([2, 3])?;
    let cfg = LabelSmoothedCrossEntropyConfig { report_accuracy: true, ..Default::default() };
    let out = smoothed(0.1, cfg.clone())?.compute(&lprobs, &t, PAD)?;
    // argmax of row 0 is 1 (target 2: wrong), of row 1 is 3 (target 3: right).
    assert_eq!((out.n_correct, out.total), (Some(1), Some(2)));
    let log = out.logging_output()?;
    assert_eq!(log.metrics().accuracy, Some(50.0));
    // Skipping the first token: only row 1 is scored, but ntokens still counts both.
    let cfg = LabelSmoothedCrossEntropyConfig { ignore_prefix_size: 1, ..cfg };
    let out = smoothed(0.1, cfg)?.compute(&lprobs, &t, PAD)?;
    let lp = log_softmax(&LOGITS[1]);
    let want = (1.0 - 0.1 - 0.1 / 3.0) * -lp[3] + 0.1 / 3.0 * -lp.iter().sum::<f64>();
    assert!(close(loss_value(&out)?, want, 1e-6));
    assert!(close(out.nll_loss, -lp[3], 1e-6));
    assert_eq!((out.ntokens, out.n_correct, out.total), (2, Some(1), Some(1)));
    Ok(())
}

#[test]
fn sentence_avg_sets_sample_size() -> Result<()> {
    let (_, lprobs) = batch()?;
    let ctx = CriterionContext { sentence_avg: true };
    let out = CrossEntropy::new(&ctx).compute(&lprobs, &target([2, 3])?, PAD)?;
    assert_eq!((out.ntokens, out.nsentences, out.sample_size), (2, 1, 1));
    Ok(())
}

#[test]
fn bad_inputs_are_refused() -> Result<()> {
    let (_, lprobs) = batch()?;
    let ce = CrossEntropy::new(&CriterionContext::default());
    let flat = Tensor::f_from_slice(&[2i64, 3])?;
    assert!(ce.compute(&lprobs, &flat, PAD).is_err());
    let as_float = target([2, 3])?.f_to_kind(Kind::Float)?;
    assert!(ce.compute(&lprobs, &as_float, PAD).is_err());
    let one_class = Tensor::f_zeros([1, 2, 1], (Kind::Float, Device::Cpu))?;
    let ls = smoothed(0.1, Default::default())?;
    assert!(
        ls.compute(&one_class, &Tensor::f_zeros([1, 2], (Kind::Int64, Device::Cpu))?, PAD).is_err()
    );
    assert!(smoothed(1.0, Default::default()).is_err());
    // Half-precision log-probabilities are upcast.
    let half = lprobs.f_to_kind(Kind::Half)?;
    assert_eq!(ce.compute(&half, &target([2, 3])?, PAD)?.loss.kind(), Kind::Float);
    Ok(())
}

#[test]
fn metrics_are_base_2_per_token() -> Result<()> {
    let a = LoggingOutput {
        loss: 6.0,
        nll_loss: 5.0,
        ntokens: 3,
        nsentences: 1,
        sample_size: 3,
        ..Default::default()
    };
    let b = LoggingOutput {
        loss: 4.0,
        nll_loss: 3.0,
        ntokens: 1,
        nsentences: 1,
        sample_size: 1,
        ..Default::default()
    };
    let sum: LoggingOutput = [a, b].into_iter().sum();
    assert_eq!((sum.loss, sum.nll_loss, sum.ntokens, sum.sample_size), (10.0, 8.0, 4, 4));
    let m = sum.metrics();
    let ln2 = std::f64::consts::LN_2;
    assert!(close(m.loss, 10.0 / 4.0 / ln2, 1e-15));
    assert!(close(m.nll_loss, 2.0 / ln2, 1e-15));
    // 2^(nats / ln 2) = e^nats.
    assert!(close(m.ppl, 2f64.exp(), 1e-12));
    assert_eq!(m.accuracy, None);
    let r = m.rounded();
    // Python: round(3.6067376022224087, 3), round(2.8853900817779268, 3), round(7.38905609893065, 2)
    assert_eq!((r.loss, r.nll_loss, r.ppl), (3.607, 2.885, 7.39));
    assert_eq!(safe_round(0.125, 2), 0.12, "ties to even, as Python's round");
    assert_eq!(perplexity(1e6), f64::INFINITY);
    // With --sentence-avg the loss is per sentence, nll_loss still per token.
    let s = LoggingOutput { sample_size: 2, ..sum }.metrics();
    assert!(close(s.loss, 10.0 / 2.0 / ln2, 1e-15));
    assert!(close(s.nll_loss, 2.0 / ln2, 1e-15));
    Ok(())
}

/// Parses `args` with only `C`'s flags.
fn parse<C: Args + FromArgMatches>(args: &[&str]) -> Result<C> {
    let cmd = C::augment_args(clap::Command::new("t").no_binary_name(true));
    Ok(C::from_arg_matches(&cmd.try_get_matches_from(args)?)?)
}

#[test]
fn flags_and_factories() -> Result<()> {
    assert_eq!(parse::<CrossEntropyConfig>(&[])?, CrossEntropyConfig::default());
    assert_eq!(
        parse::<LabelSmoothedCrossEntropyConfig>(&[])?,
        LabelSmoothedCrossEntropyConfig::default()
    );
    let c: LabelSmoothedCrossEntropyConfig =
        parse(&["--label-smoothing", "0.1", "--report-accuracy", "--ignore-prefix-size", "1"])?;
    assert_eq!(
        c,
        LabelSmoothedCrossEntropyConfig {
            label_smoothing: 0.1,
            report_accuracy: true,
            ignore_prefix_size: 1
        }
    );
    let names: Vec<&str> = builtin_criterions().iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["cross_entropy", "label_smoothed_cross_entropy", "adaptive_loss"]);
    let ctx = CriterionContext::default();
    for (name, f) in builtin_criterions() {
        let cmd = (f.augment_args)(clap::Command::new("t").no_binary_name(true));
        let json = (f.config_from_matches)(&cmd.try_get_matches_from(Vec::<String>::new())?)?;
        assert_eq!(json, (f.default_config)()?, "{name}");
        assert_eq!((f.build)(&json, &ctx)?.name(), name);
        assert!((f.build)(&serde_json::json!({"typo": 1}), &ctx).is_err());
    }
    let ls = CriterionFactory::of::<LabelSmoothedCrossEntropyConfig>();
    let crit = (ls.build)(&serde_json::json!({"label_smoothing": 0.1}), &ctx)?;
    let (_, lprobs) = batch()?;
    assert!(close(
        loss_value(&crit.compute(&lprobs, &target([2, PAD])?, PAD)?)?,
        1.9785152673721313,
        1e-7
    ));
    Ok(())
}
