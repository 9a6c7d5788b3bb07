//! Building blocks of the ConvS2S model as `fairseq/models/fconv.py` makes them: normal
//! initialisations scaled by the dropout that precedes a layer, weight normalisation
//! (`weight_g`/`weight_v`, `torch._weight_norm`), the weight-normalised `Linear` and
//! `ConvTBC`, and `GradMultiply`.

use tch::Tensor;
use tch::nn::Init;

use crate::models::Result;
pub(super) use crate::models::nn::{
    Entry, Scope, dropout, embed, make_positions, to_i64, tokens_2d,
};

/// fairseq's `Embedding` and `PositionalEmbedding` of `fconv.py`: `[num, dim]` normal with
/// standard deviation 0.1, row `pad` zero.
pub(super) fn embedding_weight(
    scope: &Scope<'_, '_>,
    num: i64,
    dim: i64,
    pad: i64,
) -> Result<Tensor> {
    let weight = scope.var("weight", &[num, dim], Init::Randn { mean: 0.0, stdev: 0.1 })?;
    let _guard = tch::no_grad_guard();
    let _ = weight.f_select(0, pad)?.f_fill_(0.0)?;
    Ok(weight)
}

/// A weight-normalised weight (`nn.utils.weight_norm`): `weight = g · v / ‖v‖`, the norm over
/// every axis but `dim`, with its bias; recorded in fairseq's order `bias`, `weight_g`,
/// `weight_v`.
pub(super) struct WeightNorm {
    bias: Tensor,
    g: Tensor,
    v: Tensor,
    dim: i64,
}

impl WeightNorm {
    /// `v` of `shape` normal with standard deviation `std`, `g = ‖v‖` (as `weight_norm`
    /// starts), bias zero with `bias_len` entries.
    fn new(scope: &Scope<'_, '_>, shape: &[i64], dim: i64, std: f64) -> Result<Self> {
        let out = shape.get(dim as usize).copied().unwrap_or(1);
        let bias = scope.var("bias", &[out], Init::Const(0.0))?;
        let mut g_shape = vec![1; shape.len()];
        if let Some(d) = g_shape.get_mut(dim as usize) {
            *d = out;
        }
        let g = scope.var("weight_g", &g_shape, Init::Const(0.0))?;
        let v = scope.var("weight_v", shape, Init::Randn { mean: 0.0, stdev: std })?;
        {
            let _guard = tch::no_grad_guard();
            let mut g = g.shallow_clone();
            g.f_copy_(&Tensor::f_norm_except_dim(&v, 2, dim)?)?;
        }
        Ok(Self { bias, g, v, dim })
    }

    /// The normalised weight (`torch._weight_norm(v, g, dim)`, what fairseq's forward
    /// pre-hook computes).
    pub(super) fn weight(&self) -> Result<Tensor> {
        Ok(Tensor::f_internal_weight_norm(&self.v, &self.g, self.dim)?)
    }

    /// The bias.
    pub(super) fn bias(&self) -> &Tensor {
        &self.bias
    }
}

/// fairseq's `Linear` of `fconv.py`: weight-normalised (`dim = 0`), weight normal with
/// standard deviation `√((1 − dropout) / in)`, bias zero.
pub(super) struct Linear {
    wn: WeightNorm,
}

impl Linear {
    /// `scope.{bias,weight_g,weight_v}` from `in_dim` to `out_dim`; `dropout` is the dropout
    /// applied to this layer's input (it scales the initialisation).
    pub(super) fn new(
        scope: &Scope<'_, '_>,
        in_dim: i64,
        out_dim: i64,
        dropout: f64,
    ) -> Result<Self> {
        let std = ((1.0 - dropout) / in_dim as f64).sqrt();
        Ok(Self { wn: WeightNorm::new(scope, &[out_dim, in_dim], 0, std)? })
    }

    /// `x @ weight.T + bias`.
    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_linear(&self.wn.weight()?, Some(self.wn.bias()))?)
    }
}

/// fairseq's weight-normalised `ConvTBC` (the encoder's convolutions, and the decoder's
/// `LinearizedConvolution`, which is one): weight `[kernel, in, 2 · out]` normalised over
/// `dim = 2`, normal with standard deviation `√(4 (1 − dropout) / (kernel · in))`.
pub(super) struct ConvTbc {
    wn: WeightNorm,
    kernel: i64,
    in_channels: i64,
}

impl ConvTbc {
    /// `scope.{bias,weight_g,weight_v}`: `in_channels` → `out_channels` (already doubled for
    /// the GLU) over `kernel` positions.
    pub(super) fn new(
        scope: &Scope<'_, '_>,
        in_channels: i64,
        out_channels: i64,
        kernel: i64,
        dropout: f64,
    ) -> Result<Self> {
        let std = (4.0 * (1.0 - dropout) / (kernel * in_channels) as f64).sqrt();
        let wn = WeightNorm::new(scope, &[kernel, in_channels, out_channels], 2, std)?;
        Ok(Self { wn, kernel, in_channels })
    }

    /// The kernel width.
    pub(super) fn kernel(&self) -> i64 {
        self.kernel
    }

    /// The input channels.
    pub(super) fn in_channels(&self) -> i64 {
        self.in_channels
    }

    /// `torch.conv_tbc` over time-major `x` (`[time, batch, in]`) with `padding` zeros on
    /// both ends.
    pub(super) fn forward(&self, x: &Tensor, padding: i64) -> Result<Tensor> {
        Ok(x.f_contiguous()?.f_conv_tbc(&self.wn.weight()?, self.wn.bias(), padding)?)
    }

    /// `LinearizedConvolution`'s incremental step: `window` (`[rows, kernel, in]`, oldest
    /// first, the current input last) through the convolution as one linear layer (weight
    /// `[out, kernel · in]`) → `[rows, out]`.
    pub(super) fn linearized(&self, window: &Tensor) -> Result<Tensor> {
        let weight = self.wn.weight()?.f_permute([2, 0, 1])?.f_contiguous()?;
        let out = weight.size()[0];
        let weight = weight.f_view([out, self.kernel * self.in_channels])?;
        let rows = window.size()[0];
        let flat = window.f_contiguous()?.f_view([rows, self.kernel * self.in_channels])?;
        Ok(flat.f_linear(&weight, Some(self.wn.bias()))?)
    }
}

/// fairseq's `GradMultiply`: the identity forward (exactly), the gradient scaled by `scale`.
pub(super) fn grad_multiply(x: &Tensor, scale: f64) -> Result<Tensor> {
    if !x.requires_grad() {
        return Ok(x.shallow_clone());
    }
    let held = x.f_detach()?;
    // x − held is exactly 0 forward, so the sum is x; its gradient reaches x times `scale`.
    Ok(held.f_add(&x.f_sub(&held)?.f_mul_scalar(scale)?)?)
}

/// `√½`, fairseq's scale of every residual sum and of the attention's query.
pub(super) const SQRT_HALF: f64 = std::f64::consts::FRAC_1_SQRT_2;
