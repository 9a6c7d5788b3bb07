//! fairseq's decoder-only Transformer language model (`fairseq/models/transformer_lm.py`,
//! `--arch transformer_lm*`): hyper-parameters, named architectures and the decoder state.
//!
//! Field names are fairseq's (`TransformerLanguageModelConfig`), so a config reads like the
//! `args` of a fairseq LM checkpoint. Options that change the maths and are not implemented
//! (character embeddings, layer drop, quantisation noise, NormFormer scales, BASE layers) are
//! either refused by [`TransformerLmConfig::validate`] or are not fields at all (and so are
//! refused by serde as unknown).
//!
//! Adaptive input (Baevski & Auli, 2019) and the adaptive softmax (Grave et al., 2017) are
//! described by cutoff lists: band `i` holds the ids `cutoff[i-1]..cutoff[i]` (band 0 starts at
//! 0), and a last band up to the vocabulary size is added when the list stops below it, as
//! fairseq's `AdaptiveInput` and `AdaptiveSoftmax` do ([`TransformerLmConfig::input_bands`],
//! [`TransformerLmConfig::softmax_bands`]).

use serde::{Deserialize, Deserializer, Serialize};

use super::transformer::{Activation, KvCache, self_attention_cache};
use super::{Error, Result};

/// fairseq's `DEFAULT_MAX_TARGET_POSITIONS` for language models (also the default
/// `--tokens-per-sample`).
pub const DEFAULT_MAX_TARGET_POSITIONS: usize = 1024;

/// All hyper-parameters of fairseq's `transformer_lm` model that affect its maths, plus the
/// dictionary size and padding index.
///
/// [`Default`] is fairseq's `--arch transformer_lm`: the dataclass defaults *as they are*
/// (fairseq registers that architecture with a no-op function, so `base_lm_architecture` does
/// not run): post-norm layers and 512-wide input and output dimensions whatever
/// `decoder_embed_dim` is. Every other preset runs `base_lm_architecture` (pre-norm, input and
/// output dimensions following `decoder_embed_dim`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransformerLmConfig {
    /// Feed-forward activation.
    pub activation_fn: Activation,
    /// Dropout after embeddings, attention blocks and feed-forward blocks.
    pub dropout: f64,
    /// Dropout on attention probabilities.
    pub attention_dropout: f64,
    /// Dropout after the feed-forward activation.
    pub activation_dropout: f64,
    /// Old name of `activation_dropout`, used when that is 0 (fairseq's
    /// `TransformerDecoderLayerBase`).
    pub relu_dropout: f64,
    /// Model (hidden) dimension of the decoder layers.
    pub decoder_embed_dim: usize,
    /// Width of the features the output layer reads (default: `decoder_embed_dim`); a
    /// `decoder.project_out_dim` maps to it when it differs (not with `tie_adaptive_weights`).
    pub decoder_output_dim: Option<usize>,
    /// Width of the token embeddings (default: `decoder_embed_dim`); a
    /// `decoder.project_in_dim` maps from it when it differs.
    pub decoder_input_dim: Option<usize>,
    /// Feed-forward inner dimension.
    pub decoder_ffn_embed_dim: usize,
    /// Number of decoder layers.
    pub decoder_layers: usize,
    /// Number of attention heads.
    pub decoder_attention_heads: usize,
    /// Pre-norm layers (and a final `decoder.layer_norm` unless `no_decoder_final_norm`).
    pub decoder_normalize_before: bool,
    /// No final layer norm in a pre-norm decoder.
    pub no_decoder_final_norm: bool,
    /// Adaptive softmax cutoffs (fairseq's comma list, e.g. `20000,60000`; a JSON list or that
    /// string); `None`: a plain output projection.
    #[serde(deserialize_with = "cutoff_list")]
    pub adaptive_softmax_cutoff: Option<Vec<usize>>,
    /// Dropout inside the adaptive softmax's tail projections.
    pub adaptive_softmax_dropout: f64,
    /// Each adaptive softmax tail band is this many times narrower than the previous one.
    pub adaptive_softmax_factor: f64,
    /// No positional embeddings.
    pub no_token_positional_embeddings: bool,
    /// Tie the output projection to the token embedding (ignored with an adaptive softmax, as
    /// in fairseq).
    pub share_decoder_input_output_embed: bool,
    /// Character-CNN token embeddings: not supported (refused by `validate`).
    pub character_embeddings: bool,
    /// Adaptive input embeddings (needs `adaptive_input_cutoff`).
    pub adaptive_input: bool,
    /// Each adaptive input band is this many times narrower than the previous one.
    pub adaptive_input_factor: f64,
    /// Adaptive input cutoffs (as `adaptive_softmax_cutoff`).
    #[serde(deserialize_with = "cutoff_list")]
    pub adaptive_input_cutoff: Option<Vec<usize>>,
    /// The adaptive softmax's head word projection and tail output projections are the adaptive
    /// input's embedding matrices.
    pub tie_adaptive_weights: bool,
    /// With `tie_adaptive_weights`, the tails' input projections are also the adaptive input's
    /// projections (transposed).
    pub tie_adaptive_proj: bool,
    /// Learned positions (`decoder.embed_positions.weight`) instead of sinusoidal ones.
    pub decoder_learned_pos: bool,
    /// Layer norm on the embeddings (`decoder.layernorm_embedding`).
    pub layernorm_embedding: bool,
    /// Do not scale token embeddings by `sqrt(decoder_embed_dim)`.
    pub no_scale_embedding: bool,
    /// The task's block size; the default for `max_target_positions`.
    pub tokens_per_sample: usize,
    /// Longest input in tokens (default: `tokens_per_sample`).
    pub max_target_positions: Option<usize>,
    /// Dictionary size (`len(dictionary)`, specials and padding words included).
    pub vocab_size: usize,
    /// Padding index (fairseq: `<pad>` = 1).
    pub pad_index: usize,
}

