//! The `seqforge-export` binary and library on good and bad checkpoints, without libtorch: a
//! tiny checkpoint is written here in the trainer's format (fairseq state-dict names in
//! `model.safetensors`, `config.json` with the model config and dictionary identities), then
//! broken one way at a time. Every failure must name the culprit, exit non-zero and leave no
//! model directory (nor a `.tmp-` one) behind.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use seqforge_exporter::testing::{SyntheticCheckpoint, numbered_dictionary};
use seqforge_schemas::contract::Manifest;

const SRC_VOCAB: usize = 20;
const TGT_VOCAB: usize = 24;
const DIM: usize = 16;
const FFN: usize = 24;
const LAYERS: usize = 2;

/// A `transformer_tiny` as the trainer writes it: fairseq's buffers in the state dict, and
/// vocabulary sizes 0 in the model config (the dictionaries' sizes are recorded beside it).
fn checkpoint() -> SyntheticCheckpoint {
    SyntheticCheckpoint {
        record_vocab_sizes: false,
        fairseq_buffers: true,
        weight_divisor: 40.0,
        ..SyntheticCheckpoint::tiny(SRC_VOCAB, TGT_VOCAB)
    }
}

/// Names and shapes of a post-norm, sinusoidal, unshared Transformer's state dict.
fn state_dict() -> Vec<(String, Vec<usize>)> {
    checkpoint().state_dict()
}

fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>)]) -> Result<()> {
    Ok(checkpoint().write_weights(path, tensors)?)
}

/// A checkpoint directory and a data directory under `root`.
struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    ckpt: PathBuf,
    data: PathBuf,
}

fn fixture() -> Result<Fixture> {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().to_path_buf();
    let ckpt = root.join("checkpoint_last");
    let data = root.join("data");
    std::fs::create_dir_all(&data)?;
    std::fs::write(data.join("dict.de.txt"), numbered_dictionary(SRC_VOCAB, "de"))?;
    std::fs::write(data.join("dict.en.txt"), numbered_dictionary(TGT_VOCAB, "en"))?;
    checkpoint().write(&ckpt, &data)?;
    std::fs::write(ckpt.join("trainer_state.json"), "{\"num_updates\": 42}\n")?;
    Ok(Fixture { _tmp: tmp, root, ckpt, data })
}

