//! Adam with decoupled weight decay: fairseq 0.12.2's `FairseqAdam`, which runs
//! `fairseq.optim.adam.Adam` (an "AdamW": `p -= lr * wd * p` before the Adam step) everywhere but
//! on GPUs with fused Adam (same maths, fused kernel).
//!
//! Per step, with `g` the fp32 gradient and `t` the parameter's step count:
//! `m = b1*m + (1-b1)*g`, `v = b2*v + (1-b2)*g²`, `denom = sqrt(v) + eps` (with amsgrad
//! `vmax = max(vmax, v)` and `denom = sqrt(vmax) + eps`),
//! `step = lr * sqrt(1 - b2^t) / (1 - b1^t)`, `p -= wd*lr*p`, `p -= step * m / denom`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::util::{self, align_state, copy_state, param_key, split_param_key, state_error};
use super::{Error, FloatPair, Optimizer, OptimizerConfig};

const NAME: &str = "adam";

/// Flags and JSON config of `adam` (fairseq's `FairseqAdamConfig`).
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamConfig {
    /// Betas for Adam, written as fairseq takes them: "(0.9, 0.999)".
    #[arg(long = "adam-betas", default_value = "(0.9, 0.999)", value_parser = parse_pair)]
    pub adam_betas: FloatPair,
    /// Epsilon for Adam, added to sqrt(v).
    #[arg(long = "adam-eps", default_value_t = 1e-8)]
    pub adam_eps: f64,
    /// Decoupled weight decay: p -= lr * weight_decay * p before each step.
    #[arg(long = "weight-decay", visible_alias = "wd", default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Use the AMSGrad variant (fairseq's Adam class has it; fairseq's `adam` never turns it on).
    #[arg(long = "amsgrad")]
    pub amsgrad: bool,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self {
            adam_betas: FloatPair(0.9, 0.999),
            adam_eps: 1e-8,
            weight_decay: 0.0,
            amsgrad: false,
        }
    }
}

/// Parses a `FloatPair` flag value.
pub(crate) fn parse_pair(s: &str) -> Result<FloatPair, String> {
    s.parse().map_err(|e: Error| e.to_string())
}

impl OptimizerConfig for AdamConfig {
    const NAME: &'static str = NAME;

    fn build(&self) -> Result<Box<dyn Optimizer>, Error> {
        Ok(Box::new(Adam::new(self.clone())?))
    }
}

/// The state of one parameter.
struct ParamState {
    step: u64,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    max_exp_avg_sq: Option<Tensor>,
}

/// fairseq's Adam (decoupled weight decay, optional amsgrad). See the module docs for the rule.
pub struct Adam {
    cfg: AdamConfig,
    state: BTreeMap<String, ParamState>,
}

impl std::fmt::Debug for Adam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adam")
            .field("cfg", &self.cfg)
            .field("params_with_state", &self.state.len())
            .finish()
    }
}

impl Adam {
    /// An Adam optimizer with no state yet.
    pub fn new(cfg: AdamConfig) -> Result<Self, Error> {
        let FloatPair(b1, b2) = cfg.adam_betas;
        for (label, b) in [("beta1", b1), ("beta2", b2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(util::config_error(
                    NAME,
                    format!("{label} must be in [0, 1), got {b}"),
                ));
            }
        }
        if !util::at_least(cfg.adam_eps, 0.0) || !util::at_least(cfg.weight_decay, 0.0) {
            return Err(util::config_error(
                NAME,
                format!(
                    "adam_eps ({}) and weight_decay ({}) must be >= 0",
                    cfg.adam_eps, cfg.weight_decay
                ),
            ));
        }
        Ok(Self { cfg, state: BTreeMap::new() })
    }

    /// The configuration.
    pub fn config(&self) -> &AdamConfig {
        &self.cfg
    }

