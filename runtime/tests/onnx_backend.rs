//! The ONNX backend and the `seqforge generate` / `seqforge interactive` commands end to end,
//! without libtorch: a tiny checkpoint is written here in the trainer's format (fairseq
//! state-dict names, deterministic weights), exported with the exporter library together with a
//! byte-level BPE `tokenizer.json`, then translated through the binary. Bad inputs (missing or
//! corrupt files, a newer format version, invalid UTF-8, over-long lines, an unavailable
//! execution provider) must exit non-zero with a message naming the culprit.
#![cfg(feature = "onnx")]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use seqforge_runtime::Error;
use seqforge_runtime::decoding::IncrementalDecoder;
use seqforge_runtime::onnx::{Device, ModelDir, OnnxDecoder, RuntimeOptions};
use seqforge_runtime::search::{GenerationOptions, generate};
use seqforge_runtime::text::{Overlong, TextPipeline};
use seqforge_schemas::contract::MANIFEST_FILE;

use common::{Fixture, fixture};

/// A copy of the model directory that a test may break.
fn copy_model(f: &Fixture, name: &str) -> Result<PathBuf> {
    let dir = f.root.join(name);
    std::fs::create_dir_all(&dir)?;
    for entry in std::fs::read_dir(&f.model)? {
        let entry = entry?;
        std::fs::copy(entry.path(), dir.join(entry.file_name()))?;
    }
    Ok(dir)
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn seqforge(args: &[&str], stdin: Option<&[u8]>) -> Result<Run> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_seqforge"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("RUST_BACKTRACE")
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(bytes) = stdin {
        child.stdin.take().context("stdin")?.write_all(bytes)?;
    }
    let out = child.wait_with_output()?;
    Ok(Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

fn path(p: &Path) -> Result<&str> {
    p.to_str().context("non-UTF-8 temporary path")
}

/// Common flags: short outputs so the tests run fast.
const FAST: [&str; 6] = ["--beam", "3", "--max-len-b", "8", "--threads", "1"];

#[test]
fn generate_prints_fairseq_lines_plain_lines_and_scores() -> Result<()> {
    let f = fixture()?;
    let input = f.root.join("in.txt");
    std::fs::write(&input, "hola mundo\n\nel gato negro\ne\u{301}l\n")?;
    let reference = f.root.join("ref.txt");
    std::fs::write(&reference, "hello world\n\nthe black cat\nhe\n")?;
    let (model, input_s, ref_s) = (path(&f.model)?, path(&input)?, path(&reference)?);

    let mut args = vec!["generate", model, "--input", input_s, "--ref", ref_s, "--nbest", "2"];
    args.extend(FAST);
    let run = seqforge(&args, None)?;
    ensure!(run.ok, "generate failed: {}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    for id in 0..4 {
        for tag in ["S", "T", "H", "D", "P"] {
            let prefix = format!("{tag}-{id}\t");
            ensure!(lines.iter().any(|l| l.starts_with(&prefix)), "no {prefix:?} in {lines:?}");
        }
    }
    // nbest 2: two H lines for each non-empty line; the source shown is what the model saw,
    // detokenized (NFC applied by the tokenizer).
    ensure!(lines.iter().filter(|l| l.starts_with("H-2\t")).count() == 2, "{lines:?}");
    ensure!(lines.contains(&"S-3\t\u{e9}l"), "S-3 not NFC: {lines:?}");
    ensure!(lines.contains(&"S-2\tel gato negro"), "{lines:?}");
    // H = byte-level symbols with a score in base 2, P = one score per token.
    for l in lines.iter().filter(|l| l.starts_with("H-0\t")) {
        let fields: Vec<&str> = l.split('\t').collect();
        ensure!(fields.len() == 3 && fields[1].parse::<f64>().is_ok(), "{l:?}");
        let tokens = fields[2].split(' ').filter(|s| !s.is_empty()).count();
        let p = lines.iter().find(|p| p.starts_with("P-0\t")).context("P-0")?;
        ensure!(p.split('\t').nth(1).map(|s| s.split(' ').count()) == Some(tokens + 1), "{p:?}");
    }
    ensure!(lines.contains(&"H-1\t0.0\t"), "empty line's hypothesis: {lines:?}");
    let last = lines.last().context("no output")?;
    ensure!(last.contains("with beam=3: BLEU = ") && last.contains("chrF2 = "), "{last:?}");
    ensure!(run.stderr.contains("Translated 3 sentences ("), "summary: {}", run.stderr);

    let mut args = vec!["generate", model, "--input", input_s, "--output-format", "plain"];
    args.extend(FAST);
    args.extend(["--max-tokens", "7"]);
    let plain = seqforge(&args, None)?;
    ensure!(plain.ok, "plain failed: {}", plain.stderr);
    let out: Vec<&str> = plain.stdout.split_terminator('\n').collect();
    ensure!(out.len() == 4 && out[1].is_empty(), "one line per input line: {out:?}");
    // Plain output is D of the fairseq run, in input order, whatever the batching.
    for (id, text) in out.iter().enumerate() {
        let d = lines.iter().find(|l| l.starts_with(&format!("D-{id}\t"))).context("D")?;
        ensure!(d.split('\t').nth(2) == Some(*text), "line {id}: {d:?} vs {text:?}");
    }
    Ok(())
}

/// Batches spread over several workers (each with its own sessions and one intra-op thread)
/// give exactly the lines of one worker, in input order.
#[test]
fn workers_decode_batches_side_by_side_with_identical_output() -> Result<()> {
    let f = fixture()?;
    let input = f.root.join("in.txt");
    let lines = ["hola mundo", "el gato negro", "", "la casa", "un perro", "el mar azul", "sol"];
    std::fs::write(&input, lines.join("\n") + "\n")?;
    let (model, input_s) = (path(&f.model)?, path(&input)?);
    let run = |threads: &str, workers: &str, batch: &str| -> Result<String> {
        let args = ["generate", model, "--input", input_s, "--beam", "3", "--max-len-b", "8"];
        let mut args = args.to_vec();
        args.extend(["--threads", threads, "--workers", workers, "--batch-size", batch]);
        let run = seqforge(&args, None)?;
        ensure!(run.ok, "generate {threads} threads, {workers} workers failed: {}", run.stderr);
        Ok(run.stdout)
    };
    let one = run("1", "1", "1")?;
    // One H line per input line (the empty line's hypothesis is empty).
    ensure!(one.lines().filter(|l| l.starts_with("H-")).count() == lines.len(), "{one}");
    for (threads, workers, batch) in [("3", "3", "1"), ("2", "0", "2"), ("2", "4", "1")] {
        let many = run(threads, workers, batch)?;
        ensure!(
            many == one,
            "{threads} threads, {workers} workers, batch {batch}:\n{many}\nvs\n{one}"
        );
    }
    Ok(())
}

#[test]
fn interactive_answers_line_by_line() -> Result<()> {
    let f = fixture()?;
    let model = path(&f.model)?;
    let mut args = vec!["interactive", model];
    args.extend(FAST);
    let run = seqforge(&args, Some(b"hola\r\n\nadios amigos\n"))?;
    ensure!(run.ok, "interactive failed: {}", run.stderr);
    let out: Vec<&str> = run.stdout.split_terminator('\n').collect();
    ensure!(out.len() == 3 && out[1].is_empty(), "{out:?}");
    ensure!(run.stderr.contains("Translated 2 sentences"), "{}", run.stderr);

    args.extend(["--output-format", "fairseq", "--buffer-size", "2"]);
    let run = seqforge(&args, Some(b"hola\nadios amigos\nbuenas\n"))?;
    ensure!(run.ok, "interactive failed: {}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    for id in 0..3 {
        for tag in ["S", "H", "D", "P"] {
            let prefix = format!("{tag}-{id}\t");
            ensure!(lines.iter().filter(|l| l.starts_with(&prefix)).count() == 1, "{lines:?}");
        }
    }
    ensure!(lines.contains(&"S-1\tadios amigos"), "{lines:?}");
    Ok(())
}

/// A user error is its message only, even with `RUST_BACKTRACE=1` (common on developers'
/// machines), and the log lines before it, written to a pipe, carry no colour codes.
#[test]
fn user_errors_are_messages_and_piped_logs_are_plain() -> Result<()> {
    let f = fixture()?;
    let bad = f.root.join("bad.txt");
    std::fs::write(&bad, b"hola\nca\xffe\n")?;
    let out = Command::new(env!("CARGO_BIN_EXE_seqforge"))
        .args(["generate", path(&f.model)?, "--input", path(&bad)?])
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LOG", "debug")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(stderr.contains("seqforge_runtime::onnx"), "no log line to check: {stderr}");
    seqforge_testkit::check_user_error(&out, "bad.txt:2")?;
    Ok(())
}

#[test]
fn bad_inputs_fail_with_messages_that_name_them() -> Result<()> {
    let f = fixture()?;
    let model = path(&f.model)?;
    let fails = |args: &[&str], needles: &[&str]| -> Result<()> {
        let run = seqforge(args, None)?;
        ensure!(!run.ok, "{args:?} succeeded: {}", run.stdout);
        for n in needles {
            ensure!(
                run.stderr.contains(n),
                "{args:?}: error does not mention {n:?}: {}",
                run.stderr
            );
        }
        Ok(())
    };

    // Invalid UTF-8 on line 2: an error naming the line, or skipped (plain output keeps it as
    // an empty line and the other lines are translated).
    let bad = f.root.join("bad.txt");
    std::fs::write(&bad, b"hola\nca\xffe\nadios\n")?;
    let bad_s = path(&bad)?;
    fails(&["generate", model, "--input", bad_s], &["bad.txt:2", "UTF-8", "--skip-invalid"])?;
    let mut args =
        vec!["generate", model, "--input", bad_s, "--skip-invalid", "--output-format", "plain"];
    args.extend(FAST);
    let run = seqforge(&args, None)?;
    ensure!(run.ok, "--skip-invalid failed: {}", run.stderr);
    let out: Vec<&str> = run.stdout.split_terminator('\n').collect();
    ensure!(out.len() == 3 && out[1].is_empty(), "{out:?}");
    ensure!(run.stderr.contains("bad.txt:2: skipped"), "{}", run.stderr);
    ensure!(run.stderr.contains("Translated 2 sentences"), "{}", run.stderr);
    let mut args = vec!["interactive", model];
    args.extend(FAST);
    let run = seqforge(&args, Some(b"hola\n\xfe\n"))?;
    ensure!(!run.ok && run.stderr.contains("<stdin>:2"), "{}", run.stderr);

    // Over-long: 70 byte-level symbols + EOS > 64 positions.
    let long = f.root.join("long.txt");
    std::fs::write(&long, format!("ok\n{}\n", "a".repeat(70)))?;
    let long_s = path(&long)?;
    fails(
        &["generate", model, "--input", long_s],
        &["long.txt:2", "71 source tokens", "64", "--truncate-source"],
    )?;
    let mut args =
        vec!["generate", model, "--input", long_s, "--truncate-source", "--output-format", "plain"];
    args.extend(FAST);
    let run = seqforge(&args, None)?;
    ensure!(run.ok && run.stdout.split_terminator('\n').count() == 2, "{}", run.stderr);
    ensure!(run.stderr.contains("1 sources truncated"), "{}", run.stderr);

    let ok = f.root.join("ok.txt");
    std::fs::write(&ok, "hola\n")?;
    let ok_s = path(&ok)?;

    // An unavailable execution provider is an error, not a CPU fallback.
    fails(
        &["generate", model, "--input", ok_s, "--device", "cuda"],
        &["cuda", "no CPU fallback", "CPUExecutionProvider"],
    )?;
    fails(&["generate", model, "--input", ok_s, "--trt-fp16"], &["--device tensorrt"])?;

    // A missing graph.
    let missing = copy_model(&f, "missing")?;
    std::fs::remove_file(missing.join("decoder.onnx"))?;
    fails(&["generate", path(&missing)?, "--input", ok_s], &["decoder.onnx", "missing"])?;

    // A newer format version.
    let newer = copy_model(&f, "newer")?;
    let manifest = std::fs::read_to_string(newer.join(MANIFEST_FILE))?;
    let current = format!("\"format_version\": {}", seqforge_schemas::contract::FORMAT_VERSION);
    ensure!(manifest.contains(&current), "{manifest}");
    std::fs::write(
        newer.join(MANIFEST_FILE),
        manifest.replace(&current, "\"format_version\": 99"),
    )?;
    fails(
        &["generate", path(&newer)?, "--input", ok_s],
        &["manifest.json", "version 99", "re-export"],
    )?;
    // A version-1 directory (before the state was declared) asks to be re-exported.
    std::fs::write(newer.join(MANIFEST_FILE), manifest.replace(&current, "\"format_version\": 1"))?;
    fails(
        &["generate", path(&newer)?, "--input", ok_s],
        &["manifest.json", "version 1,", "re-export"],
    )?;

    // A manifest that disagrees with the graphs' metadata_props.
    let edited = copy_model(&f, "edited")?;
    let manifest = std::fs::read_to_string(edited.join(MANIFEST_FILE))?;
    ensure!(manifest.contains("\"head_dim\": 8"), "{manifest}");
    std::fs::write(
        edited.join(MANIFEST_FILE),
        manifest.replace("\"head_dim\": 8", "\"head_dim\": 4"),
    )?;
    fails(&["generate", path(&edited)?, "--input", ok_s], &["encoder.onnx", "`state`"])?;

    // A corrupt graph: named when loading, and by its hash with --verify.
    let corrupt = copy_model(&f, "corrupt")?;
    std::fs::write(corrupt.join("encoder.onnx"), b"not an onnx model")?;
    fails(&["generate", path(&corrupt)?, "--input", ok_s], &["encoder.onnx"])?;
    fails(
        &["generate", path(&corrupt)?, "--input", ok_s, "--verify"],
        &["encoder.onnx", "SHA-256"],
    )?;

    // A swapped dictionary is always caught by its hash.
    let swapped = copy_model(&f, "swapped")?;
    let dict = std::fs::read_to_string(swapped.join("dict.en.txt"))?;
    std::fs::write(swapped.join("dict.en.txt"), dict.replacen(" 1\n", " 2\n", 1))?;
    fails(&["generate", path(&swapped)?, "--input", ok_s], &["dict.en.txt", "SHA-256"])?;

    // Missing input file, bad option combinations.
    fails(&["generate", model, "--input", "/nonexistent/in.txt"], &["/nonexistent/in.txt"])?;
    fails(&["generate", model, "--input", ok_s, "--prefix-size", "1"], &["--ref"])?;
    fails(&["generate", model, "--input", ok_s, "--beam", "3", "--nbest", "4"], &["nbest"])?;
    Ok(())
}

/// Applies `edit` to the declared state of a copy of the model: in the manifest and in both
/// graphs' `metadata_props`, so that all three still agree and only the graphs' real inputs
/// and outputs can contradict the declaration.
fn rewrite_state(
    f: &Fixture,
    name: &str,
    edit: impl Fn(&mut serde_json::Value) -> Result<()>,
) -> Result<PathBuf> {
    use prost::Message;
    let dir = copy_model(f, name)?;
    let manifest_path = dir.join(MANIFEST_FILE);
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path)?)?;
    edit(&mut manifest["contract"]["state"])?;
    let state = serde_json::to_string(&manifest["contract"]["state"])?;
    std::fs::write(&manifest_path, serde_json::to_string_pretty(&manifest)?)?;
    for file in ["encoder.onnx", "decoder.onnx"] {
        let path = dir.join(file);
        let mut model =
            seqforge_schemas::onnx::ModelProto::decode(std::fs::read(&path)?.as_slice())?;
        let prop = model
            .metadata_props
            .iter_mut()
            .find(|p| p.key.as_deref() == Some("seqforge.state"))
            .context("no seqforge.state")?;
        prop.value = Some(state.clone());
        std::fs::write(&path, model.encode_to_vec())?;
    }
    Ok(dir)
}

