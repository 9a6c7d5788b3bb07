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

/// Element types used by seqforge graphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    /// 32-bit float.
    F32,
    /// 16-bit IEEE float.
    F16,
    /// 64-bit signed integer (token ids, shapes).
    I64,
    /// Boolean (masks).
    Bool,
}

impl DType {
    /// The ONNX `TensorProto.DataType` code.
    pub fn onnx(self) -> i32 {
        let code = match self {
            Self::F32 => DataType::Float,
            Self::F16 => DataType::Float16,
            Self::I64 => DataType::Int64,
            Self::Bool => DataType::Bool,
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
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(OPSET),
            }],
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
}
