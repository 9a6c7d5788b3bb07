//! [`Trainer`]: fairseq's training loop (`fairseq_cli/train.py` with `Trainer.train_step`), and
//! [`run`], which drives it and returns a [`TrainSummary`].

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use serde_json::{Value, json};
use tch::{Device, Kind, Tensor, nn};

use super::args::{DEFAULT_RESTORE_FILE, TrainConfig};
use super::eval_bleu::BleuEval;
use super::model::Model;
use super::progress::{Logger, Meter, MeterState, Stats};
use super::{Error, Result};
use crate::batching::{Batch, BatchConfig, EpochBatchIterator, IteratorConfig, Tokens2d};
use crate::checkpoint::{
    self, Checkpoint, CheckpointConfig, ComponentConfig, DictionaryIdentity, RngState, SaveOptions,
    TrainerState,
};
use crate::criterions::{Criterion, CriterionContext, LoggingOutput, Metrics, safe_round};
use crate::distributed::{CommStats, DdpBackend, GradReducer, Launch, ProcessGroup};
use crate::fp16::{self, DynamicLossScaler, GradCheck, MasterWeights, Precision};
use crate::optim::{LrScheduler, Optimizer, ScheduleContext};
use crate::registry::Registry;
use crate::tasks::{Task, TaskContext, TaskDataset, ValidationDecoder};

/// Why training stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// `--max-update` updates were made.
    MaxUpdate,
    /// `--max-epoch` epochs were trained.
    MaxEpoch,
    /// `--patience` validations without improvement.
    Patience,
    /// The learning rate fell to `--stop-min-lr`.
    MinLr,
    /// The cumulative training time passed `--stop-time-hours`.
    StopTime,
}

/// One validation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ValidSummary {
    /// The epoch it ran in.
    pub epoch: u64,
    /// Updates made before it.
    pub num_updates: u64,
    /// Loss, nll_loss (base 2) and perplexity on the validation split (unrounded).
    pub metrics: Metrics,
    /// The summed counts behind them.
    pub logging: LoggingOutput,
    /// Corpus BLEU of the decoded validation sentences (unrounded), with `--eval-bleu`.
    pub bleu: Option<f64>,
    /// Seconds `--eval-bleu` took (decoding, detokenizing, scoring).
    pub bleu_secs: Option<f64>,
    /// The value of `--best-checkpoint-metric` (unrounded).
    pub best_metric_value: f64,
}

/// One (possibly partial) training epoch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EpochSummary {
    /// The epoch (1-based).
    pub epoch: u64,
    /// Updates made by the end of it.
    pub num_updates: u64,
    /// Training loss, nll_loss and perplexity over the epoch (unrounded).
    pub train: Metrics,
    /// The last validation of the epoch, if any.
    pub valid: Option<Metrics>,
    /// Target tokens trained on.
    pub words: u64,
    /// Seconds spent in training steps.
    pub train_wall: f64,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainSummary {
    /// Per-epoch training results.
    pub epochs: Vec<EpochSummary>,
    /// Every validation, in order.
    pub validations: Vec<ValidSummary>,
    /// Updates made.
    pub num_updates: u64,
    /// Target tokens trained on.
    pub words: u64,
    /// Seconds spent in training steps (forward, backward, update).
    pub train_wall: f64,
    /// `words / train_wall`.
    pub words_per_sec: f64,
    /// The lowest validation loss (base 2): the checkpoint's `best` when
    /// `--best-checkpoint-metric` is `loss` (the default), otherwise the lowest of this run's
    /// validations.
    pub best_valid_loss: Option<f64>,
    /// The best value of `--best-checkpoint-metric` so far (the checkpoint's `best`; the highest
    /// with `--maximize-best-checkpoint-metric`).
    pub best_metric: Option<f64>,
    /// Why training stopped.
    pub stop_reason: StopReason,
    /// FNV-1a 64 of the final parameters (names and fp32 bytes, sorted by name; the fp32
    /// master weights in fp16/bf16), as hex: equal digests mean bit-identical weights.
    pub params_digest: String,
    /// The numeric format trained in.
    pub precision: Precision,
    /// The fp16 loss scale at the end (`None` without loss scaling).
    pub loss_scale: Option<f64>,
    /// Updates skipped because of an fp16 gradient overflow.
    pub overflows: u64,
    /// The checkpoint this run resumed (or, with `--finetune-from-model`, took its weights)
    /// from, if any.
    pub restored_from: Option<PathBuf>,
    /// The update count training went on from (0 for a fresh run).
    pub start_num_updates: u64,
    /// Data-parallel ranks (1 without distributed training).
    pub world_size: usize,
    /// This process's rank.
    pub rank: usize,
    /// Seconds this rank waited for gradient all-reduces after backward (communication not
    /// hidden behind computation; 0 without distributed training).
    pub comm_wait_seconds: f64,
    /// Seconds spent in gradient hooks filling buckets and starting all-reduces during
    /// backward (included in the training steps' time).
    pub comm_hook_seconds: f64,
}

/// What one update did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpdateOutput {
    /// Summed logging numbers of the update's batches.
    pub logging: LoggingOutput,
    /// The gradient norm before clipping (of the normalized fp32 gradients).
    pub gnorm: f64,
    /// Whether the gradients were clipped.
    pub clipped: bool,
    /// The learning rate the update used.
    pub lr: f64,
    /// fp16 only: the gradients overflowed, the update was skipped (the weights, optimizer
    /// and update count are unchanged) and the loss scale lowered.
    pub overflow: bool,
}

/// What a checkpoint restores, after fairseq's `--reset-*` flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Resets {
    /// `--reset-optimizer`: no optimizer state, update count or loss scale.
    pub optimizer: bool,
    /// `--reset-lr-scheduler`: no scheduler state.
    pub lr_scheduler: bool,
    /// `--reset-dataloader`: the epoch iterator starts at epoch 1.
    pub dataloader: bool,
    /// `--reset-meters`: no epoch statistics, training time, best loss or patience counter.
    pub meters: bool,
}

impl Resets {
    /// Everything reset: weights only (`--finetune-from-model`).
    pub const ALL: Self =
        Self { optimizer: true, lr_scheduler: true, dataloader: true, meters: true };
}

/// A training run in progress: model, criterion, optimizer, scheduler, data and counters.
pub struct Trainer {
    config: TrainConfig,
    device: Device,
    // Owns the model's variables.
    _vs: nn::VarStore,
    model: Box<dyn Model>,
    params: Vec<(String, Tensor)>,
    precision: Precision,
    // fp32 copies of 16-bit parameters (fp16/bf16 unless memory-efficient).
    master: Option<MasterWeights>,
    // fp16 only.
    scaler: Option<DynamicLossScaler>,
    criterion: Box<dyn Criterion>,
    optimizer: Box<dyn Optimizer>,
    scheduler: Box<dyn LrScheduler>,
    task: Box<dyn Task>,
    train_data: Box<dyn TaskDataset>,
    epoch_itr: EpochBatchIterator,
    valid: Option<ValidSplit>,
    // What the task decodes at validation (`--eval-bleu`).
    bleu: Option<Box<dyn ValidationDecoder>>,
    pad: i64,
    dictionaries: Vec<DictionaryIdentity>,
    num_updates: u64,
    // The best value of `--best-checkpoint-metric` (fairseq's `save_checkpoint.best`).
    best: Option<f64>,
    bad_validations: u64,
    // The running epoch's statistics (restored with a mid-epoch checkpoint).
    epoch_meter: Meter,
    // Training time of the runs before a resume (fairseq's `previous_training_time`).
    previous_training_time: f64,
    overflows: u64,
    restored_from: Option<PathBuf>,
    start_num_updates: u64,
    logger: Logger,
    start: Instant,
    // Data-parallel state (`None` when training alone).
    dist: Option<Dist>,
}

