//! Tests of the schedulers: traces printed by fairseq 0.12.2's own schedulers, replayed here and
//! compared bit for bit, plus each schedule's defining values computed by hand, and exact
//! save/restore.
//!
//! A trace is a list of (call, argument, validation loss, fairseq's `optimizer.get_lr()` after
//! the call): `"u"` is `step_update(n)`, `"b"` is `step_begin_epoch(e)`, `"e"` is
//! `step(e, val_loss)`. They were made by building each fairseq scheduler over a dummy
//! `FairseqOptimizer` (torch SGD, `lr = cfg.lr[0]`) and calling it as fairseq's trainer does.

use anyhow::Result;
use clap::{Args, FromArgMatches};

use super::*;

/// (call, argument, validation loss, lr after the call)
type Op = (&'static str, u64, Option<f64>, f64);

include!("traces.in");

fn ctx(lr: &[f64], max_update: u64) -> ScheduleContext {
    ScheduleContext { lr: lr.to_vec(), max_update, maximize_best_checkpoint_metric: false }
}

/// Applies one trace call and returns the lr it returns.
fn apply(s: &mut dyn LrScheduler, (call, arg, val, _): Op) -> f64 {
    match call {
        "u" => s.step_update(arg),
        "b" => s.step_begin_epoch(arg),
        "e" => s.step_epoch(arg, val),
        other => panic!("unknown call {other}"),
    }
}

/// Replays `trace`, checking every returned and current lr bit for bit.
fn replay(s: &mut dyn LrScheduler, trace: &[Op], what: &str) {
    for (k, op) in trace.iter().enumerate() {
        let returned = apply(s, *op);
        let want = op.3;
        assert_eq!(returned.to_bits(), want.to_bits(), "{what} op {k} {op:?}: returned {returned}");
        assert_eq!(s.lr().to_bits(), want.to_bits(), "{what} op {k} {op:?}: lr() {}", s.lr());
    }
}

fn build<C: LrSchedulerConfig>(cfg: C, ctx: &ScheduleContext) -> Result<Box<dyn LrScheduler>> {
    Ok(cfg.build(ctx)?)
}

#[test]
fn inverse_sqrt_matches_fairseq() -> Result<()> {
    let cfg = InverseSqrtConfig { warmup_updates: 4000, warmup_init_lr: 1e-7 };
    replay(build(cfg, &ctx(&[5e-4], 0))?.as_mut(), INVERSE_SQRT, "inverse_sqrt");
    let cfg = InverseSqrtConfig { warmup_updates: 10, ..InverseSqrtConfig::default() };
    replay(build(cfg, &ctx(&[1e-3], 0))?.as_mut(), INVERSE_SQRT_DEFAULT_INIT, "inverse_sqrt 0");
    Ok(())
}

#[test]
fn inverse_sqrt_formula() -> Result<()> {
    let (lr, w) = (5e-4, 4000u64);
    let cfg = InverseSqrtConfig { warmup_updates: w, warmup_init_lr: 0.0 };
    let mut s = build(cfg, &ctx(&[lr], 0))?;
    assert_eq!(s.lr(), 0.0);
    // Linear ramp: lr * n / warmup.
    for n in [1u64, 1000, 2000, 3999] {
        let got = s.step_update(n);
        assert!((got - lr * n as f64 / w as f64).abs() < 1e-18, "warmup {n}: {got}");
    }
    // Decay: lr * sqrt(warmup) / sqrt(n); at n = 4 * warmup, half the peak.
    assert!((s.step_update(w) - lr).abs() < 1e-18);
    assert!((s.step_update(4 * w) - lr / 2.0).abs() < 1e-18);
    let decay_factor = lr * (w as f64).sqrt();
    assert!((s.step_update(123_456) - decay_factor / 123_456f64.sqrt()).abs() < 1e-18);
    Ok(())
}

#[test]
fn fixed_matches_fairseq() -> Result<()> {
    let cfg = FixedConfig { force_anneal: Some(3), lr_shrink: 0.5, warmup_updates: 4 };
    replay(build(cfg, &ctx(&[0.1, 0.05], 0))?.as_mut(), FIXED, "fixed");
    Ok(())
}

#[test]
fn polynomial_decay_matches_fairseq() -> Result<()> {
    let cfg = PolynomialDecayConfig {
        warmup_updates: 10,
        end_learning_rate: 1e-4,
        power: 2.0,
        total_num_update: Some(100.0),
        ..PolynomialDecayConfig::default()
    };
    replay(build(cfg, &ctx(&[0.01], 0))?.as_mut(), POLYNOMIAL, "polynomial");
    // total_num_update from --max-update; force_anneal keeps the current rate.
    let cfg = PolynomialDecayConfig { force_anneal: Some(2), ..PolynomialDecayConfig::default() };
    replay(build(cfg, &ctx(&[0.01, 0.02], 20))?.as_mut(), POLYNOMIAL_FORCE, "polynomial force");
    Ok(())
}

#[test]
fn polynomial_decay_formula() -> Result<()> {
    let cfg = PolynomialDecayConfig {
        warmup_updates: 10,
        end_learning_rate: 1e-4,
        power: 2.0,
        total_num_update: Some(110.0),
        ..PolynomialDecayConfig::default()
    };
    let mut s = build(cfg, &ctx(&[0.01], 0))?;
    assert_eq!(s.step_update(10), 0.01);
    // Halfway through the decay: (lr - end) * 0.5^2 + end.
    assert!((s.step_update(60) - ((0.01 - 1e-4) * 0.25 + 1e-4)).abs() < 1e-15);
    assert_eq!(s.step_update(110), 1e-4);
    assert_eq!(s.step_update(500), 1e-4);
    Ok(())
}

#[test]
fn cosine_matches_fairseq() -> Result<()> {
    let cfg = CosineConfig {
        warmup_updates: 10,
        warmup_init_lr: 0.0,
        min_lr: 0.1,
        t_mult: 2.0,
        lr_period_updates: 20.0,
        lr_shrink: 0.5,
        ..CosineConfig::default()
    };
    replay(build(cfg, &ctx(&[1.0], 0))?.as_mut(), COSINE_TMULT, "cosine t_mult 2");
    // Period from --max-update, no warmup.
    replay(
        build(CosineConfig::default(), &ctx(&[0.5], 50))?.as_mut(),
        COSINE_T1,
        "cosine t_mult 1",
    );
    Ok(())
}

#[test]
fn cosine_restarts_with_growing_periods() -> Result<()> {
    // Periods 20, 40, 80 (t_mult 2) start at updates 0, 20, 60; each restart's peak and floor
    // are shrunk by lr_shrink^i.
    let (max, min, shrink) = (1.0, 0.1, 0.5);
    let cfg = CosineConfig {
        min_lr: min,
        t_mult: 2.0,
        lr_period_updates: 20.0,
        lr_shrink: shrink,
        ..CosineConfig::default()
    };
    let mut s = build(cfg, &ctx(&[max], 0))?;
    let cos = |i: i32, t: f64, period: f64| {
        let (lo, hi) = (min * shrink.powi(i), max * shrink.powi(i));
        lo + 0.5 * (hi - lo) * (1.0 + (std::f64::consts::PI * t / period).cos())
    };
    for (n, i, t, period) in [
        (0u64, 0, 0.0, 20.0),
        (10, 0, 10.0, 20.0),
        (20, 1, 0.0, 40.0),
        (40, 1, 20.0, 40.0),
        (60, 2, 0.0, 80.0),
        (100, 2, 40.0, 80.0),
    ] {
        let got = s.step_update(n);
        assert!((got - cos(i, t, period)).abs() < 1e-12, "n={n}: {got} vs {}", cos(i, t, period));
    }
    // Each restart begins at its shrunk peak; the middle of the first period is the midpoint.
    assert!((s.step_update(20) - 0.5).abs() < 1e-12);
    assert!((s.step_update(60) - 0.25).abs() < 1e-12);
    assert!((s.step_update(10) - 0.55).abs() < 1e-12);
    Ok(())
}

#[test]
fn reduce_lr_on_plateau_matches_fairseq() -> Result<()> {
    let cfg = ReduceLrOnPlateauConfig {
        lr_shrink: 0.5,
        lr_threshold: 1e-4,
        lr_patience: 1,
        warmup_updates: 5,
        ..ReduceLrOnPlateauConfig::default()
    };
    replay(build(cfg, &ctx(&[1.0], 0))?.as_mut(), PLATEAU, "plateau");
    let mut c = ctx(&[1.0], 0);
    c.maximize_best_checkpoint_metric = true;
    let cfg = ReduceLrOnPlateauConfig::default();
    replay(build(cfg, &c)?.as_mut(), PLATEAU_MAX, "plateau max");
    Ok(())
}

#[test]
fn reduce_lr_on_plateau_shrinks_after_patience() -> Result<()> {
    let cfg = ReduceLrOnPlateauConfig { lr_shrink: 0.5, lr_patience: 2, ..Default::default() };
    let mut s = build(cfg, &ctx(&[1.0], 0))?;
    assert_eq!(s.step_epoch(1, Some(3.0)), 1.0);
    assert_eq!(s.best(), Some(3.0));
    // Within the relative threshold (1e-4) is no improvement: 3 bad epochs > patience 2.
    assert_eq!(s.step_epoch(2, Some(2.9999)), 1.0);
    assert_eq!(s.step_epoch(3, Some(3.5)), 1.0);
    assert_eq!(s.step_epoch(4, Some(3.0)), 0.5);
    assert_eq!(s.step_update(100), 0.5);
    // A real improvement resets the count.
    assert_eq!(s.step_epoch(5, Some(2.0)), 0.5);
    assert_eq!(s.best(), Some(2.0));
    assert_eq!(s.step_epoch(6, Some(2.5)), 0.5);
    assert_eq!(s.step_epoch(7, Some(2.5)), 0.5);
    assert_eq!(s.step_epoch(8, Some(2.5)), 0.25);
    // Epochs without validation change nothing.
    assert_eq!(s.step_epoch(9, None), 0.25);
    Ok(())
}

#[test]
fn best_is_tracked_like_fairseq() -> Result<()> {
    let mut s = build(FixedConfig::default(), &ctx(&[0.1], 0))?;
    assert_eq!(s.best(), None);
    s.step_epoch(1, Some(2.0));
    s.step_epoch(2, Some(3.0));
    s.step_epoch(3, None);
    assert_eq!(s.best(), Some(2.0));
    s.step_epoch(4, Some(1.5));
    assert_eq!(s.best(), Some(1.5));
    Ok(())
}

/// Builds a fresh scheduler.
type Maker = Box<dyn Fn() -> Result<Box<dyn LrScheduler>>>;

/// Every trace with a maker of its scheduler.
fn all_traces() -> Vec<(Maker, &'static [Op])> {
    vec![
        (
            Box::new(|| {
                build(
                    InverseSqrtConfig { warmup_updates: 4000, warmup_init_lr: 1e-7 },
                    &ctx(&[5e-4], 0),
                )
            }),
            INVERSE_SQRT,
        ),
        (
            Box::new(|| {
                build(
                    FixedConfig { force_anneal: Some(3), lr_shrink: 0.5, warmup_updates: 4 },
                    &ctx(&[0.1, 0.05], 0),
                )
            }),
            FIXED,
        ),
        (
            Box::new(|| {
                build(
                    PolynomialDecayConfig { force_anneal: Some(2), ..Default::default() },
                    &ctx(&[0.01, 0.02], 20),
                )
            }),
            POLYNOMIAL_FORCE,
        ),
        (
            Box::new(|| {
                build(
                    CosineConfig {
                        warmup_updates: 10,
                        warmup_init_lr: 0.0,
                        min_lr: 0.1,
                        t_mult: 2.0,
                        lr_period_updates: 20.0,
                        lr_shrink: 0.5,
                        ..CosineConfig::default()
                    },
                    &ctx(&[1.0], 0),
                )
            }),
            COSINE_TMULT,
        ),
        (
            Box::new(|| {
                build(
                    ReduceLrOnPlateauConfig {
                        lr_shrink: 0.5,
                        lr_threshold: 1e-4,
                        lr_patience: 1,
                        warmup_updates: 5,
                        ..Default::default()
                    },
                    &ctx(&[1.0], 0),
                )
            }),
            PLATEAU,
        ),
    ]
}

#[test]
fn restored_state_resumes_bit_for_bit() -> Result<()> {
    for (make, trace) in all_traces() {
        let mut first = make()?;
        let name = first.name();
        for cut in 1..trace.len() {
            let mut a = make()?;
            for op in &trace[..cut] {
                apply(a.as_mut(), *op);
            }
            // Through text, as in a checkpoint.
            let text = serde_json::to_string(&a.state()?)?;
            let mut b = make()?;
            b.load_state(&serde_json::from_str(&text)?)?;
            assert_eq!(b.lr().to_bits(), a.lr().to_bits(), "{name} cut {cut}");
            assert_eq!(b.best(), a.best(), "{name} cut {cut}");
            replay(b.as_mut(), &trace[cut..], &format!("{name} resumed at {cut}"));
        }
        replay(first.as_mut(), trace, name);
    }
    Ok(())
}

#[test]
fn state_floats_are_exact_strings() -> Result<()> {
    let mut s = build(FixedConfig::default(), &ctx(&[0.1], 0))?;
    s.step_epoch(1, Some(0.1 + 0.2));
    let state = s.state()?;
    assert_eq!(state["lr_now"], serde_json::json!("0.1"));
    assert_eq!(state["best"], serde_json::json!("0.30000000000000004"));
    // Numbers are accepted too; unknown fields and other schedulers' states are not.
    s.load_state(
        &serde_json::json!({"epoch_lr": 0.2, "warmup_factor": 1.0, "lr_now": 0.2, "best": null}),
    )?;
    assert_eq!(s.lr(), 0.2);
    assert!(s.load_state(&serde_json::json!({"lr": "0.1", "best": null})).is_err());
    let plateau = build(ReduceLrOnPlateauConfig::default(), &ctx(&[0.1], 0))?;
    assert_eq!(plateau.state()?["best"], serde_json::json!("inf"));
    Ok(())
}

/// Parses `args` with only `C`'s flags.
fn parse<C: Args + FromArgMatches>(args: &[&str]) -> Result<C> {
    let cmd = C::augment_args(clap::Command::new("t").no_binary_name(true));
    Ok(C::from_arg_matches(&cmd.try_get_matches_from(args)?)?)
}

#[test]
fn flags_defaults_and_factories() -> Result<()> {
    assert_eq!(parse::<InverseSqrtConfig>(&[])?, InverseSqrtConfig::default());
    assert_eq!(parse::<FixedConfig>(&[])?, FixedConfig::default());
    assert_eq!(parse::<PolynomialDecayConfig>(&[])?, PolynomialDecayConfig::default());
    assert_eq!(parse::<CosineConfig>(&[])?, CosineConfig::default());
    assert_eq!(parse::<ReduceLrOnPlateauConfig>(&[])?, ReduceLrOnPlateauConfig::default());
    let c: CosineConfig = parse(&[
        "--warmup-init-lr",
        "-1",
        "--lr-period-updates",
        "-1",
        "--t-mult",
        "2",
        "--max-lr",
        "0.5",
    ])?;
    assert_eq!((c.t_mult, c.max_lr, c.warmup_init_lr), (2.0, Some(0.5), -1.0));
    let i: InverseSqrtConfig = parse(&["--warmup-updates", "8000", "--warmup-init-lr", "1e-07"])?;
    assert_eq!(i, InverseSqrtConfig { warmup_updates: 8000, warmup_init_lr: 1e-7 });

    let names: Vec<&str> = builtin_lr_schedulers().iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        ["inverse_sqrt", "fixed", "polynomial_decay", "cosine", "reduce_lr_on_plateau"]
    );
    for (name, f) in builtin_lr_schedulers() {
        let cmd = (f.augment_args)(clap::Command::new("t").no_binary_name(true));
        let json = (f.config_from_matches)(&cmd.try_get_matches_from(Vec::<String>::new())?)?;
        assert_eq!(json, (f.default_config)()?, "{name}");
        let s = (f.build)(&json, &ctx(&[0.1], 1000))?;
        assert_eq!(s.name(), name);
        assert!((f.build)(&serde_json::json!({"typo": 1}), &ctx(&[0.1], 1000)).is_err());
    }
    Ok(())
}

