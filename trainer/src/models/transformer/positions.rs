//! Positional embeddings as fairseq computes them: positions start at `padding_idx + 1`,
//! padding tokens get position `padding_idx` (a zero vector), so left-padded sources and
//! right-padded targets see the same positions as unpadded ones.

use tch::{Device, Kind, Tensor};

use super::nn::{Scope, embedding_weight};
use crate::models::{Error, Result};

pub use crate::models::nn::make_positions;

/// fairseq's `SinusoidalPositionalEmbedding.get_embedding`: a `[num_embeddings, embedding_dim]`
/// fp32 table, sines in the first half of each row and cosines in the second (tensor2tensor's
/// layout), a zero column appended for odd dimensions, and row `padding_idx` zero.
pub fn sinusoidal_table(
    num_embeddings: i64,
    embedding_dim: i64,
    padding_idx: Option<i64>,
    device: Device,
) -> Result<Tensor> {
    let half_dim = embedding_dim / 2;
    if half_dim < 2 {
        return Err(Error::Config(format!(
            "sinusoidal positions need an embedding dimension of at least 4, got {embedding_dim}"
        )));
    }
    let scale = (10000f64).ln() / (half_dim - 1) as f64;
    let options = (Kind::Float, device);
    let freq = Tensor::f_arange(half_dim, options)?.f_mul_scalar(-scale)?.f_exp()?;
    let args =
        Tensor::f_arange(num_embeddings, options)?.f_unsqueeze(1)?.f_mul(&freq.f_unsqueeze(0)?)?;
    let mut table = Tensor::f_cat(&[args.f_sin()?, args.f_cos()?], 1)?;
    if embedding_dim % 2 == 1 {
        let zeros = Tensor::f_zeros([num_embeddings, 1], options)?;
        table = Tensor::f_cat(&[table, zeros], 1)?;
    }
    if let Some(pad) = padding_idx {
        let mut row = table.f_select(0, pad)?;
        let _ = row.f_fill_(0.0)?;
    }
    Ok(table)
}

/// Sinusoidal (a fixed table, not a parameter) or learned (`embed_positions.weight`) positions.
pub(crate) enum PositionalEmbedding {
    /// The fixed table of [`sinusoidal_table`] for `max_positions + padding_idx + 1` rows.
    Sinusoidal { table: Tensor },
    /// `nn.Embedding(max_positions + padding_idx + 1, dim, padding_idx)`.
    Learned { weight: Tensor, padding_idx: i64 },
}

impl PositionalEmbedding {
    /// fairseq's `PositionalEmbedding(max_positions, dim, padding_idx, learned)`, with the
    /// learned weight created as `scope.weight`.
    pub(crate) fn new(
        scope: &Scope<'_, '_>,
        max_positions: i64,
        dim: i64,
        padding_idx: i64,
        learned: bool,
    ) -> Result<Self> {
        let rows = max_positions + padding_idx + 1;
        if learned {
            let weight = embedding_weight(scope, rows, dim, Some(padding_idx))?;
            Ok(Self::Learned { weight, padding_idx })
        } else {
            let table = sinusoidal_table(rows, dim, Some(padding_idx), scope.device())?
                .f_to_kind(scope.kind())?;
            scope.buffer("_float_tensor", Tensor::f_zeros([1], (scope.kind(), scope.device()))?);
            Ok(Self::Sinusoidal { table })
        }
    }

    /// Embeddings `[batch, len, dim]` of `positions` (`[batch, len]`, from [`make_positions`]
    /// or `padding_idx + step + 1` when decoding incrementally).
    pub(crate) fn forward(&self, positions: &Tensor) -> Result<Tensor> {
        match self {
            Self::Sinusoidal { table } => {
                let size = positions.size();
                let flat = positions.f_reshape([-1])?;
                let rows = table.f_index_select(0, &flat)?;
                let mut shape = size;
                shape.push(table.size()[1]);
                Ok(rows.f_reshape(shape)?)
            }
            Self::Learned { weight, padding_idx } => {
                Ok(Tensor::f_embedding(weight, positions, *padding_idx, false, false)?)
            }
        }
    }
}
