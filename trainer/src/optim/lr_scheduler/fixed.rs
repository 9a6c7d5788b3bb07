//! `fixed`: fairseq 0.12.2's `FixedLRSchedule`.
//!
//! Epoch `e` uses `lr[min(e-1, len-1)]` (one `--lr` value per epoch, the last one repeating);
//! from epoch `--force-anneal` on, `lr[-1] * lr_shrink^(e + 1 - force_anneal)`. During the first
//! `--warmup-updates` updates the rate is scaled by `(n + 1) / warmup_updates`.

use serde::{Deserialize, Serialize};

use super::{LrScheduler, LrSchedulerConfig, ScheduleContext, load, save, track_best};
use crate::optim::Error;
use crate::optim::util::exact_f64;

const NAME: &str = "fixed";

/// Flags and JSON config of `fixed` (fairseq's `FixedLRScheduleConfig`).
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FixedConfig {
    /// Force annealing at this epoch.
    #[arg(long = "force-anneal")]
    pub force_anneal: Option<u64>,
    /// Shrink factor for annealing: lr_new = lr * lr_shrink.
    #[arg(long = "lr-shrink", default_value_t = 0.1)]
    pub lr_shrink: f64,
    /// Warm the learning rate up linearly for the first N updates.
    #[arg(long = "warmup-updates", default_value_t = 0)]
    pub warmup_updates: u64,
}

impl Default for FixedConfig {
    fn default() -> Self {
        Self { force_anneal: None, lr_shrink: 0.1, warmup_updates: 0 }
    }
}

impl LrSchedulerConfig for FixedConfig {
    const NAME: &'static str = NAME;

    fn build(&self, ctx: &ScheduleContext) -> Result<Box<dyn LrScheduler>, Error> {
        Ok(Box::new(Fixed::new(self.clone(), ctx)?))
    }
}

/// What changes while training.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    /// The epoch's rate before warmup scaling (fairseq's `self.lr`).
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

/// A fixed rate per epoch, optional annealing and warmup.
#[derive(Debug)]
pub struct Fixed {
    cfg: FixedConfig,
    lrs: Vec<f64>,
    st: State,
}

impl Fixed {
    /// The schedule for `--lr` `ctx.lr` (one value per epoch, the last one repeating).
    pub fn new(cfg: FixedConfig, ctx: &ScheduleContext) -> Result<Self, Error> {
        let lrs = ctx.lrs(NAME)?.to_vec();
        let warmup_factor =
            if cfg.warmup_updates > 0 { 1.0 / cfg.warmup_updates as f64 } else { 1.0 };
        let lr = lrs[0];
        Ok(Self {
            cfg,
            lrs,
            // fairseq's optimizer starts at lr[0]; the first step_update applies warmup.
            st: State { epoch_lr: lr, warmup_factor, lr_now: lr, best: None },
        })
    }

    fn next_lr(&self, epoch: u64) -> f64 {
        let last = self.lrs[self.lrs.len() - 1];
        match self.cfg.force_anneal {
            Some(fa) if epoch >= fa => last * self.cfg.lr_shrink.powf((epoch + 1 - fa) as f64),
            // lrs[min(epoch - 1, len - 1)]; epoch 0 gives Python's lrs[-1].
            _ => match epoch.checked_sub(1) {
                Some(i) => self.lrs[(i as usize).min(self.lrs.len() - 1)],
                None => last,
            },
        }
    }
}

impl LrScheduler for Fixed {
    fn name(&self) -> &'static str {
        NAME
    }

    fn lr(&self) -> f64 {
        self.st.lr_now
    }

    fn step_begin_epoch(&mut self, epoch: u64) -> f64 {
        self.st.epoch_lr = self.next_lr(epoch);
        self.st.lr_now = self.st.warmup_factor * self.st.epoch_lr;
        self.st.lr_now
    }

    fn step_epoch(&mut self, _epoch: u64, val_loss: Option<f64>) -> f64 {
        track_best(&mut self.st.best, val_loss);
        self.st.lr_now
    }

    fn step_update(&mut self, num_updates: u64) -> f64 {
        let warmup = self.cfg.warmup_updates;
        if warmup > 0 && num_updates < warmup {
            self.st.warmup_factor = (num_updates + 1) as f64 / warmup as f64;
            self.st.lr_now = self.st.warmup_factor * self.st.epoch_lr;
        } else {
            self.st.lr_now = self.st.epoch_lr;
        }
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