    fn step_one(
        &mut self,
        name: &str,
        grad: &Tensor,
        data: &mut Tensor,
        lr: f64,
    ) -> Result<(), Error> {
        let FloatPair(beta1, beta2) = self.cfg.adam_betas;
        let (eps, wd, amsgrad) = (self.cfg.adam_eps, self.cfg.weight_decay, self.cfg.amsgrad);
        let shape = data.size();
        let (device, kind) = (data.device(), data.kind());
        if !self.state.contains_key(name) {
            let fresh = ParamState {
                step: 0,
                exp_avg: data.f_zeros_like()?,
                exp_avg_sq: data.f_zeros_like()?,
                max_exp_avg_sq: if amsgrad { Some(data.f_zeros_like()?) } else { None },
            };
            self.state.insert(name.to_owned(), fresh);
        }
        let st =
            self.state.get_mut(name).ok_or_else(|| state_error(NAME, name, "state vanished"))?;
        for (field, t) in [("exp_avg", &mut st.exp_avg), ("exp_avg_sq", &mut st.exp_avg_sq)] {
            align_state(NAME, || param_key(NAME, field, name), t, &shape, device, kind)?;
        }
        match (&mut st.max_exp_avg_sq, amsgrad) {
            (Some(t), true) => align_state(
                NAME,
                || param_key(NAME, "max_exp_avg_sq", name),
                t,
                &shape,
                device,
                kind,
            )?,
            (None, true) => {
                return Err(state_error(
                    NAME,
                    param_key(NAME, "max_exp_avg_sq", name),
                    "missing (amsgrad is on)",
                ));
            }
            (_, false) => {}
        }

        st.step += 1;
        // exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        let _ = st.exp_avg.f_mul_scalar_(beta1)?;
        let _ = st.exp_avg.f_add_(&grad.f_mul_scalar(1.0 - beta1)?)?;
        // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        let _ = st.exp_avg_sq.f_mul_scalar_(beta2)?;
        let _ = st.exp_avg_sq.f_addcmul_(&grad.f_mul_scalar(1.0 - beta2)?, grad)?;
        let mut denom = match (&mut st.max_exp_avg_sq, amsgrad) {
            (Some(max), true) => {
                let _ = max.f_maximum_out(max, &st.exp_avg_sq)?;
                max.f_sqrt()?
            }
            _ => st.exp_avg_sq.f_sqrt()?,
        };
        let _ = denom.f_add_scalar_(eps)?;

        // Python's `beta ** step` is C's pow().
        let t = st.step as f64;
        let bias_correction1 = 1.0 - beta1.powf(t);
        let bias_correction2 = 1.0 - beta2.powf(t);
        let step_size = lr * bias_correction2.sqrt() / bias_correction1;

        if wd != 0.0 {
            // p.add_(p, alpha=-weight_decay * lr)
            let decay = data.f_mul_scalar(-wd * lr)?;
            let _ = data.f_add_(&decay)?;
        }
        // p.addcdiv_(exp_avg, denom, value=-step_size)
        let _ = data.f_add_(&st.exp_avg.f_div(&denom)?.f_mul_scalar(-step_size)?)?;
        Ok(())
    }
}

impl Optimizer for Adam {
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
            out.push((param_key(NAME, "exp_avg", name), st.exp_avg.shallow_clone()));
            out.push((param_key(NAME, "exp_avg_sq", name), st.exp_avg_sq.shallow_clone()));
            if let Some(max) = &st.max_exp_avg_sq {
                out.push((param_key(NAME, "max_exp_avg_sq", name), max.shallow_clone()));
            }
        }
        out
    }

    fn load_state(&mut self, named: &[(String, Tensor)]) -> Result<(), Error> {
        #[derive(Default)]
        struct Partial {
            step: Option<u64>,
            exp_avg: Option<Tensor>,
            exp_avg_sq: Option<Tensor>,
            max_exp_avg_sq: Option<Tensor>,
        }
        let _no_grad = tch::no_grad_guard();
        let mut partial: BTreeMap<String, Partial> = BTreeMap::new();
        for (key, t) in named {
            let Some((field, param)) = split_param_key(NAME, key) else {
                return Err(state_error(NAME, key.clone(), "not an adam state entry"));
            };
            let entry = partial.entry(param.to_owned()).or_default();
            let slot = match field {
                "step" => {
                    entry.step = Some(util::read_step(NAME, key, t)?);
                    continue;
                }
                "exp_avg" => &mut entry.exp_avg,
                "exp_avg_sq" => &mut entry.exp_avg_sq,
                "max_exp_avg_sq" => &mut entry.max_exp_avg_sq,
                _ => return Err(state_error(NAME, key.clone(), "unknown adam state field")),
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
            let exp_avg = p.exp_avg.ok_or_else(|| missing("exp_avg"))?;
            let exp_avg_sq = p.exp_avg_sq.ok_or_else(|| missing("exp_avg_sq"))?;
            if exp_avg.size() != exp_avg_sq.size() {
                return Err(state_error(
                    NAME,
                    param_key(NAME, "exp_avg_sq", &param),
                    format!(
                        "shape {:?} differs from exp_avg's {:?}",
                        exp_avg_sq.size(),
                        exp_avg.size()
                    ),
                ));
            }
            let max_exp_avg_sq = match (p.max_exp_avg_sq, self.cfg.amsgrad) {
                (Some(t), true) => Some(t),
                (None, true) => return Err(missing("max_exp_avg_sq")),
                // A checkpoint written with amsgrad resumed without it: the maximum is not used.
                (_, false) => None,
            };
            state.insert(param, ParamState { step, exp_avg, exp_avg_sq, max_exp_avg_sq });
        }
        self.state = state;
        Ok(())
    }
}
