//! Training checkpoints, fairseq-like in naming and retention, one directory per checkpoint.
//!
//! A save directory holds `checkpoint_last/`, `checkpoint_best/`, `checkpoint{epoch}/` and
//! `checkpoint_{epoch}_{updates}/` (fairseq's `checkpoint_last.pt`, … without the `.pt`), each
//! with four files:
//!
//! - `model.safetensors` ([`MODEL_FILE`]): the model under fairseq's state-dict names
//!   (`encoder.layers.0.fc1.weight`, …), floating tensors in fp32 (the fp32 master weights of an
//!   fp16/bf16 run);
//! - `optimizer.safetensors` ([`OPTIMIZER_FILE`]): the optimizer's state tensors
//!   ([`crate::optim::Optimizer::state`]), kinds kept;
//! - `config.json` ([`CONFIG_FILE`], [`CheckpointConfig`]): architecture name, model config,
//!   task/criterion/optimizer/scheduler names and configs, and the identity of the dictionaries
//!   (size and a hash of the symbols) so that a resume over a different vocabulary is refused;
//! - `trainer_state.json` ([`TRAINER_STATE_FILE`], [`TrainerState`]): update count, epoch,
//!   the epoch iterator's position, the scheduler's and the loss scaler's states, the best
//!   validation metric and the RNG state.
//!
//! **Atomic saves.** [`save`] writes everything into `<name>.tmp-<pid>/`, fsyncs each file and
//! the directory, renames the old `<name>/` away to `<name>.old-<pid>/`, renames the new one
//! into place, fsyncs the parent and deletes the old one. A crash leaves either the old or the
//! new checkpoint under `<name>/`, or (between the two renames) the old one under
//! `<name>.old-<pid>/`, which [`recover`] puts back; stale `.tmp-` directories are ignored by
//! [`load`] and [`prune`] and deleted by [`recover`]. Further names for the same checkpoint
//! (`checkpoint_best`, `checkpoint3`, …) are made by [`copy_checkpoint`] (hard links, else
//! copies), just as atomically.
//!
//! **RNG and dropout on resume.** tch 0.24 exposes no way to read libtorch's generator state
//! (`torch.get_rng_state` has no binding), so it is not stored. Instead seqforge does what
//! fairseq's trainer does (`Trainer._set_seed`): before every update the generator is reseeded
//! with `seed + num_updates` ([`RngState::reseed`]). Dropout masks then depend only on the seed
//! and the update number, so a resumed run draws the same masks as an uninterrupted one. The
//! checkpoint stores the seed and the update count ([`RngState`]).
//!
//! **Retention** ([`prune`]): `--keep-last-epochs N` keeps the N newest `checkpoint{epoch}`,
//! `--keep-interval-updates N` the N newest `checkpoint_{epoch}_{updates}`; which names a save
//! writes (`--no-save`, `--save-interval`, `--save-interval-updates`, `--no-epoch-checkpoints`,
//! `--no-last-checkpoints`, best tracking) is [`checkpoint_names`].

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::batching::EpochState;
use crate::data::Dictionary;
use crate::fp16::{LossScalerState, Precision, exact_f64};

/// The model file of a checkpoint directory.
pub const MODEL_FILE: &str = "model.safetensors";
/// The optimizer-state file of a checkpoint directory.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The configuration file of a checkpoint directory.
pub const CONFIG_FILE: &str = "config.json";
/// The training-state file of a checkpoint directory.
pub const TRAINER_STATE_FILE: &str = "trainer_state.json";
/// The format version written in `config.json` and `trainer_state.json`.
pub const FORMAT_VERSION: u32 = 1;

/// Errors of saving, loading and checking checkpoints. Each names the file or tensor at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error on a named file or directory.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file of the checkpoint is missing (or the checkpoint itself).
    #[error("{path}: missing from the checkpoint")]
    MissingFile {
        /// The file expected.
        path: PathBuf,
    },
    /// A JSON file could not be read or written.
    #[error("{path}: unreadable JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A safetensors file could not be read or written.
    #[error("{path}: {source}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: tch::TchError,
    },
    /// A JSON file was written by an unknown format version.
    #[error("{path}: format version {found}, this seqforge reads {expected}")]
    Version {
        /// The file.
        path: PathBuf,
        /// The version in the file.
        found: u32,
        /// [`FORMAT_VERSION`].
        expected: u32,
    },
    /// A tensor the model needs is not in the checkpoint.
    #[error("{file}: missing tensor {name}")]
    MissingTensor {
        /// The checkpoint file (e.g. `model.safetensors`).
        file: String,
        /// The tensor name.
        name: String,
    },
    /// The checkpoint holds a tensor the model does not have.
    #[error("{file}: unexpected tensor {name} (not in the model)")]
    UnexpectedTensor {
        /// The checkpoint file.
        file: String,
        /// The tensor name.
        name: String,
    },
    /// A tensor has another shape than the model's.
    #[error("{file}: tensor {name} has shape {found:?}, the model expects {expected:?}")]
    ShapeMismatch {
        /// The checkpoint file.
        file: String,
        /// The tensor name.
        name: String,
        /// The model's shape.
        expected: Vec<i64>,
        /// The checkpoint's shape.
        found: Vec<i64>,
    },
    /// The checkpoint was trained with another vocabulary than the data's.
    #[error(
        "dictionary {name}: the checkpoint was trained with {saved_size} symbols (hash \
         {saved_hash}), the data has {current_size} (hash {current_hash}): different vocabulary"
    )]
    VocabularyMismatch {
        /// The dictionary (file name, e.g. `dict.de.txt`).
        name: String,
        /// Size in the checkpoint.
        saved_size: usize,
        /// Hash in the checkpoint.
        saved_hash: String,
        /// Size in the data directory.
        current_size: usize,
        /// Hash in the data directory.
        current_hash: String,
    },
    /// The checkpoint and the data do not list the same dictionaries.
    #[error("dictionary {name}: {message}")]
    DictionarySet {
        /// The dictionary.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A dictionary file could not be read.
    #[error(transparent)]
    Data(#[from] crate::data::Error),
    /// A tensor operation failed in libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// The result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_owned(), source }
}

/// A named component and its JSON config (the factories' JSON, see
/// [`crate::optim::OptimizerFactory`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentConfig {
    /// Registry name, e.g. `"adam"`, `"inverse_sqrt"`, `"translation"`.
    pub name: String,
    /// Its configuration.
    pub config: serde_json::Value,
}

impl ComponentConfig {
    /// A component `name` with config `config`.
    pub fn new(name: impl Into<String>, config: serde_json::Value) -> Self {
        Self { name: name.into(), config }
    }
}

/// What identifies a vocabulary: its size and a hash of its symbols in id order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DictionaryIdentity {
    /// The dictionary, by file name (e.g. `dict.de.txt`).
    pub name: String,
    /// Number of symbols, specials and padding words included (`len(dict)`).
    pub size: usize,
    /// FNV-1a 64 of the symbols in id order (each followed by a 0 byte), as 16 hex digits
    /// ([`seqforge_schemas::contract::symbols_hash`], shared with the exporter and runtime).
    /// Counts are not hashed: they do not change what the model's ids mean.
    pub hash: String,
}

