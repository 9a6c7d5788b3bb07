//! fairseq's `MultiheadAttention` (separate `q_proj`, `k_proj`, `v_proj`, `out_proj`), split
//! into projections and the attention itself so that keys and values can be cached.
//!
//! Shapes are batch-first: inputs `[batch, len, dim]`, per-head tensors
//! `[batch, heads, len, head_dim]` (the layout of the decoder cache and of the ONNX export).

use tch::{Kind, Tensor};

use super::nn::{Linear, LinearInit, Scope, dropout};
use crate::models::Result;

/// Multi-head scaled dot-product attention with fairseq's parameters and initialisation.
pub(crate) struct MultiheadAttention {
    pub(crate) q_proj: Linear,
    pub(crate) k_proj: Linear,
    pub(crate) v_proj: Linear,
    pub(crate) out_proj: Linear,
    heads: i64,
    head_dim: i64,
    scaling: f64,
    dropout: f64,
}

impl MultiheadAttention {
    /// Attention of `embed_dim` queries over keys and values of width `kv_dim`.
    ///
    /// As fairseq: q/k/v weights are xavier-uniform with gain `1/sqrt(2)` when `kv_dim ==
    /// embed_dim` (gain 1 otherwise), their biases keep PyTorch's default; `out_proj` is
    /// xavier-uniform with a zero bias. Parameters are created in fairseq's order (k, v, q, out).
    pub(crate) fn new(
        scope: &Scope<'_, '_>,
        embed_dim: i64,
        kv_dim: i64,
        heads: i64,
        attention_dropout: f64,
    ) -> Result<Self> {
        let gain = if kv_dim == embed_dim { 1.0 / 2f64.sqrt() } else { 1.0 };
        let init = LinearInit::Xavier { gain };
        let k_proj = Linear::new(&scope.sub("k_proj"), kv_dim, embed_dim, init)?;
        let v_proj = Linear::new(&scope.sub("v_proj"), kv_dim, embed_dim, init)?;
        let q_proj = Linear::new(&scope.sub("q_proj"), embed_dim, embed_dim, init)?;
        let out_proj =
            Linear::new(&scope.sub("out_proj"), embed_dim, embed_dim, LinearInit::XavierZeroBias)?;
        let head_dim = embed_dim / heads;
        Ok(Self {
            q_proj,
            k_proj,
            v_proj,
            out_proj,
            heads,
            head_dim,
            scaling: (head_dim as f64).powf(-0.5),
            dropout: attention_dropout,
        })
    }

    /// Number of heads.
    pub(crate) fn heads(&self) -> i64 {
        self.heads
    }

    /// Width of one head.
    pub(crate) fn head_dim(&self) -> i64 {
        self.head_dim
    }

    /// `[batch, len, heads * head_dim]` → `[batch, heads, len, head_dim]`.
    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let size = x.size();
        let (batch, len) = (size[0], size[1]);
        Ok(x.f_reshape([batch, len, self.heads, self.head_dim])?.f_transpose(1, 2)?)
    }

    /// Scaled queries `[batch, heads, len, head_dim]` (fairseq: `q_proj(x) * head_dim^-0.5`).
    pub(crate) fn query(&self, x: &Tensor) -> Result<Tensor> {
        let q = self.q_proj.forward(x)?.f_mul_scalar(self.scaling)?;
        self.split_heads(&q)
    }

    /// Keys and values `[batch, heads, len, head_dim]` of `x` (`[batch, len, kv_dim]`).
    pub(crate) fn key_value(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let k = self.split_heads(&self.k_proj.forward(x)?)?;
        let v = self.split_heads(&self.v_proj.forward(x)?)?;
        Ok((k, v))
    }

    /// Attends with queries `q` over keys `k` and values `v` and applies `out_proj`.
    ///
    /// `attn_mask` (`[q_len, k_len]`, additive, `-inf` where masked) is the causal mask;
    /// `key_padding_mask` (`[batch, k_len]`, `true` at padding) excludes padded keys. The
    /// softmax runs in fp32 as fairseq's does. Returns `[batch, q_len, heads * head_dim]`.
    pub(crate) fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        attn_mask: Option<&Tensor>,
        key_padding_mask: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let mut scores = q.f_matmul(&k.f_transpose(-2, -1)?)?;
        if let Some(mask) = attn_mask {
            scores = scores.f_add(mask)?;
        }
        if let Some(padding) = key_padding_mask {
            let size = padding.size();
            let mask = padding.f_reshape([size[0], 1, 1, size[1]])?;
            scores = scores.f_masked_fill(&mask, f64::NEG_INFINITY)?;
        }
        let probs = scores.f_softmax(-1, Kind::Float)?.f_to_kind(scores.kind())?;
        let probs = dropout(probs, self.dropout, train)?;
        let out = probs.f_matmul(v)?.f_transpose(1, 2)?;
        let size = out.size();
        let out = out.f_reshape([size[0], size[1], self.heads * self.head_dim])?;
        self.out_proj.forward(&out)
    }
}