/// Reads a cutoff list as fairseq stores it (`"1000,5000"`) or as a JSON list.
fn cutoff_list<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Vec<usize>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Cutoff {
        List(Vec<usize>),
        Text(String),
    }
    match Option::<Cutoff>::deserialize(d)? {
        None => Ok(None),
        Some(Cutoff::List(v)) => Ok(Some(v)),
        Some(Cutoff::Text(s)) => parse_cutoff(&s).map(Some).map_err(serde::de::Error::custom),
    }
}

/// Parses fairseq's comma-separated cutoff list (`"20000,60000"`; brackets allowed, as
/// fairseq's `eval_str_list` reads `"[20000, 60000]"` too).
pub fn parse_cutoff(text: &str) -> std::result::Result<Vec<usize>, String> {
    let inner = text.trim().trim_start_matches('[').trim_end_matches(']');
    inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|e| format!("cutoff list {text:?}: {s:?}: {e}")))
        .collect()
}

impl Default for TransformerLmConfig {
    /// fairseq's `--arch transformer_lm` (the dataclass defaults).
    fn default() -> Self {
        Self {
            activation_fn: Activation::Relu,
            dropout: 0.1,
            attention_dropout: 0.0,
            activation_dropout: 0.0,
            relu_dropout: 0.0,
            decoder_embed_dim: 512,
            decoder_output_dim: Some(512),
            decoder_input_dim: Some(512),
            decoder_ffn_embed_dim: 2048,
            decoder_layers: 6,
            decoder_attention_heads: 8,
            decoder_normalize_before: false,
            no_decoder_final_norm: false,
            adaptive_softmax_cutoff: None,
            adaptive_softmax_dropout: 0.0,
            adaptive_softmax_factor: 4.0,
            no_token_positional_embeddings: false,
            share_decoder_input_output_embed: false,
            character_embeddings: false,
            adaptive_input: false,
            adaptive_input_factor: 4.0,
            adaptive_input_cutoff: None,
            tie_adaptive_weights: false,
            tie_adaptive_proj: false,
            decoder_learned_pos: false,
            layernorm_embedding: false,
            no_scale_embedding: false,
            tokens_per_sample: DEFAULT_MAX_TARGET_POSITIONS,
            max_target_positions: None,
            vocab_size: 0,
            pad_index: 1,
        }
    }
}

