//! Building blocks of the LSTM model: fairseq's `uniform(-0.1, 0.1)` initialisation and the few
//! layers the encoder and decoder share (the parameter [`Scope`] is the one every family uses).

use tch::Tensor;
use tch::nn::Init;

use crate::models::Result;
pub(super) use crate::models::nn::{Entry, Scope, dropout, embed, to_i64, tokens_2d};

/// fairseq's `lstm.py` initialises every weight and bias uniformly in `±INIT_BOUND`.
pub(super) const INIT_BOUND: f64 = 0.1;

const UNIFORM: Init = Init::Uniform { lo: -INIT_BOUND, up: INIT_BOUND };

/// Creates `scope.{leaf}` initialised as fairseq's `lstm.py` does (uniform in `±0.1`).
pub(super) fn uniform(scope: &Scope<'_, '_>, leaf: &str, dims: &[i64]) -> Result<Tensor> {
    scope.var(leaf, dims, UNIFORM)
}

/// fairseq's `Linear` of `lstm.py`: `nn.Linear` with weight (and bias) uniform in `±0.1`.
pub(super) struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// A linear layer `scope.{weight,bias}` from `in_dim` to `out_dim`.
    pub(super) fn new(
        scope: &Scope<'_, '_>,
        in_dim: i64,
        out_dim: i64,
        bias: bool,
    ) -> Result<Self> {
        let weight = uniform(scope, "weight", &[out_dim, in_dim])?;
        let bias = if bias { Some(uniform(scope, "bias", &[out_dim])?) } else { None };
        Ok(Self { weight, bias })
    }

    /// `x @ weight.T + bias`.
    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_linear(&self.weight, self.bias.as_ref())?)
    }
}

/// fairseq's `Embedding` of `lstm.py`: `[num, dim]` uniform in `±0.1`, the padding row zero.
pub(super) fn embedding_weight(
    scope: &Scope<'_, '_>,
    num: i64,
    dim: i64,
    pad: i64,
) -> Result<Tensor> {
    let weight = uniform(scope, "weight", &[num, dim])?;
    let _guard = tch::no_grad_guard();
    let _ = weight.f_select(0, pad)?.f_fill_(0.0)?;
    Ok(weight)
}
