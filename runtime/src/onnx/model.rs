//! Exported model directories on ONNX Runtime: [`ModelDir`] (open and check once, share with
//! `Arc`) and [`OnnxDecoder`] (one per worker), the [`IncrementalDecoder`] the search drives.
//!
//! # Opening
//!
//! [`ModelDir::open`] reads `manifest.json` (a newer format version is an error naming the
//! file), checks that every listed file exists, hashes the small files (dictionaries,
//! tokenizer: a swapped dictionary would silently garble every output, and hashing them costs
//! microseconds) and, with [`RuntimeOptions::verify`], the two graphs too (SHA-256 runs at
//! roughly 0.5 GB/s, so this costs a fraction of a second for a base-size model; off by default
//! because a corrupt graph already fails to load or fails the metadata checks). It then builds
//! both sessions, reads their `metadata_props`, checks them against the manifest
//! ([`ModelContract::check_same`]) and checks every graph input and output the contract names
//! by name, element type and rank.
//!
//! # Sharing
//!
//! A [`ModelDir`] is immutable and `Sync`: put it in an `Arc` and create one [`OnnxDecoder`]
//! per worker thread with [`OnnxDecoder::new`] (ONNX Runtime sessions run with `&mut self`).
//! The first decoder takes the sessions [`ModelDir::open`] built for its checks; later ones
//! build their own from the same files (a session build, once per worker).
//!
//! # State and cache
//!
//! - [`OnnxDecoder::encode`] pads the batch on the right with `pad`, runs the encoder once and
//!   keeps the padding mask and every layer's cross-attention keys/values *per sentence* on the
//!   host ([`Encoded`]).
//! - [`DecoderState`] keeps, per live row, the sentence it belongs to; the self-attention cache
//!   as the ONNX Runtime values the last step returned (`present_*`, owned by ONNX Runtime and
//!   fed back as the next step's `past_*` by reference, never copied: on CPU a plain run, whose
//!   outputs ONNX Runtime allocates in host memory; on CUDA/TensorRT an [`IoBinding`] whose
//!   cache outputs are bound to the GPU, so the cache stays there and only `log_probs` come to
//!   the host); and the row-ordered mask and cross-attention inputs, also ONNX Runtime values
//!   (uploaded once per rebuild on GPU).
//! - [`OnnxDecoder::reorder`] only records the gather index: the next step feeds it as the
//!   graph's `reorder` input, so the cache is gathered inside the graph and never copied
//!   through the host or `ndarray`. Several reorders between two steps compose.
//! - The row-ordered cross-attention inputs depend only on which sentence each row belongs to.
//!   Beam reordering keeps every row inside its sentence's block, so they are rebuilt (a host
//!   gather from the per-sentence copies, then one upload on GPU) only when that mapping
//!   changes: once when step 0's one row per sentence expands to the beam, and when finished
//!   sentences are pruned.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use half::f16;
use ort::memory::{AllocationDevice, MemoryInfo};
use ort::session::{IoBinding, Session};
use ort::value::{DynValue, Outlet, Tensor, TensorElementType, ValueType};
use seqforge_schemas::contract::{
    self, Dtype, GraphKind, Manifest, ModelContract, TOKENIZER_FILE, Vocabulary, names,
};
use sha2::{Digest, Sha256};

use super::device::Device;
use super::session::{SessionConfig, load_session_on};
use crate::decoding::{IncrementalDecoder, LogProbs, SpecialTokens};
use crate::{Error, Result};