impl DictionaryIdentity {
    /// The identity of `dict`, recorded under `name`.
    pub fn of(name: impl Into<String>, dict: &Dictionary) -> Self {
        let hash =
            seqforge_schemas::contract::symbols_hash(dict.symbols().iter().map(String::as_str));
        Self { name: name.into(), size: dict.len(), hash }
    }

    /// The identity of the dictionary file at `path`, under its file name.
    pub fn of_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let dict = Dictionary::load(path)?;
        let name = path
            .file_name()
            .map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
        Ok(Self::of(name, &dict))
    }
}

/// `config.json`: what was trained, and on which vocabularies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// The architecture name (`--arch`, e.g. `transformer_iwslt_de_en`).
    pub arch: String,
    /// The model's full config (e.g. a serialized
    /// [`crate::models::transformer::TransformerConfig`]).
    pub model: serde_json::Value,
    /// The task.
    pub task: ComponentConfig,
    /// The criterion.
    pub criterion: ComponentConfig,
    /// The optimizer.
    pub optimizer: ComponentConfig,
    /// The learning-rate scheduler.
    pub lr_scheduler: ComponentConfig,
    /// The numeric format trained in.
    #[serde(default)]
    pub precision: Precision,
    /// The dictionaries (source then target, or one).
    pub dictionaries: Vec<DictionaryIdentity>,
}

/// What [`RngState::reseed`] needs: fairseq reseeds torch with `seed + num_updates` before
/// every update, so this pair is the whole RNG state that matters (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RngState {
    /// `--seed`.
    pub seed: u64,
    /// Updates done when saved.
    pub num_updates: u64,
}

impl RngState {
    /// The torch seed of update `num_updates` (`seed + num_updates`, wrapping into i64).
    pub fn torch_seed(seed: u64, num_updates: u64) -> i64 {
        seed.wrapping_add(num_updates) as i64
    }

    /// Reseeds libtorch's generators (CPU and CUDA) for update `num_updates`, as fairseq's
    /// `Trainer._set_seed` does before each train step. Call it before every forward/backward.
    pub fn reseed(seed: u64, num_updates: u64) {
        tch::manual_seed(Self::torch_seed(seed, num_updates));
    }

    /// Reseeds for micro-batch `k` of update `num_updates` (`k` counts the update's batches
    /// over all ranks: batch `i` of rank `r` of `W` is `i × W + r`); `k = 0` is
    /// [`RngState::reseed`]. Dropout then depends only on the seed, the update and the batch's
    /// place in it, so a run on W ranks draws exactly what one process with `--update-freq W`
    /// draws.
    pub fn reseed_micro_batch(seed: u64, num_updates: u64, k: u64) {
        let base = Self::torch_seed(seed, num_updates);
        tch::manual_seed(base.wrapping_add(k.wrapping_mul(0x9E37_79B9_7F4A_7C15) as i64));
    }
}

/// `trainer_state.json`: where training stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainerState {
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// Updates done.
    pub num_updates: u64,
    /// The epoch during (or at the end of) which the checkpoint was saved.
    pub epoch: u64,
    /// Whether it was saved at the end of that epoch.
    pub end_of_epoch: bool,
    /// The training iterator's position.
    pub iterator: EpochState,
    /// The learning-rate scheduler's state ([`crate::optim::LrScheduler::state`]).
    pub lr_scheduler: serde_json::Value,
    /// The loss scaler's state (fp16 only).
    #[serde(default)]
    pub loss_scaler: Option<LossScalerState>,
    /// The best validation metric so far (fairseq's `save_checkpoint.best`).
    #[serde(default, with = "exact_f64::option")]
    pub best: Option<f64>,
    /// The validation metric of this checkpoint, when validated.
    #[serde(default, with = "exact_f64::option")]
    pub val_loss: Option<f64>,
    /// The RNG state (seed + updates; see the module docs).
    pub rng: RngState,
    /// Anything else the training loop keeps (meters, patience counter, …).
    #[serde(default)]
    pub extra: serde_json::Value,
}

impl TrainerState {
    /// The state of weights that were never trained by the loop (exported or converted
    /// models, tests): `num_updates` recorded, epoch 1 not started, no scheduler, scaler or
    /// validation state.
    pub fn fresh(seed: u64, num_updates: u64) -> Self {
        Self {
            format_version: FORMAT_VERSION,
            num_updates,
            epoch: 1,
            end_of_epoch: false,
            iterator: EpochState {
                version: 2,
                epoch: 1,
                iterations_in_epoch: 0,
                shuffle: false,
                num_batches: None,
                num_shards: None,
                batches_fingerprint: None,
            },
            lr_scheduler: serde_json::json!({}),
            loss_scaler: None,
            best: None,
            val_loss: None,
            rng: RngState { seed, num_updates },
            extra: serde_json::Value::Null,
        }
    }
}

/// A whole checkpoint in memory.
#[derive(Debug)]
pub struct Checkpoint {
    /// `config.json`.
    pub config: CheckpointConfig,
    /// `trainer_state.json`.
    pub state: TrainerState,
    /// `model.safetensors`: fairseq state-dict names → tensors.
    pub model: Vec<(String, Tensor)>,
    /// `optimizer.safetensors`: the optimizer's named state tensors.
    pub optimizer: Vec<(String, Tensor)>,
}

impl Checkpoint {
    /// Checks the model tensors against `expected` (e.g.
    /// [`crate::models::transformer::Transformer::fairseq_state_dict`]): every expected name present with
    /// the same shape, nothing else.
    pub fn validate_model(&self, expected: &[(String, Tensor)]) -> Result<()> {
        check_names_and_shapes(MODEL_FILE, &self.model, expected)
    }

    /// [`Checkpoint::validate_model`], then copies the tensors into `target` in place (to the
    /// target's device and kind; tied names are copied once per name, which is harmless).
    pub fn load_model_into(&self, target: &[(String, Tensor)]) -> Result<()> {
        self.validate_model(target)?;
        let _guard = tch::no_grad_guard();
        for (name, t) in target {
            if let Some((_, src)) = self.model.iter().find(|(n, _)| n == name) {
                let mut dst = t.shallow_clone();
                dst.f_copy_(src)?;
            }
        }
        Ok(())
    }

    /// Checks the optimizer tensors' names against the parameters being optimized (the names
    /// passed to [`crate::optim::Optimizer::step`]): every entry must be
    /// `<optimizer>.<field>.<parameter>` of a known parameter, or an optimizer-wide
    /// `<optimizer>.<field>`, with `<optimizer>` the one in `config.json`. Shapes are checked by
    /// the optimizer's own [`crate::optim::Optimizer::load_state`].
    pub fn validate_optimizer(&self, params: &[(String, Tensor)]) -> Result<()> {
        let prefix = format!("{}.", self.config.optimizer.name);
        for (key, _) in &self.optimizer {
            let unexpected =
                || Error::UnexpectedTensor { file: OPTIMIZER_FILE.to_owned(), name: key.clone() };
            let rest = key.strip_prefix(&prefix).ok_or_else(unexpected)?;
            match rest.split_once('.') {
                None if !rest.is_empty() => {}
                Some((field, param))
                    if !field.is_empty() && params.iter().any(|(n, _)| n == param) => {}
                _ => return Err(unexpected()),
            }
        }
        Ok(())
    }

