//! The export itself: checkpoint directory (or fairseq `.pt`) + data directory → model
//! directory.
//!
//! Reads `config.json` and `model.safetensors` (every tensor checked for presence, dtype and
//! shape against the configuration), the dictionaries `dict.{src,tgt}.txt` of the data
//! directory (checked against the identities the checkpoint recorded), builds both graphs,
//! then writes the model directory atomically: everything goes into `MODEL_DIR.tmp-<pid>/`,
//! which is renamed into place (with `force`, an existing directory is first renamed away to
//! `MODEL_DIR.old-<pid>/` and deleted after). A failed export leaves nothing behind.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use prost::Message;
use seqforge_schemas::contract::{
    DECODER_FILE, Dtype, FORMAT_VERSION, FileEntry, GraphKind, MANIFEST_FILE, Manifest,
    ModelContract, ModelFiles, SpecialIds, TOKENIZER_FILE, Vocabulary,
};
use tracing::info;

use crate::config::CheckpointConfig;
use crate::error::{Error, Result, io_err};
use crate::transformer::BuildOptions;
use crate::weights::{Weights, sha256_hex};

/// The checkpoint's model file.
pub const CHECKPOINT_MODEL_FILE: &str = "model.safetensors";
/// The checkpoint's configuration file.
pub const CHECKPOINT_CONFIG_FILE: &str = "config.json";
/// The checkpoint's training-state file (read for the update count only).
pub const CHECKPOINT_STATE_FILE: &str = "trainer_state.json";

/// What to export, and where.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// The checkpoint directory (`model.safetensors`, `config.json`).
    pub checkpoint: PathBuf,
    /// The data directory holding `dict.{src}.txt` and `dict.{tgt}.txt` (and possibly
    /// `tokenizer.json`).
    pub data: PathBuf,
    /// The model directory to write.
    pub out: PathBuf,
    /// How to build the graphs (dtype).
    pub build: BuildOptions,
    /// The tokenizer to ship; `None` takes `DATA/tokenizer.json` when it exists.
    pub tokenizer: Option<PathBuf>,
    /// Replace an existing model directory.
    pub force: bool,
}

impl ExportOptions {
    /// Options with fp32, no explicit tokenizer and no `force`.
    pub fn new(
        checkpoint: impl Into<PathBuf>,
        data: impl Into<PathBuf>,
        out: impl Into<PathBuf>,
    ) -> Self {
        Self {
            checkpoint: checkpoint.into(),
            data: data.into(),
            out: out.into(),
            build: BuildOptions::default(),
            tokenizer: None,
            force: false,
        }
    }

