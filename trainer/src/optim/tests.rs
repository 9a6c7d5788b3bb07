//! Tests of the optimizers: each update rule against its closed-form recurrence computed here
//! in f64, against numbers printed by fairseq 0.12.2's own classes (torch 2.x, CPU, float32),
//! against tch's `nn` optimizers where the maths coincide, and exact save/restore.
//!
//! The fairseq numbers come from `fairseq.optim.adam.Adam`, `fairseq.optim.nag.NAG`,
//! `torch.optim.SGD` and `fairseq.optim.adafactor.Adafactor` on a float32 parameter, stepping with
//! the gradients below and printing `p.tolist()` after each step.

#![allow(clippy::needless_range_loop)] // index loops read like the formulas

use anyhow::Result;
use clap::{Args, FromArgMatches};
use tch::{Device, Kind, Tensor, nn};

use super::*;

/// Gradients of the 2-element tests, one row per step.
const G1: [[f32; 2]; 3] = [[0.1, -0.2], [0.3, 0.05], [-0.4, 0.6]];
/// The 2-element parameter's start.
const P1: [f32; 2] = [1.0, -2.0];
/// The 2×3 parameter's start.
const P2: [[f32; 3]; 2] = [[0.5, -1.0, 2.0], [0.25, 1.5, -0.75]];
/// Gradients of the 2×3 tests, one matrix per step.
const G2: [[[f32; 3]; 2]; 3] = [
    [[0.1, -0.2, 0.3], [0.05, 0.4, -0.1]],
    [[-0.3, 0.1, 0.2], [0.6, -0.05, 0.15]],
    [[0.2, 0.2, -0.4], [0.1, -0.3, 0.5]],
];

/// A float32 leaf parameter.
fn param(values: &[f32], shape: &[i64]) -> Result<Tensor> {
    Ok(Tensor::f_from_slice(values)?.f_reshape(shape)?.set_requires_grad(true))
}

/// Makes `p.grad()` exactly `g` (zeroing what was there, then backward of `sum(p * g)`).
fn set_grad(p: &mut Tensor, g: &[f32]) -> Result<()> {
    p.zero_grad();
    let g = Tensor::f_from_slice(g)?.f_reshape(p.size())?;
    p.f_mul(&g)?.f_sum(None::<Kind>)?.f_backward()?;
    Ok(())
}

/// The values of a tensor, flattened, as f64.
fn values(t: &Tensor) -> Result<Vec<f64>> {
    let t = t.f_detach()?.f_to_kind(Kind::Double)?.f_reshape([-1])?;
    Ok(Vec::<f64>::try_from(&t)?)
}

fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: got {g}, want {w} (tol {tol})"
        );
    }
}

/// Runs `opt` on the 2-element parameter with the `G1` gradients and learning rates `lrs`;
/// returns the parameter after each step.
fn run_vec(opt: &mut dyn Optimizer, lrs: &[f64]) -> Result<Vec<Vec<f64>>> {
    let mut p = param(&P1, &[2])?;
    let mut out = Vec::new();
    for (g, lr) in G1.iter().zip(lrs) {
        set_grad(&mut p, g)?;
        opt.step(&[("w".to_owned(), p.shallow_clone())], *lr)?;
        out.push(values(&p)?);
    }
    Ok(out)
}