    /// Refuses to resume over other vocabularies: `current` (the data directory's
    /// dictionaries) must list the same names with the same sizes and hashes.
    pub fn check_dictionaries(&self, current: &[DictionaryIdentity]) -> Result<()> {
        check_dictionaries(&self.config.dictionaries, current)
    }
}

/// The model tensors to save when training in fp16/bf16: `state_dict` (e.g.
/// [`crate::models::transformer::Transformer::fairseq_state_dict`] of the half-precision model) with every
/// parameter replaced by its fp32 master copy (`masters`, e.g.
/// [`crate::fp16::MasterWeights::params`]), tied aliases following their parameter (`tied`:
/// [`crate::models::transformer::Transformer::tied_parameters`]). Names without a master (buffers, frozen
/// parameters) keep the model's tensor. Resume with [`Checkpoint::load_model_into`] on the model,
/// then [`crate::fp16::MasterWeights::load_fp32`] with [`Checkpoint::model`]: the masters come
/// back bit for bit.
pub fn with_fp32_masters(
    state_dict: &[(String, Tensor)],
    masters: &[(String, Tensor)],
    tied: &[(String, String)],
) -> Vec<(String, Tensor)> {
    let master_of = |name: &str| {
        let canonical =
            tied.iter().find(|(alias, _)| alias == name).map_or(name, |(_, c)| c.as_str());
        masters.iter().find(|(n, _)| n == canonical).map(|(_, t)| t.shallow_clone())
    };
    state_dict
        .iter()
        .map(|(name, t)| (name.clone(), master_of(name).unwrap_or_else(|| t.shallow_clone())))
        .collect()
}

/// Compares saved and current dictionary identities (see [`Checkpoint::check_dictionaries`]).
pub fn check_dictionaries(
    saved: &[DictionaryIdentity],
    current: &[DictionaryIdentity],
) -> Result<()> {
    for s in saved {
        let Some(c) = current.iter().find(|c| c.name == s.name) else {
            return Err(Error::DictionarySet {
                name: s.name.clone(),
                message: "in the checkpoint but not in the data directory".to_owned(),
            });
        };
        if c.size != s.size || c.hash != s.hash {
            return Err(Error::VocabularyMismatch {
                name: s.name.clone(),
                saved_size: s.size,
                saved_hash: s.hash.clone(),
                current_size: c.size,
                current_hash: c.hash.clone(),
            });
        }
    }
    if let Some(c) = current.iter().find(|c| !saved.iter().any(|s| s.name == c.name)) {
        return Err(Error::DictionarySet {
            name: c.name.clone(),
            message: "in the data directory but not in the checkpoint".to_owned(),
        });
    }
    Ok(())
}

fn check_names_and_shapes(
    file: &str,
    found: &[(String, Tensor)],
    expected: &[(String, Tensor)],
) -> Result<()> {
    for (name, t) in expected {
        let Some((_, f)) = found.iter().find(|(n, _)| n == name) else {
            return Err(Error::MissingTensor { file: file.to_owned(), name: name.clone() });
        };
        if f.size() != t.size() {
            return Err(Error::ShapeMismatch {
                file: file.to_owned(),
                name: name.clone(),
                expected: t.size(),
                found: f.size(),
            });
        }
    }
    if let Some((name, _)) = found.iter().find(|(n, _)| !expected.iter().any(|(e, _)| e == n)) {
        return Err(Error::UnexpectedTensor { file: file.to_owned(), name: name.clone() });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Writing.

/// `<dir>/<name><suffix>`, the sibling of `path` with `suffix` appended to its name.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn fsync(path: &Path) -> Result<()> {
    fs::File::open(path).and_then(|f| f.sync_all()).map_err(io_err(path))
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|source| Error::Json { path: path.to_owned(), source })?;
    let mut f = fs::File::create(path).map_err(io_err(path))?;
    f.write_all(&bytes).and_then(|()| f.write_all(b"\n")).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// Writes `tensors` (moved to the CPU, made contiguous; floating ones to fp32 when `fp32`).
fn write_tensors(path: &Path, tensors: &[(String, Tensor)], fp32: bool) -> Result<()> {
    let mut out = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let mut t = t.f_detach()?.f_to_device(Device::Cpu)?;
        if fp32 && t.is_floating_point() && t.kind() != Kind::Float {
            t = t.f_to_kind(Kind::Float)?;
        }
        out.push((name.as_str(), t.f_contiguous()?));
    }
    Tensor::write_safetensors(&out, path)
        .map_err(|source| Error::Safetensors { path: path.to_owned(), source })?;
    fsync(path)
}

/// Removes `path` (a directory or a file) if it exists.
fn remove_any(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(io_err(path)),
        Ok(_) => fs::remove_file(path).map_err(io_err(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Io { path: path.to_owned(), source: e }),
    }
}

/// Puts the complete directory `tmp` at `dst`: old `dst` renamed away, `tmp` renamed in, parent
/// fsynced, old deleted.
fn install(tmp: &Path, dst: &Path) -> Result<()> {
    fsync(tmp)?;
    let old = sibling(dst, &format!(".old-{}", std::process::id()));
    remove_any(&old)?;
    let had_old = dst.exists();
    if had_old {
        fs::rename(dst, &old).map_err(io_err(dst))?;
    }
    fs::rename(tmp, dst).map_err(io_err(dst))?;
    fsync(&parent_of(dst))?;
    if had_old {
        remove_any(&old)?;
    }
    Ok(())
}

/// A fresh, empty `<dst>.tmp-<pid>/`.
fn fresh_tmp(dst: &Path) -> Result<PathBuf> {
    let tmp = sibling(dst, &format!(".tmp-{}", std::process::id()));
    remove_any(&tmp)?;
    fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    Ok(tmp)
}

/// Writes `ckpt` as the checkpoint directory `path` (e.g. `save_dir/checkpoint_last`),
/// atomically (see the module docs); creates the parent directory if needed.
pub fn save(path: impl AsRef<Path>, ckpt: &Checkpoint) -> Result<()> {
    let path = path.as_ref();
    let parent = parent_of(path);
    fs::create_dir_all(&parent).map_err(io_err(&parent))?;
    let tmp = fresh_tmp(path)?;
    let written = (|| {
        write_tensors(&tmp.join(MODEL_FILE), &ckpt.model, true)?;
        write_tensors(&tmp.join(OPTIMIZER_FILE), &ckpt.optimizer, false)?;
        write_json(&tmp.join(CONFIG_FILE), &ckpt.config)?;
        write_json(&tmp.join(TRAINER_STATE_FILE), &ckpt.state)
    })();
    if let Err(e) = written {
        // Best effort: the error that matters is the write's.
        let _ = remove_any(&tmp);
        return Err(e);
    }
    install(&tmp, path)
}

