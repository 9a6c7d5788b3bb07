//! Checkpoints written here with a small pickler and zip writer (torch.save's layout), to
//! exercise what real files rarely show: fairseq's old state-dict layouts (fused `in_proj`,
//! `layer_norms.N`, `embed_out`, no final decoder norm), and every kind of bad input — a
//! truncated or non-zip file, a forbidden global, an unsupported architecture or option, a
//! missing, misshapen or unexpected tensor, a storage smaller than its tensor — each an error
//! naming the file and the thing, never a panic.

use std::io::Write;
use std::path::{Path, PathBuf};

use seqforge_fairseq::pickle::PickleError;
use seqforge_fairseq::{Error, Imported, Weights};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// What the test pickler writes.
enum P {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<P>),
    Dict(Vec<(String, P)>),
    /// `argparse.Namespace` with these attributes.
    Namespace(Vec<(String, P)>),
    /// `collections.OrderedDict`.
    Ordered(Vec<(String, P)>),
    /// A float32 tensor of storage `key` (`numel` elements) viewed with this shape/stride.
    Tensor {
        key: String,
        numel: usize,
        offset: usize,
        shape: Vec<usize>,
        stride: Vec<usize>,
    },
    /// A call of an arbitrary global with no arguments.
    Call(&'static str, &'static str),
}

fn s(v: &str) -> P {
    P::Str(v.into())
}

fn put_str(out: &mut Vec<u8>, v: &str) {
    out.push(b'X');
    out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    out.extend_from_slice(v.as_bytes());
}

fn put_int(out: &mut Vec<u8>, v: i64) {
    out.push(b'J');
    out.extend_from_slice(&(v as i32).to_le_bytes());
}

fn put_tuple(out: &mut Vec<u8>, items: impl FnOnce(&mut Vec<u8>)) {
    out.push(b'(');
    items(out);
    out.push(b't');
}

fn pickle(p: &P, out: &mut Vec<u8>) {
    match p {
        P::None => out.push(b'N'),
        P::Bool(b) => out.push(if *b { 0x88 } else { 0x89 }),
        P::Int(i) => put_int(out, *i),
        P::Float(f) => {
            out.push(b'G');
            out.extend_from_slice(&f.to_be_bytes());
        }
        P::Str(v) => put_str(out, v),
        P::List(items) => {
            out.extend_from_slice(b"](");
            items.iter().for_each(|i| pickle(i, out));
            out.push(b'e');
        }
        P::Dict(entries) | P::Ordered(entries) => {
            if matches!(p, P::Ordered(_)) {
                out.extend_from_slice(b"ccollections\nOrderedDict\n)R(");
            } else {
                out.extend_from_slice(b"}(");
            }
            for (k, v) in entries {
                put_str(out, k);
                pickle(v, out);
            }
            out.push(b'u');
        }
        P::Namespace(entries) => {
            out.extend_from_slice(b"cargparse\nNamespace\n)\x81");
            pickle(&P::Dict(entries.iter().map(|(k, v)| (k.clone(), clone(v))).collect()), out);
            out.push(b'b');
        }
        P::Tensor { key, numel, offset, shape, stride } => {
            out.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n");
            put_tuple(out, |out| {
                put_tuple(out, |out| {
                    put_str(out, "storage");
                    out.extend_from_slice(b"ctorch\nFloatStorage\n");
                    put_str(out, key);
                    put_str(out, "cpu");
                    put_int(out, *numel as i64);
                });
                out.push(b'Q');
                put_int(out, *offset as i64);
                put_tuple(out, |out| shape.iter().for_each(|&d| put_int(out, d as i64)));
                put_tuple(out, |out| stride.iter().for_each(|&d| put_int(out, d as i64)));
                out.push(0x89);
                out.extend_from_slice(b"ccollections\nOrderedDict\n)R");
            });
            out.push(b'R');
        }
        P::Call(module, name) => {
            out.extend_from_slice(format!("c{module}\n{name}\n)R").as_bytes());
        }
    }
}