/// The error of opening `dir` and decoding one step, as text.
fn open_and_step(dir: &Path) -> Result<String> {
    let run = || -> Result<(), Error> {
        let model = Arc::new(ModelDir::open(dir, &RuntimeOptions::default())?);
        let mut decoder = OnnxDecoder::new(model)?;
        let encoded = decoder.encode(&[vec![5, 6, 2], vec![7, 2]])?;
        let mut state = decoder.init_state(&encoded, 2)?;
        decoder.step(&[2, 2, 2, 2], &mut state)?;
        decoder.step(&[5, 6, 7, 8], &mut state)?;
        Ok(())
    };
    match run() {
        Ok(()) => anyhow::bail!("{}: decoding a declared-state mismatch succeeded", dir.display()),
        Err(e) => Ok(e.to_string()),
    }
}

#[test]
fn a_declared_state_that_disagrees_with_the_graphs_is_named() -> Result<()> {
    let f = fixture()?;
    let tensor = |state: &mut serde_json::Value, name: &str| -> Result<serde_json::Value> {
        state["tensors"]
            .as_array()
            .and_then(|ts| ts.iter().find(|t| t["name"] == name))
            .cloned()
            .context("no such tensor")
    };
    let set = |state: &mut serde_json::Value, name: &str, t: serde_json::Value| {
        if let Some(ts) = state["tensors"].as_array_mut() {
            for x in ts.iter_mut().filter(|x| x["name"] == name) {
                *x = t.clone();
            }
        }
    };
    // A renamed recurrent tensor: the step graph has no `past.self_kee.0`.
    let dir = rewrite_state(&f, "renamed", |s| {
        let mut t = tensor(s, "self_key.0")?;
        t["name"] = "self_kee.0".into();
        set(s, "self_key.0", t);
        Ok(())
    })?;
    let e = open_and_step(&dir)?;
    ensure!(e.contains("decoder.onnx") && e.contains("past.self_kee.0"), "{e}");

    // A graph input the declaration does not list (`past.self_key.0` after dropping it).
    let dir = rewrite_state(&f, "undeclared", |s| {
        if let Some(ts) = s["tensors"].as_array_mut() {
            ts.retain(|t| t["name"] != "self_key.0");
        }
        Ok(())
    })?;
    let e = open_and_step(&dir)?;
    ensure!(
        e.contains("past.self_key.0") && e.contains("declared state has no such tensor"),
        "{e}"
    );

    // A declared per-sentence tensor the encoder does not produce.
    let dir = rewrite_state(&f, "no_output", |s| {
        let mut t = tensor(s, "encoder_padding_mask")?;
        t["name"] = "source_lengths".into();
        s["tensors"].as_array_mut().context("tensors")?.push(t);
        Ok(())
    })?;
    let e = open_and_step(&dir)?;
    ensure!(e.contains("encoder.onnx") && e.contains("source_lengths"), "{e}");

    // A wrong constant dimension: the encoder's cross keys do not have the declared shape.
    let dir = rewrite_state(&f, "wrong_dim", |s| {
        let heads = s["dims"]["heads"].as_u64().context("heads")?;
        s["dims"]["heads"] = (heads + 1).into();
        Ok(())
    })?;
    let e = open_and_step(&dir)?;
    ensure!(e.contains("cross_key.0") && e.contains("declared state says"), "{e}");

    // One state tensor declared with a wrong constant: named when the graphs are checked.
    let dir = rewrite_state(&f, "wrong_present", |s| {
        let heads = s["dims"]["heads"].as_u64().context("heads")?;
        s["dims"]["more_heads"] = (heads + 1).into();
        let mut t = tensor(s, "self_value.0")?;
        t["shape"][1] = "more_heads".into();
        set(s, "self_value.0", t);
        Ok(())
    })?;
    let e = open_and_step(&dir)?;
    ensure!(e.contains("past.self_value.0") && e.contains("declared state says"), "{e}");

    // Malformed declarations fail when the manifest is read, naming the tensor.
    let dir = rewrite_state(&f, "unknown_dim", |s| {
        let mut t = tensor(s, "cross_key.0")?;
        t["shape"][1] = "hedas".into();
        set(s, "cross_key.0", t);
        Ok(())
    })?;
    let e = open_and_step(&dir)?;
    ensure!(e.contains("cross_key.0") && e.contains("unknown dimension `hedas`"), "{e}");
    let dir = rewrite_state(&f, "unknown_policy", |s| {
        let mut t = tensor(s, "self_key.0")?;
        t["policy"] = serde_json::json!({"kind": "ring_buffer"});
        set(s, "self_key.0", t);
        Ok(())
    })?;
    let e = open_and_step(&dir)?;
    ensure!(e.contains("manifest.json") && e.contains("ring_buffer"), "{e}");
    Ok(())
}