/// Runs `opt` on the 2×3 parameter with the `G2` gradients at learning rate `lr`.
fn run_mat(opt: &mut dyn Optimizer, lr: f64) -> Result<Vec<Vec<f64>>> {
    let flat: Vec<f32> = P2.iter().flatten().copied().collect();
    let mut p = param(&flat, &[2, 3])?;
    let mut out = Vec::new();
    for g in &G2 {
        let g: Vec<f32> = g.iter().flatten().copied().collect();
        set_grad(&mut p, &g)?;
        opt.step(&[("w".to_owned(), p.shallow_clone())], lr)?;
        out.push(values(&p)?);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Flags, JSON and factories.

#[test]
fn float_pair_parses_like_python_tuples() -> Result<()> {
    for text in ["(0.9, 0.98)", "[0.9,0.98]", " 0.9 , 0.98 ", "(0.9, 0.98,)"] {
        assert_eq!(text.parse::<FloatPair>()?, FloatPair(0.9, 0.98), "{text}");
    }
    assert_eq!("(1e-30, 1e-3)".parse::<FloatPair>()?, FloatPair(1e-30, 1e-3));
    for bad in ["(0.9)", "(0.9, 0.98, 0.99)", "(a, b)", ""] {
        assert!(bad.parse::<FloatPair>().is_err(), "{bad}");
    }
    let json = serde_json::to_value(FloatPair(0.9, 0.98))?;
    assert_eq!(json, serde_json::json!("(0.9, 0.98)"));
    assert_eq!(serde_json::from_value::<FloatPair>(json)?, FloatPair(0.9, 0.98));
    assert_eq!(
        serde_json::from_value::<FloatPair>(serde_json::json!([0.9, 0.98]))?,
        FloatPair(0.9, 0.98)
    );
    Ok(())
}

/// Parses `args` with only `C`'s flags.
fn parse<C: Args + FromArgMatches>(args: &[&str]) -> Result<C> {
    let cmd = C::augment_args(clap::Command::new("t").no_binary_name(true));
    Ok(C::from_arg_matches(&cmd.try_get_matches_from(args)?)?)
}

#[test]
fn defaults_are_fairseqs_and_match_the_flags() -> Result<()> {
    assert_eq!(parse::<AdamConfig>(&[])?, AdamConfig::default());
    assert_eq!(parse::<NagConfig>(&[])?, NagConfig::default());
    assert_eq!(parse::<SgdConfig>(&[])?, SgdConfig::default());
    assert_eq!(parse::<AdafactorConfig>(&[])?, AdafactorConfig::default());
    assert_eq!(AdamConfig::default().adam_betas, FloatPair(0.9, 0.999));
    assert_eq!(NagConfig::default().momentum, 0.99);
    let adam: AdamConfig =
        parse(&["--adam-betas", "(0.9, 0.98)", "--adam-eps", "1e-9", "--wd", "0.01"])?;
    assert_eq!(
        adam,
        AdamConfig {
            adam_betas: FloatPair(0.9, 0.98),
            adam_eps: 1e-9,
            weight_decay: 0.01,
            amsgrad: false
        }
    );
    let af: AdafactorConfig = parse(&[
        "--adafactor-eps",
        "(1e-30, 1e-3)",
        "--decay-rate",
        "-0.5",
        "--beta1",
        "0.9",
        "--scale-parameter",
        "--relative-step",
        "--warmup-init",
    ])?;
    assert_eq!(af.decay_rate, -0.5);
    assert_eq!(af.beta1, Some(0.9));
    assert!(af.scale_parameter && af.relative_step && af.warmup_init);
    assert!(parse::<AdamConfig>(&["--adam-betas", "0.9"]).is_err());
    Ok(())
}

#[test]
fn factories_build_from_flags_and_json() -> Result<()> {
    let names: Vec<&str> = builtin_optimizers().iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["adam", "nag", "sgd", "adafactor"]);
    for (name, f) in builtin_optimizers() {
        let cmd = (f.augment_args)(clap::Command::new("t").no_binary_name(true));
        let matches = cmd.try_get_matches_from(Vec::<String>::new())?;
        let json = (f.config_from_matches)(&matches)?;
        assert_eq!(json, (f.default_config)()?, "{name}");
        assert_eq!((f.build)(&json)?.name(), name);
        // Missing fields take the defaults; unknown ones are refused.
        assert_eq!((f.build)(&serde_json::json!({}))?.name(), name);
        assert!((f.build)(&serde_json::json!({"no_such_flag": 1})).is_err());
    }
    let adam = OptimizerFactory::of::<AdamConfig>();
    let json = serde_json::json!({"adam_betas": "(0.9, 0.98)", "weight_decay": 0.0001});
    assert_eq!((adam.build)(&json)?.name(), "adam");
    assert!((adam.build)(&serde_json::json!({"adam_betas": "(1.5, 0.98)"})).is_err());
    let af = OptimizerFactory::of::<AdafactorConfig>();
    assert!((af.build)(&serde_json::json!({"warmup_init": true})).is_err());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Adam.

/// fairseq's Adam in f64 on one parameter: returns the parameter after each step.
fn adam_reference(
    p0: &[f64],
    grads: &[Vec<f64>],
    lr: f64,
    (b1, b2): (f64, f64),
    eps: f64,
    wd: f64,
    amsgrad: bool,
) -> Vec<Vec<f64>> {
    let n = p0.len();
    let mut p = p0.to_vec();
    let (mut m, mut v, mut vmax) = (vec![0.0f64; n], vec![0.0f64; n], vec![0.0f64; n]);
    let mut out = Vec::new();
    for (t, g) in grads.iter().enumerate() {
        let t = (t + 1) as i32;
        let step_size = lr * (1.0 - b2.powi(t)).sqrt() / (1.0 - b1.powi(t));
        for i in 0..n {
            m[i] = b1 * m[i] + (1.0 - b1) * g[i];
            v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
            vmax[i] = vmax[i].max(v[i]);
            let denom = if amsgrad { vmax[i] } else { v[i] }.sqrt() + eps;
            p[i] -= wd * lr * p[i];
            p[i] -= step_size * m[i] / denom;
        }
        out.push(p.clone());
    }
    out
}

fn g1_f64() -> Vec<Vec<f64>> {
    G1.iter().map(|g| g.iter().map(|&x| f64::from(x)).collect()).collect()
}

#[test]
fn adam_matches_its_recurrence_and_fairseq() -> Result<()> {
    let cfg = AdamConfig {
        adam_betas: FloatPair(0.9, 0.98),
        adam_eps: 1e-8,
        weight_decay: 0.01,
        amsgrad: false,
    };
    let got = run_vec(&mut Adam::new(cfg)?, &[0.01; 3])?;
    let p0: Vec<f64> = P1.iter().map(|&x| f64::from(x)).collect();
    let want = adam_reference(&p0, &g1_f64(), 0.01, (0.9, 0.98), 1e-8, 0.01, false);
    for (s, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_close(g, w, 1e-6, &format!("adam step {s}"));
    }
    // fairseq.optim.adam.Adam(lr=0.01, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.01)
    let fairseq = [
        [0.9898999929428101, -1.989799976348877],
        [0.980658233165741, -1.9848862886428833],
        [0.9811708331108093, -1.9895148277282715],
    ];
    for (s, (g, w)) in got.iter().zip(&fairseq).enumerate() {
        assert_close(g, w, 2e-7, &format!("adam vs fairseq, step {s}"));
    }
    Ok(())
}

#[test]
fn adam_amsgrad_matches_its_recurrence_and_fairseq() -> Result<()> {
    let cfg =
        AdamConfig { adam_betas: FloatPair(0.9, 0.98), amsgrad: true, ..AdamConfig::default() };
    let got = run_vec(&mut Adam::new(cfg)?, &[0.01; 3])?;
    let p0: Vec<f64> = P1.iter().map(|&x| f64::from(x)).collect();
    let want = adam_reference(&p0, &g1_f64(), 0.01, (0.9, 0.98), 1e-8, 0.0, true);
    // fairseq.optim.adam.Adam(lr=0.01, betas=(0.9, 0.98), eps=1e-8, amsgrad=True)
    let fairseq = [
        [0.9900000095367432, -1.9900000095367432],
        [0.980857253074646, -1.9852852821350098],
        [0.9814679026603699, -1.9901123046875],
    ];
    for s in 0..3 {
        assert_close(&got[s], &want[s], 1e-6, &format!("amsgrad step {s}"));
        assert_close(&got[s], &fairseq[s], 2e-7, &format!("amsgrad vs fairseq, step {s}"));
    }
    Ok(())
}

/// Runs one of tch's own optimizers on the 2-element parameter with the `G1` gradients.
fn run_tch(cfg: impl nn::OptimizerConfig, lr: f64) -> Result<Vec<Vec<f64>>> {
    let vs = nn::VarStore::new(Device::Cpu);
    let mut p = vs.root().f_var_copy("w", &Tensor::f_from_slice(&P1)?)?;
    let mut opt = cfg.build(&vs, lr)?;
    let mut out = Vec::new();
    for g in &G1 {
        set_grad(&mut p, g)?;
        opt.step();
        out.push(values(&p)?);
    }
    Ok(out)
}

#[test]
fn adam_agrees_with_tch_adam_and_adamw() -> Result<()> {
    // libtorch's Adam adds eps to sqrt(v / (1 - b2^t)) rather than to sqrt(v): the same up to
    // eps-sized terms. Without weight decay it is fairseq's Adam; AdamW decays p *= 1 - lr*wd,
    // which is fairseq's p -= lr*wd*p.
    let ours = run_vec(
        &mut Adam::new(AdamConfig { adam_betas: FloatPair(0.9, 0.98), ..AdamConfig::default() })?,
        &[0.01; 3],
    )?;
    let theirs =
        run_tch(nn::Adam { beta1: 0.9, beta2: 0.98, wd: 0.0, eps: 1e-8, amsgrad: false }, 0.01)?;
    for s in 0..3 {
        assert_close(&ours[s], &theirs[s], 1e-6, &format!("vs tch Adam, step {s}"));
    }
    let ours = run_vec(
        &mut Adam::new(AdamConfig {
            adam_betas: FloatPair(0.9, 0.98),
            weight_decay: 0.1,
            ..AdamConfig::default()
        })?,
        &[0.01; 3],
    )?;
    let theirs =
        run_tch(nn::AdamW { beta1: 0.9, beta2: 0.98, wd: 0.1, eps: 1e-8, amsgrad: false }, 0.01)?;
    for s in 0..3 {
        assert_close(&ours[s], &theirs[s], 1e-6, &format!("vs tch AdamW, step {s}"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// NAG and SGD.

#[test]
fn nag_matches_its_recurrence_and_fairseq() -> Result<()> {
    let (m, wd) = (0.9, 0.01);
    let lrs = [0.1, 0.05, 0.2];
    let got = run_vec(&mut Nag::new(NagConfig { momentum: m, weight_decay: wd })?, &lrs)?;
    // The recurrence in f64.
    let mut p: Vec<f64> = P1.iter().map(|&x| f64::from(x)).collect();
    let mut buf = [0.0; 2];
    let mut lr_old = lrs[0];
    for (s, (g, &lr)) in g1_f64().iter().zip(&lrs).enumerate() {
        let lr_correct = lr / lr_old;
        for i in 0..2 {
            p[i] *= 1.0 - lr * wd;
            p[i] += m * m * lr_correct * buf[i];
            p[i] -= (1.0 + m) * lr * g[i];
            buf[i] = m * lr_correct * buf[i] - lr * g[i];
        }
        lr_old = lr;
        assert_close(&got[s], &p, 1e-6, &format!("nag step {s}"));
    }
    // fairseq.optim.nag.NAG(lr=0.1, momentum=0.9, weight_decay=0.01), lr set to 0.1, 0.05, 0.2.
    let fairseq = [
        [0.9800000190734863, -1.9600000381469727],
        [0.9469599723815918, -1.9556699991226196],
        [1.0338860750198364, -2.158698797225952],
    ];
    for s in 0..3 {
        assert_close(&got[s], &fairseq[s], 2e-7, &format!("nag vs fairseq, step {s}"));
    }
    Ok(())
}

#[test]
fn sgd_matches_its_recurrence_fairseq_and_tch() -> Result<()> {
    let (m, wd) = (0.9, 0.01);
    let lrs = [0.1, 0.05, 0.2];
    let cfg = SgdConfig { momentum: m, weight_decay: wd };
    let got = run_vec(&mut Sgd::new(cfg.clone())?, &lrs)?;
    let mut p: Vec<f64> = P1.iter().map(|&x| f64::from(x)).collect();
    let mut buf: Option<Vec<f64>> = None;
    for (s, (g, &lr)) in g1_f64().iter().zip(&lrs).enumerate() {
        let d: Vec<f64> = (0..2).map(|i| g[i] + wd * p[i]).collect();
        let b = match buf.take() {
            None => d,
            Some(b) => (0..2).map(|i| m * b[i] + d[i]).collect(),
        };
        for i in 0..2 {
            p[i] -= lr * b[i];
        }
        buf = Some(b);
        assert_close(&got[s], &p, 1e-6, &format!("sgd step {s}"));
    }
    // torch.optim.SGD(lr=0.1, momentum=0.9, weight_decay=0.01), lr set to 0.1, 0.05, 0.2.
    let fairseq = [
        [0.9890000224113464, -1.9780000448226929],
        [0.9685555100440979, -1.9696110486984253],
        [0.973018229007721, -2.055471420288086],
    ];
    for s in 0..3 {
        assert_close(&got[s], &fairseq[s], 2e-7, &format!("sgd vs torch, step {s}"));
    }
    // libtorch's SGD at a constant lr.
    let ours = run_vec(&mut Sgd::new(cfg)?, &[0.1; 3])?;
    let theirs = run_tch(nn::Sgd { momentum: m, dampening: 0.0, wd, nesterov: false }, 0.1)?;
    for s in 0..3 {
        assert_close(&ours[s], &theirs[s], 1e-7, &format!("sgd vs tch, step {s}"));
    }
    // Plain SGD keeps no state.
    let mut plain = Sgd::new(SgdConfig::default())?;
    let got = run_vec(&mut plain, &[0.5; 3])?;
    assert_close(&got[0], &[1.0 - 0.05, -2.0 + 0.1], 1e-7, "plain sgd");
    assert!(plain.state().is_empty());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Adafactor.

/// fairseq's Adafactor formulas in f64 on a `rows × cols` parameter (`rows == 0`: a vector of
/// `cols`), with this crate's per-parameter lr. Returns the parameter after each step.
fn adafactor_reference(
    cfg: &AdafactorConfig,
    lr: f64,
    rows: usize,
    cols: usize,
    p0: &[f64],
    grads: &[Vec<f64>],
) -> Vec<Vec<f64>> {
    let factored = rows > 0;
    let r = rows.max(1);
    let n = r * cols;
    let rms = |x: &[f64]| (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64).sqrt();
    let (eps1, eps2) = (cfg.adafactor_eps.0, cfg.adafactor_eps.1);
    let mut p = p0.to_vec();
    let (mut row, mut col, mut full, mut m) =
        (vec![0.0; r], vec![0.0; cols], vec![0.0; n], vec![0.0; n]);
    let mut out = Vec::new();
    for (t, g) in grads.iter().enumerate() {
        let t = (t + 1) as f64;
        let rel = if cfg.relative_step {
            let min_step = if cfg.warmup_init { 1e-6 * t } else { 1e-2 };
            min_step.min(1.0 / t.sqrt())
        } else {
            lr
        };
        let lr_t = if cfg.scale_parameter { eps2.max(rms(&p)) * rel } else { rel };
        let beta2t = 1.0 - t.powf(cfg.decay_rate);
        let u: Vec<f64> = g.iter().map(|x| x * x + eps1).collect();
        let mut upd = vec![0.0; n];
        if factored {
            for i in 0..r {
                let mean = (0..cols).map(|j| u[i * cols + j]).sum::<f64>() / cols as f64;
                row[i] = beta2t * row[i] + (1.0 - beta2t) * mean;
            }
            for j in 0..cols {
                let mean = (0..r).map(|i| u[i * cols + j]).sum::<f64>() / r as f64;
                col[j] = beta2t * col[j] + (1.0 - beta2t) * mean;
            }
            let row_mean = row.iter().sum::<f64>() / r as f64;
            for i in 0..r {
                for j in 0..cols {
                    let k = i * cols + j;
                    upd[k] = g[k] / (row[i] / row_mean).sqrt() / col[j].sqrt();
                }
            }
        } else {
            for k in 0..n {
                full[k] = beta2t * full[k] + (1.0 - beta2t) * u[k];
                upd[k] = g[k] / full[k].sqrt();
            }
        }
        let clip = (rms(&upd) / cfg.clip_threshold).max(1.0);
        for x in &mut upd {
            *x = *x / clip * lr_t;
        }
        if let Some(b1) = cfg.beta1 {
            for k in 0..n {
                m[k] = b1 * m[k] + (1.0 - b1) * upd[k];
            }
            upd.clone_from(&m);
        }
        for k in 0..n {
            p[k] -= cfg.weight_decay * lr_t * p[k];
            p[k] -= upd[k];
        }
        out.push(p.clone());
    }
    out
}

fn p2_f64() -> Vec<f64> {
    P2.iter().flatten().map(|&x| f64::from(x)).collect()
}

fn g2_f64() -> Vec<Vec<f64>> {
    G2.iter().map(|g| g.iter().flatten().map(|&x| f64::from(x)).collect()).collect()
}

#[test]
fn adafactor_matches_its_formulas_and_fairseq() -> Result<()> {
    let base = AdafactorConfig::default();
    // (config, lr, fairseq's output for the 2×3 parameter)
    let cases: [(AdafactorConfig, f64, [[f64; 6]; 3]); 4] = [
        // Adafactor(lr=0.01, scale_parameter=False, relative_step=False)
        (
            base.clone(),
            0.01,
            [
                [
                    0.48688995838165283,
                    -0.9934449791908264,
                    1.9860947132110596,
                    0.24409466981887817,
                    1.4881893396377563,
                    -0.7458242774009705,
                ],
                [
                    0.4971809685230255,
                    -0.9992436766624451,
                    1.9735153913497925,
                    0.22990497946739197,
                    1.4901882410049438,
                    -0.752328634262085,
                ],
                [
                    0.48978888988494873,
                    -1.008655309677124,
                    1.9868189096450806,
                    0.2271106243133545,
                    1.5008615255355835,
                    -0.7649011015892029,
                ],
            ],
        ),
        // ... clip_threshold=0.5, beta1=0.9, weight_decay=0.1
        (
            AdafactorConfig {
                clip_threshold: 0.5,
                beta1: Some(0.9),
                weight_decay: 0.1,
                ..base.clone()
            },
            0.01,
            [
                [
                    0.4988445043563843,
                    -0.9986722469329834,
                    1.9973047971725464,
                    0.24945473670959473,
                    1.497909426689148,
                    -0.7490411996841431,
                ],
                [
                    0.498295396566391,
                    -0.9976826906204224,
                    1.994022011756897,
                    0.24819539487361908,
                    1.4959849119186401,
                    -0.7484453320503235,
                ],
                [
                    0.497382253408432,
                    -0.9971638321876526,
                    1.991536259651184,
                    0.2468985915184021,
                    1.4946386814117432,
                    -0.7484633922576904,
                ],
            ],
        ),
        // Adafactor(lr=None, scale_parameter=True, relative_step=True)
        (
            AdafactorConfig { scale_parameter: true, relative_step: true, ..base.clone() },
            123.0, // ignored with relative_step
            [
                [
                    0.48474401235580444,
                    -0.9923719763755798,
                    1.983818531036377,
                    0.24312804639339447,
                    1.4862561225891113,
                    -0.745140790939331,
                ],
                [
                    0.4966111481189728,
                    -0.9990587830543518,
                    1.9693126678466797,
                    0.22676512598991394,
                    1.4885611534118652,
                    -0.7526413202285767,
                ],
                [
                    0.488098680973053,
                    -1.0098968744277954,
                    1.9846326112747192,
                    0.22354725003242493,
                    1.5008522272109985,
                    -0.7671194076538086,
                ],
            ],
        ),
        // ... warmup_init=True
        (
            AdafactorConfig {
                scale_parameter: true,
                relative_step: true,
                warmup_init: true,
                ..base.clone()
            },
            123.0,
            [
                [
                    0.4999984800815582,
                    -0.9999992251396179,
                    1.9999983310699463,
                    0.24999931454658508,
                    1.4999985694885254,
                    -0.7499995231628418,
                ],
                [
                    0.5000008940696716,
                    -1.0000005960464478,
                    1.9999953508377075,
                    0.24999600648880005,
                    1.4999990463256836,
                    -0.7500010132789612,
                ],
                [
                    0.4999983012676239,
                    -1.0000039339065552,
                    2.0,
                    0.24999503791332245,
                    1.5000027418136597,
                    -0.7500054240226746,
                ],
            ],
        ),
    ];
    for (k, (cfg, lr, fairseq)) in cases.iter().enumerate() {
        let got = run_mat(&mut Adafactor::new(cfg.clone())?, *lr)?;
        let want = adafactor_reference(cfg, *lr, 2, 3, &p2_f64(), &g2_f64());
        for s in 0..3 {
            assert_close(&got[s], &want[s], 2e-6, &format!("adafactor case {k} step {s}"));
            assert_close(
                &got[s],
                &fairseq[s],
                3e-7,
                &format!("adafactor case {k} vs fairseq, step {s}"),
            );
        }
    }
    // A vector is not factored: Adafactor(lr=0.01, scale_parameter=False, relative_step=False)
    let got = run_vec(&mut Adafactor::new(base.clone())?, &[0.01; 3])?;
    let p0: Vec<f64> = P1.iter().map(|&x| f64::from(x)).collect();
    let want = adafactor_reference(&base, 0.01, 0, 2, &p0, &g1_f64());
    let fairseq = [
        [0.9900000095367432, -1.9900000095367432],
        [0.9773167967796326, -1.9936798810958862],
        [0.9864609241485596, -2.0044679641723633],
    ];
    for s in 0..3 {
        assert_close(&got[s], &want[s], 2e-6, &format!("adafactor vector step {s}"));
        assert_close(&got[s], &fairseq[s], 3e-7, &format!("adafactor vector vs fairseq, step {s}"));
    }
    Ok(())
}

#[test]
fn adafactor_factors_the_last_two_dims() -> Result<()> {
    let mut opt = Adafactor::new(AdafactorConfig::default())?;
    let mut p = Tensor::f_ones([4, 2, 3], (Kind::Float, Device::Cpu))?.set_requires_grad(true);
    let g: Vec<f32> = (0..24).map(|i| (i as f32 - 11.5) / 10.0).collect();
    set_grad(&mut p, &g)?;
    opt.step(&[("w".to_owned(), p.shallow_clone())], 0.01)?;
    let shapes: Vec<(String, Vec<i64>)> =
        opt.state().iter().map(|(k, t)| (k.clone(), t.size())).collect();
    assert_eq!(
        shapes,
        [
            ("adafactor.step.w".to_owned(), vec![]),
            ("adafactor.exp_avg_sq_row.w".to_owned(), vec![4, 2]),
            ("adafactor.exp_avg_sq_col.w".to_owned(), vec![4, 3]),
        ]
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// State: save, restore, resume bit for bit.

/// A tiny model's parameters: a 2×3 weight and a bias of 3.
fn model() -> Result<Vec<(String, Tensor)>> {
    let w: Vec<f32> = P2.iter().flatten().copied().collect();
    Ok(vec![
        ("decoder.fc.weight".to_owned(), param(&w, &[2, 3])?),
        ("decoder.fc.bias".to_owned(), param(&[0.1, -0.1, 0.3], &[3])?),
    ])
}

/// Gives the parameters the gradients of step `s` (the bias gets none at step 1, so that
/// parameters skipped on some steps are covered).
fn grads_for_step(params: &mut [(String, Tensor)], s: usize) -> Result<()> {
    let g: Vec<f32> = G2[s % 3].iter().flatten().map(|x| x * (1.0 + s as f32)).collect();
    set_grad(&mut params[0].1, &g)?;
    if s == 1 {
        // No gradient for the bias: tch cannot unset one, so use a fresh leaf with its values.
        let fresh = params[1].1.f_detach()?.f_detach_copy()?.set_requires_grad(true);
        params[1].1 = fresh;
    } else {
        set_grad(&mut params[1].1, &[0.3 - s as f32 * 0.1, 0.2, -0.5])?;
    }
    Ok(())
}

const LRS: [f64; 6] = [1e-3, 2e-3, 3e-3, 2.5e-3, 2e-3, 1.5e-3];

/// Runs steps `from..to` of `opt` on `params`.
fn train(
    opt: &mut dyn Optimizer,
    params: &mut [(String, Tensor)],
    from: usize,
    to: usize,
) -> Result<()> {
    for s in from..to {
        grads_for_step(params, s)?;
        opt.step(params, LRS[s])?;
    }
    Ok(())
}

fn deep_copy(state: &[(String, Tensor)]) -> Result<Vec<(String, Tensor)>> {
    state.iter().map(|(k, t)| Ok((k.clone(), t.f_detach()?.f_detach_copy()?))).collect()
}

fn assert_bitwise_equal(a: &[(String, Tensor)], b: &[(String, Tensor)], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: counts");
    for ((ka, ta), (kb, tb)) in a.iter().zip(b) {
        assert_eq!(ka, kb, "{what}");
        assert_eq!(ta.kind(), tb.kind(), "{what}: {ka}");
        assert!(ta.equal(tb), "{what}: {ka} differs: {ta:?} vs {tb:?}");
    }
}

#[test]
fn restored_state_resumes_bit_for_bit() -> Result<()> {
    let configs: Vec<(&str, serde_json::Value)> = vec![
        ("adam", serde_json::json!({"adam_betas": "(0.9, 0.98)", "weight_decay": 0.01})),
        ("adam", serde_json::json!({"amsgrad": true})),
        ("nag", serde_json::json!({"momentum": 0.9, "weight_decay": 0.01})),
        ("sgd", serde_json::json!({"momentum": 0.9, "weight_decay": 0.01})),
        ("adafactor", serde_json::json!({})),
        (
            "adafactor",
            serde_json::json!({"beta1": 0.9, "scale_parameter": true, "relative_step": true, "weight_decay": 0.1}),
        ),
    ];
    let factories = builtin_optimizers();
    for (name, json) in configs {
        let f = factories
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, f)| *f)
            .ok_or_else(|| anyhow::anyhow!("no {name}"))?;
        let what = format!("{name} {json}");
        // Uninterrupted.
        let mut a = model()?;
        let mut opt_a = (f.build)(&json)?;
        train(opt_a.as_mut(), &mut a, 0, 6)?;
        // Interrupted after 3 steps: parameters and optimizer state copied out, then loaded
        // into fresh ones.
        let mut b = model()?;
        let mut opt_b = (f.build)(&json)?;
        train(opt_b.as_mut(), &mut b, 0, 3)?;
        let saved_state = deep_copy(&opt_b.state())?;
        let saved_params = deep_copy(&b)?;
        drop(opt_b);
        let mut c: Vec<(String, Tensor)> = saved_params
            .iter()
            .map(|(k, t)| (k.clone(), t.shallow_clone().set_requires_grad(true)))
            .collect();
        let mut opt_c = (f.build)(&json)?;
        opt_c.load_state(&saved_state)?;
        assert_bitwise_equal(&opt_c.state(), &saved_state, &format!("{what}: reloaded state"));
        train(opt_c.as_mut(), &mut c, 3, 6)?;
        assert_bitwise_equal(&c, &a, &format!("{what}: parameters"));
        assert_bitwise_equal(&opt_c.state(), &opt_a.state(), &format!("{what}: state"));
    }
    Ok(())
}

#[test]
fn state_names_follow_parameter_names() -> Result<()> {
    let mut params = model()?;
    let mut adam = Adam::new(AdamConfig::default())?;
    train(&mut adam, &mut params, 0, 1)?;
    let names: Vec<String> = adam.state().into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        names,
        [
            "adam.step.decoder.fc.bias",
            "adam.exp_avg.decoder.fc.bias",
            "adam.exp_avg_sq.decoder.fc.bias",
            "adam.step.decoder.fc.weight",
            "adam.exp_avg.decoder.fc.weight",
            "adam.exp_avg_sq.decoder.fc.weight",
        ]
    );
    let step = &adam.state()[0].1;
    assert_eq!((step.kind(), step.size(), step.f_int64_value(&[])?), (Kind::Int64, vec![], 1));
    let mut nag = Nag::new(NagConfig::default())?;
    train(&mut nag, &mut params, 0, 1)?;
    let nag_state = nag.state();
    assert_eq!(nag_state[0].0, "nag.lr_old");
    assert_eq!(nag_state[0].1.f_double_value(&[])?, LRS[0]);
    Ok(())
}

#[test]
fn bad_states_are_refused() -> Result<()> {
    let mut params = model()?;
    let mut adam = Adam::new(AdamConfig::default())?;
    train(&mut adam, &mut params, 0, 1)?;
    let state = adam.state();

    let mut fresh = Adam::new(AdamConfig::default())?;
    let mut unknown = deep_copy(&state)?;
    unknown.push(("adam.exp_avg_cube.decoder.fc.bias".to_owned(), Tensor::from(0.0f32)));
    assert!(fresh.load_state(&unknown).is_err());
    let foreign = vec![("sgd.momentum_buffer.x".to_owned(), Tensor::from(0.0f32))];
    assert!(fresh.load_state(&foreign).is_err());
    let no_step: Vec<(String, Tensor)> =
        deep_copy(&state)?.into_iter().filter(|(k, _)| !k.starts_with("adam.step.")).collect();
    assert!(fresh.load_state(&no_step).is_err());
    let mut twice = deep_copy(&state)?;
    twice.push((state[1].0.clone(), state[1].1.f_detach()?.f_detach_copy()?));
    assert!(fresh.load_state(&twice).is_err());
    // amsgrad needs its maximum.
    assert!(
        Adam::new(AdamConfig { amsgrad: true, ..AdamConfig::default() })?
            .load_state(&deep_copy(&state)?)
            .is_err()
    );

    // A state of the wrong shape loads, but the step refuses it.
    let mut wrong_shape = deep_copy(&state)?;
    for (k, t) in &mut wrong_shape {
        if k == "adam.exp_avg.decoder.fc.bias" || k == "adam.exp_avg_sq.decoder.fc.bias" {
            *t = Tensor::f_zeros([4], (Kind::Float, Device::Cpu))?;
        }
    }
    fresh.load_state(&wrong_shape)?;
    let err = train(&mut fresh, &mut params, 0, 1);
    assert!(err.is_err());
    assert!(format!("{:?}", err).contains("decoder.fc.bias"));

    let mut af = Adafactor::new(AdafactorConfig::default())?;
    let full_for_matrix = vec![
        ("adafactor.step.decoder.fc.weight".to_owned(), util::step_tensor(1)),
        (
            "adafactor.exp_avg_sq.decoder.fc.weight".to_owned(),
            Tensor::f_zeros([2, 3], (Kind::Float, Device::Cpu))?,
        ),
    ];
    af.load_state(&full_for_matrix)?;
    assert!(train(&mut af, &mut params, 0, 1).is_err());
    Ok(())
}

#[test]
fn parameters_without_gradients_are_skipped() -> Result<()> {
    let p = param(&P1, &[2])?;
    let mut opt = Adam::new(AdamConfig::default())?;
    opt.step(&[("w".to_owned(), p.shallow_clone())], 0.1)?;
    assert!(opt.state().is_empty());
    assert_eq!(values(&p)?, [1.0, -2.0]);
    Ok(())
}

#[test]
fn half_parameters_are_updated_through_fp32() -> Result<()> {
    // A bf16 parameter with a bf16 gradient takes the fp32 step, rounded to bf16.
    let mut p32 = param(&P1, &[2])?;
    let mut p16 = Tensor::f_from_slice(&P1)?.f_to_kind(Kind::BFloat16)?.set_requires_grad(true);
    let g = [0.25f32, -0.5];
    set_grad(&mut p32, &g)?;
    p16.zero_grad();
    let g16 = Tensor::f_from_slice(&g)?.f_to_kind(Kind::BFloat16)?;
    p16.f_mul(&g16)?.f_sum(None::<Kind>)?.f_backward()?;
    let mut a = Adam::new(AdamConfig::default())?;
    let mut b = Adam::new(AdamConfig::default())?;
    a.step(&[("w".to_owned(), p32.shallow_clone())], 0.1)?;
    b.step(&[("w".to_owned(), p16.shallow_clone())], 0.1)?;
    assert_eq!(p16.kind(), Kind::BFloat16);
    let want = values(&p32.f_to_kind(Kind::BFloat16)?)?;
    assert_eq!(values(&p16)?, want);
    assert_eq!(b.state()[1].1.kind(), Kind::Float);
    Ok(())
}