/// How to open and run a model directory.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Execution provider (`--device`).
    pub device: Device,
    /// Intra-op threads per session (`--threads`); 0 lets ONNX Runtime choose.
    pub threads: usize,
    /// Also check the graphs' SHA-256 against the manifest (`--verify`); the dictionaries and
    /// the tokenizer are always checked.
    pub verify: bool,
    /// Apply ONNX Runtime's graph optimizations (default true).
    pub optimize: bool,
    /// An explicit ONNX Runtime library (else `ORT_DYLIB_PATH`, else the build-time path).
    pub ort_library: Option<PathBuf>,
    /// Run decoder steps through an I/O binding even on CPU (always done on a GPU); the results
    /// are the same, this exists so that the GPU code path is tested on CPU machines.
    pub io_binding: bool,
    /// Pad every encoded batch's source length up to a multiple of this (capped at the model's
    /// `max_source_positions`; 0 and 1: no extra padding, `--pad-source-to-multiple`). A
    /// sentence's results depend on the padded length of its batch in their last bits, so with
    /// a multiple M every sentence whose length rounds up to the same multiple gets the same
    /// bits in any batch: a server can batch sources of different lengths and still answer
    /// exactly what translating each alone answers.
    pub pad_source_to_multiple: usize,
}

impl RuntimeOptions {
    /// The source length a batch whose longest source has `len` tokens is encoded with.
    pub fn padded_source_len(&self, len: usize, max_source_positions: usize) -> usize {
        let m = self.pad_source_to_multiple.max(1);
        len.div_ceil(m).saturating_mul(m).min(max_source_positions.max(len))
    }
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            threads: 0,
            verify: false,
            optimize: true,
            ort_library: None,
            io_binding: false,
            pad_source_to_multiple: 1,
        }
    }
}

/// The two sessions of one worker.
struct Sessions {
    encoder: Session,
    decoder: Session,
}

/// An opened, checked model directory; share it with `Arc` (see the module documentation).
pub struct ModelDir {
    dir: PathBuf,
    manifest: Manifest,
    src_vocab: Vocabulary,
    tgt_vocab: Vocabulary,
    tokenizer: Option<PathBuf>,
    options: RuntimeOptions,
    encoder_path: PathBuf,
    decoder_path: PathBuf,
    spare: Mutex<Option<Sessions>>,
}

impl std::fmt::Debug for ModelDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelDir")
            .field("dir", &self.dir)
            .field("contract", &self.manifest.contract)
            .field("device", &self.options.device)
            .finish_non_exhaustive()
    }
}

/// SHA-256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    use std::io::Read;
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

impl ModelDir {
    /// Opens and checks a model directory (see the module documentation for what is checked).
    pub fn open(dir: &Path, options: &RuntimeOptions) -> Result<Self> {
        super::init(options.ort_library.as_deref())?;
        let manifest = Manifest::load(dir)?;
        let files = &manifest.files;
        let mut listed = vec![
            (&files.encoder, "encoder", options.verify),
            (&files.decoder, "decoder", options.verify),
            (&files.src_dict, "source dictionary", true),
            (&files.tgt_dict, "target dictionary", true),
        ];
        if let Some(tok) = &files.tokenizer {
            listed.push((tok, "tokenizer", true));
        }
        for (entry, role, hash) in listed {
            let path = dir.join(&entry.name);
            if !path.is_file() {
                return Err(Error::ModelFileMissing { path, role });
            }
            if hash {
                let found = sha256_file(&path)?;
                if !found.eq_ignore_ascii_case(&entry.sha256) {
                    return Err(Error::ChecksumMismatch {
                        path,
                        expected: entry.sha256.clone(),
                        found,
                    });
                }
            }
        }
        let c = &manifest.contract;
        let src_path = dir.join(&files.src_dict.name);
        let tgt_path = dir.join(&files.tgt_dict.name);
        let src_vocab = Vocabulary::load(&src_path)?;
        let tgt_vocab = Vocabulary::load(&tgt_path)?;
        for (path, vocab, field, expected) in [
            (&src_path, &src_vocab, "src_vocab_size", c.src_vocab_size),
            (&tgt_path, &tgt_vocab, "tgt_vocab_size", c.tgt_vocab_size),
        ] {
            if vocab.len() != expected {
                return Err(contract::Error::Mismatch {
                    what: path.display().to_string(),
                    field: format!("{field} (symbols in the dictionary)"),
                    expected: expected.to_string(),
                    found: vocab.len().to_string(),
                }
                .into());
            }
        }
        let tokenizer = files.tokenizer.as_ref().map(|t| dir.join(&t.name));
        if let Some(t) = &files.tokenizer
            && t.name != TOKENIZER_FILE
        {
            tracing::debug!(name = %t.name, "tokenizer file with a non-standard name");
        }
        let model = Self {
            dir: dir.to_path_buf(),
            encoder_path: dir.join(&files.encoder.name),
            decoder_path: dir.join(&files.decoder.name),
            manifest,
            src_vocab,
            tgt_vocab,
            tokenizer,
            options: options.clone(),
            spare: Mutex::new(None),
        };
        let sessions = model.build_sessions()?;
        *model.spare.lock().unwrap_or_else(|p| p.into_inner()) = Some(sessions);
        tracing::info!(
            dir = %dir.display(),
            arch = %model.contract().arch,
            dtype = %model.contract().dtype,
            device = %options.device,
            "opened model"
        );
        Ok(model)
    }

