//! The exporter's view of a checkpoint's `config.json`: the architecture name, the model's
//! hyper-parameters (the trainer's serialized `TransformerConfig`, same field names and
//! defaults, parsed here because the exporter does not depend on the trainer), the language
//! pair and the identities of the dictionaries the model was trained on.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// The architectures the exporter can compile: fairseq's Transformer presets, as the trainer
/// registers them (`trainer/src/models/transformer/config.rs`, `PRESETS`).
pub const KNOWN_ARCHS: &[&str] = &[
    "transformer",
    "transformer_tiny",
    "transformer_iwslt_de_en",
    "transformer_wmt_en_de",
    "transformer_vaswani_wmt_en_de_big",
    "transformer_vaswani_wmt_en_fr_big",
    "transformer_wmt_en_de_big",
    "transformer_wmt_en_de_big_t2t",
];

/// The feed-forward activation (the trainer's `Activation`, same JSON names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `max(0, x)`.
    #[default]
    Relu,
    /// Exact GELU, `0.5·x·(1 + erf(x/√2))`, computed in fp32.
    Gelu,
    /// The tanh approximation of GELU.
    #[serde(alias = "gelu_fast")]
    GeluAccurate,
    /// `tanh(x)`.
    Tanh,
    /// The identity.
    Linear,
}

/// fairseq's Transformer hyper-parameters, as the trainer serializes them (unknown fields are
/// refused: a field this exporter does not know may change the maths).
///
/// A deliberate mirror of the trainer's `TransformerConfig`
/// (`trainer/src/models/transformer/config.rs`): same field names and defaults, kept in step
/// by hand, because the exporter must build without libtorch and so cannot depend on the
/// libtorch-linked trainer crate.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[allow(missing_docs)]
pub struct TransformerConfig {
    pub encoder_embed_dim: usize,
    pub encoder_ffn_embed_dim: usize,
    pub encoder_layers: usize,
    pub encoder_attention_heads: usize,
    pub encoder_normalize_before: bool,
    pub encoder_learned_pos: bool,
    pub decoder_embed_dim: usize,
    pub decoder_ffn_embed_dim: usize,
    pub decoder_layers: usize,
    pub decoder_attention_heads: usize,
    pub decoder_normalize_before: bool,
    pub decoder_learned_pos: bool,
    pub share_decoder_input_output_embed: bool,
    pub share_all_embeddings: bool,
    pub dropout: f64,
    pub attention_dropout: f64,
    pub activation_dropout: f64,
    pub activation_fn: Activation,
    pub max_source_positions: usize,
    pub max_target_positions: usize,
    pub no_scale_embedding: bool,
    pub layernorm_embedding: bool,
    pub no_token_positional_embeddings: bool,
    pub no_decoder_final_norm: bool,
    pub src_vocab_size: usize,
    pub tgt_vocab_size: usize,
    pub pad_index: usize,
}

impl Default for TransformerConfig {
    /// The trainer's default (fairseq's `transformer` base architecture).
    fn default() -> Self {
        Self {
            encoder_embed_dim: 512,
            encoder_ffn_embed_dim: 2048,
            encoder_layers: 6,
            encoder_attention_heads: 8,
            encoder_normalize_before: false,
            encoder_learned_pos: false,
            decoder_embed_dim: 512,
            decoder_ffn_embed_dim: 2048,
            decoder_layers: 6,
            decoder_attention_heads: 8,
            decoder_normalize_before: false,
            decoder_learned_pos: false,
            share_decoder_input_output_embed: false,
            share_all_embeddings: false,
            dropout: 0.1,
            attention_dropout: 0.0,
            activation_dropout: 0.0,
            activation_fn: Activation::Relu,
            max_source_positions: 1024,
            max_target_positions: 1024,
            no_scale_embedding: false,
            layernorm_embedding: false,
            no_token_positional_embeddings: false,
            no_decoder_final_norm: false,
            src_vocab_size: 0,
            tgt_vocab_size: 0,
            pad_index: 1,
        }
    }
}

impl TransformerConfig {
    /// Whether the output projection is the decoder's input embedding.
    pub fn shares_decoder_output(&self) -> bool {
        self.share_decoder_input_output_embed || self.share_all_embeddings
    }