fn clone(p: &P) -> P {
    match p {
        P::None => P::None,
        P::Bool(b) => P::Bool(*b),
        P::Int(i) => P::Int(*i),
        P::Float(f) => P::Float(*f),
        P::Str(v) => P::Str(v.clone()),
        P::List(items) => P::List(items.iter().map(clone).collect()),
        P::Dict(e) => P::Dict(e.iter().map(|(k, v)| (k.clone(), clone(v))).collect()),
        P::Ordered(e) => P::Ordered(e.iter().map(|(k, v)| (k.clone(), clone(v))).collect()),
        P::Namespace(e) => P::Namespace(e.iter().map(|(k, v)| (k.clone(), clone(v))).collect()),
        P::Tensor { key, numel, offset, shape, stride } => P::Tensor {
            key: key.clone(),
            numel: *numel,
            offset: *offset,
            shape: shape.clone(),
            stride: stride.clone(),
        },
        P::Call(m, n) => P::Call(m, n),
    }
}

/// A state dict being written: tensors (values `base + i * 1e-3`) and their storages.
#[derive(Default)]
struct Model {
    entries: Vec<(String, P)>,
    storages: Vec<(String, Vec<f32>)>,
}

impl Model {
    fn add(&mut self, name: &str, shape: &[usize]) -> &mut Self {
        let n: usize = shape.iter().product();
        let key = self.storages.len().to_string();
        let base = self.storages.len() as f32;
        self.storages.push((key.clone(), (0..n).map(|i| base + i as f32 * 1e-3).collect()));
        let mut stride = vec![1; shape.len()];
        for d in (0..shape.len().saturating_sub(1)).rev() {
            stride[d] = stride[d + 1] * shape[d + 1];
        }
        self.entries.push((
            name.into(),
            P::Tensor { key, numel: n, offset: 0, shape: shape.to_vec(), stride },
        ));
        self
    }

    fn remove(&mut self, name: &str) -> &mut Self {
        self.entries.retain(|(n, _)| n != name);
        self
    }
}

/// A tiny post-norm transformer's args, as fairseq < 0.10 stored them.
fn tiny_args(overrides: Vec<(&str, P)>) -> P {
    let mut args: Vec<(String, P)> = vec![
        ("arch".into(), s("transformer_tiny")),
        ("encoder_embed_dim".into(), P::Int(8)),
        ("decoder_embed_dim".into(), P::Int(8)),
        ("encoder_ffn_embed_dim".into(), P::Int(16)),
        ("decoder_ffn_embed_dim".into(), P::Int(16)),
        ("encoder_layers".into(), P::Int(1)),
        ("decoder_layers".into(), P::Int(1)),
        ("encoder_attention_heads".into(), P::Int(2)),
        ("decoder_attention_heads".into(), P::Int(2)),
        ("dropout".into(), P::Float(0.1)),
        ("source_lang".into(), s("en")),
        ("target_lang".into(), s("de")),
        ("adaptive_softmax_cutoff".into(), P::None),
    ];
    for (k, v) in overrides {
        args.retain(|(n, _)| n != k);
        args.push((k.into(), v));
    }
    P::Namespace(args)
}

