//! The exported model directory checked by the reference Python tools: a tiny random trainer
//! model of each family (Transformer, LSTM, ConvS2S) is saved as a checkpoint, exported in fp32 and
//! fp16, and `tests/python/check_export.py` runs `onnx.checker.check_model(full_check=True)` on
//! both graphs and runs them in Python onnxruntime, driving the declared state with its own
//! reading of the contract (encoder on a padded batch, two decoder steps with beam-like
//! reorders, every state tensor's shape checked against its declaration). The Python packages come from
//! `cargo xtask setup` (`.deps/python`); without them this test fails and says so.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use seqforge_exporter::{ExportOptions, export};
use seqforge_schemas::contract::Dtype;
use seqforge_trainer::models::transformer::{Activation, Transformer, TransformerConfig};
use tch::{Device, nn};

mod common;

fn workspace() -> Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .context("the tests package has no parent folder")
}

/// Saves a random model (pre-norm decoder, gelu: more ops for the checker) with the trainer's
/// checkpoint writer; returns (checkpoint dir, data dir).
fn checkpoint(root: &Path) -> Result<(PathBuf, PathBuf)> {
    tch::manual_seed(11);
    let config = TransformerConfig {
        decoder_normalize_before: true,
        activation_fn: Activation::Gelu,
        ..TransformerConfig::from_preset("transformer_tiny")?.with_vocab(36, 44)
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Transformer::new(&vs.root(), &config)?;
    let data = root.join("data");
    std::fs::create_dir_all(&data)?;
    for (lang, size) in [("de", 36), ("en", 44)] {
        common::write_dict(&data.join(format!("dict.{lang}.txt")), size, lang, |_| 1)?;
    }
    std::fs::write(data.join("tokenizer.json"), "{\"version\": \"1.0\"}\n")?;
    let dir = root.join("checkpoint_last");
    common::save_checkpoint(&dir, &model, "transformer_tiny", &data, 11, 0)?;
    Ok((dir, data))
}

/// A checkpoint of the registry's `arch` with `overrides` (random weights, vocabularies of 40)
/// in `root/{name}`.
fn registry_checkpoint(
    root: &Path,
    name: &str,
    arch: &str,
    overrides: serde_json::Value,
) -> Result<(PathBuf, PathBuf)> {
    tch::manual_seed(12);
    let (_vs, model, config) = common::registry_model(arch, overrides, 40)?;
    let root = root.join(name);
    let data = root.join("data");
    std::fs::create_dir_all(&data)?;
    for lang in ["de", "en"] {
        common::write_dict(&data.join(format!("dict.{lang}.txt")), 40, lang, |_| 1)?;
    }
    let dir = root.join("checkpoint_last");
    common::save_model(&dir, model.as_ref(), config, arch, &data, 12, 0)?;
    Ok((dir, data))
}

/// An LSTM checkpoint (bidirectional encoder, attention, projections) in `root/lstm`.
fn lstm_checkpoint(root: &Path) -> Result<(PathBuf, PathBuf)> {
    let overrides = serde_json::json!({
        "encoder_embed_dim": 16, "encoder_hidden_size": 16, "encoder_layers": 2,
        "encoder_bidirectional": true, "decoder_embed_dim": 16, "decoder_hidden_size": 24,
        "decoder_layers": 2, "decoder_out_embed_dim": 20
    });
    registry_checkpoint(root, "lstm", "lstm_wiseman_iwslt_de_en", overrides)
}

/// A ConvS2S checkpoint (even encoder kernel, residual projections, a 1×1 decoder layer,
/// attention in some layers) in `root/fconv`.
fn fconv_checkpoint(root: &Path) -> Result<(PathBuf, PathBuf)> {
    let overrides = serde_json::json!({
        "encoder_embed_dim": 16, "decoder_embed_dim": 16, "decoder_out_embed_dim": 12,
        "encoder_layers": "[(24, 3)] + [(32, 2)]", "decoder_layers": "[(24, 3), (32, 1)]",
        "decoder_attention": "[True, True]"
    });
    registry_checkpoint(root, "fconv", "fconv_iwslt_de_en", overrides)
}

#[test]
fn onnx_checker_and_python_onnxruntime_accept_the_export() -> Result<()> {
    let root = workspace()?;
    let deps = root.join(".deps/python");
    if !deps.join("onnx").is_dir() || !deps.join("onnxruntime").is_dir() {
        bail!(
            "{} lacks onnx/onnxruntime: run cargo xtask setup (it installs the Python checker \
             packages there)",
            deps.display()
        );
    }
    let script = root.join("tests/python/check_export.py");
    let tmp = tempfile::tempdir()?;
    let (ckpt, data) = checkpoint(tmp.path())?;
    let (lstm_ckpt, lstm_data) = lstm_checkpoint(tmp.path())?;
    let (fconv_ckpt, fconv_data) = fconv_checkpoint(tmp.path())?;
    for (family, ckpt, data) in [
        ("transformer", &ckpt, &data),
        ("lstm", &lstm_ckpt, &lstm_data),
        ("fconv", &fconv_ckpt, &fconv_data),
    ] {
        for dtype in [Dtype::Fp32, Dtype::Fp16] {
            let out = tmp.path().join(format!("model-{family}-{dtype}"));
            export(&ExportOptions::new(ckpt, data, &out).with_dtype(dtype))?;
            if family == "transformer" {
                ensure!(
                    out.join("tokenizer.json").is_file(),
                    "DATA/tokenizer.json was not shipped"
                );
            }
            let result = Command::new("python3")
                .arg(&script)
                .arg(&out)
                .env("PYTHONPATH", &deps)
                .output()
                .context("running python3")?;
            let stdout = String::from_utf8_lossy(&result.stdout);
            let stderr = String::from_utf8_lossy(&result.stderr);
            print!("{stdout}");
            ensure!(
                result.status.success(),
                "{family} {dtype}: check_export.py failed:\n{stdout}\n{stderr}"
            );
            ensure!(stdout.contains("check_export: OK"), "{family} {dtype}: no OK line:\n{stdout}");
        }
    }
    Ok(())
}