    /// The model directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The model contract (from the manifest, checked against both graphs).
    pub fn contract(&self) -> &ModelContract {
        &self.manifest.contract
    }

    /// The source dictionary.
    pub fn src_vocab(&self) -> &Vocabulary {
        &self.src_vocab
    }

    /// The target dictionary.
    pub fn tgt_vocab(&self) -> &Vocabulary {
        &self.tgt_vocab
    }

    /// The `tokenizer.json` the data was preprocessed with, if any.
    pub fn tokenizer_path(&self) -> Option<&Path> {
        self.tokenizer.as_deref()
    }

    /// The options the model was opened with.
    pub fn options(&self) -> &RuntimeOptions {
        &self.options
    }

    /// Special ids of the model.
    pub fn special_tokens(&self) -> SpecialTokens {
        let s = self.contract().special;
        SpecialTokens { bos: s.bos, pad: s.pad, eos: s.eos, unk: s.unk }
    }

    fn build_sessions(&self) -> Result<Sessions> {
        let config =
            SessionConfig { intra_threads: self.options.threads, optimize: self.options.optimize };
        let encoder = load_session_on(&self.encoder_path, &config, &self.options.device)?;
        self.check_graph(&self.encoder_path, GraphKind::Encoder, &encoder)?;
        let decoder = load_session_on(&self.decoder_path, &config, &self.options.device)?;
        self.check_graph(&self.decoder_path, GraphKind::Decoder, &decoder)?;
        Ok(Sessions { encoder, decoder })
    }