/// The names [`preset`] knows: fairseq 0.12.2's `transformer_lm` architectures, plus
/// `transformer_lm_tiny` (seqforge's: `base_lm_architecture` at 64 dimensions, 2 layers,
/// 2 heads, for tests and demos).
pub const PRESETS: &[&str] = &[
    "transformer_lm",
    "transformer_lm_tiny",
    "transformer_lm_big",
    "transformer_lm_wiki103",
    "transformer_lm_baevski_wiki103",
    "transformer_lm_gbw",
    "transformer_lm_baevski_gbw",
    "transformer_lm_gpt",
    "transformer_lm_gpt2_small",
    "transformer_lm_gpt2_tiny",
    "transformer_lm_gpt2_medium",
    "transformer_lm_gpt2_big",
];

/// fairseq's `base_lm_architecture` over the dataclass defaults: pre-norm, input and output
/// dimensions following `decoder_embed_dim`.
fn base_lm() -> TransformerLmConfig {
    TransformerLmConfig {
        decoder_normalize_before: true,
        decoder_input_dim: None,
        decoder_output_dim: None,
        ..TransformerLmConfig::default()
    }
}

/// fairseq's `transformer_lm_big`.
fn big() -> TransformerLmConfig {
    TransformerLmConfig {
        decoder_layers: 12,
        decoder_embed_dim: 1024,
        decoder_ffn_embed_dim: 4096,
        decoder_attention_heads: 16,
        ..base_lm()
    }
}

/// fairseq's GPT-2 style architectures (gelu, attention dropout 0.1).
fn gpt(embed: usize, ffn: usize, layers: usize, heads: usize) -> TransformerLmConfig {
    TransformerLmConfig {
        decoder_embed_dim: embed,
        decoder_ffn_embed_dim: ffn,
        decoder_layers: layers,
        decoder_attention_heads: heads,
        attention_dropout: 0.1,
        activation_fn: Activation::Gelu,
        ..base_lm()
    }
}

/// fairseq's named LM architecture `name` (see [`PRESETS`]) with an empty vocabulary, or
/// `None`. The values are those of fairseq 0.12.2's `transformer_lm.py` with every value
/// `base_lm_architecture` fills in.
pub fn preset(name: &str) -> Option<TransformerLmConfig> {
    let wiki103_cutoff = Some(vec![20000, 60000]);
    Some(match name {
        "transformer_lm" => TransformerLmConfig::default(),
        "transformer_lm_tiny" => TransformerLmConfig {
            decoder_embed_dim: 64,
            decoder_ffn_embed_dim: 64,
            decoder_layers: 2,
            decoder_attention_heads: 2,
            ..base_lm()
        },
        "transformer_lm_big" => big(),
        "transformer_lm_wiki103" | "transformer_lm_baevski_wiki103" => TransformerLmConfig {
            decoder_layers: 16,
            decoder_attention_heads: 8,
            dropout: 0.3,
            adaptive_input: true,
            tie_adaptive_weights: true,
            adaptive_input_cutoff: wiki103_cutoff.clone(),
            adaptive_softmax_cutoff: wiki103_cutoff,
            adaptive_softmax_dropout: 0.2,
            attention_dropout: 0.1,
            activation_dropout: 0.1,
            no_decoder_final_norm: true,
            tie_adaptive_proj: true,
            ..big()
        },
        "transformer_lm_gbw" | "transformer_lm_baevski_gbw" => TransformerLmConfig {
            decoder_embed_dim: 512,
            dropout: 0.1,
            attention_dropout: 0.1,
            no_decoder_final_norm: true,
            ..big()
        },
        "transformer_lm_gpt" => gpt(768, 3072, 12, 12),
        "transformer_lm_gpt2_small" => gpt(1024, 4096, 24, 16),
        "transformer_lm_gpt2_tiny" => gpt(64, 64, 2, 1),
        "transformer_lm_gpt2_medium" => gpt(1280, 5120, 36, 20),
        "transformer_lm_gpt2_big" => gpt(1600, 6400, 48, 25),
        _ => return None,
    })
}

