//! What a fairseq checkpoint holds, read from a [`TorchFile`]: the model's arguments (`args`,
//! an `argparse.Namespace`, in checkpoints before fairseq 0.10; `cfg["model"]`, a Namespace or
//! a dict, after), the task's, the state dict (`model`), the EMA weights
//! (`extra_state["ema"]`), the update count and whether it was trained in fp16. The optimizer
//! state (`last_optimizer_state`) is never read.
//!
//! fairseq's own checkpoint upgrades that matter for the model are applied as
//! `checkpoint_utils._upgrade_state_dict` does: `max_positions` → `max_source_positions` /
//! `max_target_positions`, `relu_dropout` → `activation_dropout`; nested dataclass configs
//! (`encoder: {embed_dim: …}`) are read under their flat names (`encoder_embed_dim`).

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::pickle::Value;
use crate::torch::{TensorRef, TorchFile};

/// Arguments by name (a Namespace's attributes or a dict's entries).
pub type Args = BTreeMap<String, Value>;

/// A state dict: tensor names → tensors (not yet read).
pub type StateDict = BTreeMap<String, TensorRef>;

/// Which weights to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Weights {
    /// The model's (`state["model"]`).
    #[default]
    Model,
    /// The exponential moving average fairseq's `--store-ema` keeps (`extra_state["ema"]`).
    Ema,
}

/// A fairseq checkpoint, its tensors not yet read.
#[derive(Debug)]
pub struct FairseqCheckpoint {
    /// The file, for reading tensors.
    pub file: TorchFile,
    /// The model's arguments (with `arch`, and `criterion` when recorded).
    pub model_args: Args,
    /// The task's arguments (`source_lang`, `target_lang`, …).
    pub task_args: Args,
    /// The architecture (`--arch`).
    pub arch: String,
    /// The chosen weights' state dict.
    pub state_dict: StateDict,
    /// Updates done (`optimizer_history[-1]["num_updates"]`), 0 when not recorded.
    pub num_updates: u64,
    /// Trained with `--fp16` / `--memory-efficient-fp16` (or `--bf16`).
    pub half_precision: bool,
}

fn attrs(v: &Value) -> Args {
    v.entries().into_iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

impl FairseqCheckpoint {
    /// Reads `path` and takes `weights` (see [`Weights`]).
    pub fn open(path: impl AsRef<Path>, weights: Weights) -> Result<Self> {
        let file = TorchFile::open(path)?;
        let path = file.path().to_path_buf();
        let format = |message: String| Error::Format { path: path.clone(), message };
        let root = file.root();
        if !matches!(root, Value::Dict(_)) {
            return Err(format(format!(
                "the checkpoint is {} where fairseq saves a dict",
                root.kind()
            )));
        }
        let cfg = root.get("cfg").filter(|c| !matches!(c, Value::None));
        let args = root.get("args").filter(|a| !matches!(a, Value::None));
        let section = |name: &str| -> Args {
            match cfg.and_then(|c| c.get(name)).filter(|v| !matches!(v, Value::None)) {
                Some(v) => attrs(v),
                None => args.map(attrs).unwrap_or_default(),
            }
        };
        let mut model_args = section("model");
        let task_args = section("task");
        if model_args.is_empty() {
            return Err(format(
                "neither args nor cfg[\"model\"] records the model's configuration".into(),
            ));
        }
        // The criterion matters to some models (the LSTM's adaptive softmax).
        let criterion = cfg
            .and_then(|c| c.get("criterion"))
            .and_then(|c| c.get("_name").or_else(|| c.get("criterion")))
            .or_else(|| args.and_then(|a| a.get("criterion")));
        if let Some(c) = criterion {
            model_args.entry("criterion".into()).or_insert_with(|| c.clone());
        }
        upgrade_args(&mut model_args);
        let arch = model_args
            .get("arch")
            .or_else(|| model_args.get("_name"))
            .and_then(Value::as_str)
            .ok_or_else(|| format("the model's arguments name no architecture (arch)".into()))?
            .to_string();
        let (what, dict) = match weights {
            Weights::Model => ("model", root.get("model")),
            Weights::Ema => {
                ("extra_state[\"ema\"]", root.get("extra_state").and_then(|e| e.get("ema")))
            }
        };
        let dict = dict.ok_or_else(|| match weights {
            Weights::Model => format("no state dict (\"model\")".into()),
            Weights::Ema => format(
                "no EMA weights (extra_state[\"ema\"]): was it trained with --store-ema?".into(),
            ),
        })?;
        let Value::Dict(entries) = dict else {
            return Err(format(format!(
                "{what} is {} where a state dict is expected",
                dict.kind()
            )));
        };
        let mut state_dict = StateDict::new();
        for (k, v) in entries {
            let name = k
                .as_str()
                .ok_or_else(|| format(format!("{what} has a key that is not a string")))?;
            state_dict.insert(name.to_string(), file.tensor(name, v)?);
        }
        let num_updates = root
            .get("optimizer_history")
            .and_then(|h| match h {
                Value::List(items) => items.last(),
                _ => None,
            })
            .and_then(|h| h.get("num_updates"))
            .and_then(Value::as_int)
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0);
        let flag = |name: &str| {
            let common = cfg.and_then(|c| c.get("common")).and_then(|c| c.get(name));
            common.or_else(|| args.and_then(|a| a.get(name))).and_then(Value::as_int) == Some(1)
        };
        let half_precision = ["fp16", "memory_efficient_fp16", "bf16", "memory_efficient_bf16"]
            .into_iter()
            .any(flag);
        Ok(Self { file, model_args, task_args, arch, state_dict, num_updates, half_precision })
    }
}

/// The argument upgrades of fairseq's `_upgrade_state_dict` that concern the model, and the
/// flat names of nested dataclass fields (`cfg.model.encoder.embed_dim` →
/// `encoder_embed_dim`, `quant_noise.pq` → `quant_noise_pq`, as fairseq's
/// `TransformerConfig.to_namespace` names them).
fn upgrade_args(args: &mut Args) {
    let nested: Vec<(String, Value)> = args
        .iter()
        .filter(|(_, v)| matches!(v, Value::Dict(_)))
        .flat_map(|(k, v)| {
            v.entries().into_iter().map(move |(sub, x)| (format!("{k}_{sub}"), x.clone()))
        })
        .collect();
    for (k, v) in nested {
        args.entry(k).or_insert(v);
    }
    if let Some(max) = args.get("max_positions").cloned() {
        args.entry("max_source_positions".into()).or_insert_with(|| max.clone());
        args.entry("max_target_positions".into()).or_insert(max);
    }
    if let Some(relu) = args.get("relu_dropout").cloned() {
        args.entry("activation_dropout".into()).or_insert(relu);
    }
}
