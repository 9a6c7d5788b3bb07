//! Adafactor: fairseq 0.12.2's `Adafactor` (`fairseq/optim/adafactor.py`, after Shazeer & Stern
//! 2018, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost").
//!
//! Per step of a parameter `p` with gradient `g` and step count `t`:
//! - learning rate: `rel = min(1e-6*t if warmup_init else 1e-2, 1/sqrt(t))` with
//!   `--relative-step`, else the external lr; times `max(eps2, rms(p))` with
//!   `--scale-parameter`;
//! - `beta2t = 1 - t^decay_rate`, `u = g² + eps1`;
//! - for parameters with 2 or more dims the second moment is factored over the last two dims:
//!   `row = beta2t*row + (1-beta2t)*mean_last(u)`, `col = beta2t*col + (1-beta2t)*mean_second_last(u)`,
//!   `u = g * rsqrt(row / mean(row))[..., None] * rsqrt(col)[..., None, :]`; otherwise
//!   `v = beta2t*v + (1-beta2t)*u`, `u = g * rsqrt(v)`;
//! - `u /= max(1, rms(u) / clip_threshold)`, `u *= lr`;
//! - with `--beta1`: `m = beta1*m + (1-beta1)*u`, `u = m`;
//! - `p -= wd*lr*p`, `p -= u`.
//!
//! Two deliberate differences from fairseq 0.12.2, both where fairseq misbehaves:
//! - with `--scale-parameter` and no `--relative-step`, fairseq writes each parameter's scaled
//!   lr back into the group's lr, so the scales multiply up parameter after parameter; here each
//!   parameter's lr is `scale(p) * lr`, as the optimizer's docs describe;
//! - fairseq always passes `--lr` to the optimizer, so `--relative-step` (and `--warmup-init`)
//!   raise "Cannot combine manual lr and relative_step options"; here `--relative-step` works as
//!   in the Adafactor class with `lr=None`: the lr given to [`Optimizer::step`] is ignored.
//!
//! With neither flag (fairseq's defaults) the update is fairseq's.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::adam::parse_pair;
use super::util::{self, align_state, copy_state, param_key, split_param_key, state_error};
use super::{Error, FloatPair, Optimizer, OptimizerConfig};

const NAME: &str = "adafactor";

/// Flags and JSON config of `adafactor` (fairseq's `FairseqAdafactor.add_args`).
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdafactorConfig {
    /// Epsilons for Adafactor: (added to g², floor of the parameter scale), as "(1e-30, 1e-3)".
    #[arg(long = "adafactor-eps", default_value = "(1e-30, 1e-3)", value_parser = parse_pair)]
    pub adafactor_eps: FloatPair,
    /// Threshold for clipping the update's root mean square.
    #[arg(long = "clip-threshold", default_value_t = 1.0)]
    pub clip_threshold: f64,
    /// Decay rate of the second-moment estimator (beta2 at step t is 1 - t^decay_rate).
    #[arg(long = "decay-rate", default_value_t = -0.8, allow_negative_numbers = true)]
    pub decay_rate: f64,
    /// Beta for a first-moment estimator (none when absent).
    #[arg(long = "beta1")]
    pub beta1: Option<f64>,
    /// Weight decay: p -= lr * weight_decay * p before each update.
    #[arg(long = "weight-decay", visible_alias = "wd", default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Scale the learning rate by the root mean square of the parameter.
    #[arg(long = "scale-parameter")]
    pub scale_parameter: bool,
    /// Use a relative step (min(1e-2, 1/sqrt(t))) instead of the external learning rate.
    #[arg(long = "relative-step")]
    pub relative_step: bool,
    /// With --relative-step, warm up as min(1e-6 * t, 1/sqrt(t)).
    #[arg(long = "warmup-init")]
    pub warmup_init: bool,
}

impl Default for AdafactorConfig {
    fn default() -> Self {
        Self {
            adafactor_eps: FloatPair(1e-30, 1e-3),
            clip_threshold: 1.0,
            decay_rate: -0.8,
            beta1: None,
            weight_decay: 0.0,
            scale_parameter: false,
            relative_step: false,
            warmup_init: false,
        }
    }
}

