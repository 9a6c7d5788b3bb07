//! The training loop: `seqforge-train train DATA --arch transformer_tiny …`, fairseq-train's
//! flags and semantics on libtorch.
//!
//! - [`TrainConfig::from_args`] parses the command line the way fairseq does: it reads
//!   `--arch`, `--criterion`, `--optimizer` and `--lr-scheduler` first, then parses the full
//!   command with the flags of exactly those components, taken from a
//!   [`Registry`](crate::registry::Registry) (so a plugin component brings its own flags).
//! - [`run`] trains and returns a [`TrainSummary`]; [`Trainer`] is the same loop step by step.
//!
//! One update (fairseq's `train_step`): for each of `--update-freq` batches, the batch becomes
//! tensors (`src_tokens`, `src_lengths`, `prev_output_tokens`, `target`), the model runs with
//! dropout, log-softmax in fp32, the criterion sums the loss over target tokens, and `backward`
//! adds to the gradients; then the gradients are divided by the summed `sample_size` (tokens,
//! or sentences with `--sentence-avg`), their fp32 norm is taken (and clipped with
//! `--clip-norm`), the optimizer steps with the scheduler's learning rate over the parameters
//! sorted by name, and the scheduler sees the new update count. Non-finite gradients stop the
//! run with an error, as fairseq does in fp32.
//!
//! Validation (no dropout, no gradients) runs at the end of every `--validate-interval` epochs,
//! every `--validate-interval-updates` updates and when training stops; `--patience` stops
//! after that many validations without a new best loss. The scheduler is stepped as fairseq's
//! trainer does (see [`crate::optim::lr_scheduler`]).
//!
//! Logging follows fairseq: every `--log-interval` updates and at the end of each epoch a line
//! with `loss`, `nll_loss`, `ppl` (base 2), `wps`, `ups`, `wpb`, `bsz`, `num_updates`, `lr`,
//! `gnorm`, `clip`, `train_wall` and `wall`; validation lines with `valid_*`. Lines go to the
//! terminal through `tracing` (`--log-format simple|json`, an `indicatif` progress bar on
//! stderr when it is a terminal) and always as JSON lines to `--log-file` (default
//! `SAVE_DIR/train_log.jsonl`). The resolved configuration is written to
//! `SAVE_DIR/config.json`.
//!
//! Determinism: on the CPU, a fixed `--seed` (libtorch's generator and the batch order) and a
//! fixed `--threads` give bit-identical runs. libtorch's generator and thread count are
//! process-wide, so two trainings running at the same time in one process disturb each other.
//!
//! Checkpoints ([`crate::checkpoint`]) are saved as fairseq saves them: at the end of every
//! `--save-interval` epochs, every `--save-interval-updates` updates (with a validation) and
//! when training stops, under fairseq's names (`checkpoint_last`, `checkpoint_best`,
//! `checkpoint{epoch}`, `checkpoint_{epoch}_{updates}`) with `--keep-last-epochs` /
//! `--keep-interval-updates` retention; `--no-save` turns them off. Before every update
//! libtorch is reseeded with `seed + num_updates` (fairseq's `_set_seed`), so dropout depends
//! only on the seed and the update number.
//!
//! Not offered yet: resuming (`--restore-file`), `--fp16` / `--bf16`, data-parallel training,
//! per-epoch `--update-freq` lists.

mod args;
mod dataset;
pub mod model;
mod progress;
mod trainer;

use std::path::PathBuf;

pub use args::{LogFormat, TrainArgs, TrainCommand, TrainConfig};
pub use dataset::{LanguagePair, PairDataset, infer_language_pair, load_split};
pub use model::{Architecture, Model, ModelContext, ModelFactory, TransformerArgs};
pub use args::DEFAULT_RESTORE_FILE;
pub use trainer::{
    EpochSummary, Resets, StopReason, TrainSummary, Trainer, UpdateOutput, ValidSummary, run,
};

/// Errors of the training loop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The command line could not be parsed (also `--help`, whose message is the help).
    #[error(transparent)]
    Args(#[from] clap::Error),
    /// Inconsistent or missing options.
    #[error("{0}")]
    Config(String),
    /// A data folder that does not hold what training needs.
    #[error("{path}: {message}")]
    Data {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An I/O error on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The gradients had an infinite or NaN norm (fairseq: "gradients are Nan/Inf").
    #[error("update {update}: gradients are NaN/Inf (norm {norm})")]
    NonFiniteGradients {
        /// The update that failed (1-based).
        update: u64,
        /// The gradient norm.
        norm: f64,
    },
    /// The fp16 loss scale fell to `--min-loss-scale` (fairseq's `FloatingPointError`); the
    /// state before the failed update was saved as `checkpoint_last` when saving is on.
    #[error(
        "update {update}: {source}{}",
        match checkpoint {
            Some(p) => format!(" The last good state was saved to {}.", p.display()),
            None => String::new(),
        }
    )]
    MinLossScale {
        /// The update that failed (1-based).
        update: u64,
        /// [`crate::fp16::Error::MinLossScaleReached`].
        #[source]
        source: crate::fp16::Error,
        /// The `checkpoint_last` written before stopping.
        checkpoint: Option<PathBuf>,
    },
    /// An error from a component (data, batching, model, criterion, optimizer, registry).
    #[error(transparent)]
    Component(Box<crate::Error>),
}

macro_rules! component_errors {
    ($($t:ty),* $(,)?) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Component(Box::new(crate::Error::from(e)))
            }
        }
    )*};
}

component_errors!(
    crate::data::Error,
    crate::batching::Error,
    crate::models::Error,
    crate::optim::Error,
    crate::criterions::Error,
    crate::registry::Error,
    crate::checkpoint::Error,
    crate::fp16::Error,
    tch::TchError,
);

impl From<crate::Error> for Error {
    fn from(e: crate::Error) -> Self {
        Error::Component(Box::new(e))
    }
}

/// This module's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