#[test]
fn fairseq_config_errors() {
    let two = ctx(&[0.1, 0.2], 1000);
    assert!(InverseSqrtConfig::default().build(&two).is_err());
    assert!(CosineConfig::default().build(&two).is_err());
    assert!(ReduceLrOnPlateauConfig::default().build(&two).is_err());
    assert!(FixedConfig::default().build(&two).is_ok());
    assert!(FixedConfig::default().build(&ctx(&[], 0)).is_err());
    // fairseq divides by warmup_updates.
    assert!(
        InverseSqrtConfig { warmup_updates: 0, ..Default::default() }
            .build(&ctx(&[0.1], 0))
            .is_err()
    );
    // Needs --total-num-update or --max-update; cosine needs a period.
    assert!(PolynomialDecayConfig::default().build(&ctx(&[0.1], 0)).is_err());
    assert!(CosineConfig::default().build(&ctx(&[0.1], 0)).is_err());
    // max_lr must exceed min_lr.
    assert!(CosineConfig { min_lr: 0.2, ..Default::default() }.build(&ctx(&[0.1], 100)).is_err());
    assert!(
        ReduceLrOnPlateauConfig { lr_shrink: 1.0, ..Default::default() }
            .build(&ctx(&[0.1], 0))
            .is_err()
    );
}