/// A 1+1-layer transformer state dict of dimension 8 in fairseq's current layout.
fn tiny_model(vocab: usize) -> Model {
    let mut m = Model::default();
    m.add("encoder.version", &[1]).add("encoder.embed_tokens.weight", &[vocab, 8]);
    m.add("encoder.embed_positions._float_tensor", &[1]);
    let attn = |m: &mut Model, p: &str| {
        for x in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            m.add(&format!("{p}.{x}.weight"), &[8, 8]).add(&format!("{p}.{x}.bias"), &[8]);
        }
    };
    let ffn = |m: &mut Model, p: &str| {
        m.add(&format!("{p}.fc1.weight"), &[16, 8]).add(&format!("{p}.fc1.bias"), &[16]);
        m.add(&format!("{p}.fc2.weight"), &[8, 16]).add(&format!("{p}.fc2.bias"), &[8]);
    };
    let norm = |m: &mut Model, p: &str| {
        m.add(&format!("{p}.weight"), &[8]).add(&format!("{p}.bias"), &[8]);
    };
    attn(&mut m, "encoder.layers.0.self_attn");
    norm(&mut m, "encoder.layers.0.self_attn_layer_norm");
    ffn(&mut m, "encoder.layers.0");
    norm(&mut m, "encoder.layers.0.final_layer_norm");
    m.add("decoder.version", &[1]).add("decoder.embed_tokens.weight", &[vocab, 8]);
    attn(&mut m, "decoder.layers.0.self_attn");
    norm(&mut m, "decoder.layers.0.self_attn_layer_norm");
    attn(&mut m, "decoder.layers.0.encoder_attn");
    norm(&mut m, "decoder.layers.0.encoder_attn_layer_norm");
    ffn(&mut m, "decoder.layers.0");
    norm(&mut m, "decoder.layers.0.final_layer_norm");
    m.add("decoder.output_projection.weight", &[vocab, 8]);
    m
}

/// Writes `{args, model}` (plus `extra`) as torch.save's zip at `path`.
fn write_checkpoint(path: &Path, args: P, model: &Model, extra: Vec<(String, P)>) -> TestResult {
    let mut root = vec![
        ("args".to_string(), args),
        (
            "model".to_string(),
            P::Ordered(model.entries.iter().map(|(k, v)| (k.clone(), clone(v))).collect()),
        ),
        (
            "optimizer_history".to_string(),
            P::List(vec![P::Dict(vec![("num_updates".into(), P::Int(42))])]),
        ),
    ];
    root.extend(extra);
    let mut pkl = b"\x80\x02".to_vec();
    pickle(&P::Dict(root), &mut pkl);
    pkl.push(b'.');
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path)?);
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", stored)?;
    zip.write_all(&pkl)?;
    zip.start_file("archive/byteorder", stored)?;
    zip.write_all(b"little")?;
    for (key, values) in &model.storages {
        zip.start_file(format!("archive/data/{key}"), stored)?;
        for v in values {
            zip.write_all(&v.to_le_bytes())?;
        }
    }
    zip.finish()?;
    Ok(())
}

fn write(
    dir: &Path,
    name: &str,
    args: P,
    model: &Model,
) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let path = dir.join(name);
    write_checkpoint(&path, args, model, vec![])?;
    Ok(path)
}

fn message(e: &Error) -> String {
    let mut m = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        m.push_str(&format!(": {s}"));
        source = s.source();
    }
    m
}

#[test]
fn a_written_checkpoint_reads_back() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = write(dir.path(), "ok.pt", tiny_args(vec![]), &tiny_model(12))?;
    let mut i = Imported::open(&path, Weights::Model)?;
    assert_eq!((i.arch.as_str(), i.family, i.num_updates), ("transformer_tiny", "transformer", 42));
    assert_eq!(i.vocab_sizes(), (12, 12));
    assert_eq!(i.config["encoder_embed_dim"], 8);
    assert_eq!(i.config["dropout"], 0.1);
    assert_eq!((i.source_lang.as_deref(), i.target_lang.as_deref()), (Some("en"), Some("de")));
    // Buffers are dropped; values come back exactly.
    assert!(i.shapes().all(|(n, _)| !n.ends_with(".version") && !n.ends_with("_float_tensor")));
    let v = i.read("decoder.layers.0.fc1.bias")?;
    assert_eq!(v.len(), 16);
    assert!((v[3] - (v[0] + 3e-3)).abs() < 1e-6);
    Ok(())
}

