//! fairseq's `FConvDecoder` and its `AttentionLayer`: causal weight-normalised convolutions
//! with GLU, multi-step attention after every attending layer, scaled residuals, `fc2` and the
//! output projection `fc3`; the whole target at once (training) or one position at a time
//! with the convolution windows passed explicitly (`LinearizedConvolution`'s incremental
//! mode).

use tch::{Kind, Tensor};

use super::encoder::{EncoderOut, conv_stack, input_layers, residual_of};
use super::nn::{ConvTbc, Linear, SQRT_HALF, Scope, dropout, embed, make_positions, to_i64};
use crate::models::{Error, Result};
use seqforge_schemas::arch::fconv::ConvBlock;

/// Everything the decoder carries from one target position to the next, one row per
/// hypothesis. Reordering rows is one `index_select` on axis 0 of every tensor.
#[derive(Debug)]
pub struct DecoderState {
    /// [`EncoderOut::a`] `[rows, src_len, embed]`.
    pub encoder_a: Tensor,
    /// [`EncoderOut::b`] `[rows, src_len, embed]`.
    pub encoder_b: Tensor,
    /// `[rows, src_len]`, true at source padding.
    pub encoder_padding_mask: Tensor,
    /// Per decoder layer, the last `kernel_size - 1` inputs of its convolution `[rows,
    /// kernel_size - 1, in_channels]`, oldest first (zeros before the first step); `None` for
    /// layers of kernel width 1.
    pub windows: Vec<Option<Tensor>>,
}

impl DecoderState {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.encoder_a.size().first().map_or(0, |&r| r as usize)
    }

    /// New row `i` becomes old row `index[i]` in every tensor (`index`: `Int64`; may repeat
    /// rows and be shorter: beam reordering and pruning are one operation).
    pub fn reorder(&mut self, index: &Tensor) -> Result<()> {
        let select = |t: &Tensor| t.f_index_select(0, index);
        self.encoder_a = select(&self.encoder_a)?;
        self.encoder_b = select(&self.encoder_b)?;
        self.encoder_padding_mask = select(&self.encoder_padding_mask)?;
        for w in self.windows.iter_mut().flatten() {
            *w = select(w)?;
        }
        Ok(())
    }
}

/// fairseq's `AttentionLayer` of `fconv.py`.
struct Attention {
    in_projection: Linear,
    out_projection: Linear,
}

impl Attention {
    /// `x` `[rows, len, channels]` (the layer's GLU output), `target_embedding` `[rows, len,
    /// embed]` → `[rows, len, channels]`.
    fn forward(
        &self,
        x: &Tensor,
        target_embedding: &Tensor,
        encoder_a: &Tensor,
        encoder_b: &Tensor,
        padding_mask: &Tensor,
    ) -> Result<Tensor> {
        let residual = x;
        let q = self.in_projection.forward(x)?.f_add(target_embedding)?.f_mul_scalar(SQRT_HALF)?;
        let scores = q.f_bmm(&encoder_a.f_transpose(1, 2)?)?;
        // fairseq: masked in fp32 and cast back (fp16 support).
        let kind = scores.kind();
        let scores = scores
            .f_to_kind(Kind::Float)?
            .f_masked_fill(&padding_mask.f_unsqueeze(1)?, f64::NEG_INFINITY)?
            .f_to_kind(kind)?;
        let probs = scores.f_softmax(-1, kind)?;
        let context = probs.f_bmm(encoder_b)?;
        // Scaled by s · rsqrt(s) with s the sentence's unpadded source length.
        let src_len = encoder_b.size()[1] as f64;
        let s = padding_mask
            .f_to_kind(kind)?
            .f_sum_dim_intlist(1, true, kind)?
            .f_neg()?
            .f_add_scalar(src_len)?
            .f_unsqueeze(-1)?;
        let context = context.f_mul(&s.f_mul(&s.f_rsqrt()?)?)?;
        Ok(self.out_projection.forward(&context)?.f_add(residual)?.f_mul_scalar(SQRT_HALF)?)
    }
}

/// One decoder layer.
struct Layer {
    projection: Option<Linear>,
    conv: ConvTbc,
    attention: Option<Attention>,
    residual: usize,
}

/// Settings of the decoder, from the config.
pub(super) struct DecoderSpec<'a> {
    pub(super) vocab: i64,
    pub(super) embed_dim: i64,
    pub(super) out_embed_dim: i64,
    pub(super) max_positions: i64,
    pub(super) blocks: &'a [ConvBlock],
    pub(super) attention: &'a [bool],
    pub(super) dropout: f64,
    pub(super) share_embed: bool,
    pub(super) pad: i64,
}

