//! What the families' graph builders share: [`Net`], a graph under construction with the
//! checkpoint weights it reads, in the export dtype, with the casts in and out of fp32 islands
//! and linear layers stored as `MatMul`-ready `[in, out]` weights.
//!
//! In INT8 exports ([`Dtype::Int8`]) the activations stay fp32 while linear layers, embedding
//! tables and output projections hold 8-bit weights: each output row of a weight (a row of
//! PyTorch's `[out, in]`, a vocabulary row of an embedding) is scaled by its largest magnitude
//! and rounded (symmetric, no zero point), with the fp32 scale kept per row. Linear layers and
//! projections run as ONNX Runtime's `DynamicQuantizeMatMul` (the input is quantized to u8 per
//! call, integer GEMM, result rescaled to fp32); their weights use 7 bits (`[-63, 63]`,
//! [`GEMM_LEVELS`]: ONNX Runtime's `reduce_range`), because the u8 × s8 kernels of CPUs without
//! VNNI (AVX2's `vpmaddubsw`) add two products in 16 bits and saturate beyond that — measured:
//! max |diff| of log-probs 1.27 vs 0.07 on an AVX2 machine. An embedding lookup gathers int8 rows
//! in the full `[-127, 127]` ([`LOOKUP_LEVELS`]) and multiplies them back by their scales.

use std::collections::HashMap;

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
    /// The model dtype (of activations and float weights).
    pub(crate) t: DType,
    /// Whether weights are quantized to int8 (see the module documentation).
    quantize: bool,
    /// Initializers made so far by name, so that a tied weight is stored once per graph.
    made: HashMap<String, Value>,
}

/// A linear layer's weight: float `[in, out]`, or int8 `[in, out]` with one scale per output.
enum LinearWeight {
    Float(Value),
    Int8 { q: Value, scale: Value },
}

/// A linear layer's initializers: the weight transposed to `[in, out]` and the bias.
pub(crate) struct Linear {
    weight: LinearWeight,
    bias: Option<Value>,
}

/// Quantization levels of weights that an integer GEMM multiplies (7 bits: see the module
/// documentation).
pub const GEMM_LEVELS: f32 = 63.0;

/// Quantization levels of embedding rows that are only looked up.
pub const LOOKUP_LEVELS: f32 = 127.0;

/// Symmetric per-row quantization of a row-major `[rows, cols]` matrix to `[-levels, levels]`:
/// int8 values and one scale per row (`max |row| / levels`; an all-zero row gets scale 0 and
/// zeros).
pub fn quantize_rows(w: &[f32], rows: usize, cols: usize, levels: f32) -> (Vec<i8>, Vec<f32>) {
    let mut q = vec![0i8; rows * cols];
    let mut scales = vec![0f32; rows];
    for r in 0..rows {
        let row = &w[r * cols..(r + 1) * cols];
        let max = row.iter().fold(0f32, |m, &v| m.max(v.abs()));
        let scale = max / levels;
        scales[r] = scale;
        if scale > 0.0 {
            for (out, &v) in q[r * cols..(r + 1) * cols].iter_mut().zip(row) {
                *out = (v / scale).round().clamp(-levels, levels) as i8;
            }
        }
    }
    (q, scales)
}

impl<'w> Net<'w> {
    /// An empty graph `name` in the dtype of `options`.
    pub(crate) fn new(name: &str, w: &'w Weights, options: BuildOptions) -> Self {
        let t = match options.dtype {
            Dtype::Fp32 | Dtype::Int8 => DType::F32,
            Dtype::Fp16 => DType::F16,
        };
        let quantize = options.dtype == Dtype::Int8;
        Self { g: GraphBuilder::new(name), w, t, quantize, made: HashMap::new() }
    }

    /// The initializer `name`, made by `make` the first time it is asked for.
    fn once(&mut self, name: &str, make: impl FnOnce(&mut Self) -> Result<Value>) -> Result<Value> {
        if let Some(v) = self.made.get(name) {
            return Ok(v.clone());
        }
        let v = make(self)?;
        self.made.insert(name.to_string(), v.clone());
        Ok(v)
    }

    /// Tensor `name` of `shape` as an initializer of the model dtype under the same name
    /// (made once per graph).
    pub(crate) fn param(&mut self, name: &str, shape: &[usize]) -> Result<Value> {
        self.once(name, |n| {
            let data = n.w.get(name, shape)?;
            let dims: Vec<i64> = shape.iter().map(|&d| i(d)).collect();
            n.g.initializer_float(name, n.t, &dims, data)
        })
    }

