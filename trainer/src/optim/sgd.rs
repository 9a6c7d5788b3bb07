//! Stochastic gradient descent as fairseq 0.12.2's `sgd` builds it: `torch.optim.SGD(lr,
//! momentum, weight_decay)` with no dampening and no Nesterov term.
//!
//! Per step: `d = g + wd*p`; with momentum, the buffer starts as a copy of the first `d` and
//! then `b = m*b + d`, and `d = b`; finally `p -= lr * d`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::util::{self, align_state, copy_state, param_key, split_param_key, state_error};
use super::{Error, Optimizer, OptimizerConfig};

const NAME: &str = "sgd";

/// Flags and JSON config of `sgd` (fairseq's `SGD.add_args`).
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SgdConfig {
    /// Momentum factor.
    #[arg(long = "momentum", default_value_t = 0.0)]
    pub momentum: f64,
    /// Weight decay (an L2 term added to the gradient, as torch.optim.SGD).
    #[arg(long = "weight-decay", visible_alias = "wd", default_value_t = 0.0)]
    pub weight_decay: f64,
}

impl Default for SgdConfig {
    fn default() -> Self {
        Self { momentum: 0.0, weight_decay: 0.0 }
    }
}

impl OptimizerConfig for SgdConfig {
    const NAME: &'static str = NAME;

    fn build(&self) -> Result<Box<dyn Optimizer>, Error> {
        Ok(Box::new(Sgd::new(self.clone())?))
    }
}

/// `torch.optim.SGD` with momentum and weight decay. See the module docs for the rule.
pub struct Sgd {
    cfg: SgdConfig,
    buffers: BTreeMap<String, Tensor>,
}

impl std::fmt::Debug for Sgd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sgd")
            .field("cfg", &self.cfg)
            .field("params_with_state", &self.buffers.len())
            .finish()
    }
}

impl Sgd {
    /// An SGD optimizer with no state yet.
    pub fn new(cfg: SgdConfig) -> Result<Self, Error> {
        // torch.optim.SGD's own checks.
        if !util::at_least(cfg.momentum, 0.0) || !util::at_least(cfg.weight_decay, 0.0) {
            return Err(util::config_error(
                NAME,
                format!(
                    "momentum ({}) and weight_decay ({}) must be >= 0",
                    cfg.momentum, cfg.weight_decay
                ),
            ));
        }
        Ok(Self { cfg, buffers: BTreeMap::new() })
    }

    /// The configuration.
    pub fn config(&self) -> &SgdConfig {
        &self.cfg
    }
}

impl Optimizer for Sgd {
    fn name(&self) -> &'static str {
        NAME
    }

    fn step(&mut self, params: &[(String, Tensor)], lr: f64) -> Result<(), Error> {
        let _no_grad = tch::no_grad_guard();
        let (momentum, wd) = (self.cfg.momentum, self.cfg.weight_decay);
        for (name, p) in params {
            let Some(grad) = util::fp32_grad(p)? else {
                continue;
            };
            let buffers = &mut self.buffers;
            util::with_fp32_data(p, |data| {
                let mut d_p = grad;
                if wd != 0.0 {
                    // grad = grad.add(param, alpha=weight_decay)
                    d_p = d_p.f_add(&data.f_mul_scalar(wd)?)?;
                }
                if momentum != 0.0 {
                    match buffers.get_mut(name) {
                        Some(buf) => {
                            align_state(
                                NAME,
                                || param_key(NAME, "momentum_buffer", name),
                                buf,
                                &d_p.size(),
                                d_p.device(),
                                d_p.kind(),
                            )?;
                            // buf.mul_(momentum).add_(grad, alpha=1 - dampening)
                            let _ = buf.f_mul_scalar_(momentum)?;
                            let _ = buf.f_add_(&d_p)?;
                            d_p = buf.shallow_clone();
                        }
                        None => {
                            // buf = torch.clone(grad).detach()
                            let buf = d_p.f_detach_copy()?;
                            d_p = buf.shallow_clone();
                            buffers.insert(name.clone(), buf);
                        }
                    }
                }
                // param.add_(grad, alpha=-lr)
                let _ = data.f_add_(&d_p.f_mul_scalar(-lr)?)?;
                Ok(())
            })?;
        }
        Ok(())
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        self.buffers
            .iter()
            .map(|(name, buf)| (param_key(NAME, "momentum_buffer", name), buf.shallow_clone()))
            .collect()
    }

    fn load_state(&mut self, named: &[(String, Tensor)]) -> Result<(), Error> {
        let _no_grad = tch::no_grad_guard();
        let mut buffers = BTreeMap::new();
        for (key, t) in named {
            match split_param_key(NAME, key) {
                Some(("momentum_buffer", param)) => {
                    if buffers.insert(param.to_owned(), copy_state(t)?).is_some() {
                        return Err(state_error(NAME, key.clone(), "given twice"));
                    }
                }
                _ => return Err(state_error(NAME, key.clone(), "not an sgd state entry")),
            }
        }
        self.buffers = buffers;
        Ok(())
    }
}
