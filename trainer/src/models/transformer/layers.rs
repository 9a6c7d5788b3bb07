//! fairseq's `TransformerEncoderLayerBase` and `TransformerDecoderLayerBase` (with or without
//! encoder attention, `no_encoder_attn`): attention and feed-forward blocks, each `dropout → residual → layer norm` (post-norm, the paper's order)
//! or `layer norm → … → dropout → residual` (pre-norm, `normalize_before`).

use tch::Tensor;

use super::attention::MultiheadAttention;
use super::config::Activation;
use super::model::KeyValue;
use super::nn::{LayerNorm, Linear, LinearInit, Scope, activate, dropout};
use crate::models::Result;

/// Dimensions and regularisation of one side (encoder or decoder) of the model.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LayerSpec {
    pub(crate) embed_dim: i64,
    pub(crate) ffn_embed_dim: i64,
    pub(crate) heads: i64,
    pub(crate) normalize_before: bool,
    pub(crate) dropout: f64,
    pub(crate) attention_dropout: f64,
    pub(crate) activation_dropout: f64,
    pub(crate) activation: Activation,
}

/// The position-wise feed-forward block `fc2(act(fc1(x)))` with its residual and layer norm.
struct FeedForward {
    fc1: Linear,
    fc2: Linear,
    final_layer_norm: LayerNorm,
    spec: LayerSpec,
}

impl FeedForward {
    fn new(scope: &Scope<'_, '_>, spec: LayerSpec) -> Result<Self> {
        let fc1 = Linear::new(
            &scope.sub("fc1"),
            spec.embed_dim,
            spec.ffn_embed_dim,
            LinearInit::TorchDefault,
        )?;
        let fc2 = Linear::new(
            &scope.sub("fc2"),
            spec.ffn_embed_dim,
            spec.embed_dim,
            LinearInit::TorchDefault,
        )?;
        let final_layer_norm = LayerNorm::new(&scope.sub("final_layer_norm"), spec.embed_dim)?;
        Ok(Self { fc1, fc2, final_layer_norm, spec })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let spec = &self.spec;
        let residual = x;
        let h = if spec.normalize_before {
            self.final_layer_norm.forward(x)?
        } else {
            x.shallow_clone()
        };
        let h = activate(spec.activation, &self.fc1.forward(&h)?)?;
        let h = dropout(h, spec.activation_dropout, train)?;
        let h = dropout(self.fc2.forward(&h)?, spec.dropout, train)?;
        let out = residual.f_add(&h)?;
        if spec.normalize_before { Ok(out) } else { self.final_layer_norm.forward(&out) }
    }
}

/// Runs `block` as a residual sub-layer with `norm` before (pre-norm) or after (post-norm).
fn residual_block(
    x: &Tensor,
    norm: &LayerNorm,
    spec: &LayerSpec,
    train: bool,
    block: impl FnOnce(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let h = if spec.normalize_before { norm.forward(x)? } else { x.shallow_clone() };
    let h = dropout(block(&h)?, spec.dropout, train)?;
    let out = x.f_add(&h)?;
    if spec.normalize_before { Ok(out) } else { norm.forward(&out) }
}

/// One encoder layer: self-attention and feed-forward.
pub(crate) struct EncoderLayer {
    self_attn: MultiheadAttention,
    self_attn_layer_norm: LayerNorm,
    ffn: FeedForward,
    spec: LayerSpec,
}

impl EncoderLayer {
    /// `scope.{self_attn,self_attn_layer_norm,fc1,fc2,final_layer_norm}`.
    pub(crate) fn new(scope: &Scope<'_, '_>, spec: LayerSpec) -> Result<Self> {
        let self_attn = MultiheadAttention::new(
            &scope.sub("self_attn"),
            spec.embed_dim,
            spec.embed_dim,
            spec.heads,
            spec.attention_dropout,
        )?;
        let self_attn_layer_norm =
            LayerNorm::new(&scope.sub("self_attn_layer_norm"), spec.embed_dim)?;
        let ffn = FeedForward::new(scope, spec)?;
        Ok(Self { self_attn, self_attn_layer_norm, ffn, spec })
    }

    /// `x`: `[batch, len, dim]`; `padding_mask`: `[batch, len]`, `true` at padding.
    pub(crate) fn forward(&self, x: &Tensor, padding_mask: &Tensor, train: bool) -> Result<Tensor> {
        let x = residual_block(x, &self.self_attn_layer_norm, &self.spec, train, |h| {
            let q = self.self_attn.query(h)?;
            let (k, v) = self.self_attn.key_value(h)?;
            self.self_attn.attend(&q, &k, &v, None, Some(padding_mask), train)
        })?;
        self.ffn.forward(&x, train)
    }
}

/// Where a decoder layer's self-attention gets its keys and values.
pub(crate) enum SelfAttention<'a> {
    /// The whole target prefix at once (teacher forcing): a causal mask `[len, len]` and the
    /// target's padding mask `[batch, len]`.
    Full { causal_mask: &'a Tensor, padding_mask: &'a Tensor },
    /// New positions (one per step; several for a prompt) whose keys and values are appended to
    /// the cache; `attn_mask` (`[new, past + new]`, additive) keeps several new positions
    /// causal (`None` for one position).
    Cached { cache: &'a mut KeyValue, attn_mask: Option<&'a Tensor> },
}