/// One band of an adaptive input or softmax: the ids `start..end` at width `dim`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Band {
    /// First id of the band.
    pub start: usize,
    /// One past the last id.
    pub end: usize,
    /// The band's embedding (or tail projection) width: `int(dim // factor**i)`.
    pub dim: usize,
}

impl Band {
    /// Number of ids in the band.
    pub fn size(&self) -> usize {
        self.end - self.start
    }
}

/// fairseq's `int(dim // factor**i)` for band `i` (Python's float floor division).
fn band_dim(dim: usize, factor: f64, i: usize) -> usize {
    let d = (dim as f64 / factor.powi(i as i32)).floor();
    if d.is_finite() && d > 0.0 { d as usize } else { 0 }
}

/// The bands of `cutoff` over `vocab` ids (a last band up to `vocab` added when the list stops
/// below it), band `i` of width `band_dim(dim, factor, i)`.
fn bands(cutoff: &[usize], vocab: usize, dim: usize, factor: f64) -> Vec<Band> {
    let mut ends = cutoff.to_vec();
    if ends.last().is_some_and(|&last| vocab > last) {
        ends.push(vocab);
    }
    let mut start = 0;
    ends.iter()
        .enumerate()
        .map(|(i, &end)| {
            let band = Band { start, end, dim: band_dim(dim, factor, i) };
            start = end;
            band
        })
        .collect()
}

impl TransformerLmConfig {
    /// fairseq's named architecture `name`, or an error listing the known names.
    pub fn from_preset(name: &str) -> Result<Self> {
        preset(name).ok_or_else(|| Error::UnknownArch(name.to_string()))
    }

    /// The same config with the given dictionary size.
    pub fn with_vocab(mut self, vocab_size: usize) -> Self {
        self.vocab_size = vocab_size;
        self
    }

    /// Width of the token embeddings.
    pub fn input_dim(&self) -> usize {
        self.decoder_input_dim.unwrap_or(self.decoder_embed_dim)
    }

    /// Width of the decoder's output features.
    pub fn output_dim(&self) -> usize {
        self.decoder_output_dim.unwrap_or(self.decoder_embed_dim)
    }

    /// Longest input in tokens: `max_target_positions`, else `tokens_per_sample`.
    pub fn max_positions(&self) -> usize {
        self.max_target_positions.unwrap_or(self.tokens_per_sample)
    }

    /// The dropout after the feed-forward activation: `activation_dropout`, or `relu_dropout`
    /// when that is 0 (fairseq's backward compatibility).
    pub fn activation_dropout_p(&self) -> f64 {
        if self.activation_dropout == 0.0 { self.relu_dropout } else { self.activation_dropout }
    }

    /// Whether the model ends in an adaptive softmax.
    pub fn has_adaptive_softmax(&self) -> bool {
        self.adaptive_softmax_cutoff.is_some()
    }

    /// Whether a `decoder.project_in_dim` maps the embeddings to `decoder_embed_dim`.
    pub fn has_project_in(&self) -> bool {
        self.input_dim() != self.decoder_embed_dim
    }

    /// Whether a `decoder.project_out_dim` maps the features to `decoder_output_dim`.
    pub fn has_project_out(&self) -> bool {
        self.output_dim() != self.decoder_embed_dim && !self.tie_adaptive_weights
    }

    /// Whether a plain output projection is the token embedding.
    pub fn shares_output_projection(&self) -> bool {
        self.share_decoder_input_output_embed && !self.has_adaptive_softmax()
    }

    /// The adaptive input's bands (`embeddings.{i}`: band `i` at width
    /// `int(decoder_input_dim // adaptive_input_factor**i)`), when `adaptive_input` is set.
    pub fn input_bands(&self) -> Option<Vec<Band>> {
        let cutoff = self.adaptive_input_cutoff.as_ref().filter(|_| self.adaptive_input)?;
        Some(bands(cutoff, self.vocab_size, self.input_dim(), self.adaptive_input_factor))
    }

