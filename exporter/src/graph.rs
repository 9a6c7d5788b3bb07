//! An ONNX graph builder: typed values, one method per operator, checks as nodes are added.
//!
//! ```
//! use seqforge_exporter::graph::{DType, Dim, GraphBuilder};
//! # fn main() -> seqforge_exporter::Result<()> {
//! let mut g = GraphBuilder::new("affine");
//! let x = g.input("x", DType::F32, vec![Dim::named("batch"), Dim::Fixed(2)])?;
//! let w = g.initializer_f32("w", &[2, 3], &[1.0, 0.0, 0.0, 0.0, 1.0, 0.0])?;
//! let y = g.matmul("y", &x, &w)?;
//! g.output(&y);
//! let model = g.finish(&[("producer", "doc-test")]);
//! assert_eq!(model.graph.map(|g| g.node.len()), Some(1));
//! # Ok(())
//! # }
//! ```

use std::collections::HashSet;

use half::f16;
use seqforge_schemas::onnx::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto, attribute_proto::AttributeType,
    tensor_proto::DataType, tensor_shape_proto, type_proto,
};

use crate::{Error, Result};

/// The ONNX operator set the builder targets.
pub const OPSET: i64 = 17;

/// ONNX Runtime's contrib operator domain (version 1), imported only by graphs that use one of
/// its operators (INT8 exports).
pub const MICROSOFT_DOMAIN: &str = "com.microsoft";

/// Element types used by seqforge graphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    /// 32-bit float.
    F32,
    /// 16-bit IEEE float.
    F16,
    /// 64-bit signed integer (token ids, shapes).
    I64,
    /// 32-bit signed integer (sequence lengths of recurrent ops).
    I32,
    /// Boolean (masks).
    Bool,
    /// 8-bit signed integer (quantized weights).
    I8,
}

impl DType {
    /// The ONNX `TensorProto.DataType` code.
    pub fn onnx(self) -> i32 {
        let code = match self {
            Self::F32 => DataType::Float,
            Self::F16 => DataType::Float16,
            Self::I64 => DataType::Int64,
            Self::I32 => DataType::Int32,
            Self::Bool => DataType::Bool,
            Self::I8 => DataType::Int8,
        };
        code as i32
    }
}

/// One dimension of a shape: a number, or a symbolic name (dynamic axis).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    /// A fixed size.
    Fixed(i64),
    /// A dynamic size with a name shared by the axes that must agree.
    Named(String),
}

impl Dim {
    /// A named (dynamic) dimension.
    pub fn named(name: &str) -> Self {
        Self::Named(name.to_string())
    }
}

/// A value in the graph: a name with its dtype and (possibly symbolic) shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    name: String,
    dtype: DType,
    shape: Vec<Dim>,
}

impl Value {
    /// Its name in the graph.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Its element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Its shape.
    pub fn shape(&self) -> &[Dim] {
        &self.shape
    }
}

/// Builds one ONNX graph.
#[derive(Debug)]
pub struct GraphBuilder {
    name: String,
    names: HashSet<String>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    initializers: Vec<TensorProto>,
    nodes: Vec<NodeProto>,
    /// Whether a node of ONNX Runtime's `com.microsoft` domain was added.
    uses_microsoft: bool,
}