#[test]
fn library_errors_are_typed_and_cuda_is_refused_on_cpu_onnx_runtime() -> Result<()> {
    let f = fixture()?;
    let cuda =
        RuntimeOptions { device: Device::Cuda { device_id: 0 }, ..RuntimeOptions::default() };
    match ModelDir::open(&f.model, &cuda) {
        Err(Error::ExecutionProvider { provider: "cuda", .. }) => {}
        other => anyhow::bail!("expected an execution-provider error, got {other:?}"),
    }
    let missing = copy_model(&f, "missing")?;
    std::fs::remove_file(missing.join("encoder.onnx"))?;
    match ModelDir::open(&missing, &RuntimeOptions::default()) {
        Err(Error::ModelFileMissing { path, role: "encoder" }) => {
            ensure!(path.ends_with("encoder.onnx"), "{path:?}")
        }
        other => anyhow::bail!("expected a missing-file error, got {other:?}"),
    }
    Ok(())
}

#[test]
fn shared_model_many_decoders_and_the_text_pipeline_round_trip() -> Result<()> {
    let f = fixture()?;
    let model =
        Arc::new(ModelDir::open(&f.model, &RuntimeOptions { threads: 1, ..Default::default() })?);
    let c = model.contract();
    let text = TextPipeline::new(
        model.src_vocab().clone(),
        model.tgt_vocab().clone(),
        model.tokenizer_path(),
        c.special,
        c.max_source_positions,
    )?;
    // Byte-level BPE: any text (NFC) survives source encoding and target decoding, since both
    // dictionaries are the same here.
    for line in ["hola mundo", "  dos  espacios ", "e\u{301}l ñandú — 💡", "tab\there"] {
        let src = text.encode_line(line, "t", 1, Overlong::Error)?;
        ensure!(!src.is_empty() && src.unknown == 0, "{line:?}: {src:?}");
        let nfc = line.replace("e\u{301}", "\u{e9}");
        ensure!(text.detokenize(&src.ids)? == nfc, "{line:?} → {:?}", text.detokenize(&src.ids)?);
    }
    // Two workers over one shared model give the same results.
    let sources: Vec<Vec<u32>> = ["hola", "el gato"]
        .iter()
        .map(|l| text.encode_line(l, "t", 1, Overlong::Error).map(|s| s.ids))
        .collect::<seqforge_runtime::Result<_>>()?;
    let options = GenerationOptions { beam: 3, max_len_b: 8, ..Default::default() };
    let mut a = OnnxDecoder::new(Arc::clone(&model))?;
    let mut b = OnnxDecoder::new(Arc::clone(&model))?;
    let ra = generate(&mut a, &sources, &options)?;
    let rb = std::thread::scope(|s| s.spawn(move || generate(&mut b, &sources, &options)).join())
        .map_err(|_| anyhow::anyhow!("worker panicked"))??;
    ensure!(ra == rb, "{ra:?} vs {rb:?}");
    ensure!(a.vocab_size() == c.tgt_vocab_size, "vocab");
    Ok(())
}