    /// The adaptive softmax's bands: band 0 is the head's words (its width is
    /// `decoder_output_dim`), band `i ≥ 1` is tail `i - 1` at width
    /// `int(decoder_output_dim // adaptive_softmax_factor**i)` (untied tails; tied ones take
    /// the adaptive input's band widths).
    pub fn softmax_bands(&self) -> Option<Vec<Band>> {
        let cutoff = self.adaptive_softmax_cutoff.as_ref()?;
        Some(bands(cutoff, self.vocab_size, self.output_dim(), self.adaptive_softmax_factor))
    }

    /// Checks that a model can be built from this config (fairseq's asserts, and what would
    /// make fairseq fail later with a shape error).
    pub fn validate(&self) -> Result<()> {
        let fail = |message: String| Err(Error::Config(message));
        let (dim, heads) = (self.decoder_embed_dim, self.decoder_attention_heads);
        for (name, v) in [
            ("decoder_embed_dim", dim),
            ("decoder_input_dim", self.input_dim()),
            ("decoder_output_dim", self.output_dim()),
            ("decoder_ffn_embed_dim", self.decoder_ffn_embed_dim),
            ("decoder_layers", self.decoder_layers),
            ("decoder_attention_heads", heads),
            ("max_target_positions", self.max_positions()),
        ] {
            if v == 0 {
                return fail(format!("{name} must be positive"));
            }
        }
        if dim % heads != 0 {
            return fail(format!(
                "decoder_embed_dim ({dim}) must be divisible by decoder_attention_heads ({heads})"
            ));
        }
        if !self.no_token_positional_embeddings && !self.decoder_learned_pos && dim < 4 {
            return fail("sinusoidal positions need decoder_embed_dim of at least 4".into());
        }
        if self.vocab_size <= self.pad_index {
            return fail(format!(
                "vocab_size ({}) must be larger than pad_index ({}); set the dictionary size \
                 with `with_vocab`",
                self.vocab_size, self.pad_index
            ));
        }
        for (name, p) in [
            ("dropout", self.dropout),
            ("attention_dropout", self.attention_dropout),
            ("activation_dropout", self.activation_dropout),
            ("relu_dropout", self.relu_dropout),
            ("adaptive_softmax_dropout", self.adaptive_softmax_dropout),
        ] {
            if !(0.0..1.0).contains(&p) {
                return fail(format!("{name} ({p}) must be in [0, 1)"));
            }
        }
        if self.character_embeddings {
            return fail(
                "character_embeddings (fairseq's CharacterTokenEmbedder) is not supported".into(),
            );
        }
        self.validate_adaptive()?;
        if self.shares_output_projection() {
            if self.adaptive_input {
                return fail(
                    "share_decoder_input_output_embed needs a plain token embedding; with \
                     adaptive_input use an adaptive softmax with tie_adaptive_weights"
                        .into(),
                );
            }
            if self.input_dim() != self.output_dim() {
                return fail(format!(
                    "share_decoder_input_output_embed requires decoder_input_dim ({}) == \
                     decoder_output_dim ({})",
                    self.input_dim(),
                    self.output_dim()
                ));
            }
        }
        Ok(())
    }

