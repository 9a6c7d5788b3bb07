//! The exporter's view of a checkpoint's `config.json`: the architecture name and its family
//! (resolved through [`seqforge_schemas::arch`], the one place that owns configs and presets),
//! the task (`translation`, or `language_modeling` for decoder-only models), the model's
//! hyper-parameters (checked by the family), the language pair (translation) and the
//! identities of the dictionaries the model was trained on.

use std::path::Path;

use seqforge_schemas::arch::{self, Family};
use seqforge_schemas::contract::{LM_DICT_FILE, Task};
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
    name: Option<String>,
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
    /// The sizes and positions every model has (for a language model: one vocabulary, the
    /// model's positions on both sides).
    pub common: CommonConfig,
    /// What the model does (the checkpoint's task; `translation` when none is recorded).
    pub task: Task,
    /// Source language (translation: the task's `source_lang`, else from the first
    /// dictionary's name; none for a language model).
    pub source_lang: Option<String>,
    /// Target language (translation).
    pub target_lang: Option<String>,
    /// The source and target dictionaries' file names (`dict.{lang}.txt`, or [`LM_DICT_FILE`]
    /// twice for a language model).
    pub dict_files: (String, String),
    /// The dictionaries the model was trained with (source then target).
    pub dictionaries: Vec<DictionaryIdentity>,
}

/// The family's config type parsed from [`CheckpointConfig::model`].
pub fn parse_model<T: serde::de::DeserializeOwned>(model: &serde_json::Value) -> Result<T> {
    serde_json::from_value(model.clone())
        .map_err(|e| Error::Config { path: "config.json".into(), message: e.to_string() })
}

/// The common fields of a decoder-only model's config, by the convention of
/// [`seqforge_schemas::arch`]'s decoder-only families: `vocab_size`, `pad_index`, and the
/// positions `max_target_positions` (when set) else `tokens_per_sample`.
fn lm_common(model: &serde_json::Value) -> std::result::Result<CommonConfig, String> {
    let get = |key: &str| model.get(key).and_then(serde_json::Value::as_u64);
    let field = |key: &str| get(key).ok_or_else(|| format!("missing `{key}`"));
    let vocab = field("vocab_size")? as usize;
    let positions = get("max_target_positions")
        .or_else(|| get("tokens_per_sample"))
        .ok_or("neither `max_target_positions` nor `tokens_per_sample`")?
        as usize;
    Ok(CommonConfig {
        src_vocab_size: vocab,
        tgt_vocab_size: vocab,
        pad_index: field("pad_index")? as usize,
        max_source_positions: positions,
        max_target_positions: positions,
    })
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
        let config_error = |message: String| Error::Config { path: path.to_path_buf(), message };
        let task = match raw.task.as_ref().and_then(|t| t.name.as_deref()) {
            None => Task::Translation,
            Some(name) => name.parse::<Task>().map_err(|e| config_error(format!("task: {e}")))?,
        };
        let identity_size = |name: &str| -> Result<usize> {
            raw.dictionaries.iter().find(|d| d.name == name).map(|d| d.size).ok_or_else(|| {
                config_error(format!(
                    "the vocabulary size is 0 and no identity of {name} is recorded"
                ))
            })
        };
        // The trainer stores the architecture's config with vocabulary sizes 0 and builds the
        // model with the sizes of its dictionaries: take them from the recorded identities.
        let mut fill = |key: &str, dict: &str| -> Result<()> {
            if model.get(key).and_then(serde_json::Value::as_u64).unwrap_or(0) == 0 {
                model[key] = identity_size(dict)?.into();
            }
            Ok(())
        };
        let (source_lang, target_lang, dict_files) = match task {
            Task::Translation => {
                let task_lang = |key: &str| -> Option<String> {
                    raw.task.as_ref()?.config.get(key)?.as_str().map(str::to_string)
                };
                let dict_lang = |i: usize| -> Option<String> {
                    raw.dictionaries.get(i).and_then(|d| lang_of(&d.name)).map(str::to_string)
                };
                let missing = |what: &str| Error::Json {
                    path: path.to_path_buf(),
                    message: format!(
                        "no {what}: neither task.config.{what} nor a recorded dict.{{lang}}.txt \
                         gives it"
                    ),
                };
                let source_lang = task_lang("source_lang")
                    .or_else(|| dict_lang(0))
                    .ok_or_else(|| missing("source_lang"))?;
                let target_lang = task_lang("target_lang")
                    .or_else(|| dict_lang(1))
                    .ok_or_else(|| missing("target_lang"))?;
                let files = (format!("dict.{source_lang}.txt"), format!("dict.{target_lang}.txt"));
                fill("src_vocab_size", &files.0)?;
                fill("tgt_vocab_size", &files.1)?;
                (Some(source_lang), Some(target_lang), files)
            }
            Task::LanguageModeling => {
                let task_flag = |key: &str| {
                    raw.task.as_ref().and_then(|t| t.config.get(key)?.as_bool()).unwrap_or(false)
                };
                if task_flag("add_bos_token") {
                    return Err(config_error(
                        "the language model was trained with --add-bos-token: its inputs start \
                         with <s>, which exported models do not do yet (they start with </s>, \
                         as fairseq's default); retrain without --add-bos-token"
                            .into(),
                    ));
                }
                fill("vocab_size", LM_DICT_FILE)?;
                (None, None, (LM_DICT_FILE.to_string(), LM_DICT_FILE.to_string()))
            }
        };
        (family.validate)(&model).map_err(|e| config_error(e.to_string()))?;
        let common = match task {
            Task::Translation => serde_json::from_value(model.clone())
                .map_err(|e| config_error(format!("{} config: {e}", family.name)))?,
            Task::LanguageModeling => lm_common(&model)
                .map_err(|e| config_error(format!("{} config: {e}", family.name)))?,
        };
        Ok(Self {
            arch: raw.arch,
            family,
            model,
            common,
            task,
            source_lang,
            target_lang,
            dict_files,
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