#[test]
fn old_layouts_are_upgraded_as_fairseq_does() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut m = tiny_model(12);
    // Fused in_proj (fairseq < 0.7), layer_norms.N, embed_out, no version buffers, pre-norm.
    for side in ["encoder.layers.0.self_attn", "decoder.layers.0.encoder_attn"] {
        for x in ["q_proj", "k_proj", "v_proj"] {
            m.remove(&format!("{side}.{x}.weight")).remove(&format!("{side}.{x}.bias"));
        }
        m.add(&format!("{side}.in_proj_weight"), &[24, 8])
            .add(&format!("{side}.in_proj_bias"), &[24]);
    }
    for (new, old) in
        [("self_attn_layer_norm", 0), ("encoder_attn_layer_norm", 1), ("final_layer_norm", 2)]
    {
        for p in ["weight", "bias"] {
            m.remove(&format!("decoder.layers.0.{new}.{p}"));
            m.add(&format!("decoder.layers.0.layer_norms.{old}.{p}"), &[8]);
        }
    }
    m.remove("decoder.output_projection.weight").add("decoder.embed_out", &[12, 8]);
    m.remove("decoder.version").remove("encoder.version");
    let args = tiny_args(vec![("decoder_normalize_before", P::Bool(true))]);
    let path = write(dir.path(), "old.pt", args, &m)?;
    let mut i = Imported::open(&path, Weights::Model)?;
    let names: Vec<&str> = i.shapes().map(|(n, _)| n).collect();
    for n in [
        "encoder.layers.0.self_attn.q_proj.weight",
        "encoder.layers.0.self_attn.v_proj.bias",
        "decoder.layers.0.encoder_attn.k_proj.weight",
        "decoder.layers.0.encoder_attn_layer_norm.weight",
        "decoder.layers.0.final_layer_norm.bias",
        "decoder.output_projection.weight",
    ] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    assert!(
        !names
            .iter()
            .any(|n| n.contains("in_proj") || n.contains("layer_norms") || n.contains("embed_out"))
    );
    // k_proj is the middle third of in_proj.
    let k = i.read("encoder.layers.0.self_attn.k_proj.bias")?;
    assert_eq!(k.len(), 8);
    assert!((k[0] - (k[0].trunc() + 8e-3)).abs() < 1e-5, "{k:?}");
    // Saved before fairseq's decoder version 3: no final decoder norm.
    assert_eq!(i.config["no_decoder_final_norm"], true);
    // A pre-norm encoder of that age is refused.
    let args = tiny_args(vec![("encoder_normalize_before", P::Bool(true))]);
    let path = write(dir.path(), "old_enc.pt", args, &m)?;
    let e = Imported::open(&path, Weights::Model).err().ok_or("accepted")?;
    assert!(
        matches!(&e, Error::UnsupportedOption { option, .. } if option == "encoder.version"),
        "{e}"
    );
    Ok(())
}

#[test]
fn cfg_style_checkpoints_and_ema() -> TestResult {
    let dir = tempfile::tempdir()?;
    let m = tiny_model(12);
    let P::Namespace(model_args) = tiny_args(vec![]) else { return Err("args".into()) };
    let cfg = P::Dict(vec![
        (
            "model".into(),
            // fairseq's dataclass layout: `_name`, and the encoder's fields nested.
            P::Dict(
                model_args
                    .into_iter()
                    .filter(|(k, _)| !k.starts_with("encoder_"))
                    .map(|(k, v)| if k == "arch" { ("_name".into(), v) } else { (k, v) })
                    .chain([(
                        "encoder".to_string(),
                        P::Dict(vec![
                            ("embed_dim".into(), P::Int(8)),
                            ("ffn_embed_dim".into(), P::Int(16)),
                            ("layers".into(), P::Int(1)),
                            ("attention_heads".into(), P::Int(2)),
                        ]),
                    )])
                    .collect(),
            ),
        ),
        (
            "task".into(),
            P::Dict(vec![("source_lang".into(), s("xx")), ("target_lang".into(), s("yy"))]),
        ),
        ("common".into(), P::Dict(vec![("fp16".into(), P::Bool(true))])),
    ]);
    let ema = P::Ordered(m.entries.iter().map(|(k, v)| (k.clone(), clone(v))).collect());
    let path = dir.path().join("cfg.pt");
    write_checkpoint(
        &path,
        P::None,
        &m,
        vec![("cfg".into(), cfg), ("extra_state".into(), P::Dict(vec![("ema".into(), ema)]))],
    )?;
    let i = Imported::open(&path, Weights::Ema)?;
    assert_eq!(i.arch, "transformer_tiny");
    assert_eq!(i.config["encoder_layers"], 1);
    assert!(i.half_precision);
    assert_eq!(i.source_lang.as_deref(), Some("xx"));
    // No EMA in a checkpoint without one: the error says how to get one.
    let plain = write(dir.path(), "plain.pt", tiny_args(vec![]), &m)?;
    let e = Imported::open(&plain, Weights::Ema).err().ok_or("accepted")?;
    assert!(message(&e).contains("--store-ema") && message(&e).contains("plain.pt"), "{e}");
    Ok(())
}

