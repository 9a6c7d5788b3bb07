//! Building blocks shared by the Transformer's layers: a parameter scope that records fairseq
//! names, linear layers, layer norms and embeddings with fairseq's initialisation.

use tch::nn::Init;
use tch::{Kind, Tensor};

use super::config::Activation;
use crate::models::Result;
pub(crate) use crate::models::nn::{Entry, Scope, dropout, embed};

/// fairseq's `LayerNorm` epsilon (PyTorch's default).
pub(crate) const LAYER_NORM_EPS: f64 = 1e-5;

/// `nn.Linear` with a weight of shape `[out, in]` (fairseq/PyTorch layout).
pub(crate) struct Linear {
    pub(crate) weight: Tensor,
    pub(crate) bias: Option<Tensor>,
}

/// How a linear layer's weight is initialised.
#[derive(Debug, Clone, Copy)]
pub(crate) enum LinearInit {
    /// PyTorch's `nn.Linear` default: weight and bias uniform in `±1/sqrt(in)`.
    TorchDefault,
    /// `xavier_uniform_(weight, gain)`; the bias keeps PyTorch's default.
    Xavier { gain: f64 },
    /// `xavier_uniform_(weight)` and a zero bias (fairseq's attention `out_proj`).
    XavierZeroBias,
}

impl Linear {
    /// A linear layer `leaf.{weight,bias}` from `in_dim` to `out_dim`.
    pub(crate) fn new(
        scope: &Scope<'_, '_>,
        in_dim: i64,
        out_dim: i64,
        init: LinearInit,
    ) -> Result<Self> {
        let default_bound = 1.0 / (in_dim as f64).sqrt();
        let xavier_bound = |gain: f64| gain * (6.0 / (in_dim + out_dim) as f64).sqrt();
        let uniform = |b: f64| Init::Uniform { lo: -b, up: b };
        let (weight_init, bias_init) = match init {
            LinearInit::TorchDefault => (uniform(default_bound), uniform(default_bound)),
            LinearInit::Xavier { gain } => (uniform(xavier_bound(gain)), uniform(default_bound)),
            LinearInit::XavierZeroBias => (uniform(xavier_bound(1.0)), Init::Const(0.0)),
        };
        let weight = scope.var("weight", &[out_dim, in_dim], weight_init)?;
        let bias = scope.var("bias", &[out_dim], bias_init)?;
        Ok(Self { weight, bias: Some(bias) })
    }

    /// `x @ weight.T + bias`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_linear(&self.weight, self.bias.as_ref())?)
    }
}

/// `nn.LayerNorm(dim)` with fairseq's epsilon, weight 1 and bias 0 at initialisation.
pub(crate) struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    dim: i64,
}

impl LayerNorm {
    /// A layer norm `scope.{weight,bias}`.
    pub(crate) fn new(scope: &Scope<'_, '_>, dim: i64) -> Result<Self> {
        let weight = scope.var("weight", &[dim], Init::Const(1.0))?;
        let bias = scope.var("bias", &[dim], Init::Const(0.0))?;
        Ok(Self { weight, bias, dim })
    }

    /// Normalises the last dimension.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_layer_norm([self.dim], Some(&self.weight), Some(&self.bias), LAYER_NORM_EPS, true)?)
    }
}

/// An embedding matrix `scope.weight` of shape `[num, dim]`, initialised as fairseq's
/// `Embedding`: normal with std `dim^-0.5`, the padding row zero.
pub(crate) fn embedding_weight(
    scope: &Scope<'_, '_>,
    num: i64,
    dim: i64,
    padding_idx: Option<i64>,
) -> Result<Tensor> {
    let std = (dim as f64).powf(-0.5);
    let weight = scope.var("weight", &[num, dim], Init::Randn { mean: 0.0, stdev: std })?;
    if let Some(pad) = padding_idx {
        let _guard = tch::no_grad_guard();
        let mut row = weight.f_select(0, pad)?;
        let _ = row.f_fill_(0.0)?;
    }
    Ok(weight)
}

/// Applies `activation` as fairseq does (`gelu` in fp32, cast back).
pub(crate) fn activate(activation: Activation, x: &Tensor) -> Result<Tensor> {
    Ok(match activation {
        Activation::Relu => x.f_relu()?,
        Activation::Gelu => x.f_to_kind(Kind::Float)?.f_gelu("none")?.f_to_kind(x.kind())?,
        Activation::GeluAccurate => x.f_gelu("tanh")?,
        Activation::Tanh => x.f_tanh()?,
        Activation::Linear => x.shallow_clone(),
    })
}