    /// Row-quantized `table` `[rows, cols]`: `(int8 [rows, cols], scales [rows])`, or with
    /// `transposed` the int8 values as `[cols, rows]` for [`GraphBuilder::dynamic_quantize_matmul`].
    fn quantized(
        &mut self,
        table: &str,
        rows: usize,
        cols: usize,
        transposed: bool,
    ) -> Result<(Value, Value)> {
        let levels = if transposed { GEMM_LEVELS } else { LOOKUP_LEVELS };
        let (q, scales) = quantize_rows(self.w.get(table, &[rows, cols])?, rows, cols, levels);
        let scale_name = format!("{table}.{}", if transposed { "gemm_scale" } else { "scale" });
        let scale =
            self.once(&scale_name, |n| n.g.initializer_f32(&scale_name, &[i(rows)], &scales))?;
        let q = if transposed {
            self.once(&format!("{table}.int8_t"), |n| {
                let t = transpose(&q, rows, cols);
                n.g.initializer_i8(&format!("{table}.int8_t"), &[i(cols), i(rows)], &t)
            })?
        } else {
            self.once(&format!("{table}.int8"), |n| {
                n.g.initializer_i8(&format!("{table}.int8"), &[i(rows), i(cols)], &q)
            })?
        };
        Ok((q, scale))
    }

    /// `out` = the rows of embedding table `table` (`[rows, dim]`) that `ids` pick, in the
    /// model dtype (int8 rows times their scales in INT8 exports).
    pub(crate) fn embedding(
        &mut self,
        out: &str,
        table: &str,
        rows: usize,
        dim: usize,
        ids: &Value,
    ) -> Result<Value> {
        if !self.quantize {
            let t = self.param(table, &[rows, dim])?;
            return self.g.gather(out, &t, ids, 0);
        }
        let (q, scale) = self.quantized(table, rows, dim, false)?;
        let picked = self.g.gather(&format!("{out}.int8"), &q, ids, 0)?;
        let picked = self.g.cast(&format!("{out}.int8_f32"), &picked, DType::F32)?;
        let scales = self.g.gather(&format!("{out}.scale"), &scale, ids, 0)?;
        let scales = self.g.unsqueeze(&format!("{out}.scale_column"), &scales, &[-1])?;
        self.g.mul(out, &picked, &scales)
    }

    /// `out` = `features` `[R, dim]` times `table` (`[rows, dim]`, PyTorch's `[out, in]`)
    /// transposed, plus `bias` `[rows]` when given: an output projection (or the tied
    /// embedding used as one).
    pub(crate) fn projection(
        &mut self,
        out: &str,
        features: &Value,
        table: &str,
        (rows, dim): (usize, usize),
        bias: Option<&str>,
    ) -> Result<Value> {
        let bias = match bias {
            Some(b) => Some(self.param(b, &[rows])?),
            None => None,
        };
        if self.quantize {
            let (q, scale) = self.quantized(table, rows, dim, true)?;
            return self.g.dynamic_quantize_matmul(out, features, &q, &scale, bias.as_ref());
        }
        let t = self.param(table, &[rows, dim])?;
        match bias {
            Some(b) => {
                let l = self.g.gemm_transposed_b(&format!("{out}.matmul"), features, &t)?;
                self.g.add(out, &l, &b)
            }
            None => self.g.gemm_transposed_b(out, features, &t),
        }
    }

    /// To fp32 (a no-op name-wise in fp32 graphs).
    pub(crate) fn up(&mut self, out: &str, x: &Value) -> Result<Value> {
        if x.dtype() == DType::F32 { Ok(x.clone()) } else { self.g.cast(out, x, DType::F32) }
    }

    /// Back to the model dtype.
    pub(crate) fn down(&mut self, out: &str, x: &Value) -> Result<Value> {
        if x.dtype() == self.t { Ok(x.clone()) } else { self.g.cast(out, x, self.t) }
    }

    /// The decoder step's outputs over the vocabulary: `log_probs` (f32 `[R, V]`) as a graph
    /// output, and its `top_k` best per row (graph input `top_k`, outputs `top_log_probs` and
    /// `top_ids`; see [`seqforge_schemas::contract::names::TOP_K`]).
    pub(crate) fn output_log_probs(&mut self, log_probs: &Value) -> Result<()> {
        use seqforge_schemas::contract::names;
        self.g.output(log_probs);
        let k = self.g.input(names::TOP_K, DType::I64, vec![crate::graph::Dim::Fixed(1)])?;
        let (values, ids) = self.g.top_k((names::TOP_LOG_PROBS, names::TOP_IDS), log_probs, &k)?;
        self.g.output(&values);
        self.g.output(&ids);
        Ok(())
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
        let data = self.w.get(&format!("{prefix}.weight"), &[out_dim, in_dim])?;
        let weight = self.linear_weight(prefix, data, out_dim, in_dim)?;
        let bias =
            if bias { Some(self.param(&format!("{prefix}.bias"), &[out_dim])?) } else { None };
        Ok(Linear { weight, bias })
    }