#[test]
fn bad_files_are_refused_with_their_name() -> TestResult {
    let dir = tempfile::tempdir()?;
    let good = write(dir.path(), "good.pt", tiny_args(vec![]), &tiny_model(12))?;
    let bytes = std::fs::read(&good)?;
    // Truncated at many points, and not a zip at all.
    for cut in [0, 3, 10, bytes.len() / 3, bytes.len() / 2, bytes.len() - 30, bytes.len() - 1] {
        let path = dir.path().join(format!("cut{cut}.pt"));
        std::fs::write(&path, &bytes[..cut])?;
        let e = Imported::open(&path, Weights::Model).err().ok_or("truncated file accepted")?;
        assert!(message(&e).contains(&format!("cut{cut}.pt")), "{e}");
    }
    let text = dir.path().join("notes.pt");
    std::fs::write(&text, "hello, not a checkpoint\n")?;
    let e = Imported::open(&text, Weights::Model).err().ok_or("text accepted")?;
    assert!(matches!(e, Error::NotACheckpoint { .. }), "{e}");
    // Random corruption of the bytes: errors or success, never a panic.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..200 {
        let mut b = bytes.clone();
        for _ in 0..4 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let at = (state % b.len() as u64) as usize;
            b[at] = (state >> 40) as u8;
        }
        let path = dir.path().join(format!("fuzz{round}.pt"));
        std::fs::write(&path, &b)?;
        if let Ok(mut i) = Imported::open(&path, Weights::Model) {
            let names: Vec<String> = i.shapes().map(|(n, _)| n.to_string()).collect();
            for n in names {
                let _ = i.read(&n);
            }
        }
    }
    Ok(())
}

#[test]
fn forbidden_globals_are_named() -> TestResult {
    let dir = tempfile::tempdir()?;
    let args = tiny_args(vec![("evil", P::Call("os", "system"))]);
    let path = write(dir.path(), "evil.pt", args, &tiny_model(12))?;
    let e = Imported::open(&path, Weights::Model).err().ok_or("accepted")?;
    assert!(
        matches!(&e, Error::Pickle { source: PickleError::ForbiddenGlobal { module, name, .. }, .. } if module == "os" && name == "system"),
        "{e}"
    );
    assert!(
        message(&e).contains("evil.pt") && message(&e).contains("os.system"),
        "{}",
        message(&e)
    );
    Ok(())
}

#[test]
fn unsupported_architectures_and_options_are_named() -> TestResult {
    let dir = tempfile::tempdir()?;
    let m = tiny_model(12);
    let path = write(dir.path(), "lm.pt", tiny_args(vec![("arch", s("bart_base"))]), &m)?;
    let e = Imported::open(&path, Weights::Model).err().ok_or("accepted")?;
    let text = message(&e);
    assert!(matches!(e, Error::UnsupportedArch { .. }), "{text}");
    assert!(
        text.contains("bart_base")
            && text.contains("transformer_iwslt_de_en")
            && text.contains("lstm")
            && text.contains("fconv"),
        "{text}"
    );
    for (option, value) in [
        ("adaptive_softmax_cutoff", s("1000,2000")),
        ("cross_self_attention", P::Bool(true)),
        ("decoder_output_dim", P::Int(16)),
        ("activation_fn", s("swish")),
    ] {
        let path = write(dir.path(), "opt.pt", tiny_args(vec![(option, value)]), &m)?;
        let e = Imported::open(&path, Weights::Model).err().ok_or("accepted")?;
        let text = message(&e);
        assert!(text.contains(option) && text.contains("opt.pt"), "{text}");
    }
    Ok(())
}