/// Makes `dst` a copy of the checkpoint directory `src` (hard links when the file system
/// allows, else copies), atomically like [`save`].
pub fn copy_checkpoint(src: impl AsRef<Path>, dst: impl AsRef<Path>) -> Result<()> {
    let (src, dst) = (src.as_ref(), dst.as_ref());
    for f in [MODEL_FILE, OPTIMIZER_FILE, CONFIG_FILE, TRAINER_STATE_FILE] {
        if !src.join(f).is_file() {
            return Err(Error::MissingFile { path: src.join(f) });
        }
    }
    let tmp = fresh_tmp(dst)?;
    let copied = (|| {
        for f in [MODEL_FILE, OPTIMIZER_FILE, CONFIG_FILE, TRAINER_STATE_FILE] {
            let (from, to) = (src.join(f), tmp.join(f));
            if fs::hard_link(&from, &to).is_err() {
                fs::copy(&from, &to).map_err(io_err(&to))?;
                fsync(&to)?;
            }
        }
        Ok(())
    })();
    if let Err(e) = copied {
        let _ = remove_any(&tmp);
        return Err(e);
    }
    install(&tmp, dst)
}

/// Saves `ckpt` under each of `names` in `save_dir` (the first written, the others copied by
/// [`copy_checkpoint`]), as fairseq's `save_checkpoint` does; returns the paths written.
pub fn save_as(
    save_dir: impl AsRef<Path>,
    names: &[String],
    ckpt: &Checkpoint,
) -> Result<Vec<PathBuf>> {
    let save_dir = save_dir.as_ref();
    let paths: Vec<PathBuf> = names.iter().map(|n| save_dir.join(n)).collect();
    if let Some((first, rest)) = paths.split_first() {
        save(first, ckpt)?;
        for p in rest {
            copy_checkpoint(first, p)?;
        }
    }
    Ok(paths)
}

// ---------------------------------------------------------------------------------------------
// Reading.

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::MissingFile { path: path.to_owned() });
        }
        Err(e) => return Err(Error::Io { path: path.to_owned(), source: e }),
    };
    serde_json::from_slice(&bytes).map_err(|source| Error::Json { path: path.to_owned(), source })
}

fn read_tensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    if !path.is_file() {
        return Err(Error::MissingFile { path: path.to_owned() });
    }
    Tensor::read_safetensors(path)
        .map_err(|source| Error::Safetensors { path: path.to_owned(), source })
}

/// Reads the checkpoint directory `path` (tensors on the CPU). Each file missing or
/// unreadable is an error naming it; what it holds is checked against a model by
/// [`Checkpoint::validate_model`] / [`Checkpoint::load_model_into`] and against the data by
/// [`Checkpoint::check_dictionaries`].
pub fn load(path: impl AsRef<Path>) -> Result<Checkpoint> {
    let path = path.as_ref();
    if !path.is_dir() {
        return Err(Error::MissingFile { path: path.to_owned() });
    }
    let config_path = path.join(CONFIG_FILE);
    let config: CheckpointConfig = read_json(&config_path)?;
    if config.format_version != FORMAT_VERSION {
        return Err(Error::Version {
            path: config_path,
            found: config.format_version,
            expected: FORMAT_VERSION,
        });
    }
    let state_path = path.join(TRAINER_STATE_FILE);
    let state: TrainerState = read_json(&state_path)?;
    if state.format_version != FORMAT_VERSION {
        return Err(Error::Version {
            path: state_path,
            found: state.format_version,
            expected: FORMAT_VERSION,
        });
    }
    let model = read_tensors(&path.join(MODEL_FILE))?;
    let optimizer = read_tensors(&path.join(OPTIMIZER_FILE))?;
    Ok(Checkpoint { config, state, model, optimizer })
}

/// Cleans `save_dir` after a crash: deletes stale `*.tmp-<pid>` directories of unfinished
/// saves, and renames `<name>.old-<pid>` back to `<name>` where a crash between the two
/// renames of a save left no `<name>` (otherwise deletes it). Returns the paths changed.
pub fn recover(save_dir: impl AsRef<Path>) -> Result<Vec<PathBuf>> {
    let save_dir = save_dir.as_ref();
    let mut changed = Vec::new();
    for (name, path) in list_dir(save_dir)? {
        if split_marker(&name, ".tmp-").is_some() {
            remove_any(&path)?;
            changed.push(path);
        } else if let Some(base) = split_marker(&name, ".old-") {
            let target = save_dir.join(base);
            if target.exists() {
                remove_any(&path)?;
                changed.push(path);
            } else {
                fs::rename(&path, &target).map_err(io_err(&path))?;
                changed.push(target);
            }
        }
    }
    Ok(changed)
}

/// `Some(base)` when `name` is `<base><marker><digits>`.
fn split_marker<'a>(name: &'a str, marker: &str) -> Option<&'a str> {
    let (base, pid) = name.rsplit_once(marker)?;
    (!base.is_empty() && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())).then_some(base)
}