    /// A linear layer from a computed `[out_dim, in_dim]` weight `data` (e.g. a
    /// weight-normalised one, stored under `prefix`) and the checkpoint's bias `bias`.
    pub(crate) fn linear_from_data(
        &mut self,
        prefix: &str,
        data: &[f32],
        (out_dim, in_dim): (usize, usize),
        bias: Option<&str>,
    ) -> Result<Linear> {
        let weight = self.linear_weight(prefix, data, out_dim, in_dim)?;
        let bias = match bias {
            Some(b) => Some(self.param(b, &[out_dim])?),
            None => None,
        };
        Ok(Linear { weight, bias })
    }

    /// The linear layers `prefixes` (each `[out_dim, in_dim]` with a bias) as one layer of
    /// `prefixes.len() · out_dim` outputs, their outputs side by side (e.g. one GEMM for the
    /// query, key and value projections instead of three). Each output column is computed as
    /// in its own layer (per-row quantization too), stored under `name`.
    pub(crate) fn fused_linear_weights(
        &mut self,
        name: &str,
        prefixes: &[&str],
        in_dim: usize,
        out_dim: usize,
    ) -> Result<Linear> {
        let rows = prefixes.len() * out_dim;
        let mut weight = Vec::with_capacity(rows * in_dim);
        let mut bias = Vec::with_capacity(rows);
        for prefix in prefixes {
            weight.extend_from_slice(self.w.get(&format!("{prefix}.weight"), &[out_dim, in_dim])?);
            bias.extend_from_slice(self.w.get(&format!("{prefix}.bias"), &[out_dim])?);
        }
        let bias =
            Some(self.g.initializer_float(&format!("{name}.bias"), self.t, &[i(rows)], &bias)?);
        let weight = self.linear_weight(name, &weight, rows, in_dim)?;
        Ok(Linear { weight, bias })
    }

    /// The initializers of a linear layer's `[out_dim, in_dim]` weight `data`: transposed to
    /// `[in, out]` as `{prefix}.weight_t`, or in INT8 exports quantized per output row as
    /// `{prefix}.weight.int8_t` and `{prefix}.weight.scale`.
    fn linear_weight(
        &mut self,
        prefix: &str,
        data: &[f32],
        out_dim: usize,
        in_dim: usize,
    ) -> Result<LinearWeight> {
        if self.quantize {
            let (q, scales) = quantize_rows(data, out_dim, in_dim, GEMM_LEVELS);
            let q = transpose(&q, out_dim, in_dim);
            let (q_name, s_name) =
                (format!("{prefix}.weight.int8_t"), format!("{prefix}.weight.scale"));
            return Ok(LinearWeight::Int8 {
                q: self.g.initializer_i8(&q_name, &[i(in_dim), i(out_dim)], &q)?,
                scale: self.g.initializer_f32(&s_name, &[i(out_dim)], &scales)?,
            });
        }
        let t = transpose(data, out_dim, in_dim);
        let name = format!("{prefix}.weight_t");
        Ok(LinearWeight::Float(self.g.initializer_float(
            &name,
            self.t,
            &[i(in_dim), i(out_dim)],
            &t,
        )?))
    }

    /// `name` = `x @ W^T (+ b)` of `layer`.
    pub(crate) fn apply(&mut self, name: &str, x: &Value, layer: &Linear) -> Result<Value> {
        match (&layer.weight, &layer.bias) {
            (LinearWeight::Int8 { q, scale }, bias) => {
                self.g.dynamic_quantize_matmul(name, x, q, scale, bias.as_ref())
            }
            (LinearWeight::Float(w), Some(b)) => {
                let xw = self.g.matmul(&format!("{name}.matmul"), x, w)?;
                self.g.add(name, &xw, b)
            }
            (LinearWeight::Float(w), None) => self.g.matmul(name, x, w),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{GEMM_LEVELS, LOOKUP_LEVELS, quantize_rows};

    #[test]
    fn rows_are_quantized_symmetrically_each_with_its_own_scale() {
        let w = [1.0, -0.5, 0.25, 0.0, 0.0, 0.0, -254.0, 127.0, 1.0];
        let (q, scales) = quantize_rows(&w, 3, 3, LOOKUP_LEVELS);
        assert_eq!(scales, vec![1.0 / 127.0, 0.0, 2.0]);
        assert_eq!(q, vec![127, -64, 32, 0, 0, 0, -127, 64, 1]);
        // GEMM weights: 7 bits, so that u8 × s8 pairs cannot saturate 16-bit sums.
        let (q, scales) = quantize_rows(&w, 3, 3, GEMM_LEVELS);
        assert_eq!(scales, vec![1.0 / 63.0, 0.0, 254.0 / 63.0]);
        assert!(q.iter().all(|&v| (-63..=63).contains(&v)) && q[0] == 63 && q[6] == -63);
        // Dequantized values are within half a step of the originals.
        for r in 0..3 {
            for c in 0..3 {
                let back = f32::from(q[r * 3 + c]) * scales[r];
                assert!((back - w[r * 3 + c]).abs() <= scales[r] / 2.0 + 1e-6, "{r},{c}");
            }
        }
    }
}
