//! What the families' graph builders share: [`Net`], a graph under construction with the
//! checkpoint weights it reads, in the export dtype, with the casts in and out of fp32 islands
//! and linear layers stored as `MatMul`-ready `[in, out]` weights.

use seqforge_schemas::contract::Dtype;

use crate::error::Result;
use crate::graph::{DType, GraphBuilder, Value};
use crate::transformer::BuildOptions;
use crate::weights::{Weights, transpose};

/// `usize` → ONNX `i64` dimension.
pub(crate) fn i(v: usize) -> i64 {
    v as i64
}

/// A graph under construction with the weights it reads.
pub(crate) struct Net<'w> {
    /// The graph.
    pub(crate) g: GraphBuilder,
    /// The checkpoint's tensors.
    pub(crate) w: &'w Weights,
    /// The model dtype.
    pub(crate) t: DType,
}

/// A linear layer's initializers: the weight transposed to `[in, out]` and the bias.
pub(crate) struct Linear {
    weight_t: Value,
    bias: Option<Value>,
}

impl<'w> Net<'w> {
    /// An empty graph `name` in the dtype of `options`.
    pub(crate) fn new(name: &str, w: &'w Weights, options: BuildOptions) -> Self {
        let t = match options.dtype {
            Dtype::Fp32 => DType::F32,
            Dtype::Fp16 => DType::F16,
        };
        Self { g: GraphBuilder::new(name), w, t }
    }

    /// Tensor `name` of `shape` as an initializer of the model dtype under the same name.
    pub(crate) fn param(&mut self, name: &str, shape: &[usize]) -> Result<Value> {
        let data = self.w.get(name, shape)?;
        let dims: Vec<i64> = shape.iter().map(|&d| i(d)).collect();
        self.g.initializer_float(name, self.t, &dims, data)
    }

    /// To fp32 (a no-op name-wise in fp32 graphs).
    pub(crate) fn up(&mut self, out: &str, x: &Value) -> Result<Value> {
        if x.dtype() == DType::F32 { Ok(x.clone()) } else { self.g.cast(out, x, DType::F32) }
    }

    /// Back to the model dtype.
    pub(crate) fn down(&mut self, out: &str, x: &Value) -> Result<Value> {
        if x.dtype() == self.t { Ok(x.clone()) } else { self.g.cast(out, x, self.t) }
    }

    /// `prefix.weight` `[out, in]` (and `prefix.bias`) as initializers for `x @ W^T + b`,
    /// stored once however often [`Net::apply`] uses them.
    pub(crate) fn linear_weights(
        &mut self,
        prefix: &str,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
    ) -> Result<Linear> {
        let weight = self.w.get(&format!("{prefix}.weight"), &[out_dim, in_dim])?;
        let transposed = transpose(weight, out_dim, in_dim);
        let weight_t = self.g.initializer_float(
            &format!("{prefix}.weight_t"),
            self.t,
            &[i(in_dim), i(out_dim)],
            &transposed,
        )?;
        let bias =
            if bias { Some(self.param(&format!("{prefix}.bias"), &[out_dim])?) } else { None };
        Ok(Linear { weight_t, bias })
    }

    /// `name` = `x @ W^T (+ b)` of `layer`.
    pub(crate) fn apply(&mut self, name: &str, x: &Value, layer: &Linear) -> Result<Value> {
        match &layer.bias {
            Some(b) => {
                let xw = self.g.matmul(&format!("{name}.matmul"), x, &layer.weight_t)?;
                self.g.add(name, &xw, b)
            }
            None => self.g.matmul(name, x, &layer.weight_t),
        }
    }
}
