//! The GPU check script runs on the CPU (tiny sizes) so that it keeps working between the rare
//! runs on a GPU machine: every step completes, the JSON line is complete, and on the CPU build
//! the NCCL step finds `--distributed-backend nccl` refused with its reason.

use std::process::Command;

use anyhow::{Result, ensure};
use serde_json::Value;

#[test]
fn gpu_check_runs_its_steps_on_the_cpu() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let json = dir.path().join("gpu_check.json");
    let out = Command::new(env!("CARGO_BIN_EXE_gpu_check"))
        .args(["--device", "cpu", "--updates", "4", "--sentences", "4", "--beam", "2"])
        .arg("--work")
        .arg(dir.path().join("work"))
        .arg("--json")
        .arg(&json)
        .output()?;
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "gpu_check failed:\n{text}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
    let training = v["training"].as_array().cloned().unwrap_or_default();
    let precisions: Vec<&str> = training.iter().filter_map(|r| r["precision"].as_str()).collect();
    ensure!(precisions == ["fp32", "fp16", "bf16"], "{v}");
    for row in &training {
        ensure!(row["updates"].as_u64() == Some(4), "{row}");
        ensure!(row["words_per_sec"].as_f64().is_some_and(|w| w > 0.0), "{row}");
    }
    if seqforge_trainer::distributed::nccl_built() {
        // A CUDA build: on the CPU the NCCL step runs no collectives.
        ensure!(v["nccl"] == serde_json::json!({"built": true, "ran": false}), "{v}");
    } else {
        // The CPU build has no NCCL: the step checks the refusal and its reason.
        ensure!(v["nccl"]["built"] == Value::Bool(false), "{v}");
        let refusal = v["nccl"]["refusal"].as_str().unwrap_or_default();
        ensure!(refusal.contains("CPU libtorch"), "{refusal}");
    }
    let inference = &v["inference"];
    ensure!(inference["sentences"].as_u64() == Some(4), "{inference}");
    ensure!(inference["identical"].as_u64().is_some_and(|n| n <= 4), "{inference}");
    ensure!(text.contains("fp16 / fp32 speed"), "{text}");
    Ok(())
}
