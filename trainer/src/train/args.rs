//! The `train` command line: the core flags ([`TrainArgs`], fairseq's names and defaults) and
//! the resolved configuration of a run ([`TrainConfig`]) with the flags of the chosen model,
//! criterion, optimizer and scheduler.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, FromArgMatches};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Error;
use super::eval_bleu::EvalBleuArgs;
use crate::fp16::{LossScalerConfig, Precision};
use crate::registry::Registry;

/// How log lines are printed on the terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// `epoch 001 | loss 4.321 | …` (fairseq's `simple`).
    #[default]
    Simple,
    /// One JSON object per line.
    Json,
}

/// The trainer's own flags (fairseq's names and defaults). The flags of the model, criterion,
/// optimizer and scheduler are added by their factories (see [`TrainConfig::from_args`]).
#[derive(Debug, Clone, PartialEq, Args, Serialize, Deserialize)]
pub struct TrainArgs {
    /// The preprocessed data folder (`dict.{lang}.txt`, `{split}.{src}-{tgt}.{lang}.bin/.idx`).
    #[arg(value_name = "DATA")]
    pub data: PathBuf,
    /// Source language (inferred from the file names in DATA when there is one pair).
    #[arg(short = 's', long, value_name = "SRC")]
    pub source_lang: Option<String>,
    /// Target language (inferred from the file names in DATA when there is one pair).
    #[arg(short = 't', long, value_name = "TARGET")]
    pub target_lang: Option<String>,
    /// The task: `translation` (parallel data) or `language_modeling` (monolingual data).
    #[arg(long, default_value = DEFAULT_TASK)]
    #[serde(default = "default_task")]
    pub task: String,
    /// Model architecture (a registered name, e.g. transformer_tiny).
    #[arg(short = 'a', long, default_value = "transformer")]
    pub arch: String,
    /// Training criterion.
    #[arg(long, default_value = "cross_entropy")]
    pub criterion: String,
    /// Optimizer.
    #[arg(long, default_value = "adam")]
    pub optimizer: String,
    /// Learning-rate scheduler.
    #[arg(long, default_value = "fixed")]
    pub lr_scheduler: String,
    /// Learning rate(s), comma-separated (one per epoch for `fixed`).
    #[arg(long, value_delimiter = ',', default_value = "0.25")]
    pub lr: Vec<f64>,
    /// Stop training when the learning rate falls to this value or below.
    #[arg(long, default_value_t = -1.0, allow_negative_numbers = true)]
    pub stop_min_lr: f64,
    /// Maximum tokens per batch (padding included).
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Maximum sentences per batch.
    #[arg(long, visible_alias = "max-sentences")]
    pub batch_size: Option<usize>,
    /// Batch sizes are rounded to a multiple of this where possible.
    #[arg(long, default_value_t = 8)]
    pub required_batch_size_multiple: usize,
    /// Maximum tokens per validation batch (default: --max-tokens).
    #[arg(long)]
    pub max_tokens_valid: Option<usize>,
    /// Maximum sentences per validation batch (default: --batch-size).
    #[arg(long, visible_alias = "max-sentences-valid")]
    pub batch_size_valid: Option<usize>,
    /// Accumulate gradients over N batches before each update.
    #[arg(long, default_value_t = 1)]
    pub update_freq: usize,
    /// Clip the gradient norm to this value (0: no clipping).
    #[arg(long, default_value_t = 0.0)]
    pub clip_norm: f64,
    /// Normalize gradients by the number of sentences instead of tokens.
    #[arg(long)]
    pub sentence_avg: bool,
    /// Stop after this many updates (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub max_update: u64,
    /// Stop after this many epochs (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub max_epoch: u64,
    /// Stop (validating and saving) once the cumulative training time, runs before a resume
    /// included, exceeds this many hours (0: no limit).
    #[arg(long, default_value_t = 0.0)]
    #[serde(default)]
    pub stop_time_hours: f64,
    /// Validate every N epochs.
    #[arg(long, default_value_t = 1)]
    pub validate_interval: u64,
    /// Also validate every N updates (0: off).
    #[arg(long, default_value_t = 0)]
    pub validate_interval_updates: u64,
    /// Do not validate.
    #[arg(long)]
    pub disable_validation: bool,
    /// Stop when the validation loss has not improved for N validations (-1: off).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub patience: i64,
    /// The training split.
    #[arg(long, default_value = "train")]
    pub train_subset: String,
    /// The validation split.
    #[arg(long, default_value = "valid")]
    pub valid_subset: String,
    /// Drop validation samples longer than the model's maximum positions instead of failing
    /// (training samples that are too long are always dropped, as in fairseq).
    #[arg(long)]
    pub skip_invalid_size_inputs_valid_test: bool,
    /// Random seed (libtorch and the batch order).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Log format on the terminal.
    #[arg(long, value_enum, default_value_t = LogFormat::Simple)]
    pub log_format: LogFormat,
    /// Log every N updates.
    #[arg(long, default_value_t = 100)]
    pub log_interval: u64,
    /// JSON-lines log file (default: SAVE_DIR/train_log.jsonl).
    #[arg(long)]
    pub log_file: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub no_progress_bar: bool,
    /// Where the run's files go (checkpoints, config.json, the log).
    #[arg(long, default_value = "checkpoints")]
    pub save_dir: PathBuf,
    /// Write no checkpoints.
    #[arg(long)]
    pub no_save: bool,
    /// Save an epoch checkpoint (`checkpoint{epoch}`) every N epochs.
    #[arg(long, default_value_t = 1)]
    pub save_interval: u64,
    /// Also save (and validate) every N updates, as `checkpoint_{epoch}_{updates}` (0: off).
    #[arg(long, default_value_t = 0)]
    pub save_interval_updates: u64,
    /// Do not keep epoch checkpoints (`checkpoint{epoch}`).
    #[arg(long)]
    pub no_epoch_checkpoints: bool,
    /// Do not write `checkpoint_last`.
    #[arg(long)]
    pub no_last_checkpoints: bool,
    /// Keep only the N newest epoch checkpoints (-1: all).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub keep_last_epochs: i64,
    /// Keep only the N newest update checkpoints (-1: all).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub keep_interval_updates: i64,
    /// libtorch intra-op threads (default: libtorch's choice).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Train on the CPU even when CUDA is available.
    #[arg(long)]
    pub cpu: bool,
    /// The checkpoint to resume from: a name looked up in --save-dir, or a path. The default,
    /// `checkpoint_last`, is resumed when it exists (a fresh run starts otherwise); any other
    /// value must exist.
    #[arg(long, default_value = DEFAULT_RESTORE_FILE)]
    pub restore_file: String,
    /// Do not restore the epoch iterator's position: start at epoch 1.
    #[arg(long)]
    pub reset_dataloader: bool,
    /// Do not restore the learning-rate scheduler's state.
    #[arg(long)]
    pub reset_lr_scheduler: bool,
    /// Do not restore the meters (epoch statistics, training time, best validation loss,
    /// patience counter).
    #[arg(long)]
    pub reset_meters: bool,
    /// Do not restore the optimizer's state (nor the update count and the loss scale, as in
    /// fairseq).
    #[arg(long)]
    pub reset_optimizer: bool,
    /// Start from this checkpoint's weights only (optimizer, scheduler, meters and dataloader
    /// reset) when SAVE_DIR has no `checkpoint_last` yet; once it has one, that is resumed.
    #[arg(long, value_name = "PATH")]
    pub finetune_from_model: Option<PathBuf>,
    /// Train in fp16: fp16 model, fp32 master weights in the optimizer, dynamic loss scaling.
    #[arg(long)]
    pub fp16: bool,
    /// Train in bf16: bf16 model, fp32 master weights, no loss scaling.
    #[arg(long)]
    pub bf16: bool,
    /// fp16 without the fp32 master copy: the optimizer updates the fp16 parameters through
    /// fp32 temporaries and keeps its state in fp32 (implies --fp16).
    #[arg(long)]
    pub memory_efficient_fp16: bool,
    /// bf16 without the fp32 master copy (implies --bf16).
    #[arg(long)]
    pub memory_efficient_bf16: bool,
    /// The loss scaler's flags (--fp16-init-scale, --fp16-scale-window, …).
    #[command(flatten)]
    #[serde(default)]
    pub loss_scaler: LossScalerConfig,
    /// The validation statistic that picks `checkpoint_best`, drives `--patience` and is given
    /// to the learning-rate scheduler: `loss`, `nll_loss`, `ppl`, `accuracy` (criteria that
    /// report it) or `bleu` (with --eval-bleu).
    #[arg(long, default_value = DEFAULT_BEST_CHECKPOINT_METRIC)]
    #[serde(default = "default_best_checkpoint_metric")]
    pub best_checkpoint_metric: String,
    /// A higher --best-checkpoint-metric is better (give it with `bleu` or `accuracy`).
    #[arg(long)]
    #[serde(default)]
    pub maximize_best_checkpoint_metric: bool,
    /// BLEU on the validation set (--eval-bleu, --eval-bleu-args, …).
    #[command(flatten)]
    #[serde(default)]
    pub eval_bleu: EvalBleuArgs,
    /// Data-parallel training (--distributed-world-size, --ddp-backend, --bucket-cap-mb, …).
    #[command(flatten, next_help_heading = "Distributed training")]
    #[serde(default)]
    pub distributed: crate::distributed::DistributedArgs,
}