#[test]
fn tensors_are_checked_by_name_and_shape() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = write(dir.path(), "ok.pt", tiny_args(vec![]), &tiny_model(12))?;
    let i = Imported::open(&path, Weights::Model)?;
    let expected: Vec<(String, Vec<usize>)> =
        i.shapes().map(|(n, s)| (n.to_string(), s.to_vec())).collect();
    let as_refs = |e: &[(String, Vec<usize>)]| -> Vec<(String, Vec<usize>)> { e.to_vec() };
    i.check_against(as_refs(&expected).iter().map(|(n, s)| (n.as_str(), s.clone())))?;
    // The model needs one more tensor than the file has.
    let mut more = as_refs(&expected);
    more.push(("decoder.layer_norm.weight".into(), vec![8]));
    let e = i
        .check_against(more.iter().map(|(n, s)| (n.as_str(), s.clone())))
        .err()
        .ok_or("accepted")?;
    assert!(
        matches!(&e, Error::MissingTensor { name, .. } if name == "decoder.layer_norm.weight"),
        "{e}"
    );
    assert!(message(&e).contains("ok.pt"));
    // Another shape.
    let mut other = as_refs(&expected);
    other[0].1 = vec![99];
    let e = i
        .check_against(other.iter().map(|(n, s)| (n.as_str(), s.clone())))
        .err()
        .ok_or("accepted")?;
    assert!(matches!(&e, Error::ShapeMismatch { found, .. } if *found != vec![99]), "{e}");
    // A tensor the model does not have.
    let fewer = &expected[1..];
    let e = i
        .check_against(fewer.iter().map(|(n, s)| (n.as_str(), s.clone())))
        .err()
        .ok_or("accepted")?;
    assert!(matches!(&e, Error::UnexpectedTensor { name, .. } if *name == expected[0].0), "{e}");
    // The embeddings are missing altogether.
    let mut m = tiny_model(12);
    m.remove("encoder.embed_tokens.weight");
    let path = write(dir.path(), "noemb.pt", tiny_args(vec![]), &m)?;
    let e = Imported::open(&path, Weights::Model).err().ok_or("accepted")?;
    assert!(
        matches!(&e, Error::MissingTensor { name, .. } if name == "encoder.embed_tokens.weight"),
        "{e}"
    );
    Ok(())
}

#[test]
fn views_past_their_storage_are_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut m = tiny_model(12);
    // A tensor claiming 2^40 elements of a 16-element storage (allocation bomb), and one whose
    // storage entry holds fewer bytes than its size says.
    if let Some((_, P::Tensor { shape, stride, .. })) =
        m.entries.iter_mut().find(|(n, _)| n == "encoder.layers.0.fc1.bias")
    {
        *shape = vec![1 << 20, 1 << 20];
        *stride = vec![0, 0];
    }
    let path = write(dir.path(), "bomb.pt", tiny_args(vec![]), &m)?;
    let e = Imported::open(&path, Weights::Model).err().ok_or("accepted")?;
    assert!(
        message(&e).contains("encoder.layers.0.fc1.bias") && message(&e).contains("bomb.pt"),
        "{e}"
    );

    let mut m = tiny_model(12);
    if let Some((_, values)) = m.storages.iter_mut().find(|(k, _)| k == "20") {
        values.truncate(3);
    }
    let path = write(dir.path(), "short.pt", tiny_args(vec![]), &m)?;
    let mut i = Imported::open(&path, Weights::Model)?;
    let names: Vec<String> = i.shapes().map(|(n, _)| n.to_string()).collect();
    let errors: Vec<String> =
        names.iter().filter_map(|n| i.read(n).err().map(|e| message(&e))).collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("short.pt") && errors[0].contains("storage 20"), "{errors:?}");
    Ok(())
}
