//! Learning-rate schedulers with fairseq 0.12.2's semantics (`fairseq/optim/lr_scheduler/`):
//! [`InverseSqrt`], [`Fixed`], [`PolynomialDecay`], [`Cosine`], [`ReduceLrOnPlateau`].
//!
//! A scheduler owns the current learning rate (in fairseq it lives in the optimizer's param
//! groups, which the scheduler sets). Drive it as fairseq's trainer does:
//! - after building: `step_update(0)`;
//! - at the start of each epoch (1-based): `step_begin_epoch(epoch)` then
//!   `step_update(num_updates)`;
//! - after each optimizer update: `step_update(num_updates)` (the count after the update);
//! - at the end of each epoch: `step_epoch(epoch, Some(valid_loss))` then
//!   `step_update(num_updates)`.
//!
//! and pass [`LrScheduler::lr`] to [`super::Optimizer::step`]. Every method returns the current
//! learning rate. [`LrScheduler::state`] holds everything that changes while training (floats as
//! exact decimal strings), so a restored scheduler continues bit for bit.

mod cosine;
mod fixed;
mod inverse_sqrt;
mod polynomial_decay;
mod reduce_lr_on_plateau;

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Error, util};

pub use cosine::{Cosine, CosineConfig};
pub use fixed::{Fixed, FixedConfig};
pub use inverse_sqrt::{InverseSqrt, InverseSqrtConfig};
pub use polynomial_decay::{PolynomialDecay, PolynomialDecayConfig};
pub use reduce_lr_on_plateau::{ReduceLrOnPlateau, ReduceLrOnPlateauConfig};

/// A learning-rate schedule, stepped per update and per epoch as fairseq's trainer does (see the
/// module docs for the call order).
pub trait LrScheduler: Send {
    /// The registry name, e.g. `"inverse_sqrt"`.
    fn name(&self) -> &'static str;

    /// The current learning rate (fairseq's `optimizer.get_lr()`).
    fn lr(&self) -> f64;

    /// Updates the learning rate at the beginning of epoch `epoch` (1-based); returns it.
    fn step_begin_epoch(&mut self, epoch: u64) -> f64 {
        let _ = epoch;
        self.lr()
    }

    /// Updates the learning rate at the end of epoch `epoch`, given the validation loss when
    /// there was a validation; returns it (fairseq's `step`).
    fn step_epoch(&mut self, epoch: u64, val_loss: Option<f64>) -> f64;

    /// Updates the learning rate after `num_updates` updates; returns it.
    fn step_update(&mut self, num_updates: u64) -> f64;

    /// The best validation loss seen so far (fairseq's `lr_scheduler.best`), if any.
    fn best(&self) -> Option<f64>;

    /// Everything that changes while training, as JSON for a checkpoint.
    fn state(&self) -> Result<serde_json::Value, Error>;

    /// Restores a state returned by [`LrScheduler::state`] of the same scheduler.
    fn load_state(&mut self, state: &serde_json::Value) -> Result<(), Error>;
}

/// The training options a scheduler reads besides its own flags (fairseq's `optimization.lr`,
/// `optimization.max_update` and `checkpoint.maximize_best_checkpoint_metric`).
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleContext {
    /// `--lr`: one value, or one per epoch for `fixed`/`polynomial_decay`.
    pub lr: Vec<f64>,
    /// `--max-update` (0: unlimited); the default period of `cosine` and the default
    /// `--total-num-update` of `polynomial_decay`.
    pub max_update: u64,
    /// `--maximize-best-checkpoint-metric`: `reduce_lr_on_plateau` then waits for the metric
    /// to stop rising instead of falling.
    pub maximize_best_checkpoint_metric: bool,
}

impl Default for ScheduleContext {
    /// fairseq's defaults: `--lr 0.25`, `--max-update 0`.
    fn default() -> Self {
        Self { lr: vec![0.25], max_update: 0, maximize_best_checkpoint_metric: false }
    }
}

impl ScheduleContext {
    /// `lr[0]`, for schedulers that take a single learning rate (an error when `lr` has more
    /// than one value, as in fairseq, or none).
    pub(crate) fn single_lr(&self, component: &'static str) -> Result<f64, Error> {
        match self.lr.as_slice() {
            [lr] => Ok(*lr),
            [] => Err(util::config_error(component, "--lr is empty")),
            _ => Err(util::config_error(
                component,
                format!(
                    "Cannot use a fixed learning rate schedule with {component}. \
                     Consider --lr-scheduler=fixed instead. ({:?})",
                    self.lr
                ),
            )),
        }
    }