/// The output projection: weight-normalised `fc3`, or a plain `nn.Linear` whose weight is the
/// input embedding (shared), with its own bias.
enum Fc3 {
    Own(Linear),
    Shared { bias: Tensor },
}

/// fairseq's `FConvDecoder` (no adaptive softmax: `fconv` never builds one).
pub(super) struct Decoder {
    embed_tokens: Tensor,
    embed_positions: Tensor,
    fc1: Linear,
    layers: Vec<Layer>,
    fc2: Linear,
    fc3: Fc3,
    dropout: f64,
    pad: i64,
}

impl Decoder {
    /// Creates `decoder.*` under `scope`, in fairseq's order (the `version` buffer first).
    pub(super) fn new(scope: &Scope<'_, '_>, spec: &DecoderSpec<'_>) -> Result<Self> {
        scope.buffer("version", Tensor::f_from_slice(&[2f32])?.f_to_device(scope.device())?);
        let (embed_tokens, embed_positions, fc1) = input_layers(
            scope,
            (spec.vocab, spec.max_positions, spec.embed_dim),
            spec.blocks,
            spec.dropout,
            spec.pad,
        )?;
        let first = spec.blocks.first().map_or(0, |b| b.in_channels as i64);
        let stack = conv_stack(scope, spec.blocks, spec.dropout)?;
        let attention = scope.sub("attention");
        let mut layers = Vec::with_capacity(stack.len());
        for (i, ((projection, conv), b)) in stack.into_iter().zip(spec.blocks).enumerate() {
            let attention = if spec.attention.get(i).copied().unwrap_or(false) {
                let a = attention.sub(i);
                let channels = b.layer.out_channels as i64;
                Some(Attention {
                    in_projection: Linear::new(
                        &a.sub("in_projection"),
                        channels,
                        spec.embed_dim,
                        0.0,
                    )?,
                    out_projection: Linear::new(
                        &a.sub("out_projection"),
                        spec.embed_dim,
                        channels,
                        0.0,
                    )?,
                })
            } else {
                None
            };
            layers.push(Layer { projection, conv, attention, residual: b.layer.residual });
        }
        let last = spec.blocks.last().map_or(first, |b| b.layer.out_channels as i64);
        let fc2 = Linear::new(&scope.sub("fc2"), last, spec.out_embed_dim, 0.0)?;
        let fc3 = if spec.share_embed {
            // `nn.Linear(out_embed_dim, vocab)` whose weight is then replaced by the embedding:
            // the bias keeps nn.Linear's uniform(±1/√in) initialisation.
            let s = scope.sub("fc3");
            s.alias("weight", &scope.sub("embed_tokens").name_of("weight"));
            let bound = 1.0 / (spec.out_embed_dim as f64).sqrt();
            let bias =
                s.var("bias", &[spec.vocab], tch::nn::Init::Uniform { lo: -bound, up: bound })?;
            Fc3::Shared { bias }
        } else {
            Fc3::Own(Linear::new(&scope.sub("fc3"), spec.out_embed_dim, spec.vocab, spec.dropout)?)
        };
        Ok(Self {
            embed_tokens,
            embed_positions,
            fc1,
            layers,
            fc2,
            fc3,
            dropout: spec.dropout,
            pad: spec.pad,
        })
    }