    fn validate_adaptive(&self) -> Result<()> {
        let fail = |message: String| Err(Error::Config(message));
        let vocab = self.vocab_size;
        let check_cutoff = |name: &str, cutoff: &[usize]| -> Result<()> {
            if cutoff.is_empty() {
                return fail(format!("{name} is empty"));
            }
            if cutoff[0] == 0 || cutoff.windows(2).any(|w| w[0] >= w[1]) {
                return fail(format!("{name} {cutoff:?} must be positive and strictly increasing"));
            }
            if cutoff.last().is_some_and(|&last| last > vocab) {
                return fail(format!(
                    "{name} {cutoff:?}: cannot specify a cutoff larger than the vocabulary \
                     ({vocab})"
                ));
            }
            Ok(())
        };
        let check_factor = |name: &str, f: f64| -> Result<()> {
            if f.is_finite() && f > 0.0 {
                Ok(())
            } else {
                fail(format!("{name} ({f}) must be positive"))
            }
        };
        if self.adaptive_input {
            let Some(cutoff) = &self.adaptive_input_cutoff else {
                return fail("adaptive_input needs adaptive_input_cutoff".into());
            };
            check_cutoff("adaptive_input_cutoff", cutoff)?;
            check_factor("adaptive_input_factor", self.adaptive_input_factor)?;
            for (i, band) in self.input_bands().unwrap_or_default().iter().enumerate() {
                if band.dim == 0 {
                    return fail(format!(
                        "adaptive input band {i} would have width 0 (decoder_input_dim {} / \
                         adaptive_input_factor {}^{i})",
                        self.input_dim(),
                        self.adaptive_input_factor
                    ));
                }
            }
        }
        if let Some(cutoff) = &self.adaptive_softmax_cutoff {
            check_cutoff("adaptive_softmax_cutoff", cutoff)?;
            check_factor("adaptive_softmax_factor", self.adaptive_softmax_factor)?;
            if !self.tie_adaptive_weights {
                for (i, band) in self.softmax_bands().unwrap_or_default().iter().enumerate() {
                    if band.dim == 0 {
                        return fail(format!(
                            "adaptive softmax tail {} would have width 0 (decoder_output_dim {} \
                             / adaptive_softmax_factor {}^{i})",
                            i.saturating_sub(1),
                            self.output_dim(),
                            self.adaptive_softmax_factor
                        ));
                    }
                }
            }
        }
        if self.tie_adaptive_weights {
            if !self.adaptive_input || !self.has_adaptive_softmax() {
                return fail(
                    "tie_adaptive_weights needs adaptive_input and adaptive_softmax_cutoff".into(),
                );
            }
            if self.adaptive_input_factor != self.adaptive_softmax_factor {
                return fail(format!(
                    "tie_adaptive_weights requires adaptive_input_factor ({}) == \
                     adaptive_softmax_factor ({})",
                    self.adaptive_input_factor, self.adaptive_softmax_factor
                ));
            }
            if self.adaptive_input_cutoff != self.adaptive_softmax_cutoff {
                return fail(format!(
                    "tie_adaptive_weights requires adaptive_input_cutoff ({:?}) == \
                     adaptive_softmax_cutoff ({:?})",
                    self.adaptive_input_cutoff, self.adaptive_softmax_cutoff
                ));
            }
            if self.input_dim() != self.output_dim() {
                return fail(format!(
                    "tie_adaptive_weights requires decoder_input_dim ({}) == decoder_output_dim \
                     ({})",
                    self.input_dim(),
                    self.output_dim()
                ));
            }
            if self.output_dim() != self.decoder_embed_dim {
                // fairseq drops project_out_dim when the weights are tied, so the adaptive
                // softmax would read features of the wrong width.
                return fail(format!(
                    "tie_adaptive_weights requires decoder_output_dim ({}) == decoder_embed_dim \
                     ({})",
                    self.output_dim(),
                    self.decoder_embed_dim
                ));
            }
        }
        Ok(())
    }

    /// Head dimension.
    pub fn head_dim(&self) -> usize {
        self.decoder_embed_dim / self.decoder_attention_heads.max(1)
    }

    /// The decoder state as the contract declares it: every layer's self-attention keys and
    /// values along `past` (appended to or updated in place as `cache` says), named as the
    /// Transformer's (`self_key.{l}`, `self_value.{l}`). A decoder-only model has no
    /// per-sentence tensors: the prompt fills the caches.
    pub fn decoder_state(&self, cache: KvCache) -> crate::contract::StateSpec {
        crate::contract::StateSpec {
            dims: [
                ("heads".to_string(), self.decoder_attention_heads),
                ("head_dim".to_string(), self.head_dim()),
            ]
            .into(),
            tensors: self_attention_cache(self.decoder_layers, cache),
        }
    }
}

/// Names of the language model's decoder state tensors: the Transformer's self-attention
/// caches, and the trainer's prefill hand-over.
pub mod state_names {
    pub use crate::arch::transformer::state_names::{PAST, self_key, self_value};