/// The validation split and its batches (this rank's shard of them).
type ValidSplit = (Box<dyn TaskDataset>, Vec<Vec<usize>>);

/// One rank's data-parallel state. `reducer` is declared before `pg`: it is dropped first.
struct Dist {
    reducer: GradReducer,
    pg: ProcessGroup,
    comm: CommStats,
}

impl Dist {
    fn is_master(&self) -> bool {
        self.pg.is_master()
    }

    /// Sums every rank's logging numbers (fairseq's `_aggregate_logging_outputs`).
    fn all_reduce_logging(&self, logging: &mut LoggingOutput) -> Result<()> {
        let mut v = [
            logging.loss,
            logging.nll_loss,
            logging.ntokens as f64,
            logging.nsentences as f64,
            logging.sample_size as f64,
            logging.n_correct as f64,
            logging.total as f64,
        ];
        self.pg.all_reduce_f64(&mut v)?;
        logging.loss = v[0];
        logging.nll_loss = v[1];
        logging.ntokens = v[2].round() as u64;
        logging.nsentences = v[3].round() as u64;
        logging.sample_size = v[4].round() as u64;
        logging.n_correct = v[5].round() as u64;
        logging.total = v[6].round() as u64;
        Ok(())
    }

    /// fairseq's `_check_grad_norms`: every rank must have computed the same gradient norm,
    /// or the replicas have diverged.
    fn check_grad_norms(&self, gnorm: f64, update: u64) -> Result<()> {
        let norms = self.pg.all_gather_f64(gnorm)?;
        let first = norms[0];
        let same = |x: f64| {
            (!x.is_finite() && !first.is_finite())
                || (x - first).abs() <= 1e-6 * (1.0 + first.abs())
        };
        if norms.iter().all(|&x| same(x)) {
            return Ok(());
        }
        Err(Error::Config(format!(
            "update {update}: gradients are inconsistent between workers (gradient norms by              rank: {norms:?}); the replicas have diverged"
        )))
    }
}

/// What `trainer_state.json`'s `extra` holds for the loop.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
struct LoopState {
    bad_validations: u64,
    #[serde(with = "crate::fp16::exact_f64")]
    previous_training_time: f64,
    epoch_meter: Option<MeterState>,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("arch", &self.config.args.arch)
            .field("task", &self.task.describe())
            .field("device", &self.device)
            .field("precision", &self.precision)
            .field("num_updates", &self.num_updates)
            .finish_non_exhaustive()
    }
}

/// Trains as configured and returns what happened (see the [module docs](super)).
///
/// Under torchrun, SLURM or fairseq's `--distributed-*` flags this process trains as one rank
/// (see [`crate::distributed`]); `--distributed-world-size N` alone is for the command line
/// ([`super::TrainCommand`]), which starts the N workers.
pub fn run(config: &TrainConfig, registry: &Registry) -> Result<TrainSummary> {
    let d = &config.args.distributed;
    if config.args.cpu && d.distributed_backend == crate::distributed::Backend::Nccl {
        return Err(Error::Config(
            "--cpu and --distributed-backend nccl exclude each other (NCCL reduces CUDA tensors; \
             use gloo on the CPU)"
                .into(),
        ));
    }
    let group = match Launch::resolve(d)? {
        Launch::Single => None,
        Launch::Worker(rv) => Some(ProcessGroup::init(
            &rv,
            d.distributed_backend,
            std::time::Duration::from_secs(d.ddp_timeout),
        )?),
        Launch::Spawn { world_size, .. } => {
            return Err(Error::Config(format!(
                "--distributed-world-size {world_size} without RANK/WORLD_SIZE starts worker                  processes, which `seqforge-train train` does; in a library call set RANK,                  WORLD_SIZE, MASTER_ADDR and MASTER_PORT for each rank"
            )));
        }
    };
    Trainer::with_group(config, registry, group)?.train()
}

fn tensor2d(t: &Tokens2d, device: Device) -> Result<Tensor> {
    let rows = i64::try_from(t.rows).map_err(|_| Error::Config("batch too large".into()))?;
    let cols = i64::try_from(t.cols).map_err(|_| Error::Config("batch too large".into()))?;
    Ok(Tensor::f_from_slice(&t.data)?.f_reshape([rows, cols])?.f_to_device(device)?)
}

/// The validation statistics `--best-checkpoint-metric` can name.
const BEST_METRICS: [&str; 5] = ["loss", "nll_loss", "ppl", "accuracy", "bleu"];

/// Checks `--best-checkpoint-metric` before training starts: a known statistic, and `bleu`
/// only with `--eval-bleu`.
fn check_best_metric(a: &super::TrainArgs) -> Result<()> {
    let metric = a.best_checkpoint_metric.as_str();
    if !BEST_METRICS.contains(&metric) {
        return Err(Error::Config(format!(
            "--best-checkpoint-metric {metric}: not a validation statistic (one of {})",
            BEST_METRICS.join(", ")
        )));
    }
    if metric == "bleu" && !a.eval_bleu.eval_bleu {
        return Err(Error::Config(
            "--best-checkpoint-metric bleu needs --eval-bleu (BLEU is only computed then)".into(),
        ));
    }
    Ok(())
}

/// Which checkpoint to start from, with which resets (fairseq's `load_checkpoint`): the
/// default `--restore-file` (`checkpoint_last` in SAVE_DIR) when it exists, else the
/// `--finetune-from-model` weights (which must exist) with everything else reset, else none; any
/// other `--restore-file` must exist (a bare name is looked up in SAVE_DIR, a path is used as
/// is) and cannot be combined with `--finetune-from-model`.
fn restore_plan(a: &super::TrainArgs) -> Result<Option<(PathBuf, Resets)>> {
    let resets = Resets {
        optimizer: a.reset_optimizer,
        lr_scheduler: a.reset_lr_scheduler,
        dataloader: a.reset_dataloader,
        meters: a.reset_meters,
    };
    let named = Path::new(&a.restore_file);
    let path = if named.components().count() == 1 && !named.is_absolute() {
        a.save_dir.join(named)
    } else {
        named.to_path_buf()
    };
    if a.restore_file != DEFAULT_RESTORE_FILE {
        if let Some(ft) = &a.finetune_from_model {
            return Err(Error::Config(format!(
                "--finetune-from-model {} and --restore-file (non-default value) {} can not be \
                 specified together",
                ft.display(),
                a.restore_file
            )));
        }
        if !path.is_dir() {
            return Err(Error::Config(format!(
                "--restore-file {}: no checkpoint at {}",
                a.restore_file,
                path.display()
            )));
        }
        return Ok(Some((path, resets)));
    }
    if path.is_dir() {
        if let Some(ft) = &a.finetune_from_model {
            tracing::info!(
                target: "seqforge::train",
                "{} exists: resuming it, not --finetune-from-model {}",
                path.display(),
                ft.display()
            );
        }
        return Ok(Some((path, resets)));
    }
    match &a.finetune_from_model {
        Some(ft) if ft.is_dir() => {
            tracing::info!(
                target: "seqforge::train",
                "loading pretrained model from {}: optimizer, lr scheduler, meters, dataloader \
                 will be reset",
                ft.display()
            );
            Ok(Some((ft.clone(), Resets::ALL)))
        }
        Some(ft) => {
            Err(Error::Config(format!("--finetune-from-model {} does not exist", ft.display())))
        }
        None => Ok(None),
    }
}

fn batch_config(
    max_tokens: Option<usize>,
    max_sentences: Option<usize>,
    config: &TrainConfig,
    max_positions: (usize, usize),
    skip_invalid: bool,
) -> BatchConfig {
    BatchConfig {
        max_tokens,
        max_sentences,
        required_batch_size_multiple: config.args.required_batch_size_multiple,
        max_source_positions: Some(max_positions.0),
        max_target_positions: Some(max_positions.1),
        skip_invalid_size_inputs: skip_invalid,
        shuffle: true,
        seed: config.args.seed,
    }
}