    /// The state before the first target token for the sentences of `encoder_out` (one row
    /// each): the encoder outputs and zero windows.
    pub(super) fn init_state(&self, encoder_out: &EncoderOut) -> Result<DecoderState> {
        let a = &encoder_out.a;
        let rows = a.size().first().copied().unwrap_or(0);
        let windows = self
            .layers
            .iter()
            .map(|l| {
                let k = l.conv.kernel();
                if k < 2 {
                    return Ok(None);
                }
                let channels = l.conv.in_channels();
                Ok(Some(Tensor::f_zeros([rows, k - 1, channels], (a.kind(), a.device()))?))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(DecoderState {
            encoder_a: a.shallow_clone(),
            encoder_b: encoder_out.b.shallow_clone(),
            encoder_padding_mask: encoder_out.padding_mask.f_to_kind(Kind::Bool)?,
            windows,
        })
    }

    /// Number of layers.
    pub(super) fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// The embedded target (tokens plus learned positions `positions`), after dropout.
    fn embed(&self, tokens: &Tensor, positions: &Tensor, train: bool) -> Result<Tensor> {
        let x = embed(&self.embed_tokens, tokens, self.pad)?.f_add(&embed(
            &self.embed_positions,
            positions,
            self.pad,
        )?)?;
        dropout(x, self.dropout, train)
    }

    /// `fc2`, dropout, `fc3`: features `[..., channels]` → logits `[..., vocab]`.
    fn output_layer(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let x = dropout(self.fc2.forward(x)?, self.dropout, train)?;
        match &self.fc3 {
            Fc3::Own(fc3) => fc3.forward(&x),
            Fc3::Shared { bias } => Ok(x.f_linear(&self.embed_tokens, Some(bias))?),
        }
    }

    /// Teacher-forced decoding: `tokens` `[batch, tgt_len]` (EOS first, right-padded) →
    /// logits `[batch, tgt_len, vocab]`; each position sees only itself and earlier ones.
    pub(super) fn forward(
        &self,
        tokens: &Tensor,
        encoder_out: &EncoderOut,
        train: bool,
    ) -> Result<Tensor> {
        let positions = make_positions(tokens, self.pad)?;
        let target_embedding = self.embed(tokens, &positions, train)?;
        let mut x = self.fc1.forward(&target_embedding)?.f_transpose(0, 1)?;
        let len = x.size()[0];
        let mut residuals = vec![x.shallow_clone()];
        for layer in &self.layers {
            let residual = residual_of(&residuals, layer.residual, layer.projection.as_ref())?;
            x = dropout(x, self.dropout, train)?;
            let k = layer.conv.kernel();
            // Padded by k − 1 on both ends, the future outputs dropped: a causal convolution.
            x = layer.conv.forward(&x, k - 1)?;
            if k > 1 {
                x = x.f_narrow(0, 0, len)?;
            }
            x = x.f_glu(2)?;
            if let Some(attention) = &layer.attention {
                let y = attention.forward(
                    &x.f_transpose(0, 1)?,
                    &target_embedding,
                    &encoder_out.a,
                    &encoder_out.b,
                    &encoder_out.padding_mask,
                )?;
                x = y.f_transpose(0, 1)?;
            }
            if let Some(r) = residual {
                x = x.f_add(&r)?.f_mul_scalar(SQRT_HALF)?;
            }
            residuals.push(x.shallow_clone());
        }
        self.output_layer(&x.f_transpose(0, 1)?, train)
    }

    /// One incremental position (no dropout): `tokens` `[rows, 1]` at target position `step`
    /// (0 = the EOS fed first) → logits `[rows, vocab]`, each layer's window advanced.
    pub(super) fn step(
        &self,
        tokens: &Tensor,
        step: usize,
        state: &mut DecoderState,
    ) -> Result<Tensor> {
        if state.windows.len() != self.layers.len() {
            return Err(Error::Input(format!(
                "the decoder state has {} convolution windows for {} layers",
                state.windows.len(),
                self.layers.len()
            )));
        }
        // fairseq's incremental LearnedPositionalEmbedding: padding_idx + prefix length.
        let position = to_i64(step + 1, "step")? + self.pad;
        if position >= self.embed_positions.size()[0] {
            return Err(Error::Input(format!(
                "target position {step} is past the decoder's {} learned positions",
                self.embed_positions.size()[0] - self.pad - 1
            )));
        }
        let positions = Tensor::f_full_like(tokens, position)?;
        let target_embedding = self.embed(tokens, &positions, false)?;
        let mut x = self.fc1.forward(&target_embedding)?;
        let rows = x.size()[0];
        let mut residuals = vec![x.shallow_clone()];
        for (layer, window) in self.layers.iter().zip(state.windows.iter_mut()) {
            let residual = residual_of(&residuals, layer.residual, layer.projection.as_ref())?;
            let full = match window {
                Some(w) => {
                    let full = Tensor::f_cat(&[&*w, &x], 1)?;
                    *w = full.f_narrow(1, 1, layer.conv.kernel() - 1)?;
                    full
                }
                None => x.shallow_clone(),
            };
            let y = layer.conv.linearized(&full)?;
            let width = y.size()[1];
            x = y.f_view([rows, 1, width])?.f_glu(2)?;
            if let Some(attention) = &layer.attention {
                x = attention.forward(
                    &x,
                    &target_embedding,
                    &state.encoder_a,
                    &state.encoder_b,
                    &state.encoder_padding_mask,
                )?;
            }
            if let Some(r) = residual {
                x = x.f_add(&r)?.f_mul_scalar(SQRT_HALF)?;
            }
            residuals.push(x.shallow_clone());
        }
        Ok(self.output_layer(&x, false)?.f_squeeze_dim(1)?)
    }
}