    /// Checks what the graphs rely on; `path` names the file in errors.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let fail = |message: String| Err(Error::Config { path: path.to_path_buf(), message });
        for (side, dim, heads, ffn) in [
            (
                "encoder",
                self.encoder_embed_dim,
                self.encoder_attention_heads,
                self.encoder_ffn_embed_dim,
            ),
            (
                "decoder",
                self.decoder_embed_dim,
                self.decoder_attention_heads,
                self.decoder_ffn_embed_dim,
            ),
        ] {
            if dim == 0 || heads == 0 || ffn == 0 || dim % heads != 0 {
                return fail(format!(
                    "{side}_embed_dim ({dim}) must be a positive multiple of \
                     {side}_attention_heads ({heads}), {side}_ffn_embed_dim ({ffn}) positive"
                ));
            }
        }
        if self.decoder_layers == 0 {
            return fail(
                "decoder_layers is 0: the decoder step graph needs at least one layer \
                         (its past's shape gives the step)"
                    .into(),
            );
        }
        for (name, v) in
            [("src_vocab_size", self.src_vocab_size), ("tgt_vocab_size", self.tgt_vocab_size)]
        {
            if v <= self.pad_index {
                return fail(format!(
                    "{name} ({v}) must be larger than pad_index ({})",
                    self.pad_index
                ));
            }
        }
        if !self.no_token_positional_embeddings {
            for (side, learned, dim) in [
                ("encoder", self.encoder_learned_pos, self.encoder_embed_dim),
                ("decoder", self.decoder_learned_pos, self.decoder_embed_dim),
            ] {
                if !learned && dim < 4 {
                    return fail(format!("{side}: sinusoidal positions need a dimension ≥ 4"));
                }
            }
        }
        if self.share_all_embeddings
            && (self.src_vocab_size != self.tgt_vocab_size
                || self.encoder_embed_dim != self.decoder_embed_dim)
        {
            return fail("share_all_embeddings needs equal vocabularies and embedding dims".into());
        }
        if self.max_source_positions == 0 || self.max_target_positions == 0 {
            return fail("max_source_positions and max_target_positions must be positive".into());
        }
        Ok(())
    }
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
    /// The architecture name (one of [`KNOWN_ARCHS`]).
    pub arch: String,
    /// The model's hyper-parameters.
    pub model: TransformerConfig,
    /// Source language (the task's `source_lang`, else from the first dictionary's name).
    pub source_lang: String,
    /// Target language.
    pub target_lang: String,
    /// The dictionaries the model was trained with (source then target).
    pub dictionaries: Vec<DictionaryIdentity>,
}

/// `dict.{lang}.txt` → `lang`.
fn lang_of(dict_name: &str) -> Option<&str> {
    dict_name.strip_prefix("dict.")?.strip_suffix(".txt")
}

impl CheckpointConfig {
    /// Reads and checks `path` (a checkpoint's `config.json`).
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = crate::error::read_checkpoint_file(path)?;
        let raw: RawCheckpointConfig = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Json { path: path.to_path_buf(), message: e.to_string() })?;
        if !KNOWN_ARCHS.contains(&raw.arch.as_str()) {
            return Err(Error::UnknownArch {
                path: path.to_path_buf(),
                arch: raw.arch,
                known: KNOWN_ARCHS.join(", "),
            });
        }
        let mut model: TransformerConfig = serde_json::from_value(raw.model)
            .map_err(|e| Error::Config { path: path.to_path_buf(), message: e.to_string() })?;
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
        for (lang, size) in
            [(&source_lang, &mut model.src_vocab_size), (&target_lang, &mut model.tgt_vocab_size)]
        {
            if *size == 0 {
                let name = format!("dict.{lang}.txt");
                let id = raw.dictionaries.iter().find(|d| d.name == name).ok_or_else(|| {
                    Error::Config {
                        path: path.to_path_buf(),
                        message: format!(
                            "the vocabulary size is 0 and no identity of {name} is recorded"
                        ),
                    }
                })?;
                *size = id.size;
            }
        }
        model.validate(path)?;
        Ok(Self { arch: raw.arch, model, source_lang, target_lang, dictionaries: raw.dictionaries })
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
    fn model_config_defaults_and_unknown_fields() {
        let c: TransformerConfig =
            serde_json::from_str(r#"{"encoder_layers": 2, "activation_fn": "gelu_fast"}"#)
                .unwrap_or_default();
        assert_eq!(c.encoder_layers, 2);
        assert_eq!(c.activation_fn, Activation::GeluAccurate);
        assert_eq!(c.decoder_embed_dim, 512);
        let e = serde_json::from_str::<TransformerConfig>(r#"{"adaptive_softmax": true}"#);
        assert!(e.is_err());
    }
}
