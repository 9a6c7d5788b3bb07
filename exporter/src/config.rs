//! The exporter's view of a checkpoint's `config.json`: the architecture name and its family
//! (resolved through [`seqforge_schemas::arch`], the one place that owns configs and presets),
//! the model's hyper-parameters (checked by the family), the language pair and the identities
//! of the dictionaries the model was trained on.

use std::path::Path;

use seqforge_schemas::arch::{self, Family};
use serde::Deserialize;

use crate::error::{Error, Result};

/// The fields every family's config has (by convention of [`seqforge_schemas::arch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct CommonConfig {
    /// Source dictionary size.
    pub src_vocab_size: usize,
    /// Target dictionary size.
    pub tgt_vocab_size: usize,
    /// Padding index.
    pub pad_index: usize,
    /// Longest source in tokens.
    pub max_source_positions: usize,
    /// Longest target in tokens.
    pub max_target_positions: usize,
}

/// One dictionary identity recorded in the checkpoint (the trainer's `DictionaryIdentity`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DictionaryIdentity {
    /// The file name, e.g. `dict.de.txt`.
    pub name: String,
    /// Number of symbols.
    pub size: usize,
    /// FNV-1a 64 hash of the symbols ([`seqforge_schemas::contract::symbols_hash`]).
    pub hash: String,
}

#[derive(Debug, Deserialize)]
struct Component {
    #[serde(default)]
    config: serde_json::Value,
}

#[derive(Debug, Deserialize)]
struct RawCheckpointConfig {
    arch: String,
    model: serde_json::Value,
    #[serde(default)]
    task: Option<Component>,
    #[serde(default)]
    dictionaries: Vec<DictionaryIdentity>,
}

/// What the exporter reads from `config.json`.
#[derive(Debug, Clone)]
pub struct CheckpointConfig {
    /// The architecture name.
    pub arch: String,
    /// The architecture's family.
    pub family: &'static Family,
    /// The model's hyper-parameters (the family's config as JSON, checked by the family, with
    /// the dictionary sizes filled in).
    pub model: serde_json::Value,
    /// The fields every family has.
    pub common: CommonConfig,
    /// Source language (the task's `source_lang`, else from the first dictionary's name).
    pub source_lang: String,
    /// Target language.
    pub target_lang: String,
    /// The dictionaries the model was trained with (source then target).
    pub dictionaries: Vec<DictionaryIdentity>,
}

/// The family's config type parsed from [`CheckpointConfig::model`].
pub fn parse_model<T: serde::de::DeserializeOwned>(model: &serde_json::Value) -> Result<T> {
    serde_json::from_value(model.clone())
        .map_err(|e| Error::Config { path: "config.json".into(), message: e.to_string() })
}

/// `dict.{lang}.txt` → `lang`.
fn lang_of(dict_name: &str) -> Option<&str> {
    dict_name.strip_prefix("dict.")?.strip_suffix(".txt")
}

impl CheckpointConfig {
    /// Reads and checks `path` (a checkpoint's `config.json`).
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = crate::error::read_checkpoint_file(path)?;
        Self::from_slice(path, &bytes)
    }

    /// Checks `bytes`, a `config.json` (`path` names it in errors).
    pub fn from_slice(path: &Path, bytes: &[u8]) -> Result<Self> {
        let raw: RawCheckpointConfig = serde_json::from_slice(bytes)
            .map_err(|e| Error::Json { path: path.to_path_buf(), message: e.to_string() })?;
        let family = arch::family_of(&raw.arch).map_err(|_| Error::UnknownArch {
            path: path.to_path_buf(),
            arch: raw.arch.clone(),
            known: arch::architecture_names().join(", "),
        })?;
        let mut model = raw.model;
        if !model.is_object() {
            return Err(Error::Config {
                path: path.to_path_buf(),
                message: "`model` must be a JSON object".into(),
            });
        }
        let task_lang = |key: &str| -> Option<String> {
            raw.task.as_ref()?.config.get(key)?.as_str().map(str::to_string)
        };
        let dict_lang = |i: usize| -> Option<String> {
            raw.dictionaries.get(i).and_then(|d| lang_of(&d.name)).map(str::to_string)
        };
        let missing = |what: &str| Error::Json {
            path: path.to_path_buf(),
            message: format!(
                "no {what}: neither task.config.{what} nor a recorded dict.{{lang}}.txt gives it"
            ),
        };
        let source_lang = task_lang("source_lang")
            .or_else(|| dict_lang(0))
            .ok_or_else(|| missing("source_lang"))?;
        let target_lang = task_lang("target_lang")
            .or_else(|| dict_lang(1))
            .ok_or_else(|| missing("target_lang"))?;
        // The trainer stores the architecture's config with vocabulary sizes 0 and builds the
        // model with the sizes of its dictionaries: take them from the recorded identities.
        for (lang, key) in [(&source_lang, "src_vocab_size"), (&target_lang, "tgt_vocab_size")] {
            if model.get(key).and_then(serde_json::Value::as_u64).unwrap_or(0) == 0 {
                let name = format!("dict.{lang}.txt");
                let id = raw.dictionaries.iter().find(|d| d.name == name).ok_or_else(|| {
                    Error::Config {
                        path: path.to_path_buf(),
                        message: format!(
                            "the vocabulary size is 0 and no identity of {name} is recorded"
                        ),
                    }
                })?;
                model[key] = id.size.into();
            }
        }
        let config_error = |message: String| Error::Config { path: path.to_path_buf(), message };
        (family.validate)(&model).map_err(|e| config_error(e.to_string()))?;
        let common: CommonConfig = serde_json::from_value(model.clone())
            .map_err(|e| config_error(format!("{} config: {e}", family.name)))?;
        Ok(Self {
            arch: raw.arch,
            family,
            model,
            common,
            source_lang,
            target_lang,
            dictionaries: raw.dictionaries,
        })
    }

    /// The recorded identity of `dict.{lang}.txt`, if the checkpoint has one.
    pub fn identity(&self, file_name: &str) -> Option<&DictionaryIdentity> {
        self.dictionaries.iter().find(|d| d.name == file_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_architectures_list_the_known_ones() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("config.json");
        std::fs::write(&path, r#"{"arch": "fconv_nope", "model": {}}"#).unwrap_or_default();
        let e = CheckpointConfig::load(&path).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("fconv_nope") && e.contains("transformer_tiny"), "{e}");
        assert!(e.contains("lstm_wiseman_iwslt_de_en"), "{e}");
    }
}