/// `--task`'s default.
pub const DEFAULT_TASK: &str = "translation";

fn default_task() -> String {
    DEFAULT_TASK.to_string()
}

/// `--best-checkpoint-metric`'s default.
pub const DEFAULT_BEST_CHECKPOINT_METRIC: &str = "loss";

fn default_best_checkpoint_metric() -> String {
    DEFAULT_BEST_CHECKPOINT_METRIC.to_string()
}

/// `--restore-file`'s default (fairseq's `checkpoint_last.pt`).
pub const DEFAULT_RESTORE_FILE: &str = "checkpoint_last";

impl TrainArgs {
    /// The numeric format chosen by `--fp16`, `--bf16` and their memory-efficient forms.
    pub fn precision(&self) -> Precision {
        Precision::from_flags(
            self.fp16 || self.memory_efficient_fp16,
            self.bf16 || self.memory_efficient_bf16,
        )
    }

    /// Whether the optimizer works on the 16-bit parameters directly (no fp32 master copy).
    pub fn memory_efficient(&self) -> bool {
        self.memory_efficient_fp16 || self.memory_efficient_bf16
    }
}

/// Everything a run is built from: the core flags, and the names and JSON configs of the
/// model (after flag overrides), criterion, optimizer and scheduler. Written to
/// `SAVE_DIR/config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The core flags.
    pub args: TrainArgs,
    /// The model's registry name (from the architecture).
    pub model: String,
    /// The model's config: the architecture's preset with the model flags applied.
    pub model_config: Value,
    /// The task's config (its flags).
    #[serde(default)]
    pub task_config: Value,
    /// The criterion's config.
    pub criterion_config: Value,
    /// The optimizer's config.
    pub optimizer_config: Value,
    /// The scheduler's config.
    pub lr_scheduler_config: Value,
}

