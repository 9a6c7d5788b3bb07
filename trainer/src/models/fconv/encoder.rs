//! fairseq's `FConvEncoder`: token and learned position embeddings, `fc1`, a stack of
//! weight-normalised convolutions with GLU and scaled residuals (padding zeroed before each
//! convolution), `fc2`, and the two outputs attention reads.

use tch::{Kind, Tensor};

use super::nn::{
    ConvTbc, Linear, SQRT_HALF, Scope, dropout, embed, embedding_weight, grad_multiply,
    make_positions, tokens_2d,
};
use crate::models::Result;
use seqforge_schemas::arch::fconv::ConvBlock;

/// The encoder's outputs for a batch (batch-first).
#[derive(Debug)]
pub struct EncoderOut {
    /// `fc2`'s output with padding zeroed `[batch, src_len, embed]` (fairseq's
    /// `encoder_out[0]`: what attention scores against).
    pub a: Tensor,
    /// `(a + input embedding) · √½` `[batch, src_len, embed]` (fairseq's `encoder_out[1]`:
    /// what attention averages).
    pub b: Tensor,
    /// `[batch, src_len]`, true at padding.
    pub padding_mask: Tensor,
}

/// Settings of the encoder, from the config.
pub(super) struct EncoderSpec<'a> {
    pub(super) vocab: i64,
    pub(super) embed_dim: i64,
    pub(super) max_positions: i64,
    pub(super) blocks: &'a [ConvBlock],
    pub(super) dropout: f64,
    /// fairseq's `num_attention_layers`: the encoder's gradient is divided by twice it.
    pub(super) attention_layers: usize,
    pub(super) pad: i64,
}

/// One convolutional layer with its optional residual projection.
struct Layer {
    projection: Option<Linear>,
    conv: ConvTbc,
    residual: usize,
}

/// fairseq's `FConvEncoder`.
pub(super) struct Encoder {
    pub(super) embed_tokens: Tensor,
    embed_positions: Tensor,
    fc1: Linear,
    layers: Vec<Layer>,
    fc2: Linear,
    dropout: f64,
    grad_scale: f64,
    pad: i64,
}