impl OptimizerConfig for AdafactorConfig {
    const NAME: &'static str = NAME;

    fn build(&self) -> Result<Box<dyn Optimizer>, Error> {
        Ok(Box::new(Adafactor::new(self.clone())?))
    }
}

/// The second moment of one parameter.
enum SecondMoment {
    /// Row and column means, for parameters with 2 or more dims.
    Factored { row: Tensor, col: Tensor },
    /// The full moment, for vectors and scalars.
    Full(Tensor),
}

/// The state of one parameter.
struct ParamState {
    step: u64,
    exp_avg: Option<Tensor>,
    second: SecondMoment,
}

/// fairseq's Adafactor. See the module docs for the rule and the two deliberate differences.
pub struct Adafactor {
    cfg: AdafactorConfig,
    state: BTreeMap<String, ParamState>,
}

impl std::fmt::Debug for Adafactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adafactor")
            .field("cfg", &self.cfg)
            .field("params_with_state", &self.state.len())
            .finish()
    }
}

/// `tensor.norm(2) / numel ** 0.5`, a 0-dim tensor.
fn rms(t: &Tensor) -> Result<Tensor, Error> {
    let n = t.numel() as f64;
    Ok(t.f_norm()?.f_div_scalar(n.sqrt())?)
}

/// fairseq's `_get_lr` for one parameter at step `step`; `rms_p` is `rms(p)` (read only with
/// `--scale-parameter`).
fn param_lr(
    cfg: &AdafactorConfig,
    lr: f64,
    step: u64,
    rms_p: impl FnOnce() -> Result<f32, Error>,
) -> Result<f64, Error> {
    let t = step as f64;
    let rel_step_sz = if cfg.relative_step {
        let min_step = if cfg.warmup_init { 1e-6 * t } else { 1e-2 };
        min_step.min(1.0 / t.sqrt())
    } else {
        lr
    };
    if !cfg.scale_parameter {
        return Ok(rel_step_sz);
    }
    let eps2 = cfg.adafactor_eps.1;
    let rms_p = rms_p()?;
    // Python's max(eps2, RMS) keeps eps2 unless the float32 tensor RMS is greater; then the
    // product is a float32 tensor op.
    Ok(if rms_p > eps2 as f32 { f64::from(rms_p * rel_step_sz as f32) } else { eps2 * rel_step_sz })
}

/// The shapes of the factored moments of a parameter of shape `shape` (2 or more dims).
fn factored_shapes(shape: &[i64]) -> (Vec<i64>, Vec<i64>) {
    let n = shape.len();
    let row = shape[..n - 1].to_vec();
    let mut col = shape[..n - 2].to_vec();
    col.push(shape[n - 1]);
    (row, col)
}

impl Adafactor {
    /// An Adafactor optimizer with no state yet.
    pub fn new(cfg: AdafactorConfig) -> Result<Self, Error> {
        if cfg.warmup_init && !cfg.relative_step {
            return Err(util::config_error(NAME, "warmup_init requires relative_step=True"));
        }
        if let Some(b1) = cfg.beta1.filter(|b| !(0.0..1.0).contains(b)) {
            return Err(util::config_error(NAME, format!("beta1 must be in [0, 1), got {b1}")));
        }
        if !util::above(cfg.clip_threshold, 0.0) {
            return Err(util::config_error(
                NAME,
                format!("clip_threshold must be > 0, got {}", cfg.clip_threshold),
            ));
        }
        Ok(Self { cfg, state: BTreeMap::new() })
    }

    /// The configuration.
    pub fn config(&self) -> &AdafactorConfig {
        &self.cfg
    }