/// The value of `--flag V`, `--flag=V` (or `-s V` for a short alias) in `args`, if present.
fn scan_flag(args: &[OsString], long: &str, short: Option<&str>) -> Option<String> {
    let prefix = format!("{long}=");
    let mut found = None;
    let mut iter = args.iter().map(|a| a.to_string_lossy());
    while let Some(arg) = iter.next() {
        if arg == "--" {
            break;
        }
        if arg == long || short.is_some_and(|s| arg == s) {
            found = iter.next().map(|v| v.into_owned());
        } else if let Some(v) = arg.strip_prefix(&prefix) {
            found = Some(v.to_string());
        }
    }
    found
}

impl TrainConfig {
    /// The `train` command for the chosen components: the core flags plus the flags of the
    /// model of `arch`, and of `criterion`, `optimizer` and `lr_scheduler` (only theirs, as
    /// fairseq does: several components share flag names such as `--warmup-updates`).
    pub fn command(
        registry: &Registry,
        task: &str,
        arch: &str,
        criterion: &str,
        optimizer: &str,
        lr_scheduler: &str,
    ) -> Result<clap::Command, Error> {
        let architecture = registry.architectures.get(arch)?;
        let model = registry.models.get(&architecture.model)?;
        let mut cmd = TrainArgs::augment_args(clap::Command::new("train"));
        cmd = (registry.tasks.get(task)?.augment_args)(cmd);
        cmd = (model.augment_args)(cmd);
        cmd = (registry.criterions.get(criterion)?.augment_args)(cmd);
        cmd = (registry.optimizers.get(optimizer)?.augment_args)(cmd);
        cmd = (registry.lr_schedulers.get(lr_scheduler)?.augment_args)(cmd);
        // The components' `augment_args` set their own descriptions: put the command's back.
        Ok(cmd
            .bin_name("seqforge-train train")
            .about("Train a model on a preprocessed data folder (fairseq-train's flags).")
            .long_about(None::<&str>))
    }