    /// The whole `lr` list (an error when empty).
    pub(crate) fn lrs(&self, component: &'static str) -> Result<&[f64], Error> {
        if self.lr.is_empty() {
            return Err(util::config_error(component, "--lr is empty"));
        }
        Ok(&self.lr)
    }
}

/// A config that builds one kind of [`LrScheduler`]: its flags (`clap::Args`, fairseq's names
/// and defaults) and its JSON form (serde).
pub trait LrSchedulerConfig:
    clap::Args + Serialize + DeserializeOwned + Default + fmt::Debug + 'static
{
    /// The registry name, e.g. `"cosine"`.
    const NAME: &'static str;

    /// Checks the values and builds the scheduler.
    fn build(&self, ctx: &ScheduleContext) -> Result<Box<dyn LrScheduler>, Error>;
}

/// Builds a scheduler from its JSON config and the training options.
pub type BuildLrScheduler =
    fn(&serde_json::Value, &ScheduleContext) -> Result<Box<dyn LrScheduler>, Error>;

/// How a registry builds one scheduler by name. Made by [`LrSchedulerFactory::of`]; used like
/// [`super::OptimizerFactory`], with the training options in a [`ScheduleContext`].
#[derive(Clone, Copy)]
pub struct LrSchedulerFactory {
    /// Adds this scheduler's flags to a `clap::Command` (`clap::Args::augment_args`).
    pub augment_args: fn(clap::Command) -> clap::Command,
    /// Reads this scheduler's config from parsed flags, as JSON.
    pub config_from_matches: fn(&clap::ArgMatches) -> Result<serde_json::Value, Error>,
    /// The default config (fairseq's defaults), as JSON.
    pub default_config: fn() -> Result<serde_json::Value, Error>,
    /// Builds the scheduler from a JSON config and the training options.
    pub build: BuildLrScheduler,
}

impl fmt::Debug for LrSchedulerFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LrSchedulerFactory").finish_non_exhaustive()
    }
}

impl LrSchedulerFactory {
    /// The factory of the scheduler configured by `C`.
    pub fn of<C: LrSchedulerConfig>() -> Self {
        Self {
            augment_args: <C as clap::Args>::augment_args,
            config_from_matches: |m| util::config_from_matches::<C>(C::NAME, m),
            default_config: || util::to_json(C::NAME, &C::default()),
            build: |value, ctx| util::from_json::<C>(C::NAME, value)?.build(ctx),
        }
    }
}

/// The schedulers built into seqforge, by fairseq name: `inverse_sqrt`, `fixed`,
/// `polynomial_decay`, `cosine`, `reduce_lr_on_plateau`.
pub fn builtin_lr_schedulers() -> Vec<(&'static str, LrSchedulerFactory)> {
    vec![
        (InverseSqrtConfig::NAME, LrSchedulerFactory::of::<InverseSqrtConfig>()),
        (FixedConfig::NAME, LrSchedulerFactory::of::<FixedConfig>()),
        (PolynomialDecayConfig::NAME, LrSchedulerFactory::of::<PolynomialDecayConfig>()),
        (CosineConfig::NAME, LrSchedulerFactory::of::<CosineConfig>()),
        (ReduceLrOnPlateauConfig::NAME, LrSchedulerFactory::of::<ReduceLrOnPlateauConfig>()),
    ]
}

/// fairseq's base `step`: keeps the lowest validation loss.
pub(crate) fn track_best(best: &mut Option<f64>, val_loss: Option<f64>) {
    if let Some(v) = val_loss {
        *best = Some(match *best {
            // Python's min(best, v) keeps `best` on ties and NaN comparisons.
            Some(b) if v.partial_cmp(&b) != Some(std::cmp::Ordering::Less) => b,
            _ => v,
        });
    }
}

/// Serializes a scheduler's state.
pub(crate) fn save<T: Serialize>(
    component: &'static str,
    state: &T,
) -> Result<serde_json::Value, Error> {
    util::to_json(component, state)
}

/// Deserializes a scheduler's state.
pub(crate) fn load<T: DeserializeOwned>(
    component: &'static str,
    value: &serde_json::Value,
) -> Result<T, Error> {
    util::from_json(component, value)
}

#[cfg(test)]
mod tests;