/// Writes `{prefix}.idx` + `{prefix}.bin` in fairseq 0.12.2's mmap layout (`MMIDIDX\0\0`,
/// version 1, dtype code 8 = uint16, count, i32 sizes, i64 byte pointers), as its binarizer does
/// for a dictionary under 65,500 symbols.
fn write_binarized(prefix: &Path, items: &[Vec<u32>]) -> Result<()> {
    let mut idx = b"MMIDIDX\x00\x00".to_vec();
    idx.extend_from_slice(&1u64.to_le_bytes());
    idx.push(8);
    idx.extend_from_slice(&(items.len() as u64).to_le_bytes());
    let mut bin = Vec::new();
    let mut pointers = Vec::new();
    for item in items {
        idx.extend_from_slice(&i32::try_from(item.len())?.to_le_bytes());
        pointers.push(i64::try_from(bin.len())?);
        for &id in item {
            bin.extend_from_slice(&u16::try_from(id)?.to_le_bytes());
        }
    }
    for p in pointers {
        idx.extend_from_slice(&p.to_le_bytes());
    }
    std::fs::write(format!("{}.idx", prefix.display()), idx)?;
    std::fs::write(format!("{}.bin", prefix.display()), bin)?;
    Ok(())
}

/// A binarized `test` split of `sources` → `targets` (es → en) with the model's dictionaries,
/// encoded as `preprocess` does (the text pipeline's ids, EOS appended on both sides).
fn binarize(f: &Fixture, name: &str, sources: &[&str], targets: &[&str]) -> Result<PathBuf> {
    let model = ModelDir::open(&f.model, &RuntimeOptions { threads: 1, ..Default::default() })?;
    let c = model.contract();
    let text = TextPipeline::new(
        model.src_vocab().clone(),
        model.tgt_vocab().clone(),
        model.tokenizer_path(),
        c.special,
        c.max_source_positions,
    )?;
    let dir = f.root.join(name);
    std::fs::create_dir_all(&dir)?;
    for lang in ["es", "en"] {
        let dict = format!("dict.{lang}.txt");
        std::fs::copy(f.root.join("data").join(&dict), dir.join(&dict))?;
    }
    let src: Vec<Vec<u32>> = sources
        .iter()
        .map(|l| text.encode_line(l, "t", 1, Overlong::Error).map(|s| s.ids))
        .collect::<seqforge_runtime::Result<_>>()?;
    let mut tgt = Vec::new();
    for l in targets {
        let mut ids = text.encode_target(l)?;
        ids.push(c.special.eos);
        tgt.push(ids);
    }
    write_binarized(&dir.join("test.es-en.es"), &src)?;
    write_binarized(&dir.join("test.es-en.en"), &tgt)?;
    Ok(dir)
}