    fn step_one(
        &mut self,
        name: &str,
        grad: &Tensor,
        data: &mut Tensor,
        lr: f64,
    ) -> Result<(), Error> {
        let shape = grad.size();
        let (device, kind) = (grad.device(), grad.kind());
        let factored = shape.len() >= 2;
        let use_first_moment = self.cfg.beta1.is_some();
        if !self.state.contains_key(name) {
            let second = if factored {
                let (row, col) = factored_shapes(&shape);
                SecondMoment::Factored {
                    row: Tensor::f_zeros(row, (kind, device))?,
                    col: Tensor::f_zeros(col, (kind, device))?,
                }
            } else {
                SecondMoment::Full(grad.f_zeros_like()?)
            };
            let exp_avg = if use_first_moment { Some(grad.f_zeros_like()?) } else { None };
            let fresh = ParamState { step: 0, exp_avg, second };
            self.state.insert(name.to_owned(), fresh);
        }
        let cfg = &self.cfg;
        let st =
            self.state.get_mut(name).ok_or_else(|| state_error(NAME, name, "state vanished"))?;
        match (&mut st.second, factored) {
            (SecondMoment::Factored { row, col }, true) => {
                let (row_shape, col_shape) = factored_shapes(&shape);
                align_state(
                    NAME,
                    || param_key(NAME, "exp_avg_sq_row", name),
                    row,
                    &row_shape,
                    device,
                    kind,
                )?;
                align_state(
                    NAME,
                    || param_key(NAME, "exp_avg_sq_col", name),
                    col,
                    &col_shape,
                    device,
                    kind,
                )?;
            }
            (SecondMoment::Full(v), false) => {
                align_state(NAME, || param_key(NAME, "exp_avg_sq", name), v, &shape, device, kind)?
            }
            _ => {
                return Err(state_error(
                    NAME,
                    name,
                    "saved second moment is factored differently from the parameter's shape",
                ));
            }
        }
        match (&mut st.exp_avg, use_first_moment) {
            (Some(m), true) => {
                align_state(NAME, || param_key(NAME, "exp_avg", name), m, &shape, device, kind)?
            }
            (None, true) => {
                return Err(state_error(
                    NAME,
                    param_key(NAME, "exp_avg", name),
                    "missing (beta1 is set)",
                ));
            }
            (_, false) => {}
        }

        st.step += 1;
        let step = st.step;
        let eps1 = cfg.adafactor_eps.0;
        let beta2t = 1.0 - (step as f64).powf(cfg.decay_rate);
        let mut update = grad.f_square()?.f_add_scalar(eps1)?;
        match &mut st.second {
            SecondMoment::Factored { row, col } => {
                let _ = row.f_mul_scalar_(beta2t)?;
                let _ = row.f_add_(
                    &update.f_mean_dim(-1, false, None::<Kind>)?.f_mul_scalar(1.0 - beta2t)?,
                )?;
                let _ = col.f_mul_scalar_(beta2t)?;
                let _ = col.f_add_(
                    &update.f_mean_dim(-2, false, None::<Kind>)?.f_mul_scalar(1.0 - beta2t)?,
                )?;
                // _approx_sq_grad(row, col)
                let mut r = row.f_div(&row.f_mean_dim(-1, true, None::<Kind>)?)?;
                let _ = r.f_rsqrt_()?;
                let r = r.f_unsqueeze(-1)?;
                let c = col.f_unsqueeze(-2)?.f_rsqrt()?;
                update = r.f_mul(&c)?;
                let _ = update.f_mul_(grad)?;
            }
            SecondMoment::Full(v) => {
                let _ = v.f_mul_scalar_(beta2t)?;
                let _ = v.f_add_(&update.f_mul_scalar(1.0 - beta2t)?)?;
                update = v.f_rsqrt()?;
                let _ = update.f_mul_(grad)?;
            }
        }
        // update.div_((rms(update) / clip_threshold).clamp_(min=1.0))
        let clip = rms(&update)?.f_div_scalar(cfg.clip_threshold)?.f_clamp_min(1.0)?;
        let _ = update.f_div_(&clip)?;
        // fairseq computes RMS(p) before the update; `data` is untouched so far.
        let lr_p = param_lr(cfg, lr, step, || Ok(rms(data)?.f_double_value(&[])? as f32))?;
        let _ = update.f_mul_scalar_(lr_p)?;
        if let (Some(m), Some(beta1)) = (&mut st.exp_avg, cfg.beta1) {
            let _ = m.f_mul_scalar_(beta1)?;
            let _ = m.f_add_(&update.f_mul_scalar(1.0 - beta1)?)?;
            update = m.shallow_clone();
        }
        if cfg.weight_decay != 0.0 {
            // p.add_(p, alpha=-weight_decay * lr)
            let decay = data.f_mul_scalar(-cfg.weight_decay * lr_p)?;
            let _ = data.f_add_(&decay)?;
        }
        // p.add_(-update)
        let _ = data.f_sub_(&update)?;
        Ok(())
    }
}