    /// The log-probabilities `[rows, vocab]` (fp32) of the token after the prompt, left in the
    /// state by the trainer's `StepModel::start` for its first `step` to return.
    pub const PREFILL_LOG_PROBS: &str = "prefill.log_probs";

    /// Each row's summed log-probability `[rows]` (fp32) of its prompt tokens (each given the
    /// leading EOS and the tokens before it), left by `StepModel::start` for the decoder to take
    /// before the search starts (fairseq counts the prompt in a hypothesis's score).
    pub const PROMPT_SCORES: &str = "prefill.prompt_scores";
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::StatePolicy;

    #[test]
    fn presets_follow_fairseq() -> Result<()> {
        let base = TransformerLmConfig::from_preset("transformer_lm")?;
        assert!(!base.decoder_normalize_before, "the no-op arch keeps the dataclass default");
        assert_eq!((base.input_dim(), base.output_dim()), (512, 512));
        let big = TransformerLmConfig::from_preset("transformer_lm_big")?;
        assert!(big.decoder_normalize_before);
        assert_eq!(
            (big.decoder_layers, big.input_dim(), big.decoder_attention_heads),
            (12, 1024, 16)
        );
        let w = TransformerLmConfig::from_preset("transformer_lm_baevski_wiki103")?;
        assert_eq!(w, TransformerLmConfig::from_preset("transformer_lm_wiki103")?);
        assert_eq!((w.decoder_layers, w.decoder_embed_dim, w.dropout), (16, 1024, 0.3));
        assert!(w.adaptive_input && w.tie_adaptive_weights && w.tie_adaptive_proj);
        assert!(w.no_decoder_final_norm);
        assert_eq!(w.adaptive_softmax_cutoff, Some(vec![20000, 60000]));
        assert_eq!((w.adaptive_softmax_dropout, w.activation_dropout), (0.2, 0.1));
        let g = TransformerLmConfig::from_preset("transformer_lm_gbw")?;
        assert_eq!((g.decoder_embed_dim, g.decoder_layers, g.attention_dropout), (512, 12, 0.1));
        let gpt = TransformerLmConfig::from_preset("transformer_lm_gpt")?;
        assert_eq!((gpt.decoder_embed_dim, gpt.decoder_ffn_embed_dim), (768, 3072));
        assert_eq!(gpt.activation_fn, Activation::Gelu);
        let small = TransformerLmConfig::from_preset("transformer_lm_gpt2_small")?;
        assert_eq!((small.decoder_layers, small.decoder_attention_heads), (24, 16));
        for name in PRESETS {
            TransformerLmConfig::from_preset(name)?.with_vocab(100_000).validate()?;
        }
        assert!(preset("transformer_lm_nope").is_none());
        Ok(())
    }