/// Creates the residual projections and convolutions of `blocks` under `scope` in fairseq's
/// order (all `projections.{i}` first, then all `convolutions.{i}`).
pub(super) fn conv_stack(
    scope: &Scope<'_, '_>,
    blocks: &[ConvBlock],
    dropout: f64,
) -> Result<Vec<(Option<Linear>, ConvTbc)>> {
    let projections = scope.sub("projections");
    let projections = blocks
        .iter()
        .enumerate()
        .map(|(i, b)| match b.residual_dim {
            Some(dim) if b.has_projection() => Ok(Some(Linear::new(
                &projections.sub(i),
                dim as i64,
                b.layer.out_channels as i64,
                0.0,
            )?)),
            _ => Ok(None),
        })
        .collect::<Result<Vec<_>>>()?;
    let convolutions = scope.sub("convolutions");
    let convs = blocks
        .iter()
        .enumerate()
        .map(|(i, b)| {
            ConvTbc::new(
                &convolutions.sub(i),
                b.in_channels as i64,
                2 * b.layer.out_channels as i64,
                b.layer.kernel_size as i64,
                dropout,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(projections.into_iter().zip(convs).collect())
}

/// The input side both encoder and decoder start with, in fairseq's order: `embed_tokens`
/// (`vocab` rows), `embed_positions` (`positions` rows), both `dim` wide, and `fc1` from `dim`
/// to the first layer's width.
pub(super) fn input_layers(
    scope: &Scope<'_, '_>,
    (vocab, positions, dim): (i64, i64, i64),
    blocks: &[ConvBlock],
    dropout: f64,
    pad: i64,
) -> Result<(Tensor, Tensor, Linear)> {
    let embed_tokens = embedding_weight(&scope.sub("embed_tokens"), vocab, dim, pad)?;
    let embed_positions = embedding_weight(&scope.sub("embed_positions"), positions, dim, pad)?;
    let first = blocks.first().map_or(0, |b| b.in_channels as i64);
    let fc1 = Linear::new(&scope.sub("fc1"), dim, first, dropout)?;
    Ok((embed_tokens, embed_positions, fc1))
}

/// The residual layer `residual` looks back to (1 = the layer's input), through `projection`.
pub(super) fn residual_of(
    residuals: &[Tensor],
    residual: usize,
    projection: Option<&Linear>,
) -> Result<Option<Tensor>> {
    if residual == 0 {
        return Ok(None);
    }
    let r = &residuals[residuals.len() - residual];
    Ok(Some(match projection {
        Some(p) => p.forward(r)?,
        None => r.shallow_clone(),
    }))
}

impl Encoder {
    /// Creates `encoder.*` under `scope`, in fairseq's order.
    pub(super) fn new(scope: &Scope<'_, '_>, spec: &EncoderSpec<'_>) -> Result<Self> {
        let (embed_tokens, embed_positions, fc1) = input_layers(
            scope,
            (spec.vocab, spec.max_positions, spec.embed_dim),
            spec.blocks,
            spec.dropout,
            spec.pad,
        )?;
        let first = spec.blocks.first().map_or(0, |b| b.in_channels as i64);
        let layers = conv_stack(scope, spec.blocks, spec.dropout)?
            .into_iter()
            .zip(spec.blocks)
            .map(|((projection, conv), b)| Layer { projection, conv, residual: b.layer.residual })
            .collect();
        let last = spec.blocks.last().map_or(first, |b| b.layer.out_channels as i64);
        let fc2 = Linear::new(&scope.sub("fc2"), last, spec.embed_dim, 0.0)?;
        Ok(Self {
            embed_tokens,
            embed_positions,
            fc1,
            layers,
            fc2,
            dropout: spec.dropout,
            grad_scale: 1.0 / (2.0 * spec.attention_layers.max(1) as f64),
            pad: spec.pad,
        })
    }

    /// Encodes `src_tokens` (`[batch, src_len]`, left- or right-padded: positions skip padding
    /// and padding is zeroed before every convolution, so a sentence's outputs do not depend on
    /// its batch).
    pub(super) fn forward(&self, src_tokens: &Tensor, train: bool) -> Result<EncoderOut> {
        let device = self.embed_tokens.device();
        let tokens = tokens_2d(src_tokens, device, "src_tokens")?;
        let positions = make_positions(&tokens, self.pad)?;
        let x = embed(&self.embed_tokens, &tokens, self.pad)?.f_add(&embed(
            &self.embed_positions,
            &positions,
            self.pad,
        )?)?;
        let x = dropout(x, self.dropout, train)?;
        let input_embedding = x.shallow_clone();
        let mut x = self.fc1.forward(&x)?.f_transpose(0, 1)?;
        let padding_mask = tokens.f_eq(self.pad)?;
        let time_mask = padding_mask.f_transpose(0, 1)?.f_unsqueeze(-1)?;
        let mut residuals = vec![x.shallow_clone()];
        for layer in &self.layers {
            let residual = residual_of(&residuals, layer.residual, layer.projection.as_ref())?;
            x = dropout(x.f_masked_fill(&time_mask, 0.0)?, self.dropout, train)?;
            let k = layer.conv.kernel();
            x = if k % 2 == 1 {
                layer.conv.forward(&x, k / 2)?
            } else {
                let padded = x.f_constant_pad_nd([0, 0, 0, 0, (k - 1) / 2, k / 2])?;
                layer.conv.forward(&padded, 0)?
            };
            x = x.f_glu(2)?;
            if let Some(r) = residual {
                x = x.f_add(&r)?.f_mul_scalar(SQRT_HALF)?;
            }
            residuals.push(x.shallow_clone());
        }
        let x = self.fc2.forward(&x.f_transpose(1, 0)?)?;
        let x = x.f_masked_fill(&padding_mask.f_unsqueeze(-1)?, 0.0)?;
        let a = grad_multiply(&x, self.grad_scale)?;
        let b = a.f_add(&input_embedding)?.f_mul_scalar(SQRT_HALF)?;
        Ok(EncoderOut { a, b, padding_mask: padding_mask.f_to_kind(Kind::Bool)? })
    }
}