impl GraphBuilder {
    /// An empty graph called `name`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            names: HashSet::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            initializers: Vec::new(),
            nodes: Vec::new(),
            uses_microsoft: false,
        }
    }

    fn claim(&mut self, name: &str) -> Result<()> {
        if self.names.insert(name.to_string()) {
            Ok(())
        } else {
            Err(Error::DuplicateName(name.to_string()))
        }
    }

    /// Declares a graph input.
    pub fn input(&mut self, name: &str, dtype: DType, shape: Vec<Dim>) -> Result<Value> {
        self.claim(name)?;
        let value = Value { name: name.to_string(), dtype, shape };
        self.inputs.push(value_info(&value));
        Ok(value)
    }

    /// Declares a graph output (an existing value).
    pub fn output(&mut self, value: &Value) {
        self.outputs.push(value_info(value));
    }

    /// Adds an f32 constant tensor.
    pub fn initializer_f32(&mut self, name: &str, dims: &[i64], data: &[f32]) -> Result<Value> {
        self.initializer(name, dims, DType::F32, data.len(), |t| t.float_data = data.to_vec())
    }

    /// Adds an f16 constant tensor (stored as raw little-endian bytes).
    pub fn initializer_f16(&mut self, name: &str, dims: &[i64], data: &[f16]) -> Result<Value> {
        self.initializer(name, dims, DType::F16, data.len(), |t| {
            t.raw_data = Some(data.iter().flat_map(|v| v.to_le_bytes()).collect());
        })
    }

    /// Adds an i8 constant tensor (quantized weights, stored as raw bytes).
    pub fn initializer_i8(&mut self, name: &str, dims: &[i64], data: &[i8]) -> Result<Value> {
        self.initializer(name, dims, DType::I8, data.len(), |t| {
            t.raw_data = Some(data.iter().map(|&v| v as u8).collect());
        })
    }

    fn initializer(
        &mut self,
        name: &str,
        dims: &[i64],
        dtype: DType,
        len: usize,
        fill: impl FnOnce(&mut TensorProto),
    ) -> Result<Value> {
        let expected = dims.iter().map(|&d| d.max(0) as usize).product::<usize>();
        if expected != len {
            return Err(Error::InitializerSize {
                name: name.to_string(),
                dims: dims.to_vec(),
                expected,
                got: len,
            });
        }
        self.claim(name)?;
        let mut tensor = TensorProto {
            name: Some(name.to_string()),
            dims: dims.to_vec(),
            data_type: Some(dtype.onnx()),
            ..Default::default()
        };
        fill(&mut tensor);
        self.initializers.push(tensor);
        Ok(Value {
            name: name.to_string(),
            dtype,
            shape: dims.iter().map(|&d| Dim::Fixed(d)).collect(),
        })
    }

    fn node(
        &mut self,
        op: &str,
        out: &str,
        inputs: &[&Value],
        attributes: Vec<AttributeProto>,
        dtype: DType,
        shape: Vec<Dim>,
    ) -> Result<Value> {
        self.claim(out)?;
        self.nodes.push(NodeProto {
            name: Some(out.to_string()),
            op_type: Some(op.to_string()),
            input: inputs.iter().map(|v| v.name.clone()).collect(),
            output: vec![out.to_string()],
            attribute: attributes,
            ..Default::default()
        });
        Ok(Value { name: out.to_string(), dtype, shape })
    }

    /// ONNX Runtime's `com.microsoft.DynamicQuantizeMatMul`: `a` (f32 `[..., K]`, quantized to
    /// u8 per call) times `b` (i8 `[K, N]`, symmetric, one `scale` per column `[N]`), plus an
    /// optional f32 `bias` `[N]`, in f32: ONNX Runtime's integer GEMM kernels (VNNI where the
    /// CPU has it).
    pub fn dynamic_quantize_matmul(
        &mut self,
        out: &str,
        a: &Value,
        b: &Value,
        scale: &Value,
        bias: Option<&Value>,
    ) -> Result<Value> {
        let fail = |message: String| Error::Node { node: out.to_string(), message };
        require_dtype(out, a, &[DType::F32])?;
        require_dtype(out, b, &[DType::I8])?;
        require_dtype(out, scale, &[DType::F32])?;
        if a.shape.is_empty() || b.shape.len() != 2 {
            return Err(fail(format!(
                "needs a rank ≥ 1 input and a rank-2 weight, got {} and {}",
                a.shape.len(),
                b.shape.len()
            )));
        }
        if !dims_compatible(&a.shape[a.shape.len() - 1], &b.shape[0]) {
            return Err(fail(format!(
                "contracted dims differ: {:?} vs {:?}",
                a.shape[a.shape.len() - 1],
                b.shape[0]
            )));
        }
        let mut shape = a.shape[..a.shape.len() - 1].to_vec();
        shape.push(b.shape[1].clone());
        if let Some(bias) = bias {
            require_dtype(out, bias, &[DType::F32])?;
        }
        // Inputs: A, B, b_scale, b_zero_point (absent: symmetric), bias.
        let inputs = [Some(a), Some(b), Some(scale), None, bias];
        let outputs = [(out, DType::F32, shape)];
        let mut made = self.microsoft_node("DynamicQuantizeMatMul", &inputs, &outputs, vec![])?;
        made.pop().ok_or_else(|| fail("no output".into()))
    }

    /// ONNX Runtime's `com.microsoft.MultiHeadAttention` (f32 on the CPU) for one query
    /// position: `q` `[R, 1, H·D]` (already scaled: the kernel's scale is 1), then either
    /// - self-attention: `k`, `v` `[R, 1, H·D]` of this step appended to `past`
    ///   (`[R, H, P, D]` each), returning `(context [R, 1, H·D], Some(present_k, present_v))`
    ///   named `present` (`[R, H, P + 1, D]`);
    /// - cross-attention: `k`, `v` `[R, H, S, D]` (projected once by the encoder) and an
    ///   additive f32 `bias` `[R, 1, 1, S]`, returning `(context, None)`.
    ///
    /// One node instead of the reshapes, transposes, matmuls, softmax and concatenations of
    /// the plain graph; the same maths up to the order of the additions.
    #[allow(clippy::too_many_arguments)]
    pub fn multi_head_attention(
        &mut self,
        out: &str,
        (q, k, v): (&Value, &Value, &Value),
        bias: Option<&Value>,
        past: Option<(&Value, &Value)>,
        present: Option<(&str, &str)>,
        heads: usize,
    ) -> Result<(Value, Option<(Value, Value)>)> {
        let fail = |message: String| Error::Node { node: out.to_string(), message };
        for x in [q, k, v] {
            require_dtype(out, x, &[DType::F32])?;
        }
        if q.shape.len() != 3 {
            return Err(fail(format!("query must be [R, 1, H·D], got rank {}", q.shape.len())));
        }
        let mut outputs = vec![(out, DType::F32, q.shape.clone())];
        let grown = |p: &Value| -> Result<Vec<Dim>> {
            if p.shape.len() != 4 {
                return Err(fail(format!("past must be [R, H, P, D], got rank {}", p.shape.len())));
            }
            let mut shape = p.shape.clone();
            shape[0] = q.shape[0].clone();
            shape[2] = match &p.shape[2] {
                Dim::Fixed(n) => Dim::Fixed(n + 1),
                Dim::Named(n) => Dim::Named(format!("{n}+1")),
            };
            Ok(shape)
        };
        match (past, present) {
            (Some((pk, pv)), Some((name_k, name_v))) => {
                outputs.push((name_k, DType::F32, grown(pk)?));
                outputs.push((name_v, DType::F32, grown(pv)?));
            }
            (None, None) => {}
            _ => return Err(fail("past and present go together".into())),
        }
        let (pk, pv) = past.unzip();
        // Inputs: query, key, value, bias (packed projections: none), key_padding_mask (none),
        // attention_bias, past_key, past_value.
        let inputs = [Some(q), Some(k), Some(v), None, None, bias, pk, pv];
        let attributes =
            vec![int_attribute("num_heads", heads as i64), float_attribute("scale", 1.0)];
        let mut made = self.microsoft_node("MultiHeadAttention", &inputs, &outputs, attributes)?;
        let presents = if made.len() == 3 {
            let v = made.pop().ok_or_else(|| fail("no present value".into()))?;
            let k = made.pop().ok_or_else(|| fail("no present key".into()))?;
            Some((k, v))
        } else {
            None
        };
        let context = made.pop().ok_or_else(|| fail("no output".into()))?;
        Ok((context, presents))
    }

    /// ONNX Runtime's `com.microsoft.GroupQueryAttention` over one query position per row with
    /// a key/value cache of some capacity updated in place: `qkv` packs the query, key and
    /// value projections `[R, 1, 3·H·D]` (query heads, then key heads, then value heads),
    /// `past` are `[R, H, C, D]` buffers holding positions `0..seqlens_k[r]`, `seqlens_k` int32
    /// `[R]` is each row's position and `total` int32 `[1]` the position plus one. The step's
    /// key and value land at that position of `present` (`[R, H, C, D]`, the same memory as
    /// `past` when the caller binds them so); the context `[R, 1, H·D]` is softmax(q·kᵀ/√D)·v
    /// over positions `0..=position`. The CPU kernel needs `D` to be a multiple of 8.
    pub fn group_query_attention(
        &mut self,
        out: &str,
        qkv: &Value,
        (past_k, past_v): (&Value, &Value),
        (seqlens_k, total): (&Value, &Value),
        (present_k, present_v): (&str, &str),
        heads: usize,
    ) -> Result<(Value, (Value, Value))> {
        let fail = |message: String| Error::Node { node: out.to_string(), message };
        require_dtype(out, qkv, &[DType::F32])?;
        for p in [past_k, past_v] {
            require_dtype(out, p, &[DType::F32])?;
            if p.shape.len() != 4 {
                return Err(fail(format!("past must be [R, H, C, D], got rank {}", p.shape.len())));
            }
        }
        for x in [seqlens_k, total] {
            require_dtype(out, x, &[DType::I32])?;
        }
        let (rows, width) = match qkv.shape.as_slice() {
            [r, Dim::Fixed(1), Dim::Fixed(w)] => (r.clone(), *w),
            _ => return Err(fail(format!("qkv must be [R, 1, 3·H·D], got {:?}", qkv.shape))),
        };
        let h = heads as i64;
        if h == 0 || width % (3 * h) != 0 || (width / (3 * h)) % 8 != 0 {
            return Err(fail(format!(
                "qkv width {width} is not 3 × {heads} heads × a head size that is a multiple of 8"
            )));
        }
        let context = vec![rows, Dim::Fixed(1), Dim::Fixed(width / 3)];
        let outputs = [
            (out, DType::F32, context),
            (present_k, DType::F32, past_k.shape.clone()),
            (present_v, DType::F32, past_v.shape.clone()),
        ];
        // Inputs: query (packed), key, value (none: packed), past_key, past_value, seqlens_k,
        // total_sequence_length.
        let inputs =
            [Some(qkv), None, None, Some(past_k), Some(past_v), Some(seqlens_k), Some(total)];
        let attributes = vec![
            int_attribute("num_heads", heads as i64),
            int_attribute("kv_num_heads", heads as i64),
        ];
        let mut made = self.microsoft_node("GroupQueryAttention", &inputs, &outputs, attributes)?;
        let v = made.pop().ok_or_else(|| fail("no present value".into()))?;
        let k = made.pop().ok_or_else(|| fail("no present key".into()))?;
        let context = made.pop().ok_or_else(|| fail("no output".into()))?;
        Ok((context, (k, v)))
    }

    /// `Expand(x, shape)`: `x` broadcast to the 1-D i64 `shape` (numpy rules); `dims` is the
    /// resulting shape as far as it is known.
    pub fn expand(&mut self, out: &str, x: &Value, shape: &Value, dims: Vec<Dim>) -> Result<Value> {
        require_dtype(out, shape, &[DType::I64])?;
        self.node("Expand", out, &[x, shape], Vec::new(), x.dtype, dims)
    }

    /// A node of ONNX Runtime's `com.microsoft` domain: `inputs` in order (`None`: an omitted
    /// optional input, written as an empty name; trailing ones are dropped), one value per
    /// `(name, dtype, shape)` of `outputs`.
    fn microsoft_node(
        &mut self,
        op: &str,
        inputs: &[Option<&Value>],
        outputs: &[(&str, DType, Vec<Dim>)],
        attributes: Vec<AttributeProto>,
    ) -> Result<Vec<Value>> {
        for (name, _, _) in outputs {
            self.claim(name)?;
        }
        let used = inputs.iter().rposition(Option::is_some).map_or(0, |p| p + 1);
        self.nodes.push(NodeProto {
            name: Some(outputs.first().map_or(op, |o| o.0).to_string()),
            op_type: Some(op.to_string()),
            domain: Some(MICROSOFT_DOMAIN.to_string()),
            input: inputs[..used]
                .iter()
                .map(|v| v.map_or(String::new(), |v| v.name.clone()))
                .collect(),
            output: outputs.iter().map(|(name, _, _)| (*name).to_string()).collect(),
            attribute: attributes,
            ..Default::default()
        });
        self.uses_microsoft = true;
        Ok(outputs
            .iter()
            .map(|(name, dtype, shape)| Value {
                name: (*name).to_string(),
                dtype: *dtype,
                shape: shape.clone(),
            })
            .collect())
    }

    /// `MatMul(a, b)` with numpy semantics; the contracted dimensions must agree.
    pub fn matmul(&mut self, out: &str, a: &Value, b: &Value) -> Result<Value> {
        let fail = |message: String| Error::Node { node: out.to_string(), message };
        same_dtype(out, a, b)?;
        if a.shape.len() < 2 || b.shape.len() < 2 {
            return Err(fail(format!(
                "MatMul needs rank ≥ 2 inputs, got {} and {}",
                a.shape.len(),
                b.shape.len()
            )));
        }
        let k_a = &a.shape[a.shape.len() - 1];
        let k_b = &b.shape[b.shape.len() - 2];
        if !dims_compatible(k_a, k_b) {
            return Err(fail(format!("contracted dims differ: {k_a:?} vs {k_b:?}")));
        }
        let batch_a = &a.shape[..a.shape.len() - 2];
        let batch_b = &b.shape[..b.shape.len() - 2];
        let mut shape = broadcast(batch_a, batch_b).map_err(fail)?;
        shape.push(a.shape[a.shape.len() - 2].clone());
        shape.push(b.shape[b.shape.len() - 1].clone());
        self.node("MatMul", out, &[a, b], vec![], a.dtype, shape)
    }

    /// `Add(a, b)` with numpy broadcasting.
    pub fn add(&mut self, out: &str, a: &Value, b: &Value) -> Result<Value> {
        same_dtype(out, a, b)?;
        let shape = broadcast(&a.shape, &b.shape)
            .map_err(|message| Error::Node { node: out.to_string(), message })?;
        self.node("Add", out, &[a, b], vec![], a.dtype, shape)
    }

    /// `Softmax(x)` along `axis` (negative counts from the end).
    pub fn softmax(&mut self, out: &str, x: &Value, axis: i64) -> Result<Value> {
        let rank = x.shape.len() as i64;
        if axis < -rank || axis >= rank {
            return Err(Error::Node {
                node: out.to_string(),
                message: format!("axis {axis} out of range for rank {rank}"),
            });
        }
        if !matches!(x.dtype, DType::F32 | DType::F16) {
            return Err(Error::Node {
                node: out.to_string(),
                message: format!("Softmax needs a float input, got {:?}", x.dtype),
            });
        }
        self.node("Softmax", out, &[x], vec![int_attribute("axis", axis)], x.dtype, x.shape.clone())
    }

    /// `Cast(x)` to another element type.
    pub fn cast(&mut self, out: &str, x: &Value, to: DType) -> Result<Value> {
        let attributes = vec![int_attribute("to", i64::from(to.onnx()))];
        self.node("Cast", out, &[x], attributes, to, x.shape.clone())
    }

    /// Adds an i64 constant tensor (shapes, axes, indices).
    pub fn initializer_i64(&mut self, name: &str, dims: &[i64], data: &[i64]) -> Result<Value> {
        self.initializer(name, dims, DType::I64, data.len(), |t| t.int64_data = data.to_vec())
    }

    /// Adds float constant data as `dtype` (`F32` or `F16`, converted here).
    pub fn initializer_float(
        &mut self,
        name: &str,
        dtype: DType,
        dims: &[i64],
        data: &[f32],
    ) -> Result<Value> {
        match dtype {
            DType::F32 => self.initializer_f32(name, dims, data),
            DType::F16 => {
                let halves: Vec<f16> = data.iter().map(|&v| f16::from_f32(v)).collect();
                self.initializer_f16(name, dims, &halves)
            }
            other => Err(Error::Node {
                node: name.to_string(),
                message: format!("a float initializer cannot have dtype {other:?}"),
            }),
        }
    }

    /// A rank-0 float constant of `dtype` (`F32` or `F16`).
    pub fn scalar(&mut self, name: &str, dtype: DType, value: f32) -> Result<Value> {
        self.initializer_float(name, dtype, &[], &[value])
    }

    /// `Gather(data, indices, axis)`: `indices` (int64) picks slices of `data` along `axis`.
    pub fn gather(&mut self, out: &str, data: &Value, indices: &Value, axis: i64) -> Result<Value> {
        require_dtype(out, indices, &[DType::I64])?;
        let axis = normalize_axis(out, axis, data.shape.len())?;
        let mut shape = data.shape[..axis].to_vec();
        shape.extend(indices.shape.iter().cloned());
        shape.extend(data.shape[axis + 1..].iter().cloned());
        let attributes = vec![int_attribute("axis", axis as i64)];
        self.node("Gather", out, &[data, indices], attributes, data.dtype, shape)
    }

    /// `Gemm(a, b, transB=1)`: `a` `[M, K]` times `b` `[N, K]` transposed, giving `[M, N]`
    /// (a linear layer on a weight stored as PyTorch does, `[out, in]`).
    pub fn gemm_transposed_b(&mut self, out: &str, a: &Value, b: &Value) -> Result<Value> {
        let fail = |message: String| Error::Node { node: out.to_string(), message };
        same_dtype(out, a, b)?;
        require_float(out, a)?;
        if a.shape.len() != 2 || b.shape.len() != 2 {
            return Err(fail(format!(
                "Gemm needs rank-2 inputs, got {} and {}",
                a.shape.len(),
                b.shape.len()
            )));
        }
        if !dims_compatible(&a.shape[1], &b.shape[1]) {
            return Err(fail(format!(
                "contracted dims differ: {:?} vs {:?}",
                a.shape[1], b.shape[1]
            )));
        }
        let shape = vec![a.shape[0].clone(), b.shape[0].clone()];
        let attributes = vec![int_attribute("transB", 1)];
        self.node("Gemm", out, &[a, b], attributes, a.dtype, shape)
    }

    /// `TopK(x, k)` along the last axis, largest first (ties: the smaller index first):
    /// `(values, indices)` named `values` and `indices` (int64), last dimension `K`.
    pub fn top_k(
        &mut self,
        (values, indices): (&str, &str),
        x: &Value,
        k: &Value,
    ) -> Result<(Value, Value)> {
        require_dtype(values, k, &[DType::I64])?;
        if x.shape.is_empty() {
            return Err(Error::Node { node: values.into(), message: "TopK of a scalar".into() });
        }
        self.claim(values)?;
        self.claim(indices)?;
        self.nodes.push(NodeProto {
            name: Some(values.to_string()),
            op_type: Some("TopK".to_string()),
            input: vec![x.name.clone(), k.name.clone()],
            output: vec![values.to_string(), indices.to_string()],
            attribute: vec![
                int_attribute("axis", -1),
                int_attribute("largest", 1),
                int_attribute("sorted", 1),
            ],
            ..Default::default()
        });
        let mut shape = x.shape.clone();
        if let Some(last) = shape.last_mut() {
            *last = Dim::named("K");
        }
        Ok((
            Value { name: values.to_string(), dtype: x.dtype, shape: shape.clone() },
            Value { name: indices.to_string(), dtype: DType::I64, shape },
        ))
    }

    /// `Split(x)` along `axis` into parts of `sizes`, one output per name.
    pub fn split(
        &mut self,
        outs: &[&str],
        x: &Value,
        axis: i64,
        sizes: &[i64],
    ) -> Result<Vec<Value>> {
        let node = outs.first().copied().unwrap_or("split");
        let fail = |message: String| Error::Node { node: node.to_string(), message };
        if outs.len() != sizes.len() || outs.is_empty() {
            return Err(fail(format!("{} outputs for {} sizes", outs.len(), sizes.len())));
        }
        let axis = normalize_axis(node, axis, x.shape.len())?;
        if let Dim::Fixed(n) = x.shape[axis]
            && n != sizes.iter().sum::<i64>()
        {
            return Err(fail(format!("sizes {sizes:?} do not add up to dimension {axis} ({n})")));
        }
        let split = self.initializer_i64(&format!("{node}.split"), &[sizes.len() as i64], sizes)?;
        for name in outs {
            self.claim(name)?;
        }
        self.nodes.push(NodeProto {
            name: Some(node.to_string()),
            op_type: Some("Split".to_string()),
            input: vec![x.name.clone(), split.name.clone()],
            output: outs.iter().map(|o| (*o).to_string()).collect(),
            attribute: vec![int_attribute("axis", axis as i64)],
            ..Default::default()
        });
        Ok(outs
            .iter()
            .zip(sizes)
            .map(|(name, &size)| {
                let mut shape = x.shape.clone();
                shape[axis] = Dim::Fixed(size);
                Value { name: (*name).to_string(), dtype: x.dtype, shape }
            })
            .collect())
    }

    /// `Sub(a, b)` with numpy broadcasting.
    pub fn sub(&mut self, out: &str, a: &Value, b: &Value) -> Result<Value> {
        self.binary("Sub", out, a, b)
    }

    /// `Mul(a, b)` with numpy broadcasting.
    pub fn mul(&mut self, out: &str, a: &Value, b: &Value) -> Result<Value> {
        self.binary("Mul", out, a, b)
    }

    /// `Div(a, b)` with numpy broadcasting.
    pub fn div(&mut self, out: &str, a: &Value, b: &Value) -> Result<Value> {
        self.binary("Div", out, a, b)
    }

    fn binary(&mut self, op: &str, out: &str, a: &Value, b: &Value) -> Result<Value> {
        same_dtype(out, a, b)?;
        if a.dtype == DType::Bool {
            return Err(Error::Node {
                node: out.to_string(),
                message: format!("{op} needs numeric inputs, got bool"),
            });
        }
        let shape = broadcast(&a.shape, &b.shape)
            .map_err(|message| Error::Node { node: out.to_string(), message })?;
        self.node(op, out, &[a, b], vec![], a.dtype, shape)
    }

    /// `Reshape(x, spec)` with a constant target `spec` (stored as the initializer
    /// `{out}.shape`): `0` copies the input's dimension at that position, `-1` is inferred.
    /// Without `-1`, a zero-sized dimension stays legal (an empty past reshapes fine).
    pub fn reshape(&mut self, out: &str, x: &Value, spec: &[i64]) -> Result<Value> {
        let fail = |message: String| Error::Node { node: out.to_string(), message };
        if spec.iter().filter(|&&d| d == -1).count() > 1 {
            return Err(fail(format!("Reshape spec {spec:?} has more than one -1")));
        }
        let mut shape = Vec::with_capacity(spec.len());
        for (i, &d) in spec.iter().enumerate() {
            shape.push(match d {
                0 => x.shape.get(i).cloned().ok_or_else(|| {
                    fail(format!(
                        "Reshape spec {spec:?}: 0 at {i} but the input has rank {}",
                        x.shape.len()
                    ))
                })?,
                -1 => Dim::Named(format!("{out}_dim{i}")),
                n if n > 0 => Dim::Fixed(n),
                n => return Err(fail(format!("Reshape spec {spec:?}: invalid size {n}"))),
            });
        }
        let fixed = |s: &[Dim]| -> Option<i64> {
            s.iter().map(|d| if let Dim::Fixed(n) = d { Some(*n) } else { None }).product()
        };
        if let (Some(a), Some(b)) = (fixed(&x.shape), fixed(&shape))
            && a != b
        {
            return Err(fail(format!(
                "Reshape from {:?} to {shape:?} changes the element count ({a} vs {b})",
                x.shape
            )));
        }
        let target = self.initializer_i64(&format!("{out}.shape"), &[spec.len() as i64], spec)?;
        self.node("Reshape", out, &[x, &target], vec![], x.dtype, shape)
    }

    /// `Transpose(x, perm)`.
    pub fn transpose(&mut self, out: &str, x: &Value, perm: &[i64]) -> Result<Value> {
        let rank = x.shape.len();
        let mut seen = vec![false; rank];
        for &p in perm {
            match usize::try_from(p).ok().filter(|&p| p < rank) {
                Some(p) if !seen[p] => seen[p] = true,
                _ => {
                    return Err(Error::Node {
                        node: out.to_string(),
                        message: format!("perm {perm:?} is not a permutation of rank {rank}"),
                    });
                }
            }
        }
        if perm.len() != rank {
            return Err(Error::Node {
                node: out.to_string(),
                message: format!("perm {perm:?} is not a permutation of rank {rank}"),
            });
        }
        let shape = perm.iter().map(|&p| x.shape[p as usize].clone()).collect();
        self.node("Transpose", out, &[x], vec![ints_attribute("perm", perm)], x.dtype, shape)
    }

    /// `Concat(inputs, axis)`: same dtype and rank, equal sizes off `axis`.
    pub fn concat(&mut self, out: &str, inputs: &[&Value], axis: i64) -> Result<Value> {
        let fail = |message: String| Error::Node { node: out.to_string(), message };
        let first = inputs.first().ok_or_else(|| fail("Concat of nothing".into()))?;
        let axis = normalize_axis(out, axis, first.shape.len())?;
        let mut shape = first.shape.clone();
        for v in &inputs[1..] {
            same_dtype(out, first, v)?;
            if v.shape.len() != first.shape.len() {
                return Err(fail(format!("rank mismatch: {:?} vs {:?}", first.shape, v.shape)));
            }
            for (i, (a, b)) in shape.iter().zip(&v.shape).enumerate() {
                if i != axis && !dims_compatible(a, b) {
                    return Err(fail(format!(
                        "dimension {i} differs: {:?} vs {:?}",
                        first.shape, v.shape
                    )));
                }
            }
            shape[axis] = match (&shape[axis], &v.shape[axis]) {
                (Dim::Fixed(a), Dim::Fixed(b)) => Dim::Fixed(a + b),
                (a, b) => Dim::Named(format!("{}+{}", dim_text(a), dim_text(b))),
            };
        }
        let attributes = vec![int_attribute("axis", axis as i64)];
        self.node("Concat", out, inputs, attributes, first.dtype, shape)
    }

    /// `Shape(x)[start..end]` as a 1-D int64 tensor.
    pub fn shape(&mut self, out: &str, x: &Value, start: i64, end: i64) -> Result<Value> {
        let rank = x.shape.len() as i64;
        if !(0 <= start && start < end && end <= rank) {
            return Err(Error::Node {
                node: out.to_string(),
                message: format!("Shape slice {start}..{end} out of range for rank {rank}"),
            });
        }
        let attributes = vec![int_attribute("start", start), int_attribute("end", end)];
        let shape = vec![Dim::Fixed(end - start)];
        self.node("Shape", out, &[x], attributes, DType::I64, shape)
    }

    /// `Unsqueeze(x, axes)` (axes of the output, stored as the initializer `{out}.axes`).
    pub fn unsqueeze(&mut self, out: &str, x: &Value, axes: &[i64]) -> Result<Value> {
        let rank = x.shape.len() + axes.len();
        let mut positions = Vec::with_capacity(axes.len());
        for &a in axes {
            positions.push(normalize_axis(out, a, rank)?);
        }
        positions.sort_unstable();
        if positions.windows(2).any(|w| w[0] == w[1]) {
            return Err(Error::Node {
                node: out.to_string(),
                message: format!("Unsqueeze axes {axes:?} repeat"),
            });
        }
        let mut rest = x.shape.iter();
        let shape = (0..rank)
            .map(|i| {
                if positions.contains(&i) {
                    Dim::Fixed(1)
                } else {
                    rest.next().cloned().unwrap_or(Dim::Fixed(1))
                }
            })
            .collect();
        let axes = self.initializer_i64(&format!("{out}.axes"), &[axes.len() as i64], axes)?;
        self.node("Unsqueeze", out, &[x, &axes], vec![], x.dtype, shape)
    }

    /// `Equal(a, b)` → bool, with broadcasting.
    pub fn equal(&mut self, out: &str, a: &Value, b: &Value) -> Result<Value> {
        same_dtype(out, a, b)?;
        let shape = broadcast(&a.shape, &b.shape)
            .map_err(|message| Error::Node { node: out.to_string(), message })?;
        self.node("Equal", out, &[a, b], vec![], DType::Bool, shape)
    }

    /// `Less(a, b)` → bool, with broadcasting.
    pub fn less(&mut self, out: &str, a: &Value, b: &Value) -> Result<Value> {
        same_dtype(out, a, b)?;
        let shape = broadcast(&a.shape, &b.shape)
            .map_err(|message| Error::Node { node: out.to_string(), message })?;
        self.node("Less", out, &[a, b], vec![], DType::Bool, shape)
    }

    /// `And(a, b)` of bool tensors, with broadcasting.
    pub fn and(&mut self, out: &str, a: &Value, b: &Value) -> Result<Value> {
        require_dtype(out, a, &[DType::Bool])?;
        require_dtype(out, b, &[DType::Bool])?;
        let shape = broadcast(&a.shape, &b.shape)
            .map_err(|message| Error::Node { node: out.to_string(), message })?;
        self.node("And", out, &[a, b], vec![], DType::Bool, shape)
    }

    /// `Reshape(x, shape)` to a shape computed in the graph (`shape`: int64 `[rank]`), whose
    /// dimensions are described by `dims`.
    pub fn reshape_to(
        &mut self,
        out: &str,
        x: &Value,
        shape: &Value,
        dims: Vec<Dim>,
    ) -> Result<Value> {
        require_dtype(out, shape, &[DType::I64])?;
        self.node("Reshape", out, &[x, shape], vec![], x.dtype, dims)
    }

    /// `Not(x)` of a bool tensor.
    pub fn not(&mut self, out: &str, x: &Value) -> Result<Value> {
        require_dtype(out, x, &[DType::Bool])?;
        self.node("Not", out, &[x], vec![], DType::Bool, x.shape.clone())
    }

    /// `Where(cond, x, y)`: `x` where `cond` (bool) holds, else `y`; broadcasting.
    pub fn where_(&mut self, out: &str, cond: &Value, x: &Value, y: &Value) -> Result<Value> {
        require_dtype(out, cond, &[DType::Bool])?;
        same_dtype(out, x, y)?;
        let fail = |message: String| Error::Node { node: out.to_string(), message };
        let shape = broadcast(&cond.shape, &x.shape).map_err(fail)?;
        let shape = broadcast(&shape, &y.shape).map_err(fail)?;
        self.node("Where", out, &[cond, x, y], vec![], x.dtype, shape)
    }

    /// `CumSum(x, axis)` (inclusive, forward) of an int64 or float tensor.
    pub fn cumsum(&mut self, out: &str, x: &Value, axis: i64) -> Result<Value> {
        require_dtype(out, x, &[DType::I64, DType::F32])?;
        let axis = normalize_axis(out, axis, x.shape.len())? as i64;
        let axis = self.initializer_i64(&format!("{out}.axis"), &[], &[axis])?;
        self.node("CumSum", out, &[x, &axis], vec![], x.dtype, x.shape.clone())
    }

    /// `LogSoftmax(x)` along `axis`.
    pub fn log_softmax(&mut self, out: &str, x: &Value, axis: i64) -> Result<Value> {
        require_float(out, x)?;
        let axis = normalize_axis(out, axis, x.shape.len())? as i64;
        let attributes = vec![int_attribute("axis", axis)];
        self.node("LogSoftmax", out, &[x], attributes, x.dtype, x.shape.clone())
    }

    /// `LayerNormalization(x, scale, bias)` over the last axis (opset 17), statistics in the
    /// input's dtype; `scale` and `bias` are `[E]` of the same dtype.
    pub fn layer_norm(
        &mut self,
        out: &str,
        x: &Value,
        scale: &Value,
        bias: &Value,
        epsilon: f32,
    ) -> Result<Value> {
        require_float(out, x)?;
        same_dtype(out, x, scale)?;
        same_dtype(out, x, bias)?;
        let last = x.shape.last().ok_or_else(|| Error::Node {
            node: out.to_string(),
            message: "LayerNormalization of a scalar".into(),
        })?;
        for p in [scale, bias] {
            if p.shape.len() != 1 || !dims_compatible(&p.shape[0], last) {
                return Err(Error::Node {
                    node: out.to_string(),
                    message: format!("{} has shape {:?}, expected [{last:?}]", p.name, p.shape),
                });
            }
        }
        let attributes = vec![int_attribute("axis", -1), float_attribute("epsilon", epsilon)];
        self.node(
            "LayerNormalization",
            out,
            &[x, scale, bias],
            attributes,
            x.dtype,
            x.shape.clone(),
        )
    }

    /// `Identity(x)`: gives a value a second name (e.g. a graph output's contract name).
    pub fn identity(&mut self, out: &str, x: &Value) -> Result<Value> {
        self.node("Identity", out, &[x], vec![], x.dtype, x.shape.clone())
    }

    /// `Relu(x)`.
    pub fn relu(&mut self, out: &str, x: &Value) -> Result<Value> {
        self.unary_float("Relu", out, x)
    }

    /// `Tanh(x)`.
    pub fn tanh(&mut self, out: &str, x: &Value) -> Result<Value> {
        self.unary_float("Tanh", out, x)
    }

    /// `Sigmoid(x)`.
    pub fn sigmoid(&mut self, out: &str, x: &Value) -> Result<Value> {
        self.unary_float("Sigmoid", out, x)
    }

    /// `Slice(x)` of `[start, end)` along the last axis, whose size must be fixed.
    pub fn slice_last(&mut self, out: &str, x: &Value, start: i64, end: i64) -> Result<Value> {
        let rank = x.shape.len();
        let fail = |message: String| Error::Node { node: out.to_string(), message };
        match x.shape.last() {
            Some(Dim::Fixed(n)) if 0 <= start && start < end && end <= *n => {}
            other => return Err(fail(format!("Slice {start}..{end} of a last axis {other:?}"))),
        }
        let starts = self.initializer_i64(&format!("{out}.starts"), &[1], &[start])?;
        let ends = self.initializer_i64(&format!("{out}.ends"), &[1], &[end])?;
        let axes = self.initializer_i64(&format!("{out}.axes"), &[1], &[rank as i64 - 1])?;
        let mut shape = x.shape.clone();
        shape[rank - 1] = Dim::Fixed(end - start);
        self.node("Slice", out, &[x, &starts, &ends, &axes], vec![], x.dtype, shape)
    }

    /// `ReduceSum(x, axis)` without keeping the axis.
    pub fn reduce_sum(&mut self, out: &str, x: &Value, axis: i64) -> Result<Value> {
        require_dtype(out, x, &[DType::F32, DType::F16, DType::I64])?;
        let axis = normalize_axis(out, axis, x.shape.len())?;
        let axes = self.initializer_i64(&format!("{out}.axes"), &[1], &[axis as i64])?;
        let mut shape = x.shape.clone();
        shape.remove(axis);
        let attributes = vec![int_attribute("keepdims", 0)];
        self.node("ReduceSum", out, &[x, &axes], attributes, x.dtype, shape)
    }

    /// ONNX `LSTM` (gates `iofc`, fp32) over `x` `[S, B, in]` with `w` `[dirs, 4H, in]`, `r`
    /// `[dirs, 4H, H]`, `b` `[dirs, 8H]` and `sequence_lens` int32 `[B]` (steps past a row's
    /// length are skipped and give zeros); zero initial states. Returns `Y` `[S, dirs, B, H]`,
    /// `Y_h` and `Y_c` `[dirs, B, H]`, named `{out}.y`, `{out}.y_h`, `{out}.y_c`.
    #[allow(clippy::too_many_arguments)]
    pub fn lstm(
        &mut self,
        out: &str,
        x: &Value,
        w: &Value,
        r: &Value,
        b: &Value,
        sequence_lens: &Value,
        hidden: usize,
        bidirectional: bool,
    ) -> Result<(Value, Value, Value)> {
        for v in [x, w, r, b] {
            require_dtype(out, v, &[DType::F32])?;
        }
        require_dtype(out, sequence_lens, &[DType::I32])?;
        let dirs = if bidirectional { 2 } else { 1 };
        let names = [format!("{out}.y"), format!("{out}.y_h"), format!("{out}.y_c")];
        for n in &names {
            self.claim(n)?;
        }
        let h = hidden as i64;
        let direction = if bidirectional { "bidirectional" } else { "forward" };
        self.nodes.push(NodeProto {
            name: Some(out.to_string()),
            op_type: Some("LSTM".to_string()),
            input: vec![
                x.name.clone(),
                w.name.clone(),
                r.name.clone(),
                b.name.clone(),
                sequence_lens.name.clone(),
            ],
            output: names.to_vec(),
            attribute: vec![
                int_attribute("hidden_size", h),
                string_attribute("direction", direction),
            ],
            ..Default::default()
        });
        let (seq, batch) = (x.shape[0].clone(), x.shape[1].clone());
        let y = Value {
            name: names[0].clone(),
            dtype: DType::F32,
            shape: vec![seq, Dim::Fixed(dirs), batch.clone(), Dim::Fixed(h)],
        };
        let state = |name: &String| Value {
            name: name.clone(),
            dtype: DType::F32,
            shape: vec![Dim::Fixed(dirs), batch.clone(), Dim::Fixed(h)],
        };
        Ok((y, state(&names[1]), state(&names[2])))
    }

    /// `Erf(x)`.
    pub fn erf(&mut self, out: &str, x: &Value) -> Result<Value> {
        self.unary_float("Erf", out, x)
    }

    /// `Sqrt(x)`.
    pub fn sqrt(&mut self, out: &str, x: &Value) -> Result<Value> {
        self.unary_float("Sqrt", out, x)
    }

    /// `Reciprocal(x)` (`1 / x`).
    pub fn reciprocal(&mut self, out: &str, x: &Value) -> Result<Value> {
        self.unary_float("Reciprocal", out, x)
    }

    /// `Slice(x)` of `[start, end)` along `axis` (`end` may be `i64::MAX`: to the end); the
    /// axis keeps a fixed size only when it had one and the range is within it.
    pub fn slice_axis(
        &mut self,
        out: &str,
        x: &Value,
        axis: i64,
        start: i64,
        end: i64,
    ) -> Result<Value> {
        let axis = normalize_axis(out, axis, x.shape.len())?;
        if start < 0 || end <= start {
            return Err(Error::Node {
                node: out.to_string(),
                message: format!("Slice {start}..{end} is empty or negative"),
            });
        }
        let starts = self.initializer_i64(&format!("{out}.starts"), &[1], &[start])?;
        let ends = self.initializer_i64(&format!("{out}.ends"), &[1], &[end])?;
        let axes = self.initializer_i64(&format!("{out}.axes"), &[1], &[axis as i64])?;
        let mut shape = x.shape.clone();
        shape[axis] = match x.shape[axis] {
            Dim::Fixed(n) => Dim::Fixed(end.min(n) - start.min(n)),
            Dim::Named(_) => Dim::named(&format!("{out}_len")),
        };
        self.node("Slice", out, &[x, &starts, &ends, &axes], vec![], x.dtype, shape)
    }

    /// `Conv(x, w, b)` over one spatial axis: `x` `[N, C_in, L]`, `w` `[C_out, C_in, k]`, `b`
    /// `[C_out]`, zero padding `(left, right)`, stride and dilation 1 → `[N, C_out, L']`.
    pub fn conv1d(
        &mut self,
        out: &str,
        x: &Value,
        w: &Value,
        b: &Value,
        (left, right): (i64, i64),
    ) -> Result<Value> {
        require_float(out, x)?;
        same_dtype(out, x, w)?;
        let fail = |message: String| Error::Node { node: out.to_string(), message };
        let (Some(c_out), Some(Dim::Fixed(k))) = (w.shape.first(), w.shape.get(2)) else {
            return Err(fail(format!("weight shape {:?} is not [C_out, C_in, k]", w.shape)));
        };
        if x.shape.len() != 3 {
            return Err(fail(format!("input shape {:?} is not [N, C, L]", x.shape)));
        }
        let length = match x.shape[2] {
            Dim::Fixed(l) => Dim::Fixed(l + left + right - k + 1),
            Dim::Named(ref n) if left + right == k - 1 => Dim::Named(n.clone()),
            Dim::Named(_) => Dim::named(&format!("{out}_len")),
        };
        let attributes = vec![
            ints_attribute("kernel_shape", &[*k]),
            ints_attribute("pads", &[left, right]),
            ints_attribute("strides", &[1]),
            ints_attribute("dilations", &[1]),
        ];
        let shape = vec![x.shape[0].clone(), c_out.clone(), length];
        self.node("Conv", out, &[x, w, b], attributes, x.dtype, shape)
    }

    fn unary_float(&mut self, op: &str, out: &str, x: &Value) -> Result<Value> {
        require_float(out, x)?;
        self.node(op, out, &[x], vec![], x.dtype, x.shape.clone())
    }

    /// Finishes the model: IR version ONNX Runtime 1.31 accepts, opset [`OPSET`], and the given
    /// `metadata_props`.
    pub fn finish(self, metadata: &[(&str, &str)]) -> ModelProto {
        let graph = GraphProto {
            name: Some(self.name),
            node: self.nodes,
            initializer: self.initializers,
            input: self.inputs,
            output: self.outputs,
            ..Default::default()
        };
        ModelProto {
            ir_version: Some(seqforge_schemas::onnx::SUPPORTED_IR_VERSION),
            producer_name: Some("seqforge".to_string()),
            producer_version: Some(env!("CARGO_PKG_VERSION").to_string()),
            opset_import: std::iter::once((String::new(), OPSET))
                .chain(self.uses_microsoft.then(|| (MICROSOFT_DOMAIN.to_string(), 1)))
                .map(|(domain, version)| OperatorSetIdProto {
                    domain: Some(domain),
                    version: Some(version),
                })
                .collect(),
            metadata_props: metadata
                .iter()
                .map(|(k, v)| StringStringEntryProto {
                    key: Some((*k).to_string()),
                    value: Some((*v).to_string()),
                })
                .collect(),
            graph: Some(graph),
            ..Default::default()
        }
    }
}

