//! CUDA checks: skipped when no CUDA device is present (always on CI; a `no-cuda` skip, which
//! `cargo xtask test` lists and accepts), run on a GPU machine built with `cargo xtask setup --libtorch-from-python` or run with
//! `LD_LIBRARY_PATH` pointing at a CUDA torch 2.11's `lib/`.

use anyhow::{Result, ensure};
use seqforge_testkit::{SkipKind, skip};
use tch::{Device, Kind, Tensor};

#[test]
fn gpu_matmul_matches_cpu_when_a_gpu_is_present() -> Result<()> {
    if !tch::Cuda::is_available() {
        skip!(SkipKind::NoCuda, "no CUDA device visible to libtorch (CPU-only libtorch or no GPU)");
    }
    ensure!(tch::Cuda::device_count() >= 1, "CUDA available but no device counted");
    let gpu = Device::Cuda(0);
    let a = Tensor::f_randn([256, 512], (Kind::Float, Device::Cpu))?;
    let b = Tensor::f_randn([512, 128], (Kind::Float, Device::Cpu))?;
    let cpu = a.f_matmul(&b)?;
    let on_gpu = a.f_to(gpu)?.f_matmul(&b.f_to(gpu)?)?;
    ensure!(on_gpu.device() == gpu, "result not on the GPU");
    let diff = (on_gpu.f_to(Device::Cpu)? - &cpu).f_abs()?.f_max()?.f_double_value(&[])?;
    // TF32 may be on for matmuls; allow its precision.
    ensure!(diff < 5e-2, "GPU and CPU matmuls differ by {diff}");
    let half =
        a.f_to(gpu)?.f_to_kind(Kind::Half)?.f_matmul(&b.f_to(gpu)?.f_to_kind(Kind::Half)?)?;
    ensure!(half.kind() == Kind::Half, "fp16 matmul on GPU returned {:?}", half.kind());
    println!("CUDA: {} device(s), matmul max diff vs CPU {diff:.2e}", tch::Cuda::device_count());
    Ok(())
}
