//! `polynomial_decay`: fairseq 0.12.2's `PolynomialDecayLRSchedule`.
//!
//! Warmup `lr * n / warmup_updates` for `n <= warmup_updates`; then
//! `(lr - end) * (1 - (n - warmup) / (total - warmup))^power + end`; `end` from
//! `total_num_update` on. Like fairseq, epoch `e` starts with `lr[min(e, len-1)]` (not `e - 1`),
//! and from `--force-anneal` on it keeps the current rate.

use serde::{Deserialize, Serialize};

use super::{LrScheduler, LrSchedulerConfig, ScheduleContext, load, save, track_best};
use crate::optim::Error;
use crate::optim::util::{self, config_error, exact_f64};

const NAME: &str = "polynomial_decay";

/// Flags and JSON config of `polynomial_decay` (fairseq's `PolynomialDecayLRScheduleConfig`).
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolynomialDecayConfig {
    /// Warm the learning rate up linearly for the first N updates.
    #[arg(long = "warmup-updates", default_value_t = 0)]
    pub warmup_updates: u64,
    /// Force annealing at this epoch.
    #[arg(long = "force-anneal")]
    pub force_anneal: Option<u64>,
    /// Learning rate to decay to.
    #[arg(long = "end-learning-rate", default_value_t = 0.0)]
    pub end_learning_rate: f64,
    /// Decay exponent.
    #[arg(long = "power", default_value_t = 1.0)]
    pub power: f64,
    /// Total number of updates over which to decay the learning rate (default: --max-update).
    #[arg(long = "total-num-update")]
    pub total_num_update: Option<f64>,
}

impl Default for PolynomialDecayConfig {
    fn default() -> Self {
        Self {
            warmup_updates: 0,
            force_anneal: None,
            end_learning_rate: 0.0,
            power: 1.0,
            total_num_update: None,
        }
    }
}

impl LrSchedulerConfig for PolynomialDecayConfig {
    const NAME: &'static str = NAME;

    fn build(&self, ctx: &ScheduleContext) -> Result<Box<dyn LrScheduler>, Error> {
        Ok(Box::new(PolynomialDecay::new(self.clone(), ctx)?))
    }
}

/// What changes while training.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    /// The epoch's peak rate (fairseq's `self.lr`).
    #[serde(with = "exact_f64")]
    epoch_lr: f64,
    #[serde(with = "exact_f64")]
    warmup_factor: f64,
    /// The current rate (fairseq's optimizer lr).
    #[serde(with = "exact_f64")]
    lr_now: f64,
    #[serde(with = "exact_f64::option")]
    best: Option<f64>,
}

/// Linear warmup, then polynomial decay to `end_learning_rate` at `total_num_update`.
#[derive(Debug)]
pub struct PolynomialDecay {
    cfg: PolynomialDecayConfig,
    lrs: Vec<f64>,
    total_num_update: f64,
    st: State,
}

impl PolynomialDecay {
    /// The schedule for `--lr` `ctx.lr`; `total_num_update` defaults to `ctx.max_update`.
    pub fn new(cfg: PolynomialDecayConfig, ctx: &ScheduleContext) -> Result<Self, Error> {
        let lrs = ctx.lrs(NAME)?.to_vec();
        let total_num_update = cfg.total_num_update.unwrap_or(ctx.max_update as f64);
        if !util::above(total_num_update, 0.0) {
            return Err(config_error(NAME, "--total-num-update (or --max-update) must be > 0"));
        }
        let warmup_factor =
            if cfg.warmup_updates > 0 { 1.0 / cfg.warmup_updates as f64 } else { 1.0 };
        let lr = lrs[0];
        Ok(Self {
            cfg,
            lrs,
            total_num_update,
            st: State { epoch_lr: lr, warmup_factor, lr_now: warmup_factor * lr, best: None },
        })
    }
}

impl LrScheduler for PolynomialDecay {
    fn name(&self) -> &'static str {
        NAME
    }

    fn lr(&self) -> f64 {
        self.st.lr_now
    }

    fn step_begin_epoch(&mut self, epoch: u64) -> f64 {
        self.st.epoch_lr = match self.cfg.force_anneal {
            Some(fa) if epoch >= fa => self.st.lr_now,
            _ => self.lrs[(epoch as usize).min(self.lrs.len() - 1)],
        };
        self.st.lr_now = self.st.warmup_factor * self.st.epoch_lr;
        self.st.lr_now
    }

    fn step_epoch(&mut self, _epoch: u64, val_loss: Option<f64>) -> f64 {
        track_best(&mut self.st.best, val_loss);
        self.st.lr_now
    }

    fn step_update(&mut self, num_updates: u64) -> f64 {
        let warmup = self.cfg.warmup_updates;
        let n = num_updates as f64;
        self.st.lr_now = if warmup > 0 && num_updates <= warmup {
            self.st.warmup_factor = n / warmup as f64;
            self.st.warmup_factor * self.st.epoch_lr
        } else if n >= self.total_num_update {
            self.cfg.end_learning_rate
        } else {
            let w = warmup as f64;
            let lr_range = self.st.epoch_lr - self.cfg.end_learning_rate;
            let pct_remaining = 1.0 - (n - w) / (self.total_num_update - w);
            lr_range * pct_remaining.powf(self.cfg.power) + self.cfg.end_learning_rate
        };
        self.st.lr_now
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
