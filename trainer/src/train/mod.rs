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
//! after that many validations without a new best loss; `--stop-time-hours` stops (with a
//! validation and a checkpoint) once the cumulative training time, runs before a resume
//! included, passes it. The scheduler is stepped as fairseq's
//! trainer does (see [`crate::optim::lr_scheduler`]).
//!
//! With `--eval-bleu` (fairseq's translation-task flags, [`eval_bleu`]) every validation also
//! decodes the validation sentences with the runtime's search through
//! [`TorchDecoder`](crate::models::TorchDecoder) and logs sacreBLEU's corpus
//! `bleu`. `--best-checkpoint-metric` (default `loss`; `nll_loss`, `ppl`, `accuracy`, `bleu`)
//! with `--maximize-best-checkpoint-metric` picks the statistic that decides `checkpoint_best`,
//! `--patience` and the scheduler's end-of-epoch step, as in fairseq; the valid line then logs
//! `best_{metric}`.
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
//! `checkpoint_last` is written first and the other names are copied from it, so a run killed
//! between the copies still resumes from its newest state.
//!
//! **Resuming** (fairseq's `checkpoint_utils.load_checkpoint`): `--restore-file` (default
//! `checkpoint_last`, looked up in `--save-dir` like any bare name; a path is used as is) is
//! resumed when it exists, so re-running a killed command goes on where its last checkpoint
//! was; a fresh run starts when the default does not exist, and a named checkpoint that does
//! not exist is an error. Interrupted saves are cleaned up first
//! ([`crate::checkpoint::recover`]). A resume restores the fp32 weights, the optimizer state
//! with the update count and the fp16 loss scale (not with `--reset-optimizer`, which, as in
//! fairseq, also restarts the update count at 0; without it the optimizer and criterion must be
//! the checkpoint's), the scheduler state (not with `--reset-lr-scheduler`; without it the
//! scheduler must be the checkpoint's), the epoch iterator's position, mid-epoch included (not
//! with `--reset-dataloader`: epoch 1), and the meters: best validation loss, patience counter,
//! the running epoch's statistics and the training time (not with `--reset-meters`). A
//! checkpoint over other dictionaries, or with a missing, unexpected or differently shaped
//! tensor, is refused with the dictionary or tensor named. `--finetune-from-model PATH` takes
//! only the weights, with everything else reset, when the save directory has no
//! `checkpoint_last` yet; once it has one, that is resumed instead (fairseq's rule, so that a
//! fine-tuning run can itself be resumed), and it cannot be combined with a non-default
//! `--restore-file`. Since dropout depends only on the seed and the update number, a run
//! stopped and resumed, mid-epoch or at an epoch boundary, ends bit-identical to an
//! uninterrupted one on the CPU (a checkpoint saved at the end of an epoch precedes the
//! scheduler's end-of-epoch step, which the resume replays with the checkpoint's validation
//! loss). The JSON log is appended to on resume.
//!
//! **Mixed precision** ([`crate::fp16`], fairseq's `FP16Optimizer`,
//! `MemoryEfficientFP16Optimizer` and `DynamicLossScaler`): `--fp16` / `--bf16` build the model
//! in fp16/bf16 (initialised in fp32 and rounded, as fairseq's `model.half()`); the optimizer
//! updates fp32 master copies that are copied back after each step, or, with
//! `--memory-efficient-fp16` / `--memory-efficient-bf16`, the 16-bit parameters themselves
//! through fp32 temporaries with its state in fp32. Log-probabilities and the loss are
//! computed in fp32. In fp16 the loss is multiplied by the loss scale (`--fp16-init-scale`,
//! default 128) before `backward`; the gradients are unscaled before their norm is taken, logged
//! and clipped; an inf/NaN norm skips the update ("NOTE: gradient overflow detected, ignoring
//! gradient, setting loss scale to: X"; weights, optimizer, scheduler and update count are left
//! alone, and update-based validations/saves do not fire again) and halves the scale (subject
//! to `--fp16-scale-tolerance` and `--threshold-loss-scale`); the scale doubles after
//! `--fp16-scale-window` overflow-free updates (default 2^14 / `--update-freq`); a scale that
//! would fall to `--min-loss-scale` (default 1e-4) stops training with fairseq's "Minimum loss
//! scale reached" error ([`Error::MinLossScale`]) after saving `checkpoint_last`. `loss_scale`
//! is logged with the training statistics. bf16 has fp32's range: no scaling, and a non-finite
//! gradient norm is an error as in fp32. Checkpoints hold the fp32 weights, the `precision`
//! and the loss scaler's state.
//!
//! **Data-parallel training** ([`crate::distributed`]): under torchrun/SLURM environment
//! variables, or with `--distributed-world-size N` (which starts N local workers), every rank
//! trains on its shard of each epoch's batches; gradients are all-reduced in buckets during
//! backward and scaled by `world_size / total sample_size` (fairseq's normalization), logging
//! numbers are summed over ranks, validation is sharded and summed, rank 0 alone logs and
//! saves, and the ranks check after every update that their gradient norms agree and at the
//! end that their weights are identical.
//!
//! Not offered yet: per-epoch `--update-freq` lists,
//! `--optimizer-overrides`.

mod args;
pub mod eval_bleu;
pub mod model;
mod progress;
mod trainer;

use std::path::PathBuf;

pub use crate::tasks::translation::{LanguagePair, PairDataset, infer_language_pair, load_split};
pub use args::DEFAULT_RESTORE_FILE;
pub use args::{LogFormat, TrainArgs, TrainCommand, TrainConfig, TrainOutcome};
pub use model::{Architecture, Model, ModelContext, ModelFactory};
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
    /// `--eval-bleu` could not decode the validation set.
    #[error("--eval-bleu: decoding the validation set: {0}")]
    EvalBleuSearch(#[from] seqforge_runtime::search::Error),
    /// `--eval-bleu` could not detokenize (the target dictionary or `tokenizer.json`).
    #[error("--eval-bleu: {0}")]
    EvalBleuText(#[from] seqforge_runtime::Error),
    /// `--eval-bleu` could not score.
    #[error("--eval-bleu: scoring: {0}")]
    EvalBleuScore(#[from] seqforge_runtime::score::Error),
    /// Distributed training: rendezvous, a collective, the launcher (c10d's message kept).
    #[error(transparent)]
    Distributed(#[from] crate::distributed::Error),
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

impl From<seqforge_runtime::lm::Error> for Error {
    fn from(e: seqforge_runtime::lm::Error) -> Self {
        Error::Config(e.to_string())
    }
}

impl From<crate::Error> for Error {
    fn from(e: crate::Error) -> Self {
        Error::Component(Box::new(e))
    }
}

/// This module's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