fn list_dir(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::Io { path: dir.to_owned(), source: e }),
    };
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        if let Some(name) = entry.file_name().to_str() {
            out.push((name.to_owned(), entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Naming and retention.

/// fairseq's checkpoint options that decide which names a save writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SaveOptions {
    /// `--no-save`: write nothing.
    pub no_save: bool,
    /// `--save-interval`: an epoch checkpoint every N epochs.
    pub save_interval: u64,
    /// `--save-interval-updates`: a `checkpoint_{epoch}_{updates}` every N updates (0: never).
    pub save_interval_updates: u64,
    /// `--no-epoch-checkpoints`.
    pub no_epoch_checkpoints: bool,
    /// `--no-last-checkpoints`.
    pub no_last_checkpoints: bool,
    /// `--maximize-best-checkpoint-metric`.
    pub maximize_best_checkpoint_metric: bool,
}

impl Default for SaveOptions {
    fn default() -> Self {
        Self {
            no_save: false,
            save_interval: 1,
            save_interval_updates: 0,
            no_epoch_checkpoints: false,
            no_last_checkpoints: false,
            maximize_best_checkpoint_metric: false,
        }
    }
}

/// What a save at (`epoch`, `updates`) writes, as fairseq's `save_checkpoint`: returns the
/// names, in writing order (`checkpoint{epoch}`, `checkpoint_{epoch}_{updates}`,
/// `checkpoint_best`, `checkpoint_last`), and the best metric after `val_loss` (fairseq's
/// `save_checkpoint.best`, updated even with `--no-save`). `prev_best` is the best so far.
pub fn checkpoint_names(
    opts: &SaveOptions,
    epoch: u64,
    updates: u64,
    end_of_epoch: bool,
    val_loss: Option<f64>,
    prev_best: Option<f64>,
) -> (Vec<String>, Option<f64>) {
    let maximize = opts.maximize_best_checkpoint_metric;
    let best = match (val_loss, prev_best) {
        (Some(v), Some(b)) => Some(if maximize { v.max(b) } else { v.min(b) }),
        (Some(v), None) => Some(v),
        (None, b) => b,
    };
    if opts.no_save {
        return (Vec::new(), best);
    }
    let mut names = Vec::new();
    if end_of_epoch
        && !opts.no_epoch_checkpoints
        && opts.save_interval > 0
        && epoch.is_multiple_of(opts.save_interval)
    {
        names.push(format!("checkpoint{epoch}"));
    }
    if !end_of_epoch
        && opts.save_interval_updates > 0
        && updates.is_multiple_of(opts.save_interval_updates)
    {
        names.push(format!("checkpoint_{epoch}_{updates}"));
    }
    if let (Some(v), Some(b)) = (val_loss, best) {
        // fairseq compares with the already-updated best: a new best (or a tie) qualifies.
        if if maximize { v >= b } else { v <= b } {
            names.push("checkpoint_best".to_owned());
        }
    }
    if !opts.no_last_checkpoints {
        names.push("checkpoint_last".to_owned());
    }
    (names, best)
}

/// `checkpoint{epoch}` → epoch.
fn epoch_of(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("checkpoint")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// `checkpoint_{epoch}_{updates}` → updates.
fn updates_of(name: &str) -> Option<u64> {
    let (epoch, updates) = name.strip_prefix("checkpoint_")?.split_once('_')?;
    let num = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !num(epoch) || !num(updates) {
        return None;
    }
    updates.parse().ok()
}

/// Deletes old checkpoints in `save_dir` as fairseq does after a save: keeps the
/// `keep_last_epochs` newest `checkpoint{epoch}` and the `keep_interval_updates` newest
/// `checkpoint_{epoch}_{updates}` (by number; 0 keeps all, like fairseq's default -1).
/// `checkpoint_last`, `checkpoint_best` and anything else are never touched. fairseq prunes
/// interval checkpoints only after a mid-epoch save: pass 0 for `keep_interval_updates`
/// at the end of an epoch to do the same. Returns the paths deleted.
pub fn prune(
    save_dir: impl AsRef<Path>,
    keep_last_epochs: usize,
    keep_interval_updates: usize,
) -> Result<Vec<PathBuf>> {
    let entries = list_dir(save_dir.as_ref())?;
    let mut removed = Vec::new();
    let mut sweep = |key: fn(&str) -> Option<u64>, keep: usize| -> Result<()> {
        if keep == 0 {
            return Ok(());
        }
        let mut found: Vec<(u64, &PathBuf)> =
            entries.iter().filter_map(|(n, p)| key(n).map(|k| (k, p))).collect();
        // Newest first; among equal numbers, fairseq's reverse order of names.
        found.sort_by(|a, b| b.cmp(a));
        for (_, path) in found.into_iter().skip(keep) {
            remove_any(path)?;
            removed.push(path.clone());
        }
        Ok(())
    };
    sweep(updates_of, keep_interval_updates)?;
    sweep(epoch_of, keep_last_epochs)?;
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::transformer::{Transformer, TransformerConfig};
    use crate::optim::{Adam, AdamConfig, LrScheduler, Optimizer};

    type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

    fn tiny_config() -> TransformerConfig {
        TransformerConfig {
            encoder_embed_dim: 8,
            encoder_ffn_embed_dim: 16,
            encoder_layers: 1,
            encoder_attention_heads: 2,
            decoder_embed_dim: 8,
            decoder_ffn_embed_dim: 16,
            decoder_layers: 1,
            decoder_attention_heads: 2,
            share_decoder_input_output_embed: true,
            max_source_positions: 32,
            max_target_positions: 32,
            ..TransformerConfig::default()
        }
        .with_vocab(16, 16)
    }

    fn tiny() -> Result<(tch::nn::VarStore, Transformer), Box<dyn std::error::Error>> {
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let model = Transformer::new(&vs.root(), &tiny_config())?;
        Ok((vs, model))
    }

    fn dict(extra: &[&str]) -> Dictionary {
        let mut d = Dictionary::new();
        for w in extra {
            d.add_symbol(w, 1, false);
        }
        d
    }

    fn iterator_state() -> EpochState {
        EpochState {
            version: 2,
            epoch: 3,
            iterations_in_epoch: 7,
            shuffle: true,
            num_batches: Some(20),
            num_shards: Some(1),
            batches_fingerprint: Some("00ff".into()),
        }
    }

    /// A trained-looking checkpoint: a tiny Transformer after two Adam steps, a scheduler.
    fn make_checkpoint(
        model: &Transformer,
    ) -> Result<(Checkpoint, Box<dyn LrScheduler>), Box<dyn std::error::Error>> {
        let params = model.parameters();
        let mut adam = Adam::new(AdamConfig::default())?;
        for _ in 0..2 {
            for (_, p) in &params {
                let mut p = p.shallow_clone();
                p.zero_grad();
            }
            let loss = params
                .iter()
                .map(|(_, p)| p.f_mul(p)?.f_sum(Kind::Float))
                .collect::<Result<Vec<_>, _>>()?;
            Tensor::f_stack(&loss, 0)?.f_sum(Kind::Float)?.f_backward()?;
            adam.step(&params, 1e-3)?;
        }
        let factories = crate::optim::builtin_lr_schedulers();
        let (_, f) = factories
            .iter()
            .find(|(n, _)| *n == "inverse_sqrt")
            .ok_or("no inverse_sqrt scheduler")?;
        let cfg = serde_json::json!({ "warmup_updates": 4 });
        let mut sched = (f.build)(&cfg, &crate::optim::ScheduleContext::default())?;
        for u in 1..=3 {
            sched.step_update(u);
        }
        let ckpt = Checkpoint {
            config: CheckpointConfig {
                format_version: FORMAT_VERSION,
                arch: "transformer_tiny".into(),
                model: serde_json::to_value(model.config())?,
                task: ComponentConfig::new("translation", serde_json::json!({"source_lang": "de"})),
                criterion: ComponentConfig::new("cross_entropy", serde_json::json!({})),
                optimizer: ComponentConfig::new("adam", serde_json::json!({})),
                lr_scheduler: ComponentConfig::new("inverse_sqrt", cfg),
                precision: Precision::Fp32,
                dictionaries: vec![
                    DictionaryIdentity::of("dict.de.txt", &dict(&["a", "b"])),
                    DictionaryIdentity::of("dict.en.txt", &dict(&["c"])),
                ],
            },
            state: TrainerState {
                format_version: FORMAT_VERSION,
                num_updates: 2,
                epoch: 3,
                end_of_epoch: false,
                iterator: iterator_state(),
                lr_scheduler: sched.state()?,
                loss_scaler: Some(crate::fp16::LossScalerState {
                    loss_scale: 64.0,
                    iter: 5,
                    last_overflow_iter: 3,
                    last_rescale_iter: 3,
                    overflows_since_rescale: 0,
                }),
                best: Some(0.1 + 0.2),
                val_loss: Some(1.0 / 3.0),
                rng: RngState { seed: 1, num_updates: 2 },
                extra: serde_json::Value::Null,
            },
            model: model.fairseq_state_dict(),
            optimizer: adam.state(),
        };
        Ok((ckpt, sched))
    }

    fn bits_equal(a: &Tensor, b: &Tensor) -> Result<bool, tch::TchError> {
        if a.size() != b.size() || a.kind() != b.kind() {
            return Ok(false);
        }
        // Compare as bytes through a view of the same width (NaN-safe, -0 distinct).
        let (a, b) = (a.f_contiguous()?, b.f_contiguous()?);
        let kind = match a.kind() {
            Kind::Double | Kind::Int64 => Kind::Int64,
            Kind::Float | Kind::Int => Kind::Int,
            _ => return a.f_equal(&b),
        };
        a.f_view_dtype(kind)?.f_equal(&b.f_view_dtype(kind)?)
    }

    fn assert_same_tensors(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> TestResult {
        assert_eq!(a.len(), b.len());
        for (name, t) in a {
            let (_, u) = b.iter().find(|(n, _)| n == name).ok_or(format!("{name} lost"))?;
            assert!(bits_equal(t, u)?, "{name} differs");
        }
        Ok(())
    }

    #[test]
    fn round_trip_is_bit_identical() -> TestResult {
        let (_vs, model) = tiny()?;
        let (ckpt, sched) = make_checkpoint(&model)?;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("checkpoint_last");
        save(&path, &ckpt)?;
        let back = load(&path)?;
        assert_eq!(back.config, ckpt.config);
        assert_eq!(back.state, ckpt.state);
        assert_eq!(back.state.best, Some(0.1 + 0.2), "f64 written exactly");
        assert_same_tensors(&back.model, &ckpt.model)?;
        assert_same_tensors(&back.optimizer, &ckpt.optimizer)?;
        // Into a fresh model and a fresh optimizer and scheduler.
        let (_vs2, model2) = tiny()?;
        back.load_model_into(&model2.fairseq_state_dict())?;
        assert_same_tensors(&model2.fairseq_state_dict(), &model.fairseq_state_dict())?;
        let mut adam2 = Adam::new(AdamConfig::default())?;
        adam2.load_state(&back.optimizer)?;
        assert_same_tensors(&adam2.state(), &ckpt.optimizer)?;
        let factories = crate::optim::builtin_lr_schedulers();
        let (_, f) = factories.iter().find(|(n, _)| *n == "inverse_sqrt").ok_or("no sched")?;
        let mut sched2 =
            (f.build)(&back.config.lr_scheduler.config, &crate::optim::ScheduleContext::default())?;
        sched2.load_state(&back.state.lr_scheduler)?;
        assert_eq!(sched2.lr().to_bits(), sched.lr().to_bits());
        back.check_dictionaries(&ckpt.config.dictionaries)?;
        back.validate_optimizer(&model2.parameters())?;
        // Saving again over it replaces it.
        save(&path, &back)?;
        assert_same_tensors(&load(&path)?.model, &ckpt.model)?;
        assert_eq!(list_dir(dir.path())?.len(), 1, "no leftovers");
        Ok(())
    }

    #[test]
    fn half_model_is_saved_in_fp32() -> TestResult {
        let (_vs, model) = tiny()?;
        let (mut ckpt, _) = make_checkpoint(&model)?;
        ckpt.model = ckpt
            .model
            .iter()
            .map(|(n, t)| Ok((n.clone(), t.f_to_kind(Kind::Half)?)))
            .collect::<Result<_, tch::TchError>>()?;
        let dir = tempfile::tempdir()?;
        save(dir.path().join("c"), &ckpt)?;
        let back = load(dir.path().join("c"))?;
        assert!(back.model.iter().all(|(_, t)| t.kind() == Kind::Float));
        Ok(())
    }

    #[test]
    fn fp16_run_resumes_its_fp32_masters_exactly() -> TestResult {
        use crate::fp16::MasterWeights;
        let (mut vs, model) = tiny()?;
        vs.half();
        let mut master = MasterWeights::new(&model.parameters())?;
        // Masters that half precision cannot hold: what fp16 training produces.
        let nudged: Vec<(String, Tensor)> = master
            .params()
            .iter()
            .map(|(n, t)| Ok((n.clone(), t.f_detach()?.f_add_scalar(1e-4)?)))
            .collect::<Result<_, tch::TchError>>()?;
        master.load_fp32(&nudged)?;
        let (mut ckpt, _) = make_checkpoint(&tiny()?.1)?;
        ckpt.config.precision = Precision::Fp16;
        ckpt.model = with_fp32_masters(
            &model.fairseq_state_dict(),
            master.params(),
            &model.tied_parameters(),
        );
        let dir = tempfile::tempdir()?;
        save(dir.path().join("checkpoint_last"), &ckpt)?;
        let back = load(dir.path().join("checkpoint_last"))?;

        let (mut vs2, model2) = tiny()?;
        vs2.half();
        back.load_model_into(&model2.fairseq_state_dict())?;
        let mut master2 = MasterWeights::new(&model2.parameters())?;
        master2.load_fp32(&back.model)?;
        assert_same_tensors(master2.params(), master.params())?;
        assert_same_tensors(&model2.parameters(), &model.parameters())?;
        // The tied output projection was saved as the master of the embedding.
        let get = |name: &str| back.model.iter().find(|(n, _)| n == name).map(|(_, t)| t);
        let (Some(a), Some(b)) =
            (get("decoder.embed_tokens.weight"), get("decoder.output_projection.weight"))
        else {
            return Err("tied names missing".into());
        };
        assert!(bits_equal(a, b)?);
        Ok(())
    }

    /// One training update as a loop would run it: reseed, forward with dropout, backward,
    /// Adam at the scheduler's rate, scheduler step. Returns the loss.
    fn train_update(
        model: &Transformer,
        adam: &mut Adam,
        sched: &mut dyn LrScheduler,
        seed: u64,
        num_updates: u64,
    ) -> Result<f64, Box<dyn std::error::Error>> {
        RngState::reseed(seed, num_updates);
        let params = model.parameters();
        for (_, p) in &params {
            let mut p = p.shallow_clone();
            p.zero_grad();
        }
        let src = Tensor::f_from_slice(&[5i64, 6, 7, 2, 8, 9, 10, 2])?.f_view([2, 4])?;
        let lengths = Tensor::f_from_slice(&[4i64, 4])?;
        let prev = Tensor::f_from_slice(&[2i64, 11, 12, 2, 13, 14])?.f_view([2, 3])?;
        let target = Tensor::f_from_slice(&[11i64, 12, 2, 13, 14, 2])?;
        let logits = model.forward(&src, &lengths, &prev, true)?;
        let lprobs = model.get_normalized_probs(&logits, true)?.f_view([6, -1])?;
        let loss = lprobs.f_nll_loss(&target, None::<Tensor>, tch::Reduction::Sum, -100)?;
        loss.f_backward()?;
        adam.step(&params, sched.lr())?;
        sched.step_update(num_updates + 1);
        Ok(loss.f_double_value(&[])?)
    }

    /// libtorch's default generator is process-wide and other tests draw from it
    /// concurrently: an exact-RNG check is retried so that a draw from another thread between
    /// a reseed and its use cannot fail it. A real bug fails every attempt.
    fn with_retries(
        f: impl Fn() -> Result<Option<String>, Box<dyn std::error::Error>>,
    ) -> TestResult {
        let mut last = String::new();
        for _ in 0..5 {
            match f()? {
                None => return Ok(()),
                Some(m) => last = m,
            }
        }
        Err(last.into())
    }

    fn same_tensors(
        a: &[(String, Tensor)],
        b: &[(String, Tensor)],
    ) -> Result<bool, Box<dyn std::error::Error>> {
        if a.len() != b.len() {
            return Ok(false);
        }
        for (name, t) in a {
            let (_, u) = b.iter().find(|(n, _)| n == name).ok_or(format!("{name} lost"))?;
            if !bits_equal(t, u)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    #[test]
    fn resumed_training_matches_uninterrupted_training() -> TestResult {
        with_retries(resume_once)
    }

    /// Trains 4 updates straight, and 2 + save + load + 2; `Some(why)` when they differ.
    fn resume_once() -> Result<Option<String>, Box<dyn std::error::Error>> {
        let config = TransformerConfig { dropout: 0.3, attention_dropout: 0.1, ..tiny_config() };
        let build = || -> Result<_, Box<dyn std::error::Error>> {
            tch::manual_seed(0);
            let vs = tch::nn::VarStore::new(Device::Cpu);
            let model = Transformer::new(&vs.root(), &config)?;
            let factories = crate::optim::builtin_lr_schedulers();
            let (_, f) = factories.iter().find(|(n, _)| *n == "inverse_sqrt").ok_or("sched")?;
            let cfg = serde_json::json!({ "warmup_updates": 3 });
            let ctx = crate::optim::ScheduleContext { lr: vec![1e-3], ..Default::default() };
            let sched = (f.build)(&cfg, &ctx)?;
            Ok((vs, model, Adam::new(AdamConfig::default())?, sched, cfg))
        };
        let seed = 5;
        // Uninterrupted: 4 updates.
        let (_vs, model, mut adam, mut sched, _) = build()?;
        let mut losses = Vec::new();
        for u in 0..4 {
            losses.push(train_update(&model, &mut adam, sched.as_mut(), seed, u)?);
        }
        // Interrupted after 2, saved, resumed into fresh objects, 2 more.
        let (_vs1, model1, mut adam1, mut sched1, cfg) = build()?;
        for u in 0..2 {
            train_update(&model1, &mut adam1, sched1.as_mut(), seed, u)?;
        }
        // (make_checkpoint trains the model it is given: give it another one.)
        let (mut ckpt, _) = make_checkpoint(&tiny()?.1)?;
        ckpt.model = model1.fairseq_state_dict();
        ckpt.config.lr_scheduler = ComponentConfig::new("inverse_sqrt", cfg);
        ckpt.optimizer = adam1.state();
        ckpt.state.lr_scheduler = sched1.state()?;
        ckpt.state.num_updates = 2;
        ckpt.state.rng = RngState { seed, num_updates: 2 };
        let dir = tempfile::tempdir()?;
        save(dir.path().join("checkpoint_last"), &ckpt)?;
        drop((model1, adam1, sched1, ckpt));

        let back = load(dir.path().join("checkpoint_last"))?;
        let (_vs2, model2, mut adam2, mut sched2, _) = build()?;
        // Make sure the fresh model really differs before loading.
        tch::manual_seed(99);
        let (_vs3, other) = tiny()?;
        back.load_model_into(&other.fairseq_state_dict())?;
        back.load_model_into(&model2.fairseq_state_dict())?;
        adam2.load_state(&back.optimizer)?;
        sched2.load_state(&back.state.lr_scheduler)?;
        let start = back.state.rng.num_updates;
        let mut resumed = Vec::new();
        for u in start..start + 2 {
            resumed.push(train_update(
                &model2,
                &mut adam2,
                sched2.as_mut(),
                back.state.rng.seed,
                u,
            )?);
        }
        if resumed[0].to_bits() != losses[2].to_bits()
            || resumed[1].to_bits() != losses[3].to_bits()
        {
            return Ok(Some(format!("losses {resumed:?} vs {losses:?}")));
        }
        if !same_tensors(&model2.fairseq_state_dict(), &model.fairseq_state_dict())? {
            return Ok(Some("model tensors differ".into()));
        }
        if !same_tensors(&adam2.state(), &adam.state())? {
            return Ok(Some("optimizer state differs".into()));
        }
        Ok(None)
    }

    #[test]
    fn problems_are_named() -> TestResult {
        let (_vs, model) = tiny()?;
        let (ckpt, _) = make_checkpoint(&model)?;
        let expected = model.fairseq_state_dict();
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("checkpoint_last");
        save(&path, &ckpt)?;

        // Missing tensor.
        let mut c = load(&path)?;
        c.model.retain(|(n, _)| n != "decoder.layers.0.fc1.weight");
        let e = c.validate_model(&expected);
        assert!(
            matches!(&e, Err(Error::MissingTensor { name, .. }) if name == "decoder.layers.0.fc1.weight"),
            "{e:?}"
        );
        // Wrong shape.
        let mut c = load(&path)?;
        for (n, t) in &mut c.model {
            if n == "encoder.layers.0.fc2.bias" {
                *t = Tensor::f_zeros([3], (Kind::Float, Device::Cpu))?;
            }
        }
        let e = c.validate_model(&expected);
        assert!(
            matches!(&e, Err(Error::ShapeMismatch { name, found, .. }) if name == "encoder.layers.0.fc2.bias" && *found == vec![3]),
            "{e:?}"
        );
        // Unexpected tensor.
        let mut c = load(&path)?;
        c.model.push(("encoder.extra".into(), Tensor::f_zeros([1], (Kind::Float, Device::Cpu))?));
        let e = c.validate_model(&expected);
        assert!(matches!(&e, Err(Error::UnexpectedTensor { name, .. }) if name == "encoder.extra"));
        // Optimizer state of an unknown parameter, or of another optimizer.
        let params = model.parameters();
        let mut c = load(&path)?;
        c.validate_optimizer(&params)?;
        c.optimizer.push((
            "adam.exp_avg.encoder.gone".into(),
            Tensor::f_zeros([1], (Kind::Float, Device::Cpu))?,
        ));
        let e = c.validate_optimizer(&params);
        assert!(
            matches!(&e, Err(Error::UnexpectedTensor { file, name }) if file == OPTIMIZER_FILE && name == "adam.exp_avg.encoder.gone"),
            "{e:?}"
        );
        c.optimizer.pop();
        c.config.optimizer.name = "nag".into();
        assert!(matches!(c.validate_optimizer(&params), Err(Error::UnexpectedTensor { .. })));
        // Another vocabulary.
        let data = vec![
            DictionaryIdentity::of("dict.de.txt", &dict(&["a", "x"])),
            DictionaryIdentity::of("dict.en.txt", &dict(&["c"])),
        ];
        let e = c.check_dictionaries(&data);
        assert!(matches!(&e, Err(Error::VocabularyMismatch { name, .. }) if name == "dict.de.txt"));
        let e = c.check_dictionaries(&data[1..]);
        assert!(matches!(&e, Err(Error::DictionarySet { name, .. }) if name == "dict.de.txt"));

        // Unreadable JSON.
        fs::write(path.join(TRAINER_STATE_FILE), b"{ not json")?;
        let e = load(&path);
        assert!(matches!(&e, Err(Error::Json { path: p, .. }) if p.ends_with(TRAINER_STATE_FILE)));
        assert!(e.err().map(|e| e.to_string()).unwrap_or_default().contains("trainer_state.json"));
        // Missing file.
        save(&path, &ckpt)?;
        fs::remove_file(path.join(OPTIMIZER_FILE))?;
        let e = load(&path);
        assert!(matches!(&e, Err(Error::MissingFile { path: p }) if p.ends_with(OPTIMIZER_FILE)));
        // Truncated safetensors.
        save(&path, &ckpt)?;
        let bytes = fs::read(path.join(MODEL_FILE))?;
        fs::write(path.join(MODEL_FILE), &bytes[..bytes.len() / 2])?;
        let e = load(&path);
        assert!(matches!(&e, Err(Error::Safetensors { path: p, .. }) if p.ends_with(MODEL_FILE)));
        // No checkpoint at all.
        assert!(matches!(load(dir.path().join("nope")), Err(Error::MissingFile { .. })));
        Ok(())
    }

    #[test]
    fn interrupted_save_leaves_the_previous_checkpoint() -> TestResult {
        let (_vs, model) = tiny()?;
        let (ckpt, _) = make_checkpoint(&model)?;
        let dir = tempfile::tempdir()?;
        let last = dir.path().join("checkpoint_last");
        save(&last, &ckpt)?;
        // A crash while writing: a half-written tmp directory next to it.
        let tmp = dir.path().join("checkpoint_last.tmp-99999");
        fs::create_dir(&tmp)?;
        fs::write(tmp.join(MODEL_FILE), b"garbage")?;
        assert_same_tensors(&load(&last)?.model, &ckpt.model)?;
        // Retention ignores it; recover deletes it.
        assert!(prune(dir.path(), 1, 1)?.is_empty());
        assert_eq!(recover(dir.path())?, vec![tmp.clone()]);
        assert!(!tmp.exists());
        // A crash between the two renames: only checkpoint_last.old-<pid> is left.
        let old = dir.path().join("checkpoint_last.old-4242");
        fs::rename(&last, &old)?;
        assert!(load(&last).is_err());
        assert_eq!(recover(dir.path())?, vec![last.clone()]);
        assert_same_tensors(&load(&last)?.model, &ckpt.model)?;
        // A later save still works and leaves nothing behind.
        save(&last, &ckpt)?;
        assert_eq!(list_dir(dir.path())?.len(), 1);
        Ok(())
    }

    #[test]
    fn copies_share_the_content() -> TestResult {
        let (_vs, model) = tiny()?;
        let (ckpt, _) = make_checkpoint(&model)?;
        let dir = tempfile::tempdir()?;
        let names =
            vec!["checkpoint3".to_owned(), "checkpoint_best".into(), "checkpoint_last".into()];
        let paths = save_as(dir.path(), &names, &ckpt)?;
        for p in &paths {
            let c = load(p)?;
            assert_same_tensors(&c.model, &ckpt.model)?;
            assert_eq!(c.state, ckpt.state);
        }
        // Overwriting one copy does not change the others.
        let mut other = load(&paths[0])?;
        other.state.num_updates = 99;
        save(&paths[2], &other)?;
        assert_eq!(load(&paths[1])?.state.num_updates, 2);
        assert_eq!(load(&paths[2])?.state.num_updates, 99);
        assert!(matches!(
            copy_checkpoint(dir.path().join("none"), dir.path().join("x")),
            Err(Error::MissingFile { .. })
        ));
        Ok(())
    }

    #[test]
    fn retention_keeps_the_newest() -> TestResult {
        let dir = tempfile::tempdir()?;
        let names = [
            "checkpoint1",
            "checkpoint2",
            "checkpoint10",
            "checkpoint_1_100",
            "checkpoint_1_200",
            "checkpoint_2_1000",
            "checkpoint_last",
            "checkpoint_best",
            "checkpoint_last.tmp-1",
            "notes",
        ];
        for n in names {
            fs::create_dir(dir.path().join(n))?;
        }
        let mut removed: Vec<String> = prune(dir.path(), 2, 1)?
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        removed.sort();
        assert_eq!(removed, ["checkpoint1", "checkpoint_1_100", "checkpoint_1_200"]);
        let left: Vec<String> = list_dir(dir.path())?.into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            left,
            [
                "checkpoint10",
                "checkpoint2",
                "checkpoint_2_1000",
                "checkpoint_best",
                "checkpoint_last",
                "checkpoint_last.tmp-1",
                "notes"
            ]
        );
        // 0 keeps everything.
        assert!(prune(dir.path(), 0, 0)?.is_empty());
        Ok(())
    }

    #[test]
    fn names_follow_fairseq() {
        let o = SaveOptions { save_interval_updates: 100, ..SaveOptions::default() };
        // End of epoch, first validation: epoch checkpoint, best, last.
        let (n, best) = checkpoint_names(&o, 2, 250, true, Some(3.0), None);
        assert_eq!(n, ["checkpoint2", "checkpoint_best", "checkpoint_last"]);
        assert_eq!(best, Some(3.0));
        // Mid-epoch at a multiple of the interval, worse loss: no best.
        let (n, best) = checkpoint_names(&o, 3, 300, false, Some(4.0), Some(3.0));
        assert_eq!(n, ["checkpoint_3_300", "checkpoint_last"]);
        assert_eq!(best, Some(3.0));
        // Maximizing: a higher metric is better.
        let m = SaveOptions { maximize_best_checkpoint_metric: true, ..o.clone() };
        let (n, best) = checkpoint_names(&m, 3, 301, false, Some(4.0), Some(3.0));
        assert_eq!(n, ["checkpoint_best", "checkpoint_last"]);
        assert_eq!(best, Some(4.0));
        // --no-save writes nothing but still tracks the best.
        let ns = SaveOptions { no_save: true, ..o.clone() };
        assert_eq!(checkpoint_names(&ns, 1, 1, true, Some(1.0), Some(2.0)), (vec![], Some(1.0)));
        // --save-interval 2, --no-last-checkpoints.
        let s = SaveOptions { save_interval: 2, no_last_checkpoints: true, ..o };
        assert!(checkpoint_names(&s, 3, 10, true, None, None).0.is_empty());
        assert_eq!(checkpoint_names(&s, 4, 10, true, None, None).0, ["checkpoint4"]);
    }

    #[test]
    fn reseeding_makes_dropout_reproducible() -> TestResult {
        with_retries(|| {
            let x = Tensor::f_ones([64], (Kind::Float, Device::Cpu))?;
            RngState::reseed(7, 12);
            let a = x.f_dropout(0.5, true)?;
            let _ = x.f_dropout(0.5, true)?;
            // A resumed run at update 12 reseeds the same way and draws the same mask.
            RngState::reseed(7, 12);
            let b = x.f_dropout(0.5, true)?;
            if !a.f_equal(&b)? {
                return Ok(Some("same seed, different masks".into()));
            }
            RngState::reseed(7, 13);
            if a.f_equal(&x.f_dropout(0.5, true)?)? {
                return Ok(Some("next update, same mask".into()));
            }
            Ok(None)
        })
    }
}
