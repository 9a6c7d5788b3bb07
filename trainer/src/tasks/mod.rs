//! Tasks (fairseq's `FairseqTask`), registry components chosen with `--task`: a task owns what
//! a training run reads and how it judges the model, so that the training loop
//! ([`crate::train::Trainer`]) keeps only the loop.
//!
//! A [`Task`] knows its dictionaries (and so the [`ModelContext`] a model is built with),
//! opens the splits of the data folder as [`TaskDataset`]s (which plan batches and collate
//! them into the [`Batch`]es the loop feeds the model), limits the model's positions, names
//! what a checkpoint records about it, and builds what `--eval-*` decodes at validation
//! ([`ValidationDecoder`]).
//!
//! Built in ([`builtin_tasks`]):
//! - [`translation`] (`--task translation`, the default): parallel data
//!   `{split}.{src}-{tgt}.{lang}`, `dict.{lang}.txt`, `--eval-bleu`.
//! - [`language_modeling`] (`--task language_modeling`): monolingual data `{split}` and
//!   `dict.txt` made by `preprocess --only-source`, cut into blocks by fairseq's
//!   `TokenBlockDataset` (`--tokens-per-sample`, `--sample-break-mode`, `--add-bos-token`,
//!   `--output-dictionary-size`); the validation metric is the loss (perplexity).
//!
//! A plugin registers its own task the same way (`registry.tasks.register("my_task",
//! TaskFactory::of::<MyTaskConfig>())`).

pub mod language_modeling;
pub mod translation;

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::batching::{Batch, BatchConfig, BatchPlan};
use crate::checkpoint::DictionaryIdentity;
use crate::models::StepModel;
use crate::train::eval_bleu::BleuEval;
use crate::train::{Error, ModelContext, Result, TrainArgs};

/// A dataset split as the training loop uses it: sizes for batching, batches by index.
pub trait TaskDataset: Send {
    /// Number of samples.
    fn len(&self) -> usize;

    /// Whether there are no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Orders, filters and groups the samples into batches.
    fn plan_batches(&self, cfg: &BatchConfig) -> Result<BatchPlan>;

    /// Reads and collates the samples `indices` (an empty list gives an empty batch).
    fn batch(&self, indices: &[usize]) -> Result<Batch>;
}

/// What a task decodes at every validation besides the loss (`--eval-bleu`).
pub trait ValidationDecoder: Send {
    /// Decodes the validation sentences with `model` and scores them.
    fn evaluate(&self, model: &dyn StepModel) -> Result<BleuEval>;
}

/// A task: data, dictionaries and validation of one kind of training.
pub trait Task: Send {
    /// The registry name (`translation`, `language_modeling`).
    fn name(&self) -> &'static str;

    /// A short description for the start-up log (`de-en`, `language model`).
    fn describe(&self) -> String;

    /// The dictionary sizes and padding index models are built with.
    fn model_context(&self) -> ModelContext;

    /// The padding index.
    fn pad(&self) -> u32;

    /// The identity of the dictionaries (checked when a checkpoint is restored).
    fn dictionaries(&self) -> Vec<DictionaryIdentity>;

    /// What a checkpoint records about the task (its languages, block size, …): the
    /// exporter and the evaluation commands read it.
    fn checkpoint_config(&self) -> Value;

    /// Opens split `split` of the data folder.
    fn load_dataset(&self, split: &str) -> Result<Box<dyn TaskDataset>>;

    /// The positions batches may use, given the model's `(source, target)` maximum positions.
    fn max_positions(&self, model: (usize, usize)) -> (usize, usize) {
        model
    }

    /// Whether the task trains decoder-only models (a language model): the loop then checks
    /// that the model is one.
    fn decoder_only(&self) -> bool {
        false
    }

    /// What `--eval-*` decodes at validation for the validation samples `indices` (those the
    /// loss validation uses), or `None` when nothing was asked for. A flag the task does not
    /// offer is an error.
    fn validation_decoder(
        &self,
        args: &TrainArgs,
        split: &str,
        indices: Vec<usize>,
    ) -> Result<Option<Box<dyn ValidationDecoder>>>;
}

/// The options a task is built with besides its own flags.
#[derive(Debug, Clone, Copy)]
pub struct TaskContext<'a> {
    /// The training flags (data folder, languages, seed, …).
    pub args: &'a TrainArgs,
}

/// A config that builds one kind of [`Task`]: its flags (`clap::Args`, fairseq's names and
/// defaults) and its JSON form (serde).
pub trait TaskConfig:
    clap::Args + Serialize + DeserializeOwned + Default + fmt::Debug + 'static
{
    /// The registry name, e.g. `"language_modeling"`.
    const NAME: &'static str;

    /// Reads the data folder's dictionaries and builds the task.
    fn build(&self, ctx: &TaskContext<'_>) -> Result<Box<dyn Task>>;

    /// Sets what the model takes from the task in its JSON config (fairseq interpolates such
    /// fields, e.g. a language model's `tokens_per_sample` is `task.tokens_per_sample`); by
    /// default nothing.
    fn configure_model(&self, model: &mut Value) {
        let _ = model;
    }
}

/// Builds a task from its JSON config and the training flags.
pub type BuildTask = fn(&Value, &TaskContext<'_>) -> Result<Box<dyn Task>>;

/// How a registry builds one task by name. Made by [`TaskFactory::of`].
#[derive(Clone, Copy)]
pub struct TaskFactory {
    /// Adds this task's flags to a `clap::Command`.
    pub augment_args: fn(clap::Command) -> clap::Command,
    /// Reads this task's config from parsed flags, as JSON.
    pub config_from_matches: fn(&clap::ArgMatches) -> Result<Value>,
    /// The default config, as JSON (what a run from before tasks were configurable used).
    pub default_config: fn() -> Result<Value>,
    /// Builds the task.
    pub build: BuildTask,
    /// Sets what the model takes from the task in its JSON config
    /// ([`TaskConfig::configure_model`]).
    pub configure_model: fn(&Value, &mut Value) -> Result<()>,
}

impl fmt::Debug for TaskFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskFactory").finish_non_exhaustive()
    }
}

fn to_json<T: Serialize>(name: &str, value: &T) -> Result<Value> {
    serde_json::to_value(value).map_err(|e| Error::Config(format!("task {name}: {e}")))
}

fn parse<C: TaskConfig>(value: &Value) -> Result<C> {
    C::deserialize(value).map_err(|e| Error::Config(format!("task {}: {e}", C::NAME)))
}

impl TaskFactory {
    /// The factory of the task configured by `C`.
    pub fn of<C: TaskConfig>() -> Self {
        Self {
            augment_args: <C as clap::Args>::augment_args,
            config_from_matches: |m| to_json(C::NAME, &C::from_arg_matches(m)?),
            default_config: || to_json(C::NAME, &C::default()),
            build: |value, ctx| parse::<C>(value)?.build(ctx),
            configure_model: |value, model| {
                parse::<C>(value)?.configure_model(model);
                Ok(())
            },
        }
    }
}

/// The tasks built into seqforge: `translation`, `language_modeling`.
pub fn builtin_tasks() -> Vec<(&'static str, TaskFactory)> {
    vec![
        (translation::TranslationConfig::NAME, TaskFactory::of::<translation::TranslationConfig>()),
        (
            language_modeling::LanguageModelingConfig::NAME,
            TaskFactory::of::<language_modeling::LanguageModelingConfig>(),
        ),
    ]
}
