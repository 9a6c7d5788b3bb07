//! `reduce_lr_on_plateau`: fairseq 0.12.2's `ReduceLROnPlateauLRSchedule`, which wraps
//! `torch.optim.lr_scheduler.ReduceLROnPlateau(patience, factor=lr_shrink, threshold,
//! threshold_mode="rel", mode="min"/"max")`.
//!
//! Optional linear warmup from `--warmup-init-lr` to `--lr` over `--warmup-updates` updates;
//! validation losses are only looked at after warmup. A loss is an improvement when it is below
//! `best * (1 - threshold)` (above `best * (1 + threshold)` with
//! `--maximize-best-checkpoint-metric`); after more than `--lr-patience` epochs without one the
//! rate is multiplied by `--lr-shrink`.

use serde::{Deserialize, Serialize};

use super::{LrScheduler, LrSchedulerConfig, ScheduleContext, load, save};
use crate::optim::Error;
use crate::optim::util::{self, config_error, exact_f64};

const NAME: &str = "reduce_lr_on_plateau";

/// torch's `ReduceLROnPlateau` default `eps`: smaller reductions are skipped.
const TORCH_EPS: f64 = 1e-8;

/// Flags and JSON config of `reduce_lr_on_plateau` (fairseq's
/// `ReduceLROnPlateauLRScheduleConfig`).
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReduceLrOnPlateauConfig {
    /// Shrink factor for annealing.
    #[arg(long = "lr-shrink", default_value_t = 0.1)]
    pub lr_shrink: f64,
    /// Threshold for measuring the new optimum, to only focus on significant changes.
    #[arg(long = "lr-threshold", default_value_t = 1e-4)]
    pub lr_threshold: f64,
    /// Number of epochs with no improvement after which the learning rate is reduced.
    #[arg(long = "lr-patience", default_value_t = 0)]
    pub lr_patience: u64,
    /// Warm the learning rate up linearly for the first N updates.
    #[arg(long = "warmup-updates", default_value_t = 0)]
    pub warmup_updates: u64,
    /// Initial learning rate during warmup; negative: 0 (or --lr without warmup).
    #[arg(long = "warmup-init-lr", default_value_t = -1.0, allow_negative_numbers = true)]
    pub warmup_init_lr: f64,
}

impl Default for ReduceLrOnPlateauConfig {
    fn default() -> Self {
        Self {
            lr_shrink: 0.1,
            lr_threshold: 1e-4,
            lr_patience: 0,
            warmup_updates: 0,
            warmup_init_lr: -1.0,
        }
    }
}

impl LrSchedulerConfig for ReduceLrOnPlateauConfig {
    const NAME: &'static str = NAME;

    fn build(&self, ctx: &ScheduleContext) -> Result<Box<dyn LrScheduler>, Error> {
        Ok(Box::new(ReduceLrOnPlateau::new(self.clone(), ctx)?))
    }
}

/// What changes while training (fairseq saves only `best` and `last_epoch`; the rest lived in
/// its optimizer or was lost on resume).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    /// The warmup rate (fairseq's `self.lr`).
    #[serde(with = "exact_f64")]
    warmup_lr: f64,
    /// The current rate (fairseq's optimizer lr).
    #[serde(with = "exact_f64")]
    lr_now: f64,
    warmup_end: bool,
    /// torch's `best` (starts at +inf, or -inf when maximizing).
    #[serde(with = "exact_f64")]
    best: f64,
    num_bad_epochs: u64,
    last_epoch: u64,
}

/// Shrinks the rate when the validation loss stops improving.
#[derive(Debug)]
pub struct ReduceLrOnPlateau {
    cfg: ReduceLrOnPlateauConfig,
    maximize: bool,
    warmup_init_lr: f64,
    lr_step: f64,
    st: State,
}

impl ReduceLrOnPlateau {
    /// The schedule for `--lr` `ctx.lr` (a single value); `ctx.maximize_best_checkpoint_metric`
    /// picks torch's mode.
    pub fn new(cfg: ReduceLrOnPlateauConfig, ctx: &ScheduleContext) -> Result<Self, Error> {
        let warmup_end_lr = ctx.single_lr(NAME)?;
        if !(util::at_least(cfg.lr_shrink, 0.0) && cfg.lr_shrink < 1.0) {
            return Err(config_error(
                NAME,
                format!("--lr-shrink must be in [0, 1), got {}", cfg.lr_shrink),
            ));
        }
        let warmup = cfg.warmup_updates;
        let warmup_init_lr = if cfg.warmup_init_lr < 0.0 {
            if warmup > 0 { 0.0 } else { warmup_end_lr }
        } else {
            cfg.warmup_init_lr
        };
        let lr_step =
            if warmup > 0 { (warmup_end_lr - warmup_init_lr) / warmup as f64 } else { 0.0 };
        let warmup_end = warmup == 0;
        let lr = if warmup_end { warmup_end_lr } else { warmup_init_lr };
        let maximize = ctx.maximize_best_checkpoint_metric;
        Ok(Self {
            cfg,
            maximize,
            warmup_init_lr,
            lr_step,
            st: State {
                warmup_lr: lr,
                lr_now: lr,
                warmup_end,
                best: if maximize { f64::NEG_INFINITY } else { f64::INFINITY },
                num_bad_epochs: 0,
                last_epoch: 0,
            },
        })
    }

    /// torch's `is_better` in "rel" threshold mode.
    fn is_better(&self, a: f64) -> bool {
        if self.maximize {
            a > self.st.best * (self.cfg.lr_threshold + 1.0)
        } else {
            a < self.st.best * (1.0 - self.cfg.lr_threshold)
        }
    }

    /// torch's `ReduceLROnPlateau.step(metrics)` (cooldown 0, min_lr 0).
    fn torch_step(&mut self, current: f64) {
        self.st.last_epoch += 1;
        if self.is_better(current) {
            self.st.best = current;
            self.st.num_bad_epochs = 0;
        } else {
            self.st.num_bad_epochs += 1;
        }
        if self.st.num_bad_epochs > self.cfg.lr_patience {
            let old_lr = self.st.lr_now;
            let new_lr = (old_lr * self.cfg.lr_shrink).max(0.0);
            if old_lr - new_lr > TORCH_EPS {
                self.st.lr_now = new_lr;
            }
            self.st.num_bad_epochs = 0;
        }
    }
}

impl LrScheduler for ReduceLrOnPlateau {
    fn name(&self) -> &'static str {
        NAME
    }

    fn lr(&self) -> f64 {
        self.st.lr_now
    }

    fn step_epoch(&mut self, epoch: u64, val_loss: Option<f64>) -> f64 {
        match val_loss {
            Some(v) if self.st.warmup_end => self.torch_step(v),
            _ => self.st.last_epoch = epoch,
        }
        self.st.lr_now
    }

    fn step_update(&mut self, num_updates: u64) -> f64 {
        let warmup = self.cfg.warmup_updates;
        if warmup > 0 {
            if num_updates <= warmup {
                self.st.warmup_lr = self.warmup_init_lr + num_updates as f64 * self.lr_step;
                self.st.lr_now = self.st.warmup_lr;
            } else if !self.st.warmup_end {
                self.st.warmup_end = true;
            }
        }
        self.st.lr_now
    }

    fn best(&self) -> Option<f64> {
        self.st.best.is_finite().then_some(self.st.best)
    }

    fn state(&self) -> Result<serde_json::Value, Error> {
        save(NAME, &self.st)
    }

    fn load_state(&mut self, state: &serde_json::Value) -> Result<(), Error> {
        self.st = load(NAME, state)?;
        Ok(())
    }
}