fn same_dtype(node: &str, a: &Value, b: &Value) -> Result<()> {
    if a.dtype == b.dtype {
        Ok(())
    } else {
        Err(Error::Node {
            node: node.to_string(),
            message: format!(
                "dtype mismatch: {} is {:?}, {} is {:?}",
                a.name, a.dtype, b.name, b.dtype
            ),
        })
    }
}

/// Two dims can be equal at run time: both fixed and equal, or at least one symbolic.
fn dims_compatible(a: &Dim, b: &Dim) -> bool {
    match (a, b) {
        (Dim::Fixed(x), Dim::Fixed(y)) => x == y,
        _ => true,
    }
}

/// Numpy broadcasting of two shapes.
fn broadcast(a: &[Dim], b: &[Dim]) -> std::result::Result<Vec<Dim>, String> {
    let rank = a.len().max(b.len());
    let at = |s: &[Dim], i: usize| -> Dim {
        let offset = rank - s.len();
        if i < offset { Dim::Fixed(1) } else { s[i - offset].clone() }
    };
    (0..rank)
        .map(|i| match (at(a, i), at(b, i)) {
            (Dim::Fixed(1), d) | (d, Dim::Fixed(1)) => Ok(d),
            (x, y) if dims_compatible(&x, &y) => Ok(if matches!(x, Dim::Named(_)) { y } else { x }),
            (x, y) => Err(format!("shapes {a:?} and {b:?} do not broadcast ({x:?} vs {y:?})")),
        })
        .collect()
}