#[test]
fn generate_from_a_binarized_split_matches_the_raw_text() -> Result<()> {
    let f = fixture()?;
    let sources = ["hola mundo", "", "el gato negro", "e\u{301}l"];
    let targets = ["hello world", "", "the black cat", "he"];
    let input = f.root.join("in.txt");
    std::fs::write(&input, sources.join("\n") + "\n")?;
    let reference = f.root.join("ref.txt");
    std::fs::write(&reference, targets.join("\n") + "\n")?;
    let data = binarize(&f, "data-bin", &sources, &targets)?;
    let (model, input_s, ref_s, data_s) =
        (path(&f.model)?, path(&input)?, path(&reference)?, path(&data)?);

    // Plain output: the same translations, line for line.
    let plain = |source: &[&str]| -> Result<Run> {
        let mut args = vec!["generate", model];
        args.extend(source);
        args.extend(["--output-format", "plain"]);
        args.extend(FAST);
        let run = seqforge(&args, None)?;
        ensure!(run.ok, "{args:?} failed: {}", run.stderr);
        Ok(run)
    };
    let from_text = plain(&["--input", input_s])?;
    let from_data = plain(&["--data", data_s, "--gen-subset", "test"])?;
    ensure!(from_text.stdout.lines().count() == 4, "{:?}", from_text.stdout);
    ensure!(
        from_data.stdout == from_text.stdout,
        "--data {:?} vs --input {:?}",
        from_data.stdout,
        from_text.stdout
    );
    ensure!(from_data.stderr.contains("Translated 3 sentences ("), "{}", from_data.stderr);
    // Forced prefixes come from the target side as they came from --ref.
    let forced_text = plain(&["--input", input_s, "--ref", ref_s, "--prefix-size", "1"])?;
    let forced_data = plain(&["--data", data_s, "--prefix-size", "1"])?;
    ensure!(forced_data.stdout == forced_text.stdout, "{:?}", forced_data.stdout);

    // fairseq lines: identical, T- lines (the detokenized target side) included, and the same
    // scores against the references (fairseq names the split on the score line).
    let fairseq = |source: &[&str]| -> Result<Vec<String>> {
        let mut args = vec!["generate", model];
        args.extend(source);
        args.extend(FAST);
        let run = seqforge(&args, None)?;
        ensure!(run.ok, "{args:?} failed: {}", run.stderr);
        Ok(run.stdout.lines().map(str::to_owned).collect())
    };
    let mut text_lines = fairseq(&["--input", input_s, "--ref", ref_s])?;
    let mut data_lines = fairseq(&["--data", data_s])?;
    let text_score = text_lines.pop().context("no score line")?;
    let data_score = data_lines.pop().context("no score line")?;
    ensure!(data_lines == text_lines, "{data_lines:?} vs {text_lines:?}");
    ensure!(data_lines.iter().any(|l| l == "T-2\tthe black cat"), "{data_lines:?}");
    let scores = text_score.split_once(": ").map(|(_, s)| s).context("score line")?;
    ensure!(data_score.starts_with("Generate test with beam=3: BLEU = "), "{data_score:?}");
    ensure!(data_score.ends_with(scores) && scores.contains("chrF2 = "), "{data_score:?}");
    Ok(())
}