    /// Parses `train` flags (without the program or subcommand name): reads `--task`, `--arch`,
    /// `--criterion`, `--optimizer` and `--lr-scheduler` first, then parses everything with
    /// the flags of those components. Unknown names are errors listing the known ones;
    /// `--help` is an [`Error::Args`] whose message is the help of the chosen components.
    pub fn from_args<I, T>(args: I, registry: &Registry) -> Result<Self, Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let pick = |long: &str, short: Option<&str>, default: &str| {
            scan_flag(&args, long, short).unwrap_or_else(|| default.to_string())
        };
        let task = pick("--task", None, DEFAULT_TASK);
        let arch = pick("--arch", Some("-a"), "transformer");
        let criterion = pick("--criterion", None, "cross_entropy");
        let optimizer = pick("--optimizer", None, "adam");
        let lr_scheduler = pick("--lr-scheduler", None, "fixed");
        let cmd = Self::command(registry, &task, &arch, &criterion, &optimizer, &lr_scheduler)?;
        let matches = cmd.try_get_matches_from(
            std::iter::once(OsString::from("train")).chain(args.iter().cloned()),
        )?;
        let args = TrainArgs::from_arg_matches(&matches)?;
        let architecture = registry.architectures.get(&args.arch)?;
        let model = registry.models.get(&architecture.model)?;
        let mut model_config = (model.apply_args)(&matches, architecture.config.clone())?;
        let task = registry.tasks.get(&args.task)?;
        let task_config = (task.config_from_matches)(&matches)?;
        (task.configure_model)(&task_config, &mut model_config)?;
        let criterion_config =
            (registry.criterions.get(&args.criterion)?.config_from_matches)(&matches)?;
        let optimizer_config =
            (registry.optimizers.get(&args.optimizer)?.config_from_matches)(&matches)?;
        let lr_scheduler_config =
            (registry.lr_schedulers.get(&args.lr_scheduler)?.config_from_matches)(&matches)?;
        Ok(Self {
            model: architecture.model.clone(),
            args,
            model_config,
            task_config,
            criterion_config,
            optimizer_config,
            lr_scheduler_config,
        })
    }
}

/// The `train` subcommand as the binary embeds it: the raw flags, parsed by
/// [`TrainConfig::from_args`] once the chosen components are known (so `--help` lists the
/// flags of the chosen optimizer, scheduler, criterion and model).
#[derive(Debug, Clone, Args)]
#[command(disable_help_flag = true)]
pub struct TrainCommand {
    /// DATA and the flags (see `train --help`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    pub args: Vec<OsString>,
}

/// What [`TrainCommand::run`] did.
#[derive(Debug)]
pub enum TrainOutcome {
    /// This process trained (alone or as one rank).
    Trained(Box<super::TrainSummary>),
    /// `--distributed-world-size N` started N local workers, which all succeeded.
    Launched {
        /// Workers started.
        world_size: usize,
    },
}

impl TrainCommand {
    /// Parses the flags and trains (see [`super::run`]); with `--distributed-world-size N`
    /// and no RANK/WORLD_SIZE in the environment, starts N copies of this program as local
    /// workers instead ([`crate::distributed::spawn_workers`]).
    pub fn run(&self, registry: &Registry) -> Result<TrainOutcome, Error> {
        let config = TrainConfig::from_args(self.args.iter().cloned(), registry)?;
        match crate::distributed::Launch::resolve(&config.args.distributed)? {
            crate::distributed::Launch::Spawn { world_size, port } => {
                let program = std::env::current_exe()
                    .map_err(|source| Error::Io { path: "/proc/self/exe".into(), source })?;
                let args: Vec<OsString> = std::env::args_os().skip(1).collect();
                crate::distributed::spawn_workers(&program, &args, world_size, port)?;
                Ok(TrainOutcome::Launched { world_size })
            }
            _ => Ok(TrainOutcome::Trained(Box::new(super::run(&config, registry)?))),
        }
    }
}