    /// The same options with `dtype`.
    pub fn with_dtype(mut self, dtype: Dtype) -> Self {
        self.build.dtype = dtype;
        self
    }
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct ExportSummary {
    /// The model directory.
    pub out: PathBuf,
    /// The manifest written.
    pub manifest: Manifest,
    /// `(file name, bytes)` of every file written.
    pub files: Vec<(String, u64)>,
    /// Wall time of the whole export.
    pub elapsed: Duration,
}

impl ExportSummary {
    /// A few human lines: files with sizes, total, time.
    pub fn render(&self) -> String {
        let c = &self.manifest.contract;
        let mut s = format!(
            "exported {} ({} family, {}, {} state tensors, vocab {} → {}) to {} in {:.2}s\n",
            c.arch,
            c.family,
            c.dtype,
            c.state.tensors.len(),
            c.src_vocab_size,
            c.tgt_vocab_size,
            self.out.display(),
            self.elapsed.as_secs_f64()
        );
        for (name, size) in &self.files {
            s.push_str(&format!("  {name:<20} {}\n", human_size(*size)));
        }
        let total: u64 = self.files.iter().map(|(_, n)| n).sum();
        s.push_str(&format!("  {:<20} {}", "total", human_size(total)));
        s
    }
}

/// `1.5 MiB`-style sizes.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

/// A dictionary of the data directory, checked against the checkpoint.
struct Dict {
    path: PathBuf,
    name: String,
    vocab: Vocabulary,
}

fn load_dict(config: &CheckpointConfig, data: &Path, name: &str, size: usize) -> Result<Dict> {
    let name = name.to_string();
    let path = data.join(&name);
    if !path.is_file() {
        return Err(Error::MissingFile {
            path,
            hint: " (the data directory the model was trained on holds it)".into(),
        });
    }
    let vocab = Vocabulary::load(&path)?;
    let found = format!("{} symbols, hash {}", vocab.len(), vocab.identity_hash());
    match config.identity(&name) {
        Some(id) if id.size == vocab.len() && id.hash == vocab.identity_hash() => {}
        Some(id) => {
            return Err(Error::DictionaryMismatch {
                path,
                expected: format!("{} symbols, hash {}", id.size, id.hash),
                found,
            });
        }
        None => {
            return Err(Error::DictionaryMismatch {
                path,
                expected: format!("the checkpoint records no identity for {name}"),
                found,
            });
        }
    }
    if vocab.len() != size {
        return Err(Error::DictionaryMismatch {
            path,
            expected: format!("{size} symbols (the model config's vocabulary size)"),
            found,
        });
    }
    Ok(Dict { path, name, vocab })
}

fn special_ids(dict: &Dict, pad_index: usize) -> Result<SpecialIds> {
    let id = |sym: &str| {
        dict.vocab.id(sym).ok_or_else(|| Error::DictionaryMismatch {
            path: dict.path.clone(),
            expected: format!("the special symbol {sym}"),
            found: "a dictionary without it".into(),
        })
    };
    let special =
        SpecialIds { bos: id("<s>")?, pad: id("<pad>")?, eos: id("</s>")?, unk: id("<unk>")? };
    if special.pad as usize != pad_index {
        return Err(Error::DictionaryMismatch {
            path: dict.path.clone(),
            expected: format!("<pad> at the model's pad_index {pad_index}"),
            found: format!("<pad> at {}", special.pad),
        });
    }
    Ok(special)
}

fn num_updates(checkpoint: &Path) -> u64 {
    if checkpoint.is_file() {
        return crate::fairseq::num_updates(checkpoint);
    }
    let path = checkpoint.join(CHECKPOINT_STATE_FILE);
    fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("num_updates").and_then(serde_json::Value::as_u64))
        .unwrap_or(0)
}

/// The sibling `path` + `suffix` (e.g. `model.tmp-123`).
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

fn remove_any(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(io_err(path)),
        Ok(_) => fs::remove_file(path).map_err(io_err(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Io { path: path.to_path_buf(), source }),
    }
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<FileEntry> {
    let path = dir.join(name);
    let mut f = fs::File::create(&path).map_err(io_err(&path))?;
    f.write_all(bytes).map_err(io_err(&path))?;
    f.sync_all().map_err(io_err(&path))?;
    Ok(FileEntry { name: name.to_string(), sha256: sha256_hex(bytes) })
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            Error::MissingFile { path: path.to_path_buf(), hint: String::new() }
        }
        _ => Error::Io { path: path.to_path_buf(), source: e },
    })
}

/// The graphs and manifest of an export, in memory.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The contract both graphs carry.
    pub contract: ModelContract,
    /// The checkpoint's configuration.
    pub config: CheckpointConfig,
    /// The graph that runs first: the encoder, or a language model's prefill.
    pub first: seqforge_schemas::onnx::ModelProto,
    /// The decoder-step graph.
    pub decoder: seqforge_schemas::onnx::ModelProto,
}