fn require_dtype(node: &str, x: &Value, allowed: &[DType]) -> Result<()> {
    if allowed.contains(&x.dtype) {
        Ok(())
    } else {
        Err(Error::Node {
            node: node.to_string(),
            message: format!("{} is {:?}, expected one of {allowed:?}", x.name, x.dtype),
        })
    }
}

fn require_float(node: &str, x: &Value) -> Result<()> {
    require_dtype(node, x, &[DType::F32, DType::F16])
}

/// `axis` (negative counts from the end) as an index into a shape of `rank`.
fn normalize_axis(node: &str, axis: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    if axis < -r || axis >= r {
        return Err(Error::Node {
            node: node.to_string(),
            message: format!("axis {axis} out of range for rank {rank}"),
        });
    }
    Ok(if axis < 0 { (axis + r) as usize } else { axis as usize })
}

fn dim_text(d: &Dim) -> String {
    match d {
        Dim::Fixed(n) => n.to_string(),
        Dim::Named(s) => s.clone(),
    }
}

fn ints_attribute(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_string()),
        r#type: Some(AttributeType::Ints as i32),
        ints: values.to_vec(),
        ..Default::default()
    }
}

fn float_attribute(name: &str, value: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_string()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(value),
        ..Default::default()
    }
}

fn string_attribute(name: &str, value: &str) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_string()),
        r#type: Some(AttributeType::String as i32),
        s: Some(value.as_bytes().to_vec()),
        ..Default::default()
    }
}