    /// Checks a session's metadata against the manifest and its inputs/outputs against the
    /// contract.
    fn check_graph(&self, path: &Path, kind: GraphKind, session: &Session) -> Result<()> {
        let what = path.display().to_string();
        let metadata = session.metadata()?;
        let mut props = BTreeMap::new();
        for key in metadata.custom_keys()? {
            if let Some(value) = metadata.custom(&key) {
                props.insert(key, value);
            }
        }
        let found = ModelContract::from_metadata(&what, kind, &props)?;
        self.contract().check_same(&what, &found)?;

        let c = self.contract();
        let t = match c.dtype {
            Dtype::Fp32 => TensorElementType::Float32,
            Dtype::Fp16 => TensorElementType::Float16,
        };
        let layers = c.decoder_layers;
        let per_layer = |f: fn(usize) -> String| (0..layers).map(f).collect::<Vec<_>>();
        let (inputs, outputs): (Vec<(String, TensorElementType, usize)>, Vec<_>) = match kind {
            GraphKind::Encoder => {
                let mut outs =
                    vec![(names::ENCODER_PADDING_MASK.to_string(), TensorElementType::Bool, 2)];
                for (k, v) in
                    per_layer(names::cross_key).into_iter().zip(per_layer(names::cross_value))
                {
                    outs.push((k, t, 4));
                    outs.push((v, t, 4));
                }
                (vec![(names::SRC_TOKENS.to_string(), TensorElementType::Int64, 2)], outs)
            }
            GraphKind::Decoder => {
                let mut ins = vec![
                    (names::PREV_TOKENS.to_string(), TensorElementType::Int64, 2),
                    (names::REORDER.to_string(), TensorElementType::Int64, 1),
                    (names::ENCODER_PADDING_MASK.to_string(), TensorElementType::Bool, 2),
                ];
                let mut outs = vec![(names::LOG_PROBS.to_string(), TensorElementType::Float32, 2)];
                for l in 0..layers {
                    for n in [
                        names::cross_key(l),
                        names::cross_value(l),
                        names::past_key(l),
                        names::past_value(l),
                    ] {
                        ins.push((n, t, 4));
                    }
                    outs.push((names::present_key(l), t, 4));
                    outs.push((names::present_value(l), t, 4));
                }
                (ins, outs)
            }
        };
        check_outlets(path, "input", session.inputs(), &inputs)?;
        check_outlets(path, "output", session.outputs(), &outputs)?;
        // Every input of the graph must be one we feed.
        if let Some(extra) =
            session.inputs().iter().find(|o| !inputs.iter().any(|(n, _, _)| n == o.name()))
        {
            return Err(Error::GraphInterface {
                path: path.to_path_buf(),
                message: format!(
                    "unexpected input `{}` (not in the seqforge contract: {})",
                    extra.name(),
                    names::PATTERN
                ),
            });
        }
        Ok(())
    }

    /// Takes the sessions built by [`ModelDir::open`], or builds a new set.
    fn sessions(&self) -> Result<Sessions> {
        let spare = self.spare.lock().unwrap_or_else(|p| p.into_inner()).take();
        match spare {
            Some(s) => Ok(s),
            None => self.build_sessions(),
        }
    }
}

fn check_outlets(
    path: &Path,
    direction: &str,
    outlets: &[Outlet],
    expected: &[(String, TensorElementType, usize)],
) -> Result<()> {
    for (name, ty, rank) in expected {
        let bad = |message: String| Error::GraphInterface { path: path.to_path_buf(), message };
        let outlet = outlets.iter().find(|o| o.name() == name).ok_or_else(|| {
            bad(format!(
                "missing {direction} `{name}` (has: {})",
                outlets.iter().map(Outlet::name).collect::<Vec<_>>().join(", ")
            ))
        })?;
        match outlet.dtype() {
            ValueType::Tensor { ty: found, shape, .. } => {
                if found != ty {
                    return Err(bad(format!("{direction} `{name}` is {found:?}, expected {ty:?}")));
                }
                if shape.len() != *rank {
                    return Err(bad(format!(
                        "{direction} `{name}` has rank {}, expected {rank}",
                        shape.len()
                    )));
                }
            }
            other => return Err(bad(format!("{direction} `{name}` is {other:?}, not a tensor"))),
        }
    }
    Ok(())
}

/// Host copy of a per-sentence tensor `[B, H, S, D]` in the model's dtype.
#[derive(Debug, Clone)]
enum HostData {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

/// Per-sentence encoder results kept on the host.
#[derive(Debug)]
struct EncodedBatch {
    sentences: usize,
    src_len: usize,
    /// `[B, S]`, true = padding.
    mask: Vec<bool>,
    /// `cross_key.{L}`, `cross_value.{L}` interleaved (`2L` entries), each `[B, H, S, D]`.
    cross: Vec<HostData>,
}

/// The encoder's output for a batch (cheap to clone).
#[derive(Debug, Clone)]
pub struct Encoded(Arc<EncodedBatch>);

impl Encoded {
    /// Number of sentences.
    pub fn sentences(&self) -> usize {
        self.0.sentences
    }

