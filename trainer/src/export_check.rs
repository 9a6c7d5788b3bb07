//! `seqforge-train export`: compiles a checkpoint to an ONNX model directory with the exporter
//! (`seqforge-exporter`), then runs the exported graphs in ONNX Runtime side by side with the
//! checkpoint's libtorch model on validation sentences, and refuses the export when they
//! disagree.
//!
//! The comparison drives both backends through the same [`IncrementalDecoder`] interface the
//! search uses — the trainer's [`TorchDecoder`] over the model the registry builds for the
//! checkpoint's architecture, and the runtime's [`OnnxDecoder`] over the staged model
//! directory — so it works for every model family without naming a tensor of one. The first
//! `--check-samples` sentences of `--check-subset` (a padded batch: libtorch left-pads as
//! fairseq does, the runtime right-pads) are encoded by both, then `--check-steps` incremental
//! steps are taken, each row continued greedily by the libtorch model and fed identically to
//! both; halfway through the rows are reversed (a beam reorder) and at three quarters the first
//! row is dropped (a prune). The largest absolute difference of the log-probabilities must stay
//! within `--tolerance` (1e-4 for fp32, 2e-2 for fp16).
//!
//! A language model (`task = language_modeling`) is checked on the first `--check-samples`
//! sentences of `{subset}` (`{subset}.bin/.idx` in --data): first the prefill graph's
//! log-probabilities of every sentence's tokens, a right-padded batch of different lengths,
//! against the libtorch model's forward pass (what eval-lm scores); then the sentences cut to
//! one length are the prompts of the incremental comparison above (the prefill, then the steps).
//! The model directory is exported to
//! `OUT.unchecked-<pid>` and only renamed to `OUT` once the check passed; on a mismatch nothing
//! is left behind.

use std::path::{Path, PathBuf};
use std::time::Instant;

use std::sync::Arc;

use half::f16;
use ort::value::{DynValue, Tensor as OrtTensor};
use seqforge_exporter::{BuildOptions, ExportOptions, ExportSummary};
use seqforge_runtime::decoding::{IncrementalDecoder, LogProbs};
use seqforge_runtime::lm::LmScorer;
use seqforge_runtime::onnx::{ModelDir, OnnxDecoder, RuntimeOptions};
use seqforge_runtime::search::{GenerationOptions, Hypothesis, generate};
use seqforge_schemas::contract::{self, Dtype, Task};
use tch::{Device, Kind, Tensor, nn};

use crate::checkpoint;
use crate::data::indexed::IndexedDataset;
use crate::models::TorchDecoder;
use crate::registry::Registry;
use crate::train::model::{Model, ModelContext, load_checkpoint_model};