/// Runs the binary; returns (success, stdout, stderr).
fn run(f: &Fixture, out: &Path, extra: &[&str]) -> Result<(bool, String, String)> {
    let output = Command::new(env!("CARGO_BIN_EXE_seqforge-export"))
        .arg(&f.ckpt)
        .arg("--data")
        .arg(&f.data)
        .arg("--out")
        .arg(out)
        .args(extra)
        .env("RUST_LOG", "warn")
        .output()?;
    Ok((
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// The binary fails, its message contains every `needles`, and nothing is left in `root`
/// but the inputs.
fn fails_naming(f: &Fixture, needles: &[&str]) -> Result<()> {
    let out = f.root.join("model");
    let (ok, _, stderr) = run(f, &out, &[])?;
    ensure!(!ok, "export succeeded");
    for n in needles {
        ensure!(stderr.contains(n), "error does not name {n:?}: {stderr}");
    }
    let left: Vec<String> = std::fs::read_dir(&f.root)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    ensure!(
        left.iter().all(|n| n == "checkpoint_last" || n == "data"),
        "leftovers after a failed export: {left:?}"
    );
    Ok(())
}

#[test]
fn the_binary_exports_and_replaces_only_with_force() -> Result<()> {
    let f = fixture()?;
    let out = f.root.join("model");
    let (ok, stdout, stderr) = run(&f, &out, &["--dtype", "fp16"])?;
    ensure!(ok, "export failed: {stderr}");
    ensure!(stdout.contains("encoder.onnx") && stdout.contains("total"), "summary: {stdout}");
    let manifest = seqforge_exporter::export::verify_model_dir(&out)?;
    ensure!(manifest.num_updates == 42 && manifest.files.tokenizer.is_none(), "{manifest:?}");
    ensure!(manifest.contract.dtype.as_str() == "fp16", "{manifest:?}");

    let (ok, _, stderr) = run(&f, &out, &[])?;
    ensure!(!ok && stderr.contains("--force") && stderr.contains("model"), "{stderr}");

    let tokenizer = f.root.join("tok.json");
    std::fs::write(&tokenizer, "{}")?;
    let (ok, _, stderr) =
        run(&f, &out, &["--force", "--tokenizer", tokenizer.to_str().context("path")?])?;
    ensure!(ok, "--force failed: {stderr}");
    let manifest = Manifest::load(&out)?;
    ensure!(manifest.contract.dtype.as_str() == "fp32", "not replaced: {manifest:?}");
    ensure!(manifest.files.tokenizer.is_some(), "--tokenizer not shipped");
    let names: Vec<String> = std::fs::read_dir(&f.root)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    ensure!(names.iter().all(|n| !n.contains(".tmp-") && !n.contains(".old-")), "{names:?}");

    // A file changed after the export no longer matches the manifest.
    std::fs::write(out.join("dict.en.txt"), "tampered 1\n")?;
    let e =
        seqforge_exporter::export::verify_model_dir(&out).err().context("tampering unnoticed")?;
    ensure!(e.to_string().contains("dict.en.txt") && e.to_string().contains("SHA-256"), "{e}");
    Ok(())
}

#[test]
fn unknown_architecture_is_named() -> Result<()> {
    let f = fixture()?;
    SyntheticCheckpoint { arch: "fconv_made_up".into(), ..checkpoint() }
        .write_config(&f.ckpt, &f.data)?;
    fails_naming(
        &f,
        &["fconv_made_up", "config.json", "unknown architecture", "lstm", "transformer"],
    )?;
    // A known architecture of another family: its config does not parse as that family's.
    SyntheticCheckpoint { arch: "lstm_wiseman_iwslt_de_en".into(), ..checkpoint() }
        .write_config(&f.ckpt, &f.data)?;
    fails_naming(&f, &["config.json", "lstm config", "unknown field"])
}

#[test]
fn missing_tensor_is_named() -> Result<()> {
    let f = fixture()?;
    let tensors: Vec<_> =
        state_dict().into_iter().filter(|(n, _)| n != "decoder.layers.1.fc2.bias").collect();
    write_safetensors(&f.ckpt.join("model.safetensors"), &tensors)?;
    fails_naming(&f, &["decoder.layers.1.fc2.bias", "missing", "model.safetensors"])
}

#[test]
fn misshaped_tensor_is_named() -> Result<()> {
    let f = fixture()?;
    let tensors: Vec<_> = state_dict()
        .into_iter()
        .map(
            |(n, s)| {
                if n == "encoder.layers.0.fc1.weight" { (n, vec![FFN + 1, DIM]) } else { (n, s) }
            },
        )
        .collect();
    write_safetensors(&f.ckpt.join("model.safetensors"), &tensors)?;
    fails_naming(&f, &["encoder.layers.0.fc1.weight", "[25, 16]", "[24, 16]"])
}

#[test]
fn unexpected_tensor_is_named() -> Result<()> {
    let f = fixture()?;
    let mut tensors = state_dict();
    tensors.push(("decoder.embed_positions.weight".into(), vec![66, DIM]));
    write_safetensors(&f.ckpt.join("model.safetensors"), &tensors)?;
    fails_naming(&f, &["decoder.embed_positions.weight", "unexpected"])
}

#[test]
fn dictionary_mismatch_is_named() -> Result<()> {
    let f = fixture()?;
    std::fs::write(f.data.join("dict.en.txt"), numbered_dictionary(TGT_VOCAB, "xx"))?;
    fails_naming(&f, &["dict.en.txt", "not the one the checkpoint was trained with"])?;
    std::fs::remove_file(f.data.join("dict.en.txt"))?;
    fails_naming(&f, &["dict.en.txt", "no such file"])
}

#[test]
fn unwritable_output_directory_is_named() -> Result<()> {
    let f = fixture()?;
    // A regular file where a directory should be: unwritable even for root.
    let blocker = f.root.join("not-a-dir");
    std::fs::write(&blocker, "")?;
    let out = blocker.join("model");
    let (ok, _, stderr) = run(&f, &out, &[])?;
    ensure!(!ok, "export into {} succeeded", out.display());
    ensure!(stderr.contains("not-a-dir"), "error does not name the directory: {stderr}");
    let names: Vec<String> = std::fs::read_dir(&f.root)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    ensure!(names.iter().all(|n| !n.contains(".tmp-")), "{names:?}");
    Ok(())
}

#[test]
fn library_errors_are_typed() -> Result<()> {
    let f = fixture()?;
    let tensors: Vec<_> =
        state_dict().into_iter().filter(|(n, _)| n != "encoder.embed_tokens.weight").collect();
    write_safetensors(&f.ckpt.join("model.safetensors"), &tensors)?;
    let e = seqforge_exporter::export(&seqforge_exporter::ExportOptions::new(
        &f.ckpt,
        &f.data,
        f.root.join("m"),
    ))
    .err()
    .context("export of a broken checkpoint succeeded")?;
    ensure!(
        matches!(&e, seqforge_exporter::Error::MissingTensor { tensor, .. } if tensor == "encoder.embed_tokens.weight"),
        "{e:?}"
    );
    Ok(())
}

/// The written graphs carry the contract: IR version, opset, metadata equal to the manifest,
/// and exactly the contract's input/output names in order.
#[test]
fn graphs_follow_the_contract() -> Result<()> {
    use prost::Message;
    use seqforge_exporter::transformer::ENCODER_OUT;
    use seqforge_schemas::arch::transformer::state_names as sn;
    use seqforge_schemas::contract::{GraphKind, ModelContract, names};
    use seqforge_schemas::onnx::ModelProto;
    let f = fixture()?;
    let out = f.root.join("model");
    let summary =
        seqforge_exporter::export(&seqforge_exporter::ExportOptions::new(&f.ckpt, &f.data, &out))?;
    let manifest = summary.manifest;
    ensure!(manifest.contract.src_vocab_size == SRC_VOCAB, "{:?}", manifest.contract);
    ensure!(manifest.contract.state.dims["head_dim"] == DIM / 2, "{:?}", manifest.contract);
    for (file, kind) in [("encoder.onnx", GraphKind::Encoder), ("decoder.onnx", GraphKind::Decoder)]
    {
        let model = ModelProto::decode(std::fs::read(out.join(file))?.as_slice())?;
        ensure!(model.ir_version == Some(seqforge_schemas::onnx::SUPPORTED_IR_VERSION), "{file}");
        ensure!(model.opset_import.iter().any(|o| o.version == Some(17)), "{file}: opset");
        let props = model
            .metadata_props
            .iter()
            .map(|p| (p.key.clone().unwrap_or_default(), p.value.clone().unwrap_or_default()))
            .collect();
        let contract = ModelContract::from_metadata(file, kind, &props)?;
        manifest.contract.check_same(file, &contract)?;
        let graph = model.graph.context("no graph")?;
        let io = |v: &[seqforge_schemas::onnx::ValueInfoProto]| -> Vec<String> {
            v.iter().map(|v| v.name.clone().unwrap_or_default()).collect()
        };
        let per_layer = |a: fn(usize) -> String, b: fn(usize) -> String| -> Vec<String> {
            (0..LAYERS).flat_map(|l| [a(l), b(l)]).collect()
        };
        let self_kv = |wrap: fn(&str) -> String| -> Vec<String> {
            (0..LAYERS).flat_map(|l| [wrap(&sn::self_key(l)), wrap(&sn::self_value(l))]).collect()
        };
        let (inputs, outputs): (Vec<String>, Vec<String>) = match kind {
            GraphKind::Encoder => (
                vec![names::SRC_TOKENS.into()],
                [ENCODER_OUT.to_string(), sn::ENCODER_PADDING_MASK.into()]
                    .into_iter()
                    .chain(per_layer(sn::cross_key, sn::cross_value))
                    .collect(),
            ),
            GraphKind::Decoder => (
                [names::PREV_TOKENS, names::REORDER, sn::ENCODER_PADDING_MASK]
                    .into_iter()
                    .map(String::from)
                    .chain(per_layer(sn::cross_key, sn::cross_value))
                    .chain(self_kv(names::past))
                    .chain([names::POSITION, names::TOP_K].map(String::from))
                    .collect(),
                [names::LOG_PROBS, names::TOP_LOG_PROBS, names::TOP_IDS]
                    .into_iter()
                    .map(String::from)
                    .chain(self_kv(names::present))
                    .collect(),
            ),
            GraphKind::Prefill => anyhow::bail!("a translation model has no prefill graph"),
        };
        ensure!(io(&graph.input) == inputs, "{file} inputs {:?}", io(&graph.input));
        ensure!(io(&graph.output) == outputs, "{file} outputs {:?}", io(&graph.output));
        // Node names follow the fairseq parameter names.
        let nodes: Vec<String> = graph.node.iter().filter_map(|n| n.name.clone()).collect();
        let wanted = match kind {
            GraphKind::Encoder => "encoder.layers.1.self_attn.q_proj",
            GraphKind::Decoder => "decoder.layers.1.encoder_attn.q_proj",
            GraphKind::Prefill => anyhow::bail!("a translation model has no prefill graph"),
        };
        ensure!(nodes.iter().any(|n| n == wanted), "{file}: no node {wanted}");
    }
    Ok(())
}

/// A user error is its message only, even with `RUST_BACKTRACE=1` (common on developers'
/// machines), and the log lines before it, written to a pipe, carry no colour codes.
#[test]
fn user_errors_are_messages_and_piped_logs_are_plain() -> Result<()> {
    let f = fixture()?;
    std::fs::write(f.ckpt.join("model.safetensors"), b"not safetensors")?;
    let out = Command::new(env!("CARGO_BIN_EXE_seqforge-export"))
        .arg(&f.ckpt)
        .arg("--data")
        .arg(&f.data)
        .arg("--out")
        .arg(f.root.join("model"))
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(stderr.contains("reading "), "no log line to check: {stderr}");
    seqforge_testkit::check_user_error(&out, "model.safetensors")?;
    Ok(())
}
