//! Smoke tests proving ONNX Runtime works through `ort`: a graph built in Rust with the
//! `seqforge-schemas` types (through the exporter's graph builder), serialized, loaded and run,
//! matches an ndarray reference in f32 and f16; a corrupted model is a clear error.

use anyhow::{Context, Result, ensure};
use half::f16;
use ndarray::{Array2, Axis};
use ort::value::Tensor;
use prost::Message;
use seqforge_exporter::graph::{DType, Dim, GraphBuilder};
use seqforge_runtime::Error;
use seqforge_runtime::onnx::{SessionConfig, load_session, load_session_from_memory};
use std::path::Path;

const IN: usize = 6;
const OUT: usize = 5;

/// Deterministic, varied weights (no RNG dependency needed).
fn weights() -> (Vec<f32>, Vec<f32>) {
    let w = (0..IN * OUT).map(|i| ((i * 37 % 23) as f32 - 11.0) / 10.0).collect();
    let b = (0..OUT).map(|i| (i as f32 - 2.0) / 4.0).collect();
    (w, b)
}

/// softmax(x · W + b) over the last axis.
fn reference(x: &Array2<f32>) -> Result<Array2<f32>> {
    let (w, b) = weights();
    let w = Array2::from_shape_vec((IN, OUT), w)?;
    let b = ndarray::Array1::from_vec(b);
    let mut logits = x.dot(&w) + &b;
    for mut row in logits.axis_iter_mut(Axis(0)) {
        let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        row.mapv_inplace(|v| (v - max).exp());
        let sum = row.sum();
        row.mapv_inplace(|v| v / sum);
    }
    Ok(logits)
}

/// MatMul + Add + Softmax in `dtype`, with a dynamic batch axis.
fn build_model(dtype: DType) -> Result<Vec<u8>> {
    let (w, b) = weights();
    let mut g = GraphBuilder::new("affine_softmax");
    let x = g.input("x", dtype, vec![Dim::named("batch"), Dim::Fixed(IN as i64)])?;
    let (w, b) = match dtype {
        DType::F16 => {
            let to16 = |v: &[f32]| v.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>();
            (
                g.initializer_f16("proj.weight", &[IN as i64, OUT as i64], &to16(&w))?,
                g.initializer_f16("proj.bias", &[OUT as i64], &to16(&b))?,
            )
        }
        _ => (
            g.initializer_f32("proj.weight", &[IN as i64, OUT as i64], &w)?,
            g.initializer_f32("proj.bias", &[OUT as i64], &b)?,
        ),
    };
    let xw = g.matmul("proj.matmul", &x, &w)?;
    let logits = g.add("proj.add", &xw, &b)?;
    let probs = g.softmax("probs", &logits, -1)?;
    g.output(&probs);
    Ok(g.finish(&[("seqforge.test", "smoke")]).encode_to_vec())
}

fn input(batch: usize) -> Result<Array2<f32>> {
    let data = (0..batch * IN).map(|i| ((i * 13 % 17) as f32 - 8.0) / 5.0).collect();
    Ok(Array2::from_shape_vec((batch, IN), data)?)
}

fn max_diff(a: &[f32], b: &Array2<f32>) -> f32 {
    a.iter().zip(b.iter()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn f32_graph_matches_ndarray() -> Result<()> {
    let bytes = build_model(DType::F32)?;
    let mut session =
        load_session_from_memory(&bytes, Path::new("f32"), &SessionConfig::default())?;
    for batch in [1, 3, 8] {
        let x = input(batch)?;
        let expected = reference(&x)?;
        let tensor = Tensor::from_array(([batch, IN], x.iter().copied().collect::<Vec<_>>()))?;
        let outputs = session.run(ort::inputs!["x" => tensor])?;
        let (shape, probs) = outputs["probs"].try_extract_tensor::<f32>()?;
        ensure!(shape.as_ref() == [batch as i64, OUT as i64], "output shape {shape:?}");
        let diff = max_diff(probs, &expected);
        ensure!(diff < 1e-6, "batch {batch}: f32 max diff {diff}");
    }
    Ok(())
}

#[test]
fn f16_graph_matches_ndarray_to_half_precision() -> Result<()> {
    let bytes = build_model(DType::F16)?;
    let mut session =
        load_session_from_memory(&bytes, Path::new("f16"), &SessionConfig::default())?;
    let x = input(4)?;
    let expected = reference(&x)?;
    let halves: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
    let outputs = session.run(ort::inputs!["x" => Tensor::from_array(([4usize, IN], halves))?])?;
    let (_, probs) = outputs["probs"].try_extract_tensor::<f16>()?;
    let probs: Vec<f32> = probs.iter().map(|v| v.to_f32()).collect();
    let diff = max_diff(&probs, &expected);
    ensure!(diff < 1e-2, "f16 max diff {diff}");
    ensure!(diff > 0.0, "f16 result identical to f32: was f16 really computed?");
    Ok(())
}

#[test]
fn a_model_file_loads_from_disk() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("model.onnx");
    std::fs::write(&path, build_model(DType::F32)?)?;
    let session =
        load_session(&path, &SessionConfig { intra_threads: 1, ..SessionConfig::default() })?;
    ensure!(session.inputs().len() == 1 && session.outputs().len() == 1, "unexpected signature");
    Ok(())
}

#[test]
fn a_corrupted_model_is_a_clear_error() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("corrupt.onnx");
    let mut bytes = build_model(DType::F32)?;
    let half = bytes.len() / 2;
    bytes.truncate(half);
    bytes.extend_from_slice(&[0xff; 7]);
    std::fs::write(&path, &bytes)?;
    let err =
        load_session(&path, &SessionConfig::default()).err().context("corrupt model loaded")?;
    ensure!(matches!(err, Error::InvalidModel { .. }), "wrong error kind: {err:?}");
    let text = err.to_string();
    ensure!(text.contains("corrupt.onnx"), "error does not name the file: {text}");

    let missing = dir.path().join("missing.onnx");
    let err = load_session(&missing, &SessionConfig::default()).err().context("missing loaded")?;
    ensure!(matches!(err, Error::Io { .. }) && err.to_string().contains("missing.onnx"), "{err}");
    Ok(())
}