impl Trainer {
    /// Builds everything a run needs from `config`, taking components from `registry`: sets the
    /// thread count and seeds libtorch, reads the data folder, builds the model on the device
    /// (CUDA when available unless `--cpu`; in fp16/bf16 with `--fp16`/`--bf16`), criterion,
    /// optimizer and scheduler, plans the batches, restores a checkpoint (`--restore-file`,
    /// `--finetune-from-model`, see [`Trainer::restore`]) and writes `SAVE_DIR/config.json`.
    pub fn new(config: &TrainConfig, registry: &Registry) -> Result<Self> {
        Self::with_group(config, registry, None)
    }

    /// [`Trainer::new`] as one rank of `group` (data-parallel; `None`: alone): this rank reads
    /// its shard of every epoch's batches and of the validation batches, rank 0's weights are
    /// broadcast after the restore, gradients are synchronized by a [`GradReducer`], and only
    /// rank 0 writes `config.json`, logs and checkpoints (the other ranks wait at a barrier
    /// around saves).
    pub fn with_group(
        config: &TrainConfig,
        registry: &Registry,
        group: Option<ProcessGroup>,
    ) -> Result<Self> {
        let a = &config.args;
        let (num_shards, shard_id) = group.as_ref().map_or((1, 0), |g| (g.world_size(), g.rank()));
        let is_master = shard_id == 0;
        if a.update_freq == 0 {
            return Err(Error::Config("--update-freq must be at least 1".into()));
        }
        if (a.fp16 || a.memory_efficient_fp16) && (a.bf16 || a.memory_efficient_bf16) {
            return Err(Error::Config("--fp16 and --bf16 exclude each other".into()));
        }
        let precision = a.precision();
        if let Some(n) = a.threads {
            let n = i32::try_from(n).map_err(|_| Error::Config(format!("--threads {n}")))?;
            tch::set_num_threads(n.max(1));
        }
        tch::manual_seed(i64::try_from(a.seed).unwrap_or(i64::MAX));
        let nccl_device = group.as_ref().and_then(|g| g.cuda_device());
        let device = match (a.cpu, nccl_device) {
            (true, _) => Device::Cpu,
            // Each NCCL rank trains on its own GPU (LOCAL_RANK).
            (false, Some(index)) => Device::Cuda(index),
            (false, None) => Device::cuda_if_available(),
        };

        let task_factory = registry.tasks.get(&a.task)?;
        let task_config = match &config.task_config {
            Value::Null => (task_factory.default_config)()?,
            v => v.clone(),
        };
        let task = (task_factory.build)(&task_config, &TaskContext { args: a })?;
        let ctx = task.model_context();

        let model_factory = registry.models.get(&config.model)?;
        if task.decoder_only() != model_factory.decoder_only {
            return Err(Error::Config(format!(
                "--task {} trains {} models, but --arch {} is {} model",
                a.task,
                if task.decoder_only() { "decoder-only (language)" } else { "encoder-decoder" },
                a.arch,
                if model_factory.decoder_only {
                    "a decoder-only (language)"
                } else {
                    "an encoder-decoder"
                }
            )));
        }
        let vs = nn::VarStore::new(device);
        let model = (model_factory.build)(&vs.root(), &config.model_config, &ctx)?;
        // fairseq initialises in fp32 and then calls `model.half()`: the 16-bit model is built
        // in its kind (so buffers and tables follow) and takes the fp32 initial weights.
        let (vs, model) = if precision == Precision::Fp32 {
            (vs, model)
        } else {
            let mut vs16 = nn::VarStore::new(device);
            vs16.set_kind(precision.kind());
            let model16 = (model_factory.build)(&vs16.root(), &config.model_config, &ctx)?;
            let init = model.parameters();
            let _guard = tch::no_grad_guard();
            for (name, p) in model16.parameters() {
                let (_, src) = init.iter().find(|(n, _)| *n == name).ok_or_else(|| {
                    Error::Config(format!("parameter {name} missing from the fp32 model"))
                })?;
                let mut dst = p.shallow_clone();
                dst.f_copy_(src)?;
            }
            (vs16, model16)
        };
        let mut params = model.parameters();
        params.sort_by(|x, y| x.0.cmp(&y.0));
        let master = if precision.uses_master_weights() && !a.memory_efficient() {
            Some(MasterWeights::new(&params)?)
        } else {
            None
        };
        let scaler = if precision.uses_loss_scaler() {
            Some(DynamicLossScaler::new(&a.loss_scaler, 1, a.update_freq)?)
        } else {
            None
        };

        let criterion = (registry.criterions.get(&a.criterion)?.build)(
            &config.criterion_config,
            &CriterionContext { sentence_avg: a.sentence_avg },
        )?;
        let optimizer = (registry.optimizers.get(&a.optimizer)?.build)(&config.optimizer_config)?;
        let mut scheduler = (registry.lr_schedulers.get(&a.lr_scheduler)?.build)(
            &config.lr_scheduler_config,
            &ScheduleContext {
                lr: a.lr.clone(),
                max_update: a.max_update,
                maximize_best_checkpoint_metric: a.maximize_best_checkpoint_metric,
            },
        )?;
        scheduler.step_update(0);

        let max_positions = task.max_positions(model.max_positions());
        let train_data = task.load_dataset(&a.train_subset)?;
        let plan = train_data.plan_batches(&batch_config(
            a.max_tokens,
            a.batch_size,
            config,
            max_positions,
            true,
        ))?;
        if !plan.skipped.is_empty() {
            tracing::warn!(
                "{} samples of '{}' are longer than the model's maximum positions {:?} and \
                 were skipped",
                plan.skipped.len(),
                a.train_subset,
                max_positions
            );
        }
        if plan.batches.is_empty() {
            return Err(Error::Data {
                path: a.data.clone(),
                message: format!("no training batches in split '{}'", a.train_subset),
            });
        }
        let epoch_itr = EpochBatchIterator::new(
            plan.batches,
            IteratorConfig {
                seed: a.seed,
                shuffle: true,
                num_shards,
                shard_id,
                ..IteratorConfig::default()
            },
        )?;

        let valid = if a.disable_validation {
            None
        } else {
            let data = task.load_dataset(&a.valid_subset)?;
            let plan = data.plan_batches(&batch_config(
                a.max_tokens_valid.or(a.max_tokens),
                a.batch_size_valid.or(a.batch_size),
                config,
                max_positions,
                a.skip_invalid_size_inputs_valid_test,
            ))?;
            Some((data, plan.batches))
        };
        check_best_metric(a)?;
        // The task checks its `--eval-*` flags even when validation is disabled.
        let indices = valid.as_ref().map(|(_, b)| b.iter().flatten().copied().collect());
        let bleu = task
            .validation_decoder(a, &a.valid_subset, indices.clone().unwrap_or_default())?
            .filter(|_| indices.is_some());
        if bleu.is_some() && model.step_model().is_none() {
            return Err(Error::Config(format!(
                "--eval-bleu decodes incrementally; model {} has no incremental decoder",
                config.model
            )));
        }
        // Each rank validates its shard of the batches; the statistics are summed (rank 0
        // alone decodes for --eval-bleu, over all of them).
        let valid = match valid {
            Some((data, batches)) if num_shards > 1 => {
                Some((data, crate::batching::shard_batches(&batches, num_shards, shard_id)?))
            }
            other => other,
        };

        let io = |path: &std::path::Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };
        if is_master {
            std::fs::create_dir_all(&a.save_dir).map_err(io(&a.save_dir))?;
            let config_path = a.save_dir.join("config.json");
            let text = serde_json::to_string_pretty(config)
                .map_err(|e| Error::Config(format!("config.json: {e}")))?;
            std::fs::write(&config_path, text + "\n").map_err(io(&config_path))?;
            // A save directory left by a killed run: finish or drop its interrupted saves.
            for path in checkpoint::recover(&a.save_dir)? {
                tracing::info!(target: "seqforge::train", "recovered {}", path.display());
            }
        }
        if let Some(g) = &group {
            // The other ranks read the save directory only once rank 0 has recovered it.
            g.barrier()?;
        }
        let restore = restore_plan(a)?;
        let log_path = a.log_file.clone().unwrap_or_else(|| a.save_dir.join("train_log.jsonl"));
        let show_bar = !a.no_progress_bar;
        let logger = if is_master {
            Logger::new(a.log_format, &log_path, restore.is_some(), show_bar, &a.valid_subset)?
        } else {
            Logger::silent(a.log_format, &a.valid_subset)
        };

