//! A fairseq checkpoint (`checkpoint_best.pt`) exported directly, without first importing it
//! into a seqforge checkpoint directory: [`seqforge_fairseq`] reads the file (safe unpickler,
//! fairseq's architecture defaults and state-dict upgrades, fp16 → fp32), and the result is
//! handed to the graph builders as the [`CheckpointConfig`] and [`Weights`] a checkpoint
//! directory would give. The dictionaries' identities are those of the data directory's
//! `dict.{src,tgt}.txt`, or a language model's `dict.txt` (the export then checks their sizes
//! against the embeddings); the languages (or a language model's task options) are those the
//! checkpoint's task records.
//!
//! The model's weights are taken (not the EMA: import with `seqforge-train import-fairseq
//! --use-ema` for those), and `checkpoint_sha256` in the contract is the SHA-256 of the
//! imported tensors (names, shapes and little-endian f32 values, in name order).

use std::path::Path;

use seqforge_fairseq::{FairseqCheckpoint, ImportTask, Imported, Weights as Which};
use seqforge_schemas::contract::Vocabulary;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::config::CheckpointConfig;
use crate::error::{Error, Result};
use crate::weights::Weights;

/// The config and weights of the fairseq checkpoint `path`; `data` gives the dictionaries'
/// identities.
pub fn read(path: &Path, data: Option<&Path>) -> Result<(CheckpointConfig, Weights)> {
    let mut imported = Imported::open(path, Which::Model)?;
    let missing = |what: &str| Error::Config {
        path: path.to_path_buf(),
        message: format!(
            "the checkpoint records no {what}; import it with `seqforge-train import-fairseq \
             --source-lang … --target-lang …` and export the directory"
        ),
    };
    let (task, files) = match imported.task {
        ImportTask::Translation => {
            let src = imported.source_lang.clone().ok_or_else(|| missing("source language"))?;
            let tgt = imported.target_lang.clone().ok_or_else(|| missing("target language"))?;
            let files = vec![format!("dict.{src}.txt"), format!("dict.{tgt}.txt")];
            (json!({ "source_lang": src, "target_lang": tgt }), files)
        }
        ImportTask::LanguageModeling => {
            (imported.language_modeling_config(), vec!["dict.txt".to_string()])
        }
    };
    let mut dictionaries = Vec::new();
    if let Some(data) = data {
        for name in files {
            let vocab = Vocabulary::load(&data.join(&name))?;
            dictionaries.push(json!({
                "name": name, "size": vocab.len(), "hash": vocab.identity_hash(),
            }));
        }
    }
    let config = json!({
        "arch": imported.arch,
        "model": imported.config,
        "task": { "name": imported.task.name(), "config": task },
        "dictionaries": dictionaries,
    });
    let config = CheckpointConfig::from_slice(path, config.to_string().as_bytes())?;
    let names: Vec<(String, Vec<usize>)> =
        imported.shapes().map(|(n, s)| (n.to_string(), s.to_vec())).collect();
    let mut hasher = Sha256::new();
    let mut tensors = Vec::with_capacity(names.len());
    for (name, shape) in names {
        let values = imported.read(&name)?;
        hasher.update(name.as_bytes());
        for d in &shape {
            hasher.update((*d as u64).to_le_bytes());
        }
        for v in &values {
            hasher.update(v.to_le_bytes());
        }
        tensors.push((name, shape, values));
    }
    let sha256 = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok((config, Weights::from_f32(path, tensors, sha256)))
}

/// fairseq's update count of the checkpoint `path` (0 when unreadable or not recorded).
pub fn num_updates(path: &Path) -> u64 {
    FairseqCheckpoint::open(path, Which::Model).map_or(0, |c| c.num_updates)
}