#[test]
fn bad_binarized_data_fails_naming_the_file() -> Result<()> {
    let f = fixture()?;
    let model = path(&f.model)?;
    let fails = |data: &Path, needles: &[&str]| -> Result<()> {
        let mut args = vec!["generate", model, "--data", path(data)?];
        args.extend(FAST);
        let run = seqforge(&args, None)?;
        ensure!(!run.ok, "{data:?} succeeded: {}", run.stdout);
        for n in needles {
            ensure!(
                run.stderr.contains(n),
                "{data:?}: error does not mention {n:?}: {}",
                run.stderr
            );
        }
        Ok(())
    };
    let (sources, targets) = (["hola mundo", "el gato"], ["hello world", "the cat"]);

    // A .bin shorter than its index says.
    let truncated = binarize(&f, "truncated", &sources, &targets)?;
    let bin = truncated.join("test.es-en.es.bin");
    let bytes = std::fs::read(&bin)?;
    std::fs::write(&bin, &bytes[..bytes.len() - 2])?;
    fails(&truncated, &["test.es-en.es.bin", "length"])?;

    // Not an mmap index.
    let magic = binarize(&f, "magic", &sources, &targets)?;
    let idx = magic.join("test.es-en.en.idx");
    let mut bytes = std::fs::read(&idx)?;
    bytes[..7].copy_from_slice(b"TNTIDX\x00");
    std::fs::write(&idx, bytes)?;
    fails(&magic, &["test.es-en.en.idx", "magic"])?;

    // Binarized with another target dictionary (two symbols swapped): the ids mean other words.
    let other = binarize(&f, "other-dict", &sources, &targets)?;
    let dict = other.join("dict.en.txt");
    let mut lines: Vec<String> =
        std::fs::read_to_string(&dict)?.lines().map(str::to_owned).collect();
    lines.swap(0, 1);
    std::fs::write(&dict, lines.join("\n") + "\n")?;
    fails(&other, &["other-dict/dict.en.txt", "not the model's dictionary"])?;

    // No split of that name.
    let mut args = vec!["generate", model, "--data", path(&truncated)?, "--gen-subset", "valid"];
    args.extend(FAST);
    let run = seqforge(&args, None)?;
    ensure!(!run.ok && run.stderr.contains("valid.es-en.es.idx"), "{}", run.stderr);
    Ok(())
}

/// The exporter's test alphabet (used by every fixture model) is exactly the byte-level
/// pre-tokenizer's.
#[test]
fn the_fixture_alphabet_is_the_byte_level_alphabet() {
    let mut chars: Vec<char> =
        tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet().into_iter().collect();
    chars.sort_unstable();
    let expected: Vec<String> = chars.into_iter().map(String::from).collect();
    assert_eq!(seqforge_exporter::testing::byte_level_alphabet(), expected);
}