    /// Padded source length.
    pub fn src_len(&self) -> usize {
        self.0.src_len
    }
}

/// The decoding state of one batch (see the module documentation).
pub struct DecoderState {
    encoded: Arc<EncodedBatch>,
    /// Sentence of each current row.
    rows: Vec<usize>,
    /// Gather index (into the past's rows) for the next step; `None` = identity.
    pending: Option<Vec<i64>>,
    /// `past_key.{L}`, `past_value.{L}` interleaved.
    past: Vec<DynValue>,
    /// Rows of `past`.
    past_rows: usize,
    /// The row → sentence mapping `cross` is laid out for.
    cross_rows: Vec<usize>,
    /// Row-ordered `encoder_padding_mask`, then `cross_key.{L}`, `cross_value.{L}` interleaved.
    cross: Vec<DynValue>,
    /// Decoder steps taken (the past length).
    position: usize,
    /// Times the cross-attention inputs were rebuilt.
    regathers: usize,
}

impl DecoderState {
    /// Target positions decoded so far (the cache length).
    pub fn position(&self) -> usize {
        self.position
    }

    /// How many times the row-ordered cross-attention inputs were rebuilt (expansion to the
    /// beam and pruning of finished sentences; never for a plain beam reorder).
    pub fn regathers(&self) -> usize {
        self.regathers
    }
}

/// Precomputed input/output names.
struct Names {
    cross: Vec<String>,
    past: Vec<String>,
    present: Vec<String>,
}

/// One worker's ONNX Runtime sessions of a shared [`ModelDir`], implementing
/// [`IncrementalDecoder`].
pub struct OnnxDecoder {
    model: Arc<ModelDir>,
    encoder: Session,
    decoder: Session,
    binding: IoBinding,
    /// Where `present_*` are allocated.
    cache: MemoryInfo<'static>,
    /// Where `log_probs` are allocated.
    host: MemoryInfo<'static>,
    names: Names,
    special: SpecialTokens,
    gpu: Option<i32>,
    /// Whether steps run through `binding`.
    bind: bool,
}

impl std::fmt::Debug for OnnxDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxDecoder").field("model", &self.model).finish_non_exhaustive()
    }
}

impl OnnxDecoder {
    /// A decoder over `model` (see the module documentation on sharing).
    pub fn new(model: Arc<ModelDir>) -> Result<Self> {
        let Sessions { encoder, decoder } = model.sessions()?;
        let layers = model.contract().decoder_layers;
        let mut names = Names { cross: Vec::new(), past: Vec::new(), present: Vec::new() };
        for l in 0..layers {
            names.cross.extend([names::cross_key(l), names::cross_value(l)]);
            names.past.extend([names::past_key(l), names::past_value(l)]);
            names.present.extend([names::present_key(l), names::present_value(l)]);
        }
        let binding = decoder.create_binding()?;
        let cache = model.options.device.cache_memory()?;
        let host = Device::host_memory()?;
        let gpu = match model.options.device {
            Device::Cpu => None,
            Device::Cuda { device_id } | Device::TensorRt { device_id, .. } => Some(device_id),
        };
        let special = model.special_tokens();
        let bind = gpu.is_some() || model.options.io_binding;
        Ok(Self { model, encoder, decoder, binding, cache, host, names, special, gpu, bind })
    }

    /// The model.
    pub fn model(&self) -> &Arc<ModelDir> {
        &self.model
    }

    fn contract(&self) -> &ModelContract {
        self.model.contract()
    }

    /// A host tensor as an ONNX Runtime value, on the cache device.
    fn upload<T>(&self, shape: Vec<usize>, data: Vec<T>) -> Result<DynValue>
    where
        T: ort::value::PrimitiveTensorElementType + Clone + std::fmt::Debug + 'static,
    {
        let tensor = Tensor::from_array((shape, data))?;
        Ok(match self.gpu {
            Some(id) => tensor.to(AllocationDevice::CUDA, id)?.into_dyn(),
            None => tensor.into_dyn(),
        })
    }

