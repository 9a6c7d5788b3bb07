//! Transformer hyper-parameters and fairseq's named architectures.
//!
//! Field names are fairseq's flat argument names (`encoder_embed_dim`, `decoder_layers`, …), so a
//! config reads like the `args` stored in a fairseq checkpoint. The presets are the
//! architectures registered in fairseq 0.12.2's `fairseq/models/transformer/transformer_legacy.py`
//! with every value `base_architecture` fills in.

use serde::{Deserialize, Serialize};

use super::{Error, Result};

/// The activation function of the position-wise feed-forward blocks (fairseq's
/// `utils.get_activation_fn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `max(0, x)` (fairseq's default).
    #[default]
    Relu,
    /// The exact (erf) GELU, computed in fp32 as fairseq does.
    Gelu,
    /// The tanh approximation of GELU (fairseq's `gelu_accurate`, also `gelu_fast`).
    #[serde(alias = "gelu_fast")]
    GeluAccurate,
    /// `tanh(x)`.
    Tanh,
    /// The identity.
    Linear,
}

/// All hyper-parameters of fairseq's encoder-decoder Transformer (`--arch transformer*`), plus
/// the dictionary sizes and padding index a model needs to be built.
///
/// [`Default`] is fairseq's `transformer` (base) architecture with empty vocabularies; set them
/// with [`TransformerConfig::with_vocab`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransformerConfig {
    /// Encoder embedding (model) dimension.
    pub encoder_embed_dim: usize,
    /// Encoder feed-forward inner dimension.
    pub encoder_ffn_embed_dim: usize,
    /// Number of encoder layers.
    pub encoder_layers: usize,
    /// Number of encoder attention heads.
    pub encoder_attention_heads: usize,
    /// Pre-norm encoder (layer norm before each block, plus a final `encoder.layer_norm`).
    pub encoder_normalize_before: bool,
    /// Learned encoder positions (`encoder.embed_positions.weight`) instead of sinusoidal ones.
    pub encoder_learned_pos: bool,
    /// Decoder embedding (model) dimension.
    pub decoder_embed_dim: usize,
    /// Decoder feed-forward inner dimension.
    pub decoder_ffn_embed_dim: usize,
    /// Number of decoder layers.
    pub decoder_layers: usize,
    /// Number of decoder attention heads.
    pub decoder_attention_heads: usize,
    /// Pre-norm decoder (layer norm before each block, plus a final `decoder.layer_norm` unless
    /// [`no_decoder_final_norm`](Self::no_decoder_final_norm)).
    pub decoder_normalize_before: bool,
    /// Learned decoder positions (`decoder.embed_positions.weight`) instead of sinusoidal ones.
    pub decoder_learned_pos: bool,
    /// Tie the decoder's output projection to its input embedding.
    pub share_decoder_input_output_embed: bool,
    /// One embedding matrix for encoder input, decoder input and decoder output (needs a joined
    /// dictionary and equal embedding dimensions; implies `share_decoder_input_output_embed`).
    pub share_all_embeddings: bool,
    /// Dropout after embeddings, attention blocks and feed-forward blocks.
    pub dropout: f64,
    /// Dropout on attention probabilities.
    pub attention_dropout: f64,
    /// Dropout after the feed-forward activation (fairseq's `--activation-dropout`,
    /// alias `--relu-dropout`).
    pub activation_dropout: f64,
    /// Feed-forward activation.
    pub activation_fn: Activation,
    /// Longest source the encoder accepts (in tokens, EOS included).
    pub max_source_positions: usize,
    /// Longest target the decoder accepts (in tokens, the leading EOS included).
    pub max_target_positions: usize,
    /// Do not scale token embeddings by `sqrt(embed_dim)`.
    pub no_scale_embedding: bool,
    /// Layer norm on the embeddings (`{encoder,decoder}.layernorm_embedding`).
    pub layernorm_embedding: bool,
    /// No positional embeddings at all.
    pub no_token_positional_embeddings: bool,
    /// No final decoder layer norm in a pre-norm decoder.
    pub no_decoder_final_norm: bool,
    /// Source dictionary size (`len(src_dict)`, specials and padding words included).
    pub src_vocab_size: usize,
    /// Target dictionary size.
    pub tgt_vocab_size: usize,
    /// Padding index of both dictionaries (fairseq: `<pad>` = 1).
    pub pad_index: usize,
}

