//! `inverse_sqrt`: fairseq 0.12.2's `InverseSquareRootSchedule`.
//!
//! Warmup: `lr = warmup_init_lr + n * (lr - warmup_init_lr) / warmup_updates` for
//! `n < warmup_updates`; then `lr = lr * sqrt(warmup_updates) / sqrt(n)`. `warmup_init_lr`
//! defaults to 0 (to `lr` without warmup). fairseq divides by `warmup_updates`, so 0 is refused.

use serde::{Deserialize, Serialize};

use super::{LrScheduler, LrSchedulerConfig, ScheduleContext, load, save, track_best};
use crate::optim::Error;
use crate::optim::util::{config_error, exact_f64};

const NAME: &str = "inverse_sqrt";

/// Flags and JSON config of `inverse_sqrt` (fairseq's `InverseSquareRootLRScheduleConfig`).
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InverseSqrtConfig {
    /// Warm the learning rate up linearly for the first N updates.
    #[arg(long = "warmup-updates", default_value_t = 4000)]
    pub warmup_updates: u64,
    /// Initial learning rate during warmup; negative: 0 (or --lr without warmup).
    #[arg(long = "warmup-init-lr", default_value_t = -1.0, allow_negative_numbers = true)]
    pub warmup_init_lr: f64,
}

impl Default for InverseSqrtConfig {
    fn default() -> Self {
        Self { warmup_updates: 4000, warmup_init_lr: -1.0 }
    }
}

impl LrSchedulerConfig for InverseSqrtConfig {
    const NAME: &'static str = NAME;

    fn build(&self, ctx: &ScheduleContext) -> Result<Box<dyn LrScheduler>, Error> {
        Ok(Box::new(InverseSqrt::new(self.clone(), ctx)?))
    }
}

/// What changes while training.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    #[serde(with = "exact_f64")]
    lr: f64,
    #[serde(with = "exact_f64::option")]
    best: Option<f64>,
}

/// Linear warmup, then decay with the inverse square root of the update number.
#[derive(Debug)]
pub struct InverseSqrt {
    cfg: InverseSqrtConfig,
    warmup_init_lr: f64,
    lr_step: f64,
    decay_factor: f64,
    st: State,
}

impl InverseSqrt {
    /// The schedule for `--lr` `ctx.lr` (a single value).
    pub fn new(cfg: InverseSqrtConfig, ctx: &ScheduleContext) -> Result<Self, Error> {
        let warmup_end_lr = ctx.single_lr(NAME)?;
        if cfg.warmup_updates == 0 {
            return Err(config_error(NAME, "--warmup-updates must be > 0 (fairseq divides by it)"));
        }
        let warmup_init_lr = if cfg.warmup_init_lr < 0.0 {
            // `0 if warmup_updates > 0 else warmup_end_lr`, and warmup_updates > 0 here.
            0.0
        } else {
            cfg.warmup_init_lr
        };
        let warmup = cfg.warmup_updates as f64;
        let lr_step = (warmup_end_lr - warmup_init_lr) / warmup;
        // Python's `warmup_updates**0.5` is C's pow().
        let decay_factor = warmup_end_lr * warmup.powf(0.5);
        Ok(Self {
            cfg,
            warmup_init_lr,
            lr_step,
            decay_factor,
            st: State { lr: warmup_init_lr, best: None },
        })
    }
}

impl LrScheduler for InverseSqrt {
    fn name(&self) -> &'static str {
        NAME
    }

    fn lr(&self) -> f64 {
        self.st.lr
    }

    fn step_epoch(&mut self, _epoch: u64, val_loss: Option<f64>) -> f64 {
        track_best(&mut self.st.best, val_loss);
        self.st.lr
    }

    fn step_update(&mut self, num_updates: u64) -> f64 {
        let n = num_updates as f64;
        self.st.lr = if num_updates < self.cfg.warmup_updates {
            self.warmup_init_lr + n * self.lr_step
        } else {
            self.decay_factor * n.powf(-0.5)
        };
        self.st.lr
    }

    fn best(&self) -> Option<f64> {
        self.st.best
    }

    fn state(&self) -> Result<serde_json::Value, Error> {
        save(NAME, &self.st)
    }

    fn load_state(&mut self, state: &serde_json::Value) -> Result<(), Error> {
        self.st = load(NAME, state)?;
        Ok(())
    }
}
