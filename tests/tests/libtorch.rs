//! Smoke tests proving libtorch works through `tch` on this machine: training step, checkpoint
//! round trip through safetensors, reduced-precision matmuls.

use anyhow::{Result, ensure};
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

/// A two-layer MLP learns a fixed linear map: forward, backward and Adam steps all run, and
/// the loss falls.
#[test]
fn tiny_model_trains_with_adam() -> Result<()> {
    tch::manual_seed(7);
    let vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let model = nn::seq()
        .add(nn::linear(&root / "fc1", 8, 32, Default::default()))
        .add_fn(|x| x.relu())
        .add(nn::linear(&root / "fc2", 32, 4, Default::default()));
    let mut opt = nn::Adam::default().build(&vs, 1e-2)?;
    let x = Tensor::f_randn([64, 8], (Kind::Float, Device::Cpu))?;
    let target_map = Tensor::f_randn([8, 4], (Kind::Float, Device::Cpu))?;
    let y = x.f_matmul(&target_map)?;
    let loss_at = |model: &nn::Sequential| -> Result<f64> {
        Ok(model.forward(&x).f_mse_loss(&y, tch::Reduction::Mean)?.f_double_value(&[])?)
    };
    let first = loss_at(&model)?;
    for _ in 0..200 {
        let loss = model.forward(&x).f_mse_loss(&y, tch::Reduction::Mean)?;
        opt.backward_step(&loss);
    }
    let last = loss_at(&model)?;
    ensure!(last < first * 0.1, "loss went from {first} to {last}: training does not work");
    // Every parameter got a gradient.
    for (name, tensor) in vs.variables() {
        ensure!(tensor.grad().defined(), "{name} has no gradient");
    }
    Ok(())
}

/// A VarStore saved as safetensors and loaded into a fresh one is bit-identical.
#[test]
fn varstore_round_trips_through_safetensors_bit_exactly() -> Result<()> {
    tch::manual_seed(11);
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("weights.safetensors");
    let make = || {
        let vs = nn::VarStore::new(Device::Cpu);
        let _ = nn::linear(vs.root() / "proj", 16, 8, Default::default());
        let _ = nn::embedding(vs.root() / "embed", 100, 16, Default::default());
        vs
    };
    let saved = make();
    saved.save(&path)?;
    tch::manual_seed(12); // different init, so a no-op load would be caught
    let mut loaded = make();
    loaded.load(&path)?;
    let (a, b) = (saved.variables(), loaded.variables());
    ensure!(a.len() == 3 && b.len() == 3, "expected 3 variables, got {} and {}", a.len(), b.len());
    for (name, tensor) in &a {
        let other = b.get(name).ok_or_else(|| anyhow::anyhow!("{name} missing after load"))?;
        ensure!(tensor.equal(other), "{name} differs after the round trip");
    }
    // The file is real safetensors, readable without libtorch.
    let bytes = std::fs::read(&path)?;
    let parsed = safetensors::SafeTensors::deserialize(&bytes)?;
    ensure!(parsed.names().len() == 3, "safetensors file holds {:?}", parsed.names());
    Ok(())
}

fn matmul_error(kind: Kind) -> Result<f64> {
    tch::manual_seed(3);
    let a = Tensor::f_randn([64, 128], (Kind::Float, Device::Cpu))?;
    let b = Tensor::f_randn([128, 32], (Kind::Float, Device::Cpu))?;
    let reference = a.f_matmul(&b)?;
    let low = a.f_to_kind(kind)?.f_matmul(&b.f_to_kind(kind)?)?;
    ensure!(low.kind() == kind, "matmul returned {:?}, expected {kind:?}", low.kind());
    let diff = (low.f_to_kind(Kind::Float)? - &reference).f_abs()?.f_max()?;
    Ok(diff.f_double_value(&[])? / reference.f_abs()?.f_max()?.f_double_value(&[])?)
}

/// fp16 and bf16 matmuls run on CPU and agree with fp32 to their precision.
#[test]
fn reduced_precision_matmuls_run_on_cpu() -> Result<()> {
    let fp16 = matmul_error(Kind::Half)?;
    let bf16 = matmul_error(Kind::BFloat16)?;
    ensure!(fp16 < 5e-3, "fp16 relative error {fp16}");
    ensure!(bf16 < 3e-2, "bf16 relative error {bf16}");
    ensure!(fp16 > 0.0 && bf16 > 0.0, "reduced precision computed exactly: was it really used?");
    Ok(())
}