    /// Builds the row-ordered mask and cross-attention inputs for `state.rows`.
    fn regather(&self, state: &mut DecoderState) -> Result<()> {
        let enc = &state.encoded;
        let (s, r) = (enc.src_len, state.rows.len());
        let (h, d) = (self.contract().decoder_attention_heads, self.contract().decoder_head_dim);
        let block = h * s * d;
        let mut mask = Vec::with_capacity(r * s);
        for &sent in &state.rows {
            mask.extend_from_slice(&enc.mask[sent * s..(sent + 1) * s]);
        }
        let mut cross = Vec::with_capacity(1 + enc.cross.len());
        cross.push(self.upload(vec![r, s], mask)?);
        for host in &enc.cross {
            let shape = vec![r, h, s, d];
            cross.push(match host {
                HostData::F32(v) => self.upload(shape, gather_rows(v, block, &state.rows))?,
                HostData::F16(v) => self.upload(shape, gather_rows(v, block, &state.rows))?,
            });
        }
        state.cross = cross;
        state.cross_rows = state.rows.clone();
        state.regathers += 1;
        Ok(())
    }

    /// An empty past `[rows, H, 0, D]` for every layer.
    fn empty_past(&self, rows: usize) -> Result<Vec<DynValue>> {
        let c = self.contract();
        let shape = vec![rows, c.decoder_attention_heads, 0, c.decoder_head_dim];
        (0..2 * c.decoder_layers)
            .map(|_| match c.dtype {
                Dtype::Fp32 => {
                    Ok(Tensor::from_array((shape.clone(), Vec::<f32>::new()))?.into_dyn())
                }
                Dtype::Fp16 => {
                    Ok(Tensor::from_array((shape.clone(), Vec::<f16>::new()))?.into_dyn())
                }
            })
            .collect()
    }
}

fn gather_rows<T: Copy>(data: &[T], block: usize, rows: &[usize]) -> Vec<T> {
    let mut out = Vec::with_capacity(rows.len() * block);
    for &r in rows {
        out.extend_from_slice(&data[r * block..(r + 1) * block]);
    }
    out
}

/// Copies a tensor output to the host, checking its shape.
fn host_copy(value: &DynValue, dtype: Dtype, shape: &[usize], name: &str) -> Result<HostData> {
    let bad = |message: String| Error::GraphOutput {
        graph: contract::ENCODER_FILE,
        output: name.to_string(),
        message,
    };
    let check = |found: &[i64]| -> Result<()> {
        if found.len() != shape.len() || found.iter().zip(shape).any(|(&a, &b)| a as usize != b) {
            return Err(bad(format!("shape {found:?}, expected {shape:?}")));
        }
        Ok(())
    };
    Ok(match dtype {
        Dtype::Fp32 => {
            let (found, data) =
                value.try_extract_tensor::<f32>().map_err(|e| bad(e.to_string()))?;
            check(found)?;
            HostData::F32(data.to_vec())
        }
        Dtype::Fp16 => {
            let (found, data) =
                value.try_extract_tensor::<f16>().map_err(|e| bad(e.to_string()))?;
            check(found)?;
            HostData::F16(data.to_vec())
        }
    })
}

impl IncrementalDecoder for OnnxDecoder {
    type Encoded = Encoded;
    type State = DecoderState;
    type Error = Error;

    fn vocab_size(&self) -> usize {
        self.contract().tgt_vocab_size
    }

    fn special_tokens(&self) -> SpecialTokens {
        self.special
    }

    fn max_target_positions(&self) -> usize {
        self.contract().max_target_positions
    }

