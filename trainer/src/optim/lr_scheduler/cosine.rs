//! `cosine`: fairseq 0.12.2's `CosineLRSchedule` (SGDR, Loshchilov & Hutter 2016, "SGDR:
//! Stochastic Gradient Descent with Warm Restarts"), with warmup.
//!
//! Warmup: `lr = warmup_init_lr + n * (max_lr - warmup_init_lr) / warmup_updates` for
//! `n < warmup_updates`. Then with `c = n - warmup_updates`, period `P`
//! (`--lr-period-updates`, default `max_update - warmup_updates`) and `t_mult`: restart number
//! `i = floor(log_{t_mult}(1 - c/P * (1 - t_mult)))` (`floor(c/P)` when `t_mult` is 1), period
//! `T_i = t_mult^i * P`, position `t = c - (1 - t_mult^i)/(1 - t_mult) * P` (`c - i*P`), and
//! `lr = min_lr*s + 0.5*(max_lr*s - min_lr*s)*(1 + cos(pi * t / T_i))` with `s = lr_shrink^i`.

use serde::{Deserialize, Serialize};

use super::{LrScheduler, LrSchedulerConfig, ScheduleContext, load, save, track_best};
use crate::optim::Error;
use crate::optim::util::{self, config_error, exact_f64};

const NAME: &str = "cosine";

/// Flags and JSON config of `cosine` (fairseq's `CosineLRScheduleConfig`).
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CosineConfig {
    /// Warm the learning rate up linearly for the first N updates.
    #[arg(long = "warmup-updates", default_value_t = 0)]
    pub warmup_updates: u64,
    /// Initial learning rate during warmup; negative: --min-lr.
    #[arg(long = "warmup-init-lr", default_value_t = -1.0, allow_negative_numbers = true)]
    pub warmup_init_lr: f64,
    /// Maximum learning rate; default: --lr (as in fairseq 0.12.2, where --lr is the maximum).
    #[arg(long = "max-lr")]
    pub max_lr: Option<f64>,
    /// Minimum learning rate.
    #[arg(long = "min-lr", default_value_t = 0.0)]
    pub min_lr: f64,
    /// Factor to grow the length of each period.
    #[arg(long = "t-mult", default_value_t = 1.0)]
    pub t_mult: f64,
    /// Initial number of updates per period; <= 0: --max-update minus --warmup-updates.
    #[arg(long = "lr-period-updates", default_value_t = -1.0, allow_negative_numbers = true)]
    pub lr_period_updates: f64,
    /// Shrink factor of the minimum and maximum at each restart.
    #[arg(long = "lr-shrink", default_value_t = 0.1)]
    pub lr_shrink: f64,
}

impl Default for CosineConfig {
    fn default() -> Self {
        Self {
            warmup_updates: 0,
            warmup_init_lr: -1.0,
            max_lr: None,
            min_lr: 0.0,
            t_mult: 1.0,
            lr_period_updates: -1.0,
            lr_shrink: 0.1,
        }
    }
}

impl LrSchedulerConfig for CosineConfig {
    const NAME: &'static str = NAME;

    fn build(&self, ctx: &ScheduleContext) -> Result<Box<dyn LrScheduler>, Error> {
        Ok(Box::new(Cosine::new(self.clone(), ctx)?))
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

/// Cosine annealing with warm restarts, period growth and shrinking peaks.
#[derive(Debug)]
pub struct Cosine {
    cfg: CosineConfig,
    max_lr: f64,
    warmup_init_lr: f64,
    period: f64,
    lr_step: f64,
    st: State,
}

impl Cosine {
    /// The schedule for `--lr` `ctx.lr` (a single value, the maximum unless `--max-lr` is
    /// given); the default period comes from `ctx.max_update`.
    pub fn new(cfg: CosineConfig, ctx: &ScheduleContext) -> Result<Self, Error> {
        let lr = ctx.single_lr(NAME)?;
        let max_lr = cfg.max_lr.unwrap_or(lr);
        if !util::above(max_lr, cfg.min_lr) {
            return Err(config_error(
                NAME,
                format!("max_lr (={max_lr}) must be more than min_lr (={})", cfg.min_lr),
            ));
        }
        if !util::above(cfg.t_mult, 0.0) {
            return Err(config_error(NAME, format!("--t-mult must be > 0, got {}", cfg.t_mult)));
        }
        let warmup_init_lr = if cfg.warmup_init_lr < 0.0 { cfg.min_lr } else { cfg.warmup_init_lr };
        let period = if cfg.lr_period_updates <= 0.0 {
            if ctx.max_update == 0 {
                return Err(config_error(
                    NAME,
                    "Either --max_update or --lr-period-updates must be set",
                ));
            }
            ctx.max_update as f64 - cfg.warmup_updates as f64
        } else {
            cfg.lr_period_updates
        };
        if !util::above(period, 0.0) {
            return Err(config_error(
                NAME,
                format!("the period must be > 0, got {period} (--max-update <= --warmup-updates?)"),
            ));
        }
        let lr_step = if cfg.warmup_updates > 0 {
            (max_lr - warmup_init_lr) / cfg.warmup_updates as f64
        } else {
            1.0
        };
        Ok(Self {
            cfg,
            max_lr,
            warmup_init_lr,
            period,
            lr_step,
            st: State { lr: warmup_init_lr, best: None },
        })
    }
}

impl LrScheduler for Cosine {
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
        let warmup = self.cfg.warmup_updates;
        if num_updates < warmup {
            self.st.lr = self.warmup_init_lr + num_updates as f64 * self.lr_step;
            return self.st.lr;
        }
        let curr_updates = (num_updates - warmup) as f64;
        let t_mult = self.cfg.t_mult;
        let period = self.period;
        let (i, t_i, t_curr) = if t_mult != 1.0 {
            // math.log(x, base) is log(x) / log(base).
            let x = 1.0 - curr_updates / period * (1.0 - t_mult);
            if !util::above(x, 0.0) {
                // Past the end of a shrinking (t_mult < 1) schedule fairseq raises a math
                // domain error; stay at the minimum instead.
                self.st.lr = self.cfg.min_lr;
                return self.st.lr;
            }
            let i = (x.ln() / t_mult.ln()).floor();
            let t_i = t_mult.powf(i) * period;
            let t_curr = curr_updates - (1.0 - t_mult.powf(i)) / (1.0 - t_mult) * period;
            (i, t_i, t_curr)
        } else {
            let i = (curr_updates / period).floor();
            (i, period, curr_updates - period * i)
        };
        let lr_shrink = self.cfg.lr_shrink.powf(i);
        let min_lr = self.cfg.min_lr * lr_shrink;
        let max_lr = self.max_lr * lr_shrink;
        self.st.lr =
            min_lr + 0.5 * (max_lr - min_lr) * (1.0 + (std::f64::consts::PI * t_curr / t_i).cos());
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