/// Reads and checks the checkpoint and builds both graphs, writing nothing. `data` is only
/// used for the dictionaries' identities when given.
///
/// `checkpoint` may also be a fairseq checkpoint file (`.pt`, see [`crate::fairseq`]).
pub fn compile(checkpoint: &Path, data: Option<&Path>, build: BuildOptions) -> Result<Compiled> {
    let (config_path, config, weights) = if checkpoint.is_file() {
        let (config, weights) = crate::fairseq::read(checkpoint, data)?;
        (checkpoint.to_path_buf(), config, weights)
    } else {
        let config_path = checkpoint.join(CHECKPOINT_CONFIG_FILE);
        let config = CheckpointConfig::load(&config_path)?;
        info!(arch = %config.arch, "reading {}", checkpoint.join(CHECKPOINT_MODEL_FILE).display());
        (config_path, config, Weights::load(&checkpoint.join(CHECKPOINT_MODEL_FILE))?)
    };
    let c = config.common;
    let family =
        crate::families::exporter_for(config.family.name).ok_or_else(|| Error::UnknownArch {
            path: config_path.clone(),
            arch: format!(
                "{} (family {}, which this exporter cannot compile)",
                config.arch, config.family.name
            ),
            known: crate::families::exporters()
                .iter()
                .map(|e| e.family)
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let special = match data {
        Some(data) => {
            let src = load_dict(&config, data, &config.dict_files.0, c.src_vocab_size)?;
            let tgt = load_dict(&config, data, &config.dict_files.1, c.tgt_vocab_size)?;
            let special = special_ids(&tgt, c.pad_index)?;
            if special_ids(&src, c.pad_index)? != special {
                return Err(Error::DictionaryMismatch {
                    path: src.path,
                    expected: format!("the special ids of {}: {special:?}", tgt.name),
                    found: "other special ids".into(),
                });
            }
            special
        }
        None => SpecialIds { pad: c.pad_index as u32, ..SpecialIds::default() },
    };
    let state = (family.state)(&config.model, build)?;
    state.validate_for(config.task, &config_path.display().to_string())?;
    let contract = ModelContract {
        format_version: FORMAT_VERSION,
        task: config.task,
        family: config.family.name.to_string(),
        arch: config.arch.clone(),
        src_vocab_size: c.src_vocab_size,
        tgt_vocab_size: c.tgt_vocab_size,
        special,
        max_source_positions: c.max_source_positions,
        max_target_positions: c.max_target_positions,
        dtype: build.dtype,
        checkpoint_sha256: weights.sha256().to_string(),
        state,
    };
    info!(
        dtype = %build.dtype,
        family = family.family,
        "building the {} and decoder-step graphs",
        config.task.first_graph().as_str()
    );
    let graphs = (family.build)(&weights, &config.model, build, &contract)?;
    weights.check_all_used(|name| (family.ignorable)(&config.model, name))?;
    Ok(Compiled { contract, config, first: graphs.first, decoder: graphs.decoder })
}

/// Exports `options.checkpoint` to the model directory `options.out` (see the module docs).
pub fn export(options: &ExportOptions) -> Result<ExportSummary> {
    let start = Instant::now();
    let out = &options.out;
    if out.exists() && !options.force {
        return Err(Error::OutputExists { path: out.clone() });
    }
    let compiled = compile(&options.checkpoint, Some(&options.data), options.build)?;
    let config = &compiled.config;
    let tokenizer = match &options.tokenizer {
        Some(p) => Some(read(p)?),
        None => {
            let p = options.data.join(TOKENIZER_FILE);
            if p.is_file() { Some(read(&p)?) } else { None }
        }
    };
    let (src_name, tgt_name) = config.dict_files.clone();
    let src_bytes = read(&options.data.join(&src_name))?;
    let tgt_bytes = read(&options.data.join(&tgt_name))?;

    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(io_err(&parent))?;
    let tmp = sibling(out, &format!(".tmp-{}", std::process::id()));
    remove_any(&tmp)?;
    fs::create_dir(&tmp).map_err(io_err(&tmp))?;
    let written = (|| -> Result<Manifest> {
        info!("writing {}", tmp.display());
        let kind = config.task.first_graph();
        let first_name = kind.file_name();
        let first = write_file(&tmp, first_name, &serialize(&compiled.first, first_name)?)?;
        let decoder = write_file(&tmp, DECODER_FILE, &serialize(&compiled.decoder, DECODER_FILE)?)?;
        let src_dict = write_file(&tmp, &src_name, &src_bytes)?;
        let tgt_dict = if tgt_name == src_name {
            src_dict.clone()
        } else {
            write_file(&tmp, &tgt_name, &tgt_bytes)?
        };
        let tokenizer = match &tokenizer {
            Some(bytes) => Some(write_file(&tmp, TOKENIZER_FILE, bytes)?),
            None => None,
        };
        let manifest = Manifest {
            contract: compiled.contract.clone(),
            files: ModelFiles {
                encoder: (kind == GraphKind::Encoder).then(|| first.clone()),
                prefill: (kind == GraphKind::Prefill).then_some(first),
                decoder,
                src_dict,
                tgt_dict,
                tokenizer,
            },
            source_lang: config.source_lang.clone(),
            target_lang: config.target_lang.clone(),
            producer: format!("seqforge-exporter {}", env!("CARGO_PKG_VERSION")),
            checkpoint: options.checkpoint.display().to_string(),
            num_updates: num_updates(&options.checkpoint),
        };
        let mut json = manifest.to_json();
        json.push('\n');
        write_file(&tmp, MANIFEST_FILE, json.as_bytes())?;
        fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io_err(&tmp))?;
        Ok(manifest)
    })();
    let manifest = match written {
        Ok(m) => m,
        Err(e) => {
            let _ = remove_any(&tmp);
            return Err(e);
        }
    };
    if let Err(e) = install(&tmp, out) {
        let _ = remove_any(&tmp);
        return Err(e);
    }
    let mut files = Vec::new();
    for entry in fs::read_dir(out).map_err(io_err(out))? {
        let entry = entry.map_err(io_err(out))?;
        let size = entry.metadata().map_err(io_err(&entry.path()))?.len();
        files.push((entry.file_name().to_string_lossy().into_owned(), size));
    }
    files.sort();
    let summary = ExportSummary { out: out.clone(), manifest, files, elapsed: start.elapsed() };
    info!("done in {:.2}s", summary.elapsed.as_secs_f64());
    Ok(summary)
}

/// The largest protobuf ONNX Runtime (and protobuf itself) parses: 2 GiB.
const PROTOBUF_LIMIT: usize = (1 << 31) - 1;

/// A graph as bytes, refusing one protobuf cannot hold (weights in ONNX external-data files are
/// not written yet).
fn serialize(model: &seqforge_schemas::onnx::ModelProto, name: &str) -> Result<Vec<u8>> {
    let len = model.encoded_len();
    if len > PROTOBUF_LIMIT {
        return Err(Error::Usage(format!(
            "{name} would be {len} bytes, over protobuf's 2 GiB limit; this exporter does not \
             write ONNX external data yet (try --dtype fp16)"
        )));
    }
    Ok(model.encode_to_vec())
}

/// Puts the complete directory `tmp` at `dst` (an existing `dst` renamed away first, deleted
/// after).
fn install(tmp: &Path, dst: &Path) -> Result<()> {
    let old = sibling(dst, &format!(".old-{}", std::process::id()));
    remove_any(&old)?;
    let had_old = dst.exists();
    if had_old {
        fs::rename(dst, &old).map_err(io_err(dst))?;
    }
    if let Err(source) = fs::rename(tmp, dst) {
        if had_old {
            let _ = fs::rename(&old, dst);
        }
        return Err(Error::Io { path: dst.to_path_buf(), source });
    }
    if let Some(parent) = dst.parent().filter(|p| !p.as_os_str().is_empty()) {
        let _ = fs::File::open(parent).and_then(|f| f.sync_all());
    }
    if had_old {
        remove_any(&old)?;
    }
    Ok(())
}

/// Checks a written model directory: manifest hashes against the files (used by tests and by
/// callers that want to be sure what they ship).
pub fn verify_model_dir(dir: &Path) -> Result<Manifest> {
    let manifest = Manifest::load(dir)?;
    for (e, _) in manifest.files.entries() {
        let path = dir.join(&e.name);
        let bytes = read(&path)?;
        let found = sha256_hex(&bytes);
        if found != e.sha256 {
            return Err(Error::HashMismatch { path, expected: e.sha256.clone(), found });
        }
    }
    Ok(manifest)
}