impl Default for TransformerConfig {
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

/// The names [`preset`] knows, fairseq's `--arch` names.
pub const PRESETS: &[&str] = &[
    "transformer",
    "transformer_tiny",
    "transformer_iwslt_de_en",
    "transformer_wmt_en_de",
    "transformer_vaswani_wmt_en_de_big",
    "transformer_vaswani_wmt_en_fr_big",
    "transformer_wmt_en_de_big",
    "transformer_wmt_en_de_big_t2t",
];

/// fairseq's named architecture `name` (see [`PRESETS`]) with empty vocabularies, or `None`.
///
/// The values are those of fairseq 0.12.2's `transformer_legacy.py`: `transformer_tiny` is
/// 64-dimensional with 64-wide feed-forward blocks, 2 layers and 2 heads on both sides;
/// `transformer_vaswani_wmt_en_de_big` is 1024/4096/16 heads with dropout 0.3.
pub fn preset(name: &str) -> Option<TransformerConfig> {
    let base = TransformerConfig::default();
    let big = TransformerConfig {
        encoder_embed_dim: 1024,
        encoder_ffn_embed_dim: 4096,
        encoder_attention_heads: 16,
        decoder_embed_dim: 1024,
        decoder_ffn_embed_dim: 4096,
        decoder_attention_heads: 16,
        dropout: 0.3,
        ..base.clone()
    };
    let config = match name {
        "transformer" | "transformer_wmt_en_de" => base,
        "transformer_tiny" => TransformerConfig {
            encoder_embed_dim: 64,
            encoder_ffn_embed_dim: 64,
            encoder_layers: 2,
            encoder_attention_heads: 2,
            decoder_embed_dim: 64,
            decoder_ffn_embed_dim: 64,
            decoder_layers: 2,
            decoder_attention_heads: 2,
            ..base
        },
        "transformer_iwslt_de_en" => TransformerConfig {
            encoder_ffn_embed_dim: 1024,
            encoder_attention_heads: 4,
            decoder_ffn_embed_dim: 1024,
            decoder_attention_heads: 4,
            ..base
        },
        "transformer_vaswani_wmt_en_de_big" => big,
        "transformer_vaswani_wmt_en_fr_big" => TransformerConfig { dropout: 0.1, ..big },
        "transformer_wmt_en_de_big" => TransformerConfig { attention_dropout: 0.1, ..big },
        "transformer_wmt_en_de_big_t2t" => TransformerConfig {
            encoder_normalize_before: true,
            decoder_normalize_before: true,
            attention_dropout: 0.1,
            activation_dropout: 0.1,
            ..big
        },
        _ => return None,
    };
    Some(config)
}

impl TransformerConfig {
    /// fairseq's named architecture `name`, or an error listing the known names.
    pub fn from_preset(name: &str) -> Result<Self> {
        preset(name).ok_or_else(|| Error::UnknownArch(name.to_string()))
    }

    /// The same config with the given dictionary sizes.
    pub fn with_vocab(mut self, src_vocab_size: usize, tgt_vocab_size: usize) -> Self {
        self.src_vocab_size = src_vocab_size;
        self.tgt_vocab_size = tgt_vocab_size;
        self
    }

    /// Whether the decoder's output projection is its input embedding (fairseq turns
    /// `share_decoder_input_output_embed` on when `share_all_embeddings` is set).
    pub fn shares_decoder_output(&self) -> bool {
        self.share_decoder_input_output_embed || self.share_all_embeddings
    }

    /// Checks that a model can be built from this config.
    pub fn validate(&self) -> Result<()> {
        let fail = |message: String| Err(Error::Config(message));
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
            if dim == 0 || ffn == 0 || heads == 0 {
                return fail(format!(
                    "{side}: embed_dim ({dim}), ffn_embed_dim ({ffn}) and attention_heads \
                     ({heads}) must be positive"
                ));
            }
            if dim % heads != 0 {
                return fail(format!(
                    "{side}_embed_dim ({dim}) must be divisible by {side}_attention_heads ({heads})"
                ));
            }
        }
        let sinusoidal = !self.no_token_positional_embeddings
            && (!self.encoder_learned_pos && self.encoder_embed_dim < 4
                || !self.decoder_learned_pos && self.decoder_embed_dim < 4);
        if sinusoidal {
            return fail("sinusoidal positions need an embedding dimension of at least 4".into());
        }
        for (name, vocab) in [("src", self.src_vocab_size), ("tgt", self.tgt_vocab_size)] {
            if vocab <= self.pad_index {
                return fail(format!(
                    "{name}_vocab_size ({vocab}) must be larger than pad_index ({}); set the \
                     dictionary sizes with `with_vocab`",
                    self.pad_index
                ));
            }
        }
        for (name, p) in [
            ("dropout", self.dropout),
            ("attention_dropout", self.attention_dropout),
            ("activation_dropout", self.activation_dropout),
        ] {
            if !(0.0..1.0).contains(&p) {
                return fail(format!("{name} ({p}) must be in [0, 1)"));
            }
        }
        if self.max_source_positions == 0 || self.max_target_positions == 0 {
            return fail("max_source_positions and max_target_positions must be positive".into());
        }
        if self.decoder_layers == 0 {
            return fail("decoder_layers must be at least 1".into());
        }
        if self.share_all_embeddings {
            if self.src_vocab_size != self.tgt_vocab_size {
                return fail(format!(
                    "share_all_embeddings requires a joined dictionary, but src_vocab_size is {} \
                     and tgt_vocab_size is {}",
                    self.src_vocab_size, self.tgt_vocab_size
                ));
            }
            if self.encoder_embed_dim != self.decoder_embed_dim {
                return fail(format!(
                    "share_all_embeddings requires encoder_embed_dim ({}) to match \
                     decoder_embed_dim ({})",
                    self.encoder_embed_dim, self.decoder_embed_dim
                ));
            }
        }
        Ok(())
    }
}