/// The encoder attention of a decoder layer (absent in a decoder-only language model: fairseq's
/// `no_encoder_attn=True`).
pub(crate) struct EncoderAttention {
    pub(crate) attn: MultiheadAttention,
    layer_norm: LayerNorm,
}

/// What a decoder layer's encoder attention reads: its keys and values and the source padding
/// mask (`[batch, src_len]`, `true` at padding).
pub(crate) struct CrossInput<'a> {
    pub(crate) kv: &'a KeyValue,
    pub(crate) padding_mask: &'a Tensor,
}

/// One decoder layer: causal self-attention, encoder attention (optional) and feed-forward.
pub(crate) struct DecoderLayer {
    self_attn: MultiheadAttention,
    self_attn_layer_norm: LayerNorm,
    pub(crate) encoder_attn: Option<EncoderAttention>,
    ffn: FeedForward,
    spec: LayerSpec,
}

impl DecoderLayer {
    /// `scope.{self_attn,self_attn_layer_norm,encoder_attn,encoder_attn_layer_norm,fc1,fc2,
    /// final_layer_norm}`; encoder attention reads encoder states of width `encoder_dim`, and
    /// is left out when `encoder_dim` is `None`.
    pub(crate) fn new(
        scope: &Scope<'_, '_>,
        spec: LayerSpec,
        encoder_dim: Option<i64>,
    ) -> Result<Self> {
        let self_attn = MultiheadAttention::new(
            &scope.sub("self_attn"),
            spec.embed_dim,
            spec.embed_dim,
            spec.heads,
            spec.attention_dropout,
        )?;
        let self_attn_layer_norm =
            LayerNorm::new(&scope.sub("self_attn_layer_norm"), spec.embed_dim)?;
        let encoder_attn = match encoder_dim {
            Some(encoder_dim) => Some(EncoderAttention {
                attn: MultiheadAttention::new(
                    &scope.sub("encoder_attn"),
                    spec.embed_dim,
                    encoder_dim,
                    spec.heads,
                    spec.attention_dropout,
                )?,
                layer_norm: LayerNorm::new(&scope.sub("encoder_attn_layer_norm"), spec.embed_dim)?,
            }),
            None => None,
        };
        let ffn = FeedForward::new(scope, spec)?;
        Ok(Self { self_attn, self_attn_layer_norm, encoder_attn, ffn, spec })
    }

    /// This layer's encoder-attention keys and values of `encoder_out` (`[batch, src_len,
    /// encoder_dim]`), or an error for a layer without encoder attention.
    pub(crate) fn cross_key_value(&self, encoder_out: &Tensor) -> Result<KeyValue> {
        let attn = self.encoder_attn.as_ref().ok_or_else(|| {
            crate::models::Error::Input("this decoder layer has no encoder attention".into())
        })?;
        let (key, value) = attn.attn.key_value(encoder_out)?;
        Ok(KeyValue { key, value })
    }

    /// The empty self-attention cache of this layer for `rows` rows.
    pub(crate) fn empty_cache(&self, rows: i64, like: &Tensor) -> Result<KeyValue> {
        let shape = [rows, self.self_attn.heads(), 0, self.self_attn.head_dim()];
        let options = (like.kind(), like.device());
        Ok(KeyValue {
            key: Tensor::f_zeros(shape, options)?,
            value: Tensor::f_zeros(shape, options)?,
        })
    }

    /// `x`: `[batch, len, dim]`; `cross`: what the encoder attention reads (`None` for a layer
    /// without one; a layer with one needs it).
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        self_attention: SelfAttention<'_>,
        cross: Option<CrossInput<'_>>,
        train: bool,
    ) -> Result<Tensor> {
        let x = residual_block(x, &self.self_attn_layer_norm, &self.spec, train, |h| {
            let q = self.self_attn.query(h)?;
            let (k, v) = self.self_attn.key_value(h)?;
            match self_attention {
                SelfAttention::Full { causal_mask, padding_mask } => {
                    self.self_attn.attend(&q, &k, &v, Some(causal_mask), Some(padding_mask), train)
                }
                SelfAttention::Cached { cache, attn_mask } => {
                    cache.key = Tensor::f_cat(&[&cache.key, &k], 2)?;
                    cache.value = Tensor::f_cat(&[&cache.value, &v], 2)?;
                    self.self_attn.attend(&q, &cache.key, &cache.value, attn_mask, None, train)
                }
            }
        })?;
        let x = match (&self.encoder_attn, cross) {
            (None, None) => x,
            (Some(enc), Some(cross)) => {
                residual_block(&x, &enc.layer_norm, &self.spec, train, |h| {
                    let q = enc.attn.query(h)?;
                    let (k, v) = (&cross.kv.key, &cross.kv.value);
                    enc.attn.attend(&q, k, v, None, Some(cross.padding_mask), train)
                })?
            }
            (Some(_), None) => {
                return Err(crate::models::Error::Input(
                    "this decoder layer attends to an encoder output, but none was given".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(crate::models::Error::Input(
                    "this decoder layer has no encoder attention".into(),
                ));
            }
        };
        self.ffn.forward(&x, train)
    }
}