fn int_attribute(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_string()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(value),
        ..Default::default()
    }
}

fn value_info(value: &Value) -> ValueInfoProto {
    let dims = value
        .shape
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                Dim::Fixed(n) => tensor_shape_proto::dimension::Value::DimValue(*n),
                Dim::Named(s) => tensor_shape_proto::dimension::Value::DimParam(s.clone()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(value.name.clone()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(value.dtype.onnx()),
                shape: Some(TensorShapeProto { dim: dims }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn onnx_runtime_contrib_nodes_import_their_domain_only_when_used() -> Result<()> {
        let plain = GraphBuilder::new("t").finish(&[]);
        assert_eq!(plain.opset_import.len(), 1, "{:?}", plain.opset_import);

        let mut g = GraphBuilder::new("t");
        let rows = || Dim::named("R");
        let x = g.input("x", DType::F32, vec![rows(), Dim::Fixed(4)])?;
        let q = g.initializer_i8("w", &[4, 6], &[1; 24])?;
        let scale = g.initializer_f32("s", &[6], &[0.5; 6])?;
        let y = g.dynamic_quantize_matmul("y", &x, &q, &scale, None)?;
        assert_eq!((y.shape(), y.dtype()), (&[rows(), Dim::Fixed(6)][..], DType::F32));
        let f = g.initializer_f32("f", &[4, 6], &[0.0; 24])?;
        assert!(g.dynamic_quantize_matmul("bad", &x, &f, &scale, None).is_err(), "f32 weight");
        let parts = g.split(&["a", "b", "c"], &y, -1, &[2, 2, 2])?;
        assert_eq!(parts[2].shape(), &[rows(), Dim::Fixed(2)]);
        assert!(g.split(&["d", "e"], &y, -1, &[2, 3]).is_err(), "sizes must add up");
        let q3 = g.reshape("q3", &parts[0], &[0, 1, 2])?;
        let k3 = g.reshape("k3", &parts[1], &[0, 1, 2])?;
        let v3 = g.reshape("v3", &parts[2], &[0, 1, 2])?;
        let past = || vec![Dim::named("Rp"), Dim::Fixed(1), Dim::named("P"), Dim::Fixed(2)];
        let pk = g.input("pk", DType::F32, past())?;
        let pv = g.input("pv", DType::F32, past())?;
        let (ctx, present) = g.multi_head_attention(
            "ctx",
            (&q3, &k3, &v3),
            None,
            Some((&pk, &pv)),
            Some(("present_k", "present_v")),
            1,
        )?;
        assert_eq!(ctx.shape(), q3.shape());
        let (k, _) = present.ok_or_else(|| Error::DuplicateName("no present".into()))?;
        assert_eq!(k.shape(), &[rows(), Dim::Fixed(1), Dim::named("P+1"), Dim::Fixed(2)]);
        let m = g.finish(&[]);
        let domains: Vec<_> = m.opset_import.iter().map(|o| o.domain.clone()).collect();
        assert_eq!(domains, vec![Some(String::new()), Some(MICROSOFT_DOMAIN.to_string())]);
        let graph = m.graph.unwrap_or_default();
        let mha = graph.node.iter().find(|n| n.op_type.as_deref() == Some("MultiHeadAttention"));
        let inputs = mha.map(|n| n.input.clone()).unwrap_or_default();
        assert_eq!(inputs, ["q3", "k3", "v3", "", "", "", "pk", "pv"], "omitted inputs are empty");
        Ok(())
    }

    #[test]
    fn matmul_checks_contracted_dims() -> Result<()> {
        let mut g = GraphBuilder::new("t");
        let x = g.input("x", DType::F32, vec![Dim::named("b"), Dim::Fixed(4)])?;
        let w = g.initializer_f32("w", &[3, 2], &[0.0; 6])?;
        let err = g.matmul("y", &x, &w).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("graph node y") && err.contains("contracted"), "{err}");
        Ok(())
    }

    #[test]
    fn broadcasting_follows_numpy() -> Result<()> {
        let mut g = GraphBuilder::new("t");
        let x = g.input("x", DType::F32, vec![Dim::named("b"), Dim::Fixed(1), Dim::Fixed(3)])?;
        let y = g.input("y", DType::F32, vec![Dim::Fixed(5), Dim::Fixed(3)])?;
        let z = g.add("z", &x, &y)?;
        assert_eq!(z.shape(), &[Dim::named("b"), Dim::Fixed(5), Dim::Fixed(3)]);
        let bad = g.input("bad", DType::F32, vec![Dim::Fixed(4)])?;
        assert!(g.add("w", &y, &bad).is_err());
        Ok(())
    }

    #[test]
    fn names_and_sizes_and_dtypes_are_checked() -> Result<()> {
        let mut g = GraphBuilder::new("t");
        let x = g.input("x", DType::F32, vec![Dim::Fixed(2)])?;
        assert!(matches!(g.input("x", DType::F32, vec![]), Err(Error::DuplicateName(_))));
        assert!(matches!(
            g.initializer_f32("w", &[2, 2], &[1.0; 3]),
            Err(Error::InitializerSize { expected: 4, got: 3, .. })
        ));
        let h = g.initializer_f16("h", &[2], &[f16::ONE, f16::ZERO])?;
        assert!(g.add("s", &x, &h).is_err());
        let c = g.cast("c", &h, DType::F32)?;
        assert_eq!(c.dtype(), DType::F32);
        assert!(g.softmax("sm", &c, 1).is_err());
        Ok(())
    }

    #[test]
    fn shape_ops_infer_shapes_and_reject_misuse() -> Result<()> {
        let mut g = GraphBuilder::new("t");
        let b = || Dim::named("B");
        let x = g.input("x", DType::F32, vec![b(), Dim::named("S"), Dim::Fixed(8)])?;
        let r = g.reshape("r", &x, &[0, 0, 2, 4])?;
        assert_eq!(r.shape(), &[b(), Dim::named("S"), Dim::Fixed(2), Dim::Fixed(4)]);
        assert!(g.reshape("r2", &x, &[0, 0, 0, 0, 3]).is_err(), "0 beyond the input rank");
        let fixed = g.initializer_f32("f", &[2, 3], &[0.0; 6])?;
        assert!(g.reshape("r3", &fixed, &[4, 2]).is_err(), "element count changes");
        let t = g.transpose("t1", &r, &[0, 2, 1, 3])?;
        assert_eq!(t.shape()[1], Dim::Fixed(2));
        assert!(g.transpose("t2", &r, &[0, 0, 1, 2]).is_err());
        let past =
            g.input("p", DType::F32, vec![b(), Dim::Fixed(2), Dim::named("P"), Dim::Fixed(4)])?;
        let new =
            g.input("n", DType::F32, vec![b(), Dim::Fixed(2), Dim::Fixed(1), Dim::Fixed(4)])?;
        let c = g.concat("c", &[&past, &new], 2)?;
        assert_eq!(c.shape()[2], Dim::named("P+1"));
        let other =
            g.input("o", DType::F32, vec![b(), Dim::Fixed(3), Dim::Fixed(1), Dim::Fixed(4)])?;
        assert!(g.concat("c2", &[&past, &other], 2).is_err(), "heads differ off the axis");
        let idx = g.input("i", DType::I64, vec![Dim::named("R")])?;
        let gathered = g.gather("g", &past, &idx, 0)?;
        assert_eq!(gathered.shape()[0], Dim::named("R"));
        assert!(g.gather("g2", &past, &x, 0).is_err(), "float indices");
        let s = g.shape("s", &past, 2, 3)?;
        assert_eq!((s.dtype(), s.shape()), (DType::I64, &[Dim::Fixed(1)][..]));
        assert!(g.shape("s2", &past, 2, 9).is_err());
        let m = g.input("m", DType::Bool, vec![b(), Dim::named("S")])?;
        let u = g.unsqueeze("u", &m, &[1, 2])?;
        assert_eq!(u.shape(), &[b(), Dim::Fixed(1), Dim::Fixed(1), Dim::named("S")]);
        let neg = g.scalar("neg", DType::F32, -1e9)?;
        let zero = g.scalar("zero", DType::F32, 0.0)?;
        let w = g.where_("w", &u, &neg, &zero)?;
        assert_eq!(w.shape().len(), 4);
        assert!(g.where_("w2", &x, &neg, &zero).is_err(), "float condition");
        assert!(g.not("n2", &x).is_err());
        let ln_w = g.initializer_f32("ln.w", &[8], &[1.0; 8])?;
        let bad = g.initializer_f32("ln.b", &[7], &[0.0; 7])?;
        assert!(g.layer_norm("ln", &x, &ln_w, &bad, 1e-5).is_err(), "bias of the wrong width");
        let lp = g.log_softmax("lp", &x, -1)?;
        assert_eq!(lp.shape(), x.shape());
        assert!(g.log_softmax("lp2", &x, 3).is_err());
        let proj = g.initializer_f32("proj", &[5, 8], &[0.0; 40])?;
        let x2 = g.input("x2", DType::F32, vec![Dim::named("R"), Dim::Fixed(8)])?;
        let logits = g.gemm_transposed_b("logits", &x2, &proj)?;
        assert_eq!(logits.shape(), &[Dim::named("R"), Dim::Fixed(5)]);
        assert!(g.gemm_transposed_b("l2", &x, &proj).is_err(), "rank 3");
        Ok(())
    }
}