/// Names of the Transformer's decoder state tensors, shared by the trainer's libtorch decoder
/// and the exported step graph.
pub mod state_names {
    /// The source padding mask `[rows, source]` (true = padding), per sentence.
    pub const ENCODER_PADDING_MASK: &str = "encoder_padding_mask";
    /// Layer `l`'s encoder-attention keys `[rows, heads, source, head_dim]`, per sentence.
    pub fn cross_key(l: usize) -> String {
        format!("cross_key.{l}")
    }
    /// Layer `l`'s encoder-attention values, per sentence.
    pub fn cross_value(l: usize) -> String {
        format!("cross_value.{l}")
    }
    /// Layer `l`'s self-attention keys so far `[rows, heads, past, head_dim]`.
    pub fn self_key(l: usize) -> String {
        format!("self_key.{l}")
    }
    /// Layer `l`'s self-attention values so far.
    pub fn self_value(l: usize) -> String {
        format!("self_value.{l}")
    }
    /// The growing axis of the self-attention cache.
    pub const PAST: &str = "past";
}

/// How an exported decoder step keeps the self-attention keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KvCache {
    /// A new, one position longer tensor every step ([`crate::contract::StatePolicy::Append`]).
    #[default]
    Append,
    /// A buffer the step writes into ([`crate::contract::StatePolicy::InPlace`]).
    InPlace,
}

impl KvCache {
    /// `append` or `in-place`.
    pub fn as_str(self) -> &'static str {
        match self {
            KvCache::Append => "append",
            KvCache::InPlace => "in-place",
        }
    }
}

impl std::fmt::Display for KvCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for KvCache {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "append" => Ok(KvCache::Append),
            "in-place" => Ok(KvCache::InPlace),
            _ => Err(format!("unknown cache layout `{s}` (expected append or in-place)")),
        }
    }
}

impl TransformerConfig {
    /// Decoder head dimension.
    pub fn decoder_head_dim(&self) -> usize {
        self.decoder_embed_dim / self.decoder_attention_heads.max(1)
    }

    /// The decoder state as the contract declares it: the padding mask and every layer's
    /// encoder-attention keys/values per sentence, every layer's self-attention keys/values
    /// along `past`, appended to or updated in place as `cache` says.
    pub fn decoder_state(&self, cache: KvCache) -> crate::contract::StateSpec {
        use crate::contract::{StateDtype, StatePolicy, StateSpec, StateTensor, dims};
        let t = |name: String, dtype, shape: [&str; 4], policy: StatePolicy| StateTensor {
            name,
            dtype,
            shape: shape.iter().map(|s| s.to_string()).collect(),
            policy,
        };
        let cross = [dims::ROWS, "heads", dims::SOURCE, "head_dim"];
        let mut tensors = vec![StateTensor {
            name: state_names::ENCODER_PADDING_MASK.into(),
            dtype: StateDtype::Bool,
            shape: vec![dims::ROWS.into(), dims::SOURCE.into()],
            policy: StatePolicy::PerSentence,
        }];
        for l in 0..self.decoder_layers {
            tensors.push(t(
                state_names::cross_key(l),
                StateDtype::Model,
                cross,
                StatePolicy::PerSentence,
            ));
            tensors.push(t(
                state_names::cross_value(l),
                StateDtype::Model,
                cross,
                StatePolicy::PerSentence,
            ));
        }
        tensors.extend(self_attention_cache(self.decoder_layers, cache));
        StateSpec {
            dims: [
                ("heads".to_string(), self.decoder_attention_heads),
                ("head_dim".to_string(), self.decoder_head_dim()),
            ]
            .into(),
            tensors,
        }
    }
}

/// Every layer's self-attention keys and values (`self_key.{l}`, `self_value.{l}`,
/// `[rows, heads, past, head_dim]`, model dtype), growing along `past` as `cache` says: the part
/// of the decoder state every Transformer decoder shares (encoder-decoder and decoder-only).
pub fn self_attention_cache(layers: usize, cache: KvCache) -> Vec<crate::contract::StateTensor> {
    use crate::contract::{StateDtype, StatePolicy, StateTensor, dims};
    let shape = [dims::ROWS, "heads", state_names::PAST, "head_dim"];
    let t = |name: String| StateTensor {
        name,
        dtype: StateDtype::Model,
        shape: shape.iter().map(|s| s.to_string()).collect(),
        policy: match cache {
            KvCache::Append => StatePolicy::Append { axis: state_names::PAST.into() },
            KvCache::InPlace => StatePolicy::InPlace { axis: state_names::PAST.into() },
        },
    };
    (0..layers).flat_map(|l| [t(state_names::self_key(l)), t(state_names::self_value(l))]).collect()
}