        tracing::info!(
            target: "seqforge::train",
            "{} ({}): {}, {} train / {} valid samples, {} params, {} batches per epoch, \
             device {:?}, {:?}{}",
            a.arch,
            config.model,
            task.describe(),
            train_data.len(),
            valid.as_ref().map_or(0, |v| v.0.len()),
            params.iter().map(|(_, t)| t.numel()).sum::<usize>(),
            epoch_itr.len(),
            device,
            precision,
            if a.memory_efficient() { " (memory-efficient)" } else { "" }
        );

        let dictionaries = task.dictionaries();
        let pad = i64::from(task.pad());
        let mut trainer = Self {
            config: config.clone(),
            device,
            _vs: vs,
            model,
            params,
            precision,
            master,
            scaler,
            criterion,
            optimizer,
            scheduler,
            task,
            train_data,
            epoch_itr,
            valid,
            bleu,
            pad,
            dictionaries,
            num_updates: 0,
            best: None,
            bad_validations: 0,
            epoch_meter: Meter::new(),
            previous_training_time: 0.0,
            overflows: 0,
            restored_from: None,
            start_num_updates: 0,
            logger,
            start: Instant::now(),
            dist: None,
        };
        if let Some((path, resets)) = restore {
            trainer.restore(&path, resets)?;
        }
        if let Some(pg) = group {
            trainer.join(pg)?;
        }
        Ok(trainer)
    }

    /// Makes this trainer a rank of `pg`: broadcasts rank 0's weights (the 16-bit model and
    /// the fp32 master copy) and hooks the gradient reducer onto the parameters (sorted by
    /// name, so every rank buckets them alike).
    fn join(&mut self, pg: ProcessGroup) -> Result<()> {
        let d = &self.config.args.distributed;
        {
            let _guard = tch::no_grad_guard();
            let model: Vec<&Tensor> = self.params.iter().map(|(_, t)| t).collect();
            pg.broadcast(&model, 0)?;
            if let Some(m) = &self.master {
                let master: Vec<&Tensor> = m.params().iter().map(|(_, t)| t).collect();
                pg.broadcast(&master, 0)?;
            }
        }
        let params: Vec<&Tensor> = self.params.iter().map(|(_, t)| t).collect();
        let overlap = d.ddp_backend == DdpBackend::C10d;
        let reducer = GradReducer::new(&pg, &params, d.bucket_cap_mb, overlap)?;
        tracing::info!(
            target: "seqforge::train",
            "data parallel: rank {} of {}, {} parameters in {} buckets of at most {} MB, \
             ddp backend {:?}",
            pg.rank(),
            pg.world_size(),
            reducer.params(),
            reducer.buckets(),
            d.bucket_cap_mb,
            d.ddp_backend
        );
        self.dist = Some(Dist { reducer, pg, comm: CommStats::default() });
        Ok(())
    }

    /// Whether this process writes logs and checkpoints (rank 0, or training alone).
    pub fn is_master(&self) -> bool {
        self.dist.as_ref().is_none_or(Dist::is_master)
    }

    /// Runs forward and backward on every batch of an update, telling the gradient reducer
    /// which backward is the last (the only one that communicates); empty batches (a rank's
    /// padding at the end of an epoch) are skipped. `scaled`: multiply the loss by the fp16
    /// loss scale first.
    fn forward_backward(&mut self, batches: &[Batch], scaled: bool) -> Result<LoggingOutput> {
        let mut logging = LoggingOutput::default();
        let last = batches.len().saturating_sub(1);
        let (world, rank) = self.dist.as_ref().map_or((1, 0), |d| (d.pg.world_size(), d.pg.rank()));
        for (i, batch) in batches.iter().enumerate() {
            if let Some(d) = &self.dist {
                d.reducer.prepare(i == last)?;
            }
            if batch.is_empty() {
                continue;
            }
            let k = (i * world + rank) as u64;
            RngState::reseed_micro_batch(self.config.args.seed, self.num_updates, k);
            let (loss, out) = self.forward_batch(batch, true)?;
            let loss = match (&self.scaler, scaled) {
                (Some(s), true) => s.scale(&loss)?,
                _ => loss,
            };
            loss.f_backward()?;
            logging += out;
        }
        Ok(logging)
    }

    /// After the update's backwards: with data parallelism, waits for the gradient
    /// all-reduces and sums the logging numbers over ranks. Returns the factor the gradients
    /// must be multiplied by: `1 / sample_size` alone; `world_size / total sample_size` in
    /// data parallel, whose all-reduced gradients are already divided by the world size
    /// (fairseq's `multiply_grads(world_size / sample_size)`).
    fn synchronize(&mut self, logging: &mut LoggingOutput) -> Result<f64> {
        let Some(d) = &mut self.dist else {
            return Ok(if logging.sample_size > 0 {
                1.0 / logging.sample_size as f64
            } else {
                1.0
            });
        };
        let stats = d.reducer.finish()?;
        d.comm.wait_seconds += stats.wait_seconds;
        d.comm.hook_seconds += stats.hook_seconds;
        d.all_reduce_logging(logging)?;
        let world = d.pg.world_size() as f64;
        Ok(if logging.sample_size > 0 { world / logging.sample_size as f64 } else { 1.0 })
    }

    /// Restores the checkpoint directory `path` into this (freshly built) trainer, as fairseq's
    /// `Trainer.load_checkpoint` + `checkpoint_utils.load_checkpoint` do: refuses another
    /// vocabulary and checks every model tensor's name and shape (errors name the dictionary or
    /// tensor), then loads the fp32 weights (into the fp32 master copy and the 16-bit model in
    /// fp16/bf16); unless reset, the optimizer state with the update count and the loss scale
    /// (`resets.optimizer`; the optimizer and criterion must be the checkpoint's), the
    /// scheduler state, the epoch iterator's position (mid-epoch included), and the meters
    /// (best validation loss, patience counter, the running epoch's statistics, training time).
    pub fn restore(&mut self, path: &Path, resets: Resets) -> Result<()> {
        let ckpt = checkpoint::load(path)?;
        ckpt.check_dictionaries(&self.dictionaries)?;
        let state_dict = self.model.state_dict();
        ckpt.load_model_into(&state_dict)?;
        if let Some(master) = &mut self.master {
            master.load_fp32(&ckpt.model)?;
        }
        let a = &self.config.args;
        let st = &ckpt.state;
        if !resets.optimizer {
            for (what, saved, ours) in [
                ("Criterion", &ckpt.config.criterion.name, &a.criterion),
                ("Optimizer", &ckpt.config.optimizer.name, &a.optimizer),
            ] {
                if saved != ours {
                    return Err(Error::Config(format!(
                        "{}: {what} does not match; please reset the optimizer \
                         (--reset-optimizer). {saved} vs {ours}",
                        path.display()
                    )));
                }
            }
            ckpt.validate_optimizer(self.optimizer_params())?;
            self.optimizer.load_state(&ckpt.optimizer)?;
            self.num_updates = st.num_updates;
            if let (Some(scaler), Some(saved)) = (&mut self.scaler, &st.loss_scaler) {
                scaler.load_state(saved)?;
            }
        }
        if !resets.lr_scheduler {
            if ckpt.config.lr_scheduler.name != a.lr_scheduler {
                return Err(Error::Config(format!(
                    "{}: the checkpoint's learning-rate scheduler is {}, this run's is {}; \
                     give --reset-lr-scheduler",
                    path.display(),
                    ckpt.config.lr_scheduler.name,
                    a.lr_scheduler
                )));
            }
            self.scheduler.load_state(&st.lr_scheduler)?;
            if st.end_of_epoch {
                // Saved at the end of an epoch, before the loop's end-of-epoch step: replay it
                // with that checkpoint's validation loss, as the run would have gone on.
                self.scheduler.step_epoch(st.epoch, st.val_loss);
                self.scheduler.step_update(self.num_updates);
            }
        } else {
            self.scheduler.step_update(self.num_updates);
        }
        if !resets.dataloader {
            self.epoch_itr.load_state_dict(&st.iterator)?;
        }
        if !resets.meters {
            let extra: LoopState = serde_json::from_value(st.extra.clone()).map_err(|e| {
                Error::Config(format!(
                    "{}: unreadable loop state: {e}",
                    path.join(checkpoint::TRAINER_STATE_FILE).display()
                ))
            })?;
            if !resets.optimizer {
                self.best = st.best;
            }
            self.bad_validations = extra.bad_validations;
            self.previous_training_time = extra.previous_training_time;
            // fairseq resets the meters when the checkpoint is at the start of an epoch.
            if !resets.dataloader
                && st.iterator.iterations_in_epoch > 0
                && let Some(m) = &extra.epoch_meter
            {
                self.epoch_meter = Meter::from_state(m);
            }
        }
        self.restored_from = Some(path.to_path_buf());
        self.start_num_updates = self.num_updates;
        tracing::info!(
            target: "seqforge::train",
            "Loaded checkpoint {} (epoch {} @ {} updates){}",
            path.display(),
            st.iterator.epoch,
            self.num_updates,
            if resets == Resets::default() { String::new() } else { format!(", reset {resets:?}") }
        );
        Ok(())
    }

    /// The parameters the optimizer updates: the fp32 master copies, or the model's own.
    fn optimizer_params(&self) -> &[(String, Tensor)] {
        match &self.master {
            Some(m) => m.params(),
            None => &self.params,
        }
    }

    /// The model being trained.
    pub fn model(&self) -> &dyn Model {
        self.model.as_ref()
    }

    /// The parameters, sorted by name (the order the optimizer sees them in).
    pub fn parameters(&self) -> &[(String, Tensor)] {
        &self.params
    }

    /// Updates made so far.
    pub fn num_updates(&self) -> u64 {
        self.num_updates
    }

    /// The current learning rate.
    pub fn lr(&self) -> f64 {
        self.scheduler.lr()
    }

    /// The task being trained.
    pub fn task(&self) -> &dyn Task {
        self.task.as_ref()
    }

    /// Loss of one batch with gradients (when `train`) or without.
    fn forward_batch(&self, batch: &Batch, train: bool) -> Result<(Tensor, LoggingOutput)> {
        let (Some(prev), Some(target)) = (&batch.prev_output_tokens, &batch.target) else {
            return Err(Error::Config("a batch without a target side".into()));
        };
        let src_tokens = tensor2d(&batch.src_tokens, self.device)?;
        let src_lengths = Tensor::f_from_slice(&batch.src_lengths)?.f_to_device(self.device)?;
        let prev = tensor2d(prev, self.device)?;
        let target = tensor2d(target, self.device)?;
        let net_output = self.model.forward(&src_tokens, &src_lengths, &prev, train)?;
        let out = self.criterion.compute_for(
            self.model.as_ref(),
            &net_output,
            &target,
            self.pad,
            train,
        )?;
        let logging = out.logging_output()?;
        Ok((out.loss, logging))
    }

    fn grads(&self) -> Vec<Tensor> {
        self.params.iter().map(|(_, p)| p.grad()).filter(Tensor::defined).collect()
    }

    /// One update over `batches` (fairseq's `train_step` with `len(batches)` as the update
    /// frequency): forward and backward on each, gradients divided by the summed
    /// `sample_size`, norm taken and clipped, optimizer step, scheduler step.
    ///
    /// In fp16 the loss is scaled before `backward` and the gradients unscaled before the norm
    /// and clipping; an overflow skips the update ([`UpdateOutput::overflow`]: weights,
    /// optimizer, scheduler and update count unchanged, loss scale lowered), and a scale that
    /// would fall to `--min-loss-scale` is [`Error::MinLossScale`].
    pub fn train_step(&mut self, batches: &[Batch]) -> Result<UpdateOutput> {
        RngState::reseed(self.config.args.seed, self.num_updates);
        if self.precision != Precision::Fp32 {
            return self.train_step_mixed(batches);
        }
        let mut logging = self.forward_backward(batches, false)?;
        let multiplier = self.synchronize(&mut logging)?;
        let mut grads = self.grads();
        let _guard = tch::no_grad_guard();
        if multiplier != 1.0 {
            for g in &mut grads {
                let _ = g.f_mul_scalar_(multiplier)?;
            }
        }
        let gnorm = if grads.is_empty() {
            0.0
        } else {
            let norms = grads
                .iter()
                .map(|g| g.f_norm_scalaropt_dtype(2, Kind::Float))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            Tensor::f_stack(&norms, 0)?.f_norm()?.f_double_value(&[])?
        };
        let update = self.num_updates + 1;
        if let Some(d) = &self.dist {
            d.check_grad_norms(gnorm, update)?;
        }
        if !gnorm.is_finite() {
            return Err(Error::NonFiniteGradients { update, norm: gnorm });
        }
        let clip_norm = self.config.args.clip_norm;
        let clipped = clip_norm > 0.0 && gnorm > clip_norm;
        if clip_norm > 0.0 {
            let coef = (clip_norm / (gnorm + 1e-6)).min(1.0);
            if coef < 1.0 {
                for g in &mut grads {
                    let _ = g.f_mul_scalar_(coef)?;
                }
            }
        }
        let lr = self.scheduler.lr();
        self.optimizer.step(&self.params, lr)?;
        for g in &mut grads {
            let _ = g.f_zero_()?;
        }
        self.num_updates = update;
        self.scheduler.step_update(update);
        Ok(UpdateOutput { logging, gnorm, clipped, lr, overflow: false })
    }

    /// Zeroes the model's gradients (and the fp32 master gradients).
    fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
        if let Some(m) = &mut self.master {
            m.zero_grad();
        }
    }

    /// [`Trainer::train_step`] in fp16/bf16 (fairseq's `FP16Optimizer` /
    /// `MemoryEfficientFP16Optimizer` around the optimizer, see [`crate::fp16`]).
    fn train_step_mixed(&mut self, batches: &[Batch]) -> Result<UpdateOutput> {
        self.zero_grad();
        let mut logging = self.forward_backward(batches, true)?;
        let multiplier = self.synchronize(&mut logging)?;
        let clip_norm = self.config.args.clip_norm;
        let update = self.num_updates + 1;
        let check = match &mut self.master {
            Some(m) => m.unscale_clip_and_check(self.scaler.as_mut(), clip_norm, multiplier),
            None => fp16::unscale_clip_and_check_in_place(
                &self.params,
                self.scaler.as_mut(),
                clip_norm,
                multiplier,
            ),
        };
        let lr = self.scheduler.lr();
        if let Some(d) = &self.dist {
            let norm = match &check {
                Ok(GradCheck::Finite { grad_norm } | GradCheck::Overflow { grad_norm, .. })
                | Err(fp16::Error::NonFiniteGradients { grad_norm }) => *grad_norm,
                _ => f64::NAN,
            };
            d.check_grad_norms(norm, update)?;
        }
        let gnorm = match check {
            Ok(GradCheck::Finite { grad_norm }) => grad_norm,
            Ok(GradCheck::Overflow { grad_norm, new_scale }) => {
                self.zero_grad();
                self.overflows += 1;
                tracing::info!(
                    target: "seqforge::train",
                    "NOTE: gradient overflow detected, ignoring gradient, setting loss scale to: \
                     {new_scale}"
                );
                return Ok(UpdateOutput {
                    logging,
                    gnorm: grad_norm,
                    clipped: false,
                    lr,
                    overflow: true,
                });
            }
            Err(fp16::Error::NonFiniteGradients { grad_norm }) => {
                return Err(Error::NonFiniteGradients { update, norm: grad_norm });
            }
            Err(e @ fp16::Error::MinLossScaleReached { .. }) => {
                return Err(Error::MinLossScale { update, source: e, checkpoint: None });
            }
            Err(e) => return Err(e.into()),
        };
        let clipped = clip_norm > 0.0 && gnorm > clip_norm;
        match &mut self.master {
            Some(m) => {
                self.optimizer.step(m.params(), lr)?;
                m.finish_step(self.scaler.as_mut())?;
            }
            None => {
                self.optimizer.step(&self.params, lr)?;
                if let Some(s) = &mut self.scaler {
                    s.update();
                }
            }
        }
        self.zero_grad();
        self.num_updates = update;
        self.scheduler.step_update(update);
        Ok(UpdateOutput { logging, gnorm, clipped, lr, overflow: false })
    }

    /// Loss, nll_loss and perplexity on the validation split (no dropout, no gradients), or
    /// `None` with `--disable-validation`.
    pub fn validate(&self) -> Result<Option<(Metrics, LoggingOutput, f64)>> {
        let Some((data, batches)) = &self.valid else {
            return Ok(None);
        };
        let start = Instant::now();
        let _guard = tch::no_grad_guard();
        let mut logging = LoggingOutput::default();
        for indices in batches {
            let batch = data.batch(indices)?;
            if batch.is_empty() {
                continue;
            }
            logging += self.forward_batch(&batch, false)?.1;
        }
        if let Some(d) = &self.dist {
            d.all_reduce_logging(&mut logging)?;
        }
        Ok(Some((logging.metrics(), logging, start.elapsed().as_secs_f64())))
    }

    /// BLEU of the model on the validation set (`--eval-bleu`; `None` without it or with
    /// `--disable-validation`): the validation sentences are decoded with the shared search
    /// through [`TorchDecoder`](crate::models::TorchDecoder), without dropout or
    /// gradients, on the training device and in the training precision (see
    /// [`super::eval_bleu`]). Training is not affected: the model keeps no train/eval mode
    /// (dropout is chosen per forward call) and decoding draws nothing from libtorch's generator.
    pub fn eval_bleu(&self) -> Result<Option<BleuEval>> {
        let Some(evaluator) = &self.bleu else {
            return Ok(None);
        };
        if !self.is_master() {
            return Ok(None);
        }
        let model = self.model.step_model().ok_or_else(|| {
            Error::Config("--eval-bleu needs a model that decodes incrementally".to_string())
        })?;
        evaluator.evaluate(model).map(Some)
    }

    /// Validates (loss, and BLEU with `--eval-bleu`), logs, and updates the best value of
    /// `--best-checkpoint-metric` and the patience counter; returns that metric's value and
    /// whether patience ran out.
    fn validate_and_log(
        &mut self,
        epoch: u64,
        validations: &mut Vec<ValidSummary>,
    ) -> Result<(Option<f64>, bool)> {
        let Some((metrics, logging, secs)) = self.validate()? else {
            return Ok((None, false));
        };
        let bleu = self.eval_bleu()?;
        let a = &self.config.args;
        let metric = a.best_checkpoint_metric.as_str();
        let value = match metric {
            "loss" => metrics.loss,
            "nll_loss" => metrics.nll_loss,
            "ppl" => metrics.ppl,
            "accuracy" => metrics.accuracy.ok_or_else(|| {
                Error::Config(format!(
                    "--best-checkpoint-metric accuracy: criterion {} does not report accuracy",
                    a.criterion
                ))
            })?,
            "bleu" => match &bleu {
                Some(b) => b.score.score,
                // Rank 0 decodes; its score is broadcast below.
                None if !self.is_master() => f64::NAN,
                None => {
                    return Err(Error::Config(
                        "--best-checkpoint-metric bleu needs --eval-bleu".to_string(),
                    ));
                }
            },
            other => {
                return Err(Error::Config(format!("--best-checkpoint-metric {other}: unknown")));
            }
        };
        let value = match &self.dist {
            Some(d) => d.pg.broadcast_f64(value)?,
            None => value,
        };
        let maximize = a.maximize_best_checkpoint_metric;
        // fairseq's should_stop_early: strictly better; checkpoint_best also takes ties.
        let improved = self.best.is_none_or(|b| if maximize { value > b } else { value < b });
        if improved {
            self.best = Some(value);
        }
        let r = metrics.rounded();
        let batches = self.valid.as_ref().map_or(0, |v| v.1.len()).max(1) as f64;
        let mut stats = Stats::new();
        stats.push(("loss".into(), json!(r.loss)));
        stats.push(("nll_loss".into(), json!(r.nll_loss)));
        stats.push(("ppl".into(), json!(r.ppl)));
        if let Some(acc) = r.accuracy {
            stats.push(("accuracy".into(), json!(acc)));
        }
        if let Some(b) = &bleu {
            stats.push(("bleu".into(), json!(safe_round(b.score.score, 2))));
        }
        stats.push(("wps".into(), json!(safe_round(logging.ntokens as f64 / secs.max(1e-9), 0))));
        stats.push(("wpb".into(), json!(safe_round(logging.ntokens as f64 / batches, 1))));
        stats.push(("bsz".into(), json!(safe_round(logging.nsentences as f64 / batches, 1))));
        stats.push(("num_updates".into(), json!(self.num_updates)));
        let digits = if metric == "bleu" { 2 } else { 3 };
        stats.push((format!("best_{metric}"), json!(self.best.map(|b| safe_round(b, digits)))));
        self.logger.log("valid", epoch, None, &stats)?;
        if let Some(b) = &bleu {
            tracing::debug!(
                target: "seqforge::train",
                "{} ({} sentences in {:.2} s)",
                b.score,
                b.hypotheses.len(),
                b.secs
            );
        }
        validations.push(ValidSummary {
            epoch,
            num_updates: self.num_updates,
            metrics,
            logging,
            bleu: bleu.as_ref().map(|b| b.score.score),
            bleu_secs: bleu.as_ref().map(|b| b.secs),
            best_metric_value: value,
        });
        // fairseq's should_stop_early.
        let patience = self.config.args.patience;
        let out_of_patience = if patience <= 0 {
            false
        } else if improved {
            self.bad_validations = 0;
            false
        } else {
            self.bad_validations += 1;
            self.bad_validations >= patience.unsigned_abs()
        };
        if out_of_patience {
            tracing::info!(
                target: "seqforge::train",
                "early stop since valid performance hasn't improved for last {patience} runs"
            );
        }
        Ok((Some(value), out_of_patience))
    }

    /// Trains until `--max-update`, `--max-epoch`, `--patience`, `--stop-min-lr` or
    /// `--stop-time-hours` stops it.
    ///
    /// When the fp16 loss scale reaches `--min-loss-scale`, `checkpoint_last` is saved (the
    /// state before the failed update) and [`Error::MinLossScale`] names it.
    pub fn train(mut self) -> Result<TrainSummary> {
        let a = self.config.args.clone();
        let mut epochs = Vec::new();
        let mut validations = Vec::new();
        let mut stop_reason = StopReason::MaxEpoch;
        let (mut words, mut train_wall) = (0u64, 0f64);
        let mut lr = self.scheduler.lr();
        loop {
            if a.max_epoch > 0 && self.epoch_itr.next_epoch_idx() > a.max_epoch {
                stop_reason = StopReason::MaxEpoch;
                break;
            }
            // A resumed run that had already reached --max-update or --stop-time-hours.
            if a.max_update > 0 && self.num_updates >= a.max_update {
                stop_reason = StopReason::MaxUpdate;
                break;
            }
            if a.stop_time_hours > 0.0 && self.previous_training_time / 3600.0 > a.stop_time_hours {
                stop_reason = StopReason::StopTime;
                break;
            }
            if lr <= a.stop_min_lr {
                tracing::info!(
                    target: "seqforge::train",
                    "stopping training because the learning rate ({lr}) reached --stop-min-lr"
                );
                stop_reason = StopReason::MinLr;
                break;
            }
            let epoch = self.epoch_itr.next_epoch_itr();
            self.scheduler.step_begin_epoch(epoch);
            self.scheduler.step_update(self.num_updates);
            let n_updates = self.epoch_itr.len().div_ceil(a.update_freq);
            self.logger.begin_epoch(epoch, n_updates as u64);
            let mut inner = Meter::new();
            let mut valid_loss = None;
            let mut epoch_valid = None;
            let mut should_stop = false;
            // Updates already made in this epoch by the run this one resumed.
            let mut i = self.epoch_itr.iterations_in_epoch().div_ceil(a.update_freq);
            while self.epoch_itr.has_next() {
                let mut batches = Vec::with_capacity(a.update_freq);
                while batches.len() < a.update_freq {
                    let Some(indices) = self.epoch_itr.next_batch() else { break };
                    let indices = indices.to_vec();
                    batches.push(self.train_data.batch(&indices)?);
                }
                let t0 = Instant::now();
                let out = match self.train_step(&batches) {
                    Err(Error::MinLossScale { update, source, .. }) => {
                        let end_of_epoch = !self.epoch_itr.has_next();
                        let checkpoint = self.save_last_checkpoint(epoch, end_of_epoch)?;
                        return Err(Error::MinLossScale { update, source, checkpoint });
                    }
                    other => other?,
                };
                let secs = t0.elapsed().as_secs_f64();
                i += 1;
                train_wall += secs;
                let updated = !out.overflow;
                if updated {
                    words += out.logging.ntokens;
                    inner.add(&out.logging, out.gnorm, out.clipped, secs);
                    self.epoch_meter.add(&out.logging, out.gnorm, out.clipped, secs);
                }
                self.logger.tick();
                let wall = self.wall();
                let loss_scale = self.loss_scale();
                if updated && a.log_interval > 0 && self.num_updates.is_multiple_of(a.log_interval)
                {
                    let stats =
                        inner.train_stats(self.num_updates, self.scheduler.lr(), loss_scale, wall);
                    self.logger.log("train_inner", epoch, Some((i, n_updates)), &stats)?;
                    inner = Meter::new();
                }
                // fairseq's validate_and_save. After a skipped (overflowed) update the update
                // count has not moved: its update-based triggers have fired already.
                let end_of_epoch = !self.epoch_itr.has_next();
                let max_update_reached =
                    updated && a.max_update > 0 && self.num_updates >= a.max_update;
                let every = |n: u64| updated && n > 0 && self.num_updates.is_multiple_of(n);
                let hours = self.synced_wall()? / 3600.0;
                let time_up = a.stop_time_hours > 0.0 && hours > a.stop_time_hours;
                if time_up {
                    tracing::info!(
                        target: "seqforge::train",
                        "Stopping training due to cumulative_training_time: {hours} > \
                         stop_time_hours: {} hour(s)",
                        a.stop_time_hours
                    );
                }
                let max_update_reached = max_update_reached || time_up;
                let do_save = (end_of_epoch && epoch.is_multiple_of(a.save_interval.max(1)))
                    || max_update_reached
                    || every(a.save_interval_updates);
                // fairseq also validates at mid-epoch saves.
                let do_validate = (!end_of_epoch && do_save && !a.no_save)
                    || (end_of_epoch && epoch.is_multiple_of(a.validate_interval.max(1)))
                    || max_update_reached
                    || every(a.validate_interval_updates);
                let mut out_of_patience = false;
                let mut step_val = None;
                if do_validate {
                    let n = validations.len();
                    (step_val, out_of_patience) = self.validate_and_log(epoch, &mut validations)?;
                    if validations.len() > n {
                        valid_loss = step_val;
                        epoch_valid = validations.last().map(|v: &ValidSummary| v.metrics);
                    }
                }
                if do_save || out_of_patience {
                    self.save_checkpoint(epoch, end_of_epoch, step_val)?;
                }
                if time_up {
                    stop_reason = StopReason::StopTime;
                    should_stop = true;
                } else if max_update_reached {
                    stop_reason = StopReason::MaxUpdate;
                    should_stop = true;
                } else if out_of_patience {
                    stop_reason = StopReason::Patience;
                    should_stop = true;
                }
                if should_stop {
                    break;
                }
            }
            self.logger.end_epoch();
            let whole = std::mem::replace(&mut self.epoch_meter, Meter::new());
            let stats = whole.train_stats(
                self.num_updates,
                self.scheduler.lr(),
                self.loss_scale(),
                self.wall(),
            );
            self.logger.log("train", epoch, None, &stats)?;
            epochs.push(EpochSummary {
                epoch,
                num_updates: self.num_updates,
                train: whole.logging.metrics(),
                valid: epoch_valid,
                words: whole.logging.ntokens,
                train_wall: whole.train_wall,
            });
            if should_stop {
                break;
            }
            self.scheduler.step_epoch(epoch, valid_loss);
            lr = self.scheduler.step_update(self.num_updates);
        }
        tracing::info!(
            target: "seqforge::train",
            "done training: {} updates, {words} words in {train_wall:.1} s of training steps \
             ({:.0} words/s); stopped by {stop_reason:?}",
            self.num_updates,
            words as f64 / train_wall.max(1e-9)
        );
        let best_valid_loss = if a.best_checkpoint_metric == "loss" {
            self.best
        } else {
            validations.iter().map(|v: &ValidSummary| v.metrics.loss).reduce(f64::min)
        };
        let params_digest = self.params_digest()?;
        self.check_replicas(&params_digest)?;
        let comm = self.dist.as_ref().map(|d| d.comm).unwrap_or_default();
        Ok(TrainSummary {
            world_size: self.dist.as_ref().map_or(1, |d| d.pg.world_size()),
            rank: self.dist.as_ref().map_or(0, |d| d.pg.rank()),
            comm_wait_seconds: comm.wait_seconds,
            comm_hook_seconds: comm.hook_seconds,
            epochs,
            validations,
            num_updates: self.num_updates,
            words,
            train_wall,
            words_per_sec: words as f64 / train_wall.max(1e-9),
            best_valid_loss,
            best_metric: self.best,
            stop_reason,
            params_digest,
            precision: self.precision,
            loss_scale: self.loss_scale(),
            overflows: self.overflows,
            restored_from: self.restored_from.clone(),
            start_num_updates: self.start_num_updates,
        })
    }

    /// [`Trainer::wall`] for decisions every rank must take alike (`--stop-time-hours`): rank
    /// 0's clock, broadcast, in data-parallel training with a time limit.
    fn synced_wall(&self) -> Result<f64> {
        match &self.dist {
            Some(d) if self.config.args.stop_time_hours > 0.0 => {
                Ok(d.pg.broadcast_f64(self.wall())?)
            }
            _ => Ok(self.wall()),
        }
    }

    /// Checks that every rank ends with the same weights (an all-gather of the digests).
    fn check_replicas(&self, digest: &str) -> Result<()> {
        let Some(d) = &self.dist else {
            return Ok(());
        };
        let value = u64::from_str_radix(digest, 16)
            .map_err(|e| Error::Config(format!("params digest {digest}: {e}")))?;
        let t = Tensor::f_from_slice(&[value as i64])?;
        let all = d.pg.all_gather(&t)?;
        let digests = all
            .iter()
            .map(|x| x.f_int64_value(&[0]).map(|v| format!("{:016x}", v as u64)))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        if digests.iter().any(|x| x != digest) {
            return Err(Error::Config(format!(
                "the ranks ended with different weights (digests by rank: {digests:?})"
            )));
        }
        tracing::info!(
            target: "seqforge::train",
            "weights identical on all {} ranks (digest {digest}); waited {:.3} s for gradient \
             all-reduces after backward, {:.3} s in gradient hooks",
            digests.len(),
            d.comm.wait_seconds,
            d.comm.hook_seconds
        );
        Ok(())
    }

    /// Seconds since training started, runs before a resume included (fairseq's `wall`).
    fn wall(&self) -> f64 {
        self.previous_training_time + self.start.elapsed().as_secs_f64()
    }

    /// The current fp16 loss scale (`None` without loss scaling).
    pub fn loss_scale(&self) -> Option<f64> {
        self.scaler.as_ref().map(DynamicLossScaler::loss_scale)
    }

    /// The optimizer's state (named tensors, see [`crate::optim::Optimizer::state`]).
    pub fn optimizer_state(&self) -> Vec<(String, Tensor)> {
        self.optimizer.state()
    }

    /// The fp32 weights: the master copies in fp16/bf16 (the model's own parameters in fp32 and
    /// with `--memory-efficient-*`, in their kind), sorted by name.
    pub fn fp32_parameters(&self) -> &[(String, Tensor)] {
        self.optimizer_params()
    }

    /// The numeric format of the run.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Saves `checkpoint_last` only (unless `--no-save` / `--no-last-checkpoints`), for a run
    /// that has to stop on an error; returns its path.
    fn save_last_checkpoint(&self, epoch: u64, end_of_epoch: bool) -> Result<Option<PathBuf>> {
        let a = &self.config.args;
        if a.no_save || a.no_last_checkpoints || !self.is_master() {
            return Ok(None);
        }
        let ckpt = self.checkpoint(epoch, end_of_epoch, None, self.best)?;
        let paths = checkpoint::save_as(&a.save_dir, &["checkpoint_last".to_owned()], &ckpt)?;
        Ok(paths.into_iter().next())
    }

    /// Saves a checkpoint under the names fairseq would use at this point (none with
    /// `--no-save`) and prunes old ones; returns the paths written. In data-parallel training
    /// rank 0 saves and every rank waits at a barrier until it has.
    pub fn save_checkpoint(
        &self,
        epoch: u64,
        end_of_epoch: bool,
        val_loss: Option<f64>,
    ) -> Result<Vec<std::path::PathBuf>> {
        let paths = if self.is_master() {
            self.save_checkpoint_here(epoch, end_of_epoch, val_loss)?
        } else {
            Vec::new()
        };
        if let Some(d) = &self.dist {
            d.pg.barrier()?;
        }
        Ok(paths)
    }

    fn save_checkpoint_here(
        &self,
        epoch: u64,
        end_of_epoch: bool,
        val_loss: Option<f64>,
    ) -> Result<Vec<std::path::PathBuf>> {
        let a = &self.config.args;
        let opts = SaveOptions {
            no_save: a.no_save,
            save_interval: a.save_interval,
            save_interval_updates: a.save_interval_updates,
            no_epoch_checkpoints: a.no_epoch_checkpoints,
            no_last_checkpoints: a.no_last_checkpoints,
            maximize_best_checkpoint_metric: a.maximize_best_checkpoint_metric,
        };
        // `best` already includes `val_loss`: a tie with it marks the new best.
        let (names, best) = checkpoint::checkpoint_names(
            &opts,
            epoch,
            self.num_updates,
            end_of_epoch,
            val_loss,
            self.best,
        );
        if names.is_empty() {
            return Ok(Vec::new());
        }
        // `checkpoint_last` is written first and the other names copied from it, so a run
        // killed between the copies resumes from its newest state.
        let mut names = names;
        if let Some(at) = names.iter().position(|n| n == "checkpoint_last") {
            let last = names.remove(at);
            names.insert(0, last);
        }
        let ckpt = self.checkpoint(epoch, end_of_epoch, val_loss, best)?;
        let paths = checkpoint::save_as(&a.save_dir, &names, &ckpt)?;
        let keep = |n: i64| usize::try_from(n).unwrap_or(0);
        let keep_updates = if end_of_epoch { 0 } else { keep(a.keep_interval_updates) };
        checkpoint::prune(&a.save_dir, keep(a.keep_last_epochs), keep_updates)?;
        tracing::info!(
            target: "seqforge::train",
            "saved checkpoint {} (epoch {epoch} @ {} updates, score {val_loss:?})",
            names.join(", "),
            self.num_updates
        );
        Ok(paths)
    }

    /// The checkpoint of the current state: fp32 weights (the master copies in fp16/bf16),
    /// optimizer, scheduler, loss scaler, iterator position, best loss and loop state.
    fn checkpoint(
        &self,
        epoch: u64,
        end_of_epoch: bool,
        val_loss: Option<f64>,
        best: Option<f64>,
    ) -> Result<Checkpoint> {
        let a = &self.config.args;
        let state_dict = self.model.state_dict();
        let model = match &self.master {
            Some(m) => checkpoint::with_fp32_masters(
                &state_dict,
                m.params(),
                &self.model.tied_parameters(),
            ),
            None => state_dict,
        };
        let extra = LoopState {
            bad_validations: self.bad_validations,
            previous_training_time: self.wall(),
            epoch_meter: (!end_of_epoch).then(|| self.epoch_meter.state()),
        };
        let extra =
            serde_json::to_value(&extra).map_err(|e| Error::Config(format!("loop state: {e}")))?;
        Ok(Checkpoint {
            config: CheckpointConfig {
                format_version: checkpoint::FORMAT_VERSION,
                arch: a.arch.clone(),
                model: self.config.model_config.clone(),
                task: ComponentConfig::new(self.task.name(), self.task.checkpoint_config()),
                criterion: ComponentConfig::new(&a.criterion, self.config.criterion_config.clone()),
                optimizer: ComponentConfig::new(&a.optimizer, self.config.optimizer_config.clone()),
                lr_scheduler: ComponentConfig::new(
                    &a.lr_scheduler,
                    self.config.lr_scheduler_config.clone(),
                ),
                precision: self.precision,
                dictionaries: self.dictionaries.clone(),
            },
            state: TrainerState {
                format_version: checkpoint::FORMAT_VERSION,
                num_updates: self.num_updates,
                epoch,
                end_of_epoch,
                iterator: self.epoch_itr.state_dict(),
                lr_scheduler: self.scheduler.state()?,
                loss_scaler: self.scaler.as_ref().map(DynamicLossScaler::state),
                best,
                val_loss,
                rng: RngState { seed: a.seed, num_updates: self.num_updates },
                extra,
            },
            model,
            optimizer: self.optimizer.state(),
        })
    }

    /// FNV-1a 64 over the parameters' names and fp32 bytes, in name order (the fp32 master
    /// copies in fp16/bf16).
    pub fn params_digest(&self) -> Result<String> {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for &b in bytes {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        for (name, p) in self.optimizer_params() {
            eat(name.as_bytes());
            let flat = p
                .f_detach()?
                .f_to_device(Device::Cpu)?
                .f_to_kind(Kind::Float)?
                .f_contiguous()?
                .f_reshape([-1])?;
            let values = Vec::<f32>::try_from(&flat)?;
            for v in values {
                eat(&v.to_le_bytes());
            }
        }
        Ok(format!("{h:016x}"))
    }
}

/// The configuration a summary's numbers refer to, for reports (`words_per_sec` etc.).
impl TrainSummary {
    /// The summary as a JSON value.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}