    #[test]
    fn cutoffs_parse_as_fairseq_writes_them() {
        let c: TransformerLmConfig =
            serde_json::from_str(r#"{"adaptive_softmax_cutoff": "1000, 5000"}"#)
                .unwrap_or_default();
        assert_eq!(c.adaptive_softmax_cutoff, Some(vec![1000, 5000]));
        let c: TransformerLmConfig =
            serde_json::from_str(r#"{"adaptive_input_cutoff": [7, 9]}"#).unwrap_or_default();
        assert_eq!(c.adaptive_input_cutoff, Some(vec![7, 9]));
        assert!(
            serde_json::from_str::<TransformerLmConfig>(r#"{"adaptive_input_cutoff": "7,x"}"#)
                .is_err()
        );
        assert!(
            serde_json::from_str::<TransformerLmConfig>(r#"{"decoder_layerdrop": 0.1}"#).is_err()
        );
        assert_eq!(parse_cutoff("[20000, 60000]"), Ok(vec![20000, 60000]));
    }

    fn adaptive() -> TransformerLmConfig {
        TransformerLmConfig {
            decoder_embed_dim: 16,
            decoder_attention_heads: 2,
            adaptive_input: true,
            adaptive_input_cutoff: Some(vec![8, 20]),
            adaptive_softmax_cutoff: Some(vec![8, 20]),
            tie_adaptive_weights: true,
            tie_adaptive_proj: true,
            ..base_lm()
        }
        .with_vocab(30)
    }

    #[test]
    fn bands_follow_fairseq() -> Result<()> {
        let c = adaptive();
        c.validate()?;
        let b = c.input_bands().unwrap_or_default();
        assert_eq!(
            b,
            [
                Band { start: 0, end: 8, dim: 16 },
                Band { start: 8, end: 20, dim: 4 },
                Band { start: 20, end: 30, dim: 1 }
            ]
        );
        // A cutoff list ending at the vocabulary adds no band.
        let c = TransformerLmConfig { adaptive_softmax_cutoff: Some(vec![8, 30]), ..adaptive() };
        assert_eq!(c.softmax_bands().map(|b| b.len()), Some(2));
        Ok(())
    }

    #[test]
    fn validation_names_the_problem() {
        let err =
            |c: TransformerLmConfig| c.validate().err().map(|e| e.to_string()).unwrap_or_default();
        let e =
            err(TransformerLmConfig { adaptive_softmax_cutoff: Some(vec![20, 8]), ..adaptive() });
        assert!(e.contains("strictly increasing"), "{e}");
        let e = err(TransformerLmConfig {
            adaptive_input_cutoff: Some(vec![8, 40]),
            adaptive_softmax_cutoff: Some(vec![8, 40]),
            ..adaptive()
        });
        assert!(e.contains("larger than the vocabulary"), "{e}");
        let e = err(TransformerLmConfig { adaptive_softmax_factor: 2.0, ..adaptive() });
        assert!(e.contains("adaptive_input_factor"), "{e}");
        let e = err(TransformerLmConfig { adaptive_softmax_cutoff: Some(vec![8]), ..adaptive() });
        assert!(e.contains("adaptive_input_cutoff"), "{e}");
        let e = err(TransformerLmConfig {
            adaptive_input_factor: 32.0,
            adaptive_softmax_factor: 32.0,
            ..adaptive()
        });
        assert!(e.contains("width 0"), "{e}");
        let e = err(TransformerLmConfig { decoder_attention_heads: 3, ..adaptive() });
        assert!(e.contains("divisible"), "{e}");
        let e = err(TransformerLmConfig { character_embeddings: true, ..adaptive() });
        assert!(e.contains("character_embeddings"), "{e}");
        let e = err(TransformerLmConfig { adaptive_input_cutoff: None, ..adaptive() });
        assert!(e.contains("needs adaptive_input_cutoff"), "{e}");
        let e = err(TransformerLmConfig {
            share_decoder_input_output_embed: true,
            adaptive_softmax_cutoff: None,
            tie_adaptive_weights: false,
            ..adaptive()
        });
        assert!(e.contains("plain token embedding"), "{e}");
        let e = err(TransformerLmConfig { decoder_output_dim: Some(8), ..adaptive() });
        assert!(e.contains("decoder_output_dim"), "{e}");
        let e = err(TransformerLmConfig::default());
        assert!(e.contains("vocab_size"), "{e}");
        assert_eq!(
            TransformerLmConfig { relu_dropout: 0.2, ..base_lm() }.activation_dropout_p(),
            0.2
        );
    }

    #[test]
    fn decoder_state_is_the_self_attention_caches_only() {
        let c = TransformerLmConfig::from_preset("transformer_lm_tiny").unwrap_or_default();
        for cache in [KvCache::Append, KvCache::InPlace] {
            let spec = c.decoder_state(cache);
            let names: Vec<&str> = spec.tensors.iter().map(|t| t.name.as_str()).collect();
            assert_eq!(names, ["self_key.0", "self_value.0", "self_key.1", "self_value.1"]);
            assert!(spec.tensors.iter().all(|t| match (&t.policy, cache) {
                (StatePolicy::Append { axis }, KvCache::Append)
                | (StatePolicy::InPlace { axis }, KvCache::InPlace) => axis == "past",
                _ => false,
            }));
            assert_eq!(spec.dims.get("heads"), Some(&2));
            assert_eq!(spec.dims.get("head_dim"), Some(&32));
        }
    }
}