/// Errors of `seqforge-train export`, each naming what failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportCheckError {
    /// The export itself failed.
    #[error(transparent)]
    Export(#[from] seqforge_exporter::Error),
    /// The exported manifest could not be read back.
    #[error(transparent)]
    Contract(#[from] contract::Error),
    /// The checkpoint could not be loaded into the libtorch model.
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::Error),
    /// The libtorch model failed.
    #[error(transparent)]
    Model(#[from] crate::models::Error),
    /// ONNX Runtime could not load or run a graph.
    #[error(transparent)]
    Runtime(#[from] seqforge_runtime::Error),
    /// An ONNX Runtime value operation failed.
    #[error("onnxruntime: {0}")]
    Ort(#[from] ort::Error),
    /// libtorch failed outside the model.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// The validation data could not be read.
    #[error("{path}: {message}")]
    Data {
        /// The dataset or file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A file-system operation on the model directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The exported graphs disagree with the libtorch model.
    #[error(
        "the exported {dtype} graphs disagree with the checkpoint's libtorch model: {what} \
         differs by {diff:.3e} (tolerance {tolerance:.1e}){at}; the export was discarded"
    )]
    Mismatch {
        /// The export dtype.
        dtype: Dtype,
        /// `encoder_out` or `log_probs`.
        what: String,
        /// The measured max abs difference.
        diff: f32,
        /// The tolerance.
        tolerance: f32,
        /// Where (e.g. ` at step 3`).
        at: String,
    },
}

type Result<T, E = ExportCheckError> = std::result::Result<T, E>;

/// `seqforge-train export CHECKPOINT --data DIR --out DIR`: export, then check the graphs
/// against the libtorch model on validation sentences.
#[derive(clap::Args, Debug, Clone)]
pub struct ExportArgs {
    /// The checkpoint directory (`model.safetensors`, `config.json`).
    pub checkpoint: PathBuf,
    /// The data directory the model was trained on (dictionaries, validation set).
    #[arg(long)]
    pub data: PathBuf,
    /// The model directory to write.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    /// Graph build options (`--dtype`, `--kv-cache`).
    pub build: BuildOptions,
    /// The tokenizer to ship (default: DATA/tokenizer.json when it exists).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Replace an existing model directory.
    #[arg(long)]
    pub force: bool,
    /// Validation sentences to compare on (0 skips the check).
    #[arg(long, default_value_t = 8)]
    pub check_samples: usize,
    /// The split the sentences come from (`{subset}.{src}-{tgt}.{src}` in --data).
    #[arg(long, default_value = "valid")]
    pub check_subset: String,
    /// Incremental decoder steps compared.
    #[arg(long, default_value_t = 32)]
    pub check_steps: usize,
    /// Largest absolute difference allowed (default 1e-4 for fp32, 2e-2 for fp16, 1.0 for
    /// int8, whose 8-bit weights move log-probabilities by a few tenths; a broken graph moves
    /// them by many nats).
    #[arg(long)]
    pub tolerance: Option<f32>,
}

/// What `export` did and measured.
#[derive(Debug, Clone)]
pub struct ExportReport {
    /// The exporter's summary (files, sizes, time).
    pub summary: ExportSummary,
    /// Sentences compared (0 when the check was skipped).
    pub samples: usize,
    /// Decoder steps compared.
    pub steps: usize,
    /// Rows left after the prune (the last steps compared).
    pub final_rows: usize,
    /// Max abs difference of the log-probabilities.
    pub log_probs_diff: f32,
    /// The tolerance applied.
    pub tolerance: f32,
    /// Sentences whose beam-5 best hypothesis is the same token sequence through the export
    /// as through the libtorch (fp32) model, and the sentences searched.
    pub identical_hypotheses: (usize, usize),
    /// Seconds spent checking.
    pub check_seconds: f64,
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ExportCheckError + '_ {
    move |source| ExportCheckError::Io { path: path.to_path_buf(), source }
}

/// Runs `seqforge-train export` (see the module docs).
pub fn run(args: &ExportArgs) -> Result<ExportReport> {
    if args.out.exists() && !args.force {
        return Err(seqforge_exporter::Error::OutputExists { path: args.out.clone() }.into());
    }
    let staging = sibling(&args.out, &format!(".unchecked-{}", std::process::id()));
    let options = ExportOptions {
        checkpoint: args.checkpoint.clone(),
        data: args.data.clone(),
        out: staging.clone(),
        build: args.build,
        tokenizer: args.tokenizer.clone(),
        force: true,
    };
    let mut summary = seqforge_exporter::export(&options)?;
    let tolerance = args.tolerance.unwrap_or(match args.build.dtype {
        Dtype::Fp32 => 1e-4,
        Dtype::Fp16 => 2e-2,
        Dtype::Int8 => 1.0,
    });
    let start = Instant::now();
    let checked = if args.check_samples == 0 {
        Ok(Checked::default())
    } else {
        check(args, &staging, tolerance)
    };
    let Checked { log_probs_diff, samples, final_rows, identical_hypotheses } = match checked {
        Ok(d) => d,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    // Install: the old directory renamed away, the checked one renamed in, the old deleted.
    let old = sibling(&args.out, &format!(".old-{}", std::process::id()));
    let had_old = args.out.exists();
    if had_old {
        std::fs::rename(&args.out, &old).map_err(io(&args.out))?;
    }
    if let Err(source) = std::fs::rename(&staging, &args.out) {
        if had_old {
            let _ = std::fs::rename(&old, &args.out);
        }
        let _ = std::fs::remove_dir_all(&staging);
        return Err(ExportCheckError::Io { path: args.out.clone(), source });
    }
    if had_old {
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    summary.out = args.out.clone();
    Ok(ExportReport {
        summary,
        samples,
        steps: if samples > 0 { args.check_steps } else { 0 },
        final_rows,
        log_probs_diff,
        tolerance,
        identical_hypotheses,
        check_seconds: start.elapsed().as_secs_f64(),
    })
}

/// What [`check`] measured.
#[derive(Debug, Default)]
struct Checked {
    log_probs_diff: f32,
    samples: usize,
    final_rows: usize,
    identical_hypotheses: (usize, usize),
}

/// A libtorch tensor's values as a flat `Vec<f32>` (also used by the export parity tests).
pub fn to_vec(t: &Tensor) -> Result<Vec<f32>> {
    Ok(Vec::<f32>::try_from(t.f_flatten(0, -1)?.f_to_kind(Kind::Float)?)?)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return f32::INFINITY;
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| if x.is_finite() { (x - y).abs() } else { f32::INFINITY })
        .fold(0.0, f32::max)
}

/// An ONNX Runtime input of the model's float dtype (fp16 or fp32) from f32 values.
pub fn float_input(fp16: bool, shape: &[i64], data: &[f32]) -> Result<DynValue> {
    let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    Ok(if fp16 {
        let h: Vec<f16> = data.iter().map(|&v| f16::from_f32(v)).collect();
        OrtTensor::from_array((shape, h))?.into_dyn()
    } else {
        OrtTensor::from_array((shape, data.to_vec()))?.into_dyn()
    })
}

/// The output `name` (fp16 or fp32) as its shape and f32 values.
pub fn float_output(
    outputs: &ort::session::SessionOutputs<'_>,
    name: &str,
    fp16: bool,
) -> Result<(Vec<i64>, Vec<f32>)> {
    let value = &outputs[name];
    Ok(if fp16 {
        let (shape, data) = value.try_extract_tensor::<f16>()?;
        (shape.to_vec(), data.iter().map(|v| v.to_f32()).collect())
    } else {
        let (shape, data) = value.try_extract_tensor::<f32>()?;
        (shape.to_vec(), data.to_vec())
    })
}

/// Rows `order` of a row-major `[N, …]` tensor.
pub fn gather_rows(shape: &[i64], data: &[f32], order: &[usize]) -> (Vec<i64>, Vec<f32>) {
    let row = data.len() / shape.first().copied().unwrap_or(1).max(1) as usize;
    let mut out = Vec::with_capacity(order.len() * row);
    for &r in order {
        out.extend_from_slice(&data[r * row..(r + 1) * row]);
    }
    let mut s = shape.to_vec();
    if let Some(first) = s.first_mut() {
        *first = order.len() as i64;
    }
    (s, out)
}

/// The libtorch model of the checkpoint, built by the registry for its architecture, weights
/// loaded.
fn torch_model(
    ckpt_dir: &Path,
    vocab: (usize, usize),
    pad: usize,
) -> Result<(nn::VarStore, Box<dyn Model>)> {
    let ckpt = checkpoint::load(ckpt_dir)?;
    let registry = Registry::with_builtins().map_err(|e| ExportCheckError::Data {
        path: ckpt_dir.join(checkpoint::CONFIG_FILE),
        message: e.to_string(),
    })?;
    let ctx = ModelContext { src_vocab_size: vocab.0, tgt_vocab_size: vocab.1, pad_index: pad };
    load_checkpoint_model(&ckpt, &registry, &ctx, Device::Cpu).map_err(|e| match e {
        crate::Error::Checkpoint(e) => ExportCheckError::Checkpoint(e),
        crate::Error::Model(e) => ExportCheckError::Model(e),
        e => ExportCheckError::Data {
            path: ckpt_dir.join(checkpoint::CONFIG_FILE),
            message: e.to_string(),
        },
    })
}

/// The greedy continuation of every row by the reference (EOS and padding suppressed so every
/// row keeps going).
fn greedy(lp: &LogProbs, eos: u32, pad: u32, unk: u32) -> Vec<u32> {
    (0..lp.rows)
        .map(|r| {
            lp.row(r)
                .iter()
                .enumerate()
                .filter(|&(id, _)| id as u32 != eos && id as u32 != pad)
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(unk, |(id, _)| id as u32)
        })
        .collect()
}

/// Compares the staged export with the libtorch model through [`IncrementalDecoder`] (teacher
/// forced on the libtorch model's greedy tokens), then runs fairseq's beam-5 search on both and
/// counts identical best hypotheses; a log-probability difference above `tolerance` is a
/// [`ExportCheckError::Mismatch`].
fn check(args: &ExportArgs, model_dir: &Path, tolerance: f32) -> Result<Checked> {
    let onnx_model = Arc::new(ModelDir::open(model_dir, &RuntimeOptions::default())?);
    let c = onnx_model.contract().clone();
    let manifest = onnx_model.manifest();
    let (src_lang, tgt_lang) = (
        manifest.source_lang.clone().unwrap_or_default(),
        manifest.target_lang.clone().unwrap_or_default(),
    );
    let special = c.special;
    let (_vs, model) =
        torch_model(&args.checkpoint, (c.src_vocab_size, c.tgt_vocab_size), special.pad as usize)?;
    let step_model = model.step_model().ok_or_else(|| ExportCheckError::Data {
        path: args.checkpoint.clone(),
        message: format!("model {} cannot decode incrementally", c.arch),
    })?;

    let lm = c.task == Task::LanguageModeling;
    // Validation sentences (EOS included), at most the model's source length.
    let prefix = if lm {
        args.data.join(&args.check_subset)
    } else {
        args.data.join(format!("{}.{src_lang}-{tgt_lang}.{src_lang}", args.check_subset))
    };
    let dataset = IndexedDataset::open(&prefix).map_err(|e| ExportCheckError::Data {
        path: prefix.clone(),
        message: format!("cannot read the check sentences: {e} (pass --check-samples 0 to skip)"),
    })?;
    // A language model's input is `[eos] + sentence`: one position less for the sentence.
    let longest = if lm { c.max_target_positions - 1 } else { c.max_source_positions };
    let mut sources: Vec<Vec<u32>> = Vec::new();
    for i in 0..dataset.len() {
        if sources.len() == args.check_samples {
            break;
        }
        let ids = dataset
            .get(i)
            .map_err(|e| ExportCheckError::Data { path: prefix.clone(), message: e.to_string() })?;
        let ids: Vec<u32> = ids.iter().copied().take(longest).collect();
        // A language model's check needs a token besides EOS (document separators are EOS).
        if ids.len() > usize::from(lm) {
            sources.push(ids);
        }
    }
    if sources.is_empty() {
        return Err(ExportCheckError::Data {
            path: prefix,
            message: "no sentences to check on (pass --check-samples 0 to skip)".into(),
        });
    }
    let mut log_probs_diff = 0f32;
    if lm {
        log_probs_diff = check_scores(
            model.as_ref(),
            &mut OnnxDecoder::new(onnx_model.clone())?,
            &sources,
            special.eos,
            special.pad,
            tolerance,
            c.dtype,
        )?;
        // The prompts of the incremental comparison: the sentences cut to one length (a
        // decoder state has one position for all its rows), ending with EOS as a source does.
        let shortest = sources.iter().map(Vec::len).min().unwrap_or(1);
        let keep = (shortest - 1).clamp(1, 16);
        for s in &mut sources {
            s.truncate(keep);
            s.push(special.eos);
        }
    }
    let b = sources.len();
    let mut torch = TorchDecoder::new(step_model);
    let mut onnx = OnnxDecoder::new(onnx_model)?;
    let encoded_t = torch.encode(&sources)?;
    let encoded_o = onnx.encode(&sources)?;
    let mut state_t = torch.init_state(&encoded_t, 1)?;
    let mut state_o = onnx.init_state(&encoded_o, 1)?;
    let mut prev: Vec<u32> = vec![special.eos; b];
    let steps = args.check_steps.min(torch.max_target_positions_for(&sources[0]).saturating_sub(1));
    for step in 0..steps {
        let rows = prev.len();
        let order: Option<Vec<usize>> = if step == steps / 2 && rows > 1 {
            Some((0..rows).rev().collect())
        } else if step == 3 * steps / 4 && rows > 1 {
            Some((1..rows).collect())
        } else {
            None
        };
        if let Some(order) = order {
            torch.reorder(&mut state_t, &order)?;
            onnx.reorder(&mut state_o, &order)?;
            prev = order.iter().map(|&r| prev[r]).collect();
        }
        let expected = torch.step(&prev, &mut state_t)?;
        let got = onnx.step(&prev, &mut state_o)?;
        let d = max_diff(&got.data, &expected.data);
        log_probs_diff = log_probs_diff.max(d);
        if d.is_nan() || d > tolerance {
            return Err(ExportCheckError::Mismatch {
                dtype: c.dtype,
                what: "log_probs".into(),
                diff: d,
                tolerance,
                at: format!(" at decoder step {step} ({} rows)", prev.len()),
            });
        }
        prev = greedy(&expected, special.eos, special.pad, special.unk);
    }
    let options =
        GenerationOptions { beam: 5, max_len_a: 0.0, max_len_b: steps, ..Default::default() };
    let expected = generate(&mut torch, &sources, &options).map_err(runtime_error)?;
    let got = generate(&mut onnx, &sources, &options).map_err(runtime_error)?;
    let same = |a: &[Hypothesis], b: &[Hypothesis]| match (a.first(), b.first()) {
        (Some(x), Some(y)) => x.tokens == y.tokens,
        (None, None) => true,
        _ => false,
    };
    let identical = expected.iter().zip(&got).filter(|(a, b)| same(a, b)).count();
    Ok(Checked {
        log_probs_diff,
        samples: b,
        final_rows: prev.len(),
        identical_hypotheses: (identical, b),
    })
}

/// A language model's prefill log-probabilities of every (non-empty) sentence's tokens
/// (`[eos] + s[..n-1]` → `s`, rows of different lengths right-padded) through ONNX Runtime against the
/// libtorch forward pass: the largest difference, or a [`ExportCheckError::Mismatch`].
fn check_scores(
    model: &dyn Model,
    onnx: &mut OnnxDecoder,
    sentences: &[Vec<u32>],
    eos: u32,
    pad: u32,
    tolerance: f32,
    dtype: Dtype,
) -> Result<f32> {
    // The model reads `[eos] + s[..n-1]` and predicts `s`.
    let inputs: Vec<Vec<u32>> = sentences
        .iter()
        .map(|s| std::iter::once(eos).chain(s[..s.len() - 1].iter().copied()).collect())
        .collect();
    let inputs: Vec<&[u32]> = inputs.iter().map(Vec::as_slice).collect();
    let targets: Vec<&[u32]> = sentences.iter().map(Vec::as_slice).collect();
    let _guard = tch::no_grad_guard();
    let mut torch = crate::eval_lm::TorchScorer { model, device: Device::Cpu, pad };
    let want = torch.target_log_probs(&inputs, &targets).map_err(|e| ExportCheckError::Data {
        path: PathBuf::from("libtorch"),
        message: e.to_string(),
    })?;
    let got = onnx.target_log_probs(&inputs, &targets)?;
    let mut worst = 0f32;
    for (row, (a, b)) in got.iter().zip(&want).enumerate() {
        let d = max_diff(a, b);
        if d.is_nan() || d > tolerance {
            return Err(ExportCheckError::Mismatch {
                dtype,
                what: "prefill log_probs".into(),
                diff: d,
                tolerance,
                at: format!(" in sentence {row} ({} tokens)", a.len()),
            });
        }
        worst = worst.max(d);
    }
    Ok(worst)
}

fn runtime_error(e: seqforge_runtime::search::Error) -> ExportCheckError {
    ExportCheckError::Runtime(seqforge_runtime::Error::from(e))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::checkpoint::{
        Checkpoint, CheckpointConfig, ComponentConfig, DictionaryIdentity, TrainerState,
    };
    use crate::data::IndexedDatasetBuilder;

    /// A random tiny `transformer_tiny` saved as a checkpoint, with dictionaries and a
    /// 3-sentence valid set.
    fn fixture(root: &Path) -> (PathBuf, PathBuf) {
        fixture_for(root, "transformer_tiny", serde_json::json!({}), 1.0)
    }

    /// A random model of `arch` (preset with `overrides`, parameters multiplied by `scale` so
    /// that its distributions are far from uniform), built by the registry as training builds
    /// it, saved as a checkpoint with dictionaries and a 3-sentence valid set.
    fn fixture_for(
        root: &Path,
        arch: &str,
        overrides: serde_json::Value,
        scale: f64,
    ) -> (PathBuf, PathBuf) {
        tch::manual_seed(3);
        let registry = Registry::with_builtins().unwrap();
        let architecture = registry.architectures.get(arch).unwrap();
        let mut config = architecture.config.clone();
        for (k, v) in overrides.as_object().unwrap() {
            config[k] = v.clone();
        }
        let ctx = ModelContext { src_vocab_size: 30, tgt_vocab_size: 30, pad_index: 1 };
        let vs = nn::VarStore::new(Device::Cpu);
        let factory = registry.models.get(&architecture.model).unwrap();
        let model = (factory.build)(&vs.root(), &config, &ctx).unwrap();
        tch::no_grad(|| {
            for (_, mut t) in model.parameters() {
                let _ = t.f_mul_scalar_(scale).unwrap();
            }
        });
        let data = root.join("data");
        std::fs::create_dir_all(&data).unwrap();
        let sentences = [vec![5u32, 9, 7, 2], vec![13, 2], vec![8, 8, 19, 4, 17, 2]];
        let write = |dict: &str, split: &str| {
            let text: String = (4..30).map(|i| format!("w{i} 1\n")).collect();
            std::fs::write(data.join(dict), text).unwrap();
            let mut b =
                IndexedDatasetBuilder::create(data.join(split), crate::data::DType::U16).unwrap();
            for s in &sentences {
                b.add_item(s).unwrap();
            }
            b.finalize().unwrap();
        };
        // As the trainer saves it: the arch config with vocabulary sizes 0.
        let mut saved_config = config;
        let (task, dicts) = if factory.decoder_only {
            write("dict.txt", "valid");
            saved_config["vocab_size"] = 0.into();
            let task = serde_json::json!({"tokens_per_sample": 64});
            (ComponentConfig::new("language_modeling", task), vec!["dict.txt"])
        } else {
            for lang in ["de", "en"] {
                write(&format!("dict.{lang}.txt"), &format!("valid.de-en.{lang}"));
            }
            saved_config["src_vocab_size"] = 0.into();
            saved_config["tgt_vocab_size"] = 0.into();
            let task = serde_json::json!({"source_lang": "de", "target_lang": "en"});
            (ComponentConfig::new("translation", task), vec!["dict.de.txt", "dict.en.txt"])
        };
        let ckpt = Checkpoint {
            config: CheckpointConfig {
                format_version: checkpoint::FORMAT_VERSION,
                arch: arch.into(),
                model: saved_config,
                task,
                criterion: ComponentConfig::new("cross_entropy", serde_json::json!({})),
                optimizer: ComponentConfig::new("adam", serde_json::json!({})),
                lr_scheduler: ComponentConfig::new("fixed", serde_json::json!({})),
                precision: crate::fp16::Precision::Fp32,
                dictionaries: dicts
                    .iter()
                    .map(|d| DictionaryIdentity::of_file(data.join(d)).unwrap())
                    .collect(),
            },
            state: TrainerState::fresh(3, 0),
            model: model.state_dict(),
            optimizer: vec![],
        };
        let dir = root.join("checkpoint_last");
        checkpoint::save(&dir, &ckpt).unwrap();
        (dir, data)
    }

    fn args(ckpt: &Path, data: &Path, out: &Path, dtype: Dtype) -> ExportArgs {
        ExportArgs {
            checkpoint: ckpt.to_path_buf(),
            data: data.to_path_buf(),
            out: out.to_path_buf(),
            build: BuildOptions { dtype, kv_cache: None },
            tokenizer: None,
            force: false,
            check_samples: 8,
            check_subset: "valid".into(),
            check_steps: 12,
            tolerance: None,
        }
    }

    #[test]
    fn export_passes_the_check_and_a_mismatch_discards_it() {
        let tmp = tempfile::tempdir().unwrap();
        let (ckpt, data) = fixture(tmp.path());
        let out = tmp.path().join("model");
        let r = run(&args(&ckpt, &data, &out, Dtype::Fp32)).unwrap();
        assert_eq!((r.samples, r.steps), (3, 12));
        assert!(r.log_probs_diff <= 1e-4 && r.final_rows == 2, "{r:?}");
        assert!(out.join(contract::MANIFEST_FILE).is_file());

        // fp16 differs from the fp32 reference by ~1e-3: a 1e-6 tolerance must refuse it and
        // leave the existing directory and nothing else.
        let mut strict = args(&ckpt, &data, &out, Dtype::Fp16);
        strict.force = true;
        strict.tolerance = Some(1e-6);
        let e = run(&strict).unwrap_err();
        assert!(matches!(e, ExportCheckError::Mismatch { .. }), "{e}");
        assert!(e.to_string().contains("discarded"), "{e}");
        let manifest = contract::Manifest::load(&out).unwrap();
        assert_eq!(manifest.contract.dtype, Dtype::Fp32, "the checked export was replaced");
        let names: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().all(|n| !n.contains(".unchecked-") && !n.contains(".old-")),
            "{names:?}"
        );

        let e = run(&args(&ckpt, &data, &out, Dtype::Fp32)).unwrap_err();
        assert!(e.to_string().contains("--force"), "{e}");
        let mut missing = args(&ckpt, &data, &tmp.path().join("m2"), Dtype::Fp32);
        missing.check_subset = "test".into();
        let e = run(&missing).unwrap_err();
        assert!(e.to_string().contains("test.de-en.de"), "{e}");
        assert!(!tmp.path().join("m2").exists());
    }

    /// Exports each of `variants` (overrides of `arch`, parameters scaled by `scale`) in fp32
    /// and fp16 and runs the check over 32 steps with a reorder and a prune: log-probs within
    /// 1e-4 (fp32) and 2e-2 (fp16) of libtorch, the manifest naming `family`.
    fn check_family_exports(family: &str, arch: &str, variants: &[serde_json::Value], scale: f64) {
        let tmp = tempfile::tempdir().unwrap();
        for (k, overrides) in variants.iter().enumerate() {
            let root = tmp.path().join(format!("v{k}"));
            std::fs::create_dir_all(&root).unwrap();
            let (ckpt, data) = fixture_for(&root, arch, overrides.clone(), scale);
            for dtype in [Dtype::Fp32, Dtype::Fp16] {
                let out = root.join(format!("model-{dtype}"));
                let mut a = args(&ckpt, &data, &out, dtype);
                a.check_steps = 32;
                let r = run(&a).unwrap_or_else(|e| panic!("{family} variant {k} {dtype}: {e}"));
                assert_eq!((r.samples, r.steps, r.final_rows), (3, 32, 2), "{r:?}");
                let limit = if dtype == Dtype::Fp32 { 1e-4 } else { 2e-2 };
                assert!(r.log_probs_diff <= limit, "{family} variant {k} {dtype}: {r:?}");
                eprintln!("{family} variant {k} {dtype}: max |diff| {:.2e}", r.log_probs_diff);
                let manifest = contract::Manifest::load(&out).unwrap();
                assert_eq!(manifest.contract.family, family);
            }
        }
    }

    #[test]
    fn transformer_lm_exports_pass_the_check() {
        let variants = [
            // Shared input/output embedding, post-norm, learned positions, gelu.
            serde_json::json!({"share_decoder_input_output_embed": true,
                "decoder_learned_pos": true, "decoder_normalize_before": false,
                "activation_fn": "gelu", "layernorm_embedding": true}),
            // Adaptive input and softmax, tied weights and projections, 8-wide heads.
            serde_json::json!({"decoder_embed_dim": 32, "decoder_attention_heads": 4,
                "adaptive_input": true, "adaptive_input_factor": 2.0,
                "adaptive_input_cutoff": [10, 20], "adaptive_softmax_cutoff": [10, 20],
                "adaptive_softmax_factor": 2.0, "tie_adaptive_weights": true,
                "tie_adaptive_proj": true}),
            // Untied adaptive softmax over a plain embedding, project in/out, no final norm.
            serde_json::json!({"decoder_input_dim": 24, "decoder_output_dim": 24,
                "adaptive_softmax_cutoff": [12], "no_decoder_final_norm": true,
                "no_scale_embedding": true}),
        ];
        check_family_exports("transformer_lm", "transformer_lm_tiny", &variants, 1.0);
    }

    #[test]
    fn lstm_exports_pass_the_check_over_a_reorder_and_a_prune() {
        let variants = [
            // Bidirectional 2-layer encoder (64 units ≠ decoder hidden 24: both projections),
            // attention, out_embed_dim ≠ hidden (additional_fc).
            serde_json::json!({
                "encoder_embed_dim": 16, "encoder_hidden_size": 32, "encoder_layers": 2,
                "encoder_bidirectional": true, "decoder_embed_dim": 16,
                "decoder_hidden_size": 24, "decoder_layers": 2, "decoder_out_embed_dim": 20
            }),
            // Unidirectional, no attention, all embeddings shared (joined dictionary).
            serde_json::json!({
                "encoder_embed_dim": 16, "decoder_embed_dim": 16, "decoder_out_embed_dim": 16,
                "decoder_attention": false, "share_all_embeddings": true
            }),
        ];
        check_family_exports("lstm", "lstm_wiseman_iwslt_de_en", &variants, 5.0);
    }

    #[test]
    fn fconv_exports_pass_the_check_over_a_reorder_and_a_prune() {
        let variants = [
            // An even encoder kernel, residual projections, a layer without residual, one
            // looking two layers back, a 1×1 decoder layer, attention in some layers only.
            serde_json::json!({
                "encoder_embed_dim": 16, "decoder_embed_dim": 16, "decoder_out_embed_dim": 12,
                "encoder_layers": "[(24, 3)] * 2 + [(32, 2)] + [(32, 1, 0)]",
                "decoder_layers": "[(24, 3), (24, 2)] + [(32, 3, 2)] + [(32, 1)]",
                "decoder_attention": "[True, False, True, True]"
            }),
            // Shared output embedding (fc3 keeps its bias), wide kernels.
            serde_json::json!({
                "encoder_embed_dim": 16, "decoder_embed_dim": 16, "decoder_out_embed_dim": 16,
                "encoder_layers": "[(20, 5)]", "decoder_layers": "[(16, 4)] * 2",
                "share_input_output_embed": true
            }),
        ];
        check_family_exports("fconv", "fconv_iwslt_de_en", &variants, 1.0);
    }
}