    fn encode(&mut self, sources: &[Vec<u32>]) -> Result<Encoded> {
        let b = sources.len();
        if b == 0 {
            return Err(Error::DecoderState("encode: no source sentences".into()));
        }
        let s = sources.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let max = self.contract().max_source_positions;
        if s > max {
            return Err(Error::DecoderState(format!(
                "encode: a source of {s} tokens exceeds max_source_positions {max}"
            )));
        }
        let s = self.model.options().padded_source_len(s, max);
        let pad = i64::from(self.special.pad);
        let mut tokens = vec![pad; b * s];
        for (i, src) in sources.iter().enumerate() {
            for (j, &t) in src.iter().enumerate() {
                tokens[i * s + j] = i64::from(t);
            }
        }
        let input = Tensor::from_array((vec![b, s], tokens))?;
        let outputs = self.encoder.run(ort::inputs![names::SRC_TOKENS => input])?;
        let c = self.model.contract();
        let get = |name: &str| {
            outputs.get(name).ok_or_else(|| Error::GraphOutput {
                graph: contract::ENCODER_FILE,
                output: name.to_string(),
                message: "not returned".into(),
            })
        };
        let mask_value = get(names::ENCODER_PADDING_MASK)?;
        let (mshape, mdata) =
            mask_value.try_extract_tensor::<bool>().map_err(|e| Error::GraphOutput {
                graph: contract::ENCODER_FILE,
                output: names::ENCODER_PADDING_MASK.into(),
                message: e.to_string(),
            })?;
        if **mshape != [b as i64, s as i64] {
            return Err(Error::GraphOutput {
                graph: contract::ENCODER_FILE,
                output: names::ENCODER_PADDING_MASK.into(),
                message: format!("shape {:?}, expected [{b}, {s}]", &**mshape),
            });
        }
        let mask = mdata.to_vec();
        let shape = [b, c.decoder_attention_heads, s, c.decoder_head_dim];
        let mut cross = Vec::with_capacity(self.names.cross.len());
        for name in &self.names.cross {
            cross.push(host_copy(get(name)?, c.dtype, &shape, name)?);
        }
        Ok(Encoded(Arc::new(EncodedBatch { sentences: b, src_len: s, mask, cross })))
    }

    fn init_state(&mut self, encoded: &Encoded, rows_per_sentence: usize) -> Result<DecoderState> {
        if rows_per_sentence == 0 {
            return Err(Error::DecoderState("init_state: rows_per_sentence is 0".into()));
        }
        let rows: Vec<usize> = (0..encoded.0.sentences)
            .flat_map(|s| std::iter::repeat_n(s, rows_per_sentence))
            .collect();
        let past = self.empty_past(rows.len())?;
        let mut state = DecoderState {
            encoded: Arc::clone(&encoded.0),
            past_rows: rows.len(),
            rows,
            pending: None,
            past,
            cross_rows: Vec::new(),
            cross: Vec::new(),
            position: 0,
            regathers: 0,
        };
        self.regather(&mut state)?;
        Ok(state)
    }