impl Optimizer for Adafactor {
    fn name(&self) -> &'static str {
        NAME
    }

    fn step(&mut self, params: &[(String, Tensor)], lr: f64) -> Result<(), Error> {
        let _no_grad = tch::no_grad_guard();
        for (name, p) in params {
            let Some(grad) = util::fp32_grad(p)? else {
                continue;
            };
            util::with_fp32_data(p, |data| self.step_one(name, &grad, data, lr))?;
        }
        Ok(())
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(self.state.len() * 4);
        for (name, st) in &self.state {
            out.push((param_key(NAME, "step", name), util::step_tensor(st.step)));
            if let Some(m) = &st.exp_avg {
                out.push((param_key(NAME, "exp_avg", name), m.shallow_clone()));
            }
            match &st.second {
                SecondMoment::Factored { row, col } => {
                    out.push((param_key(NAME, "exp_avg_sq_row", name), row.shallow_clone()));
                    out.push((param_key(NAME, "exp_avg_sq_col", name), col.shallow_clone()));
                }
                SecondMoment::Full(v) => {
                    out.push((param_key(NAME, "exp_avg_sq", name), v.shallow_clone()));
                }
            }
        }
        out
    }

    fn load_state(&mut self, named: &[(String, Tensor)]) -> Result<(), Error> {
        #[derive(Default)]
        struct Partial {
            step: Option<u64>,
            exp_avg: Option<Tensor>,
            row: Option<Tensor>,
            col: Option<Tensor>,
            full: Option<Tensor>,
        }
        let _no_grad = tch::no_grad_guard();
        let mut partial: BTreeMap<String, Partial> = BTreeMap::new();
        for (key, t) in named {
            let Some((field, param)) = split_param_key(NAME, key) else {
                return Err(state_error(NAME, key.clone(), "not an adafactor state entry"));
            };
            let entry = partial.entry(param.to_owned()).or_default();
            let slot = match field {
                "step" => {
                    entry.step = Some(util::read_step(NAME, key, t)?);
                    continue;
                }
                "exp_avg" => &mut entry.exp_avg,
                "exp_avg_sq_row" => &mut entry.row,
                "exp_avg_sq_col" => &mut entry.col,
                "exp_avg_sq" => &mut entry.full,
                _ => return Err(state_error(NAME, key.clone(), "unknown adafactor state field")),
            };
            if slot.is_some() {
                return Err(state_error(NAME, key.clone(), "given twice"));
            }
            *slot = Some(copy_state(t)?);
        }
        let mut state = BTreeMap::new();
        for (param, p) in partial {
            let missing =
                |field: &str| state_error(NAME, param_key(NAME, field, &param), "missing");
            let step = p.step.ok_or_else(|| missing("step"))?;
            let second = match (p.row, p.col, p.full) {
                (Some(row), Some(col), None) => SecondMoment::Factored { row, col },
                (None, None, Some(v)) => SecondMoment::Full(v),
                _ => {
                    return Err(state_error(
                        NAME,
                        param_key(NAME, "exp_avg_sq", &param),
                        "expected either exp_avg_sq_row and exp_avg_sq_col, or exp_avg_sq",
                    ));
                }
            };
            let exp_avg = match (p.exp_avg, self.cfg.beta1.is_some()) {
                (Some(m), true) => Some(m),
                (None, true) => return Err(missing("exp_avg")),
                (_, false) => None,
            };
            state.insert(param, ParamState { step, exp_avg, second });
        }
        self.state = state;
        Ok(())
    }
}
