//! Reads fairseq checkpoints (`checkpoint_best.pt`, …) without Python or libtorch and turns
//! them into a seqforge model: a config of one of [`seqforge_schemas::arch`]'s families and
//! fp32 tensors under the names seqforge's models use (fairseq's, after fairseq's own
//! state-dict upgrades).
//!
//! Layers, bottom up:
//! - [`pickle`]: a safe unpickler (protocols 0–5) that builds data and refuses any global
//!   outside a small allow-list, with lengths checked against the input;
//! - [`torch`]: `torch.save` files, zip and legacy formats; tensors as views of storages read
//!   on demand (the optimizer state is never read);
//! - [`checkpoint`]: fairseq's checkpoint layout (`args` / `cfg`, `model`,
//!   `extra_state["ema"]`, `optimizer_history`);
//! - [`families`]: per family, the architecture defaults, unsupported options and state-dict
//!   upgrades — a table, one row per family;
//! - [`Imported`]: all of it together, what `seqforge-train import-fairseq` writes as a
//!   checkpoint directory.
//!
//! No libtorch here: the exporter and the runtime may depend on this crate.

pub mod checkpoint;
mod error;
pub mod families;
pub mod pickle;
pub mod torch;

use std::path::{Path, PathBuf};

use serde_json::Value as Json;

pub use checkpoint::{FairseqCheckpoint, Weights};
pub use error::{Error, Result};
pub use families::ImportTask;

use checkpoint::StateDict;
use families::Versions;
use torch::TorchFile;

/// A fairseq checkpoint mapped onto a seqforge family, its tensors read on demand.
#[derive(Debug)]
pub struct Imported {
    path: PathBuf,
    file: TorchFile,
    tensors: StateDict,
    /// The architecture (`--arch`), one of [`families::supported_architectures`].
    pub arch: String,
    /// The seqforge family (`transformer`, `lstm`, `fconv`).
    pub family: &'static str,
    /// The family's config (fairseq's argument names) with the vocabulary sizes of the
    /// embeddings, checked by the family.
    pub config: Json,
    /// The seqforge task of the family.
    pub task: ImportTask,
    /// The checkpoint's task arguments (`args` or `cfg["task"]`).
    pub task_args: checkpoint::Args,
    /// The task's `source_lang`, when recorded.
    pub source_lang: Option<String>,
    /// The task's `target_lang`, when recorded.
    pub target_lang: Option<String>,
    /// Updates done.
    pub num_updates: u64,
    /// Trained in fp16/bf16.
    pub half_precision: bool,
}

impl Imported {
    /// Reads `path`, maps its arguments onto a seqforge config and upgrades its state dict
    /// (see [`families`]); `weights` chooses the model's weights or the EMA.
    pub fn open(path: impl AsRef<Path>, weights: Weights) -> Result<Self> {
        let ckpt = FairseqCheckpoint::open(path, weights)?;
        let FairseqCheckpoint {
            mut file,
            model_args,
            task_args,
            arch,
            mut state_dict,
            num_updates,
            half_precision,
        } = ckpt;
        let path = file.path().to_path_buf();
        let (family, import) = families::family_of(&path, &arch)?;
        let mut config = families::map_config(&path, &arch, family, import, &model_args)?;
        let mut versions = Versions::new();
        for (name, t) in &state_dict {
            if name.ends_with(".version")
                && t.numel() == 1
                && t.dtype.is_float()
                && let Some(&v) = file.read_f32(name, t)?.first()
            {
                versions.insert(name.clone(), v);
            }
        }
        (import.upgrade)(&path, &versions, &mut config, &mut state_dict)?;
        for (key, size) in (import.vocab_sizes)(&path, &state_dict)? {
            config[key] = size.into();
        }
        (family.validate)(&config).map_err(|e| {
            families::blame(&path, &arch, family, &config, &model_args, e.to_string())
        })?;
        let lang = |key: &str| task_args.get(key).and_then(|v| v.as_str()).map(str::to_string);
        let (source_lang, target_lang) = (lang("source_lang"), lang("target_lang"));
        Ok(Self {
            task: import.task,
            task_args,
            source_lang,
            target_lang,
            path,
            file,
            tensors: state_dict,
            arch,
            family: family.name,
            config,
            num_updates,
            half_precision,
        })
    }

    /// The checkpoint's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The seqforge `language_modeling` task config (`tokens_per_sample`, `sample_break_mode`,
    /// `add_bos_token`, `output_dictionary_size`) from the checkpoint's task arguments, fairseq's
    /// defaults where one is not recorded.
    pub fn language_modeling_config(&self) -> Json {
        let int = |key: &str, default: i64| {
            self.task_args.get(key).and_then(pickle::Value::as_int).unwrap_or(default)
        };
        let mode = self
            .task_args
            .get("sample_break_mode")
            .and_then(pickle::Value::as_str)
            .unwrap_or("none")
            .to_string();
        let bos = match self.task_args.get("add_bos_token") {
            Some(pickle::Value::Bool(b)) => *b,
            Some(v) => v.as_int().is_some_and(|i| i != 0),
            None => false,
        };
        serde_json::json!({
            "tokens_per_sample": int("tokens_per_sample", 1024),
            "sample_break_mode": mode,
            "add_bos_token": bos,
            "output_dictionary_size": int("output_dictionary_size", -1),
        })
    }

    /// `(src_vocab_size, tgt_vocab_size)`: the rows of the encoder's and decoder's embeddings.
    pub fn vocab_sizes(&self) -> (usize, usize) {
        let size = |k: &str| self.config.get(k).and_then(Json::as_u64).unwrap_or(0) as usize;
        (size("src_vocab_size"), size("tgt_vocab_size"))
    }

    /// The tensors' names and shapes, after the upgrades.
    pub fn shapes(&self) -> impl Iterator<Item = (&str, &[usize])> {
        self.tensors.iter().map(|(k, t)| (k.as_str(), t.shape.as_slice()))
    }

    /// Checks the tensors against a model's `expected` names and shapes: every expected name
    /// present with its shape ([`Error::MissingTensor`], [`Error::ShapeMismatch`]), nothing
    /// else ([`Error::UnexpectedTensor`]).
    pub fn check_against<'a>(
        &self,
        expected: impl IntoIterator<Item = (&'a str, Vec<usize>)>,
    ) -> Result<()> {
        let mut seen = std::collections::BTreeSet::new();
        for (name, shape) in expected {
            let t = self.tensors.get(name).ok_or_else(|| Error::MissingTensor {
                path: self.path.clone(),
                name: name.to_string(),
            })?;
            if t.shape != shape {
                return Err(Error::ShapeMismatch {
                    path: self.path.clone(),
                    name: name.to_string(),
                    expected: shape,
                    found: t.shape.clone(),
                });
            }
            seen.insert(name);
        }
        match self.tensors.keys().find(|k| !seen.contains(k.as_str())) {
            Some(name) => {
                Err(Error::UnexpectedTensor { path: self.path.clone(), name: name.clone() })
            }
            None => Ok(()),
        }
    }

    /// The values of tensor `name` in fp32, row-major.
    pub fn read(&mut self, name: &str) -> Result<Vec<f32>> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::MissingTensor { path: self.path.clone(), name: name.into() })?;
        self.file.read_f32(name, t)
    }
}