    fn step(&mut self, tokens: &[u32], state: &mut DecoderState) -> Result<LogProbs> {
        let r = state.rows.len();
        if tokens.len() != r {
            return Err(Error::DecoderState(format!("step: {} tokens for {r} rows", tokens.len())));
        }
        if r == 0 {
            return Err(Error::DecoderState("step: no rows left".into()));
        }
        if state.cross_rows != state.rows {
            self.regather(state)?;
        }
        let order: Vec<i64> = match state.pending.take() {
            Some(order) => order,
            None => (0..r as i64).collect(),
        };
        if let Some(bad) = order.iter().find(|&&i| i < 0 || i as usize >= state.past_rows) {
            return Err(Error::DecoderState(format!(
                "step: reorder index {bad} outside the {} rows of the cache",
                state.past_rows
            )));
        }
        let prev: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
        let prev = Tensor::from_array((vec![r, 1], prev))?.into_dyn();
        let order = Tensor::from_array((vec![r], order))?.into_dyn();
        let mut inputs: Vec<(&str, &DynValue)> = Vec::with_capacity(3 + 2 * self.names.past.len());
        inputs.push((names::PREV_TOKENS, &prev));
        inputs.push((names::REORDER, &order));
        inputs.push((names::ENCODER_PADDING_MASK, &state.cross[0]));
        for (name, value) in self.names.cross.iter().zip(&state.cross[1..]) {
            inputs.push((name.as_str(), value));
        }
        for (name, value) in self.names.past.iter().zip(&state.past) {
            inputs.push((name.as_str(), value));
        }
        let vocab = self.model.contract().tgt_vocab_size;
        let (data, present) = {
            let mut outputs = if !self.bind {
                // On CPU, ONNX Runtime allocates the outputs in host memory and takes the
                // previous outputs as inputs without copying them.
                self.decoder.run(inputs)?
            } else {
                // On a GPU, outputs are bound to a device (not to values) before every run:
                // ONNX Runtime allocates `present_*` of this step's shape in GPU memory, where
                // the next step reads them; only `log_probs` come to the host.
                let binding = &mut self.binding;
                binding.clear_outputs();
                for name in &self.names.present {
                    binding.bind_output_to_device(name.as_str(), &self.cache)?;
                }
                binding.bind_output_to_device(names::LOG_PROBS, &self.host)?;
                for (name, value) in inputs {
                    binding.bind_input(name, value)?;
                }
                self.decoder.run_binding(&self.binding)?
            };
            let missing = |name: &str| Error::GraphOutput {
                graph: contract::DECODER_FILE,
                output: name.to_string(),
                message: "not returned".into(),
            };
            let lp = outputs.get(names::LOG_PROBS).ok_or_else(|| missing(names::LOG_PROBS))?;
            let (shape, values) =
                lp.try_extract_tensor::<f32>().map_err(|e| Error::GraphOutput {
                    graph: contract::DECODER_FILE,
                    output: names::LOG_PROBS.into(),
                    message: e.to_string(),
                })?;
            if **shape != [r as i64, vocab as i64] {
                return Err(Error::GraphOutput {
                    graph: contract::DECODER_FILE,
                    output: names::LOG_PROBS.into(),
                    message: format!("shape {:?}, expected [{r}, {vocab}]", &**shape),
                });
            }
            let data = values.to_vec();
            let mut present = Vec::with_capacity(self.names.present.len());
            for name in &self.names.present {
                present.push(outputs.remove(name.as_str()).ok_or_else(|| missing(name))?);
            }
            (data, present)
        };
        // Drop the binding's references to the old past; the state owns the new one.
        if self.bind {
            self.binding.clear_inputs();
        }
        if let Some(first) = present.first() {
            let c = self.model.contract();
            let want = [
                r as i64,
                c.decoder_attention_heads as i64,
                state.position as i64 + 1,
                c.decoder_head_dim as i64,
            ];
            let shape = match first.dtype() {
                ValueType::Tensor { shape, .. } => shape.to_vec(),
                _ => Vec::new(),
            };
            if shape != want {
                return Err(Error::GraphOutput {
                    graph: contract::DECODER_FILE,
                    output: self.names.present[0].clone(),
                    message: format!("shape {shape:?}, expected {want:?}"),
                });
            }
        }
        state.past = present;
        state.past_rows = r;
        state.position += 1;
        Ok(LogProbs { rows: r, vocab, data })
    }

    fn reorder(&mut self, state: &mut DecoderState, order: &[usize]) -> Result<()> {
        let r = state.rows.len();
        if let Some(&bad) = order.iter().find(|&&i| i >= r) {
            return Err(Error::DecoderState(format!("reorder: row {bad} of {r}")));
        }
        state.pending = Some(match state.pending.take() {
            Some(p) => order.iter().map(|&i| p[i]).collect(),
            None => order.iter().map(|&i| i as i64).collect(),
        });
        state.rows = order.iter().map(|&i| state.rows[i]).collect();
        Ok(())
    }

    fn rows(&self, state: &DecoderState) -> usize {
        state.rows.len()
    }
}
