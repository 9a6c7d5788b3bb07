//! Nesterov accelerated gradient: fairseq 0.12.2's `NAG` (`fairseq/optim/nag.py`).
//!
//! Per step, with `lr_correct = lr / lr_old` (`lr` when `lr_old` is 0; `lr_old` is the previous
//! step's lr) and `b` the momentum buffer (zeros at first):
//! `p *= 1 - lr*wd`, `p += m*m*lr_correct * b`, `p -= (1+m)*lr * g`, `b = m*lr_correct*b - lr*g`.
//!
//! fairseq starts `lr_old` at the configured `--lr`; here it starts at the first step's `lr`.
//! Both only ever multiply the all-zero first buffer, so the updates are the same.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::util::{self, align_state, copy_state, param_key, split_param_key, state_error};
use super::{Error, Optimizer, OptimizerConfig};

const NAME: &str = "nag";
const LR_OLD_KEY: &str = "nag.lr_old";

/// Flags and JSON config of `nag` (fairseq's `FairseqNAGConfig`).
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NagConfig {
    /// Momentum factor.
    #[arg(long = "momentum", default_value_t = 0.99)]
    pub momentum: f64,
    /// Weight decay: p *= 1 - lr * weight_decay before each step.
    #[arg(long = "weight-decay", visible_alias = "wd", default_value_t = 0.0)]
    pub weight_decay: f64,
}

impl Default for NagConfig {
    fn default() -> Self {
        Self { momentum: 0.99, weight_decay: 0.0 }
    }
}

impl OptimizerConfig for NagConfig {
    const NAME: &'static str = NAME;

    fn build(&self) -> Result<Box<dyn Optimizer>, Error> {
        Ok(Box::new(Nag::new(self.clone())?))
    }
}

/// fairseq's NAG. See the module docs for the rule.
pub struct Nag {
    cfg: NagConfig,
    lr_old: Option<f64>,
    buffers: BTreeMap<String, Tensor>,
}

impl std::fmt::Debug for Nag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nag")
            .field("cfg", &self.cfg)
            .field("lr_old", &self.lr_old)
            .field("params_with_state", &self.buffers.len())
            .finish()
    }
}

impl Nag {
    /// A NAG optimizer with no state yet.
    pub fn new(cfg: NagConfig) -> Result<Self, Error> {
        if !util::at_least(cfg.momentum, 0.0) || !util::at_least(cfg.weight_decay, 0.0) {
            return Err(util::config_error(
                NAME,
                format!(
                    "momentum ({}) and weight_decay ({}) must be >= 0",
                    cfg.momentum, cfg.weight_decay
                ),
            ));
        }
        Ok(Self { cfg, lr_old: None, buffers: BTreeMap::new() })
    }

    /// The configuration.
    pub fn config(&self) -> &NagConfig {
        &self.cfg
    }
}

impl Optimizer for Nag {
    fn name(&self) -> &'static str {
        NAME
    }

    fn step(&mut self, params: &[(String, Tensor)], lr: f64) -> Result<(), Error> {
        let _no_grad = tch::no_grad_guard();
        let (momentum, wd) = (self.cfg.momentum, self.cfg.weight_decay);
        let lr_old = self.lr_old.unwrap_or(lr);
        let lr_correct = if lr_old > 0.0 { lr / lr_old } else { lr };
        for (name, p) in params {
            let Some(d_p) = util::fp32_grad(p)? else {
                continue;
            };
            if !self.buffers.contains_key(name) {
                self.buffers.insert(name.clone(), d_p.f_zeros_like()?);
            }
            let buf = self
                .buffers
                .get_mut(name)
                .ok_or_else(|| state_error(NAME, name.as_str(), "state vanished"))?;
            align_state(
                NAME,
                || param_key(NAME, "momentum_buffer", name),
                buf,
                &d_p.size(),
                d_p.device(),
                d_p.kind(),
            )?;
            util::with_fp32_data(p, |data| {
                if wd != 0.0 {
                    let _ = data.f_mul_scalar_(1.0 - lr * wd)?;
                }
                // p.add_(buf, alpha=momentum * momentum * lr_correct)
                let _ = data.f_add_(&buf.f_mul_scalar(momentum * momentum * lr_correct)?)?;
                // p.add_(d_p, alpha=-(1 + momentum) * lr)
                let _ = data.f_add_(&d_p.f_mul_scalar(-(1.0 + momentum) * lr)?)?;
                Ok(())
            })?;
            // buf.mul_(momentum * lr_correct).add_(d_p, alpha=-lr)
            let _ = buf.f_mul_scalar_(momentum * lr_correct)?;
            let _ = buf.f_add_(&d_p.f_mul_scalar(-lr)?)?;
        }
        self.lr_old = Some(lr);
        Ok(())
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(self.buffers.len() + 1);
        if let Some(lr_old) = self.lr_old {
            out.push((LR_OLD_KEY.to_owned(), util::f64_tensor(lr_old)));
        }
        for (name, buf) in &self.buffers {
            out.push((param_key(NAME, "momentum_buffer", name), buf.shallow_clone()));
        }
        out
    }

    fn load_state(&mut self, named: &[(String, Tensor)]) -> Result<(), Error> {
        let _no_grad = tch::no_grad_guard();
        let mut lr_old = None;
        let mut buffers = BTreeMap::new();
        for (key, t) in named {
            if key == LR_OLD_KEY {
                lr_old = Some(util::read_f64(NAME, key, t)?);
                continue;
            }
            match split_param_key(NAME, key) {
                Some(("momentum_buffer", param)) => {
                    if buffers.insert(param.to_owned(), copy_state(t)?).is_some() {
                        return Err(state_error(NAME, key.clone(), "given twice"));
                    }
                }
                _ => return Err(state_error(NAME, key.clone(), "not a nag state entry")),
            }
        }
        self.lr_old = lr_old;
        self.buffers = buffers;
        Ok(())
    }
}
